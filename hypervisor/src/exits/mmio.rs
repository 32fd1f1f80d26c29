//! MMIO emulation for guest-physical pages that aren't RAM: the device pages
//! (local APIC, I/O APIC) and the empty bus. The EPT violation gives the
//! address and the direction, not the data (SDM Vol. 3C 28.2.1), so the
//! instruction is fetched through the guest's page tables, decoded and
//! carried out here: one read-modify-write under the device's lock for
//! MOV/MOVZX/MOVSX/ALU/TEST/XCHG/BT* (XCHG and LOCKed forms are atomic as the
//! device sees them), and the string engine for MOVS/STOS/LODS, whose other
//! operand may be RAM or MMIO.
//!
//! Guest memory is reached by copies ([`GuestMemory::read_into`],
//! [`GuestMemory::write`]), never by a slice another vCPU could change.
use super::decode::{self, Decoded, MemOp, Mode, StringOp};
use super::outcome::{Inject, Rip, Write};
use super::string::{Dst, Progress, Src, Stop, StringEnv, StringInsn};
use super::vmexit::{Emu, EptExit, Exit, InsnError};
use super::{Guest, Outcome};
use crate::vm::gwalk::{self, Fault, GuestPhysRead, LinearError, PhysBus};
use crate::vm::memory::{Gpa, GuestMemory};
use crate::vm::vcpu::Flow;
use crate::vm::{Vm, VmEnd};
use crate::vmx::run::RSP;
use alloc::format;

/// Iterations of a REP string instruction per exit (then the instruction
/// executes again, and interrupts can be taken in between).
pub const REP_BUDGET: u64 = 512;

impl GuestPhysRead for GuestMemory {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> bool {
        self.read_into(gpa, buf).is_ok()
    }
}

fn all_ones(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// A guest-physical access by vCPU `idx`: RAM by copy, a device page through
/// its model, the empty bus by the guest's `unmapped_access` policy.
pub struct VcpuBus<'a> {
    pub vm: &'a Vm,
    pub idx: usize,
    pub now: u64,
    pub rip: u64,
}

impl VcpuBus<'_> {
    /// Reads `size` bytes at `gpa`, lets `f` compute what to write back (if
    /// anything), and writes it, all under the device's lock: the one
    /// locked read-modify-write of XCHG, LOCK-prefixed and ALU forms.
    pub fn rmw(
        &mut self,
        gpa: u64,
        size: usize,
        writes: bool,
        f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    ) -> Result<(), VmEnd> {
        let vm = self.vm;
        let f = match vm.mmio_rmw(self.idx, gpa, size as u8, f) {
            Ok(request) => return crate::vm::request_end(request).map_or(Ok(()), Err),
            Err(f) => f,
        };
        if vm.mem.is_ram(Gpa(gpa)) {
            let mut b = [0u8; 8];
            let n = size.min(8);
            if !GuestPhysRead::read(&vm.mem, Gpa(gpa), &mut b[..n]) {
                return self.rmw_unmapped(gpa, size, writes, f);
            }
            let old = u64::from_le_bytes(b);
            if let Some(val) = f(&mut || old) {
                let _ = vm.mem.write(Gpa(gpa), &val.to_le_bytes()[..n]);
            }
            return Ok(());
        }
        self.rmw_unmapped(gpa, size, writes, f)
    }

    fn rmw_unmapped(
        &mut self,
        gpa: u64,
        size: usize,
        writes: bool,
        f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    ) -> Result<(), VmEnd> {
        super::ept::unmapped(self.vm, gpa, writes, self.rip)?;
        // All-ones from the empty bus; a write goes nowhere.
        let _written = f(&mut || all_ones(size));
        #[cfg(feature = "bench")]
        if writes && size == 4 && gpa == BENCH_MARK_GPA {
            if let Some(value) = _written {
                bench_mark(self.vm, value as u32);
            }
        }
        Ok(())
    }
}

/// Bench builds only: a 32-bit guest write here (an unclaimed address in
/// the MMIO hole, below the I/O APIC) also prints a `hv: bench mark:` line
/// (`cargo xtask bench`, section `blk`). The access is otherwise the empty
/// bus's: counted, logged once per page, the write dropped.
#[cfg(feature = "bench")]
pub const BENCH_MARK_GPA: u64 = 0xFEBF_F000;

