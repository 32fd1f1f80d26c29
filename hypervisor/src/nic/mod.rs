//! The host's own network: PCI enumeration, a driver for the physical NIC
//! (the uplink) and the hypervisor's TCP/IP endpoint on it. Polled from CPU
//! 0's scheduler loop; no interrupts. Guests never see the NIC: their PCI
//! buses are emulated (hv-devices) and nothing passes host functions through.
pub mod e1000;
pub mod endpoint;
pub mod pci;

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the core needs of a NIC driver; one more driver (virtio-net for
/// nested use, igb) is one more file implementing this.
pub trait NicDriver: Send {
    fn name(&self) -> &'static str;
    fn mac(&self) -> [u8; 6];
    fn link_up(&mut self) -> bool;
    /// A transmit slot is free.
    fn can_send(&mut self) -> bool;
    /// Queues one Ethernet frame (without CRC) for transmission.
    fn send(&mut self, frame: &[u8]) -> Result<(), SendError>;
    /// The next received frame copied into `out`, or None if none waits.
    fn recv(&mut self, out: &mut [u8]) -> Option<usize>;
    fn counters(&mut self) -> Counters;
    /// Receive filter: the NIC's own MAC plus `extra` (a bridged network's
    /// guests), unicast promiscuous when they don't fit or `all_unicast`;
    /// `all_multicast` passes every multicast frame.
    fn set_rx_filter(
        &mut self,
        extra: &[[u8; 6]],
        all_unicast: bool,
        all_multicast: bool,
    ) -> RxFilter;
}

/// What [`NicDriver::set_rx_filter`] programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFilter {
    /// Exact unicast addresses in the filter (the NIC's own included).
    pub addresses: usize,
    pub unicast_promiscuous: bool,
    pub multicast_promiscuous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Every transmit descriptor is still the device's.
    Busy,
    /// Shorter than an Ethernet header or longer than the MTU allows.
    BadLength,
}

/// Driver counters and the device's own statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub hw_rx_good: u64,
    pub hw_tx_good: u64,
    pub hw_rx_missed: u64,
    pub hw_rx_crc_errors: u64,
}

/// The NIC and the endpoint on it.
pub struct Uplink {
    pub nic: Box<dyn NicDriver>,
    pub endpoint: endpoint::Endpoint,
    /// The link state last reported.
    pub link: bool,
    /// The network bridged to this NIC (`uplink = "nic0"`).
    pub bridge: Option<Bridge>,
}

/// A network bridged to the NIC, and what crossed the bridge.
pub struct Bridge {
    pub net: &'static crate::net::Network,
    /// Guest frames put on the wire.
    pub to_wire_frames: u64,
    pub to_wire_bytes: u64,
    /// Guest frames dropped because the link was down.
    pub dropped_link_down: u64,
}

/// Guest frames for the wire per [`poll`] at most (the other way,
/// [`endpoint::RX_BUDGET`]).
pub const TX_BUDGET: usize = 64;

static UPLINK: spin::Mutex<Option<Uplink>> = spin::Mutex::new(None);
/// The TSC value before which [`poll`] does nothing.
static NEXT_POLL: AtomicU64 = AtomicU64::new(0);
/// Guest frames wait for the wire: the next [`poll`] runs at once.
static WIRE_PENDING: AtomicBool = AtomicBool::new(false);
/// A network is bridged to the NIC: an idle CPU 0 polls every millisecond.
static BRIDGED: AtomicBool = AtomicBool::new(false);

/// How often the uplink is polled at most (1 ms).
fn poll_interval_tsc() -> u64 {
    crate::time::us_to_tsc(1000)
}

pub struct MacFmt(pub [u8; 6]);

impl core::fmt::Display for MacFmt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Is `f` a NIC this hypervisor drives?
pub fn supported(f: &pci::Function) -> bool {
    f.vendor == 0x8086 && e1000::DEVICE_IDS.contains(&f.device)
}

