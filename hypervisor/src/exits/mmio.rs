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
use super::string::{self, Dst, Progress, Src, Stop, StringEnv, StringInsn};
use crate::vm::gwalk::{
    self, Access, AddrMode, Fault, GuestPhysRead, LinearError, PagingRegs, PhysBus, Segment,
};
use crate::vm::memory::{Gpa, GuestMemory};
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vm::{Vm, VmEnd};
use crate::vmx::run::RSP;
use alloc::format;
use arch::vmx::vmcs::guest;

/// Iterations of a REP string instruction per exit (then the instruction
/// executes again, and interrupts can be taken in between).
pub const REP_BUDGET: u64 = 512;

impl GuestPhysRead for GuestMemory {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> bool {
        self.read_into(gpa, buf).is_ok()
    }
}

pub fn cpu_mode() -> Mode {
    let cr0 = super::cr::visible_cr0();
    let ar = guest::CS_ACCESS_RIGHTS.read().unwrap_or(0);
    if cr0 & 1 == 0 {
        Mode::Real16
    } else if ar & (1 << 13) != 0 {
        Mode::Long64
    } else if ar & (1 << 14) != 0 {
        Mode::Prot32
    } else {
        // 16-bit protected mode: same operand defaults as real mode.
        Mode::Real16
    }
}

/// How segments apply: real and virtual-8086 mode (RFLAGS.VM), protected or
/// compatibility mode, 64-bit mode.
pub fn addr_mode() -> AddrMode {
    let cr0 = super::cr::visible_cr0();
    let rflags = guest::RFLAGS.read().unwrap_or(0);
    let cs_ar = guest::CS_ACCESS_RIGHTS.read().unwrap_or(0);
    if cr0 & 1 == 0 || rflags & (1 << 17) != 0 {
        AddrMode::Real
    } else if cs_ar & (1 << 13) != 0 {
        AddrMode::Long64
    } else {
        AddrMode::Protected
    }
}

pub fn paging_regs() -> PagingRegs {
    PagingRegs {
        cr0: guest::CR0.read().unwrap_or(0),
        cr3: guest::CR3.read().unwrap_or(0),
        cr4: guest::CR4.read().unwrap_or(0),
        efer: guest::IA32_EFER.read().unwrap_or(0),
    }
}

/// The segment register `which` (`gwalk::ES`..`GS`) from the VMCS.
pub fn segment(which: u8) -> Segment {
    use guest::*;
    let (b, l, a) = match which {
        gwalk::ES => (ES_BASE, ES_LIMIT, ES_ACCESS_RIGHTS),
        gwalk::CS => (CS_BASE, CS_LIMIT, CS_ACCESS_RIGHTS),
        gwalk::SS => (SS_BASE, SS_LIMIT, SS_ACCESS_RIGHTS),
        gwalk::FS => (FS_BASE, FS_LIMIT, FS_ACCESS_RIGHTS),
        gwalk::GS => (GS_BASE, GS_LIMIT, GS_ACCESS_RIGHTS),
        _ => (DS_BASE, DS_LIMIT, DS_ACCESS_RIGHTS),
    };
    Segment {
        base: b.read().unwrap_or(0),
        limit: l.read().unwrap_or(0),
        ar: a.read().unwrap_or(0),
    }
}

/// The guest-physical address of an instruction fetch at linear `la`.
pub fn translate_fetch(v: &Vcpu, la: u64) -> Option<u64> {
    gwalk::translate(&v.vm.mem, paging_regs(), la, Access::FETCH)
        .ok()
        .map(u64::from)
}

/// Fetches up to 15 instruction bytes at the guest's CS:RIP.
pub fn fetch(v: &Vcpu, buf: &mut [u8; 15]) -> Result<usize, alloc::string::String> {
    let regs = paging_regs();
    let rip = guest::CS_BASE.read().unwrap_or(0).wrapping_add(v.rip());
    // The instruction may end before the next page, which may be unmapped.
    let to_page_end = (0x1000 - (rip & 0xFFF)) as usize;
    for len in [15usize, to_page_end.min(15)] {
        if gwalk::read_virt(&v.vm.mem, regs, rip, Access::FETCH, &mut buf[..len]).is_ok() {
            return Ok(len);
        }
    }
    Err(format!("cannot fetch the instruction at rip {rip:#x}"))
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
        let _ = f(&mut || all_ones(size));
        Ok(())
    }
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
    pub mode: AddrMode,
    pub paging: PagingRegs,
    pub user: bool,
}

