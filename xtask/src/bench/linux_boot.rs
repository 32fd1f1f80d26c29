//! Linux boot ratio: Debian's kernel under ferrovisor versus the same kernel booted directly by
//! the firmware, both in the same Bochs configuration.
//!
//! - `linux-hv`: ferrovisor with `tests/manifests/bench-linux.toml` (one guest `linux`, 1 vCPU,
//!   256 MiB, `bzimage`).
//! - `linux-direct`: no hypervisor. The ESP holds the kernel as `\vmlinuz.efi`, the initramfs
//!   and a `startup.nsh`; with no `\EFI\BOOT\BOOTX64.EFI` OVMF ends in its UEFI shell, which runs
//!   `startup.nsh` after a 5 s countdown, and the kernel starts through its EFI stub with the
//!   guest's command line plus [`DIRECT_EXTRA_CMDLINE`]. There is no ACPI under Bochs + OVMF, so
//!   `poweroff -f` only halts: the run ends on the kernel's `reboot: ...` line
//!   ([`direct_boot_ended`]).
//!
//! Two figures per boot, both from the serial console:
//! - wall seconds from the kernel's `Linux version` banner to `linux-guest: powering off` (or,
//!   when the halt cut that line short, the kernel's `reboot:` line right after it), timed as
//!   the lines arrive (the log is polled every 50 ms);
//! - the kernel's own timestamp on its `reboot: Power down` / `reboot: System halted` line:
//!   guest time from the start of its TSC clock to power-off. The guest's TSC is Bochs' TSC,
//!   which counts executed instructions, so this is an instruction count in seconds of a
//!   ~200 MHz clock: deterministic up to interrupt timing, and blind to the host's load.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::guest_line;

/// What `bench-linux.toml` adds to linux1's command line (`linux.toml`): the TSC rate, so that
/// both kernels count time in the same unit. Left alone, the directly booted kernel takes
/// 3500 MHz from CPUID leaf 0x16 of Bochs' CPU model while the guest of ferrovisor calibrates
/// ~200 MHz against the PM timer; Bochs' TSC runs at its `ips` (200,000,000 per emulated
/// second) in both, so 200000 kHz makes both kernels' timestamps emulated seconds.
pub const TSC_CMDLINE: &str = "tsc_early_khz=200000";
/// The guest's name in `bench-linux.toml`.
pub const GUEST: &str = "linux";
/// Added to the guest's command line for the direct boot: one CPU like the guest (Bochs has
/// one CPU in both runs anyway) and the guest's RAM size (OVMF hands the kernel all of the
/// emulated 512 MiB; under ferrovisor it has 256 MiB).
pub const DIRECT_EXTRA_CMDLINE: &str = "maxcpus=1 mem=256M";
/// The kernel's file name on the direct-boot ESP.
pub const KERNEL_ON_ESP: &str = "vmlinuz.efi";
/// The initramfs' file name on the direct-boot ESP.
pub const INITRD_ON_ESP: &str = "initrd.gz";

/// What a direct boot puts on its ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line (without `initrd=`).
    pub cmdline: String,
}

impl DirectBoot {
    /// `startup.nsh`: the UEFI shell runs it when nothing else booted.
    pub fn startup_nsh(&self) -> String {
        format!(
            "fs0:\r\n\\{KERNEL_ON_ESP} {} initrd=\\{INITRD_ON_ESP}\r\n",
            self.cmdline
        )
    }

    /// Lays out the ESP directory `dir` (created, emptied first).
    pub fn write_esp(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (source, name) in [(&self.kernel, KERNEL_ON_ESP), (&self.initrd, INITRD_ON_ESP)] {
            fs::copy(source, dir.join(name)).with_context(|| {
                format!(
                    "copying {} to {}",
                    source.display(),
                    dir.join(name).display()
                )
            })?;
        }
        fs::write(dir.join("startup.nsh"), self.startup_nsh())?;
        Ok(())
    }

    /// What the boot is, for the report.
    pub fn describe(&self) -> String {
        format!(
            "OVMF → EFI stub: {} + {}",
            crate::paths::display(&self.kernel),
            crate::paths::display(&self.initrd)
        )
    }
}

