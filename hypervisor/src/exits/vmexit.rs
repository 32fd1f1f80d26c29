//! The one place that reads VM-exit information: [`decode`] turns an exit
//! into an [`Exit`] value, reading per class only the fields and guest state
//! its handler needs (SDM Vol. 3C 28.2). A failed VMREAD is a hypervisor
//! bug and comes back as a [`VmcsError`] naming the field, never as 0.
use super::cr::{CrFixed, CrState};
use super::decode::{self, DecodeError, Decoded, Mode};
use super::string::{Dst, Src, StringInsn};
use crate::vm::gwalk::{self, Access, AddrMode, PagingRegs, Segment};
use crate::vm::vcpu::Vcpu;
use crate::vmx::run::{RAX, RCX, RSP};
use arch::vmx::exit::{
    CrQualification, EptViolation, ExitReason, InterruptionInfo, IoQualification,
};
use arch::vmx::instr::VmFail;
use arch::vmx::vmcs::{ctrl, guest, ro};

/// A VMREAD or VMWRITE that failed: the operation, the field and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmcsError {
    pub write: bool,
    pub field: &'static str,
    pub fail: VmFail,
}

impl core::fmt::Display for VmcsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let op = if self.write { "VMWRITE" } else { "VMREAD" };
        write!(f, "{op} of {} failed: {}", self.field, self.fail)
    }
}

/// VMCS set-up reports its errors as text.
impl From<VmcsError> for alloc::string::String {
    fn from(e: VmcsError) -> Self {
        alloc::format!("hypervisor error: {e}")
    }
}

/// Reads a VMCS field, or returns the error naming it.
macro_rules! rd {
    ($f:path) => {
        $f.read().map_err(|fail| $crate::exits::vmexit::VmcsError {
            write: false,
            field: stringify!($f),
            fail,
        })?
    };
}
pub(crate) use rd;

/// Writes a VMCS field, or returns the error naming it.
macro_rules! wr {
    ($f:path, $v:expr) => {
        // SAFETY: callers run with the vCPU's VMCS current on this CPU.
        unsafe { $f.write($v) }.map_err(|fail| $crate::exits::vmexit::VmcsError {
            write: true,
            field: stringify!($f),
            fail,
        })?
    };
}
pub(crate) use wr;

/// Guest state the instruction emulator needs (MMIO and string I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emu {
    /// Operand defaults (CR0.PE as the guest sees it, CS.L, CS.D).
    pub mode: Mode,
    /// How segments apply (adds RFLAGS.VM).
    pub addr_mode: AddrMode,
    /// The CR0/CR3/CR4/EFER the CPU translates with.
    pub paging: PagingRegs,
    /// CPL 3 (SS.DPL): the instruction fetch and a string instruction's
    /// data accesses are user-mode accesses (SDM Vol. 3A 4.6).
    pub user: bool,
    pub rflags: u64,
    pub rsp: u64,
    pub cs_base: u64,
    /// ES..GS (`gwalk::ES`..`GS`); read only for string instructions
    /// (zero otherwise).
    pub segs: [Segment; 6],
}

impl Emu {
    pub fn segment(&self, which: u8) -> Segment {
        self.segs
            .get(usize::from(which))
            .copied()
            .unwrap_or(self.segs[usize::from(gwalk::DS)])
    }
}

/// The instruction at CS:RIP, fetched through the guest's paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub bytes: [u8; 15],
    pub n: usize,
}

impl Insn {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.n.min(15)]
    }
}

/// Why an instruction couldn't be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsnError {
    /// No bytes at this linear address.
    Fetch(u64),
    Decode(DecodeError, Insn),
}

