//! The firmware configuration device of QEMU's PC machines (`fw_cfg`), as
//! QEMU's `docs/specs/fw_cfg.rst` defines it: the interface Debian's OVMF
//! and SeaBIOS builds, Linux's `qemu_fw_cfg` driver and many test kernels
//! read to learn the machine they run on.
//!
//! x86 ports: the 16-bit selector at 0x510 (a 2-byte write selects an item
//! and rewinds its offset), the 8-bit data register at 0x511 (each read
//! gives the next byte of the item, 0 past its end; writes are ignored, as
//! in QEMU since 2.4) and the 64-bit big-endian DMA address register at
//! 0x514-0x51B (a 32-bit write of the low half at 0x518 starts a transfer;
//! reads give the signature "QEMU CFG").
//!
//! The items are fixed when the VM is made (CPU count, RAM size, the E820
//! map, named files); the device's state is the selector, the offset in the
//! item and the DMA register's high half.
use alloc::string::String;
use alloc::vec::Vec;

use crate::virtio::GuestMem;
use crate::{all_ones, Effects, PortDevice};

pub const SELECTOR_PORT: u16 = 0x510;
pub const DATA_PORT: u16 = 0x511;
/// The DMA address register: 8 bytes, big-endian.
pub const DMA_PORT: u16 = 0x514;

/// Item keys (QEMU's `fw_cfg_keys.h` numbering, which guests hard-code).
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const UUID: u16 = 0x02;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0F;
    pub const FILE_DIR: u16 = 0x19;
    /// The first key of a named file.
    pub const FILE_FIRST: u16 = 0x20;
    /// Bit 14 of the selector: "write channel" (ignored for the lookup).
    pub const WRITE_CHANNEL: u16 = 0x4000;
}

/// Feature bits of the ID item.
pub const ID_TRADITIONAL: u32 = 1 << 0;
pub const ID_DMA: u32 = 1 << 1;
/// What the DMA address register reads as: "QEMU CFG", big-endian.
pub const DMA_SIGNATURE: u64 = 0x5145_4D55_2043_4647;

/// `FWCfgDmaAccess.control` bits.
pub mod dma {
    pub const ERROR: u32 = 1 << 0;
    pub const READ: u32 = 1 << 1;
    pub const SKIP: u32 = 1 << 2;
    pub const SELECT: u32 = 1 << 3;
    pub const WRITE: u32 = 1 << 4;
}

/// The longest transfer one DMA operation does: an exit must not copy
/// gigabytes. Longer ones end with the error bit (a guest reads a large
/// item in pieces, as the data register allows).
pub const MAX_DMA_LEN: u32 = 64 << 20;

/// Longest name of a named file, with its terminating NUL (the directory's
/// fixed field).
pub const FILE_NAME_LEN: usize = 56;

/// What the machine tells its firmware.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FwCfgConfig {
    /// vCPUs present at boot (and at most).
    pub cpus: u16,
    /// Bytes of guest RAM.
    pub ram_bytes: u64,
    /// The machine's UUID (SMBIOS type 1), as bytes.
    pub uuid: [u8; 16],
    /// Named files ("etc/e820", ...), in any order; listed sorted by name.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why a configuration can't be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name is empty, has a NUL or doesn't fit the directory's field.
    BadName(String),
    DuplicateName(String),
    /// An item of 4 GiB or more (the directory's size field is 32 bits).
    TooLarge(String),
    TooManyFiles,
}

impl core::fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FwCfgError::BadName(n) => write!(
                f,
                "fw_cfg file name {n:?}: empty, with a NUL, or over {} bytes",
                FILE_NAME_LEN - 1
            ),
            FwCfgError::DuplicateName(n) => write!(f, "fw_cfg file {n:?} given twice"),
            FwCfgError::TooLarge(n) => write!(f, "fw_cfg file {n:?}: 4 GiB or more"),
            FwCfgError::TooManyFiles => write!(f, "fw_cfg: too many files"),
        }
    }
}

/// The registers: the complete state of the device.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FwCfgRegs {
    /// The selector as written (with the write-channel bit).
    pub selector: u16,
    /// The next byte of the selected item to read.
    pub offset: u32,
    /// The DMA address register's high half (big-endian value), as set by
    /// a write at 0x514 and cleared by each transfer.
    pub dma_high: u32,
}

