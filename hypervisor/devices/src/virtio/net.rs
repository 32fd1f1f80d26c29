//! virtio-net (virtio 1.2 5.1): one receive queue (0) and one transmit
//! queue (1), no control queue. Features: VIRTIO_NET_F_MAC,
//! VIRTIO_NET_F_STATUS (link state), VIRTIO_NET_F_MTU (1500). No checksum
//! or segmentation offloads (CSUM, GUEST_CSUM, TSO, UFO, USO are not
//! offered), and no VIRTIO_NET_F_MRG_RXBUF: every received frame goes into
//! one buffer (5.1.6.3.2), which the transport completes chain by chain.
//!
//! With VIRTIO_F_VERSION_1 (which the transport requires) every buffer
//! starts with the 12-byte `struct virtio_net_hdr` (5.1.6). Transmit: each
//! chain is one frame after its header, parsed from the chain's readable
//! byte stream (no framing assumed, 2.6.4); a frame outside 14..=1514
//! bytes (so an 802.1Q-tagged frame of a 1500-byte MTU, 1518 bytes, too),
//! or one asking for an offload, is dropped and counted and its chain
//! completed. Receive: a frame from the [`Uplink`] is copied with a
//! header (num_buffers 1) into the next posted buffer; the device takes a
//! buffer only when a frame waits ([`VirtioDevice::can_serve`]), so posted
//! buffers stay posted. Chains in the wrong direction are malformed: the
//! transport marks the device DEVICE_NEEDS_RESET.
use super::pci::{Effects, VirtioPci, NOTIFY_OFF};
use super::queue::{Chain, QueueError};
use super::{GuestMem, VirtioDevice};
use crate::state::{check_version, DeviceState, State, StateError};
use crate::switch::{Mac, MAX_FRAME, MIN_FRAME};

pub const DEVICE_ID: u16 = 1;

// Feature bits (5.1.3).
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_STATUS: u64 = 1 << 16;

/// Configuration status bit (5.1.4).
pub const S_LINK_UP: u16 = 1;
/// `struct virtio_net_hdr` without HASH_REPORT or tunnel fields (5.1.6).
pub const HDR_LEN: usize = 12;
pub const HDR_F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const MTU: u16 = (MAX_FRAME - MIN_FRAME) as u16;

pub const RXQ: u16 = 0;
pub const TXQ: u16 = 1;
pub const QUEUE_SIZE: u16 = 256;

// Configuration layout (5.1.4): mac, status, max_virtqueue_pairs, mtu.
const CFG_MAC: usize = 0;
const CFG_STATUS: usize = 6;
const CFG_MAX_PAIRS: usize = 8;
const CFG_MTU: usize = 10;
pub const CONFIG_LEN: usize = 12;

/// Where the device's frames go and come from: the core implements it on
/// the NIC's switch port (under the network's lock, at its own clock);
/// tests on a shared [`crate::switch::Switch`].
pub trait Uplink {
    /// A frame the guest sent (14..=1514 bytes, header stripped).
    fn send(&mut self, frame: &[u8]);
    /// Whether a frame waits for the guest.
    fn pending(&self) -> bool;
    /// Moves the oldest waiting frame into `buf` ([`MAX_FRAME`] bytes);
    /// its length, or None when none waits.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;
}

/// The device's own counters (the switch counts per port too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetCounters {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmitted frames outside 14..=1514 bytes (or no header).
    pub tx_dropped_length: u64,
    /// Transmit headers asking for a checksum or segmentation offload.
    pub tx_dropped_offload: u64,
    /// Transmitted while the link was down.
    pub tx_dropped_link: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames that didn't fit the posted buffer (header included).
    pub rx_dropped_small_buffer: u64,
}

fn inc(c: &mut u64) {
    *c = c.wrapping_add(1);
}

pub struct VirtioNet<U: Uplink> {
    uplink: U,
    mac: Mac,
    link_up: bool,
    counters: NetCounters,
    /// One header and frame, copied through (no allocation per frame).
    buf: [u8; HDR_LEN + MAX_FRAME],
}

