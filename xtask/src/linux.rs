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
/// The names a manifest may use for the prepared Linux files (see [`crate::esp::resolve`]).
pub const ASSET_FILES: &[&str] = &[
    KERNEL_FILE,
    INITRD_FILE,
    GENERIC_KERNEL_FILE,
    KERNEL32_FILE,
    INITRD32_FILE,
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
    let initrd32 = initramfs(&dir, &busybox32, INITRD32_FILE)?;
    Ok(MoreLinuxAssets {
        generic_kernel,
        generic_release,
        kernel32,
        kernel32_release,
        initrd32,
    })
}

/// [`prepare`] in another directory.
pub fn prepare_in(dir: &Path) -> Result<LinuxAssets> {
    fs::create_dir_all(dir.join("debs"))
        .with_context(|| format!("creating {}", dir.join("debs").display()))?;
    let (cloud, kernel_release) = kernel(dir, &CLOUD)?;
    let busybox64 = busybox(dir, "amd64")?;
    let initrd = initramfs(dir, &busybox64, INITRD_FILE)?;
    Ok(LinuxAssets {
        kernel: cloud,
        initrd,
        kernel_release,
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

/// The initramfs' `/init`. Lines starting `linux-guest: ` are checked by the integration test.
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
    "sh", "ash", "mount", "umount", "mkdir", "cat", "echo", "grep", "awk", "sed", "cut", "sort",
    "seq", "md5sum", "uname", "nproc", "wc", "poweroff", "reboot", "sync", "setsid", "cttyhack",
    "hostname", "sleep", "ls", "ps", "dmesg", "free", "head", "tail", "rm", "cp", "mv", "ln",
];

/// Builds the initramfs from `busybox` and [`INIT_SCRIPT`]; writes `dir/file` when it changed.
fn initramfs(dir: &Path, busybox: &Path, file: &str) -> Result<PathBuf> {
    let busybox_bytes =
        fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let cpio = initramfs_cpio(&busybox_bytes);
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

/// The initramfs as a newc cpio archive.
pub fn initramfs_cpio(busybox: &[u8]) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "root", "etc"] {
        cpio.dir(d, 0o755);
    }
    cpio.file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    // The kernel opens /dev/console for init before /init can mount devtmpfs.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes());
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
        let cpio = initramfs_cpio(b"\x7fELF fake busybox");
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
        assert_eq!(init.3, INIT_SCRIPT.as_bytes());
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
        assert_eq!(cpio, initramfs_cpio(b"\x7fELF fake busybox"));
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
}
