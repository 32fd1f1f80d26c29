//! Two NIC models on switches, driven through the transport as a driver
//! would, each over its own fake guest RAM.
use super::*;
use crate::state::tests::round_trip_values;
use crate::switch::{PortId, Switch, SwitchConfig, BROADCAST};
use crate::virtio::pci::{
    Budget, Fault, DEVICE_FEATURE, DEVICE_FEATURE_SELECT, DEVICE_OFF, DEVICE_STATUS,
    DRIVER_FEATURE, DRIVER_FEATURE_SELECT, ISR_CONFIG, ISR_OFF, QUEUE_DESC, QUEUE_DEVICE,
    QUEUE_DRIVER, QUEUE_ENABLE, QUEUE_SELECT, QUEUE_SIZE,
};
use crate::virtio::queue::tests::desc;
use crate::virtio::queue::{DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::status::*;
use crate::virtio::testmem::TestMem;
use crate::virtio::VIRTIO_F_VERSION_1;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

const A: Mac = [0x52, 0x54, 0, 0, 0, 0xA];
const B: Mac = [0x52, 0x54, 0, 0, 0, 0xB];
const C: Mac = [0x52, 0x54, 0, 0, 0, 0xC];
const FEATS: u64 = VIRTIO_F_VERSION_1 | F_MAC | F_STATUS | F_MTU;
const RAM: usize = 0x40000;
const SIZE: u16 = 16;

/// A switch port as the device's uplink; `kicked` collects the ports the
/// switch delivered to (what the core would act on).
struct Port {
    sw: Rc<RefCell<Switch>>,
    port: PortId,
    now: Rc<Cell<u64>>,
    kicked: Rc<Cell<u64>>,
}

impl Uplink for Port {
    fn send(&mut self, frame: &[u8]) {
        let d = self
            .sw
            .borrow_mut()
            .transmit(self.port, frame, self.now.get());
        self.kicked.set(self.kicked.get() | d.to);
    }
    fn pending(&self) -> bool {
        self.sw.borrow().pending(self.port)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.sw.borrow_mut().receive(self.port, buf)
    }
}

type Nic = VirtioPci<VirtioNet<Port>>;

fn ring(q: u16) -> (u64, u64, u64) {
    let base = 0x1000 + 0x3000 * u64::from(q);
    (base, base + 0x1000, base + 0x2000)
}
fn rx_buf(slot: u16) -> u64 {
    0x10000 + 0x800 * u64::from(slot)
}
fn tx_buf(slot: u16) -> u64 {
    0x20000 + 0x800 * u64::from(slot)
}

struct Guest {
    mem: TestMem,
    nic: Nic,
    port: PortId,
    avail: [u16; 2],
    seen: [u16; 2],
}

struct Net {
    sw: Rc<RefCell<Switch>>,
    now: Rc<Cell<u64>>,
    kicked: Rc<Cell<u64>>,
}

impl Net {
    fn new(config: SwitchConfig) -> Self {
        Self {
            sw: Rc::new(RefCell::new(Switch::new(config).unwrap())),
            now: Rc::new(Cell::new(0)),
            kicked: Rc::new(Cell::new(0)),
        }
    }
    /// A guest with a NIC on this network, its driver up.
    fn guest(&self, mac: Mac) -> Guest {
        let port = self.sw.borrow_mut().add_port(mac).unwrap();
        let uplink = Port {
            sw: self.sw.clone(),
            port,
            now: self.now.clone(),
            kicked: self.kicked.clone(),
        };
        let mut g = Guest {
            mem: TestMem::new(RAM),
            nic: VirtioPci::new(VirtioNet::new(mac, uplink)),
            port,
            avail: [0; 2],
            seen: [0; 2],
        };
        g.bring_up(FEATS);
        g
    }
    /// Lets every guest whose port got frames drain them, as the core would.
    fn pump(&self, guests: &mut [&mut Guest]) {
        let k = self.kicked.replace(0);
        for g in guests.iter_mut() {
            if k & (1 << g.port) != 0 {
                g.deliver();
            }
        }
    }
}

fn hdr_frame(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; HDR_LEN];
    v.extend_from_slice(frame);
    v
}

fn eth(dst: Mac, src: Mac, len: usize, fill: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len, fill);
    f
}

