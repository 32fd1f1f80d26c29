//! Multiboot (version 1, spec 0.6.96) guests: header, image loading (ELF or
//! the a.out kludge), modules and the Multiboot information structure.
//!
//! Section numbers refer to the Multiboot Specification 0.6.96.
//!
//! Header flags (§3.1.2): bits 0-15 are requirements the loader must meet or
//! refuse the image. Bit 0 (page-aligned modules) and bit 1 (memory
//! information) are always honoured. Bit 2 (video mode table) asks for
//! information a loader without a video BIOS cannot give, so an image
//! setting it is refused, as are bits 3-15, which 0.6.96 does not define.
//! Bit 16 selects the a.out kludge address fields (they then win over an ELF
//! header, §3.1.3); bits 17-31 are optional and ignored.
//!
//! ELF images (§3.1.3 "The boot loader must be able to load ELF"): ELF32
//! (EM_386) and ELF64 (EM_X86_64) executables are loaded segment by segment
//! at `p_paddr`; `e_entry` is used as is, or translated through the segment
//! whose virtual range holds it when it lies in one.
//!
//! Guest-physical layout: the image where it asks, anywhere in RAM above
//! the real-mode interrupt vector table and the BIOS data area
//! (`[0, IMAGE_FLOOR)`), e.g. at 0x8000 below 64 KiB; modules page-aligned
//! after the image; then the loader's own block: the information
//! structure, its memory map, module list, strings and the boot GDT, at
//! [`INFO_GPA`] = 0x9000 when the image and modules leave that free, else
//! at the lowest free page-aligned RAM (at most [`INFO_ROOM`] bytes).

use super::e820::{E820Map, E820Type, GuestRam};
use crate::bytes::{u16_at, u32_at, u64_at};
use crate::layout::FOUR_GIB;
use crate::layout::PAGE;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Header magic (§3.1.1).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// EAX at entry (§3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header lies 4-byte aligned within the first 8192 bytes (§3.1).
pub const SEARCH_LEN: usize = 8192;
/// Where the information structure goes unless the image is there.
pub const INFO_GPA: u64 = 0x9000;
/// Most bytes the information block (structure, memory map, module list,
/// strings, GDT) may take.
pub const INFO_ROOM: u64 = 0x7000;
/// Images load at or above this: below are the real-mode IVT and the BDA
/// ([`super::bda`]).
pub const IMAGE_FLOOR: u64 = 0x500;
/// The `boot_loader_name` the guest sees.
pub const LOADER_NAME: &str = "ferrovisor";

/// Header flag bits (§3.1.2).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Required-feature bits this loader meets.
const HONOURED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;

/// Information structure flags (§3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
/// Size of the 0.6.96 information structure (through vbe_interface_len).
const INFO_LEN: usize = 88;

const HIGH_MEMORY: u64 = 0x10_0000;

/// The a.out kludge address fields (§3.1.3, header offsets 12-28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutAddrs {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// A Multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the magic.
    pub offset: usize,
    pub flags: u32,
    /// Present when flag 16 is set.
    pub aout: Option<AoutAddrs>,
}

/// What is wrong with a Multiboot image or its placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MbError {
    /// No magic at a 4-byte boundary in the first 8192 bytes.
    NoHeader,
    /// A magic was found but magic + flags + checksum is not 0 (mod 2^32).
    BadChecksum { offset: usize, sum: u32 },
    /// The header's fields run past the end of the file or of the first
    /// 8192 bytes.
    HeaderTruncated { offset: usize, need: usize },
    /// Flag 2 (video mode information) is required but cannot be given.
    VideoModeRequired,
    /// Required-feature bits 3-15 that this loader does not know.
    UnsupportedFlags { bits: u32 },
    /// a.out kludge: load_addr > header_addr.
    LoadAfterHeader { load_addr: u32, header_addr: u32 },
    /// a.out kludge: the header would sit before the start of the file.
    LoadBeforeFile {
        header_addr: u32,
        load_addr: u32,
        offset: usize,
    },
    /// a.out kludge: load_end_addr < load_addr.
    LoadEndBeforeLoad { load_addr: u32, load_end_addr: u32 },
    /// a.out kludge: the file holds fewer bytes than load_end_addr asks for.
    AoutTruncated { need: u64, have: u64 },
    /// a.out kludge: bss_end_addr < load_end_addr.
    BssEndBeforeLoadEnd {
        load_end_addr: u64,
        bss_end_addr: u32,
    },
    /// Flag 16 is clear and the image is not ELF.
    NotElf { magic: [u8; 4] },
    /// ELF: a malformed or unsupported file.
    Elf(ElfDefect),
    /// The entry point is not inside the loaded image.
    EntryOutsideImage { entry: u64 },
    /// Part of the image is not RAM.
    NotRam { start: u64, end: u64 },
    /// Part of the image lies on the IVT or the BIOS data area.
    OverlapsLoaderArea { start: u64, end: u64 },
    /// Module `index` of `size` bytes fits nowhere below 4 GiB.
    ModuleDoesNotFit { index: usize, size: u64 },
    /// The information structure, memory map, module list and strings need
    /// more than [`INFO_ROOM`].
    InfoTooLarge { need: usize, room: u64 },
    /// No free RAM below 4 GiB for the information block of `size` bytes.
    InfoDoesNotFit { size: u64 },
}

/// What is wrong with an ELF Multiboot image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElfDefect {
    /// Shorter than the ELF header of its class.
    HeaderTruncated { len: usize },
    /// EI_CLASS is neither ELFCLASS32 nor ELFCLASS64.
    BadClass { class: u8 },
    /// Not little-endian.
    BadData { data: u8 },
    /// Wrong e_machine for the class.
    BadMachine { machine: u16 },
    /// Not ET_EXEC.
    NotExecutable { e_type: u16 },
    /// e_phentsize too small.
    BadPhentsize { size: u16 },
    /// The program header table runs past the end of the file.
    ProgramHeadersTruncated { offset: u64, count: u16 },
    /// A segment's file bytes run past the end of the file.
    SegmentTruncated { index: usize },
    /// p_filesz > p_memsz.
    FileSizeExceedsMemSize { index: usize },
    /// A segment reaches above 4 GiB, which 32-bit entry cannot address.
    SegmentAbove4G { index: usize, end: u64 },
    /// Two segments share physical memory.
    Overlap { index: usize, other: usize },
    /// No PT_LOAD segment with memory.
    NoLoadSegments,
}

