//! Scheduling fairness: each spinner's share of the work against its weight.

use super::parse::manifest_cycles;
use super::{first_outputs, guest_line, manifest_weights, vm_outcome, Done};

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
    pub(super) fn from_done(d: &Done) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Report, DEFAULT_CYCLES};
    use crate::paths;

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
}
