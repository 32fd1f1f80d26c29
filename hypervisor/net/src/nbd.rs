//! An NBD client (the NBD protocol document, NetworkBlockDevice/nbd
//! doc/proto.md, cited as "proto.md" with the section name): fixed newstyle negotiation,
//! NBD_OPT_GO with NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE, then READ, WRITE,
//! FLUSH, TRIM and DISC with simple replies (structured replies are not
//! negotiated), several requests in flight.
//!
//! It survives the server: a connection that drops, or a reply that breaks
//! the protocol (bad magic, unknown cookie, oversize length), ends that
//! connection; the next one re-negotiates and re-sends every request not yet
//! answered. A WRITE completes only on the server's reply; a FLUSH is sent
//! only once every earlier WRITE and TRIM was answered (proto.md "Ordering
//! of messages and writes"). A request unanswered by its deadline completes
//! with [`Error::TimedOut`].
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

// Negotiation (proto.md "Handshake").
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// The old-style negotiation's second magic (not supported).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_GO: u32 = 7;
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags (proto.md "Transmission flags").
pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_ROTATIONAL: u16 = 1 << 4;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;

// Transmission (proto.md "Request message", "Simple reply message").
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Error values (proto.md "Error values").
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOSPC: u32 = 28;
pub const EINVAL: u32 = 22;
pub const ESHUTDOWN: u32 = 108;

const GREETING_LEN: usize = 18;
const OPT_REPLY_HEADER: usize = 20;
const REPLY_HEADER: usize = 16;
const REQUEST_HEADER: usize = 28;
/// The longest option reply taken (an INFO is 14 bytes; an error's message
/// at most 4096, proto.md "Conventions").
pub const MAX_OPT_REPLY: u32 = 64 * 1024;
/// The longest export name sent (proto.md "Conventions").
pub const MAX_NAME: usize = 4096;
/// The largest request without a server-given maximum: proto.md
/// "Block size constraints" says clients SHOULD NOT exceed 32 MiB.
pub const DEFAULT_MAX_LEN: u32 = 32 << 20;

/// An option error reply (proto.md "Option reply types", error bit set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepError {
    Unsup,
    Policy,
    Invalid,
    Platform,
    TlsReqd,
    /// The export does not exist.
    Unknown,
    Shutdown,
    BlockSizeReqd,
    TooBig,
    ExtHeaderReqd,
    Other(u32),
}

impl RepError {
    pub fn from_type(t: u32) -> Self {
        match t {
            0x8000_0001 => Self::Unsup,
            0x8000_0002 => Self::Policy,
            0x8000_0003 => Self::Invalid,
            0x8000_0004 => Self::Platform,
            0x8000_0005 => Self::TlsReqd,
            0x8000_0006 => Self::Unknown,
            0x8000_0007 => Self::Shutdown,
            0x8000_0008 => Self::BlockSizeReqd,
            0x8000_0009 => Self::TooBig,
            0x8000_000a => Self::ExtHeaderReqd,
            t => Self::Other(t),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Unsup => "NBD_REP_ERR_UNSUP",
            Self::Policy => "NBD_REP_ERR_POLICY",
            Self::Invalid => "NBD_REP_ERR_INVALID",
            Self::Platform => "NBD_REP_ERR_PLATFORM",
            Self::TlsReqd => "NBD_REP_ERR_TLS_REQD",
            Self::Unknown => "NBD_REP_ERR_UNKNOWN",
            Self::Shutdown => "NBD_REP_ERR_SHUTDOWN",
            Self::BlockSizeReqd => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            Self::TooBig => "NBD_REP_ERR_TOO_BIG",
            Self::ExtHeaderReqd => "NBD_REP_ERR_EXT_HEADER_REQD",
            Self::Other(_) => "NBD_REP_ERR_(unknown)",
        }
    }
}

