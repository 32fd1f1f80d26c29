//! MMIO emulation for device pages that aren't mapped in the EPT (local APIC,
//! I/O APIC): the EPT violation gives the address and the direction; the
//! instruction itself is fetched through the guest's page tables and decoded
//! to find the register, width and value (SDM Vol. 3C 28.2.1 gives no data).
use super::decode::{self, Mode};
use crate::devices::ioapic;
use crate::vm::gwalk::{self, Access, GuestPhysRead, PagingRegs};
use crate::vm::memory::GuestMemory;
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vm::VmEnd;
use crate::vmx::run::RSP;
use alloc::format;
use arch::vmx::vmcs::guest;

pub const IOAPIC_PAGE: u64 = ioapic::BASE;

/// The device model an MMIO page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Lapic,
    Ioapic,
}

/// Which device decodes `page` for a vCPU whose IA32_APIC_BASE puts its
/// xAPIC page at `lapic_page` (SDM Vol. 3A 11.4.5: the page moves with the
/// base; the old address no longer reaches the APIC).
pub fn target(page: u64, lapic_page: u64) -> Option<Target> {
    if page == lapic_page {
        Some(Target::Lapic)
    } else if page == IOAPIC_PAGE {
        Some(Target::Ioapic)
    } else {
        None
    }
}

impl GuestPhysRead for GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.slice(gpa, buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

fn cpu_mode() -> Mode {
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

/// Fetches up to 15 instruction bytes at the guest's CS:RIP.
pub fn fetch(v: &Vcpu, buf: &mut [u8; 15]) -> Result<usize, alloc::string::String> {
    let regs = PagingRegs {
        cr0: guest::CR0.read().unwrap_or(0),
        cr3: guest::CR3.read().unwrap_or(0),
        cr4: guest::CR4.read().unwrap_or(0),
        efer: guest::IA32_EFER.read().unwrap_or(0),
    };
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

/// Emulates an access to an MMIO page; None if no device lives at `gpa`.
pub fn handle(v: &mut Vcpu, gpa: u64) -> Option<Flow> {
    let page = gpa & !0xFFF;
    let lapic_page = v.vm.lapics[v.index].lock().mmio_base();
    let target = target(page, lapic_page)?;
    let mut bytes = [0u8; 15];
    let n = match fetch(v, &mut bytes) {
        Ok(n) => n,
        Err(e) => return Some(Flow::End(VmEnd::Crashed(format!("MMIO at {gpa:#x}: {e}")))),
    };
    let d = match decode::decode(&bytes[..n], cpu_mode()) {
        Ok(d) => d,
        Err(e) => {
            return Some(Flow::End(VmEnd::Crashed(format!(
            "MMIO at {gpa:#x}: cannot emulate the instruction at rip {:#x} ({e:?}, bytes {:02x?})",
            v.rip(),
            &bytes[..n.min(8)]
        ))))
        }
    };
    let vm = v.vm.clone();
    let idx = v.index;
    let offset = (gpa & 0xFFF) as u32;
    let now = vm.guest_tsc();
    let mut regs = v.regs.gpr;
    regs[RSP] = guest::RSP.read().unwrap_or(0);
    let mut rflags = guest::RFLAGS.read().unwrap_or(0);
    let size = d.size;
    let read = || -> u64 {
        if target == Target::Lapic {
            u64::from(vm.lapics[idx].lock().read_mmio(offset, now))
        } else {
            u64::from(vm.shared.lock().ioapic.read_mmio(offset, size))
        }
    };
    let store = decode::emulate(&d, &mut regs, &mut rflags, read);
    if let Some(value) = store {
        if target == Target::Lapic {
            let effect = vm.lapics[idx].lock().write_mmio(offset, value as u32, now);
            vm.lapic_effect(idx, effect);
        } else {
            let deliveries = vm
                .shared
                .lock()
                .ioapic
                .write_mmio(offset, size, value as u32);
            vm.ioapic_deliver(&deliveries);
        }
    }
    v.regs.gpr = regs;
    // SAFETY: the vCPU's VMCS is current.
    unsafe {
        let _ = guest::RSP.write(regs[RSP]);
        let _ = guest::RFLAGS.write(rflags);
        let _ = guest::RIP.write(v.rip().wrapping_add(u64::from(d.len)));
    }
    Some(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_page_follows_apic_base() {
        let default = crate::devices::lapic::DEFAULT_BASE;
        assert_eq!(target(default, default), Some(Target::Lapic));
        assert_eq!(target(IOAPIC_PAGE, default), Some(Target::Ioapic));
        // Relocated: the new page decodes, the old one is unclaimed.
        assert_eq!(target(0xFED0_0000, 0xFED0_0000), Some(Target::Lapic));
        assert_eq!(target(default, 0xFED0_0000), None);
        assert_eq!(target(0xFED0_1000, 0xFED0_0000), None);
    }
}
