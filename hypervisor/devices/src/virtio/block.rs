//! Block backends for virtio-blk: what a disk is made of, by 512-byte
//! sector. [`MemDisk`] is a private image in memory; [`CowDisk`] is a
//! copy-on-write overlay, in chunks, over a gold image shared read-only by
//! several guests.
//!
//! virtio-blk talks to every backend through [`AsyncBlockBackend`]: a
//! request is submitted with owned buffers and either finishes at once or
//! later (a disk on a network server), by id. Every synchronous
//! [`BlockBackend`] is one that always finishes at once.
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

pub const SECTOR_SIZE: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The range is not inside the disk (or its end overflows).
    OutOfRange,
    /// A write or discard on a read-only disk.
    ReadOnly,
    /// A buffer whose length is not a whole number of sectors, or an image
    /// whose size is not.
    NotSectorMultiple,
    /// A chunk size that is not a power-of-two number of sectors.
    BadChunkSize,
    /// The overlay reached its limit, or memory for it ran out.
    NoSpace,
    /// The backend's storage failed or did not answer in time (a network
    /// disk's server error or deadline).
    Io,
}

/// A disk by sector.
pub trait BlockBackend {
    /// Size in sectors.
    fn capacity(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes (whole sectors) from `sector` on.
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Writes `data` (whole sectors) from `sector` on.
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError>;
    /// Makes earlier writes durable.
    fn flush(&mut self) -> Result<(), BlockError>;
    /// The guest no longer needs `count` sectors from `sector` on; what
    /// they read afterwards is unspecified (virtio 1.2 5.2.6).
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), BlockError>;
    /// The granularity, in sectors, at which discard frees anything.
    fn discard_granularity(&self) -> u32 {
        1
    }
}

/// One request to an [`AsyncBlockBackend`], with owned buffers: virtio-blk
/// copies guest memory into a write's buffer before submitting and out of a
/// read's buffer after completion, so a backend never sees guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOp {
    /// Fill `buf` (whole sectors) from `sector` on.
    Read {
        sector: u64,
        buf: Vec<u8>,
    },
    Write {
        sector: u64,
        data: Vec<u8>,
    },
    Flush,
    /// (sector, count) ranges, all checked by the caller against capacity.
    Discard {
        ranges: Vec<(u64, u64)>,
    },
}

impl BlockOp {
    /// The buffer this request carries (handed back on completion).
    pub fn into_buffer(self) -> Vec<u8> {
        match self {
            BlockOp::Read { buf, .. } => buf,
            BlockOp::Write { data, .. } => data,
            BlockOp::Flush | BlockOp::Discard { .. } => Vec::new(),
        }
    }
}

/// A finished request. `buf` is the request's buffer handed back: a read's
/// data, or a write's buffer for reuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDone {
    pub id: u64,
    pub result: Result<(), BlockError>,
    pub buf: Vec<u8>,
}

/// What [`AsyncBlockBackend::submit`] did with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Finished now: the result and the buffer.
    Done(Result<(), BlockError>, Vec<u8>),
    /// Finishes later: [`AsyncBlockBackend::poll`] returns it by id.
    Pending,
}

/// A disk whose requests may finish after they were submitted.
pub trait AsyncBlockBackend {
    /// Size in sectors.
    fn capacity(&self) -> u64;
    fn read_only(&self) -> bool;
    fn discard_granularity(&self) -> u32 {
        1
    }
    /// Starts request `id` (ids are never reused).
    fn submit(&mut self, id: u64, op: BlockOp) -> Submitted;
    /// The next request that finished after `submit` returned
    /// [`Submitted::Pending`]. One that virtio-blk no longer waits for (the
    /// device was reset meanwhile) is dropped by it.
    fn poll(&mut self) -> Option<BlockDone> {
        None
    }
}

