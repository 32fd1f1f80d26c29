//! `target/bench/results.json`: the raw figures of a bench run, as serde types.
//!
//! The types here are the document's schema (field names are its keys, `None` is `null`);
//! [`Report::json`] fills them from the analysed runs and [`Results::parse`] reads a document
//! back. Floats are rounded to three decimals (plenty for instruction counts and percentages);
//! a float that is not a number is `null`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::kvmpeer::{self, PeerReport, PeerRow};
use super::linux_boot::{LinuxBoot, LinuxReport};
use super::{
    ConsoleRow, ConsoleRun, ExitFigure, ExitRow, ExitRun, FairGuest, FairRun, FirstOutput,
    HvMemory, LatenessGuest, LatenessRun, MemRun, Report, RunInfo, StartupRow, VmMemory,
    CORE_EXIT_GOAL,
};

/// What the figures count (the document's first key).
pub const UNITS: &str =
    "Bochs instruction counts (TSC = instructions under Bochs), not hardware latency";

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub units: String,
    pub config: Config,
    pub boots: Vec<Boot>,
    pub exits: Option<Exits>,
    pub fairness: Vec<Fairness>,
    pub console: Option<Console>,
    pub memory: Vec<Memory>,
    pub startup: Vec<Startup>,
    pub timer_lateness: Vec<Lateness>,
    pub linux_boot: Option<LinuxBootPair>,
    pub linux_boot_notes: Vec<String>,
    pub kvm_peer: Option<Peer>,
    /// virtio-blk against tmpfs (absent in documents of older runs).
    #[serde(default)]
    pub blk: Option<super::blk::BlkRun>,
    /// 8 guests on one gold image.
    #[serde(default)]
    pub goldmem: Option<super::goldmem::GoldRun>,
    /// virtio-net guest to guest against loopback.
    #[serde(default)]
    pub net: Option<super::net::NetRun>,
}

/// What the figures were measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub date: String,
    pub commit: String,
    pub dirty: Option<bool>,
    pub bochs_version: String,
    pub bochs_package: String,
    pub bochs_cpu: String,
    pub host_cpu: String,
    pub host_cores: u64,
    pub linux_kernel: Option<String>,
    /// The whole bench, builds included.
    pub wall_s: f64,
}

/// How one boot went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boot {
    pub boot: String,
    pub manifest: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub wall_s: Option<f64>,
    pub powered_off: bool,
    pub ended_on_line: Option<String>,
    pub summary: String,
}

/// Both exit-cost boots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exits {
    pub goal_over_floor: f64,
    pub first: ExitBoot,
    pub second: ExitBoot,
    pub identical: bool,
    pub repeatability: String,
}

/// One exit-cost boot (also the KVM peer's guest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitBoot {
    pub boot: String,
    pub done: bool,
    pub floor_unavailable: bool,
    pub guest_outcome: Option<String>,
    pub ended: String,
    pub types: Vec<ExitType>,
}

/// The figures of one exit type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitType {
    #[serde(rename = "type")]
    pub kind: String,
    pub what: String,
    pub total_tsc: Option<u64>,
    pub iterations: Option<u64>,
    pub per_iteration: Option<f64>,
    pub round_trip: Option<f64>,
    pub over_floor: Option<f64>,
    pub goal_met: Option<bool>,
}

/// One fairness boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fairness {
    pub boot: String,
    pub cycles: Option<u64>,
    pub wall_s: Option<f64>,
    pub max_deviation_pct: Option<f64>,
    pub end_spread_tsc: Option<u64>,
    pub ended: String,
    pub guests: Vec<FairnessGuest>,
}

/// One spinner's share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FairnessGuest {
    pub name: String,
    pub weight: u32,
    pub units: Option<u64>,
    pub expected_share: f64,
    pub measured_share: Option<f64>,
    pub deviation_pct: Option<f64>,
    pub ended_tsc: Option<u64>,
}

/// The console-flood boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Console {
    pub boot: String,
    pub slice_tsc: Option<u64>,
    pub longest_exit_tsc: Option<u64>,
    pub verdict: String,
    pub ended: String,
    pub guests: Vec<ConsoleGuest>,
}

/// One VM of the console-flood boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleGuest {
    pub name: String,
    pub role: String,
    pub longest_exit_tsc: u64,
    pub reason: u32,
    pub outcome: Option<String>,
}

