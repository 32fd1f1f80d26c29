//! VM-exit dispatch. An exit is decoded once into an [`Exit`] value
//! (`vmexit.rs`, the only place exit information is read from the VMCS);
//! the handler of its class takes the vCPU (as a [`Guest`]) and the `Exit`
//! and returns an [`Outcome`]: how the run loop goes on and the guest-state
//! writes, which the apply step (`apply.rs`) performs. Handlers finish in
//! the core (CPUID, MSR, CR, XSETBV, HLT) or pass a request to a device
//! model (I/O, MMIO).
pub mod apply;
pub mod cpuid;
pub mod cr;
pub mod decode;
pub mod ept;
mod guest;
pub mod io;
pub mod mmio;
pub mod msr;
pub mod outcome;
pub mod string;
pub mod vmcall;
pub mod vmexit;
pub mod xsetbv;

#[cfg(test)]
mod tests;

pub use guest::Guest;
pub use outcome::{Inject, Outcome, Rip, Write};
pub use vmexit::{Exit, Info, VmcsError};

use crate::vm::vcpu::{Flow, Vcpu};
use crate::vm::VmEnd;
use alloc::format;
use alloc::string::String;
use arch::vmx::exit::ExitReason;

pub const UD: u8 = 6;
pub const GP: u8 = 13;

/// A VMREAD/VMWRITE failed: a hypervisor bug, reported with the field's
/// name; the guest can't go on with state nobody knows.
#[cold]
#[inline(never)]
pub fn vmcs_failed(v: &Vcpu, err: VmcsError) -> VmEnd {
    log::error!("hv: vm {}: vcpu {}: {err}", v.vm.name, v.index);
    VmEnd::Crashed(format!("hypervisor error: {err}"))
}

/// Decodes the exit with raw reason `raw`, runs its handler and applies the
/// outcome: the whole exit but the run loop's own checks. The frequent
/// classes each get their own copy of the path, decoded with a constant
/// reason, so that each builds only its own [`Info`]. (Inlined into the run
/// loop: the dispatch is a table jump to the class path.)
#[inline(always)]
pub fn run(v: &mut Vcpu, raw: u32) -> Flow {
    use ExitReason as R;
    let Some(reason) = ExitReason::from_raw(raw) else {
        return unknown(raw);
    };
    match reason {
        R::Cpuid => run_cpuid(v),
        R::Rdmsr => run_rdmsr(v),
        R::Wrmsr => run_wrmsr(v),
        R::Vmcall => run_vmcall(v),
        R::IoInstruction => run_io(v),
        R::EptViolation => run_ept(v),
        R::CrAccess => run_cr(v),
        R::Hlt => run_hlt(v),
        R::PreemptionTimer => run_timer(v),
        R::ExternalInterrupt => run_extint(v),
        _ => run_other(v, reason),
    }
}

#[cold]
#[inline(never)]
fn unknown(raw: u32) -> Flow {
    Flow::End(VmEnd::Crashed(format!(
        "unexpected VM exit reason {}",
        raw & 0xFFFF
    )))
}

/// Decode, handle, apply for exit `reason` (a constant in every caller but
/// `run_other`).
#[inline(always)]
fn run_as(v: &mut Vcpu, reason: ExitReason) -> Flow {
    let e = match vmexit::decode_as(v, reason) {
        Ok(e) => e,
        Err(err) => return Flow::End(vmcs_failed(v, err)),
    };
    finish(v, &e)
}

/// Handle and apply.
#[inline(always)]
fn finish(v: &mut Vcpu, e: &Exit) -> Flow {
    let o = handle(v, e);
    match apply::apply(v, e, o) {
        Ok(flow) => flow,
        Err(err) => Flow::End(vmcs_failed(v, err)),
    }
}

