//! `cargo xtask bench`: exit costs, scheduling fairness, memory overhead, start-up time, the
//! Linux boot ratio (under ferrovisor / booted directly) and the exit costs of KVM on the same
//! emulated CPU, measured under Bochs.
//!
//! A benchmark, not a test: it prints figures (a table on the terminal, `target/bench/
//! results.json` and a regenerated `docs/BENCHMARKS.md`) and never fails because of what it
//! measured. Under Bochs the TSC counts executed instructions, so the exit costs are instruction
//! counts of the code paths (deterministic, good for comparing them), not hardware latencies.
//!
//! The boots (manifests `tests/manifests/bench-*.toml`), at most two side by side:
//!
//! | run | manifest | CPUs | RAM |
//! | --- | --- | --- | --- |
//! | `exits-1`, `exits-2` | `bench-exits.toml`: the `bench` guest alone (twice: same counts?) | 1 | 512 MiB |
//! | `fair-equal` | `bench-fair-equal.toml`: four `spinner`s of weight 100 | 2 | 512 MiB |
//! | `fair-weighted` | `bench-fair-weighted.toml`: weights 200, 200, 100, 100 | 2 | 512 MiB |
//! | `fair-vcpus` | `bench-fair-vcpus.toml`: a 1-vCPU and a 2-vCPU spinner guest, equal weights | 2 | 512 MiB |
//! | `console` | `bench-console.toml`: console floods (4 KiB CONSOLE_WRITEs, 4 KiB UART bursts) beside a spinner; each VM's longest exit | 2 | 512 MiB |
//! | `mem-1`, `mem-4`, `mem-16` | `bench-mem-<n>.toml`: n `hello` guests of 128 MiB | 2 | 512, 1024, 3072 MiB |
//! | `linux-hv` | `bench-linux.toml`: Debian's kernel + busybox initramfs, 1 vCPU, 256 MiB | 1 | 512 MiB |
//! | `linux-direct` | no hypervisor: the same kernel, initramfs and command line started by OVMF's shell through the EFI stub ([`linux_boot`]) | 1 | 512 MiB |
//! | `kvm-peer` | no hypervisor: the same kernel with an initramfs that loads `kvm_intel` and runs the `bench` guest under a minimal KVM VMM ([`kvmpeer`]) | 1 | 512 MiB |
//!
//! `linux-hv` and `linux-direct` go first, side by side, so that their wall times are taken
//! under the same load.
//!
//! The UEFI application is built with `--features bench` (the floor hypercall) into
//! `target/bench/`, so the normal build in `target/` is left alone.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::machine::{self, Echo, Emulator, EndedBy, MachineConfig, Media, RunResult};
use crate::paths::{self, UEFI_TARGET};
use crate::prereq::{self, Emulators, Need};
use crate::{build, esp, linux, run_command};

pub mod kvmpeer;
pub mod linux_boot;

use linux_boot::{DirectBoot, LinuxBoot, LinuxReport};

/// Core-handled exits should cost at most this many instructions more than the floor.
pub const CORE_EXIT_GOAL: f64 = 250.0;
/// Per-VM memory overhead goal, in percent of the guest's RAM (for 128 MiB guests).
pub const MEMORY_GOAL_PCT: f64 = 1.0;
/// Guest TSC ticks each spinner runs for, unless `--cycles` says otherwise (the value in the
/// fairness manifests).
pub const DEFAULT_CYCLES: u64 = 1_000_000_000;
/// The boots the start-up figures come from.
const STARTUP_BOOTS: &[&str] = &["mem-1", "mem-4", "mem-16", "exits-1", "linux-hv"];
/// Boots running side by side: Bochs is single-threaded, this machine kind has two cores.
const PARALLEL_BOOTS: usize = 2;

/// The exit types the bench guest times, in report order, with what each one is.
pub const EXIT_TYPES: &[(&str, &str)] = &[
    ("loop", "empty timing loop (baseline)"),
    (
        "floor",
        "floor hypercall: exit, advance RIP, resume (bench build only)",
    ),
    ("cpuid", "CPUID (handled in the core)"),
    ("vmcall", "VMCALL hypercall ABI_VERSION (core)"),
    ("rdmsr", "RDMSR of a virtualized MSR (core)"),
    ("pio_device", "port I/O to a device model"),
    ("pio_unclaimed", "port I/O to an unclaimed port"),
    ("mmio_device", "MMIO to a device model"),
    ("hlt", "HLT and wake-up (cmdline hlt=1)"),
    (
        "kernel_floor",
        "floor hypercall, interrupts on and the APIC timer ticking (cmdline kernel=1)",
    ),
    ("kernel_cpuid", "CPUID, interrupts on, APIC timer ticking"),
    (
        "kernel_vmcall",
        "VMCALL ABI_VERSION, interrupts on, APIC timer ticking",
    ),
    ("kernel_rdmsr", "RDMSR, interrupts on, APIC timer ticking"),
    (
        "kernel_pio_device",
        "port I/O to a device model, interrupts on, APIC timer ticking",
    ),
];
/// The exits the core handles itself: these have the goal of [`CORE_EXIT_GOAL`].
pub const CORE_EXITS: &[&str] = &["cpuid", "vmcall", "rdmsr"];

// ---------------------------------------------------------------------------------------------
// Options and the command

/// Which parts of the benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sections {
    pub exits: bool,
    pub fairness: bool,
    /// The longest exit while guests flood the console (`console`).
    pub console: bool,
    pub memory: bool,
    /// The Linux boot ratio (`linux-hv`, `linux-direct`).
    pub linux: bool,
    /// The KVM peer (`kvm-peer`); compared with the `exits` figures when those ran too.
    pub peer: bool,
}

impl Sections {
    pub const ALL: Sections = Sections {
        exits: true,
        fairness: true,
        console: true,
        memory: true,
        linux: true,
        peer: true,
    };
    const NONE: Sections = Sections {
        exits: false,
        fairness: false,
        console: false,
        memory: false,
        linux: false,
        peer: false,
    };

    /// `exits,fairness,console,memory,linux,peer` (any subset, comma-separated; `kvm` =
    /// `peer`).
    pub fn parse(list: &str) -> Result<Self> {
        let mut s = Self::NONE;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "exits" => s.exits = true,
                "fairness" => s.fairness = true,
                "console" => s.console = true,
                "memory" => s.memory = true,
                "linux" => s.linux = true,
                "peer" | "kvm" => s.peer = true,
                other => {
                    bail!(
                        "unknown bench section `{other}` (exits, fairness, console, memory, \
                         linux, peer)"
                    )
                }
            }
        }
        if s == Self::NONE {
            bail!("--only needs at least one of exits, fairness, console, memory, linux, peer");
        }
        Ok(s)
    }
}

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Build the bench UEFI application and the guests first.
    pub build: bool,
    pub sections: Sections,
    /// Spinner run length in guest TSC ticks (`None`: what the manifests say).
    pub cycles: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            build: true,
            sections: Sections::ALL,
            cycles: None,
        }
    }
}

/// The UEFI application built with the bench feature.
pub fn bench_boot_efi() -> PathBuf {
    bench_dir()
        .join(UEFI_TARGET)
        .join("release")
        .join("boot.efi")
}

/// `target/bench/`: the bench build's target directory and the results.
pub fn bench_dir() -> PathBuf {
    paths::target_dir().join("bench")
}

/// Where the results go as JSON.
pub fn results_json() -> PathBuf {
    bench_dir().join("results.json")
}

/// The generated benchmark document.
pub fn benchmarks_md() -> PathBuf {
    paths::root().join("docs").join("BENCHMARKS.md")
}

/// Builds `boot.efi` with `--features bench` into `target/bench/` and returns its path.
pub fn build_bench_boot() -> Result<PathBuf> {
    eprintln!("xtask: bench: building the UEFI application with --features bench (target/bench)");
    run_command(
        build::cargo()
            .args([
                "build",
                "-p",
                "boot",
                "--release",
                "--target",
                UEFI_TARGET,
                "--features",
                "bench",
                "--target-dir",
            ])
            .arg(bench_dir()),
    )
    .context("building the bench UEFI application failed (see the compiler output above)")?;
    let efi = bench_boot_efi();
    if !efi.is_file() {
        bail!(
            "the build succeeded but {} is missing",
            paths::display(&efi)
        );
    }
    Ok(efi)
}

/// `cargo xtask bench`: builds, boots every run, prints the report and writes the JSON and,
/// for a full run, `docs/BENCHMARKS.md`.
pub fn run(options: &Options) -> Result<Report> {
    let began = Instant::now();
    let emulators = prereq::ensure(&[Need::Bochs])?;
    if options.build {
        build::ensure_rust_targets()?;
        build_bench_boot()?;
        let guests = build::build_guests()?;
        for needed in needed_guests(options.sections) {
            if !guests.iter().any(|g| g == needed) {
                bail!("the test guest `{needed}` was not built (tests/guests/{needed} missing?)");
            }
        }
    }
    let sources = esp::EspSources {
        boot_efi: bench_boot_efi(),
        guest_dir: paths::guest_bin_dir(),
    };
    let plan = LinuxPlan::prepare(options.sections);

    let jobs: Vec<Job> = jobs(options)
        .into_iter()
        .filter(|j| plan.can_run(&j.name))
        .collect();
    eprintln!(
        "xtask: bench: {} boots under Bochs, {PARALLEL_BOOTS} at a time ({})",
        jobs.len(),
        if options.sections.linux || options.sections.peer {
            "10 to 20 minutes"
        } else {
            "5 to 10 minutes"
        }
    );
    let done = run_jobs(jobs, &sources, &emulators);

    let mut report = Report {
        config: Config::gather(options),
        exits: None,
        fairness: Vec::new(),
        console: None,
        memory: Vec::new(),
        startup: Vec::new(),
        linux: None,
        peer: None,
        linux_notes: plan.notes(),
        runs: Vec::new(),
        wall_s: 0.0,
    };
    report.config.kernel = plan.assets.as_ref().map(|a| a.kernel_release.clone());
    for d in &done {
        report.runs.push(RunInfo::of(d));
    }
    let find = |name: &str| done.iter().find(|d| d.job.name == name);
    if options.sections.exits {
        let a = find("exits-1").map(ExitRun::from_done);
        let b = find("exits-2").map(ExitRun::from_done);
        if let (Some(a), Some(b)) = (a, b) {
            report.exits = Some(ExitReport::new(a, b));
        }
    }
    if options.sections.fairness {
        for name in ["fair-equal", "fair-weighted", "fair-vcpus"] {
            if let Some(d) = find(name) {
                report.fairness.push(FairRun::from_done(d));
            }
        }
    }
    if options.sections.console {
        report.console = find("console").map(ConsoleRun::from_done);
    }
    if options.sections.memory {
        for name in ["mem-1", "mem-4", "mem-16"] {
            if let Some(d) = find(name) {
                report.memory.push(MemRun::from_done(d));
            }
        }
    }
    if let (Some(hv), Some(direct)) = (find("linux-hv"), find("linux-direct")) {
        report.linux = Some(LinuxReport {
            hv: linux_boot_of(hv, Some(linux_boot::GUEST)),
            direct: linux_boot_of(direct, None),
            hv_cmdline: plan.hv_cmdline.clone(),
            direct_cmdline: plan.direct_cmdline(),
        });
    }
    if options.sections.peer {
        let run = find("kvm-peer").map(|d| match &d.result {
            Ok(r) => kvmpeer::PeerRun::analyse(&r.serial, &r.summary()),
            Err(e) => kvmpeer::PeerRun::analyse("", &format!("could not run: {e}")),
        });
        let ferrovisor = report.exits.as_ref().map(|e| e.first.figures.as_slice());
        let rows = run
            .as_ref()
            .map_or_else(Vec::new, |r| kvmpeer::rows(ferrovisor, r.lines()));
        report.peer = Some(kvmpeer::PeerReport {
            run,
            rows,
            not_run: plan.peer_error.clone(),
            modules: plan
                .peer
                .as_ref()
                .map_or_else(Vec::new, |p| p.modules.clone()),
            guest_cmdline: plan.bench_cmdline.clone(),
            direct_cmdline: plan.peer_cmdline(),
        });
    }
    // Start-up from the boots whose guests print right away (a spinner's first output is its
    // result, at the end; the second exit boot would repeat the first).
    for name in STARTUP_BOOTS {
        if let Some(Ok(result)) = find(name).map(|d| &d.result) {
            if let Some(row) = StartupRow::from_run(name, result) {
                report.startup.push(row);
            }
        }
    }
    report.wall_s = began.elapsed().as_secs_f64();

    print!("{}", report.text());
    std::fs::create_dir_all(bench_dir())?;
    std::fs::write(results_json(), report.json().render())
        .with_context(|| format!("writing {}", results_json().display()))?;
    println!("results: {}", paths::display(&results_json()));
    if options.sections == Sections::ALL {
        std::fs::write(benchmarks_md(), report.markdown())
            .with_context(|| format!("writing {}", benchmarks_md().display()))?;
        println!("document: {}", paths::display(&benchmarks_md()));
    } else {
        println!(
            "document: {} not rewritten (only a part of the bench ran)",
            paths::display(&benchmarks_md())
        );
    }
    Ok(report)
}