/// Where a direct boot's serial console says the machine is done: the kernel's last words
/// before it halts (`reboot: System halted` / `reboot: Power down`), a panic, or the KVM
/// peer's `kvm-peer: done`.
pub fn direct_boot_ended(line: &str) -> bool {
    reboot_line(line).is_some()
        || line.contains("Kernel panic - not syncing")
        || line.contains("kvm-peer: done")
}

/// The kernel's `[ <seconds>] reboot: <what>` anywhere in a console line (the halt can cut the
/// line before it short, leaving both on one line): (seconds, `reboot: <what>`).
pub fn reboot_line(text: &str) -> Option<(f64, &str)> {
    let at = text.find("] reboot: ")?;
    let open = text[..at].rfind('[')?;
    let secs = kernel_timestamp(&text[open..])?;
    Some((secs, text[at + 2..].trim()))
}

/// The `[    1.234567]` timestamp at the start of a kernel console line, in seconds.
pub fn kernel_timestamp(text: &str) -> Option<f64> {
    let rest = text.trim_start().strip_prefix('[')?;
    let (secs, _) = rest.split_once(']')?;
    let secs = secs.trim();
    (secs.contains('.') && secs.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .then(|| secs.parse().ok())
        .flatten()
}

/// One Linux boot, read from its serial console.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinuxBoot {
    /// `linux-hv` or `linux-direct`.
    pub run: String,
    /// Wall seconds from the emulator's start to the `Linux version` banner.
    pub banner_wall_s: Option<f64>,
    /// Wall seconds from the emulator's start to `linux-guest: powering off` (or the kernel's
    /// `reboot:` line when that one came first or the first was cut short).
    pub end_wall_s: Option<f64>,
    /// Which line `end_wall_s` is from.
    pub end_line: Option<String>,
    /// The kernel's `reboot: ...` line (without the timestamp) and its timestamp.
    pub reboot_line: Option<String>,
    pub reboot_kernel_s: Option<f64>,
    /// What /init printed: `linux-guest: <key> <value>`.
    pub kernel_release: Option<String>,
    pub nproc: Option<String>,
    pub memtotal: Option<String>,
    pub hypervisor_flag: Option<String>,
    pub workload: Option<String>,
    /// How the boot ended (or why it could not run).
    pub ended: String,
}

impl LinuxBoot {
    /// Reads the timed console lines of a boot; `guest` names the ferrovisor guest whose
    /// `[<guest>] ` lines are the kernel's (`None`: the whole console is the kernel's).
    pub fn analyse(
        run: &str,
        lines: &[(Duration, String)],
        guest: Option<&str>,
        ended: &str,
    ) -> Self {
        let mut b = LinuxBoot {
            run: run.to_string(),
            ended: ended.to_string(),
            ..Default::default()
        };
        for (at, line) in lines {
            let text = match guest {
                Some(name) => match guest_line(line) {
                    Some((n, text)) if n == name => text,
                    _ => continue,
                },
                None => line.as_str(),
            };
            let at = at.as_secs_f64();
            if b.banner_wall_s.is_none() && text.contains("Linux version ") {
                b.banner_wall_s = Some(at);
            }
            if b.end_wall_s.is_none()
                && (text.contains("linux-guest: powering off") || reboot_line(text).is_some())
            {
                b.end_wall_s = Some(at);
                b.end_line = Some(text.trim().to_string());
            }
            if b.reboot_kernel_s.is_none() {
                if let Some((ts, what)) = reboot_line(text) {
                    b.reboot_kernel_s = Some(ts);
                    b.reboot_line = Some(what.to_string());
                }
            }
            if let Some(rest) = text.trim().strip_prefix("linux-guest: ") {
                let set = |slot: &mut Option<String>, key: &str| {
                    if let Some(v) = rest.strip_prefix(key) {
                        *slot = Some(v.trim().to_string());
                    }
                };
                set(&mut b.kernel_release, "kernel ");
                set(&mut b.nproc, "nproc ");
                set(&mut b.memtotal, "memtotal ");
                set(&mut b.hypervisor_flag, "hypervisor flag ");
                set(&mut b.workload, "workload ");
            }
        }
        b
    }