/// The fw_cfg device: its items and registers.
#[derive(Clone, Debug)]
pub struct FwCfg {
    /// (key, data), sorted by key.
    items: Vec<(u16, Vec<u8>)>,
    regs: FwCfgRegs,
}

fn u16_le(v: u16) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

impl FwCfg {
    /// The items of `cfg`: the fixed keys, then each file at 0x20 + its
    /// index in name order, and the directory listing them.
    pub fn new(cfg: &FwCfgConfig) -> Result<FwCfg, FwCfgError> {
        let mut files: Vec<&(String, Vec<u8>)> = cfg.files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut dir = Vec::new();
        let count = u32::try_from(files.len()).map_err(|_| FwCfgError::TooManyFiles)?;
        dir.extend(count.to_be_bytes());
        let mut items = alloc::vec![
            (key::SIGNATURE, b"QEMU".to_vec()),
            (key::ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec()),
            (key::UUID, cfg.uuid.to_vec()),
            (key::RAM_SIZE, cfg.ram_bytes.to_le_bytes().to_vec()),
            // The console is the serial port: no graphics.
            (key::NOGRAPHIC, u16_le(1)),
            (key::NB_CPUS, u16_le(cfg.cpus)),
            (key::MAX_CPUS, u16_le(cfg.cpus)),
        ];
        let mut prev: Option<&str> = None;
        for (i, (name, data)) in files.iter().enumerate() {
            let bytes = name.as_bytes();
            if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= FILE_NAME_LEN {
                return Err(FwCfgError::BadName(name.clone()));
            }
            if prev == Some(name.as_str()) {
                return Err(FwCfgError::DuplicateName(name.clone()));
            }
            prev = Some(name.as_str());
            let size = u32::try_from(data.len()).map_err(|_| FwCfgError::TooLarge(name.clone()))?;
            let select = u16::try_from(i)
                .ok()
                .and_then(|i| key::FILE_FIRST.checked_add(i))
                .filter(|k| *k < key::WRITE_CHANNEL)
                .ok_or(FwCfgError::TooManyFiles)?;
            dir.extend(size.to_be_bytes());
            dir.extend(select.to_be_bytes());
            dir.extend([0, 0]);
            let mut field = [0u8; FILE_NAME_LEN];
            for (d, s) in field.iter_mut().zip(bytes) {
                *d = *s;
            }
            dir.extend(field);
            items.push((select, data.clone()));
        }
        items.push((key::FILE_DIR, dir));
        items.sort_by_key(|i| i.0);
        Ok(FwCfg {
            items,
            regs: FwCfgRegs::default(),
        })
    }

    /// The registers (for tests and state).
    pub fn regs(&self) -> &FwCfgRegs {
        &self.regs
    }

    /// The data of the selected item (empty for a key nothing has).
    fn item(&self) -> &[u8] {
        let key = self.regs.selector & !key::WRITE_CHANNEL;
        match self.items.binary_search_by_key(&key, |i| i.0) {
            Ok(i) => self.items.get(i).map_or(&[][..], |i| &i.1[..]),
            Err(_) => &[],
        }
    }

    fn select(&mut self, selector: u16) {
        self.regs.selector = selector;
        self.regs.offset = 0;
    }

    /// The next byte of the item, 0 past its end.
    fn data_byte(&mut self) -> u8 {
        let at = usize::try_from(self.regs.offset).unwrap_or(usize::MAX);
        let b = self.item().get(at).copied().unwrap_or(0);
        self.regs.offset = self.regs.offset.saturating_add(1);
        b
    }

