//! Split virtqueues (virtio 1.2 2.7): the descriptor table, the driver
//! ("available") ring and the device ("used") ring in guest memory.
//!
//! Everything the guest wrote is checked before it is used: a malformed
//! chain (a loop, more descriptors than the queue size, a bad indirect
//! table, a buffer outside RAM, lengths that overflow, a device-readable
//! buffer after a device-writable one) is a [`QueueError`] for the
//! transport to turn into DEVICE_NEEDS_RESET.
use super::{read_u16, write_u16, GuestMem, MemError};
use alloc::vec::Vec;

// Descriptor flags (virtio 1.2 2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
/// Driver ring flags: no used buffer notification wanted (2.7.7).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// The largest split queue size (virtio 1.2 2.7: at most 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;

const DESC_SIZE: u64 = 16;
const USED_ELEM_SIZE: u64 = 8;

/// Why a queue or one of its chains was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// A ring or buffer access fell outside guest RAM.
    Memory(MemError),
    /// The queue size is 0, not a power of two, or above the maximum.
    BadSize(u16),
    /// A ring address violates its alignment (2.7: 16, 2, 4).
    Misaligned,
    /// A ring does not lie in guest RAM (or its end overflows).
    RingOutsideRam,
    /// The driver's index moved more than the queue size past ours.
    AvailIndex { last: u16, idx: u16 },
    /// A head index from the driver ring is not below the queue size.
    HeadOutOfRange(u16),
    /// A `next` field is not below the size of its table.
    NextOutOfRange(u16),
    /// More descriptors than the queue size, or a loop.
    ChainTooLong,
    /// An indirect descriptor without VIRTIO_F_INDIRECT_DESC negotiated.
    IndirectNotNegotiated,
    /// INDIRECT together with NEXT (2.7.5.3.1: the driver MUST NOT).
    IndirectWithNext,
    /// An indirect table whose length is 0 or not a multiple of 16.
    IndirectLength(u32),
    /// An indirect descriptor inside an indirect table (2.7.5.3.1).
    NestedIndirect,
    /// An address plus length overflows, or the chain's total length
    /// reaches 2^32 bytes (2.7.5.2).
    LengthOverflow,
    /// A buffer outside guest RAM.
    BufferOutsideRam { addr: u64, len: u32 },
    /// A device-readable buffer after a device-writable one (2.7.4.2).
    WriteBeforeRead,
    /// A request without room for its status byte.
    NoStatus,
    /// Buffers the device may not use that way: a device-writable one in
    /// a chain it only reads, or a device-readable one in a chain it only
    /// writes (a network device's transmit and receive queues).
    WrongDirection,
}

impl From<MemError> for QueueError {
    fn from(e: MemError) -> Self {
        QueueError::Memory(e)
    }
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A checked descriptor chain: its buffers in order, readable ones first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    segs: Vec<Segment>,
    readable: u32,
    writable: u32,
}

impl Chain {
    /// Room for `n` buffers, so that walking chains of a queue of size `n`
    /// never allocates.
    pub fn with_capacity(n: u16) -> Self {
        Self {
            segs: Vec::with_capacity(usize::from(n)),
            ..Self::default()
        }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }
    /// Total length of the device-readable buffers.
    pub fn readable_len(&self) -> u32 {
        self.readable
    }
    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u32 {
        self.writable
    }

    fn clear(&mut self, head: u16) {
        self.head = head;
        self.segs.clear();
        self.readable = 0;
        self.writable = 0;
    }

    /// Copies from the readable bytes, seen as one stream, at `offset`
    /// into `buf`; returns how many bytes there were (less at the end).
    pub fn read_at(
        &self,
        mem: &dyn GuestMem,
        offset: u32,
        buf: &mut [u8],
    ) -> Result<usize, QueueError> {
        let mut done = 0;
        self.each(false, offset, buf.len(), |addr, from, len| {
            let dst = buf
                .get_mut(from..from.saturating_add(len))
                .ok_or(QueueError::LengthOverflow)?;
            mem.read(addr, dst)?;
            done = from.saturating_add(len);
            Ok(())
        })?;
        Ok(done)
    }