/// Lists the host's PCI functions and brings up the first supported NIC.
/// Call on the bring-up CPU before the others start (it owns the PCI
/// configuration ports and the page tables meanwhile).
pub fn init() {
    let cs = pci::PortIo;
    let functions = pci::enumerate(&cs);
    for f in &functions {
        crate::println!(
            "hv: pci: {} {:04x}:{:04x} class {:02x}.{:02x}.{:02x}{}",
            f.at,
            f.vendor,
            f.device,
            f.class[0],
            f.class[1],
            f.class[2],
            if supported(f) { " (uplink NIC)" } else { "" }
        );
    }
    let Some(f) = functions.iter().find(|f| supported(f)) else {
        crate::println!(
            "hv: nic: no supported NIC among {} PCI functions: no uplink",
            functions.len()
        );
        return;
    };
    match bring_up(&cs, f) {
        Ok(mut nic) => {
            // Auto-negotiation can take a moment after CTRL.SLU: up to 1 s.
            let mut link = nic.link_up();
            for _ in 0..1000 {
                if link {
                    break;
                }
                crate::time::delay_us(1000);
                link = nic.link_up();
            }
            crate::println!(
                "hv: nic: {} {} mac {}, link {}",
                f.at,
                nic.name(),
                MacFmt(nic.mac()),
                if link { "up" } else { "down" }
            );
            let endpoint = endpoint::Endpoint::new(&mut *nic, now_tsc());
            *UPLINK.lock() = Some(Uplink {
                nic,
                endpoint,
                link,
                bridge: None,
            });
        }
        Err(e) => crate::println!("hv: nic: {} not used: {e}: no uplink", f.at),
    }
}

fn now_tsc() -> u64 {
    arch::regs::rdtsc()
}

fn bring_up(
    cs: &dyn pci::ConfigSpace,
    f: &pci::Function,
) -> Result<Box<dyn NicDriver>, alloc::string::String> {
    let pci::Bar::Mem { addr, .. } = f.bar(cs, 0) else {
        return Err("BAR0 is not an assigned memory BAR".into());
    };
    let size = f.mem_bar_size(cs, 0);
    if size < 0x2_0000 {
        return Err(alloc::format!("BAR0 decodes {size:#x} bytes, not 128 KiB"));
    }
    if !crate::paging::set_uncached(addr, size) {
        return Err(alloc::format!(
            "BAR0 at {addr:#x} lies outside the hypervisor's map"
        ));
    }
    f.enable_mmio_and_dma(cs);
    // SAFETY: BAR0 of the 8254x found above, 128 KiB, now identity mapped
    // uncached; nothing else in the hypervisor touches it and no guest can
    // (it is not in any EPT).
    let regs = unsafe { e1000::Mmio::new(addr) };
    match e1000::E1000::init(regs, &crate::time::delay_us) {
        Ok(n) => Ok(Box::new(n)),
        Err(e) => Err(alloc::format!("{e}")),
    }
}

/// Runs the endpoint: frames in, timers, frames out. Called by CPU 0's
/// scheduler loop; does nothing more than every millisecond, never waits.
pub fn poll(now: u64) {
    if now < NEXT_POLL.load(Ordering::Relaxed) && !WIRE_PENDING.load(Ordering::Acquire) {
        return;
    }
    NEXT_POLL.store(now + poll_interval_tsc(), Ordering::Relaxed);
    let Some(mut guard) = UPLINK.try_lock() else {
        return;
    };
    let Some(up) = guard.as_mut() else {
        // No NIC: never look again.
        NEXT_POLL.store(u64::MAX, Ordering::Relaxed);
        return;
    };
    let link = up.nic.link_up();
    if link != up.link {
        up.link = link;
        crate::println!("hv: nic: link {}", if link { "up" } else { "down" });
    }
    match up.bridge.as_ref().map(|b| b.net) {
        Some(net) => {
            let from_wire = |f: &[u8]| net.from_wire(f);
            up.endpoint
                .poll_bridged(&mut *up.nic, now, Some(&from_wire));
        }
        None => up.endpoint.poll(&mut *up.nic, now),
    }
    if let Some(b) = up.bridge.as_mut() {
        bridge_to_wire(b, &mut *up.nic, link);
    }
    let api = crate::manage::api::poll(up.endpoint.sockets(), now);
    let nbd = crate::nbd::poll(&mut up.endpoint, now);
    if api || nbd {
        // The API's answers and the NBD requests go out now rather than
        // at the next poll.
        up.endpoint.poll(&mut *up.nic, now);
    }
}

/// Moves at most [`TX_BUDGET`] guest frames from the bridge's switch port
/// to the NIC. A full transmit ring leaves them queued (the port's queue
/// is bounded: what overflows it is counted there); with the link down
/// they are dropped and counted.
fn bridge_to_wire(b: &mut Bridge, nic: &mut dyn NicDriver, link: bool) {
    WIRE_PENDING.store(false, Ordering::Release);
    let mut buf = [0u8; e1000::MAX_FRAME];
    for _ in 0..TX_BUDGET {
        if link && !nic.can_send() {
            // Back when the ring has room: the next loop of CPU 0.
            WIRE_PENDING.store(true, Ordering::Release);
            return;
        }
        let Some(n) = b.net.to_wire(&mut buf) else {
            return;
        };
        let Some(frame) = buf.get(..n) else { continue };
        if !link {
            b.dropped_link_down = b.dropped_link_down.wrapping_add(1);
            continue;
        }
        if nic.send(frame).is_ok() {
            b.to_wire_frames = b.to_wire_frames.wrapping_add(1);
            b.to_wire_bytes = b.to_wire_bytes.wrapping_add(n as u64);
        }
    }
    // The budget ran out with frames left: again at the next loop.
    if b.net.uplink_port().is_some_and(|p| b.net.pending(p)) {
        WIRE_PENDING.store(true, Ordering::Release);
    }
}

