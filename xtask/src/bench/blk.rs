//! virtio-blk throughput (`blk`): a Linux guest with its root on the gold image reads and
//! writes its virtio disks and, for comparison, the same bytes on its own tmpfs
//! (`bench-blk.toml`, the `blkbench=1` branch of the root's `/sbin/init` in
//! `xtask/src/rootfs.rs`). Each phase lies between two marks: the guest writes the mark's
//! number to guest-physical [`MARK_GPA`] (busybox `devmem`), and the bench build of the
//! hypervisor prints `hv: bench mark: vm <name> value <n> tsc <host TSC> exits <total>
//! (<reason>=<count> ...)` (`hypervisor/src/exits/mmio.rs`). A phase's cost is the TSC and exit
//! count between its marks, less those of the empty phase (marks 1 and 2 back to back: what
//! starting `dd` and `devmem` costs), per MiB moved.

use super::parse::round3 as r3;
use serde::{Deserialize, Serialize};

use super::parse::{guest_line, number_after};
use super::Done;

/// Where the guest writes its marks (nothing is there: an unclaimed address in the MMIO hole).
pub const MARK_GPA: u64 = 0xFEBF_F000;
/// The guest of `bench-blk.toml`.
pub const GUEST: &str = "blk";
/// Goal of the issue: a disk phase costs at most this many times its tmpfs phase per MiB.
pub const RATIO_GOAL: f64 = 1.5;

/// The phases in order: (first mark, name, what, MiB moved, the tmpfs phase it is compared
/// with). Marks 1-2 are the empty phase; 6-7 enclose dropping the page cache (not measured).
pub const PHASES: &[(u32, &str, &str, f64, Option<&str>)] = &[
    (
        2,
        "read-vda",
        "dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct (virtio-blk, O_DIRECT)",
        64.0,
        Some("read-tmpfs"),
    ),
    (
        3,
        "read-tmpfs",
        "dd if=/tmp/disk of=/dev/null bs=1M count=64 (the same 64 MiB, copied to tmpfs first)",
        64.0,
        None,
    ),
    (
        4,
        "write-vdb",
        "dd if=/dev/zero of=/dev/vdb bs=1M count=6 oflag=direct conv=fsync (virtio-blk, into \
         the copy-on-write overlay)",
        6.0,
        Some("write-tmpfs"),
    ),
    (
        5,
        "write-tmpfs",
        "dd if=/dev/zero of=/tmp/written bs=1M count=6 conv=fsync",
        6.0,
        None,
    ),
    (
        7,
        "read-vda-buffered",
        "dd if=/dev/vda of=/dev/null bs=1M count=64 (through the page cache, dropped before; \
         copied to user space as from tmpfs)",
        64.0,
        Some("read-tmpfs"),
    ),
];

/// One `hv: bench mark:` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub vm: String,
    pub value: u32,
    pub tsc: u64,
    pub exits: u64,
    /// Every VM's exits together (absent from older lines).
    pub all_vms: Option<u64>,
    /// Exit counts by basic reason (`io_instruction`, `ept_violation`, ...), nonzero only.
    pub reasons: Vec<(String, u64)>,
}

/// Every mark line of `serial`, in order.
pub fn parse_marks(serial: &str) -> Vec<Mark> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end().strip_prefix("hv: bench mark: vm ")?;
            let (vm, rest) = rest.split_once(' ')?;
            let reasons = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map_or("", |(r, _)| r)
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect();
            Some(Mark {
                vm: vm.to_string(),
                value: u32::try_from(number_after(rest, "value ")?).ok()?,
                tsc: number_after(rest, "tsc ")?,
                exits: number_after(rest, "exits ")?,
                all_vms: number_after(rest, ") all vms "),
                reasons,
            })
        })
        .collect()
}

/// Exit counts by reason name.
type Counts = Vec<(String, u64)>;

/// One measured phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub what: String,
    pub mib: f64,
    /// Between the phase's marks, as measured.
    pub tsc: u64,
    pub exits: u64,
    /// Less the empty phase (the marks' own cost), at least 0.
    pub net_tsc: u64,
    pub net_exits: u64,
    pub instr_per_mib: f64,
    pub exits_per_mib: f64,
    /// This phase's instructions per MiB over its tmpfs phase's (disk phases only).
    pub vs_tmpfs: Option<f64>,
    /// The exit reasons between the marks, most frequent first (at most four).
    pub top_reasons: Vec<(String, u64)>,
}

