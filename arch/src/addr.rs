//! Typed physical addresses: [`Gpa`] (guest-physical, what a guest's paging
//! produces and EPT translates, SDM Vol. 3C 29.3) and [`Hpa`] (host-physical,
//! what EPT entries, the EPTP and the frame allocator hold). Distinct types so
//! that one can't be passed where the other is meant; arithmetic on them is
//! checked and says so with `Option`.
use core::fmt;

/// Bytes in a 4 KiB page.
pub const PAGE_SIZE: u64 = 4096;

macro_rules! phys_addr {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            pub const fn new(addr: u64) -> Self {
                $name(addr)
            }

            /// The address as a number.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` if that passes 2^64.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(a) => Some($name(a)),
                    None => None,
                }
            }

            /// `self - bytes`, or `None` below 0.
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(a) => Some($name(a)),
                    None => None,
                }
            }

            /// How far `self` lies above `base`, or `None` if it lies below.
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// The end of `[self, self + len)`, or `None` if the range wraps
            /// past 2^64 (an end of exactly 2^64 wraps too: it isn't a u64).
            pub const fn end(self, len: u64) -> Option<Self> {
                self.checked_add(len)
            }

            /// Byte offset within its 4 KiB page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }

            /// The start of its 4 KiB page.
            pub const fn page_base(self) -> Self {
                $name(self.0 & !(PAGE_SIZE - 1))
            }

            /// The 4 KiB page frame number.
            pub const fn pfn(self) -> u64 {
                self.0 >> 12
            }

            pub const fn is_page_aligned(self) -> bool {
                self.page_offset() == 0
            }

            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & align.wrapping_sub(1) == 0
            }

            /// Rounded down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                $name(self.0 & !align.wrapping_sub(1))
            }

            /// Rounded up to a multiple of `align` (a power of two), or `None`
            /// if that passes 2^64.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align.wrapping_sub(1)) {
                    Some(a) => Some($name(a & !align.wrapping_sub(1))),
                    None => None,
                }
            }

            /// Rounded up to the next 4 KiB page boundary.
            pub const fn page_align_up(self) -> Option<Self> {
                self.align_up(PAGE_SIZE)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl From<$name> for u64 {
            fn from(a: $name) -> u64 {
                a.0
            }
        }
    };
}

phys_addr!(
    /// A guest-physical address.
    Gpa
);
phys_addr!(
    /// A host-physical address. In the hypervisor, host virtual equals host
    /// physical (identity map), which is what [`Hpa::as_ptr`] relies on.
    Hpa
);

impl Hpa {
    /// The address as a pointer, valid only where host memory is
    /// identity-mapped (as in the hypervisor).
    pub const fn as_ptr<T>(self) -> *const T {
        self.0 as *const T
    }

    /// As [`Hpa::as_ptr`], for writing.
    pub const fn as_mut_ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_offset_are_checked() {
        assert_eq!(Gpa(0x1000).checked_add(0x234), Some(Gpa(0x1234)));
        assert_eq!(Gpa(u64::MAX).checked_add(1), None);
        assert_eq!(Gpa(u64::MAX - 1).checked_add(1), Some(Gpa(u64::MAX)));
        assert_eq!(Hpa(u64::MAX - 7).end(8), None);
        assert_eq!(Hpa(0x10).checked_sub(0x11), None);
        assert_eq!(Hpa(0x10).checked_sub(0x10), Some(Hpa(0)));
        assert_eq!(Gpa(0x5000).offset_from(Gpa(0x4000)), Some(0x1000));
        assert_eq!(Gpa(0x3fff).offset_from(Gpa(0x4000)), None);
    }

    #[test]
    fn page_rounding() {
        let a = Gpa(0x1234_5678);
        assert_eq!(a.page_offset(), 0x678);
        assert_eq!(a.page_base(), Gpa(0x1234_5000));
        assert_eq!(a.pfn(), 0x12345);
        assert!(!a.is_page_aligned());
        assert!(a.page_base().is_page_aligned());
        assert_eq!(a.page_align_up(), Some(Gpa(0x1234_6000)));
        assert_eq!(Gpa(0x2000).page_align_up(), Some(Gpa(0x2000)));
        assert_eq!(Gpa(u64::MAX - 0xffe).page_align_up(), None);
        assert_eq!(
            Gpa(u64::MAX - 0xfff).page_align_up(),
            Some(Gpa(u64::MAX - 0xfff))
        );
        assert_eq!(Hpa(0x30_1000).align_down(0x20_0000), Hpa(0x20_0000));
        assert_eq!(Hpa(0x30_1000).align_up(0x20_0000), Some(Hpa(0x40_0000)));
        assert!(Hpa(0x40_0000).is_aligned(0x20_0000));
        assert!(!Hpa(0x40_1000).is_aligned(0x20_0000));
    }

    #[test]
    fn conversions_and_formatting() {
        let g = Gpa::new(0xfee0_0000);
        assert_eq!(g.get(), 0xfee0_0000);
        assert_eq!(u64::from(g), 0xfee0_0000);
        assert_eq!(format!("{g:?}"), "Gpa(0xfee00000)");
        assert_eq!(format!("{:?}", Hpa(0x1000)), "Hpa(0x1000)");
        assert_eq!(format!("{g:#x}"), "0xfee00000");
        assert_eq!(format!("{g:08x}"), "fee00000");
        assert_eq!(Hpa(0x2000).as_ptr::<u8>() as u64, 0x2000);
        assert_eq!(Hpa(0x3000).as_mut_ptr::<u64>() as u64, 0x3000);
        assert!(Gpa(1) < Gpa(2));
        assert_eq!(core::mem::size_of::<Gpa>(), 8);
    }
}