/// `hv: bench mark: vm <name> value <v> tsc <host TSC> exits <total>
/// (<reason>=<count> ...) all vms <total>`: the VM's exit counters summed
/// over its vCPUs, then every VM's together.
#[cfg(feature = "bench")]
#[cold]
fn bench_mark(vm: &Vm, value: u32) {
    use alloc::string::String;
    use core::fmt::Write as _;
    let tsc = arch::regs::rdtsc();
    let totals = vm.stats.totals();
    let mut reasons = String::new();
    for (slot, &n) in totals.iter().enumerate().filter(|(_, &n)| n != 0) {
        let sep = if reasons.is_empty() { "" } else { " " };
        let _ = write!(reasons, "{sep}{}={n}", crate::vm::stats::reason_name(slot));
    }
    let sum = |t: &[u64]| t.iter().fold(0u64, |a, &n| a.wrapping_add(n));
    let total = sum(&totals);
    // Every VM's, for transfers between guests.
    let all = crate::sched::vms()
        .iter()
        .fold(0u64, |a, v| a.wrapping_add(sum(&v.stats.totals())));
    crate::println!(
        "hv: bench mark: vm {} value {value} tsc {tsc} exits {total} ({reasons}) all vms {all}",
        vm.name
    );
}

impl PhysBus for VcpuBus<'_> {
    type Stop = VmEnd;

    fn read(&mut self, gpa: Gpa, buf: &mut [u8]) -> Result<(), VmEnd> {
        if GuestPhysRead::read(&self.vm.mem, gpa, buf) {
            return Ok(());
        }
        let mut val = 0;
        self.rmw(gpa.0, buf.len(), false, |read| {
            val = read();
            None
        })?;
        let n = buf.len().min(8);
        buf[..n].copy_from_slice(&val.to_le_bytes()[..n]);
        Ok(())
    }

    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), VmEnd> {
        if self.vm.mem.write(gpa, data).is_ok() {
            return Ok(());
        }
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let val = u64::from_le_bytes(b);
        self.rmw(gpa.0, data.len(), true, |_| Some(val))
    }
}

/// What a string instruction's operands reach: segmentation and paging of
/// this vCPU, then [`VcpuBus`]; ports through the VM's port bus.
pub struct GuestEnv<'a> {
    pub bus: VcpuBus<'a>,
    /// Segments, paging and CPL as the exit decoded them.
    pub emu: &'a Emu,
}

impl GuestEnv<'_> {
    pub fn new<'a>(vm: &'a Vm, idx: usize, emu: &'a Emu, rip: u64) -> GuestEnv<'a> {
        GuestEnv {
            bus: VcpuBus {
                vm,
                idx,
                now: vm.guest_tsc(),
                rip,
            },
            emu,
        }
    }

    fn access(
        &mut self,
        seg: u8,
        offset: u64,
        write: bool,
        buf: &mut [u8],
    ) -> Result<(), Stop<VmEnd>> {
        let e = self.emu;
        let s = e.segment(seg);
        let la = gwalk::linear(&s, seg, offset, buf.len() as u64, write, e.addr_mode)
            .map_err(Stop::Fault)?;
        let mem = &self.bus.vm.mem;
        match gwalk::access_linear(mem, &mut self.bus, e.paging, la, e.user, write, buf) {
            Ok(()) => Ok(()),
            Err(LinearError::Fault(f)) => Err(Stop::Fault(f)),
            Err(LinearError::Stop(e)) => Err(Stop::End(e)),
            Err(LinearError::Unsupported) => Err(Stop::End(VmEnd::Crashed(format!(
                "string instruction at rip {:#x}: guest paging mode not supported (5-level)",
                self.bus.rip
            )))),
        }
    }
}

impl StringEnv for GuestEnv<'_> {
    type End = VmEnd;

    fn read_mem(&mut self, seg: u8, offset: u64, buf: &mut [u8]) -> Result<(), Stop<VmEnd>> {
        self.access(seg, offset, false, buf)
    }

    fn write_mem(&mut self, seg: u8, offset: u64, data: &[u8]) -> Result<(), Stop<VmEnd>> {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        self.access(seg, offset, true, &mut b[..n])
    }

    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        self.bus.vm.io_read(port, size)
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop<VmEnd>> {
        super::io::note_console_output(self.bus.vm, port);
        match super::io::request_flow(self.bus.vm.io_write(port, size, value)) {
            Flow::End(end) => Err(Stop::End(end)),
            _ => Ok(()),
        }
    }
}

