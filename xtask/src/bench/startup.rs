//! Start-up: from the emulator start to the hypervisor's banner and each VM's first output.

use std::time::Duration;

use super::parse::vm_line;
use crate::machine::RunResult;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