/// One memory boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub boot: String,
    pub guests_requested: u64,
    pub guests_started: u64,
    pub emulated_mib: u32,
    pub mean_overhead_kib: Option<f64>,
    pub max_overhead_pct: Option<f64>,
    pub hv: Option<HvMemory>,
    pub vms: Vec<VmMemory>,
}

/// Start-up figures of one boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Startup {
    pub boot: String,
    pub hv_start_wall_s: Option<f64>,
    pub tsc_khz: Option<u64>,
    pub vms: Vec<StartupVm>,
}

/// A VM's first console output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartupVm {
    pub name: String,
    pub first_output_tsc: u64,
    pub first_output_wall_s: f64,
}

/// One boot's timer lateness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lateness {
    pub boot: String,
    pub cpus: u32,
    pub slice_us: Option<u64>,
    /// The latest expiry of any guest, microseconds after its deadline.
    pub max_us: Option<u64>,
    /// Whether `max_us` is within one time slice.
    pub verdict: String,
    pub ended: String,
    pub guests: Vec<LatenessOfGuest>,
}

/// One guest's timer lateness (`null`s: the hypervisor printed no line for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatenessOfGuest {
    pub name: String,
    pub expiries: Option<u64>,
    /// Expiries per bucket, in the hypervisor's order (`<10us` ... `>=10ms`).
    pub buckets: Option<Vec<Bucket>>,
    pub max_us: Option<u64>,
    /// How often the Linux kernel marked its TSC unstable.
    pub tsc_unstable: Option<u64>,
    pub outcome: Option<String>,
}

/// One bucket of a lateness distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// As the hypervisor prints it: `<10us`, `<1ms`, `>=10ms`.
    pub within: String,
    pub count: u64,
}

/// The Linux boot under ferrovisor and booted directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxBootPair {
    pub what: String,
    pub hv_cmdline: String,
    pub direct_cmdline: String,
    pub hv: LinuxBootRun,
    pub direct: LinuxBootRun,
    pub wall_ratio_hv_over_direct: Option<f64>,
    pub kernel_time_ratio_hv_over_direct: Option<f64>,
}

/// One Linux boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinuxBootRun {
    pub boot: String,
    pub banner_wall_s: Option<f64>,
    pub end_wall_s: Option<f64>,
    pub end_line: Option<String>,
    pub banner_to_poweroff_wall_s: Option<f64>,
    pub reboot_line: Option<String>,
    pub reboot_kernel_timestamp_s: Option<f64>,
    pub kernel: Option<String>,
    pub nproc: Option<String>,
    pub memtotal: Option<String>,
    pub hypervisor_flag: Option<String>,
    pub workload: Option<String>,
    pub ended: String,
}

/// The bench guest under KVM, beside ferrovisor's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub what: String,
    pub not_run: Option<String>,
    pub modules: Vec<String>,
    pub guest_cmdline: String,
    pub l1_cmdline: String,
    pub kvm_loaded: Option<bool>,
    pub init_lines: Option<Vec<String>>,
    pub vmm_lines: Option<Vec<String>>,
    pub kvm_exits: Option<ExitBoot>,
    pub compared: Vec<PeerCompared>,
}

/// One exit type, ferrovisor beside KVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerCompared {
    #[serde(rename = "type")]
    pub kind: String,
    pub ferrovisor_round_trip: Option<f64>,
    pub kvm_round_trip: Option<f64>,
    pub kvm_path: String,
    pub ratio_ferrovisor_over_kvm: Option<f64>,
    pub goal_max_ratio: Option<f64>,
    pub goal_met: Option<bool>,
}

impl Results {
    /// Pretty-printed (two spaces per level), with a final newline.
    pub fn render(&self) -> Result<String> {
        let mut s = serde_json::to_string_pretty(self).context("serializing the results")?;
        s.push('\n');
        Ok(s)
    }

    /// Reads a document [`Self::render`] wrote.
    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_str(text).context("reading bench results JSON")
    }
}

/// `x` to three decimals (a non-finite `x` stays as it is: serde_json writes it as `null`).
fn r3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        x
    }
}

/// [`r3`] of an optional figure; not a number is `None`.
fn o3(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite()).map(r3)
}