/// A MOV to/from CR, CLTS or LMSW (SDM Vol. 3C Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrExit {
    pub q: CrQualification,
    pub state: CrState,
    /// The guest's RSP (the VMCS holds it, not the saved registers).
    pub rsp: u64,
    pub fixed: CrFixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoExit {
    pub q: IoQualification,
    /// INS/OUTS: the string-engine form and the guest state it runs with,
    /// or the linear address of an instruction that couldn't be fetched.
    pub string: Option<Result<(StringInsn, Emu), u64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptExit {
    pub gpa: u64,
    pub q: EptViolation,
    pub emu: Emu,
    /// The instruction that made the access (not fetched for a fetch).
    pub insn: Result<(Decoded, Insn), InsnError>,
    /// A fetch: the guest-physical page CS:RIP translates to, if any.
    pub rip_gpa: Option<u64>,
}

/// The class-specific part of an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info {
    None,
    /// CR4 as the guest sees it and the secondary controls (RDTSCP, INVPCID).
    Cpuid {
        cr4: u64,
        secondary: u32,
    },
    /// RDMSR of an MSR the VMCS holds (EFER, PAT, SYSENTER_*; the TSC
    /// offset for the TSC): its value, else 0.
    Rdmsr {
        vmcs: u64,
    },
    /// WRMSR of EFER: CR0 and the old EFER (0 for other MSRs).
    Wrmsr {
        cr0: u64,
        efer: u64,
    },
    Cr(CrExit),
    Io(IoExit),
    /// XSETBV, VMCALL: the CPL.
    Cpl(u8),
    Hlt {
        rflags: u64,
    },
    Ept(EptExit),
    EptMisconfig {
        gpa: u64,
    },
    /// External interrupt, exception or NMI.
    Interruption(InterruptionInfo),
}

/// A VM exit, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub reason: ExitReason,
    /// The guest's RIP (0 for the exits that never look at it: the
    /// preemption timer, external interrupts, interrupt/NMI windows).
    pub rip: u64,
    /// VM-exit instruction length (instruction exits; else 0).
    pub len: u64,
    pub info: Info,
}

impl Exit {
    /// An exit with no class-specific information (host tests build the others).
    pub fn plain(reason: ExitReason, rip: u64, len: u64) -> Self {
        Exit {
            reason,
            rip,
            len,
            info: Info::None,
        }
    }
}

fn visible(guest: u64, mask: u64, shadow: u64) -> u64 {
    (guest & !mask) | (shadow & mask)
}

fn visible_cr0() -> Result<u64, VmcsError> {
    Ok(visible(
        rd!(guest::CR0),
        rd!(ctrl::CR0_GUEST_HOST_MASK),
        rd!(ctrl::CR0_READ_SHADOW),
    ))
}

pub fn visible_cr4() -> Result<u64, VmcsError> {
    Ok(visible(
        rd!(guest::CR4),
        rd!(ctrl::CR4_GUEST_HOST_MASK),
        rd!(ctrl::CR4_READ_SHADOW),
    ))
}

/// Operand defaults from CR0.PE (as the guest sees it) and CS.L/CS.D.
pub fn cpu_mode(cr0: u64, cs_ar: u32) -> Mode {
    if cr0 & 1 == 0 {
        Mode::Real16
    } else if cs_ar & (1 << 13) != 0 {
        Mode::Long64
    } else if cs_ar & (1 << 14) != 0 {
        Mode::Prot32
    } else {
        // 16-bit protected mode: same operand defaults as real mode.
        Mode::Real16
    }
}

/// How segments apply: real and virtual-8086 mode (RFLAGS.VM), protected or
/// compatibility mode, 64-bit mode.
pub fn addr_mode(cr0: u64, rflags: u64, cs_ar: u32) -> AddrMode {
    if cr0 & 1 == 0 || rflags & (1 << 17) != 0 {
        AddrMode::Real
    } else if cs_ar & (1 << 13) != 0 {
        AddrMode::Long64
    } else {
        AddrMode::Protected
    }
}

fn segment(which: u8) -> Result<Segment, VmcsError> {
    use guest::*;
    Ok(match which {
        gwalk::ES => Segment {
            base: rd!(ES_BASE),
            limit: rd!(ES_LIMIT),
            ar: rd!(ES_ACCESS_RIGHTS),
        },
        gwalk::CS => Segment {
            base: rd!(CS_BASE),
            limit: rd!(CS_LIMIT),
            ar: rd!(CS_ACCESS_RIGHTS),
        },
        gwalk::SS => Segment {
            base: rd!(SS_BASE),
            limit: rd!(SS_LIMIT),
            ar: rd!(SS_ACCESS_RIGHTS),
        },
        gwalk::FS => Segment {
            base: rd!(FS_BASE),
            limit: rd!(FS_LIMIT),
            ar: rd!(FS_ACCESS_RIGHTS),
        },
        gwalk::GS => Segment {
            base: rd!(GS_BASE),
            limit: rd!(GS_LIMIT),
            ar: rd!(GS_ACCESS_RIGHTS),
        },
        _ => Segment {
            base: rd!(DS_BASE),
            limit: rd!(DS_LIMIT),
            ar: rd!(DS_ACCESS_RIGHTS),
        },
    })
}

fn paging_regs(cr0: u64) -> Result<PagingRegs, VmcsError> {
    Ok(PagingRegs {
        cr0,
        cr3: rd!(guest::CR3),
        cr4: rd!(guest::CR4),
        efer: rd!(guest::IA32_EFER),
    })
}

