//! An L2 learning switch: one [`Switch`] per `[[network]]` of the
//! manifest, so ports of different networks share nothing (no frame, no
//! table entry can cross).
//!
//! Frames are owned copies in bounded, preallocated per-port queues: a
//! transmit copies the frame into the destination ports' queues (drop-tail
//! when full, counted) and returns at once; each destination device drains
//! its own queue when its VM runs and raises its interrupt then. Nothing
//! here waits on another VM or allocates after a port was added, and every
//! operation is bounded (a port count, a fixed table set), so the core can
//! run it under a per-network lock from any vCPU's exit.
//!
//! Learning: source MACs are learned into a set-associative table (a fixed
//! number of sets of [`WAYS`] entries, aged by the caller's clock). Unicast
//! to a learned MAC goes to its port; unknown unicast, broadcast and
//! multicast are flooded to every other attached port. Anti-spoofing (on
//! by default, the manifest's `anti_spoofing`) drops frames whose source
//! MAC is not the sending port's assigned MAC. Without it, a guest that
//! sends from many addresses can only evict entries of its own network's
//! table (the set is bounded), which makes that network flood more.
//!
//! Uplink: a network bridged to the host NIC has one more port, the
//! uplink ([`Switch::add_uplink_port`]), which has no MAC of its own. Its
//! source MACs (the wire's hosts) are learned like any other, except that
//! the wire may never use a guest port's assigned MAC or one learned on a
//! guest port (dropped, counted as spoofed on the uplink). Unicast from the
//! wire goes only to a guest port that has (or learned) the destination,
//! never flooded (`drop_unknown`); a guest's unicast for a MAC not on the
//! switch goes to the uplink alone.
use crate::state::{check_version, DeviceState, State, StateError};
use alloc::vec::Vec;

/// An Ethernet header (destination, source, EtherType).
pub const MIN_FRAME: usize = 14;
/// 1500 bytes of payload plus the header (no FCS, no VLAN tag).
pub const MAX_FRAME: usize = 1514;
/// Ports per network (the delivery set is a 64-bit mask).
pub const MAX_PORTS: usize = 64;
/// Entries per table set.
pub const WAYS: usize = 4;

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xFF; 6];

/// The group (multicast/broadcast) bit: bit 0 of the first byte.
pub fn is_multicast(mac: &Mac) -> bool {
    mac.first().is_some_and(|b| b & 1 != 0)
}

/// An address a NIC may have: unicast and not all zeros.
pub fn is_valid_unicast(mac: &Mac) -> bool {
    !is_multicast(mac) && *mac != [0; 6]
}

/// A port's index in its switch.
pub type PortId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Drop frames whose source MAC is not the sending port's.
    pub anti_spoofing: bool,
    /// A learned entry not refreshed for this long is forgotten.
    pub age_ns: u64,
    /// Table sets (a power of two); [`WAYS`] entries each.
    pub table_sets: usize,
    /// Frames each port's receive queue holds.
    pub queue_frames: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            anti_spoofing: true,
            // IEEE 802.1D's default ageing time, 300 s.
            age_ns: 300_000_000_000,
            table_sets: 256,
            queue_frames: 256,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchError {
    /// [`MAX_PORTS`] ports already.
    TooManyPorts,
    /// The port's MAC is multicast or zero.
    BadMac,
    /// Another port has this MAC.
    DuplicateMac,
    /// The queue could not be allocated.
    NoMemory,
    /// No such port.
    NoPort,
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than [`MIN_FRAME`] or longer than [`MAX_FRAME`].
    Length,
    /// A multicast or zero source MAC.
    BadSource,
    /// Anti-spoofing: not the sending port's MAC.
    Spoofed,
    /// The sending port is detached.
    PortDown,
    /// The destination is on the sending port itself.
    SamePort,
    /// Unicast from the uplink for no port of this switch.
    Unknown,
}

/// Per-port counters: `tx` is what the port sent into the switch, `rx`
/// what the switch queued for it; drops by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub drop_length: u64,
    pub drop_bad_source: u64,
    pub drop_spoofed: u64,
    pub drop_same_port: u64,
    /// Frames for this port dropped because its queue was full.
    pub drop_queue_full: u64,
    /// Frames for this port dropped because it was detached.
    pub drop_port_down: u64,
    /// Uplink only: unicast from the wire for no port of the switch.
    pub drop_unknown: u64,
}

fn inc(c: &mut u64) {
    *c = c.wrapping_add(1);
}
fn add(c: &mut u64, n: usize) {
    *c = c.wrapping_add(n as u64);
}

