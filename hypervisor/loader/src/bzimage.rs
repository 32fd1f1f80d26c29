//! Linux bzImage guests, entered through the 64-bit (or 32-bit) boot
//! protocol of Documentation/arch/x86/boot.rst ("The Linux/x86 Boot
//! Protocol"); zero page offsets from Documentation/arch/x86/zero-page.rst.
//!
//! Only the protected-mode part of the image is loaded; the real-mode setup
//! code never runs. The loader builds `struct boot_params` (the "zero
//! page") itself: the image's setup header copied in, then the loader's
//! fields (command line, initrd, E820 map, RSDP address).
//!
//! Guest-physical layout (all in conventional memory, which the E820 map
//! reports as RAM; the kernel's KASLR code avoids both, boot.rst "Details
//! of Header Fields"):
//!
//! | what | where |
//! | --- | --- |
//! | zero page (4 KiB) | [`BOOT_PARAMS_GPA`] = 0x10000 |
//! | command line, NUL-terminated | [`CMDLINE_GPA`] = 0x20000 (at most `cmdline_size` bytes) |
//! | protected-mode kernel | `pref_address` (relocatable) or 0x100000; `[runtime start, + init_size)` must be RAM |
//! | initrd | page-aligned, as high as possible below `initrd_addr_max` and 4 GiB, clear of the kernel |

use super::e820::{E820Map, E820Type, GuestRam};
use crate::bytes::{u16_at, u32_at, u64_at};
use crate::layout::FOUR_GIB;
use crate::layout::PAGE;
use alloc::vec;
use core::fmt;

/// Where the zero page goes.
pub const BOOT_PARAMS_GPA: u64 = 0x1_0000;
/// Where the command line goes.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Space reserved for the command line: up to the end of conventional memory
/// the loader uses (0x9_0000).
pub const CMDLINE_SPACE: u64 = 0x7_0000;

