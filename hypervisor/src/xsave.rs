//! Extended processor state: the host turns XSAVE on so guest FPU/SSE/AVX
//! state can be saved and restored when vCPUs switch (SDM Vol. 1 13), and
//! works out which XCR0 components guests are offered and how CPUID leaf 0DH
//! describes them (SDM Vol. 1 13.2, 13.4.3; Vol. 2A CPUID leaf 0DH).
use arch::cpuid::{cpuid, leaf1_ecx, Cpuid};
use core::sync::atomic::{AtomicU64, Ordering};

static HOST_MASK: AtomicU64 = AtomicU64::new(0);
static LAYOUT: spin::Once<Layout> = spin::Once::new();

/// User-state components the hypervisor switches: x87, SSE, AVX, MPX, AVX-512, PKRU.
const SWITCHED: u64 = 0x2FF;

pub const X87: u64 = 1 << 0;
pub const SSE: u64 = 1 << 1;
pub const AVX: u64 = 1 << 2;
pub const MPX: u64 = (1 << 3) | (1 << 4);
pub const AVX512: u64 = (1 << 5) | (1 << 6) | (1 << 7);
pub const PKRU: u64 = 1 << 9;

/// Components a guest may be offered. MPX is not: CPUID hides it (leaf 7).
const GUEST_CAN_HAVE: u64 = X87 | SSE | AVX | AVX512 | PKRU;
/// Components 0..COMPONENTS are described; none above PKRU is offered.
pub const COMPONENTS: usize = 10;
/// The legacy region and the XSAVE header (SDM Vol. 1 13.4).
pub const LEGACY_AND_HEADER: u32 = 512 + 64;

// CPUID.(EAX=0DH,ECX=1):EAX bits.
const XSAVEOPT: u32 = 1 << 0;
const XSAVEC: u32 = 1 << 1;
const XGETBV1: u32 = 1 << 2;

/// One state component as CPUID.(EAX=0DH,ECX=i) describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Component {
    pub size: u32,
    /// Offset in the standard (non-compacted) format.
    pub offset: u32,
    /// 64-byte aligned in the compacted format (ECX bit 1).
    pub align64: bool,
}

/// The XSAVE features offered to guests: exactly the components XSETBV
/// accepts, their host geometry, and the sub-leaf 1 instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub offered: u64,
    pub comps: [Component; COMPONENTS],
    /// CPUID.(EAX=0DH,ECX=1):EAX as offered: XSAVEOPT, XSAVEC, XGETBV1 where
    /// the host has them; never XSAVES (not enabled in the VMCS) or XFD.
    pub sub1_eax: u32,
}

impl Layout {
    /// The guest layout for a host whose supported XCR0 components are
    /// `host_supported`, reading the host's CPUID leaf 0DH through `host`.
    /// A component the host describes inconsistently (no size, an offset
    /// inside the legacy area, marked supervisor) is not offered, and nor is
    /// a group the architecture only allows together (SDM Vol. 1 13.3).
    pub fn from_host(host_supported: u64, host: impl Fn(u32, u32) -> Cpuid) -> Layout {
        let mut offered = host_supported & GUEST_CAN_HAVE;
        let mut comps = [Component::default(); COMPONENTS];
        for (i, c) in comps.iter_mut().enumerate().skip(2) {
            if offered & (1 << i) == 0 {
                continue;
            }
            let r = host(0xD, i as u32);
            let sane = r.eax != 0
                && r.ebx >= LEGACY_AND_HEADER
                && r.ecx & 1 == 0
                && r.ebx.checked_add(r.eax).is_some();
            if sane {
                *c = Component {
                    size: r.eax,
                    offset: r.ebx,
                    align64: r.ecx & 2 != 0,
                };
            } else {
                offered &= !(1 << i);
            }
        }
        if offered & (X87 | SSE) != X87 | SSE {
            offered &= X87 | SSE;
        }
        if offered & AVX == 0 || offered & AVX512 != AVX512 {
            offered &= !AVX512;
        }
        for (i, c) in comps.iter_mut().enumerate().skip(2) {
            if offered & (1 << i) == 0 {
                *c = Component::default();
            }
        }
        let sub1_eax = host(0xD, 1).eax & (XSAVEOPT | XSAVEC | XGETBV1);
        Layout {
            offered,
            comps,
            sub1_eax,
        }
    }