impl<U: Uplink> VirtioNet<U> {
    pub fn new(mac: Mac, uplink: U) -> Self {
        Self {
            uplink,
            mac,
            link_up: true,
            counters: NetCounters::default(),
            buf: [0; HDR_LEN + MAX_FRAME],
        }
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }
    pub fn counters(&self) -> NetCounters {
        self.counters
    }
    pub fn link_up(&self) -> bool {
        self.link_up
    }
    pub fn uplink(&self) -> &U {
        &self.uplink
    }
    pub fn uplink_mut(&mut self) -> &mut U {
        &mut self.uplink
    }

    /// Whether a received frame can go to the guest now.
    pub fn rx_ready(&self) -> bool {
        self.link_up && self.uplink.pending()
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, bytes: &[u8]| {
            for (d, &b) in c.iter_mut().skip(off).zip(bytes) {
                *d = b;
            }
        };
        put(CFG_MAC, &self.mac);
        let status = if self.link_up { S_LINK_UP } else { 0 };
        put(CFG_STATUS, &status.to_le_bytes());
        put(CFG_MAX_PAIRS, &1u16.to_le_bytes());
        put(CFG_MTU, &MTU.to_le_bytes());
        c
    }

    fn transmit(&mut self, chain: &Chain, mem: &dyn GuestMem) -> Result<u32, QueueError> {
        // 5.1.6.2: transmit buffers are device-readable only.
        if chain.writable_len() != 0 || chain.segments().iter().any(|s| s.write) {
            return Err(QueueError::WrongDirection);
        }
        let total = usize::try_from(chain.readable_len()).unwrap_or(usize::MAX);
        let frame_len = total.saturating_sub(HDR_LEN);
        if total < HDR_LEN || !(MIN_FRAME..=MAX_FRAME).contains(&frame_len) {
            inc(&mut self.counters.tx_dropped_length);
            return Ok(0);
        }
        let Some(buf) = self.buf.get_mut(..total) else {
            inc(&mut self.counters.tx_dropped_length);
            return Ok(0);
        };
        chain.read_at(mem, 0, buf)?;
        let (hdr, frame) = buf.split_at(HDR_LEN);
        let flags = hdr.first().copied().unwrap_or(0);
        let gso_type = hdr.get(1).copied().unwrap_or(0);
        // Not negotiated, so a conforming driver never asks (5.1.6.2.1);
        // unknown flag bits are ignored (5.1.6.2.2).
        if flags & HDR_F_NEEDS_CSUM != 0 || gso_type != GSO_NONE {
            inc(&mut self.counters.tx_dropped_offload);
            return Ok(0);
        }
        if !self.link_up {
            inc(&mut self.counters.tx_dropped_link);
            return Ok(0);
        }
        self.uplink.send(frame);
        inc(&mut self.counters.tx_frames);
        self.counters.tx_bytes = self.counters.tx_bytes.wrapping_add(frame.len() as u64);
        // Nothing written into a transmit chain (2.7.8).
        Ok(0)
    }

    fn receive(&mut self, chain: &Chain, mem: &dyn GuestMem) -> Result<u32, QueueError> {
        if chain.readable_len() != 0 || chain.segments().iter().any(|s| !s.write) {
            return Err(QueueError::WrongDirection);
        }
        let (hdr, frame) = self.buf.split_at_mut(HDR_LEN);
        // Only after `can_serve`; if the frame went meanwhile (the port was
        // detached) the buffer returns empty.
        let Some(n) = self.uplink.recv(frame) else {
            return Ok(0);
        };
        let total = n.saturating_add(HDR_LEN);
        if total > usize::try_from(chain.writable_len()).unwrap_or(usize::MAX) {
            // 5.1.6.3.2: one buffer per frame; this one is too small (the
            // driver SHOULD post 1526 bytes, 5.1.6.3.1). The frame is lost
            // and the buffer returned empty.
            inc(&mut self.counters.rx_dropped_small_buffer);
            return Ok(0);
        }
        // flags 0 and GSO_NONE (no GUEST_CSUM or GUEST_TSO), hdr_len,
        // gso_size, csum_start, csum_offset 0, num_buffers 1 (5.1.6.4.2).
        hdr.fill(0);
        if let Some(nb) = hdr.get_mut(10..12) {
            nb.copy_from_slice(&1u16.to_le_bytes());
        }
        let Some(out) = self.buf.get(..total) else {
            return Ok(0);
        };
        chain.write_at(mem, 0, out)?;
        inc(&mut self.counters.rx_frames);
        self.counters.rx_bytes = self.counters.rx_bytes.wrapping_add(n as u64);
        Ok(total as u32)
    }
}