/// Guest frames were queued for the wire: CPU 0 polls the NIC at once
/// (called by the uplink port's sink, with no lock held; never waits).
pub fn wire_pending() {
    if !WIRE_PENDING.swap(true, Ordering::AcqRel) {
        crate::sched::wake_poller();
    }
}

/// Whether a network is bridged to the NIC.
pub fn bridged() -> bool {
    BRIDGED.load(Ordering::Relaxed)
}

/// Bridges `net` to the NIC the manifest named (`nic0`, the only one):
/// programs the receive filter with the guests' MACs. One `hv: network`
/// line says what was done.
pub fn attach_bridge(net: &'static crate::net::Network, nic_name: &str) {
    let mut guard = UPLINK.lock();
    let Some(up) = guard.as_mut() else {
        crate::println!(
            "hv: network {}: uplink {nic_name}: no supported NIC, not bridged",
            net.name
        );
        return;
    };
    let macs = net.guest_macs();
    // Without anti-spoofing a guest may send from any MAC: replies to it
    // must pass the filter too.
    let f = up.nic.set_rx_filter(&macs, !net.anti_spoofing(), true);
    crate::println!(
        "hv: network {}: uplink {nic_name} ({} {}): receive filter {} address{}{}{}",
        net.name,
        up.nic.name(),
        MacFmt(up.nic.mac()),
        f.addresses,
        if f.addresses == 1 { "" } else { "es" },
        if f.unicast_promiscuous {
            ", unicast promiscuous"
        } else {
            ""
        },
        if f.multicast_promiscuous {
            ", multicast promiscuous"
        } else {
            ""
        },
    );
    up.bridge = Some(Bridge {
        net,
        to_wire_frames: 0,
        to_wire_bytes: 0,
        dropped_link_down: 0,
    });
    BRIDGED.store(true, Ordering::Relaxed);
}

/// Runs `f` on the uplink; None without one. For the bring-up CPU before
/// the scheduler runs (an NBD disk's first connection).
pub fn with_uplink<R>(f: impl FnOnce(&mut Uplink) -> R) -> Option<R> {
    UPLINK.lock().as_mut().map(f)
}

/// Whether the host has an uplink NIC with the endpoint on it.
pub fn present() -> bool {
    UPLINK.lock().is_some()
}

/// One line of the uplink's counters (for the summary); nothing without one.
pub fn report() {
    let mut guard = UPLINK.lock();
    let Some(up) = guard.as_mut() else { return };
    let c = up.nic.counters();
    crate::println!(
        "hv: nic: rx {} frames ({} bytes), tx {} frames ({} bytes), dropped rx {} tx {}; device: good rx {} tx {}, missed {}, crc errors {}",
        c.rx_frames,
        c.rx_bytes,
        c.tx_frames,
        c.tx_bytes,
        c.rx_dropped,
        c.tx_dropped,
        c.hw_rx_good,
        c.hw_tx_good,
        c.hw_rx_missed,
        c.hw_rx_crc_errors
    );
    if let Some(b) = up.bridge.as_ref() {
        let Some(p) = b.net.uplink_port() else { return };
        let s = b.net.counters(p).unwrap_or_default();
        crate::println!("{}", bridge_line(&b.net.name, b, &s));
    }
}

/// The end-of-run line of a bridged network: on the uplink port, `tx` is
/// what the wire sent into the switch and `rx` what the switch queued for
/// the wire.
pub fn bridge_line(
    net: &str,
    b: &Bridge,
    s: &devices::switch::PortCounters,
) -> alloc::string::String {
    alloc::format!(
        "hv: network {net}: uplink: to wire {} frames {} bytes, from wire {} frames {} bytes; \
         dropped to wire: link down {}, queue full {}; from wire: spoofed {}, unknown {}, \
         bad source {}, length {}",
        b.to_wire_frames,
        b.to_wire_bytes,
        s.tx_frames,
        s.tx_bytes,
        b.dropped_link_down,
        s.drop_queue_full,
        s.drop_spoofed,
        s.drop_unknown,
        s.drop_bad_source,
        s.drop_length,
    )
}

