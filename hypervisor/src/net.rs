//! The guests' networks: one [`Switch`] per `[[network]]` of the manifest,
//! one port per `[[guest.nic]]` on it.
//!
//! A guest's transmit runs on its own vCPU's exit, under its own VM lock:
//! the virtio-net model hands the frame to its [`NetPort`], which takes the
//! network's lock, lets the switch copy the frame into the destination
//! ports' bounded queues (drop-tail, counted per port), drops the lock and
//! then only *signals* each destination ([`PortSink::frames_arrived`]): an
//! atomic bit in that VM and a kick of its vCPU 0. The destination VM moves
//! the frames into its RX virtqueue itself, under its own lock, the next
//! time it runs or the scheduler looks at it. So no VM's device state is
//! ever touched by another VM's CPU, and no exit waits on another VM.
//!
//! Lock order: a VM's `shared` lock, then a network's lock (a device under
//! the VM lock calls into its port). A network's lock is never held while a
//! VM lock is taken, and no path holds two VMs' locks.
//!
//! Uplink (`uplink = "nic0"`): the network's switch has one more port, the
//! bridge to the host NIC. Its queue holds the guests' frames for the wire;
//! a frame queued there only wakes CPU 0 ([`crate::nic::wire_pending`]),
//! whose NIC poll moves a bounded number of them to the NIC and hands the
//! wire's frames to [`Network::from_wire`] (switched like a guest's, under
//! the network lock, on CPU 0).
//!
//! A flooding guest: its frames are switched on its own exits, at most the
//! transport's per-notification budget at a time, so it spends only its own
//! CPU share; each destination queue holds a bounded number of frames and
//! the rest are dropped and counted on that port; a signal that is already
//! pending is not sent again (one kick per drain, not per frame).
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use devices::switch::{Mac, PortCounters, PortId, Switch, SwitchConfig, SwitchError};
use devices::virtio::net::Uplink;
use loader::manifest::NetworkConfig;
use spin::{Mutex, Once};

/// Where a port's frames are announced: the core implements it on the VM
/// that owns the NIC.
pub trait PortSink: Send + Sync {
    /// Frames are waiting in the port's queue (called without any lock of
    /// the network held; must not wait).
    fn frames_arrived(&self);
}

/// One `[[network]]`.
pub struct Network {
    pub name: String,
    switch: Mutex<Switch>,
    /// Per port: who to tell that frames arrived (set once the NIC's VM
    /// exists; until then frames only queue). One for each port the switch
    /// can have, so ports added at run time (clones) need no resize.
    sinks: Vec<Once<Arc<dyn PortSink>>>,
    /// Per port: the guest and NIC index that own it (for reports).
    owners: Mutex<Vec<(String, usize)>>,
    /// The switch's clock (ns, monotonic).
    clock: fn() -> u64,
    /// The manifest's `uplink` (the host NIC's name) and the switch port
    /// bridged to it (made after the guests' ports).
    pub uplink_nic: Option<String>,
    uplink: Option<PortId>,
}

/// Why a NIC could not be put on its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachError {
    NoNetwork(String),
    Switch(SwitchError),
}

impl core::fmt::Display for AttachError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AttachError::NoNetwork(n) => write!(f, "no network \"{n}\""),
            AttachError::Switch(e) => write!(f, "switch: {e:?}"),
        }
    }
}

impl Network {
    pub fn new(cfg: &NetworkConfig, clock: fn() -> u64) -> Result<Self, SwitchError> {
        let switch = Switch::new(SwitchConfig {
            anti_spoofing: cfg.anti_spoofing,
            ..SwitchConfig::default()
        })?;
        Ok(Self {
            name: cfg.name.clone(),
            switch: Mutex::new(switch),
            sinks: (0..devices::switch::MAX_PORTS)
                .map(|_| Once::new())
                .collect(),
            owners: Mutex::new(Vec::new()),
            clock,
            uplink_nic: cfg.uplink.clone(),
            uplink: None,
        })
    }

    /// Adds the port bridged to the host NIC (configuration time, once).
    pub fn add_uplink_port(&mut self) -> Result<PortId, SwitchError> {
        let port = self.switch.get_mut().add_uplink_port()?;
        self.uplink = Some(port);
        Ok(port)
    }

