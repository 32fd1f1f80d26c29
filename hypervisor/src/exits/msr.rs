//! RDMSR/WRMSR: a short list of virtualized MSRs; everything else injects
//! #GP, so a guest never sees or changes a host value (SDM Vol. 4).
use super::GP;
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vmx::run::{RAX, RCX, RDX};
use arch::msr as m;
use arch::vmx::vmcs::{ctrl, guest};

/// EFER bits a guest may set: SCE, LME, LMA (ignored on write), NXE.
const EFER_ALLOWED: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);

fn valid_pat(v: u64) -> bool {
    (0..8).all(|i| matches!((v >> (8 * i)) & 0xFF, 0 | 1 | 4 | 5 | 6 | 7))
}

/// The value a guest reads, or None for #GP.
pub fn read(v: &Vcpu, msr: u32) -> Option<u64> {
    Some(match msr {
        0x10 => arch::regs::rdtsc().wrapping_add(ctrl::TSC_OFFSET.read().ok()?),
        m::IA32_APIC_BASE => v.vm.lapics[v.index].lock().apic_base(),
        m::IA32_TSC_DEADLINE => v.vm.lapics[v.index]
            .lock()
            .read_tsc_deadline(v.vm.guest_tsc()),
        0x800..=0x8FF => v.vm.lapics[v.index]
            .lock()
            .read_msr(msr, v.vm.guest_tsc())?,
        // Locked with VMX off: guests can't use VT-x.
        m::IA32_FEATURE_CONTROL => m::feature_control::LOCK,
        0x17 | 0x8B => 0,
        // Fast strings; BTS and PEBS unavailable.
        m::IA32_MISC_ENABLE => 1 | (1 << 11) | (1 << 12),
        m::IA32_PAT => guest::IA32_PAT.read().ok()?,
        m::IA32_EFER => guest::IA32_EFER.read().ok()?,
        m::IA32_SYSENTER_CS => u64::from(guest::IA32_SYSENTER_CS.read().ok()?),
        m::IA32_SYSENTER_ESP => guest::IA32_SYSENTER_ESP.read().ok()?,
        m::IA32_SYSENTER_EIP => guest::IA32_SYSENTER_EIP.read().ok()?,
        m::IA32_DEBUGCTL => 0,
        _ => return None,
    })
}

/// Applies a guest write; false means #GP.
pub fn write(v: &mut Vcpu, msr: u32, value: u64) -> bool {
    // SAFETY: (all VMCS writes below) the vCPU's VMCS is current.
    unsafe {
        match msr {
            0x10 => ctrl::TSC_OFFSET
                .write(value.wrapping_sub(arch::regs::rdtsc()))
                .is_ok(),
            m::IA32_APIC_BASE => {
                let vm = v.vm.clone();
                let r = vm.lapics[v.index].lock().set_apic_base(value);
                r.is_ok()
            }
            m::IA32_TSC_DEADLINE => {
                let vm = v.vm.clone();
                vm.lapics[v.index]
                    .lock()
                    .write_tsc_deadline(value, vm.guest_tsc());
                true
            }
            0x800..=0x8FF => {
                let vm = v.vm.clone();
                let r = vm.lapics[v.index]
                    .lock()
                    .write_msr(msr, value, vm.guest_tsc());
                match r {
                    Ok(effect) => {
                        vm.lapic_effect(v.index, effect);
                        true
                    }
                    Err(_) => false,
                }
            }
            0x8B => true,
            m::IA32_MISC_ENABLE => true,
            m::IA32_PAT => valid_pat(value) && guest::IA32_PAT.write(value).is_ok(),
            m::IA32_EFER => {
                if value & !EFER_ALLOWED != 0 {
                    return false;
                }
                let cr0 = guest::CR0.read().unwrap_or(0);
                let old = guest::IA32_EFER.read().unwrap_or(0);
                let paging = cr0 & arch::regs::cr0::PG != 0;
                // LME can't change while paging is on (SDM Vol. 3A 10.8.5).
                if paging && (value ^ old) & (1 << 8) != 0 {
                    return false;
                }
                let lma = paging && value & (1 << 8) != 0;
                let new = (value & !(1 << 10)) | if lma { 1 << 10 } else { 0 };
                v.set_entry_ia32e(lma);
                guest::IA32_EFER.write(new).is_ok()
            }
            m::IA32_SYSENTER_CS => guest::IA32_SYSENTER_CS.write(value as u32).is_ok(),
            m::IA32_SYSENTER_ESP => guest::IA32_SYSENTER_ESP.write(value).is_ok(),
            m::IA32_SYSENTER_EIP => guest::IA32_SYSENTER_EIP.write(value).is_ok(),
            // Debug features are not virtualized: accept "off".
            m::IA32_DEBUGCTL => value == 0,
            _ => false,
        }
    }
}

pub fn rdmsr(v: &mut Vcpu) -> Flow {
    let msr = v.regs.gpr[RCX] as u32;
    match read(v, msr) {
        Some(val) => {
            v.regs.gpr[RAX] = val & 0xFFFF_FFFF;
            v.regs.gpr[RDX] = val >> 32;
            v.advance_rip();
        }
        None => v.inject_exception(GP, Some(0)),
    }
    Flow::Continue
}

pub fn wrmsr(v: &mut Vcpu) -> Flow {
    let msr = v.regs.gpr[RCX] as u32;
    let value = (v.regs.gpr[RDX] << 32) | (v.regs.gpr[RAX] & 0xFFFF_FFFF);
    if write(v, msr, value) {
        v.advance_rip();
    } else {
        v.inject_exception(GP, Some(0));
    }
    Flow::Continue
}

#[cfg(test)]
mod tests {
    #[test]
    fn pat_validation() {
        assert!(super::valid_pat(0x0007_0406_0007_0406));
        assert!(!super::valid_pat(0x0007_0406_0007_0402));
        assert!(!super::valid_pat(0x0800_0000_0000_0000));
    }
}
