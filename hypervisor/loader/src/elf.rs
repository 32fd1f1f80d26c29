//! ELF64 guest images: validation and the list of segments to load.
//!
//! Field offsets and constants are from the System V ABI "ELF-64 Object
//! File Format" (header §3, program header §6). Segments are loaded at their
//! physical address (`p_paddr`); the entry point (`e_entry`, a virtual
//! address) must lie in an executable loaded segment and is also given
//! translated to its physical address.

use crate::bytes::{bytes_at, u16_at, u32_at, u64_at};
use alloc::vec::Vec;
use core::fmt;

/// ELF64 file header size.
const EHDR_SIZE: usize = 64;
/// ELF64 program header size.
const PHDR_SIZE: usize = 56;
/// e_machine for x86-64 (EM_X86_64).
pub const EM_X86_64: u16 = 62;
/// e_type for an executable (ET_EXEC).
pub const ET_EXEC: u16 = 2;
/// p_type of a loadable segment.
const PT_LOAD: u32 = 1;
/// e_phnum escape meaning "count is in section 0" (extended numbering).
const PN_XNUM: u16 = 0xFFFF;

bitflags::bitflags! {
    /// p_flags permission bits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SegmentFlags: u32 {
        const X = 1;
        const W = 2;
        const R = 4;
    }
}

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index in the program header table (as `readelf -l` numbers them).
    pub index: usize,
    /// Physical load address (p_paddr).
    pub paddr: u64,
    /// Virtual address (p_vaddr), used to place the entry point.
    pub vaddr: u64,
    /// Offset of the segment's bytes in the file.
    pub file_offset: usize,
    /// Bytes copied from the file.
    pub file_size: u64,
    /// Bytes occupied in memory; the tail past `file_size` is zeroed.
    pub mem_size: u64,
    /// Permissions.
    pub flags: SegmentFlags,
}

impl Segment {
    /// The file bytes of this segment (bounds were checked by [`parse`]).
    pub fn data<'a>(&self, image: &'a [u8]) -> &'a [u8] {
        image
            .get(self.file_offset..)
            .and_then(|rest| rest.get(..self.file_size as usize))
            .unwrap_or_default()
    }
}

/// A validated ELF64 executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    /// e_entry as written (a virtual address).
    pub entry: u64,
    /// The entry point translated through its segment to a physical address.
    pub entry_paddr: u64,
    /// PT_LOAD segments with a non-zero memory size, in file order.
    pub segments: Vec<Segment>,
}