impl Guest {
    fn w(&mut self, off: u16, size: u8, v: u32) -> Effects {
        self.nic.write(off, size, v, &self.mem)
    }
    fn r(&mut self, off: u16, size: u8) -> u32 {
        self.nic.read(off, size).0
    }
    fn bring_up(&mut self, features: u64) {
        self.w(DEVICE_STATUS, 1, 0);
        self.w(DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE | DRIVER));
        self.w(DRIVER_FEATURE_SELECT, 4, 0);
        self.w(DRIVER_FEATURE, 4, features as u32);
        self.w(DRIVER_FEATURE_SELECT, 4, 1);
        self.w(DRIVER_FEATURE, 4, (features >> 32) as u32);
        self.w(
            DEVICE_STATUS,
            1,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        );
        assert_ne!(self.r(DEVICE_STATUS, 1) as u8 & FEATURES_OK, 0);
        for q in [RXQ, TXQ] {
            let (d, a, u) = ring(q);
            self.w(QUEUE_SELECT, 2, u32::from(q));
            self.w(QUEUE_SIZE, 2, u32::from(SIZE));
            self.w(QUEUE_DESC, 4, d as u32);
            self.w(QUEUE_DRIVER, 4, a as u32);
            self.w(QUEUE_DEVICE, 4, u as u32);
            self.w(QUEUE_ENABLE, 2, 1);
        }
        let all = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        self.w(DEVICE_STATUS, 1, u32::from(all));
        assert_eq!(self.nic.status(), all);
        self.avail = [0; 2];
        self.seen = [0; 2];
    }
    /// Makes descriptor `head` available on queue `q` (no notification).
    fn offer(&mut self, q: u16, head: u16) {
        let (_, a, _) = ring(q);
        let idx = self.avail[usize::from(q)];
        let slot = u64::from(idx % SIZE);
        self.mem.put(a + 4 + 2 * slot, &head.to_le_bytes());
        let idx = idx.wrapping_add(1);
        self.avail[usize::from(q)] = idx;
        self.mem.put(a + 2, &idx.to_le_bytes());
    }
    fn notify(&mut self, q: u16) -> Effects {
        self.w(NOTIFY_OFF, 2, u32::from(q))
    }
    /// Posts `n` receive buffers of `len` bytes and notifies.
    fn post_rx(&mut self, n: u16, len: u32) -> Effects {
        for _ in 0..n {
            let slot = self.avail[0] % SIZE;
            desc(
                &self.mem,
                ring(RXQ).0,
                slot,
                rx_buf(slot),
                len,
                DESC_F_WRITE,
                0,
            );
            self.offer(RXQ, slot);
        }
        self.notify(RXQ)
    }
    /// Queues frames (header first, one descriptor each) without notifying.
    fn queue_tx(&mut self, frame: &[u8]) {
        let slot = self.avail[1] % SIZE;
        let b = hdr_frame(frame);
        self.mem.put(tx_buf(slot), &b);
        desc(
            &self.mem,
            ring(TXQ).0,
            slot,
            tx_buf(slot),
            b.len() as u32,
            0,
            0,
        );
        self.offer(TXQ, slot);
    }
    fn send(&mut self, frame: &[u8]) -> Effects {
        self.queue_tx(frame);
        self.notify(TXQ)
    }
    fn deliver(&mut self) -> Effects {
        deliver(&mut self.nic, &self.mem)
    }
    /// New used elements of queue `q`: (id, len).
    fn used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let (_, _, u) = ring(q);
        let idx = u16::from_le_bytes(self.mem.get(u + 2, 2).try_into().unwrap());
        let mut out = Vec::new();
        while self.seen[usize::from(q)] != idx {
            let s = u64::from(self.seen[usize::from(q)] % SIZE);
            let e = self.mem.get(u + 4 + 8 * s, 8);
            out.push((
                u32::from_le_bytes(e[..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..].try_into().unwrap()),
            ));
            self.seen[usize::from(q)] = self.seen[usize::from(q)].wrapping_add(1);
        }
        out
    }
    /// Frames received since the last call, headers checked.
    fn received(&mut self) -> Vec<Vec<u8>> {
        self.used(RXQ)
            .into_iter()
            .map(|(id, len)| {
                assert!(len as usize >= HDR_LEN, "used length {len}");
                let b = self.mem.get(rx_buf(id as u16), len as usize);
                // flags, gso_type, hdr_len, gso_size, csum_*: 0; num_buffers 1.
                assert_eq!(b[..HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
                b[HDR_LEN..].to_vec()
            })
            .collect()
    }
    fn counters(&self) -> NetCounters {
        self.nic.dev.counters()
    }
    fn broken(&self) -> bool {
        self.nic.status() & DEVICE_NEEDS_RESET != 0
    }
}

#[test]
fn identity_features_and_configuration() {
    let net = Net::new(SwitchConfig::default());
    let mut g = net.guest(A);
    let f = g.nic.pci_function(5);
    assert_eq!(
        f.config.read(0, 4),
        0x1041_1AF4,
        "virtio 1.2 4.1.2: 0x1040 + 1"
    );
    assert_eq!(f.config.read(0x0A, 2), 0x0200, "Ethernet controller");
    g.w(DEVICE_FEATURE_SELECT, 4, 0);
    let lo = g.r(DEVICE_FEATURE, 4);
    assert_eq!(
        u64::from(lo) & (F_MAC | F_STATUS | F_MTU),
        F_MAC | F_STATUS | F_MTU
    );
    // No offloads and no mergeable buffers or control queue offered.
    let refused = 0b111 | 0xFF << 7 | 1 << 15 | 1 << 17;
    assert_eq!(
        lo & refused,
        0,
        "CSUM, GUEST_CSUM, TSO/UFO, MRG_RXBUF, CTRL_VQ"
    );
    let cfg: Vec<u8> = (0..CONFIG_LEN as u16)
        .map(|i| g.r(DEVICE_OFF + i, 1) as u8)
        .collect();
    assert_eq!(cfg[..6], A);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), S_LINK_UP);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1500);
    // Read-only: a driver write changes nothing.
    g.w(DEVICE_OFF, 4, 0);
    assert_eq!(g.r(DEVICE_OFF, 1), 0x52);
    assert_eq!(g.r(DEVICE_OFF + CONFIG_LEN as u16, 2), 0, "past the end");
}