fn linux_boot_of(d: &Done, guest: Option<&str>) -> LinuxBoot {
    match &d.result {
        Ok(r) => LinuxBoot::analyse(&d.job.name, &r.timed_lines, guest, &r.summary()),
        Err(e) => LinuxBoot::analyse(&d.job.name, &[], guest, &format!("could not run: {e}")),
    }
}

fn needed_guests(sections: Sections) -> Vec<&'static str> {
    let mut v = Vec::new();
    if sections.exits || sections.peer {
        v.push("bench");
    }
    if sections.fairness || sections.console {
        v.push("spinner");
    }
    if sections.console {
        v.push("conflood");
    }
    if sections.memory {
        v.push("hello");
    }
    v
}

/// The first `key = "value"` of manifest text (comments and other keys skipped).
pub fn manifest_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|raw| {
        let line = raw.trim();
        let (k, v) = line.split_once('=')?;
        if line.starts_with('#') || k.trim() != key {
            return None;
        }
        let v = v.trim();
        let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let end = v[1..].find(quote)?;
        Some(v[1..1 + end].to_string())
    })
}

/// The Linux kernel, the initramfs images and the command lines of the Linux and KVM boots,
/// prepared before any boot starts (a failure only drops those boots, with a note).
struct LinuxPlan {
    assets: Option<linux::LinuxAssets>,
    assets_error: Option<String>,
    peer: Option<kvmpeer::Prepared>,
    peer_error: Option<String>,
    /// The Linux guest's command line in `bench-linux.toml`.
    hv_cmdline: String,
    /// The bench guest's command line in `bench-exits.toml`.
    bench_cmdline: String,
}

impl LinuxPlan {
    fn prepare(sections: Sections) -> Self {
        let read = |file: &str, key: &str| {
            std::fs::read_to_string(paths::manifests_dir().join(file))
                .ok()
                .and_then(|t| manifest_value(&t, key))
                .unwrap_or_default()
        };
        let mut plan = LinuxPlan {
            assets: None,
            assets_error: None,
            peer: None,
            peer_error: None,
            hv_cmdline: read("bench-linux.toml", "cmdline"),
            bench_cmdline: read("bench-exits.toml", "cmdline"),
        };
        if !(sections.linux || sections.peer) {
            return plan;
        }
        eprintln!("xtask: bench: preparing the Linux kernel and initramfs (target/linux)");
        match linux::prepare() {
            Ok(a) => plan.assets = Some(a),
            Err(e) => plan.assets_error = Some(format!("{e:#}")),
        }
        if sections.peer {
            let prepared = match &plan.assets {
                Some(a) => kvmpeer::prepare(a, &plan.bench_cmdline),
                None => Err(anyhow::anyhow!(
                    "no Linux kernel: {}",
                    plan.assets_error.as_deref().unwrap_or("?")
                )),
            };
            match prepared {
                Ok(p) => plan.peer = Some(p),
                Err(e) => {
                    eprintln!("xtask: bench: the KVM peer can't run: {e:#}");
                    plan.peer_error = Some(format!("{e:#}"));
                }
            }
        }
        plan
    }

    /// Whether the boot `name` has what it needs.
    fn can_run(&self, name: &str) -> bool {
        match name {
            "linux-hv" | "linux-direct" => self.assets.is_some(),
            "kvm-peer" => self.peer.is_some(),
            _ => true,
        }
    }

    fn direct_cmdline(&self) -> String {
        direct_cmdline(&self.hv_cmdline)
    }

    fn peer_cmdline(&self) -> String {
        self.hv_cmdline.clone()
    }

    fn notes(&self) -> Vec<String> {
        self.assets_error
            .iter()
            .map(|e| format!("the Linux boots did not run: {e}"))
            .collect()
    }
}

/// The direct boot's command line: the guest's plus [`linux_boot::DIRECT_EXTRA_CMDLINE`].
pub fn direct_cmdline(guest: &str) -> String {
    format!("{guest} {}", linux_boot::DIRECT_EXTRA_CMDLINE)
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The boots

/// What a boot runs.
#[derive(Debug, Clone)]
pub enum JobKind {
    /// ferrovisor (the bench build) with this manifest.
    Hypervisor { manifest: PathBuf },
    /// No hypervisor: Linux started by OVMF's shell through its EFI stub; the run ends on the
    /// kernel's last line ([`linux_boot::direct_boot_ended`]).
    Direct(DirectBoot),
}

/// One boot of the benchmark.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub kind: JobKind,
    pub cpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// Replaces `cycles=<n>` in the manifest's command lines.
    pub cycles: Option<u64>,
}

impl Job {
    /// The manifest, or what a direct boot starts.
    pub fn what(&self) -> String {
        match &self.kind {
            JobKind::Hypervisor { manifest } => paths::display(manifest),
            JobKind::Direct(d) => d.describe(),
        }
    }
}

/// The boots for `options`: the two Linux boots first (side by side, so their wall times see
/// the same load), then longest first (so two workers finish at about the same time).
pub fn jobs(options: &Options) -> Vec<Job> {
    let m = paths::manifests_dir();
    let job = |name: &str, file: &str, cpus, memory_mib, secs| Job {
        name: name.to_string(),
        kind: JobKind::Hypervisor {
            manifest: m.join(file),
        },
        cpus,
        memory_mib,
        timeout: Duration::from_secs(secs),
        cycles: None,
    };
    let direct = |name: &str, initrd: PathBuf, cmdline: String, secs| Job {
        name: name.to_string(),
        kind: JobKind::Direct(DirectBoot {
            kernel: linux::dir().join(linux::KERNEL_FILE),
            initrd,
            cmdline,
        }),
        cpus: 1,
        memory_mib: 512,
        timeout: Duration::from_secs(secs),
        cycles: None,
    };
    let guest_cmdline = std::fs::read_to_string(m.join("bench-linux.toml"))
        .ok()
        .and_then(|t| manifest_value(&t, "cmdline"))
        .unwrap_or_default();
    let mut jobs = Vec::new();
    if options.sections.linux {
        jobs.push(job("linux-hv", "bench-linux.toml", 1, 512, 900));
        jobs.push(direct(
            "linux-direct",
            linux::dir().join(linux::INITRD_FILE),
            direct_cmdline(&guest_cmdline),
            600,
        ));
    }
    if options.sections.fairness {
        for (name, file) in [
            ("fair-equal", "bench-fair-equal.toml"),
            ("fair-weighted", "bench-fair-weighted.toml"),
            ("fair-vcpus", "bench-fair-vcpus.toml"),
        ] {
            let mut j = job(name, file, 2, 512, 600);
            j.cycles = options.cycles;
            jobs.push(j);
        }
    }
    if options.sections.console {
        jobs.push(job("console", "bench-console.toml", 2, 512, 600));
    }
    if options.sections.peer {
        jobs.push(direct("kvm-peer", kvmpeer::initrd(), guest_cmdline, 600));
    }
    if options.sections.memory {
        jobs.push(job("mem-16", "bench-mem-16.toml", 2, 3072, 600));
    }
    if options.sections.exits {
        jobs.push(job("exits-1", "bench-exits.toml", 1, 512, 600));
        jobs.push(job("exits-2", "bench-exits.toml", 1, 512, 600));
    }
    if options.sections.memory {
        jobs.push(job("mem-4", "bench-mem-4.toml", 2, 1024, 300));
        jobs.push(job("mem-1", "bench-mem-1.toml", 2, 512, 300));
    }
    jobs
}

/// A boot that ran (or could not be started: `result` says why).
#[derive(Debug)]
pub struct Done {
    pub job: Job,
    /// The manifest text the boot used (empty for a direct boot).
    pub manifest_text: String,
    pub result: Result<RunResult, String>,
}

fn run_jobs(jobs: Vec<Job>, sources: &esp::EspSources, emulators: &Emulators) -> Vec<Done> {
    let order: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let total = jobs.len();
    let started = Instant::now();
    let queue = Mutex::new(VecDeque::from(jobs));
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_BOOTS {
            scope.spawn(|| loop {
                let Some(job) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let done = run_job(job, sources, emulators);
                let mut results = results.lock().expect("results");
                results.push(done);
                eprintln!(
                    "xtask: bench: {} of {total} boots done, {:.0} s so far",
                    results.len(),
                    started.elapsed().as_secs_f64()
                );
            });
        }
    });
    let mut done = results.into_inner().expect("results");
    done.sort_by_key(|d| order.iter().position(|n| *n == d.job.name));
    done
}

fn run_job(job: Job, sources: &esp::EspSources, emulators: &Emulators) -> Done {
    let run_dir = paths::run_dir(&format!("bench-{}", job.name));
    eprintln!(
        "xtask: bench: [{}] booting {} ({} CPU{}, {} MiB)",
        job.name,
        job.what(),
        job.cpus,
        if job.cpus == 1 { "" } else { "s" },
        job.memory_mib
    );
    let mut manifest_text = String::new();
    let result = (|| -> Result<RunResult> {
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir)
                .with_context(|| format!("removing {}", run_dir.display()))?;
        }
        std::fs::create_dir_all(&run_dir)?;
        let esp_dir = run_dir.join("esp");
        match &job.kind {
            JobKind::Hypervisor { manifest } => {
                manifest_text = std::fs::read_to_string(manifest)
                    .with_context(|| format!("reading {}", manifest.display()))?;
                let mut manifest = manifest.clone();
                if let Some(cycles) = job.cycles {
                    manifest_text = replace_cycles(&manifest_text, cycles);
                    manifest = run_dir.join("manifest.toml");
                    std::fs::write(&manifest, &manifest_text)?;
                }
                esp::make_esp(&manifest, &esp_dir, sources)?;
            }
            JobKind::Direct(d) => d.write_esp(&esp_dir)?,
        }
        let cfg = MachineConfig {
            emulator: Emulator::Bochs,
            cpus: job.cpus,
            memory_mib: job.memory_mib,
            timeout: Some(job.timeout),
            media: Media::EspDir(esp_dir),
            run_dir: run_dir.clone(),
            echo: Echo::Quiet,
        };
        machine::validate(&cfg)?;
        match &job.kind {
            JobKind::Hypervisor { .. } => machine::run(&cfg, emulators),
            JobKind::Direct(_) => {
                machine::run_until(&cfg, emulators, &linux_boot::direct_boot_ended)
            }
        }
    })();
    match &result {
        Ok(r) => eprintln!("xtask: bench: [{}] {}", job.name, r.summary()),
        Err(e) => eprintln!("xtask: bench: [{}] could not run: {e:#}", job.name),
    }
    Done {
        job,
        manifest_text,
        result: result.map_err(|e| format!("{e:#}")),
    }
}

/// `text` with every `cycles=<digits>` replaced by `cycles=<cycles>`.
pub fn replace_cycles(text: &str, cycles: u64) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("cycles=") {
        let (head, tail) = rest.split_at(at + "cycles=".len());
        out.push_str(head);
        let digits = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let _ = write!(out, "{cycles}");
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Reading the serial console

/// A guest console line as the hypervisor shows it: `[<guest>] <text>`.
pub fn guest_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (name, text) = rest.split_once("] ")?;
    (!name.is_empty() && !name.contains(' ')).then_some((name, text))
}

/// How a VM ended, from `vm <name>: exited code=<n>` / `vm <name>: stopped: <reason>`.
pub fn vm_outcome<'a>(serial: &'a str, vm: &str) -> Option<&'a str> {
    let prefix = format!("vm {vm}: ");
    serial.lines().rev().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        ["exited", "stopped", "not started"]
            .iter()
            .any(|p| rest.starts_with(p))
            .then_some(rest)
    })
}

/// `vm <name>: <what>` lines: (name, what).
fn vm_line(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix("vm ")?.split_once(": ")
}

/// The first whitespace-separated number in `s` after `key`.
fn number_after(s: &str, key: &str) -> Option<u64> {
    let at = s.find(key)? + key.len();
    s[at..].split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Exit costs

/// One `bench: <type> <total_tsc> <iterations> <per_iteration>` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitRow {
    pub kind: String,
    pub total: u64,
    pub iterations: u64,
    /// As the guest printed it.
    pub printed_per_iteration: f64,
}

impl ExitRow {
    /// Total / iterations (more precise than a rounded printed figure).
    pub fn per_iteration(&self) -> f64 {
        if self.iterations == 0 {
            self.printed_per_iteration
        } else {
            self.total as f64 / self.iterations as f64
        }
    }
}

/// What the bench guest printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExitLines {
    pub rows: Vec<ExitRow>,
    /// Types the guest said it could not time (`bench: <type> unavailable`).
    pub unavailable: Vec<String>,
    /// Types the guest announced (`bench: <type> start`) but printed no figures for.
    pub unfinished: Vec<String>,
    pub done: bool,
    /// `bench:` lines that are none of the above, kept for the report.
    pub other: Vec<String>,
}

impl ExitLines {
    /// Whether the guest could not use the floor hypercall (a build without the bench feature).
    pub fn floor_unavailable(&self) -> bool {
        self.unavailable.iter().any(|k| k == "floor")
    }
}

