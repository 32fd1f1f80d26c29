//! Host tests of the exit handlers: constructed [`Exit`] values, a model of
//! a vCPU ([`Fake`]) for what the handlers reach besides the exit, and
//! assertions on the returned [`Outcome`] (the writes, the fault, the flow).
use super::cr::{CrFixed, CrState};
use super::decode::{self, Mode};
use super::msr::{misc, MsrState};
use super::outcome::{Inject, Outcome, Rip, Write};
use super::string::{self, Dst, Progress, Src, Stop, StringEnv, StringInsn};
use super::vmexit::{CrExit, Emu, EptExit, Exit, Info, Insn, InsnError, IoExit};
use super::{cpuid, cr, io, mmio, msr, vmcall, xsetbv, Guest};
use crate::vm::gwalk::{AddrMode, Fault, PagingRegs, Segment};
use crate::vm::vcpu::Flow;
use crate::vm::VmEnd;
use crate::vmx::run::{RAX, RBX, RCX, RDX, RSI, RSP};
use arch::regs::{cr0, cr4};
use arch::vmx::exit::{CrQualification, EptViolation, ExitReason as R, IoQualification};
use devices::lapic::{Gp, VLapic};
use devices::{Effects, Request};
use std::cell::RefCell;
use std::vec::Vec;

/// A vCPU with 64 KiB of RAM at guest-physical 0, ports that answer
/// `io_in` and record writes, and an MMIO device page that reads
/// `mmio_value` and records writes.
struct Fake {
    gpr: [u64; 16],
    xcr0: u64,
    loaded_xcr0: Option<u64>,
    supported: u64,
    msrs: MsrState,
    lapic: spin::Mutex<VLapic>,
    ram: Vec<u8>,
    console: RefCell<Vec<u8>>,
    io_in: u32,
    outs: RefCell<Vec<(u16, u8, u32)>>,
    out_request: Request,
    device: bool,
    /// How often a handler asked `device_at`.
    lookups: std::cell::Cell<u32>,
    stop: bool,
    unmapped: RefCell<Vec<(u64, bool)>>,
    mmio_value: u64,
    mmio: Vec<(u64, usize, Option<u64>)>,
    /// What the local APIC's MSR writes changed, in order.
    effects: RefCell<Vec<Effects>>,
}

impl Fake {
    fn new() -> Self {
        Fake {
            gpr: [0; 16],
            xcr0: 1,
            loaded_xcr0: None,
            supported: 0x7,
            msrs: MsrState::default(),
            lapic: spin::Mutex::new(VLapic::new(0, true, 10)),
            ram: std::vec![0; 0x10000],
            console: RefCell::new(Vec::new()),
            io_in: 0,
            outs: RefCell::new(Vec::new()),
            out_request: Request::None,
            device: true,
            lookups: std::cell::Cell::new(0),
            stop: false,
            unmapped: RefCell::new(Vec::new()),
            mmio_value: 0,
            mmio: Vec::new(),
            effects: RefCell::new(Vec::new()),
        }
    }
}

impl Guest for Fake {
    fn gprs(&mut self) -> &mut [u64; 16] {
        &mut self.gpr
    }
    fn index(&self) -> usize {
        0
    }
    fn vcpus(&self) -> u32 {
        2
    }
    fn xcr0(&self) -> u64 {
        self.xcr0
    }
    fn load_xcr0(&mut self, value: u64) {
        self.xcr0 = value;
        self.loaded_xcr0 = Some(value);
    }
    fn xcr0_supported(&self) -> u64 {
        self.supported
    }
    fn msrs(&mut self) -> &mut MsrState {
        &mut self.msrs
    }
    fn lapic(&self) -> spin::MutexGuard<'_, VLapic> {
        self.lapic.lock()
    }
    fn lapic_write_msr(&self, msr: u32, value: u64) -> Result<(), Gp> {
        let now = self.guest_tsc();
        let fx = self.lapic.lock().write_msr(msr, value, now)?;
        self.effects.borrow_mut().push(fx);
        Ok(())
    }
    fn lapic_write_tsc_deadline(&self, value: u64) {
        let now = self.guest_tsc();
        let fx = self.lapic.lock().write_tsc_deadline(value, now);
        self.effects.borrow_mut().push(fx);
    }
    fn guest_tsc(&self) -> u64 {
        1000
    }
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(src) = usize::try_from(gpa)
            .ok()
            .and_then(|a| self.ram.get(a..a.checked_add(buf.len())?))
        else {
            return false;
        };
        buf.copy_from_slice(src);
        true
    }
    fn console_write(&self, bytes: &[u8]) {
        self.console.borrow_mut().extend_from_slice(bytes);
    }
    fn io_read(&self, _port: u16, _size: u8) -> u32 {
        self.io_in
    }
    fn io_write(&self, port: u16, size: u8, value: u32) -> Request {
        self.outs.borrow_mut().push((port, size, value));
        self.out_request
    }
    fn device_at(&self, _gpa: u64) -> bool {
        self.lookups.set(self.lookups.get() + 1);
        self.device
    }
    fn unmapped_stop(&self) -> bool {
        self.stop
    }
    fn unmapped(&self, gpa: u64, write: bool, _rip: u64) -> Result<(), VmEnd> {
        self.unmapped.borrow_mut().push((gpa, write));
        if self.stop {
            Err(VmEnd::Crashed("stopped".into()))
        } else {
            Ok(())
        }
    }
    fn mmio_rmw(
        &mut self,
        gpa: u64,
        size: usize,
        _writes: bool,
        _rip: u64,
        f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    ) -> Result<(), VmEnd> {
        let v = self.mmio_value;
        let w = f(&mut || v);
        self.mmio.push((gpa, size, w));
        Ok(())
    }
    fn run_string(
        &mut self,
        insn: &StringInsn,
        regs: &mut [u64; 16],
        emu: &Emu,
        _rip: u64,
    ) -> Result<Progress, Stop<VmEnd>> {
        struct Env<'a>(&'a mut Fake);
        impl StringEnv for Env<'_> {
            type End = VmEnd;
            fn read_mem(&mut self, _s: u8, off: u64, buf: &mut [u8]) -> Result<(), Stop<VmEnd>> {
                if self.0.read_ram(off, buf) {
                    Ok(())
                } else {
                    Err(Stop::Fault(Fault::Pf { cr2: off, code: 0 }))
                }
            }
            fn write_mem(&mut self, _s: u8, off: u64, data: &[u8]) -> Result<(), Stop<VmEnd>> {
                let a = off as usize;
                match self.0.ram.get_mut(a..a + data.len()) {
                    Some(d) => {
                        d.copy_from_slice(data);
                        Ok(())
                    }
                    None => Err(Stop::Fault(Fault::Pf { cr2: off, code: 2 })),
                }
            }
            fn port_in(&mut self, port: u16, size: u8) -> u32 {
                self.0.io_read(port, size)
            }
            fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop<VmEnd>> {
                match io::request_flow(self.0.io_write(port, size, value)) {
                    Flow::End(e) => Err(Stop::End(e)),
                    _ => Ok(()),
                }
            }
        }
        string::run(insn, regs, emu.rflags, &mut Env(self), 4)
    }
}