    /// Copies `data` into the writable bytes, seen as one stream, at
    /// `offset`; returns how many bytes fitted.
    pub fn write_at(
        &self,
        mem: &dyn GuestMem,
        offset: u32,
        data: &[u8],
    ) -> Result<usize, QueueError> {
        let mut done = 0;
        self.each(true, offset, data.len(), |addr, from, len| {
            let src = data
                .get(from..from.saturating_add(len))
                .ok_or(QueueError::LengthOverflow)?;
            mem.write(addr, src)?;
            done = from.saturating_add(len);
            Ok(())
        })?;
        Ok(done)
    }

    /// Calls `f(guest address, offset into the caller's buffer, length)`
    /// for the pieces of the `write` stream from `offset` on, `want` bytes
    /// at most.
    fn each(
        &self,
        write: bool,
        offset: u32,
        want: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let mut skip = u64::from(offset);
        let mut at = 0usize;
        for s in self.segs.iter().filter(|s| s.write == write) {
            if at >= want {
                break;
            }
            let len = u64::from(s.len);
            if skip >= len {
                skip = skip.saturating_sub(len);
                continue;
            }
            let avail = usize::try_from(len.saturating_sub(skip)).unwrap_or(usize::MAX);
            let n = avail.min(want.saturating_sub(at));
            f(s.addr.saturating_add(skip), at, n)?;
            at = at.saturating_add(n);
            skip = 0;
        }
        Ok(())
    }
}

/// The features a queue's processing depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFeatures {
    pub indirect: bool,
    pub event_idx: bool,
}

/// One split virtqueue: its configuration (written by the driver through
/// the transport) and the device's position in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitQueue {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    /// Descriptor table, driver area (available ring), device area (used
    /// ring): guest-physical addresses.
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// The next driver ring entry the device will take.
    pub last_avail: u16,
    /// The device's used index (what it last published).
    pub used_idx: u16,
    /// The used index at the last notification decision (EVENT_IDX's "old").
    signalled: u16,
}

