//! CPUID: the host's answers with VMX and every feature that isn't
//! virtualized hidden, the guest's own topology, and the hypervisor leaves.
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vmx::run::{RAX, RBX, RCX, RDX};
use arch::cpuid::Cpuid;
use arch::vmx::vmcs::guest;

/// "FerroVisorHV" in EBX, ECX, EDX.
pub const SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"Ferr"),
    u32::from_le_bytes(*b"oVis"),
    u32::from_le_bytes(*b"orHV"),
];
pub const HV_LEAF_MAX: u32 = 0x4000_0001;
pub const ABI_VERSION: u32 = 1;

/// What the guest-visible answer depends on besides the host.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub vcpu: u32,
    pub vcpus: u32,
    pub guest_osxsave: bool,
    pub rdtscp: bool,
    pub invpcid: bool,
    pub xsaves: bool,
}

/// Leaf 1 ECX bits hidden from guests: VMX, SMX, EST, TM2, PDCM, DTES64,
/// MONITOR, DS-CPL. OSXSAVE follows the guest's CR4. x2APIC and TSC-deadline
/// are set: every vCPU has a virtual local APIC with both.
const L1_ECX_HIDE: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 15)
    | (1 << 27);
const L1_ECX_SET: u32 = (1 << 21) | (1 << 24) | (1 << 31);
/// Leaf 1 EDX: MCE, MTRR, MCA, DS, ACPI thermal, TM, PBE.
const L1_EDX_HIDE: u32 =
    (1 << 7) | (1 << 12) | (1 << 14) | (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
/// Leaf 7.0 EBX: SGX, HLE, RTM, MPX, Intel PT; ECX: WAITPKG, SGX-LC;
/// EDX: hybrid, IBRS/IBPB, STIBP, L1D_FLUSH, ARCH_CAPABILITIES, core caps, SSBD.
const L7_EBX_HIDE: u32 = (1 << 1) | (1 << 2) | (1 << 4) | (1 << 11) | (1 << 14) | (1 << 25);
const L7_ECX_HIDE: u32 = (1 << 5) | (1 << 30);
const L7_EDX_HIDE: u32 =
    (1 << 15) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 30) | (1 << 31);