/// The emulator's view of the guest; `segments`: read all six (string
/// instructions). Inlined: its result lands in the Exit without a copy
/// through a returned Result.
#[inline(always)]
fn emu(segments: bool) -> Result<Emu, VmcsError> {
    let real_cr0 = rd!(guest::CR0);
    let cr0 = visible(
        real_cr0,
        rd!(ctrl::CR0_GUEST_HOST_MASK),
        rd!(ctrl::CR0_READ_SHADOW),
    );
    let cs_ar = rd!(guest::CS_ACCESS_RIGHTS);
    let rflags = rd!(guest::RFLAGS);
    let mut e = Emu {
        mode: cpu_mode(cr0, cs_ar),
        addr_mode: addr_mode(cr0, rflags, cs_ar),
        paging: paging_regs(real_cr0)?,
        user: cpl()? == 3,
        rflags,
        rsp: rd!(guest::RSP),
        cs_base: rd!(guest::CS_BASE),
        segs: [Segment::default(); 6],
    };
    if segments {
        read_segments(&mut e)?;
    }
    Ok(e)
}

/// The six segment registers and the CPL, for string instructions.
fn read_segments(e: &mut Emu) -> Result<(), VmcsError> {
    for (i, s) in e.segs.iter_mut().enumerate() {
        *s = segment(i as u8)?;
    }
    e.user = (e.segs[usize::from(gwalk::SS)].ar >> 5) & 3 == 3;
    Ok(())
}

/// The fetch of an instruction at the CPL in `e`: a CPL-3 fetch is a user
/// access (under SMEP a supervisor fetch from a user page faults).
pub fn fetch_access(e: &Emu) -> Access {
    Access {
        user: e.user,
        ..Access::FETCH
    }
}

/// Fetches up to 15 instruction bytes at CS:RIP (the instruction may end
/// before the next page, which may be unmapped).
pub fn fetch(mem: &impl gwalk::GuestPhysRead, e: &Emu, rip: u64) -> Result<Insn, InsnError> {
    let la = e.cs_base.wrapping_add(rip);
    let mut insn = Insn {
        bytes: [0; 15],
        n: 0,
    };
    let to_page_end = (0x1000 - (la & 0xFFF)) as usize;
    for len in [15usize, to_page_end.min(15)] {
        if gwalk::read_virt(mem, e.paging, la, fetch_access(e), &mut insn.bytes[..len]).is_ok() {
            insn.n = len;
            return Ok(insn);
        }
    }
    Err(InsnError::Fetch(la))
}

/// The MMIO form of the instruction: decoded, with the segments read when
/// it is a string instruction. Inlined, as `emu` is: no copy of its result.
#[inline(always)]
fn mmio_insn(
    v: &Vcpu,
    e: &mut Emu,
    rip: u64,
) -> Result<Result<(Decoded, Insn), InsnError>, VmcsError> {
    let insn = match fetch(&v.vm.mem, e, rip) {
        Ok(i) => i,
        Err(err) => return Ok(Err(err)),
    };
    let d = match decode::decode(insn.bytes(), e.mode) {
        Ok(d) => d,
        Err(err) => return Ok(Err(InsnError::Decode(err, insn))),
    };
    if matches!(d.op, decode::MemOp::String(_)) {
        read_segments(e)?;
    }
    Ok(Ok((d, insn)))
}

/// Address size (bytes) and segment of INS/OUTS from the instruction-
/// information field: bits 9:7 address size (0 = 16, 1 = 32, 2 = 64 bits),
/// bits 17:15 segment (OUTS only; INS always writes ES).
pub fn ins_outs_info(info: u32) -> (u8, u8) {
    let addr_size = match (info >> 7) & 7 {
        0 => 2,
        1 => 4,
        _ => 8,
    };
    (addr_size, ((info >> 15) & 7) as u8)
}

/// The string-engine form of an INS/OUTS exit.
pub fn string_insn(q: &IoQualification, addr_size: u8, seg: u8) -> StringInsn {
    let (src, dst) = if q.is_in {
        (Src::Port(q.port), Dst::Mem)
    } else {
        (Src::Mem(seg), Dst::Port(q.port))
    };
    StringInsn {
        src,
        dst,
        size: q.size,
        addr_size,
        rep: q.rep,
    }
}