#[test]
fn two_nics_exchange_frames_both_ways() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    a.post_rx(8, 1526);
    b.post_rx(8, 1526);
    assert!(a.received().is_empty(), "buffers wait for frames");
    // A -> B (B unknown: flooded, B is the only other port).
    let f1 = eth(B, A, 1514, 0x11);
    let e = a.send(&f1);
    assert_eq!(e.broke, None);
    assert_eq!(a.used(TXQ), [(0, 0)], "completed, nothing written");
    assert_eq!(e.intx, Some(true), "transmit completion interrupt");
    net.pump(&mut [&mut a, &mut b]);
    assert!(b.nic.intx_asserted(), "receive interrupt");
    assert_eq!(b.r(ISR_OFF, 1), 1);
    assert_eq!(b.received(), [f1]);
    assert_eq!(b.used(RXQ), []);
    // B -> A, then a burst both ways with several frames per notification.
    let f2 = eth(A, B, 60, 0x22);
    b.send(&f2);
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(a.received(), [f2]);
    let burst_a: Vec<Vec<u8>> = (0..5).map(|i| eth(B, A, 100 + i, i as u8)).collect();
    let burst_b: Vec<Vec<u8>> = (0..5).map(|i| eth(A, B, 200 + i, 0x80 | i as u8)).collect();
    for f in &burst_a {
        a.queue_tx(f);
    }
    for f in &burst_b {
        b.queue_tx(f);
    }
    a.notify(TXQ);
    b.notify(TXQ);
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.received(), burst_a);
    assert_eq!(a.received(), burst_b);
    let (ca, cb) = (a.counters(), b.counters());
    assert_eq!(
        (ca.tx_frames, ca.rx_frames, cb.tx_frames, cb.rx_frames),
        (6, 6, 6, 6)
    );
    assert_eq!(cb.rx_bytes, 1514 + (100..105).sum::<u64>());
    let sw = net.sw.borrow();
    let pa = sw.counters(a.port).unwrap();
    assert_eq!((pa.tx_frames, pa.rx_frames), (6, 6));
    // Both learned.
    assert_eq!(sw.lookup(&A, 0), Some(a.port));
    assert_eq!(sw.lookup(&B, 0), Some(b.port));
}

#[test]
fn learning_and_flooding_across_three_nics() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    let mut c = net.guest(C);
    for g in [&mut a, &mut b, &mut c] {
        g.post_rx(8, 1526);
    }
    // Unknown unicast to B: C sees it too.
    a.send(&eth(B, A, 64, 1));
    net.pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(b.received().len(), 1);
    assert_eq!(c.received().len(), 1);
    // B answers A: A is learned, C doesn't see it; now A -> B is direct.
    b.send(&eth(A, B, 64, 2));
    a.send(&eth(B, A, 64, 3));
    net.pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(a.received().len(), 1);
    assert_eq!(b.received().len(), 1);
    assert!(c.received().is_empty());
    // Broadcast: everyone else.
    c.send(&eth(BROADCAST, C, 42, 4));
    net.pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(a.received().len(), 1);
    assert_eq!(b.received().len(), 1);
    assert!(c.received().is_empty(), "not back to the sender");
}

