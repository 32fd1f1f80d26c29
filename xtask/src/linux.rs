//! The Linux guests: Debian's stock kernels and busybox initramfses built here.
//!
//! Everything lives in `target/linux/` (never committed):
//!
//! ```text
//! debs/                  the downloaded .deb packages (kept: a re-run needs no network)
//! vmlinuz                the cloud kernel (a bzImage), from linux-image-<release>-cloud-amd64
//! vmlinuz-amd64          the generic kernel (XZ-compressed), from linux-image-<release>-amd64
//! vmlinuz-686-pae        a 32-bit kernel (no 64-bit entry), from linux-image-<release>-686-pae:i386
//! <kernel>.release       which kernel release and package each came from
//! busybox                the static busybox, from busybox-static (amd64)
//! busybox-i386           the same for i386, from busybox-static:i386
//! initrd.gz              the initramfs: newc cpio, gzip-compressed, written by this module
//! initrd-i386.gz         the same with the i386 busybox, for the 32-bit kernel
//! modules-<release>/     the kernel modules of each kernel, decompressed (a cache)
//! rootfs.ext4            an ext4 root file system with the amd64 busybox (crate::rootfs)
//! ```
//!
//! The kernels and busyboxes come from the OS packages through `apt-cache` and `apt-get
//! download` (no root needed for a download; as root, `apt-get update` is run once when the
//! package lists know no kernel, and `dpkg --add-architecture i386` first when apt knows no
//! i386 packages). A file already there is reused without asking apt anything, so a kernel
//! placed in `target/linux/vmlinuz` by hand is used as is. The initramfs is rebuilt from
//! `busybox` on every call (it is small and the result is byte-for-byte reproducible) and only
//! rewritten when it changed.
//!
//! The initramfs' `/init` (see [`INIT_SCRIPT`]) prints a few facts about the guest and runs a
//! small workload, each on a line starting `linux-guest: ` (the integration test
//! `tests/tests/boot/bochs_linux.rs` checks them), then powers the guest off with `poweroff -f`
//! (ACPI S5). With `interactive=1` on the kernel command line it starts a shell on the console
//! instead of the workload and powers off when the shell exits.
//!
//! Each initramfs also holds its kernel's virtio modules ([`GUEST_MODULES`]: virtio,
//! virtio_ring, virtio_pci_modern_dev, virtio_pci_legacy_dev, virtio_pci, virtio_blk, failover,
//! net_failover, virtio_net; plus ext4 and crc32c where those are modules, as on the 686-pae
//! kernel), taken from the very package the kernel came from (its `/boot/config-*` says which
//! are modules; built-in ones need no file), with their `depends=` dependencies, decompressed,
//! in `/lib/modules/<release>/`. `/init` loads them in dependency order with busybox `insmod`
//! and prints `linux-guest: virtio modules: <names>` (or the one that failed, with insmod's
//! error; or `none for <release>` on a kernel of another release, such as the generic kernel,
//! which boots with the cloud kernel's initramfs). With `root=/dev/vdX` on the command line it
//! then waits up to 10 s for that block device, mounts it (`rootfstype=`, default ext4) and
//! `switch_root`s to its `/sbin/init`, printing `linux-guest: root: ...` either way; on any
//! failure it carries on as without `root=`.
//!
//! [`ROOTFS_FILE`] (`rootfs.ext4`, built by [`crate::rootfs`] with Debian's e2fsprogs, byte
//! for byte reproducible) is such a root: a 64 MiB ext4 file system holding the amd64 busybox
//! and a `/sbin/init` that prints `linux-guest: root on <device> (<fstype>)`, writes and syncs
//! a file, and with `rootcheck=1` says whether a file from an earlier boot is there. A manifest
//! names it like the kernels (`image = "rootfs.ext4"` in a `[[guest.disk]]`).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::{paths, prereq};

/// File name of the kernel in [`dir`] (and the name a manifest uses for it).
pub const KERNEL_FILE: &str = "vmlinuz";
/// File name of the initramfs in [`dir`] (and the name a manifest uses for it).
pub const INITRD_FILE: &str = "initrd.gz";
/// File name of the generic amd64 kernel.
pub const GENERIC_KERNEL_FILE: &str = "vmlinuz-amd64";
/// File name of the 32-bit kernel.
pub const KERNEL32_FILE: &str = "vmlinuz-686-pae";
/// File name of the initramfs with the i386 busybox.
pub const INITRD32_FILE: &str = "initrd-i386.gz";
/// File name of the ext4 root file system image (see [`crate::rootfs`]).
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// The names a manifest may use for the prepared Linux files (see [`crate::esp::resolve`]).
pub const ASSET_FILES: &[&str] = &[
    KERNEL_FILE,
    INITRD_FILE,
    GENERIC_KERNEL_FILE,
    KERNEL32_FILE,
    INITRD32_FILE,
    ROOTFS_FILE,
];

/// One Debian kernel flavour this module fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flavour {
    /// The file in [`dir`].
    pub file: &'static str,
    /// The Debian flavour suffix of the package name: `linux-image-<abi>-<flavour>`.
    pub flavour: &'static str,
    /// The Debian architecture of the package.
    pub arch: &'static str,
}

/// Debian's cloud kernel (the default Linux guest).
pub const CLOUD: Flavour = Flavour {
    file: KERNEL_FILE,
    flavour: "cloud-amd64",
    arch: "amd64",
};
/// Debian's generic amd64 kernel (what `linux-image-amd64` depends on).
pub const GENERIC: Flavour = Flavour {
    file: GENERIC_KERNEL_FILE,
    flavour: "amd64",
    arch: "amd64",
};
/// Debian's 32-bit PAE kernel.
pub const PAE32: Flavour = Flavour {
    file: KERNEL32_FILE,
    flavour: "686-pae",
    arch: "i386",
};

impl Flavour {
    /// The meta-package depending on the current kernel of this flavour.
    fn meta_package(&self) -> String {
        self.qualified(&format!("linux-image-{}", self.flavour))
    }

    /// `package`, with `:<arch>` when that is not the host's (amd64).
    fn qualified(&self, package: &str) -> String {
        if self.arch == "amd64" {
            package.to_string()
        } else {
            format!("{package}:{}", self.arch)
        }
    }
}

/// Environment variable naming the kernel package to use instead of the stock one, e.g.
/// `linux-image-6.1.0-56-cloud-amd64` or `linux-image-6.12.117+deb12-cloud-amd64-unsigned`.
/// It only matters when no kernel has been fetched yet (delete `target/linux/vmlinuz` to switch).
pub const KERNEL_PACKAGE_ENV: &str = "FERROVISOR_LINUX_PACKAGE";

/// The package with a statically linked busybox at `/bin/busybox`.
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The prepared Linux guest files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxAssets {
    /// The kernel, a bzImage.
    pub kernel: PathBuf,
    /// The initramfs (gzip-compressed newc cpio).
    pub initrd: PathBuf,
    /// What the kernel is: its release (what `uname -r` prints) first, e.g.
    /// `6.1.0-56-cloud-amd64 from linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb`, or
    /// `placed by hand`.
    pub kernel_release: String,
    /// The names of the kernel modules in the initramfs, in the order `/init` loads them
    /// (empty for a kernel placed by hand).
    pub modules: Vec<String>,
    /// The ext4 root file system image ([`ROOTFS_FILE`]); `None` when it could not be built
    /// (the reason was printed).
    pub rootfs: Option<PathBuf>,
}

/// The other Debian kernels ([`prepare_more`]): releases described like
/// [`LinuxAssets::kernel_release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoreLinuxAssets {
    /// The generic amd64 kernel (boots with [`LinuxAssets::initrd`]).
    pub generic_kernel: PathBuf,
    pub generic_release: String,
    /// The 32-bit kernel and its initramfs (i386 busybox).
    pub kernel32: PathBuf,
    pub kernel32_release: String,
    pub initrd32: PathBuf,
    /// The kernel modules in the i386 initramfs, in load order (those of the 32-bit kernel).
    pub modules32: Vec<String>,
}

/// `target/linux/`.
pub fn dir() -> PathBuf {
    paths::target_dir().join("linux")
}

/// Makes sure `target/linux/` holds the kernel and an up-to-date initramfs, fetching the
/// packages when they are missing, and prints what it did with sizes.
pub fn prepare() -> Result<LinuxAssets> {
    prepare_in(&dir())
}

/// Like [`prepare`] for the generic amd64 kernel, the 32-bit 686-pae kernel and the i386
/// initramfs (the cloud kernel's initramfs serves the generic kernel; [`prepare`] first).
pub fn prepare_more() -> Result<MoreLinuxAssets> {
    let dir = dir();
    prepare_in(&dir)?;
    let (generic_kernel, generic_release) = kernel(&dir, &GENERIC)?;
    let (kernel32, kernel32_release) = kernel(&dir, &PAE32)?;
    let busybox32 = busybox(&dir, "i386")?;
    let modules32 = guest_modules(&dir, &kernel32_release)?;
    let initrd32 = initramfs(&dir, &busybox32, modules32.as_ref(), INITRD32_FILE)?;
    Ok(MoreLinuxAssets {
        generic_kernel,
        generic_release,
        kernel32,
        kernel32_release,
        initrd32,
        modules32: modules32.map(|m| m.names()).unwrap_or_default(),
    })
}

