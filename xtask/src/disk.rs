//! A raw GPT disk image with one FAT32 EFI System Partition, ready for `dd` to a USB stick.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use fscommon::{BufStream, StreamSlice};

const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
/// The partition starts 1 MiB into the disk (the usual alignment).
const PARTITION_START_LBA: u64 = MIB / SECTOR;
/// Smallest partition: comfortably above the FAT32 minimum of 65525 clusters of 512 bytes.
const MIN_PARTITION: u64 = 64 * MIB;

/// What [`write_disk_image`] produced.
#[derive(Debug, Clone)]
pub struct DiskImage {
    pub path: PathBuf,
    pub disk_bytes: u64,
    pub partition_first_lba: u64,
    pub partition_bytes: u64,
}

/// Writes `out` as a GPT disk holding one FAT32 EFI System Partition with a copy of every
/// file and directory under `esp_dir`.
pub fn write_disk_image(esp_dir: &Path, out: &Path) -> Result<DiskImage> {
    let files = collect(esp_dir, "")?;
    let content: u64 = files.iter().map(|(_, _, len)| len).sum();
    // Room for FAT tables, directories and cluster slack, rounded up to whole MiB.
    let partition_bytes = (content + content / 4 + 8 * MIB)
        .div_ceil(MIB)
        .saturating_mul(MIB)
        .max(MIN_PARTITION);
    let partition_sectors = partition_bytes / SECTOR;
    // 1 MiB in front (MBR, GPT header and table), 1 MiB behind (backup GPT).
    let disk_bytes = partition_bytes + 2 * MIB;

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.set_len(disk_bytes)?;
    let file = write_gpt(file, disk_bytes, partition_sectors)
        .with_context(|| format!("writing the partition table of {}", out.display()))?;

    let start = PARTITION_START_LBA * SECTOR;
    let slice = StreamSlice::new(file, start, start + partition_bytes)?;
    let mut volume = BufStream::new(slice);
    fatfs::format_volume(
        &mut volume,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_label(*b"FERROVISOR "),
    )
    .context("formatting the EFI System Partition as FAT32")?;
    volume.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new())?;
        copy_tree(&fs.root_dir(), &files)?;
        fs.unmount()?;
    }
    volume.flush()?;
    Ok(DiskImage {
        path: out.to_path_buf(),
        disk_bytes,
        partition_first_lba: PARTITION_START_LBA,
        partition_bytes,
    })
}

/// Creates `files` (from [`collect`]) under `root`.
fn copy_tree<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<'_, T>,
    files: &[(String, Option<PathBuf>, u64)],
) -> Result<()> {
    for (inside, source, _) in files {
        match source {
            None => {
                root.create_dir(inside)
                    .with_context(|| format!("creating directory {inside} in the image"))?;
            }
            Some(source) => {
                let mut dest = root
                    .create_file(inside)
                    .with_context(|| format!("creating {inside} in the image"))?;
                dest.truncate()?;
                let mut src = File::open(source)?;
                io::copy(&mut src, &mut dest)
                    .with_context(|| format!("copying {} into the image", source.display()))?;
                dest.flush()?;
            }
        }
    }
    Ok(())
}

/// Protective MBR plus a GPT with one EFI System Partition at [`PARTITION_START_LBA`].
fn write_gpt(mut file: File, disk_bytes: u64, partition_sectors: u64) -> Result<File> {
    let disk_sectors = disk_bytes / SECTOR;
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut file)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, None)?;
    disk.add_partition_at(
        "EFI System Partition",
        1,
        PARTITION_START_LBA,
        partition_sectors,
        gpt::partition_types::EFI,
        0,
    )
    .map_err(|e| anyhow!("adding the EFI System Partition: {e}"))?;
    let mut file = disk.write()?;
    file.flush()?;
    Ok(file)
}

/// Every directory (source `None`) and file under `dir`, parents before children, as
/// (path inside with `/` separators, source, length), sorted for a reproducible image.
fn collect(dir: &Path, prefix: &str) -> Result<Vec<(String, Option<PathBuf>, u64)>> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for entry in entries {
        let name = entry
            .file_name()
            .into_string()
            .map_err(|name| anyhow!("{}: file name is not UTF-8: {name:?}", dir.display()))?;
        let inside = format!("{prefix}{name}");
        let meta = fs::metadata(entry.path())?;
        if meta.is_dir() {
            out.push((inside.clone(), None, 0));
            out.extend(collect(&entry.path(), &format!("{inside}/"))?);
        } else {
            out.push((inside, Some(entry.path()), meta.len()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn image_has_gpt_esp_with_fat32_copy_of_the_tree() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let esp = dir.join("esp");
        fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
        fs::create_dir_all(esp.join("hv/linux")).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), &big).unwrap();
        fs::write(esp.join("hv/manifest.toml"), b"[hypervisor]\n").unwrap();
        fs::write(esp.join("hv/linux/initrd.gz"), b"").unwrap();

        let img = dir.join("disk.img");
        let made = write_disk_image(&esp, &img).unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), made.disk_bytes);

        let disk = gpt::GptConfig::new().writable(false).open(&img).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts.len(), 1);
        let part = &parts[&1];
        assert_eq!(part.part_type_guid, gpt::partition_types::EFI);
        assert_eq!(part.first_lba, PARTITION_START_LBA);
        assert_eq!(
            (part.last_lba + 1 - part.first_lba) * SECTOR,
            made.partition_bytes
        );

        let file = File::open(&img).unwrap();
        let start = part.first_lba * SECTOR;
        let slice = StreamSlice::new(ReadOnly(file), start, start + made.partition_bytes).unwrap();
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let read = |path: &str| {
            let mut buf = Vec::new();
            fs.root_dir()
                .open_file(path)
                .unwrap()
                .read_to_end(&mut buf)
                .unwrap();
            buf
        };
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), big);
        assert_eq!(read("hv/manifest.toml"), b"[hypervisor]\n");
        assert!(read("hv/linux/initrd.gz").is_empty());
        drop(fs);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A read-only file that refuses writes (fatfs wants `Write` even to read).
    struct ReadOnly(File);
    impl Read for ReadOnly {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for ReadOnly {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("read-only"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Seek for ReadOnly {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.0.seek(pos)
        }
    }
}
