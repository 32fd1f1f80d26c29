//! I/O instructions: decoded from the exit qualification and sent to the
//! device model that owns the port (SDM Vol. 3C 28.2.1, Table 28-5).
use crate::devices::Action;
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vm::VmEnd;
use crate::vmx::run::RAX;
use arch::vmx::exit::IoQualification;
use arch::vmx::vmcs::ro;

/// Port accesses per guest before the guest is treated as flooding (per slice).
pub fn handle(v: &mut Vcpu) -> Flow {
    let q = IoQualification::decode(ro::EXIT_QUALIFICATION.read().unwrap_or(0));
    if q.string {
        // INS/OUTS: no device model here is driven by string I/O; reads of
        // unclaimed ports would give all-ones, but emulating the memory side
        // needs the guest's segmentation, so treat it as unsupported.
        return Flow::End(VmEnd::Crashed(alloc::format!(
            "string I/O ({}S) on port {:#x} at rip {:#x} is not supported",
            if q.is_in { "IN" } else { "OUT" },
            q.port,
            v.rip()
        )));
    }
    let mask: u64 = match q.size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    };
    if q.is_in {
        let val = v.vm.io_read(q.port, q.size);
        let rax = &mut v.regs.gpr[RAX];
        // A 32-bit IN zero-extends into RAX; 8/16-bit ones merge.
        *rax = if q.size == 4 {
            u64::from(val)
        } else {
            (*rax & !mask) | (u64::from(val) & mask)
        };
        v.advance_rip();
        Flow::Continue
    } else {
        let val = (v.regs.gpr[RAX] & mask) as u32;
        let vm = &v.vm;
        if q.port == 0x3F8
            && !vm
                .first_output
                .swap(true, core::sync::atomic::Ordering::Relaxed)
        {
            let t = arch::regs::rdtsc().saturating_sub(
                crate::vm::MANIFEST_TSC.load(core::sync::atomic::Ordering::Relaxed),
            );
            crate::println!(
                "vm {}: first output {t} TSC ticks after the manifest was read",
                vm.name
            );
        }
        let action = vm.io_write(q.port, q.size, val);
        v.advance_rip();
        match action {
            Action::None => Flow::Continue,
            Action::Exit(code) => Flow::End(VmEnd::Exited(code)),
            Action::PowerOff => Flow::End(VmEnd::PoweredOff),
            Action::Reset => Flow::End(VmEnd::Reset),
        }
    }
}