/// What is wrong with an ELF image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the 64-byte ELF64 header.
    HeaderTruncated { len: usize },
    /// e_ident[0..4] is not "\x7fELF".
    BadMagic { found: [u8; 4] },
    /// e_ident[EI_CLASS] is not ELFCLASS64 (2).
    NotElf64 { class: u8 },
    /// e_ident[EI_DATA] is not ELFDATA2LSB (1).
    NotLittleEndian { data: u8 },
    /// e_ident[EI_VERSION] or e_version is not EV_CURRENT (1).
    BadVersion { version: u32 },
    /// e_machine is not EM_X86_64.
    WrongMachine { machine: u16 },
    /// e_type is not ET_EXEC (position-independent images are not loaded).
    NotExecutable { e_type: u16 },
    /// e_phentsize is smaller than an ELF64 program header.
    BadPhentsize { size: u16 },
    /// e_phnum uses extended numbering (PN_XNUM), which is not supported.
    TooManyProgramHeaders,
    /// The program header table runs past the end of the file.
    ProgramHeadersTruncated { offset: u64, count: u16, len: usize },
    /// A segment's file bytes run past the end of the file.
    SegmentTruncated {
        index: usize,
        offset: u64,
        size: u64,
        len: usize,
    },
    /// p_filesz > p_memsz.
    FileSizeExceedsMemSize {
        index: usize,
        file_size: u64,
        mem_size: u64,
    },
    /// An address or offset computation for segment `index` overflows.
    Overflow { index: usize, what: &'static str },
    /// Two segments share physical memory; `at` is the first shared address.
    Overlap { index: usize, other: usize, at: u64 },
    /// No PT_LOAD segment with a non-zero size.
    NoLoadSegments,
    /// e_entry is not inside any loaded segment.
    EntryOutsideSegments { entry: u64 },
    /// e_entry is inside a segment without the execute flag.
    EntryNotExecutable { entry: u64, index: usize },
    /// A segment starts below the reserved low area of guest RAM.
    SegmentBelowReserved {
        index: usize,
        start: u64,
        reserved_low: u64,
    },
    /// A segment ends past the end of guest RAM.
    SegmentBeyondRam {
        index: usize,
        end: u64,
        ram_size: u64,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::HeaderTruncated { len } => {
                write!(f, "file is {len} bytes, shorter than the 64-byte ELF64 header")
            }
            ElfError::BadMagic { found } => write!(f, "not an ELF file (magic {found:02x?})"),
            ElfError::NotElf64 { class } => write!(f, "not a 64-bit ELF (class {class})"),
            ElfError::NotLittleEndian { data } => {
                write!(f, "not a little-endian ELF (data encoding {data})")
            }
            ElfError::BadVersion { version } => write!(f, "unknown ELF version {version}"),
            ElfError::WrongMachine { machine } => {
                write!(f, "machine {machine} is not x86-64 ({EM_X86_64})")
            }
            ElfError::NotExecutable { e_type } => {
                write!(f, "ELF type {e_type} is not an executable (ET_EXEC)")
            }
            ElfError::BadPhentsize { size } => write!(
                f,
                "program header entry size {size} is smaller than {PHDR_SIZE}"
            ),
            ElfError::TooManyProgramHeaders => {
                f.write_str("extended program header numbering (PN_XNUM) is not supported")
            }
            ElfError::ProgramHeadersTruncated { offset, count, len } => write!(
                f,
                "{count} program headers at offset {offset:#x} run past the end of the {len}-byte file"
            ),
            ElfError::SegmentTruncated {
                index,
                offset,
                size,
                len,
            } => write!(
                f,
                "segment {index}: {size:#x} file bytes at offset {offset:#x} run past the end of the {len}-byte file"
            ),
            ElfError::FileSizeExceedsMemSize {
                index,
                file_size,
                mem_size,
            } => write!(
                f,
                "segment {index}: file size {file_size:#x} exceeds memory size {mem_size:#x}"
            ),
            ElfError::Overflow { index, what } => {
                write!(f, "segment {index}: {what} overflows 64 bits")
            }
            ElfError::Overlap { index, other, at } => {
                write!(f, "segment {index} overlaps segment {other} at {at:#x}")
            }
            ElfError::NoLoadSegments => f.write_str("no loadable (PT_LOAD) segments"),
            ElfError::EntryOutsideSegments { entry } => {
                write!(f, "entry point {entry:#x} is not inside any loaded segment")
            }
            ElfError::EntryNotExecutable { entry, index } => write!(
                f,
                "entry point {entry:#x} is in segment {index}, which is not executable"
            ),
            ElfError::SegmentBelowReserved {
                index,
                start,
                reserved_low,
            } => write!(
                f,
                "segment {index} starts at {start:#x}, below the reserved low {reserved_low:#x} bytes"
            ),
            ElfError::SegmentBeyondRam {
                index,
                end,
                ram_size,
            } => write!(
                f,
                "segment {index} ends at {end:#x}, beyond guest RAM of {ram_size:#x} bytes"
            ),
        }
    }
}

