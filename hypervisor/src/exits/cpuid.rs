//! CPUID: the host's answers with VMX and every feature that isn't
//! virtualized hidden, the guest's own topology, and the hypervisor leaves.
use super::vmexit::{Exit, Info};
use super::{Guest, Outcome};
use crate::vmx::run::{RAX, RBX, RCX, RDX};
use crate::xsave::{self, Layout};
use arch::cpuid::Cpuid;

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
pub struct View<'a> {
    pub vcpu: u32,
    pub vcpus: u32,
    pub guest_osxsave: bool,
    pub rdtscp: bool,
    pub invpcid: bool,
    /// The vCPU's XCR0 and what XSAVE features guests are offered.
    pub xcr0: u64,
    /// (By reference: copying it on every CPUID exit cost more than the rest.)
    pub xsave: &'a Layout,
    /// CR4.PKE as the guest sees it (CPUID.7:ECX.OSPKE).
    pub guest_pke: bool,
    /// IA32_APIC_BASE.EN (CPUID.1:EDX.APIC, SDM Vol. 3A 11.4.3).
    pub apic_enabled: bool,
    /// IA32_MISC_ENABLE bits 22 (limit CPUID maxval) and 34 (XD disable).
    pub limit_maxval: bool,
    pub xd_disable: bool,
    /// The guest's TSC rate (the host's: guests' TSCs are offset, not scaled)
    /// and the TSC ticks per tick of the virtual APIC bus, which Linux takes
    /// to be the crystal of leaf 15H.
    pub tsc_khz: u64,
    pub tsc_per_bus_tick: u64,
}

/// The lowest basic leaf guests are offered: the TSC/crystal and frequency
/// leaves (15H, 16H) are always answered.
const MIN_MAX_BASIC: u32 = 0x16;

/// Leaf 15H, TSC/core crystal clock (SDM Vol. 2A CPUID, Vol. 3B 19.7.3):
/// EAX/EBX = TSC/crystal ratio, ECX = crystal Hz. The crystal is the
/// virtual APIC bus (its timer counts it: Linux sets its APIC timer period
/// from ECX and skips both calibrations); ECX is whole kHz so that the
/// kernel's kHz figures are exact.
pub fn tsc_leaf(tsc_khz: u64, tsc_per_bus_tick: u64) -> Cpuid {
    let n = tsc_per_bus_tick.clamp(1, u64::from(u32::MAX));
    let crystal_khz = (tsc_khz / n).min(u64::from(u32::MAX) / 1000);
    if crystal_khz == 0 {
        return Cpuid::default();
    }
    Cpuid {
        eax: 1,
        ebx: n as u32,
        ecx: (crystal_khz * 1000) as u32,
        edx: 0,
    }
}

/// Leaf 16H: base and maximum frequency and the bus (reference) frequency,
/// in MHz (bits 15:0).
pub fn freq_leaf(tsc_khz: u64, tsc_per_bus_tick: u64) -> Cpuid {
    let mhz = (tsc_khz / 1000).min(0xFFFF) as u32;
    let bus = (tsc_khz / tsc_per_bus_tick.max(1) / 1000).min(0xFFFF) as u32;
    Cpuid {
        eax: mhz,
        ebx: mhz,
        ecx: bus,
        edx: 0,
    }
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
/// CET (shadow stack ECX[7], IBT EDX[20]) needs supervisor XSAVE state
/// (IA32_XSS), which guests don't get; AMX (EDX[22], [24], [25]) needs XCR0
/// components guests aren't offered.
const L7_ECX_CET: u32 = 1 << 7;
const L7_EDX_XSTATE: u32 = (1 << 20) | (1 << 22) | (1 << 24) | (1 << 25);
/// Features whose registers live in XCR0 components (SDM Vol. 1 13.1):
/// leaf 1 ECX FMA, AVX, F16C; leaf 7 EBX AVX2; ECX VAES, VPCLMULQDQ.
const L1_ECX_AVX: u32 = (1 << 12) | (1 << 28) | (1 << 29);
const L7_EBX_AVX: u32 = 1 << 5;
const L7_ECX_AVX: u32 = (1 << 9) | (1 << 10);
/// AVX-512: leaf 7 EBX F, DQ, IFMA, PF, ER, CD, BW, VL; ECX VBMI, VBMI2,
/// VNNI, BITALG, VPOPCNTDQ; EDX 4VNNIW, 4FMAPS, VP2INTERSECT, FP16.
const L7_EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
const L7_ECX_AVX512: u32 = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
const L7_EDX_AVX512: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23);
/// PKU and OSPKE.
const L7_ECX_PKU: u32 = 1 << 3;
const L7_ECX_OSPKE: u32 = 1 << 4;
/// CPUID.80000001H:EDX.NX, hidden while IA32_MISC_ENABLE.XD_DISABLE is set.
const EXT1_EDX_NX: u32 = 1 << 20;