/// The exception a failed guest access raises.
pub fn fault_inject(f: Fault) -> Inject {
    match f {
        Fault::Pf { cr2, code } => Inject::PageFault { cr2, code },
        other => Inject::Exception {
            vector: other.vector(),
            error_code: Some(0),
        },
    }
}

/// Runs a string instruction for up to [`REP_BUDGET`] iterations: RIP
/// advances only once the instruction is done. Device actions that end the
/// guest after a completed iteration still advance RIP past a finished
/// instruction.
pub fn run_string<G: Guest>(
    g: &mut G,
    e: &Exit,
    insn: &StringInsn,
    emu: &Emu,
    len: u64,
) -> Outcome {
    let mut regs = *g.gprs();
    let res = g.run_string(insn, &mut regs, emu, e.rip);
    *g.gprs() = regs;
    match res {
        Ok(Progress::Done) => Outcome::advance(len),
        // Iterations have completed: STI/MOV SS blocking is over, and an
        // interrupt may come before the next chunk (RIP unchanged).
        Ok(Progress::Again) => Outcome::advance(0),
        Err(Stop::Fault(f)) => Outcome::fault(fault_inject(f)),
        Err(Stop::End(end)) => Outcome::advance(len).with_flow(Flow::End(end)),
    }
}

fn string_insn(d: &Decoded, op: StringOp, bytes: &[u8], mode: Mode) -> StringInsn {
    let p = decode::prefixes(bytes, mode);
    let seg = p.seg.unwrap_or(gwalk::DS);
    let (src, dst) = match op {
        StringOp::Movs => (Src::Mem(seg), Dst::Mem),
        StringOp::Stos => (Src::Acc, Dst::Mem),
        StringOp::Lods => (Src::Mem(seg), Dst::Acc),
    };
    StringInsn {
        src,
        dst,
        size: d.size,
        addr_size: p.addr_size,
        rep: p.rep,
    }
}

/// Emulates the instruction that touched `x.gpa` (a device page, or the
/// empty bus under `unmapped_access = "ignore"`).
pub fn handle<G: Guest>(g: &mut G, e: &Exit, x: &EptExit) -> Outcome {
    let gpa = x.gpa;
    let (d, insn) = match x.insn {
        Ok(di) => di,
        Err(InsnError::Fetch(la)) => {
            return Outcome::end(VmEnd::Crashed(format!(
                "MMIO at {gpa:#x}: cannot fetch the instruction at rip {la:#x}"
            )))
        }
        Err(InsnError::Decode(err, insn)) => {
            let b = insn.bytes();
            return Outcome::end(VmEnd::Crashed(format!(
                "MMIO at {gpa:#x}: cannot emulate the instruction at rip {:#x} ({err:?}, bytes {:02x?})",
                e.rip,
                &b[..b.len().min(8)]
            )));
        }
    };
    if let MemOp::String(op) = d.op {
        let si = string_insn(&d, op, insn.bytes(), x.emu.mode);
        return run_string(g, e, &si, &x.emu, u64::from(d.len));
    }
    let mut regs = *g.gprs();
    regs[RSP] = x.emu.rsp;
    let mut rflags = x.emu.rflags;
    let res = g.mmio_rmw(gpa, usize::from(d.size), d.op.writes(), e.rip, |read| {
        decode::emulate(&d, &mut regs, &mut rflags, read)
    });
    if let Err(end) = res {
        return Outcome::end(end);
    }
    *g.gprs() = regs;
    // Only what the instruction changed goes back to the VMCS.
    let rsp = (regs[RSP] != x.emu.rsp).then_some(Write::Rsp(regs[RSP]));
    let flags = (rflags != x.emu.rflags).then_some(Write::Rflags(rflags));
    Outcome::with_writes(
        Rip::Advance(u64::from(d.len)),
        [rsp.unwrap_or(Write::None), flags.unwrap_or(Write::None)],
    )
}