impl fmt::Display for ElfDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfDefect::HeaderTruncated { len } => {
                write!(f, "file of {len} bytes is shorter than its ELF header")
            }
            ElfDefect::BadClass { class } => {
                write!(f, "EI_CLASS {class} is neither ELFCLASS32 nor ELFCLASS64")
            }
            ElfDefect::BadData { data } => write!(f, "EI_DATA {data} is not little-endian"),
            ElfDefect::BadMachine { machine } => write!(
                f,
                "e_machine {machine} is not EM_386 (ELF32) or EM_X86_64 (ELF64)"
            ),
            ElfDefect::NotExecutable { e_type } => {
                write!(f, "e_type {e_type} is not ET_EXEC")
            }
            ElfDefect::BadPhentsize { size } => {
                write!(f, "e_phentsize {size} is too small for a program header")
            }
            ElfDefect::ProgramHeadersTruncated { offset, count } => write!(
                f,
                "{count} program headers at offset {offset:#x} run past the end of the file"
            ),
            ElfDefect::SegmentTruncated { index } => {
                write!(f, "segment {index} runs past the end of the file")
            }
            ElfDefect::FileSizeExceedsMemSize { index } => {
                write!(f, "segment {index} has p_filesz > p_memsz")
            }
            ElfDefect::SegmentAbove4G { index, end } => write!(
                f,
                "segment {index} ends at {end:#x}, above the 4 GiB a 32-bit entry can reach"
            ),
            ElfDefect::Overlap { index, other } => {
                write!(f, "segment {index} overlaps segment {other}")
            }
            ElfDefect::NoLoadSegments => f.write_str("no loadable (PT_LOAD) segments"),
        }
    }
}

impl fmt::Display for MbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MbError::NoHeader => write!(
                f,
                "multiboot: no header (magic {HEADER_MAGIC:#x}) in the first {SEARCH_LEN} bytes"
            ),
            MbError::BadChecksum { offset, sum } => write!(
                f,
                "multiboot: header checksum wrong at offset {offset:#x}: magic + flags + checksum = {sum:#x}, not 0"
            ),
            MbError::HeaderTruncated { offset, need } => write!(
                f,
                "multiboot: header at offset {offset:#x} needs {need} bytes, past the end of the file or of its first {SEARCH_LEN} bytes"
            ),
            MbError::VideoModeRequired => f.write_str(
                "multiboot: header flag 2 requires video mode information, which this loader cannot provide",
            ),
            MbError::UnsupportedFlags { bits } => write!(
                f,
                "multiboot: header requires unsupported features (flag bits {bits:#x})"
            ),
            MbError::LoadAfterHeader {
                load_addr,
                header_addr,
            } => write!(
                f,
                "multiboot: load_addr {load_addr:#x} is above header_addr {header_addr:#x}"
            ),
            MbError::LoadBeforeFile {
                header_addr,
                load_addr,
                offset,
            } => write!(
                f,
                "multiboot: header_addr {header_addr:#x} - load_addr {load_addr:#x} exceeds the header's file offset {offset:#x}"
            ),
            MbError::LoadEndBeforeLoad {
                load_addr,
                load_end_addr,
            } => write!(
                f,
                "multiboot: load_end_addr {load_end_addr:#x} is below load_addr {load_addr:#x}"
            ),
            MbError::AoutTruncated { need, have } => write!(
                f,
                "multiboot: load_end_addr asks for {need} bytes, the file has {have} from the load offset"
            ),
            MbError::BssEndBeforeLoadEnd {
                load_end_addr,
                bss_end_addr,
            } => write!(
                f,
                "multiboot: bss_end_addr {bss_end_addr:#x} is below the end of the loaded image {load_end_addr:#x}"
            ),
            MbError::NotElf { magic } => write!(
                f,
                "multiboot: header flag 16 (address fields) is clear and the image is not ELF (magic {magic:02x?})"
            ),
            MbError::Elf(d) => write!(f, "multiboot: ELF: {d}"),
            MbError::EntryOutsideImage { entry } => write!(
                f,
                "multiboot: entry point {entry:#x} is outside the loaded image"
            ),
            MbError::NotRam { start, end } => write!(
                f,
                "multiboot: image range [{start:#x}, {end:#x}) is not guest RAM"
            ),
            MbError::OverlapsLoaderArea { start, end } => write!(
                f,
                "multiboot: image range [{start:#x}, {end:#x}) overlaps the interrupt vector table and BIOS data area below {IMAGE_FLOOR:#x}"
            ),
            MbError::ModuleDoesNotFit { index, size } => write!(
                f,
                "multiboot: module {index} of {size} bytes does not fit in guest RAM below 4 GiB"
            ),
            MbError::InfoTooLarge { need, room } => write!(
                f,
                "multiboot: information structure, memory map, module list and strings need {need} bytes, the area has {room}"
            ),
            MbError::InfoDoesNotFit { size } => write!(
                f,
                "multiboot: no free guest RAM below 4 GiB for the {size}-byte information block"
            ),
        }
    }
}

/// Copies `v` into `b` at `off` (offsets inside a buffer sized for them).
fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = off.checked_add(v.len()).and_then(|end| b.get_mut(off..end)) {
        d.copy_from_slice(v);
    }
}

/// `image[off..off + len]`, if it is all there.
fn sub(image: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    image.get(off..off.checked_add(len)?)
}

/// Finds and validates the header (§3.1.1, §3.1.2).
pub fn find_header(image: &[u8]) -> Result<Header, MbError> {
    let window = image.get(..SEARCH_LEN).unwrap_or(image);
    let mut bad = None;
    // Offsets stay below SEARCH_LEN (8 KiB): the sums below are exact.
    let mut off: usize = 0;
    while off.saturating_add(4) <= window.len() {
        if u32_at(window, off) != HEADER_MAGIC {
            off = off.saturating_add(4);
            continue;
        }
        if off.saturating_add(12) > window.len() {
            return Err(MbError::HeaderTruncated {
                offset: off,
                need: 12,
            });
        }
        let flags = u32_at(window, off.saturating_add(4));
        let sum = HEADER_MAGIC
            .wrapping_add(flags)
            .wrapping_add(u32_at(window, off.saturating_add(8)));
        if sum != 0 {
            // Keep looking: the magic value may occur by chance.
            bad.get_or_insert(MbError::BadChecksum { offset: off, sum });
            off = off.saturating_add(4);
            continue;
        }
        return parse_fields(window, off, flags);
    }
    Err(bad.unwrap_or(MbError::NoHeader))
}

fn parse_fields(window: &[u8], offset: usize, flags: u32) -> Result<Header, MbError> {
    if flags & FLAG_VIDEO_MODE != 0 {
        return Err(MbError::VideoModeRequired);
    }
    let unknown = flags & 0xFFFF & !(HONOURED | FLAG_VIDEO_MODE);
    if unknown != 0 {
        return Err(MbError::UnsupportedFlags { bits: unknown });
    }
    let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
        let Some(h) = sub(window, offset, 32) else {
            return Err(MbError::HeaderTruncated { offset, need: 32 });
        };
        Some(AoutAddrs {
            header_addr: u32_at(h, 12),
            load_addr: u32_at(h, 16),
            load_end_addr: u32_at(h, 20),
            bss_end_addr: u32_at(h, 24),
            entry_addr: u32_at(h, 28),
        })
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        aout,
    })
}

