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

/// `apt-get install` of [`APT_PACKAGES`], with qemu-utils at qemu-system-x86's candidate
/// version: some Debian images carry a backported qemu-utils that Breaks the release's
/// qemu-system-common, and apt then refuses the whole set (the pin may downgrade it).
fn apt_install() -> bool {
    let pin = apt_candidate("qemu-system-x86").map(|v| format!("{QEMU_IMG_PACKAGE}={v}"));
    let mut args: Vec<&str> = vec!["install", "-y", "--no-install-recommends"];
    if pin.is_some() {
        args.push("--allow-downgrades");
    }
    for p in APT_PACKAGES {
        match &pin {
            Some(pinned) if *p == QEMU_IMG_PACKAGE => args.push(pinned),
            _ => args.push(p),
        }
    }
    apt_get(&args)
}

/// The version apt would install of `package` (`apt-cache policy`), if it knows one.
fn apt_candidate(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    candidate_in(&String::from_utf8_lossy(&out.stdout))
}

/// The `Candidate:` of `apt-cache policy` output; `(none)` is none.
fn candidate_in(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(String::from)
}

fn apt_get(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds `qemu-img` (installing [`QEMU_IMG_PACKAGE`] as root with apt when it is missing).
pub fn ensure_qemu_img() -> Result<PathBuf> {
    ensure_tool("qemu-img", QEMU_IMG_PACKAGE)
}

/// The host tool `tool` (looked for in PATH, then in /usr/sbin and /sbin, where e2fsprogs puts
/// its tools and which a user's PATH may lack), from the Debian package `package`: as root with
/// apt, the package is installed when the tool is missing; otherwise the error says what to
/// install.
pub fn ensure_tool(tool: &str, package: &str) -> Result<PathBuf> {
    let find = || {
        in_path(tool).or_else(|| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.is_file())
        })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    if Path::new("/usr/bin/apt-get").is_file() && is_root() {
        eprintln!("xtask: `{tool}` missing; installing {package}");
        let install = ["install", "-y", "--no-install-recommends", package];
        if !apt_get(&install) {
            let _ = apt_get(&["update"]);
            let _ = apt_get(&install);
        }
        if let Some(found) = find() {
            return Ok(found);
        }
    }
    bail!("`{tool}` not found: install it with `sudo apt-get install -y {package}`")
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_candidate_version_is_read_from_apt_cache_policy() {
        let policy = "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n  Version table:\n     1:7.2+dfsg-7+deb12u18+b3 500\n";
        assert_eq!(
            super::candidate_in(policy).as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        assert_eq!(
            super::candidate_in("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(super::candidate_in("N: Unable to locate package x\n"), None);
    }
}