/// Whether the guest is offered PKU (CR4.PKE may be set only then).
pub fn pku_offered(host_l7_ecx: u32, layout: &Layout) -> bool {
    host_l7_ecx & L7_ECX_PKU != 0 && layout.offered & xsave::PKRU != 0
}

fn bits_for(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// The guest's CPUID answer for `leaf`/`sub`, given the host's CPUID.
pub fn virtual_cpuid(leaf: u32, sub: u32, view: &View, host: impl Fn(u32, u32) -> Cpuid) -> Cpuid {
    let zero = Cpuid::default();
    let host_max = host(0, 0).eax;
    let max_basic = host_max.max(MIN_MAX_BASIC);
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
        0 => {
            let mut r = host(0, 0);
            r.eax = max_basic;
            if view.limit_maxval {
                r.eax = r.eax.min(2);
            }
            r
        }
        0x15 => tsc_leaf(view.tsc_khz, view.tsc_per_bus_tick),
        0x16 => freq_leaf(view.tsc_khz, view.tsc_per_bus_tick),
        // Leaves the host lacks below the ones always answered.
        l if l > host_max && l <= max_basic => zero,
        l if l <= max_basic || l >= 0x8000_0000 => {
            let mut r = host(leaf, sub);
            match leaf {
                1 => {
                    r.ecx &= !L1_ECX_HIDE;
                    r.ecx |= L1_ECX_SET;
                    if view.guest_osxsave {
                        r.ecx |= 1 << 27;
                    }
                    if view.xsave.offered & xsave::AVX == 0 {
                        r.ecx &= !L1_ECX_AVX;
                    }
                    r.edx &= !L1_EDX_HIDE;
                    if view.apic_enabled {
                        r.edx |= 1 << 9;
                    } else {
                        r.edx &= !(1 << 9);
                    }
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
                // MONITOR, thermal/power, PMU, SGX, PT, hybrid, PCONFIG, v2
                // topology.
                5 | 6 | 0xA | 0x12 | 0x14 | 0x1A | 0x1B | 0x1F => r = zero,
                7 if sub == 0 => {
                    r.ebx &= !L7_EBX_HIDE;
                    if !view.invpcid {
                        r.ebx &= !(1 << 10);
                    }
                    r.ecx &= !(L7_ECX_HIDE | L7_ECX_CET);
                    r.edx &= !(L7_EDX_HIDE | L7_EDX_XSTATE);
                    let offered = view.xsave.offered;
                    if offered & xsave::AVX == 0 {
                        r.ebx &= !L7_EBX_AVX;
                        r.ecx &= !L7_ECX_AVX;
                    }
                    if offered & xsave::AVX512 != xsave::AVX512 {
                        r.ebx &= !L7_EBX_AVX512;
                        r.ecx &= !L7_ECX_AVX512;
                        r.edx &= !L7_EDX_AVX512;
                    }
                    // OSPKE is the guest's CR4.PKE, not the host's.
                    let pku = pku_offered(r.ecx, view.xsave);
                    r.ecx &= !(L7_ECX_PKU | L7_ECX_OSPKE);
                    if pku {
                        r.ecx |= L7_ECX_PKU;
                        if view.guest_pke {
                            r.ecx |= L7_ECX_OSPKE;
                        }
                    }
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
                // XSAVE state: computed from what guests are offered.
                0xD => r = view.xsave.leaf(sub, view.xcr0),
                // AMX tile information: no AMX.
                0x1D | 0x1E => r = zero,
                0x8000_0001 => {
                    if !view.rdtscp {
                        r.edx &= !(1 << 27);
                    }
                    if view.xd_disable {
                        r.edx &= !EXT1_EDX_NX;
                    }
                }
                _ => {}
            }
            r
        }
        // Beyond the basic range Intel CPUs answer with the highest basic leaf.
        _ => virtual_cpuid(max_basic, sub, view, host),
    }
}

/// Whether the answer for `leaf` depends on guest state the VMCS holds
/// (CR4.OSXSAVE/PKE, the RDTSCP/INVPCID controls): the exit decoder reads
/// it only then (leaf 0 is the benchmarked CPUID round trip).
pub fn reads_guest_state(leaf: u32) -> bool {
    matches!(leaf, 1 | 7 | 0x8000_0001)
}

/// CPUID: the answer in RAX/RBX/RCX/RDX (upper halves zeroed), RIP past it.
// Inlined into its class path of `exits::run`, where the apply step then
// sees the Outcome's constant parts (no writes, the RIP advance).
#[inline(always)]
pub fn handle<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Cpuid { cr4, secondary } = e.info else {
        return super::wrong_info(e);
    };
    use arch::vmx::vmcs::bits::secondary as s;
    let misc = g.msrs().misc_enable;
    let view = View {
        vcpu: g.index() as u32,
        vcpus: g.vcpus(),
        guest_osxsave: cr4 & arch::regs::cr4::OSXSAVE != 0,
        rdtscp: secondary & s::ENABLE_RDTSCP != 0,
        invpcid: secondary & s::ENABLE_INVPCID != 0,
        xcr0: g.xcr0(),
        xsave: xsave::guest_layout_ref(),
        guest_pke: cr4 & arch::regs::cr4::PKE != 0,
        apic_enabled: g.lapic().apic_base() & (1 << 11) != 0,
        limit_maxval: misc & super::msr::misc::LIMIT_CPUID_MAXVAL != 0,
        xd_disable: misc & super::msr::misc::XD_DISABLE != 0,
        tsc_khz: crate::time::tsc_khz(),
        tsc_per_bus_tick: crate::vm::tsc_per_bus_tick(),
    };
    let gpr = g.gprs();
    let r = virtual_cpuid(gpr[RAX] as u32, gpr[RCX] as u32, &view, arch::cpuid::cpuid);
    gpr[RAX] = u64::from(r.eax);
    gpr[RBX] = u64::from(r.ebx);
    gpr[RCX] = u64::from(r.ecx);
    gpr[RDX] = u64::from(r.edx);
    Outcome::advance(e.len)
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

    fn view(vcpus: u32) -> View<'static> {
        View {
            vcpu: 1,
            vcpus,
            guest_osxsave: false,
            rdtscp: true,
            invpcid: true,
            xcr0: 1,
            xsave: alloc::boxed::Box::leak(alloc::boxed::Box::new(Layout::from_host(
                0x2E7, skx_xsave,
            ))),
            guest_pke: false,
            apic_enabled: true,
            limit_maxval: false,
            xd_disable: false,
            tsc_khz: 200_000,
            tsc_per_bus_tick: 2,
        }
    }

    /// A Skylake-X host's leaf 0DH with PKRU listed but not described (as Bochs 2.7).
    fn skx_xsave(_: u32, sub: u32) -> Cpuid {
        let (eax, ebx) = match sub {
            0 => (0x2FF, 2696),
            1 => (0xF, 2696),
            2 => (256, 576),
            3 => (64, 960),
            4 => (64, 1024),
            5 => (64, 1088),
            6 => (512, 1152),
            7 => (1024, 1664),
            _ => (0, 0),
        };
        Cpuid {
            eax,
            ebx,
            ecx: if sub == 0 { 2696 } else { 0 },
            edx: 0,
        }
    }

    fn host_xsave(leaf: u32, sub: u32) -> Cpuid {
        if leaf == 0xD {
            skx_xsave(leaf, sub)
        } else {
            host(leaf, sub)
        }
    }

    #[test]
    fn leaf_d_is_computed_from_offered_components() {
        let mut v = view(1);
        v.xcr0 = 0xE7;
        let r0 = virtual_cpuid(0xD, 0, &v, host_xsave);
        // PKRU (no geometry on this host) and MPX (hidden) are not offered.
        assert_eq!((r0.eax, r0.edx), (0xE7, 0));
        assert_eq!((r0.ebx, r0.ecx), (2688, 2688));
        v.xcr0 = 7;
        assert_eq!(virtual_cpuid(0xD, 0, &v, host_xsave).ebx, 832);
        let r1 = virtual_cpuid(0xD, 1, &v, host_xsave);
        assert_eq!(r1.eax & (1 << 3), 0, "XSAVES hidden");
        assert_ne!(r1.eax & (1 << 1), 0, "XSAVEC offered");
        assert_eq!((r1.ebx, r1.ecx, r1.edx), (832, 0, 0));
        for sub in [3, 4, 9, 10] {
            assert_eq!(virtual_cpuid(0xD, sub, &v, host_xsave), Cpuid::default());
        }
        assert_eq!(virtual_cpuid(0xD, 2, &v, host_xsave).ebx, 576);
    }

    /// Every feature bit of leaf 7 set.
    fn host7(leaf: u32, sub: u32) -> Cpuid {
        let mut r = host(leaf, sub);
        if leaf == 7 {
            r.ebx = !0;
        }
        r
    }

    #[test]
    fn leaf7_and_leaf1_follow_offered_components() {
        let host = host7;
        let mut v = view(1);
        let r7 = virtual_cpuid(7, 0, &v, host);
        assert_ne!(r7.ebx & (1 << 5), 0, "AVX2 kept with AVX offered");
        assert_ne!(r7.ebx & (1 << 16), 0, "AVX-512F kept with AVX-512 offered");
        assert_eq!(r7.ecx & (3 << 3), 0, "PKU/OSPKE hidden without PKRU");
        assert_eq!(r7.ecx & (1 << 7), 0, "CET shadow stack hidden");
        assert_eq!(r7.edx & (1 << 20), 0, "CET IBT hidden");
        assert_eq!(r7.edx & (1 << 24), 0, "AMX hidden");
        let small = Layout::from_host(0x3, skx_xsave);
        v.xsave = &small;
        let r7 = virtual_cpuid(7, 0, &v, host);
        assert_eq!(r7.ebx & ((1 << 5) | (1 << 16) | (1 << 31)), 0);
        let r1 = virtual_cpuid(1, 0, &v, host);
        assert_eq!(r1.ecx & (1 << 28), 0, "AVX hidden without its state");
        assert_ne!(r1.ecx & (1 << 26), 0, "XSAVE itself stays");
        // PKU with PKRU offered; OSPKE follows the guest's CR4.PKE.
        let pkru = Layout::from_host(0x2E7, |l, s| {
            let mut r = skx_xsave(l, s);
            if s == 9 {
                r = Cpuid {
                    eax: 8,
                    ebx: 2688,
                    ecx: 0,
                    edx: 0,
                };
            }
            r
        });
        v.xsave = &pkru;
        assert_eq!(virtual_cpuid(7, 0, &v, host).ecx & (3 << 3), 1 << 3);
        v.guest_pke = true;
        assert_eq!(virtual_cpuid(7, 0, &v, host).ecx & (3 << 3), 3 << 3);
    }

    #[test]
    fn osxsave_apic_and_misc_enable_views() {
        let mut v = view(1);
        assert_eq!(virtual_cpuid(1, 0, &v, host).ecx & (1 << 27), 0);
        v.guest_osxsave = true;
        assert_ne!(virtual_cpuid(1, 0, &v, host).ecx & (1 << 27), 0);
        assert_ne!(virtual_cpuid(1, 0, &v, host).edx & (1 << 9), 0);
        v.apic_enabled = false;
        assert_eq!(
            virtual_cpuid(1, 0, &v, host).edx & (1 << 9),
            0,
            "APIC disabled"
        );
        assert_eq!(virtual_cpuid(0, 0, &v, host).eax, 0x16);
        v.limit_maxval = true;
        assert_eq!(virtual_cpuid(0, 0, &v, host).eax, 2);
        assert_ne!(virtual_cpuid(0x8000_0001, 0, &v, host).edx & (1 << 20), 0);
        v.xd_disable = true;
        assert_eq!(virtual_cpuid(0x8000_0001, 0, &v, host).edx & (1 << 20), 0);
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
    fn tsc_and_crystal_leaves_give_the_guest_tsc_rate() {
        let v = view(1);
        // Bochs at 200 M instructions/s: a 100 MHz APIC bus, TSC = 2 × crystal.
        let r = virtual_cpuid(0x15, 0, &v, host);
        assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (1, 2, 100_000_000, 0));
        // What Linux computes (native_calibrate_tsc): crystal kHz × EBX / EAX.
        assert_eq!(
            u64::from(r.ecx / 1000) * u64::from(r.ebx) / u64::from(r.eax),
            200_000
        );
        let f = virtual_cpuid(0x16, 0, &v, host);
        assert_eq!((f.eax, f.ebx, f.ecx), (200, 200, 100));
        // A 3 GHz host: crystal 100 MHz, ratio 30; whole kHz in ECX.
        let r = tsc_leaf(2_999_999, 29);
        assert_eq!((r.eax, r.ebx, r.ecx), (1, 29, 103_448_000));
        assert!(2_999_999 - u64::from(r.ecx / 1000) * 29 < 29);
        // A TSC slower than the bus clock still gives a ratio of 1.
        assert_eq!(tsc_leaf(50_000, 0).ecx, 50_000_000);
        assert_eq!(tsc_leaf(0, 1), Cpuid::default());
    }

    #[test]
    fn tsc_leaves_answered_on_a_host_without_them() {
        let old = |leaf: u32, sub: u32| {
            if leaf == 0 {
                Cpuid {
                    eax: 0xD,
                    ..Cpuid::default()
                }
            } else {
                host(leaf, sub)
            }
        };
        let v = view(1);
        assert_eq!(virtual_cpuid(0, 0, &v, old).eax, 0x16);
        assert_eq!(virtual_cpuid(0x15, 0, &v, old).ebx, 2);
        assert_eq!(virtual_cpuid(0xE, 0, &v, old), Cpuid::default());
        assert_eq!(virtual_cpuid(0x14, 0, &v, old), Cpuid::default());
        // Beyond the range: the highest basic leaf's answer (16H).
        assert_eq!(
            virtual_cpuid(0x100, 0, &v, old),
            virtual_cpuid(0x16, 0, &v, old)
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