fn exit(reason: R, len: u64, info: Info) -> Exit {
    Exit {
        reason,
        rip: 0x1000,
        len,
        info,
    }
}

fn advanced(len: u64) -> Outcome {
    Outcome::advance(len)
}

fn gp() -> Outcome {
    Outcome::fault(Inject::GP0)
}

// ---- CPUID ------------------------------------------------------------

#[test]
fn cpuid_hypervisor_leaf_fills_four_registers_and_advances() {
    let mut g = Fake::new();
    g.gpr[RAX] = 0xFFFF_FFFF_4000_0000;
    g.gpr[RBX] = u64::MAX;
    g.gpr[RCX] = 0x1234_0000_0000_0000;
    g.gpr[RDX] = u64::MAX;
    let e = exit(
        R::Cpuid,
        2,
        Info::Cpuid {
            cr4: 0,
            secondary: 0,
        },
    );
    assert_eq!(cpuid::handle(&mut g, &e), advanced(2));
    // The upper halves are cleared (CPUID writes 32-bit registers).
    assert_eq!(g.gpr[RAX], u64::from(cpuid::HV_LEAF_MAX));
    assert_eq!(
        [g.gpr[RBX], g.gpr[RCX], g.gpr[RDX]],
        cpuid::SIGNATURE.map(u64::from)
    );
}

#[test]
fn cpuid_leaf1_follows_cr4_osxsave_and_apic_enable() {
    let mut g = Fake::new();
    let on = exit(
        R::Cpuid,
        2,
        Info::Cpuid {
            cr4: cr4::OSXSAVE,
            secondary: 0,
        },
    );
    g.gpr[RAX] = 1;
    cpuid::handle(&mut g, &on);
    assert_ne!(g.gpr[RCX] & (1 << 27), 0, "OSXSAVE follows CR4");
    assert_ne!(g.gpr[RDX] & (1 << 9), 0, "APIC enabled at reset");
    assert_eq!(g.gpr[RBX] >> 24 & 0xFF, 0, "initial APIC ID of vCPU 0");
    assert_eq!(g.gpr[RBX] >> 16 & 0xFF, 2, "logical processors");
    g.lapic().set_apic_base(0xFEE0_0100).expect("APIC off");
    g.gpr[RAX] = 1;
    let off = exit(
        R::Cpuid,
        2,
        Info::Cpuid {
            cr4: 0,
            secondary: 0,
        },
    );
    cpuid::handle(&mut g, &off);
    assert_eq!(g.gpr[RCX] & (1 << 27), 0);
    assert_eq!(g.gpr[RDX] & (1 << 9), 0, "APIC disabled in IA32_APIC_BASE");
}

// ---- MSRs -------------------------------------------------------------

fn rdmsr(g: &mut Fake, msr: u32, vmcs: u64) -> Outcome {
    g.gpr[RCX] = u64::from(msr);
    msr::rdmsr(g, &exit(R::Rdmsr, 2, Info::Rdmsr { vmcs }))
}

fn wrmsr(g: &mut Fake, msr: u32, value: u64, cr0: u64, efer: u64) -> Outcome {
    g.gpr[RCX] = u64::from(msr);
    g.gpr[RAX] = (value & 0xFFFF_FFFF) | 0xDEAD_0000_0000_0000;
    g.gpr[RDX] = value >> 32;
    msr::wrmsr(g, &exit(R::Wrmsr, 2, Info::Wrmsr { cr0, efer }))
}

#[test]
fn rdmsr_splits_edx_eax() {
    let mut g = Fake::new();
    g.gpr[RAX] = u64::MAX;
    g.gpr[RDX] = u64::MAX;
    assert_eq!(
        rdmsr(&mut g, arch::msr::IA32_EFER, 0x1_0000_0D01),
        advanced(2)
    );
    assert_eq!((g.gpr[RAX], g.gpr[RDX]), (0xD01, 1));
    assert_eq!(rdmsr(&mut g, arch::msr::IA32_MISC_ENABLE, 0), advanced(2));
    assert_eq!(g.gpr[RAX], misc::RESET);
    assert_eq!(rdmsr(&mut g, arch::msr::IA32_APIC_BASE, 0), advanced(2));
    assert_eq!(g.gpr[RAX], 0xFEE0_0900, "BSP, enabled, default base");
    assert_eq!(
        rdmsr(&mut g, arch::msr::IA32_SYSENTER_EIP, 0xFFFF_8000_0000_1000),
        advanced(2)
    );
    assert_eq!((g.gpr[RAX], g.gpr[RDX]), (0x1000, 0xFFFF_8000));
}

