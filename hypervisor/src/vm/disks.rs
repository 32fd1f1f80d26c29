//! A VM's disks: one virtio-blk PCI function per `[[guest.disk]]`, in
//! manifest order (so the guest sees them as vda, vdb, ...). Every image file
//! is a gold image: it stays where the boot stage loaded it from the ESP,
//! read-only and held once however many disks name it; each disk is a
//! [`CowDisk`] over it whose private overlay (in hypervisor heap memory, in
//! [`CHUNK`]-byte chunks, at most [`OVERLAY_LIMIT`] bytes) takes the guest's
//! writes. A read-only disk never has an overlay.
//!
//! An NBD disk (`nbd = "nbd://..."`) has no image: its blocks live on the
//! server, reached through the hypervisor's endpoint (`crate::nbd`); its
//! requests finish later, delivered by [`Vm::drain_disks`].
use super::irq::Source;
use super::Vm;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use devices::virtio::blk::Blk;
use devices::virtio::block::CowDisk;
use devices::virtio::pci::{Effects as VEffects, VirtioPci};
use devices::{Bus, Effects};
use loader::manifest::DiskConfig;
use spin::Mutex;

/// The virtio-blk device type every disk is.
pub type BlkPci = VirtioPci<Blk<CowDisk>>;
/// An NBD disk's virtio-blk function.
pub type NbdPci = VirtioPci<Blk<crate::nbd::NbdBackend>>;

/// Overlay chunk: ext4's block size, so a block write copies one chunk.
pub const CHUNK: usize = 4096;
/// The most one overlay holds (it lives on the hypervisor heap); a write
/// that needs more fails with VIRTIO_BLK_S_IOERR.
pub const OVERLAY_LIMIT: u64 = 8 << 20;

/// One gold image and the disks over it.
struct Gold {
    name: String,
    bytes: u64,
    disks: u32,
    /// Guest ids with a disk on it (a guest with two disks on it counts once).
    guests: Vec<usize>,
}

/// Lock order: after a VM's `shared` lock (never taken while holding it
/// here, and nothing else is locked under it).
static GOLD: Mutex<Vec<Gold>> = Mutex::new(Vec::new());

/// The guest's name for the `i`-th virtio disk (vda, vdb, ..., vdp).
pub fn disk_name(i: usize) -> [u8; 3] {
    [b'v', b'd', b'a'.saturating_add(i as u8)]
}

fn name_str(n: &[u8; 3]) -> &str {
    core::str::from_utf8(n).unwrap_or("vd?")
}

/// Why a disk could not be attached.
#[derive(Debug)]
pub enum DiskError {
    /// The image file is not on the ESP (`validate_files` checked it before,
    /// so this is a boot-stage problem).
    Missing(String),
    Bad(String),
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DiskError::Missing(s) | DiskError::Bad(s) => f.write_str(s),
        }
    }
}

/// The `CowDisk` for `disk` over the gold image `data`.
pub fn cow_disk(disk: &DiskConfig, data: &'static [u8]) -> Result<CowDisk, DiskError> {
    let d = CowDisk::new(data, CHUNK).map_err(|e| {
        DiskError::Bad(alloc::format!(
            "disk image \\hv\\{} (manifest line {}): {e:?}",
            disk.image,
            disk.image_line
        ))
    })?;
    let limit = (data.len() as u64).min(OVERLAY_LIMIT);
    Ok(d.with_limit(limit).with_read_only(disk.read_only))
}

/// Attaches the guest's disks to its bus, each over its gold image (found by
/// `file`) or its NBD export (connected and negotiated first), and counts
/// the image disks as users of their images.
pub fn attach(
    id: usize,
    vm: &Arc<Vm>,
    disks: &[DiskConfig],
    file: &dyn Fn(&str) -> Option<&'static [u8]>,
) -> Result<(), DiskError> {
    let r = attach_all(id, vm, disks, file);
    if r.is_err() {
        // The VM is not started: its NBD connections go.
        crate::nbd::release(&Arc::downgrade(vm));
    }
    r
}

