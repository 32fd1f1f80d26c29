//! Boots ferrovisor in an emulator and checks its serial console.
//!
//! ```no_run
//! use integration_tests::Scenario;
//!
//! let mut boot = Scenario::qemu("example", "hello.toml").timeout_secs(120).boot();
//! boot.line("hv: ferrovisor 0.1.0 starting")
//!     .line_starting("hv: powering off")
//!     .powered_off();
//! boot.finish();
//! ```
//!
//! A boot is expensive (Bochs needs about 15 s to reach the UEFI application), so each test
//! boots once and makes many checks; [`Boot::finish`] reports every failed check together with
//! the serial console and, when the machine did not power off, the emulator's log.
//!
//! The tests use what `cargo xtask build` left (`cargo xtask test` builds first). Each scenario
//! runs in `target/runs/<scenario>/`, which keeps the ESP, the emulator configuration and the
//! logs for a look afterwards. Set `FERROVISOR_TEST_ECHO=1` to watch the consoles live.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use xtask::machine::{self, Echo, MachineConfig, Media};
pub use xtask::machine::{Action, Step};
pub use xtask::machine::{Emulator, EndedBy, RunResult};
use xtask::prereq::{self, Need};
use xtask::{esp, paths};

/// Environment variable: when set (to anything but `0`), consoles are echoed live to stderr.
pub const ECHO_ENV: &str = "FERROVISOR_TEST_ECHO";

/// The time between two keys typed by [`Scenario::send_after`]: a loaded machine running
/// Bochs takes a few hundred ms of wall time for a 5 ms time slice, after which the
/// hypervisor reads its console again, and the UART keeps only 16 bytes meanwhile.
pub const TYPING_PACE: Duration = Duration::from_millis(100);

/// One machine to boot: an emulator, a manifest from `tests/manifests/`, and its resources.
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    manifest: PathBuf,
    emulator: Emulator,
    cpus: u32,
    memory_mib: u32,
    timeout: Duration,
    nic: Option<machine::Nic>,
    /// Console input and calls made while the machine runs (see [`Scenario::send_after`]).
    script: Vec<Step>,
}

impl Scenario {
    /// A Bochs machine (VT-x with EPT): 2 CPUs, 512 MiB, 600 s timeout.
    pub fn bochs(name: &str, manifest: &str) -> Self {
        Self::new(name, manifest, Emulator::Bochs, 600)
    }

    /// A QEMU TCG machine (no VT-x): 2 CPUs, 512 MiB, 120 s timeout.
    pub fn qemu(name: &str, manifest: &str) -> Self {
        Self::new(name, manifest, Emulator::Qemu, 120)
    }

    fn new(name: &str, manifest: &str, emulator: Emulator, timeout_secs: u64) -> Self {
        Self {
            name: name.to_string(),
            manifest: paths::manifests_dir().join(manifest),
            emulator,
            cpus: 2,
            memory_mib: 512,
            timeout: Duration::from_secs(timeout_secs),
            nic: None,
            script: Vec::new(),
        }
    }

    /// Gives the machine an e1000 NIC with user-mode NAT (slirp): DHCP hands out 10.0.2.15.
    pub fn with_nic(mut self) -> Self {
        self.nic = Some(machine::Nic::default());
        self
    }

    /// Forwards `host_port` on 127.0.0.1 to TCP port `machine_port` of the machine's DHCP
    /// address (10.0.2.15); implies [`Self::with_nic`].
    pub fn forward_port(mut self, host_port: u16, machine_port: u16) -> Self {
        let nic = self.nic.get_or_insert_with(machine::Nic::default);
        nic.forward.push((host_port, machine_port));
        self
    }

    /// Once a serial line containing `line` has appeared (after the previous scripted step),
    /// types `bytes` on the console (COM1), one every [`TYPING_PACE`] as keys come, not all at
    /// once. Steps run in the order they were added.
    pub fn send_after(self, line: &str, bytes: &[u8]) -> Self {
        self.send_after_delay(line, Duration::ZERO, bytes)
    }

    /// [`Self::send_after`], `delay` after the line appeared.
    pub fn send_after_delay(mut self, line: &str, delay: Duration, bytes: &[u8]) -> Self {
        self.script.push(Step {
            after: line.to_string(),
            delay,
            action: Action::Send(bytes.to_vec()),
            pace: TYPING_PACE,
        });
        self
    }