impl Report {
    /// The JSON document (`target/bench/results.json`).
    pub fn json(&self) -> Results {
        let c = &self.config;
        Results {
            units: UNITS.to_string(),
            config: Config {
                date: c.date.clone(),
                commit: c.commit.clone(),
                dirty: c.dirty,
                bochs_version: c.bochs_version.clone(),
                bochs_package: c.bochs_package.clone(),
                bochs_cpu: c.cpu_line.clone(),
                host_cpu: c.host_cpu.clone(),
                host_cores: c.host_cores as u64,
                linux_kernel: c.kernel.clone(),
                wall_s: r3(self.wall_s),
            },
            boots: self.runs.iter().map(Boot::of).collect(),
            exits: self.exits.as_ref().map(|e| Exits {
                goal_over_floor: CORE_EXIT_GOAL,
                first: ExitBoot::of(&e.first),
                second: ExitBoot::of(&e.second),
                identical: e.identical(),
                repeatability: e.repeatability(),
            }),
            fairness: self.fairness.iter().map(Fairness::of).collect(),
            console: self.console.as_ref().map(Console::of),
            memory: self.memory.iter().map(Memory::of).collect(),
            startup: self.startup.iter().map(Startup::of).collect(),
            timer_lateness: self.lateness.iter().map(Lateness::of).collect(),
            linux_boot: self.linux.as_ref().map(LinuxBootPair::of),
            linux_boot_notes: self.linux_notes.clone(),
            kvm_peer: self.peer.as_ref().map(Peer::of),
            blk: self.blk.clone(),
            goldmem: self.goldmem.clone(),
            net: self.net.clone(),
        }
    }
}

impl Boot {
    fn of(r: &RunInfo) -> Self {
        Self {
            boot: r.name.clone(),
            manifest: r.manifest.clone(),
            cpus: r.cpus,
            memory_mib: r.memory_mib,
            wall_s: o3(r.wall_s),
            powered_off: r.powered_off,
            ended_on_line: r.line_seen.clone(),
            summary: r.summary.clone(),
        }
    }
}

impl ExitBoot {
    fn of(run: &ExitRun) -> Self {
        Self {
            boot: run.run.clone(),
            done: run.lines.done,
            floor_unavailable: run.lines.floor_unavailable(),
            guest_outcome: run.outcome.clone(),
            ended: run.ended.clone(),
            types: run.figures.iter().map(ExitType::of).collect(),
        }
    }
}

impl ExitType {
    fn of(f: &ExitFigure) -> Self {
        let row = f.row.as_ref();
        Self {
            kind: f.kind.clone(),
            what: f.what.clone(),
            total_tsc: row.map(|r| r.total),
            iterations: row.map(|r| r.iterations),
            per_iteration: o3(row.map(ExitRow::per_iteration)),
            round_trip: o3(f.round_trip),
            over_floor: o3(f.over_floor),
            goal_met: f.goal_met,
        }
    }
}

impl Fairness {
    fn of(run: &FairRun) -> Self {
        let guest = |g: &FairGuest| FairnessGuest {
            name: g.name.clone(),
            weight: g.weight,
            units: g.units,
            expected_share: r3(g.expected),
            measured_share: o3(g.measured),
            deviation_pct: o3(g.deviation_pct),
            ended_tsc: g.ended_tsc,
        };
        Self {
            boot: run.run.clone(),
            cycles: run.cycles,
            wall_s: o3(run.wall_s),
            max_deviation_pct: o3(run.max_deviation_pct()),
            end_spread_tsc: run.end_spread(),
            ended: run.ended.clone(),
            guests: run.guests.iter().map(guest).collect(),
        }
    }
}

impl Console {
    fn of(run: &ConsoleRun) -> Self {
        let guest = |r: &ConsoleRow| ConsoleGuest {
            name: r.vm.clone(),
            role: r.role.clone(),
            longest_exit_tsc: r.ticks,
            reason: r.reason,
            outcome: r.outcome.clone(),
        };
        Self {
            boot: run.run.clone(),
            slice_tsc: run.slice_tsc,
            longest_exit_tsc: run.longest().map(|r| r.ticks),
            verdict: run.verdict(),
            ended: run.ended.clone(),
            guests: run.rows.iter().map(guest).collect(),
        }
    }
}