    fn each(&self, mask: u64) -> impl Iterator<Item = &Component> {
        let mask = mask & self.offered;
        self.comps
            .iter()
            .enumerate()
            .skip(2)
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| c)
    }

    /// XSAVE area size in the standard format for the components in `mask`.
    pub fn standard_size(&self, mask: u64) -> u32 {
        self.each(mask)
            .map(|c| c.offset + c.size)
            .fold(LEGACY_AND_HEADER, u32::max)
    }

    /// XSAVE area size in the compacted format (SDM Vol. 1 13.4.3): the
    /// components follow the header in order, each 64-byte aligned if flagged.
    pub fn compacted_size(&self, mask: u64) -> u32 {
        self.each(mask).fold(LEGACY_AND_HEADER, |end, c| {
            let start = if c.align64 {
                end.next_multiple_of(64)
            } else {
                end
            };
            start + c.size
        })
    }

    /// CPUID.(EAX=0DH, ECX=`sub`) for a vCPU whose XCR0 is `xcr0`.
    pub fn leaf(&self, sub: u32, xcr0: u64) -> Cpuid {
        match sub {
            0 => Cpuid {
                eax: self.offered as u32,
                ebx: self.standard_size(xcr0),
                ecx: self.standard_size(self.offered),
                edx: (self.offered >> 32) as u32,
            },
            // No XSAVES, so IA32_XSS is 0 and supports nothing; EBX is then
            // the compacted size for XCR0, what XSAVEC writes.
            1 => Cpuid {
                eax: self.sub1_eax,
                ebx: if self.sub1_eax & XSAVEC != 0 {
                    self.compacted_size(xcr0)
                } else {
                    0
                },
                ecx: 0,
                edx: 0,
            },
            n if (n as usize) < COMPONENTS && self.offered & (1 << n) != 0 => {
                let c = self.comps[n as usize];
                Cpuid {
                    eax: c.size,
                    ebx: c.offset,
                    ecx: if c.align64 { 2 } else { 0 },
                    edx: 0,
                }
            }
            _ => Cpuid::default(),
        }
    }
}

/// Whether this CPU can XSAVE at all.
pub fn supported() -> bool {
    cpuid(1, 0).ecx & leaf1_ecx::XSAVE != 0
}

/// Every XCR0 component the CPU supports that the hypervisor switches.
pub fn host_mask() -> u64 {
    HOST_MASK.load(Ordering::Relaxed)
}

/// Before XSAVE is set up: x87 and SSE only.
static LEGACY: Layout = Layout {
    offered: X87 | SSE,
    comps: [Component {
        size: 0,
        offset: 0,
        align64: false,
    }; COMPONENTS],
    sub1_eax: 0,
};

/// What guests are offered (set up with XSAVE on the first CPU).
pub fn guest_layout() -> Layout {
    *guest_layout_ref()
}

/// The same without a copy (CPUID exits read it).
pub fn guest_layout_ref() -> &'static Layout {
    LAYOUT.get().unwrap_or(&LEGACY)
}

/// The XCR0 components guests may enable.
pub fn guest_mask() -> u64 {
    guest_layout().offered
}

/// Enables CR4.OSXSAVE on this CPU (the BSP also records the masks).
pub fn enable_on_this_cpu() {
    let l = cpuid(0xD, 0);
    let supported = (u64::from(l.edx) << 32) | u64::from(l.eax);
    let mask = supported & SWITCHED;
    HOST_MASK.store(mask, Ordering::Relaxed);
    // SAFETY: XSAVE is supported (checked by the caller); setting OSXSAVE
    // and loading a supported XCR0 changes no memory mapping.
    unsafe {
        arch::regs::write_cr4(arch::regs::read_cr4() | arch::regs::cr4::OSXSAVE);
        arch::regs::xsetbv(0, mask);
    }
    let mut first = false;
    LAYOUT.call_once(|| {
        first = true;
        let mut l = Layout::from_host(mask, cpuid);
        if l.sub1_eax & XSAVEC != 0 && !xsavec_layout_ok(mask) {
            l.sub1_eax &= !XSAVEC;
            crate::println!(
                "hv: xsave: XSAVEC does not write the compacted format here (SDM Vol. 1 13.4.3); not offered to guests"
            );
        }
        l
    });
    if first {
        let g = guest_layout();
        crate::println!(
            "hv: xsave: host components {supported:#x}, guests offered {:#x} ({} bytes standard, {} compacted){}",
            g.offered,
            g.standard_size(g.offered),
            g.compacted_size(g.offered),
            if g.sub1_eax & XSAVEC != 0 {
                ", XSAVEC"
            } else {
                ", no XSAVEC"
            }
        );
    }
}

