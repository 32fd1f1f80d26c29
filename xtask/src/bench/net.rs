//! virtio-net throughput (`net`): two Linux guests on one network of the L2 switch
//! (`bench-net.toml`, on a 1-CPU Bochs). `netcli` fetches `netmib=` MiB from `netsrv`'s busybox
//! `httpd` with `wget`, then the same from its own `httpd` over loopback, then pings `netsrv`
//! 20 times (`netmode=benchcli` in the initramfs' `/init`, `xtask/src/linux.rs`), each phase
//! between marks as in [`super::blk`]. With one CPU the TSC between two marks counts the
//! instructions of both guests and the hypervisor (and the emulated CPU's idle time); the exits
//! are every VM's (`all vms` of the mark line).

use super::parse::round3 as r3;
use serde::{Deserialize, Serialize};

use super::blk::{parse_marks, Mark};
use super::parse::guest_line;
use super::{manifest_cmdlines, Done};

/// The guest that marks.
pub const CLIENT: &str = "netcli";
/// Goal of the issue: guest to guest costs at most this many times loopback per MiB.
pub const RATIO_GOAL: f64 = 1.5;
/// Pings in the ping phase (`ping -c 20 -i 0.01`).
pub const PINGS: u64 = 20;
/// MiB when the manifest names none.
const DEFAULT_MIB: u64 = 32;

/// One transfer phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetPhase {
    pub name: String,
    pub what: String,
    pub mib: u64,
    /// TSC ticks and every VM's exits between the marks, less the empty phase's.
    pub net_tsc: u64,
    pub net_exits: u64,
    pub instr_per_mib: f64,
    pub exits_per_mib: f64,
    pub vs_loopback: Option<f64>,
}

/// The `net` boot, analysed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetRun {
    pub run: String,
    pub mib: u64,
    /// The empty phase (marks 1-2): TSC and every VM's exits.
    pub empty: Option<(u64, u64)>,
    pub phases: Vec<NetPhase>,
    /// The ping phase: TSC ticks and exits per ping (the 10 ms interval's idle time included).
    pub ping_tsc_each: Option<f64>,
    pub ping_exits_each: Option<f64>,
    /// `ping`'s own summary (guest clock).
    pub ping_summary: Option<String>,
    /// Its average round trip in ms (guest clock).
    pub ping_avg_ms: Option<f64>,
    /// What the client said it received.
    pub received: Vec<String>,
    pub ratio_goal: f64,
    pub ended: String,
}

fn all(m: &Mark) -> u64 {
    m.all_vms.unwrap_or(m.exits)
}

impl NetRun {
    pub(super) fn from_done(d: &Done) -> Self {
        let mib = manifest_cmdlines(&d.manifest_text)
            .iter()
            // (By its mode: a `[[network]]`'s name after it is taken for the guest's.)
            .find(|(_, c)| c.contains(" netmode=benchcli "))
            .and_then(|(_, c)| {
                c.split_whitespace()
                    .find_map(|w| w.strip_prefix("netmib="))?
                    .parse()
                    .ok()
            })
            .unwrap_or(DEFAULT_MIB);
        match &d.result {
            Ok(r) => Self::analyse(&d.job.name, mib, &r.serial, &r.summary()),
            Err(e) => Self::analyse(&d.job.name, mib, "", &format!("could not run: {e}")),
        }
    }

    pub fn analyse(run: &str, mib: u64, serial: &str, ended: &str) -> Self {
        let marks: Vec<Mark> = parse_marks(serial)
            .into_iter()
            .filter(|m| m.vm == CLIENT)
            .collect();
        let at = |v: u32| marks.iter().find(|m| m.value == v);
        let between = |a: u32| -> Option<(u64, u64)> {
            let (x, y) = (at(a)?, at(a + 1)?);
            Some((y.tsc.checked_sub(x.tsc)?, all(y).checked_sub(all(x))?))
        };
        let empty = between(1);
        let (et, ee) = empty.unwrap_or((0, 0));
        let net = |a: u32| between(a).map(|(t, e)| (t.saturating_sub(et), e.saturating_sub(ee)));
        let mut phases = Vec::new();
        for (first, name, what) in [
            (
                2,
                "guest-to-guest",
                "wget -O /tmp/got http://<netsrv>/data (virtio-net, the L2 switch, TCP)",
            ),
            (
                4,
                "loopback",
                "wget -O /tmp/got http://127.0.0.1/data (inside netcli)",
            ),
        ] {
            if let Some((t, e)) = net(first) {
                let m = mib.max(1) as f64;
                phases.push(NetPhase {
                    name: name.to_string(),
                    what: what.to_string(),
                    mib,
                    net_tsc: t,
                    net_exits: e,
                    instr_per_mib: r3(t as f64 / m),
                    exits_per_mib: r3(e as f64 / m),
                    vs_loopback: None,
                });
            }
        }
        let lo = phases
            .iter()
            .find(|p| p.name == "loopback")
            .map(|p| p.instr_per_mib);
        if let (Some(lo), Some(g)) = (lo, phases.iter_mut().find(|p| p.name == "guest-to-guest")) {
            if lo > 0.0 {
                g.vs_loopback = Some(r3(g.instr_per_mib / lo));
            }
        }
        let ping = net(6);
        let said: Vec<&str> = serial
            .lines()
            .filter_map(guest_line)
            .filter(|(g, _)| *g == CLIENT)
            .filter_map(|(_, t)| t.strip_prefix("linux-guest: net bench: "))
            .collect();
        let ping_summary = said
            .iter()
            .find_map(|t| t.strip_prefix("ping "))
            .map(|t| t.trim().to_string());
        let ping_avg_ms = ping_summary.as_deref().and_then(|s| {
            let (_, v) = s.split_once("min/avg/max = ")?;
            v.split('/').nth(1)?.parse().ok()
        });
        Self {
            run: run.to_string(),
            mib,
            empty,
            phases,
            ping_tsc_each: ping.map(|(t, _)| r3(t as f64 / PINGS as f64)),
            ping_exits_each: ping.map(|(_, e)| r3(e as f64 / PINGS as f64)),
            ping_summary,
            ping_avg_ms,
            received: said
                .iter()
                .filter(|t| t.starts_with("from "))
                .map(|t| t.to_string())
                .collect(),
            ratio_goal: RATIO_GOAL,
            ended: ended.to_string(),
        }
    }