impl<U: Uplink> VirtioDevice for VirtioNet<U> {
    fn device_id(&self) -> u16 {
        DEVICE_ID
    }
    fn pci_class(&self) -> [u8; 3] {
        // Network controller, Ethernet.
        [0x02, 0x00, 0x00]
    }
    fn features(&self) -> u64 {
        F_MAC | F_STATUS | F_MTU
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }
    fn config_len(&self) -> usize {
        CONFIG_LEN
    }
    fn read_config(&self, offset: usize, data: &mut [u8]) {
        data.fill(0);
        let c = self.config();
        for (d, &b) in data.iter_mut().zip(c.iter().skip(offset)) {
            *d = b;
        }
    }
    // Every field is read-only (5.1.4.2: the driver MUST NOT write).
    fn handle(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
    ) -> Result<Option<u32>, QueueError> {
        match queue {
            RXQ => self.receive(chain, mem),
            _ => self.transmit(chain, mem),
        }
        .map(Some)
    }
    fn can_serve(&self, queue: u16) -> bool {
        queue != RXQ || self.rx_ready()
    }
    fn reset(&mut self) {}
    fn identity(&self) -> super::Identity {
        super::Identity::Net {
            mac: self.mac,
            link_up: self.link_up,
            counters: self.counters,
        }
    }
    fn take_identity(&mut self, id: &super::Identity) -> Result<(), StateError> {
        let super::Identity::Net {
            link_up, counters, ..
        } = id
        else {
            return Err(StateError::Invalid("virtio device kind (not a NIC)"));
        };
        self.link_up = *link_up;
        self.counters = *counters;
        Ok(())
    }
}

/// For the core when frames reached the NIC's port (a [`crate::switch::Delivery`]
/// named it) or its VM runs: serves the receive queue, within the budget,
/// as a notification of it would.
pub fn deliver<U: Uplink>(pci: &mut VirtioPci<VirtioNet<U>>, mem: &dyn GuestMem) -> Effects {
    if !pci.dev.rx_ready() {
        return Effects::default();
    }
    pci.write(NOTIFY_OFF, 2, u32::from(RXQ), mem)
}

/// Changes the link state and sends the driver a configuration change
/// notification (5.1.4: the driver re-reads `status`).
pub fn set_link<U: Uplink>(pci: &mut VirtioPci<VirtioNet<U>>, up: bool) -> Effects {
    if pci.dev.link_up == up {
        return Effects::default();
    }
    pci.dev.link_up = up;
    pci.config_changed()
}

/// The device's own state: its MAC (to refuse another NIC's state), link
/// and counters. Queue positions and features are the transport's; frames
/// waiting are the switch port's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetState {
    pub mac: Mac,
    pub link_up: bool,
    pub counters: NetCounters,
}

impl<U: Uplink> DeviceState for VirtioNet<U> {
    type Data = NetState;
    const VERSION: u32 = 1;
    fn save(&self) -> State<NetState> {
        State {
            version: Self::VERSION,
            data: NetState {
                mac: self.mac,
                link_up: self.link_up,
                counters: self.counters,
            },
        }
    }
    fn restore(&mut self, state: &State<NetState>) -> Result<(), StateError> {
        check_version(state.version, Self::VERSION)?;
        if state.data.mac != self.mac {
            return Err(StateError::Invalid("NIC MAC"));
        }
        self.link_up = state.data.link_up;
        self.counters = state.data.counters;
        Ok(())
    }
    fn reset(&mut self) {
        self.link_up = true;
        self.counters = NetCounters::default();
    }
}

#[cfg(test)]
mod tests;