/// Reads the bench guest's lines (`[<guest>] bench: ...`) from a serial console.
pub fn parse_exit_lines(serial: &str) -> ExitLines {
    let mut out = ExitLines::default();
    for line in serial.lines() {
        let Some((_, text)) = guest_line(line) else {
            continue;
        };
        let Some(rest) = text.trim_end().strip_prefix("bench: ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        match fields.as_slice() {
            ["done"] => out.done = true,
            [kind, "unavailable"] => out.unavailable.push(kind.to_string()),
            [kind, "start"] => out.unfinished.push(kind.to_string()),
            [kind, total, iterations, per] => {
                match (total.parse(), iterations.parse(), per.parse()) {
                    (Ok(total), Ok(iterations), Ok(printed_per_iteration)) => {
                        out.unfinished.retain(|k| k != kind);
                        out.rows.push(ExitRow {
                            kind: kind.to_string(),
                            total,
                            iterations,
                            printed_per_iteration,
                        })
                    }
                    _ => out.other.push(rest.to_string()),
                }
            }
            _ => out.other.push(rest.to_string()),
        }
    }
    out
}

/// The figures of one exit type.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitFigure {
    pub kind: String,
    pub what: String,
    pub row: Option<ExitRow>,
    /// Per iteration minus the empty loop's: instructions per exit round trip.
    pub round_trip: Option<f64>,
    /// Round trip minus the floor's.
    pub over_floor: Option<f64>,
    /// For core-handled exits: whether `over_floor` ≤ [`CORE_EXIT_GOAL`].
    pub goal_met: Option<bool>,
}

/// One exit-cost boot, analysed.
#[derive(Debug, Clone)]
pub struct ExitRun {
    pub run: String,
    pub lines: ExitLines,
    pub figures: Vec<ExitFigure>,
    /// How the bench guest ended (`exited code=0`, `stopped: ...`).
    pub outcome: Option<String>,
    /// How the boot ended, or why it could not run.
    pub ended: String,
}

impl ExitRun {
    fn from_done(d: &Done) -> Self {
        match &d.result {
            Ok(r) => Self::analyse(&d.job.name, &r.serial, &r.summary()),
            Err(e) => Self::analyse(&d.job.name, "", &format!("could not run: {e}")),
        }
    }

    /// Analyses the serial console of an exit-cost boot.
    pub fn analyse(run: &str, serial: &str, ended: &str) -> Self {
        let lines = parse_exit_lines(serial);
        let figures = exit_figures(&lines);
        Self {
            run: run.to_string(),
            outcome: vm_outcome(serial, "bench").map(str::to_string),
            lines,
            figures,
            ended: ended.to_string(),
        }
    }
}

/// The report rows: every known type (hlt only when measured) plus unknown ones printed.
pub fn exit_figures(lines: &ExitLines) -> Vec<ExitFigure> {
    let find = |k: &str| lines.rows.iter().find(|r| r.kind == k);
    let baseline = find("loop").map(ExitRow::per_iteration);
    let floor = find("floor").and_then(|f| baseline.map(|b| f.per_iteration() - b));
    let mut kinds: Vec<(String, String)> = EXIT_TYPES
        .iter()
        .filter(|(k, _)| (*k != "hlt" && !k.starts_with("kernel_")) || find(k).is_some())
        .map(|(k, w)| (k.to_string(), w.to_string()))
        .collect();
    for r in &lines.rows {
        if !kinds.iter().any(|(k, _)| *k == r.kind) {
            kinds.push((r.kind.clone(), "(not known to xtask)".to_string()));
        }
    }
    kinds
        .into_iter()
        .map(|(kind, what)| {
            let row = find(&kind).cloned();
            let round_trip = match (&row, baseline) {
                (Some(r), Some(b)) if kind != "loop" => Some(r.per_iteration() - b),
                _ => None,
            };
            let over_floor = match (round_trip, floor) {
                (Some(rt), Some(f)) if kind != "floor" => Some(rt - f),
                _ => None,
            };
            let goal_met = if CORE_EXITS.contains(&kind.as_str()) {
                over_floor.map(|x| x <= CORE_EXIT_GOAL)
            } else {
                None
            };
            ExitFigure {
                kind,
                what,
                row,
                round_trip,
                over_floor,
                goal_met,
            }
        })
        .collect()
}

/// Both exit-cost boots and whether they agree.
#[derive(Debug, Clone)]
pub struct ExitReport {
    pub first: ExitRun,
    pub second: ExitRun,
    /// Per type measured in both: (type, total of the first, total of the second).
    pub compared: Vec<(String, u64, u64)>,
}

impl ExitReport {
    pub fn new(first: ExitRun, second: ExitRun) -> Self {
        let compared = first
            .lines
            .rows
            .iter()
            .filter_map(|a| {
                let b = second.lines.rows.iter().find(|b| b.kind == a.kind)?;
                Some((a.kind.clone(), a.total, b.total))
            })
            .collect();
        Self {
            first,
            second,
            compared,
        }
    }

    /// Whether both boots measured something and every common total is the same.
    pub fn identical(&self) -> bool {
        !self.compared.is_empty() && self.compared.iter().all(|(_, a, b)| a == b)
    }

    /// The repeatability statement for the report.
    pub fn repeatability(&self) -> String {
        if self.compared.is_empty() {
            return "not checked: the two boots have no exit type in common".to_string();
        }
        if self.identical() {
            return format!(
                "checked: two boots of the same build gave identical TSC totals for all {} \
                 loops, so re-running on the same commit gives the same instruction counts",
                self.compared.len()
            );
        }
        let mut diffs = Vec::new();
        for (kind, a, b) in &self.compared {
            if a != b {
                let iters = self
                    .first
                    .lines
                    .rows
                    .iter()
                    .find(|r| r.kind == *kind)
                    .map_or(1, |r| r.iterations.max(1));
                let d = *b as f64 - *a as f64;
                diffs.push(format!(
                    "{kind} {d:+.0} ticks ({:+.2} per iteration, {:+.3} %)",
                    d / iters as f64,
                    d * 100.0 / (*a).max(1) as f64
                ));
            }
        }
        format!(
            "the two boots differ: {}. Bochs itself is deterministic, so a difference comes from \
             something the loops share the CPU with landing at other points: the scheduler's \
             VMX-preemption-timer exits and interrupts (timer, serial) counted inside a loop",
            diffs.join("; ")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Fairness

/// `(name, weight)` of every `[[guest]]` in manifest text (weight 100 unless given).
pub fn manifest_weights(text: &str) -> Vec<(String, u32)> {
    let mut guests: Vec<(String, u32)> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line == "[[guest]]" {
            guests.push((String::new(), 100));
            continue;
        }
        let (Some(g), Some((key, value))) = (guests.last_mut(), line.split_once('=')) else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "name" => g.0 = value.trim_matches(|c| c == '"' || c == '\'').to_string(),
            "weight" => {
                if let Ok(w) = value.replace('_', "").parse() {
                    g.1 = w;
                }
            }
            _ => {}
        }
    }
    guests
}

/// `[<guest>] spinner: units=<count>` lines: (guest, units).
pub fn parse_spinner_units(serial: &str) -> Vec<(String, u64)> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, text) = guest_line(l)?;
            let units = text.trim().strip_prefix("spinner: units=")?;
            Some((name.to_string(), units.parse().ok()?))
        })
        .collect()
}

/// One spinner's share.
#[derive(Debug, Clone, PartialEq)]
pub struct FairGuest {
    pub name: String,
    pub weight: u32,
    pub units: Option<u64>,
    pub expected: f64,
    pub measured: Option<f64>,
    /// (measured − expected) / expected, in percent.
    pub deviation_pct: Option<f64>,
    pub outcome: Option<String>,
    /// When it printed its result: TSC ticks after the hypervisor read the manifest (its
    /// `first output` line).
    pub ended_tsc: Option<u64>,
}

/// One fairness boot, analysed.
#[derive(Debug, Clone)]
pub struct FairRun {
    pub run: String,
    pub cycles: Option<u64>,
    pub guests: Vec<FairGuest>,
    pub ended: String,
    pub wall_s: Option<f64>,
}

impl FairRun {
    fn from_done(d: &Done) -> Self {
        let (serial, ended, wall) = match &d.result {
            Ok(r) => (r.serial.as_str(), r.summary(), Some(r.wall.as_secs_f64())),
            Err(e) => ("", format!("could not run: {e}"), None),
        };
        let mut run = Self::analyse(&d.job.name, &d.manifest_text, serial, &ended);
        run.wall_s = wall;
        run
    }

    /// Analyses a fairness boot: the manifest gives the weights, the console the units.
    pub fn analyse(run: &str, manifest: &str, serial: &str, ended: &str) -> Self {
        let weights = manifest_weights(manifest);
        let units = parse_spinner_units(serial);
        let total_weight: u32 = weights.iter().map(|(_, w)| *w).sum();
        let all_reported = weights
            .iter()
            .all(|(n, _)| units.iter().any(|(u, _)| u == n));
        let total_units: u64 = weights
            .iter()
            .filter_map(|(n, _)| units.iter().find(|(u, _)| u == n).map(|(_, c)| *c))
            .sum();
        let guests = weights
            .iter()
            .map(|(name, weight)| {
                let expected = f64::from(*weight) / f64::from(total_weight.max(1));
                let units = units.iter().find(|(u, _)| u == name).map(|(_, c)| *c);
                // A share is only meaningful when every spinner reported.
                let measured = units
                    .filter(|_| all_reported && total_units > 0)
                    .map(|u| u as f64 / total_units as f64);
                FairGuest {
                    name: name.clone(),
                    weight: *weight,
                    units,
                    expected,
                    measured,
                    deviation_pct: measured.map(|m| (m - expected) * 100.0 / expected),
                    outcome: vm_outcome(serial, name).map(str::to_string),
                    ended_tsc: first_outputs(serial)
                        .into_iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, t)| t),
                }
            })
            .collect();
        Self {
            run: run.to_string(),
            cycles: manifest_cycles(manifest),
            guests,
            ended: ended.to_string(),
            wall_s: None,
        }
    }

    /// How far apart the spinners ended, in TSC ticks (they start as their VMs are created and
    /// each stops on its own clock; while fewer than all run, the others get more CPU).
    pub fn end_spread(&self) -> Option<u64> {
        let ends: Vec<u64> = self.guests.iter().filter_map(|g| g.ended_tsc).collect();
        (ends.len() >= 2).then(|| ends.iter().max().unwrap_or(&0) - ends.iter().min().unwrap_or(&0))
    }

    /// [`Self::end_spread`] in percent of the run length.
    pub fn end_spread_pct(&self) -> Option<f64> {
        let spread = self.end_spread()?;
        let cycles = self.cycles.filter(|c| *c > 0)?;
        Some(spread as f64 * 100.0 / cycles as f64)
    }

    /// The largest |deviation| from the expected share, in percent of it.
    pub fn max_deviation_pct(&self) -> Option<f64> {
        let devs: Option<Vec<f64>> = self.guests.iter().map(|g| g.deviation_pct).collect();
        devs.filter(|d| !d.is_empty())
            .map(|d| d.into_iter().map(f64::abs).fold(0.0, f64::max))
    }
}

// ---------------------------------------------------------------------------------------------
// Longest exit under console floods

/// `vm <name>: longest exit <n> TSC ticks (reason <r>)` lines: (name, n, r).
pub fn parse_longest_exits(serial: &str) -> Vec<(String, u64, u32)> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, rest) = vm_line(l)?;
            let rest = rest.strip_prefix("longest exit ")?;
            let (ticks, rest) = rest.split_once(" TSC ticks (reason ")?;
            let reason = rest.trim_end().strip_suffix(')')?;
            Some((name.to_string(), ticks.parse().ok()?, reason.parse().ok()?))
        })
        .collect()
}

/// The time slice in TSC ticks: `hv: tsc: <khz> kHz ...` and `time slice <us> us` lines.
pub fn parse_slice_tsc(serial: &str) -> Option<u64> {
    let khz = serial.lines().find_map(|l| {
        l.strip_prefix("hv: tsc: ")?
            .split(' ')
            .next()?
            .parse::<u64>()
            .ok()
    })?;
    let us = serial
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(", time slice ")?;
            rest.strip_suffix(" us")?.parse::<u64>().ok()
        })
        .unwrap_or(5000);
    Some(khz * us / 1000)
}

/// Basic exit reasons by number (SDM Vol. 3D Appendix C), those a flood meets.
pub fn exit_reason_name(reason: u32) -> &'static str {
    match reason {
        1 => "external interrupt",
        7 => "interrupt window",
        10 => "CPUID",
        12 => "HLT",
        18 => "VMCALL",
        28 => "CR access",
        30 => "I/O instruction",
        31 => "RDMSR",
        32 => "WRMSR",
        48 => "EPT violation",
        52 => "preemption timer",
        _ => "other",
    }
}

/// One VM of the console boot.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleRow {
    pub vm: String,
    /// The guest's command line: what it does.
    pub role: String,
    pub ticks: u64,
    pub reason: u32,
    pub outcome: Option<String>,
}

/// The console-flood boot, analysed.
#[derive(Debug, Clone)]
pub struct ConsoleRun {
    pub run: String,
    pub slice_tsc: Option<u64>,
    pub rows: Vec<ConsoleRow>,
    pub ended: String,
}

impl ConsoleRun {
    fn from_done(d: &Done) -> Self {
        let (serial, ended) = match &d.result {
            Ok(r) => (r.serial.as_str(), r.summary()),
            Err(e) => ("", format!("could not run: {e}")),
        };
        Self::analyse(&d.job.name, &d.manifest_text, serial, &ended)
    }

