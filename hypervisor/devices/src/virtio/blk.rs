//! virtio-blk (virtio 1.2 5.2) over a [`BlockBackend`]: one request queue;
//! requests IN, OUT, FLUSH, GET_ID and DISCARD; status OK, IOERR, UNSUPP.
//!
//! A request is parsed from the chain's byte streams, never from its
//! descriptor layout (2.6.4: the device must not assume a framing): the
//! 16-byte header at the start of the readable bytes, the status in the last
//! writable byte.
//!
//! The backend may finish a request later ([`AsyncBlockBackend`]): the
//! chain is kept, by request id, until the backend's completion; then the
//! data is copied to the guest, the status written and the chain handed to
//! the transport for the used ring ([`VirtioDevice::poll_done`]). A device
//! reset forgets every request in flight: a completion that comes after it
//! is dropped and touches no guest memory.
use super::block::{AsyncBlockBackend, BlockError, BlockOp, Submitted, SECTOR_SIZE};
use super::queue::{Chain, QueueError};
use super::{GuestMem, VirtioDevice};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

pub const DEVICE_ID: u16 = 2;

// Feature bits (5.2.3).
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_DISCARD: u64 = 1 << 13;

// Request types and status values (5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// The device ID string of GET_ID.
pub const ID_BYTES: usize = 20;
/// struct virtio_blk_discard_write_zeroes.
const DISCARD_SEG_SIZE: u32 = 16;
const DISCARD_F_UNMAP: u32 = 1;
const HEADER_SIZE: u32 = 16;

/// The request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request (seg_max): the queue size less header and
/// status, so a request fits in one chain (2.7.5.3.1).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest data segment (size_max).
pub const SIZE_MAX: u32 = 64 * 1024;
/// The largest request the device takes (SEG_MAX segments of SIZE_MAX);
/// above it a request fails with IOERR: a conforming driver never sends one,
/// and one request is work done inside one exit.
pub const MAX_DATA: u32 = SEG_MAX * SIZE_MAX;
pub const MAX_DISCARD_SEG: u32 = 32;
/// Sectors per discard segment (and per request).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;

// Configuration layout (5.2.4), byte offsets.
const CFG_CAPACITY: usize = 0;
const CFG_SIZE_MAX: usize = 8;
const CFG_SEG_MAX: usize = 12;
const CFG_BLK_SIZE: usize = 20;
const CFG_NUM_QUEUES: usize = 34;
const CFG_MAX_DISCARD_SECTORS: usize = 36;
const CFG_MAX_DISCARD_SEG: usize = 40;
const CFG_DISCARD_ALIGNMENT: usize = 44;
pub const CONFIG_LEN: usize = 60;

/// Data buffers kept for reuse, and the largest kept (so that requests
/// up to it allocate nothing once warm).
const SPARE_BUFFERS: usize = 8;
const SPARE_MAX: usize = 1 << 20;
/// Data bytes of requests a backend holds at once; IN and OUT requests
/// beyond wait in order, unstarted (their chains only), so a guest can't
/// make a slow backend hold more of the hypervisor's memory than this.
/// One request of [`MAX_DATA`] always fits.
pub const MAX_PENDING_BYTES: u32 = MAX_DATA;

/// A request the backend is working on.
struct Pending {
    queue: u16,
    chain: Chain,
    kind: u32,
    /// Data bytes counted against [`MAX_PENDING_BYTES`].
    bytes: u32,
}

/// An IN or OUT request not started yet (over [`MAX_PENDING_BYTES`]).
struct Waiting {
    queue: u16,
    chain: Chain,
    kind: u32,
    sector: u64,
    len: u32,
}

/// How a request went on: finished (status, bytes written), or later.
enum Start {
    Now(u8, u32),
    Later,
}

pub struct Blk<B: AsyncBlockBackend> {
    backend: B,
    id: [u8; ID_BYTES],
    spare: Vec<Vec<u8>>,
    /// Features in force (from DRIVER_OK); FLUSH and DISCARD need theirs.
    negotiated: u64,
    /// By request id; ids rise and are never reused, also across resets.
    pending: BTreeMap<u64, Pending>,
    pending_bytes: u32,
    waiting: VecDeque<Waiting>,
    next_id: u64,
}