/// [`prepare`] in another directory.
pub fn prepare_in(dir: &Path) -> Result<LinuxAssets> {
    fs::create_dir_all(dir.join("debs"))
        .with_context(|| format!("creating {}", dir.join("debs").display()))?;
    let (cloud, kernel_release) = kernel(dir, &CLOUD)?;
    let busybox64 = busybox(dir, "amd64")?;
    let modules = guest_modules(dir, &kernel_release)?;
    let initrd = initramfs(dir, &busybox64, modules.as_ref(), INITRD_FILE)?;
    let rootfs = match crate::rootfs::build(dir, &busybox64) {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("xtask: warning: linux: no root file system image: {e:#}");
            None
        }
    };
    Ok(LinuxAssets {
        kernel: cloud,
        initrd,
        kernel_release,
        modules: modules.map(|m| m.names()).unwrap_or_default(),
        rootfs,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The kernel of `flavour`: reused when present, else extracted from the kernel package
/// (downloaded first unless a .deb of it is already in `debs/`).
fn kernel(dir: &Path, flavour: &Flavour) -> Result<(PathBuf, String)> {
    let out = dir.join(flavour.file);
    let release_file = dir.join(format!("{}.release", flavour.file));
    if out.is_file() {
        let release = fs::read_to_string(&release_file)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "placed by hand".to_string());
        check_bzimage(&out)?;
        eprintln!(
            "xtask: linux: kernel {} ({}, {}; already prepared)",
            paths::display(&out),
            release,
            mib(file_size(&out))
        );
        return Ok((out, release));
    }

    let debs = dir.join("debs");
    // A package named by KERNEL_PACKAGE_ENV (the cloud kernel only), else any kernel of this
    // flavour downloaded before.
    let wanted = requested_kernel_package().filter(|_| *flavour == CLOUD);
    let cached = cached_debs(&debs, |name| match &wanted {
        Some(package) => name.starts_with(&format!("{package}_")),
        None => deb_is_kernel(name, flavour),
    })?
    .pop();
    let deb = match (cached, wanted) {
        (Some(deb), _) => {
            eprintln!(
                "xtask: linux: using the kernel package already downloaded: {}",
                paths::display(&deb)
            );
            deb
        }
        (None, Some(package)) => download(&package, &debs)?,
        (None, None) => download(&kernel_package(flavour)?, &debs)?,
    };

    let scratch = dir.join(format!("extract-{}", flavour.file));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    extract(&deb, &scratch, "./boot/vmlinuz-*")?;
    let boot = scratch.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("{} holds no boot/vmlinuz-*", deb.display()))?;
    let version = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();
    check_bzimage(&vmlinuz)?;
    let release = format!(
        "{version} from {}",
        deb.file_name().unwrap_or_default().to_string_lossy()
    );
    let partial = dir.join(format!("{}.partial", flavour.file));
    fs::copy(&vmlinuz, &partial)
        .with_context(|| format!("copying {} to {}", vmlinuz.display(), partial.display()))?;
    fs::write(&release_file, format!("{release}\n"))?;
    fs::rename(&partial, &out)?;
    let _ = fs::remove_dir_all(&scratch);
    eprintln!(
        "xtask: linux: kernel {} ({}, {}) from {} ({})",
        paths::display(&out),
        version,
        mib(file_size(&out)),
        paths::display(&deb),
        mib(file_size(&deb))
    );
    Ok((out, release))
}

/// A Linux bzImage has "HdrS" at offset 0x202 (the x86 boot protocol's setup header).
fn check_bzimage(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        bail!(
            "{} is not a Linux bzImage (no \"HdrS\" at offset 0x202); delete it to fetch the kernel again",
            path.display()
        );
    }
    Ok(())
}

/// The static busybox of Debian architecture `arch` (`busybox` for amd64, `busybox-<arch>`
/// otherwise): reused when present, else extracted from `busybox-static[:<arch>]`.
fn busybox(dir: &Path, arch: &str) -> Result<PathBuf> {
    let name = if arch == "amd64" {
        "busybox".to_string()
    } else {
        format!("busybox-{arch}")
    };
    let out = dir.join(&name);
    if out.is_file() {
        return Ok(out);
    }
    let debs = dir.join("debs");
    let prefix = format!("{BUSYBOX_PACKAGE}_");
    let suffix = format!("_{arch}.deb");
    let deb = match cached_debs(&debs, |n| n.starts_with(&prefix) && n.ends_with(&suffix))?.pop() {
        Some(deb) => deb,
        None if arch == "amd64" => download(BUSYBOX_PACKAGE, &debs)?,
        None => {
            need_foreign_arch(arch)?;
            download(&format!("{BUSYBOX_PACKAGE}:{arch}"), &debs)?
        }
    };
    let scratch = dir.join(format!("extract-{name}"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    extract(&deb, &scratch, "./bin/busybox")?;
    let extracted = scratch.join("bin/busybox");
    let bytes = fs::read(&extracted).with_context(|| format!("reading {}", extracted.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF executable", extracted.display());
    }
    let partial = dir.join(format!("{name}.partial"));
    // A copy keeps the executable bit (handy for running it on the host).
    fs::copy(&extracted, &partial)?;
    fs::rename(&partial, &out)?;
    let _ = fs::remove_dir_all(&scratch);
    eprintln!(
        "xtask: linux: busybox {} ({}) from {} ({})",
        paths::display(&out),
        mib(bytes.len() as u64),
        paths::display(&deb),
        mib(file_size(&deb))
    );
    Ok(out)
}

/// `.deb` files in `debs` whose names pass `wanted`, sorted by name (so the last one has the
/// highest version of packages named alike).
fn cached_debs(debs: &Path, wanted: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = match fs::read_dir(debs) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.ends_with(".deb") && wanted(&n)
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort_by_key(|p| version_key(&p.to_string_lossy()));
    Ok(found)
}

/// True if the .deb file `name` is a kernel package of `flavour`
/// (`linux-image-<version>-<flavour>[-unsigned]_<debian version>_<arch>.deb`).
fn deb_is_kernel(name: &str, flavour: &Flavour) -> bool {
    let mut parts = name.trim_end_matches(".deb").split('_');
    let (Some(package), Some(_), Some(arch)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    arch == flavour.arch && kernel_package_version(package, flavour.flavour).is_some()
}

/// Which kernel package of `flavour` to download: [`KERNEL_PACKAGE_ENV`] if set (the cloud
/// kernel only); else the package its meta-package (`linux-image-<flavour>`) depends on (the
/// distribution's current kernel); else the highest-versioned
/// `linux-image-<version>-<flavour>[-unsigned]` apt knows. As root, runs `apt-get update`
/// once when apt knows none (after `dpkg --add-architecture` for a foreign architecture).
fn kernel_package(flavour: &Flavour) -> Result<String> {
    if let Some(package) = requested_kernel_package().filter(|_| *flavour == CLOUD) {
        return Ok(package);
    }
    need_tool("apt-cache")?;
    if let Some(package) = find_kernel_package(flavour) {
        return Ok(package);
    }
    if flavour.arch != "amd64" {
        need_foreign_arch(flavour.arch)?;
    } else if prereq::is_root() && Path::new("/usr/bin/apt-get").is_file() {
        eprintln!(
            "xtask: linux: apt knows no {} kernel package; running apt-get update",
            flavour.flavour
        );
        apt_update();
    }
    if let Some(package) = find_kernel_package(flavour) {
        return Ok(package);
    }
    bail!(
        "apt knows no Debian {} kernel package ({} or linux-image-<version>-{}); on Debian run \
         `apt-get update`, or put a bzImage at {} yourself",
        flavour.flavour,
        flavour.meta_package(),
        flavour.flavour,
        paths::display(&dir().join(flavour.file))
    )
}

fn apt_update() {
    let _ = Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
}

/// Makes apt know packages of the foreign architecture `arch`: as root, `dpkg
/// --add-architecture <arch>` and `apt-get update` when dpkg does not list it yet.
fn need_foreign_arch(arch: &str) -> Result<()> {
    let listed = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|a| a == arch)
        })
        .unwrap_or(false);
    if listed {
        return Ok(());
    }
    if !(prereq::is_root() && Path::new("/usr/bin/apt-get").is_file()) {
        bail!(
            "apt does not know {arch} packages: run `dpkg --add-architecture {arch} && apt-get \
             update` as root"
        );
    }
    eprintln!("xtask: linux: dpkg --add-architecture {arch}; apt-get update");
    crate::run_command(Command::new("dpkg").args(["--add-architecture", arch]))?;
    apt_update();
    Ok(())
}

/// The kernel package named by [`KERNEL_PACKAGE_ENV`], if any.
fn requested_kernel_package() -> Option<String> {
    std::env::var(KERNEL_PACKAGE_ENV)
        .ok()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

fn find_kernel_package(flavour: &Flavour) -> Option<String> {
    let depends = Command::new("apt-cache")
        .args(["depends", &flavour.meta_package()])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if let Some(package) = meta_dependency(&depends, flavour) {
        return Some(flavour.qualified(&package));
    }
    let search = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            &format!("^linux-image-.*-{}", flavour.flavour),
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    newest_kernel_package(&String::from_utf8_lossy(&search.stdout), flavour)
        .map(|p| flavour.qualified(&p))
}

/// The concrete kernel package in `apt-cache depends linux-image-<flavour>` output (without
/// an `:<arch>` qualifier).
fn meta_dependency(depends: &str, flavour: &Flavour) -> Option<String> {
    depends.lines().find_map(|line| {
        let package = line.trim().strip_prefix("Depends:")?.trim();
        let package = package.split(':').next().unwrap_or(package);
        kernel_package_version(package, flavour.flavour).map(|_| package.to_string())
    })
}

/// The `<version>` of `linux-image-<version>-<flavour>` or of its `-unsigned` twin, when it
/// names an ABI (`6.1.0-56`, `6.12.117+deb12`): not a meta-package such as
/// `linux-image-6.12-cloud-amd64`, not `-dbg`, and not another flavour ending the same way
/// (`6.1.0-56-cloud` is not a version of flavour `amd64`).
fn kernel_package_version<'a>(name: &'a str, flavour: &str) -> Option<&'a str> {
    let rest = name.strip_prefix("linux-image-")?;
    let version = rest
        .strip_suffix(&format!("-{flavour}"))
        .or_else(|| rest.strip_suffix(&format!("-{flavour}-unsigned")))?;
    let (upstream, abi) = version.split_once(['-', '+'])?;
    let abi = abi.strip_prefix("deb").unwrap_or(abi);
    (upstream.starts_with(|c: char| c.is_ascii_digit())
        && upstream.contains('.')
        && upstream.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !abi.is_empty()
        && abi.chars().all(|c| c.is_ascii_digit()))
    .then_some(version)
}

