//! What the figures were measured on, and how each boot went.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Done, Options, DEFAULT_CYCLES};
use crate::machine::{self, Echo, Emulator, EndedBy, MachineConfig, Media};
use crate::paths;

/// What the figures were measured on.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub bochs_version: String,
    pub bochs_package: String,
    pub cpu_line: String,
    pub commit: String,
    pub dirty: Option<bool>,
    pub date: String,
    pub host_cpu: String,
    pub host_cores: usize,
    pub cycles: u64,
    /// The Linux kernel of the Linux and KVM boots, when they ran (`<release> from <deb>`).
    pub kernel: Option<String>,
}

impl Config {
    pub(super) fn gather(options: &Options) -> Self {
        let out = |program: &str, args: &[&str]| -> String {
            Command::new(program)
                .args(args)
                .current_dir(paths::root())
                .output()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                    s += &String::from_utf8_lossy(&o.stderr);
                    s
                })
                .unwrap_or_default()
        };
        let bochs_help = out("bochs", &["--help"]);
        let bochs_version = bochs_help
            .lines()
            .find_map(|l| l.trim().strip_prefix("Bochs x86 Emulator "))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let package = out("dpkg-query", &["-W", "-f", "${Version}", "bochs"]);
        let commit = out("git", &["rev-parse", "HEAD"]).trim().to_string();
        let status = Command::new("git")
            .args(["status", "--porcelain"])
            .current_dir(paths::root())
            .output()
            .ok()
            .filter(|o| o.status.success());
        let host_cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            bochs_version,
            bochs_package: if package.contains("no packages") || package.is_empty() {
                "not a Debian package".into()
            } else {
                package.trim().to_string()
            },
            cpu_line: bochs_cpu_line(),
            commit: if commit.len() == 40 {
                commit
            } else {
                "unknown".into()
            },
            dirty: status.map(|o| !o.stdout.is_empty()),
            date: out("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .trim()
                .to_string(),
            host_cpu,
            host_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cycles: options.cycles.unwrap_or(DEFAULT_CYCLES),
            kernel: None,
        }
    }
}

/// The `cpu:` line every bench boot's bochsrc has (CPU count aside).
pub(super) fn bochs_cpu_line() -> String {
    let cfg = MachineConfig {
        emulator: Emulator::Bochs,
        cpus: 1,
        memory_mib: 512,
        timeout: None,
        media: Media::EspDir(PathBuf::from("esp")),
        run_dir: PathBuf::from("run"),
        echo: Echo::Quiet,
        nic: None,
    };
    machine::bochsrc(&cfg, Path::new("OVMF.fd"), 2 << 20, Path::new("vga.bin"))
        .lines()
        .find(|l| l.starts_with("cpu:"))
        .unwrap_or("cpu: ?")
        .replace("count=1, ", "count=<n>, ")
}

/// How one boot went.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub name: String,
    pub manifest: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub wall_s: Option<f64>,
    pub powered_off: bool,
    /// A direct boot's end: the serial line it waited for, which came (the emulator was then
    /// stopped).
    pub line_seen: Option<String>,
    pub summary: String,
}

impl RunInfo {
    pub(super) fn of(d: &Done) -> Self {
        let (wall_s, powered_off, line_seen, summary) = match &d.result {
            Ok(r) => (
                Some(r.wall.as_secs_f64()),
                r.ended_by == EndedBy::PowerOff,
                (r.ended_by == EndedBy::LineSeen).then(|| r.reason.clone().unwrap_or_default()),
                r.summary(),
            ),
            Err(e) => (None, false, None, format!("could not run: {e}")),
        };
        Self {
            name: d.job.name.clone(),
            manifest: d.job.what(),
            cpus: d.job.cpus,
            memory_mib: d.job.memory_mib,
            wall_s,
            powered_off,
            line_seen,
            summary,
        }
    }
}