/// Validates an ELF64 x86-64 executable and lists its loadable segments.
pub fn parse(image: &[u8]) -> Result<ElfImage, ElfError> {
    if image.len() < EHDR_SIZE {
        return Err(ElfError::HeaderTruncated { len: image.len() });
    }
    // e_ident (ELF-64 §3, Table 2).
    let magic: [u8; 4] = bytes_at(image, 0);
    if magic != *b"\x7fELF" {
        return Err(ElfError::BadMagic { found: magic });
    }
    let [class, data, ident_version] = bytes_at(image, 4);
    if class != 2 {
        return Err(ElfError::NotElf64 { class });
    }
    if data != 1 {
        return Err(ElfError::NotLittleEndian { data });
    }
    if ident_version != 1 {
        return Err(ElfError::BadVersion {
            version: ident_version.into(),
        });
    }
    let e_type = u16_at(image, 16);
    let machine = u16_at(image, 18);
    let version = u32_at(image, 20);
    let entry = u64_at(image, 24);
    let phoff = u64_at(image, 32);
    let phentsize = u16_at(image, 54);
    let phnum = u16_at(image, 56);
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine { machine });
    }
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable { e_type });
    }
    if version != 1 {
        return Err(ElfError::BadVersion { version });
    }
    if phnum == PN_XNUM {
        return Err(ElfError::TooManyProgramHeaders);
    }
    if phnum > 0 && usize::from(phentsize) < PHDR_SIZE {
        return Err(ElfError::BadPhentsize { size: phentsize });
    }
    // Two u16s: the product fits u64.
    let table_len = u64::from(phentsize).saturating_mul(u64::from(phnum));
    let phdrs_truncated = ElfError::ProgramHeadersTruncated {
        offset: phoff,
        count: phnum,
        len: image.len(),
    };
    match phoff.checked_add(table_len) {
        Some(end) if end <= image.len() as u64 => {}
        _ => return Err(phdrs_truncated),
    }

    let mut segments: Vec<Segment> = Vec::new();
    for index in 0..usize::from(phnum) {
        // Inside the table, which lies inside the image (checked above).
        let ph = (phoff as usize).saturating_add(index.saturating_mul(usize::from(phentsize)));
        let ph = image
            .get(ph..)
            .and_then(|rest| rest.get(..PHDR_SIZE))
            .ok_or(ElfError::ProgramHeadersTruncated {
                offset: phoff,
                count: phnum,
                len: image.len(),
            })?;
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let flags = SegmentFlags::from_bits_truncate(u32_at(ph, 4));
        let offset = u64_at(ph, 8);
        let vaddr = u64_at(ph, 16);
        let paddr = u64_at(ph, 24);
        let file_size = u64_at(ph, 32);
        let mem_size = u64_at(ph, 40);
        if file_size > mem_size {
            return Err(ElfError::FileSizeExceedsMemSize {
                index,
                file_size,
                mem_size,
            });
        }
        let file_end = offset.checked_add(file_size).ok_or(ElfError::Overflow {
            index,
            what: "file offset + file size",
        })?;
        if file_end > image.len() as u64 {
            return Err(ElfError::SegmentTruncated {
                index,
                offset,
                size: file_size,
                len: image.len(),
            });
        }
        // A zero-sized segment loads nothing; leave it out.
        if mem_size == 0 {
            continue;
        }
        let pend = paddr.checked_add(mem_size).ok_or(ElfError::Overflow {
            index,
            what: "physical address + memory size",
        })?;
        vaddr.checked_add(mem_size).ok_or(ElfError::Overflow {
            index,
            what: "virtual address + memory size",
        })?;
        for s in &segments {
            // Overflow was ruled out when `s` was pushed.
            let send = s.paddr.saturating_add(s.mem_size);
            if s.paddr < pend && paddr < send {
                return Err(ElfError::Overlap {
                    index,
                    other: s.index,
                    at: paddr.max(s.paddr),
                });
            }
        }
        segments.push(Segment {
            index,
            paddr,
            vaddr,
            file_offset: offset as usize,
            file_size,
            mem_size,
            flags,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadSegments);
    }
    let seg = segments
        .iter()
        .find(|s| entry.checked_sub(s.vaddr).is_some_and(|o| o < s.mem_size))
        .ok_or(ElfError::EntryOutsideSegments { entry })?;
    if !seg.flags.contains(SegmentFlags::X) {
        return Err(ElfError::EntryNotExecutable {
            entry,
            index: seg.index,
        });
    }
    // Below paddr + mem_size, which doesn't overflow.
    let entry_paddr = seg.paddr.saturating_add(entry.saturating_sub(seg.vaddr));
    Ok(ElfImage {
        entry,
        entry_paddr,
        segments,
    })
}

impl ElfImage {
    /// Checks every segment lies in guest RAM [reserved_low, ram_size).
    pub fn check_fits(&self, ram_size: u64, reserved_low: u64) -> Result<(), ElfError> {
        for s in &self.segments {
            if s.paddr < reserved_low {
                return Err(ElfError::SegmentBelowReserved {
                    index: s.index,
                    start: s.paddr,
                    reserved_low,
                });
            }
            // Overflow was ruled out by `parse`.
            let end = s.paddr.saturating_add(s.mem_size);
            if end > ram_size {
                return Err(ElfError::SegmentBeyondRam {
                    index: s.index,
                    end,
                    ram_size,
                });
            }
        }
        Ok(())
    }