fn attach_all(
    id: usize,
    vm: &Arc<Vm>,
    disks: &[DiskConfig],
    file: &dyn Fn(&str) -> Option<&'static [u8]>,
) -> Result<(), DiskError> {
    let mut slots = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let serial = disk.serial.as_deref().unwrap_or("").as_bytes();
        let bus_err = |e: devices::BusError| {
            DiskError::Bad(alloc::format!("disk (manifest line {}): {e}", disk.line))
        };
        if let Some(target) = &disk.nbd {
            let n = disk_name(i);
            let label = alloc::format!("vm {}: disk {}", vm.name, name_str(&n));
            let backend =
                crate::nbd::connect(label, target, disk.read_only, Arc::downgrade(vm), 1u64 << i)
                    .map_err(|e| {
                    DiskError::Bad(alloc::format!(
                        "NBD disk (manifest line {}): {e}",
                        disk.image_line
                    ))
                })?;
            let dev: NbdPci = VirtioPci::new(Blk::new(backend, serial));
            let slot = vm
                .shared
                .lock()
                .io
                .attach_next(Box::new(dev), "virtio-blk")
                .map_err(bus_err)?;
            slots.push(slot);
            continue;
        }
        let data = file(&disk.image).ok_or_else(|| {
            DiskError::Missing(alloc::format!(
                "disk image file \\hv\\{} not found on the ESP (manifest line {})",
                disk.image,
                disk.image_line
            ))
        })?;
        let dev: BlkPci = VirtioPci::new(Blk::new(cow_disk(disk, data)?, serial));
        let slot = vm
            .shared
            .lock()
            .io
            .attach_next(Box::new(dev), "virtio-blk")
            .map_err(bus_err)?;
        slots.push(slot);
        let mut g = GOLD.lock();
        let at = match g
            .iter()
            .position(|x| x.name.eq_ignore_ascii_case(&disk.image))
        {
            Some(i) => i,
            None => {
                g.push(Gold {
                    name: disk.image.clone(),
                    bytes: data.len() as u64,
                    disks: 0,
                    guests: Vec::new(),
                });
                g.len() - 1
            }
        };
        let e = &mut g[at];
        e.disks += 1;
        if !e.guests.contains(&id) {
            e.guests.push(id);
        }
    }
    vm.disk_slots.call_once(|| slots);
    Ok(())
}

/// One `hv:` line per gold image: held once, by how many disks of how many guests.
pub fn report_gold() {
    for g in GOLD.lock().iter() {
        crate::println!(
            "hv: disk image {}: {} KiB held once (read-only base), shared by {} disk{} of {} guest{}",
            g.name,
            g.bytes >> 10,
            g.disks,
            if g.disks == 1 { "" } else { "s" },
            g.guests.len(),
            if g.guests.len() == 1 { "" } else { "s" }
        );
    }
}

/// The virtio-blk devices on `io`, in attach order (= the guest's vda, vdb, ...).
fn blk_devices(io: &mut Bus) -> impl Iterator<Item = &mut BlkPci> {
    io.slots_mut()
        .iter_mut()
        .filter_map(|s| s.transport.as_any_mut().downcast_mut::<BlkPci>())
}

impl Vm {
    /// Delivers the requests its NBD disks finished (signalled by the NIC
    /// poll) to their used rings, raising their interrupt lines. Called by
    /// vCPU 0 before an entry and by the scheduler before it decides
    /// whether a halted vCPU 0 wakes.
    pub fn drain_disks(&self) {
        let bits = self.disk_done.swap(0, Ordering::AcqRel);
        if bits == 0 {
            return;
        }
        let now = self.guest_tsc();
        let mut fx = Effects::none();
        {
            let mut s = self.shared.lock();
            let slots = self.disk_slots.get().map_or(&[][..], |v| v.as_slice());
            for (i, &slot) in slots.iter().enumerate().take(64) {
                if bits & (1 << i) == 0 {
                    continue;
                }
                let got = s.io.slot_kick(slot, now, &self.mem, |t, mem| {
                    match t.as_any_mut().downcast_mut::<NbdPci>() {
                        Some(d) => d.complete(mem),
                        None => VEffects::default(),
                    }
                });
                if let Some(f) = got {
                    fx.merge(f);
                }
            }
        }
        if !fx.is_quiet() {
            let _ = self.apply(Source::Platform, fx);
        }
    }

    /// One line per disk as the guest starts.
    pub fn report_disks_attached(&self) {
        for (i, d) in self.config.disks.iter().enumerate() {
            let n = disk_name(i);
            if let Some(t) = &d.nbd {
                crate::println!(
                    "vm {}: disk {}: {t} ({}), {}, 00:{:02x}.0 irq {}",
                    self.name,
                    name_str(&n),
                    if d.read_only {
                        "read-only"
                    } else {
                        "blocks on the NBD server"
                    },
                    match &d.serial {
                        Some(s) => alloc::format!("serial \"{s}\""),
                        None => String::from("no serial"),
                    },
                    devices::virtio::attach::FIRST_DEVICE as usize + i,
                    devices::virtio::attach::IRQS.get(i).copied().unwrap_or(0)
                );
                continue;
            }
            crate::println!(
                "vm {}: disk {}: \\hv\\{} ({}), {}, 00:{:02x}.0 irq {}",
                self.name,
                name_str(&n),
                d.image,
                if d.read_only {
                    "read-only"
                } else {
                    "writable, private copy-on-write overlay"
                },
                match &d.serial {
                    Some(s) => alloc::format!("serial \"{s}\""),
                    None => String::from("no serial"),
                },
                devices::virtio::attach::FIRST_DEVICE as usize + i,
                devices::virtio::attach::IRQS.get(i).copied().unwrap_or(0)
            );
        }
    }