    /// (a): wall seconds from the banner to power-off.
    pub fn wall_s(&self) -> Option<f64> {
        Some(self.end_wall_s? - self.banner_wall_s?)
    }
}

/// Both boots and their ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxReport {
    pub hv: LinuxBoot,
    pub direct: LinuxBoot,
    /// The guest's command line under ferrovisor, and the direct boot's.
    pub hv_cmdline: String,
    pub direct_cmdline: String,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl LinuxReport {
    /// (a) ferrovisor / direct, wall seconds.
    pub fn wall_ratio(&self) -> Option<f64> {
        ratio(self.hv.wall_s(), self.direct.wall_s())
    }

    /// (b) ferrovisor / direct, the kernel's timestamps at power-off.
    pub fn kernel_ratio(&self) -> Option<f64> {
        ratio(self.hv.reboot_kernel_s, self.direct.reboot_kernel_s)
    }

    /// Rows: figure, under ferrovisor, direct, ratio.
    pub fn rows(&self) -> Vec<[String; 4]> {
        let secs = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$} s"))
        };
        let times = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}×"));
        let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "n/a".into());
        vec![
            [
                "(a) wall time, kernel banner → `linux-guest: powering off` (host seconds)".into(),
                secs(self.hv.wall_s(), 1),
                secs(self.direct.wall_s(), 1),
                times(self.wall_ratio()),
            ],
            [
                "(b) kernel time at its `reboot:` line (guest TSC, emulated seconds)".into(),
                secs(self.hv.reboot_kernel_s, 3),
                secs(self.direct.reboot_kernel_s, 3),
                times(self.kernel_ratio()),
            ],
            [
                "emulator start → kernel banner, wall (firmware; hypervisor start)".into(),
                secs(self.hv.banner_wall_s, 1),
                secs(self.direct.banner_wall_s, 1),
                String::new(),
            ],
            [
                "CPUs / memory the kernel saw (nproc, MemTotal)".into(),
                format!("{} / {}", text(&self.hv.nproc), text(&self.hv.memtotal)),
                format!(
                    "{} / {}",
                    text(&self.direct.nproc),
                    text(&self.direct.memtotal)
                ),
                String::new(),
            ],
            [
                "CPUID hypervisor flag".into(),
                text(&self.hv.hypervisor_flag),
                text(&self.direct.hypervisor_flag),
                String::new(),
            ],
            [
                "last kernel line".into(),
                text(&self.hv.reboot_line),
                text(&self.direct.reboot_line),
                String::new(),
            ],
        ]
    }

    /// What went wrong, if anything, for the report.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for b in [&self.hv, &self.direct] {
            if b.banner_wall_s.is_none() {
                notes.push(format!(
                    "{}: no `Linux version` banner on the console ({})",
                    b.run, b.ended
                ));
            }
            if b.end_wall_s.is_none() {
                notes.push(format!(
                    "{}: the kernel never reached power-off on the console ({})",
                    b.run, b.ended
                ));
            }
            if let Some(end) = b
                .end_line
                .as_deref()
                .filter(|l| !l.starts_with("linux-guest: powering off"))
            {
                notes.push(format!(
                    "{}: /init's last lines (the workload's result, `linux-guest: powering \
                     off`) were still in the kernel's serial buffer when the kernel halted, so \
                     (a) ends at the kernel's `reboot:` line, which came right after them: `{end}`",
                    b.run
                ));
            }
        }
        if let (Some(a), Some(b)) = (&self.hv.kernel_release, &self.direct.kernel_release) {
            if a != b {
                notes.push(format!("the two boots ran different kernels: {a} and {b}"));
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(lines: &[(f64, &str)]) -> Vec<(Duration, String)> {
        lines
            .iter()
            .map(|(s, l)| (Duration::from_secs_f64(*s), l.to_string()))
            .collect()
    }

    #[test]
    fn timestamps_and_end_lines() {
        assert_eq!(
            kernel_timestamp("[    1.404308] reboot: System halted"),
            Some(1.404308)
        );
        assert_eq!(kernel_timestamp("[linux] x"), None);
        assert_eq!(kernel_timestamp("[ 12] x"), None);
        assert!(direct_boot_ended("[    1.404308] reboot: System halted"));
        assert!(direct_boot_ended(
            "linux-guest: powe[    1.4] reboot: Power down"
        ));
        assert_eq!(
            reboot_line("x[    1.5] reboot: System halted"),
            Some((1.5, "reboot: System halted"))
        );
        assert!(direct_boot_ended("kvm-peer: done"));
        assert!(!direct_boot_ended("echo reboot: now"));
    }

    #[test]
    fn hv_and_direct_boots_are_read() {
        let hv = timed(&[
            (15.0, "hv: ferrovisor 0.1.0 starting"),
            (
                20.0,
                "[linux] [    0.000000] Linux version 6.1.0-56-cloud-amd64 (x)",
            ),
            (21.0, "[other] Linux version 9"),
            (60.0, "[linux] linux-guest: kernel 6.1.0-56-cloud-amd64"),
            (60.1, "[linux] linux-guest: nproc 1"),
            (60.2, "[linux] linux-guest: memtotal 230000 kB"),
            (60.3, "[linux] linux-guest: hypervisor flag yes"),
            (70.0, "[linux] linux-guest: workload md5 ea4d"),
            (71.0, "[linux] linux-guest: powering off"),
            (71.5, "[linux] [    3.250000] reboot: Power down"),
        ]);
        let hv = LinuxBoot::analyse("linux-hv", &hv, Some(GUEST), "power-off");
        assert_eq!(hv.banner_wall_s, Some(20.0));
        assert_eq!(hv.end_wall_s, Some(71.0));
        assert_eq!(hv.wall_s(), Some(51.0));
        assert_eq!(hv.reboot_kernel_s, Some(3.25));
        assert_eq!(hv.reboot_line.as_deref(), Some("reboot: Power down"));
        assert_eq!(hv.nproc.as_deref(), Some("1"));
        assert_eq!(hv.hypervisor_flag.as_deref(), Some("yes"));
        // The halt cut the last line of /init short: the kernel's line ends the boot.
        let direct = timed(&[
            (
                30.0,
                "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (x)",
            ),
            (50.0, "linux-guest: kernel 6.1.0-56-cloud-amd64"),
            (55.0, "linux-guest: workload md5 ea4d"),
            (
                56.0,
                "linux-guest: powe[    1.625000] reboot: System halted",
            ),
        ]);
        let direct = LinuxBoot::analyse("linux-direct", &direct, None, "line");
        assert_eq!(direct.wall_s(), Some(26.0));
        assert_eq!(direct.reboot_kernel_s, Some(1.625));
        let direct = timed(&[
            (
                30.0,
                "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (x)",
            ),
            (55.0, "linux-guest: workload md5 ea4d"),
            (56.0, "[    1.625000] reboot: System halted"),
        ]);
        let direct = LinuxBoot::analyse("linux-direct", &direct, None, "line");
        assert_eq!(direct.wall_s(), Some(26.0));
        assert_eq!(direct.reboot_kernel_s, Some(1.625));
        let report = LinuxReport {
            hv,
            direct,
            hv_cmdline: "a".into(),
            direct_cmdline: "a maxcpus=1".into(),
        };
        assert_eq!(report.kernel_ratio(), Some(2.0));
        assert!((report.wall_ratio().unwrap() - 51.0 / 26.0).abs() < 1e-12);
        assert_eq!(report.rows()[1][3], "2.00×");
        let notes = report.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("linux-direct: /init's last lines"),
            "{notes:?}"
        );
    }

    #[test]
    fn startup_nsh_runs_the_kernel_with_its_initrd() {
        let d = DirectBoot {
            kernel: "k".into(),
            initrd: "i".into(),
            cmdline: "console=ttyS0 quiet maxcpus=1".into(),
        };
        assert_eq!(
            d.startup_nsh(),
            "fs0:\r\n\\vmlinuz.efi console=ttyS0 quiet maxcpus=1 initrd=\\initrd.gz\r\n"
        );
    }
}
