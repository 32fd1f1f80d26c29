//! Gold-image memory (`goldmem`): 8 small guests each with a writable disk on one 64 MiB gold
//! image (`bench-goldmem.toml`). The hypervisor's memory for them, from its own lines: the
//! image held once (`hv: disk image <f>: <K> KiB held once ...`), each VM's overhead beyond its
//! RAM with its disk's device model (`vm <name>: memory overhead ...`) and each VM's overlays
//! at its end (`vm <name>: memory: disk overlays <K> KiB`), against 8 private copies of the
//! image (the same overheads, no overlays).

use serde::{Deserialize, Serialize};

use super::parse::{number_after, vm_line};
use super::{manifest_weights, parse_vm_memory, Done, VmMemory};

/// `hv: disk image <name>: <K> KiB held once (read-only base), shared by <d> disks of <g>
/// guests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldImage {
    pub name: String,
    pub kib: u64,
    pub disks: u64,
    pub guests: u64,
}

/// Every gold-image line of `serial`.
pub fn parse_gold_images(serial: &str) -> Vec<GoldImage> {
    serial
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("hv: disk image ")?;
            let (name, rest) = rest.split_once(": ")?;
            rest.contains("held once").then_some(())?;
            Some(GoldImage {
                name: name.to_string(),
                kib: rest.split_whitespace().next()?.parse().ok()?,
                disks: number_after(rest, "shared by ")?,
                guests: number_after(rest, " of ")?,
            })
        })
        .collect()
}

/// `vm <name>: memory: disk overlays <K> KiB` lines: (name, KiB).
pub fn parse_overlays(serial: &str) -> Vec<(String, u64)> {
    serial
        .lines()
        .filter_map(|l| {
            let (name, what) = vm_line(l)?;
            let k = what.strip_prefix("memory: disk overlays ")?;
            Some((name.to_string(), k.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The `goldmem` boot, analysed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldRun {
    pub run: String,
    /// Guests in the manifest.
    pub requested: usize,
    pub image: Option<GoldImage>,
    pub vms: Vec<VmMemory>,
    /// Each VM's overlays at its end, KiB.
    pub overlays: Vec<(String, u64)>,
    /// Image once + overheads + overlays.
    pub shared_kib: Option<u64>,
    /// One image per VM + the same overheads.
    pub private_kib: Option<u64>,
    pub ended: String,
}

impl GoldRun {
    pub(super) fn from_done(d: &Done) -> Self {
        let requested = manifest_weights(&d.manifest_text).len();
        match &d.result {
            Ok(r) => Self::analyse(&d.job.name, requested, &r.serial, &r.summary()),
            Err(e) => Self::analyse(&d.job.name, requested, "", &format!("could not run: {e}")),
        }
    }

    pub fn analyse(run: &str, requested: usize, serial: &str, ended: &str) -> Self {
        let image = parse_gold_images(serial).into_iter().next();
        let vms = parse_vm_memory(serial);
        let overlays = parse_overlays(serial);
        let overhead: u64 = vms.iter().map(|v| v.overhead_kib).sum();
        let overlay: u64 = overlays.iter().map(|(_, k)| k).sum();
        let ok = image.is_some() && !vms.is_empty();
        let shared_kib = ok.then(|| image.as_ref().map_or(0, |i| i.kib) + overhead + overlay);
        let private_kib =
            ok.then(|| image.as_ref().map_or(0, |i| i.kib) * vms.len() as u64 + overhead);
        Self {
            run: run.to_string(),
            requested,
            image,
            vms,
            overlays,
            shared_kib,
            private_kib,
            ended: ended.to_string(),
        }
    }

    pub fn overlay_of(&self, vm: &str) -> Option<u64> {
        self.overlays.iter().find(|(n, _)| n == vm).map(|(_, k)| *k)
    }

    /// Shared over private, in percent.
    pub fn pct_of_private(&self) -> Option<f64> {
        match (self.shared_kib, self.private_kib) {
            (Some(s), Some(p)) if p > 0 => Some(s as f64 * 100.0 / p as f64),
            _ => None,
        }
    }

    pub fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if self.vms.len() != self.requested {
            n.push(format!(
                "{} of {} guests printed a memory line ({})",
                self.vms.len(),
                self.requested,
                self.ended
            ));
        }
        if self.image.is_none() {
            n.push(format!(
                "no `hv: disk image ... held once` line ({})",
                self.ended
            ));
        }
        if self.overlays.len() != self.vms.len() {
            n.push(format!(
                "{} of {} guests reported their overlays at their end",
                self.overlays.len(),
                self.vms.len()
            ));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_lines_are_parsed_and_summed() {
        let log = "\
vm gold-01: memory overhead 100 KiB for 32 MiB of RAM (EPT 20 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 40 KiB)
vm gold-02: memory overhead 104 KiB for 32 MiB of RAM (EPT 24 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 40 KiB)
hv: disk image rootfs.ext4: 65536 KiB held once (read-only base), shared by 2 disks of 2 guests
vm gold-01: memory: disk overlays 0 KiB
vm gold-02: memory: disk overlays 8 KiB
";
        let g = GoldRun::analyse("goldmem", 3, log, "powered off");
        assert_eq!(
            g.image,
            Some(GoldImage {
                name: "rootfs.ext4".into(),
                kib: 65536,
                disks: 2,
                guests: 2
            })
        );
        assert_eq!(g.overlay_of("gold-02"), Some(8));
        assert_eq!(g.shared_kib, Some(65536 + 204 + 8));
        assert_eq!(g.private_kib, Some(2 * 65536 + 204));
        assert!((g.pct_of_private().unwrap() - 65748.0 * 100.0 / 131276.0).abs() < 1e-9);
        assert_eq!(
            g.notes(),
            ["2 of 3 guests printed a memory line (powered off)"]
        );
        let none = GoldRun::analyse("goldmem", 8, "", "could not run");
        assert_eq!((none.shared_kib, none.pct_of_private()), (None, None));
        assert_eq!(none.notes().len(), 2);
    }
}