    /// One DMA operation on the `FWCfgDmaAccess` at `gpa` (big-endian
    /// control, length, address). The control word is written back: 0 when
    /// done, the error bit when a copy failed, a write was asked (every
    /// item is read-only) or the length is over [`MAX_DMA_LEN`].
    pub fn dma(&mut self, gpa: u64, mem: &dyn GuestMem) {
        let mut access = [0u8; 16];
        if mem.read(gpa, &mut access).is_err() {
            // Nowhere to read the request from; the status may land if only
            // the rest is outside RAM.
            let _ = mem.write(gpa, &dma::ERROR.to_be_bytes());
            return;
        }
        let word = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(access.get(at..at.saturating_add(4)).unwrap_or(&[0; 4]));
            u32::from_be_bytes(b)
        };
        let control = word(0);
        let length = word(4);
        let address = (u64::from(word(8)) << 32) | u64::from(word(12));
        if control & dma::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let status = if control & dma::READ != 0 {
            self.dma_read(address, length, mem)
        } else if control & dma::WRITE != 0 {
            // The items are read-only to the guest (QEMU's are, but for a
            // few it wrote itself).
            dma::ERROR
        } else if control & dma::SKIP != 0 {
            self.regs.offset = self.regs.offset.saturating_add(length);
            0
        } else {
            0
        };
        let _ = mem.write(gpa, &status.to_be_bytes());
    }

    /// Copies `length` bytes of the item from the offset to `address` (0
    /// past the item's end); the offset moves on by what was copied.
    fn dma_read(&mut self, address: u64, length: u32, mem: &dyn GuestMem) -> u32 {
        if length > MAX_DMA_LEN || !mem.contains(address, u64::from(length)) {
            return dma::ERROR;
        }
        let at = usize::try_from(self.regs.offset).unwrap_or(usize::MAX);
        let want = usize::try_from(length).unwrap_or(usize::MAX);
        let item = self.item();
        let from_item = item.get(at..).unwrap_or(&[]);
        let n = from_item.len().min(want);
        let mut out = Vec::new();
        out.extend_from_slice(from_item.get(..n).unwrap_or(&[]));
        out.resize(want, 0);
        self.regs.offset = self.regs.offset.saturating_add(length);
        match mem.write(address, &out) {
            Ok(()) => 0,
            Err(_) => dma::ERROR,
        }
    }

    /// A write of the guest's `value` (as an LE port access gives it) of
    /// `size` bytes at `port`, with guest memory for a DMA transfer.
    pub fn write_mem(&mut self, port: u16, size: u8, value: u32, mem: &dyn GuestMem) {
        match (port, size) {
            (SELECTOR_PORT, 2) => self.select(value as u16),
            // Data writes are ignored.
            (SELECTOR_PORT | DATA_PORT, 1) => {}
            // The register is big-endian: the bytes the guest wrote, read
            // in that order, are the number.
            (DMA_PORT, 4) => self.regs.dma_high = value.swap_bytes(),
            (p, 4) if p == DMA_PORT.wrapping_add(4) => {
                let gpa = (u64::from(self.regs.dma_high) << 32) | u64::from(value.swap_bytes());
                self.regs.dma_high = 0;
                self.dma(gpa, mem);
            }
            _ => {}
        }
    }

    /// A read of `size` bytes at `port`.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match (port, size) {
            // Both ports of the pair read the data register (1 byte wide).
            (SELECTOR_PORT | DATA_PORT, 1) => u32::from(self.data_byte()),
            (DMA_PORT, 4) => u32::from_le_bytes(((DMA_SIGNATURE >> 32) as u32).to_be_bytes()),
            (p, 4) if p == DMA_PORT.wrapping_add(4) => {
                u32::from_le_bytes((DMA_SIGNATURE as u32).to_be_bytes())
            }
            _ => all_ones(size),
        }
    }
}

impl PortDevice for FwCfg {
    fn name(&self) -> &'static str {
        "fw_cfg"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(SELECTOR_PORT, 2), (DMA_PORT, 8)]
    }
    fn io_read(&mut self, port: u16, size: u8, _now: u64) -> Effects {
        Effects::read(u64::from(self.read(port, size)))
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, _now: u64) -> Effects {
        // Without guest memory a transfer can only fail: nothing reaches RAM.
        self.write_mem(port, size, value, &NoMem);
        Effects::none()
    }
    fn io_write_mem(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        _now: u64,
        mem: &dyn GuestMem,
    ) -> Effects {
        self.write_mem(port, size, value, mem);
        Effects::none()
    }
}

/// No memory at all.
struct NoMem;

