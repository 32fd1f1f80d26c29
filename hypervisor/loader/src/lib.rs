//! Guest image loaders: each turns an image file into guest RAM contents and
//! the vCPU state the image expects at its entry point.
//!
//! Also the manifest parser ([`manifest`]) and the guest ACPI tables
//! ([`acpi_gen`]). No `unsafe` here: guest RAM is reached only through the
//! [`e820::GuestRam`] trait the core implements.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

extern crate alloc;

pub mod acpi_gen;
pub mod bda;
mod bytes;
pub mod bzimage;
pub mod e820;
pub mod elf;
pub mod layout;
pub mod manifest;
pub mod multiboot;
pub mod setup;

use alloc::string::String;
use core::fmt;
use e820::GuestRam;
use manifest::{EntryMode, GuestConfig, ImageKind};
pub use setup::EntryState;

/// Guest-physical 0..LOW_RESERVED belongs to loader-built structures (page
/// tables, GDT, command line); images load above it.
pub const LOW_RESERVED: u64 = 0x1_0000;

#[derive(Debug)]
pub enum LoadError {
    Elf(elf::ElfError),
    Empty,
    FlatOutsideRam {
        load: u64,
        len: u64,
        ram: u64,
    },
    FlatOverlapsReserved {
        load: u64,
    },
    EntryOutsideImage {
        entry: u64,
    },
    RealModeEntryTooHigh {
        entry: u64,
    },
    CmdlineTooLong(usize),
    Unsupported(&'static str),
    BzImage(bzimage::BzError),
    Multiboot(multiboot::MbError),
    Acpi(acpi_gen::AcpiGenError),
    E820(e820::E820Error),
    /// The BIOS data area or the EBDA could not be written.
    BiosData,
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
            LoadError::BzImage(e) => write!(f, "{e}"),
            LoadError::Multiboot(e) => write!(f, "{e}"),
            LoadError::Acpi(e) => write!(f, "building ACPI tables: {e}"),
            LoadError::E820(e) => write!(f, "building the E820 map: {e}"),
            LoadError::BiosData => write!(f, "guest RAM does not hold the BIOS data area"),
        }
    }
}