/// One piece of the image to place: `mem_size` bytes at `addr`, the first
/// `data.len()` from the file, the rest zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub addr: u64,
    pub data: &'a [u8],
    pub mem_size: u64,
}

impl Piece<'_> {
    fn end(&self) -> u64 {
        self.addr.saturating_add(self.mem_size)
    }
}

/// The pieces of an image and its physical entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout<'a> {
    pub pieces: Vec<Piece<'a>>,
    pub entry: u64,
}

/// The a.out kludge (§3.1.3): the file from the offset matching load_addr
/// goes to load_addr, up to load_end_addr (0: to the end of the file);
/// then BSS up to bss_end_addr (0: none).
fn aout_layout<'a>(image: &'a [u8], hdr: &Header, a: &AoutAddrs) -> Result<Layout<'a>, MbError> {
    if a.load_addr > a.header_addr {
        return Err(MbError::LoadAfterHeader {
            load_addr: a.load_addr,
            header_addr: a.header_addr,
        });
    }
    let back = a.header_addr.saturating_sub(a.load_addr) as usize;
    let file_off = hdr
        .offset
        .checked_sub(back)
        .ok_or(MbError::LoadBeforeFile {
            header_addr: a.header_addr,
            load_addr: a.load_addr,
            offset: hdr.offset,
        })?;
    // file_off <= the header's offset, inside the image.
    let have = image.len().saturating_sub(file_off) as u64;
    let len = if a.load_end_addr == 0 {
        have
    } else {
        if a.load_end_addr < a.load_addr {
            return Err(MbError::LoadEndBeforeLoad {
                load_addr: a.load_addr,
                load_end_addr: a.load_end_addr,
            });
        }
        let need = u64::from(a.load_end_addr.saturating_sub(a.load_addr));
        if need > have {
            return Err(MbError::AoutTruncated { need, have });
        }
        need
    };
    let load = u64::from(a.load_addr);
    // u32 address plus at most the file length: no overflow in u64.
    let load_end = load.saturating_add(len);
    let mem_size = if a.bss_end_addr == 0 {
        len
    } else {
        let bss_end = u64::from(a.bss_end_addr);
        if bss_end < load_end {
            return Err(MbError::BssEndBeforeLoadEnd {
                load_end_addr: load_end,
                bss_end_addr: a.bss_end_addr,
            });
        }
        bss_end.saturating_sub(load)
    };
    let end = load.saturating_add(mem_size);
    if end > FOUR_GIB {
        return Err(MbError::NotRam { start: load, end });
    }
    Ok(Layout {
        pieces: vec![Piece {
            addr: load,
            // len <= have, the bytes from file_off to the end.
            data: sub(image, file_off, len as usize).unwrap_or_default(),
            mem_size,
        }],
        entry: u64::from(a.entry_addr),
    })
}

const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;

/// ELF32/ELF64 executables (System V ABI: ELF header, program headers).
fn elf_layout(image: &[u8]) -> Result<Layout<'_>, MbError> {
    let magic = [0, 1, 2, 3].map(|i| image.get(i).copied().unwrap_or(0));
    if magic != *b"\x7fELF" {
        return Err(MbError::NotElf { magic });
    }
    let err = |d| Err(MbError::Elf(d));
    let class = image.get(4).copied().unwrap_or(0);
    let is64 = match class {
        1 => false,
        2 => true,
        _ => return err(ElfDefect::BadClass { class }),
    };
    let (ehdr_len, phdr_len) = if is64 { (64, 56) } else { (52, 32) };
    if image.len() < ehdr_len {
        return err(ElfDefect::HeaderTruncated { len: image.len() });
    }
    let data = image.get(5).copied().unwrap_or(0);
    if data != 1 {
        return err(ElfDefect::BadData { data });
    }
    let e_type = u16_at(image, 16);
    let machine = u16_at(image, 18);
    if machine != if is64 { EM_X86_64 } else { EM_386 } {
        return err(ElfDefect::BadMachine { machine });
    }
    if e_type != ET_EXEC {
        return err(ElfDefect::NotExecutable { e_type });
    }
    let (entry, phoff, phentsize, phnum) = if is64 {
        (
            u64_at(image, 24),
            u64_at(image, 32),
            u16_at(image, 54),
            u16_at(image, 56),
        )
    } else {
        (
            u64::from(u32_at(image, 24)),
            u64::from(u32_at(image, 28)),
            u16_at(image, 42),
            u16_at(image, 44),
        )
    };
    if phnum > 0 && usize::from(phentsize) < phdr_len {
        return err(ElfDefect::BadPhentsize { size: phentsize });
    }
    // Two u16s: the product fits u64.
    let table_end = phoff.checked_add(u64::from(phentsize).saturating_mul(u64::from(phnum)));
    if table_end.is_none_or(|e| e > image.len() as u64) {
        return err(ElfDefect::ProgramHeadersTruncated {
            offset: phoff,
            count: phnum,
        });
    }
    let mut pieces: Vec<Piece> = Vec::new();
    let mut indices: Vec<usize> = Vec::new();
    let mut vaddrs: Vec<u64> = Vec::new();
    for index in 0..usize::from(phnum) {
        // Inside the table, which lies inside the image (checked above).
        let p = (phoff as usize).saturating_add(index.saturating_mul(usize::from(phentsize)));
        let Some(ph) = sub(image, p, phdr_len) else {
            return err(ElfDefect::ProgramHeadersTruncated {
                offset: phoff,
                count: phnum,
            });
        };
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, vaddr, paddr, filesz, memsz) = if is64 {
            (
                u64_at(ph, 8),
                u64_at(ph, 16),
                u64_at(ph, 24),
                u64_at(ph, 32),
                u64_at(ph, 40),
            )
        } else {
            (
                u64::from(u32_at(ph, 4)),
                u64::from(u32_at(ph, 8)),
                u64::from(u32_at(ph, 12)),
                u64::from(u32_at(ph, 16)),
                u64::from(u32_at(ph, 20)),
            )
        };
        if filesz > memsz {
            return err(ElfDefect::FileSizeExceedsMemSize { index });
        }
        if offset
            .checked_add(filesz)
            .is_none_or(|e| e > image.len() as u64)
        {
            return err(ElfDefect::SegmentTruncated { index });
        }
        if memsz == 0 {
            continue;
        }
        match paddr.checked_add(memsz) {
            Some(end) if end <= FOUR_GIB => {}
            end => {
                return err(ElfDefect::SegmentAbove4G {
                    index,
                    end: end.unwrap_or(u64::MAX),
                })
            }
        }
        let piece = Piece {
            addr: paddr,
            // offset + filesz <= the image's length (checked above).
            data: sub(image, offset as usize, filesz as usize).unwrap_or_default(),
            mem_size: memsz,
        };
        if let Some(k) = pieces
            .iter()
            .position(|q| q.addr < piece.end() && piece.addr < q.end())
        {
            return err(ElfDefect::Overlap {
                index,
                other: indices.get(k).copied().unwrap_or(index),
            });
        }
        pieces.push(piece);
        indices.push(index);
        vaddrs.push(vaddr);
    }
    if pieces.is_empty() {
        return err(ElfDefect::NoLoadSegments);
    }
    // An entry inside a segment's virtual range is translated to physical
    // (for images linked at virtual addresses other than their load
    // addresses); otherwise it is taken as physical.
    let entry = pieces
        .iter()
        .zip(&vaddrs)
        .find(|(p, &v)| entry.checked_sub(v).is_some_and(|o| o < p.mem_size))
        // Below addr + mem_size, which is at most 4 GiB.
        .map_or(entry, |(p, &v)| {
            p.addr.saturating_add(entry.saturating_sub(v))
        });
    Ok(Layout { pieces, entry })
}

