//! Host PCI enumeration through configuration mechanism #1 (ports 0xCF8 and
//! 0xCFC; PCI Local Bus Specification 3.0, 3.2.2.3.2). The hypervisor lists
//! the host's functions once at bring-up to find a NIC it drives itself;
//! guests never see this bus (each has its own emulated one).
use alloc::vec::Vec;

/// Bus, device and function of one PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Reads and writes configuration space dwords (`off` dword-aligned, < 256).
pub trait ConfigSpace {
    fn read32(&self, at: Bdf, off: u8) -> u32;
    fn write32(&self, at: Bdf, off: u8, v: u32);
}

/// Configuration mechanism #1 on the host's ports.
pub struct PortIo;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// The CONFIG_ADDRESS value for a dword: enable bit 31, bus 23:16, device
/// 15:11, function 10:8, register 7:2.
pub fn config_address(at: Bdf, off: u8) -> u32 {
    0x8000_0000
        | (u32::from(at.bus) << 16)
        | (u32::from(at.dev & 0x1f) << 11)
        | (u32::from(at.func & 7) << 8)
        | u32::from(off & 0xfc)
}

impl ConfigSpace for PortIo {
    fn read32(&self, at: Bdf, off: u8) -> u32 {
        // SAFETY: 0xCF8/0xCFC are the host bridge's configuration ports; only
        // the hypervisor's bring-up CPU uses them (before other CPUs run), and
        // a configuration read has no side effects on the function.
        unsafe {
            arch::regs::outl(CONFIG_ADDRESS, config_address(at, off));
            arch::regs::inl(CONFIG_DATA)
        }
    }

    fn write32(&self, at: Bdf, off: u8, v: u32) {
        // SAFETY: as in `read32`; the callers write only BAR sizing patterns
        // (restored at once) and the command register of the NIC they drive.
        unsafe {
            arch::regs::outl(CONFIG_ADDRESS, config_address(at, off));
            arch::regs::outl(CONFIG_DATA, v);
        }
    }
}

/// A base address register, decoded (PCI 3.0, 6.2.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    None,
    Io {
        port: u32,
    },
    Mem {
        addr: u64,
        is64: bool,
        prefetchable: bool,
    },
}

/// Decodes BAR `lo` (and, for a 64-bit memory BAR, the next one `hi`).
pub fn decode_bar(lo: u32, hi: u32) -> Bar {
    if lo & 1 == 1 {
        return match lo & !3 {
            0 => Bar::None,
            port => Bar::Io { port },
        };
    }
    let is64 = (lo >> 1) & 3 == 2;
    let addr = u64::from(lo & !0xf) | if is64 { u64::from(hi) << 32 } else { 0 };
    if addr == 0 {
        return Bar::None;
    }
    Bar::Mem {
        addr,
        is64,
        prefetchable: lo & 8 != 0,
    }
}

/// The size a memory BAR decodes, from the value read back after writing
/// all ones to it (`lo`, and `hi` for a 64-bit one).
pub fn mem_bar_size(lo: u32, hi: u32, is64: bool) -> u64 {
    let mask = u64::from(lo & !0xf)
        | if is64 {
            u64::from(hi) << 32
        } else {
            0xffff_ffff_0000_0000
        };
    if mask == 0 {
        0
    } else {
        (!mask).wrapping_add(1)
    }
}

/// One function found on the host's bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub at: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: [u8; 3],
    /// Header type 0 (device), 1 (PCI-PCI bridge), 2 (CardBus bridge).
    pub header: u8,
}

