//! The OS packages the emulators need: found, installed (root on Debian/Ubuntu), or explained.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

/// Debian/Ubuntu packages that provide everything [`Emulators`] looks for, and qemu-img
/// (for `cargo xtask import-ovf`), installed with them.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "ovmf",
    "bochs",
    "bochsbios",
    "vgabios",
    QEMU_IMG_PACKAGE,
];

/// The Debian/Ubuntu package with `qemu-img` (`cargo xtask import-ovf` converts disks with it).
pub const QEMU_IMG_PACKAGE: &str = "qemu-utils";

/// Environment variable naming an OVMF image to use instead of the distribution's.
pub const OVMF_ENV: &str = "FERROVISOR_OVMF";

const OVMF_CANDIDATES: &[&str] = &[
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/OVMF/OVMF.fd",
    "/usr/share/qemu/OVMF.fd",
];
const VGABIOS_CANDIDATES: &[&str] = &[
    "/usr/share/bochs/VGABIOS-lgpl-latest",
    "/usr/share/vgabios/vgabios.bin",
];

/// Which emulator a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Bochs,
    Qemu,
}

/// Paths of the emulator binaries and firmware found on this machine.
#[derive(Debug, Clone, Default)]
pub struct Emulators {
    pub bochs: Option<PathBuf>,
    pub vgabios: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
    pub ovmf: Option<PathBuf>,
}

impl Emulators {
    /// Looks for everything, installs nothing.
    pub fn find() -> Self {
        let ovmf = match std::env::var_os(OVMF_ENV) {
            Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
            None => first_file(OVMF_CANDIDATES),
        };
        Self {
            bochs: in_path("bochs"),
            vgabios: first_file(VGABIOS_CANDIDATES),
            qemu: in_path("qemu-system-x86_64"),
            ovmf,
        }
    }

    /// What is missing for `need`, in words.
    pub fn missing(&self, need: Need) -> Vec<String> {
        let mut missing = Vec::new();
        if self.ovmf.is_none() {
            missing.push(match std::env::var_os(OVMF_ENV) {
                Some(path) => format!(
                    "OVMF firmware ({OVMF_ENV}={} is not a file)",
                    path.to_string_lossy()
                ),
                None => format!(
                    "OVMF firmware (looked for {}; {OVMF_ENV} can name another)",
                    OVMF_CANDIDATES.join(", ")
                ),
            });
        }
        match need {
            Need::Bochs => {
                if self.bochs.is_none() {
                    missing.push("bochs (not in PATH)".to_string());
                }
                if self.vgabios.is_none() {
                    missing.push(format!("a VGA BIOS ({})", VGABIOS_CANDIDATES.join(" or ")));
                }
            }
            Need::Qemu => {
                if self.qemu.is_none() {
                    missing.push("qemu-system-x86_64 (not in PATH)".to_string());
                }
            }
        }
        missing
    }
}

/// The command a person runs to install the emulators.
pub fn install_hint() -> String {
    format!("sudo apt-get install -y {}", APT_PACKAGES.join(" "))
}

/// Finds what `needs` require; when something is missing and we are root on a system with
/// apt-get, installs the packages (running `apt-get update` first if a plain install fails);
/// otherwise fails with the command to run.
pub fn ensure(needs: &[Need]) -> Result<Emulators> {
    let found = Emulators::find();
    let missing: Vec<String> = needs.iter().flat_map(|n| found.missing(*n)).collect();
    if missing.is_empty() {
        return Ok(found);
    }
    let apt = Path::new("/usr/bin/apt-get").is_file();
    if !(apt && is_root()) {
        bail!(
            "missing: {}.\nInstall the emulator packages with:\n    {}",
            missing.join("; "),
            install_hint()
        );
    }
    eprintln!(
        "xtask: missing {}; installing {}",
        missing.join("; "),
        APT_PACKAGES.join(" ")
    );
    if !apt_install() {
        eprintln!("xtask: apt-get install failed; running apt-get update and retrying");
        let _ = apt_get(&["update"]);
        if !apt_install() {
            bail!(
                "`apt-get install -y {}` failed (see above)",
                APT_PACKAGES.join(" ")
            );
        }
    }
    let found = Emulators::find();
    let missing: Vec<String> = needs.iter().flat_map(|n| found.missing(*n)).collect();
    if !missing.is_empty() {
        bail!(
            "still missing after installing packages: {}",
            missing.join("; ")
        );
    }
    Ok(found)
}

fn apt_install() -> bool {
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(APT_PACKAGES);
    apt_get(&args)
}

fn apt_get(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds `qemu-img`; when it is missing and we are root on a system with apt-get, installs
/// [`QEMU_IMG_PACKAGE`] (running `apt-get update` first if a plain install fails); otherwise
/// fails with the command to run.
pub fn ensure_qemu_img() -> Result<PathBuf> {
    if let Some(path) = in_path("qemu-img") {
        return Ok(path);
    }
    if !(Path::new("/usr/bin/apt-get").is_file() && is_root()) {
        bail!(
            "qemu-img is not in PATH. Install it with:\n    sudo apt-get install -y {QEMU_IMG_PACKAGE}"
        );
    }
    eprintln!("xtask: qemu-img missing; installing {QEMU_IMG_PACKAGE}");
    let install = || apt_get(&["install", "-y", "--no-install-recommends", QEMU_IMG_PACKAGE]);
    if !install() {
        let _ = apt_get(&["update"]);
        if !install() {
            bail!("`apt-get install -y {QEMU_IMG_PACKAGE}` failed (see above)");
        }
    }
    in_path("qemu-img").ok_or_else(|| {
        anyhow::anyhow!("qemu-img still not in PATH after installing {QEMU_IMG_PACKAGE}")
    })
}

/// True when the effective user is root (read from /proc, Linux only).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// Why QEMU with KVM and nested VT-x cannot work here, if it can't.
pub fn kvm_unusable() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    if !flags.split_whitespace().any(|f| f == "vmx") {
        return Some(
            "this CPU has no `vmx` flag in /proc/cpuinfo: --kvm needs an Intel host with VT-x \
             (and, inside a VM, nested virtualization); use Bochs instead (the default)"
                .to_string(),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!(
            "/dev/kvm cannot be opened ({e}): load kvm_intel and check its permissions \
             (e.g. add yourself to the kvm group)"
        ));
    }
    let nested =
        std::fs::read_to_string("/sys/module/kvm_intel/parameters/nested").unwrap_or_default();
    if !matches!(nested.trim(), "Y" | "y" | "1") {
        return Some(
            "kvm_intel is not loaded with nested=1 (see /sys/module/kvm_intel/parameters/nested): \
             run `sudo modprobe -r kvm_intel && sudo modprobe kvm_intel nested=1`"
                .to_string(),
        );
    }
    None
}

fn first_file(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