/// A server that broke the protocol; the connection is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// The greeting's first magic is not NBDMAGIC.
    BadGreeting(u64),
    /// An old-style server (no option haggling).
    OldStyle,
    /// The server did not offer fixed newstyle negotiation.
    NotFixedNewstyle,
    BadOptionMagic(u64),
    /// An option reply for an option not asked.
    WrongOption(u32),
    /// An option reply type not valid here.
    UnexpectedReply(u32),
    OversizeOptionReply(u32),
    /// An INFO reply with the wrong length for its type, or block size
    /// constraints that are not powers of two.
    BadInfo(u16),
    /// ACK without an NBD_INFO_EXPORT before it.
    NoExportInfo,
    BadReplyMagic(u32),
    /// A structured reply, never negotiated.
    StructuredReply,
    /// A reply whose cookie names no request on the wire.
    UnknownCookie(u64),
}

/// Why a connection went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    /// The transport closed or failed.
    Transport,
    Protocol(ProtoError),
    /// NBD_OPT_GO was refused, with the server's message.
    Refused(RepError, String),
    /// The export after a reconnect is not the one before (size changed):
    /// nothing is re-sent to it.
    ExportChanged {
        before: u64,
        now: u64,
    },
    /// The server answered ESHUTDOWN; we disconnected softly.
    ServerShutdown,
    /// Negotiation did not finish within the deadline (a server that
    /// accepts but never speaks).
    NegotiationTimedOut,
}

/// What deserves a console line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Negotiation done; `resent` unanswered requests go out again.
    Ready {
        size: u64,
        flags: u16,
        resent: usize,
    },
    Down {
        reason: DownReason,
        /// Requests left unanswered, to be re-sent on the next connection.
        unanswered: usize,
    },
    /// Requests completed with [`Error::TimedOut`] in one poll.
    TimedOut { requests: usize },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Ready {
                size,
                flags,
                resent,
            } => {
                write!(f, "connected: {size} bytes, flags {flags:#x}")?;
                if flags & TF_READ_ONLY != 0 {
                    f.write_str(" (read-only)")?;
                }
                if *resent > 0 {
                    write!(f, ", {resent} requests re-sent")?;
                }
                Ok(())
            }
            Event::Down { reason, unanswered } => {
                f.write_str("connection lost: ")?;
                match reason {
                    DownReason::Transport => f.write_str("transport closed")?,
                    DownReason::Protocol(p) => write!(f, "protocol error {p:?}")?,
                    DownReason::Refused(e, m) => write!(f, "export refused: {} {m:?}", e.name())?,
                    DownReason::ExportChanged { before, now } => {
                        write!(f, "export size changed {before} -> {now}")?
                    }
                    DownReason::ServerShutdown => f.write_str("server shutting down")?,
                    DownReason::NegotiationTimedOut => f.write_str("negotiation timed out")?,
                }
                write!(f, ", {unanswered} requests unanswered")
            }
            Event::TimedOut { requests } => write!(f, "{requests} requests timed out"),
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server's error value (EIO, EPERM, ENOSPC...).
    Server(u32),
    /// Not answered within the deadline.
    TimedOut,
    /// A WRITE or TRIM on a read-only export.
    ReadOnly,
    /// A TRIM the server does not take.
    Unsupported,
    /// Past the end of the export (or the end overflows).
    OutOfRange,
    /// Not a multiple of the server's minimum block size.
    Unaligned,
    /// Longer than the server's maximum block size.
    TooLarge,
    /// After [`Client::shutdown`].
    ShutDown,
}

/// A request to the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    /// `fua`: durable before the reply (sent as FUA if the server offers it,
    /// otherwise the caller must flush).
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
    },
}

impl Command {
    fn is_write(&self) -> bool {
        matches!(self, Command::Write { .. } | Command::Trim { .. })
    }
}

/// A finished request: `data` holds what a READ read, or a WRITE's buffer
/// handed back for reuse; empty otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub id: u64,
    pub result: Result<(), Error>,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub export: String,
    /// Milliseconds a request may stay unanswered.
    pub deadline_ms: u64,
    /// Milliseconds before the first attempt to connect again; each failed
    /// attempt doubles it, up to `retry_max_ms`; a negotiation that
    /// succeeds sets it back.
    pub retry_ms: u64,
    pub retry_max_ms: u64,
    /// Requests on the wire at once.
    pub max_in_flight: usize,
}