impl GuestEnv<'_> {
    pub fn new(v: &Vcpu) -> GuestEnv<'_> {
        GuestEnv {
            bus: VcpuBus {
                vm: &v.vm,
                idx: v.index,
                now: v.vm.guest_tsc(),
                rip: v.rip(),
            },
            mode: addr_mode(),
            paging: paging_regs(),
            user: v.cpl() == 3,
        }
    }

    fn access(
        &mut self,
        seg: u8,
        offset: u64,
        write: bool,
        buf: &mut [u8],
    ) -> Result<(), Stop<VmEnd>> {
        let s = segment(seg);
        let la = gwalk::linear(&s, seg, offset, buf.len() as u64, write, self.mode)
            .map_err(Stop::Fault)?;
        let mem = &self.bus.vm.mem;
        match gwalk::access_linear(mem, &mut self.bus, self.paging, la, self.user, write, buf) {
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
        match crate::vm::request_end(self.bus.vm.io_write(port, size, value)) {
            None => Ok(()),
            Some(end) => Err(Stop::End(end)),
        }
    }
}

/// Injects the exception a failed guest access raises.
pub fn inject_fault(v: &mut Vcpu, f: Fault) {
    match f {
        Fault::Pf { cr2, code } => v.inject_page_fault(cr2, code),
        other => v.inject_exception(other.vector(), Some(0)),
    }
}

/// Runs a string instruction for up to [`REP_BUDGET`] iterations and
/// finishes the exit: RIP advances only once the instruction is done.
/// Device actions that end the guest after a completed iteration still
/// advance RIP past a finished instruction.
pub fn run_string(v: &mut Vcpu, insn: &StringInsn, len: u64) -> Flow {
    let mut regs = v.regs.gpr;
    let rflags = guest::RFLAGS.read().unwrap_or(0);
    let res = {
        let mut env = GuestEnv::new(v);
        string::run(insn, &mut regs, rflags, &mut env, REP_BUDGET)
    };
    v.regs.gpr = regs;
    match res {
        Ok(Progress::Done) => {
            set_rip(v, len);
            Flow::Continue
        }
        Ok(Progress::Again) => {
            // Iterations have completed: STI/MOV SS blocking is over, and an
            // interrupt may come before the next chunk (RIP unchanged).
            set_rip(v, 0);
            Flow::Continue
        }
        Err(Stop::Fault(f)) => {
            inject_fault(v, f);
            Flow::Continue
        }
        Err(Stop::End(e)) => {
            set_rip(v, len);
            Flow::End(e)
        }
    }
}

fn set_rip(v: &mut Vcpu, len: u64) {
    let rip = v.rip().wrapping_add(len);
    // SAFETY: the vCPU's VMCS is current.
    let _ = unsafe { guest::RIP.write(rip) };
    // Blocking by STI / MOV SS ends with the instruction (SDM Vol. 3C 25.4.2).
    let st = guest::INTERRUPTIBILITY_STATE.read().unwrap_or(0);
    if st & 3 != 0 {
        // SAFETY: as above.
        let _ = unsafe { guest::INTERRUPTIBILITY_STATE.write(st & !3) };
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

/// Emulates the instruction that touched `gpa` (a device page, or the empty
/// bus under `unmapped_access = "ignore"`).
pub fn handle(v: &mut Vcpu, gpa: u64) -> Flow {
    let mut bytes = [0u8; 15];
    let n = match fetch(v, &mut bytes) {
        Ok(n) => n,
        Err(e) => return Flow::End(VmEnd::Crashed(format!("MMIO at {gpa:#x}: {e}"))),
    };
    let mode = cpu_mode();
    let d = match decode::decode(&bytes[..n], mode) {
        Ok(d) => d,
        Err(e) => {
            return Flow::End(VmEnd::Crashed(format!(
            "MMIO at {gpa:#x}: cannot emulate the instruction at rip {:#x} ({e:?}, bytes {:02x?})",
            v.rip(),
            &bytes[..n.min(8)]
        )))
        }
    };
    if let MemOp::String(op) = d.op {
        let insn = string_insn(&d, op, &bytes[..n], mode);
        return run_string(v, &insn, u64::from(d.len));
    }
    let mut regs = v.regs.gpr;
    regs[RSP] = guest::RSP.read().unwrap_or(0);
    let mut rflags = guest::RFLAGS.read().unwrap_or(0);
    let res = {
        let mut bus = VcpuBus {
            vm: &v.vm,
            idx: v.index,
            now: v.vm.guest_tsc(),
            rip: v.rip(),
        };
        bus.rmw(gpa, usize::from(d.size), d.op.writes(), |read| {
            decode::emulate(&d, &mut regs, &mut rflags, read)
        })
    };
    if let Err(end) = res {
        return Flow::End(end);
    }
    v.regs.gpr = regs;
    // SAFETY: the vCPU's VMCS is current.
    unsafe {
        let _ = guest::RSP.write(regs[RSP]);
        let _ = guest::RFLAGS.write(rflags);
    }
    set_rip(v, u64::from(d.len));
    Flow::Continue
}