/// The highest-versioned kernel package of `flavour` in `apt-cache search` output (`name -
/// description` lines); a signed package wins over its `-unsigned` twin.
fn newest_kernel_package(search: &str, flavour: &Flavour) -> Option<String> {
    search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            Some((
                version_key(kernel_package_version(name, flavour.flavour)?),
                name,
            ))
        })
        .max_by(|(a_version, a), (b_version, b)| {
            let signed = |n: &str| !n.ends_with("-unsigned");
            (a_version, signed(a)).cmp(&(b_version, signed(b)))
        })
        .map(|(_, name)| name)
        .map(str::to_string)
}

/// A sort key comparing the digit runs in `s` as numbers and everything else as text, so that
/// `6.1.0-9` < `6.1.0-56` < `6.12.1+deb12`.
fn version_key(s: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            key.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            key.push((0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    key
}

fn need_tool(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()));
    if !found {
        bail!(
            "`{name}` not found: the Linux guest's kernel and busybox come from Debian packages \
             (apt-get download + dpkg-deb); on another system put a bzImage at {} and a static \
             busybox at {}",
            paths::display(&dir().join(KERNEL_FILE)),
            paths::display(&dir().join("busybox"))
        );
    }
    Ok(())
}

/// `apt-get download <package>` into `debs`; returns the .deb written. As root, retries once
/// after `apt-get update` (stale package lists name files the mirror no longer has).
fn download(package: &str, debs: &Path) -> Result<PathBuf> {
    need_tool("apt-get")?;
    let prefix = format!("{package}_");
    let fetch = || -> Result<()> {
        eprintln!("xtask: linux: apt-get download {package}");
        let mut cmd = Command::new("apt-get");
        if prereq::is_root() {
            // apt's download sandbox user `_apt` may not be able to write to `debs`; root
            // downloading itself avoids apt's warning about it.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        crate::run_command(cmd.args(["download", package]).current_dir(debs))
    };
    if let Err(first) = fetch() {
        if !(prereq::is_root() && Path::new("/usr/bin/apt-get").is_file()) {
            return Err(first.context(format!(
                "downloading {package} (no network, or stale package lists: apt-get update)"
            )));
        }
        eprintln!("xtask: linux: download failed ({first:#}); running apt-get update and retrying");
        apt_update();
        fetch().with_context(|| format!("downloading {package}"))?;
    }
    let prefix = prefix.split(':').next().unwrap_or(&prefix).to_string();
    let prefix = if prefix.ends_with('_') {
        prefix
    } else {
        format!("{prefix}_")
    };
    cached_debs(debs, |name| name.starts_with(&prefix))?
        .pop()
        .ok_or_else(|| {
            anyhow!(
                "apt-get download {package} succeeded but no {prefix}*.deb is in {}",
                debs.display()
            )
        })
}

/// Extracts the members of `deb`'s file system tree matching `pattern` (a tar wildcard such as
/// `./boot/vmlinuz-*`) into `into`: `dpkg-deb --fsys-tarfile deb | tar -x`.
fn extract(deb: &Path, into: &Path, pattern: &str) -> Result<()> {
    need_tool("dpkg-deb")?;
    need_tool("tar")?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let tar_input = dpkg.stdout.take().expect("piped stdout");
    let tar = Command::new("tar")
        .args(["-x", "--no-same-owner", "--wildcards", "-C"])
        .arg(into)
        .arg(pattern)
        .stdin(tar_input)
        .status()
        .context("starting tar")?;
    let dpkg = dpkg.wait()?;
    if !dpkg.success() || !tar.success() {
        bail!(
            "extracting {pattern} from {} failed (dpkg-deb: {dpkg}, tar: {tar})",
            deb.display()
        );
    }
    Ok(())
}

/// The kernel modules `/init` loads, in this order: (module name, the Kconfig symbol that
/// builds it). A symbol set to `m` in the package's `/boot/config-<release>` means a `.ko`
/// file in the package; `y` means the code is built into the kernel and needs no file (Debian
/// 12's cloud kernel builds ext4 and crc32c in, its 686-pae kernel has them as modules; all
/// three kernels have the virtio ones as modules). Each module's own dependencies (`depends=`
/// in its `.modinfo`, e.g. ext4's jbd2, mbcache and crc16) are loaded before it.
pub const GUEST_MODULES: &[(&str, &str)] = &[
    ("virtio", "CONFIG_VIRTIO"),
    // drivers/virtio/Makefile builds virtio_ring with virtio, under the same symbol.
    ("virtio_ring", "CONFIG_VIRTIO"),
    ("virtio_pci_modern_dev", "CONFIG_VIRTIO_PCI_LIB"),
    ("virtio_pci_legacy_dev", "CONFIG_VIRTIO_PCI_LIB_LEGACY"),
    ("virtio_pci", "CONFIG_VIRTIO_PCI"),
    ("virtio_blk", "CONFIG_VIRTIO_BLK"),
    ("failover", "CONFIG_FAILOVER"),
    ("net_failover", "CONFIG_NET_FAILOVER"),
    ("virtio_net", "CONFIG_VIRTIO_NET"),
    // The root file system. ext4 asks the crypto API for "crc32c" when it mounts a file system
    // with metadata checksums (mke2fs' default): a soft dependency, not in `depends=`.
    ("crc32c_generic", "CONFIG_CRYPTO_CRC32C"),
    ("ext4", "CONFIG_EXT4_FS"),
];

/// Where in a kernel package [`GUEST_MODULES`] and their usual dependencies live (tar
/// wildcards; `*` matches `/` too). A dependency found elsewhere is extracted on its own.
const MODULE_PATTERNS: &[&str] = &[
    "./boot/config-*",
    "./lib/modules/*/kernel/drivers/virtio/*",
    "./lib/modules/*/kernel/drivers/block/virtio_blk.ko*",
    "./lib/modules/*/kernel/drivers/net/net_failover.ko*",
    "./lib/modules/*/kernel/drivers/net/virtio_net.ko*",
    "./lib/modules/*/kernel/net/core/failover.ko*",
    "./lib/modules/*/kernel/fs/ext4/*",
    "./lib/modules/*/kernel/fs/jbd2/*",
    "./lib/modules/*/kernel/fs/mbcache.ko*",
    "./lib/modules/*/kernel/lib/*",
    "./lib/modules/*/kernel/crypto/*",
];

/// The kernel modules an initramfs carries for one kernel release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestModules {
    /// The release they are built for (what `uname -r` prints).
    pub release: String,
    /// (name, uncompressed ELF bytes), in load order: every module after its dependencies.
    pub modules: Vec<(String, Vec<u8>)>,
    /// Those of [`GUEST_MODULES`] built into the kernel: `name (CONFIG_X=y)`.
    pub builtin: Vec<String>,
}

impl GuestModules {
    /// The module names in load order.
    pub fn names(&self) -> Vec<String> {
        self.modules.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// The value of `symbol` in a kernel `.config`: `Some("m")`, `Some("y")`, ..., or `None` when
/// it is not set.
pub fn config_value<'a>(config: &'a str, symbol: &str) -> Option<&'a str> {
    config.lines().find_map(|l| {
        l.strip_prefix(symbol)?
            .strip_prefix('=')
            .map(|v| v.trim().trim_matches('"'))
    })
}