/// A synchronous disk finishes every request at once.
impl<B: BlockBackend> AsyncBlockBackend for B {
    fn capacity(&self) -> u64 {
        BlockBackend::capacity(self)
    }
    fn read_only(&self) -> bool {
        BlockBackend::read_only(self)
    }
    fn discard_granularity(&self) -> u32 {
        BlockBackend::discard_granularity(self)
    }
    fn submit(&mut self, _id: u64, op: BlockOp) -> Submitted {
        match op {
            BlockOp::Read { sector, mut buf } => Submitted::Done(self.read(sector, &mut buf), buf),
            BlockOp::Write { sector, data } => Submitted::Done(self.write(sector, &data), data),
            BlockOp::Flush => Submitted::Done(self.flush(), Vec::new()),
            BlockOp::Discard { ranges } => {
                let r = ranges
                    .iter()
                    .try_for_each(|&(sector, count)| self.discard(sector, count));
                Submitted::Done(r, Vec::new())
            }
        }
    }
}

/// The byte range of `len` bytes at `sector` on a disk of `capacity`
/// sectors, checked for whole sectors, bounds and overflow.
pub fn byte_range(capacity: u64, sector: u64, len: u64) -> Result<(u64, u64), BlockError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::NotSectorMultiple);
    }
    let sectors = len / SECTOR_SIZE;
    let end = sector.checked_add(sectors).ok_or(BlockError::OutOfRange)?;
    if end > capacity {
        return Err(BlockError::OutOfRange);
    }
    // Both fit: capacity * 512 is a byte count held in memory or a file.
    let start = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(BlockError::OutOfRange)?;
    let end = end.checked_mul(SECTOR_SIZE).ok_or(BlockError::OutOfRange)?;
    Ok((start, end))
}

fn usize_range(capacity: u64, sector: u64, len: usize) -> Result<(usize, usize), BlockError> {
    let (s, e) = byte_range(capacity, sector, len as u64)?;
    let s = usize::try_from(s).map_err(|_| BlockError::OutOfRange)?;
    let e = usize::try_from(e).map_err(|_| BlockError::OutOfRange)?;
    Ok((s, e))
}

fn sectors_of(len: usize) -> Result<u64, BlockError> {
    let len = len as u64;
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::NotSectorMultiple);
    }
    Ok(len / SECTOR_SIZE)
}

/// A whole disk image held in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
}

impl MemDisk {
    pub fn new(data: Vec<u8>, read_only: bool) -> Result<Self, BlockError> {
        sectors_of(data.len())?;
        Ok(Self { data, read_only })
    }
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl BlockBackend for MemDisk {
    fn capacity(&self) -> u64 {
        (self.data.len() as u64) / SECTOR_SIZE
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let (s, e) = usize_range(BlockBackend::capacity(self), sector, buf.len())?;
        let src = self.data.get(s..e).ok_or(BlockError::OutOfRange)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let (s, e) = usize_range(BlockBackend::capacity(self), sector, data.len())?;
        let dst = self.data.get_mut(s..e).ok_or(BlockError::OutOfRange)?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = count
            .checked_mul(SECTOR_SIZE)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or(BlockError::OutOfRange)?;
        let (s, e) = usize_range(BlockBackend::capacity(self), sector, len)?;
        // Discarded sectors read as zeros here (deterministic).
        self.data
            .get_mut(s..e)
            .ok_or(BlockError::OutOfRange)?
            .fill(0);
        Ok(())
    }
}

/// The pieces of byte range [s, e) in `chunk`-byte chunks (a power of two)
/// as (chunk index, offset in chunk, offset from `s`, length).
fn pieces(chunk: usize, s: usize, e: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut at = s;
    core::iter::from_fn(move || {
        if at >= e {
            return None;
        }
        let within = at & chunk.wrapping_sub(1);
        let n = chunk.saturating_sub(within).min(e.saturating_sub(at));
        let item = (
            at.checked_div(chunk).unwrap_or(0) as u64,
            within,
            at.saturating_sub(s),
            n,
        );
        at = at.saturating_add(n);
        Some(item)
    })
}

/// A 64-bit hash of `bytes` (FNV-1a over 64-bit little-endian words, the
/// tail bytes one by one, then the length): names a gold image's content
/// in a snapshot. Not cryptographic.
pub fn hash64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    (h ^ bytes.len() as u64).wrapping_mul(PRIME)
}