#[test]
fn networks_are_isolated() {
    let lan = Net::new(SwitchConfig::default());
    let dmz = Net::new(SwitchConfig::default());
    let mut a = lan.guest(A);
    let mut b = lan.guest(B);
    let mut c = dmz.guest(C);
    for g in [&mut a, &mut b, &mut c] {
        g.post_rx(8, 1526);
    }
    a.send(&eth(BROADCAST, A, 60, 1));
    a.send(&eth(C, A, 60, 2));
    c.send(&eth(BROADCAST, C, 60, 3));
    c.send(&eth(A, C, 60, 4));
    lan.pump(&mut [&mut a, &mut b]);
    dmz.pump(&mut [&mut c]);
    assert!(c.received().is_empty(), "nothing from the other network");
    assert!(a.received().is_empty());
    assert_eq!(b.received().len(), 2, "A's broadcast and flood stay on lan");
    assert_eq!(dmz.sw.borrow().counters(0).unwrap().tx_frames, 2);
}

#[test]
fn spoofed_frames_are_dropped_and_the_chain_completed() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    b.post_rx(4, 1526);
    // A sends as B and as C.
    a.send(&eth(BROADCAST, B, 60, 1));
    a.send(&eth(B, C, 60, 2));
    net.pump(&mut [&mut a, &mut b]);
    assert!(b.received().is_empty());
    assert_eq!(a.used(TXQ).len(), 2, "chains completed");
    assert!(!a.broken());
    let pa = net.sw.borrow().counters(a.port).unwrap();
    assert_eq!((pa.drop_spoofed, pa.tx_frames), (2, 0));
    assert_eq!(
        net.sw.borrow().lookup(&B, 0),
        None,
        "not learned on A's port"
    );
    // The network's anti_spoofing = false lets them through.
    let open = Net::new(SwitchConfig {
        anti_spoofing: false,
        ..SwitchConfig::default()
    });
    let mut a = open.guest(A);
    let mut b = open.guest(B);
    b.post_rx(4, 1526);
    a.send(&eth(B, C, 60, 2));
    open.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.received().len(), 1);
}