/// A field (`depends`, `name`, `vermagic`, ...) of a kernel module's `.modinfo` section
/// (NUL-separated `key=value` strings), found through the ELF section headers (ELF32 or
/// ELF64, little-endian).
pub fn modinfo(elf: &[u8], key: &str) -> Option<String> {
    let section = elf_section(elf, ".modinfo")?;
    section.split(|b| *b == 0).find_map(|entry| {
        let value = entry.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

/// The bytes of section `name` of a little-endian ELF file.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let elf64 = match elf.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    // (e_shoff, e_shentsize, e_shnum, e_shstrndx) and, per section header, (sh_name,
    // sh_offset, sh_size): ELF's generic layout for each class.
    let (shoff, shentsize, shnum, shstrndx) = if elf64 {
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?)
    } else {
        (
            u64::from(u32_at(0x20)?),
            u16_at(0x2e)?,
            u16_at(0x30)?,
            u16_at(0x32)?,
        )
    };
    let header = |i: u16| -> Option<(u32, usize, usize)> {
        let at = usize::try_from(shoff).ok()? + usize::from(i) * usize::from(shentsize);
        let (offset, size) = if elf64 {
            (u64_at(at + 0x18)?, u64_at(at + 0x20)?)
        } else {
            (u64::from(u32_at(at + 0x10)?), u64::from(u32_at(at + 0x14)?))
        };
        Some((
            u32_at(at)?,
            usize::try_from(offset).ok()?,
            usize::try_from(size).ok()?,
        ))
    };
    let (_, strtab_at, strtab_size) = header(shstrndx)?;
    let strtab = elf.get(strtab_at..strtab_at.checked_add(strtab_size)?)?;
    (0..shnum).find_map(|i| {
        let (name_at, offset, size) = header(i)?;
        let rest = strtab.get(name_at as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        (&rest[..end] == name.as_bytes())
            .then(|| elf.get(offset..offset.checked_add(size)?))
            .flatten()
    })
}

/// `wanted` and everything they depend on, in load order: each module after its
/// dependencies, otherwise in the order of `wanted`. `depends` gives a module's direct
/// dependencies. A dependency cycle is an error (the kernel could not load such modules).
pub fn load_order(
    wanted: &[&str],
    depends: &mut dyn FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        depends: &mut dyn FnMut(&str) -> Result<Vec<String>>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if order.iter().any(|n| n == name) {
            return Ok(());
        }
        if path.iter().any(|n| n == name) {
            bail!(
                "kernel modules depend on each other in a cycle: {} -> {name}",
                path.join(" -> ")
            );
        }
        path.push(name.to_string());
        for dep in depends(name)? {
            visit(&dep, depends, path, order)?;
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(name, depends, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// A module file's bytes, decompressed: busybox `insmod` hands the file to `init_module` as
/// it is, and a kernel without in-kernel decompression can't load a `.ko.xz`/`.ko.zst`.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let bytes = if name.ends_with(".ko.xz") || name.ends_with(".ko.zst") {
        let tool = if name.ends_with(".xz") { "xz" } else { "zstd" };
        need_tool(tool)?;
        let out = Command::new(tool)
            .arg("-dc")
            .arg(path)
            .output()
            .with_context(|| format!("running `{tool} -dc {}`", path.display()))?;
        if !out.status.success() {
            bail!("`{tool} -dc {}` failed ({})", path.display(), out.status);
        }
        out.stdout
    } else if name.ends_with(".ko.gz") {
        let mut v = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(fs::File::open(path)?),
            &mut v,
        )
        .with_context(|| format!("decompressing {}", path.display()))?;
        v
    } else {
        fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF kernel module", path.display());
    }
    Ok(bytes)
}

/// Every `*.ko[.xz|.zst|.gz]` under `dir`, by module name (`-` in a file name is `_` in the
/// module's name, as the kernel's build names them).
fn module_files(dir: &Path) -> std::collections::BTreeMap<String, PathBuf> {
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some((stem, _)) = name.split_once(".ko") {
                    found.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    found
}

/// Name of the list in a module cache directory: the key line, then `load <name>` and
/// `builtin <name> (<symbol>=y)` lines.
const MODULE_LIST: &str = "modules.list";

/// The modules of [`GUEST_MODULES`] for the kernel described by `release` (`<release> from
/// <package>.deb`, as in [`LinuxAssets::kernel_release`]), from that very package: cached in
/// `dir/modules-<release>/` (decompressed). `None`, with a note, for a kernel placed by hand
/// (no package to take matching modules from).
fn guest_modules(dir: &Path, release: &str) -> Result<Option<GuestModules>> {
    let Some((version, deb_name)) = release
        .split_once(" from ")
        .map(|(v, d)| (v.trim(), d.trim()))
        .filter(|(_, d)| d.ends_with(".deb"))
    else {
        eprintln!(
            "xtask: linux: kernel `{release}` has no package to take its modules from: the \
             initramfs gets no virtio modules"
        );
        return Ok(None);
    };
    let cache = dir.join(format!("modules-{version}"));
    let list = cache.join(MODULE_LIST);
    let wanted: Vec<&str> = GUEST_MODULES.iter().map(|(n, _)| *n).collect();
    let key = format!("{deb_name}: {}", wanted.join(" "));
    if let Ok(text) = fs::read_to_string(&list) {
        let mut lines = text.lines();
        if lines.next() == Some(key.as_str()) {
            let mut modules = Vec::new();
            let mut builtin = Vec::new();
            for line in lines {
                if let Some(name) = line.strip_prefix("load ") {
                    let bytes = fs::read(cache.join(format!("{name}.ko")))?;
                    modules.push((name.to_string(), bytes));
                } else if let Some(what) = line.strip_prefix("builtin ") {
                    builtin.push(what.to_string());
                }
            }
            return Ok(Some(GuestModules {
                release: version.to_string(),
                modules,
                builtin,
            }));
        }
    }

    let deb = dir.join("debs").join(deb_name);
    if !deb.is_file() {
        bail!(
            "the kernel's package {} is gone, and the initramfs needs the modules from it: \
             delete {} to fetch the kernel again",
            deb.display(),
            paths::display(&dir.join(KERNEL_FILE))
        );
    }
    eprintln!(
        "xtask: linux: extracting the virtio modules from {}",
        paths::display(&deb)
    );
    let scratch = dir.join(format!("extract-modules-{version}"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    extract_any(&deb, &scratch, MODULE_PATTERNS)?;
    let config_path = scratch.join(format!("boot/config-{version}"));
    let config = fs::read_to_string(&config_path).with_context(|| {
        format!(
            "reading {} (the kernel's configuration, from {})",
            config_path.display(),
            deb.display()
        )
    })?;
    let mut builtin = Vec::new();
    let mut top = Vec::new();
    for (name, symbol) in GUEST_MODULES {
        match config_value(&config, symbol) {
            Some("m") => top.push(*name),
            Some("y") => builtin.push(format!("{name} ({symbol}=y)")),
            _ => bail!(
                "{symbol} is not set in {}: kernel {version} has no {name}, which the guests need",
                deb.display()
            ),
        }
    }
    let mut files = module_files(&scratch);
    let mut loaded = std::collections::BTreeMap::new();
    let order = load_order(&top, &mut |name: &str| {
        if !files.contains_key(name) {
            // Not where the usual ones live: look for it anywhere in the package.
            let dashed = name.replace('_', "-");
            extract_any(
                &deb,
                &scratch,
                &[
                    &format!("./lib/modules/*/{name}.ko*"),
                    &format!("./lib/modules/*/{dashed}.ko*"),
                ],
            )?;
            files = module_files(&scratch);
        }
        let path = files.get(name).ok_or_else(|| {
            anyhow!(
                "kernel module {name} (needed by the guests) is not in {}",
                deb.display()
            )
        })?;
        let bytes = module_bytes(path)?;
        let vermagic = modinfo(&bytes, "vermagic").unwrap_or_default();
        if vermagic.split_whitespace().next() != Some(version) {
            bail!(
                "{} is built for `{vermagic}`, not kernel {version}",
                path.display()
            );
        }
        let deps: Vec<String> = modinfo(&bytes, "depends")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect();
        loaded.insert(name.to_string(), bytes);
        Ok(deps)
    })?;
    let modules: Vec<(String, Vec<u8>)> = order
        .into_iter()
        .map(|n| {
            let bytes = loaded.remove(&n).unwrap_or_default();
            (n, bytes)
        })
        .collect();

    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&cache)?;
    let mut text = format!("{key}\n");
    for (name, bytes) in &modules {
        fs::write(cache.join(format!("{name}.ko")), bytes)?;
        text += &format!("load {name}\n");
    }
    for what in &builtin {
        text += &format!("builtin {what}\n");
    }
    fs::write(&list, text)?;
    let _ = fs::remove_dir_all(&scratch);
    let found = GuestModules {
        release: version.to_string(),
        modules,
        builtin,
    };
    eprintln!(
        "xtask: linux: modules for {version}: {}{}",
        found.names().join(" "),
        if found.builtin.is_empty() {
            String::new()
        } else {
            format!("; built in: {}", found.builtin.join(", "))
        }
    );
    Ok(Some(found))
}

/// `dpkg-deb --fsys-tarfile deb | tar -x --wildcards <patterns>` into `into`. tar's status is
/// not checked: a pattern that matches nothing (a module built in) makes it fail after
/// extracting the rest; the caller checks for what it needs.
pub(crate) fn extract_any(deb: &Path, into: &Path, patterns: &[&str]) -> Result<()> {
    need_tool("dpkg-deb")?;
    need_tool("tar")?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let input = dpkg.stdout.take().expect("piped stdout");
    let _ = Command::new("tar")
        .args(["-x", "--no-same-owner", "--wildcards", "-C"])
        .arg(into)
        .args(patterns)
        .stdin(input)
        .stderr(Stdio::null())
        .status()
        .context("starting tar")?;
    let status = dpkg.wait()?;
    if !status.success() {
        bail!(
            "dpkg-deb --fsys-tarfile {} failed ({status})",
            deb.display()
        );
    }
    Ok(())
}

/// The part of `/init` that loads `modules` (from `/lib/modules/<release>/<name>.ko`, one
/// `load` line each, in load order) and prints `linux-guest: virtio modules: <names>`, or the
/// module that failed with insmod's error. A kernel of another release (the generic kernel
/// boots with the cloud kernel's initramfs) gets none: they would not load into it.
pub fn modules_section(modules: Option<&GuestModules>) -> String {
    let Some(m) = modules else {
        return "# No kernel modules: the kernel was not taken from a Debian package.\n\
                echo \"linux-guest: virtio modules: none in this initramfs\"\n"
            .to_string();
    };
    let mut s = format!(
        "# Kernel modules of {release}, from its Debian package, dependencies first (written by\n\
         # xtask, src/linux.rs).",
        release = m.release
    );
    if !m.builtin.is_empty() {
        s += &format!(" Built in, so not here: {}.", m.builtin.join(", "));
    }
    s += &format!(
        r#"
modules_release='{release}'
loaded=
failed=
load() {{
    [ -z "$failed" ] || return 1
    if out=$(insmod "/lib/modules/$modules_release/$1.ko" 2>&1); then
        loaded="$loaded $1"
    else
        failed="$1: $(echo $out)"
    fi
}}
if [ "$(uname -r)" != "$modules_release" ]; then
    echo "linux-guest: virtio modules: none for $(uname -r) (this initramfs has those of $modules_release)"
else
"#,
        release = m.release
    );
    for name in m.names() {
        s += &format!("    load {name}\n");
    }
    s += r#"    if [ -n "$failed" ]; then
        echo "linux-guest: virtio modules: insmod $failed (loaded before it:${loaded:- none})"
    else
        echo "linux-guest: virtio modules:$loaded"
    fi
fi
"#;
    s
}

/// The part of `/init` that, with `root=/dev/...` on the kernel command line, waits (at most
/// 10 s) for that block device, mounts it (`rootfstype=`, default ext4; `ro` or `rw`, default
/// rw) on `$2` and gets it ready for `switch_root`: `mount_root CMDLINE DIR` returns 0 only
/// then. Every other outcome prints a `linux-guest: root: ...` line and returns 1 (no `root=`:
/// silently), and the initramfs carries on as without `root=`.
pub const MOUNT_ROOT: &str = r#"is_block() { [ -b "$1" ]; }
mount_root() {
    root=
    fstype=ext4
    flags=rw
    set -f
    for arg in $1; do
        case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) fstype=${arg#rootfstype=} ;;
        ro | rw) flags=$arg ;;
        esac
    done
    set +f
    [ -n "$root" ] || return 1
    case "$root" in
    /dev/?*) ;;
    *)
        echo "linux-guest: root: $root is not a /dev/ path; staying in the initramfs"
        return 1
        ;;
    esac
    tries=0
    while ! is_block "$root"; do
        if [ "$tries" -ge 100 ]; then
            echo "linux-guest: root: no block device $root after 10 s; staying in the initramfs"
            return 1
        fi
        sleep 0.1
        tries=$((tries + 1))
    done
    mkdir -p "$2"
    if ! out=$(mount -t "$fstype" -o "$flags" "$root" "$2" 2>&1); then
        echo "linux-guest: root: mounting $root ($fstype) failed:" $out"; staying in the initramfs"
        return 1
    fi
    if [ ! -x "$2/sbin/init" ]; then
        echo "linux-guest: root: $root ($fstype) has no /sbin/init; staying in the initramfs"
        umount "$2"
        return 1
    fi
    # An amd64 userland on the 32-bit kernel would make the new init fail, and init's end
    # panics the kernel: try its shell first.
    if ! chroot "$2" /bin/sh -c : 2>/dev/null; then
        echo "linux-guest: root: $root ($fstype): its /bin/sh does not run on this kernel; staying in the initramfs"
        umount "$2"
        return 1
    fi
    echo "linux-guest: root: $root mounted ($fstype, $flags); switching to it"
    # The new init mounts these again where they can't be moved.
    for d in dev proc sys; do
        mount -o move "/$d" "$2/$d" 2>/dev/null || umount "/$d" 2>/dev/null
    done
    return 0
}
"#;

/// What replaces `# @ROOT@` in [`INIT_SCRIPT`]: [`MOUNT_ROOT`] and its call. `switch_root`
/// must be PID 1 (so `exec`); should it fail, init ends and the kernel panics (`panic=-1`
/// reboots) rather than hang.
const ROOT_SECTION: &str = r#"if mount_root "$(cat /proc/cmdline)" /newroot; then
    exec switch_root /newroot /sbin/init
fi
"#;

/// The initramfs' `/init`: [`INIT_SCRIPT`] with the module loading of `modules` and the
/// root-mount branch in place.
pub fn init_script(modules: Option<&GuestModules>) -> String {
    INIT_SCRIPT
        .replace("# @MODULES@\n", &modules_section(modules))
        .replace("# @ROOT@\n", &format!("{MOUNT_ROOT}{ROOT_SECTION}"))
        .replace("# @NET@\n", NET_SECTION)
}

/// The part of `/init` that, with `netaddr=A/P` on the kernel command line, configures `eth0`
/// (a virtio-net NIC) with that address (then the interactive shell, if asked for, has the
/// network), and with `netmode=` runs one network test against `netpeer=` and powers off.
/// Lines starting `linux-guest: net ` are checked by the integration test.
///
/// - `netmode=xfer`: serves `netmib=` MiB (default 2) of random bytes with busybox `httpd`,
///   fetches the peer's with `wget` (retrying while the peer boots), prints the sha256 of
///   both, then waits (at most 60 s) until the peer has fetched its copy too (the peer's
///   `/done`), so that both ways complete.
/// - `netmode=ping`: three pings of the peer and their summary (a guest on another network
///   prints 100% packet loss).
/// - `netmode=spoof`: pings the peer with its own MAC until one is answered, then sets its MAC
///   to `netspoof=` (another guest's) and pings again: the switch drops those frames.
/// - `netmode=uplink`: on a network bridged to the host NIC: three pings of `netpeer=` (a
///   host on the wire), then fetches `neturl=` with `wget` (retrying for 30 s) and prints
///   its sha256 and size.
/// - `netmode=benchsrv` / `netmode=benchcli` (`cargo xtask bench`, section `net`): the server
///   serves `netmib=` MiB of zeros with `httpd` until the client's `/done`; the client
///   serves the same, then fetches the server's copy and its own (loopback) into tmpfs and
///   pings the server 20 times, each phase between bench marks (`devmem 0xfebff000 32 <n>`,
///   see `xtask/src/bench/net.rs`).
pub const NET_SECTION: &str = r#"netarg() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
netmode=$(netarg netmode)
addr=$(netarg netaddr)
if [ -n "$addr" ]; then
    ip link set lo up
    ip link set eth0 up
    ip addr add "$addr" dev eth0
    # The carrier comes up asynchronously (the device's link status): up to 5 s.
    n=0
    while [ "$(cat /sys/class/net/eth0/operstate)" != up ] && [ "$n" -lt 25 ]; do
        usleep 200000
        n=$((n + 1))
    done
    echo "linux-guest: net eth0 $(cat /sys/class/net/eth0/address) $addr link $(cat /sys/class/net/eth0/operstate) mtu $(cat /sys/class/net/eth0/mtu)"
fi
if [ -n "$netmode" ]; then
    peer=$(netarg netpeer)
    pings() {
        ping -c "$1" -W 2 "$peer" > /tmp/ping 2>&1
        grep 'packet loss' /tmp/ping || tail -n 1 /tmp/ping
    }
    case $netmode in
    xfer)
        mib=$(netarg netmib)
        [ -n "$mib" ] || mib=2
        mkdir -p /www
        dd if=/dev/urandom of=/www/data bs=64k count=$((mib * 16)) 2>/dev/null
        echo "linux-guest: net sent sha256 $(sha256sum /www/data | cut -d' ' -f1)"
        httpd -p 80 -h /www
        n=0
        until wget -q -O /tmp/got "http://$peer/data" 2>/dev/null; do
            n=$((n + 1))
            [ "$n" -ge 300 ] && break
            sleep 1
        done
        echo "linux-guest: net received sha256 $(sha256sum /tmp/got | cut -d' ' -f1) $(wc -c < /tmp/got) bytes"
        touch /www/done
        # Stay up until the peer has ours too (its /done), then long enough for the peer to
        # see ours (it polls once a second).
        n=0
        until wget -q -O /dev/null "http://$peer/done" 2>/dev/null; do
            n=$((n + 1))
            if [ "$n" -ge 60 ]; then
                echo "linux-guest: net peer not done after 60 s"
                break
            fi
            sleep 1
        done
        [ "$n" -lt 60 ] && echo "linux-guest: net peer done"
        sleep 3
        ;;
    ping)
        echo "linux-guest: net ping $peer: $(pings 3)"
        ;;
    uplink)
        echo "linux-guest: net ping $peer: $(pings 3)"
        url=$(netarg neturl)
        n=0
        until wget -q -O /tmp/got "$url" 2>/dev/null; do
            n=$((n + 1))
            [ "$n" -ge 30 ] && break
            sleep 1
        done
        echo "linux-guest: net fetched $url sha256 $(sha256sum /tmp/got | cut -d' ' -f1) $(wc -c < /tmp/got) bytes"
        ;;
    benchsrv)
        mib=$(netarg netmib)
        mkdir -p /www
        dd if=/dev/zero of=/www/data bs=1M count="$mib" 2>/dev/null
        touch /www/ready
        httpd -p 80 -h /www
        echo "linux-guest: net bench: serving $mib MiB"
        n=0
        until wget -q -O /dev/null "http://$peer/done" 2>/dev/null; do
            n=$((n + 1))
            [ "$n" -ge 900 ] && break
            sleep 1
        done
        ;;
    benchcli)
        mib=$(netarg netmib)
        mark() { devmem 0xfebff000 32 "$1"; }
        mkdir -p /www
        dd if=/dev/zero of=/www/data bs=1M count="$mib" 2>/dev/null
        httpd -p 80 -h /www
        n=0
        until wget -q -O /dev/null "http://$peer/ready" 2>/dev/null; do
            n=$((n + 1))
            [ "$n" -ge 600 ] && break
            sleep 1
        done
        ping -c 1 -W 2 "$peer" > /dev/null 2>&1
        wget -q -O /dev/null "http://127.0.0.1/ready" 2>/dev/null
        mark 1
        mark 2
        wget -q -O /tmp/got "http://$peer/data"
        mark 3
        echo "linux-guest: net bench: from $peer $(wc -c < /tmp/got) bytes"
        rm -f /tmp/got
        mark 4
        wget -q -O /tmp/got "http://127.0.0.1/data"
        mark 5
        echo "linux-guest: net bench: from 127.0.0.1 $(wc -c < /tmp/got) bytes"
        rm -f /tmp/got
        mark 6
        ping -c 20 -i 0.01 "$peer" > /tmp/ping 2>&1
        mark 7
        echo "linux-guest: net bench: ping $(grep 'packet loss' /tmp/ping); $(grep round-trip /tmp/ping)"
        touch /www/done
        sleep 3
        ;;
    spoof)
        n=0
        until ping -c 1 -W 2 "$peer" > /dev/null 2>&1; do
            n=$((n + 1))
            [ "$n" -ge 120 ] && break
        done
        echo "linux-guest: net ping $peer with own mac: $(pings 2)"
        ip link set eth0 address "$(netarg netspoof)"
        echo "linux-guest: net mac now $(cat /sys/class/net/eth0/address)"
        echo "linux-guest: net ping $peer with spoofed mac: $(pings 3)"
        ;;
    esac
    off