/// Parses `image` into the pieces to load and the entry point.
pub fn layout(image: &[u8]) -> Result<(Header, Layout<'_>), MbError> {
    let hdr = find_header(image)?;
    let layout = match &hdr.aout {
        Some(a) => aout_layout(image, &hdr, a)?,
        None => elf_layout(image)?,
    };
    if !layout
        .pieces
        .iter()
        .any(|p| layout.entry >= p.addr && layout.entry < p.end())
    {
        return Err(MbError::EntryOutsideImage {
            entry: layout.entry,
        });
    }
    Ok((hdr, layout))
}

/// A boot module: its bytes and its string (command line).
#[derive(Clone, Copy, Debug)]
pub struct Module<'a> {
    pub data: &'a [u8],
    pub cmdline: &'a str,
}

/// What the loader needs besides the image.
#[derive(Clone, Copy, Debug)]
pub struct MultibootConfig<'a> {
    pub cmdline: &'a str,
    pub modules: &'a [Module<'a>],
    /// The guest's memory map: copied to `mmap_*` and used for
    /// `mem_lower`/`mem_upper` and placement.
    pub e820: &'a E820Map,
}

/// Where things went and how to enter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootSetup {
    /// EIP at entry.
    pub entry: u64,
    /// EBX at entry: the information structure.
    pub info_gpa: u64,
    /// The boot GDT ([`super::setup::GDT`]), in the information block.
    pub gdt_gpa: u64,
    /// EAX at entry: [`BOOTLOADER_MAGIC`].
    pub eax: u32,
    /// Lowest and highest-exclusive address the image occupies.
    pub image_span: (u64, u64),
    /// `(start, end)` of each module, end exclusive.
    pub modules: Vec<(u64, u64)>,
}

/// The lowest page-aligned `[a, a + size)` at or above `from`, below 4 GiB,
/// in one RAM entry and clear of `avoid`.
fn place_low(map: &E820Map, size: u64, from: u64, avoid: &[(u64, u64)]) -> Option<u64> {
    for e in map.entries() {
        if e.kind != E820Type::Ram {
            continue;
        }
        let end = e.end().min(FOUR_GIB);
        let mut a = e.addr.max(from).checked_add(PAGE - 1)? & !(PAGE - 1);
        while a.checked_add(size)? <= end {
            match avoid
                .iter()
                .find(|&&(s, t)| a < t && s < a.saturating_add(size))
            {
                None => return Some(a),
                Some(&(_, t)) => a = t.checked_add(PAGE - 1)? & !(PAGE - 1),
            }
        }
    }
    None
}

/// Offsets in the information block: (memory map, module list, strings,
/// GDT, total length).
///
/// The sums saturate: an absurd size then fails the INFO_ROOM check.
fn info_layout(cfg: &MultibootConfig) -> (usize, usize, usize, usize, usize) {
    let mmap_off = INFO_LEN.next_multiple_of(8);
    let mods_off = mmap_off.saturating_add(cfg.e820.len().saturating_mul(24));
    let strings_off = mods_off.saturating_add(cfg.modules.len().saturating_mul(16));
    let module_strings = cfg.modules.iter().fold(0usize, |n, m| {
        n.saturating_add(m.cmdline.len()).saturating_add(1)
    });
    let strings_len = cfg
        .cmdline
        .len()
        .saturating_add(LOADER_NAME.len())
        .saturating_add(2)
        .saturating_add(module_strings);
    let gdt_off = strings_off.saturating_add(strings_len).next_multiple_of(8);
    let len = gdt_off.saturating_add(GDT_BYTES);
    (mmap_off, mods_off, strings_off, gdt_off, len)
}

/// Bytes of the boot GDT in the information block.
const GDT_BYTES: usize = 8 * super::setup::GDT.len();

/// Builds the information block for `base`: the structure at its start,
/// then the memory map, the module list and the strings (§3.3), then the
/// boot GDT.
fn build_info(cfg: &MultibootConfig, modules: &[(u64, u64)], base: u64) -> Vec<u8> {
    let map = cfg.e820.entries();
    let (mmap_off, mods_off, mut strings_off, gdt_off, need) = info_layout(cfg);
    // `b` is `need` bytes, which info_layout sized for every write below;
    // the block lies below 4 GiB (placement), so its addresses fit u32.
    let mmap_len = map.len().saturating_mul(24);
    let mut b = vec![0u8; need];
    let gpa = |off: usize| base.saturating_add(off as u64) as u32;
    let put32 = |b: &mut Vec<u8>, off: usize, v: u32| put(b, off, &v.to_le_bytes());
    let mut add_str = |b: &mut Vec<u8>, s: &str| {
        let at = strings_off;
        put(b, at, s.as_bytes());
        strings_off = strings_off.saturating_add(s.len()).saturating_add(1);
        gpa(at)
    };
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME;
    put32(&mut b, 0, flags);
    // mem_lower: KiB from 0 (at most 640); mem_upper: KiB from 1 MiB up to
    // the first hole.
    let lower = cfg.e820.ram_end_from(0, 0xA_0000).unwrap_or(0) / 1024;
    let upper = cfg
        .e820
        .ram_end_from(HIGH_MEMORY, u64::MAX)
        .map_or(0, |e| e.saturating_sub(HIGH_MEMORY) / 1024);
    put32(&mut b, 4, lower as u32);
    put32(&mut b, 8, upper.min(u64::from(u32::MAX)) as u32);
    // boot_device (offset 12): flag 1 clear, absent.
    let cmdline = add_str(&mut b, cfg.cmdline);
    put32(&mut b, 16, cmdline);
    put32(&mut b, 20, modules.len() as u32);
    put32(&mut b, 24, gpa(mods_off));
    let slots = (mods_off..).step_by(16);
    for ((&(start, end), m), o) in modules.iter().zip(cfg.modules).zip(slots) {
        put32(&mut b, o, start as u32);
        put32(&mut b, o.saturating_add(4), end as u32);
        let s = add_str(&mut b, m.cmdline);
        put32(&mut b, o.saturating_add(8), s);
        // o + 12: reserved, 0.
    }
    put32(&mut b, 44, mmap_len as u32);
    put32(&mut b, 48, gpa(mmap_off));
    for (e, o) in map.iter().zip((mmap_off..).step_by(24)) {
        // size (of the rest: 20), base_addr, length, type.
        put32(&mut b, o, 20);
        put(&mut b, o.saturating_add(4), &e.to_bytes());
    }
    let name = add_str(&mut b, LOADER_NAME);
    put32(&mut b, 64, name);
    for (d, o) in super::setup::GDT.iter().zip((gdt_off..).step_by(8)) {
        put(&mut b, o, &d.to_le_bytes());
    }
    b
}

