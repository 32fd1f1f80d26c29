//! The longest exit while guests flood the console, against the time slice.

use super::parse::vm_line;
use super::{manifest_cmdlines, vm_outcome, Done};

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
    pub(super) fn from_done(d: &Done) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Report;

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
}
