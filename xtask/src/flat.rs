//! Flat binary images of test guests that are not loaded as ELF.
//!
//! The guest workspace links every guest as a static ELF64 at 1 MiB. Some guests are loaded
//! another way: `mbkernel` (and `mblow`, the same linked at 0x8000) is a Multiboot kernel whose header must sit at the start of a flat
//! image, and `realmode` is a raw 16-bit binary loaded at 0x7C00. For those, xtask writes
//! `<name>.bin` next to the ELF: the bytes of every `PT_LOAD` segment placed at its physical
//! address, relative to the lowest one, with zeros in the gaps and nothing for memory-only
//! (bss) tails — what `objcopy -O binary` gives, without needing the tool.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Guests whose ELF is also written as a flat `<name>.bin`.
pub const FLAT_GUESTS: &[&str] = &["mbkernel", "mblow", "realmode"];

/// Largest flat image accepted (the test guests are a few KiB; this catches a bad link).
const MAX_FLAT: u64 = 16 << 20;

const PT_LOAD: u32 = 1;

/// Writes `<dir>/<name>.bin` for each of [`FLAT_GUESTS`] whose ELF `<dir>/<name>` exists, and
/// returns the paths written.
pub fn write_flat_guests(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for name in FLAT_GUESTS {
        let elf_path = dir.join(name);
        if !elf_path.is_file() {
            continue;
        }
        let elf = fs::read(&elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
        let flat = elf_to_flat(&elf)
            .with_context(|| format!("making a flat image of {}", elf_path.display()))?;
        let out = dir.join(format!("{name}.bin"));
        if fs::read(&out).ok().as_deref() != Some(flat.as_slice()) {
            fs::write(&out, &flat).with_context(|| format!("writing {}", out.display()))?;
        }
        written.push(out);
    }
    Ok(written)
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The file bytes of a little-endian ELF64's `PT_LOAD` segments laid out by physical address,
/// starting at the lowest segment that has file bytes.
pub fn elf_to_flat(elf: &[u8]) -> Result<Vec<u8>> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if elf[4] != 2 || elf[5] != 1 {
        bail!("not a little-endian ELF64 file");
    }
    let truncated = || anyhow::anyhow!("truncated ELF file");
    let phoff = u64_at(elf, 32).ok_or_else(truncated)?;
    let phentsize = u16_at(elf, 54).ok_or_else(truncated)?;
    let phnum = u16_at(elf, 56).ok_or_else(truncated)?;
    if phentsize < 56 {
        bail!("program header entries of {phentsize} bytes are too small");
    }

    // (physical address, file offset, file size) of each loadable segment with file bytes.
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let ph = usize::try_from(phoff + i * u64::from(phentsize)).map_err(|_| truncated())?;
        if u32_at(elf, ph).ok_or_else(truncated)? != PT_LOAD {
            continue;
        }
        let offset = u64_at(elf, ph + 8).ok_or_else(truncated)?;
        let paddr = u64_at(elf, ph + 24).ok_or_else(truncated)?;
        let filesz = u64_at(elf, ph + 32).ok_or_else(truncated)?;
        if filesz == 0 {
            continue;
        }
        if offset
            .checked_add(filesz)
            .is_none_or(|end| end > elf.len() as u64)
        {
            bail!("segment {i} runs past the end of the file");
        }
        segments.push((paddr, offset, filesz));
    }
    let Some(base) = segments.iter().map(|s| s.0).min() else {
        bail!("no loadable segment with file contents");
    };
    let end = segments.iter().map(|s| s.0 + s.2).max().unwrap_or(base);
    if end - base > MAX_FLAT {
        bail!(
            "the segments span {:#x}..{end:#x}, more than {} MiB",
            base,
            MAX_FLAT >> 20
        );
    }
    let mut flat = vec![0u8; (end - base) as usize];
    for (paddr, offset, filesz) in segments {
        let at = (paddr - base) as usize;
        let from = offset as usize;
        flat[at..at + filesz as usize].copy_from_slice(&elf[from..from + filesz as usize]);
    }
    Ok(flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 with the given (paddr, bytes, memsz) PT_LOAD segments.
    fn elf(segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * segments.len()];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, (paddr, bytes, memsz)) in segments.iter().enumerate() {
            let offset = b.len() as u64;
            b.extend_from_slice(bytes);
            let ph = 64 + 56 * i;
            b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            b[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            b[ph + 16..ph + 24].copy_from_slice(&(paddr + 0x1000).to_le_bytes()); // vaddr
            b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            b[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        b
    }

    #[test]
    fn lays_segments_out_by_physical_address() {
        let image = elf(&[
            (0x10_2000, b"data", 4),
            (0x10_0000, b"text", 4),
            (0x10_3000, b"", 0x1_0000), // bss: no bytes in the image
        ]);
        let flat = elf_to_flat(&image).unwrap();
        assert_eq!(flat.len(), 0x2004);
        assert_eq!(&flat[..4], b"text");
        assert!(flat[4..0x2000].iter().all(|&b| b == 0));
        assert_eq!(&flat[0x2000..], b"data");
    }

    #[test]
    fn refuses_what_is_not_a_usable_elf64() {
        assert!(
            elf_to_flat(b"MZ not an ELF at all, but long enough to have a header.........")
                .is_err()
        );
        assert!(elf_to_flat(&elf(&[(0x10_0000, b"", 0x100)])).is_err());
        let mut cut = elf(&[(0x10_0000, b"text", 4)]);
        cut.truncate(cut.len() - 2);
        assert!(elf_to_flat(&cut).is_err());
        let huge = elf(&[(0x10_0000, b"a", 1), (0x10_0000 + (64 << 20), b"b", 1)]);
        assert!(elf_to_flat(&huge).is_err());
    }
}