#[test]
fn rdmsr_of_an_unknown_msr_is_gp_and_changes_nothing() {
    let mut g = Fake::new();
    g.gpr[RAX] = 7;
    g.gpr[RDX] = 8;
    for m in [0x1234, 0xC000_0103_u32 + 0x100, 0x48, 0x3B] {
        assert_eq!(rdmsr(&mut g, m, 0), gp(), "{m:#x}");
        assert_eq!((g.gpr[RAX], g.gpr[RDX]), (7, 8));
    }
    // The x2APIC range while the APIC is in xAPIC mode (SDM Vol. 3A 11.12.1).
    assert_eq!(rdmsr(&mut g, 0x802, 0), gp());
}

#[test]
fn wrmsr_x2apic_and_tsc_deadline_go_through_the_lapic_with_their_effects() {
    use devices::lapic::{DeliveryMode, Shorthand};
    let mut g = Fake::new();
    // xAPIC mode: the x2APIC MSRs are #GP and nothing reaches the model.
    assert_eq!(wrmsr(&mut g, 0x808, 0x20, 0, 0), gp());
    assert!(g.effects.borrow().is_empty());
    // EN | EXTD: x2APIC mode (SDM Vol. 3A 11.12.1).
    assert_eq!(
        wrmsr(&mut g, arch::msr::IA32_APIC_BASE, 0xFEE0_0C00, 0, 0),
        advanced(2)
    );
    assert_eq!(wrmsr(&mut g, 0x808, 0x20, 0, 0), advanced(2));
    assert_eq!(g.lapic().tpr(), 0x20);
    // A reserved TPR bit and a read-only register (the version) are #GP.
    assert_eq!(wrmsr(&mut g, 0x808, 0x100, 0, 0), gp());
    assert_eq!(wrmsr(&mut g, 0x803, 0, 0, 0), gp());
    // A fixed IPI to all but self comes back as one message to route.
    assert_eq!(wrmsr(&mut g, 0x830, (3 << 18) | 0x41, 0, 0), advanced(2));
    {
        let fx = g.effects.borrow();
        let m = fx.last().and_then(|f| f.messages.first()).expect("an IPI");
        assert_eq!(
            (m.dest_shorthand, m.delivery, m.vector, m.x2apic),
            (Shorthand::AllExcludingSelf, DeliveryMode::Fixed, 0x41, true)
        );
    }
    // Software-enabled (SVR bit 8), TSC-deadline mode (LVT timer bits
    // 18:17 = 2), then a deadline: the timer's new deadline is in the effects.
    assert_eq!(wrmsr(&mut g, 0x80F, 0x1FF, 0, 0), advanced(2));
    assert_eq!(wrmsr(&mut g, 0x832, (2 << 17) | 0x30, 0, 0), advanced(2));
    assert_eq!(
        wrmsr(&mut g, arch::msr::IA32_TSC_DEADLINE, 5000, 0, 0),
        advanced(2)
    );
    assert_eq!(
        g.effects.borrow().last().map(|f| f.deadline),
        Some(Some(Some(5000)))
    );
    assert_eq!(rdmsr(&mut g, arch::msr::IA32_TSC_DEADLINE, 0), advanced(2));
    assert_eq!(g.gpr[RAX], 5000);
}

#[test]
fn wrmsr_efer_follows_paging_and_lme() {
    let mut g = Fake::new();
    use arch::msr::IA32_EFER;
    // Paging off: LME set, LMA stays clear, the entry control is cleared.
    assert_eq!(
        wrmsr(&mut g, IA32_EFER, 0x100, cr0::PE, 0),
        advanced(2)
            .write(Write::EntryIa32e(false))
            .write(Write::Efer(0x100))
    );
    // A write of LMA is ignored.
    assert_eq!(
        wrmsr(&mut g, IA32_EFER, 0x401, cr0::PE, 0),
        advanced(2)
            .write(Write::EntryIa32e(false))
            .write(Write::Efer(0x1))
    );
    // Paging on with LME unchanged: LMA follows, IA-32e mode guest.
    let pg = cr0::PE | cr0::PG;
    assert_eq!(
        wrmsr(&mut g, IA32_EFER, 0x901, pg, 0x500),
        advanced(2)
            .write(Write::EntryIa32e(true))
            .write(Write::Efer(0xD01))
    );
    // LME can't change with paging on (SDM Vol. 3A 10.8.5).
    assert_eq!(wrmsr(&mut g, IA32_EFER, 0x1, pg, 0x500), gp());
    assert_eq!(wrmsr(&mut g, IA32_EFER, 0x100, pg, 0), gp());
    // Reserved bits.
    assert_eq!(wrmsr(&mut g, IA32_EFER, 1 << 12, 0, 0), gp());
    assert_eq!(wrmsr(&mut g, IA32_EFER, 1 << 32, 0, 0), gp());
    // NXE while IA32_MISC_ENABLE.XD_DISABLE is set.
    g.msrs.misc_enable |= misc::XD_DISABLE;
    assert_eq!(wrmsr(&mut g, IA32_EFER, 1 << 11, 0, 0), gp());
}