    /// Once a serial line containing `line` has appeared (after the previous scripted step),
    /// calls `f` while the machine runs (e.g. to send it network requests).
    pub fn call_after(mut self, line: &str, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.script.push(Step {
            after: line.to_string(),
            delay: Duration::ZERO,
            action: Action::Call(std::sync::Arc::new(f)),
            pace: Duration::ZERO,
        });
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn memory_mib(mut self, memory_mib: u32) -> Self {
        self.memory_mib = memory_mib;
        self
    }

    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout = Duration::from_secs(secs);
        self
    }

    /// Lays out the ESP and boots it. Panics with a clear message when the build output or the
    /// emulator is missing.
    pub fn boot(&self) -> Boot {
        let boot_efi = paths::boot_efi();
        if !boot_efi.is_file() {
            panic!(
                "{} is missing: run `cargo xtask build` first (`cargo xtask test` does)",
                boot_efi.display()
            );
        }
        let emulators = prereq::Emulators::find();
        let need = match self.emulator {
            Emulator::Bochs => Need::Bochs,
            _ => Need::Qemu,
        };
        let missing = emulators.missing(need);
        if !missing.is_empty() {
            panic!(
                "cannot run {}: missing {}.\nInstall with: {}",
                self.emulator,
                missing.join("; "),
                prereq::install_hint()
            );
        }

        let run_dir = paths::run_dir(&self.name);
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir)
                .unwrap_or_else(|e| panic!("removing {}: {e}", run_dir.display()));
        }
        let esp = esp::make_esp(&self.manifest, &run_dir.join("esp"), &Default::default())
            .unwrap_or_else(|e| panic!("[{}] laying out the ESP: {e:#}", self.name));
        let echo = match std::env::var(ECHO_ENV) {
            Ok(v) if v != "0" => Echo::Prefixed(format!("[{}] ", self.name)),
            _ => Echo::Quiet,
        };
        let cfg = MachineConfig {
            emulator: self.emulator,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            timeout: Some(self.timeout),
            media: Media::EspDir(esp.dir),
            run_dir: run_dir.clone(),
            echo,
            nic: self.nic.clone(),
        };
        let result = if self.script.is_empty() {
            machine::run(&cfg, &emulators)
        } else {
            machine::run_scripted(&cfg, &emulators, &self.script)
        };
        let result =
            result.unwrap_or_else(|e| panic!("[{}] running {}: {e:#}", self.name, self.emulator));

        // Straight to stderr, past the test harness' capture: how long each boot took is worth
        // seeing in every test run.
        let summary = format!("[{}] {}", self.name, result.summary());
        let _ = writeln!(std::io::stderr(), "{summary}");
        let _ = std::fs::write(run_dir.join("result.txt"), format!("{summary}\n"));
        Boot {
            scenario: self.name.clone(),
            result,
            failures: Vec::new(),
        }
    }
}

/// A finished boot and the checks made on it so far.
#[must_use = "call finish() to report failed checks"]
#[derive(Debug)]
pub struct Boot {
    scenario: String,
    pub result: RunResult,
    failures: Vec<String>,
}

impl Boot {
    fn check(&mut self, ok: bool, what: String) -> &mut Self {
        if !ok {
            self.failures.push(what);
        }
        self
    }

    /// Some line is exactly `text` (trailing spaces ignored).
    pub fn line(&mut self, text: &str) -> &mut Self {
        let ok = self.result.lines().any(|l| l.trim_end() == text);
        self.check(ok, format!("no line `{text}`"))
    }

    /// Exactly `n` lines are `text`.
    pub fn line_times(&mut self, text: &str, n: usize) -> &mut Self {
        let got = self.result.lines().filter(|l| l.trim_end() == text).count();
        self.check(got == n, format!("{got} lines `{text}`, want {n}"))
    }

    /// Exactly `n` lines start with `prefix`, and they are all the same.
    pub fn same_lines_starting(&mut self, prefix: &str, n: usize) -> &mut Self {
        let found: Vec<&str> = self
            .result
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect();
        let same = found.windows(2).all(|w| w[0].trim_end() == w[1].trim_end());
        let what = format!("want {n} equal lines starting `{prefix}`, got {found:?}");
        self.check(found.len() == n && same, what)
    }