    pub fn analyse(run: &str, manifest: &str, serial: &str, ended: &str) -> Self {
        let roles = manifest_cmdlines(manifest);
        let rows = parse_longest_exits(serial)
            .into_iter()
            .map(|(vm, ticks, reason)| ConsoleRow {
                role: roles
                    .iter()
                    .find(|(n, _)| *n == vm)
                    .map(|(_, c)| c.clone())
                    .unwrap_or_default(),
                outcome: vm_outcome(serial, &vm).map(str::to_string),
                vm,
                ticks,
                reason,
            })
            .collect();
        Self {
            run: run.to_string(),
            slice_tsc: parse_slice_tsc(serial),
            rows,
            ended: ended.to_string(),
        }
    }

    pub fn longest(&self) -> Option<&ConsoleRow> {
        self.rows.iter().max_by_key(|r| r.ticks)
    }

    pub fn verdict(&self) -> String {
        match (self.longest(), self.slice_tsc) {
            (Some(l), Some(s)) if l.ticks < s => "met".into(),
            (Some(_), Some(_)) => "not met".into(),
            _ => format!("not measured ({})", self.ended),
        }
    }
}

/// `(name, cmdline)` of every `[[guest]]` in manifest text.
pub fn manifest_cmdlines(text: &str) -> Vec<(String, String)> {
    let mut guests: Vec<(String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line == "[[guest]]" {
            guests.push((String::new(), String::new()));
            continue;
        }
        let (Some(g), Some((key, value))) = (guests.last_mut(), line.split_once('=')) else {
            continue;
        };
        let value = value.split('#').next().unwrap_or("").trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'').to_string();
        match key.trim() {
            "name" => g.0 = value,
            "cmdline" => g.1 = value,
            _ => {}
        }
    }
    guests
}

/// `vm <name>: first output <t> TSC ticks after the manifest was read` lines: (name, t).
pub fn first_outputs(serial: &str) -> Vec<(String, u64)> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, what) = vm_line(l)?;
            let t = what
                .strip_prefix("first output ")?
                .split_whitespace()
                .next()?;
            Some((name.to_string(), t.parse().ok()?))
        })
        .collect()
}

/// The first `cycles=<n>` in manifest text.
fn manifest_cycles(text: &str) -> Option<u64> {
    let at = text.find("cycles=")? + "cycles=".len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '_')
        .filter(|c| *c != '_')
        .collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Memory

/// `hv: memory: loader data (image, heap, stacks, ESP files) <N> KiB (heap <u> KiB used of <t>
/// KiB), host page tables <p> KiB, <f> MiB free for guests`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvMemory {
    pub loader_kib: u64,
    pub heap_used_kib: u64,
    pub heap_total_kib: u64,
    pub page_tables_kib: u64,
    pub free_mib: u64,
}

/// Parses the hypervisor's memory line (the last one, if printed more than once).
pub fn parse_hv_memory(serial: &str) -> Option<HvMemory> {
    serial.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("hv: memory: loader data")?;
        Some(HvMemory {
            loader_kib: number_after(rest, ") ")?,
            heap_used_kib: number_after(rest, "(heap ")?,
            heap_total_kib: number_after(rest, "used of ")?,
            page_tables_kib: number_after(rest, "host page tables ")?,
            free_mib: rest
                .rsplit_once(", ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?,
        })
    })
}

/// `vm <name>: memory overhead <K> KiB for <M> MiB of RAM (EPT <e> KiB, VMCS+XSAVE+bitmaps <b>
/// KiB, heap <h> KiB)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmMemory {
    pub name: String,
    pub overhead_kib: u64,
    pub ram_mib: u64,
    pub ept_kib: u64,
    pub vmcs_kib: u64,
    pub heap_kib: u64,
}

impl VmMemory {
    /// The overhead in percent of the guest's RAM.
    pub fn pct(&self) -> f64 {
        self.overhead_kib as f64 * 100.0 / (self.ram_mib.max(1) * 1024) as f64
    }
}

/// Every VM's memory-overhead line.
pub fn parse_vm_memory(serial: &str) -> Vec<VmMemory> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, what) = vm_line(l)?;
            let rest = what.strip_prefix("memory overhead ")?;
            Some(VmMemory {
                name: name.to_string(),
                overhead_kib: rest.split_whitespace().next()?.parse().ok()?,
                ram_mib: number_after(rest, "KiB for ")?,
                ept_kib: number_after(rest, "(EPT ")?,
                vmcs_kib: number_after(rest, "bitmaps ")?,
                heap_kib: number_after(rest, "heap ")?,
            })
        })
        .collect()
}

/// One memory boot, analysed.
#[derive(Debug, Clone)]
pub struct MemRun {
    pub run: String,
    pub requested: usize,
    /// Guests with a `vm <name>: started` line.
    pub started: usize,
    pub emulated_mib: u32,
    pub hv: Option<HvMemory>,
    pub vms: Vec<VmMemory>,
    /// `vm <name>: not started: ...` lines.
    pub refused: Vec<String>,
    pub ended: String,
}

impl MemRun {
    fn from_done(d: &Done) -> Self {
        let (serial, ended) = match &d.result {
            Ok(r) => (r.serial.as_str(), r.summary()),
            Err(e) => ("", format!("could not run: {e}")),
        };
        Self::analyse(
            &d.job.name,
            manifest_weights(&d.manifest_text).len(),
            d.job.memory_mib,
            serial,
            &ended,
        )
    }

    pub fn analyse(
        run: &str,
        requested: usize,
        emulated_mib: u32,
        serial: &str,
        ended: &str,
    ) -> Self {
        let started = serial
            .lines()
            .filter_map(vm_line)
            .filter(|(_, w)| w.starts_with("started"))
            .count();
        let refused = serial
            .lines()
            .filter(|l| vm_line(l).is_some_and(|(_, w)| w.starts_with("not started")))
            .map(str::to_string)
            .collect();
        Self {
            run: run.to_string(),
            requested,
            started,
            emulated_mib,
            hv: parse_hv_memory(serial),
            vms: parse_vm_memory(serial),
            refused,
            ended: ended.to_string(),
        }
    }

    /// Mean overhead per VM in KiB.
    pub fn mean_kib(&self) -> Option<f64> {
        (!self.vms.is_empty()).then(|| {
            self.vms.iter().map(|v| v.overhead_kib as f64).sum::<f64>() / self.vms.len() as f64
        })
    }

    /// Largest overhead in percent of the VM's RAM.
    pub fn max_pct(&self) -> Option<f64> {
        self.vms.iter().map(VmMemory::pct).reduce(f64::max)
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up

/// A VM's first console output.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstOutput {
    pub name: String,
    /// TSC ticks from the hypervisor reading the manifest to the VM's first output.
    pub tsc: u64,
    /// Wall seconds from the emulator start to that serial line.
    pub wall_s: f64,
}

/// Start-up figures of one boot.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupRow {
    pub run: String,
    /// Wall seconds from the emulator start to `hv: ferrovisor ... starting`.
    pub hv_start_s: Option<f64>,
    /// Every VM with output.
    pub vms: Vec<FirstOutput>,
    /// The calibrated TSC rate the hypervisor printed (`hv: tsc: <k> kHz`).
    pub tsc_khz: Option<u64>,
}

impl StartupRow {
    /// The start-up figures of a boot, if any VM produced output.
    pub fn from_run(run: &str, result: &RunResult) -> Option<Self> {
        Self::from_lines(run, &result.timed_lines)
    }

    pub fn from_lines(run: &str, lines: &[(Duration, String)]) -> Option<Self> {
        let mut row = StartupRow {
            run: run.to_string(),
            hv_start_s: None,
            vms: Vec::new(),
            tsc_khz: None,
        };
        for (at, line) in lines {
            if row.hv_start_s.is_none()
                && line.starts_with("hv: ferrovisor ")
                && line.ends_with(" starting")
            {
                row.hv_start_s = Some(at.as_secs_f64());
            }
            if let Some(rest) = line.strip_prefix("hv: tsc: ") {
                row.tsc_khz = rest.split_whitespace().next().and_then(|k| k.parse().ok());
            }
            let Some((name, what)) = vm_line(line) else {
                continue;
            };
            let Some(rest) = what.strip_prefix("first output ") else {
                continue;
            };
            let Some(ticks) = rest.split_whitespace().next().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if !row.vms.iter().any(|v| v.name == name) {
                row.vms.push(FirstOutput {
                    name: name.to_string(),
                    tsc: ticks,
                    wall_s: at.as_secs_f64(),
                });
            }
        }
        (!row.vms.is_empty()).then_some(row)
    }