/// What a transmit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Ports that got the frame queued (bit per port): the core tells
    /// their devices to drain.
    pub to: u64,
    /// Set when the frame went nowhere for this reason (drops at full
    /// destination queues are counted on those ports, not here).
    pub dropped: Option<DropReason>,
}

/// A bounded FIFO of frames in one preallocated buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FrameQueue {
    data: Vec<u8>,
    lens: Vec<u16>,
    head: usize,
    len: usize,
}

impl FrameQueue {
    fn new(frames: usize) -> Result<Self, SwitchError> {
        let bytes = frames.checked_mul(MAX_FRAME).ok_or(SwitchError::NoMemory)?;
        let mut data = Vec::new();
        data.try_reserve_exact(bytes)
            .map_err(|_| SwitchError::NoMemory)?;
        data.resize(bytes, 0);
        let mut lens = Vec::new();
        lens.try_reserve_exact(frames)
            .map_err(|_| SwitchError::NoMemory)?;
        lens.resize(frames, 0);
        Ok(Self {
            data,
            lens,
            head: 0,
            len: 0,
        })
    }

    fn capacity(&self) -> usize {
        self.lens.len()
    }

    fn slot(&self, i: usize) -> usize {
        // capacity > 0 whenever a slot is asked for.
        self.head
            .wrapping_add(i)
            .checked_rem(self.capacity())
            .unwrap_or(0)
    }

    fn bytes(&mut self, slot: usize) -> Option<&mut [u8]> {
        let at = slot.checked_mul(MAX_FRAME)?;
        self.data.get_mut(at..at.checked_add(MAX_FRAME)?)
    }

    fn push(&mut self, frame: &[u8]) -> bool {
        if self.len >= self.capacity() || frame.len() > MAX_FRAME {
            return false;
        }
        let slot = self.slot(self.len);
        let Some(dst) = self.bytes(slot).and_then(|b| b.get_mut(..frame.len())) else {
            return false;
        };
        dst.copy_from_slice(frame);
        if let Some(l) = self.lens.get_mut(slot) {
            *l = frame.len() as u16;
        }
        self.len = self.len.saturating_add(1);
        true
    }

    fn front_len(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        self.lens.get(self.head).map(|&l| usize::from(l))
    }