/// INS/OUTS: address size and segment from the instruction-information
/// field where the CPU reports it (IA32_VMX_BASIC bit 54), else from the
/// instruction's prefixes.
pub(super) fn string_io(
    v: &Vcpu,
    q: &IoQualification,
    rip: u64,
) -> Result<Result<(StringInsn, Emu), u64>, VmcsError> {
    let e = emu(true)?;
    let (addr_size, seg) = if crate::vmx::caps().basic.ins_outs_info {
        ins_outs_info(rd!(ro::VMEXIT_INSTRUCTION_INFO))
    } else {
        let insn = match fetch(&v.vm.mem, &e, rip) {
            Ok(i) => i,
            Err(_) => return Ok(Err(e.cs_base.wrapping_add(rip))),
        };
        let p = decode::prefixes(insn.bytes(), e.mode);
        (p.addr_size, p.seg.unwrap_or(gwalk::DS))
    };
    Ok(Ok((string_insn(q, addr_size, seg), e)))
}

/// A port I/O exit's RIP, instruction length and qualification (what
/// [`decode_as`] reads first for it).
#[inline(always)]
pub fn io_head() -> Result<(u64, u64, IoQualification), VmcsError> {
    let rip = rd!(guest::RIP);
    let len = u64::from(rd!(ro::VMEXIT_INSTRUCTION_LEN));
    Ok((
        rip,
        len,
        IoQualification::decode(rd!(ro::EXIT_QUALIFICATION)),
    ))
}

/// What decoding an exit can end in besides an [`Exit`].
#[derive(Debug)]
pub enum DecodeFail {
    Vmcs(VmcsError),
    /// A basic reason this hypervisor doesn't know.
    Unknown(u32),
}

impl From<VmcsError> for DecodeFail {
    fn from(e: VmcsError) -> Self {
        DecodeFail::Vmcs(e)
    }
}