/// `__BOOT_CS`: the code selector both the 32- and 64-bit entries need
/// (boot.rst "32-bit BOOT PROTOCOL", "64-bit BOOT PROTOCOL").
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`: DS, ES and SS at entry.
pub const BOOT_DS: u16 = 0x18;
/// A GDT for the 64-bit entry: 0x10 flat 64-bit code (execute/read, L=1),
/// 0x18 flat data (read/write, 4 GiB limit).
pub const GDT64: [u64; 4] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
/// A GDT for the 32-bit entry: 0x10 flat 32-bit code (execute/read, D=1,
/// 4 GiB limit), 0x18 flat data.
pub const GDT32: [u64; 4] = [0, 0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

// Setup header fields (boot.rst "THE REAL-MODE KERNEL HEADER"): offsets in
// the image, which are also their offsets in the zero page.
const SETUP_SECTS: usize = 0x1F1;
const SYSSIZE: usize = 0x1F4;
const VID_MODE: usize = 0x1FA;
const BOOT_FLAG: usize = 0x1FE;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
/// The byte of the leading short jump that gives the header's length.
const JUMP_TARGET: usize = JUMP + 1;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21C;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22C;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// The header must reach past init_size (protocol 2.10+).
const HEADER_NEEDED_END: usize = INIT_SIZE + 4;

// Zero page fields outside the setup header (zero-page.rst).
const ACPI_RSDP_ADDR: usize = 0x070;
const EXT_RAMDISK_IMAGE: usize = 0x0C0;
const EXT_RAMDISK_SIZE: usize = 0x0C4;
const EXT_CMD_LINE_PTR: usize = 0x0C8;
const E820_ENTRIES: usize = 0x1E8;
/// The setup header area of the zero page ends where edd_mbr_sig_buffer
/// starts.
const HDR_AREA_END: usize = 0x290;
const E820_TABLE: usize = 0x2D0;
/// E820_MAX_ENTRIES_ZEROPAGE.
pub const E820_MAX: usize = 128;
const ZERO_PAGE_LEN: usize = 4096;
const BOOT_PARAMS_END: u64 = BOOT_PARAMS_GPA + ZERO_PAGE_LEN as u64;

/// "HdrS" read as a little-endian u32.
const HDRS: u32 = u32::from_le_bytes(*b"HdrS");
const BOOT_FLAG_VALUE: u16 = 0xAA55;
/// xloadflags appeared in 2.12; the 64-bit entry is announced there.
const MIN_VERSION: u16 = 0x020C;
/// acpi_rsdp_addr is honoured from 2.14 on (boot.rst "Protocol 2.14").
const RSDP_VERSION: u16 = 0x020E;

/// loadflags bit 0: protected-mode code loaded at 0x100000 (a bzImage).
const LOADED_HIGH: u8 = 1 << 0;
/// loadflags bit 7: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 1 << 7;
/// xloadflags bit 0: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// xloadflags bit 1: kernel, boot_params, cmdline and ramdisk may be above 4 GiB.
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// type_of_loader 0xFF: "undefined" boot loader ID.
const LOADER_UNDEFINED: u8 = 0xFF;
/// vid_mode 0xFFFF: "normal" (NORMAL_VGA), ask nothing of the video BIOS.
const VID_MODE_NORMAL: u16 = 0xFFFF;
/// The traditional protected-mode load address.
const HIGH_LOAD: u64 = 0x10_0000;

/// The setup header fields the loader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version, e.g. 0x020F for 2.15.
    pub version: u16,
    /// Size of the real-mode setup in 512-byte sectors (0 read as 4).
    pub setup_sects: u32,
    /// Size of the protected-mode code in 16-byte paragraphs.
    pub syssize: u32,
    pub loadflags: u8,
    /// The default 32-bit entry (normally 0x100000).
    pub code32_start: u32,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable: bool,
    pub xloadflags: u16,
    /// Longest command line, without its terminating NUL.
    pub cmdline_size: u32,
    pub pref_address: u64,
    /// Contiguous memory the kernel needs from its runtime start address.
    pub init_size: u32,
    /// Offset just past the setup header: 0x202 + the byte at 0x201.
    pub header_end: usize,
}

impl SetupHeader {
    /// XLF_KERNEL_64: the kernel has the 64-bit entry at load address +
    /// 0x200; otherwise only the 32-bit entry (a 32-bit kernel).
    pub fn kernel64(&self) -> bool {
        self.xloadflags & XLF_KERNEL_64 != 0
    }

    /// File offset of the protected-mode kernel.
    pub fn kernel_offset(&self) -> usize {
        // setup_sects is a byte (0 read as 4): at most 256 * 512.
        (self.setup_sects as usize)
            .saturating_add(1)
            .saturating_mul(512)
    }
}

/// What is wrong with a bzImage or its placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BzError {
    /// The file ends before the setup header fields.
    HeaderTruncated { len: usize, need: usize },
    /// boot_flag (0x1FE) is not 0xAA55.
    BadBootFlag { found: u16 },
    /// The header magic (0x202) is not "HdrS".
    BadMagic { found: u32 },
    /// The protocol is older than 2.12.
    ProtocolTooOld { version: u16 },
    /// The setup header (per its jump byte) ends before the fields needed.
    HeaderTooShort { end: usize },
    /// loadflags lacks LOADED_HIGH (a zImage).
    NotLoadedHigh { loadflags: u8 },
    /// kernel_alignment of a relocatable kernel is not a power of two.
    BadAlignment { alignment: u32 },
    /// The protected-mode kernel is shorter than syssize says.
    KernelTruncated {
        offset: usize,
        have: usize,
        syssize_bytes: u64,
    },
    /// The kernel's `[start, end)` (load address to runtime start +
    /// init_size) is not all RAM.
    KernelDoesNotFit { start: u64, end: u64 },
    /// The command line is longer than the kernel accepts.
    CmdlineTooLong { len: usize, max: u64 },
    /// No room for the initrd below `limit` (nor above 4 GiB when
    /// `above_4g`, XLF_CAN_BE_LOADED_ABOVE_4G, allowed it there).
    InitrdDoesNotFit {
        size: u64,
        limit: u64,
        above_4g: bool,
    },
    /// The E820 map has more entries than the zero page holds.
    TooManyE820Entries { count: usize },
    /// The E820 map does not give a loader structure RAM.
    NotRam {
        what: &'static str,
        gpa: u64,
        len: u64,
    },
}

impl fmt::Display for BzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BzError::HeaderTruncated { len, need } => write!(
                f,
                "bzImage: file is {len} bytes, too short for the setup header (needs {need})"
            ),
            BzError::BadBootFlag { found } => write!(
                f,
                "bzImage: boot_flag at 0x1FE is {found:#06x}, expected 0xAA55"
            ),
            BzError::BadMagic { found } => {
                let b = found.to_le_bytes();
                write!(f, "bzImage: setup header magic is {found:#010x}")?;
                if b.iter().all(|c| c.is_ascii_graphic()) {
                    write!(
                        f,
                        " (\"{}{}{}{}\")",
                        b[0] as char, b[1] as char, b[2] as char, b[3] as char
                    )?;
                }
                write!(f, ", expected HdrS")
            }
            BzError::ProtocolTooOld { version } => write!(
                f,
                "bzImage: boot protocol {}.{:02} is older than 2.12, the oldest this loader takes",
                version >> 8,
                version & 0xFF
            ),
            BzError::HeaderTooShort { end } => write!(
                f,
                "bzImage: setup header ends at {end:#x} (0x202 + jump byte), before init_size ends at {HEADER_NEEDED_END:#x}"
            ),
            BzError::NotLoadedHigh { loadflags } => write!(
                f,
                "bzImage: loadflags {loadflags:#x} lacks LOADED_HIGH: a zImage, not a bzImage"
            ),
            BzError::BadAlignment { alignment } => write!(
                f,
                "bzImage: kernel_alignment {alignment:#x} is not a power of two"
            ),
            BzError::KernelTruncated {
                offset,
                have,
                syssize_bytes,
            } => write!(
                f,
                "bzImage: truncated: {have} bytes of protected-mode kernel at offset {offset:#x}, syssize says {syssize_bytes}"
            ),
            BzError::KernelDoesNotFit { start, end } => write!(
                f,
                "bzImage: the kernel needs RAM at [{start:#x}, {end:#x}) (load address to runtime start + init_size), which guest RAM does not cover"
            ),
            BzError::CmdlineTooLong { len, max } => write!(
                f,
                "bzImage: command line of {len} bytes is longer than the kernel's cmdline_size {max}"
            ),
            BzError::InitrdDoesNotFit {
                size,
                limit,
                above_4g,
            } => write!(
                f,
                "bzImage: initrd of {size} bytes does not fit in guest RAM below {limit:#x}{} outside the kernel and loader areas",
                if above_4g { " or above 4 GiB" } else { "" }
            ),
            BzError::TooManyE820Entries { count } => write!(
                f,
                "bzImage: E820 map has {count} entries, the zero page holds {E820_MAX}"
            ),
            BzError::NotRam { what, gpa, len } => write!(
                f,
                "bzImage: {what} at [{gpa:#x}, {:#x}) is not RAM in the E820 map",
                gpa.saturating_add(len)
            ),
        }
    }
}

fn byte_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

/// Writes `v` at `off` of the zero page (fixed offsets inside it).
fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = off.checked_add(v.len()).and_then(|end| b.get_mut(off..end)) {
        d.copy_from_slice(v);
    }
}

/// Reads and validates the setup header at 0x1F1 (boot.rst "THE REAL-MODE
/// KERNEL HEADER"): boot_flag, "HdrS", protocol >= 2.12, LOADED_HIGH, and
/// that the file holds `syssize` paragraphs of protected-mode code. A
/// kernel without XLF_KERNEL_64 (a 32-bit kernel) is entered through the
/// 32-bit boot protocol ([`SetupHeader::kernel64`]).
pub fn parse_header(image: &[u8]) -> Result<SetupHeader, BzError> {
    // Enough to read boot_flag, the jump, the magic and the version.
    if image.len() < VERSION + 2 {
        return Err(BzError::HeaderTruncated {
            len: image.len(),
            need: VERSION + 2,
        });
    }
    let boot_flag = u16_at(image, BOOT_FLAG);
    if boot_flag != BOOT_FLAG_VALUE {
        return Err(BzError::BadBootFlag { found: boot_flag });
    }
    let magic = u32_at(image, HEADER);
    if magic != HDRS {
        return Err(BzError::BadMagic { found: magic });
    }
    let version = u16_at(image, VERSION);
    if version < MIN_VERSION {
        return Err(BzError::ProtocolTooOld { version });
    }
    // The header's length is the target of its leading short jump (boot.rst
    // "64-bit BOOT PROTOCOL": end = 0x0202 + byte at 0x0201).
    let header_end = HEADER.saturating_add(usize::from(byte_at(image, JUMP_TARGET)));
    if header_end < HEADER_NEEDED_END {
        return Err(BzError::HeaderTooShort { end: header_end });
    }
    if image.len() < header_end {
        return Err(BzError::HeaderTruncated {
            len: image.len(),
            need: header_end,
        });
    }
    let loadflags = byte_at(image, LOADFLAGS);
    if loadflags & LOADED_HIGH == 0 {
        return Err(BzError::NotLoadedHigh { loadflags });
    }
    let xloadflags = u16_at(image, XLOADFLAGS);
    let relocatable = byte_at(image, RELOCATABLE_KERNEL) != 0;
    let kernel_alignment = u32_at(image, KERNEL_ALIGNMENT);
    if relocatable && !kernel_alignment.is_power_of_two() {
        return Err(BzError::BadAlignment {
            alignment: kernel_alignment,
        });
    }
    // setup_sects: "If this field is 0, the real value is 4."
    let setup_sects = match byte_at(image, SETUP_SECTS) {
        0 => 4,
        n => u32::from(n),
    };
    let hdr = SetupHeader {
        version,
        setup_sects,
        syssize: u32_at(image, SYSSIZE),
        loadflags,
        code32_start: u32_at(image, CODE32_START),
        initrd_addr_max: u32_at(image, INITRD_ADDR_MAX),
        kernel_alignment,
        relocatable,
        xloadflags,
        cmdline_size: u32_at(image, CMDLINE_SIZE),
        pref_address: u64_at(image, PREF_ADDRESS),
        init_size: u32_at(image, INIT_SIZE),
        header_end,
    };
    let offset = hdr.kernel_offset();
    let have = image.len().saturating_sub(offset);
    // syssize counts 16-byte paragraphs, rounded up (boot.rst "Details of
    // Header Fields", syssize): the file may end up to 15 bytes short of
    // syssize * 16.
    let syssize_bytes = u64::from(hdr.syssize).saturating_mul(16);
    if have == 0 || (have as u64).saturating_add(15) < syssize_bytes {
        return Err(BzError::KernelTruncated {
            offset,
            have,
            syssize_bytes,
        });
    }
    Ok(hdr)
}

/// What the loader needs besides the image.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    pub cmdline: &'a str,
    pub initrd: Option<&'a [u8]>,
    /// The guest's memory map (e.g. [`super::e820::standard`]); it is copied
    /// into the zero page and decides what counts as RAM for placement.
    pub e820: &'a E820Map,
    /// Guest-physical RSDP address for `acpi_rsdp_addr` (protocol 2.14+).
    pub rsdp: Option<u64>,
}

/// Where things went and how to enter the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSetup {
    /// 64-bit entry: load address + 0x200 (boot.rst "64-bit BOOT PROTOCOL").
    pub entry: u64,
    /// 32-bit entry: the load address (boot.rst "32-bit BOOT PROTOCOL";
    /// code32_start in the zero page says the same).
    pub entry32: u64,
    /// The zero page; RSI (ESI for the 32-bit entry) at entry.
    pub boot_params_gpa: u64,
    /// Where the protected-mode kernel was loaded.
    pub kernel_load: u64,
    /// End of the kernel's memory: runtime start + init_size. The 64-bit
    /// entry needs `[kernel_load, kernel_end)` identity-mapped.
    pub kernel_end: u64,
    /// The command line.
    pub cmdline_gpa: u64,
    /// `(gpa, len)` of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// The setup header as parsed.
    pub header: SetupHeader,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    let mask = a.checked_sub(1)?;
    Some(v.checked_add(mask)? & !mask)
}

/// The ranges a placement must stay clear of.
fn overlaps(a: u64, len: u64, avoid: &[(u64, u64)]) -> Option<u64> {
    avoid
        .iter()
        .find(|&&(s, e)| a < e && s < a.saturating_add(len))
        .map(|&(s, _)| s)
}

/// The highest page-aligned `[addr, addr + size)` in RAM within
/// `[floor, limit)` that misses every `avoid` range.
fn place_high(
    map: &E820Map,
    size: u64,
    (floor, limit): (u64, u64),
    avoid: &[(u64, u64)],
) -> Option<u64> {
    for e in map.entries().iter().rev() {
        if e.kind != E820Type::Ram {
            continue;
        }
        let bottom = e.addr.max(floor);
        let mut top = e.end().min(limit);
        while top.checked_sub(bottom).is_some_and(|room| room >= size) {
            // top - size >= bottom (the loop condition).
            let a = top.saturating_sub(size) & !(PAGE - 1);
            if a < bottom {
                break;
            }
            match overlaps(a, size, avoid) {
                None => return Some(a),
                // Try again below the range in the way.
                Some(s) => top = s,
            }
        }
    }
    None
}

/// Loads `image` per the 64-bit boot protocol: the protected-mode kernel,
/// the command line, the initrd and the zero page. The caller enters at
/// [`BootSetup::entry`] (see the module docs and [`GDT64`]).
pub fn load(image: &[u8], mem: &impl GuestRam, cfg: &BootConfig) -> Result<BootSetup, BzError> {
    let hdr = parse_header(image)?;
    // parse_header checked that the kernel starts inside the file.
    let kernel = image.get(hdr.kernel_offset()..).unwrap_or_default();
    let map = cfg.e820;

    // Load address and the runtime start the kernel will move itself to
    // (boot.rst, init_size): a relocatable kernel runs at its load address
    // aligned up to kernel_alignment but not below pref_address; any other
    // runs at pref_address.
    let (load, runtime) = if hdr.relocatable {
        let align = u64::from(hdr.kernel_alignment);
        let load =
            align_up(hdr.pref_address.max(HIGH_LOAD), align).ok_or(BzError::KernelDoesNotFit {
                start: hdr.pref_address,
                end: u64::MAX,
            })?;
        (load, load)
    } else {
        (HIGH_LOAD, hdr.pref_address.max(HIGH_LOAD))
    };
    let start = load.min(runtime);
    let end = load
        .saturating_add(kernel.len() as u64)
        .max(runtime.saturating_add(u64::from(hdr.init_size)));
    // end >= load >= start.
    if !map.is_ram(start, end.saturating_sub(start)) {
        return Err(BzError::KernelDoesNotFit { start, end });
    }

    // Command line: at most cmdline_size bytes plus the NUL.
    let max = u64::from(hdr.cmdline_size).min(CMDLINE_SPACE - 1);
    if cfg.cmdline.len() as u64 > max {
        return Err(BzError::CmdlineTooLong {
            len: cfg.cmdline.len(),
            max,
        });
    }
    // At most CMDLINE_SPACE (checked above) with the NUL.
    let cmdline_len = (cfg.cmdline.len() as u64).saturating_add(1);
    let not_ram = |what, gpa, len| BzError::NotRam { what, gpa, len };
    if !map.is_ram(CMDLINE_GPA, cmdline_len) {
        return Err(not_ram("command line", CMDLINE_GPA, cmdline_len));
    }
    if !map.is_ram(BOOT_PARAMS_GPA, ZERO_PAGE_LEN as u64) {
        return Err(not_ram("zero page", BOOT_PARAMS_GPA, ZERO_PAGE_LEN as u64));
    }

    // Initrd: highest page-aligned spot at or below initrd_addr_max and
    // below 4 GiB; above 4 GiB only if the kernel allows it and nothing
    // lower fits.
    let avoid = [
        (start, end),
        (BOOT_PARAMS_GPA, BOOT_PARAMS_END),
        (CMDLINE_GPA, CMDLINE_GPA.saturating_add(cmdline_len)),
    ];
    let initrd = match cfg.initrd {
        None => None,
        Some(data) => {
            let size = data.len() as u64;
            let limit = u64::from(hdr.initrd_addr_max)
                .saturating_add(1)
                .min(FOUR_GIB);
            let above_4g = hdr.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0;
            let mut at = place_high(map, size, (0, limit), &avoid);
            if at.is_none() && above_4g {
                at = place_high(map, size, (FOUR_GIB, u64::MAX), &avoid);
            }
            let at = at.ok_or(BzError::InitrdDoesNotFit {
                size,
                limit,
                above_4g,
            })?;
            Some((at, size))
        }
    };

    let entries = map.entries();
    if entries.len() > E820_MAX {
        return Err(BzError::TooManyE820Entries {
            count: entries.len(),
        });
    }

    // The zero page (boot.rst "64-bit BOOT PROTOCOL"): zeroed, the setup
    // header copied from the image, then the loader's fields.
    let mut zp = vec![0u8; ZERO_PAGE_LEN];
    let hdr_end = hdr.header_end.min(HDR_AREA_END);
    // hdr_end <= HDR_AREA_END < the zero page, and the image holds the
    // header up to header_end (parse_header).
    if let Some(src) = image.get(SETUP_SECTS..hdr_end) {
        put(&mut zp, SETUP_SECTS, src);
    }
    put(&mut zp, TYPE_OF_LOADER, &[LOADER_UNDEFINED]);
    // The heap is the 16-bit setup code's; it does not run here, but a
    // valid heap_end_ptr is what a conforming loader provides (0x10000
    // setup segment minus 0x200).
    let loadflags = byte_at(&zp, LOADFLAGS) | CAN_USE_HEAP;
    put(&mut zp, LOADFLAGS, &[loadflags]);
    put(&mut zp, HEAP_END_PTR, &0xFE00u16.to_le_bytes());
    put(&mut zp, VID_MODE, &VID_MODE_NORMAL.to_le_bytes());
    // A relocated kernel: code32_start follows the load address.
    put(&mut zp, CODE32_START, &(load as u32).to_le_bytes());
    put(&mut zp, CMD_LINE_PTR, &(CMDLINE_GPA as u32).to_le_bytes());
    put(
        &mut zp,
        EXT_CMD_LINE_PTR,
        &((CMDLINE_GPA >> 32) as u32).to_le_bytes(),
    );
    if let Some((at, size)) = initrd {
        put(&mut zp, RAMDISK_IMAGE, &(at as u32).to_le_bytes());
        put(&mut zp, RAMDISK_SIZE, &(size as u32).to_le_bytes());
        put(
            &mut zp,
            EXT_RAMDISK_IMAGE,
            &((at >> 32) as u32).to_le_bytes(),
        );
        put(
            &mut zp,
            EXT_RAMDISK_SIZE,
            &((size >> 32) as u32).to_le_bytes(),
        );
    }
    if let (Some(rsdp), true) = (cfg.rsdp, hdr.version >= RSDP_VERSION) {
        put(&mut zp, ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
    }
    // At most E820_MAX (checked above): the count fits its byte and the
    // table its 2560 bytes.
    put(&mut zp, E820_ENTRIES, &[entries.len() as u8]);
    for (e, off) in entries.iter().zip((E820_TABLE..).step_by(20)) {
        put(&mut zp, off, &e.to_bytes());
    }

    // Write everything; placement above was checked against the map, so a
    // failure here means the map and guest RAM disagree.
    let write = |what, gpa: u64, data: &[u8]| {
        mem.write(gpa, data)
            .ok_or(not_ram(what, gpa, data.len() as u64))
    };
    write("kernel", load, kernel)?;
    write("command line", CMDLINE_GPA, cfg.cmdline.as_bytes())?;
    let nul = CMDLINE_GPA.saturating_add(cfg.cmdline.len() as u64);
    write("command line", nul, &[0])?;
    if let (Some(data), Some((at, _))) = (cfg.initrd, initrd) {
        write("initrd", at, data)?;
    }
    write("zero page", BOOT_PARAMS_GPA, &zp)?;

    Ok(BootSetup {
        // load is below 4 GiB's RAM (is_ram above).
        entry: load.saturating_add(0x200),
        entry32: load,
        boot_params_gpa: BOOT_PARAMS_GPA,
        kernel_load: load,
        kernel_end: end,
        cmdline_gpa: CMDLINE_GPA,
        initrd,
        header: hdr,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::e820::{self, fake::FakeRam, E820Entry};
    use super::*;
    use crate::layout as memory;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    const MIB: u64 = 1 << 20;

    /// A synthetic bzImage: `setup_sects` sectors of setup, `kernel_len`
    /// bytes of protected-mode code, a 2.15 header of a 64-bit relocatable
    /// kernel preferring 16 MiB with `init_size`.
    pub(crate) fn image(kernel_len: usize, init_size: u32) -> Vec<u8> {
        let setup_sects = 4u8;
        let off = (usize::from(setup_sects) + 1) * 512;
        let mut b = vec![0u8; off + kernel_len];
        b[SETUP_SECTS] = setup_sects;
        put(
            &mut b,
            SYSSIZE,
            &((kernel_len as u32).div_ceil(16)).to_le_bytes(),
        );
        put(&mut b, BOOT_FLAG, &0xAA55u16.to_le_bytes());
        // jmp short to 0x26C: the 2.15 header length.
        b[JUMP] = 0xEB;
        b[JUMP + 1] = 0x6A;
        put(&mut b, HEADER, b"HdrS");
        put(&mut b, VERSION, &0x020Fu16.to_le_bytes());
        b[LOADFLAGS] = LOADED_HIGH;
        put(&mut b, CODE32_START, &0x10_0000u32.to_le_bytes());
        put(&mut b, INITRD_ADDR_MAX, &0x7FFF_FFFFu32.to_le_bytes());
        put(&mut b, KERNEL_ALIGNMENT, &0x20_0000u32.to_le_bytes());
        b[RELOCATABLE_KERNEL] = 1;
        b[RELOCATABLE_KERNEL + 1] = 21;
        put(&mut b, XLOADFLAGS, &0x7Fu16.to_le_bytes());
        put(&mut b, CMDLINE_SIZE, &0x7FFu32.to_le_bytes());
        put(&mut b, PREF_ADDRESS, &0x100_0000u64.to_le_bytes());
        put(&mut b, INIT_SIZE, &init_size.to_le_bytes());
        // A byte past the header that must not reach the zero page.
        b[0x26C] = 0xCC;
        for (i, x) in b[off..].iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        b
    }

    fn map_for(ram: u64) -> E820Map {
        e820::standard(
            &memory::layout(ram),
            &[(0xE_0000, 0x2_0000, E820Type::Acpi)],
        )
        .unwrap()
    }

    fn cfg<'a>(map: &'a E820Map, cmdline: &'a str, initrd: Option<&'a [u8]>) -> BootConfig<'a> {
        BootConfig {
            cmdline,
            initrd,
            e820: map,
            rsdp: Some(0xE_1000),
        }
    }

    #[test]
    fn loads_a_relocatable_kernel_at_pref_address() {
        let img = image(0x3000, 0x40_0000);
        let ram = FakeRam::new(128 * MIB);
        let map = map_for(128 * MIB);
        let initrd = vec![0x5Au8; 0x1801];
        let s = load(&img, &ram, &cfg(&map, "console=ttyS0", Some(&initrd))).unwrap();
        assert_eq!(s.kernel_load, 0x100_0000);
        assert_eq!(s.entry, 0x100_0200);
        assert_eq!(s.entry32, 0x100_0000);
        assert_eq!(s.kernel_end, 0x140_0000);
        assert_eq!(s.boot_params_gpa, BOOT_PARAMS_GPA);
        // Highest page below 128 MiB (initrd_addr_max is 2 GiB).
        assert_eq!(s.initrd, Some((128 * MIB - 0x2000, 0x1801)));
        let (at, len) = s.initrd.unwrap();
        assert_eq!(ram.read(at, len as usize), initrd);
        assert_eq!(ram.read(0x100_0000, 0x3000), img[0xA00..].to_vec());
        assert_eq!(ram.cstr(CMDLINE_GPA), b"console=ttyS0");

        let zp = BOOT_PARAMS_GPA;
        // The setup header copied up to 0x26C, nothing past it.
        assert_eq!(ram.read(zp + 0x202, 4), b"HdrS");
        assert_eq!(ram.u16(zp + 0x206), 0x020F);
        assert_eq!(ram.u32(zp + 0x260), 0x40_0000);
        assert_eq!(ram.read(zp + 0x26C, 1), [0]);
        assert_eq!(ram.read(zp + 0x1F1, 1), [4]);
        // Loader fields.
        assert_eq!(ram.read(zp + 0x210, 1), [0xFF]);
        assert_eq!(ram.read(zp + 0x211, 1), [LOADED_HIGH | CAN_USE_HEAP]);
        assert_eq!(ram.u16(zp + 0x224), 0xFE00);
        assert_eq!(ram.u16(zp + 0x1FA), 0xFFFF);
        assert_eq!(ram.u32(zp + 0x214), 0x100_0000);
        assert_eq!(ram.u32(zp + 0x228), CMDLINE_GPA as u32);
        assert_eq!(ram.u32(zp + 0x0C8), 0);
        assert_eq!(ram.u32(zp + 0x218), at as u32);
        assert_eq!(ram.u32(zp + 0x21C), 0x1801);
        assert_eq!(ram.u32(zp + 0x0C0), 0);
        assert_eq!(ram.u64(zp + 0x070), 0xE_1000);
        // screen_info zero: no VGA console.
        assert_eq!(ram.read(zp, 0x40), vec![0; 0x40]);
        // sentinel stays zero.
        assert_eq!(ram.read(zp + 0x1EF, 1), [0]);
        // E820 table.
        let n = ram.read(zp + 0x1E8, 1)[0] as usize;
        assert_eq!(n, map.len());
        for (i, e) in map.entries().iter().enumerate() {
            let g = zp + 0x2D0 + 20 * i as u64;
            let got = E820Entry {
                addr: ram.u64(g),
                size: ram.u64(g + 8),
                kind: e.kind,
            };
            assert_eq!((got, ram.u32(g + 16)), (*e, e.kind as u32));
        }
    }

    #[test]
    fn non_relocatable_kernel_loads_at_1mib_and_runs_at_pref() {
        let mut img = image(0x1000, 0x10_0000);
        img[RELOCATABLE_KERNEL] = 0;
        put(&mut img, KERNEL_ALIGNMENT, &3u32.to_le_bytes()); // ignored
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        let s = load(&img, &ram, &cfg(&map, "", None)).unwrap();
        assert_eq!((s.kernel_load, s.entry), (0x10_0000, 0x10_0200));
        assert_eq!(s.kernel_end, 0x110_0000);
        assert_eq!(s.initrd, None);
        assert_eq!(ram.cstr(CMDLINE_GPA), b"");
        assert_eq!(ram.u32(BOOT_PARAMS_GPA + 0x218), 0);
    }

    #[test]
    fn relocatable_kernel_aligns_pref_address_up() {
        let mut img = image(0x1000, 0x10_0000);
        put(&mut img, PREF_ADDRESS, &0x100_1000u64.to_le_bytes());
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        let s = load(&img, &ram, &cfg(&map, "", None)).unwrap();
        assert_eq!(s.kernel_load, 0x120_0000);
    }

    #[test]
    fn initrd_stays_below_initrd_addr_max_and_clear_of_the_kernel() {
        let mut img = image(0x1000, 0x40_0000);
        put(
            &mut img,
            INITRD_ADDR_MAX,
            &(0x180_0000u32 - 1).to_le_bytes(),
        );
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        let initrd = vec![1u8; 0x20_0000];
        let s = load(&img, &ram, &cfg(&map, "", Some(&initrd))).unwrap();
        assert_eq!(s.initrd, Some((0x160_0000, 0x20_0000)));
        // A 5 MiB initrd no longer fits above the kernel: it goes below it.
        let initrd = vec![1u8; 0x50_0000];
        let s = load(&img, &ram, &cfg(&map, "", Some(&initrd))).unwrap();
        assert_eq!(s.initrd, Some((0x100_0000 - 0x50_0000, 0x50_0000)));
        // Exactly 1..16 MiB.
        let initrd = vec![1u8; 0xF0_0000];
        let s = load(&img, &ram, &cfg(&map, "", Some(&initrd))).unwrap();
        assert_eq!(s.initrd, Some((0x10_0000, 0xF0_0000)));
        // A page more fits nowhere below 24 MiB outside [16, 20) MiB.
        let initrd = vec![1u8; 0xF0_1000];
        let e = load(&img, &ram, &cfg(&map, "", Some(&initrd))).unwrap_err();
        assert_eq!(
            e,
            BzError::InitrdDoesNotFit {
                size: 0xF0_1000,
                limit: 0x180_0000,
                above_4g: true
            }
        );
        assert_eq!(
            e.to_string(),
            "bzImage: initrd of 15732736 bytes does not fit in guest RAM below 0x1800000 or above 4 GiB outside the kernel and loader areas"
        );
    }

    #[test]
    fn initrd_above_4g_only_when_allowed() {
        let mut img = image(0x1000, 0x40_0000);
        put(
            &mut img,
            INITRD_ADDR_MAX,
            &(0x180_0000u32 - 1).to_le_bytes(),
        );
        let size = memory::MMIO_HOLE_START + 64 * MIB;
        let ram = FakeRam::new(size);
        let map = map_for(size);
        // 17 MiB fits neither below the kernel (1..16 MiB) nor between it
        // and initrd_addr_max (20..24 MiB).
        let initrd = vec![3u8; 17 << 20];
        let s = load(&img, &ram, &cfg(&map, "", Some(&initrd))).unwrap();
        let at = memory::FOUR_GIB + 64 * MIB - (17 << 20);
        assert_eq!(s.initrd, Some((at, 17 << 20)));
        assert_eq!(ram.u32(BOOT_PARAMS_GPA + 0x218), at as u32);
        assert_eq!(ram.u32(BOOT_PARAMS_GPA + 0x0C0), 1);
        assert_eq!(ram.read(at + (17 << 20) - 1, 1), [3]);
        // Without XLF_CAN_BE_LOADED_ABOVE_4G it does not fit.
        put(&mut img, XLOADFLAGS, &0x1u16.to_le_bytes());
        let e = load(&img, &ram, &cfg(&map, "", Some(&initrd))).unwrap_err();
        assert_eq!(
            e,
            BzError::InitrdDoesNotFit {
                size: 17 << 20,
                limit: 0x180_0000,
                above_4g: false
            }
        );
    }

    #[test]
    fn kernel_must_fit_in_ram() {
        let img = image(0x1000, 0x400_0000); // 64 MiB init_size
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        let e = load(&img, &ram, &cfg(&map, "", None)).unwrap_err();
        assert_eq!(
            e,
            BzError::KernelDoesNotFit {
                start: 0x100_0000,
                end: 0x500_0000
            }
        );
        assert!(e.to_string().contains("[0x1000000, 0x5000000)"));
    }

    #[test]
    fn cmdline_length_is_checked() {
        let img = image(0x1000, 0x10_0000);
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        let ok: String = "x".repeat(0x7FF);
        load(&img, &ram, &cfg(&map, &ok, None)).unwrap();
        assert_eq!(ram.cstr(CMDLINE_GPA).len(), 0x7FF);
        let long: String = "x".repeat(0x800);
        let e = load(&img, &ram, &cfg(&map, &long, None)).unwrap_err();
        assert_eq!(
            e,
            BzError::CmdlineTooLong {
                len: 0x800,
                max: 0x7FF
            }
        );
        assert_eq!(
            e.to_string(),
            "bzImage: command line of 2048 bytes is longer than the kernel's cmdline_size 2047"
        );
    }

    #[test]
    fn header_defects_are_distinct_errors() {
        let good = image(0x1000, 0x10_0000);
        let check = |img: &[u8], want: BzError, text: &str| {
            let e = parse_header(img).unwrap_err();
            assert_eq!(e, want);
            assert!(e.to_string().contains(text), "{e}");
        };
        check(
            &good[..0x100],
            BzError::HeaderTruncated {
                len: 0x100,
                need: 0x208,
            },
            "too short for the setup header",
        );
        check(
            &good[..0x240],
            BzError::HeaderTruncated {
                len: 0x240,
                need: 0x26C,
            },
            "needs 620",
        );
        let mut b = good.clone();
        b[BOOT_FLAG] = 0;
        check(
            &b,
            BzError::BadBootFlag { found: 0xAA00 },
            "expected 0xAA55",
        );
        let mut b = good.clone();
        put(&mut b, HEADER, &0x1234u32.to_le_bytes());
        check(
            &b,
            BzError::BadMagic { found: 0x1234 },
            "setup header magic is 0x00001234, expected HdrS",
        );
        let mut b = good.clone();
        put(&mut b, HEADER, b"HdrX");
        check(&b, BzError::BadMagic { found: 0x5872_6448 }, "(\"HdrX\")");
        let mut b = good.clone();
        put(&mut b, VERSION, &0x020Bu16.to_le_bytes());
        check(
            &b,
            BzError::ProtocolTooOld { version: 0x020B },
            "boot protocol 2.11 is older than 2.12",
        );
        let mut b = good.clone();
        b[JUMP + 1] = 0x60;
        check(
            &b,
            BzError::HeaderTooShort { end: 0x262 },
            "before init_size",
        );
        let mut b = good.clone();
        b[LOADFLAGS] = 0;
        check(&b, BzError::NotLoadedHigh { loadflags: 0 }, "a zImage");
        let mut b = good.clone();
        put(&mut b, KERNEL_ALIGNMENT, &0x30_0000u32.to_le_bytes());
        check(
            &b,
            BzError::BadAlignment {
                alignment: 0x30_0000,
            },
            "not a power of two",
        );
        check(
            &good[..good.len() - 16],
            BzError::KernelTruncated {
                offset: 0xA00,
                have: 0xFF0,
                syssize_bytes: 0x1000,
            },
            "truncated: 4080 bytes",
        );
        check(
            &good[..0xA00],
            BzError::KernelTruncated {
                offset: 0xA00,
                have: 0,
                syssize_bytes: 0x1000,
            },
            "truncated",
        );
    }

    /// syssize is rounded up to paragraphs: a file 1..15 bytes short of
    /// syssize * 16 is whole (memtest86+ ships such images); 16 short is not.
    #[test]
    fn syssize_rounds_up_to_a_paragraph() {
        for kernel_len in [0x1000 - 15, 0x1000 - 1, 0x1001] {
            let img = image(kernel_len, 0x10_0000);
            let want = (kernel_len as u32).div_ceil(16);
            let h = parse_header(&img).unwrap();
            assert_eq!(h.syssize, want);
            let ram = FakeRam::new(64 * MIB);
            let map = map_for(64 * MIB);
            let s = load(&img, &ram, &cfg(&map, "", None)).unwrap();
            assert_eq!(ram.read(s.kernel_load, kernel_len), img[0xA00..].to_vec());
        }
        let mut img = image(0x1000 - 15, 0x10_0000);
        put(&mut img, SYSSIZE, &0x101u32.to_le_bytes());
        assert_eq!(
            parse_header(&img).unwrap_err(),
            BzError::KernelTruncated {
                offset: 0xA00,
                have: 0xFF1,
                syssize_bytes: 0x1010,
            }
        );
    }

    /// A 32-bit kernel (no XLF_KERNEL_64, e.g. Debian's 686-pae flavour)
    /// loads like any other and is entered at its load address.
    #[test]
    fn kernel_without_xlf_kernel_64_is_a_32_bit_kernel() {
        let mut img = image(0x1000, 0x10_0000);
        // XLF_KERNEL_64 and XLF_CAN_BE_LOADED_ABOVE_4G clear, as on i386.
        put(&mut img, XLOADFLAGS, &0x1Cu16.to_le_bytes());
        let h = parse_header(&img).unwrap();
        assert!(!h.kernel64());
        assert!(parse_header(&image(0x1000, 0x10_0000)).unwrap().kernel64());
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        let s = load(&img, &ram, &cfg(&map, "console=ttyS0", Some(&[1; 64]))).unwrap();
        assert_eq!((s.entry32, s.kernel_load), (0x100_0000, 0x100_0000));
        assert_eq!(ram.u32(BOOT_PARAMS_GPA + 0x214), 0x100_0000);
        assert!(s.initrd.unwrap().0 < memory::FOUR_GIB);
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let mut b = image(0x1000, 0x10_0000);
        b[SETUP_SECTS] = 0;
        let h = parse_header(&b).unwrap();
        assert_eq!((h.setup_sects, h.kernel_offset()), (4, 0xA00));
    }

    #[test]
    fn old_protocol_gets_no_rsdp_and_too_many_e820_entries_fail() {
        let mut img = image(0x1000, 0x10_0000);
        put(&mut img, VERSION, &0x020Du16.to_le_bytes());
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        load(&img, &ram, &cfg(&map, "", None)).unwrap();
        assert_eq!(ram.u64(BOOT_PARAMS_GPA + 0x070), 0);

        let mut many = map.clone();
        for i in 0..130u64 {
            many.set(0x4000_0000 + i * 0x2000, 0x1000, E820Type::Reserved)
                .unwrap();
        }
        let e = load(&img, &ram, &cfg(&many, "", None)).unwrap_err();
        assert!(matches!(e, BzError::TooManyE820Entries { count } if count > 128));
    }

    #[test]
    fn zero_page_and_cmdline_must_be_ram() {
        let img = image(0x1000, 0x10_0000);
        let ram = FakeRam::new(64 * MIB);
        let mut map = map_for(64 * MIB);
        map.set(CMDLINE_GPA, 0x1000, E820Type::Reserved).unwrap();
        let e = load(&img, &ram, &cfg(&map, "", None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bzImage: command line at [0x20000, 0x20001) is not RAM in the E820 map"
        );
    }

    /// Checks the parser and loader against a real distribution kernel when
    /// one is at $FERROVISOR_BZIMAGE or /tmp/kern/x/boot/vmlinuz-*; skipped
    /// otherwise.
    #[test]
    fn real_kernel_if_present() {
        let path = std::env::var("FERROVISOR_BZIMAGE").ok().or_else(|| {
            std::fs::read_dir("/tmp/kern/x/boot")
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .map(|p| p.display().to_string())
        });
        let Some(path) = path else {
            std::println!("real_kernel_if_present: no kernel found, skipped");
            return;
        };
        let img = std::fs::read(&path).unwrap();
        let h = parse_header(&img).unwrap();
        std::println!("{path}: {h:#x?}");
        assert!(h.version >= MIN_VERSION);
        let ram = FakeRam::new(256 * MIB);
        let map = map_for(256 * MIB);
        let s = load(&img, &ram, &cfg(&map, "console=ttyS0", Some(&[7u8; 4096]))).unwrap();
        std::println!("{path}: {s:#x?}");
        assert_eq!(s.entry, s.kernel_load + 0x200);
        assert!(s.initrd.unwrap().0 >= s.kernel_end);
    }
}