    /// Lowest and highest-exclusive physical address used by the segments.
    pub fn phys_span(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
        let hi = self
            .segments
            .iter()
            .map(|s| s.paddr.saturating_add(s.mem_size))
            .max()
            .unwrap_or(0);
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    /// A program header for the test builder.
    #[derive(Clone, Copy)]
    struct Ph {
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn load(offset: u64, paddr: u64, filesz: u64, memsz: u64, flags: u32) -> Ph {
        Ph {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr: paddr,
            paddr,
            filesz,
            memsz,
        }
    }

    /// Builds an ELF64 file: header, program headers at 64, then zero
    /// padding up to `file_len`.
    fn build(entry: u64, phs: &[Ph], file_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; file_len.max(EHDR_SIZE + PHDR_SIZE * phs.len())];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        for (i, p) in phs.iter().enumerate() {
            let o = EHDR_SIZE + i * PHDR_SIZE;
            b[o..o + 4].copy_from_slice(&p.p_type.to_le_bytes());
            b[o + 4..o + 8].copy_from_slice(&p.flags.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&p.offset.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            b[o + 24..o + 32].copy_from_slice(&p.paddr.to_le_bytes());
            b[o + 32..o + 40].copy_from_slice(&p.filesz.to_le_bytes());
            b[o + 40..o + 48].copy_from_slice(&p.memsz.to_le_bytes());
            b[o + 48..o + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        }
        b
    }

    const RX: u32 = 5;
    const RW: u32 = 6;

    fn good() -> Vec<u8> {
        let mut f = build(
            0x100010,
            &[
                load(0x1000, 0x100000, 0x800, 0x1000, RX),
                Ph {
                    p_type: 4, // PT_NOTE, ignored
                    flags: 4,
                    offset: 0,
                    vaddr: 0,
                    paddr: 0,
                    filesz: 0,
                    memsz: 0,
                },
                load(0x2000, 0x101000, 0x100, 0x3000, RW),
            ],
            0x2100,
        );
        f[0x1000] = 0xF4; // hlt
        f
    }

    #[test]
    fn parses_valid_image() {
        let f = good();
        let img = parse(&f).unwrap();
        assert_eq!(img.entry, 0x100010);
        assert_eq!(img.entry_paddr, 0x100010);
        assert_eq!(img.segments.len(), 2);
        let s0 = img.segments[0];
        assert_eq!(
            (
                s0.index,
                s0.paddr,
                s0.file_offset,
                s0.file_size,
                s0.mem_size
            ),
            (0, 0x100000, 0x1000, 0x800, 0x1000)
        );
        assert_eq!(s0.flags, SegmentFlags::R | SegmentFlags::X);
        assert_eq!(s0.data(&f)[0], 0xF4);
        assert_eq!(img.segments[1].index, 2);
        assert_eq!(img.segments[1].flags, SegmentFlags::R | SegmentFlags::W);
        assert_eq!(img.phys_span(), (0x100000, 0x104000));
    }

    #[test]
    fn entry_translated_through_higher_half_vaddr() {
        let mut ph = load(0x1000, 0x1000000, 0x10, 0x1000, RX);
        ph.vaddr = 0xFFFF_FFFF_8100_0000;
        let f = build(0xFFFF_FFFF_8100_0040, &[ph], 0x1010);
        let img = parse(&f).unwrap();
        assert_eq!(img.entry_paddr, 0x1000040);
        assert_eq!(img.segments[0].paddr, 0x1000000);
    }

    #[test]
    fn header_checks() {
        assert_eq!(parse(&[0; 10]), Err(ElfError::HeaderTruncated { len: 10 }));
        let mut f = good();
        f[0] = b'M';
        assert!(matches!(parse(&f), Err(ElfError::BadMagic { .. })));
        let mut f = good();
        f[4] = 1;
        assert_eq!(parse(&f), Err(ElfError::NotElf64 { class: 1 }));
        let mut f = good();
        f[5] = 2;
        assert_eq!(parse(&f), Err(ElfError::NotLittleEndian { data: 2 }));
        let mut f = good();
        f[18] = 3; // EM_386
        assert_eq!(parse(&f), Err(ElfError::WrongMachine { machine: 3 }));
        let mut f = good();
        f[16] = 3; // ET_DYN
        assert_eq!(parse(&f), Err(ElfError::NotExecutable { e_type: 3 }));
        let mut f = good();
        f[20] = 0;
        assert_eq!(parse(&f), Err(ElfError::BadVersion { version: 0 }));
        let mut f = good();
        f[54] = 32;
        assert_eq!(parse(&f), Err(ElfError::BadPhentsize { size: 32 }));
        let mut f = good();
        f[56..58].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert_eq!(parse(&f), Err(ElfError::TooManyProgramHeaders));
    }

    #[test]
    fn truncated_program_headers() {
        let f = good();
        let cut = &f[..EHDR_SIZE + PHDR_SIZE + 10];
        assert_eq!(
            parse(cut),
            Err(ElfError::ProgramHeadersTruncated {
                offset: 64,
                count: 3,
                len: cut.len()
            })
        );
        let mut f = good();
        f[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse(&f),
            Err(ElfError::ProgramHeadersTruncated { .. })
        ));
    }

    #[test]
    fn truncated_segment_data() {
        let f = good();
        let cut = &f[..0x2080];
        assert_eq!(
            parse(cut),
            Err(ElfError::SegmentTruncated {
                index: 2,
                offset: 0x2000,
                size: 0x100,
                len: 0x2080
            })
        );
    }

    #[test]
    fn file_size_over_mem_size() {
        let f = build(0x1000, &[load(0x100, 0x1000, 0x20, 0x10, RX)], 0x200);
        assert_eq!(
            parse(&f),
            Err(ElfError::FileSizeExceedsMemSize {
                index: 0,
                file_size: 0x20,
                mem_size: 0x10
            })
        );
    }

    #[test]
    fn overlapping_segments() {
        let f = build(
            0x100000,
            &[
                load(0x100, 0x100000, 0, 0x2000, RX),
                load(0x100, 0x200000, 0, 0x1000, RW),
                load(0x100, 0x101000, 0, 0x1000, RW),
            ],
            0x200,
        );
        let e = parse(&f).unwrap_err();
        assert_eq!(
            e,
            ElfError::Overlap {
                index: 2,
                other: 0,
                at: 0x101000
            }
        );
        assert_eq!(e.to_string(), "segment 2 overlaps segment 0 at 0x101000");
        // Adjacent is fine.
        let f = build(
            0x100000,
            &[
                load(0x100, 0x100000, 0, 0x1000, RX),
                load(0x100, 0x101000, 0, 0x1000, RW),
            ],
            0x200,
        );
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn overflow_is_detected() {
        let f = build(
            0x1000,
            &[load(0x100, u64::MAX - 0xFFF, 0, 0x2000, RX)],
            0x200,
        );
        assert_eq!(
            parse(&f),
            Err(ElfError::Overflow {
                index: 0,
                what: "physical address + memory size"
            })
        );
        let f = build(0x1000, &[load(u64::MAX, 0x1000, 2, 0x10, RX)], 0x200);
        assert_eq!(
            parse(&f),
            Err(ElfError::Overflow {
                index: 0,
                what: "file offset + file size"
            })
        );
    }

    #[test]
    fn entry_must_be_in_executable_segment() {
        let f = build(0x5000, &[load(0x100, 0x1000, 0, 0x1000, RX)], 0x200);
        assert_eq!(
            parse(&f),
            Err(ElfError::EntryOutsideSegments { entry: 0x5000 })
        );
        // One past the end is outside.
        let f = build(0x2000, &[load(0x100, 0x1000, 0, 0x1000, RX)], 0x200);
        assert!(matches!(
            parse(&f),
            Err(ElfError::EntryOutsideSegments { .. })
        ));
        let f = build(0x1000, &[load(0x100, 0x1000, 0, 0x1000, RW)], 0x200);
        assert_eq!(
            parse(&f),
            Err(ElfError::EntryNotExecutable {
                entry: 0x1000,
                index: 0
            })
        );
    }

    #[test]
    fn no_load_segments() {
        let f = build(0x1000, &[], 0x100);
        assert_eq!(parse(&f), Err(ElfError::NoLoadSegments));
        // Zero-sized PT_LOAD segments are skipped.
        let f = build(0x1000, &[load(0x100, 0x1000, 0, 0, RX)], 0x200);
        assert_eq!(parse(&f), Err(ElfError::NoLoadSegments));
    }

    #[test]
    fn check_fits_bounds() {
        let img = parse(&good()).unwrap();
        assert_eq!(img.check_fits(0x104000, 0x100000), Ok(()));
        assert_eq!(
            img.check_fits(0x103FFF, 0),
            Err(ElfError::SegmentBeyondRam {
                index: 2,
                end: 0x104000,
                ram_size: 0x103FFF
            })
        );
        let e = img.check_fits(16 << 20, 0x100001).unwrap_err();
        assert_eq!(
            e,
            ElfError::SegmentBelowReserved {
                index: 0,
                start: 0x100000,
                reserved_low: 0x100001
            }
        );
        assert_eq!(
            e.to_string(),
            "segment 0 starts at 0x100000, below the reserved low 0x100001 bytes"
        );
    }

    #[test]
    fn display_messages() {
        assert_eq!(
            ElfError::WrongMachine { machine: 3 }.to_string(),
            "machine 3 is not x86-64 (62)"
        );
        assert_eq!(
            ElfError::EntryOutsideSegments { entry: 0x10 }.to_string(),
            "entry point 0x10 is not inside any loaded segment"
        );
    }
}