fn cpl() -> Result<u8, VmcsError> {
    Ok(((rd!(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8)
}

/// Decodes the exit with raw reason `raw` (not a VM-entry failure) of the
/// vCPU whose VMCS is current. (Inlined into its one caller: the `Exit`
/// is then built in place, not copied out of a `Result`.)
#[inline(always)]
pub fn decode(v: &Vcpu, raw: u32) -> Result<Exit, DecodeFail> {
    let reason = ExitReason::from_raw(raw).ok_or(DecodeFail::Unknown(raw & 0xFFFF))?;
    Ok(decode_as(v, reason)?)
}

/// [`decode`] of an exit whose reason is known. Inlined, so that a caller
/// passing a constant reason keeps only that class's branch and builds only
/// its [`Info`] variant (no merge of every class's fields, which cost ~150
/// instructions per exit).
#[inline(always)]
pub fn decode_as(v: &Vcpu, reason: ExitReason) -> Result<Exit, VmcsError> {
    use ExitReason as R;
    // Exits that never look at RIP: the most frequent non-instruction exits.
    if matches!(
        reason,
        R::PreemptionTimer | R::InterruptWindow | R::NmiWindow | R::Pause | R::Init | R::Sipi
    ) {
        return Ok(Exit::plain(reason, 0, 0));
    }
    if reason == R::ExternalInterrupt {
        let info = InterruptionInfo::decode(rd!(ro::VMEXIT_INTERRUPTION_INFO));
        return Ok(Exit {
            reason,
            rip: 0,
            len: 0,
            info: Info::Interruption(info),
        });
    }
    let rip = rd!(guest::RIP);
    let len = match reason {
        R::Cpuid
        | R::Rdmsr
        | R::Wrmsr
        | R::Vmcall
        | R::IoInstruction
        | R::CrAccess
        | R::Xsetbv
        | R::Hlt
        | R::Invd
        | R::Wbinvd => u64::from(rd!(ro::VMEXIT_INSTRUCTION_LEN)),
        _ => 0,
    };
    let info = match reason {
        R::Cpuid => {
            if super::cpuid::reads_guest_state(v.regs.gpr[RAX] as u32) {
                Info::Cpuid {
                    cr4: visible_cr4()?,
                    secondary: rd!(ctrl::SECONDARY_PROCBASED_EXEC_CONTROLS),
                }
            } else {
                Info::Cpuid {
                    cr4: 0,
                    secondary: 0,
                }
            }
        }
        R::Rdmsr => {
            use arch::msr as m;
            let vmcs = match v.regs.gpr[RCX] as u32 {
                0x10 => rd!(ctrl::TSC_OFFSET),
                m::IA32_PAT => rd!(guest::IA32_PAT),
                m::IA32_EFER => rd!(guest::IA32_EFER),
                m::IA32_SYSENTER_CS => u64::from(rd!(guest::IA32_SYSENTER_CS)),
                m::IA32_SYSENTER_ESP => rd!(guest::IA32_SYSENTER_ESP),
                m::IA32_SYSENTER_EIP => rd!(guest::IA32_SYSENTER_EIP),
                _ => 0,
            };
            Info::Rdmsr { vmcs }
        }
        R::Wrmsr => {
            if v.regs.gpr[RCX] as u32 == arch::msr::IA32_EFER {
                Info::Wrmsr {
                    cr0: rd!(guest::CR0),
                    efer: rd!(guest::IA32_EFER),
                }
            } else {
                Info::Wrmsr { cr0: 0, efer: 0 }
            }
        }
        R::CrAccess => {
            let q = CrQualification::decode(rd!(ro::EXIT_QUALIFICATION));
            Info::Cr(CrExit {
                q,
                state: CrState {
                    cr0: visible_cr0()?,
                    cr4: visible_cr4()?,
                    cr3: rd!(guest::CR3),
                    efer: rd!(guest::IA32_EFER),
                    cs_l: rd!(guest::CS_ACCESS_RIGHTS) & (1 << 13) != 0,
                },
                rsp: if usize::from(q.gpr) == RSP {
                    rd!(guest::RSP)
                } else {
                    0
                },
                fixed: CrFixed::host(),
            })
        }
        R::IoInstruction => {
            let q = IoQualification::decode(rd!(ro::EXIT_QUALIFICATION));
            let string = if q.string {
                Some(string_io(v, &q, rip)?)
            } else {
                None
            };
            Info::Io(IoExit { q, string })
        }
        R::Xsetbv | R::Vmcall => Info::Cpl(cpl()?),
        R::Hlt => Info::Hlt {
            rflags: rd!(guest::RFLAGS),
        },
        R::EptViolation => {
            let gpa = rd!(ro::GUEST_PHYSICAL_ADDR);
            let q = EptViolation::decode(rd!(ro::EXIT_QUALIFICATION));
            let mut e = emu(false)?;
            let (insn, rip_gpa) = if q.fetch {
                let la = e.cs_base.wrapping_add(rip);
                let pa = gwalk::translate(&v.vm.mem, e.paging, la, fetch_access(&e))
                    .ok()
                    .map(u64::from);
                (Err(InsnError::Fetch(la)), pa)
            } else {
                (mmio_insn(v, &mut e, rip)?, None)
            };
            Info::Ept(EptExit {
                gpa,
                q,
                emu: e,
                insn,
                rip_gpa,
            })
        }
        R::EptMisconfig => Info::EptMisconfig {
            gpa: rd!(ro::GUEST_PHYSICAL_ADDR),
        },
        R::ExceptionOrNmi => {
            Info::Interruption(InterruptionInfo::decode(rd!(ro::VMEXIT_INTERRUPTION_INFO)))
        }
        _ => Info::None,
    };
    Ok(Exit {
        reason,
        rip,
        len,
        info,
    })
}

/// A one-line picture of the guest's CPU state for crash diagnostics ("?"
/// for a field that can't be read).
pub fn guest_state(v: &Vcpu) -> alloc::string::String {
    use alloc::format;
    use alloc::string::String;
    fn show<T: core::fmt::LowerHex, E>(r: Result<T, E>) -> String {
        match r {
            Ok(x) => format!("{x:#x}"),
            Err(_) => "?".into(),
        }
    }
    let code = match (emu(false), guest::RIP.read()) {
        (Ok(e), Ok(rip)) => match fetch(&v.vm.mem, &e, rip) {
            Ok(i) => format!("{:02x?}", &i.bytes()[..i.n.min(8)]),
            Err(_) => "unreadable".into(),
        },
        _ => "unreadable".into(),
    };
    format!(
        "vcpu {} cs={} base={} cr0={} cr3={} cr4={} efer={} rsp={} rflags={} gdtr={}/{} idtr={}/{} code {code}",
        v.index,
        show(guest::CS_SEL.read()),
        show(guest::CS_BASE.read()),
        show(visible_cr0()),
        show(guest::CR3.read()),
        show(visible_cr4()),
        show(guest::IA32_EFER.read()),
        show(guest::RSP.read()),
        show(guest::RFLAGS.read()),
        show(guest::GDTR_BASE.read()),
        show(guest::GDTR_LIMIT.read()),
        show(guest::IDTR_BASE.read()),
        show(guest::IDTR_LIMIT.read()),
    )
}