impl Memory {
    fn of(run: &MemRun) -> Self {
        Self {
            boot: run.run.clone(),
            guests_requested: run.requested as u64,
            guests_started: run.started as u64,
            emulated_mib: run.emulated_mib,
            mean_overhead_kib: o3(run.mean_kib()),
            max_overhead_pct: o3(run.max_pct()),
            hv: run.hv.clone(),
            vms: run.vms.clone(),
        }
    }
}

impl Startup {
    fn of(row: &StartupRow) -> Self {
        let vm = |v: &FirstOutput| StartupVm {
            name: v.name.clone(),
            first_output_tsc: v.tsc,
            first_output_wall_s: r3(v.wall_s),
        };
        Self {
            boot: row.run.clone(),
            hv_start_wall_s: o3(row.hv_start_s),
            tsc_khz: row.tsc_khz,
            vms: row.vms.iter().map(vm).collect(),
        }
    }
}

impl Lateness {
    fn of(run: &LatenessRun) -> Self {
        let guest = |g: &LatenessGuest| {
            let l = g.lateness.as_ref();
            LatenessOfGuest {
                name: g.name.clone(),
                expiries: l.map(|l| l.expiries),
                buckets: l.map(|l| {
                    l.buckets
                        .iter()
                        .map(|(within, count)| Bucket {
                            within: within.clone(),
                            count: *count,
                        })
                        .collect()
                }),
                max_us: l.map(|l| l.max_us),
                tsc_unstable: g.tsc_unstable,
                outcome: g.outcome.clone(),
            }
        };
        Self {
            boot: run.run.clone(),
            cpus: run.cpus,
            slice_us: run.slice_us,
            max_us: run.max_us(),
            verdict: run.verdict(),
            ended: run.ended.clone(),
            guests: run.guests.iter().map(guest).collect(),
        }
    }
}

impl LinuxBootPair {
    fn of(l: &LinuxReport) -> Self {
        Self {
            what: "Linux boot under ferrovisor (1 vCPU, 256 MiB) vs the same kernel booted \
                   directly by OVMF through its EFI stub, same Bochs configuration"
                .to_string(),
            hv_cmdline: l.hv_cmdline.clone(),
            direct_cmdline: l.direct_cmdline.clone(),
            hv: LinuxBootRun::of(&l.hv),
            direct: LinuxBootRun::of(&l.direct),
            wall_ratio_hv_over_direct: o3(l.wall_ratio()),
            kernel_time_ratio_hv_over_direct: o3(l.kernel_ratio()),
        }
    }
}

impl LinuxBootRun {
    fn of(b: &LinuxBoot) -> Self {
        Self {
            boot: b.run.clone(),
            banner_wall_s: o3(b.banner_wall_s),
            end_wall_s: o3(b.end_wall_s),
            end_line: b.end_line.clone(),
            banner_to_poweroff_wall_s: o3(b.wall_s()),
            reboot_line: b.reboot_line.clone(),
            reboot_kernel_timestamp_s: o3(b.reboot_kernel_s),
            kernel: b.kernel_release.clone(),
            nproc: b.nproc.clone(),
            memtotal: b.memtotal.clone(),
            hypervisor_flag: b.hypervisor_flag.clone(),
            workload: b.workload.clone(),
            ended: b.ended.clone(),
        }
    }
}

