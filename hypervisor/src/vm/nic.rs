//! A VM's side of its NICs' switch ports: senders on other CPUs only set a
//! bit in [`Vm::net_rx`] and kick vCPU 0 ([`RxSignal`]); this VM moves the
//! frames into its virtio-net receive queues itself, under its own lock
//! ([`Vm::drain_nics`]), when that vCPU next runs or the scheduler checks
//! whether it should wake.
use super::Vm;
use crate::net::PortSink;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::Ordering;

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
