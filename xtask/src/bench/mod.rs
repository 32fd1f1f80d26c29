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
//! | `linux-3` | `bench-linux3.toml`: three Linux guests of 1 vCPU, for their timer lateness | 2 | 1024 MiB |
//! | `linux-direct` | no hypervisor: the same kernel, initramfs and command line started by OVMF's shell through the EFI stub ([`linux_boot`]) | 1 | 512 MiB |
//! | `kvm-peer` | no hypervisor: the same kernel with an initramfs that loads `kvm_intel` and runs the `bench` guest under a minimal KVM VMM ([`kvmpeer`]) | 1 | 512 MiB |
//! | `blk` | `bench-blk.toml`: the kernel with its root on the gold image `rootfs.ext4` (vda) and a scratch disk on it (vdb), 256 MiB; `blkbench=1`: 64 MiB read from vda and from tmpfs, 6 MiB written to vdb and to tmpfs, between marks ([`blk`]) | 1 | 1024 MiB |
//! | `net` | `bench-net.toml`: two Linux guests of 192 MiB on one network; `netcli` fetches 32 MiB from `netsrv` (busybox `httpd`/`wget`), the same over its own loopback, and pings `netsrv` 20 times, between marks ([`net`]) | 1 | 1024 MiB |
//! | `goldmem` | `bench-goldmem.toml`: 8 `blkwrite` guests of 32 MiB, each with a writable disk on the one 64 MiB gold image, writing 128 to 1024 KiB to it ([`goldmem`]) | 1 | 1024 MiB |
//!
//! `linux-hv` and `linux-direct` go first, side by side, so that their wall times are taken
//! under the same load.
//!
//! The UEFI application is built with `--features bench` (the floor hypercall, and the `blk`
//! marks: a 32-bit guest write to guest-physical 0xFEBFF000 prints `hv: bench mark: ...`) into
//! `target/bench/`, so the normal build in `target/` is left alone.
//!
//! The code, by concern: [`mod@run`] (the boots and running them), [`parse`] (console and manifest
//! lines every section reads), one module per section ([`exits`], [`fairness`], [`console`],
//! [`memory`], [`startup`], [`linux_boot`], [`lateness`], [`kvmpeer`], [`blk`], [`net`],
//! [`goldmem`]:
//! its lines and its figures),
//! [`config`] (what it ran on), [`report`] (the terminal text and `docs/BENCHMARKS.md`) and
//! [`json`] (`target/bench/results.json`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::paths::{self, UEFI_TARGET};
use crate::prereq::{self, Need};
use crate::{build, esp, run_command};

pub mod blk;
pub mod config;
pub mod console;
pub mod exits;
pub mod fairness;
#[cfg(test)]
mod fixture;
pub mod goldmem;
pub mod json;
pub mod kvmpeer;
pub mod lateness;
pub mod linux_boot;
pub mod memory;
pub mod net;
pub mod parse;
pub mod report;
pub mod run;
pub mod startup;

pub use config::{Config, RunInfo};
pub use console::{exit_reason_name, parse_longest_exits, parse_slice_tsc, ConsoleRow, ConsoleRun};
pub use exits::{
    exit_figures, parse_exit_lines, ExitFigure, ExitLines, ExitReport, ExitRow, ExitRun,
};
pub use fairness::{parse_spinner_units, FairGuest, FairRun};
pub use lateness::{LatenessGuest, LatenessRun, TimerLateness};
pub use memory::{parse_hv_memory, parse_vm_memory, HvMemory, MemRun, VmMemory};
pub use parse::{
    first_outputs, guest_line, manifest_cmdlines, manifest_value, manifest_weights, vm_outcome,
};
pub use report::{Report, Table};
pub use run::{direct_cmdline, jobs, replace_cycles, Done, Job, JobKind};
pub use startup::{FirstOutput, StartupRow};

use linux_boot::{LinuxBoot, LinuxReport};
use run::{run_jobs, LinuxPlan};

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
    /// Timer lateness of three Linux guests on two CPUs (`linux-3`; `linux-hv`'s too when
    /// `linux` runs).
    pub lateness: bool,
    /// virtio-blk reads and writes against tmpfs in a Linux guest (`blk`).
    pub blk: bool,
    /// 8 guests on one gold image against 8 private copies (`goldmem`).
    pub goldmem: bool,
    /// virtio-net guest to guest against loopback, and ping (`net`).
    pub net: bool,
}

impl Sections {
    pub const ALL: Sections = Sections {
        exits: true,
        fairness: true,
        console: true,
        memory: true,
        linux: true,
        peer: true,
        lateness: true,
        blk: true,
        goldmem: true,
        net: true,
    };
    const NONE: Sections = Sections {
        exits: false,
        fairness: false,
        console: false,
        memory: false,
        linux: false,
        peer: false,
        lateness: false,
        blk: false,
        goldmem: false,
        net: false,
    };

    /// `exits,fairness,console,memory,linux,peer,lateness,blk,goldmem,net` (any subset,
    /// comma-separated; `kvm` = `peer`).
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
                "lateness" => s.lateness = true,
                "blk" => s.blk = true,
                "goldmem" => s.goldmem = true,
                "net" => s.net = true,
                other => {
                    bail!(
                        "unknown bench section `{other}` (exits, fairness, console, memory, \
                         linux, peer, lateness, blk, goldmem, net)"
                    )
                }
            }
        }
        if s == Self::NONE {
            bail!(
                "--only needs at least one of exits, fairness, console, memory, linux, peer, \
                 lateness, blk, goldmem, net"
            );
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
        if options.sections.linux
            || options.sections.peer
            || options.sections.lateness
            || options.sections.blk
            || options.sections.net
        {
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
        lateness: Vec::new(),
        linux: None,
        peer: None,
        blk: None,
        goldmem: None,
        net: None,
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
    // Three Linux guests on two CPUs, and the one alone on one CPU beside them.
    for name in ["linux-3", "linux-hv"] {
        if let Some(d) = find(name) {
            report.lateness.push(LatenessRun::from_done(d));
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
    if options.sections.blk {
        report.blk = find("blk").map(blk::BlkRun::from_done);
    }
    if options.sections.net {
        report.net = find("net").map(net::NetRun::from_done);
    }
    if options.sections.goldmem {
        report.goldmem = find("goldmem").map(goldmem::GoldRun::from_done);
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
    std::fs::write(results_json(), report.json().render()?)
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
    if sections.goldmem {
        v.push("blkwrite");
    }
    v
}
