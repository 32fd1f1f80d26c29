//! Running the boots: the job list, the Linux and KVM preparations, two boots side by side.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::linux_boot::{self, DirectBoot};
use super::{kvmpeer, manifest_value, Options, Sections, PARALLEL_BOOTS};
use crate::machine::{self, Echo, Emulator, MachineConfig, Media, RunResult};
use crate::prereq::Emulators;
use crate::{esp, linux, paths};

/// The Linux kernel, the initramfs images and the command lines of the Linux and KVM boots,
/// prepared before any boot starts (a failure only drops those boots, with a note).
pub(super) struct LinuxPlan {
    pub(super) assets: Option<linux::LinuxAssets>,
    pub(super) assets_error: Option<String>,
    pub(super) peer: Option<kvmpeer::Prepared>,
    pub(super) peer_error: Option<String>,
    /// The Linux guest's command line in `bench-linux.toml`.
    pub(super) hv_cmdline: String,
    /// The bench guest's command line in `bench-exits.toml`.
    pub(super) bench_cmdline: String,
}

impl LinuxPlan {
    pub(super) fn prepare(sections: Sections) -> Self {
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
        // `goldmem` needs only the root image (rootfs.ext4), which comes with the rest.
        if !(sections.linux
            || sections.peer
            || sections.lateness
            || sections.blk
            || sections.goldmem
            || sections.net)
        {
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
    pub(super) fn can_run(&self, name: &str) -> bool {
        match name {
            "linux-hv" | "linux-direct" | "linux-3" | "blk" | "goldmem" | "net" => {
                self.assets.is_some()
            }
            "kvm-peer" => self.peer.is_some(),
            _ => true,
        }
    }

    pub(super) fn direct_cmdline(&self) -> String {
        direct_cmdline(&self.hv_cmdline)
    }

    pub(super) fn peer_cmdline(&self) -> String {
        self.hv_cmdline.clone()
    }

    pub(super) fn notes(&self) -> Vec<String> {
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
    if options.sections.lateness {
        jobs.push(job("linux-3", "bench-linux3.toml", 2, 1024, 900));
    }
    if options.sections.blk {
        jobs.push(job("blk", "bench-blk.toml", 1, 1024, 1200));
    }
    if options.sections.net {
        jobs.push(job("net", "bench-net.toml", 1, 1024, 1500));
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
    if options.sections.goldmem {
        // One CPU: every VM is created (and its overhead measured) before any runs and
        // writes to its overlay, which would add to a later VM's heap figure.
        jobs.push(job("goldmem", "bench-goldmem.toml", 1, 1024, 600));
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

pub(super) fn run_jobs(
    jobs: Vec<Job>,
    sources: &esp::EspSources,
    emulators: &Emulators,
) -> Vec<Done> {
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
            nic: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::config::bochs_cpu_line;
    use crate::bench::manifest_weights;

    #[test]
    fn cycles_are_replaced() {
        assert_eq!(
            replace_cycles("cmdline = \"cycles=1_500 x\"\ncycles=7", 42),
            "cmdline = \"cycles=42 x\"\ncycles=42"
        );
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
                "linux-3",
                "blk",
                "net",
                "fair-equal",
                "fair-weighted",
                "fair-vcpus",
                "console",
                "kvm-peer",
                "mem-16",
                "goldmem",
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
                nic: None,
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