impl GuestMem for NoMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), crate::virtio::MemError> {
        Err(crate::virtio::MemError {
            gpa,
            len: buf.len() as u64,
        })
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), crate::virtio::MemError> {
        Err(crate::virtio::MemError {
            gpa,
            len: data.len() as u64,
        })
    }
    fn contains(&self, _gpa: u64, _len: u64) -> bool {
        false
    }
}

impl crate::state::Tagged for FwCfg {
    const KIND: crate::state::Kind = crate::state::Kind::FwCfg;
}

impl crate::state::DeviceState for FwCfg {
    type Data = FwCfgRegs;
    const VERSION: u32 = 1;
    fn save(&self) -> crate::state::State<FwCfgRegs> {
        crate::state::State {
            version: Self::VERSION,
            data: self.regs.clone(),
        }
    }
    fn restore(
        &mut self,
        state: &crate::state::State<FwCfgRegs>,
    ) -> Result<(), crate::state::StateError> {
        crate::state::check_version(state.version, Self::VERSION)?;
        // Any selector, offset and high half can have been written.
        self.regs = state.data.clone();
        Ok(())
    }
    fn reset(&mut self) {
        self.regs = FwCfgRegs::default();
    }
}

/// The E820 map as QEMU's `etc/e820` file holds it: packed little-endian
/// entries of base (8 bytes), length (8) and type (4).
pub fn e820_file(entries: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(base, len, kind) in entries {
        out.extend(base.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(kind.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    /// 64 KiB of guest RAM from 0.
    struct Ram(RefCell<Vec<u8>>);

    impl Ram {
        fn new() -> Ram {
            Ram(RefCell::new(alloc::vec![0; 0x10000]))
        }
        fn get(&self, at: usize, n: usize) -> Vec<u8> {
            self.0.borrow()[at..at + n].to_vec()
        }
        fn set(&self, at: usize, data: &[u8]) {
            self.0.borrow_mut()[at..at + data.len()].copy_from_slice(data);
        }
    }

    impl GuestMem for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), crate::virtio::MemError> {
            let err = crate::virtio::MemError {
                gpa,
                len: buf.len() as u64,
            };
            let at = usize::try_from(gpa).map_err(|_| err)?;
            let r = self.0.borrow();
            let src = r
                .get(at..at.checked_add(buf.len()).ok_or(err)?)
                .ok_or(err)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), crate::virtio::MemError> {
            let err = crate::virtio::MemError {
                gpa,
                len: data.len() as u64,
            };
            let at = usize::try_from(gpa).map_err(|_| err)?;
            let mut r = self.0.borrow_mut();
            let dst = r
                .get_mut(at..at.checked_add(data.len()).ok_or(err)?)
                .ok_or(err)?;
            dst.copy_from_slice(data);
            Ok(())
        }
        fn contains(&self, gpa: u64, len: u64) -> bool {
            gpa.checked_add(len).is_some_and(|end| end <= 0x10000)
        }
    }

    fn config() -> FwCfgConfig {
        FwCfgConfig {
            cpus: 3,
            ram_bytes: 96 << 20,
            uuid: [7; 16],
            files: alloc::vec![
                (
                    "etc/e820".into(),
                    e820_file(&[(0, 0x9FC00, 1), (0x100000, 0x5F00000, 1)])
                ),
                ("bootorder".into(), b"/pci@i0cf8/*@3\n".to_vec()),
            ],
        }
    }

    fn read_item(d: &mut FwCfg, k: u16, n: usize) -> Vec<u8> {
        d.write_mem(SELECTOR_PORT, 2, u32::from(k), &NoMem);
        (0..n).map(|_| d.read(DATA_PORT, 1) as u8).collect()
    }

    #[test]
    fn the_traditional_interface_gives_the_fixed_items() {
        let mut d = FwCfg::new(&config()).unwrap();
        assert_eq!(read_item(&mut d, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut d, key::ID, 4), [3, 0, 0, 0]);
        assert_eq!(read_item(&mut d, key::NB_CPUS, 2), [3, 0]);
        assert_eq!(read_item(&mut d, key::MAX_CPUS, 2), [3, 0]);
        assert_eq!(
            read_item(&mut d, key::RAM_SIZE, 8),
            (96u64 << 20).to_le_bytes()
        );
        assert_eq!(read_item(&mut d, key::UUID, 16), [7; 16]);
        // Past the end: zeros. An unknown key: zeros.
        assert_eq!(read_item(&mut d, key::NB_CPUS, 4), [3, 0, 0, 0]);
        assert_eq!(read_item(&mut d, 0x1234, 3), [0, 0, 0]);
        // The write-channel bit doesn't change what is read; 0x510 reads
        // the data register too.
        d.write_mem(
            SELECTOR_PORT,
            2,
            u32::from(key::SIGNATURE | key::WRITE_CHANNEL),
            &NoMem,
        );
        assert_eq!(d.read(SELECTOR_PORT, 1), u32::from(b'Q'));
        // A data write is ignored; other widths read all-ones and select nothing.
        d.write_mem(DATA_PORT, 1, 0xAA, &NoMem);
        assert_eq!(d.read(DATA_PORT, 1), u32::from(b'E'));
        assert_eq!(d.read(DATA_PORT, 2), 0xFFFF);
        d.write_mem(SELECTOR_PORT, 4, 0, &NoMem);
        assert_eq!(d.read(DATA_PORT, 1), u32::from(b'M'));
    }

    #[test]
    fn the_directory_lists_the_files_sorted_big_endian() {
        let mut d = FwCfg::new(&config()).unwrap();
        let dir = read_item(&mut d, key::FILE_DIR, 4 + 2 * 64);
        assert_eq!(dir[..4], [0, 0, 0, 2]);
        let entry = |i: usize| &dir[4 + 64 * i..4 + 64 * (i + 1)];
        // "bootorder" < "etc/e820".
        assert_eq!(entry(0)[..4], 15u32.to_be_bytes());
        assert_eq!(entry(0)[4..6], [0x00, 0x20]);
        assert_eq!(&entry(0)[8..18], b"bootorder\0");
        assert_eq!(entry(1)[..4], 40u32.to_be_bytes());
        assert_eq!(entry(1)[4..6], [0x00, 0x21]);
        assert_eq!(&entry(1)[8..17], b"etc/e820\0");
        assert!(entry(1)[17..].iter().all(|b| *b == 0));
        let e820 = read_item(&mut d, 0x21, 40);
        assert_eq!(e820[..8], 0u64.to_le_bytes());
        assert_eq!(e820[8..16], 0x9FC00u64.to_le_bytes());
        assert_eq!(e820[16..20], 1u32.to_le_bytes());
        assert_eq!(e820[20..28], 0x100000u64.to_le_bytes());
    }

    #[test]
    fn bad_file_names_are_refused() {
        for (name, want) in [
            ("", FwCfgError::BadName(String::new())),
            ("a\0b", FwCfgError::BadName("a\0b".into())),
        ] {
            let cfg = FwCfgConfig {
                files: alloc::vec![(name.into(), Vec::new())],
                ..config()
            };
            assert_eq!(FwCfg::new(&cfg).unwrap_err(), want);
        }
        let long: String = core::iter::repeat_n('x', FILE_NAME_LEN).collect();
        let cfg = FwCfgConfig {
            files: alloc::vec![(long.clone(), Vec::new())],
            ..config()
        };
        assert_eq!(FwCfg::new(&cfg).unwrap_err(), FwCfgError::BadName(long));
        let cfg = FwCfgConfig {
            files: alloc::vec![("a".into(), Vec::new()), ("a".into(), Vec::new())],
            ..config()
        };
        assert_eq!(
            FwCfg::new(&cfg).unwrap_err(),
            FwCfgError::DuplicateName("a".into())
        );
        let fits: String = core::iter::repeat_n('x', FILE_NAME_LEN - 1).collect();
        let cfg = FwCfgConfig {
            files: alloc::vec![(fits, Vec::new())],
            ..config()
        };
        assert!(FwCfg::new(&cfg).is_ok());
    }

    /// Puts a `FWCfgDmaAccess` at 0x100 and starts it with two 32-bit
    /// port writes of the big-endian address, as Linux's driver does.
    fn dma_op(d: &mut FwCfg, ram: &Ram, control: u32, length: u32, address: u64) -> u32 {
        let mut a = Vec::new();
        a.extend(control.to_be_bytes());
        a.extend(length.to_be_bytes());
        a.extend(address.to_be_bytes());
        ram.set(0x100, &a);
        d.write_mem(DMA_PORT, 4, 0u32.swap_bytes(), ram);
        d.write_mem(DMA_PORT + 4, 4, 0x100u32.swap_bytes(), ram);
        assert_eq!(d.regs().dma_high, 0, "the register clears");
        u32::from_be_bytes(ram.get(0x100, 4).try_into().unwrap())
    }

    #[test]
    fn dma_select_read_skip_and_errors() {
        let mut d = FwCfg::new(&config()).unwrap();
        let ram = Ram::new();
        // The signature register.
        assert_eq!(d.read(DMA_PORT, 4).to_le_bytes(), *b"QEMU");
        assert_eq!(d.read(DMA_PORT + 4, 4).to_le_bytes(), *b" CFG");
        // Select + read 6 bytes of RAM_SIZE: 8 bytes item, read in two parts.
        let sel = |k: u16| (u32::from(k) << 16) | dma::SELECT;
        assert_eq!(
            dma_op(&mut d, &ram, sel(key::RAM_SIZE) | dma::READ, 6, 0x200),
            0
        );
        assert_eq!(ram.get(0x200, 6), (96u64 << 20).to_le_bytes()[..6]);
        // Go on from the offset (no select), past the end: zeros after the item.
        ram.set(0x300, &[0xEE; 4]);
        assert_eq!(dma_op(&mut d, &ram, dma::READ, 4, 0x300), 0);
        assert_eq!(ram.get(0x300, 4), [(96u64 << 20).to_le_bytes()[6], 0, 0, 0]);
        // Skip then read: the signature's last two bytes.
        assert_eq!(
            dma_op(&mut d, &ram, sel(key::SIGNATURE) | dma::SKIP, 2, 0),
            0
        );
        assert_eq!(dma_op(&mut d, &ram, dma::READ, 2, 0x400), 0);
        assert_eq!(ram.get(0x400, 2), b"MU");
        // A write is refused (read-only items); so is a buffer outside RAM,
        // which writes nothing and doesn't move the offset... of RAM.
        assert_eq!(
            dma_op(&mut d, &ram, sel(key::SIGNATURE) | dma::WRITE, 4, 0x400),
            dma::ERROR
        );
        assert_eq!(ram.get(0x400, 2), b"MU");
        assert_eq!(dma_op(&mut d, &ram, dma::READ, 16, 0xFFF8), dma::ERROR);
        assert_eq!(dma_op(&mut d, &ram, dma::READ, 4, u64::MAX - 1), dma::ERROR);
        assert_eq!(
            dma_op(&mut d, &ram, dma::READ, MAX_DMA_LEN + 1, 0),
            dma::ERROR
        );
        // An access structure outside RAM: nothing happens, nothing panics.
        d.write_mem(DMA_PORT, 4, 0x1u32.swap_bytes(), &ram);
        d.write_mem(DMA_PORT + 4, 4, 0, &ram);
        // Nothing asked: done at once.
        assert_eq!(dma_op(&mut d, &ram, 0, 100, 0x500), 0);
    }

    #[test]
    fn state_round_trip() {
        let mut busy = FwCfg::new(&config()).unwrap();
        busy.write_mem(SELECTOR_PORT, 2, u32::from(key::FILE_DIR), &NoMem);
        busy.read(DATA_PORT, 1);
        busy.read(DATA_PORT, 1);
        busy.write_mem(DMA_PORT, 4, 0x1234u32.swap_bytes(), &NoMem);
        crate::state::tests::round_trip(&mut busy, FwCfg::new(&config()).unwrap());
        // The restored device reads on where the busy one was.
        let mut other = FwCfg::new(&config()).unwrap();
        crate::state::DeviceState::restore(&mut other, &crate::state::DeviceState::save(&busy))
            .unwrap();
        assert_eq!(other.read(DATA_PORT, 1), busy.read(DATA_PORT, 1));
    }
}
