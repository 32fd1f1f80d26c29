//! Laying out an EFI System Partition as a directory.
//!
//! ```text
//! EFI/BOOT/BOOTX64.EFI   the UEFI application (boot.efi)
//! hv/manifest.toml       the manifest
//! hv/<file>              every file the manifest names with image = / initrd =
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::manifest::{self, FileRef};
use crate::{linux, paths};

/// Where the ESP's files come from.
#[derive(Debug, Clone)]
pub struct EspSources {
    /// The UEFI application, copied to `\EFI\BOOT\BOOTX64.EFI`.
    pub boot_efi: PathBuf,
    /// Directory of built test guests, searched for `X` when a manifest names `X.elf`.
    pub guest_dir: PathBuf,
}

impl Default for EspSources {
    /// The build outputs of `cargo xtask build`.
    fn default() -> Self {
        Self {
            boot_efi: paths::boot_efi(),
            guest_dir: paths::guest_bin_dir(),
        }
    }
}

/// A laid-out ESP directory.
#[derive(Debug, Clone)]
pub struct Esp {
    /// The ESP root directory.
    pub dir: PathBuf,
    /// Every file written, as (path inside the ESP with `/` separators, source file).
    pub files: Vec<(String, PathBuf)>,
}

/// Finds the file a manifest line names: next to the manifest first, then among the built test
/// guests (`X.elf` is the guest binary `X`, `X.bin` its flat image), then, for the names in
/// [`linux::ASSET_FILES`] (`vmlinuz`, `initrd.gz`, `rootfs.ext4`, ...), among the Linux guest
/// files `cargo xtask build` prepares in `target/linux/`.
pub fn resolve(file: &FileRef, manifest_dir: &Path, guest_dir: &Path) -> Result<PathBuf> {
    resolve_in(file, manifest_dir, guest_dir, &linux::dir())
}

fn resolve_in(
    file: &FileRef,
    manifest_dir: &Path,
    guest_dir: &Path,
    linux_dir: &Path,
) -> Result<PathBuf> {
    let beside = manifest_dir.join(&file.path);
    if beside.is_file() {
        return Ok(beside);
    }
    let plain = !file.path.contains('/');
    let guest = file
        .path
        .strip_suffix(".elf")
        .filter(|_| plain)
        .map(|name| guest_dir.join(name))
        .or_else(|| (plain && file.path.ends_with(".bin")).then(|| guest_dir.join(&file.path)));
    if let Some(guest) = guest.as_ref().filter(|g| g.is_file()) {
        return Ok(guest.clone());
    }
    let linux_asset = linux::ASSET_FILES
        .contains(&file.path.as_str())
        .then(|| linux_dir.join(&file.path));
    if let Some(asset) = linux_asset.as_ref().filter(|a| a.is_file()) {
        return Ok(asset.clone());
    }
    let mut msg = format!(
        "no file {} next to the manifest ({})",
        file.path,
        beside.display()
    );
    if let Some(guest) = guest {
        msg += &format!(
            " and no built test guest {} ({}); run `cargo xtask build` if it is a test guest",
            guest.file_name().unwrap_or_default().to_string_lossy(),
            guest.display()
        );
    }
    if let Some(asset) = linux_asset {
        msg += &format!(
            " and no Linux guest file {}: `cargo xtask build` prepares it from Debian packages \
             (see its `linux:` lines for why it could not)",
            asset.display()
        );
    }
    Err(anyhow!(msg))
}

