//! Guest image loaders: each turns an image file into guest RAM contents and
//! the vCPU state the image expects at its entry point.
pub mod bzimage;
pub mod e820;
pub mod elf;
pub mod multiboot;
pub mod setup;

use crate::manifest::{EntryMode, GuestConfig, ImageKind};
use crate::vm::memory::GuestMemory;
use alloc::string::String;
use core::fmt;
pub use setup::EntryState;

/// Guest-physical 0..LOW_RESERVED belongs to loader-built structures (page
/// tables, GDT, command line); images load above it.
pub const LOW_RESERVED: u64 = 0x1_0000;

#[derive(Debug)]
pub enum LoadError {
    Elf(elf::ElfError),
    Empty,
    FlatOutsideRam { load: u64, len: u64, ram: u64 },
    FlatOverlapsReserved { load: u64 },
    EntryOutsideImage { entry: u64 },
    RealModeEntryTooHigh { entry: u64 },
    CmdlineTooLong(usize),
    Unsupported(&'static str),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Elf(e) => write!(f, "bad ELF64 image: {e}"),
            LoadError::Empty => write!(f, "the image file is empty"),
            LoadError::FlatOutsideRam { load, len, ram } => write!(
                f,
                "flat image of {len} bytes at {load:#x} does not fit in {} MiB of guest RAM",
                ram >> 20
            ),
            LoadError::FlatOverlapsReserved { load } => {
                write!(f, "flat image load address {load:#x} overlaps the loader area below {LOW_RESERVED:#x}")
            }
            LoadError::EntryOutsideImage { entry } => {
                write!(f, "entry point {entry:#x} is outside the loaded image")
            }
            LoadError::RealModeEntryTooHigh { entry } => {
                write!(
                    f,
                    "real-mode entry {entry:#x} is above the 1 MiB real-mode address space"
                )
            }
            LoadError::CmdlineTooLong(n) => {
                write!(f, "command line of {n} bytes is longer than 4095")
            }
            LoadError::Unsupported(what) => write!(f, "{what}"),
        }
    }
}

/// Loads `image` for `cfg` into zeroed guest memory and returns the boot vCPU state.
pub fn load(cfg: &GuestConfig, image: &[u8], mem: &GuestMemory) -> Result<EntryState, LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    let ram = mem.size();
    if cfg.cmdline.len() > 4095 {
        return Err(LoadError::CmdlineTooLong(cfg.cmdline.len()));
    }
    match cfg.kind {
        ImageKind::Elf64 => {
            let elf = elf::parse(image).map_err(LoadError::Elf)?;
            elf.check_fits(ram.min(crate::vm::memory::MMIO_HOLE_START), LOW_RESERVED)
                .map_err(LoadError::Elf)?;
            for s in &elf.segments {
                mem.write(s.paddr, s.data(image))
                    .ok_or(LoadError::Unsupported("segment outside RAM"))?;
            }
            Ok(setup::long64(mem, elf.entry_paddr, &cfg.cmdline))
        }
        ImageKind::Flat { load, entry, mode } => {
            let len = image.len() as u64;
            if load < LOW_RESERVED && mode != EntryMode::Real16 {
                return Err(LoadError::FlatOverlapsReserved { load });
            }
            if mem.host_range(load, len).is_none() {
                return Err(LoadError::FlatOutsideRam { load, len, ram });
            }
            if entry < load || entry >= load + len {
                return Err(LoadError::EntryOutsideImage { entry });
            }
            mem.write(load, image)
                .ok_or(LoadError::FlatOutsideRam { load, len, ram })?;
            match mode {
                EntryMode::Real16 => {
                    if entry >= 0x10_0000 {
                        return Err(LoadError::RealModeEntryTooHigh { entry });
                    }
                    Ok(setup::real16(entry))
                }
                EntryMode::Prot32 => Ok(setup::prot32(mem, entry, &cfg.cmdline)),
                EntryMode::Long64 => Ok(setup::long64(mem, entry, &cfg.cmdline)),
            }
        }
        ImageKind::BzImage => Err(LoadError::Unsupported(
            "the Linux bzImage loader is not implemented yet",
        )),
        ImageKind::Multiboot => Err(LoadError::Unsupported(
            "the Multiboot loader is not implemented yet",
        )),
    }
}

/// A short description of an image kind for log lines.
pub fn describe(kind: &ImageKind) -> String {
    match kind {
        ImageKind::Elf64 => "elf64, long mode".into(),
        ImageKind::Flat { mode, .. } => alloc::format!("flat, {mode:?}"),
        ImageKind::BzImage => "bzimage".into(),
        ImageKind::Multiboot => "multiboot".into(),
    }
}