    pub fn verdict(p: &NetPhase) -> String {
        match p.vs_loopback {
            Some(r) if r <= RATIO_GOAL => "met".to_string(),
            Some(_) => "not met".to_string(),
            None => String::new(),
        }
    }

    pub fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if self.phases.len() < 2 {
            n.push(format!(
                "only {} of 2 transfer phases have both marks (the run ended: {})",
                self.phases.len(),
                self.ended
            ));
        }
        match self.empty {
            Some((t, e)) => n.push(format!(
                "subtracted from every phase: the empty phase between marks 1 and 2 (a `devmem` \
                 process and its mark): {t} TSC ticks, {e} exits"
            )),
            None => n.push("no empty phase (marks 1-2): nothing was subtracted".to_string()),
        }
        for r in &self.received {
            n.push(format!("netcli received {r}"));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_ping() {
        let log = "\
hv: bench mark: vm netcli value 1 tsc 1000 exits 10 (io_instruction=10) all vms 30
hv: bench mark: vm netcli value 2 tsc 2000 exits 12 (io_instruction=12) all vms 40
hv: bench mark: vm netcli value 3 tsc 3202000 exits 100 (io_instruction=100) all vms 2050
[netcli] linux-guest: net bench: from 10.0.0.1 2097152 bytes
hv: bench mark: vm netcli value 4 tsc 3300000 exits 100 () all vms 2060
hv: bench mark: vm netcli value 5 tsc 4901000 exits 200 () all vms 2170
hv: bench mark: vm netcli value 6 tsc 5000000 exits 200 () all vms 2170
hv: bench mark: vm netcli value 7 tsc 7001000 exits 300 () all vms 2410
[netcli] linux-guest: net bench: ping 20 packets transmitted, 20 packets received, 0% packet loss; round-trip min/avg/max = 0.100/0.250/0.900 ms
";
        let r = NetRun::analyse("net", 2, log, "powered off");
        assert_eq!(r.empty, Some((1000, 10)));
        let g = &r.phases[0];
        assert_eq!((g.net_tsc, g.net_exits), (3_199_000, 2000));
        assert_eq!(g.instr_per_mib, 1_599_500.0);
        let lo = &r.phases[1];
        assert_eq!((lo.net_tsc, lo.net_exits), (1_600_000, 100));
        assert_eq!(g.vs_loopback, Some(1.999));
        assert_eq!(NetRun::verdict(g), "not met");
        assert_eq!(r.ping_tsc_each, Some(100_000.0));
        assert_eq!(r.ping_exits_each, Some(11.5));
        assert_eq!(r.ping_avg_ms, Some(0.25));
        assert_eq!(r.received, ["from 10.0.0.1 2097152 bytes"]);
        assert_eq!(NetRun::analyse("net", 2, "", "x").notes().len(), 2);
        // The guest's side: its pings and marks are what this module expects.
        let init = crate::linux::NET_SECTION;
        assert!(
            init.contains(&format!("ping -c {PINGS} -i 0.01 ")),
            "{init}"
        );
        assert!(init.contains(&format!("devmem {:#x} 32 ", super::super::blk::MARK_GPA)));
        let text =
            std::fs::read_to_string(crate::paths::manifests_dir().join("bench-net.toml")).unwrap();
        let cmdlines = manifest_cmdlines(&text);
        assert!(cmdlines
            .iter()
            .any(|(_, c)| c.contains(" netmode=benchcli ") && c.contains(" netmib=32")));
        assert!(text.contains(&format!("name = \"{CLIENT}\"")));
    }
}