#[test]
fn frames_wait_for_buffers_in_a_bounded_queue() {
    let net = Net::new(SwitchConfig {
        queue_frames: 4,
        ..SwitchConfig::default()
    });
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    // B has posted nothing: the frames wait, then the tail is dropped.
    for i in 0..7u8 {
        a.queue_tx(&eth(B, A, 60, i));
    }
    a.notify(TXQ);
    assert_eq!(a.used(TXQ).len(), 7, "the sender never waits");
    net.pump(&mut [&mut a, &mut b]);
    assert!(b.received().is_empty());
    assert_eq!(net.sw.borrow().queued(b.port), 4);
    let pb = net.sw.borrow().counters(b.port).unwrap();
    assert_eq!((pb.rx_frames, pb.drop_queue_full), (4, 3));
    // Two buffers posted: two frames, the oldest; the rest wait.
    let e = b.post_rx(2, 1526);
    assert_eq!(e.intx, Some(true));
    let got = b.received();
    assert_eq!(got.iter().map(|f| f[20]).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(net.sw.borrow().queued(b.port), 2);
    b.post_rx(8, 1526);
    let got = b.received();
    assert_eq!(got.iter().map(|f| f[20]).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(net.sw.borrow().queued(b.port), 0);
    // The remaining six buffers stay posted.
    assert!(b.received().is_empty());
    assert_eq!(b.nic.queue(RXQ).unwrap().last_avail, 4);
}

#[test]
fn receive_buffers_are_not_consumed_without_frames() {
    let net = Net::new(SwitchConfig::default());
    let mut b = net.guest(B);
    let e = b.post_rx(4, 1526);
    assert_eq!(e.intx, None);
    assert!(!e.work_left);
    assert_eq!(b.deliver(), Effects::default());
    assert!(b.used(RXQ).is_empty());
    assert_eq!(b.nic.queue(RXQ).unwrap().last_avail, 0);
}

#[test]
fn hostile_transmit_chains() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    b.post_rx(8, 1526);
    // Out of bounds: no header, a header only, 13 bytes, 1515 bytes.
    for len in [5usize, 12, 12 + 13, 12 + 1515] {
        let slot = a.avail[1] % SIZE;
        let mut buf = hdr_frame(&eth(B, A, 60, 0));
        buf.resize(len, 0);
        a.mem.put(tx_buf(slot), &buf);
        desc(&a.mem, ring(TXQ).0, slot, tx_buf(slot), len as u32, 0, 0);
        a.offer(TXQ, slot);
    }
    // Offloads asked for: NEEDS_CSUM, a GSO type.
    for (byte, value) in [(0usize, HDR_F_NEEDS_CSUM), (1, 1)] {
        let slot = a.avail[1] % SIZE;
        let mut buf = hdr_frame(&eth(B, A, 60, 0));
        buf[byte] = value;
        a.mem.put(tx_buf(slot), &buf);
        desc(
            &a.mem,
            ring(TXQ).0,
            slot,
            tx_buf(slot),
            buf.len() as u32,
            0,
            0,
        );
        a.offer(TXQ, slot);
    }
    // An unknown flag bit is ignored (5.1.6.2.2): sent.
    let slot = a.avail[1] % SIZE;
    let mut buf = hdr_frame(&eth(B, A, 60, 9));
    buf[0] = 0x40;
    a.mem.put(tx_buf(slot), &buf);
    desc(
        &a.mem,
        ring(TXQ).0,
        slot,
        tx_buf(slot),
        buf.len() as u32,
        0,
        0,
    );
    a.offer(TXQ, slot);
    let e = a.notify(TXQ);
    assert_eq!(e.broke, None);
    assert_eq!(a.used(TXQ).len(), 7, "every chain completed");
    let c = a.counters();
    assert_eq!(
        (c.tx_dropped_length, c.tx_dropped_offload, c.tx_frames),
        (4, 2, 1)
    );
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.received(), [eth(B, A, 60, 9)]);
    // Header and frame split over several descriptors: one frame.
    let f = eth(B, A, 300, 0x33);
    let whole = hdr_frame(&f);
    let at = 0x30000;
    a.mem.put(at, &whole);
    let slot = a.avail[1] % SIZE;
    desc(&a.mem, ring(TXQ).0, slot, at, 5, DESC_F_NEXT, 14);
    desc(&a.mem, ring(TXQ).0, 14, at + 5, 10, DESC_F_NEXT, 15);
    desc(
        &a.mem,
        ring(TXQ).0,
        15,
        at + 15,
        whole.len() as u32 - 15,
        0,
        0,
    );
    a.offer(TXQ, slot);
    a.notify(TXQ);
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.received(), [f]);
    // A device-writable buffer in a transmit chain: malformed.
    let slot = a.avail[1] % SIZE;
    desc(&a.mem, ring(TXQ).0, slot, tx_buf(slot), 74, DESC_F_NEXT, 13);
    desc(&a.mem, ring(TXQ).0, 13, 0x31000, 16, DESC_F_WRITE, 0);
    a.offer(TXQ, slot);
    let e = a.notify(TXQ);
    assert_eq!(e.broke, Some(Fault::Queue(TXQ, QueueError::WrongDirection)));
    assert!(a.broken());
    assert_ne!(a.r(ISR_OFF, 1) & u32::from(ISR_CONFIG), 0);
    // A buffer outside RAM: malformed, nothing read from outside.
    a.bring_up(FEATS);
    desc(&a.mem, ring(TXQ).0, 0, RAM as u64 - 10, 74, 0, 0);
    a.mem.put(ring(TXQ).1 + 2, &[0, 0]);
    a.offer(TXQ, 0);
    let e = a.notify(TXQ);
    assert!(matches!(
        e.broke,
        Some(Fault::Queue(TXQ, QueueError::BufferOutsideRam { .. }))
    ));
    assert_eq!(a.mem.refused.get(), 0);
    // Reset and set up again: it works.
    a.bring_up(FEATS);
    a.mem.put(ring(TXQ).1 + 2, &[0, 0]);
    a.send(&eth(B, A, 60, 7));
    assert!(!a.broken());
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.received(), [eth(B, A, 60, 7)]);
}