    /// Copies the oldest frame into `buf` (as much as fits) and drops it;
    /// the frame's length.
    fn pop_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        let n = self.front_len()?;
        let head = self.head;
        if let Some(src) = self.bytes(head).and_then(|b| b.get(..n)) {
            for (d, &s) in buf.iter_mut().zip(src) {
                *d = s;
            }
        }
        self.head = self.slot(1);
        self.len = self.len.saturating_sub(1);
        Some(n)
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    fn frames(&self) -> Vec<Vec<u8>> {
        (0..self.len)
            .filter_map(|i| {
                let slot = self.slot(i);
                let n = usize::from(*self.lens.get(slot)?);
                let at = slot.checked_mul(MAX_FRAME)?;
                Some(self.data.get(at..at.checked_add(n)?)?.to_vec())
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Port {
    mac: Mac,
    /// The uplink port (no MAC of its own: `mac` is zero).
    uplink: bool,
    attached: bool,
    queue: FrameQueue,
    counters: PortCounters,
}

/// One learned address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacEntry {
    pub valid: bool,
    pub mac: Mac,
    pub port: u8,
    pub seen_ns: u64,
}

pub struct Switch {
    config: SwitchConfig,
    ports: Vec<Port>,
    /// `table_sets * WAYS` entries, set by set.
    table: Vec<MacEntry>,
    set_mask: usize,
}

fn hash(mac: &Mac) -> u64 {
    let [a, b, c, d, e, f] = *mac;
    u64::from_le_bytes([a, b, c, d, e, f, 0, 0]).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}

impl Switch {
    /// `config.table_sets` is rounded up to a power of two (at least 1),
    /// `queue_frames` to at least 1.
    pub fn new(mut config: SwitchConfig) -> Result<Self, SwitchError> {
        config.table_sets = config.table_sets.max(1).next_power_of_two();
        config.queue_frames = config.queue_frames.max(1);
        let entries = config
            .table_sets
            .checked_mul(WAYS)
            .ok_or(SwitchError::NoMemory)?;
        let mut table = Vec::new();
        table
            .try_reserve_exact(entries)
            .map_err(|_| SwitchError::NoMemory)?;
        table.resize(entries, MacEntry::default());
        Ok(Self {
            set_mask: config.table_sets.wrapping_sub(1),
            config,
            ports: Vec::new(),
            table,
        })
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// Adds an attached port with its assigned MAC (allocates its queue:
    /// done at configuration time, never on a guest's exit).
    pub fn add_port(&mut self, mac: Mac) -> Result<PortId, SwitchError> {
        if self.ports.len() >= MAX_PORTS {
            return Err(SwitchError::TooManyPorts);
        }
        if !is_valid_unicast(&mac) {
            return Err(SwitchError::BadMac);
        }
        if self.ports.iter().any(|p| p.mac == mac) {
            return Err(SwitchError::DuplicateMac);
        }
        let queue = FrameQueue::new(self.config.queue_frames)?;
        self.ports.push(Port {
            mac,
            uplink: false,
            attached: true,
            queue,
            counters: PortCounters::default(),
        });
        Ok(self.ports.len().saturating_sub(1))
    }

    /// Adds the uplink port (one per switch: the bridge to the host NIC).
    pub fn add_uplink_port(&mut self) -> Result<PortId, SwitchError> {
        if self.ports.len() >= MAX_PORTS {
            return Err(SwitchError::TooManyPorts);
        }
        if self.uplink().is_some() {
            return Err(SwitchError::DuplicateMac);
        }
        let queue = FrameQueue::new(self.config.queue_frames)?;
        self.ports.push(Port {
            mac: [0; 6],
            uplink: true,
            attached: true,
            queue,
            counters: PortCounters::default(),
        });
        Ok(self.ports.len().saturating_sub(1))
    }

    /// The uplink port, if the switch has one.
    pub fn uplink(&self) -> Option<PortId> {
        self.ports.iter().position(|p| p.uplink)
    }

    /// The guest port whose assigned MAC is `mac`.
    fn assigned(&self, mac: &Mac) -> Option<PortId> {
        self.ports.iter().position(|p| !p.uplink && p.mac == *mac)
    }

    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    pub fn port_mac(&self, port: PortId) -> Option<Mac> {
        self.ports.get(port).map(|p| p.mac)
    }

    pub fn counters(&self, port: PortId) -> Option<PortCounters> {
        self.ports.get(port).map(|p| p.counters)
    }

    /// Attaches or detaches a port (its VM started or stopped). Detaching
    /// drops its queued frames and forgets the addresses learned on it.
    pub fn set_attached(&mut self, port: PortId, attached: bool) -> Result<(), SwitchError> {
        let p = self.ports.get_mut(port).ok_or(SwitchError::NoPort)?;
        p.attached = attached;
        if !attached {
            p.queue.clear();
            for e in self.table.iter_mut() {
                if e.valid && usize::from(e.port) == port {
                    *e = MacEntry::default();
                }
            }
        }
        Ok(())
    }

    /// Whether a frame waits in the port's queue.
    pub fn pending(&self, port: PortId) -> bool {
        self.ports
            .get(port)
            .is_some_and(|p| p.queue.front_len().is_some())
    }

    /// Frames waiting in the port's queue.
    pub fn queued(&self, port: PortId) -> usize {
        self.ports.get(port).map_or(0, |p| p.queue.len)
    }

    /// Moves the port's oldest waiting frame into `buf` ([`MAX_FRAME`]
    /// bytes hold any); its length, or None when none waits.
    pub fn receive(&mut self, port: PortId, buf: &mut [u8]) -> Option<usize> {
        self.ports.get_mut(port)?.queue.pop_into(buf)
    }

    fn set_range(&self, mac: &Mac) -> core::ops::Range<usize> {
        let set = (hash(mac) as usize) & self.set_mask;
        let start = set.saturating_mul(WAYS);
        start..start.saturating_add(WAYS)
    }

    fn fresh(&self, e: &MacEntry, now_ns: u64) -> bool {
        e.valid && now_ns.saturating_sub(e.seen_ns) <= self.config.age_ns
    }

    /// The port a MAC was learned on, if the entry hasn't aged out.
    pub fn lookup(&self, mac: &Mac, now_ns: u64) -> Option<PortId> {
        self.table
            .get(self.set_range(mac))?
            .iter()
            .find(|e| e.mac == *mac && self.fresh(e, now_ns))
            .map(|e| usize::from(e.port))
    }

    fn learn(&mut self, mac: &Mac, port: PortId, now_ns: u64) {
        let range = self.set_range(mac);
        let age = self.config.age_ns;
        let Some(set) = self.table.get_mut(range) else {
            return;
        };
        let stale = |e: &MacEntry| !e.valid || now_ns.saturating_sub(e.seen_ns) > age;
        // The entry for this MAC, else a free or aged-out one, else the
        // least recently seen one of the set.
        let idx = set
            .iter()
            .position(|e| e.valid && e.mac == *mac)
            .or_else(|| set.iter().position(stale))
            .or_else(|| {
                set.iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.seen_ns)
                    .map(|(i, _)| i)
            });
        if let Some(e) = idx.and_then(|i| set.get_mut(i)) {
            *e = MacEntry {
                valid: true,
                mac: *mac,
                port: port as u8,
                seen_ns: now_ns,
            };
        }
    }

    /// A frame sent by `from` at the caller's time `now_ns` (any monotonic
    /// clock in ns): checked, learned, then queued for its destination(s).
    pub fn transmit(&mut self, from: PortId, frame: &[u8], now_ns: u64) -> Delivery {
        let anti_spoofing = self.config.anti_spoofing;
        // The wire posing as a guest: a source that is a guest port's
        // assigned MAC or was learned on a guest port.
        let wire_spoof = self.ports.get(from).is_some_and(|p| p.uplink)
            && frame.get(6..12).is_some_and(|s| {
                let mut m = [0u8; 6];
                m.copy_from_slice(s);
                self.assigned(&m).is_some() || self.lookup(&m, now_ns).is_some_and(|p| p != from)
            });
        let uplink = self.uplink();
        let Some(src_port) = self.ports.get_mut(from) else {
            return Delivery {
                to: 0,
                dropped: Some(DropReason::PortDown),
            };
        };
        let c = &mut src_port.counters;
        let (Some(dst), Some(src)) = (frame.get(0..6), frame.get(6..12)) else {
            inc(&mut c.drop_length);
            return dropped(DropReason::Length);
        };
        let mut d = [0u8; 6];
        d.copy_from_slice(dst);
        let mut s = [0u8; 6];
        s.copy_from_slice(src);
        let reason = if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            Some((DropReason::Length, &mut c.drop_length))
        } else if !src_port.attached {
            Some((DropReason::PortDown, &mut c.drop_port_down))
        } else if !is_valid_unicast(&s) {
            Some((DropReason::BadSource, &mut c.drop_bad_source))
        } else if wire_spoof || (anti_spoofing && !src_port.uplink && s != src_port.mac) {
            Some((DropReason::Spoofed, &mut c.drop_spoofed))
        } else {
            None
        };
        if let Some((why, counter)) = reason {
            inc(counter);
            return dropped(why);
        }
        let from_wire = src_port.uplink;
        inc(&mut c.tx_frames);
        add(&mut c.tx_bytes, frame.len());
        self.learn(&s, from, now_ns);
        let mut to = 0u64;
        if is_multicast(&d) {
            for (i, p) in self.ports.iter_mut().enumerate() {
                if i != from && p.attached && deliver(p, frame) {
                    to |= 1u64 << i;
                }
            }
        } else {
            match self.lookup(&d, now_ns) {
                Some(p) if p == from => {
                    if let Some(sp) = self.ports.get_mut(from) {
                        inc(&mut sp.counters.drop_same_port);
                    }
                    return dropped(DropReason::SamePort);
                }
                Some(p) => {
                    if let Some(port) = self.ports.get_mut(p) {
                        if deliver(port, frame) {
                            to |= 1u64 << p;
                        }
                    }
                }
                // On a bridged switch: to the guest port with that MAC,
                // else from a guest to the wire; from the wire, nowhere.
                None if uplink.is_some() => {
                    let target = self.assigned(&d).or(if from_wire { None } else { uplink });
                    match target {
                        Some(p) if p == from => {
                            if let Some(sp) = self.ports.get_mut(from) {
                                inc(&mut sp.counters.drop_same_port);
                            }
                            return dropped(DropReason::SamePort);
                        }
                        Some(p) => {
                            if let Some(port) = self.ports.get_mut(p) {
                                if deliver(port, frame) {
                                    to |= 1u64 << p;
                                }
                            }
                        }
                        None => {
                            if let Some(sp) = self.ports.get_mut(from) {
                                inc(&mut sp.counters.drop_unknown);
                            }
                            return dropped(DropReason::Unknown);
                        }
                    }
                }
                None => {
                    for (i, p) in self.ports.iter_mut().enumerate() {
                        if i != from && p.attached && deliver(p, frame) {
                            to |= 1u64 << i;
                        }
                    }
                }
            }
        }
        Delivery { to, dropped: None }
    }
}

fn dropped(why: DropReason) -> Delivery {
    Delivery {
        to: 0,
        dropped: Some(why),
    }
}

/// Queues `frame` for `p`; false (counted) when it is detached or full.
fn deliver(p: &mut Port, frame: &[u8]) -> bool {
    if !p.attached {
        inc(&mut p.counters.drop_port_down);
        return false;
    }
    if !p.queue.push(frame) {
        inc(&mut p.counters.drop_queue_full);
        return false;
    }
    inc(&mut p.counters.rx_frames);
    add(&mut p.counters.rx_bytes, frame.len());
    true
}

/// One port's state: assigned MAC, attachment, queued frames (oldest
/// first), counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortState {
    pub mac: Mac,
    pub attached: bool,
    pub frames: Vec<Vec<u8>>,
    pub counters: PortCounters,
}

/// The switch's complete state (its configuration is the manifest's and
/// not part of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchState {
    pub ports: Vec<PortState>,
    pub table: Vec<MacEntry>,
}