#[repr(C, align(64))]
struct ProbeArea([u8; 1024]);
static mut PROBE_AREA: ProbeArea = ProbeArea([0; 1024]);

/// Whether XSAVEC puts the AVX component right after the XSAVE header, where
/// the compacted format has it (SDM Vol. 1 13.4.3) and where XRSTOR reads it
/// back. Bochs 2.7 writes it 160 bytes early, which would corrupt a guest
/// kernel's saved AVX state, so there XSAVEC isn't offered. Runs once, on the
/// BSP, with XCR0 = `mask`.
fn xsavec_layout_ok(mask: u64) -> bool {
    if mask & AVX == 0 {
        return true;
    }
    let area = &raw mut PROBE_AREA;
    // SAFETY: run once on one CPU before any vCPU exists, so nothing else
    // uses the area; XCR0 has AVX; the host keeps no state in the upper
    // halves of the YMM registers (VZEROUPPER clears them again) and
    // XMM0 is declared clobbered; the area is 64-byte aligned and holds
    // the 832 bytes XSAVEC writes for x87 | SSE | AVX.
    unsafe {
        (*area).0.fill(0);
        core::arch::asm!(
            "vpcmpeqb ymm0, ymm0, ymm0",
            "xsavec64 [{a}]",
            "vzeroupper",
            a = in(reg) area,
            in("eax") 7u32,
            in("edx") 0u32,
            out("xmm0") _,
        );
        (&(*area).0)[576..592].iter().all(|&b| b == 0xFF)
    }
}