/// The `blk` boot, analysed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlkRun {
    pub run: String,
    /// The empty phase (marks 1-2): TSC and exits.
    pub empty: Option<(u64, u64)>,
    pub phases: Vec<Phase>,
    /// Phases whose marks are missing.
    pub missing: Vec<String>,
    /// What `dd` itself said in each phase (records in and out).
    pub dd: Vec<String>,
    pub ratio_goal: f64,
    pub ended: String,
}

impl BlkRun {
    pub(super) fn from_done(d: &Done) -> Self {
        match &d.result {
            Ok(r) => Self::analyse(&d.job.name, &r.serial, &r.summary()),
            Err(e) => Self::analyse(&d.job.name, "", &format!("could not run: {e}")),
        }
    }

    pub fn analyse(run: &str, serial: &str, ended: &str) -> Self {
        let marks: Vec<Mark> = parse_marks(serial)
            .into_iter()
            .filter(|m| m.vm == GUEST)
            .collect();
        let at = |v: u32| marks.iter().find(|m| m.value == v);
        let between = |a: u32| -> Option<(u64, u64, Counts)> {
            let (x, y) = (at(a)?, at(a + 1)?);
            let reasons: Vec<(String, u64)> = y
                .reasons
                .iter()
                .map(|(k, n)| {
                    let before = x
                        .reasons
                        .iter()
                        .find(|(kx, _)| kx == k)
                        .map_or(0, |(_, b)| *b);
                    (k.clone(), n.saturating_sub(before))
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            Some((
                y.tsc.checked_sub(x.tsc)?,
                y.exits.checked_sub(x.exits)?,
                reasons,
            ))
        };
        let empty_phase = between(1);
        let empty = empty_phase.as_ref().map(|(t, e, _)| (*t, *e));
        let (et, ee) = empty.unwrap_or((0, 0));
        let empty_reasons = empty_phase.map(|(_, _, r)| r).unwrap_or_default();
        let mut phases = Vec::new();
        let mut missing = Vec::new();
        for &(first, name, what, mib, _) in PHASES {
            let Some((tsc, exits, reasons)) = between(first) else {
                missing.push(name.to_string());
                continue;
            };
            // Less the empty phase's, as for the totals.
            let mut top_reasons: Counts = reasons
                .into_iter()
                .map(|(k, n)| {
                    let e = empty_reasons
                        .iter()
                        .find(|(ke, _)| *ke == k)
                        .map_or(0, |(_, n)| *n);
                    (k, n.saturating_sub(e))
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            top_reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            top_reasons.truncate(4);
            let (net_tsc, net_exits) = (tsc.saturating_sub(et), exits.saturating_sub(ee));
            phases.push(Phase {
                name: name.to_string(),
                what: what.to_string(),
                mib,
                tsc,
                exits,
                net_tsc,
                net_exits,
                instr_per_mib: r3(net_tsc as f64 / mib),
                exits_per_mib: r3(net_exits as f64 / mib),
                vs_tmpfs: None,
                top_reasons,
            });
        }
        for &(_, name, _, _, against) in PHASES {
            let Some(against) = against else { continue };
            let base = phases
                .iter()
                .find(|p| p.name == against)
                .map(|p| p.instr_per_mib);
            if let (Some(base), Some(p)) = (base, phases.iter_mut().find(|p| p.name == name)) {
                if base > 0.0 {
                    p.vs_tmpfs = Some(r3(p.instr_per_mib / base));
                }
            }
        }
        let dd = serial
            .lines()
            .filter_map(guest_line)
            .filter(|(g, _)| *g == GUEST)
            .filter_map(|(_, t)| t.strip_prefix("linux-guest: blkbench: phase "))
            .filter_map(|t| {
                // /init numbers its dd runs 1, 2, ... in the order of PHASES.
                let (n, said) = t.split_once(": ")?;
                let name = PHASES.get(n.parse::<usize>().ok()?.checked_sub(1)?)?.1;
                Some(format!("{name}: {}", said.trim()))
            })
            .collect();
        Self {
            run: run.to_string(),
            empty,
            phases,
            missing,
            dd,
            ratio_goal: RATIO_GOAL,
            ended: ended.to_string(),
        }
    }

    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// "met" / "not met" for a disk phase against [`RATIO_GOAL`].
    pub fn verdict(p: &Phase) -> String {
        match p.vs_tmpfs {
            Some(r) if r <= RATIO_GOAL => "met".to_string(),
            Some(_) => "not met".to_string(),
            None => String::new(),
        }
    }

    pub fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if !self.missing.is_empty() {
            n.push(format!(
                "no marks for {} (the guest ended: {})",
                self.missing.join(", "),
                self.ended
            ));
        }
        if let Some((t, e)) = self.empty {
            n.push(format!(
                "subtracted from every phase: the empty phase between marks 1 and 2 (a `devmem` \
                 process and its mark): {t} TSC ticks, {e} exits"
            ));
        } else {
            n.push("no empty phase (marks 1-2): nothing was subtracted".to_string());
        }
        for d in &self.dd {
            n.push(format!("`dd` reported for {d}"));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const LOG: &str = "\
vm blk: unmapped write at guest-physical 0xfebff000 (ignored)
hv: bench mark: vm blk value 1 tsc 1000000 exits 500 (io_instruction=400 ept_violation=100) all vms 900
hv: bench mark: vm blk value 2 tsc 1100000 exits 510 (io_instruction=405 ept_violation=105)
hv: bench mark: vm blk value 3 tsc 65100000 exits 2510 (io_instruction=1405 ept_violation=1105)
hv: bench mark: vm other value 3 tsc 9 exits 9 ()
[blk] linux-guest: blkbench: phase 1: 64+0 records in 64+0 records out
hv: bench mark: vm blk value 4 tsc 97100000 exits 2520 (io_instruction=1410 ept_violation=1110)
hv: bench mark: vm blk value 5 tsc 103100000 exits 2820 (io_instruction=1710 ept_violation=1110)
";

    #[test]
    fn marks_and_phases() {
        let m = parse_marks(LOG);
        assert_eq!(m.len(), 6);
        assert_eq!(m[3].vm, "other");
        assert_eq!(m[3].reasons, []);
        assert_eq!((m[0].all_vms, m[1].all_vms), (Some(900), None));
        assert_eq!(
            m[0].reasons,
            [
                ("io_instruction".to_string(), 400),
                ("ept_violation".to_string(), 100)
            ]
        );
        let r = BlkRun::analyse("blk", LOG, "powered off");
        assert_eq!(r.empty, Some((100_000, 10)));
        // read-vda: 64 M ticks and 2000 exits, less the empty phase.
        let vda = r.phase("read-vda").unwrap();
        assert_eq!((vda.net_tsc, vda.net_exits), (63_900_000, 1990));
        assert_eq!(vda.instr_per_mib, 998_437.5);
        // Less the empty phase's 5 and 5.
        assert_eq!(
            vda.top_reasons,
            [
                ("ept_violation".to_string(), 995),
                ("io_instruction".to_string(), 995)
            ]
        );
        let tmpfs = r.phase("read-tmpfs").unwrap();
        assert_eq!(tmpfs.net_tsc, 31_900_000);
        assert_eq!(vda.vs_tmpfs, Some(2.003));
        assert_eq!(BlkRun::verdict(vda), "not met");
        assert_eq!(r.phase("write-vdb").unwrap().net_exits, 290);
        assert_eq!(r.missing, ["write-tmpfs", "read-vda-buffered"]);
        assert_eq!(r.phase("write-vdb").unwrap().vs_tmpfs, None);
        assert_eq!(r.dd, ["read-vda: 64+0 records in 64+0 records out"]);
        let notes = r.notes().join("\n");
        // The guest's marks go where the hypervisor looks for them.
        assert!(crate::rootfs::ROOT_INIT.contains(&format!("devmem {MARK_GPA:#x} 32 ")));
        for (_, name, what, _, _) in PHASES {
            let cmd = what.split(" (").next().unwrap();
            assert!(crate::rootfs::ROOT_INIT.contains(cmd), "{name}: {cmd}");
        }
        assert!(notes.contains("no marks for write-tmpfs"), "{notes}");
        assert!(notes.contains("100000 TSC ticks, 10 exits"), "{notes}");
    }
}