    /// Some line starts with `prefix`.
    pub fn line_starting(&mut self, prefix: &str) -> &mut Self {
        let ok = self.result.lines().any(|l| l.starts_with(prefix));
        self.check(ok, format!("no line starting `{prefix}`"))
    }

    /// Some line starts with `prefix` and also contains `needle`.
    pub fn line_starting_containing(&mut self, prefix: &str, needle: &str) -> &mut Self {
        let ok = self
            .result
            .lines()
            .any(|l| l.starts_with(prefix) && l[prefix.len()..].contains(needle));
        self.check(
            ok,
            format!("no line starting `{prefix}` that contains `{needle}`"),
        )
    }

    /// A line exactly `first` comes before a line exactly `then` (trailing spaces ignored).
    pub fn line_before(&mut self, first: &str, then: &str) -> &mut Self {
        let at = |t: &str| self.result.lines().position(|l| l.trim_end() == t);
        let ok = matches!((at(first), at(then)), (Some(a), Some(b)) if a < b);
        self.check(ok, format!("no line `{first}` before a line `{then}`"))
    }

    /// Some line contains `needle`.
    pub fn line_containing(&mut self, needle: &str) -> &mut Self {
        let ok = self.result.lines().any(|l| l.contains(needle));
        self.check(ok, format!("no line contains `{needle}`"))
    }

    /// Lines matching `pick` that come after the first line containing `start` and before the
    /// next line containing `end` after it (all lines to the end without one).
    pub fn lines_between(&self, start: &str, end: &str) -> Vec<String> {
        let lines: Vec<&str> = self.result.lines().collect();
        let Some(a) = lines.iter().position(|l| l.contains(start)) else {
            return Vec::new();
        };
        let b = lines[a + 1..]
            .iter()
            .position(|l| l.contains(end))
            .map_or(lines.len(), |i| a + 1 + i);
        lines[a + 1..b].iter().map(|l| l.to_string()).collect()
    }

    /// Records a failed check `what` unless `ok`.
    pub fn expect(&mut self, ok: bool, what: &str) -> &mut Self {
        self.check(ok, what.to_string())
    }

    /// No line contains `needle`.
    pub fn no_line_containing(&mut self, needle: &str) -> &mut Self {
        let found: Vec<String> = self
            .result
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        self.check(
            found.is_empty(),
            format!("lines contain `{needle}`: {found:?}"),
        )
    }

    /// The machine powered itself off (no timeout, no emulator crash).
    pub fn powered_off(&mut self) -> &mut Self {
        let ok = self.result.ended_by == EndedBy::PowerOff;
        let what = format!(
            "the run did not end by power-off: {}",
            self.result.summary()
        );
        self.check(ok, what)
    }

    /// Panics listing every failed check, with the serial console and, when the machine did not
    /// power off, the relevant part of the emulator's log.
    pub fn finish(self) {
        if self.failures.is_empty() {
            return;
        }
        let r = &self.result;
        let mut msg = format!(
            "[{}] {} of the checks failed:\n",
            self.scenario,
            self.failures.len()
        );
        for failure in &self.failures {
            let _ = writeln!(msg, "  - {failure}");
        }
        let _ = writeln!(msg, "run: {}", r.summary());
        let lines: Vec<&str> = r.lines().collect();
        let shown = lines.len().saturating_sub(300);
        let _ = writeln!(
            msg,
            "---- serial console ({}{}) ----",
            r.serial_log.display(),
            if shown > 0 { ", last 300 lines" } else { "" }
        );
        for line in &lines[shown..] {
            let _ = writeln!(msg, "{line}");
        }
        let _ = writeln!(msg, "---- end of serial console ----");
        if r.ended_by != EndedBy::PowerOff {
            let _ = writeln!(msg, "---- {} ----", r.emulator_log.display());
            msg += &r.emulator_log_excerpt(40);
        }
        panic!("{msg}");
    }
}

/// The hex digest of `bytes` by a coreutils checksum tool (`md5sum`, `sha256sum`): the same
/// program a user would compare a copy with.
pub fn digest(tool: &str, bytes: &[u8]) -> String {
    let mut c = std::process::Command::new(tool)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    c.stdin
        .take()
        .expect("piped stdin")
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("{tool}: writing its input: {e}"));
    let out = c
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}