#[test]
fn hostile_receive_chains() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    // Too small for header and frame: the frame is dropped, the buffer
    // returned empty; the next buffer, big enough, gets the next frame.
    b.post_rx(1, 12 + 59);
    b.post_rx(1, 1526);
    a.send(&eth(B, A, 60, 1));
    a.send(&eth(B, A, 60, 2));
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.used(RXQ), [(0, 0), (1, 72)]);
    assert_eq!(b.mem.get(rx_buf(1) + 12 + 20, 1), [2]);
    assert_eq!(b.counters().rx_dropped_small_buffer, 1);
    assert!(!b.broken());
    // A frame spread over a chain of buffers (one chain per frame).
    let slot = b.avail[0] % SIZE;
    desc(
        &b.mem,
        ring(RXQ).0,
        slot,
        0x30000,
        10,
        DESC_F_WRITE | DESC_F_NEXT,
        15,
    );
    desc(&b.mem, ring(RXQ).0, 15, 0x30100, 2000, DESC_F_WRITE, 0);
    b.offer(RXQ, slot);
    let f = eth(B, A, 500, 0x44);
    a.send(&f);
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.used(RXQ), [(u32::from(slot), 512)]);
    let mut got = b.mem.get(0x30000, 10);
    got.extend(b.mem.get(0x30100, 502));
    assert_eq!(got, hdr_frame_rx(&f));
    // A device-readable buffer in a receive chain: malformed.
    let slot = b.avail[0] % SIZE;
    desc(&b.mem, ring(RXQ).0, slot, 0x30000, 16, DESC_F_NEXT, 14);
    desc(&b.mem, ring(RXQ).0, 14, 0x30100, 2000, DESC_F_WRITE, 0);
    b.offer(RXQ, slot);
    b.mem.put(0x30000, &[0xEE; 16]);
    a.send(&eth(B, A, 60, 3));
    let e = b.deliver();
    assert_eq!(e.broke, Some(Fault::Queue(RXQ, QueueError::WrongDirection)));
    assert_eq!(b.mem.get(0x30000, 16), [0xEE; 16], "not written");
}

fn hdr_frame_rx(frame: &[u8]) -> Vec<u8> {
    let mut v = hdr_frame(frame);
    v[10] = 1;
    v
}

#[test]
fn budget_bounds_work_per_notification() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    let small = Budget {
        chains: 3,
        bytes: u64::MAX,
    };
    a.nic.set_budget(small);
    b.nic.set_budget(small);
    for i in 0..10u8 {
        a.queue_tx(&eth(B, A, 60, i));
    }
    let e = a.notify(TXQ);
    assert!(e.work_left);
    assert_eq!(a.used(TXQ).len(), 3);
    let mut calls = 0;
    while a.nic.process(&a.mem).work_left {
        calls += 1;
    }
    assert_eq!(calls, 2, "3 + 3 + 3 + 1");
    assert_eq!(a.used(TXQ).len(), 7);
    // Receive: ten frames wait; each call drains three.
    let e = b.post_rx(12, 1526);
    assert!(e.work_left);
    assert_eq!(b.received().len(), 3);
    let mut got = 3;
    let mut calls = 0;
    while b.nic.process(&b.mem).work_left {
        got += b.received().len();
        calls += 1;
        assert!(calls < 10);
    }
    got += b.received().len();
    assert_eq!(got, 10);
    assert_eq!(calls, 2, "3 + 3 + 3 + 1");
    // Budget spent just as the frames ran out: no work is left (buffers
    // alone are not work).
    for i in 0..6u8 {
        a.send(&eth(B, A, 60, i));
    }
    while a.nic.process(&a.mem).work_left {}
    assert!(b.post_rx(SIZE - 2, 1526).work_left);
    assert_eq!(b.received().len(), 3);
    assert!(!b.nic.process(&b.mem).work_left);
    assert_eq!(b.received().len(), 3);
}

#[test]
fn link_down_stops_traffic_and_tells_the_driver() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    b.post_rx(4, 1526);
    let e = set_link(&mut b.nic, false);
    assert_eq!(e.intx, Some(true), "configuration change notification");
    assert_eq!(b.r(ISR_OFF, 1), u32::from(ISR_CONFIG));
    assert_eq!(b.r(DEVICE_OFF + 6, 2), 0, "status: link down");
    a.send(&eth(B, A, 60, 1));
    net.pump(&mut [&mut a, &mut b]);
    assert!(b.received().is_empty(), "nothing received while down");
    b.send(&eth(A, B, 60, 2));
    assert_eq!(b.counters().tx_dropped_link, 1);
    assert_eq!(set_link(&mut b.nic, false), Effects::default());
    set_link(&mut b.nic, true);
    assert_eq!(b.r(DEVICE_OFF + 6, 2), u32::from(S_LINK_UP));
    b.deliver();
    assert_eq!(b.received(), [eth(B, A, 60, 1)]);
}