#[test]
fn wrmsr_pat_sysenter_and_others() {
    let mut g = Fake::new();
    use arch::msr as m;
    let pat = 0x0007_0406_0007_0406;
    assert_eq!(
        wrmsr(&mut g, m::IA32_PAT, pat, 0, 0),
        advanced(2).write(Write::Pat(pat))
    );
    assert_eq!(
        wrmsr(&mut g, m::IA32_PAT, 0x02, 0, 0),
        gp(),
        "type 2 reserved"
    );
    assert_eq!(
        wrmsr(&mut g, m::IA32_SYSENTER_CS, 0x1_0010, 0, 0),
        advanced(2).write(Write::SysenterCs(0x1_0010))
    );
    assert_eq!(
        wrmsr(&mut g, m::IA32_SYSENTER_ESP, 0xFFFF_8000_0000_0000, 0, 0),
        advanced(2).write(Write::SysenterEsp(0xFFFF_8000_0000_0000))
    );
    // The lowest non-canonical address for this CPU's linear-address width
    // (48 bits, or 57 with 5-level paging: the host's CPUID decides).
    let non_canonical = 1u64 << (super::msr::linear_width() - 1);
    assert_eq!(
        wrmsr(&mut g, m::IA32_SYSENTER_EIP, non_canonical, 0, 0),
        gp(),
        "non-canonical {non_canonical:#x}"
    );
    assert_eq!(wrmsr(&mut g, 0x17A, 1, 0, 0), gp(), "MCG_STATUS != 0");
    assert_eq!(wrmsr(&mut g, 0x17A, 0, 0, 0), advanced(2));
    assert_eq!(wrmsr(&mut g, 0x1234, 0, 0, 0), gp());
    // IA32_MISC_ENABLE keeps state outside the VMCS.
    let v = misc::RESET | misc::LIMIT_CPUID_MAXVAL;
    assert_eq!(wrmsr(&mut g, m::IA32_MISC_ENABLE, v, 0, 0), advanced(2));
    assert_eq!(g.msrs.misc_enable, v);
    assert_eq!(wrmsr(&mut g, m::IA32_MISC_ENABLE, v | 1 << 18, 0, 0), gp());
    assert_eq!(g.msrs.misc_enable, v);
    // The TSC: a new offset.
    match wrmsr(&mut g, 0x10, 0, 0, 0).writes() {
        [Write::TscOffset(_)] => {}
        w => panic!("{w:?}"),
    }
}

// ---- Control registers ------------------------------------------------

fn fixed() -> CrFixed {
    CrFixed {
        cr0_fixed0: cr0::PE | cr0::NE | cr0::PG,
        cr4_fixed0: cr4::VMXE,
        cr4_allowed: 0x0037_07FF & !cr4::VMXE & !cr4::SMXE,
        maxphyaddr: 36,
    }
}

fn real_mode() -> CrState {
    CrState {
        cr0: cr0::ET,
        cr4: 0,
        cr3: 0x2000,
        efer: 0,
        cs_l: false,
    }
}

fn cr_exit(q: u64, state: CrState, rsp: u64) -> Exit {
    exit(
        R::CrAccess,
        3,
        Info::Cr(CrExit {
            q: CrQualification::decode(q),
            state,
            rsp,
            fixed: fixed(),
        }),
    )
}

/// Qualification of MOV to CRn from register `gpr` (SDM Vol. 3C Table 28-3).
fn mov_to(cr: u64, gpr: u64) -> u64 {
    cr | gpr << 8
}

fn mov_from(cr: u64, gpr: u64) -> u64 {
    cr | 1 << 4 | gpr << 8
}

#[test]
fn mov_to_cr0_enters_protected_mode() {
    let mut g = Fake::new();
    g.gpr[RAX] = cr0::PE | cr0::ET;
    let o = cr::handle(&mut g, &cr_exit(mov_to(0, 0), real_mode(), 0));
    assert_eq!(
        o,
        advanced(3)
            .write(Write::EntryIa32e(false))
            .write(Write::Efer(0))
            .write(Write::Cr0 {
                shadow: cr0::PE | cr0::ET,
                real: cr0::PE | cr0::ET | cr0::NE,
            })
    );
}

#[test]
fn mov_to_cr0_rejects_invalid_values() {
    let mut g = Fake::new();
    for bad in [cr0::PG, cr0::PE | cr0::NW, 1 << 32 | cr0::PE] {
        g.gpr[RBX] = bad;
        assert_eq!(
            cr::handle(&mut g, &cr_exit(mov_to(0, 3), real_mode(), 0)),
            gp(),
            "{bad:#x}"
        );
    }
    // IA-32e activation without PAE.
    g.gpr[RBX] = cr0::PE | cr0::PG;
    let lme = CrState {
        efer: 0x100,
        ..real_mode()
    };
    assert_eq!(cr::handle(&mut g, &cr_exit(mov_to(0, 3), lme, 0)), gp());
}

#[test]
fn mov_to_cr0_activates_ia32e_mode() {
    let mut g = Fake::new();
    let s = CrState {
        cr0: cr0::PE | cr0::ET,
        cr4: cr4::PAE,
        cr3: 0x3000,
        efer: 0x100,
        cs_l: false,
    };
    let val = cr0::PE | cr0::ET | cr0::PG;
    g.gpr[RDX] = val;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(0, 2), s, 0)),
        advanced(3)
            .write(Write::EntryIa32e(true))
            .write(Write::Efer(0x500))
            .write(Write::Cr0 {
                shadow: val,
                real: val | cr0::NE,
            })
    );
}

#[test]
fn pae_paging_loads_the_pdptes_from_cr3() {
    let mut g = Fake::new();
    let pdptes = [0x5001u64, 0, 0x7001, 0x8001];
    for (i, p) in pdptes.iter().enumerate() {
        g.ram[0x3000 + 8 * i..0x3008 + 8 * i].copy_from_slice(&p.to_le_bytes());
    }
    let s = CrState {
        cr0: cr0::PE | cr0::ET,
        cr4: cr4::PAE,
        cr3: 0x3000,
        efer: 0,
        cs_l: false,
    };
    let val = cr0::PE | cr0::ET | cr0::PG;
    g.gpr[RAX] = val;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(0, 0), s, 0)),
        advanced(3)
            .write(Write::Pdptes(pdptes))
            .write(Write::EntryIa32e(false))
            .write(Write::Efer(0))
            .write(Write::Cr0 {
                shadow: val,
                real: val | cr0::NE,
            })
    );
    // MOV to CR4 setting PAE with paging on loads them too.
    let paged = CrState {
        cr0: val,
        cr4: 0,
        ..s
    };
    g.gpr[RAX] = cr4::PAE;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(4, 0), paged, 0)),
        advanced(3).write(Write::Pdptes(pdptes)).write(Write::Cr4 {
            shadow: cr4::PAE,
            real: cr4::PAE | cr4::VMXE,
        })
    );
    // A present PDPTE with a reserved bit (bit 1): #GP, nothing written.
    g.ram[0x3008..0x3010].copy_from_slice(&0x6003u64.to_le_bytes());
    g.gpr[RAX] = val;
    assert_eq!(cr::handle(&mut g, &cr_exit(mov_to(0, 0), s, 0)), gp());
    // CR3 outside RAM: the empty bus reads all-ones.
    let no_ram = CrState {
        cr3: 0x10_0000,
        ..s
    };
    assert_eq!(cr::handle(&mut g, &cr_exit(mov_to(0, 0), no_ram, 0)), gp());
}

