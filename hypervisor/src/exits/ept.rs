//! EPT violations and misconfigurations: the guest touched guest-physical
//! memory that isn't its RAM (SDM Vol. 3C 29.3.3). With no MMIO device model
//! at the address, the guest is stopped with a diagnostic naming the address
//! and the access.
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vm::VmEnd;
use arch::vmx::exit::EptViolation;
use arch::vmx::vmcs::ro;

pub fn violation(v: &mut Vcpu) -> Flow {
    let gpa = ro::GUEST_PHYSICAL_ADDR.read().unwrap_or(0);
    if let Some(flow) = super::mmio::handle(v, gpa) {
        return flow;
    }
    let q = EptViolation::decode(ro::EXIT_QUALIFICATION.read().unwrap_or(0));
    let region = if (crate::vm::memory::MMIO_HOLE_START..crate::vm::memory::FOUR_GIB).contains(&gpa)
    {
        "MMIO hole, no device there"
    } else {
        "beyond guest RAM"
    };
    Flow::End(VmEnd::Crashed(alloc::format!(
        "EPT violation: {} at guest-physical {gpa:#x} ({region}), rip {:#x}",
        q.access(),
        v.rip()
    )))
}

pub fn misconfig(v: &mut Vcpu) -> Flow {
    let gpa = ro::GUEST_PHYSICAL_ADDR.read().unwrap_or(0);
    Flow::End(VmEnd::Crashed(alloc::format!(
        "EPT misconfiguration at guest-physical {gpa:#x}, rip {:#x}",
        v.rip()
    )))
}