#[test]
fn state_save_restore_reset() {
    let net = Net::new(SwitchConfig::default());
    let mut a = net.guest(A);
    let mut b = net.guest(B);
    b.post_rx(4, 1526);
    a.send(&eth(B, A, 60, 1));
    a.send(&eth(B, A, 5, 1));
    set_link(&mut a.nic, false);
    net.pump(&mut [&mut a, &mut b]);
    assert_eq!(b.received(), [eth(B, A, 60, 1)]);
    let fresh = VirtioNet::new(
        A,
        Port {
            sw: net.sw.clone(),
            port: a.port,
            now: net.now.clone(),
            kicked: net.kicked.clone(),
        },
    );
    round_trip_values(&mut a.nic.dev, fresh);
    assert!(a.nic.dev.link_up(), "power-on: link up");
    // Another NIC's state is refused.
    let saved = b.nic.dev.save();
    assert_eq!(
        a.nic.dev.restore(&saved),
        Err(StateError::Invalid("NIC MAC"))
    );
    // Device and transport state together: a restored NIC carries on
    // with the queues where they were.
    let (dev_state, transport) = (b.nic.dev.save(), b.nic.save());
    let mut b2 = Guest {
        mem: TestMem::new(RAM),
        nic: VirtioPci::new(VirtioNet::new(
            B,
            Port {
                sw: net.sw.clone(),
                port: b.port,
                now: net.now.clone(),
                kicked: net.kicked.clone(),
            },
        )),
        port: b.port,
        avail: b.avail,
        seen: b.seen,
    };
    b2.mem.put(0, &b.mem.get(0, RAM));
    b2.nic.restore(&transport).unwrap();
    b2.nic.dev.restore(&dev_state).unwrap();
    assert_eq!(b2.nic.dev.counters().rx_frames, 1);
    a.bring_up(FEATS);
    a.send(&eth(B, A, 61, 2));
    net.pump(&mut [&mut a]);
    b2.deliver();
    assert_eq!(b2.received(), [eth(B, A, 61, 2)]);
    assert_eq!(b2.used(RXQ), []);
    assert_eq!(b2.nic.queue(RXQ).unwrap().used_idx, 2);
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_rings_stay_inside_ram_and_bounded() {
    // Random descriptors on both queues of a hostile guest beside a well
    // behaved one: no access leaves its RAM, the witness keeps working, and
    // every notification does bounded work.
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let (mut broke, mut sent) = (0u32, 0u64);
    for round in 0..500 {
        let net = Net::new(SwitchConfig {
            queue_frames: 8,
            ..SwitchConfig::default()
        });
        let mut bad = net.guest(A);
        let mut good = net.guest(B);
        bad.nic.set_budget(Budget {
            chains: 8,
            bytes: 1 << 20,
        });
        good.post_rx(8, 1526);
        for q in [RXQ, TXQ] {
            for i in 0..SIZE {
                let addr = match rng.below(6) {
                    0 => rng.next(),
                    1 => RAM as u64 - rng.below(64),
                    _ => 0x10000 + rng.below(0x28000),
                };
                let len = match rng.below(5) {
                    0 => rng.next() as u32,
                    _ => rng.below(1600) as u32,
                };
                let flags = rng.below(8) as u16;
                let next = rng.below(u64::from(SIZE) + 2) as u16;
                desc(&bad.mem, ring(q).0, i, addr, len, flags, next);
            }
            // Plausible frames where buffers point.
            for _ in 0..16 {
                let at = 0x10000 + rng.below(0x28000);
                bad.mem.put(at, &hdr_frame(&eth(B, A, 60, round as u8)));
            }
            for _ in 0..rng.below(u64::from(SIZE) + 1) {
                let h = rng.below(u64::from(SIZE) + 1) as u16;
                bad.offer(q, h);
            }
        }
        good.send(&eth(A, B, 60, 1));
        let mut e = bad.notify(TXQ);
        let mut calls = 0;
        while e.work_left {
            e = bad.nic.process(&bad.mem);
            calls += 1;
            assert!(calls <= 4, "bounded work per notification");
        }
        bad.deliver();
        net.pump(&mut [&mut good]);
        assert_eq!(bad.mem.refused.get(), 0, "round {round}");
        if bad.broken() {
            broke += 1;
        }
        sent += bad.counters().tx_frames;
        // The witness: a frame to it arrives, whatever the other did.
        assert!(!good.broken());
        let before = good.received().len();
        let mut fresh = net.guest(C);
        fresh.send(&eth(B, C, 60, 5));
        net.pump(&mut [&mut good]);
        let got = good.received();
        assert!(
            got.contains(&eth(B, C, 60, 5)) || before + got.len() >= 8,
            "round {round}"
        );
    }
    assert!(broke > 100 && sent > 20, "broke {broke}, sent {sent}");
}

/// An uplink that owns its frames (the bus holds only `Send` devices).
#[derive(Default)]
struct Inbox {
    waiting: alloc::collections::VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

impl Uplink for Inbox {
    fn send(&mut self, frame: &[u8]) {
        self.sent.push(frame.to_vec());
    }
    fn pending(&self) -> bool {
        !self.waiting.is_empty()
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let f = self.waiting.pop_front()?;
        for (d, &s) in buf.iter_mut().zip(&f) {
            *d = s;
        }
        Some(f.len())
    }
}

/// The core's receive path on an attached NIC: frames queued at its port
/// go into the posted buffer through [`crate::Bus::with_slot`] and raise
/// the function's ISA line until the ISR is read.
#[test]
fn frames_reach_an_attached_nic_through_its_bus_slot_and_raise_its_line() {
    use crate::bus::Bus;
    use crate::ioapic::IoApic;
    use crate::pci::Pci;
    use crate::virtio::pci::{NOTIFY_OFF, QUEUE_DESC};
    use crate::virtio::queue::tests::{desc as qdesc, offer, AVAIL, DESC, USED};
    let mut bus = Bus::new(IoApic::new(1));
    bus.register(alloc::boxed::Box::new(Pci::new())).unwrap();
    let dev = VirtioPci::new(VirtioNet::new(A, Inbox::default()));
    assert_eq!(
        bus.attach_next(alloc::boxed::Box::new(dev), "virtio-net"),
        Ok(0)
    );
    let mem = TestMem::new(RAM);
    // I/O decoding on (command register of 00:03.0), then the driver's set-up.
    bus.io_write(0xCF8, 4, 0x8000_0000 | 3 << 11 | 4, 0);
    bus.io_write(0xCFC, 2, 1, 0);
    let b = 0xC000u16;
    let w = |bus: &mut Bus, off: u16, size: u8, v: u32| bus.io_write_mem(b + off, size, v, 0, &mem);
    w(&mut bus, DEVICE_STATUS, 1, u32::from(ACKNOWLEDGE | DRIVER));
    w(&mut bus, DRIVER_FEATURE_SELECT, 4, 0);
    w(
        &mut bus,
        DRIVER_FEATURE,
        4,
        (F_MAC | F_STATUS | F_MTU) as u32,
    );
    w(&mut bus, DRIVER_FEATURE_SELECT, 4, 1);
    w(
        &mut bus,
        DRIVER_FEATURE,
        4,
        (VIRTIO_F_VERSION_1 >> 32) as u32,
    );
    w(
        &mut bus,
        DEVICE_STATUS,
        1,
        u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
    );
    w(&mut bus, QUEUE_SELECT, 2, u32::from(RXQ));
    w(&mut bus, QUEUE_SIZE, 2, 8);
    w(&mut bus, QUEUE_DESC, 4, DESC as u32);
    w(&mut bus, QUEUE_DRIVER, 4, AVAIL as u32);
    w(&mut bus, QUEUE_DEVICE, 4, USED as u32);
    w(&mut bus, QUEUE_ENABLE, 2, 1);
    let ok = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    w(&mut bus, DEVICE_STATUS, 1, u32::from(ok));
    // The MAC in the device configuration.
    let mac: Vec<u8> = (0..6)
        .map(|i| bus.io_read(b + DEVICE_OFF + i, 1, 0).value as u8)
        .collect();
    assert_eq!(mac, A);
    // One receive buffer posted; nothing waits, so the notify keeps it.
    qdesc(&mem, DESC, 0, 0x10000, 2048, DESC_F_WRITE, 0);
    offer(&mem, 8, &[0]);
    w(&mut bus, NOTIFY_OFF, 2, u32::from(RXQ));
    assert_eq!(bus.lines() & (1 << 11), 0);
    // A frame reaches the port: the core's drain.
    let f = eth(A, B, 100, 7);
    bus.slot_kick(0, 0, &mem, |t, m| {
        let d = t
            .as_any_mut()
            .downcast_mut::<VirtioPci<VirtioNet<Inbox>>>()
            .unwrap();
        d.dev.uplink_mut().waiting.push_back(f.clone());
        deliver(d, m)
    })
    .unwrap();
    assert_eq!(mem.get(0x10000 + HDR_LEN as u64, 100), f);
    assert_ne!(bus.lines() & (1 << 11), 0, "INTx high on IRQ 11");
    assert_eq!(bus.io_read(b + ISR_OFF, 1, 0).value, 1);
    assert_eq!(bus.lines() & (1 << 11), 0, "reading the ISR lowers it");
    // No such slot.
    assert!(bus
        .slot_kick(1, 0, &mem, |_, _| Default::default())
        .is_none());
}