fi
"#;

/// The initramfs' `/init` ([`init_script`] puts the module loading in place of `# @MODULES@`
/// and [`MOUNT_ROOT`] in place of `# @ROOT@`). Lines starting `linux-guest: ` are checked by
/// the integration test.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# /init of the ferrovisor Linux test guest (written by xtask, src/linux.rs).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Links for every other busybox applet (the initramfs holds those this script uses).
busybox --install -s /bin 2>/dev/null

cpus=$(nproc 2>/dev/null || grep -c '^processor' /proc/cpuinfo)
echo "linux-guest: kernel $(uname -r)"
echo "linux-guest: machine $(uname -m)"
echo "linux-guest: nproc $cpus"
echo "linux-guest: memtotal $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) kB"
if grep -qw hypervisor /proc/cpuinfo; then hv=yes; else hv=no; fi
echo "linux-guest: hypervisor flag $hv"
# XSAVE as the hypervisor enumerates it: the kernel keeps AVX2 only when CPUID leaf 0DH is
# consistent (else arch/x86/kernel/fpu/xstate.c warns and turns XSAVE off).
if grep -qw avx2 /proc/cpuinfo; then avx2=yes; else avx2=no; fi
echo "linux-guest: avx2 $avx2"
dmesg | grep 'x86/fpu: Enabled xstate' | sed 's/^\[[^]]*\] /linux-guest: /'
echo "linux-guest: kernel warnings $(dmesg | grep -c -e 'WARNING: CPU' -e 'XSAVE consistency problem')"