#[test]
fn mov_to_cr4_from_rsp_and_unsupported_bits() {
    let mut g = Fake::new();
    let s = CrState {
        cr0: cr0::PE | cr0::ET,
        ..real_mode()
    };
    // Register 4 is RSP, which the exit carries.
    g.gpr[RSP] = 0xBAD;
    let val = cr4::PSE | cr4::OSFXSR;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(4, 4), s, val)),
        advanced(3).write(Write::Cr4 {
            shadow: val,
            real: val | cr4::VMXE,
        })
    );
    g.gpr[RCX] = cr4::VMXE;
    assert_eq!(cr::handle(&mut g, &cr_exit(mov_to(4, 1), s, 0)), gp());
    g.gpr[RCX] = cr4::PCIDE;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(4, 1), s, 0)),
        gp(),
        "PCIDE outside IA-32e mode"
    );
}

#[test]
fn mov_to_and_from_cr8_is_the_tpr() {
    let mut g = Fake::new();
    g.gpr[RBX] = 5;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(8, 3), real_mode(), 0)),
        advanced(3)
    );
    assert_eq!(g.lapic().tpr(), 0x50);
    g.gpr[RBX] = 0x10;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(8, 3), real_mode(), 0)),
        gp()
    );
    assert_eq!(g.lapic().tpr(), 0x50);
    g.gpr[RDX] = u64::MAX;
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_from(8, 2), real_mode(), 0)),
        advanced(3)
    );
    assert_eq!(g.gpr[RDX], 5);
    // Into RSP: a VMCS write.
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_from(8, 4), real_mode(), 0)),
        advanced(3).write(Write::Rsp(5))
    );
}

#[test]
fn clts_and_lmsw() {
    let mut g = Fake::new();
    let s = CrState {
        cr0: cr0::PE | cr0::ET | cr0::TS | cr0::MP,
        ..real_mode()
    };
    let cr0_write = |v: u64| {
        advanced(3)
            .write(Write::EntryIa32e(false))
            .write(Write::Efer(0))
            .write(Write::Cr0 {
                shadow: v,
                real: v | cr0::NE,
            })
    };
    // CLTS (access type 2).
    assert_eq!(
        cr::handle(&mut g, &cr_exit(2 << 4, s, 0)),
        cr0_write(cr0::PE | cr0::ET | cr0::MP)
    );
    // LMSW 0xE (access type 3, source in bits 31:16): loads MP/EM/TS,
    // can't clear PE.
    assert_eq!(
        cr::handle(&mut g, &cr_exit(3 << 4 | 0xE << 16, s, 0)),
        cr0_write(cr0::PE | cr0::ET | cr0::MP | cr0::EM | cr0::TS)
    );
    assert_eq!(
        cr::handle(&mut g, &cr_exit(3 << 4, s, 0)),
        cr0_write(cr0::PE | cr0::ET)
    );
}

#[test]
fn cr3_accesses_do_not_exit_so_one_that_does_is_gp() {
    // CR3-load/store exiting is off (vmcs_setup); an exit for it can only
    // come from a CPU that forces it, which the hypervisor doesn't emulate.
    let mut g = Fake::new();
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_to(3, 0), real_mode(), 0)),
        gp()
    );
    assert_eq!(
        cr::handle(&mut g, &cr_exit(mov_from(3, 0), real_mode(), 0)),
        gp()
    );
}

// ---- Port I/O ---------------------------------------------------------

fn io_exit(q: u64, string: Option<Result<(StringInsn, Emu), u64>>) -> Exit {
    exit(
        R::IoInstruction,
        1,
        Info::Io(IoExit {
            q: IoQualification::decode(q),
            string,
        }),
    )
}

#[test]
fn in_merges_8_and_16_bit_and_zero_extends_32_bit() {
    let mut g = Fake::new();
    g.io_in = 0xA1B2_C3D4;
    let port = 0x71 << 16;
    for (size, want) in [
        (0, 0x1122_3344_5566_77D4),
        (1, 0x1122_3344_5566_C3D4),
        (3, 0x0000_0000_A1B2_C3D4),
    ] {
        g.gpr[RAX] = 0x1122_3344_5566_7788;
        assert_eq!(
            io::handle(&mut g, &io_exit(port | 8 | size, None)),
            advanced(1)
        );
        assert_eq!(g.gpr[RAX], want, "size code {size}");
    }
}