/// The shared, read-only bytes under a [`CowDisk`]: reference-counted, or a
/// file that stays loaded for the hypervisor's lifetime (an image read from
/// the ESP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    Shared(Arc<[u8]>),
    Static(&'static [u8]),
}

impl core::ops::Deref for Base {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Base::Shared(a) => a,
            Base::Static(s) => s,
        }
    }
}

impl From<Arc<[u8]>> for Base {
    fn from(a: Arc<[u8]>) -> Self {
        Base::Shared(a)
    }
}

impl From<&'static [u8]> for Base {
    fn from(s: &'static [u8]) -> Self {
        Base::Static(s)
    }
}

/// A copy-on-write disk: reads come from the private overlay where a chunk
/// was written, else from the shared base; the first write to a chunk copies
/// it from the base. The base is never written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CowDisk {
    base: Base,
    chunk: usize,
    overlay: BTreeMap<u64, Box<[u8]>>,
    /// Bytes held by `overlay`.
    overlay_len: u64,
    /// The most the overlay may hold; a write needing more fails.
    limit: u64,
    read_only: bool,
}

impl CowDisk {
    /// `chunk_size` in bytes: a power of two, at least one sector. The
    /// overlay may grow to the size of the base.
    pub fn new(base: impl Into<Base>, chunk_size: usize) -> Result<Self, BlockError> {
        let base = base.into();
        sectors_of(base.len())?;
        if !chunk_size.is_power_of_two() || (chunk_size as u64) < SECTOR_SIZE {
            return Err(BlockError::BadChunkSize);
        }
        Ok(Self {
            limit: base.len() as u64,
            base,
            chunk: chunk_size,
            overlay: BTreeMap::new(),
            overlay_len: 0,
            read_only: false,
        })
    }

    /// Caps the overlay at `bytes` (the VM's memory budget for it).
    pub fn with_limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    /// A read-only view of the base: no overlay ever.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Bytes the overlay holds (for the per-VM memory accounting).
    pub fn overlay_bytes(&self) -> u64 {
        self.overlay_len
    }

    /// The same disk (base, chunk size, limit, read-only) without an overlay.
    pub fn emptied(&self) -> Self {
        Self {
            base: self.base.clone(),
            chunk: self.chunk,
            overlay: BTreeMap::new(),
            overlay_len: 0,
            limit: self.limit,
            read_only: self.read_only,
        }
    }

    /// Forgets every private change: the disk is the gold image again.
    pub fn drop_overlay(&mut self) {
        self.overlay.clear();
        self.overlay_len = 0;
    }

    /// A private copy of chunk `index`, allocated fallibly so that running
    /// out of memory fails the write instead of the hypervisor.
    fn copy_chunk(&self, index: u64) -> Result<Box<[u8]>, BlockError> {
        let src = self.base_chunk(index)?;
        self.overlay_len
            .checked_add(src.len() as u64)
            .filter(|&n| n <= self.limit)
            .ok_or(BlockError::NoSpace)?;
        let mut v = Vec::new();
        v.try_reserve_exact(src.len())
            .map_err(|_| BlockError::NoSpace)?;
        v.extend_from_slice(src);
        Ok(v.into_boxed_slice())
    }

    pub fn base(&self) -> &[u8] {
        &self.base
    }