    /// The port bridged to the host NIC, if any.
    pub fn uplink_port(&self) -> Option<PortId> {
        self.uplink
    }

    /// The assigned MACs of the guests' ports (for the NIC's filter):
    /// every port but the bridge, clones' ports added at run time included.
    pub fn guest_macs(&self) -> Vec<Mac> {
        let sw = self.switch.lock();
        (0..devices::switch::MAX_PORTS)
            .filter(|p| Some(*p) != self.uplink)
            .filter_map(|p| sw.port_mac(p))
            .collect()
    }

    /// A frame from the wire: switched as if the uplink port sent it.
    pub fn from_wire(&self, frame: &[u8]) {
        if let Some(p) = self.uplink {
            self.send(p, frame);
        }
    }

    /// The oldest guest frame waiting for the wire, into `buf`.
    pub fn to_wire(&self, buf: &mut [u8]) -> Option<usize> {
        self.recv(self.uplink?, buf)
    }

    /// Adds a port for NIC `nic` of `guest` (configuration time only: it
    /// allocates the port's queue).
    pub fn add_port(&mut self, mac: Mac, guest: &str, nic: usize) -> Result<PortId, SwitchError> {
        let port = self.switch.get_mut().add_port(mac)?;
        self.owners.get_mut().push((String::from(guest), nic));
        Ok(port)
    }

    /// Adds a port while guests run (for a clone: a management command, not
    /// a guest's exit). Ports are never removed: a clone's stays detached
    /// after it ends.
    pub fn add_port_now(&self, mac: Mac, guest: &str, nic: usize) -> Result<PortId, SwitchError> {
        let port = self.switch.lock().add_port(mac)?;
        self.owners.lock().push((String::from(guest), nic));
        Ok(port)
    }

    /// Names who is told when frames reach `port` (first call wins).
    pub fn bind(&self, port: PortId, sink: Arc<dyn PortSink>) {
        if let Some(s) = self.sinks.get(port) {
            s.call_once(|| sink);
        }
    }

    pub fn ports(&self) -> usize {
        self.owners.lock().len()
    }

    pub fn anti_spoofing(&self) -> bool {
        self.switch.lock().config().anti_spoofing
    }

    pub fn counters(&self, port: PortId) -> Option<PortCounters> {
        self.switch.lock().counters(port)
    }

    pub fn port_mac(&self, port: PortId) -> Option<Mac> {
        self.switch.lock().port_mac(port)
    }

    /// The VM of the port started (true) or ended (false): a detached port
    /// gets no frames and what it had queued and learned is dropped.
    pub fn set_attached(&self, port: PortId, attached: bool) {
        let _ = self.switch.lock().set_attached(port, attached);
    }

    /// A frame from `port`: switched under the lock, destinations told
    /// after it is dropped.
    pub fn send(&self, port: PortId, frame: &[u8]) {
        let now = (self.clock)();
        let to = self.switch.lock().transmit(port, frame, now).to;
        let mut left = to;
        while left != 0 {
            let i = left.trailing_zeros() as usize;
            left &= left - 1;
            if let Some(s) = self.sinks.get(i).and_then(|s| s.get()) {
                s.frames_arrived();
            }
        }
    }

    pub fn pending(&self, port: PortId) -> bool {
        self.switch.lock().pending(port)
    }

    pub fn recv(&self, port: PortId, buf: &mut [u8]) -> Option<usize> {
        self.switch.lock().receive(port, buf)
    }
}

/// A NIC's end of its network: what its virtio-net model sends to and
/// receives from.
#[derive(Clone, Copy)]
pub struct NetPort {
    pub net: &'static Network,
    pub port: PortId,
}

impl Uplink for NetPort {
    fn send(&mut self, frame: &[u8]) {
        self.net.send(self.port, frame);
    }
    fn pending(&self) -> bool {
        self.net.pending(self.port)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.net.recv(self.port, buf)
    }
}

/// Per guest, per NIC: (network index, port).
pub type GuestPorts = Vec<Vec<(usize, PortId)>>;

/// The manifest's networks with a port for every NIC of `guests`, in guest
/// order and NIC order: `ports[g][n]` is guest g's NIC n.
pub struct Networks {
    pub nets: Vec<Network>,
    pub ports: GuestPorts,
}