# @MODULES@

off() {
    # The TSC as a clocksource: how the kernel got its rate, and whether the clocksource
    # watchdog (or anything else) gave up on it, as it does when timer interrupts come late.
    dmesg | grep -m1 'tsc: Detected' | sed 's/^\[[^]]*\] /linux-guest: /'
    echo "linux-guest: tsc unstable $(dmesg | grep -c -e 'as unstable' -e 'TSC unstable')"
    echo "linux-guest: powering off"
    sync
    poweroff -f
    # Not reached when ACPI S5 works; ending init makes the kernel panic (and reboot).
    echo "linux-guest: poweroff -f failed"
    exit 1
}

# @ROOT@

# The network (`netaddr=...`, `netmode=...` on the command line, see NET_SECTION).
# @NET@

case " $(cat /proc/cmdline) " in
*" interactive=1 "*)
    echo "linux-guest: interactive shell on the console; exit it to power off"
    hostname linux-guest
    export PS1='linux-guest:\w# ' HOME=/root
    setsid cttyhack sh
    off
    ;;
esac

# The workload: sort 2000 numbers and hash them, once per CPU, all at the same time.
i=0
while [ "$i" -lt "$cpus" ]; do
    (seq 2000 -1 1 | sort -n | md5sum | cut -d' ' -f1 > /tmp/workload.$i) &
    i=$((i + 1))
done
wait
result=$(cat /tmp/workload.* | sort -u)
if [ "$(echo "$result" | wc -l)" = 1 ]; then
    echo "linux-guest: workload md5 $result"
else
    echo "linux-guest: workload MISMATCH:" $result
fi

# SMP stress (`stress=N` on the command line): N rounds of two hashing workers per CPU at
# once, each result compared with one computed alone first. With more vCPUs than physical
# CPUs, the workers' page faults and TLB use interleave on shared CPUs: a register or TLB
# entry of one vCPU seen by another shows up as a wrong hash or a killed worker.
rounds=$(sed -n 's/.*[ ]stress=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$rounds" ]; then
    ref=$(seq 3000 -1 1 | sort -n | md5sum | cut -d' ' -f1)
    workers=$((cpus * 2))
    r=0
    bad=0
    while [ "$r" -lt "$rounds" ]; do
        i=0
        while [ "$i" -lt "$workers" ]; do
            (seq 3000 -1 1 | sort -n | md5sum | cut -d' ' -f1 > /tmp/stress.$i) &
            i=$((i + 1))
        done
        wait
        i=0
        while [ "$i" -lt "$workers" ]; do
            [ "$(cat /tmp/stress.$i 2>/dev/null)" = "$ref" ] || bad=$((bad + 1))
            i=$((i + 1))
        done
        rm -f /tmp/stress.*
        r=$((r + 1))
    done
    faults=$(dmesg | grep -c -e 'segfault at' -e 'general protection' -e 'Killed process')
    echo "linux-guest: stress $rounds rounds of $workers workers: $bad wrong, $faults faults"
fi
off
"#;

/// The md5 the workload prints: that of the numbers 1 to 2000, one a line.
pub const WORKLOAD_MD5: &str = "ea4d0a24dabcaa11f9aa979b872d162b";

/// busybox applets linked in `/bin` of the initramfs: what `/init` needs before
/// `busybox --install`, and a few more for the interactive shell.
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "mount",
    "umount",
    "mkdir",
    "cat",
    "echo",
    "grep",
    "awk",
    "sed",
    "cut",
    "sort",
    "seq",
    "md5sum",
    "uname",
    "nproc",
    "wc",
    "poweroff",
    "reboot",
    "sync",
    "setsid",
    "cttyhack",
    "hostname",
    "sleep",
    "ls",
    "ps",
    "dmesg",
    "free",
    "head",
    "tail",
    "rm",
    "cp",
    "mv",
    "ln",
    "insmod",
    "switch_root",
];

/// The applets the initramfs links in `/bin`.
pub fn initramfs_applets() -> Vec<String> {
    APPLETS.iter().map(|a| a.to_string()).collect()
}

/// Builds the initramfs from `busybox`, `modules` and [`init_script`]; writes `dir/file` when
/// it changed.
fn initramfs(
    dir: &Path,
    busybox: &Path,
    modules: Option<&GuestModules>,
    file: &str,
) -> Result<PathBuf> {
    let busybox_bytes =
        fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let cpio = initramfs_cpio(&busybox_bytes, modules);
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(&cpio)?;
    let gz = gz.finish()?;
    let out = dir.join(file);
    let unchanged = fs::read(&out).is_ok_and(|old| old == gz);
    if !unchanged {
        fs::write(&out, &gz).with_context(|| format!("writing {}", out.display()))?;
    }
    eprintln!(
        "xtask: linux: initramfs {} ({} compressed, {} as cpio{})",
        paths::display(&out),
        mib(gz.len() as u64),
        mib(cpio.len() as u64),
        if unchanged { "; unchanged" } else { "" }
    );
    Ok(out)
}

/// The initramfs as a newc cpio archive: busybox, `modules` in
/// `lib/modules/<release>/<name>.ko` (in load order) and `/init` ([`init_script`]).
pub fn initramfs_cpio(busybox: &[u8], modules: Option<&GuestModules>) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "root", "etc", "newroot"] {
        cpio.dir(d, 0o755);
    }
    if let Some(m) = modules {
        cpio.dir("lib", 0o755);
        cpio.dir("lib/modules", 0o755);
        cpio.dir(&format!("lib/modules/{}", m.release), 0o755);
        for (name, bytes) in &m.modules {
            cpio.file(
                &format!("lib/modules/{}/{name}.ko", m.release),
                0o644,
                bytes,
            );
        }
    }
    cpio.file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    // The kernel opens /dev/console for init before /init can mount devtmpfs.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("init", 0o755, init_script(modules).as_bytes());
    cpio.finish()
}

