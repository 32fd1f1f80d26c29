//! Timer lateness: how long after its deadline each guest's local APIC timer expiry was seen
//! (the hypervisor's summary line per VM, `vm <name>: timer lateness: ...`), with three Linux
//! guests on two CPUs (`linux-3`) and one Linux guest alone (`linux-hv`), and whether each
//! Linux kernel's clocksource watchdog marked its TSC unstable (`linux-guest: tsc unstable <n>`
//! from /init).

use super::parse::vm_line;
use super::{guest_line, manifest_weights, vm_outcome, Done};

/// One `vm <name>: timer lateness: <n> expiries, <10us a, <100us b, <1ms c, <4ms d, <10ms e,
/// >=10ms f, max <m> us` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerLateness {
    pub vm: String,
    pub expiries: u64,
    /// (label as printed, count) per bucket, in the printed order (`<10us` ... `>=10ms`).
    pub buckets: Vec<(String, u64)>,
    pub max_us: u64,
}

impl TimerLateness {
    /// A bucket's count in percent of all expiries.
    pub fn pct(&self, count: u64) -> Option<f64> {
        (self.expiries > 0).then(|| count as f64 * 100.0 / self.expiries as f64)
    }
}

/// Every VM's timer-lateness line (the last one of a VM, if it printed more than one).
pub fn parse_timer_lateness(serial: &str) -> Vec<TimerLateness> {
    let mut out: Vec<TimerLateness> = Vec::new();
    for line in serial.lines() {
        let Some(l) = lateness_line(line.trim_end()) else {
            continue;
        };
        out.retain(|o| o.vm != l.vm);
        out.push(l);
    }
    out
}

fn lateness_line(line: &str) -> Option<TimerLateness> {
    let (vm, what) = vm_line(line)?;
    let rest = what.strip_prefix("timer lateness: ")?;
    let mut parts = rest.split(", ");
    let expiries = parts.next()?.strip_suffix(" expiries")?.parse().ok()?;
    let mut buckets = Vec::new();
    let mut max_us = None;
    for part in parts {
        if let Some(m) = part.strip_prefix("max ") {
            max_us = Some(m.strip_suffix(" us")?.parse().ok()?);
            continue;
        }
        let (label, count) = part.rsplit_once(' ')?;
        if !(label.starts_with('<') || label.starts_with(">=")) {
            return None;
        }
        buckets.push((label.to_string(), count.parse().ok()?));
    }
    Some(TimerLateness {
        vm: vm.to_string(),
        expiries,
        buckets,
        max_us: max_us?,
    })
}

/// `[<guest>] linux-guest: tsc unstable <n>` lines: (guest, n).
pub fn parse_tsc_unstable(serial: &str) -> Vec<(String, u64)> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, text) = guest_line(l)?;
            let n = text.trim().strip_prefix("linux-guest: tsc unstable ")?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// The time slice the hypervisor printed (`hv: manifest: ..., time slice <us> us`).
pub fn parse_slice_us(serial: &str) -> Option<u64> {
    serial.lines().find_map(|l| {
        let (_, rest) = l.split_once(", time slice ")?;
        rest.trim_end().strip_suffix(" us")?.parse().ok()
    })
}

/// One guest of a lateness boot.
#[derive(Debug, Clone, PartialEq)]
pub struct LatenessGuest {
    pub name: String,
    /// `None`: no line (no timer expiry, or the hypervisor's summary did not come).
    pub lateness: Option<TimerLateness>,
    /// How often the kernel said its TSC is unstable (Linux guests only).
    pub tsc_unstable: Option<u64>,
    pub outcome: Option<String>,
}

/// One boot's timer lateness, analysed.
#[derive(Debug, Clone, PartialEq)]
pub struct LatenessRun {
    pub run: String,
    pub cpus: u32,
    pub slice_us: Option<u64>,
    pub guests: Vec<LatenessGuest>,
    pub ended: String,
}

impl LatenessRun {
    pub(super) fn from_done(d: &Done) -> Self {
        let (serial, ended) = match &d.result {
            Ok(r) => (r.serial.as_str(), r.summary()),
            Err(e) => ("", format!("could not run: {e}")),
        };
        Self::analyse(&d.job.name, &d.manifest_text, d.job.cpus, serial, &ended)
    }

    /// The manifest gives the guests (in its order); VMs with a lateness line that the
    /// manifest does not name follow.
    pub fn analyse(run: &str, manifest: &str, cpus: u32, serial: &str, ended: &str) -> Self {
        let mut lateness = parse_timer_lateness(serial);
        let unstable = parse_tsc_unstable(serial);
        let mut names: Vec<String> = manifest_weights(manifest)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for l in &lateness {
            if !names.contains(&l.vm) {
                names.push(l.vm.clone());
            }
        }
        let guests = names
            .into_iter()
            .map(|name| {
                let at = lateness.iter().position(|l| l.vm == name);
                LatenessGuest {
                    lateness: at.map(|i| lateness.remove(i)),
                    tsc_unstable: unstable.iter().find(|(n, _)| *n == name).map(|(_, c)| *c),
                    outcome: vm_outcome(serial, &name).map(str::to_string),
                    name,
                }
            })
            .collect();
        Self {
            run: run.to_string(),
            cpus,
            slice_us: parse_slice_us(serial),
            guests,
            ended: ended.to_string(),
        }
    }

