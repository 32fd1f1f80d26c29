//! An NBD export as a virtio-blk backend: each [`BlockOp`] becomes NBD
//! requests on a [`Client`] and finishes when their replies came. The core
//! moves the client's bytes (see the crate's design note) and sets the
//! clock before submitting.
use crate::nbd::{Client, Command, Error, TF_READ_ONLY};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use devices::virtio::block::{
    AsyncBlockBackend, BlockDone, BlockError, BlockOp, Submitted, SECTOR_SIZE,
};

/// A block request split over NBD requests (a discard of several ranges).
struct Group {
    left: usize,
    result: Result<(), BlockError>,
}

pub struct NbdDisk {
    client: Client,
    now: u64,
    /// NBD request id -> block request id.
    parts: BTreeMap<u64, u64>,
    groups: BTreeMap<u64, Group>,
    ready: VecDeque<BlockDone>,
}

/// How a failed NBD request reaches virtio-blk (every one is IOERR there).
fn block_error(e: Error) -> BlockError {
    match e {
        Error::ReadOnly => BlockError::ReadOnly,
        Error::OutOfRange | Error::TooLarge => BlockError::OutOfRange,
        Error::Unaligned => BlockError::NotSectorMultiple,
        Error::Server(_) | Error::TimedOut | Error::Unsupported | Error::ShutDown => BlockError::Io,
    }
}

fn offset(sector: u64) -> Option<u64> {
    sector.checked_mul(SECTOR_SIZE)
}

impl NbdDisk {
    /// A client whose negotiation is done (the capacity is the export's).
    pub fn new(client: Client) -> Option<Self> {
        client.export()?;
        Some(Self {
            client,
            now: 0,
            parts: BTreeMap::new(),
            groups: BTreeMap::new(),
            ready: VecDeque::new(),
        })
    }
    pub fn client(&self) -> &Client {
        &self.client
    }
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }
    /// Whether a request finished (its `poll` has one to give).
    pub fn has_done(&self) -> bool {
        !self.ready.is_empty() || self.client.has_completions()
    }
    /// The time requests submitted from now on are stamped with.
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    fn send(&mut self, id: u64, cmd: Command) {
        let nid = self.client.submit(cmd, self.now);
        self.parts.insert(nid, id);
    }
}

impl AsyncBlockBackend for NbdDisk {
    fn capacity(&self) -> u64 {
        self.client.export().map_or(0, |e| e.size / SECTOR_SIZE)
    }
    fn read_only(&self) -> bool {
        self.client
            .export()
            .is_some_and(|e| e.flags & TF_READ_ONLY != 0)
    }
    fn discard_granularity(&self) -> u32 {
        self.client
            .export()
            // The minimum block size in 512-byte sectors.
            .map_or(1, |e| (e.min_block >> 9).max(1))
    }
    fn submit(&mut self, id: u64, op: BlockOp) -> Submitted {
        let range = |sector: u64, len: usize| -> Option<(u64, u32)> {
            Some((offset(sector)?, u32::try_from(len).ok()?))
        };
        let mut cmds = Vec::new();
        match op {
            BlockOp::Read { sector, buf } => match range(sector, buf.len()) {
                Some((offset, len)) => cmds.push(Command::Read { offset, len }),
                None => return Submitted::Done(Err(BlockError::OutOfRange), buf),
            },
            BlockOp::Write { sector, data } => match range(sector, data.len()) {
                Some((offset, _)) => cmds.push(Command::Write {
                    offset,
                    data,
                    fua: false,
                }),
                None => return Submitted::Done(Err(BlockError::OutOfRange), data),
            },
            BlockOp::Flush => cmds.push(Command::Flush),
            BlockOp::Discard { ranges } => {
                for (sector, count) in ranges {
                    let bytes = count
                        .checked_mul(SECTOR_SIZE)
                        .and_then(|b| u32::try_from(b).ok());
                    match (offset(sector), bytes) {
                        (Some(offset), Some(len)) => cmds.push(Command::Trim { offset, len }),
                        _ => return Submitted::Done(Err(BlockError::OutOfRange), Vec::new()),
                    }
                }
                if cmds.is_empty() {
                    return Submitted::Done(Ok(()), Vec::new());
                }
            }
        }
        self.groups.insert(
            id,
            Group {
                left: cmds.len(),
                result: Ok(()),
            },
        );
        for cmd in cmds {
            self.send(id, cmd);
        }
        Submitted::Pending
    }
    fn poll(&mut self) -> Option<BlockDone> {
        while let Some(c) = self.client.next_completion() {
            let Some(id) = self.parts.remove(&c.id) else {
                continue;
            };
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            g.left = g.left.saturating_sub(1);
            if let Err(e) = c.result {
                g.result = Err(block_error(e));
            }
            if g.left == 0 {
                let result = g.result;
                self.groups.remove(&id);
                self.ready.push_back(BlockDone {
                    id,
                    result,
                    buf: c.data,
                });
            }
        }
        self.ready.pop_front()
    }
}