impl SplitQueue {
    /// A queue as after reset: size reads as the maximum (4.1.4.3).
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
            last_avail: 0,
            used_idx: 0,
            signalled: 0,
        }
    }

    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Checks a saved queue against what this device can be in: its
    /// maximum and, once enabled, a size that is a power of two up to it,
    /// aligned rings (whether they are RAM is checked at each use), no position
    /// moved before it was enabled and, on a `live` device, every chain
    /// taken also given back (`last_avail == used_idx`: a saved device
    /// holds no request, so none can be lost across a restore).
    pub fn check_saved(&self, max: u16, live: bool) -> Result<(), crate::state::StateError> {
        use crate::state::ensure;
        ensure(self.max_size == max, "queue maximum size")?;
        // Before it is enabled the size is whatever the driver wrote (it is
        // checked when the driver enables the queue).
        if self.enabled {
            ensure(
                self.size != 0 && self.size.is_power_of_two() && self.size <= max,
                "queue size",
            )?;
            ensure(
                self.desc & 15 == 0 && self.driver & 1 == 0 && self.device & 3 == 0,
                "queue ring alignment",
            )?;
            ensure(!live || self.last_avail == self.used_idx, "queue positions")?;
        } else {
            ensure(
                self.last_avail == 0 && self.used_idx == 0 && self.signalled == 0,
                "positions of a disabled queue",
            )?;
        }
        Ok(())
    }

    fn avail_ring_len(&self) -> u64 {
        // flags, idx, ring[size], used_event (2.7.6).
        6u64.saturating_add(2u64.saturating_mul(u64::from(self.size)))
    }
    fn used_ring_len(&self) -> u64 {
        // flags, idx, ring[size] of {id, len}, avail_event (2.7.8).
        6u64.saturating_add(USED_ELEM_SIZE.saturating_mul(u64::from(self.size)))
    }

    /// Checks the configuration before the queue is enabled: size a power
    /// of two up to the maximum, rings aligned (2.7 table) and in RAM.
    pub fn validate(&self, mem: &dyn GuestMem) -> Result<(), QueueError> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Err(QueueError::BadSize(self.size));
        }
        if self.desc & 15 != 0 || self.driver & 1 != 0 || self.device & 3 != 0 {
            return Err(QueueError::Misaligned);
        }
        let desc_len = DESC_SIZE.saturating_mul(u64::from(self.size));
        for (addr, len) in [
            (self.desc, desc_len),
            (self.driver, self.avail_ring_len()),
            (self.device, self.used_ring_len()),
        ] {
            if !mem.contains(addr, len) {
                return Err(QueueError::RingOutsideRam);
            }
        }
        Ok(())
    }

    /// Validates and enables the queue; the device's used ring flags start
    /// at 0 (2.7.10: the device sets them to 0 or 1, and never asks for
    /// no notifications here).
    pub fn enable(&mut self, mem: &dyn GuestMem) -> Result<(), QueueError> {
        self.validate(mem)?;
        write_u16(mem, self.device, 0)?;
        self.enabled = true;
        Ok(())
    }

    fn mask(&self) -> u16 {
        self.size.wrapping_sub(1)
    }

    fn addr(base: u64, off: u64) -> Result<u64, QueueError> {
        base.checked_add(off).ok_or(QueueError::RingOutsideRam)
    }

    fn avail_idx(&self, mem: &dyn GuestMem) -> Result<u16, QueueError> {
        Ok(read_u16(mem, Self::addr(self.driver, 2)?)?)
    }

    /// Whether the driver has made buffers available that the device has
    /// not taken yet.
    pub fn has_work(&self, mem: &dyn GuestMem) -> Result<bool, QueueError> {
        Ok(self.avail_idx(mem)? != self.last_avail)
    }

    /// Takes the next available chain into `chain`; false when there is
    /// none.
    pub fn pop(
        &mut self,
        mem: &dyn GuestMem,
        features: QueueFeatures,
        chain: &mut Chain,
    ) -> Result<bool, QueueError> {
        let idx = self.avail_idx(mem)?;
        let new = idx.wrapping_sub(self.last_avail);
        if new == 0 {
            return Ok(false);
        }
        if new > self.size {
            return Err(QueueError::AvailIndex {
                last: self.last_avail,
                idx,
            });
        }
        let slot = u64::from(self.last_avail & self.mask());
        let head = read_u16(
            mem,
            Self::addr(self.driver, 4u64.saturating_add(slot.saturating_mul(2)))?,
        )?;
        self.walk(mem, head, features.indirect, chain)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(true)
    }

    fn read_desc(mem: &dyn GuestMem, table: u64, index: u16) -> Result<Desc, QueueError> {
        let at = Self::addr(table, u64::from(index).saturating_mul(DESC_SIZE))?;
        let mut b = [0u8; 16];
        mem.read(at, &mut b)?;
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
        Ok(Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        })
    }

    /// Follows the chain at `head` (2.7.5, 2.7.5.3), checking every step.
    fn walk(
        &self,
        mem: &dyn GuestMem,
        head: u16,
        indirect_ok: bool,
        chain: &mut Chain,
    ) -> Result<(), QueueError> {
        chain.clear(head);
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange(head));
        }
        let mut table = self.desc;
        let mut table_len = u32::from(self.size);
        let mut in_indirect = false;
        let mut index = head;
        // Descriptors visited in the current table (a chain without a loop
        // visits each at most once) and buffers in the whole chain (2.7.5.3.1:
        // no longer than the queue size, indirect ones included).
        let mut steps: u32 = 0;
        let mut buffers: u32 = 0;
        let mut seen_write = false;
        loop {
            steps = steps.saturating_add(1);
            if steps > table_len {
                return Err(QueueError::ChainTooLong);
            }
            let d = Self::read_desc(mem, table, index)?;
            if d.flags & DESC_F_INDIRECT != 0 {
                if in_indirect {
                    return Err(QueueError::NestedIndirect);
                }
                if !indirect_ok {
                    return Err(QueueError::IndirectNotNegotiated);
                }
                if d.flags & DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext);
                }
                if d.len == 0 || d.len & 15 != 0 {
                    return Err(QueueError::IndirectLength(d.len));
                }
                if !mem.contains(d.addr, u64::from(d.len)) {
                    return Err(QueueError::BufferOutsideRam {
                        addr: d.addr,
                        len: d.len,
                    });
                }
                table = d.addr;
                table_len = d.len >> 4;
                in_indirect = true;
                index = 0;
                steps = 0;
                continue;
            }
            buffers = buffers.saturating_add(1);
            if buffers > u32::from(self.size) {
                return Err(QueueError::ChainTooLong);
            }
            if d.addr.checked_add(u64::from(d.len)).is_none() {
                return Err(QueueError::LengthOverflow);
            }
            if !mem.contains(d.addr, u64::from(d.len)) {
                return Err(QueueError::BufferOutsideRam {
                    addr: d.addr,
                    len: d.len,
                });
            }
            let write = d.flags & DESC_F_WRITE != 0;
            if write {
                seen_write = true;
                chain.writable = chain
                    .writable
                    .checked_add(d.len)
                    .ok_or(QueueError::LengthOverflow)?;
            } else {
                if seen_write {
                    return Err(QueueError::WriteBeforeRead);
                }
                chain.readable = chain
                    .readable
                    .checked_add(d.len)
                    .ok_or(QueueError::LengthOverflow)?;
            }
            if chain.readable.checked_add(chain.writable).is_none() {
                return Err(QueueError::LengthOverflow);
            }
            chain.segs.push(Segment {
                addr: d.addr,
                len: d.len,
                write,
            });
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            if u32::from(d.next) >= table_len {
                return Err(QueueError::NextOutOfRange(d.next));
            }
            index = d.next;
        }
    }

    /// Returns a chain to the driver: one used ring element, then the used
    /// index (2.7.8).
    pub fn push_used(&mut self, mem: &dyn GuestMem, head: u16, len: u32) -> Result<(), QueueError> {
        let slot = u64::from(self.used_idx & self.mask());
        let at = Self::addr(
            self.device,
            4u64.saturating_add(slot.saturating_mul(USED_ELEM_SIZE)),
        )?;
        let mut elem = [0u8; 8];
        let (id, l) = elem.split_at_mut(4);
        id.copy_from_slice(&u32::from(head).to_le_bytes());
        l.copy_from_slice(&len.to_le_bytes());
        mem.write(at, &elem)?;
        self.used_idx = self.used_idx.wrapping_add(1);
        write_u16(mem, Self::addr(self.device, 2)?, self.used_idx)?;
        Ok(())
    }

    /// With EVENT_IDX: asks to be notified once the driver makes the entry
    /// after `last_avail` available (avail_event, 2.7.10).
    pub fn publish_avail_event(&self, mem: &dyn GuestMem) -> Result<(), QueueError> {
        let at = Self::addr(
            self.device,
            4u64.saturating_add(USED_ELEM_SIZE.saturating_mul(u64::from(self.size))),
        )?;
        write_u16(mem, at, self.last_avail)?;
        Ok(())
    }

    /// Whether the chains used since the last decision call for a used
    /// buffer notification (2.7.7): with EVENT_IDX, when the used index
    /// passed the driver's used_event; without it, unless the driver set
    /// VIRTQ_AVAIL_F_NO_INTERRUPT.
    pub fn needs_notification(
        &mut self,
        mem: &dyn GuestMem,
        event_idx: bool,
    ) -> Result<bool, QueueError> {
        let old = self.signalled;
        let new = self.used_idx;
        self.signalled = new;
        if old == new {
            return Ok(false);
        }
        if event_idx {
            let at = Self::addr(
                self.driver,
                4u64.saturating_add(2u64.saturating_mul(u64::from(self.size))),
            )?;
            let event = read_u16(mem, at)?;
            Ok(need_event(event, new, old))
        } else {
            let flags = read_u16(mem, self.driver)?;
            Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

/// 2.7.7 / 2.7.10: notify when `event` lies in [old, new), with wrap.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::testmem::TestMem;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;

    pub fn desc(mem: &TestMem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = Vec::new();
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        mem.put(table + 16 * u64::from(i), &b);
    }

    /// Makes `heads` available after the ones already there.
    pub fn offer(mem: &TestMem, size: u16, heads: &[u16]) {
        let mut idx = u16::from_le_bytes(mem.get(AVAIL + 2, 2).try_into().unwrap());
        for &h in heads {
            let slot = u64::from(idx & (size - 1));
            mem.put(AVAIL + 4 + 2 * slot, &h.to_le_bytes());
            idx = idx.wrapping_add(1);
        }
        mem.put(AVAIL + 2, &idx.to_le_bytes());
    }

    pub fn queue(size: u16) -> SplitQueue {
        let mut q = SplitQueue::new(256);
        q.size = size;
        q.desc = DESC;
        q.driver = AVAIL;
        q.device = USED;
        q.enabled = true;
        q
    }

    const IND: QueueFeatures = QueueFeatures {
        indirect: true,
        event_idx: false,
    };

    fn pop1(mem: &TestMem, q: &mut SplitQueue) -> Result<Chain, QueueError> {
        let mut c = Chain::default();
        assert!(q.pop(mem, IND, &mut c)?);
        Ok(c)
    }

    #[test]
    fn simple_chain_readable_then_writable() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        q.validate(&mem).unwrap();
        desc(&mem, DESC, 0, 0x5000, 16, DESC_F_NEXT, 3);
        desc(&mem, DESC, 3, 0x6000, 512, DESC_F_NEXT | DESC_F_WRITE, 5);
        desc(&mem, DESC, 5, 0x7000, 1, DESC_F_WRITE, 0);
        offer(&mem, 8, &[0]);
        let c = pop1(&mem, &mut q).unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.readable_len(), 16);
        assert_eq!(c.writable_len(), 513);
        assert_eq!(c.segments().len(), 3);
        let mut none = Chain::default();
        assert!(!q.pop(&mem, IND, &mut none).unwrap());
        // Streams across segments.
        mem.put(0x6000 + 510, &[0; 2]);
        assert_eq!(c.write_at(&mem, 510, &[1, 2, 3, 4]).unwrap(), 3);
        assert_eq!(mem.get(0x6000 + 510, 2), [1, 2]);
        assert_eq!(mem.get(0x7000, 1), [3]);
        mem.put(0x5000, &[9; 16]);
        let mut b = [0; 20];
        assert_eq!(c.read_at(&mem, 4, &mut b).unwrap(), 12);
    }

    #[test]
    fn used_ring_and_index() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(4);
        for i in 0..6u16 {
            q.push_used(&mem, i, 100 + u32::from(i)).unwrap();
        }
        assert_eq!(mem.get(USED + 2, 2), [6, 0]);
        // Slot 1 was reused by the fifth element (index 5 & 3 = 1).
        assert_eq!(mem.get(USED + 4 + 8, 8), [5, 0, 0, 0, 105, 0, 0, 0]);
    }

    #[test]
    fn validate_refuses_bad_sizes_and_alignment() {
        let mem = TestMem::new(0x10000);
        for size in [0u16, 3, 100, 512] {
            assert_eq!(queue(size).validate(&mem), Err(QueueError::BadSize(size)));
        }
        let mut q = queue(8);
        q.desc = 0x1008;
        assert_eq!(q.validate(&mem), Err(QueueError::Misaligned));
        let mut q = queue(8);
        q.device = 0x3002;
        assert_eq!(q.validate(&mem), Err(QueueError::Misaligned));
        let mut q = queue(8);
        q.driver = 0x2001;
        assert_eq!(q.validate(&mem), Err(QueueError::Misaligned));
        let mut q = queue(8);
        q.device = 0xFFF0;
        assert_eq!(q.validate(&mem), Err(QueueError::RingOutsideRam));
        let mut q = queue(8);
        q.desc = u64::MAX - 15;
        assert_eq!(q.validate(&mem), Err(QueueError::RingOutsideRam));
    }

    #[test]
    fn loop_is_refused() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, 0x5000, 16, DESC_F_NEXT, 1);
        desc(&mem, DESC, 1, 0x5000, 16, DESC_F_NEXT, 0);
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::ChainTooLong));
        // A self-loop too.
        let mut q = queue(8);
        desc(&mem, DESC, 0, 0x5000, 16, DESC_F_NEXT, 0);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::ChainTooLong));
    }

    #[test]
    fn chain_of_exactly_queue_size_is_fine() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(4);
        for i in 0..4 {
            let last = i == 3;
            desc(
                &mem,
                DESC,
                i,
                0x5000,
                8,
                if last { 0 } else { DESC_F_NEXT },
                i + 1,
            );
        }
        offer(&mem, 4, &[0]);
        assert_eq!(pop1(&mem, &mut q).unwrap().segments().len(), 4);
    }

    #[test]
    fn head_and_next_out_of_range() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        offer(&mem, 8, &[8]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::HeadOutOfRange(8)));
        let mut q = queue(8);
        let mem = TestMem::new(0x10000);
        desc(&mem, DESC, 0, 0x5000, 16, DESC_F_NEXT, 9);
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::NextOutOfRange(9)));
    }

    #[test]
    fn avail_index_too_far_ahead() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        mem.put(AVAIL + 2, &9u16.to_le_bytes());
        assert_eq!(
            pop1(&mem, &mut q),
            Err(QueueError::AvailIndex { last: 0, idx: 9 })
        );
    }

    #[test]
    fn buffers_outside_ram_and_overflowing_lengths() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, 0xFF00, 0x200, 0, 0);
        offer(&mem, 8, &[0]);
        assert_eq!(
            pop1(&mem, &mut q),
            Err(QueueError::BufferOutsideRam {
                addr: 0xFF00,
                len: 0x200
            })
        );
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, u64::MAX - 4, 16, 0, 0);
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::LengthOverflow));
        // Total writable length over 4 GiB: two buffers of 3 GiB in a big RAM.
        struct Huge;
        impl GuestMem for Huge {
            fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
                // Descriptors: 0 -> 1, both 3 GiB writable; ring: one entry.
                buf.fill(0);
                let d = |next: u16, flags: u16| {
                    let mut b = [0u8; 16];
                    b[8..12].copy_from_slice(&0xC000_0000u32.to_le_bytes());
                    b[12..14].copy_from_slice(&flags.to_le_bytes());
                    b[14..16].copy_from_slice(&next.to_le_bytes());
                    b
                };
                match gpa {
                    x if x == DESC => buf.copy_from_slice(&d(1, DESC_F_NEXT | DESC_F_WRITE)),
                    x if x == DESC + 16 => buf.copy_from_slice(&d(0, DESC_F_WRITE)),
                    x if x == AVAIL + 2 => buf.copy_from_slice(&1u16.to_le_bytes()),
                    _ => {}
                }
                Ok(())
            }
            fn write(&self, _: u64, _: &[u8]) -> Result<(), MemError> {
                Ok(())
            }
            fn contains(&self, _: u64, _: u64) -> bool {
                true
            }
        }
        let mut q = queue(8);
        let mut c = Chain::default();
        assert_eq!(q.pop(&Huge, IND, &mut c), Err(QueueError::LengthOverflow));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, 0x5000, 1, DESC_F_NEXT | DESC_F_WRITE, 1);
        desc(&mem, DESC, 1, 0x6000, 16, 0, 0);
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::WriteBeforeRead));
    }

    #[test]
    fn indirect_table() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        let t = 0x8000;
        desc(&mem, DESC, 2, t, 3 * 16, DESC_F_INDIRECT, 0);
        desc(&mem, t, 0, 0x5000, 16, DESC_F_NEXT, 2);
        desc(&mem, t, 2, 0x6000, 512, DESC_F_NEXT | DESC_F_WRITE, 1);
        desc(&mem, t, 1, 0x7000, 1, DESC_F_WRITE, 0);
        offer(&mem, 8, &[2]);
        let c = pop1(&mem, &mut q).unwrap();
        assert_eq!(c.head, 2);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
        // Not negotiated.
        let mut q2 = queue(8);
        let mut c = Chain::default();
        assert_eq!(
            q2.pop(&mem, QueueFeatures::default(), &mut c),
            Err(QueueError::IndirectNotNegotiated)
        );
    }

    #[test]
    fn direct_descriptors_then_an_indirect_one() {
        // 2.7.5.3.2: the device MUST handle normal descriptors followed by
        // one indirect descriptor.
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        let t = 0x8000;
        desc(&mem, DESC, 1, 0x5000, 16, DESC_F_NEXT, 4);
        desc(&mem, DESC, 4, t, 32, DESC_F_INDIRECT | DESC_F_WRITE, 0);
        desc(&mem, t, 0, 0x6000, 512, DESC_F_NEXT | DESC_F_WRITE, 1);
        desc(&mem, t, 1, 0x7000, 1, DESC_F_WRITE, 0);
        offer(&mem, 8, &[1]);
        let c = pop1(&mem, &mut q).unwrap();
        assert_eq!(c.segments().len(), 3);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
    }

    #[test]
    fn indirect_hostile_cases() {
        let t = 0x8000;
        let cases: [(u32, u16, QueueError); 3] = [
            (0, DESC_F_INDIRECT, QueueError::IndirectLength(0)),
            (24, DESC_F_INDIRECT, QueueError::IndirectLength(24)),
            (
                32,
                DESC_F_INDIRECT | DESC_F_NEXT,
                QueueError::IndirectWithNext,
            ),
        ];
        for (len, flags, err) in cases {
            let mem = TestMem::new(0x10000);
            let mut q = queue(8);
            desc(&mem, DESC, 0, t, len, flags, 1);
            offer(&mem, 8, &[0]);
            assert_eq!(pop1(&mem, &mut q), Err(err));
        }
        // Nested indirect.
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, t, 32, DESC_F_INDIRECT, 0);
        desc(&mem, t, 0, 0x9000, 16, DESC_F_INDIRECT, 0);
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::NestedIndirect));
        // A loop inside the table.
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, t, 32, DESC_F_INDIRECT, 0);
        desc(&mem, t, 0, 0x5000, 16, DESC_F_NEXT, 1);
        desc(&mem, t, 1, 0x5000, 16, DESC_F_NEXT, 0);
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::ChainTooLong));
        // next beyond the table's entries.
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, t, 32, DESC_F_INDIRECT, 0);
        desc(&mem, t, 0, 0x5000, 16, DESC_F_NEXT, 2);
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::NextOutOfRange(2)));
        // A table longer than the queue size, all linked: too long a chain.
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, t, 16 * 9, DESC_F_INDIRECT, 0);
        for i in 0..9 {
            desc(
                &mem,
                t,
                i,
                0x5000,
                16,
                if i < 8 { DESC_F_NEXT } else { 0 },
                i + 1,
            );
        }
        offer(&mem, 8, &[0]);
        assert_eq!(pop1(&mem, &mut q), Err(QueueError::ChainTooLong));
        // A table outside RAM.
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        desc(&mem, DESC, 0, 0xFFF0, 32, DESC_F_INDIRECT, 0);
        offer(&mem, 8, &[0]);
        assert_eq!(
            pop1(&mem, &mut q),
            Err(QueueError::BufferOutsideRam {
                addr: 0xFFF0,
                len: 32
            })
        );
    }

    #[test]
    fn need_event_wraps() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(10, 10, 3));
        assert!(need_event(0xFFFF, 2, 0xFFFE));
        assert!(!need_event(2, 2, 0xFFFE));
    }

    #[test]
    fn notification_suppression() {
        let mem = TestMem::new(0x10000);
        let mut q = queue(8);
        // Nothing used: no notification.
        assert!(!q.needs_notification(&mem, false).unwrap());
        q.push_used(&mem, 0, 1).unwrap();
        mem.put(AVAIL, &AVAIL_F_NO_INTERRUPT.to_le_bytes());
        assert!(!q.needs_notification(&mem, false).unwrap());
        q.push_used(&mem, 0, 1).unwrap();
        mem.put(AVAIL, &0u16.to_le_bytes());
        assert!(q.needs_notification(&mem, false).unwrap());
        // EVENT_IDX: flags are ignored; used_event (after ring[8]) decides.
        mem.put(AVAIL, &AVAIL_F_NO_INTERRUPT.to_le_bytes());
        let used_event = AVAIL + 4 + 2 * 8;
        mem.put(used_event, &3u16.to_le_bytes());
        q.push_used(&mem, 0, 1).unwrap(); // used idx 3
        assert!(!q.needs_notification(&mem, true).unwrap(), "3 not in [2,3)");
        q.push_used(&mem, 0, 1).unwrap(); // 4
        assert!(q.needs_notification(&mem, true).unwrap(), "3 in [3,4)");
        // avail_event goes after the used ring.
        q.last_avail = 7;
        q.publish_avail_event(&mem).unwrap();
        assert_eq!(mem.get(USED + 4 + 8 * 8, 2), [7, 0]);
    }
}