    /// The overlay's chunk size in bytes.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// The most the overlay may hold.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The overlay's chunks (index, bytes), in index order.
    pub fn overlay_chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.overlay.iter().map(|(&i, c)| (i, &c[..]))
    }

    /// Replaces the overlay with `chunks` (index, bytes; a saved overlay of
    /// a disk over the same base), or changes nothing and says why: indices
    /// not strictly ascending or outside the base, a chunk of another size
    /// than its base chunk, more than the limit, a read-only disk, or no
    /// memory for the copy.
    pub fn replace_overlay<'a>(
        &mut self,
        chunks: impl Iterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), BlockError> {
        let mut overlay = BTreeMap::new();
        let mut len = 0u64;
        let mut last = None;
        for (index, data) in chunks {
            if self.read_only {
                return Err(BlockError::ReadOnly);
            }
            if last.is_some_and(|l| index <= l) {
                return Err(BlockError::OutOfRange);
            }
            last = Some(index);
            if self.base_chunk(index)?.len() != data.len() {
                return Err(BlockError::OutOfRange);
            }
            len = len
                .checked_add(data.len() as u64)
                .filter(|&n| n <= self.limit)
                .ok_or(BlockError::NoSpace)?;
            let mut v = Vec::new();
            v.try_reserve_exact(data.len())
                .map_err(|_| BlockError::NoSpace)?;
            v.extend_from_slice(data);
            overlay.insert(index, v.into_boxed_slice());
        }
        self.overlay = overlay;
        self.overlay_len = len;
        Ok(())
    }

    fn base_chunk(&self, index: u64) -> Result<&[u8], BlockError> {
        let start = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(self.chunk))
            .ok_or(BlockError::OutOfRange)?;
        let end = start.saturating_add(self.chunk).min(self.base.len());
        self.base.get(start..end).ok_or(BlockError::OutOfRange)
    }
}