/// Port I/O: IN/OUT and INS/OUTS take separate paths, so that IN/OUT
/// doesn't merge (and copy) the string form's large payload.
#[inline(never)]
fn run_io(v: &mut Vcpu) -> Flow {
    let (rip, len, q) = match vmexit::io_head() {
        Ok(h) => h,
        Err(err) => return Flow::End(vmcs_failed(v, err)),
    };
    if q.string {
        return run_io_string(v, rip, len, q);
    }
    let e = Exit {
        reason: ExitReason::IoInstruction,
        rip,
        len,
        info: Info::Io(vmexit::IoExit { q, string: None }),
    };
    finish(v, &e)
}

#[inline(never)]
fn run_io_string(v: &mut Vcpu, rip: u64, len: u64, q: arch::vmx::exit::IoQualification) -> Flow {
    let string = match vmexit::string_io(v, &q, rip) {
        Ok(s) => Some(s),
        Err(err) => return Flow::End(vmcs_failed(v, err)),
    };
    let e = Exit {
        reason: ExitReason::IoInstruction,
        rip,
        len,
        info: Info::Io(vmexit::IoExit { q, string }),
    };
    finish(v, &e)
}

macro_rules! class_path {
    ($($name:ident => $reason:ident),* $(,)?) => {
        $(
            #[inline(never)]
            fn $name(v: &mut Vcpu) -> Flow {
                run_as(v, ExitReason::$reason)
            }
        )*
    };
}

class_path! {
    run_cpuid => Cpuid,
    run_rdmsr => Rdmsr,
    run_wrmsr => Wrmsr,
    run_vmcall => Vmcall,
    run_ept => EptViolation,
    run_cr => CrAccess,
    run_hlt => Hlt,
    run_timer => PreemptionTimer,
    run_extint => ExternalInterrupt,
}

#[inline(never)]
fn run_other(v: &mut Vcpu, reason: ExitReason) -> Flow {
    run_as(v, reason)
}

/// An exit whose [`Info`] isn't its class's: a bug of the decoder.
fn wrong_info(e: &Exit) -> Outcome {
    Outcome::end(VmEnd::Crashed(format!(
        "hypervisor error: {:?} exit decoded without its information",
        e.reason
    )))
}

/// The handler of the exit's class. (Inlined into each class path of
/// [`run`], where the reason is a constant: one direct call of the handler.)
#[inline(always)]
pub fn handle(v: &mut Vcpu, e: &Exit) -> Outcome {
    use ExitReason as R;
    // Exits that can change timers or make an interrupt deliverable make the
    // run loop re-poll timers and re-evaluate injection before re-entry.
    match e.reason {
        // MSRs that move timers without a device's Effects (the TSC).
        R::Wrmsr => {
            v.timers_dirty = true;
            v.vm.mailbox[v.index]
                .check_irq
                .store(true, core::sync::atomic::Ordering::Release);
        }
        // A kick, an interrupt/NMI window, a CR8 write, an MMIO access (an
        // APIC's TPR, EOI or ESR changes what is deliverable without an
        // Effects; a timer the access moved is in its Effects, which the
        // mailbox already has, like port I/O's).
        R::ExternalInterrupt
        | R::InterruptWindow
        | R::NmiWindow
        | R::CrAccess
        | R::EptViolation => v.vm.mailbox[v.index]
            .check_irq
            .store(true, core::sync::atomic::Ordering::Release),
        _ => {}
    }
    match e.reason {
        R::Cpuid => cpuid::handle(v, e),
        R::Rdmsr => msr::rdmsr(v, e),
        R::Wrmsr => msr::wrmsr(v, e),
        R::IoInstruction => io::handle(v, e),
        R::CrAccess => cr::handle(v, e),
        R::Xsetbv => xsetbv::handle(v, e),
        R::Vmcall => vmcall::handle(v, e),
        R::EptViolation => ept::violation(v, e),
        R::EptMisconfig => ept::misconfig(e),
        R::PreemptionTimer => Outcome::resume(),
        R::Hlt => hlt(v, e),
        R::ExternalInterrupt => external_interrupt(e),
        R::ExceptionOrNmi => exception_or_nmi(e),
        R::TripleFault => Outcome::end(VmEnd::Crashed(format!(
            "triple fault at rip {:#x} ({})",
            e.rip,
            vmexit::guest_state(v)
        ))),
        // INIT and SIPI reach a vCPU only through the host CPU; a guest can't send them to us.
        R::Init | R::Sipi => Outcome::resume(),
        // VMX instructions in a guest: VMX is hidden, so they are undefined (SDM 25.1.3).
        R::Vmclear
        | R::Vmlaunch
        | R::Vmptrld
        | R::Vmptrst
        | R::Vmread
        | R::Vmresume
        | R::Vmwrite
        | R::Vmxoff
        | R::Vmxon
        | R::Invept
        | R::Invvpid
        | R::Vmfunc
        | R::Getsec
        | R::Mwait
        | R::Monitor
        | R::Rdpmc
        | R::Encls => Outcome::fault(Inject::UD),
        R::Invd | R::Wbinvd => Outcome::advance(e.len),
        R::Pause | R::InterruptWindow | R::NmiWindow | R::MonitorTrapFlag => Outcome::resume(),
        R::ApicAccess | R::ApicWrite | R::VirtualizedEoi | R::TprBelowThreshold => {
            Outcome::resume()
        }
        other => Outcome::end(VmEnd::Crashed(format!(
            "unhandled VM exit {other:?} at rip {:#x}",
            e.rip
        ))),
    }
}