    /// The VM whose first output came first / last (by TSC).
    pub fn first_and_last(&self) -> Option<(&FirstOutput, &FirstOutput)> {
        let first = self.vms.iter().min_by_key(|v| v.tsc)?;
        let last = self.vms.iter().max_by_key(|v| v.tsc)?;
        Some((first, last))
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

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
    fn gather(options: &Options) -> Self {
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
fn bochs_cpu_line() -> String {
    let cfg = MachineConfig {
        emulator: Emulator::Bochs,
        cpus: 1,
        memory_mib: 512,
        timeout: None,
        media: Media::EspDir(PathBuf::from("esp")),
        run_dir: PathBuf::from("run"),
        echo: Echo::Quiet,
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
    fn of(d: &Done) -> Self {
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

// ---------------------------------------------------------------------------------------------
// The report

/// Everything measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: Config,
    pub exits: Option<ExitReport>,
    pub fairness: Vec<FairRun>,
    pub console: Option<ConsoleRun>,
    pub memory: Vec<MemRun>,
    pub startup: Vec<StartupRow>,
    pub linux: Option<LinuxReport>,
    pub peer: Option<kvmpeer::PeerReport>,
    /// Why the Linux boots could not run, if they could not.
    pub linux_notes: Vec<String>,
    pub runs: Vec<RunInfo>,
    pub wall_s: f64,
}

/// A table rendered as aligned text or as Markdown.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Columns whose cells all look like numbers are right-aligned.
    fn numeric(&self, col: usize) -> bool {
        self.rows.iter().all(|r| {
            r.get(col).is_none_or(|c| {
                c == "n/a"
                    || c.trim_start_matches(['+', '-', '≤'])
                        .chars()
                        .next()
                        .is_some_and(|ch| ch.is_ascii_digit())
            })
        })
    }

    pub fn text(&self) -> String {
        let cols = self.header.len();
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .chain(std::iter::once(&self.header[c]))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::from(" ");
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map_or("", String::as_str);
                let pad = w.saturating_sub(cell.chars().count());
                if self.numeric(c) {
                    s += &" ".repeat(pad);
                    s += cell;
                } else {
                    s += cell;
                    s += &" ".repeat(pad);
                }
                s += "  ";
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        out += &line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
        for r in &self.rows {
            out += &line(r);
        }
        out
    }

    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n|",
            self.header
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for c in 0..self.header.len() {
            out += if self.numeric(c) { " ---: |" } else { " --- |" };
        }
        out += "\n";
        for r in &self.rows {
            out += &format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".to_string(), f)
}

/// Groups digits by thousands with `_` (as Rust literals do).
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(ch);
    }
    out
}

impl Report {
    /// The exit-cost table of the first exit boot.
    pub fn exit_table(run: &ExitRun) -> Table {
        let mut t = Table::new(&[
            "exit type",
            "what",
            "iterations",
            "instr/iteration",
            "instr/round trip",
            "over floor",
            "goal (core ≤ 250 over floor)",
        ]);
        for f in &run.figures {
            let missing = || {
                let stopped = run
                    .outcome
                    .as_deref()
                    .filter(|o| o.starts_with("stopped") && !run.lines.done);
                if run.lines.unavailable.contains(&f.kind) {
                    "n/a (unavailable)".to_string()
                } else if stopped.is_some() {
                    "n/a (guest stopped, see the note)".to_string()
                } else if run.lines.unfinished.contains(&f.kind) {
                    "n/a (started, no figures)".to_string()
                } else {
                    "n/a".to_string()
                }
            };
            let goal = match f.goal_met {
                Some(true) => "met".to_string(),
                Some(false) => "not met".to_string(),
                None if CORE_EXITS.contains(&f.kind.as_str()) => "n/a".to_string(),
                None => String::new(),
            };
            t.row(vec![
                f.kind.clone(),
                f.what.clone(),
                opt(f.row.as_ref(), |r| grouped(r.iterations)),
                f.row
                    .as_ref()
                    .map_or_else(missing, |r| format!("{:.1}", r.per_iteration())),
                opt(f.round_trip, |x| format!("{x:.1}")),
                opt(f.over_floor, |x| format!("{x:+.1}")),
                goal,
            ]);
        }
        t
    }

    pub fn fairness_table(run: &FairRun) -> Table {
        let mut t = Table::new(&[
            "guest",
            "weight",
            "units",
            "expected share",
            "measured share",
            "deviation",
            "ended (TSC after manifest)",
        ]);
        for g in &run.guests {
            t.row(vec![
                g.name.clone(),
                g.weight.to_string(),
                g.units.map_or_else(
                    || match &g.outcome {
                        Some(o) => format!("n/a ({o})"),
                        None => "n/a".into(),
                    },
                    grouped,
                ),
                format!("{:.2} %", g.expected * 100.0),
                opt(g.measured, |m| format!("{:.2} %", m * 100.0)),
                opt(g.deviation_pct, |d| format!("{d:+.2} %")),
                opt(g.ended_tsc, grouped),
            ]);
        }
        t
    }

    pub fn console_table(run: &ConsoleRun) -> Table {
        let mut t = Table::new(&[
            "guest",
            "what it does",
            "longest exit (TSC)",
            "exit reason",
            "of a time slice",
            "outcome",
        ]);
        for r in &run.rows {
            t.row(vec![
                r.vm.clone(),
                r.role.clone(),
                grouped(r.ticks),
                format!("{} ({})", r.reason, exit_reason_name(r.reason)),
                opt(run.slice_tsc.filter(|s| *s > 0), |s| {
                    format!("{:.1} %", r.ticks as f64 * 100.0 / s as f64)
                }),
                r.outcome.clone().unwrap_or_else(|| "n/a".into()),
            ]);
        }
        t
    }

    /// One sentence on how far apart the spinners ended.
    fn spread_sentence(run: &FairRun) -> String {
        match (run.end_spread(), run.end_spread_pct()) {
            (Some(spread), Some(pct)) => format!(
                "The spinners ended {} TSC ticks apart ({pct:.1} % of the run). Each runs for \
                 the same time from its own start, so they started about that far apart too; \
                 while not all of them run, the others get more than their weighted share, so \
                 part of the deviation comes from the staggered start and end, not from the \
                 scheduler's steady state.",
                grouped(spread)
            ),
            _ => "When the spinners ended is unknown.".to_string(),
        }
    }

    /// Per-guest overhead, one row per boot.
    pub fn memory_table(&self) -> Table {
        let mut t = Table::new(&[
            "guests of 128 MiB",
            "started",
            "overhead/guest",
            "EPT",
            "VMCS+XSAVE+bitmaps",
            "heap",
            "% of guest RAM (max)",
            "goal < 1 %",
        ]);
        for m in &self.memory {
            let mean = |f: fn(&VmMemory) -> u64| -> Option<f64> {
                (!m.vms.is_empty())
                    .then(|| m.vms.iter().map(|v| f(v) as f64).sum::<f64>() / m.vms.len() as f64)
            };
            let kib = |k: f64| format!("{k:.0} KiB");
            t.row(vec![
                m.requested.to_string(),
                m.started.to_string(),
                opt(m.mean_kib(), kib),
                opt(mean(|v| v.ept_kib), kib),
                opt(mean(|v| v.vmcs_kib), kib),
                opt(mean(|v| v.heap_kib), kib),
                opt(m.max_pct(), |p| format!("{p:.3} %")),
                opt(m.max_pct(), |p| {
                    if p < MEMORY_GOAL_PCT {
                        "met"
                    } else {
                        "not met"
                    }
                    .to_string()
                }),
            ]);
        }
        t
    }

    /// The hypervisor's own memory, one row per boot.
    pub fn hv_memory_table(&self) -> Table {
        let mut t = Table::new(&[
            "guests of 128 MiB",
            "emulated RAM",
            "loader data (image, heap, stacks, ESP files)",
            "heap used/total",
            "host page tables",
            "free for guests",
        ]);
        for m in &self.memory {
            t.row(vec![
                m.requested.to_string(),
                format!("{} MiB", m.emulated_mib),
                opt(m.hv.as_ref(), |h| format!("{} KiB", h.loader_kib)),
                opt(m.hv.as_ref(), |h| {
                    format!("{}/{} KiB", h.heap_used_kib, h.heap_total_kib)
                }),
                opt(m.hv.as_ref(), |h| format!("{} KiB", h.page_tables_kib)),
                opt(m.hv.as_ref(), |h| format!("{} MiB", h.free_mib)),
            ]);
        }
        t
    }

    pub fn startup_table(&self) -> Table {
        let mut t = Table::new(&[
            "boot",
            "guests",
            "hv start (wall s)",
            "first guest output: instr (emulated ms)",
            "wall s",
            "last guest output: instr (emulated ms)",
            "wall s",
        ]);
        for s in &self.startup {
            let Some((first, last)) = s.first_and_last() else {
                continue;
            };
            let ticks = |v: &FirstOutput| match s.tsc_khz.filter(|k| *k > 0) {
                Some(khz) => format!(
                    "{} ({:.0} ms, {})",
                    grouped(v.tsc),
                    v.tsc as f64 / khz as f64,
                    v.name
                ),
                None => format!("{} ({})", grouped(v.tsc), v.name),
            };
            t.row(vec![
                s.run.clone(),
                s.vms.len().to_string(),
                opt(s.hv_start_s, |x| format!("{x:.1}")),
                ticks(first),
                format!("{:.1}", first.wall_s),
                ticks(last),
                format!("{:.1}", last.wall_s),
            ]);
        }
        t
    }

    /// The Linux boot figures side by side.
    pub fn linux_table(l: &LinuxReport) -> Table {
        let mut t = Table::new(&[
            "figure",
            "under ferrovisor",
            "direct (OVMF → EFI stub)",
            "ferrovisor/direct",
        ]);
        for row in l.rows() {
            t.row(row.to_vec());
        }
        t
    }

    pub fn runs_table(&self) -> Table {
        let mut t = Table::new(&["boot", "manifest / what", "CPUs", "RAM", "wall", "ended"]);
        for r in &self.runs {
            t.row(vec![
                r.name.clone(),
                r.manifest.clone(),
                r.cpus.to_string(),
                format!("{} MiB", r.memory_mib),
                opt(r.wall_s, |w| format!("{w:.0} s")),
                if r.powered_off {
                    "power-off".into()
                } else if let Some(line) = &r.line_seen {
                    format!("`{}` seen, emulator stopped", line.trim())
                } else {
                    r.summary.clone()
                },
            ]);
        }
        t
    }

    fn memory_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for m in &self.memory {
            if m.started < m.requested {
                notes.push(format!(
                    "{}: only {} of {} guests started in {} MiB of emulated RAM{}",
                    m.run,
                    m.started,
                    m.requested,
                    m.emulated_mib,
                    m.refused
                        .first()
                        .map_or(String::new(), |r| format!(" (e.g. `{r}`)"))
                ));
            }
            if m.vms.is_empty() {
                notes.push(format!(
                    "{}: no `vm <name>: memory overhead` lines ({})",
                    m.run, m.ended
                ));
            }
        }
        let silent: Vec<&str> = self
            .memory
            .iter()
            .filter(|m| m.hv.is_none())
            .map(|m| m.run.as_str())
            .collect();
        if !silent.is_empty() {
            notes.push(format!(
                "the hypervisor printed no `hv: memory: loader data ...` line in {}",
                silent.join(", ")
            ));
        }
        notes
    }

    fn exit_notes(run: &ExitRun) -> Vec<String> {
        let mut notes = Vec::new();
        for kind in &run.lines.unavailable {
            notes.push(if kind == "floor" {
                "the guest said `bench: floor unavailable` (boot.efi without --features bench?)"
                    .to_string()
            } else {
                format!("the guest said `bench: {kind} unavailable`")
            });
        }
        if !run.lines.done {
            notes.push(format!(
                "the guest did not print `bench: done`; it {}; the boot: {}",
                run.outcome.as_deref().unwrap_or("printed no outcome"),
                run.ended
            ));
        }
        for o in &run.lines.other {
            notes.push(format!("the guest also said `bench: {o}`"));
        }
        notes
    }

    /// The terminal report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\n==== ferrovisor bench ====");
        if let Some(e) = &self.exits {
            let _ = writeln!(
                s,
                "\nExit costs: Bochs instruction counts (TSC = instructions under Bochs), not \
                 hardware latency; 1 CPU, boot {}",
                e.first.run
            );
            s += &Self::exit_table(&e.first).text();
            for n in Self::exit_notes(&e.first) {
                let _ = writeln!(s, " note: {n}");
            }
            let _ = writeln!(s, " repeatability: {}", e.repeatability());
        }
        for f in &self.fairness {
            let _ = writeln!(
                s,
                "\nFairness {}: 2 CPUs, {} spinner guests, {} guest TSC ticks each; largest \
                 deviation from the expected share: {}",
                f.run,
                f.guests.len(),
                opt(f.cycles, grouped),
                opt(f.max_deviation_pct(), |d| format!("{d:.2} %"))
            );
            s += &Self::fairness_table(f).text();
            let _ = writeln!(s, " note: {}", Self::spread_sentence(f));
        }
        if let Some(c) = &self.console {
            let _ = writeln!(
                s,
                "\nLongest exit while guests flood the console (boot {}): {} TSC ticks, goal \
                 under one time slice ({} ticks): {}",
                c.run,
                opt(c.longest().map(|r| r.ticks), grouped),
                opt(c.slice_tsc, grouped),
                c.verdict()
            );
            s += &Self::console_table(c).text();
        }
        if !self.memory.is_empty() {
            let _ = writeln!(s, "\nMemory overhead per guest (hello guests, 2 CPUs)");
            s += &self.memory_table().text();
            let _ = writeln!(s, "\nHypervisor memory");
            s += &self.hv_memory_table().text();
            for n in self.memory_notes() {
                let _ = writeln!(s, " note: {n}");
            }
        }
        if !self.startup.is_empty() {
            let _ = writeln!(
                s,
                "\nStart-up: TSC ticks (= Bochs instructions) from reading the manifest to a \
                 guest's first console byte; wall seconds from the emulator start"
            );
            s += &self.startup_table().text();
        }
        if let Some(l) = &self.linux {
            let _ = writeln!(
                s,
                "\nLinux boot: under ferrovisor (guest `{}`, 1 vCPU, 256 MiB) vs the same kernel \
                 and initramfs booted directly by OVMF through its EFI stub (`{}`); Bochs with \
                 1 CPU, 512 MiB, same CPU model and ips in both",
                linux_boot::GUEST,
                l.direct_cmdline
            );
            s += &Self::linux_table(l).text();
            for n in l.notes() {
                let _ = writeln!(s, " note: {n}");
            }
        }
        for n in &self.linux_notes {
            let _ = writeln!(s, "\nLinux boot: {n}");
        }
        if let Some(p) = &self.peer {
            let _ = writeln!(
                s,
                "\nPeer (KVM): the bench guest ({}) under kvm_intel of the same kernel, booted \
                 directly by OVMF in a 1-CPU Bochs; minimal user-space VMM tests/bench/kvmpeer.c, \
                 no in-kernel irqchip. Instructions per round trip (empty loop subtracted) on \
                 both sides; ratio = ferrovisor/KVM",
                p.guest_cmdline
            );
            s += &kvmpeer::table(&p.rows).text();
            if let Some(line) = p.kvm_line() {
                let _ = writeln!(s, " {line}");
            }
            for n in p.notes() {
                let _ = writeln!(s, " note: {n}");
            }
        }
        let _ = writeln!(s, "\nBoots");
        s += &self.runs_table().text();
        let c = &self.config;
        let _ = writeln!(
            s,
            "\nBochs {} ({}), `{}`; commit {}{}; total wall {:.0} s",
            c.bochs_version,
            c.bochs_package,
            c.cpu_line,
            c.commit,
            match c.dirty {
                Some(true) => " (dirty tree)",
                Some(false) => "",
                None => " (tree state unknown)",
            },
            self.wall_s
        );
        s
    }

    /// `docs/BENCHMARKS.md`.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Benchmarks\n\n\
             Generated by `cargo xtask bench` (`xtask/src/bench.rs`); do not edit by hand, run it \
             again. The raw figures are in `target/bench/results.json`.\n\n\
             Everything here is measured under **Bochs**, where the TSC counts executed \
             instructions: the figures are **instruction counts** of the hypervisor's code paths \
             (guest and hypervisor instructions together; Bochs models no time for the VMX \
             transitions themselves), good for comparing paths and commits, **not hardware \
             latencies**.\n"
        );
        let _ = writeln!(s, "## Configuration\n");
        let mut t = Table::new(&["setting", "value"]);
        let dirty = match c.dirty {
            Some(true) => "yes (uncommitted changes were measured)",
            Some(false) => "no",
            None => "unknown",
        };
        for (k, v) in [
            ("date", c.date.clone()),
            ("git commit", format!("`{}`", c.commit)),
            ("tree dirty", dirty.to_string()),
            (
                "emulator",
                format!(
                    "Bochs {} (Debian package {})",
                    c.bochs_version, c.bochs_package
                ),
            ),
            ("Bochs CPU", format!("`{}`", c.cpu_line)),
            (
                "boot.efi",
                "release, `--features bench` (adds the floor hypercall), in `target/bench/`"
                    .to_string(),
            ),
            (
                "host",
                format!(
                    "{}, {} cores; at most {PARALLEL_BOOTS} boots side by side",
                    c.host_cpu, c.host_cores
                ),
            ),
            (
                "whole bench",
                format!(
                    "{:.0} s wall (builds included; wall times depend on the host's load)",
                    self.wall_s
                ),
            ),
        ] {
            t.row(vec![k.to_string(), v]);
        }
        s += &t.markdown();
        let _ = writeln!(
            s,
            "\nThe boots (OVMF firmware, ESP as a Bochs vvfat disk):\n"
        );
        s += &self.runs_table().markdown();