/// Lays out an ESP in `out` for `manifest`. Replaces `out/EFI/BOOT/BOOTX64.EFI` and the whole
/// `out/hv/` directory; leaves anything else in `out` alone.
pub fn make_esp(manifest: &Path, out: &Path, sources: &EspSources) -> Result<Esp> {
    if !sources.boot_efi.is_file() {
        bail!(
            "the UEFI application {} is missing: run `cargo xtask build` first",
            sources.boot_efi.display()
        );
    }
    let text = fs::read_to_string(manifest)
        .with_context(|| format!("reading manifest {}", manifest.display()))?;
    let refs =
        manifest::file_refs(&text).with_context(|| format!("manifest {}", manifest.display()))?;
    let manifest_dir = manifest.parent().unwrap_or(Path::new("."));

    let mut files = vec![
        ("EFI/BOOT/BOOTX64.EFI".to_string(), sources.boot_efi.clone()),
        ("hv/manifest.toml".to_string(), manifest.to_path_buf()),
    ];
    for file in &refs {
        let source = resolve(file, manifest_dir, &sources.guest_dir).with_context(|| {
            format!(
                "manifest {} line {}: `{}`",
                manifest.display(),
                file.line_no,
                file.line
            )
        })?;
        files.push((format!("hv/{}", file.path), source));
    }

    let hv = out.join("hv");
    if hv.exists() {
        fs::remove_dir_all(&hv).with_context(|| format!("removing {}", hv.display()))?;
    }
    for (inside, source) in &files {
        let dest = out.join(inside);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(source, &dest)
            .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
    }
    Ok(Esp {
        dir: out.to_path_buf(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-esp-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn copies_app_manifest_and_images_from_both_places() {
        let dir = scratch("ok");
        fs::write(dir.join("boot.efi"), b"MZ app").unwrap();
        fs::create_dir_all(dir.join("guests")).unwrap();
        fs::write(dir.join("guests/hello"), b"\x7fELF hello").unwrap();
        fs::create_dir_all(dir.join("m/linux")).unwrap();
        fs::write(dir.join("m/linux/initrd.gz"), b"initrd").unwrap();
        fs::write(
            dir.join("m/test.toml"),
            "[[guest]]\nimage = \"hello.elf\"\ninitrd = \"linux/initrd.gz\"\n[[guest]]\nimage = \"hello.elf\"\n",
        )
        .unwrap();
        let out = dir.join("esp");
        fs::create_dir_all(out.join("hv")).unwrap();
        fs::write(out.join("hv/stale.elf"), b"old").unwrap();

        let sources = EspSources {
            boot_efi: dir.join("boot.efi"),
            guest_dir: dir.join("guests"),
        };
        let esp = make_esp(&dir.join("m/test.toml"), &out, &sources).unwrap();
        assert_eq!(esp.files.len(), 4);
        assert_eq!(
            fs::read(out.join("EFI/BOOT/BOOTX64.EFI")).unwrap(),
            b"MZ app"
        );
        assert_eq!(
            fs::read(out.join("hv/hello.elf")).unwrap(),
            b"\x7fELF hello"
        );
        assert_eq!(fs::read(out.join("hv/linux/initrd.gz")).unwrap(), b"initrd");
        assert!(fs::read_to_string(out.join("hv/manifest.toml"))
            .unwrap()
            .contains("hello.elf"));
        assert!(!out.join("hv/stale.elf").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_image_names_the_manifest_line() {
        let dir = scratch("missing");
        fs::write(dir.join("boot.efi"), b"MZ").unwrap();
        fs::write(
            dir.join("m.toml"),
            "[[guest]]\nname = \"x\"\nimage = \"nope.elf\"\n",
        )
        .unwrap();
        let sources = EspSources {
            boot_efi: dir.join("boot.efi"),
            guest_dir: dir.join("guests"),
        };
        let err = format!(
            "{:#}",
            make_esp(&dir.join("m.toml"), &dir.join("esp"), &sources).unwrap_err()
        );
        assert!(err.contains("line 3: `image = \"nope.elf\"`"), "{err}");
        assert!(err.contains("no built test guest nope"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_flat_guest_images_and_linux_files() {
        let dir = scratch("where");
        for sub in ["m", "guests", "linux"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("guests/mbkernel.bin"), b"flat").unwrap();
        fs::write(dir.join("linux/vmlinuz"), b"bzImage").unwrap();
        fs::write(dir.join("linux/initrd.gz"), b"gz").unwrap();
        fs::write(dir.join("linux/other.bin"), b"not a linux asset").unwrap();
        let find = |path: &str| {
            let file = FileRef {
                key: "image".into(),
                path: path.into(),
                line_no: 1,
                line: String::new(),
            };
            resolve_in(
                &file,
                &dir.join("m"),
                &dir.join("guests"),
                &dir.join("linux"),
            )
        };
        assert_eq!(
            find("mbkernel.bin").unwrap(),
            dir.join("guests/mbkernel.bin")
        );
        assert_eq!(find("vmlinuz").unwrap(), dir.join("linux/vmlinuz"));
        assert_eq!(find("initrd.gz").unwrap(), dir.join("linux/initrd.gz"));
        // The root file system image, as a disk's `image`.
        fs::write(dir.join("linux/rootfs.ext4"), b"ext4").unwrap();
        assert_eq!(find("rootfs.ext4").unwrap(), dir.join("linux/rootfs.ext4"));
        assert!(find("other.bin").is_err());
        // Next to the manifest wins.
        fs::write(dir.join("m/vmlinuz"), b"mine").unwrap();
        assert_eq!(find("vmlinuz").unwrap(), dir.join("m/vmlinuz"));
        fs::remove_file(dir.join("linux/initrd.gz")).unwrap();
        let err = format!("{:#}", find("initrd.gz").unwrap_err());
        assert!(err.contains("no Linux guest file"), "{err}");
        assert!(err.contains("cargo xtask build"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_boot_efi_says_to_build() {
        let dir = scratch("noefi");
        fs::write(dir.join("m.toml"), "").unwrap();
        let sources = EspSources {
            boot_efi: dir.join("boot.efi"),
            guest_dir: dir.join("guests"),
        };
        let err = make_esp(&dir.join("m.toml"), &dir.join("esp"), &sources)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask build"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