fn hlt(v: &mut Vcpu, e: &Exit) -> Outcome {
    let Info::Hlt { rflags } = e.info else {
        return wrong_info(e);
    };
    let done = Outcome::advance(e.len);
    if rflags & (1 << 9) == 0 {
        // Only NMI or INIT, which only another vCPU can send, end this HLT.
        // If every vCPU of the guest waits for such a signal, none ever comes.
        v.set_halted_noirq(true);
        if let Some(VmEnd::Crashed(why)) = v.end_if_dead() {
            let rip = e.rip.wrapping_add(e.len);
            return done.with_flow(Flow::End(VmEnd::Crashed(format!("{why} at rip {rip:#x}"))));
        }
        return done.with_flow(Flow::Halt);
    }
    if v.interrupt_pending() {
        return done;
    }
    done.with_flow(Flow::Halt)
}

fn external_interrupt(e: &Exit) -> Outcome {
    // Acknowledged on exit; the host has no interrupt handlers of its own, so
    // end the interrupt at the local APIC and re-run the scheduler's checks.
    if let Info::Interruption(info) = e.info {
        if info.valid {
            crate::hostapic::eoi();
        }
    }
    Outcome::resume()
}

fn exception_or_nmi(e: &Exit) -> Outcome {
    let Info::Interruption(info) = e.info else {
        return wrong_info(e);
    };
    if info.kind == 2 {
        // A host NMI (the stop signal, or a platform NMI). The run loop checks
        // the stop flag before re-entering.
        if crate::interrupts::STOPPING.load(core::sync::atomic::Ordering::Acquire) {
            arch::regs::halt_forever();
        }
        return Outcome::resume();
    }
    Outcome::end(VmEnd::Crashed(format!(
        "unexpected exception exit: vector {} at rip {:#x}",
        info.vector, e.rip
    )))
}

/// Describes a failed VM entry (exit reason bit 31, SDM 27.8).
pub fn entry_failure_reason(raw: u32, qualification: u64) -> String {
    match raw & 0xFFFF {
        33 => format!(
            "VM entry failed: invalid guest state ({})",
            match qualification {
                2 => "PDPTE load failed",
                3 => "NMI injection check",
                4 => "invalid VMCS link pointer",
                _ => "a guest-state field check of SDM 27.3.1 failed",
            }
        ),
        34 => format!("VM entry failed: MSR loading (entry {qualification})"),
        41 => "VM entry failed: machine-check event".into(),
        n => format!("VM entry failed: reason {n}"),
    }
}