        let _ = writeln!(s, "\n## Exit costs\n");
        match &self.exits {
            None => {
                let _ = writeln!(s, "Not measured in this run.");
            }
            Some(e) => {
                let _ = writeln!(
                    s,
                    "The `bench` guest (`tests/guests/bench`) alone on 1 CPU times a loop of each \
                     exiting instruction with RDTSC. *instr/iteration* is the loop's TSC total \
                     divided by its iterations; *instr/round trip* subtracts the empty loop \
                     (the exit, the hypervisor's handling and the resume, in instructions); \
                     *over floor* subtracts the floor hypercall's round trip (VMCALL with \
                     RAX = 0xFFFF_0000, handled by the shortest possible path: exit, advance \
                     RIP, resume), i.e. what the dispatch and handling of that exit add. Goal: \
                     the exits the core handles itself (CPUID, VMCALL, RDMSR) cost at most \
                     {CORE_EXIT_GOAL:.0} instructions over the floor (a figure, not a test).\n\n\
                     Bochs instruction counts (TSC = instructions under Bochs), not hardware \
                     latency:\n"
                );
                s += &Self::exit_table(&e.first).markdown();
                for n in Self::exit_notes(&e.first) {
                    let _ = writeln!(s, "\nNote: {n}.");
                }
                let _ = writeln!(s, "\n**Repeatability**: {}.", e.repeatability());
            }
        }

        let _ = writeln!(s, "\n## Scheduling fairness\n");
        if self.fairness.is_empty() {
            let _ = writeln!(s, "Not measured in this run.");
        } else {
            let _ = writeln!(
                s,
                "`spinner` guests (`tests/guests/spinner`) on 2 CPUs, default time slice: four \
                 1-vCPU guests (equal and 2:1 weights), and a 1-vCPU beside a 2-vCPU guest of \
                 equal weight (`fair-vcpus`: a VM's weight is split over its runnable vCPUs, so \
                 each guest should get half; the 2-vCPU guest's units are both vCPUs' together). \
                 Each does CPU-bound work until its guest TSC has advanced by the given number \
                 of ticks from its start and prints the units of work done; a guest's share of \
                 the total work is its share of the CPU time. Deviation = (measured − \
                 expected) / expected. *ended* is when the guest printed its result, in TSC \
                 ticks after the hypervisor read the manifest."
            );
            for f in &self.fairness {
                let _ = writeln!(
                    s,
                    "\n### {} ({} guest TSC ticks per spinner, {})\n\nLargest deviation from the \
                     expected share: **{}**.\n",
                    f.run,
                    opt(f.cycles, grouped),
                    opt(f.wall_s, |w| format!("{w:.0} s wall for the boot")),
                    opt(f.max_deviation_pct(), |d| format!("{d:.2} %"))
                );
                s += &Self::fairness_table(f).markdown();
                let _ = writeln!(s, "\n{}", Self::spread_sentence(f));
            }
        }

        let _ = writeln!(s, "\n## Longest exit under console floods\n");
        match &self.console {
            None => {
                let _ = writeln!(s, "Not measured in this run.");
            }
            Some(c) => {
                let _ = writeln!(
                    s,
                    "`bench-console.toml` on 2 CPUs: `conflood` guests (`tests/guests/conflood`) \
                     flood the console with 4 KiB CONSOLE_WRITE hypercalls or 4 KiB bursts of \
                     UART writes that ignore LSR, beside a spinner. The hypervisor measures every \
                     exit from VM exit to the next VM entry (two RDTSCs) and prints each VM's \
                     longest (`vm <name>: longest exit <n> TSC ticks (reason <r>)`). Goal: under \
                     one time slice ({} TSC ticks). Longest: **{}** ({}).\n",
                    opt(c.slice_tsc, grouped),
                    opt(c.longest().map(|r| r.ticks), grouped),
                    c.verdict()
                );
                s += &Self::console_table(c).markdown();
            }
        }

        let _ = writeln!(s, "\n## Memory overhead\n");
        if self.memory.is_empty() {
            let _ = writeln!(s, "Not measured in this run.");
        } else {
            let _ = writeln!(
                s,
                "1, 4 and 16 `hello` guests of 128 MiB each, 2 CPUs. Per VM: the memory the \
                 hypervisor took beyond the guest's RAM, as it reports it (`vm <name>: memory \
                 overhead ...`): EPT tables, VMCS/XSAVE/MSR and I/O bitmaps, heap. The \
                 hypervisor's own memory is from its `hv: memory: loader data ...` line. Goal: \
                 under {MEMORY_GOAL_PCT:.0} % of a 128 MiB guest's RAM. Bochs 2.7 emulates up to \
                 3072 MiB here (`memory: guest=3072, host=2048`: it allocates at most 2048 MiB \
                 of host memory and backs the rest with a swap file).\n"
            );
            s += &self.memory_table().markdown();
            let _ = writeln!(s, "\nThe hypervisor's own memory in the same boots:\n");
            s += &self.hv_memory_table().markdown();
            for n in self.memory_notes() {
                let _ = writeln!(s, "\nNote: {n}.");
            }
        }

        let _ = writeln!(s, "\n## Start-up\n");
        if self.startup.is_empty() {
            let _ = writeln!(s, "Not measured in this run.");
        } else {
            let tsc = self
                .startup
                .iter()
                .find_map(|r| r.tsc_khz)
                .map_or(String::new(), |k| {
                    format!(" (the hypervisor calibrates the emulated TSC at {k} kHz)")
                });
            let _ = writeln!(
                s,
                "From the moment the hypervisor has read the manifest to a guest's first console \
                 byte, in TSC ticks = Bochs instructions{tsc}; and the wall time from the \
                 emulator's start to that serial line arriving (the serial log is polled every \
                 50 ms; two boots ran side by side, and under Bochs most of the wall time before \
                 the hypervisor starts is the firmware).\n"
            );
            s += &self.startup_table().markdown();
        }

        s += &self.linux_markdown();
        s += &self.peer_markdown();
        s
    }

    fn linux_markdown(&self) -> String {
        let mut s = String::from("\n## Linux boot: under ferrovisor vs booted directly\n\n");
        let Some(l) = &self.linux else {
            let _ = writeln!(s, "Not measured in this run.");
            for n in &self.linux_notes {
                let _ = writeln!(s, "\nNote: {n}.");
            }
            return s;
        };
        let kernel = self
            .config
            .kernel
            .as_deref()
            .map_or(String::new(), |k| format!(" (`{k}`)"));
        let _ = writeln!(
            s,
            "Debian's cloud kernel{kernel} with the busybox initramfs of `cargo xtask build` (its \
             `/init` prints a few facts, sorts and hashes 2000 numbers and powers off), booted \
             twice in the same Bochs configuration (1 CPU, 512 MiB, the `cpu:` line above):\n\n\
             - **under ferrovisor**, as its only guest (`tests/manifests/bench-linux.toml`: \
             1 vCPU, 256 MiB, `bzimage`), command line `{}`: linux1's in \
             `tests/manifests/linux.toml` plus `{tsc}`;\n\
             - **directly**: no `\\EFI\\BOOT\\BOOTX64.EFI` on the ESP, so OVMF ends in its UEFI \
             shell, which runs `startup.nsh` after a 5 s countdown; that starts the kernel \
             through its EFI stub with the same initramfs and command line plus `{}` (one CPU \
             and the guest's RAM size), i.e. `{}`.\n\n\
             The two boots ran side by side, so their wall times saw the same load. Two \
             figures, each as a ratio ferrovisor/direct:\n\n\
             - **(a) wall time** from the kernel's `Linux version` banner on the serial console \
             to `/init`'s `linux-guest: powering off` (or the kernel's `reboot:` line right \
             after it, where the halt cut that line short). Host seconds: they depend on the \
             host's speed and load and on the 50 ms polling of the serial log, and they \
             include what Bochs spends emulating VMX transitions and EPT walks, which take host \
             time but no emulated time.\n\
             - **(b) kernel time**: the timestamp the kernel prints on its last line \
             (`reboot: Power down` under ferrovisor, which gives the guest ACPI S5; \
             `reboot: System halted` directly, where Bochs + OVMF have no ACPI and \
             `poweroff -f` halts): the kernel's clock from early boot to power-off, in emulated \
             seconds. Bochs' TSC advances by one per executed instruction (guest and hypervisor \
             alike; ferrovisor offsets the guest's TSC but neither scales nor traps it) and, \
             while the CPU is halted, at the emulated rate of 200,000,000 per second (Bochs' \
             `ips`); `{tsc}` makes both kernels count time at that rate (left alone, the \
             directly booted kernel takes 3500 MHz from CPUID leaf 0x16 while ferrovisor's guest \
             calibrates about 200 MHz against the PM timer). Deterministic up to interrupt \
             timing, independent of the host's load.\n\n\
             `quiet` stays on both command lines: the serial console is the one device that \
             costs differently on the two sides (Bochs' UART models 115200 baud for the direct \
             kernel; ferrovisor's UART takes the guest's bytes at once), so a verbose boot \
             would mostly measure console output (a check without `quiet` when this benchmark \
             was set up: 13.96 s direct vs 8.86 s under ferrovisor, kernel time).\n",
            l.hv_cmdline,
            linux_boot::DIRECT_EXTRA_CMDLINE,
            l.direct_cmdline,
            tsc = linux_boot::TSC_CMDLINE,
        );
        s += &Self::linux_table(l).markdown();
        let _ = writeln!(
            s,
            "\n**Ratio ferrovisor/direct: (a) wall time {}, (b) kernel time {}.**",
            opt(l.wall_ratio(), |r| format!("{r:.2}×")),
            opt(l.kernel_ratio(), |r| format!("{r:.2}×"))
        );
        for n in l.notes() {
            let _ = writeln!(s, "\nNote: {n}.");
        }
        s
    }

    fn peer_markdown(&self) -> String {
        let mut s = String::from("\n## Peer comparison (KVM)\n\n");
        let Some(p) = &self.peer else {
            let _ = writeln!(s, "Not measured in this run.");
            return s;
        };
        let modules = if p.modules.is_empty() {
            "`kvm_intel` and its dependencies".to_string()
        } else {
            p.modules
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "The same `bench` guest with the same command line (`{guest}`) under KVM, on the \
             same emulated CPU. Bochs emulates VT-x with EPT, so KVM runs on it as on hardware: \
             Debian's kernel (the one above) is booted directly by OVMF (as for the direct \
             Linux boot; command line `{l1}`) in a 1-CPU, 512 MiB Bochs, with an initramfs \
             that loads {modules} from the same kernel package and runs the guest under \
             `kvmpeer` (`tests/bench/kvmpeer.c`, built by xtask with `gcc -static -O2`), a \
             minimal VMM: one VM, one vCPU, one 16 MiB memory slot, no in-kernel irqchip, the \
             guest started in the state ferrovisor gives an `elf64` guest (long mode, identity \
             map, GDT at 0x7000, RDI = command line, RSI = RAM size), \
             `KVM_SET_CPUID2` with `KVM_GET_SUPPORTED_CPUID`'s entries.\n\n\
             What serves each exit under KVM: CPUID and RDMSR of IA32_APIC_BASE never leave \
             the kernel; VMCALL goes to KVM's hypercall handler (ABI_VERSION is RAX = 0, a \
             number KVM doesn't define: it returns -KVM_ENOSYS in the kernel; the guest only \
             times the round trip); port I/O and MMIO exit to `kvmpeer` in user space \
             (`KVM_EXIT_IO` / `KVM_EXIT_MMIO`) and back through `KVM_RUN`. The floor call \
             doesn't exist under KVM (the guest says `bench: floor unavailable`).\n\n\
             Under Bochs the TSC counts instructions in every mode, so both columns are \
             instructions per round trip with the empty loop subtracted: the guest's, the \
             hypervisor's (KVM and, for exits to user space, the host kernel's way out to \
             `kvmpeer` and back, and `kvmpeer`'s own), with no time for the VMX transitions \
             themselves on either side. Counts of instructions, not latencies: on hardware the \
             transitions, cache misses and the host kernel's mitigations weigh differently.\n\n\
             Goals (displayed, not asserted): CPUID and VMCALL at most 1/3 of KVM's count; a \
             port-I/O exit served by a ferrovisor device model at most 1/10 of KVM's I/O exit \
             served by a user-space VMM.\n",
            guest = p.guest_cmdline,
            l1 = p.direct_cmdline,
        );
        s += &kvmpeer::table(&p.rows).markdown();
        if let Some(line) = p.kvm_line() {
            let _ = writeln!(s, "\n`{line}`");
        }
        for n in p.notes() {
            let _ = writeln!(s, "\nNote: {n}.");
        }
        s
    }

    /// The JSON document (`target/bench/results.json`).
    pub fn json(&self) -> Json {
        let exits = self.exits.as_ref().map_or(Json::Null, |e| {
            Json::obj([
                ("goal_over_floor", Json::Num(CORE_EXIT_GOAL)),
                ("first", e.first.json()),
                ("second", e.second.json()),
                ("identical", Json::Bool(e.identical())),
                ("repeatability", Json::str(&e.repeatability())),
            ])
        });
        Json::obj([
            (
                "units",
                Json::str(
                    "Bochs instruction counts (TSC = instructions under Bochs), \
                     not hardware latency",
                ),
            ),
            ("config", self.config.json(self.wall_s)),
            (
                "boots",
                Json::Arr(self.runs.iter().map(RunInfo::json).collect()),
            ),
            ("exits", exits),
            (
                "fairness",
                Json::Arr(self.fairness.iter().map(FairRun::json).collect()),
            ),
            (
                "console",
                self.console.as_ref().map_or(Json::Null, ConsoleRun::json),
            ),
            (
                "memory",
                Json::Arr(self.memory.iter().map(MemRun::json).collect()),
            ),
            (
                "startup",
                Json::Arr(self.startup.iter().map(StartupRow::json).collect()),
            ),
            (
                "linux_boot",
                self.linux.as_ref().map_or(Json::Null, LinuxReport::json),
            ),
            (
                "linux_boot_notes",
                Json::Arr(self.linux_notes.iter().map(|n| Json::str(n)).collect()),
            ),
            (
                "kvm_peer",
                self.peer
                    .as_ref()
                    .map_or(Json::Null, kvmpeer::PeerReport::json),
            ),
        ])
    }
}