impl DeviceState for Switch {
    type Data = SwitchState;
    const VERSION: u32 = 1;

    fn save(&self) -> State<SwitchState> {
        State {
            version: Self::VERSION,
            data: SwitchState {
                ports: self
                    .ports
                    .iter()
                    .map(|p| PortState {
                        mac: p.mac,
                        attached: p.attached,
                        frames: p.queue.frames(),
                        counters: p.counters,
                    })
                    .collect(),
                table: self.table.clone(),
            },
        }
    }

    /// The ports must be the same ones (same count and MACs: the manifest
    /// made them); queues and table are taken over.
    fn restore(&mut self, state: &State<SwitchState>) -> Result<(), StateError> {
        check_version(state.version, Self::VERSION)?;
        let s = &state.data;
        if s.ports.len() != self.ports.len()
            || s.ports.iter().zip(&self.ports).any(|(a, b)| a.mac != b.mac)
        {
            return Err(StateError::Invalid("switch ports"));
        }
        if s.ports.iter().any(|p| {
            p.frames.len() > self.config.queue_frames
                || p.frames
                    .iter()
                    .any(|f| !(MIN_FRAME..=MAX_FRAME).contains(&f.len()))
        }) {
            return Err(StateError::Invalid("queued frames"));
        }
        if s.table.len() != self.table.len()
            || s.table
                .iter()
                .any(|e| e.valid && usize::from(e.port) >= self.ports.len())
        {
            return Err(StateError::Invalid("MAC table"));
        }
        for (p, ps) in self.ports.iter_mut().zip(&s.ports) {
            p.attached = ps.attached;
            p.counters = ps.counters;
            p.queue.clear();
            for f in &ps.frames {
                p.queue.push(f);
            }
        }
        self.table.clone_from(&s.table);
        Ok(())
    }