impl Peer {
    fn of(p: &PeerReport) -> Self {
        let row = |r: &PeerRow| PeerCompared {
            kind: r.kind.clone(),
            ferrovisor_round_trip: o3(r.ferrovisor),
            kvm_round_trip: o3(r.kvm),
            kvm_path: kvmpeer::kvm_path(&r.kind).to_string(),
            ratio_ferrovisor_over_kvm: o3(r.ratio),
            goal_max_ratio: o3(r.goal.as_ref().map(|g| g.0)),
            goal_met: r.goal_met(),
        };
        Self {
            what: "the bench guest under KVM (kvm_intel of the same Debian kernel, booted \
                   directly by OVMF in the same Bochs; minimal user-space VMM \
                   tests/bench/kvmpeer.c, no in-kernel irqchip)"
                .to_string(),
            not_run: p.not_run.clone(),
            modules: p.modules.clone(),
            guest_cmdline: p.guest_cmdline.clone(),
            l1_cmdline: p.direct_cmdline.clone(),
            kvm_loaded: p.run.as_ref().map(|r| r.kvm_loaded),
            init_lines: p.run.as_ref().map(|r| r.peer_lines.clone()),
            vmm_lines: p.run.as_ref().map(|r| r.vmm_lines.clone()),
            kvm_exits: p.run.as_ref().map(|r| ExitBoot::of(&r.exits)),
            compared: p.rows.iter().map(row).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fixture;

    #[test]
    fn results_round_trip_through_serde() {
        let results = fixture::report().json();
        let text = results.render().unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        let back = Results::parse(&text).unwrap();
        assert_eq!(back, results);
        // Every section is there, with the figures of the runs.
        let exits = back.exits.as_ref().unwrap();
        let cpuid = exits
            .first
            .types
            .iter()
            .find(|t| t.kind == "cpuid")
            .unwrap();
        assert_eq!(
            (
                cpuid.total_tsc,
                cpuid.round_trip,
                cpuid.over_floor,
                cpuid.goal_met
            ),
            (Some(4_550_000), Some(450.0), Some(150.0), Some(true))
        );
        assert!(!exits.identical);
        assert_eq!(back.fairness.len(), 2);
        assert_eq!(back.console.as_ref().unwrap().verdict, "met");
        assert_eq!(back.memory[0].vms[1].overhead_kib, 68);
        assert_eq!(back.startup[0].tsc_khz, Some(199_997));
        assert_eq!(
            back.linux_boot
                .as_ref()
                .unwrap()
                .kernel_time_ratio_hv_over_direct,
            Some(2.0)
        );
        let late = &back.timer_lateness[0];
        assert_eq!(
            (late.max_us, late.verdict.as_str()),
            (Some(28_000), "not met")
        );
        assert_eq!(late.guests[1].buckets.as_ref().unwrap()[5].count, 50);
        assert_eq!(late.guests[2].expiries, None);
        let peer = back.kvm_peer.as_ref().unwrap();
        assert_eq!(peer.kvm_loaded, Some(true));
        assert!(peer.kvm_exits.as_ref().unwrap().floor_unavailable);
    }

    #[test]
    fn keys_nulls_rounding_and_escapes() {
        let v: serde_json::Value =
            serde_json::from_str(&fixture::report().json().render().unwrap()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = [
            "units",
            "config",
            "boots",
            "exits",
            "fairness",
            "console",
            "memory",
            "startup",
            "timer_lateness",
            "linux_boot",
            "linux_boot_notes",
            "kvm_peer",
            "blk",
            "goldmem",
            "net",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected, "the top-level keys");
        assert_eq!(v["units"], UNITS);
        assert_eq!(
            v["config"]["bochs_cpu"],
            "cpu: count=<n>, model=corei7_skylake_x"
        );
        assert_eq!(v["config"]["host_cpu"], "Some \"CPU\" @ 2.0GHz");
        assert_eq!(v["boots"][1]["wall_s"], serde_json::Value::Null);
        assert_eq!(v["exits"]["first"]["types"][0]["type"], "loop");
        assert_eq!(
            v["exits"]["first"]["types"][0]["round_trip"],
            serde_json::Value::Null
        );
        assert_eq!(v["memory"][0]["vms"][0]["vmcs_xsave_bitmaps_kib"], 40);
        assert_eq!(v["memory"][1]["hv"], serde_json::Value::Null);
        // 1/3 and 1/6 shares, three decimals.
        assert_eq!(v["fairness"][1]["guests"][0]["expected_share"], 0.333);
        assert_eq!(v["fairness"][1]["guests"][2]["expected_share"], 0.167);
        assert_eq!(
            v["kvm_peer"]["compared"][0]["kvm_path"],
            "in the kernel (KVM)"
        );
        assert_eq!((o3(Some(f64::NAN)), o3(Some(0.12345))), (None, Some(0.123)));
        let text = serde_json::to_string(&Boot {
            boot: "q\"\\\n\u{1}".into(),
            manifest: String::new(),
            cpus: 1,
            memory_mib: 2,
            wall_s: Some(r3(f64::NAN)),
            powered_off: false,
            ended_on_line: None,
            summary: String::new(),
        })
        .unwrap();
        assert!(
            text.starts_with("{\"boot\":\"q\\\"\\\\\\n\\u0001\""),
            "{text}"
        );
        assert!(text.contains("\"wall_s\":null"), "{text}");
    }
}