fn num(x: Option<f64>) -> Json {
    x.map_or(Json::Null, Json::Num)
}

fn int(x: Option<u64>) -> Json {
    x.map_or(Json::Null, Json::Int)
}

impl Config {
    fn json(&self, wall_s: f64) -> Json {
        Json::obj([
            ("date", Json::str(&self.date)),
            ("commit", Json::str(&self.commit)),
            ("dirty", self.dirty.map_or(Json::Null, Json::Bool)),
            ("bochs_version", Json::str(&self.bochs_version)),
            ("bochs_package", Json::str(&self.bochs_package)),
            ("bochs_cpu", Json::str(&self.cpu_line)),
            ("host_cpu", Json::str(&self.host_cpu)),
            ("host_cores", Json::Int(self.host_cores as u64)),
            (
                "linux_kernel",
                self.kernel.as_deref().map_or(Json::Null, Json::str),
            ),
            ("wall_s", Json::Num(wall_s)),
        ])
    }
}

impl RunInfo {
    fn json(&self) -> Json {
        Json::obj([
            ("boot", Json::str(&self.name)),
            ("manifest", Json::str(&self.manifest)),
            ("cpus", Json::Int(u64::from(self.cpus))),
            ("memory_mib", Json::Int(u64::from(self.memory_mib))),
            ("wall_s", num(self.wall_s)),
            ("powered_off", Json::Bool(self.powered_off)),
            (
                "ended_on_line",
                self.line_seen.as_deref().map_or(Json::Null, Json::str),
            ),
            ("summary", Json::str(&self.summary)),
        ])
    }
}

impl ExitFigure {
    fn json(&self) -> Json {
        let row = self.row.as_ref();
        Json::obj([
            ("type", Json::str(&self.kind)),
            ("what", Json::str(&self.what)),
            ("total_tsc", int(row.map(|r| r.total))),
            ("iterations", int(row.map(|r| r.iterations))),
            ("per_iteration", num(row.map(ExitRow::per_iteration))),
            ("round_trip", num(self.round_trip)),
            ("over_floor", num(self.over_floor)),
            ("goal_met", self.goal_met.map_or(Json::Null, Json::Bool)),
        ])
    }
}

impl ExitRun {
    fn json(&self) -> Json {
        Json::obj([
            ("boot", Json::str(&self.run)),
            ("done", Json::Bool(self.lines.done)),
            (
                "floor_unavailable",
                Json::Bool(self.lines.floor_unavailable()),
            ),
            (
                "guest_outcome",
                self.outcome.as_deref().map_or(Json::Null, Json::str),
            ),
            ("ended", Json::str(&self.ended)),
            (
                "types",
                Json::Arr(self.figures.iter().map(ExitFigure::json).collect()),
            ),
        ])
    }
}

impl FairRun {
    fn json(&self) -> Json {
        let guest = |g: &FairGuest| {
            Json::obj([
                ("name", Json::str(&g.name)),
                ("weight", Json::Int(u64::from(g.weight))),
                ("units", int(g.units)),
                ("expected_share", Json::Num(g.expected)),
                ("measured_share", num(g.measured)),
                ("deviation_pct", num(g.deviation_pct)),
                ("ended_tsc", int(g.ended_tsc)),
            ])
        };
        Json::obj([
            ("boot", Json::str(&self.run)),
            ("cycles", int(self.cycles)),
            ("wall_s", num(self.wall_s)),
            ("max_deviation_pct", num(self.max_deviation_pct())),
            ("end_spread_tsc", int(self.end_spread())),
            ("ended", Json::str(&self.ended)),
            ("guests", Json::Arr(self.guests.iter().map(guest).collect())),
        ])
    }
}

impl ConsoleRun {
    fn json(&self) -> Json {
        let row = |r: &ConsoleRow| {
            Json::obj([
                ("name", Json::str(&r.vm)),
                ("role", Json::str(&r.role)),
                ("longest_exit_tsc", Json::Int(r.ticks)),
                ("reason", Json::Int(u64::from(r.reason))),
                (
                    "outcome",
                    r.outcome.as_deref().map_or(Json::Null, Json::str),
                ),
            ])
        };
        Json::obj([
            ("boot", Json::str(&self.run)),
            ("slice_tsc", int(self.slice_tsc)),
            ("longest_exit_tsc", int(self.longest().map(|r| r.ticks))),
            ("verdict", Json::str(&self.verdict())),
            ("ended", Json::str(&self.ended)),
            ("guests", Json::Arr(self.rows.iter().map(row).collect())),
        ])
    }
}

impl MemRun {
    fn json(&self) -> Json {
        let hv = self.hv.as_ref().map_or(Json::Null, |h| {
            Json::obj([
                ("loader_kib", Json::Int(h.loader_kib)),
                ("heap_used_kib", Json::Int(h.heap_used_kib)),
                ("heap_total_kib", Json::Int(h.heap_total_kib)),
                ("page_tables_kib", Json::Int(h.page_tables_kib)),
                ("free_mib", Json::Int(h.free_mib)),
            ])
        });
        let vm = |v: &VmMemory| {
            Json::obj([
                ("name", Json::str(&v.name)),
                ("overhead_kib", Json::Int(v.overhead_kib)),
                ("ram_mib", Json::Int(v.ram_mib)),
                ("ept_kib", Json::Int(v.ept_kib)),
                ("vmcs_xsave_bitmaps_kib", Json::Int(v.vmcs_kib)),
                ("heap_kib", Json::Int(v.heap_kib)),
            ])
        };
        Json::obj([
            ("boot", Json::str(&self.run)),
            ("guests_requested", Json::Int(self.requested as u64)),
            ("guests_started", Json::Int(self.started as u64)),
            ("emulated_mib", Json::Int(u64::from(self.emulated_mib))),
            ("mean_overhead_kib", num(self.mean_kib())),
            ("max_overhead_pct", num(self.max_pct())),
            ("hv", hv),
            ("vms", Json::Arr(self.vms.iter().map(vm).collect())),
        ])
    }
}