impl BlockBackend for CowDisk {
    fn capacity(&self) -> u64 {
        (self.base.len() as u64) / SECTOR_SIZE
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let (s, e) = usize_range(BlockBackend::capacity(self), sector, buf.len())?;
        for (index, within, at, n) in pieces(self.chunk, s, e) {
            let src = match self.overlay.get(&index) {
                Some(c) => &c[..],
                None => self.base_chunk(index)?,
            };
            let src = src
                .get(within..within.saturating_add(n))
                .ok_or(BlockError::OutOfRange)?;
            buf.get_mut(at..at.saturating_add(n))
                .ok_or(BlockError::OutOfRange)?
                .copy_from_slice(src);
        }
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let (s, e) = usize_range(BlockBackend::capacity(self), sector, data.len())?;
        for (index, within, at, n) in pieces(self.chunk, s, e) {
            if !self.overlay.contains_key(&index) {
                // The last chunk of a base whose size is not a multiple of
                // the chunk size is shorter.
                let copy = self.copy_chunk(index)?;
                self.overlay_len = self.overlay_len.saturating_add(copy.len() as u64);
                self.overlay.insert(index, copy);
            }
            let dst = self
                .overlay
                .get_mut(&index)
                .and_then(|c| c.get_mut(within..within.saturating_add(n)))
                .ok_or(BlockError::OutOfRange)?;
            let src = data
                .get(at..at.saturating_add(n))
                .ok_or(BlockError::OutOfRange)?;
            dst.copy_from_slice(src);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = count
            .checked_mul(SECTOR_SIZE)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or(BlockError::OutOfRange)?;
        let (s, e) = usize_range(BlockBackend::capacity(self), sector, len)?;
        // Only chunks wholly inside the range are dropped (they read as the
        // base again, which discard allows); partial ones keep their data.
        for (index, within, _, n) in pieces(self.chunk, s, e) {
            if within == 0 && self.base_chunk(index).is_ok_and(|c| n == c.len()) {
                if let Some(c) = self.overlay.remove(&index) {
                    self.overlay_len = self.overlay_len.saturating_sub(c.len() as u64);
                }
            }
        }
        Ok(())
    }
    fn discard_granularity(&self) -> u32 {
        u32::try_from(self.chunk as u64 / SECTOR_SIZE).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    #[test]
    fn mem_disk_bounds_and_read_only() {
        assert_eq!(
            MemDisk::new(vec![0; 1000], false),
            Err(BlockError::NotSectorMultiple)
        );
        let mut d = MemDisk::new(pattern(4096), false).unwrap();
        assert_eq!(BlockBackend::capacity(&d), 8);
        let mut b = [0; 1024];
        d.read(6, &mut b).unwrap();
        assert_eq!(&b[..], &pattern(4096)[3072..]);
        assert_eq!(d.read(7, &mut b), Err(BlockError::OutOfRange));
        assert_eq!(d.read(u64::MAX, &mut b), Err(BlockError::OutOfRange));
        assert_eq!(d.read(0, &mut b[..100]), Err(BlockError::NotSectorMultiple));
        d.write(1, &[0xAA; 512]).unwrap();
        d.read(1, &mut b[..512]).unwrap();
        assert_eq!(b[..512], [0xAA; 512]);
        d.discard(1, 1).unwrap();
        d.read(1, &mut b[..512]).unwrap();
        assert_eq!(b[..512], [0; 512]);
        assert_eq!(d.discard(7, 2), Err(BlockError::OutOfRange));
        let mut ro = MemDisk::new(pattern(1024), true).unwrap();
        assert_eq!(ro.write(0, &[0; 512]), Err(BlockError::ReadOnly));
        assert_eq!(ro.discard(0, 1), Err(BlockError::ReadOnly));
        assert_eq!(ro.data(), &pattern(1024)[..]);
    }

    #[test]
    fn cow_overlay_is_private_and_base_untouched() {
        let base: Arc<[u8]> = pattern(64 * 1024).into();
        let mut a = CowDisk::new(base.clone(), 4096).unwrap();
        let b = CowDisk::new(base.clone(), 4096).unwrap();
        assert_eq!(a.overlay_bytes(), 0);
        // A write straddling chunks 0 and 1.
        a.write(7, &[0x55; 1024]).unwrap();
        assert_eq!(a.overlay_bytes(), 8192);
        let mut buf = vec![0; 8192];
        a.read(0, &mut buf).unwrap();
        assert_eq!(&buf[..3584], &base[..3584]);
        assert_eq!(&buf[3584..4608], &[0x55; 1024][..]);
        assert_eq!(&buf[4608..], &base[4608..8192]);
        b.read(0, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &base[..8192],
            "the other guest sees the gold image"
        );
        assert_eq!(&base[..], &pattern(64 * 1024)[..]);
        // Discard drops whole chunks only.
        a.discard(8, 8).unwrap();
        assert_eq!(a.overlay_bytes(), 4096);
        a.drop_overlay();
        a.read(0, &mut buf).unwrap();
        assert_eq!(&buf[..], &base[..8192]);
        assert_eq!(a.write(127, &[0; 1024]), Err(BlockError::OutOfRange));
        assert_eq!(BlockBackend::discard_granularity(&a), 8);
    }

    #[test]
    fn cow_short_last_chunk_and_bad_chunk_sizes() {
        let base: Arc<[u8]> = pattern(3 * 512).into();
        assert_eq!(
            CowDisk::new(base.clone(), 1000).unwrap_err(),
            BlockError::BadChunkSize
        );
        assert_eq!(
            CowDisk::new(base.clone(), 256).unwrap_err(),
            BlockError::BadChunkSize
        );
        let mut d = CowDisk::new(base.clone(), 1024).unwrap();
        d.write(2, &[1; 512]).unwrap();
        let mut buf = vec![0; 1536];
        d.read(0, &mut buf).unwrap();
        assert_eq!(&buf[..1024], &base[..1024]);
        assert_eq!(&buf[1024..], &[1; 512][..]);
        // The short last chunk counts as whole for discard.
        d.discard(2, 1).unwrap();
        d.read(2, &mut buf[..512]).unwrap();
        assert_eq!(&buf[..512], &base[1024..]);
    }

    #[test]
    fn an_overlay_is_saved_and_replaced_whole() {
        let base: Arc<[u8]> = pattern(8 * 1024 + 512).into();
        let mut a = CowDisk::new(base.clone(), 4096).unwrap();
        a.write(1, &[1; 512]).unwrap();
        a.write(16, &[2; 512]).unwrap(); // the short last chunk
        let saved: Vec<(u64, Vec<u8>)> = a.overlay_chunks().map(|(i, c)| (i, c.to_vec())).collect();
        assert_eq!(
            saved.iter().map(|c| (c.0, c.1.len())).collect::<Vec<_>>(),
            [(0, 4096), (2, 512)]
        );
        let mut b = CowDisk::new(base.clone(), 4096).unwrap();
        b.write(9, &[3; 512]).unwrap();
        b.replace_overlay(saved.iter().map(|(i, c)| (*i, &c[..])))
            .unwrap();
        assert_eq!(b, a, "b holds a's overlay, and only it");
        // Refused without change: out of order, a wrong length, outside
        // the base, over the limit, onto a read-only disk.
        let before = b.clone();
        let c0 = &saved[0].1[..];
        for bad in [
            vec![(2, &saved[1].1[..]), (0, c0)],
            vec![(0, &c0[..512])],
            vec![(3, c0)],
        ] {
            assert!(b.replace_overlay(bad.into_iter()).is_err());
            assert_eq!(b, before);
        }
        let mut small = CowDisk::new(base.clone(), 4096).unwrap().with_limit(4096);
        assert_eq!(
            small.replace_overlay(saved.iter().map(|(i, c)| (*i, &c[..]))),
            Err(BlockError::NoSpace)
        );
        let mut ro = CowDisk::new(base.clone(), 4096)
            .unwrap()
            .with_read_only(true);
        assert!(ro
            .replace_overlay(saved.iter().map(|(i, c)| (*i, &c[..])))
            .is_err());
        assert!(ro.replace_overlay(core::iter::empty()).is_ok());
        // The hash names the content.
        assert_eq!(hash64(&base), hash64(&pattern(8 * 1024 + 512)));
        assert_ne!(hash64(&base), hash64(&base[..base.len() - 1]));
        let mut other = pattern(8 * 1024 + 512);
        other[5000] ^= 1;
        assert_ne!(hash64(&base), hash64(&other));
    }

    #[test]
    fn byte_range_overflow() {
        assert_eq!(
            byte_range(u64::MAX, u64::MAX - 1, 1024),
            Err(BlockError::OutOfRange)
        );
        assert_eq!(byte_range(10, 9, 512), Ok((4608, 5120)));
        assert_eq!(byte_range(10, 10, 0), Ok((5120, 5120)));
    }

    #[test]
    fn cow_limit_and_read_only() {
        let base: Arc<[u8]> = pattern(16 * 1024).into();
        let mut d = CowDisk::new(base.clone(), 4096).unwrap().with_limit(8192);
        d.write(0, &[1; 512]).unwrap();
        d.write(8, &[2; 512]).unwrap();
        assert_eq!(d.overlay_bytes(), 8192);
        // A third chunk would pass the limit: refused, nothing changed.
        assert_eq!(d.write(16, &[3; 512]), Err(BlockError::NoSpace));
        let mut buf = vec![0; 512];
        d.read(16, &mut buf).unwrap();
        assert_eq!(&buf[..], &base[8192..8704]);
        // Rewriting a chunk it has is fine; discarding one frees room.
        d.write(1, &[4; 512]).unwrap();
        d.discard(8, 8).unwrap();
        assert_eq!(d.overlay_bytes(), 4096);
        d.write(16, &[3; 512]).unwrap();
        assert_eq!(d.overlay_bytes(), 8192);
        d.drop_overlay();
        assert_eq!(d.overlay_bytes(), 0);
        let mut ro = CowDisk::new(base.clone(), 4096)
            .unwrap()
            .with_read_only(true);
        assert!(BlockBackend::read_only(&ro));
        assert_eq!(ro.write(0, &[0; 512]), Err(BlockError::ReadOnly));
        assert_eq!(ro.discard(0, 8), Err(BlockError::ReadOnly));
        assert_eq!(ro.overlay_bytes(), 0);
    }
}