/// Loads `image` for `cfg` into zeroed guest memory and returns the boot vCPU state.
pub fn load(
    cfg: &GuestConfig,
    image: &[u8],
    initrd: Option<&[u8]>,
    mem: &impl GuestRam,
) -> Result<EntryState, LoadError> {
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
            elf.check_fits(ram.min(layout::MMIO_HOLE_START), LOW_RESERVED)
                .map_err(LoadError::Elf)?;
            // Before the image, which wins where the two meet.
            write_bios_data(mem)?;
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
            let fits = mem.ram_ranges().iter().any(|&(a, l)| {
                load >= a
                    && load
                        .checked_add(len)
                        .is_some_and(|e| e <= a.saturating_add(l))
            });
            if !fits {
                return Err(LoadError::FlatOutsideRam { load, len, ram });
            }
            if entry < load || entry >= load.saturating_add(len) {
                return Err(LoadError::EntryOutsideImage { entry });
            }
            // Before the image: a real-mode image loaded over the BDA keeps
            // its own bytes.
            write_bios_data(mem)?;
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
        ImageKind::BzImage => {
            let (acpi, map) = platform_tables(cfg, mem)?;
            let boot = bzimage::load(
                image,
                mem,
                &bzimage::BootConfig {
                    cmdline: &cfg.cmdline,
                    initrd,
                    e820: &map,
                    rsdp: Some(acpi.rsdp_gpa),
                },
            )
            .map_err(LoadError::BzImage)?;
            if boot.header.kernel64() {
                Ok(setup::linux64(mem, boot.entry, boot.boot_params_gpa))
            } else {
                Ok(setup::linux32(mem, boot.entry32, boot.boot_params_gpa))
            }
        }
        ImageKind::Multiboot => {
            let (_acpi, map) = platform_tables(cfg, mem)?;
            let module = initrd.map(|data| multiboot::Module {
                data,
                cmdline: cfg.initrd.as_deref().unwrap_or(""),
            });
            let modules: alloc::vec::Vec<multiboot::Module> = module.into_iter().collect();
            let mb = multiboot::load(
                image,
                mem,
                &multiboot::MultibootConfig {
                    cmdline: &cfg.cmdline,
                    modules: &modules,
                    e820: &map,
                },
            )
            .map_err(LoadError::Multiboot)?;
            let mut st = setup::prot32_state(mem.size(), mb.entry, mb.gdt_gpa);
            st.rax = u64::from(mb.eax);
            st.rbx = mb.info_gpa;
            st.rdi = 0;
            st.rsi = 0;
            Ok(st)
        }
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

/// Guest-physical base of the generated ACPI tables (in the BIOS area).
pub const ACPI_BASE: u64 = 0xE_0000;
/// I/O base of the ACPI PM block (PM1a_EVT; PM1a_CNT = +4, PM_TMR = +8, GPE0 = +0x20).
pub const PM_BASE: u16 = 0x600;

/// Where the core attaches virtio functions (n-th: disks in manifest order,
/// then NICs): (PCI device number on bus 0, ISA IRQ = GSI of its INTA#).
/// The core's bus uses the same table (checked by its tests).
pub const PCI_INTX: [(u8, u8); 8] = [
    (3, 11),
    (4, 10),
    (5, 5),
    (6, 7),
    (7, 3),
    (8, 6),
    (9, 14),
    (10, 15),
];

/// How many virtio PCI functions the guest gets.
pub fn virtio_functions(cfg: &GuestConfig) -> usize {
    cfg.disks.len().saturating_add(cfg.nics.len())
}

/// The guest's ACPI tables.
fn acpi_tables(cfg: &GuestConfig) -> Result<acpi_gen::AcpiBlob, LoadError> {
    acpi_gen::build(
        ACPI_BASE,
        &acpi_gen::AcpiConfig {
            vcpus: cfg.vcpus,
            pm_base: PM_BASE,
            // A guest with virtio devices (disks, then NICs, on PCI bus 0)
            // gets the PCI root and its interrupt routing.
            pci_root: virtio_functions(cfg) > 0,
            pci_intx: PCI_INTX.get(..virtio_functions(cfg)).unwrap_or(&PCI_INTX),
            ..Default::default()
        },
    )
    .map_err(LoadError::Acpi)
}

/// The E820 map of a guest of `cfg` with the RAM ranges `ram`: what the
/// loaders hand the guest (RAM, the ACPI tables' area, the EBDA), and what
/// fw_cfg's `etc/e820` says.
pub fn guest_e820(cfg: &GuestConfig, ram: &[(u64, u64)]) -> Result<e820::E820Map, LoadError> {
    let acpi = acpi_tables(cfg)?;
    let mut map = e820::standard(ram, &acpi.e820_areas()).map_err(LoadError::E820)?;
    let low_end = ram.iter().find(|r| r.0 == 0).map_or(0, |r| r.1);
    if let Some(bios) = bda::build(low_end, COM_PORTS) {
        bios.reserve_in(&mut map).map_err(LoadError::E820)?;
    }
    Ok(map)
}

/// Writes the guest's ACPI tables and returns them with its E820 map.
fn platform_tables(
    cfg: &GuestConfig,
    mem: &impl GuestRam,
) -> Result<(acpi_gen::AcpiBlob, e820::E820Map), LoadError> {
    let acpi = acpi_tables(cfg)?;
    mem.write(acpi.base_gpa, &acpi.bytes)
        .ok_or(LoadError::Unsupported(
            "guest RAM too small for the ACPI tables",
        ))?;
    let mut map = e820::standard(&mem.ram_ranges(), &acpi.e820_areas()).map_err(LoadError::E820)?;
    if let Some(bios) = write_bios_data(mem)? {
        bios.reserve_in(&mut map).map_err(LoadError::E820)?;
    }
    Ok((acpi, map))
}

/// The platform's serial ports, COM1 first, for the BDA: the one 16550
/// (devices/uart.rs).
pub const COM_PORTS: &[u16] = &[0x3F8];

/// Writes the BIOS data area and the EBDA (see [`bda`]) for `mem`'s RAM;
/// `None` (nothing written) when RAM is too small to hold them.
fn write_bios_data(mem: &impl GuestRam) -> Result<Option<bda::BiosData>, LoadError> {
    let low_end = mem
        .ram_ranges()
        .iter()
        .find(|r| r.0 == 0)
        .map_or(0, |r| r.1);
    let Some(bios) = bda::build(low_end, COM_PORTS) else {
        return Ok(None);
    };
    bios.write(mem).ok_or(LoadError::BiosData)?;
    Ok(Some(bios))
}

#[cfg(test)]
mod tests {
    use super::e820::fake::FakeRam;
    use super::*;
    use manifest::{Policy, UnmappedAccess};

    const MIB: u64 = 1 << 20;

    #[test]
    fn guest_e820_is_the_map_the_loaders_give() {
        for (memory, vcpus) in [
            (16 * MIB, 1),
            (256 * MIB, 8),
            (3584 * MIB, 2),
            (5 << 30, 64),
        ] {
            let mut c = cfg(ImageKind::BzImage, memory);
            c.vcpus = vcpus;
            let ram = FakeRam::new(memory);
            let (_, loaded) = platform_tables(&c, &ram).unwrap();
            assert_eq!(
                guest_e820(&c, &ram.ram_ranges()).unwrap(),
                loaded,
                "{memory:#x}"
            );
        }
    }

    fn cfg(kind: ImageKind, memory: u64) -> GuestConfig {
        GuestConfig {
            name: "t".into(),
            memory,
            vcpus: 1,
            image: "img".into(),
            kind,
            cmdline: String::new(),
            on_exit: Policy::Stop,
            on_crash: Policy::Stop,
            weight: 100,
            initrd: None,
            max_restarts: 0,
            irqoff_timeout_s: 0,
            unmapped_access: UnmappedAccess::Ignore,
            disks: Vec::new(),
            nics: Vec::new(),
            snapshot: None,
            snapshot_line: 0,
            line: 1,
        }
    }

    /// What a PC BIOS leaves at 0x400 and in the EBDA, checked against
    /// the memory map the guest is given (when it is given one).
    fn check_bda(ram: &FakeRam, map: Option<&e820::E820Map>) {
        assert_eq!(ram.u16(0x400), 0x3F8, "COM1");
        assert_eq!(ram.u16(0x402), 0, "no COM2");
        assert_eq!(ram.u16(0x410), 0x0202, "equipment: FPU, one serial port");
        let base_kib = u64::from(ram.u16(0x413));
        let ebda = u64::from(ram.u16(0x40E)) << 4;
        assert_eq!((base_kib, ebda), (639, 0x9_FC00));
        assert_eq!(base_kib * 1024, ebda);
        assert_eq!(ram.u16(ebda), 1, "EBDA size in KiB");
        if let Some(map) = map {
            assert_eq!(map.ram_end_from(0, u64::MAX), Some(ebda));
            assert!(!map.is_ram(ebda, 1));
        }
    }

    /// The E820 map a bzImage guest got, read back from its zero page.
    fn zero_page_map(ram: &FakeRam) -> e820::E820Map {
        let zp = bzimage::BOOT_PARAMS_GPA;
        let n = ram.read(zp + 0x1E8, 1)[0] as u64;
        let mut map = e820::E820Map::new();
        for i in 0..n {
            let e = zp + 0x2D0 + 20 * i;
            let kind = match ram.u32(e + 16) {
                1 => e820::E820Type::Ram,
                3 => e820::E820Type::Acpi,
                4 => e820::E820Type::Nvs,
                _ => e820::E820Type::Reserved,
            };
            map.set(ram.u64(e), ram.u64(e + 8), kind).unwrap();
        }
        map
    }

    #[test]
    fn bzimage_guest_gets_a_bda_matching_its_e820_map() {
        let img = bzimage::tests::image(0x1000, 0x10_0000);
        let ram = FakeRam::new(64 * MIB);
        load(&cfg(ImageKind::BzImage, 64 * MIB), &img, None, &ram).unwrap();
        check_bda(&ram, Some(&zero_page_map(&ram)));
    }

    /// 64-bit kernels enter in long mode at +0x200, 32-bit ones (no
    /// XLF_KERNEL_64) per the 32-bit boot protocol at the load address.
    #[test]
    fn bzimage_entry_follows_xlf_kernel_64() {
        let mut img = bzimage::tests::image(0x1000, 0x10_0000);
        let ram = FakeRam::new(64 * MIB);
        let st = load(&cfg(ImageKind::BzImage, 64 * MIB), &img, None, &ram).unwrap();
        assert_eq!((st.mode, st.rip), (setup::Mode::Long64, 0x100_0200));
        assert_eq!((st.cs.sel, st.cs.ar), (0x10, 0xA09B));

        img[0x236] = 0x1C; // xloadflags without XLF_KERNEL_64
        let ram = FakeRam::new(64 * MIB);
        let st = load(&cfg(ImageKind::BzImage, 64 * MIB), &img, None, &ram).unwrap();
        assert_eq!((st.mode, st.rip), (setup::Mode::Prot32, 0x100_0000));
        assert_eq!((st.cs.sel, st.cs.base, st.cs.limit), (0x10, 0, 0xFFFF_FFFF));
        assert_eq!(st.cs.ar, 0xC09B, "32-bit execute/read, 4 KiB granular");
        assert_eq!((st.ds.sel, st.ds.ar), (0x18, 0xC093));
        assert_eq!(st.cr0 & (1 << 31), 0, "paging off");
        assert_eq!(st.cr0 & 1, 1, "protected mode");
        assert_eq!((st.efer, st.cr4), (0, 0));
        assert_eq!(st.rsi, bzimage::BOOT_PARAMS_GPA);
        assert_eq!((st.rbx, st.rdi), (0, 0));
        // The GDT holds what the selectors name.
        assert_eq!(st.gdt_limit, 31);
        assert_eq!(ram.u64(st.gdt_base + 0x10), 0x00CF_9B00_0000_FFFF);
        assert_eq!(ram.u64(st.gdt_base + 0x18), 0x00CF_9300_0000_FFFF);
        check_bda(&ram, Some(&zero_page_map(&ram)));
    }

    #[test]
    fn multiboot_guest_gets_a_bda_matching_mem_lower_and_mmap() {
        let img = multiboot::tests::aout_image(0x100, 0);
        let ram = FakeRam::new(16 * MIB);
        let st = load(&cfg(ImageKind::Multiboot, 16 * MIB), &img, None, &ram).unwrap();
        let info = st.rbx;
        assert_eq!(u64::from(ram.u32(info + 4)), u64::from(ram.u16(0x413)));
        // The first mmap entry: conventional RAM up to the EBDA.
        let mmap = u64::from(ram.u32(info + 48));
        assert_eq!((ram.u64(mmap + 4), ram.u64(mmap + 12)), (0, 0x9_FC00));
        check_bda(&ram, None);
        // The boot GDT the state points at is the one written.
        assert_eq!(ram.u64(st.gdt_base + 0x18), setup::GDT[3]);
        assert_eq!(st.cs.sel, 0x18);
    }

    #[test]
    fn flat_and_elf_guests_get_a_bda() {
        let real = ImageKind::Flat {
            load: 0x7C00,
            entry: 0x7C00,
            mode: EntryMode::Real16,
        };
        let ram = FakeRam::new(MIB);
        load(&cfg(real, MIB), &[0xF4; 512], None, &ram).unwrap();
        check_bda(&ram, None);
        assert_eq!(ram.read(0x7C00, 512), vec![0xF4; 512]);

        // A real-mode image over the BDA keeps its own bytes.
        let low = ImageKind::Flat {
            load: 0x400,
            entry: 0x400,
            mode: EntryMode::Real16,
        };
        let ram = FakeRam::new(MIB);
        load(&cfg(low, MIB), &[0xAB; 0x10], None, &ram).unwrap();
        assert_eq!(ram.read(0x400, 0x10), vec![0xAB; 0x10]);
        assert_eq!(ram.u16(0x413), 639);

        // Long mode: the page tables and GDT leave the BDA alone.
        let long = ImageKind::Flat {
            load: 0x10_0000,
            entry: 0x10_0000,
            mode: EntryMode::Long64,
        };
        let ram = FakeRam::new(16 * MIB);
        let st = load(&cfg(long, 16 * MIB), &[0xF4; 16], None, &ram).unwrap();
        check_bda(&ram, None);
        assert_eq!(ram.u64(st.cr3), setup::PDPT_GPA | 3);
    }
}
