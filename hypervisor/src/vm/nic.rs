//! A VM's side of its NICs' switch ports: senders on other CPUs only set a
//! bit in [`Vm::net_rx`] and kick vCPU 0 ([`RxSignal`]); this VM moves the
//! frames into its virtio-net receive queues itself, under its own lock
//! ([`Vm::drain_nics`]), when that vCPU next runs or the scheduler checks
//! whether it should wake.
use super::irq::Source;
use super::Vm;
use crate::net::{NetPort, PortSink};
use alloc::boxed::Box;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use devices::virtio::net::{self, VirtioNet};
use devices::virtio::pci::{Effects as VEffects, VirtioPci};
use devices::{Bus, BusError, Effects};

/// A NIC as attached: virtio-net on the modern PCI transport, its frames
/// going to and coming from its switch port.
pub type NicDevice = VirtioPci<VirtioNet<NetPort>>;

/// Attaches a virtio-net function per NIC (MAC = its switch port's, link
/// up); their slot indices on the bus, in NIC order.
fn attach(io: &mut Bus, nics: &[NetPort]) -> Result<Vec<usize>, BusError> {
    let mut slots = Vec::new();
    for p in nics {
        let mac = p.net.port_mac(p.port).unwrap_or_default();
        let dev: NicDevice = VirtioPci::new(VirtioNet::new(mac, *p));
        slots.push(io.attach_next(Box::new(dev), "virtio-net")?);
    }
    Ok(slots)
}

/// Frames reached NIC `bit` of `vm`.
struct RxSignal {
    vm: Weak<Vm>,
    bit: u64,
}

impl PortSink for RxSignal {
    fn frames_arrived(&self) {
        let Some(vm) = self.vm.upgrade() else {
            return;
        };
        // Only the first frame since the last drain kicks: a flood costs the
        // receiver one exit per drain, not one per frame.
        if vm.net_rx.fetch_or(self.bit, Ordering::AcqRel) & self.bit == 0 {
            vm.kick(0);
        }
    }
}

impl Vm {
    /// Attaches the NICs' virtio-net functions to the bus, after the disks
    /// (the loader's `PCI_INTX` order: disks, then NICs), once.
    pub fn attach_nics_to_bus(&self) -> Result<(), BusError> {
        let slots = attach(&mut self.shared.lock().io, &self.nics)?;
        self.nic_slots.call_once(|| slots);
        Ok(())
    }

    /// Tells each NIC's network to signal this VM when frames arrive.
    pub(super) fn bind_nics(self: &Arc<Self>) {
        for (i, p) in self.nics.iter().enumerate().take(64) {
            p.net.bind(
                p.port,
                Arc::new(RxSignal {
                    vm: Arc::downgrade(self),
                    bit: 1 << i,
                }),
            );
        }
    }

    /// Moves the frames waiting at the NICs that were signalled into their
    /// receive queues (as far as the guest posted buffers and the
    /// transport's budget goes; what is left waits at the port and goes
    /// when the guest posts more buffers and notifies), raising their
    /// interrupt lines. Called by vCPU 0 before an entry and by the
    /// scheduler before it decides whether a halted vCPU 0 wakes.
    pub fn drain_nics(&self) {
        let bits = self.net_rx.swap(0, Ordering::AcqRel);
        if bits == 0 {
            return;
        }
        let now = self.guest_tsc();
        let mut fx = Effects::none();
        {
            let mut s = self.shared.lock();
            let slots = self.nic_slots.get().map_or(&[][..], |v| v.as_slice());
            for (i, &slot) in slots.iter().enumerate().take(64) {
                if bits & (1 << i) == 0 {
                    continue;
                }
                let got = s.io.slot_kick(slot, now, &self.mem, |t, mem| {
                    match t.as_any_mut().downcast_mut::<NicDevice>() {
                        Some(d) => net::deliver(d, mem),
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

    /// Attaches (VM (re)started) or detaches (VM ended) every NIC's port.
    pub(super) fn attach_nics(&self, attached: bool) {
        for p in &self.nics {
            p.net.set_attached(p.port, attached);
        }
    }

    /// At the VM's end: one `hv: nic` line per NIC with its port's counters,
    /// then the ports are detached.
    pub(super) fn report_nics(&self, say: &dyn Fn(core::fmt::Arguments)) {
        for (i, p) in self.nics.iter().enumerate() {
            let c = p.net.counters(p.port).unwrap_or_default();
            let mac = p.net.port_mac(p.port).unwrap_or_default();
            let line = crate::net::report_line(&self.name, i, mac, &p.net.name, &c);
            say(format_args!("{line}"));
        }
        self.attach_nics(false);
    }
}