    /// Every port attached with an empty queue and zero counters, nothing
    /// learned.
    fn reset(&mut self) {
        for p in &mut self.ports {
            p.attached = true;
            p.queue.clear();
            p.counters = PortCounters::default();
        }
        self.table.fill(MacEntry::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const A: Mac = [0x52, 0x54, 0, 0, 0, 1];
    pub const B: Mac = [0x52, 0x54, 0, 0, 0, 2];
    pub const C: Mac = [0x52, 0x54, 0, 0, 0, 3];

    pub fn frame(dst: Mac, src: Mac, len: usize, fill: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(len.max(14), fill);
        f.truncate(len);
        f
    }

    fn three(config: SwitchConfig) -> Switch {
        let mut s = Switch::new(config).unwrap();
        for m in [A, B, C] {
            s.add_port(m).unwrap();
        }
        s
    }

    fn take(s: &mut Switch, port: PortId) -> Option<Vec<u8>> {
        let mut buf = [0u8; MAX_FRAME];
        let n = s.receive(port, &mut buf)?;
        Some(buf[..n].to_vec())
    }

    #[test]
    fn unknown_unicast_floods_then_learned_goes_to_one_port() {
        let mut s = three(SwitchConfig::default());
        // B unknown: flooded to B and C, not back to A.
        let f = frame(B, A, 60, 1);
        assert_eq!(s.transmit(0, &f, 0).to, 0b110);
        assert_eq!(take(&mut s, 1), Some(f.clone()));
        assert_eq!(take(&mut s, 2), Some(f));
        assert_eq!(take(&mut s, 0), None);
        // A was learned: B's reply goes to A only.
        let r = frame(A, B, 100, 2);
        assert_eq!(
            s.transmit(1, &r, 10),
            Delivery {
                to: 0b001,
                dropped: None
            }
        );
        assert_eq!(take(&mut s, 0), Some(r));
        assert!(!s.pending(2));
        // Now both known.
        assert_eq!(s.transmit(0, &frame(B, A, 60, 3), 20).to, 0b010);
        assert_eq!(s.lookup(&A, 20), Some(0));
        assert_eq!(s.lookup(&B, 20), Some(1));
        assert_eq!(s.lookup(&C, 20), None);
        let c = s.counters(0).unwrap();
        assert_eq!(
            (c.tx_frames, c.tx_bytes, c.rx_frames, c.rx_bytes),
            (2, 120, 1, 100)
        );
    }

    #[test]
    fn uplink_bridges_guests_and_the_wire() {
        // Ports 0..2 are guests A, B, C; port 3 the uplink.
        let mut s = three(SwitchConfig::default());
        let up = s.add_uplink_port().unwrap();
        assert_eq!((up, s.uplink()), (3, Some(3)));
        assert_eq!(s.add_uplink_port(), Err(SwitchError::DuplicateMac));
        const W: Mac = [0x52, 0x55, 10, 0, 2, 2];
        const X: Mac = [0x52, 0x55, 10, 0, 2, 9];
        // A guest's unicast for a MAC not on the switch: to the wire only.
        assert_eq!(s.transmit(0, &frame(W, A, 60, 1), 0).to, 1 << up);
        assert_eq!(take(&mut s, up), Some(frame(W, A, 60, 1)));
        assert!(!s.pending(1) && !s.pending(2));
        // For a guest's MAC not learned yet: to that guest alone.
        assert_eq!(s.transmit(0, &frame(C, A, 60, 2), 0).to, 0b100);
        take(&mut s, 2);
        // Broadcast from a guest: every other guest and the wire.
        assert_eq!(s.transmit(1, &frame(BROADCAST, B, 60, 3), 0).to, 0b1101);
        // From the wire: to the guest with that MAC (learned or not).
        assert_eq!(s.transmit(up, &frame(A, W, 80, 4), 1).to, 0b001);
        assert_eq!(s.transmit(up, &frame(C, W, 80, 5), 1).to, 0b100);
        // The wire's MAC was learned on the uplink; guests reach it there.
        assert_eq!(s.lookup(&W, 1), Some(up));
        assert_eq!(s.transmit(2, &frame(W, C, 60, 6), 2).to, 1 << up);
        // Broadcast and multicast from the wire: to every guest.
        assert_eq!(s.transmit(up, &frame(BROADCAST, W, 60, 7), 3).to, 0b111);
        let mcast = [0x33, 0x33, 0, 0, 0, 1];
        assert_eq!(s.transmit(up, &frame(mcast, W, 60, 8), 3).to, 0b111);
        // Unicast from the wire for nobody here: dropped, counted.
        let d = s.transmit(up, &frame(X, W, 60, 9), 4);
        assert_eq!(d.dropped, Some(DropReason::Unknown));
        assert_eq!(s.counters(up).unwrap().drop_unknown, 1);
        let before: Vec<usize> = (0..3).map(|p| s.queued(p)).collect();
        // The wire posing as guest B (anti-spoofing on or off): dropped,
        // B's table entry stays.
        for src in [B, A] {
            let d = s.transmit(up, &frame(BROADCAST, src, 60, 10), 5);
            assert_eq!(d.dropped, Some(DropReason::Spoofed));
            let d = s.transmit(up, &frame(C, src, 60, 10), 5);
            assert_eq!(d.dropped, Some(DropReason::Spoofed));
        }
        assert_eq!(s.counters(up).unwrap().drop_spoofed, 4);
        assert_eq!(s.lookup(&B, 5), Some(1));
        let after: Vec<usize> = (0..3).map(|p| s.queued(p)).collect();
        assert_eq!(before, after);
        let mut open = three(SwitchConfig {
            anti_spoofing: false,
            ..SwitchConfig::default()
        });
        let up = open.add_uplink_port().unwrap();
        // Without anti-spoofing a guest may use another MAC: once learned
        // on the guest, the wire can't take it either.
        open.transmit(0, &frame(W, X, 60, 0), 0);
        let d = open.transmit(up, &frame(C, X, 60, 0), 1);
        assert_eq!(d.dropped, Some(DropReason::Spoofed));
        assert_eq!(open.transmit(up, &frame(C, W, 60, 0), 1).to, 0b100);
        assert_eq!(open.lookup(&X, 1), Some(0));
    }

    #[test]
    fn broadcast_and_multicast_flood_to_all_others() {
        let mut s = three(SwitchConfig::default());
        s.transmit(1, &frame(A, B, 60, 0), 0);
        take(&mut s, 0);
        take(&mut s, 2);
        assert_eq!(s.transmit(0, &frame(BROADCAST, A, 60, 0), 1).to, 0b110);
        let mcast = [0x01, 0x00, 0x5E, 0, 0, 1];
        assert_eq!(s.transmit(1, &frame(mcast, B, 60, 0), 2).to, 0b101);
    }

    #[test]
    fn entries_age_out_by_the_callers_clock() {
        let cfg = SwitchConfig {
            age_ns: 1000,
            ..SwitchConfig::default()
        };
        let mut s = three(cfg);
        s.transmit(0, &frame(BROADCAST, A, 60, 0), 5000);
        assert_eq!(s.lookup(&A, 6000), Some(0));
        assert_eq!(s.lookup(&A, 6001), None);
        // Aged out: unicast to A floods again.
        assert_eq!(s.transmit(1, &frame(A, B, 60, 0), 6001).to, 0b101);
        // A clock that went back does not underflow (entry still fresh).
        assert_eq!(s.lookup(&B, 0), Some(1));
    }

    #[test]
    fn spoofed_and_bad_sources_are_dropped_and_counted() {
        let mut s = three(SwitchConfig::default());
        // A sends as B: dropped, B not relearned on port 0.
        assert_eq!(
            s.transmit(0, &frame(BROADCAST, B, 60, 0), 0),
            Delivery {
                to: 0,
                dropped: Some(DropReason::Spoofed)
            }
        );
        assert_eq!(s.lookup(&B, 0), None);
        assert_eq!(
            s.transmit(0, &frame(BROADCAST, BROADCAST, 60, 0), 0)
                .dropped,
            Some(DropReason::BadSource)
        );
        assert_eq!(
            s.transmit(0, &frame(BROADCAST, [0; 6], 60, 0), 0).dropped,
            Some(DropReason::BadSource)
        );
        let c = s.counters(0).unwrap();
        assert_eq!((c.drop_spoofed, c.drop_bad_source, c.tx_frames), (1, 2, 0));
        assert!(!s.pending(1) && !s.pending(2));
        // With anti-spoofing off, any unicast source goes and is learned.
        let mut s = three(SwitchConfig {
            anti_spoofing: false,
            ..SwitchConfig::default()
        });
        let other = [0x02, 0, 0, 0, 0, 9];
        assert_eq!(s.transmit(0, &frame(BROADCAST, other, 60, 0), 0).to, 0b110);
        assert_eq!(s.lookup(&other, 0), Some(0));
        // A bad source stays dropped.
        assert_eq!(
            s.transmit(0, &frame(BROADCAST, BROADCAST, 60, 0), 0)
                .dropped,
            Some(DropReason::BadSource)
        );
    }

    #[test]
    fn frame_length_bounds() {
        let mut s = three(SwitchConfig::default());
        for len in [0, 5, 13, 1515, 9000] {
            let mut f = frame(BROADCAST, A, 14, 0);
            f.resize(len, 0);
            assert_eq!(
                s.transmit(0, &f, 0).dropped,
                Some(DropReason::Length),
                "{len}"
            );
        }
        for len in [14, 1514] {
            assert_eq!(s.transmit(0, &frame(BROADCAST, A, len, 7), 0).to, 0b110);
        }
        assert_eq!(s.counters(0).unwrap().drop_length, 5);
        take(&mut s, 1);
        assert_eq!(take(&mut s, 1).unwrap().len(), 1514);
    }

    #[test]
    fn full_queue_drops_tail_and_counts() {
        let mut s = three(SwitchConfig {
            queue_frames: 4,
            ..SwitchConfig::default()
        });
        for i in 0..6u8 {
            s.transmit(0, &frame(B, A, 60, i), 0);
        }
        assert_eq!(s.queued(1), 4);
        let c = s.counters(1).unwrap();
        assert_eq!((c.rx_frames, c.drop_queue_full), (4, 2));
        // The oldest four, in order (drop-tail).
        for i in 0..4u8 {
            assert_eq!(take(&mut s, 1).unwrap()[20], i);
        }
        assert_eq!(take(&mut s, 1), None);
        // The ring wraps.
        for i in 10..13u8 {
            s.transmit(0, &frame(B, A, 60, i), 0);
        }
        for i in 10..13u8 {
            assert_eq!(take(&mut s, 1).unwrap()[20], i);
        }
    }

    #[test]
    fn same_port_destination_is_filtered() {
        let mut s = Switch::new(SwitchConfig {
            anti_spoofing: false,
            ..SwitchConfig::default()
        })
        .unwrap();
        s.add_port(A).unwrap();
        s.add_port(B).unwrap();
        let x = [0x02, 0, 0, 0, 0, 0x10];
        s.transmit(0, &frame(BROADCAST, x, 60, 0), 0);
        take(&mut s, 1);
        assert_eq!(
            s.transmit(0, &frame(x, A, 60, 0), 0).dropped,
            Some(DropReason::SamePort)
        );
        assert!(!s.pending(0) && !s.pending(1));
        assert_eq!(s.counters(0).unwrap().drop_same_port, 1);
    }

    #[test]
    fn detached_port_gets_nothing_and_is_forgotten() {
        let mut s = three(SwitchConfig::default());
        s.transmit(1, &frame(BROADCAST, B, 60, 0), 0);
        s.transmit(0, &frame(B, A, 60, 0), 0);
        assert_eq!(s.queued(1), 1);
        s.set_attached(1, false).unwrap();
        assert_eq!(s.queued(1), 0, "its queue is dropped");
        assert_eq!(s.lookup(&B, 0), None, "its addresses are forgotten");
        // Unknown again: flooded, but not to the detached port.
        assert_eq!(s.transmit(0, &frame(B, A, 60, 0), 0).to, 0b100);
        assert_eq!(
            s.transmit(1, &frame(A, B, 60, 0), 0).dropped,
            Some(DropReason::PortDown)
        );
        s.set_attached(1, true).unwrap();
        assert_eq!(s.transmit(0, &frame(B, A, 60, 0), 0).to, 0b110);
        assert_eq!(s.set_attached(7, false), Err(SwitchError::NoPort));
    }

    #[test]
    fn port_configuration_errors() {
        let mut s = Switch::new(SwitchConfig {
            queue_frames: 1,
            ..SwitchConfig::default()
        })
        .unwrap();
        assert_eq!(s.add_port([1, 0, 0, 0, 0, 1]), Err(SwitchError::BadMac));
        assert_eq!(s.add_port([0; 6]), Err(SwitchError::BadMac));
        s.add_port(A).unwrap();
        assert_eq!(s.add_port(A), Err(SwitchError::DuplicateMac));
        for i in 1..MAX_PORTS {
            s.add_port([2, 0, 0, 0, 1, i as u8]).unwrap();
        }
        assert_eq!(s.add_port(B), Err(SwitchError::TooManyPorts));
        // The 64th port is reachable (the delivery mask's top bit).
        assert_eq!(s.transmit(0, &frame(BROADCAST, A, 60, 0), 0).to, !1u64);
    }

    #[test]
    fn table_is_bounded_and_evicts_the_oldest_of_a_set() {
        // One set of four ways: a fifth address evicts the least recently seen.
        let mut s = Switch::new(SwitchConfig {
            anti_spoofing: false,
            table_sets: 1,
            ..SwitchConfig::default()
        })
        .unwrap();
        s.add_port(A).unwrap();
        s.add_port(B).unwrap();
        let m = |i: u8| [0x02, 0, 0, 0, 0, i];
        for i in 0..4u8 {
            s.transmit(0, &frame(BROADCAST, m(i), 60, 0), u64::from(i));
        }
        // Refresh m(0): m(1) is now the oldest.
        s.transmit(0, &frame(BROADCAST, m(0), 60, 0), 10);
        s.transmit(0, &frame(BROADCAST, m(9), 60, 0), 11);
        assert_eq!(s.lookup(&m(1), 11), None);
        for i in [0, 2, 3, 9] {
            assert_eq!(s.lookup(&m(i), 11), Some(0));
        }
        // A flood of random sources never grows it.
        for i in 0..1000u32 {
            let b = i.to_le_bytes();
            s.transmit(
                0,
                &frame(BROADCAST, [2, 1, b[0], b[1], b[2], b[3]], 60, 0),
                20,
            );
        }
        assert_eq!(s.save().data.table.len(), 4);
    }

    #[test]
    fn state_round_trip_and_refusals() {
        let mut busy = three(SwitchConfig::default());
        busy.transmit(0, &frame(B, A, 60, 1), 0);
        busy.transmit(0, &frame(BROADCAST, A, 61, 2), 0);
        busy.set_attached(2, false).unwrap();
        crate::state::tests::round_trip_values(&mut busy, three(SwitchConfig::default()));
        let mut a = three(SwitchConfig::default());
        a.transmit(0, &frame(B, A, 60, 1), 0);
        let saved = a.save();
        let mut b = three(SwitchConfig::default());
        b.restore(&saved).unwrap();
        assert_eq!(take(&mut b, 1), Some(frame(B, A, 60, 1)));
        assert_eq!(b.lookup(&A, 0), Some(0));
        let mut bad = saved.clone();
        bad.data.ports[1].frames.push(vec![0; 9]);
        assert_eq!(b.restore(&bad), Err(StateError::Invalid("queued frames")));
        let mut bad = saved.clone();
        bad.data.ports[0].mac = [2, 0, 0, 0, 0, 0x77];
        assert_eq!(b.restore(&bad), Err(StateError::Invalid("switch ports")));
        let mut bad = saved;
        bad.data.table[0] = MacEntry {
            valid: true,
            mac: A,
            port: 9,
            seen_ns: 0,
        };
        assert_eq!(b.restore(&bad), Err(StateError::Invalid("MAC table")));
    }
}