fn bits_for(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// The guest's CPUID answer for `leaf`/`sub`, given the host's CPUID.
pub fn virtual_cpuid(leaf: u32, sub: u32, view: &View, host: impl Fn(u32, u32) -> Cpuid) -> Cpuid {
    let zero = Cpuid::default();
    let max_basic = host(0, 0).eax;
    match leaf {
        0x4000_0000 => Cpuid {
            eax: HV_LEAF_MAX,
            ebx: SIGNATURE[0],
            ecx: SIGNATURE[1],
            edx: SIGNATURE[2],
        },
        0x4000_0001 => Cpuid {
            eax: ABI_VERSION,
            ebx: 0,
            ecx: 0,
            edx: 0,
        },
        0x4000_0002..=0x4FFF_FFFF => zero,
        0 => host(0, 0),
        l if l <= max_basic || l >= 0x8000_0000 => {
            let mut r = host(leaf, sub);
            match leaf {
                1 => {
                    r.ecx &= !L1_ECX_HIDE;
                    r.ecx |= L1_ECX_SET;
                    if view.guest_osxsave {
                        r.ecx |= 1 << 27;
                    }
                    r.edx &= !L1_EDX_HIDE;
                    r.edx |= 1 << 9; // APIC
                    if view.vcpus > 1 {
                        r.edx |= 1 << 28;
                    } else {
                        r.edx &= !(1 << 28);
                    }
                    r.ebx = (r.ebx & 0x0000_FFFF) | (view.vcpus.min(255) << 16) | (view.vcpu << 24);
                }
                4 => {
                    r.eax = (r.eax & 0x3FF) | ((view.vcpus.next_power_of_two() - 1).min(63) << 26);
                }
                // MONITOR, thermal/power, PMU, SGX, PT, TSC/crystal and
                // frequency leaves (the guest calibrates the TSC against the
                // virtual PIT, whose clock is the TSC the guest really sees),
                // hybrid, PCONFIG, v2 topology.
                5 | 6 | 0xA | 0x12 | 0x14 | 0x15 | 0x16 | 0x1A | 0x1B | 0x1F => r = zero,
                7 if sub == 0 => {
                    r.ebx &= !L7_EBX_HIDE;
                    if !view.invpcid {
                        r.ebx &= !(1 << 10);
                    }
                    r.ecx &= !L7_ECX_HIDE;
                    r.edx &= !L7_EDX_HIDE;
                }
                7 => r = zero,
                0xB => {
                    let shift = bits_for(view.vcpus);
                    r = match sub {
                        0 => Cpuid {
                            eax: 0,
                            ebx: 1,
                            ecx: (1 << 8),
                            edx: view.vcpu,
                        },
                        1 => Cpuid {
                            eax: shift,
                            ebx: view.vcpus,
                            ecx: (2 << 8) | 1,
                            edx: view.vcpu,
                        },
                        s => Cpuid {
                            eax: 0,
                            ebx: 0,
                            ecx: s & 0xFF,
                            edx: view.vcpu,
                        },
                    };
                }
                0xD if sub == 1 && !view.xsaves => r.eax &= !(1 << 3),
                0x8000_0001 if !view.rdtscp => r.edx &= !(1 << 27),
                _ => {}
            }
            r
        }
        // Beyond the basic range Intel CPUs answer with the highest basic leaf.
        _ => virtual_cpuid(max_basic, sub, view, host),
    }
}

pub fn handle(v: &mut Vcpu) -> Flow {
    let leaf = v.regs.gpr[RAX] as u32;
    let sub = v.regs.gpr[RCX] as u32;
    use arch::vmx::vmcs::{bits::secondary as s, ctrl};
    let sec = ctrl::SECONDARY_PROCBASED_EXEC_CONTROLS.read().unwrap_or(0);
    let view = View {
        vcpu: v.index as u32,
        vcpus: v.vm.config.vcpus,
        guest_osxsave: guest::CR4.read().unwrap_or(0) & arch::regs::cr4::OSXSAVE != 0,
        rdtscp: sec & s::ENABLE_RDTSCP != 0,
        invpcid: sec & s::ENABLE_INVPCID != 0,
        xsaves: sec & s::ENABLE_XSAVES != 0,
    };
    let r = virtual_cpuid(leaf, sub, &view, arch::cpuid::cpuid);
    v.regs.gpr[RAX] = u64::from(r.eax);
    v.regs.gpr[RBX] = u64::from(r.ebx);
    v.regs.gpr[RCX] = u64::from(r.ecx);
    v.regs.gpr[RDX] = u64::from(r.edx);
    v.advance_rip();
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(leaf: u32, sub: u32) -> Cpuid {
        match leaf {
            0 => Cpuid {
                eax: 0x16,
                ebx: 1,
                ecx: 2,
                edx: 3,
            },
            1 => Cpuid {
                eax: 0x50654,
                ebx: 0x0810_0800 | (7 << 24),
                ecx: 0xFFFF_FFFF,
                edx: 0xFFFF_FFFF,
            },
            0x16 => Cpuid {
                eax: 0x16,
                ebx: 0x16,
                ecx: 0x16,
                edx: 0x16,
            },
            l => Cpuid {
                eax: l,
                ebx: sub,
                ecx: !0,
                edx: !0,
            },
        }
    }

    fn view(vcpus: u32) -> View {
        View {
            vcpu: 1,
            vcpus,
            guest_osxsave: false,
            rdtscp: true,
            invpcid: true,
            xsaves: false,
        }
    }

    #[test]
    fn vmx_hidden_hypervisor_bit_set_topology_ours() {
        let r = virtual_cpuid(1, 0, &view(2), host);
        assert_eq!(r.ecx & (1 << 5), 0, "VMX must be hidden");
        assert_ne!(r.ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(r.ecx & (1 << 27), 0, "OSXSAVE follows guest CR4");
        assert_eq!(r.ebx >> 24, 1);
        assert_eq!((r.ebx >> 16) & 0xFF, 2);
        assert_eq!(r.edx & (1 << 12), 0, "MTRR hidden");
    }

    #[test]
    fn hypervisor_leaves() {
        let r = virtual_cpuid(0x4000_0000, 0, &view(1), host);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&r.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        sig[8..].copy_from_slice(&r.edx.to_le_bytes());
        assert_eq!(&sig, b"FerroVisorHV");
        assert!(r.eax >= 0x4000_0001);
        assert_eq!(virtual_cpuid(0x4000_0001, 0, &view(1), host).eax, 1);
        assert_eq!(
            virtual_cpuid(0x4000_0100, 0, &view(1), host),
            Cpuid::default()
        );
    }

    #[test]
    fn out_of_range_basic_leaf_answers_highest() {
        assert_eq!(
            virtual_cpuid(0x1000, 0, &view(1), host),
            virtual_cpuid(0x16, 0, &view(1), host)
        );
        assert_eq!(virtual_cpuid(0xA, 0, &view(1), host), Cpuid::default());
        let t = virtual_cpuid(0xB, 1, &view(4), host);
        assert_eq!((t.eax, t.ebx, t.edx), (2, 4, 1));
    }
}
