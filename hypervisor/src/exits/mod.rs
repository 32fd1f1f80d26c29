//! VM-exit dispatch: read the exit reason, hand it to the one handler for its
//! class, return what the run loop should do. Handlers finish in the core
//! (CPUID, MSR, CR, XSETBV, HLT) or pass a request to a device model (I/O).
pub mod cpuid;
pub mod cr;
pub mod decode;
pub mod ept;
pub mod io;
pub mod mmio;
pub mod msr;
pub mod string;
pub mod vmcall;
pub mod xsetbv;

use crate::vm::vcpu::{Flow, Vcpu};
use crate::vm::VmEnd;
use alloc::format;
use alloc::string::String;
use arch::vmx::exit::{ExitReason, InterruptionInfo};
use arch::vmx::vmcs::{guest, ro};

pub const UD: u8 = 6;
pub const GP: u8 = 13;

pub fn handle(v: &mut Vcpu, raw: u32) -> Flow {
    use ExitReason as R;
    let Some(reason) = ExitReason::from_raw(raw) else {
        return Flow::End(VmEnd::Crashed(format!(
            "unexpected VM exit reason {}",
            raw & 0xFFFF
        )));
    };
    // Exits that can change timers or make an interrupt deliverable make the
    // run loop re-poll timers and re-evaluate injection before re-entry.
    match reason {
        // APIC registers written. (Port I/O reports what it changed itself.)
        R::Wrmsr | R::EptViolation => {
            v.timers_dirty = true;
            v.vm.mailbox[v.index]
                .check_irq
                .store(true, core::sync::atomic::Ordering::Release);
        }
        // A kick, an interrupt/NMI window, a CR8 write.
        R::ExternalInterrupt | R::InterruptWindow | R::NmiWindow | R::CrAccess => v.vm.mailbox
            [v.index]
            .check_irq
            .store(true, core::sync::atomic::Ordering::Release),
        _ => {}
    }
    match reason {
        R::Cpuid => cpuid::handle(v),
        R::Rdmsr => msr::rdmsr(v),
        R::Wrmsr => msr::wrmsr(v),
        R::IoInstruction => io::handle(v),
        R::CrAccess => cr::handle(v),
        R::Xsetbv => xsetbv::handle(v),
        R::Vmcall => vmcall::handle(v),
        R::EptViolation => ept::violation(v),
        R::EptMisconfig => ept::misconfig(v),
        R::PreemptionTimer => Flow::Continue,
        R::Hlt => hlt(v),
        R::ExternalInterrupt => external_interrupt(),
        R::ExceptionOrNmi => exception_or_nmi(v),
        R::TripleFault => Flow::End(VmEnd::Crashed(format!(
            "triple fault at rip {:#x} ({})",
            v.rip(),
            guest_state(v)
        ))),
        // INIT and SIPI reach a vCPU only through the host CPU; a guest can't send them to us.
        R::Init | R::Sipi => Flow::Continue,
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
        | R::Encls => {
            v.inject_exception(UD, None);
            Flow::Continue
        }
        R::Invd | R::Wbinvd => {
            v.advance_rip();
            Flow::Continue
        }
        R::Pause | R::InterruptWindow | R::NmiWindow | R::MonitorTrapFlag => Flow::Continue,
        R::ApicAccess | R::ApicWrite | R::VirtualizedEoi | R::TprBelowThreshold => Flow::Continue,
        other => Flow::End(VmEnd::Crashed(format!(
            "unhandled VM exit {other:?} at rip {:#x}",
            v.rip()
        ))),
    }
}

fn hlt(v: &mut Vcpu) -> Flow {
    v.advance_rip();
    let rflags = guest::RFLAGS.read().unwrap_or(0);
    if rflags & (1 << 9) == 0 {
        // Only NMI or INIT, which only another vCPU can send, end this HLT.
        // If every vCPU of the guest waits for such a signal, none ever comes.
        v.set_halted_noirq(true);
        if let Some(VmEnd::Crashed(why)) = v.end_if_dead() {
            return Flow::End(VmEnd::Crashed(format!("{why} at rip {:#x}", v.rip())));
        }
        return Flow::Halt;
    }
    if v.interrupt_pending() {
        return Flow::Continue;
    }
    Flow::Halt
}

fn external_interrupt() -> Flow {
    // Acknowledged on exit; the host has no interrupt handlers of its own, so
    // end the interrupt at the local APIC and re-run the scheduler's checks.
    let info = InterruptionInfo::decode(ro::VMEXIT_INTERRUPTION_INFO.read().unwrap_or(0));
    if info.valid {
        crate::lapic::eoi();
    }
    Flow::Continue
}

fn exception_or_nmi(v: &mut Vcpu) -> Flow {
    let info = InterruptionInfo::decode(ro::VMEXIT_INTERRUPTION_INFO.read().unwrap_or(0));
    if info.kind == 2 {
        // A host NMI (the stop signal, or a platform NMI). The run loop checks
        // the stop flag before re-entering.
        if crate::interrupts::STOPPING.load(core::sync::atomic::Ordering::Acquire) {
            arch::regs::halt_forever();
        }
        return Flow::Continue;
    }
    Flow::End(VmEnd::Crashed(format!(
        "unexpected exception exit: vector {} at rip {:#x}",
        info.vector,
        v.rip()
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

/// A one-line picture of the guest's CPU state for crash diagnostics.
pub fn guest_state(v: &Vcpu) -> String {
    let mut bytes = [0u8; 15];
    let code = match mmio::fetch(v, &mut bytes) {
        Ok(n) => format!("{:02x?}", &bytes[..n.min(8)]),
        Err(_) => "unreadable".into(),
    };
    format!(
        "vcpu {} cs={:#x} base={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} rsp={:#x} rflags={:#x} gdtr={:#x}/{:#x} idtr={:#x}/{:#x} code {code}",
        v.index,
        guest::CS_SEL.read().unwrap_or(0),
        guest::CS_BASE.read().unwrap_or(0),
        cr::visible_cr0(),
        guest::CR3.read().unwrap_or(0),
        cr::visible_cr4(),
        guest::IA32_EFER.read().unwrap_or(0),
        guest::RSP.read().unwrap_or(0),
        guest::RFLAGS.read().unwrap_or(0),
        guest::GDTR_BASE.read().unwrap_or(0),
        guest::GDTR_LIMIT.read().unwrap_or(0),
        guest::IDTR_BASE.read().unwrap_or(0),
        guest::IDTR_LIMIT.read().unwrap_or(0),
    )
}