    /// The disks over image files (not NBD), with their manifest index: in
    /// the order of [`blk_devices`].
    fn image_disks(&self) -> impl Iterator<Item = (usize, &DiskConfig)> {
        self.config
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.nbd.is_none())
    }

    /// `vm <name>: disk vdX: overlay N KiB ...` lines and the total, queued
    /// after the guest's output (when the VM ends). `io` is the locked bus.
    pub(super) fn report_overlays(&self, io: &mut Bus, when: &str) {
        if self.image_disks().next().is_none() {
            return;
        }
        let mut total = 0u64;
        let (name, c) = (&self.name, self.console);
        for (blk, (i, cfg)) in blk_devices(io).zip(self.image_disks()) {
            let bytes = blk.dev.backend().overlay_bytes();
            total = total.saturating_add(bytes);
            let n = disk_name(i);
            crate::console::println_after(
                c,
                format_args!(
                    "vm {name}: disk {}: overlay {} KiB over \\hv\\{} ({when}){}",
                    name_str(&n),
                    bytes.div_ceil(1024),
                    cfg.image,
                    if cfg.read_only { ", read-only" } else { "" }
                ),
            );
        }
        crate::console::println_after(
            c,
            format_args!(
                "vm {name}: memory: disk overlays {} KiB",
                total.div_ceil(1024)
            ),
        );
    }

    /// On a restart: each overlay is dropped (the guest sees its gold image
    /// again) unless its disk says `keep_overlay = true`.
    pub(super) fn restart_disks(&self, io: &mut Bus) {
        let (name, c) = (&self.name, self.console);
        for (blk, (i, cfg)) in blk_devices(io).zip(self.image_disks()) {
            if cfg.read_only {
                continue; // no overlay to drop or keep
            }
            let disk = blk.dev.backend_mut();
            let bytes = disk.overlay_bytes();
            let n = disk_name(i);
            if cfg.keep_overlay {
                crate::console::println_after(
                    c,
                    format_args!(
                        "vm {name}: disk {}: overlay of {} KiB kept (keep_overlay)",
                        name_str(&n),
                        bytes.div_ceil(1024)
                    ),
                );
            } else {
                disk.drop_overlay();
                crate::console::println_after(
                    c,
                    format_args!(
                        "vm {name}: disk {}: overlay of {} KiB dropped: \\hv\\{} as it is again",
                        name_str(&n),
                        bytes.div_ceil(1024),
                        cfg.image
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::virtio::block::BlockBackend;

    fn cfg(read_only: bool) -> DiskConfig {
        DiskConfig {
            image: "gold.img".into(),
            nbd: None,
            read_only,
            serial: None,
            keep_overlay: false,
            line: 1,
            image_line: 2,
        }
    }

    #[test]
    fn disks_over_one_gold_image_keep_their_writes_apart() {
        let gold: &'static [u8] = Box::leak(alloc::vec![7u8; 64 * 1024].into_boxed_slice());
        let mut a = cow_disk(&cfg(false), gold).unwrap();
        let b = cow_disk(&cfg(false), gold).unwrap();
        a.write(8, &[1; 512]).unwrap();
        let mut buf = [0u8; 512];
        b.read(8, &mut buf).unwrap();
        assert_eq!(buf, [7; 512], "b sees the gold image");
        a.read(8, &mut buf).unwrap();
        assert_eq!(buf, [1; 512]);
        assert_eq!(a.overlay_bytes(), CHUNK as u64);
        assert_eq!(b.overlay_bytes(), 0);
        assert!(gold.iter().all(|&x| x == 7), "the base is never written");
        a.drop_overlay();
        a.read(8, &mut buf).unwrap();
        assert_eq!(buf, [7; 512], "a restart without keep_overlay");
    }

    #[test]
    fn a_read_only_disk_refuses_writes_and_overlays_are_capped() {
        let gold: &'static [u8] = Box::leak(alloc::vec![0u8; 16 << 20].into_boxed_slice());
        let mut ro = cow_disk(&cfg(true), gold).unwrap();
        assert!(ro.read_only());
        assert!(ro.write(0, &[1; 512]).is_err());
        let mut rw = cow_disk(&cfg(false), gold).unwrap();
        let chunk = alloc::vec![1u8; CHUNK];
        let chunks = OVERLAY_LIMIT / CHUNK as u64;
        for i in 0..chunks {
            rw.write(i * (CHUNK as u64 / 512), &chunk).unwrap();
        }
        assert_eq!(rw.overlay_bytes(), OVERLAY_LIMIT);
        assert!(
            rw.write(chunks * 8, &chunk).is_err(),
            "past the cap: an I/O error"
        );
        assert_eq!(&disk_name(1), b"vdb");
        let odd: &'static [u8] = Box::leak(alloc::vec![0u8; 1000].into_boxed_slice());
        assert!(cow_disk(&cfg(false), odd).is_err());
    }
}

#[cfg(test)]
mod routing_tests {
    use devices::virtio::attach::{FIRST_DEVICE, IRQS};

    /// The guest's _PRT (built by the loader from the manifest) and the bus
    /// (which attaches the functions) agree on every device and GSI.
    #[test]
    fn acpi_prt_and_bus_attach_agree() {
        assert_eq!(loader::PCI_INTX.len(), IRQS.len());
        for (i, &(device, gsi)) in loader::PCI_INTX.iter().enumerate() {
            assert_eq!(device, FIRST_DEVICE + i as u8);
            assert_eq!(gsi, IRQS[i]);
        }
    }
}