impl<B: AsyncBlockBackend> Blk<B> {
    /// `serial` is the GET_ID string (its first 20 bytes).
    pub fn new(backend: B, serial: &[u8]) -> Self {
        let mut id = [0; ID_BYTES];
        for (d, &s) in id.iter_mut().zip(serial) {
            *d = s;
        }
        Self {
            backend,
            id,
            spare: Vec::new(),
            negotiated: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            waiting: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Requests submitted to the backend and not finished.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
    /// IN and OUT requests waiting for room under [`MAX_PENDING_BYTES`].
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn buffer(&mut self, len: u32) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.resize(len as usize, 0);
        b
    }
    fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && b.capacity() <= SPARE_MAX {
            self.spare.push(b);
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, bytes: &[u8]| {
            for (d, &b) in c.iter_mut().skip(off).zip(bytes) {
                *d = b;
            }
        };
        put(CFG_CAPACITY, &self.backend.capacity().to_le_bytes());
        put(CFG_SIZE_MAX, &SIZE_MAX.to_le_bytes());
        put(CFG_SEG_MAX, &SEG_MAX.to_le_bytes());
        put(CFG_BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
        put(CFG_NUM_QUEUES, &1u16.to_le_bytes());
        put(CFG_MAX_DISCARD_SECTORS, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(CFG_MAX_DISCARD_SEG, &MAX_DISCARD_SEG.to_le_bytes());
        put(
            CFG_DISCARD_ALIGNMENT,
            &self.backend.discard_granularity().to_le_bytes(),
        );
        c
    }

    /// Starts one request: finished now with the status and the bytes
    /// written before it, or later.
    fn request(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
    ) -> Result<Start, QueueError> {
        // More unfinished requests than the queue has entries: the driver
        // offered chains the device still holds (2.7.13.3 forbids it);
        // failed at once, so held chains stay bounded.
        if self.pending.len().saturating_add(self.waiting.len()) >= usize::from(QUEUE_SIZE) {
            return Ok(Start::Now(S_IOERR, 0));
        }
        let mut h = [0u8; HEADER_SIZE as usize];
        if chain.read_at(mem, 0, &mut h)? < h.len() {
            return Ok(Start::Now(S_IOERR, 0));
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = h;
        let kind = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        // The status byte is the last writable byte (checked by `handle`).
        let out_len = chain.readable_len().saturating_sub(HEADER_SIZE);
        let in_len = chain.writable_len().saturating_sub(1);
        // Data the device would have to move the wrong way (a device-readable
        // buffer for a read, a device-writable one for a write): a malformed
        // request, failed with IOERR.
        let wrong_way = match kind {
            T_IN | T_GET_ID => out_len != 0,
            T_OUT | T_DISCARD => in_len != 0,
            T_FLUSH => out_len != 0 || in_len != 0,
            _ => false,
        };
        let supported = match kind {
            T_FLUSH => self.negotiated & F_FLUSH != 0,
            T_DISCARD => self.negotiated & F_DISCARD != 0,
            _ => true,
        };
        if wrong_way && supported {
            return Ok(Start::Now(S_IOERR, 0));
        }
        match kind {
            T_IN => self.read(queue, chain, mem, sector, in_len),
            T_OUT => self.write(queue, chain, mem, sector, out_len),
            T_FLUSH if self.negotiated & F_FLUSH != 0 => {
                self.issue(queue, chain, mem, T_FLUSH, BlockOp::Flush, 0)
            }
            T_GET_ID => {
                let n = usize::try_from(in_len).unwrap_or(0).min(ID_BYTES);
                let id = self.id.get(..n).unwrap_or(&[]);
                let done = chain.write_at(mem, 0, id)?;
                Ok(Start::Now(S_OK, u32::try_from(done).unwrap_or(0)))
            }
            T_DISCARD if self.negotiated & F_DISCARD != 0 => {
                self.discard(queue, chain, mem, out_len)
            }
            // Unknown types, and FLUSH or DISCARD not negotiated.
            _ => Ok(Start::Now(S_UNSUPP, 0)),
        }
    }

    /// Hands `op` to the backend; `bytes` of data count against
    /// [`MAX_PENDING_BYTES`] while it is pending.
    fn issue(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
        kind: u32,
        op: BlockOp,
        bytes: u32,
    ) -> Result<Start, QueueError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match self.backend.submit(id, op) {
            Submitted::Done(r, buf) => {
                let (status, written) = self.finish(kind, r, buf, chain, mem)?;
                Ok(Start::Now(status, written))
            }
            Submitted::Pending => {
                self.pending_bytes = self.pending_bytes.saturating_add(bytes);
                self.pending.insert(
                    id,
                    Pending {
                        queue,
                        chain: chain.clone(),
                        kind,
                        bytes,
                    },
                );
                Ok(Start::Later)
            }
        }
    }

    /// A finished request: a read's data to the guest; the status and the
    /// bytes written.
    fn finish(
        &mut self,
        kind: u32,
        r: Result<(), BlockError>,
        buf: Vec<u8>,
        chain: &Chain,
        mem: &dyn GuestMem,
    ) -> Result<(u8, u32), QueueError> {
        let mut written = 0;
        if kind == T_IN && r.is_ok() {
            written = u32::try_from(chain.write_at(mem, 0, &buf)?).unwrap_or(0);
        }
        self.recycle(buf);
        Ok((status(r), written))
    }

    /// Whether an IN or OUT request of `len` bytes must wait: others wait
    /// already (order is kept), or it doesn't fit beside those pending.
    fn must_wait(&self, len: u32) -> bool {
        !self.waiting.is_empty()
            || (!self.pending.is_empty()
                && self.pending_bytes.saturating_add(len) > MAX_PENDING_BYTES)
    }

    /// Starts an IN or OUT request that was checked already.
    fn start_io(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
        kind: u32,
        sector: u64,
        len: u32,
    ) -> Result<Start, QueueError> {
        let mut buf = self.buffer(len);
        let op = if kind == T_IN {
            BlockOp::Read { sector, buf }
        } else {
            if chain.read_at(mem, HEADER_SIZE, &mut buf)? < buf.len() {
                self.recycle(buf);
                return Ok(Start::Now(S_IOERR, 0));
            }
            BlockOp::Write { sector, data: buf }
        };
        self.issue(queue, chain, mem, kind, op, len)
    }

    fn start_or_wait(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
        kind: u32,
        sector: u64,
        len: u32,
    ) -> Result<Start, QueueError> {
        if self.must_wait(len) {
            self.waiting.push_back(Waiting {
                queue,
                chain: chain.clone(),
                kind,
                sector,
                len,
            });
            return Ok(Start::Later);
        }
        self.start_io(queue, chain, mem, kind, sector, len)
    }

    /// Completes a chain kept for later: status, then the used entry.
    fn deliver(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
        status: u8,
        written: u32,
        done: &mut dyn FnMut(u16, u16, u32) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let status_at = chain.writable_len().saturating_sub(1);
        chain.write_at(mem, status_at, &[status])?;
        done(queue, chain.head, used_len(written, status_at))
    }

    fn read(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
        sector: u64,
        len: u32,
    ) -> Result<Start, QueueError> {
        if len > MAX_DATA
            || super::block::byte_range(self.backend.capacity(), sector, u64::from(len)).is_err()
        {
            return Ok(Start::Now(S_IOERR, 0));
        }
        self.start_or_wait(queue, chain, mem, T_IN, sector, len)
    }

    fn write(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
        sector: u64,
        len: u32,
    ) -> Result<Start, QueueError> {
        // 5.2.6.2: on a read-only device a write is IOERR and writes nothing.
        if self.backend.read_only()
            || len > MAX_DATA
            || super::block::byte_range(self.backend.capacity(), sector, u64::from(len)).is_err()
        {
            return Ok(Start::Now(S_IOERR, 0));
        }
        self.start_or_wait(queue, chain, mem, T_OUT, sector, len)
    }

    /// DISCARD: segments of {sector, num_sectors, flags}; all are checked
    /// before any is done.
    fn discard(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
        len: u32,
    ) -> Result<Start, QueueError> {
        if self.backend.read_only() {
            return Ok(Start::Now(S_IOERR, 0));
        }
        if len == 0
            || !len.is_multiple_of(DISCARD_SEG_SIZE)
            || len / DISCARD_SEG_SIZE > MAX_DISCARD_SEG
        {
            return Ok(Start::Now(S_IOERR, 0));
        }
        let count = len / DISCARD_SEG_SIZE;
        let mut segs = [(0u64, 0u32); MAX_DISCARD_SEG as usize];
        for (i, slot) in (0..count).zip(segs.iter_mut()) {
            let mut b = [0u8; DISCARD_SEG_SIZE as usize];
            let off = HEADER_SIZE.saturating_add(i.saturating_mul(DISCARD_SEG_SIZE));
            if chain.read_at(mem, off, &mut b)? < b.len() {
                return Ok(Start::Now(S_IOERR, 0));
            }
            let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = b;
            let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
            let num = u32::from_le_bytes([n0, n1, n2, n3]);
            let flags = u32::from_le_bytes([f0, f1, f2, f3]);
            // 5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
            // Together: any flag at all.
            if flags & !DISCARD_F_UNMAP != 0 || flags & DISCARD_F_UNMAP != 0 {
                return Ok(Start::Now(S_UNSUPP, 0));
            }
            if num > MAX_DISCARD_SECTORS
                || super::block::byte_range(
                    self.backend.capacity(),
                    sector,
                    u64::from(num).saturating_mul(SECTOR_SIZE),
                )
                .is_err()
            {
                return Ok(Start::Now(S_IOERR, 0));
            }
            *slot = (sector, num);
        }
        let ranges = segs
            .iter()
            .take(count as usize)
            .map(|&(sector, num)| (sector, u64::from(num)))
            .collect();
        self.issue(queue, chain, mem, T_DISCARD, BlockOp::Discard { ranges }, 0)
    }
}

/// The used length counts bytes written from the start of the writable
/// part (2.7.8); when the status byte isn't right after the data (a short
/// read, a long GET_ID buffer) it stops short of it, an underestimate 2.7.8
/// allows.
fn used_len(written: u32, status_at: u32) -> u32 {
    if written == status_at {
        written.saturating_add(1)
    } else {
        written
    }
}

fn status(r: Result<(), BlockError>) -> u8 {
    if r.is_ok() {
        S_OK
    } else {
        S_IOERR
    }
}

impl<B: AsyncBlockBackend> VirtioDevice for Blk<B> {
    fn device_id(&self) -> u16 {
        DEVICE_ID
    }
    fn pci_class(&self) -> [u8; 3] {
        // Mass storage, SCSI controller (what virtio-blk has used).
        [0x01, 0x00, 0x00]
    }
    fn features(&self) -> u64 {
        let ro = if self.backend.read_only() { F_RO } else { 0 };
        F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | ro
    }
    fn num_queues(&self) -> u16 {
        1
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
    fn handle(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &dyn GuestMem,
    ) -> Result<Option<u32>, QueueError> {
        // Without a status byte the request can't be completed: broken.
        let Some(status_at) = chain.writable_len().checked_sub(1) else {
            return Err(QueueError::NoStatus);
        };
        match self.request(queue, chain, mem)? {
            Start::Now(status, written) => {
                chain.write_at(mem, status_at, &[status])?;
                Ok(Some(used_len(written, status_at)))
            }
            Start::Later => Ok(None),
        }
    }
    fn poll_done(
        &mut self,
        mem: &dyn GuestMem,
        done: &mut dyn FnMut(u16, u16, u32) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        while let Some(d) = self.backend.poll() {
            // Not waited for (reset since): dropped, guest memory untouched.
            let Some(p) = self.pending.remove(&d.id) else {
                self.recycle(d.buf);
                continue;
            };
            self.pending_bytes = self.pending_bytes.saturating_sub(p.bytes);
            let (status, written) = self.finish(p.kind, d.result, d.buf, &p.chain, mem)?;
            self.deliver(p.queue, &p.chain, mem, status, written, done)?;
        }
        // Room freed: start waiting requests, in order.
        while let Some(w) = self.waiting.front() {
            if !self.pending.is_empty()
                && self.pending_bytes.saturating_add(w.len) > MAX_PENDING_BYTES
            {
                break;
            }
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            if let Start::Now(status, written) =
                self.start_io(w.queue, &w.chain, mem, w.kind, w.sector, w.len)?
            {
                self.deliver(w.queue, &w.chain, mem, status, written, done)?;
            }
        }
        Ok(())
    }
    fn activate(&mut self, features: u64) {
        self.negotiated = features;
    }
    fn identity(&self) -> super::Identity {
        super::Identity::Blk {
            capacity: self.backend.capacity(),
            read_only: self.backend.read_only(),
            serial: self.id,
        }
    }
    fn take_identity(&mut self, id: &super::Identity) -> Result<(), crate::state::StateError> {
        let super::Identity::Blk { .. } = id else {
            return Err(crate::state::StateError::Invalid(
                "virtio device kind (not a disk)",
            ));
        };
        crate::state::ensure(
            *id == self.identity(),
            "disk identity (capacity, read-only or serial differ)",
        )
    }
    fn busy(&self) -> Option<&'static str> {
        if !self.pending.is_empty() {
            Some("disk requests in flight on its backend")
        } else if !self.waiting.is_empty() {
            Some("disk requests waiting for its backend")
        } else {
            None
        }
    }
    fn reset(&mut self) {
        self.negotiated = 0;
        // 2.4: after a reset nothing of the old requests reaches the guest.
        self.pending.clear();
        self.pending_bytes = 0;
        self.waiting.clear();
    }
}

#[cfg(test)]
pub(crate) mod slow {
    //! A test backend whose requests finish when the test says.
    use crate::virtio::block::*;
    use alloc::collections::VecDeque;
    use alloc::vec::Vec;

    /// A backend that finishes requests only when the test says so.
    pub struct SlowDisk {
        pub disk: MemDisk,
        pub held: Vec<(u64, BlockOp)>,
        ready: VecDeque<BlockDone>,
    }

    impl SlowDisk {
        pub fn new(sectors: usize) -> Self {
            let data = (0..sectors * 512).map(|i| (i % 253) as u8).collect();
            Self {
                disk: MemDisk::new(data, false).unwrap(),
                held: Vec::new(),
                ready: VecDeque::new(),
            }
        }
        /// Finishes the `i`th held request, with `fail` as an I/O error.
        pub fn finish(&mut self, i: usize, fail: bool) -> u64 {
            let (id, op) = self.held.remove(i);
            let (r, buf) = match self.disk.submit(id, op) {
                Submitted::Done(r, b) => (r, b),
                Submitted::Pending => unreachable!(),
            };
            let result = if fail { Err(BlockError::Io) } else { r };
            self.ready.push_back(BlockDone { id, result, buf });
            id
        }
    }

    impl AsyncBlockBackend for SlowDisk {
        fn capacity(&self) -> u64 {
            crate::virtio::block::BlockBackend::capacity(&self.disk)
        }
        fn read_only(&self) -> bool {
            false
        }
        fn submit(&mut self, id: u64, op: BlockOp) -> Submitted {
            self.held.push((id, op));
            Submitted::Pending
        }
        fn poll(&mut self) -> Option<BlockDone> {
            self.ready.pop_front()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slow::SlowDisk;
    use super::*;
    use crate::virtio::block::{CowDisk, MemDisk};
    use crate::virtio::queue::tests::{desc, offer, queue, AVAIL, DESC};
    use crate::virtio::queue::{QueueFeatures, SplitQueue, DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::testmem::TestMem;
    use alloc::sync::Arc;

    const HDR: u64 = 0x5000;
    const DATA: u64 = 0x10000;
    const ST: u64 = 0x7000;

    fn disk(sectors: usize, ro: bool) -> Blk<MemDisk> {
        let data = (0..sectors * 512)
            .map(|i| (i / 512) as u8 ^ (i as u8))
            .collect();
        let mut b = Blk::new(
            MemDisk::new(data, ro).unwrap(),
            b"ferrovisor-disk-0001-extra",
        );
        b.activate(b.features());
        b
    }

    fn header(mem: &TestMem, kind: u32, sector: u64) {
        let mut h = Vec::new();
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        mem.put(HDR, &h);
    }

    /// Runs one request of header + data (readable or writable) + status;
    /// returns (status, used length).
    fn run<B: AsyncBlockBackend>(
        blk: &mut Blk<B>,
        mem: &TestMem,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_write: bool,
    ) -> Result<(u8, u32), QueueError> {
        header(mem, kind, sector);
        mem.put(ST, &[0xFF]);
        let mut q = queue(8);
        if data_len > 0 {
            desc(mem, DESC, 0, HDR, 16, DESC_F_NEXT, 1);
            let f = if data_write { DESC_F_WRITE } else { 0 };
            desc(mem, DESC, 1, DATA, data_len, DESC_F_NEXT | f, 2);
            desc(mem, DESC, 2, ST, 1, DESC_F_WRITE, 0);
        } else {
            desc(mem, DESC, 0, HDR, 16, DESC_F_NEXT, 2);
            desc(mem, DESC, 2, ST, 1, DESC_F_WRITE, 0);
        }
        // A fresh queue each time: the driver ring starts over.
        mem.put(AVAIL + 2, &[0, 0]);
        offer(mem, 8, &[0]);
        let mut c = Chain::default();
        assert!(q.pop(mem, QueueFeatures::default(), &mut c)?);
        let used = blk
            .handle(0, &c, mem)?
            .expect("a synchronous backend finishes at once");
        Ok((mem.get(ST, 1)[0], used))
    }

    #[test]
    fn config_fields() {
        let b = disk(64, false);
        let mut c = [0u8; CONFIG_LEN];
        b.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 64);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 32);
        let mut tail = [0xEEu8; 8];
        b.read_config(56, &mut tail);
        assert_eq!(tail, [0; 8], "past the end reads 0");
        assert_eq!(b.features() & F_RO, 0);
        assert_ne!(disk(1, true).features() & F_RO, 0);
    }

    #[test]
    fn read_write_roundtrip() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(64, false);
        let (st, used) = run(&mut b, &mem, T_IN, 3, 1024, true).unwrap();
        assert_eq!((st, used), (S_OK, 1025));
        assert_eq!(mem.get(DATA, 1024), b.backend().data()[1536..2560]);
        mem.put(DATA, &[0x5A; 512]);
        assert_eq!(run(&mut b, &mem, T_OUT, 10, 512, false).unwrap(), (S_OK, 1));
        assert_eq!(&b.backend().data()[5120..5632], &[0x5A; 512][..]);
        // A request bigger than the bounce buffer.
        // More than one 64 KiB step of the old bounce buffer.
        let big = 3 * 65536u32 / 2;
        let mut b = disk(256, false);
        let (st, used) = run(&mut b, &mem, T_IN, 0, big, true).unwrap();
        assert_eq!((st, used), (S_OK, big + 1));
        assert_eq!(
            mem.get(DATA, big as usize),
            b.backend().data()[..big as usize]
        );
    }

    #[test]
    fn out_of_range_and_partial_sectors_are_ioerr() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(8, false);
        let before = b.backend().data().to_vec();
        assert_eq!(run(&mut b, &mem, T_IN, 7, 1024, true).unwrap().0, S_IOERR);
        assert_eq!(
            run(&mut b, &mem, T_IN, u64::MAX, 512, true).unwrap().0,
            S_IOERR
        );
        assert_eq!(run(&mut b, &mem, T_IN, 0, 100, true).unwrap().0, S_IOERR);
        assert_eq!(run(&mut b, &mem, T_OUT, 8, 512, false).unwrap().0, S_IOERR);
        assert_eq!(run(&mut b, &mem, T_OUT, 0, 513, false).unwrap().0, S_IOERR);
        assert_eq!(b.backend().data(), &before[..]);
    }

    #[test]
    fn read_only_rejects_writes_and_discards() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(8, true);
        let before = b.backend().data().to_vec();
        mem.put(DATA, &[1; 512]);
        assert_eq!(
            run(&mut b, &mem, T_OUT, 0, 512, false).unwrap(),
            (S_IOERR, 1)
        );
        mem.put(DATA, &[0; 16]);
        assert_eq!(
            run(&mut b, &mem, T_DISCARD, 0, 16, false).unwrap().0,
            S_IOERR
        );
        assert_eq!(b.backend().data(), &before[..]);
        assert_eq!(run(&mut b, &mem, T_IN, 0, 512, true).unwrap().0, S_OK);
    }

    #[test]
    fn flush_get_id_unsupported() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(8, false);
        assert_eq!(run(&mut b, &mem, T_FLUSH, 0, 0, false).unwrap(), (S_OK, 1));
        assert_eq!(
            run(&mut b, &mem, T_GET_ID, 0, 20, true).unwrap(),
            (S_OK, 21)
        );
        assert_eq!(mem.get(DATA, 20), b"ferrovisor-disk-0001");
        // A longer buffer: the ID, then the status at its end; the used
        // length covers the ID only.
        assert_eq!(
            run(&mut b, &mem, T_GET_ID, 0, 64, true).unwrap(),
            (S_OK, 20)
        );
        assert_eq!(run(&mut b, &mem, 13, 0, 0, false).unwrap().0, S_UNSUPP);
        assert_eq!(run(&mut b, &mem, 0xDEAD, 0, 0, false).unwrap().0, S_UNSUPP);
        let mut short = Blk::new(MemDisk::new(vec![0; 512], false).unwrap(), b"ab");
        // Not negotiated: FLUSH and DISCARD are unsupported.
        assert_eq!(
            run(&mut short, &mem, T_FLUSH, 0, 0, false).unwrap().0,
            S_UNSUPP
        );
        mem.put(DATA, &discard_seg(0, 1, 0));
        assert_eq!(
            run(&mut short, &mem, T_DISCARD, 0, 16, false).unwrap().0,
            S_UNSUPP
        );
        short.activate(F_FLUSH);
        assert_eq!(run(&mut short, &mem, T_FLUSH, 0, 0, false).unwrap().0, S_OK);
        mem.put(DATA, &[0xFF; 20]);
        run(&mut short, &mem, T_GET_ID, 0, 20, true).unwrap();
        let mut want = [0u8; 20];
        want[..2].copy_from_slice(b"ab");
        assert_eq!(mem.get(DATA, 20), want);
    }