impl StartupRow {
    fn json(&self) -> Json {
        let vm = |v: &FirstOutput| {
            Json::obj([
                ("name", Json::str(&v.name)),
                ("first_output_tsc", Json::Int(v.tsc)),
                ("first_output_wall_s", Json::Num(v.wall_s)),
            ])
        };
        Json::obj([
            ("boot", Json::str(&self.run)),
            ("hv_start_wall_s", num(self.hv_start_s)),
            ("tsc_khz", int(self.tsc_khz)),
            ("vms", Json::Arr(self.vms.iter().map(vm).collect())),
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// JSON output

/// A JSON value (output only).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(u64),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn str(s: &str) -> Json {
        Json::Str(s.to_string())
    }

    fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
        Json::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// Pretty-printed, two spaces per level, with a final newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let indent = |n: usize| "  ".repeat(n);
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Num(x) if x.is_finite() => {
                // Three decimals are plenty for instruction counts and percentages.
                let r = (x * 1000.0).round() / 1000.0;
                let _ = write!(out, "{r}");
            }
            Json::Num(_) => out.push_str("null"),
            Json::Str(s) => write_json_string(out, s),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&indent(depth + 1));
                    item.write(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&indent(depth));
                out.push(']');
            }
            Json::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(&indent(depth + 1));
                    write_json_string(out, k);
                    out.push_str(": ");
                    v.write(out, depth + 1);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                out.push_str(&indent(depth));
                out.push('}');
            }
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXITS_LOG: &str = "\
hv: ferrovisor 0.1.0 starting
hv: tsc: 199997 kHz (calibrated against the PIT)
vm bench: memory overhead 52 KiB for 16 MiB of RAM (EPT 12 KiB, VMCS+XSAVE+bitmaps 36 KiB, heap 4 KiB)
vm bench: started (16 MiB at host 0x1b000000, 1 vcpu, elf64, long mode, image 20952 bytes, EPT 12 KiB)
vm bench: first output 123456 TSC ticks after the manifest was read
[bench] bench: loop 50000 10000 5
[bench] bench: floor 3050000 10000 305
[bench] bench: cpuid 4550000 10000 455
[bench] bench: vmcall 3500000 10000 350
[bench] bench: pio_device 9050000 10000 905
[bench] bench: pio_unclaimed 8050000 10000 805
[bench] bench: rdmsr 6000000 10000 600.0
[bench] bench: done
vm bench: exited code=0
hv: summary: 1 guests: bench exited code=0
";

    #[test]
    fn exit_lines_are_parsed_and_analysed() {
        let run = ExitRun::analyse("exits-1", EXITS_LOG, "powered off");
        assert!(run.lines.done);
        assert!(!run.lines.floor_unavailable());
        assert_eq!(run.lines.rows.len(), 7);
        assert_eq!(run.outcome.as_deref(), Some("exited code=0"));
        let get = |k: &str| run.figures.iter().find(|f| f.kind == k).unwrap();
        assert_eq!(get("loop").round_trip, None);
        assert_eq!(get("floor").round_trip, Some(300.0));
        assert_eq!(get("floor").over_floor, None);
        assert_eq!(get("cpuid").round_trip, Some(450.0));
        assert_eq!(get("cpuid").over_floor, Some(150.0));
        assert_eq!(get("cpuid").goal_met, Some(true));
        assert_eq!(get("vmcall").over_floor, Some(45.0));
        assert_eq!(get("rdmsr").over_floor, Some(295.0));
        assert_eq!(get("rdmsr").goal_met, Some(false));
        assert_eq!(get("pio_device").goal_met, None);
        // Not printed: listed as missing; hlt only when measured.
        assert!(get("mmio_device").row.is_none());
        assert!(!run.figures.iter().any(|f| f.kind == "hlt"));
        let table = Report::exit_table(&run).text();
        assert!(table.contains("not met"), "{table}");
        assert!(table.contains("n/a"), "{table}");
    }

    #[test]
    fn per_iteration_comes_from_the_totals() {
        let lines = parse_exit_lines("[bench] bench: loop 50003 10000 5\n");
        assert_eq!(lines.rows[0].per_iteration(), 5.0003);
        assert_eq!(lines.rows[0].printed_per_iteration, 5.0);
    }

    #[test]
    fn guest_stopped_at_mmio_and_floor_unavailable() {
        let log = "[bench] bench: loop 50000 10000 5\n\
                   [bench] bench: floor unavailable\n\
                   [bench] bench: cpuid 4550000 10000 455\n\
                   [bench] bench: what is this\n\
                   [bench] bench: mmio_device start\n\
                   vm bench: stopped: EPT violation: read at 0xfed00000\n";
        let run = ExitRun::analyse("exits-1", log, "powered off");
        assert!(run.lines.floor_unavailable());
        assert!(!run.lines.done);
        assert_eq!(run.lines.other, ["what is this"]);
        assert_eq!(run.lines.unfinished, ["mmio_device"]);
        let cpuid = run.figures.iter().find(|f| f.kind == "cpuid").unwrap();
        assert_eq!(cpuid.round_trip, Some(450.0));
        assert_eq!((cpuid.over_floor, cpuid.goal_met), (None, None));
        let table = Report::exit_table(&run).text();
        assert!(
            table.contains("n/a (guest stopped, see the note)"),
            "{table}"
        );
        let notes = Report::exit_notes(&run).join("\n");
        assert!(notes.contains("floor unavailable"), "{notes}");
        assert!(notes.contains("did not print `bench: done`"), "{notes}");
    }

    #[test]
    fn unknown_exit_types_are_kept() {
        let log = "[bench] bench: loop 500 100 5\n[bench] bench: xsetbv 10500 100 105\n";
        let figures = exit_figures(&parse_exit_lines(log));
        let x = figures.iter().find(|f| f.kind == "xsetbv").unwrap();
        assert_eq!(x.round_trip, Some(100.0));
        assert_eq!(x.what, "(not known to xtask)");
    }

    #[test]
    fn repeatability_compares_totals() {
        let a = ExitRun::analyse("exits-1", EXITS_LOG, "");
        let b = ExitRun::analyse("exits-2", EXITS_LOG, "");
        let same = ExitReport::new(a.clone(), b);
        assert!(same.identical());
        assert!(same.repeatability().contains("identical"));
        let other = EXITS_LOG.replace("cpuid 4550000", "cpuid 4551000");
        let c = ExitRun::analyse("exits-2", &other, "");
        let differ = ExitReport::new(a, c);
        assert!(!differ.identical());
        let text = differ.repeatability();
        assert!(
            text.contains("cpuid +1000 ticks (+0.10 per iteration"),
            "{text}"
        );
    }

    #[test]
    fn fairness_shares_and_deviation() {
        let manifest =
            std::fs::read_to_string(paths::manifests_dir().join("bench-fair-weighted.toml"))
                .unwrap();
        assert_eq!(
            manifest_weights(&manifest),
            [
                ("spin-a".to_string(), 200),
                ("spin-b".to_string(), 200),
                ("spin-c".to_string(), 100),
                ("spin-d".to_string(), 100)
            ]
        );
        assert_eq!(manifest_cycles(&manifest), Some(DEFAULT_CYCLES));
        let log = "vm spin-a: first output 1000000000 TSC ticks after the manifest was read\n\
                   [spin-a] spinner: units=3300\n[spin-c] spinner: units=1700\n\
                   vm spin-c: first output 1050000000 TSC ticks after the manifest was read\n\
                   [spin-b] spinner: units=3400\n[spin-d] spinner: units=1600\n";
        let run = FairRun::analyse("fair-weighted", &manifest, log, "");
        assert_eq!(run.guests[2].ended_tsc, Some(1_050_000_000));
        assert_eq!(run.guests[3].ended_tsc, None);
        assert_eq!(run.end_spread(), Some(50_000_000));
        assert!((run.end_spread_pct().unwrap() - 5.0).abs() < 1e-9);
        let sentence = Report::spread_sentence(&run);
        assert!(
            sentence.contains("50_000_000 TSC ticks apart (5.0 %"),
            "{sentence}"
        );
        let a = &run.guests[0];
        assert_eq!(a.units, Some(3300));
        assert!((a.expected - 1.0 / 3.0).abs() < 1e-12);
        assert!((a.measured.unwrap() - 0.33).abs() < 1e-12);
        assert!((a.deviation_pct.unwrap() - (-1.0)).abs() < 1e-9);
        // spin-c: 0.17 against 1/6: +2 %; spin-d: 0.16: -4 %.
        assert!((run.max_deviation_pct().unwrap() - 4.0).abs() < 1e-9);
    }

    #[test]
    fn fairness_with_a_missing_spinner_has_no_shares() {
        let manifest =
            std::fs::read_to_string(paths::manifests_dir().join("bench-fair-equal.toml")).unwrap();
        let log = "[spin-a] spinner: units=10\n[spin-b] spinner: units=10\n\
                   [spin-c] spinner: units=10\nvm spin-d: stopped: triple fault\n";
        let run = FairRun::analyse("fair-equal", &manifest, log, "");
        assert!(run.guests.iter().all(|g| g.measured.is_none()));
        assert_eq!(run.max_deviation_pct(), None);
        assert_eq!(
            run.guests[3].outcome.as_deref(),
            Some("stopped: triple fault")
        );
        let table = Report::fairness_table(&run).text();
        assert!(table.contains("n/a (stopped: triple fault)"), "{table}");
    }

    #[test]
    fn cycles_are_replaced() {
        assert_eq!(
            replace_cycles("cmdline = \"cycles=1_500 x\"\ncycles=7", 42),
            "cmdline = \"cycles=42 x\"\ncycles=42"
        );
    }

    #[test]
    fn memory_lines_are_parsed() {
        let log = "\
hv: memory: 121 regions, 2997 MiB free, 37 MiB firmware boot services, 32 MiB loader, top 0xbffe0000
hv: memory: loader data (image, heap, stacks, ESP files) 4321 KiB (heap 103 KiB used of 4096 KiB), host page tables 24 KiB, 2950 MiB free for guests
vm mem-01: memory overhead 64 KiB for 128 MiB of RAM (EPT 20 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 4 KiB)
vm mem-01: started (128 MiB at host 0x1b000000, 1 vcpu, elf64)
vm mem-02: memory overhead 68 KiB for 128 MiB of RAM (EPT 24 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 4 KiB)
vm mem-02: started (128 MiB at host 0x1b000000, 1 vcpu, elf64)
vm mem-03: not started: out of memory
";
        let m = MemRun::analyse("mem-4", 4, 1024, log, "");
        assert_eq!(
            m.hv,
            Some(HvMemory {
                loader_kib: 4321,
                heap_used_kib: 103,
                heap_total_kib: 4096,
                page_tables_kib: 24,
                free_mib: 2950
            })
        );
        assert_eq!(m.vms.len(), 2);
        assert_eq!(
            m.vms[1],
            VmMemory {
                name: "mem-02".into(),
                overhead_kib: 68,
                ram_mib: 128,
                ept_kib: 24,
                vmcs_kib: 40,
                heap_kib: 4
            }
        );
        assert_eq!(m.started, 2);
        assert_eq!(m.refused, ["vm mem-03: not started: out of memory"]);
        assert_eq!(m.mean_kib(), Some(66.0));
        assert!((m.max_pct().unwrap() - 68.0 * 100.0 / 131072.0).abs() < 1e-12);
        let report = Report {
            config: Config::default(),
            exits: None,
            fairness: Vec::new(),
            console: None,
            memory: vec![m],
            startup: Vec::new(),
            linux: None,
            peer: None,
            linux_notes: Vec::new(),
            runs: Vec::new(),
            wall_s: 1.0,
        };
        let notes = report.memory_notes().join("\n");
        assert!(notes.contains("only 2 of 4 guests started"), "{notes}");
        let table = report.memory_table().text();
        assert!(table.contains("0.052 %"), "{table}");
        assert!(table.contains("met"), "{table}");
    }

    #[test]
    fn startup_takes_times_from_the_lines() {
        let at = |s: f64, l: &str| (Duration::from_secs_f64(s), l.to_string());
        let lines = [
            at(1.0, "BdsDxe: loading"),
            at(14.5, "hv: ferrovisor 0.1.0 starting"),
            at(15.0, "hv: tsc: 199997 kHz (calibrated against the PIT)"),
            at(
                20.0,
                "vm a: first output 5000000 TSC ticks after the manifest was read",
            ),
            at(
                22.0,
                "vm b: first output 9000000 TSC ticks after the manifest was read",
            ),
            at(
                23.0,
                "vm a: first output 1 TSC ticks after the manifest was read",
            ),
        ];
        let row = StartupRow::from_lines("mem-4", &lines).unwrap();
        assert_eq!(row.hv_start_s, Some(14.5));
        assert_eq!(row.tsc_khz, Some(199_997));
        assert_eq!(row.vms.len(), 2);
        let (first, last) = row.first_and_last().unwrap();
        assert_eq!(
            (first.name.as_str(), first.tsc, first.wall_s),
            ("a", 5_000_000, 20.0)
        );
        assert_eq!((last.name.as_str(), last.tsc), ("b", 9_000_000));
        assert!(StartupRow::from_lines("x", &lines[..2]).is_none());
    }

    #[test]
    fn console_run_reads_longest_exits_and_the_slice() {
        let manifest = "[hypervisor]\n[[guest]]\nname = \"flood-hc\"\ncmdline = \"role=hypercall \
                        writes=50\"\n[[guest]]\nname = \"spin\"\ncmdline = \"cycles=9\"\n";
        let serial = "hv: tsc: 200000 kHz (calibrated against the PIT)\n\
                      hv: manifest: 2 guests, time slice 5000 us\n\
                      vm flood-hc: exited code=0\n\
                      vm spin: exited code=0\n\
                      vm flood-hc: longest exit 212345 TSC ticks (reason 18)\n\
                      vm spin: longest exit 9000 TSC ticks (reason 52)\n";
        let run = ConsoleRun::analyse("console", manifest, serial, "powered off");
        assert_eq!(run.slice_tsc, Some(1_000_000));
        assert_eq!(run.rows.len(), 2);
        let l = run.longest().unwrap();
        assert_eq!(
            (l.vm.as_str(), l.ticks, l.reason),
            ("flood-hc", 212_345, 18)
        );
        assert_eq!(l.role, "role=hypercall writes=50");
        assert_eq!(l.outcome.as_deref(), Some("exited code=0"));
        assert_eq!(run.verdict(), "met");
        let table = Report::console_table(&run).text();
        assert!(
            table.contains("21.2 %") && table.contains("18 (VMCALL)"),
            "{table}"
        );
        let slow = ConsoleRun::analyse(
            "console",
            manifest,
            &serial.replace("212345", "1500000"),
            "powered off",
        );
        assert_eq!(slow.verdict(), "not met");
        assert!(ConsoleRun::analyse("console", manifest, "", "timed out")
            .verdict()
            .starts_with("not measured"));
    }

    #[test]
    fn json_is_escaped_and_nested() {
        let j = Json::obj([
            ("a", Json::str("q\"\\\n\u{1}")),
            (
                "b",
                Json::Arr(vec![Json::Int(1), Json::Num(0.12345), Json::Null]),
            ),
            ("c", Json::Obj(Vec::new())),
            ("d", Json::Num(f64::NAN)),
        ]);
        assert_eq!(
            j.render(),
            "{\n  \"a\": \"q\\\"\\\\\\n\\u0001\",\n  \"b\": [\n    1,\n    0.123,\n    null\n  ],\n  \"c\": {},\n  \"d\": null\n}\n"
        );
    }

    #[test]
    fn tables_align_and_render_markdown() {
        let mut t = Table::new(&["name", "n"]);
        t.row(vec!["a|b".into(), "5".into()]);
        t.row(vec!["long name".into(), "12".into()]);
        assert_eq!(
            t.text(),
            " name        n\n ---------  --\n a|b         5\n long name  12\n"
        );
        assert_eq!(
            t.markdown(),
            "| name | n |\n| --- | ---: |\n| a\\|b | 5 |\n| long name | 12 |\n"
        );
        assert_eq!(grouped(1_500_000_000), "1_500_000_000");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn sections_and_jobs() {
        assert!(Sections::parse("exits,memory").unwrap().memory);
        assert!(Sections::parse("cpu").is_err());
        assert!(Sections::parse("").is_err());
        let some = Sections::parse("linux,kvm").unwrap();
        assert!(some.linux && some.peer && !some.exits);
        let all = jobs(&Options::default());
        let names: Vec<&str> = all.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-hv",
                "linux-direct",
                "fair-equal",
                "fair-weighted",
                "fair-vcpus",
                "console",
                "kvm-peer",
                "mem-16",
                "exits-1",
                "exits-2",
                "mem-4",
                "mem-1"
            ]
        );
        for j in &all {
            match &j.kind {
                JobKind::Hypervisor { manifest } => {
                    assert!(manifest.is_file(), "{}", manifest.display());
                    let text = std::fs::read_to_string(manifest).unwrap();
                    crate::manifest::file_refs(&text).unwrap();
                }
                JobKind::Direct(d) => {
                    assert!(d.cmdline.starts_with("console=ttyS0 "), "{}", d.cmdline);
                    assert_eq!((j.cpus, j.memory_mib), (1, 512));
                }
            }
            let cfg = MachineConfig {
                emulator: Emulator::Bochs,
                cpus: j.cpus,
                memory_mib: j.memory_mib,
                timeout: None,
                media: Media::EspDir(PathBuf::from("e")),
                run_dir: PathBuf::from("r"),
                echo: Echo::Quiet,
            };
            machine::validate(&cfg).unwrap();
        }
        let counts: Vec<usize> = ["bench-mem-1.toml", "bench-mem-4.toml", "bench-mem-16.toml"]
            .iter()
            .map(|f| {
                manifest_weights(&std::fs::read_to_string(paths::manifests_dir().join(f)).unwrap())
                    .len()
            })
            .collect();
        assert_eq!(counts, [1, 4, 16]);
        assert!(bochs_cpu_line().contains("model=corei7_skylake_x"));
    }

    #[test]
    fn linux_boots_share_the_command_line() {
        let text =
            std::fs::read_to_string(paths::manifests_dir().join("bench-linux.toml")).unwrap();
        let guest = manifest_value(&text, "cmdline").unwrap();
        let linux1 = std::fs::read_to_string(paths::manifests_dir().join("linux.toml")).unwrap();
        let linux1 = manifest_value(&linux1, "cmdline").unwrap();
        assert_eq!(format!("{linux1} {}", linux_boot::TSC_CMDLINE), guest);
        assert_eq!(
            manifest_value(&text, "name").as_deref(),
            Some(linux_boot::GUEST)
        );
        assert_eq!(manifest_value(&text, "memory").as_deref(), Some("256M"));
        let all = jobs(&Options::default());
        let direct = all.iter().find(|j| j.name == "linux-direct").unwrap();
        let JobKind::Direct(d) = &direct.kind else {
            panic!("linux-direct is not a direct boot");
        };
        assert_eq!(d.cmdline, format!("{guest} maxcpus=1 mem=256M"));
        let hv = all.iter().find(|j| j.name == "linux-hv").unwrap();
        assert_eq!((hv.cpus, hv.memory_mib), (direct.cpus, direct.memory_mib));
        assert_eq!(
            manifest_value("# cmdline = \"x\"\ncmdline = 'a b' # c\n", "cmdline").as_deref(),
            Some("a b")
        );
    }
}