/// The manifest's `[hypervisor] address` (and `gateway`): the endpoint
/// uses it instead of DHCP. Call before the scheduler runs.
pub fn set_static(address: loader::manifest::Ipv4Prefix, gateway: Option<[u8; 4]>) {
    use smoltcp::wire::{Ipv4Address, Ipv4Cidr};
    let mut guard = UPLINK.lock();
    let Some(up) = guard.as_mut() else {
        crate::println!("hv: endpoint: the manifest's address is not used (no NIC)");
        return;
    };
    up.endpoint.set_static(
        Ipv4Cidr::new(Ipv4Address::from(address.addr), address.prefix),
        gateway.map(Ipv4Address::from),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A NIC whose transmit ring holds `room` frames until the test empties it.
    struct Ring {
        room: usize,
        sent: Vec<Vec<u8>>,
    }

    impl NicDriver for Ring {
        fn name(&self) -> &'static str {
            "ring"
        }
        fn mac(&self) -> [u8; 6] {
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        }
        fn link_up(&mut self) -> bool {
            true
        }
        fn can_send(&mut self) -> bool {
            self.sent.len() < self.room
        }
        fn send(&mut self, frame: &[u8]) -> Result<(), SendError> {
            if !self.can_send() {
                return Err(SendError::Busy);
            }
            self.sent.push(frame.to_vec());
            Ok(())
        }
        fn recv(&mut self, _: &mut [u8]) -> Option<usize> {
            None
        }
        fn counters(&mut self) -> Counters {
            Counters::default()
        }
        fn set_rx_filter(&mut self, extra: &[[u8; 6]], uni: bool, multi: bool) -> RxFilter {
            RxFilter {
                addresses: 1 + extra.len(),
                unicast_promiscuous: uni,
                multicast_promiscuous: multi,
            }
        }
    }

    fn clock() -> u64 {
        0
    }

    #[test]
    fn guest_frames_reach_the_wire_bounded_kept_when_the_ring_is_full_dropped_when_down() {
        let m = loader::manifest::parse(
            "t.toml",
            "[[guest]]\nname = \"a\"\nmemory = \"16M\"\nimage = \"x\"\nkind = \"elf64\"\n\
             [[guest.nic]]\nnetwork = \"wan\"\nmac = \"02:00:00:00:00:0a\"\n\
             [[network]]\nname = \"wan\"\nuplink = \"nic0\"\n",
        )
        .unwrap();
        let (n, errors) = crate::net::build(&m.networks, &m.guests, clock);
        assert!(errors.is_empty());
        let net: &'static crate::net::Network =
            Box::leak(Box::new(n.nets.into_iter().next().unwrap()));
        let up = net.uplink_port().unwrap();
        let a = [2, 0, 0, 0, 0, 0x0a];
        let frame = |i: u8| {
            let mut f = Vec::from([0xffu8; 6]);
            f.extend_from_slice(&a);
            f.extend_from_slice(&[0x08, 0x00]);
            f.resize(60, i);
            f
        };
        for i in 0..100u8 {
            net.send(0, &frame(i));
        }
        let mut b = Bridge {
            net,
            to_wire_frames: 0,
            to_wire_bytes: 0,
            dropped_link_down: 0,
        };
        // A ring of 10: 10 go out in order, the rest stay queued.
        let mut nic = Ring {
            room: 10,
            sent: Vec::new(),
        };
        bridge_to_wire(&mut b, &mut nic, true);
        assert_eq!(nic.sent.len(), 10);
        assert_eq!(nic.sent[3], frame(3));
        assert_eq!(b.to_wire_frames, 10);
        assert!(WIRE_PENDING.load(Ordering::Acquire));
        // Room again: at most TX_BUDGET per poll.
        nic.room = usize::MAX;
        bridge_to_wire(&mut b, &mut nic, true);
        assert_eq!(nic.sent.len(), 10 + TX_BUDGET);
        assert_eq!(nic.sent[10], frame(10));
        assert!(net.pending(up));
        // Link down: the rest (26) dropped and counted.
        bridge_to_wire(&mut b, &mut nic, false);
        assert_eq!(b.dropped_link_down, 100 - 10 - TX_BUDGET as u64);
        assert!(!net.pending(up));
        assert_eq!(nic.sent.len(), 10 + TX_BUDGET);
        let line = bridge_line("wan", &b, &net.counters(up).unwrap());
        assert!(
            line.starts_with(
                "hv: network wan: uplink: to wire 74 frames 4440 bytes, from wire 0 frames"
            ),
            "{line}"
        );
        assert!(line.contains("link down 26, queue full 0"), "{line}");
    }
}