/// A newc ("070701") cpio archive writer: the format the kernel unpacks an initramfs from.
/// Owner root, modification time 0, inode numbers counted from 1: the same input always gives
/// the same bytes.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("cpio newc members are below 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.inode = 0;
        // The trailer's inode is conventionally 0.
        self.out.extend_from_slice(b"070701");
        let name = "TRAILER!!!";
        for field in [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, name.len() as u32 + 1, 0] {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_meta_packages_kernel() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            meta_dependency(depends, &CLOUD).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(meta_dependency("linux-image-cloud-amd64\n", &CLOUD), None);
        let i386 = "linux-image-686-pae:i386\n  Depends: linux-image-6.1.0-57-686-pae:i386\n";
        assert_eq!(
            meta_dependency(i386, &PAE32).as_deref(),
            Some("linux-image-6.1.0-57-686-pae")
        );
        assert_eq!(
            PAE32.qualified("linux-image-6.1.0-57-686-pae"),
            "linux-image-6.1.0-57-686-pae:i386"
        );
        assert_eq!(PAE32.meta_package(), "linux-image-686-pae:i386");
        assert_eq!(GENERIC.meta_package(), "linux-image-amd64");
        let generic = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            meta_dependency(generic, &GENERIC).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
    }

    #[test]
    fn flavours_do_not_mistake_each_other() {
        // The cloud kernel's name also ends in -amd64.
        assert!(kernel_package_version("linux-image-6.1.0-57-cloud-amd64", "amd64").is_none());
        assert!(kernel_package_version("linux-image-6.1.0-57-rt-amd64", "amd64").is_none());
        assert_eq!(
            kernel_package_version("linux-image-6.1.0-57-amd64", "amd64"),
            Some("6.1.0-57")
        );
        assert_eq!(
            kernel_package_version("linux-image-6.12.117+deb12-amd64-unsigned", "amd64"),
            Some("6.12.117+deb12")
        );
        assert!(deb_is_kernel(
            "linux-image-6.1.0-57-686-pae_6.1.192-3_i386.deb",
            &PAE32
        ));
        assert!(!deb_is_kernel(
            "linux-image-6.1.0-57-686-pae_6.1.192-3_i386.deb",
            &GENERIC
        ));
        assert!(deb_is_kernel(
            "linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb",
            &GENERIC
        ));
        assert!(!deb_is_kernel(
            "linux-image-6.1.0-48-cloud-amd64_6.1.172-1_amd64.deb",
            &GENERIC
        ));
        assert!(deb_is_kernel(
            "linux-image-6.1.0-48-cloud-amd64_6.1.172-1_amd64.deb",
            &CLOUD
        ));
    }

    #[test]
    fn picks_the_newest_concrete_kernel_package() {
        let search = "\
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64-dbg - Debug symbols
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
";
        assert_eq!(
            newest_kernel_package(search, &CLOUD).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let newer = format!(
            "{search}linux-image-6.12.117+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud\n"
        );
        assert_eq!(
            newest_kernel_package(&newer, &CLOUD).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
        assert_eq!(newest_kernel_package("busybox - tiny\n", &CLOUD), None);
    }

    #[test]
    fn version_key_compares_numbers_as_numbers() {
        assert!(version_key("6.1.0-9") < version_key("6.1.0-56"));
        assert!(version_key("6.1.0-56") < version_key("6.12.1+deb12"));
        assert!(version_key("a_1.2_amd64.deb") < version_key("a_1.10_amd64.deb"));
    }

    /// One member of a newc archive: name, mode, (rdevmajor, rdevminor), data.
    type Member = (String, u32, (u32, u32), Vec<u8>);

    /// Reads back a newc archive: the members before the trailer.
    fn parse(mut b: &[u8]) -> Vec<Member> {
        let mut members = Vec::new();
        let mut at = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at {at}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rdev, namesize) =
                (field(1), field(6), (field(9), field(10)), field(11));
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&b[110..name_end - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[name_end - 1], 0);
            let data_at = name_end.next_multiple_of(4);
            let data = b[data_at..data_at + size as usize].to_vec();
            let next = (data_at + size as usize).next_multiple_of(4);
            at += next;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty(), "bytes after the trailer");
                return members;
            }
            members.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn initramfs_has_init_busybox_links_and_console() {
        let cpio = initramfs_cpio(b"\x7fELF fake busybox", None);
        assert_eq!(cpio.len() % 4, 0);
        let members = parse(&cpio);
        let find = |name: &str| {
            members
                .iter()
                .find(|m| m.0 == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let init = find("init");
        assert_eq!(init.1, S_IFREG | 0o755);
        assert_eq!(init.3, init_script(None).as_bytes());
        assert_eq!(find("bin/busybox").3, b"\x7fELF fake busybox");
        let sh = find("bin/sh");
        assert_eq!(
            (sh.1, sh.3.as_slice()),
            (S_IFLNK | 0o777, b"busybox".as_slice())
        );
        let console = find("dev/console");
        assert_eq!((console.1, console.2), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(find("proc").1, S_IFDIR | 0o755);
        // Reproducible.
        assert_eq!(cpio, initramfs_cpio(b"\x7fELF fake busybox", None));
    }

    #[test]
    fn init_prints_the_checked_lines_and_powers_off() {
        for line in [
            "echo \"linux-guest: kernel $(uname -r)\"",
            "echo \"linux-guest: machine $(uname -m)\"",
            "echo \"linux-guest: nproc $cpus\"",
            "linux-guest: memtotal",
            "echo \"linux-guest: hypervisor flag $hv\"",
            "echo \"linux-guest: avx2 $avx2\"",
            "linux-guest: kernel warnings $(dmesg | grep -c",
            "echo \"linux-guest: tsc unstable $(dmesg | grep -c",
            "echo \"linux-guest: workload md5 $result\"",
            "echo \"linux-guest: powering off\"",
            "poweroff -f",
            "setsid cttyhack sh",
        ] {
            assert!(INIT_SCRIPT.contains(line), "{line}");
        }
        for applet in [
            "nproc", "awk", "seq", "sort", "md5sum", "cut", "setsid", "cttyhack", "dmesg", "grep",
            "sed",
        ] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
    }

    /// A minimal little-endian ELF relocatable with sections `.shstrtab`, `.rodata` (holding a
    /// decoy `depends=` string) and `.modinfo`.
    fn fake_module(elf64: bool, modinfo_bytes: &[u8]) -> Vec<u8> {
        let strtab = b"\0.shstrtab\0.rodata\0.modinfo\0";
        let rodata = b"\0depends=decoy\0";
        let ehsize = if elf64 { 64 } else { 52 };
        let shentsize = if elf64 { 64 } else { 40 };
        let mut elf = vec![0u8; ehsize];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = if elf64 { 2 } else { 1 };
        elf[5] = 1;
        elf[6] = 1;
        let mut sections = vec![(0u32, 0usize, 0usize)];
        for (name_at, data) in [
            (1u32, strtab.as_slice()),
            (11, rodata.as_slice()),
            (19, modinfo_bytes),
        ] {
            sections.push((name_at, elf.len(), data.len()));
            elf.extend_from_slice(data);
        }
        while elf.len() % 8 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        for (name_at, offset, size) in sections {
            let mut sh = vec![0u8; shentsize];
            sh[..4].copy_from_slice(&name_at.to_le_bytes());
            if elf64 {
                sh[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
                sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            } else {
                sh[0x10..0x14].copy_from_slice(&(offset as u32).to_le_bytes());
                sh[0x14..0x18].copy_from_slice(&(size as u32).to_le_bytes());
            }
            elf.extend_from_slice(&sh);
        }
        let put16 = |elf: &mut Vec<u8>, at: usize, v: u16| {
            elf[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        if elf64 {
            elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
            put16(&mut elf, 0x3a, shentsize as u16);
            put16(&mut elf, 0x3c, 4);
            put16(&mut elf, 0x3e, 1);
        } else {
            elf[0x20..0x24].copy_from_slice(&(shoff as u32).to_le_bytes());
            put16(&mut elf, 0x2e, shentsize as u16);
            put16(&mut elf, 0x30, 4);
            put16(&mut elf, 0x32, 1);
        }
        elf
    }

    #[test]
    fn modinfo_is_read_from_the_modinfo_section_of_elf64_and_elf32() {
        let info = b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0\
                     vermagic=6.1.0-48-cloud-amd64 SMP preempt mod_unload modversions \0";
        for elf64 in [true, false] {
            let ko = fake_module(elf64, info);
            assert_eq!(
                modinfo(&ko, "depends").as_deref(),
                Some("virtio,virtio_ring"),
                "elf64 {elf64}"
            );
            assert_eq!(modinfo(&ko, "name").as_deref(), Some("virtio_blk"));
            assert!(modinfo(&ko, "vermagic")
                .unwrap()
                .starts_with("6.1.0-48-cloud-amd64 "));
            assert_eq!(modinfo(&ko, "alias"), None);
        }
        // A module without dependencies has an empty `depends=`.
        assert_eq!(
            modinfo(&fake_module(true, b"depends=\0name=virtio\0"), "depends").as_deref(),
            Some("")
        );
        // The decoy outside .modinfo is never read; broken files give nothing.
        assert_eq!(modinfo(&fake_module(true, b"name=x\0"), "depends"), None);
        assert_eq!(modinfo(b"\x7fELF", "depends"), None);
        let mut truncated = fake_module(true, info);
        truncated.truncate(100);
        assert_eq!(modinfo(&truncated, "depends"), None);
    }

    #[test]
    fn config_values_tell_modules_from_built_in_code() {
        let config = "CONFIG_VIRTIO=m\nCONFIG_VIRTIO_PCI_LIB=m\nCONFIG_VIRTIO_BLK=y\n\
                      # CONFIG_VIRTIO_MMIO is not set\nCONFIG_LOCALVERSION=\"\"\n";
        assert_eq!(config_value(config, "CONFIG_VIRTIO"), Some("m"));
        assert_eq!(config_value(config, "CONFIG_VIRTIO_BLK"), Some("y"));
        // A symbol is not mistaken for a longer one it begins.
        assert_eq!(config_value(config, "CONFIG_VIRTIO_PCI"), None);
        assert_eq!(config_value(config, "CONFIG_VIRTIO_MMIO"), None);
        assert_eq!(config_value(config, "CONFIG_LOCALVERSION"), Some(""));
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        // The dependencies of Debian 12's modules (their `depends=`).
        let deps = |name: &str| -> Vec<String> {
            let d: &[&str] = match name {
                "virtio_pci" => &[
                    "virtio_pci_modern_dev",
                    "virtio_ring",
                    "virtio",
                    "virtio_pci_legacy_dev",
                ],
                "virtio_blk" => &["virtio", "virtio_ring"],
                "net_failover" => &["failover"],
                "virtio_net" => &["net_failover", "virtio", "virtio_ring"],
                "ext4" => &["jbd2", "mbcache", "crc16"],
                _ => &[],
            };
            d.iter().map(|s| s.to_string()).collect()
        };
        let wanted: Vec<&str> = GUEST_MODULES.iter().map(|(n, _)| *n).collect();
        let order = load_order(&wanted, &mut |n| Ok(deps(n))).unwrap();
        assert_eq!(
            order,
            [
                "virtio",
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
        // Asked for in the wrong order, dependencies still come first, each once.
        let order = load_order(&["virtio_net", "virtio"], &mut |n| Ok(deps(n))).unwrap();
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio",
                "virtio_ring",
                "virtio_net"
            ]
        );
        for (i, m) in order.iter().enumerate() {
            for d in deps(m) {
                let at = order.iter().position(|n| *n == d).unwrap();
                assert!(at < i, "{d} after {m}");
            }
        }
        let cycle = load_order(&["a"], &mut |n| {
            Ok(vec![if n == "a" { "b" } else { "a" }.to_string()])
        });
        assert!(format!("{:#}", cycle.unwrap_err()).contains("a -> b -> a"));
        let missing = load_order(&["a"], &mut |_| bail!("module a is not in the package"));
        assert!(missing.is_err());
    }

    fn modules_of(release: &str, names: &[&str]) -> GuestModules {
        GuestModules {
            release: release.to_string(),
            modules: names
                .iter()
                .map(|n| (n.to_string(), format!("\x7fELF {n}").into_bytes()))
                .collect(),
            builtin: vec!["ext4 (CONFIG_EXT4_FS=y)".to_string()],
        }
    }

    #[test]
    fn initramfs_holds_the_modules_in_load_order_and_init_loads_them_so() {
        let names = [
            "virtio",
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "virtio_blk",
            "failover",
            "net_failover",
            "virtio_net",
        ];
        let m = modules_of("6.1.0-48-cloud-amd64", &names);
        let members = parse(&initramfs_cpio(b"\x7fELF bb", Some(&m)));
        let dir = "lib/modules/6.1.0-48-cloud-amd64/";
        let in_cpio: Vec<&str> = members
            .iter()
            .filter_map(|m| m.0.strip_prefix(dir)?.strip_suffix(".ko"))
            .collect();
        assert_eq!(in_cpio, names);
        for member in members.iter().filter(|m| m.0.starts_with(dir)) {
            assert_eq!(member.1, S_IFREG | 0o644);
            let name = &member.0[dir.len()..member.0.len() - 3];
            assert_eq!(member.3, format!("\x7fELF {name}").as_bytes());
        }
        // Each directory comes before what is in it.
        let pos = |n: &str| members.iter().position(|m| m.0 == n).unwrap();
        assert!(pos("lib") < pos("lib/modules"));
        assert!(pos("lib/modules") < pos("lib/modules/6.1.0-48-cloud-amd64"));
        assert!(pos("lib/modules/6.1.0-48-cloud-amd64") < pos(&format!("{dir}virtio.ko")));

        let init =
            String::from_utf8(members.iter().find(|m| m.0 == "init").unwrap().3.clone()).unwrap();
        let loads: Vec<&str> = init
            .lines()
            .filter_map(|l| l.trim().strip_prefix("load "))
            .collect();
        assert_eq!(loads, names);
        assert!(init.contains("modules_release='6.1.0-48-cloud-amd64'"));
        assert!(init.contains("insmod \"/lib/modules/$modules_release/$1.ko\""));
        assert!(init.contains("echo \"linux-guest: virtio modules:$loaded\""));
        assert!(init.contains("Built in, so not here: ext4 (CONFIG_EXT4_FS=y)."));
        // The markers are gone; the modules come before the root branch, which comes before
        // the workload.
        assert!(!init.contains("@MODULES@") && !init.contains("@ROOT@"));
        let at = |s: &str| init.find(s).unwrap_or_else(|| panic!("no {s}"));
        assert!(at("load virtio_net") < at("if mount_root \"$(cat /proc/cmdline)\" /newroot"));
        assert!(at("exec switch_root /newroot /sbin/init") < at("*\" interactive=1 \"*)"));
        assert!(members.iter().any(|m| m.0 == "newroot"));

        // Without modules, /init says so.
        let bare = init_script(None);
        assert!(bare.contains("linux-guest: virtio modules: none in this initramfs"));
        assert!(!bare.contains("insmod"));
    }

    /// Runs the shell `script` with busybox sh (what the guest runs) when `cargo xtask build`
    /// has put it in target/linux/, else the host's `sh`.
    fn run_sh(script: &str) -> String {
        let busybox = dir().join("busybox");
        let mut cmd = if busybox.is_file() {
            let mut c = Command::new(&busybox);
            c.arg("sh");
            c
        } else {
            Command::new("sh")
        };
        let out = cmd.arg("-c").arg(script).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    #[test]
    fn init_root_branch_waits_mounts_and_reports_every_outcome() {
        let tmp = paths::target_dir().join("xtask-tests").join("mount-root");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("good/sbin")).unwrap();
        fs::create_dir_all(tmp.join("empty/foreign/sbin")).unwrap();
        fs::write(tmp.join("empty/foreign/sbin/init"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            tmp.join("empty/foreign/sbin/init"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs::write(tmp.join("good/sbin/init"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(
            tmp.join("good/sbin/init"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let (good, empty) = (tmp.join("good"), tmp.join("empty"));
        let (good, empty) = (good.display(), empty.display());
        // Stubs: shell functions come before busybox's applets and the PATH. (What `mount`
        // prints on success is captured by mount_root, so not seen here.)
        let script = format!(
            r#"
{MOUNT_ROOT}
sleeps=0
sleep() {{ sleeps=$((sleeps + 1)); }}
mkdir() {{ :; }}
umount() {{ echo "stub: umount $*"; }}
chroot() {{ [ "$1" != {empty}/foreign ]; }}
is_block() {{ case "$1" in /dev/vdgood | /dev/vdbadfs | /dev/vdnoinit) return 0 ;; esac; return 1; }}
mount() {{
    case "$*" in
    *vdbadfs*) echo "mount: mounting /dev/vdbadfs failed: Invalid argument" >&2; return 255 ;;
    esac
    echo "stub: mount $*"
}}
mount_root "console=ttyS0 quiet" /nowhere; echo "case none: rc=$?"
mount_root "console=ttyS0 root=/dev/vdmissing" {empty}; echo "case missing: rc=$? sleeps=$sleeps"
mount_root "root=LABEL=x" {empty}; echo "case label: rc=$?"
mount_root "root=/dev/vdbadfs" {good}; echo "case badfs: rc=$?"
mount_root "root=/dev/vdnoinit" {empty}; echo "case noinit: rc=$?"
mount_root "root=/dev/vdgood" {empty}/foreign; echo "case foreign: rc=$?"
mount_root "quiet root=/dev/vdgood ro rootfstype=ext2 rootcheck=1" {good}; echo "case good: rc=$?"
"#
        );
        let out = run_sh(&script);
        let expect = [
            "case none: rc=1".to_string(),
            "linux-guest: root: no block device /dev/vdmissing after 10 s; staying in the initramfs"
                .to_string(),
            "case missing: rc=1 sleeps=100".to_string(),
            "linux-guest: root: LABEL=x is not a /dev/ path; staying in the initramfs".to_string(),
            "case label: rc=1".to_string(),
            "linux-guest: root: mounting /dev/vdbadfs (ext4) failed: mount: mounting /dev/vdbadfs \
             failed: Invalid argument; staying in the initramfs"
                .to_string(),
            "case badfs: rc=1".to_string(),
            "linux-guest: root: /dev/vdnoinit (ext4) has no /sbin/init; staying in the initramfs"
                .to_string(),
            format!("stub: umount {empty}"),
            "case noinit: rc=1".to_string(),
            "linux-guest: root: /dev/vdgood (ext4): its /bin/sh does not run on this kernel; \
             staying in the initramfs"
                .to_string(),
            format!("stub: umount {empty}/foreign"),
            "case foreign: rc=1".to_string(),
            "linux-guest: root: /dev/vdgood mounted (ext2, ro); switching to it".to_string(),
            format!("stub: mount -o move /dev {good}/dev"),
            format!("stub: mount -o move /proc {good}/proc"),
            format!("stub: mount -o move /sys {good}/sys"),
            "case good: rc=0".to_string(),
        ];
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got, expect, "output:\n{out}");
        let _ = fs::remove_dir_all(&tmp);
    }

    #[test]
    fn init_configures_the_network_before_the_shell_and_runs_the_net_tests() {
        let init = init_script(None);
        assert!(!init.contains("# @NET@"));
        let at = |t: &str| init.find(t).unwrap_or_else(|| panic!("no `{t}` in /init"));
        // After the root switch, before the interactive shell (which then has eth0) and
        // the workload.
        let net = at("netmode=$(netarg netmode)");
        assert!(at("exec switch_root") < net);
        assert!(net < at(r#"*" interactive=1 "*)"#));
        assert!(net < at("# The workload"));

        let tmp = paths::target_dir().join("xtask-tests").join("net-section");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("eth0")).unwrap();
        for (f, v) in [
            ("address", "02:fe:00:00:00:03"),
            ("operstate", "up"),
            ("mtu", "1500"),
        ] {
            fs::write(tmp.join("eth0").join(f), format!("{v}\n")).unwrap();
        }
        let run = |cmdline: &str, ping_out: &str| {
            let cmd = tmp.join("cmdline");
            fs::write(&cmd, format!("{cmdline}\n")).unwrap();
            let section = NET_SECTION
                .replace("/proc/cmdline", &cmd.display().to_string())
                .replace(
                    "/sys/class/net/eth0",
                    &tmp.join("eth0").display().to_string(),
                )
                .replace("/tmp/ping", &tmp.join("ping").display().to_string());
            run_sh(&format!(
                r#"
ip() {{ echo "stub: ip $*"; }}
usleep() {{ :; }}
ping() {{ echo "PING $*"; echo "{ping_out}"; }}
off() {{ echo "stub: off"; exit 0; }}
{section}
echo "not reached with netmode"
"#
            ))
        };
        // netmode=ping: eth0 configured, the pings' summary, then power-off.
        let out = run(
            "console=ttyS0 netmode=ping netaddr=10.0.0.3/24 netpeer=10.0.0.1",
            "3 packets transmitted, 0 packets received, 100% packet loss",
        );
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(
            got,
            [
                "stub: ip link set lo up",
                "stub: ip link set eth0 up",
                "stub: ip addr add 10.0.0.3/24 dev eth0",
                "linux-guest: net eth0 02:fe:00:00:00:03 10.0.0.3/24 link up mtu 1500",
                "linux-guest: net ping 10.0.0.1: 3 packets transmitted, 0 packets received, 100% packet loss",
                "stub: off",
            ],
            "output:\n{out}"
        );
        // netaddr= alone: eth0 configured, and /init goes on (to the shell or workload).
        let out = run("console=ttyS0 interactive=1 netaddr=10.0.0.1/24", "");
        assert!(
            out.contains("stub: ip addr add 10.0.0.1/24 dev eth0"),
            "{out}"
        );
        assert!(out.ends_with("not reached with netmode\n"), "{out}");
        // Neither: nothing touched.
        let out = run("console=ttyS0 quiet", "");
        assert_eq!(out, "not reached with netmode\n");
        let _ = fs::remove_dir_all(&tmp);
    }
}