#[test]
fn out_sends_the_low_bytes_and_reports_device_actions() {
    let mut g = Fake::new();
    g.gpr[RAX] = 0x1122_3344_5566_7788;
    assert_eq!(io::handle(&mut g, &io_exit(0x3F8 << 16, None)), advanced(1));
    assert_eq!(
        io::handle(&mut g, &io_exit(0x3F8 << 16 | 1, None)),
        advanced(1)
    );
    assert_eq!(
        io::handle(&mut g, &io_exit(0xCFC << 16 | 3, None)),
        advanced(1)
    );
    assert_eq!(
        *g.outs.borrow(),
        [
            (0x3F8, 1, 0x88),
            (0x3F8, 2, 0x7788),
            (0xCFC, 4, 0x5566_7788)
        ]
    );
    g.out_request = Request::Exit(3);
    assert_eq!(
        io::handle(&mut g, &io_exit(0xF4 << 16, None)),
        advanced(1).with_flow(Flow::End(VmEnd::Exited(3)))
    );
    g.out_request = Request::Reset;
    assert_eq!(
        io::handle(&mut g, &io_exit(0xCF9 << 16, None)),
        advanced(1).with_flow(Flow::End(VmEnd::Reset))
    );
}

fn flat_emu() -> Emu {
    Emu {
        mode: Mode::Long64,
        addr_mode: AddrMode::Long64,
        paging: PagingRegs::default(),
        user: false,
        rflags: 2,
        rsp: 0x8000,
        cs_base: 0,
        segs: [Segment::default(); 6],
    }
}

#[test]
fn string_io_runs_the_decoded_instruction() {
    let mut g = Fake::new();
    g.ram[0x100..0x103].copy_from_slice(b"abc");
    // rep outsb to 0xE9, from the qualification and instruction information.
    let q = 0xE9 << 16 | 16 | 32;
    let (addr, seg) = super::vmexit::ins_outs_info(2 << 7 | 3 << 15);
    let insn = super::vmexit::string_insn(&IoQualification::decode(q), addr, seg);
    assert_eq!(
        (insn.src, insn.dst, insn.addr_size, insn.rep),
        (Src::Mem(3), Dst::Port(0xE9), 8, true)
    );
    g.gpr[RSI] = 0x100;
    g.gpr[RCX] = 3;
    let e = io_exit(q, Some(Ok((insn, flat_emu()))));
    assert_eq!(io::handle(&mut g, &e), advanced(1));
    let sent: Vec<u8> = g.outs.borrow().iter().map(|o| o.2 as u8).collect();
    assert_eq!(sent, b"abc");
    assert_eq!((g.gpr[RSI], g.gpr[RCX]), (0x103, 0));
    // More than the budget (4 in the fake): RIP stays, blocking ends.
    g.gpr[RSI] = 0x100;
    g.gpr[RCX] = 6;
    assert_eq!(io::handle(&mut g, &e), Outcome::advance(0));
    assert_eq!(g.gpr[RCX], 2);
    // A source outside RAM: #PF with CR2, RIP on the instruction.
    g.gpr[RSI] = 0x1_0000;
    g.gpr[RCX] = 2;
    assert_eq!(
        io::handle(&mut g, &e),
        Outcome::fault(Inject::PageFault {
            cr2: 0x1_0000,
            code: 0
        })
    );
    assert_eq!(g.gpr[RCX], 2, "no iteration done");
    // No instruction to decode the segment from: the guest ends.
    let nofetch = io_exit(q, Some(Err(0xFFFF_F000)));
    assert!(matches!(
        io::handle(&mut g, &nofetch).flow,
        Flow::End(VmEnd::Crashed(_))
    ));
}

// ---- XSETBV -----------------------------------------------------------

fn xsetbv(g: &mut Fake, index: u32, value: u64, cpl: u8) -> Outcome {
    g.gpr[RCX] = u64::from(index);
    g.gpr[RAX] = value & 0xFFFF_FFFF;
    g.gpr[RDX] = value >> 32;
    xsetbv::handle(g, &exit(R::Xsetbv, 3, Info::Cpl(cpl)))
}

#[test]
fn xsetbv_loads_valid_xcr0_at_cpl0_only() {
    let mut g = Fake::new();
    assert_eq!(xsetbv(&mut g, 0, 7, 0), advanced(3));
    assert_eq!(g.loaded_xcr0, Some(7));
    g.loaded_xcr0 = None;
    assert_eq!(xsetbv(&mut g, 0, 3, 3), gp(), "CPL 3");
    assert_eq!(xsetbv(&mut g, 1, 3, 0), gp(), "XCR1");
    assert_eq!(xsetbv(&mut g, 0, 5, 0), gp(), "AVX without SSE");
    assert_eq!(xsetbv(&mut g, 0, 0x1F, 0), gp(), "not offered");
    assert_eq!(xsetbv(&mut g, 0, 1 << 32 | 1, 0), gp());
    assert_eq!(g.loaded_xcr0, None);
    assert_eq!(g.xcr0, 7);
}

// ---- VMCALL -----------------------------------------------------------

fn vmcall(g: &mut Fake, nr: u64, a0: u64, a1: u64, cpl: u8) -> Outcome {
    g.gpr[RAX] = nr;
    g.gpr[RBX] = a0;
    g.gpr[RCX] = a1;
    vmcall::handle(g, &exit(R::Vmcall, 3, Info::Cpl(cpl)))
}

#[test]
fn hypercalls() {
    let mut g = Fake::new();
    assert_eq!(vmcall(&mut g, vmcall::ABI_VERSION, 0, 0, 0), advanced(3));
    assert_eq!(g.gpr[RAX], u64::from(cpuid::ABI_VERSION));
    g.ram[0x500..0x505].copy_from_slice(b"hello");
    assert_eq!(
        vmcall(&mut g, vmcall::CONSOLE_WRITE, 0x500, 5, 0),
        advanced(3)
    );
    assert_eq!(g.gpr[RAX], 5);
    assert_eq!(*g.console.borrow(), b"hello");
    assert_eq!(
        vmcall(&mut g, vmcall::CONSOLE_WRITE, 0xFFFE, 5, 0),
        advanced(3)
    );
    assert_eq!(g.gpr[RAX] as i64, vmcall::EFAULT);
    assert_eq!(
        vmcall(&mut g, vmcall::CONSOLE_WRITE, 0, 4097, 0),
        advanced(3)
    );
    assert_eq!(g.gpr[RAX] as i64, vmcall::EINVAL);
    assert_eq!(g.console.borrow().len(), 5);
    assert_eq!(
        vmcall(&mut g, vmcall::YIELD, 0, 0, 0),
        advanced(3).with_flow(Flow::Yield)
    );
    assert_eq!(
        vmcall(&mut g, vmcall::SHUTDOWN, 9, 0, 0),
        advanced(3).with_flow(Flow::End(VmEnd::Exited(9)))
    );
    assert_eq!(vmcall(&mut g, 77, 0, 0, 0), advanced(3));
    assert_eq!(g.gpr[RAX] as i64, vmcall::ENOSYS);
    // From CPL 3: refused, nothing done.
    assert_eq!(vmcall(&mut g, vmcall::SHUTDOWN, 9, 0, 3), advanced(3));
    assert_eq!(g.gpr[RAX] as i64, vmcall::EPERM);
}