/// Builds every network and port (before any guest runs). A NIC whose
/// network is missing or whose port can't be made gets none (and an error
/// in `errors`: guest index, NIC index, why); the manifest parser already
/// refuses unknown networks and duplicate MACs.
pub fn build(
    networks: &[NetworkConfig],
    guests: &[loader::manifest::GuestConfig],
    clock: fn() -> u64,
) -> (Networks, Vec<(usize, usize, AttachError)>) {
    let mut errors = Vec::new();
    let mut nets = Vec::new();
    for cfg in networks {
        match Network::new(cfg, clock) {
            Ok(n) => nets.push(n),
            Err(e) => {
                // Keep indices aligned with the manifest: a network that
                // can't be made has no switch, and its NICs get errors.
                errors.push((usize::MAX, nets.len(), AttachError::Switch(e)));
            }
        }
    }
    let mut ports = Vec::new();
    for (g, guest) in guests.iter().enumerate() {
        let mut mine = Vec::new();
        for (n, nic) in guest.nics.iter().enumerate() {
            let Some(ni) = nets.iter().position(|x| x.name == nic.network) else {
                errors.push((g, n, AttachError::NoNetwork(nic.network.clone())));
                continue;
            };
            let Some(net) = nets.get_mut(ni) else {
                continue;
            };
            match net.add_port(nic.mac.0, &guest.name, n) {
                Ok(p) => mine.push((ni, p)),
                Err(e) => errors.push((g, n, AttachError::Switch(e))),
            }
        }
        ports.push(mine);
    }
    for (i, net) in nets.iter_mut().enumerate() {
        if net.uplink_nic.is_some() {
            if let Err(e) = net.add_uplink_port() {
                errors.push((usize::MAX, i, AttachError::Switch(e)));
            }
        }
    }
    (Networks { nets, ports }, errors)
}

static NETWORKS: Once<&'static [Network]> = Once::new();
static PORTS: Once<GuestPorts> = Once::new();

/// Makes the networks of the manifest live (once, before guests are created).
pub fn install(n: Networks) {
    let nets: &'static [Network] = Box::leak(n.nets.into_boxed_slice());
    NETWORKS.call_once(|| nets);
    PORTS.call_once(|| n.ports);
}

pub fn networks() -> &'static [Network] {
    NETWORKS.get().copied().unwrap_or(&[])
}