    fn discard_seg(sector: u64, num: u32, flags: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sector.to_le_bytes());
        v.extend_from_slice(&num.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v
    }

    #[test]
    fn discard_requests() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(16, false);
        let mut segs = discard_seg(2, 2, 0);
        segs.extend(discard_seg(10, 1, 0));
        mem.put(DATA, &segs);
        assert_eq!(run(&mut b, &mem, T_DISCARD, 0, 32, false).unwrap().0, S_OK);
        assert_eq!(&b.backend().data()[1024..2048], &[0; 1024][..]);
        assert_eq!(&b.backend().data()[5120..5632], &[0; 512][..]);
        assert_ne!(&b.backend().data()[2048..2560], &[0; 512][..]);
        // A bad second segment: nothing is discarded.
        let before = b.backend().data().to_vec();
        let mut segs = discard_seg(4, 1, 0);
        segs.extend(discard_seg(15, 2, 0));
        mem.put(DATA, &segs);
        assert_eq!(
            run(&mut b, &mem, T_DISCARD, 0, 32, false).unwrap().0,
            S_IOERR
        );
        assert_eq!(b.backend().data(), &before[..]);
        mem.put(DATA, &discard_seg(0, 1, DISCARD_F_UNMAP));
        assert_eq!(
            run(&mut b, &mem, T_DISCARD, 0, 16, false).unwrap().0,
            S_UNSUPP
        );
        mem.put(DATA, &discard_seg(0, 1, 0x80));
        assert_eq!(
            run(&mut b, &mem, T_DISCARD, 0, 16, false).unwrap().0,
            S_UNSUPP
        );
        assert_eq!(
            run(&mut b, &mem, T_DISCARD, 0, 20, false).unwrap().0,
            S_IOERR
        );
        assert_eq!(
            run(
                &mut b,
                &mem,
                T_DISCARD,
                0,
                16 * (MAX_DISCARD_SEG + 1),
                false
            )
            .unwrap()
            .0,
            S_IOERR
        );
        assert_eq!(b.backend().data(), &before[..]);
    }

    #[test]
    fn data_in_the_wrong_direction_is_ioerr() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(8, false);
        let before = b.backend().data().to_vec();
        // A read whose data buffer the device may only read, a write whose
        // data buffer it may only write, a flush or GET_ID with data.
        mem.put(DATA, &[0xAB; 512]);
        assert_eq!(
            run(&mut b, &mem, T_IN, 0, 512, false).unwrap(),
            (S_IOERR, 1)
        );
        assert_eq!(mem.get(DATA, 512), [0xAB; 512], "nothing written");
        assert_eq!(
            run(&mut b, &mem, T_OUT, 0, 512, true).unwrap(),
            (S_IOERR, 0)
        );
        assert_eq!(
            run(&mut b, &mem, T_DISCARD, 0, 16, true).unwrap().0,
            S_IOERR
        );
        assert_eq!(run(&mut b, &mem, T_FLUSH, 0, 16, false).unwrap().0, S_IOERR);
        assert_eq!(run(&mut b, &mem, T_FLUSH, 0, 16, true).unwrap().0, S_IOERR);
        assert_eq!(
            run(&mut b, &mem, T_GET_ID, 0, 20, false).unwrap().0,
            S_IOERR
        );
        assert_eq!(mem.get(DATA, 512), [0xAB; 512]);
        assert_eq!(b.backend().data(), &before[..]);
    }

    #[test]
    fn no_status_byte_breaks_the_device() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(8, false);
        header(&mem, T_IN, 0);
        let mut q = queue(8);
        desc(&mem, DESC, 0, HDR, 16, 0, 0);
        offer(&mem, 8, &[0]);
        let mut c = Chain::default();
        assert!(q.pop(&mem, QueueFeatures::default(), &mut c).unwrap());
        assert_eq!(b.handle(0, &c, &mem), Err(QueueError::NoStatus));
    }

    #[test]
    fn short_header_is_ioerr() {
        let mem = TestMem::new(0x40000);
        let mut b = disk(8, false);
        let mut q = queue(8);
        desc(&mem, DESC, 0, HDR, 8, DESC_F_NEXT, 1);
        desc(&mem, DESC, 1, ST, 1, DESC_F_WRITE, 0);
        offer(&mem, 8, &[0]);
        let mut c = Chain::default();
        assert!(q.pop(&mem, QueueFeatures::default(), &mut c).unwrap());
        assert_eq!(b.handle(0, &c, &mem), Ok(Some(1)));
        assert_eq!(mem.get(ST, 1), [S_IOERR]);
    }

    #[test]
    fn header_split_across_descriptors() {
        // No framing assumed: the header in two pieces, status after data
        // in the same descriptor.
        let mem = TestMem::new(0x40000);
        let mut b = disk(8, false);
        header(&mem, T_IN, 1);
        let mut q = queue(8);
        desc(&mem, DESC, 0, HDR, 4, DESC_F_NEXT, 1);
        desc(&mem, DESC, 1, HDR + 4, 12, DESC_F_NEXT, 2);
        desc(&mem, DESC, 2, DATA, 513, DESC_F_WRITE, 0);
        offer(&mem, 8, &[0]);
        let mut c = Chain::default();
        assert!(q.pop(&mem, QueueFeatures::default(), &mut c).unwrap());
        assert_eq!(b.handle(0, &c, &mem), Ok(Some(513)));
        assert_eq!(mem.get(DATA, 512), b.backend().data()[512..1024]);
        assert_eq!(mem.get(DATA + 512, 1), [S_OK]);
    }

    #[test]
    fn gold_image_guests_are_isolated() {
        let base: Arc<[u8]> = vec![0x11u8; 64 * 512].into();
        let mem = TestMem::new(0x40000);
        let mut a = Blk::new(CowDisk::new(base.clone(), 4096).unwrap(), b"a");
        let mut b = Blk::new(CowDisk::new(base.clone(), 4096).unwrap(), b"b");
        a.activate(a.features());
        b.activate(b.features());
        mem.put(DATA, &[0x22; 512]);
        assert_eq!(run(&mut a, &mem, T_OUT, 5, 512, false).unwrap().0, S_OK);
        assert_eq!(a.backend().overlay_bytes(), 4096);
        assert_eq!(run(&mut b, &mem, T_IN, 5, 512, true).unwrap().0, S_OK);
        assert_eq!(mem.get(DATA, 512), [0x11; 512]);
        assert_eq!(run(&mut a, &mem, T_IN, 5, 512, true).unwrap().0, S_OK);
        assert_eq!(mem.get(DATA, 512), [0x22; 512]);
        assert_eq!(b.backend().overlay_bytes(), 0);
        assert!(base.iter().all(|&x| x == 0x11));
        // An overlay at its limit: the write fails with IOERR.
        let mut full = Blk::new(
            CowDisk::new(base.clone(), 4096).unwrap().with_limit(0),
            b"c",
        );
        full.activate(full.features());
        assert_eq!(
            run(&mut full, &mem, T_OUT, 5, 512, false).unwrap().0,
            S_IOERR
        );
        assert_eq!(run(&mut full, &mem, T_IN, 5, 512, true).unwrap().0, S_OK);
        assert_eq!(mem.get(DATA, 512), [0x11; 512]);
    }

    fn slow(sectors: usize) -> Blk<SlowDisk> {
        let mut b = Blk::new(SlowDisk::new(sectors), b"slow");
        b.activate(b.features());
        b
    }

    /// Request `i`: header at 0x4000 + 0x20 i, data at 0x10000 + 0x10000 i,
    /// status at 0x7000 + i; descriptors 3i..3i+2; popped from `q`.
    fn offer_req(
        mem: &TestMem,
        q: &mut SplitQueue,
        i: u16,
        kind: u32,
        sector: u64,
        len: u32,
    ) -> Chain {
        let hdr = 0x4000 + 0x20 * u64::from(i);
        let data = 0x10000 + 0x10000 * u64::from(i);
        let st = 0x7000 + u64::from(i);
        let mut h = kind.to_le_bytes().to_vec();
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        mem.put(hdr, &h);
        mem.put(st, &[0xFF]);
        let d = 3 * i;
        let f = if kind == T_IN { DESC_F_WRITE } else { 0 };
        desc(mem, DESC, d, hdr, 16, DESC_F_NEXT, d + 1);
        desc(mem, DESC, d + 1, data, len, DESC_F_NEXT | f, d + 2);
        desc(mem, DESC, d + 2, st, 1, DESC_F_WRITE, 0);
        offer(mem, 64, &[d]);
        let mut c = Chain::default();
        assert!(q.pop(mem, QueueFeatures::default(), &mut c).unwrap());
        c
    }

    fn drain(b: &mut Blk<SlowDisk>, mem: &TestMem) -> Vec<(u16, u16, u32)> {
        let mut v = Vec::new();
        b.poll_done(mem, &mut |q, h, l| {
            v.push((q, h, l));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn completions_out_of_order() {
        let mem = TestMem::new(0x80000);
        let mut q = queue(64);
        let mut b = slow(64);
        let c0 = offer_req(&mem, &mut q, 0, T_IN, 0, 1024);
        let c1 = offer_req(&mem, &mut q, 1, T_IN, 8, 512);
        mem.put(0x30000, &[0x5A; 512]);
        let c2 = offer_req(&mem, &mut q, 2, T_OUT, 16, 512);
        for c in [&c0, &c1, &c2] {
            assert_eq!(b.handle(0, c, &mem), Ok(None), "left for later");
        }
        assert_eq!(b.in_flight(), 3);
        assert_eq!(mem.get(0x7000, 3), vec![0xFF; 3], "no status yet");
        assert!(drain(&mut b, &mem).is_empty());
        // The second read finishes first.
        b.backend_mut().finish(1, false);
        assert_eq!(drain(&mut b, &mem), vec![(0, 3, 513)]);
        assert_eq!(mem.get(0x7001, 1), vec![S_OK]);
        let want: Vec<u8> = (8 * 512..9 * 512).map(|i| (i % 253) as u8).collect();
        assert_eq!(mem.get(0x20000, 512), want);
        assert_eq!(mem.get(0x7000, 1), vec![0xFF], "the first is still pending");
        assert_eq!(mem.get(0x10000, 4), vec![0; 4]);
        // Then the write, then the first read.
        b.backend_mut().finish(1, false);
        b.backend_mut().finish(0, false);
        assert_eq!(drain(&mut b, &mem), vec![(0, 6, 1), (0, 0, 1025)]);
        assert_eq!(mem.get(0x7000, 3), vec![S_OK; 3]);
        let want: Vec<u8> = (0..1024).map(|i| (i % 253) as u8).collect();
        assert_eq!(mem.get(0x10000, 1024), want);
        assert_eq!(
            &b.backend().disk.data()[16 * 512..17 * 512],
            &[0x5A; 512][..]
        );
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn backend_errors_are_ioerr() {
        let mem = TestMem::new(0x80000);
        let mut q = queue(64);
        let mut b = slow(64);
        let c0 = offer_req(&mem, &mut q, 0, T_IN, 0, 512);
        mem.put(0x20000, &[1; 512]);
        let c1 = offer_req(&mem, &mut q, 1, T_OUT, 0, 512);
        assert_eq!(b.handle(0, &c0, &mem), Ok(None));
        assert_eq!(b.handle(0, &c1, &mem), Ok(None));
        b.backend_mut().finish(0, true);
        b.backend_mut().finish(0, true);
        // A failed read writes no data, so its used length stops short of
        // the status byte; the write's counts the status byte.
        assert_eq!(drain(&mut b, &mem), vec![(0, 0, 0), (0, 3, 1)]);
        assert_eq!(mem.get(0x7000, 2), vec![S_IOERR, S_IOERR]);
        assert_eq!(
            mem.get(0x10000, 512),
            vec![0; 512],
            "no data from a failed read"
        );
    }

    #[test]
    fn reset_drops_requests_in_flight() {
        let mem = TestMem::new(0x80000);
        let mut q = queue(64);
        let mut b = slow(64);
        let c0 = offer_req(&mem, &mut q, 0, T_IN, 0, 512);
        assert_eq!(b.handle(0, &c0, &mem), Ok(None));
        b.reset();
        b.activate(b.features());
        assert_eq!(b.in_flight(), 0);
        // The driver reuses the memory for something else.
        mem.put(0x10000, &[0xAA; 512]);
        mem.put(0x7000, &[0xBB]);
        b.backend_mut().finish(0, false);
        assert!(drain(&mut b, &mem).is_empty(), "no used entry");
        assert_eq!(mem.get(0x10000, 512), vec![0xAA; 512], "no data written");
        assert_eq!(mem.get(0x7000, 1), vec![0xBB], "no status written");
        // A new request after the reset is served normally: its id is new.
        let mut q = queue(64);
        mem.put(AVAIL + 2, &[0, 0]);
        let c = offer_req(&mem, &mut q, 1, T_IN, 0, 512);
        assert_eq!(b.handle(0, &c, &mem), Ok(None));
        b.backend_mut().finish(0, false);
        assert_eq!(drain(&mut b, &mem), vec![(0, 3, 513)]);
    }

    #[test]
    fn pending_bytes_are_bounded() {
        let big = MAX_DATA / 2 + 512;
        let mem = TestMem::new(0x10000 + 3 * 0x10000 + big as usize);
        let mut q = queue(64);
        let sectors = (2 * big as usize) / 512 + 8;
        let mut b = slow(sectors);
        // Descriptors with overlapping data areas are fine for the test.
        let c0 = offer_req(&mem, &mut q, 0, T_IN, 0, big);
        let c1 = offer_req(&mem, &mut q, 1, T_IN, 0, big);
        let c2 = offer_req(&mem, &mut q, 2, T_IN, 0, 512);
        for c in [&c0, &c1, &c2] {
            assert_eq!(b.handle(0, c, &mem), Ok(None));
        }
        assert_eq!(
            b.backend().held.len(),
            1,
            "the second doesn't fit beside the first"
        );
        assert_eq!(b.waiting(), 2, "and the small one keeps the order");
        b.backend_mut().finish(0, false);
        assert_eq!(drain(&mut b, &mem), vec![(0, 0, big + 1)]);
        assert_eq!(
            b.backend().held.len(),
            2,
            "both started once room was freed"
        );
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn held_requests_are_bounded_by_the_queue_size() {
        let mem = TestMem::new(0x80000);
        let mut q = queue(64);
        let mut b = slow(64);
        let c = offer_req(&mem, &mut q, 0, T_IN, 0, 512);
        // The same chain offered again and again while held.
        for _ in 0..QUEUE_SIZE {
            assert_eq!(b.handle(0, &c, &mem), Ok(None));
        }
        assert_eq!(b.handle(0, &c, &mem), Ok(Some(0)));
        assert_eq!(mem.get(0x7000, 1), vec![S_IOERR]);
        assert_eq!(b.in_flight(), usize::from(QUEUE_SIZE));
    }

    #[test]
    fn synchronous_backends_finish_at_once() {
        // MemDisk through the same interface: handle finishes it.
        let mem = TestMem::new(0x80000);
        let mut q = queue(64);
        let mut b = disk(64, false);
        let c = offer_req(&mem, &mut q, 0, T_IN, 1, 512);
        assert_eq!(b.handle(0, &c, &mem), Ok(Some(513)));
        assert_eq!(b.in_flight(), 0);
        let mut none = true;
        b.poll_done(&mem, &mut |_, _, _| {
            none = false;
            Ok(())
        })
        .unwrap();
        assert!(none);
    }
}