/// The export as negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// Waiting to be sent on the current (or next) connection.
    Queued,
    Sent,
}

struct Request {
    cmd: Command,
    wire: Wire,
    submitted: u64,
    /// Completed already by its deadline; a late reply is consumed and
    /// dropped, and it is never re-sent.
    expired: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down {
        retry_at: u64,
    },
    Greeting,
    OptionReply,
    Ready,
    /// DISC sent after [`Client::shutdown`].
    Closed,
}

pub struct Client {
    config: Config,
    link: Link,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Bytes of `tx` already handed to the transport.
    tx_sent: usize,
    /// By cookie: cookies rise with submission, so this is also the order.
    reqs: BTreeMap<u64, Request>,
    next_cookie: u64,
    /// From this connection's negotiation, until ACK.
    pending_export: Option<Export>,
    pending_block: Option<(u32, u32, u32)>,
    export: Option<Export>,
    completions: VecDeque<Completion>,
    events: VecDeque<Event>,
    close: bool,
    shutdown: bool,
    /// When the current connection came up.
    connected_at: u64,
    /// The wait before the next connection attempt (see [`Config::retry_ms`]).
    backoff_ms: u64,
    /// Why the last connection went down, until one is ready again: the
    /// same reason again (a refused export on every retry) is one event.
    last_down: Option<DownReason>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(s.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

/// A request header (proto.md "Request message").
pub fn encode_request(out: &mut Vec<u8>, flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) {
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&cmd.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Checks block size constraints (proto.md "Block size constraints"):
/// min a power of two up to 64 KiB, preferred a power of two at least min,
/// max a multiple of min (or 0xffffffff) at least preferred... or min.
fn block_sizes_valid(min: u32, pref: u32, max: u32) -> bool {
    min.is_power_of_two()
        && min <= 64 * 1024
        && pref.is_power_of_two()
        && pref >= min
        && max >= min
        && (max == u32::MAX || max.is_multiple_of(min))
}

impl Client {
    pub fn new(config: Config) -> Self {
        Self {
            backoff_ms: config.retry_ms,
            config,
            link: Link::Down { retry_at: 0 },
            rx: Vec::new(),
            tx: Vec::new(),
            tx_sent: 0,
            reqs: BTreeMap::new(),
            next_cookie: 1,
            pending_export: None,
            pending_block: None,
            export: None,
            completions: VecDeque::new(),
            events: VecDeque::new(),
            close: false,
            shutdown: false,
            connected_at: 0,
            last_down: None,
        }
    }

    /// The export of the last successful negotiation.
    pub fn export(&self) -> Option<Export> {
        self.export
    }
    /// Negotiated and transmitting.
    pub fn is_ready(&self) -> bool {
        self.link == Link::Ready
    }
    /// Requests submitted and not completed.
    pub fn outstanding(&self) -> usize {
        self.reqs.values().filter(|r| !r.expired).count()
    }

    /// Whether the caller should open a connection now.
    pub fn should_connect(&self, now: u64) -> bool {
        matches!(self.link, Link::Down { retry_at } if now >= retry_at) && !self.shutdown
    }

    /// The transport is up: negotiation starts (the server speaks first).
    pub fn connected(&mut self, now: u64) {
        self.connected_at = now;
        self.rx.clear();
        self.tx.clear();
        self.tx_sent = 0;
        self.close = false;
        self.pending_export = None;
        self.pending_block = None;
        self.link = Link::Greeting;
    }

    /// The transport went down (closed, reset, connect failed).
    pub fn disconnected(&mut self, now: u64) {
        self.go_down(now, DownReason::Transport);
    }

    /// Whether the caller must close the transport, once
    /// [`Client::transmit`] is empty (a protocol error, a refused export,
    /// DISC sent): cleared by [`Client::connected`].
    pub fn wants_close(&self) -> bool {
        self.close
    }

    /// Bytes to send.
    pub fn transmit(&self) -> &[u8] {
        self.tx.get(self.tx_sent..).unwrap_or(&[])
    }
    /// `n` bytes of [`Client::transmit`] went out.
    pub fn sent(&mut self, n: usize) {
        self.tx_sent = self.tx_sent.saturating_add(n).min(self.tx.len());
        if self.tx_sent == self.tx.len() {
            self.tx.clear();
            self.tx_sent = 0;
        }
    }

    /// Whether [`Client::next_completion`] has one to give.
    pub fn has_completions(&self) -> bool {
        !self.completions.is_empty()
    }
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues a request; its id comes back in its [`Completion`]. Checks
    /// against the export happen now if negotiated, else once it is.
    pub fn submit(&mut self, cmd: Command, now: u64) -> u64 {
        let id = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        if self.shutdown {
            self.complete(id, cmd, Err(Error::ShutDown));
            return id;
        }
        self.reqs.insert(
            id,
            Request {
                cmd,
                wire: Wire::Queued,
                submitted: now,
                expired: false,
            },
        );
        self.pump();
        id
    }

    /// No more requests; once those outstanding are answered, DISC is sent
    /// and the transport is to be closed.
    pub fn shutdown(&mut self) {
        self.shutdown = true;
        self.pump();
    }

    /// Deadlines, then whatever can be sent.
    pub fn poll(&mut self, now: u64) {
        let deadline = self.config.deadline_ms;
        if matches!(self.link, Link::Greeting | Link::OptionReply)
            && now.saturating_sub(self.connected_at) >= deadline
        {
            self.go_down(now, DownReason::NegotiationTimedOut);
        }
        let mut timed_out = 0usize;
        let mut gone = Vec::new();
        for (&id, r) in self.reqs.iter_mut() {
            if r.expired || now.saturating_sub(r.submitted) < deadline {
                continue;
            }
            timed_out = timed_out.saturating_add(1);
            r.expired = true;
            let data = match &mut r.cmd {
                Command::Write { data, .. } => core::mem::take(data),
                _ => Vec::new(),
            };
            self.completions.push_back(Completion {
                id,
                result: Err(Error::TimedOut),
                data,
            });
            if r.wire == Wire::Queued {
                gone.push(id);
            }
        }
        for id in gone {
            self.reqs.remove(&id);
        }
        if timed_out > 0 {
            self.events.push_back(Event::TimedOut {
                requests: timed_out,
            });
        }
        self.pump();
    }

    /// Consumes bytes received.
    pub fn receive(&mut self, data: &[u8], now: u64) {
        if self.close || matches!(self.link, Link::Down { .. } | Link::Closed) {
            return;
        }
        self.rx.extend_from_slice(data);
        let mut at = 0usize;
        loop {
            let step = match self.link {
                Link::Greeting => self.parse_greeting(at),
                Link::OptionReply => self.parse_option_reply(at),
                Link::Ready => self.parse_reply(at),
                Link::Down { .. } | Link::Closed => Ok(None),
            };
            match step {
                Ok(Some(n)) => at = at.saturating_add(n),
                Ok(None) => break,
                Err(reason) => {
                    self.go_down(now, reason);
                    return;
                }
            }
        }
        self.rx.drain(..at.min(self.rx.len()));
        self.pump();
    }

    fn go_down(&mut self, now: u64, reason: DownReason) {
        let was_up = !matches!(self.link, Link::Down { .. } | Link::Closed);
        if !matches!(self.link, Link::Closed) {
            self.link = Link::Down {
                retry_at: now.saturating_add(self.backoff_ms),
            };
            self.backoff_ms = self
                .backoff_ms
                .saturating_mul(2)
                .min(self.config.retry_max_ms.max(self.config.retry_ms));
        }
        self.close = true;
        self.rx.clear();
        self.tx.clear();
        self.tx_sent = 0;
        // Answers to expired requests will never come now.
        self.reqs.retain(|_, r| !r.expired);
        for r in self.reqs.values_mut() {
            r.wire = Wire::Queued;
        }
        if reason == DownReason::ServerShutdown {
            // proto.md "Terminating the transmission phase": on ESHUTDOWN
            // the client disconnects softly.
            encode_request(&mut self.tx, 0, CMD_DISC, 0, 0, 0);
        }
        if was_up && self.last_down.as_ref() != Some(&reason) {
            self.last_down = Some(reason.clone());
            self.events.push_back(Event::Down {
                reason,
                unanswered: self.reqs.len(),
            });
        }
    }

    /// Greeting (proto.md "Fixed newstyle negotiation"); answers with the
    /// client flags and NBD_OPT_GO.
    fn parse_greeting(&mut self, at: usize) -> Result<Option<usize>, DownReason> {
        let b = self.rx.get(at..).unwrap_or(&[]);
        if b.len() < GREETING_LEN {
            return Ok(None);
        }
        let bad = DownReason::Protocol(ProtoError::BadGreeting(0));
        let m1 = be64(b, 0).ok_or(bad.clone())?;
        let m2 = be64(b, 8).ok_or(bad.clone())?;
        let flags = be16(b, 16).ok_or(bad)?;
        if m1 != NBDMAGIC {
            return Err(DownReason::Protocol(ProtoError::BadGreeting(m1)));
        }
        if m2 == OLDSTYLE_MAGIC {
            return Err(DownReason::Protocol(ProtoError::OldStyle));
        }
        if m2 != IHAVEOPT {
            return Err(DownReason::Protocol(ProtoError::BadGreeting(m2)));
        }
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(DownReason::Protocol(ProtoError::NotFixedNewstyle));
        }
        let mut cflags = FLAG_C_FIXED_NEWSTYLE;
        if flags & FLAG_NO_ZEROES != 0 {
            cflags |= FLAG_C_NO_ZEROES;
        }
        self.tx.extend_from_slice(&cflags.to_be_bytes());
        // NBD_OPT_GO (proto.md "NBD_OPT_INFO and NBD_OPT_GO"): name length,
        // name, number of information requests, the requests.
        let name = self.config.export.as_bytes();
        let name = name.get(..MAX_NAME.min(name.len())).unwrap_or(&[]);
        let name_len = name.len() as u32;
        let data_len = name_len.saturating_add(4 + 2 + 2 * 2);
        self.tx.extend_from_slice(&IHAVEOPT.to_be_bytes());
        self.tx.extend_from_slice(&OPT_GO.to_be_bytes());
        self.tx.extend_from_slice(&data_len.to_be_bytes());
        self.tx.extend_from_slice(&name_len.to_be_bytes());
        self.tx.extend_from_slice(name);
        self.tx.extend_from_slice(&2u16.to_be_bytes());
        self.tx.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        self.tx.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.link = Link::OptionReply;
        Ok(Some(GREETING_LEN))
    }

    /// One option reply (proto.md "Option reply types").
    fn parse_option_reply(&mut self, at: usize) -> Result<Option<usize>, DownReason> {
        let b = self.rx.get(at..).unwrap_or(&[]);
        if b.len() < OPT_REPLY_HEADER {
            return Ok(None);
        }
        let proto = |p| DownReason::Protocol(p);
        let magic = be64(b, 0).unwrap_or(0);
        let option = be32(b, 8).unwrap_or(0);
        let kind = be32(b, 12).unwrap_or(0);
        let len = be32(b, 16).unwrap_or(0);
        if magic != REPLY_MAGIC {
            return Err(proto(ProtoError::BadOptionMagic(magic)));
        }
        if option != OPT_GO {
            return Err(proto(ProtoError::WrongOption(option)));
        }
        if len > MAX_OPT_REPLY {
            return Err(proto(ProtoError::OversizeOptionReply(len)));
        }
        let total = OPT_REPLY_HEADER.saturating_add(len as usize);
        let Some(payload) = b.get(OPT_REPLY_HEADER..total) else {
            return Ok(None);
        };
        match kind {
            REP_INFO => {
                let info = be16(payload, 0).ok_or(proto(ProtoError::BadInfo(u16::MAX)))?;
                match info {
                    INFO_EXPORT => {
                        if payload.len() != 12 {
                            return Err(proto(ProtoError::BadInfo(info)));
                        }
                        let size = be64(payload, 2).unwrap_or(0);
                        let flags = be16(payload, 10).unwrap_or(0);
                        self.pending_export = Some(Export {
                            size,
                            flags,
                            min_block: 1,
                            preferred_block: 4096,
                            max_block: DEFAULT_MAX_LEN,
                        });
                    }
                    INFO_BLOCK_SIZE => {
                        if payload.len() != 14 {
                            return Err(proto(ProtoError::BadInfo(info)));
                        }
                        let min = be32(payload, 2).unwrap_or(0);
                        let pref = be32(payload, 6).unwrap_or(0);
                        let max = be32(payload, 10).unwrap_or(0);
                        if !block_sizes_valid(min, pref, max) {
                            return Err(proto(ProtoError::BadInfo(info)));
                        }
                        self.pending_block = Some((min, pref, max));
                    }
                    // Other information (name, description) is not needed.
                    _ => {}
                }
            }
            REP_ACK => {
                let mut e = self.pending_export.ok_or(proto(ProtoError::NoExportInfo))?;
                if let Some((min, pref, max)) = self.pending_block {
                    e.min_block = min;
                    e.preferred_block = pref;
                    e.max_block = max.min(DEFAULT_MAX_LEN);
                }
                if let Some(before) = self.export {
                    if before.size != e.size {
                        return Err(DownReason::ExportChanged {
                            before: before.size,
                            now: e.size,
                        });
                    }
                }
                self.export = Some(e);
                self.link = Link::Ready;
                self.last_down = None;
                self.backoff_ms = self.config.retry_ms;
                self.events.push_back(Event::Ready {
                    size: e.size,
                    flags: e.flags,
                    resent: self.reqs.len(),
                });
            }
            k if k & REP_FLAG_ERROR != 0 => {
                let msg =
                    String::from_utf8_lossy(payload.get(..256.min(payload.len())).unwrap_or(&[]))
                        .into_owned();
                return Err(DownReason::Refused(RepError::from_type(k), msg));
            }
            k => return Err(proto(ProtoError::UnexpectedReply(k))),
        }
        Ok(Some(total))
    }

    /// One simple reply (proto.md "Simple reply message"). An error reply
    /// carries no data, also for READ (what nbd-server and nbdkit send).
    fn parse_reply(&mut self, at: usize) -> Result<Option<usize>, DownReason> {
        let b = self.rx.get(at..).unwrap_or(&[]);
        if b.len() < REPLY_HEADER {
            return Ok(None);
        }
        let proto = |p| DownReason::Protocol(p);
        let magic = be32(b, 0).unwrap_or(0);
        let error = be32(b, 4).unwrap_or(0);
        let cookie = be64(b, 8).unwrap_or(0);
        if magic == STRUCTURED_REPLY_MAGIC {
            return Err(proto(ProtoError::StructuredReply));
        }
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(proto(ProtoError::BadReplyMagic(magic)));
        }
        let Some(r) = self.reqs.get(&cookie).filter(|r| r.wire == Wire::Sent) else {
            return Err(proto(ProtoError::UnknownCookie(cookie)));
        };
        let data_len = match r.cmd {
            Command::Read { len, .. } if error == 0 => len as usize,
            _ => 0,
        };
        let total = REPLY_HEADER.saturating_add(data_len);
        let Some(payload) = b.get(REPLY_HEADER..total) else {
            return Ok(None);
        };
        if error == ESHUTDOWN {
            // Not done: kept and re-sent on the next connection.
            return Err(DownReason::ServerShutdown);
        }
        let data = payload.to_vec();
        let Some(r) = self.reqs.remove(&cookie) else {
            return Err(proto(ProtoError::UnknownCookie(cookie)));
        };
        if !r.expired {
            let result = if error == 0 {
                Ok(())
            } else {
                Err(Error::Server(error))
            };
            match r.cmd {
                Command::Read { .. } => self.completions.push_back(Completion {
                    id: cookie,
                    result,
                    data,
                }),
                cmd => self.complete(cookie, cmd, result),
            }
        }
        Ok(Some(total))
    }

    fn complete(&mut self, id: u64, cmd: Command, result: Result<(), Error>) {
        let data = match cmd {
            Command::Write { data, .. } => data,
            _ => Vec::new(),
        };
        self.completions.push_back(Completion { id, result, data });
    }

    /// Checks a request against the export.
    fn check(e: &Export, cmd: &Command) -> Result<(), Error> {
        let (offset, len) = match cmd {
            Command::Read { offset, len } | Command::Trim { offset, len } => (*offset, *len),
            Command::Write { offset, data, .. } => (
                *offset,
                u32::try_from(data.len()).map_err(|_| Error::TooLarge)?,
            ),
            Command::Flush => return Ok(()),
        };
        if cmd.is_write() && e.flags & TF_READ_ONLY != 0 {
            return Err(Error::ReadOnly);
        }
        if matches!(cmd, Command::Trim { .. }) && e.flags & TF_SEND_TRIM == 0 {
            return Err(Error::Unsupported);
        }
        let end = offset
            .checked_add(u64::from(len))
            .ok_or(Error::OutOfRange)?;
        if end > e.size {
            return Err(Error::OutOfRange);
        }
        let min = u64::from(e.min_block.max(1));
        if !offset.is_multiple_of(min) || !u64::from(len).is_multiple_of(min) {
            return Err(Error::Unaligned);
        }
        if !matches!(cmd, Command::Trim { .. }) && len > e.max_block {
            return Err(Error::TooLarge);
        }
        Ok(())
    }

    /// Sends queued requests in order, up to the in-flight limit; a FLUSH
    /// waits for every earlier WRITE and TRIM to be answered.
    fn pump(&mut self) {
        if self.link != Link::Ready || self.close {
            return;
        }
        let Some(e) = self.export else {
            return;
        };
        let mut in_flight = self.reqs.values().filter(|r| r.wire == Wire::Sent).count();
        let mut earlier_writes = false;
        let mut failed = Vec::new();
        for (&id, r) in self.reqs.iter_mut() {
            if in_flight >= self.config.max_in_flight {
                break;
            }
            let is_write = r.cmd.is_write() && !r.expired;
            if r.wire == Wire::Queued && !r.expired {
                if matches!(r.cmd, Command::Flush) && earlier_writes {
                    // Later requests may still go; this one waits.
                    continue;
                }
                if let Err(err) = Self::check(&e, &r.cmd) {
                    failed.push((id, Err(err)));
                    continue;
                }
                if matches!(r.cmd, Command::Flush) && e.flags & TF_SEND_FLUSH == 0 {
                    // No write cache to flush: done once the writes are.
                    failed.push((id, Ok(())));
                    continue;
                }
                let (flags, kind, offset, len, data): (u16, u16, u64, u32, &[u8]) = match &r.cmd {
                    Command::Read { offset, len } => (0, CMD_READ, *offset, *len, &[]),
                    Command::Write { offset, data, fua } => {
                        let f = if *fua && e.flags & TF_SEND_FUA != 0 {
                            CMD_FLAG_FUA
                        } else {
                            0
                        };
                        (f, CMD_WRITE, *offset, data.len() as u32, data.as_slice())
                    }
                    Command::Flush => (0, CMD_FLUSH, 0, 0, &[]),
                    Command::Trim { offset, len } => (0, CMD_TRIM, *offset, *len, &[]),
                };
                encode_request(&mut self.tx, flags, kind, id, offset, len);
                self.tx.extend_from_slice(data);
                r.wire = Wire::Sent;
                in_flight = in_flight.saturating_add(1);
            }
            earlier_writes |= is_write;
        }
        for (id, result) in failed {
            if let Some(r) = self.reqs.remove(&id) {
                self.complete(id, r.cmd, result);
            }
        }
        if self.shutdown && self.reqs.is_empty() {
            let mut disc = Vec::with_capacity(REQUEST_HEADER);
            encode_request(&mut disc, 0, CMD_DISC, 0, 0, 0);
            self.tx.extend_from_slice(&disc);
            self.link = Link::Closed;
            self.close = true;
        }
    }
}

#[cfg(test)]
mod tests;