/// The bytes needed for an XSAVE area holding every supported component.
pub fn area_size() -> u32 {
    cpuid(0xD, 0).ecx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Skylake-X-like host: AVX, MPX, AVX-512, PKRU, standard offsets
    /// (SDM Vol. 1 Table 13-? geometry as real CPUs report it).
    fn skx(sub: u32, pkru_described: bool) -> Cpuid {
        let c = |eax, ebx| Cpuid {
            eax,
            ebx,
            ecx: 0,
            edx: 0,
        };
        match sub {
            1 => c(0xF, 0),
            2 => c(256, 576),
            3 => c(64, 960),
            4 => c(64, 1024),
            5 => c(64, 1088),
            6 => c(512, 1152),
            7 => c(1024, 1664),
            9 if pkru_described => c(8, 2688),
            _ => Cpuid::default(),
        }
    }

    const SKX: u64 = 0x2FF;

    #[test]
    fn offered_components_exclude_mpx_and_undescribed_ones() {
        let l = Layout::from_host(SKX, |_, s| skx(s, true));
        assert_eq!(l.offered, X87 | SSE | AVX | AVX512 | PKRU);
        assert_eq!(l.comps[3], Component::default(), "MPX hidden");
        // A host that lists PKRU in XCR0 but describes no size for it
        // (Bochs 2.7) must not have PKRU offered.
        let l = Layout::from_host(SKX, |_, s| skx(s, false));
        assert_eq!(l.offered, X87 | SSE | AVX | AVX512);
        // AVX-512 without AVX, or only part of it, is not offered.
        let l = Layout::from_host(X87 | SSE | AVX512, |_, s| skx(s, true));
        assert_eq!(l.offered, X87 | SSE);
        let l = Layout::from_host(SKX & !(1 << 6), |_, s| skx(s, true));
        assert_eq!(l.offered, X87 | SSE | AVX | PKRU);
        // Supervisor-flagged or zero-sized components are dropped.
        let l = Layout::from_host(X87 | SSE | AVX, |_, s| {
            let mut r = skx(s, true);
            if s == 2 {
                r.ecx = 1;
            }
            r
        });
        assert_eq!(l.offered, X87 | SSE);
    }

    #[test]
    fn leaf0_sizes_follow_xcr0_and_offered_mask() {
        let l = Layout::from_host(SKX, |_, s| skx(s, true));
        let r = l.leaf(0, X87 | SSE);
        assert_eq!((r.eax, r.edx), (0x2E7, 0));
        assert_eq!(r.ebx, 576);
        assert_eq!(r.ecx, 2696, "up to PKRU at 2688 + 8");
        assert_eq!(l.leaf(0, X87 | SSE | AVX).ebx, 832);
        assert_eq!(l.leaf(0, 0xE7).ebx, 2688);
        // A bit the guest could not have set doesn't count.
        assert_eq!(l.leaf(0, X87 | SSE | MPX).ebx, 576);
    }

    #[test]
    fn leaf1_reports_xsavec_size_and_no_xsaves() {
        let l = Layout::from_host(SKX, |_, s| skx(s, true));
        let r = l.leaf(1, 0x2E7);
        assert_eq!(r.eax, XSAVEOPT | XSAVEC | XGETBV1, "XSAVES (bit 3) hidden");
        assert_eq!((r.ecx, r.edx), (0, 0), "no IA32_XSS components");
        // Compacted: 576 + 256 + 64 + 512 + 1024 + 8.
        assert_eq!(r.ebx, 2440);
        assert_eq!(l.leaf(1, X87 | SSE).ebx, 576);
        assert_eq!(l.leaf(1, X87 | SSE | AVX).ebx, 832);
        // 64-byte alignment of a component in the compacted form.
        let a = Layout::from_host(SKX, |_, s| {
            let mut r = skx(s, true);
            if s == 9 {
                r.ecx = 2;
            }
            r
        });
        assert_eq!(a.leaf(1, 0x2E7).ebx, 2432 + 8);
        assert_eq!(a.leaf(1, 0x207).ebx, 832 + 8, "832 is already aligned");
        let b = Layout::from_host(SKX, |_, s| {
            let mut r = skx(s, true);
            if s == 5 {
                r.ecx = 2;
                r.eax = 8;
            }
            if s == 6 {
                r.ecx = 2;
            }
            r
        });
        // 832 + 8 = 840 -> ZMM_Hi256 at 896, +512 = 1408, +1024 = 2432, +8.
        assert_eq!(b.leaf(1, 0x2E7).ebx, 2440);
        // Without XSAVEC on the host, no compacted size.
        let n = Layout::from_host(SKX, |_, s| {
            if s == 1 {
                Cpuid {
                    eax: 9,
                    ..Default::default()
                }
            } else {
                skx(s, true)
            }
        });
        assert_eq!(
            n.leaf(1, 7),
            Cpuid {
                eax: XSAVEOPT,
                ..Default::default()
            }
        );
    }

    #[test]
    fn component_subleaves_only_for_offered_components() {
        let l = Layout::from_host(SKX, |_, s| skx(s, false));
        assert_eq!(
            l.leaf(2, 7),
            Cpuid {
                eax: 256,
                ebx: 576,
                ecx: 0,
                edx: 0
            }
        );
        assert_eq!(l.leaf(7, 7).eax, 1024);
        for hidden in [3, 4, 8, 9, 10, 17, 18, 63, 64, 1000] {
            assert_eq!(l.leaf(hidden, 7), Cpuid::default(), "sub-leaf {hidden}");
        }
    }

    /// What Linux's paranoid check (arch/x86/kernel/fpu/xstate.c) recomputes:
    /// the size from the per-component sub-leaves must equal what sub-leaves
    /// 0/1 report, in both formats.
    #[test]
    fn sizes_are_consistent_with_subleaves() {
        for pk in [true, false] {
            let l = Layout::from_host(SKX, |_, s| skx(s, pk));
            let xcr0 = l.offered;
            let mut std_end = 576;
            let mut compact = 576u32;
            for i in 2..64 {
                if xcr0 & (1 << i) == 0 {
                    continue;
                }
                let r = l.leaf(i, xcr0);
                assert_ne!(r.eax, 0, "offered component {i} has a size");
                std_end = std_end.max(r.ebx + r.eax);
                if r.ecx & 2 != 0 {
                    compact = compact.next_multiple_of(64);
                }
                compact += r.eax;
            }
            assert_eq!(l.leaf(0, xcr0).ebx, std_end);
            assert_eq!(l.leaf(0, xcr0).ecx, std_end);
            assert_eq!(l.leaf(1, xcr0).ebx, compact);
        }
    }
}