impl Function {
    fn read(cs: &dyn ConfigSpace, at: Bdf) -> Option<(Function, bool)> {
        let id = cs.read32(at, 0);
        let vendor = id as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let class = cs.read32(at, 8);
        let hdr = (cs.read32(at, 0xc) >> 16) as u8;
        Some((
            Function {
                at,
                vendor,
                device: (id >> 16) as u16,
                class: [(class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8],
                header: hdr & 0x7f,
            },
            hdr & 0x80 != 0,
        ))
    }

    /// BAR `n` (0-5) of a type-0 header.
    pub fn bar(&self, cs: &dyn ConfigSpace, n: u8) -> Bar {
        let off = 0x10 + 4 * n;
        let lo = cs.read32(self.at, off);
        let hi = if n < 5 {
            cs.read32(self.at, off + 4)
        } else {
            0
        };
        decode_bar(lo, hi)
    }

    /// The size of memory BAR `n`, by the standard probe (all ones written,
    /// read back, the original restored). Memory decoding must be off
    /// meanwhile, so the command register is cleared and restored around it.
    pub fn mem_bar_size(&self, cs: &dyn ConfigSpace, n: u8) -> u64 {
        let off = 0x10 + 4 * n;
        let Bar::Mem { is64, .. } = self.bar(cs, n) else {
            return 0;
        };
        let cmd = cs.read32(self.at, 4);
        cs.write32(self.at, 4, cmd & !0x7 & 0xffff);
        let lo0 = cs.read32(self.at, off);
        cs.write32(self.at, off, 0xffff_ffff);
        let lo = cs.read32(self.at, off);
        cs.write32(self.at, off, lo0);
        let mut hi = 0;
        if is64 {
            let hi0 = cs.read32(self.at, off + 4);
            cs.write32(self.at, off + 4, 0xffff_ffff);
            hi = cs.read32(self.at, off + 4);
            cs.write32(self.at, off + 4, hi0);
        }
        cs.write32(self.at, 4, cmd & 0xffff);
        mem_bar_size(lo, hi, is64)
    }

    /// Turns on memory-space decoding and bus mastering (command bits 1 and
    /// 2): firmware may leave a device it didn't use with both off.
    pub fn enable_mmio_and_dma(&self, cs: &dyn ConfigSpace) {
        let cmd = cs.read32(self.at, 4) & 0xffff;
        cs.write32(self.at, 4, cmd | 0x6);
    }
}

/// Every function on buses 0-255 (device 0-31; functions 1-7 only where
/// function 0's header says multi-function).
pub fn enumerate(cs: &dyn ConfigSpace) -> Vec<Function> {
    let mut found = Vec::new();
    for bus in 0..=255u8 {
        for dev in 0..32u8 {
            let Some((f0, multi)) = Function::read(cs, Bdf { bus, dev, func: 0 }) else {
                continue;
            };
            found.push(f0);
            if multi {
                for func in 1..8u8 {
                    if let Some((f, _)) = Function::read(cs, Bdf { bus, dev, func }) {
                        found.push(f);
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use core::cell::RefCell;
    use std::collections::HashMap;

    /// A configuration space of a few functions; unknown ones read all ones.
    #[derive(Default)]
    pub struct FakeBus {
        pub space: RefCell<HashMap<(u8, u8, u8), [u32; 64]>>,
        /// Size masks of BARs (function, index) -> mask.
        pub bar_masks: HashMap<((u8, u8, u8), u8), u32>,
    }

    impl FakeBus {
        pub fn add(&mut self, at: (u8, u8, u8), vendor: u16, device: u16, class: u32, header: u8) {
            let mut s = [0u32; 64];
            s[0] = u32::from(vendor) | (u32::from(device) << 16);
            s[2] = class << 8;
            s[3] = u32::from(header) << 16;
            self.space.borrow_mut().insert(at, s);
        }
    }

    impl ConfigSpace for FakeBus {
        fn read32(&self, at: Bdf, off: u8) -> u32 {
            self.space
                .borrow()
                .get(&(at.bus, at.dev, at.func))
                .map_or(0xffff_ffff, |s| s[usize::from(off / 4)])
        }
        fn write32(&self, at: Bdf, off: u8, v: u32) {
            let key = (at.bus, at.dev, at.func);
            let mut space = self.space.borrow_mut();
            let Some(s) = space.get_mut(&key) else { return };
            let idx = usize::from(off / 4);
            let v = if (4..10).contains(&idx) {
                match self.bar_masks.get(&(key, (idx - 4) as u8)) {
                    Some(m) => (v & m) | (s[idx] & !m),
                    None => v,
                }
            } else {
                v
            };
            s[idx] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeBus;
    use super::*;

    #[test]
    fn config_address_layout() {
        let at = Bdf {
            bus: 1,
            dev: 3,
            func: 2,
        };
        assert_eq!(config_address(at, 0x13), 0x8001_1a10);
    }

    #[test]
    fn bars_decode() {
        assert_eq!(decode_bar(0, 0), Bar::None);
        assert_eq!(decode_bar(0xc001, 0), Bar::Io { port: 0xc000 });
        assert_eq!(
            decode_bar(0xfebc_0000, 0),
            Bar::Mem {
                addr: 0xfebc_0000,
                is64: false,
                prefetchable: false
            }
        );
        assert_eq!(
            decode_bar(0x8000_000c, 0x1),
            Bar::Mem {
                addr: 0x1_8000_0000,
                is64: true,
                prefetchable: true
            }
        );
        assert_eq!(mem_bar_size(0xfffe_0000, 0, false), 0x2_0000);
        assert_eq!(mem_bar_size(0xf000_000c, 0xffff_ffff, true), 0x1000_0000);
    }

    #[test]
    fn enumeration_finds_functions_and_follows_the_multifunction_bit() {
        let mut bus = FakeBus::default();
        bus.add((0, 0, 0), 0x8086, 0x1237, 0x06_00_00, 0);
        bus.add((0, 1, 0), 0x8086, 0x7000, 0x06_01_00, 0x80);
        bus.add((0, 1, 1), 0x8086, 0x7010, 0x01_01_80, 0);
        // Function 1 of a single-function device is not looked at.
        bus.add((0, 2, 0), 0x8086, 0x100e, 0x02_00_00, 0);
        bus.add((0, 2, 1), 0x1234, 0x1111, 0x03_00_00, 0);
        bus.add((3, 31, 0), 0x1af4, 0x1000, 0x02_00_00, 0);
        let f = enumerate(&bus);
        let ids: Vec<_> = f
            .iter()
            .map(|f| (f.at.to_string(), f.vendor, f.device))
            .collect();
        assert_eq!(
            ids,
            [
                ("00:00.0".into(), 0x8086, 0x1237),
                ("00:01.0".into(), 0x8086, 0x7000),
                ("00:01.1".into(), 0x8086, 0x7010),
                ("00:02.0".into(), 0x8086, 0x100e),
                ("03:1f.0".into(), 0x1af4, 0x1000),
            ]
        );
        assert_eq!(f[2].class, [1, 1, 0x80]);
        assert_eq!(f[1].header, 0);
    }

    #[test]
    fn bar_size_probe_restores_the_bar_and_command() {
        let mut bus = FakeBus::default();
        bus.add((0, 2, 0), 0x8086, 0x100e, 0x02_00_00, 0);
        bus.bar_masks.insert(((0, 2, 0), 0), 0xfffe_0000);
        bus.space.borrow_mut().get_mut(&(0, 2, 0)).unwrap()[4] = 0xfebc_0000;
        bus.space.borrow_mut().get_mut(&(0, 2, 0)).unwrap()[1] = 0x0000_0103;
        let f = enumerate(&bus)[0];
        assert_eq!(f.mem_bar_size(&bus, 0), 0x2_0000);
        assert_eq!(
            f.bar(&bus, 0),
            Bar::Mem {
                addr: 0xfebc_0000,
                is64: false,
                prefetchable: false
            }
        );
        assert_eq!(bus.read32(f.at, 4), 0x103);
        f.enable_mmio_and_dma(&bus);
        assert_eq!(bus.read32(f.at, 4) & 7, 7);
    }
}