    /// The latest expiry of any guest, in microseconds.
    pub fn max_us(&self) -> Option<u64> {
        self.guests
            .iter()
            .filter_map(|g| g.lateness.as_ref().map(|l| l.max_us))
            .max()
    }

    /// The goal of issue 16: every expiry seen within one time slice of its deadline.
    pub fn verdict(&self) -> String {
        match (self.max_us(), self.slice_us) {
            (Some(m), Some(s)) if m <= s => "met".into(),
            (Some(_), Some(_)) => "not met".into(),
            (None, _) => format!("not measured ({})", self.ended),
            (Some(_), None) => "n/a (no time slice printed)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fixture::LINUX3_LOG;
    use crate::bench::Report;

    fn manifest() -> String {
        std::fs::read_to_string(crate::paths::manifests_dir().join("bench-linux3.toml")).unwrap()
    }

    #[test]
    fn lateness_lines_are_parsed() {
        let l = parse_timer_lateness(LINUX3_LOG);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0],
            TimerLateness {
                vm: "linux1".into(),
                expiries: 2000,
                buckets: [
                    ("<10us", 1500),
                    ("<100us", 300),
                    ("<1ms", 150),
                    ("<4ms", 50),
                    ("<10ms", 0),
                    (">=10ms", 0)
                ]
                .iter()
                .map(|(b, c)| (b.to_string(), *c))
                .collect(),
                max_us: 3900,
            }
        );
        assert_eq!(l[1].max_us, 28_000);
        assert_eq!(l[1].pct(50), Some(5.0));
        // Not a lateness line, or one cut short: skipped.
        assert!(parse_timer_lateness(
            "vm a: timer lateness: 5 expiries, <10us 5\n\
             vm b: timer lateness: x expiries, max 1 us\nvm c: longest exit 5 TSC ticks\n"
        )
        .is_empty());
        assert_eq!(
            parse_tsc_unstable(LINUX3_LOG),
            [("linux1".to_string(), 0), ("linux2".to_string(), 1)]
        );
        assert_eq!(parse_slice_us(LINUX3_LOG), Some(5000));
    }

    #[test]
    fn captured_lines_of_a_bench_boot() {
        // From target/runs/bench-exits-1/serial.log (the bench guest with its APIC timer
        // ticking), CRs and all.
        let serial = "hv: manifest: 1 guest, time slice 5000 us\r\n\
                      vm bench: longest exit 3275 TSC ticks (reason 48)\r\n\
                      vm bench: timer lateness: 44 expiries, <10us 44, <100us 0, <1ms 0, <4ms 0, \
                      <10ms 0, >=10ms 0, max 8 us\r\n";
        let run = LatenessRun::analyse("exits-1", "", 1, serial, "powered off");
        assert_eq!(run.slice_us, Some(5000));
        assert_eq!(run.guests.len(), 1);
        let l = run.guests[0].lateness.as_ref().unwrap();
        assert_eq!((l.vm.as_str(), l.expiries, l.max_us), ("bench", 44, 8));
        assert_eq!(l.buckets.len(), 6);
        assert_eq!(l.buckets[0], ("<10us".to_string(), 44));
        assert_eq!(run.verdict(), "met");
    }

    #[test]
    fn three_linux_guests_on_two_cpus() {
        let run = LatenessRun::analyse("linux-3", &manifest(), 2, LINUX3_LOG, "powered off");
        let names: Vec<&str> = run.guests.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["linux1", "linux2", "linux3"]);
        assert_eq!(run.guests[1].tsc_unstable, Some(1));
        assert!(run.guests[2].lateness.is_none());
        assert_eq!(
            run.guests[2].outcome.as_deref(),
            Some("stopped: triple fault")
        );
        assert_eq!(run.max_us(), Some(28_000));
        assert_eq!(run.verdict(), "not met");
        let on_time = LINUX3_LOG.replace("max 28000 us", "max 4999 us");
        let run2 = LatenessRun::analyse("linux-3", &manifest(), 2, &on_time, "powered off");
        assert_eq!(run2.verdict(), "met");
        assert!(
            LatenessRun::analyse("linux-3", &manifest(), 2, "", "timed out")
                .verdict()
                .starts_with("not measured (timed out)")
        );
        let table = Report::lateness_table(&run).text();
        assert!(table.contains("linux2"), "{table}");
        // 50 of 1000 expiries at 10 ms or later; linux3 printed no lateness line.
        assert!(table.contains("5.0 %"), "{table}");
        assert!(table.contains("28_000"), "{table}");
        assert!(table.contains("n/a (stopped: triple fault)"), "{table}");
    }
}
