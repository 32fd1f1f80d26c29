//! The report: the terminal text and `docs/BENCHMARKS.md`.

use std::fmt::Write as _;

use super::kvmpeer;
use super::linux_boot::LinuxReport;
use super::*;

/// Everything measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: Config,
    pub exits: Option<ExitReport>,
    pub fairness: Vec<FairRun>,
    pub console: Option<ConsoleRun>,
    pub memory: Vec<MemRun>,
    pub startup: Vec<StartupRow>,
    pub lateness: Vec<LatenessRun>,
    pub linux: Option<LinuxReport>,
    pub peer: Option<kvmpeer::PeerReport>,
    /// virtio-blk against tmpfs (`blk`).
    pub blk: Option<blk::BlkRun>,
    /// 8 guests on one gold image (`goldmem`).
    pub goldmem: Option<goldmem::GoldRun>,
    /// virtio-net against loopback (`net`).
    pub net: Option<net::NetRun>,
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
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
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
    /// The `blk` phases.
    pub fn blk_table(run: &blk::BlkRun) -> Table {
        let mut t = Table::new(&[
            "phase",
            "MiB",
            "TSC ticks",
            "instr/MiB",
            "exits/MiB",
            "most frequent exits",
            "vs tmpfs",
            "goal (≤ 1.5× tmpfs)",
        ]);
        for p in &run.phases {
            t.row(vec![
                p.name.clone(),
                format!("{:.0}", p.mib),
                grouped(p.net_tsc),
                format!("{:.0}", p.instr_per_mib),
                format!("{:.1}", p.exits_per_mib),
                p.top_reasons
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                opt(p.vs_tmpfs, |r| format!("{r:.2}×")),
                blk::BlkRun::verdict(p),
            ]);
        }
        t
    }

    /// What each `blk` phase ran.
    pub fn blk_phase_table() -> Table {
        let mut t = Table::new(&["phase", "what the guest ran"]);
        for (_, name, what, _, _) in blk::PHASES {
            t.row(vec![name.to_string(), what.to_string()]);
        }
        t
    }

    /// The `net` phases.
    pub fn net_table(n: &net::NetRun) -> Table {
        let mut t = Table::new(&[
            "phase",
            "MiB",
            "TSC ticks",
            "instr/MiB",
            "exits/MiB (all VMs)",
            "vs loopback",
            "goal (≤ 1.5× loopback)",
        ]);
        for p in &n.phases {
            t.row(vec![
                p.name.clone(),
                p.mib.to_string(),
                grouped(p.net_tsc),
                format!("{:.0}", p.instr_per_mib),
                format!("{:.1}", p.exits_per_mib),
                opt(p.vs_loopback, |r| format!("{r:.2}×")),
                net::NetRun::verdict(p),
            ]);
        }
        t
    }

    fn net_ping_sentence(n: &net::NetRun) -> String {
        format!(
            "ping of netsrv ({} pings, 10 ms apart): average round trip {} of guest time \
             (≈ {} TSC ticks at 200 MHz); {} TSC ticks and {} exits (all VMs) per ping between \
             the marks, the interval's idle time included; ping said: {}",
            net::PINGS,
            opt(n.ping_avg_ms, |m| format!("{m:.3} ms")),
            opt(n.ping_avg_ms, |m| grouped((m * 200_000.0) as u64)),
            opt(n.ping_tsc_each, |t| grouped(t as u64)),
            opt(n.ping_exits_each, |e| format!("{e:.1}")),
            n.ping_summary.as_deref().unwrap_or("n/a")
        )
    }

    /// The `goldmem` VMs, then the totals.
    pub fn goldmem_table(g: &goldmem::GoldRun) -> Table {
        let mut t = Table::new(&["VM", "RAM", "overhead", "of it heap", "overlay at its end"]);
        for v in &g.vms {
            t.row(vec![
                v.name.clone(),
                format!("{} MiB", v.ram_mib),
                format!("{} KiB", v.overhead_kib),
                format!("{} KiB", v.heap_kib),
                opt(g.overlay_of(&v.name), |k| format!("{k} KiB")),
            ]);
        }
        t
    }

    pub fn goldmem_totals(g: &goldmem::GoldRun) -> Table {
        let n = g.vms.len() as u64;
        let image = g.image.as_ref().map(|i| i.kib);
        let overhead: u64 = g.vms.iter().map(|v| v.overhead_kib).sum();
        let overlays: u64 = g.overlays.iter().map(|(_, k)| k).sum();
        let mut t = Table::new(&["", "one gold image", "private copies"]);
        t.row(vec![
            "disk images".into(),
            opt(image, |k| format!("{k} KiB (held once)")),
            opt(image, |k| format!("{} KiB ({n} × {k} KiB)", k * n)),
        ]);
        t.row(vec![
            "VM overheads (EPT, VMCS, bitmaps, heap with the disk's model)".into(),
            format!("{overhead} KiB"),
            format!("{overhead} KiB"),
        ]);
        t.row(vec![
            "copy-on-write overlays".into(),
            format!("{overlays} KiB"),
            "none (writes go to the copy)".into(),
        ]);
        t.row(vec![
            "total".into(),
            opt(g.shared_kib, |k| format!("{k} KiB")),
            opt(g.private_kib, |k| format!("{k} KiB")),
        ]);
        t.row(vec![
            "one gold image / private copies".into(),
            opt(g.pct_of_private(), |p| format!("{p:.1} %")),
            String::new(),
        ]);
        t
    }

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
    pub(super) fn spread_sentence(run: &FairRun) -> String {
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

    pub(super) fn memory_notes(&self) -> Vec<String> {
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

    pub(super) fn exit_notes(run: &ExitRun) -> Vec<String> {
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
        for run in &self.lateness {
            let _ = writeln!(
                s,
                "\nTimer lateness {}: {}",
                run.run,
                Self::lateness_sentence(run).replace("**", "")
            );
            s += &Self::lateness_table(run).text();
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
        if let Some(b) = &self.blk {
            let _ = writeln!(
                s,
                "\nvirtio-blk vs tmpfs (boot {}, guest `{}`, 1 vCPU, 1 CPU): TSC ticks (= Bochs \
                 instructions, guest and hypervisor) and VM exits between the guest's marks, the \
                 empty phase subtracted, per MiB",
                b.run,
                blk::GUEST
            );
            s += &Self::blk_table(b).text();
            for n in b.notes() {
                let _ = writeln!(s, " note: {n}");
            }
        }
        if let Some(n) = &self.net {
            let _ = writeln!(
                s,
                "\nvirtio-net vs loopback (boot {}, guests netsrv and netcli on one network, 1 \
                 CPU): TSC ticks (= Bochs instructions of both guests and the hypervisor, and \
                 idle time) and every VM's exits between netcli's marks, the empty phase \
                 subtracted, per MiB",
                n.run
            );
            s += &Self::net_table(n).text();
            let _ = writeln!(s, " {}", Self::net_ping_sentence(n));
            for x in n.notes() {
                let _ = writeln!(s, " note: {x}");
            }
        }
        if let Some(g) = &self.goldmem {
            let _ = writeln!(
                s,
                "\nGold image memory (boot {}): {} guests, each with a writable disk on {}",
                g.run,
                g.vms.len(),
                g.image
                    .as_ref()
                    .map_or("n/a".to_string(), |i| format!("{} ({} KiB)", i.name, i.kib))
            );
            s += &Self::goldmem_table(g).text();
            s += &Self::goldmem_totals(g).text();
            for n in g.notes() {
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
             Generated by `cargo xtask bench` (`xtask/src/bench/`); do not edit by hand, run it \
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
        s += &self.lateness_markdown();
        s += &self.peer_markdown();
        s += &self.blk_markdown();
        s += &self.net_markdown();
        s += &self.goldmem_markdown();
        s
    }

    fn blk_markdown(&self) -> String {
        let mut s = String::from("\n## virtio-blk against tmpfs\n\n");
        let Some(b) = &self.blk else {
            let _ = writeln!(s, "Not measured in this run.");
            return s;
        };
        let _ = writeln!(
            s,
            "`bench-blk.toml`: Debian's cloud kernel, 1 vCPU, 256 MiB, on a 1-CPU Bochs, its root \
             on the gold image `rootfs.ext4` (vda, copy-on-write overlay) and a second writable \
             disk on the same image as scratch space (vdb). With `blkbench=1` the root's \
             `/sbin/init` runs each phase between two marks: busybox `devmem 0xfebff000 32 <n>` \
             writes to an unclaimed guest-physical address, and the bench build of the \
             hypervisor prints its TSC and the VM's exit counts (`hv: bench mark: ...`). \
             *TSC ticks* are the ticks between a phase's marks less those of the empty phase \
             (two marks back to back: the `devmem` process); under Bochs the TSC counts \
             executed instructions, guest and hypervisor together, so *instr/MiB* is an \
             instruction count, not a hardware time. *vs tmpfs*: instructions per MiB over the \
             same transfer on the guest's tmpfs. Goal (issue 11): at most \
             {:.1}× (a figure, not a test). The writes are 6 MiB, not 64: a disk's overlay \
             holds at most 8 MiB of the hypervisor's heap.\n",
            blk::RATIO_GOAL
        );
        s += &Self::blk_phase_table().markdown();
        s += "\n";
        s += &Self::blk_table(b).markdown();
        for n in b.notes() {
            let _ = writeln!(s, "\nNote: {n}.");
        }
        s
    }

    fn net_markdown(&self) -> String {
        let mut s = String::from("\n## virtio-net against loopback\n\n");
        let Some(n) = &self.net else {
            let _ = writeln!(s, "Not measured in this run.");
            return s;
        };
        let _ = writeln!(
            s,
            "`bench-net.toml`: two Linux guests (Debian's cloud kernel, busybox initramfs, \
             192 MiB, 1 vCPU each) with a virtio-net NIC on one network of the hypervisor's L2 \
             switch, on a 1-CPU Bochs. `netcli` fetches {} MiB of zeros from `netsrv`'s busybox \
             `httpd` with `wget` into its tmpfs, then the same from its own `httpd` over \
             loopback, then pings `netsrv` {} times, each phase between two marks as in the \
             virtio-blk section. With one CPU the TSC ticks between the marks are the \
             instructions of both guests and the hypervisor (plus any time the CPU idles); the \
             exits are every VM's. {} MiB, not 64, to keep the boot within a few minutes of \
             Bochs. Goal (issue 11): guest to guest at most {:.1}× loopback per MiB (a figure, \
             not a test).\n",
            n.mib,
            net::PINGS,
            n.mib,
            net::RATIO_GOAL
        );
        s += &Self::net_table(n).markdown();
        let _ = writeln!(s, "\n{}.", Self::net_ping_sentence(n));
        for x in n.notes() {
            let _ = writeln!(s, "\nNote: {x}.");
        }
        s
    }

    fn goldmem_markdown(&self) -> String {
        let mut s = String::from("\n## Gold image memory\n\n");
        let Some(g) = &self.goldmem else {
            let _ = writeln!(s, "Not measured in this run.");
            return s;
        };
        let _ = writeln!(
            s,
            "`bench-goldmem.toml`: 8 `blkwrite` guests (`tests/guests/blkwrite`) of 32 MiB on 1 \
             CPU (so that every VM is created before any writes), each with a writable disk on the same 64 MiB gold image (`rootfs.ext4`); \
             guest n writes n × 128 KiB to its disk through virtio-blk, reads the first 64 KiB \
             back and exits. The hypervisor holds the image once (`hv: disk image ... held \
             once`); each disk has a private copy-on-write overlay (4 KiB chunks on the \
             hypervisor heap, reported at the VM's end) and its device model, which is in the \
             VM's overhead line (`vm <name>: memory overhead ...`). Against that: the same \
             guests each with a private copy of the image (and no overlay). The overlay \
             figures count the chunks' bytes; the B-tree that indexes them is not in them.\n"
        );
        s += &Self::goldmem_table(g).markdown();
        s += "\n";
        s += &Self::goldmem_totals(g).markdown();
        for n in g.notes() {
            let _ = writeln!(s, "\nNote: {n}.");
        }
        s
    }

    fn lateness_markdown(&self) -> String {
        let mut s = String::from("\n## Timer lateness\n\n");
        if self.lateness.is_empty() {
            let _ = writeln!(s, "Not measured in this run.");
            return s;
        }
        let _ = writeln!(
            s,
            "For every local APIC timer expiry the hypervisor takes the time from the timer's \
             deadline to the moment it saw the expiry and raised the interrupt, and prints a \
             distribution per VM at the end (`vm <name>: timer lateness: ...`, \
             `hypervisor/src/vm/lateness.rs`). `linux-3` (`bench-linux3.toml`): three Linux \
             guests of 1 vCPU on 2 CPUs, so a vCPU often waits for a CPU while its timer is \
             due; `linux-hv`: the Linux guest alone on 1 CPU (the Linux boot above). Columns: \
             the share of the expiries in each bucket (`<1 ms`: from 100 µs to 1 ms late). *TSC unstable*: how often the \
             kernel's clocksource watchdog marked the TSC unstable (/init counts it in dmesg). \
             Goal: every expiry within one time slice of its deadline, and no kernel marks its \
             TSC unstable."
        );
        for run in &self.lateness {
            let _ = writeln!(s, "\n### {}\n\n{}\n", run.run, Self::lateness_sentence(run));
            s += &Self::lateness_table(run).markdown();
        }
        s
    }

    /// `<n> CPUs, time slice <us> us; latest expiry <m> us after its deadline: <verdict>.`
    pub(super) fn lateness_sentence(run: &LatenessRun) -> String {
        let unstable = run
            .guests
            .iter()
            .filter(|g| g.tsc_unstable.is_some_and(|n| n > 0))
            .count();
        format!(
            "{} CPU{}, time slice {}; latest expiry **{}** after its deadline: {}; kernels that \
             marked the TSC unstable: {} of {}.",
            run.cpus,
            if run.cpus == 1 { "" } else { "s" },
            opt(run.slice_us, |u| format!("{} us", grouped(u))),
            opt(run.max_us(), |u| format!("{} us", grouped(u))),
            run.verdict(),
            unstable,
            run.guests
                .iter()
                .filter(|g| g.tsc_unstable.is_some())
                .count()
        )
    }

    /// One row per guest: expiries, the share in each bucket, the latest, TSC unstable.
    pub fn lateness_table(run: &LatenessRun) -> Table {
        const LABELS: [&str; 6] = ["<10us", "<100us", "<1ms", "<4ms", "<10ms", ">=10ms"];
        let labels: Vec<String> = run
            .guests
            .iter()
            .find_map(|g| g.lateness.as_ref())
            .map_or_else(
                || LABELS.iter().map(|l| l.to_string()).collect(),
                |l| l.buckets.iter().map(|(b, _)| b.clone()).collect(),
            );
        let mut header = vec!["guest".to_string(), "expiries".to_string()];
        header.extend(
            labels
                .iter()
                .map(|l| l.replace("us", " µs").replace("ms", " ms")),
        );
        header.push("latest (µs)".to_string());
        header.push("TSC unstable".to_string());
        let mut t = Table {
            header,
            rows: Vec::new(),
        };
        for g in &run.guests {
            let mut row = vec![g.name.clone()];
            match &g.lateness {
                Some(l) => {
                    row.push(grouped(l.expiries));
                    for label in &labels {
                        let count = l.buckets.iter().find(|(b, _)| b == label).map(|(_, c)| *c);
                        row.push(opt(count.and_then(|c| l.pct(c)), |p| format!("{p:.1} %")));
                    }
                    row.push(grouped(l.max_us));
                }
                None => {
                    row.push(format!(
                        "n/a ({})",
                        g.outcome.as_deref().unwrap_or("no lateness line")
                    ));
                    row.extend((0..=labels.len()).map(|_| "n/a".to_string()));
                }
            }
            row.push(opt(g.tsc_unstable, |n| n.to_string()));
            t.row(row);
        }
        t
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_document_has_every_section_and_its_rows() {
        let md = crate::bench::fixture::report().markdown();
        let headings: Vec<&str> = md.lines().filter(|l| l.starts_with('#')).collect();
        assert_eq!(
            headings,
            [
                "# Benchmarks",
                "## Configuration",
                "## Exit costs",
                "## Scheduling fairness",
                "### fair-equal (1_000_000_000 guest TSC ticks per spinner, n/a)",
                "### fair-weighted (1_000_000_000 guest TSC ticks per spinner, 62 s wall for the \
                 boot)",
                "## Longest exit under console floods",
                "## Memory overhead",
                "## Start-up",
                "## Linux boot: under ferrovisor vs booted directly",
                "## Timer lateness",
                "### linux-3",
                "## Peer comparison (KVM)",
                "## virtio-blk against tmpfs",
                "## virtio-net against loopback",
                "## Gold image memory",
            ]
        );
        for row in [
            "| cpuid | CPUID (handled in the core) | 10_000 | 455.0 | 450.0 | +150.0 | met |",
            "| rdmsr | RDMSR of a virtualized MSR (core) | 10_000 | 600.0 | 595.0 | +295.0 | not \
             met |",
            "| spin-d | 100 | n/a (stopped: triple fault) | 25.00 % | n/a | n/a | n/a |",
            "| spin-a | 200 | 3_300 | 33.33 % | 33.00 % | -1.00 % | 1_000_000_000 |",
            "| flood-hc | role=hypercall writes=50 | 212_345 | 18 (VMCALL) | 21.2 % | exited \
             code=0 |",
            "| 4 | 2 | 66 KiB | 22 KiB | 40 KiB | 4 KiB | 0.052 % | met |",
            "| mem-4 | 2 | 14.5 | 5_000_000 (25 ms, a) | 20.0 | 9_000_000 (45 ms, b) | 22.0 |",
            "| (b) kernel time at its `reboot:` line (guest TSC, emulated seconds) | 3.250 s | \
             1.625 s | 2.00× |",
            "| cpuid | 450.0 | 1079.5 | in the kernel (KVM) | 0.417 | ≤ 1/3 of KVM's | not met |",
            "| read-vda | 64 | 63_900_000 | 998438 | 31.1 | ept_violation 995, io_instruction \
             995 | 2.00× | not met |",
            "| write-vdb | 6 | 5_900_000 | 983333 | 48.3 | io_instruction 295 | 1.51× | not met |",
            "| read-vda-buffered | 64 | 39_900_000 | 623438 | 2.3 | io_instruction 95, \
             ept_violation 55 | 1.25× | met |",
            "| total | 65748 KiB | 131276 KiB |",
            "| one gold image / private copies | 50.1 % |  |",
        ] {
            assert!(md.lines().any(|l| l == row), "missing {row}\n{md}");
        }
        assert!(md.contains("**Repeatability**: the two boots differ: cpuid +1000 ticks"));
        for row in [
            "| linux2 | 1_000 | 10.0 % | 20.0 % | 30.0 % | 20.0 % | 15.0 % | 5.0 % | 28_000 | 1 |",
            "| linux3 | n/a (stopped: triple fault) | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |",
        ] {
            assert!(md.lines().any(|l| l == row), "missing {row}\n{md}");
        }
        assert!(md.contains("latest expiry **28_000 us** after its deadline: not met"));
        let text = crate::bench::fixture::report().text();
        assert!(
            text.contains(
                "\nTimer lateness linux-3: 2 CPUs, time slice 5_000 us; latest expiry 28_000 us \
                 after its deadline: not met; kernels that marked the TSC unstable: 1 of 2.\n"
            ),
            "{text}"
        );
    }
}
