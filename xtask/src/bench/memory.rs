//! Memory overhead: the hypervisor's own and each VM's.

use serde::{Deserialize, Serialize};

use super::parse::{number_after, vm_line};
use super::{manifest_weights, Done};

/// `hv: memory: loader data (image, heap, stacks, ESP files) <N> KiB (heap <u> KiB used of <t>
/// KiB), host page tables <p> KiB, <f> MiB free for guests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HvMemory {
    pub loader_kib: u64,
    pub heap_used_kib: u64,
    pub heap_total_kib: u64,
    pub page_tables_kib: u64,
    pub free_mib: u64,
}

/// Parses the hypervisor's memory line (the last one, if printed more than once).
pub fn parse_hv_memory(serial: &str) -> Option<HvMemory> {
    serial.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("hv: memory: loader data")?;
        Some(HvMemory {
            loader_kib: number_after(rest, ") ")?,
            heap_used_kib: number_after(rest, "(heap ")?,
            heap_total_kib: number_after(rest, "used of ")?,
            page_tables_kib: number_after(rest, "host page tables ")?,
            free_mib: rest
                .rsplit_once(", ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?,
        })
    })
}

/// `vm <name>: memory overhead <K> KiB for <M> MiB of RAM (EPT <e> KiB, VMCS+XSAVE+bitmaps <b>
/// KiB, heap <h> KiB)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMemory {
    pub name: String,
    pub overhead_kib: u64,
    pub ram_mib: u64,
    pub ept_kib: u64,
    #[serde(rename = "vmcs_xsave_bitmaps_kib")]
    pub vmcs_kib: u64,
    pub heap_kib: u64,
}

impl VmMemory {
    /// The overhead in percent of the guest's RAM.
    pub fn pct(&self) -> f64 {
        self.overhead_kib as f64 * 100.0 / (self.ram_mib.max(1) * 1024) as f64
    }
}

/// Every VM's memory-overhead line.
pub fn parse_vm_memory(serial: &str) -> Vec<VmMemory> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, what) = vm_line(l)?;
            let rest = what.strip_prefix("memory overhead ")?;
            Some(VmMemory {
                name: name.to_string(),
                overhead_kib: rest.split_whitespace().next()?.parse().ok()?,
                ram_mib: number_after(rest, "KiB for ")?,
                ept_kib: number_after(rest, "(EPT ")?,
                vmcs_kib: number_after(rest, "bitmaps ")?,
                heap_kib: number_after(rest, "heap ")?,
            })
        })
        .collect()
}

/// One memory boot, analysed.
#[derive(Debug, Clone)]
pub struct MemRun {
    pub run: String,
    pub requested: usize,
    /// Guests with a `vm <name>: started` line.
    pub started: usize,
    pub emulated_mib: u32,
    pub hv: Option<HvMemory>,
    pub vms: Vec<VmMemory>,
    /// `vm <name>: not started: ...` lines.
    pub refused: Vec<String>,
    pub ended: String,
}

impl MemRun {
    pub(super) fn from_done(d: &Done) -> Self {
        let (serial, ended) = match &d.result {
            Ok(r) => (r.serial.as_str(), r.summary()),
            Err(e) => ("", format!("could not run: {e}")),
        };
        Self::analyse(
            &d.job.name,
            manifest_weights(&d.manifest_text).len(),
            d.job.memory_mib,
            serial,
            &ended,
        )
    }

    pub fn analyse(
        run: &str,
        requested: usize,
        emulated_mib: u32,
        serial: &str,
        ended: &str,
    ) -> Self {
        let started = serial
            .lines()
            .filter_map(vm_line)
            .filter(|(_, w)| w.starts_with("started"))
            .count();
        let refused = serial
            .lines()
            .filter(|l| vm_line(l).is_some_and(|(_, w)| w.starts_with("not started")))
            .map(str::to_string)
            .collect();
        Self {
            run: run.to_string(),
            requested,
            started,
            emulated_mib,
            hv: parse_hv_memory(serial),
            vms: parse_vm_memory(serial),
            refused,
            ended: ended.to_string(),
        }
    }

    /// Mean overhead per VM in KiB.
    pub fn mean_kib(&self) -> Option<f64> {
        (!self.vms.is_empty()).then(|| {
            self.vms.iter().map(|v| v.overhead_kib as f64).sum::<f64>() / self.vms.len() as f64
        })
    }

    /// Largest overhead in percent of the VM's RAM.
    pub fn max_pct(&self) -> Option<f64> {
        self.vms.iter().map(VmMemory::pct).reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Config, Report};

    #[test]
    fn memory_lines_are_parsed() {
        let log = "\
hv: memory: 121 regions, 2997 MiB free, 37 MiB firmware boot services, 32 MiB loader, top 0xbffe0000
hv: memory: loader data (image, heap, stacks, ESP files) 4321 KiB (heap 103 KiB used of 4096 KiB), host page tables 24 KiB, 2950 MiB free for guests
vm mem-01: memory overhead 64 KiB for 128 MiB of RAM (EPT 20 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 4 KiB)
vm mem-01: started (128 MiB at host 0x1b000000, 1 vcpu, elf64)
vm mem-02: memory overhead 68 KiB for 128 MiB of RAM (EPT 24 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 4 KiB)
vm mem-02: started (128 MiB at host 0x1b000000, 1 vcpu, elf64)
vm mem-03: not started: out of memory
";
        let m = MemRun::analyse("mem-4", 4, 1024, log, "");
        assert_eq!(
            m.hv,
            Some(HvMemory {
                loader_kib: 4321,
                heap_used_kib: 103,
                heap_total_kib: 4096,
                page_tables_kib: 24,
                free_mib: 2950
            })
        );
        assert_eq!(m.vms.len(), 2);
        assert_eq!(
            m.vms[1],
            VmMemory {
                name: "mem-02".into(),
                overhead_kib: 68,
                ram_mib: 128,
                ept_kib: 24,
                vmcs_kib: 40,
                heap_kib: 4
            }
        );
        assert_eq!(m.started, 2);
        assert_eq!(m.refused, ["vm mem-03: not started: out of memory"]);
        assert_eq!(m.mean_kib(), Some(66.0));
        assert!((m.max_pct().unwrap() - 68.0 * 100.0 / 131072.0).abs() < 1e-12);
        let report = Report {
            config: Config::default(),
            exits: None,
            fairness: Vec::new(),
            console: None,
            memory: vec![m],
            startup: Vec::new(),
            lateness: Vec::new(),
            linux: None,
            peer: None,
            blk: None,
            goldmem: None,
            net: None,
            linux_notes: Vec::new(),
            runs: Vec::new(),
            wall_s: 1.0,
        };
        let notes = report.memory_notes().join("\n");
        assert!(notes.contains("only 2 of 4 guests started"), "{notes}");
        let table = report.memory_table().text();
        assert!(table.contains("0.052 %"), "{table}");
        assert!(table.contains("met"), "{table}");
    }
}