// ---- MMIO (EPT violations) --------------------------------------------

fn ept_exit(gpa: u64, q: u64, bytes: &[u8], emu: Emu) -> Exit {
    let mut insn = Insn {
        bytes: [0; 15],
        n: bytes.len(),
    };
    insn.bytes[..bytes.len()].copy_from_slice(bytes);
    let d = decode::decode(bytes, emu.mode).map_err(|e| InsnError::Decode(e, insn));
    exit(
        R::EptViolation,
        0,
        Info::Ept(EptExit {
            gpa,
            q: EptViolation::decode(q),
            emu,
            insn: d.map(|d| (d, insn)),
            rip_gpa: None,
        }),
    )
}

#[test]
fn mmio_store_and_load() {
    let mut g = Fake::new();
    // mov [rbx], eax
    g.gpr[RAX] = 0xFFFF_FFFF_1234_5678;
    let e = ept_exit(0xFEE0_0080, 2, &[0x89, 0x03], flat_emu());
    assert_eq!(super::ept::violation(&mut g, &e), advanced(2));
    assert_eq!(g.mmio, [(0xFEE0_0080, 4, Some(0x1234_5678))]);
    // mov ecx, [rbx]: zero-extends into RCX, no VMCS write.
    g.mmio_value = 0xABCD;
    g.gpr[RCX] = u64::MAX;
    let e = ept_exit(0xFEC0_0010, 1, &[0x8B, 0x0B], flat_emu());
    assert_eq!(super::ept::violation(&mut g, &e), advanced(2));
    assert_eq!(g.gpr[RCX], 0xABCD);
    // A data access under unmapped_access = "ignore" finds its device in
    // the access itself: no separate lookup first.
    assert_eq!(g.lookups.get(), 0);
}

#[test]
fn mmio_alu_writes_rflags_back() {
    let mut g = Fake::new();
    // add dword [rbx], 1 on 0xFFFFFFFF: result 0, ZF and CF set.
    g.mmio_value = 0xFFFF_FFFF;
    let e = ept_exit(0xFEE0_0300, 3, &[0x83, 0x03, 0x01], flat_emu());
    let o = super::ept::violation(&mut g, &e);
    assert_eq!(g.mmio, [(0xFEE0_0300, 4, Some(0))]);
    match o.writes() {
        [Write::Rflags(f)] => assert_eq!(f & 0x41, 0x41, "ZF and CF"),
        w => panic!("{w:?}"),
    }
    assert_eq!(o.rip, Rip::Advance(3));
}

#[test]
fn mmio_that_cannot_be_emulated_ends_the_guest() {
    let mut g = Fake::new();
    // A register-only ModRM (not a memory operand).
    let e = ept_exit(0xFEE0_0000, 1, &[0x89, 0xC0], flat_emu());
    assert!(matches!(
        super::ept::violation(&mut g, &e).flow,
        Flow::End(VmEnd::Crashed(m)) if m.contains("cannot emulate")
    ));
    let mut nofetch = ept_exit(0xFEE0_0000, 1, &[0x8B, 0x03], flat_emu());
    if let Info::Ept(x) = &mut nofetch.info {
        x.insn = Err(InsnError::Fetch(0x7000));
    }
    assert!(matches!(
        super::ept::violation(&mut g, &nofetch).flow,
        Flow::End(VmEnd::Crashed(m)) if m.contains("cannot fetch")
    ));
    assert!(g.mmio.is_empty());
}

#[test]
fn mmio_string_store_goes_through_the_string_engine() {
    let mut g = Fake::new();
    // rep stosb with RCX = 2 to a device page: the fake env stores to RAM
    // at the offset, so point RDI into RAM.
    g.gpr[RAX] = 0x5A;
    g.gpr[RCX] = 2;
    g.gpr[crate::vmx::run::RDI] = 0x40;
    let e = ept_exit(0xFEE0_0000, 2, &[0xF3, 0xAA], flat_emu());
    assert_eq!(super::ept::violation(&mut g, &e), advanced(2));
    assert_eq!(&g.ram[0x40..0x42], &[0x5A, 0x5A]);
    assert_eq!(g.gpr[RCX], 0);
}

#[test]
fn fetch_from_the_empty_bus_is_ud_where_the_instruction_starts() {
    let mut g = Fake::new();
    g.device = false;
    let mut e = ept_exit(0xE000_0000, 4, &[], flat_emu());
    if let Info::Ept(x) = &mut e.info {
        x.rip_gpa = Some(0xE000_0000);
    }
    assert_eq!(
        super::ept::violation(&mut g, &e),
        Outcome::fault(Inject::UD)
    );
    // It started on another page: the guest ends.
    if let Info::Ept(x) = &mut e.info {
        x.rip_gpa = Some(0x1000);
    }
    assert!(matches!(
        super::ept::violation(&mut g, &e).flow,
        Flow::End(VmEnd::Crashed(_))
    ));
    // Under unmapped_access = "stop" a data access ends the guest before
    // anything is emulated.
    g.stop = true;
    let e = ept_exit(0xE000_0000, 2, &[0x89, 0x03], flat_emu());
    assert!(matches!(
        super::ept::violation(&mut g, &e).flow,
        Flow::End(VmEnd::Crashed(_))
    ));
    assert!(g.mmio.is_empty());
    // Under "stop" a device page is still emulated.
    g.device = true;
    g.unmapped.borrow_mut().clear();
    assert_eq!(super::ept::violation(&mut g, &e), advanced(2));
    assert_eq!(g.mmio.len(), 1);
    assert!(g.unmapped.borrow().is_empty());
}