/// Loads a Multiboot image, its modules and the information structure.
/// The caller enters at [`MultibootSetup::entry`] in 32-bit protected mode
/// (§3.2): EAX = [`BOOTLOADER_MAGIC`], EBX = [`MultibootSetup::info_gpa`],
/// CS a flat 32-bit execute/read segment, DS/ES/FS/GS/SS flat read/write
/// data, CR0.PG = 0, CR0.PE = 1, EFLAGS.IF = 0 and VM = 0, A20 enabled.
pub fn load(
    image: &[u8],
    mem: &impl GuestRam,
    cfg: &MultibootConfig,
) -> Result<MultibootSetup, MbError> {
    let (_hdr, layout) = layout(image)?;
    let map = cfg.e820;
    for p in &layout.pieces {
        let (start, end) = (p.addr, p.end());
        if start < IMAGE_FLOOR {
            return Err(MbError::OverlapsLoaderArea { start, end });
        }
        if !map.is_ram(start, p.mem_size) {
            return Err(MbError::NotRam { start, end });
        }
    }
    let lo = layout.pieces.iter().map(|p| p.addr).min().unwrap_or(0);
    let hi = layout.pieces.iter().map(Piece::end).max().unwrap_or(0);

    // Modules: page-aligned (flag 0 or not), after the image if they fit,
    // else anywhere from 1 MiB up.
    let mut avoid: Vec<(u64, u64)> = layout.pieces.iter().map(|p| (p.addr, p.end())).collect();
    let mut modules = Vec::with_capacity(cfg.modules.len());
    for (index, m) in cfg.modules.iter().enumerate() {
        let size = m.data.len() as u64;
        let at = place_low(map, size, hi, &avoid)
            .or_else(|| place_low(map, size, HIGH_MEMORY, &avoid))
            .ok_or(MbError::ModuleDoesNotFit { index, size })?;
        // place_low checked at + size.
        avoid.push((at, at.saturating_add(size.max(1))));
        modules.push((at, at.saturating_add(size)));
    }
    // The information block: at INFO_GPA if free, else the lowest free
    // page-aligned RAM (a low image, e.g. at 0x8000, may sit on 0x9000).
    let (.., gdt_off, need) = info_layout(cfg);
    if need as u64 > INFO_ROOM {
        return Err(MbError::InfoTooLarge {
            need,
            room: INFO_ROOM,
        });
    }
    let size = need as u64;
    let clear = |a: u64| {
        !avoid
            .iter()
            .any(|&(s, t)| a < t && s < a.saturating_add(size))
    };
    let info_gpa = if map.is_ram(INFO_GPA, size) && clear(INFO_GPA) {
        INFO_GPA
    } else {
        place_low(map, size, IMAGE_FLOOR, &avoid).ok_or(MbError::InfoDoesNotFit { size })?
    };
    let info = build_info(cfg, &modules, info_gpa);

    for p in &layout.pieces {
        let not_ram = MbError::NotRam {
            start: p.addr,
            end: p.end(),
        };
        mem.write(p.addr, p.data).ok_or(not_ram.clone())?;
        // data.len() <= mem_size (the layout's pieces).
        let file_len = p.data.len() as u64;
        mem.zero(
            p.addr.saturating_add(file_len),
            p.mem_size.saturating_sub(file_len),
        )
        .ok_or(not_ram)?;
    }
    for (m, &(start, end)) in cfg.modules.iter().zip(&modules) {
        mem.write(start, m.data)
            .ok_or(MbError::NotRam { start, end })?;
    }
    mem.write(info_gpa, &info).ok_or(MbError::NotRam {
        start: info_gpa,
        end: info_gpa.saturating_add(info.len() as u64),
    })?;
    Ok(MultibootSetup {
        entry: layout.entry,
        info_gpa,
        gdt_gpa: info_gpa.saturating_add(gdt_off as u64),
        eax: BOOTLOADER_MAGIC,
        image_span: (lo, hi),
        modules,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::e820::{self, fake::FakeRam};
    use super::*;
    use crate::layout as memory;
    use alloc::string::ToString;

    const MIB: u64 = 1 << 20;

    fn header(flags: u32, aout: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        let sum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
        h.extend_from_slice(&sum.to_le_bytes());
        if let Some(a) = aout {
            for v in a {
                h.extend_from_slice(&v.to_le_bytes());
            }
        }
        h
    }

    /// A flat a.out-kludge image: 16 bytes of padding, the header at 16,
    /// code after it; loaded at 1 MiB with `bss` bytes of BSS.
    pub(crate) fn aout_image(code_len: usize, bss: u32) -> Vec<u8> {
        let load = 0x10_0000u32;
        let total = 16 + 32 + code_len;
        let mut img = vec![0x90u8; 16];
        img.extend(header(
            0x0001_0003,
            Some([
                load + 16,
                load,
                load + total as u32,
                load + total as u32 + bss,
                load + 48,
            ]),
        ));
        img.extend((0..code_len).map(|i| (i % 253) as u8));
        img
    }

    fn map_for(ram: u64) -> E820Map {
        e820::standard(
            &memory::layout(ram),
            &[(0xE_0000, 0x2_0000, E820Type::Acpi)],
        )
        .unwrap()
    }

    /// An ELF32 (or ELF64) executable; `segs` are (paddr, vaddr, filesz,
    /// memsz), their file bytes follow the headers in order; the Multiboot
    /// header begins the first segment's bytes.
    fn elf(is64: bool, entry: u64, segs: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let (eh, ph) = if is64 { (64usize, 56usize) } else { (52, 32) };
        let mut b = vec![0u8; eh + ph * segs.len()];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = if is64 { 2 } else { 1 };
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        let machine = if is64 { EM_X86_64 } else { EM_386 };
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        if is64 {
            b[24..32].copy_from_slice(&entry.to_le_bytes());
            b[32..40].copy_from_slice(&(eh as u64).to_le_bytes());
            b[54..56].copy_from_slice(&(ph as u16).to_le_bytes());
            b[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        } else {
            b[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            b[28..32].copy_from_slice(&(eh as u32).to_le_bytes());
            b[42..44].copy_from_slice(&(ph as u16).to_le_bytes());
            b[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        }
        let mut off = b.len().next_multiple_of(16);
        for (i, &(paddr, vaddr, filesz, memsz)) in segs.iter().enumerate() {
            let p = eh + ph * i;
            let h = &mut b[p..p + ph];
            h[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            if is64 {
                h[4..8].copy_from_slice(&5u32.to_le_bytes());
                h[8..16].copy_from_slice(&(off as u64).to_le_bytes());
                h[16..24].copy_from_slice(&vaddr.to_le_bytes());
                h[24..32].copy_from_slice(&paddr.to_le_bytes());
                h[32..40].copy_from_slice(&filesz.to_le_bytes());
                h[40..48].copy_from_slice(&memsz.to_le_bytes());
            } else {
                h[4..8].copy_from_slice(&(off as u32).to_le_bytes());
                h[8..12].copy_from_slice(&(vaddr as u32).to_le_bytes());
                h[12..16].copy_from_slice(&(paddr as u32).to_le_bytes());
                h[16..20].copy_from_slice(&(filesz as u32).to_le_bytes());
                h[20..24].copy_from_slice(&(memsz as u32).to_le_bytes());
                h[24..28].copy_from_slice(&5u32.to_le_bytes());
            }
            off += filesz as usize;
        }
        let mut data_off = b.len().next_multiple_of(16);
        b.resize(off, 0);
        for (i, &(_, _, filesz, _)) in segs.iter().enumerate() {
            for k in 0..filesz as usize {
                b[data_off + k] = (i * 16 + k % 16) as u8 | 0x80;
            }
            if i == 0 {
                let h = header(0x0000_0003, None);
                b[data_off..data_off + h.len()].copy_from_slice(&h);
            }
            data_off += filesz as usize;
        }
        b
    }

    fn cfg<'a>(
        map: &'a E820Map,
        cmdline: &'a str,
        modules: &'a [Module<'a>],
    ) -> MultibootConfig<'a> {
        MultibootConfig {
            cmdline,
            modules,
            e820: map,
        }
    }

    #[test]
    fn aout_kludge_image_with_modules_and_info() {
        let img = aout_image(0x1000, 0x2345);
        let ram = FakeRam::new(64 * MIB);
        let map = map_for(64 * MIB);
        // Pretend a previous run left junk where the BSS goes.
        ram.write(0x10_1030, &[0xEE; 16]).unwrap();
        let m0 = vec![0xA1u8; 0x1800];
        let m1 = vec![0xB2u8; 10];
        let mods = [
            Module {
                data: &m0,
                cmdline: "initrd.img",
            },
            Module {
                data: &m1,
                cmdline: "",
            },
        ];
        let s = load(&img, &ram, &cfg(&map, "root=/dev/x quiet", &mods)).unwrap();
        let end = 0x10_0000 + img.len() as u64;
        assert_eq!(s.entry, 0x10_0030);
        assert_eq!(s.eax, 0x2BAD_B002);
        assert_eq!(s.info_gpa, INFO_GPA);
        assert_eq!(s.image_span, (0x10_0000, end + 0x2345));
        assert_eq!(ram.read(0x10_0000, img.len()), img);
        assert_eq!(ram.read(end, 0x2345), vec![0; 0x2345]);
        // Modules page-aligned after the BSS.
        let m0_at = (end + 0x2345).next_multiple_of(4096);
        assert_eq!(
            s.modules,
            vec![
                (m0_at, m0_at + 0x1800),
                (m0_at + 0x2000, m0_at + 0x2000 + 10)
            ]
        );
        assert_eq!(ram.read(m0_at, 0x1800), m0);
        assert_eq!(ram.read(m0_at + 0x2000, 10), m1);

        let i = INFO_GPA;
        assert_eq!(ram.u32(i), 0x24D);
        assert_eq!(ram.u32(i + 4), 639);
        assert_eq!(ram.u32(i + 8), 63 * 1024);
        assert_eq!(ram.u32(i + 12), 0);
        assert_eq!(ram.cstr(ram.u32(i + 16).into()), b"root=/dev/x quiet");
        assert_eq!(ram.u32(i + 20), 2);
        let mods_addr = u64::from(ram.u32(i + 24));
        for (k, (start, end)) in s.modules.iter().enumerate() {
            let e = mods_addr + 16 * k as u64;
            assert_eq!(u64::from(ram.u32(e)), *start);
            assert_eq!(u64::from(ram.u32(e + 4)), *end);
            assert_eq!(ram.u32(e + 12), 0);
        }
        assert_eq!(ram.cstr(ram.u32(mods_addr + 8).into()), b"initrd.img");
        assert_eq!(ram.cstr(ram.u32(mods_addr + 24).into()), b"");
        assert_eq!(ram.cstr(ram.u32(i + 64).into()), b"ferrovisor");
        // The memory map mirrors the E820 map, 24 bytes an entry.
        let (len, addr) = (ram.u32(i + 44), u64::from(ram.u32(i + 48)));
        assert_eq!(len as usize, 24 * map.len());
        for (k, e) in map.entries().iter().enumerate() {
            let a = addr + 24 * k as u64;
            assert_eq!(ram.u32(a), 20);
            assert_eq!(ram.read(a + 4, 20), e.to_bytes());
        }
    }

    #[test]
    fn aout_load_end_zero_means_whole_file_and_no_bss() {
        let mut img = aout_image(0x100, 0);
        // load_end_addr = 0, bss_end_addr = 0.
        img[16 + 20..16 + 28].fill(0);
        let (_, l) = layout(&img).unwrap();
        assert_eq!(l.pieces.len(), 1);
        assert_eq!(l.pieces[0].data.len(), img.len());
        assert_eq!(l.pieces[0].mem_size, img.len() as u64);
    }

    #[test]
    fn elf32_segments_by_paddr_and_entry_translation() {
        // A higher-half image: linked at 0xC010_0000, loaded at 1 MiB.
        let segs = [
            (0x10_0000, 0xC010_0000, 0x80, 0x80),
            (0x20_0000, 0xC020_0000, 0x20, 0x1000),
        ];
        let img = elf(false, 0xC010_0040, &segs);
        let ram = FakeRam::new(16 * MIB);
        let map = map_for(16 * MIB);
        ram.write(0x20_0020, &[0xFF; 8]).unwrap();
        let s = load(&img, &ram, &cfg(&map, "", &[])).unwrap();
        assert_eq!(s.entry, 0x10_0040);
        assert_eq!(s.image_span, (0x10_0000, 0x20_1000));
        assert_eq!(ram.read(0x10_0000, 4), HEADER_MAGIC.to_le_bytes());
        assert_eq!(ram.read(0x20_0000, 2), [0x90, 0x91]);
        assert_eq!(ram.read(0x20_0020, 8), [0; 8]);
        assert!(s.modules.is_empty());
        assert_eq!(ram.u32(INFO_GPA + 20), 0);
        // A physical entry outside every virtual range is taken as is.
        let img = elf(false, 0x10_0010, &segs);
        assert_eq!(layout(&img).unwrap().1.entry, 0x10_0010);
    }

    #[test]
    fn elf64_image() {
        let img = elf(true, 0x10_0020, &[(0x10_0000, 0x10_0000, 0x40, 0x40)]);
        let ram = FakeRam::new(16 * MIB);
        let map = map_for(16 * MIB);
        let s = load(&img, &ram, &cfg(&map, "x", &[])).unwrap();
        assert_eq!(s.entry, 0x10_0020);
    }

    #[test]
    fn header_errors() {
        assert_eq!(find_header(&[0u8; 9000]), Err(MbError::NoHeader));
        // Beyond the first 8192 bytes does not count.
        let mut img = vec![0u8; 8192];
        img.extend(header(3, None));
        assert_eq!(find_header(&img), Err(MbError::NoHeader));
        // Unaligned does not count.
        let mut img = vec![0u8; 2];
        img.extend(header(3, None));
        assert_eq!(find_header(&img), Err(MbError::NoHeader));
        let mut h = header(3, None);
        h[8] = h[8].wrapping_add(1);
        let e = find_header(&h).unwrap_err();
        assert_eq!(e, MbError::BadChecksum { offset: 0, sum: 1 });
        assert!(e
            .to_string()
            .starts_with("multiboot: header checksum wrong"));
        // A stray magic with a bad checksum before the real header.
        let mut img = HEADER_MAGIC.to_le_bytes().to_vec();
        img.extend([0; 8]);
        img.extend(header(3, None));
        assert_eq!(find_header(&img).unwrap().offset, 12);
        assert_eq!(
            find_header(&header(3, None)[..8]),
            Err(MbError::HeaderTruncated {
                offset: 0,
                need: 12
            })
        );
        assert_eq!(
            find_header(&header(0x1_0000, None)),
            Err(MbError::HeaderTruncated {
                offset: 0,
                need: 32
            })
        );
        assert_eq!(
            find_header(&header(4, None)),
            Err(MbError::VideoModeRequired)
        );
        let e = find_header(&header(0x8009, None)).unwrap_err();
        assert_eq!(e, MbError::UnsupportedFlags { bits: 0x8008 });
        assert_eq!(
            e.to_string(),
            "multiboot: header requires unsupported features (flag bits 0x8008)"
        );
        // Optional bits 17-31 are ignored.
        assert_eq!(
            find_header(&header(0xFFFE_0003, None)).unwrap().flags,
            0xFFFE_0003
        );
    }

    #[test]
    fn aout_address_errors() {
        let base = aout_image(0x100, 0x10);
        let set = |i: usize, v: u32| {
            let mut b = base.clone();
            let o = 16 + 12 + 4 * i;
            b[o..o + 4].copy_from_slice(&v.to_le_bytes());
            // Flags unchanged, so the checksum stays valid.
            layout(&b).map(|_| ())
        };
        assert_eq!(
            set(1, 0x10_0020),
            Err(MbError::LoadAfterHeader {
                load_addr: 0x10_0020,
                header_addr: 0x10_0010
            })
        );
        assert_eq!(
            set(0, 0x10_0020),
            Err(MbError::LoadBeforeFile {
                header_addr: 0x10_0020,
                load_addr: 0x10_0000,
                offset: 16
            })
        );
        assert_eq!(
            set(2, 0xF_0000),
            Err(MbError::LoadEndBeforeLoad {
                load_addr: 0x10_0000,
                load_end_addr: 0xF_0000
            })
        );
        let need = base.len() as u64 + 1;
        assert_eq!(
            set(2, 0x10_0000 + need as u32),
            Err(MbError::AoutTruncated {
                need,
                have: base.len() as u64
            })
        );
        assert_eq!(
            set(3, 0x10_0001),
            Err(MbError::BssEndBeforeLoadEnd {
                load_end_addr: 0x10_0000 + base.len() as u64,
                bss_end_addr: 0x10_0001
            })
        );
        assert_eq!(
            set(4, 0x20_0000),
            Err(MbError::EntryOutsideImage { entry: 0x20_0000 })
        );
    }

    #[test]
    fn elf_errors() {
        let good = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x40, 0x40)]);
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            layout(&b).map(|_| ()).unwrap_err()
        };
        assert_eq!(bad(&|b| b[0] = b'X'), MbError::NotElf { magic: *b"XELF" });
        assert_eq!(
            bad(&|b| b[4] = 3),
            MbError::Elf(ElfDefect::BadClass { class: 3 })
        );
        assert_eq!(
            bad(&|b| b[5] = 2),
            MbError::Elf(ElfDefect::BadData { data: 2 })
        );
        assert_eq!(
            bad(&|b| b[18] = 62),
            MbError::Elf(ElfDefect::BadMachine { machine: 62 })
        );
        assert_eq!(
            bad(&|b| b[16] = 3),
            MbError::Elf(ElfDefect::NotExecutable { e_type: 3 })
        );
        assert_eq!(
            bad(&|b| b[42] = 16),
            MbError::Elf(ElfDefect::BadPhentsize { size: 16 })
        );
        assert_eq!(
            bad(&|b| b[44] = 200),
            MbError::Elf(ElfDefect::ProgramHeadersTruncated {
                offset: 52,
                count: 200
            })
        );
        // p_filesz past the end of the file.
        assert_eq!(
            bad(&|b| {
                b[52 + 17] = 0xF0;
                b[52 + 21] = 0xF0;
            }),
            MbError::Elf(ElfDefect::SegmentTruncated { index: 0 })
        );
        // p_memsz < p_filesz.
        assert_eq!(
            bad(&|b| b[52 + 20] = 0x10),
            MbError::Elf(ElfDefect::FileSizeExceedsMemSize { index: 0 })
        );
        // p_paddr near 4 GiB.
        assert_eq!(
            bad(&|b| b[52 + 12..52 + 16].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes())),
            MbError::Elf(ElfDefect::SegmentAbove4G {
                index: 0,
                end: 0x1_0000_0030
            })
        );
        // Not PT_LOAD.
        assert_eq!(bad(&|b| b[52] = 2), MbError::Elf(ElfDefect::NoLoadSegments));
        let e = layout(&elf(
            false,
            0x10_0000,
            &[
                (0x10_0000, 0x10_0000, 0x40, 0x1000),
                (0x10_0800, 0x10_0800, 0x10, 0x10),
            ],
        ))
        .unwrap_err();
        assert_eq!(e, MbError::Elf(ElfDefect::Overlap { index: 1, other: 0 }));
        assert_eq!(
            e.to_string(),
            "multiboot: ELF: segment 1 overlaps segment 0"
        );
        assert_eq!(
            layout(&elf(
                false,
                0x30_0000,
                &[(0x10_0000, 0x10_0000, 0x40, 0x40)]
            ))
            .unwrap_err(),
            MbError::EntryOutsideImage { entry: 0x30_0000 }
        );
        assert_eq!(layout(&good[..40]).unwrap_err(), MbError::NoHeader);
    }

    #[test]
    fn placement_errors() {
        let map = map_for(4 * MIB);
        let ram = FakeRam::new(4 * MIB);
        // Beyond RAM.
        let img = elf(false, 0x30_0000, &[(0x30_0000, 0x30_0000, 0x40, 0x20_0000)]);
        assert_eq!(
            load(&img, &ram, &cfg(&map, "", &[])).unwrap_err(),
            MbError::NotRam {
                start: 0x30_0000,
                end: 0x50_0000
            }
        );
        // Into the legacy hole.
        let img = elf(false, 0xF_0000, &[(0xF_0000, 0xF_0000, 0x40, 0x40)]);
        assert_eq!(
            load(&img, &ram, &cfg(&map, "", &[])).unwrap_err(),
            MbError::NotRam {
                start: 0xF_0000,
                end: 0xF_0040
            }
        );
        // Onto the BIOS data area.
        let img = elf(false, 0x4F0, &[(0x4F0, 0x4F0, 0x40, 0x40)]);
        let e = load(&img, &ram, &cfg(&map, "", &[])).unwrap_err();
        assert_eq!(
            e,
            MbError::OverlapsLoaderArea {
                start: 0x4F0,
                end: 0x530
            }
        );
        assert!(e.to_string().contains("BIOS data area below 0x500"), "{e}");
        // A module larger than what is left.
        let img = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x40, 0x40)]);
        let big = vec![0u8; 3 * MIB as usize];
        let mods = [Module {
            data: &big,
            cmdline: "big",
        }];
        let e = load(&img, &ram, &cfg(&map, "", &mods)).unwrap_err();
        assert_eq!(
            e,
            MbError::ModuleDoesNotFit {
                index: 0,
                size: 3 * MIB
            }
        );
        // Strings that overflow the information area.
        let long = "y".repeat(0x7000);
        let e = load(&img, &ram, &cfg(&map, &long, &[])).unwrap_err();
        assert!(
            matches!(e, MbError::InfoTooLarge { room: 0x7000, .. }),
            "{e}"
        );
    }

    /// Multiboot images may load below 64 KiB (§3.1.3 puts no floor on
    /// load_addr): the information block and GDT go around them.
    #[test]
    fn low_image_keeps_its_bytes_and_info_goes_elsewhere() {
        let map = map_for(16 * MIB);
        // a.out kludge image at 0x8000 with BSS up to 0x12000: covers the
        // usual information block at 0x9000.
        let load_at = 0x8000u32;
        let mut img = vec![0x90u8; 16];
        img.extend(header(
            0x0001_0003,
            Some([load_at + 16, load_at, 0, 0x1_2000, load_at + 48]),
        ));
        img.extend((0..0x2000).map(|i| (i % 249) as u8));
        let m = vec![0x77u8; 0x3000];
        let mods = [Module {
            data: &m,
            cmdline: "mod",
        }];
        let ram = FakeRam::new(16 * MIB);
        let s = load(&img, &ram, &cfg(&map, "low", &mods)).unwrap();
        assert_eq!(s.entry, 0x8030);
        assert_eq!(s.image_span, (0x8000, 0x1_2000));
        assert_eq!(ram.read(0x8000, img.len()), img);
        assert_eq!(ram.read(0x8000 + img.len() as u64, 16), vec![0; 16]);
        // The module right after the image, the block in the free page
        // below it.
        assert_eq!(s.modules, vec![(0x1_2000, 0x1_5000)]);
        assert_eq!(s.info_gpa, 0x1000);
        let i = s.info_gpa;
        assert_eq!(ram.u32(i + 4), 639);
        assert_eq!(ram.cstr(ram.u32(i + 16).into()), b"low");
        assert_eq!(u64::from(ram.u32(i + 24)) / PAGE, 1);
        let mmap = u64::from(ram.u32(i + 48));
        assert!((0x1000..0x8000).contains(&mmap));
        assert_eq!(ram.read(mmap + 4, 20), map.entries()[0].to_bytes());
        // The GDT in the block, 8-aligned, clear of the image.
        assert_eq!(s.gdt_gpa % 8, 0);
        assert!(s.gdt_gpa > i && s.gdt_gpa + 32 <= 0x8000);
        for (k, d) in crate::setup::GDT.iter().enumerate() {
            assert_eq!(ram.u64(s.gdt_gpa + 8 * k as u64), *d);
        }

        // An image from 0x500 to 0xA000 (all of the low pages but none in
        // [0x500, 0x1000)) pushes the block past itself.
        let img = elf(false, 0x500, &[(0x500, 0x500, 0x40, 0x9B00)]);
        let ram = FakeRam::new(16 * MIB);
        let s = load(&img, &ram, &cfg(&map, "", &[])).unwrap();
        assert_eq!(s.info_gpa, 0xA000);
        assert_eq!(ram.read(0x500, 4), HEADER_MAGIC.to_le_bytes());
        // A high image leaves the block at INFO_GPA.
        let img = elf(false, 0x10_0000, &[(0x10_0000, 0x10_0000, 0x40, 0x40)]);
        let s = load(&img, &FakeRam::new(16 * MIB), &cfg(&map, "", &[])).unwrap();
        assert_eq!(s.info_gpa, INFO_GPA);
        assert_eq!(s.gdt_gpa % 8, 0);
    }

    #[test]
    fn module_goes_below_a_high_image_when_nothing_fits_above() {
        let map = map_for(4 * MIB);
        let ram = FakeRam::new(4 * MIB);
        let img = elf(false, 0x30_0000, &[(0x30_0000, 0x30_0000, 0x40, 0xF_F000)]);
        let m = vec![1u8; 0x2000];
        let mods = [Module {
            data: &m,
            cmdline: "m",
        }];
        let s = load(&img, &ram, &cfg(&map, "", &mods)).unwrap();
        assert_eq!(s.modules, vec![(0x10_0000, 0x10_2000)]);
    }
}