/// The ports of guest `g`'s NICs, in NIC order.
pub fn guest_ports(g: usize) -> Vec<NetPort> {
    let nets = networks();
    PORTS
        .get()
        .and_then(|p| p.get(g))
        .map(|v| {
            v.iter()
                .filter_map(|&(ni, port)| {
                    Some(NetPort {
                        net: nets.get(ni)?,
                        port,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Builds and installs the manifest's networks, one `hv: network` line each
/// (and one per NIC that could not be given a port).
pub fn setup(networks: &[NetworkConfig], guests: &[loader::manifest::GuestConfig]) {
    let (n, errors) = build(networks, guests, clock_ns);
    for (g, nic, e) in &errors {
        match guests.get(*g) {
            Some(cfg) => crate::println!("vm {}: nic {nic}: not attached: {e}", cfg.name),
            None => crate::println!("hv: network {nic}: not created: {e}"),
        }
    }
    for net in &n.nets {
        let ports = net.ports();
        crate::println!(
            "hv: network {}: {ports} port{}, anti-spoofing {}{}",
            net.name,
            if ports == 1 { "" } else { "s" },
            if net.anti_spoofing() { "on" } else { "off" },
            match (&net.uplink_nic, net.uplink) {
                (Some(nic), Some(_)) => alloc::format!(", uplink {nic}"),
                _ => String::new(),
            }
        );
    }
    install(n);
    for net in self::networks() {
        if let (Some(nic), Some(p)) = (&net.uplink_nic, net.uplink) {
            net.bind(p, Arc::new(WireSink));
            crate::nic::attach_bridge(net, nic);
        }
    }
}

/// The uplink port's sink: guest frames for the wire wake CPU 0's NIC poll.
struct WireSink;

impl PortSink for WireSink {
    fn frames_arrived(&self) {
        crate::nic::wire_pending();
    }
}

/// The switch's time: the host TSC in ns.
pub fn clock_ns() -> u64 {
    crate::time::tsc_to_ns(arch::regs::rdtsc())
}

/// The `hv:` line of one NIC: its switch port's counters (`rx` is what the
/// switch queued for it, `tx` what it sent into the switch; `dropped`
/// counts every frame lost at the port for any reason, `spoofed` those of
/// them sent from another source MAC).
pub fn report_line(guest: &str, nic: usize, mac: Mac, network: &str, c: &PortCounters) -> String {
    let [a, b, cc, d, e, f] = mac;
    let dropped = c
        .drop_length
        .wrapping_add(c.drop_bad_source)
        .wrapping_add(c.drop_spoofed)
        .wrapping_add(c.drop_same_port)
        .wrapping_add(c.drop_queue_full)
        .wrapping_add(c.drop_port_down);
    alloc::format!(
        "hv: nic {guest}.{nic} ({a:02x}:{b:02x}:{cc:02x}:{d:02x}:{e:02x}:{f:02x}) on {network}: \
         rx {} frames {} bytes, tx {} frames {} bytes, dropped {dropped} \
         (spoofed {}, bad source {}, length {}, queue full {}, port down {}, same port {}), spoofed {}",
        c.rx_frames,
        c.rx_bytes,
        c.tx_frames,
        c.tx_bytes,
        c.drop_spoofed,
        c.drop_bad_source,
        c.drop_length,
        c.drop_queue_full,
        c.drop_port_down,
        c.drop_same_port,
        c.drop_spoofed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use loader::manifest;

    fn clock() -> u64 {
        0
    }

    struct Count(AtomicUsize);
    impl PortSink for Count {
        fn frames_arrived(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn parse(text: &str) -> manifest::Manifest {
        manifest::parse("t.toml", text).unwrap()
    }

    const TWO_NETS: &str = r#"
[[guest]]
name = "a"
memory = "16M"
image = "x"
kind = "elf64"
[[guest.nic]]
network = "lan"
mac = "02:00:00:00:00:0a"

[[guest]]
name = "b"
memory = "16M"
image = "x"
kind = "elf64"
[[guest.nic]]
network = "lan"
mac = "02:00:00:00:00:0b"

[[guest]]
name = "c"
memory = "16M"
image = "x"
kind = "elf64"
[[guest.nic]]
network = "other"
mac = "02:00:00:00:00:0c"
[[guest.nic]]
network = "lan"

[[network]]
name = "lan"
[[network]]
name = "other"
"#;

    const A: Mac = [2, 0, 0, 0, 0, 0x0a];
    const B: Mac = [2, 0, 0, 0, 0, 0x0b];
    const C: Mac = [2, 0, 0, 0, 0, 0x0c];

    fn frame(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(len, 0x5a);
        f
    }

    fn leak(n: Networks) -> (&'static [Network], GuestPorts) {
        (Box::leak(n.nets.into_boxed_slice()), n.ports)
    }

    /// A clone's port, added while the network runs: it gets frames and
    /// signals like a manifest port; a frame from it with another source
    /// MAC (a cloned guest that kept the original's) is spoofed.
    #[test]
    fn a_port_added_at_run_time_switches_and_refuses_spoofed_frames() {
        let m = parse(TWO_NETS);
        let (n, _) = build(&m.networks, &m.guests, clock);
        let (nets, _) = leak(n);
        let lan = &nets[0];
        let before = lan.ports();
        let clone_mac = manifest::derive_mac("a2", 0).0;
        let p = lan.add_port_now(clone_mac, "a2", 0).unwrap();
        assert_eq!(lan.ports(), before + 1);
        assert_eq!(lan.port_mac(p), Some(clone_mac));
        assert_eq!(
            lan.add_port_now(A, "a3", 0),
            Err(SwitchError::DuplicateMac),
            "a MAC taken on the network"
        );
        let seen = Arc::new(Count(AtomicUsize::new(0)));
        lan.bind(p, seen.clone());
        // a (port 0) to the clone.
        lan.send(0, &frame(clone_mac, A, 60));
        assert_eq!(seen.0.load(Ordering::SeqCst), 1);
        let mut buf = [0u8; 1514];
        assert_eq!(lan.recv(p, &mut buf), Some(60));
        // The clone sending from a's MAC: dropped as spoofed (anti-spoofing
        // is on by default), nobody is told.
        let got = Arc::new(Count(AtomicUsize::new(0)));
        lan.bind(1, got.clone());
        lan.send(p, &frame(B, A, 60));
        assert_eq!(got.0.load(Ordering::SeqCst), 0);
        assert!(lan.counters(p).unwrap().drop_spoofed > 0);
        lan.send(p, &frame(B, clone_mac, 60));
        assert_eq!(got.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn ports_follow_the_manifest_and_networks_stay_apart() {
        let m = parse(TWO_NETS);
        let (n, errors) = build(&m.networks, &m.guests, clock);
        assert!(errors.is_empty(), "{errors:?}");
        let (nets, ports) = leak(n);
        assert_eq!(nets.len(), 2);
        assert_eq!((nets[0].ports(), nets[1].ports()), (3, 1));
        // c's second NIC is on lan with a derived MAC.
        assert_eq!(
            ports,
            vec![vec![(0, 0)], vec![(0, 1)], vec![(1, 0), (0, 2)]]
        );
        let derived = manifest::derive_mac("c", 1).0;
        assert_eq!(nets[0].port_mac(2), Some(derived));
        assert_eq!(nets[1].port_mac(0), Some(C));

        let sinks: Vec<Arc<Count>> = (0..4)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        nets[0].bind(0, sinks[0].clone());
        nets[0].bind(1, sinks[1].clone());
        nets[0].bind(2, sinks[2].clone());
        nets[1].bind(0, sinks[3].clone());
        // A broadcast on lan reaches b and c's lan NIC, never c's NIC on other.
        let mut a = NetPort {
            net: &nets[0],
            port: 0,
        };
        a.send(&frame([0xff; 6], A, 60));
        let got: Vec<usize> = sinks.iter().map(|s| s.0.load(Ordering::SeqCst)).collect();
        assert_eq!(got, vec![0, 1, 1, 0]);
        let mut other = NetPort {
            net: &nets[1],
            port: 0,
        };
        assert!(!other.pending());
        let mut buf = [0u8; 1514];
        assert_eq!(other.recv(&mut buf), None);
        let mut b = NetPort {
            net: &nets[0],
            port: 1,
        };
        assert!(b.pending());
        assert_eq!(b.recv(&mut buf), Some(60));
        assert_eq!(&buf[..12], &frame([0xff; 6], A, 60)[..12]);
        // c on other broadcasts: nobody on lan hears it (other has one port).
        other.send(&frame([0xff; 6], C, 60));
        let got: Vec<usize> = sinks.iter().map(|s| s.0.load(Ordering::SeqCst)).collect();
        assert_eq!(got, vec![0, 1, 1, 0]);
        assert_eq!(nets[1].counters(0).unwrap().tx_frames, 1);
        assert!(!a.pending());
    }

    #[test]
    fn an_uplinked_network_bridges_to_its_uplink_port() {
        let text = TWO_NETS.replace(
            "[[network]]\nname = \"lan\"\n",
            "[[network]]\nname = \"lan\"\nuplink = \"nic0\"\n",
        );
        let m = parse(&text);
        let (n, errors) = build(&m.networks, &m.guests, clock);
        assert!(errors.is_empty(), "{errors:?}");
        let (nets, _) = leak(n);
        let lan = &nets[0];
        // Guests keep ports 0..2; the uplink comes after them.
        assert_eq!((lan.ports(), lan.uplink_port()), (3, Some(3)));
        assert_eq!(nets[1].uplink_port(), None);
        assert_eq!(lan.guest_macs().len(), 3);
        assert_eq!(&lan.guest_macs()[..2], &[A, B]);
        let wire = Arc::new(Count(AtomicUsize::new(0)));
        lan.bind(3, wire.clone());
        const W: Mac = [0x52, 0x55, 10, 0, 2, 2];
        // a to a host on the wire: only the uplink hears it.
        NetPort { net: lan, port: 0 }.send(&frame(W, A, 98));
        assert_eq!(wire.0.load(Ordering::SeqCst), 1);
        let mut buf = [0u8; 1514];
        assert_eq!(lan.to_wire(&mut buf), Some(98));
        assert_eq!(lan.to_wire(&mut buf), None);
        assert!(!lan.pending(1) && !lan.pending(2));
        // The answer from the wire reaches a alone.
        lan.from_wire(&frame(A, W, 98));
        assert_eq!(lan.recv(0, &mut buf), Some(98));
        assert!(!lan.pending(1));
        // The wire posing as b: dropped, counted on the uplink.
        lan.from_wire(&frame([0xff; 6], B, 60));
        assert!(!lan.pending(0) && !lan.pending(2));
        assert_eq!(lan.counters(3).unwrap().drop_spoofed, 1);
    }

    #[test]
    fn spoofed_frames_are_dropped_and_do_not_hijack_the_victims_address() {
        let m = parse(TWO_NETS);
        let (n, _) = build(&m.networks, &m.guests, clock);
        let (nets, _) = leak(n);
        let lan = &nets[0];
        let mut a = NetPort { net: lan, port: 0 };
        let mut b = NetPort { net: lan, port: 1 };
        let mut c = NetPort { net: lan, port: 2 };
        a.send(&frame(B, A, 100));
        let mut buf = [0u8; 1514];
        assert_eq!(b.recv(&mut buf), Some(100));
        // b was unknown: flooded to c too.
        assert_eq!(c.recv(&mut buf), Some(100));
        // c claims to be a.
        for _ in 0..5 {
            c.send(&frame([0xff; 6], A, 60));
            c.send(&frame(B, A, 60));
        }
        assert!(!b.pending(), "nothing of the spoofer's reached b");
        assert_eq!(lan.counters(2).unwrap().drop_spoofed, 10);
        assert_eq!(lan.counters(2).unwrap().tx_frames, 0);
        // b's reply to a still goes to a, not to c.
        b.send(&frame(A, B, 80));
        assert_eq!(a.recv(&mut buf), Some(80));
        assert!(!c.pending());
    }

    #[test]
    fn a_flood_is_bounded_and_signals_once_per_drain() {
        let m = parse(TWO_NETS);
        let (n, _) = build(&m.networks, &m.guests, clock);
        let (nets, _) = leak(n);
        let lan = &nets[0];
        // A sink that, like the VM's, signals only on a 0 -> 1 change.
        struct Edge {
            pending: core::sync::atomic::AtomicBool,
            kicks: AtomicUsize,
        }
        impl PortSink for Edge {
            fn frames_arrived(&self) {
                if !self.pending.swap(true, Ordering::SeqCst) {
                    self.kicks.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let e = Arc::new(Edge {
            pending: core::sync::atomic::AtomicBool::new(false),
            kicks: AtomicUsize::new(0),
        });
        lan.bind(1, e.clone());
        let mut a = NetPort { net: lan, port: 0 };
        a.send(&frame([0xff; 6], B, 60)); // spoofed: dropped, no signal
        a.send(&frame(B, A, 60)); // learns a, floods b and c
        for _ in 0..10_000 {
            a.send(&frame(B, A, 1514));
        }
        let q = SwitchConfig::default().queue_frames as u64;
        let cb = lan.counters(1).unwrap();
        assert_eq!(cb.rx_frames, q);
        assert_eq!(cb.drop_queue_full, 10_001 - q);
        assert_eq!(e.kicks.load(Ordering::SeqCst), 1);
        // Oversized and runt frames are dropped at the sender's port.
        a.send(&frame(B, A, 1515));
        a.send(&[0u8; 10]);
        assert_eq!(lan.counters(0).unwrap().drop_length, 2);
        // Detaching b (its VM ended) drops its queue.
        lan.set_attached(1, false);
        assert!(!lan.pending(1));
        let line = report_line("b", 0, B, "lan", &lan.counters(1).unwrap());
        assert!(
            line.starts_with("hv: nic b.0 (02:00:00:00:00:0b) on lan: rx 256 frames"),
            "{line}"
        );
        assert!(
            line.contains(&alloc::format!("dropped {}", 10_001 - q)),
            "{line}"
        );
        assert!(line.ends_with("spoofed 0"), "{line}");
        let la = report_line("a", 0, A, "lan", &lan.counters(0).unwrap());
        assert!(
            la.contains("dropped 3 (spoofed 1, bad source 0, length 2,"),
            "{la}"
        );
        assert!(la.ends_with("spoofed 1"), "{la}");
    }
}