#[test]
fn a_handler_given_another_class_info_reports_a_bug() {
    let mut g = Fake::new();
    let e = exit(R::Cpuid, 2, Info::None);
    assert!(matches!(
        cpuid::handle(&mut g, &e).flow,
        Flow::End(VmEnd::Crashed(m)) if m.contains("hypervisor error")
    ));
    let _ = mmio::REP_BUDGET;
}

#[test]
fn only_the_leaves_the_decoder_reads_guest_state_for_depend_on_it() {
    use arch::cpuid::Cpuid;
    let host = |leaf: u32, _sub: u32| match leaf {
        0 => Cpuid {
            eax: 0x20,
            ..Cpuid::default()
        },
        0x8000_0000 => Cpuid {
            eax: 0x8000_0008,
            ..Cpuid::default()
        },
        _ => Cpuid {
            eax: !0,
            ebx: !0,
            ecx: !0,
            edx: !0,
        },
    };
    let layout = crate::xsave::guest_layout();
    let view = |on: bool| cpuid::View {
        vcpu: 0,
        vcpus: 1,
        guest_osxsave: on,
        rdtscp: on,
        invpcid: on,
        xcr0: 1,
        xsave: &layout,
        guest_pke: on,
        apic_enabled: true,
        limit_maxval: false,
        xd_disable: false,
        tsc_khz: 1_000_000,
        tsc_per_bus_tick: 10,
    };
    let (off, on) = (view(false), view(true));
    let leaves = (0..0x40)
        .chain(0x4000_0000..0x4000_0004)
        .chain(0x8000_0000..0x8000_0010);
    for leaf in leaves {
        for sub in 0..2 {
            let same = cpuid::virtual_cpuid(leaf, sub, &off, host)
                == cpuid::virtual_cpuid(leaf, sub, &on, host);
            if !cpuid::reads_guest_state(leaf) {
                assert!(same, "leaf {leaf:#x}.{sub} depends on CR4 or the controls");
            }
        }
    }
    for leaf in [1, 7, 0x8000_0001] {
        assert!(
            cpuid::virtual_cpuid(leaf, 0, &off, host) != cpuid::virtual_cpuid(leaf, 0, &on, host),
            "{leaf:#x}"
        );
    }
}

#[test]
fn operand_and_address_modes_from_cr0_cs_and_rflags() {
    use super::vmexit::{addr_mode, cpu_mode};
    const L: u32 = 1 << 13;
    const D: u32 = 1 << 14;
    // CR0.PE as the guest sees it decides real mode, whatever CS says.
    assert_eq!(cpu_mode(0, L | D), Mode::Real16);
    assert_eq!(cpu_mode(1, L), Mode::Long64);
    assert_eq!(cpu_mode(1, D), Mode::Prot32);
    assert_eq!(cpu_mode(1, 0), Mode::Real16, "16-bit protected mode");
    assert_eq!(addr_mode(0, 2, 0), AddrMode::Real);
    assert_eq!(addr_mode(1, 2 | 1 << 17, D), AddrMode::Real, "virtual-8086");
    assert_eq!(addr_mode(1, 2, D), AddrMode::Protected);
    assert_eq!(addr_mode(1, 2, L), AddrMode::Long64);
}

/// RAM for a page walk: 64 KiB from guest-physical 0.
struct WalkRam(Vec<u8>);

impl crate::vm::gwalk::GuestPhysRead for WalkRam {
    fn read(&self, gpa: arch::addr::Gpa, buf: &mut [u8]) -> bool {
        let at = u64::from(gpa) as usize;
        match self.0.get(at..at + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

#[test]
fn a_cpl3_instruction_is_fetched_as_a_user_access() {
    // 4-level paging: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000;
    // linear 0x5000 is a present, user page at 0x5000 holding `mov [rbx], eax`.
    const P_RW_US: u64 = 0b111;
    let mut ram = WalkRam(std::vec![0u8; 0x10000]);
    for (table, next) in [(0x1000usize, 0x2000u64), (0x2000, 0x3000), (0x3000, 0x4000)] {
        ram.0[table..table + 8].copy_from_slice(&(next | P_RW_US).to_le_bytes());
    }
    let pte = 0x4000 + 5 * 8;
    ram.0[pte..pte + 8].copy_from_slice(&(0x5000 | P_RW_US).to_le_bytes());
    ram.0[0x5000..0x5002].copy_from_slice(&[0x89, 0x03]);
    let mut e = flat_emu();
    e.paging = PagingRegs {
        cr0: cr0::PE | cr0::PG,
        cr3: 0x1000,
        cr4: cr4::PAE | cr4::SMEP,
        efer: arch::msr::efer::LME | arch::msr::efer::LMA,
    };
    // At CPL 3 the user page is fetched (SMEP restricts supervisor fetches only).
    e.user = true;
    let insn = super::vmexit::fetch(&ram, &e, 0x5000).expect("CPL-3 fetch");
    assert_eq!(&insn.bytes()[..2], &[0x89, 0x03]);
    // The same fetch at CPL 0 faults under SMEP (SDM Vol. 3A 4.6.1).
    e.user = false;
    assert!(matches!(
        super::vmexit::fetch(&ram, &e, 0x5000),
        Err(InsnError::Fetch(0x5000))
    ));
}
