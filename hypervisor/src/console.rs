//! The hypervisor console on COM1.
//!
//! Nothing that runs inside a guest's exit waits for the serial port: every
//! line goes into a bounded queue of its source (the hypervisor itself, or one
//! guest) and a drainer feeds COM1 only as far as its transmitter has room
//! (LSR.THRE, then one FIFO load), never spinning. The drainer runs from the
//! scheduler loop, the idle loop and, rate-limited, after exits; it takes the
//! sources in turn, one whole line at a time, so a guest that floods its
//! console neither delays another guest's lines nor splits them. A full queue
//! drops its oldest lines and the drainer then prints
//! `[name] ... (N bytes dropped)`.
//!
//! Before the scheduler starts, and on the fatal and power-off paths, output
//! is synchronous ([`flush_sync`]).
use alloc::collections::VecDeque;
use alloc::string::String;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};

pub const COM1: u16 = 0x3F8;
/// Source of the hypervisor's own lines (they carry their own prefix).
pub const HV: usize = 0;
/// Sources: the hypervisor and up to `MAX_SOURCES - 1` guests.
pub const MAX_SOURCES: usize = 128;
/// Queue sizes in bytes.
pub const HV_QUEUE: usize = 16 * 1024;
pub const GUEST_QUEUE: usize = 4 * 1024;
/// A guest's UART reports its transmitter busy while its queue has less room
/// than this (a longest line plus a FIFO load), as a real 16550 would while
/// its line is slower than the guest.
pub const LINE_ROOM: usize = 256 + 16;
/// Marks a hypervisor line queued among a guest's lines (no guest prefix).
const UNPREFIXED: u8 = 0;
/// Output buffer of the drainer: one line with its prefix (the summary of
/// a few dozen guests is one line).
const OUT: usize = 2112;

/// A bounded byte queue of whole lines (a streaming source may leave its last
/// line open). When full, the oldest lines make room and are counted.
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    /// Bytes dropped since the drainer last reported it.
    pub dropped: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            cap: cap.max(2),
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn room(&self) -> usize {
        self.cap - self.buf.len()
    }

    /// Appends `bytes`, dropping the oldest lines first when they don't fit.
    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            // Only the newest part of an oversized write can be kept.
            let cut = bytes.len() - self.cap;
            self.dropped += cut as u64;
            &bytes[cut..]
        } else {
            bytes
        };
        while self.room() < bytes.len() {
            let n = match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => self.buf.len(),
            };
            self.buf.drain(..n);
            self.dropped += n as u64;
        }
        self.buf.extend(bytes);
    }

    /// Whether the open (unterminated) last line is absent.
    fn ends_line(&self) -> bool {
        self.buf.back().is_none_or(|&b| b == b'\n')
    }
}

/// One source of console lines.
pub struct Source {
    /// Empty for the hypervisor: its lines carry their own prefix.
    name: String,
    ring: Mutex<Ring>,
    /// Bytes queued, readable without the lock.
    queued: AtomicUsize,
    cap: usize,
}

impl Source {
    pub fn new(name: &str, cap: usize) -> Self {
        Self {
            name: String::from(name),
            ring: Mutex::new(Ring::new(cap)),
            queued: AtomicUsize::new(0),
            cap: cap.max(2),
        }
    }

    fn update<R>(&self, f: impl FnOnce(&mut Ring) -> R) -> R {
        let mut r = self.ring.lock();
        let before = r.len();
        let out = f(&mut r);
        let after = r.len();
        self.queued.store(after, Ordering::Release);
        if after >= before {
            PENDING.fetch_add(after - before, Ordering::AcqRel);
        } else {
            PENDING.fetch_sub(before - after, Ordering::AcqRel);
        }
        out
    }

    /// Queues one whole line (`\n` is added).
    pub fn line(&self, line: &[u8]) {
        self.update(|r| {
            if !r.ends_line() {
                // A streamed partial line (the guest had the keyboard) ends here.
                r.push(b"\n");
            }
            let line = &line[..line.len().min(OUT - 64)];
            r.push(line);
            r.push(b"\n");
        });
    }

    /// Queues a hypervisor line after this source's lines (no guest prefix),
    /// so that e.g. `vm x: exited` follows the guest's last output.
    pub fn unprefixed_line(&self, line: &[u8]) {
        self.update(|r| {
            if !r.ends_line() {
                r.push(b"\n");
            }
            let line = &line[..line.len().min(OUT - 64)];
            r.push(&[UNPREFIXED]);
            r.push(line);
            r.push(b"\n");
        });
    }

    /// Queues bytes as they come (the focused guest: prompts, echo).
    pub fn raw(&self, bytes: &[u8]) {
        self.update(|r| {
            for &b in bytes {
                if b != UNPREFIXED && b != b'\r' {
                    r.push(&[b]);
                }
            }
        });
    }

    /// Whether a whole line (and a FIFO load) still fits without dropping.
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::Acquire) + LINE_ROOM <= self.cap
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Bytes queued over all sources (a cheap "anything to send?").
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// The transmit side of a UART.
pub trait Tx {
    /// How many bytes may be written now without waiting (0: busy).
    fn room(&mut self) -> usize;
    fn send(&mut self, b: u8);
}

/// Moves queued lines to the UART: whole lines, sources in turn.
pub struct Drainer {
    out: [u8; OUT],
    pos: usize,
    len: usize,
    /// The source whose line is unfinished on screen (a streaming guest).
    owner: Option<usize>,
    /// Where the round robin goes on.
    next: usize,
    /// Only this source's output goes out (the command prompt's, while it
    /// is open and until its output is out: the other lines wait in their
    /// queues meanwhile).
    pub only: Option<usize>,
}

impl Default for Drainer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drainer {
    pub const fn new() -> Self {
        Self {
            out: [0; OUT],
            pos: 0,
            len: 0,
            owner: None,
            next: 0,
            only: None,
        }
    }

    /// Bytes taken from the queues but not yet sent.
    pub fn holding(&self) -> bool {
        self.pos < self.len
    }

    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < OUT {
                self.out[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn put_prefix(&mut self, s: &Source) {
        if !s.name.is_empty() {
            self.put(b"[");
            self.put(s.name.as_bytes());
            self.put(b"] ");
        }
    }

    /// Sends as much as the UART takes now; returns the bytes sent.
    pub fn pump<'a>(
        &mut self,
        n: usize,
        get: impl Fn(usize) -> Option<&'a Source>,
        tx: &mut impl Tx,
    ) -> usize {
        let mut room = tx.room();
        let mut sent = 0;
        while room > 0 {
            if self.pos == self.len && !self.refill(n, &get) {
                break;
            }
            tx.send(self.out[self.pos]);
            self.pos += 1;
            room -= 1;
            sent += 1;
        }
        sent
    }

    /// Takes the next line (or the next piece of an open line) into `out`.
    fn refill<'a>(&mut self, n: usize, get: &impl Fn(usize) -> Option<&'a Source>) -> bool {
        self.pos = 0;
        self.len = 0;
        let has = |i: usize| get(i).is_some_and(|s| s.queued() > 0);
        // An unfinished line goes on first; then the hypervisor's own lines
        // (few, bounded, and about the guests: `vm X: started` must come out
        // before that guest's output and its `vm X: exited`); otherwise the
        // next guest in turn.
        let pick = match (self.only, self.owner) {
            (Some(p), _) => has(p).then_some(p),
            (None, Some(o)) if has(o) => Some(o),
            _ if has(HV) => Some(HV),
            _ => (0..n).map(|k| (self.next + k) % n).find(|&i| has(i)),
        };
        let Some(i) = pick else {
            return false;
        };
        self.next = (i + 1) % n.max(1);
        let s = get(i).expect("checked above");
        let Some(mut r) = s.ring.try_lock() else {
            // A producer holds it for a moment: try again at the next pump.
            return false;
        };
        let before = r.len();
        if self.owner.is_some_and(|o| o != i || r.dropped > 0) {
            self.put(b"\r\n");
            self.owner = None;
        }
        if r.dropped > 0 {
            self.put_prefix(s);
            let mut num = LineBuf::new();
            let _ = write!(num, "... ({} bytes dropped)\r\n", r.dropped);
            self.put(num.as_str().as_bytes());
            r.dropped = 0;
        }
        if r.buf.front() == Some(&UNPREFIXED) {
            r.buf.pop_front();
            if self.owner.take().is_some() {
                self.put(b"\r\n");
            }
        } else if !r.buf.is_empty() && self.owner != Some(i) {
            self.put_prefix(s);
        }
        let mut complete = r.buf.is_empty();
        while self.len < OUT - 2 {
            let Some(b) = r.buf.pop_front() else {
                break;
            };
            if b == b'\n' {
                self.put(b"\r\n");
                complete = true;
                break;
            }
            self.put(&[b]);
        }
        if !complete {
            self.owner = Some(i);
        } else if self.owner == Some(i) {
            self.owner = None;
        }
        let after = r.len();
        s.queued.store(after, Ordering::Release);
        PENDING.fetch_sub(before - after, Ordering::AcqRel);
        self.len > 0
    }
}

/// COM1 driven by port I/O.
struct Com1 {
    fifo: usize,
}

impl Tx for Com1 {
    fn room(&mut self) -> usize {
        // SAFETY: reading COM1's line status register has no side effects
        // beyond clearing its error bits, which nothing here uses.
        let lsr = unsafe { arch::regs::inb(COM1 + 5) };
        if lsr & 0x20 != 0 {
            self.fifo
        } else {
            0
        }
    }

    fn send(&mut self, b: u8) {
        // SAFETY: writing the transmit holding register of COM1, which the
        // hypervisor owns.
        unsafe { arch::regs::outb(COM1, b) };
    }
}

static SOURCES: [Once<Source>; MAX_SOURCES] = [const { Once::new() }; MAX_SOURCES];
static NSOURCES: AtomicUsize = AtomicUsize::new(0);
static REGISTER: Mutex<()> = Mutex::new(());
static DRAIN: Mutex<(Drainer, Com1)> = Mutex::new((Drainer::new(), Com1 { fifo: 1 }));
/// Bytes the drainer holds (taken from the queues, not yet sent).
static HOLDING: AtomicBool = AtomicBool::new(false);
/// Synchronous output: before the scheduler starts and on the way down.
static SYNC: AtomicBool = AtomicBool::new(true);
/// The earliest TSC at which pumping after an exit is worth an LSR read.
static NEXT_PUMP: AtomicU64 = AtomicU64::new(0);
/// TSC ticks to send one byte (10 bits at 115200 baud), set by [`init`].
static BYTE_TSC: AtomicU64 = AtomicU64::new(0);
/// A second sink, used only before ExitBootServices; cleared before then.
static MIRROR: AtomicUsize = AtomicUsize::new(0);
static LOGGER: Logger = Logger;
static INIT: AtomicBool = AtomicBool::new(false);

fn source(i: usize) -> Option<&'static Source> {
    SOURCES.get(i)?.get()
}

fn hv() -> &'static Source {
    SOURCES[HV].call_once(|| Source::new("", HV_QUEUE))
}

/// Initialises COM1 (115200 8N1, FIFOs on) and installs the logger. Idempotent.
pub fn init() {
    if INIT.swap(true, Ordering::AcqRel) {
        return;
    }
    hv();
    NSOURCES.fetch_max(1, Ordering::AcqRel);
    use arch::regs::{inb, outb};
    // SAFETY: COM1 at 0x3F8 is the platform's first serial port; the
    // hypervisor is its only user once it has the machine. The sequence is
    // the 16550's: interrupts off, divisor 1 (115200), 8N1, FIFOs on and
    // cleared, DTR/RTS/OUT2.
    let fifo = unsafe {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xC7);
        outb(COM1 + 4, 0x0B);
        // IIR bits 7:6 read 11 when the 16-byte FIFOs work (16550A).
        if inb(COM1 + 2) & 0xC0 == 0xC0 {
            16
        } else {
            1
        }
    };
    DRAIN.lock().1.fifo = fifo;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Recomputes the pacing of after-exit pumps from the calibrated TSC.
pub fn set_byte_time() {
    // 10 bits per byte at 115200 baud: 86.8 µs.
    BYTE_TSC.store(crate::time::us_to_tsc(87).max(1), Ordering::Relaxed);
}

/// Registers a guest's console; returns its source number.
pub fn register(name: &str) -> usize {
    let _g = REGISTER.lock();
    hv();
    let n = NSOURCES.load(Ordering::Acquire).max(1);
    // A guest restarted or re-created under the same name keeps its queue.
    if let Some(i) = (1..n).find(|&i| source(i).is_some_and(|s| s.name == name)) {
        return i;
    }
    if n >= MAX_SOURCES {
        return HV;
    }
    SOURCES[n].call_once(|| Source::new(name, GUEST_QUEUE));
    NSOURCES.store(n + 1, Ordering::Release);
    n
}

/// The source of a guest's console (the hypervisor's if it has none).
fn src(i: usize) -> &'static Source {
    source(i).unwrap_or_else(hv)
}

/// A finished guest console line (shown as `[name] line`).
pub fn guest_line(i: usize, line: &str) {
    if i == HV {
        println(format_args!("{line}"));
        return;
    }
    src(i).line(line.as_bytes());
    after_queue();
}

/// Output bytes of the focused guest as they come (prompts and echo must
/// show before a newline).
pub fn guest_raw(i: usize, bytes: &[u8]) {
    src(i).raw(bytes);
    after_queue();
}

/// Whether guest `i`'s queue takes another line without dropping.
pub fn has_room(i: usize) -> bool {
    src(i).has_room()
}

/// Bytes still queued for guest `i`.
pub fn queued(i: usize) -> usize {
    src(i).queued()
}

/// A hypervisor line about guest `i`, queued after that guest's own output.
pub fn println_after(i: usize, args: fmt::Arguments) {
    let mut line = LineBuf::new();
    let _ = line.write_fmt(args);
    mirror(line.as_str());
    src(i).unprefixed_line(line.as_str().as_bytes());
    after_queue();
}

fn after_queue() {
    if SYNC.load(Ordering::Acquire) {
        flush_sync();
    }
}

/// Whether anything waits to be sent.
pub fn pending() -> bool {
    PENDING.load(Ordering::Acquire) > 0 || HOLDING.load(Ordering::Acquire)
}

/// Feeds COM1 as far as its transmitter has room, never waiting. Does
/// nothing when another CPU is at it.
pub fn pump(now_tsc: u64) {
    if !INIT.load(Ordering::Acquire) || !pending() {
        return;
    }
    let Some(mut d) = DRAIN.try_lock() else {
        return;
    };
    let (drainer, com) = &mut *d;
    let p = PROMPT.load(Ordering::Acquire);
    drainer.only = (p != usize::MAX
        && (HOLD_GUESTS.load(Ordering::Acquire) || source(p).is_some_and(|s| s.queued() > 0)))
    .then_some(p);
    let n = NSOURCES.load(Ordering::Acquire);
    let sent = drainer.pump(n, source, com) as u64;
    HOLDING.store(drainer.holding(), Ordering::Release);
    // The FIFO needs this long before it takes the next load.
    NEXT_PUMP.store(
        now_tsc + sent.max(1) * BYTE_TSC.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
}

/// While set, every other source's lines wait in their queues and only the
/// command prompt's go out (the prompt is open).
static HOLD_GUESTS: AtomicBool = AtomicBool::new(false);
/// The command prompt's source (no prefix), once it has been used.
static PROMPT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Holds every other output back while the prompt is open (`true`), or lets
/// it flow again once the prompt's output is out (`false`).
pub fn hold_guests(on: bool) {
    HOLD_GUESTS.store(on, Ordering::Release);
}

/// The prompt's bytes as they come (the prompt and its echo, command
/// output): no line is added; `\n` ends a line. They go out before anything
/// else, and whole: other sources wait until they are out.
pub fn prompt_raw(bytes: &[u8]) {
    let mut p = PROMPT.load(Ordering::Acquire);
    if p == usize::MAX {
        // No guest is named "" (names have 1 to 32 bytes): a source of its own.
        p = register("");
        PROMPT.store(p, Ordering::Release);
    }
    src(p).raw(bytes);
    after_queue();
}

/// After an exit: whether a pump is due (one atomic load when idle).
#[inline]
pub fn pump_due(now_tsc: u64) -> bool {
    pending() && now_tsc >= NEXT_PUMP.load(Ordering::Relaxed)
}

/// When the transmitter will take more, if anything waits.
pub fn next_pump_tsc() -> Option<u64> {
    pending().then(|| NEXT_PUMP.load(Ordering::Relaxed))
}

/// From now on output is queued and drained by the scheduler.
pub fn go_async() {
    SYNC.store(false, Ordering::Release);
}

/// Sends everything queued, waiting for the UART (bounded when it stops
/// taking bytes). For the boot, fatal and power-off paths only.
pub fn flush_sync() {
    if !INIT.load(Ordering::Acquire) {
        return;
    }
    let mut stalled = 0u32;
    while pending() {
        let sent = match DRAIN.try_lock() {
            Some(mut d) => {
                let (drainer, com) = &mut *d;
                // Everything goes out on these paths, prompt open or not.
                drainer.only = None;
                let s = drainer.pump(NSOURCES.load(Ordering::Acquire), source, com);
                HOLDING.store(drainer.holding(), Ordering::Release);
                s
            }
            None => 0,
        };
        if sent == 0 {
            stalled += 1;
            if stalled > 5_000_000 {
                return;
            }
            core::hint::spin_loop();
        } else {
            stalled = 0;
        }
    }
}

/// Sets (or clears, with `None`) a function that receives every line as well.
pub fn set_mirror(f: Option<fn(&str)>) {
    MIRROR.store(f.map_or(0, |f| f as usize), Ordering::Release);
}

fn mirror(s: &str) {
    let m = MIRROR.load(Ordering::Acquire);
    if m != 0 {
        // SAFETY: only `set_mirror` stores here, always a valid `fn(&str)`.
        let f: fn(&str) = unsafe { core::mem::transmute::<usize, fn(&str)>(m) };
        f(s);
        f("\n");
    }
}

/// Forcibly unlocks the console and makes output synchronous (the fatal
/// path, where the CPU that stopped may hold a console lock).
///
/// # Safety
/// Only when every other CPU is stopped or about to be.
pub unsafe fn force_unlock() {
    SYNC.store(true, Ordering::Release);
    // SAFETY: forwarded to the caller.
    unsafe {
        DRAIN.force_unlock();
        if let Some(h) = source(HV) {
            h.ring.force_unlock();
        }
    }
}

/// A line buffer that is flushed to the console as one write.
pub struct LineBuf {
    buf: [u8; 2048],
    len: usize,
}

impl LineBuf {
    pub const fn new() -> Self {
        Self {
            buf: [0; 2048],
            len: 0,
        }
    }
    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            // A multi-byte character cut at the end of the buffer.
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Prints one hypervisor line (`args`; the newline is added): queued whole.
pub fn println(args: fmt::Arguments) {
    let mut line = LineBuf::new();
    let _ = line.write_fmt(args);
    mirror(line.as_str());
    hv().line(line.as_str().as_bytes());
    after_queue();
}

/// The guest whose console output streams unbuffered (it has the keyboard).
static FOCUS: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Gives the keyboard (and unbuffered output) to guest source `i`.
pub fn set_focus(i: usize) {
    FOCUS.store(i, Ordering::Release);
}

/// Asked for every byte a guest writes to its UART: one atomic load.
pub fn is_focused(i: usize) -> bool {
    FOCUS.load(Ordering::Acquire) == i
}

/// `println!`-style macro for the hypervisor console. Lines should start with
/// their source, e.g. `hv:`, `cpu1:` or `vm <name>:`.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::println(format_args!($($arg)*)) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Messages carry their own source prefix ("hv: ...", "cpu1: ..."); levels
        // other than info are shown so that warnings stand out in the log.
        match record.level() {
            log::Level::Info => println(format_args!("{}", record.args())),
            l => println(format_args!(
                "[{}] {}",
                l.as_str().to_ascii_lowercase(),
                record.args()
            )),
        }
    }

    fn flush(&self) {}
}

/// Sends everything queued and waits until COM1 has sent its last byte
/// (LSR.TEMT), bounded: the power-off path, whose emulator exits at once.
/// Other CPUs must be stopped.
pub fn drain() {
    // SAFETY: the other CPUs are stopped (the caller's promise); a console
    // lock one of them held would otherwise never be released.
    unsafe { force_unlock() };
    flush_sync();
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { arch::regs::inb(COM1 + 5) } & 0x40 != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// A byte typed on the serial console, if one is waiting (never blocks).
pub fn try_read_byte() -> Option<u8> {
    if !INIT.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: LSR and RBR of COM1, which the hypervisor owns; only CPU 0
    // reads input.
    unsafe {
        if arch::regs::inb(COM1 + 5) & 1 != 0 {
            Some(arch::regs::inb(COM1))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A UART that takes `fifo` bytes per pump.
    struct FakeTx {
        fifo: usize,
        sent: Vec<u8>,
    }

    impl Tx for FakeTx {
        fn room(&mut self) -> usize {
            self.fifo
        }
        fn send(&mut self, b: u8) {
            self.sent.push(b);
        }
    }

    fn drain_all(d: &mut Drainer, srcs: &[&Source], tx: &mut FakeTx) -> String {
        while d.pump(srcs.len(), |i| srcs.get(i).copied(), tx) > 0 {}
        String::from_utf8(core::mem::take(&mut tx.sent)).unwrap()
    }

    #[test]
    fn ring_drops_oldest_whole_lines_and_counts_them() {
        let mut r = Ring::new(16);
        r.push(b"aaaa\n");
        r.push(b"bbbb\n");
        r.push(b"cccc\n");
        assert_eq!((r.len(), r.dropped), (15, 0));
        r.push(b"dd\n");
        // "aaaa\n" made room for "dd\n".
        assert_eq!(r.dropped, 5);
        assert_eq!(
            r.buf.iter().copied().collect::<Vec<_>>(),
            b"bbbb\ncccc\ndd\n"
        );
        r.push(&[b'x'; 40]);
        assert_eq!(r.len(), 16);
        assert_eq!(r.dropped, 5 + 13 + 24);
    }

    #[test]
    fn lines_go_out_whole_with_prefix_in_turn() {
        let hv = Source::new("", 1024);
        let a = Source::new("a", 1024);
        let b = Source::new("b", 1024);
        for i in 0..3 {
            a.line(format!("a{i}").as_bytes());
        }
        b.line(b"b0");
        hv.line(b"hv: hello");
        let mut d = Drainer::new();
        // A 1-byte FIFO: the drainer is interrupted after every byte, yet a
        // line is never split by another source's.
        let mut tx = FakeTx {
            fifo: 1,
            sent: Vec::new(),
        };
        let out = drain_all(&mut d, &[&hv, &a, &b], &mut tx);
        assert_eq!(out, "hv: hello\r\n[a] a0\r\n[b] b0\r\n[a] a1\r\n[a] a2\r\n");
        assert_eq!(a.queued() + b.queued() + hv.queued(), 0);
    }

    #[test]
    fn hypervisor_lines_go_before_queued_guest_lines() {
        let hv = Source::new("", 1024);
        let a = Source::new("a", 1024);
        let b = Source::new("b", 1024);
        a.line(b"a0");
        let mut d = Drainer::new();
        let mut tx = FakeTx {
            fifo: 1,
            sent: Vec::new(),
        };
        // a0 is on its way out (b is next in turn) when b queues a line and
        // the hypervisor one: the hypervisor's goes first all the same.
        assert!(d.pump(3, |i| [&hv, &a, &b].get(i).copied(), &mut tx) > 0);
        b.line(b"b0");
        hv.line(b"vm b: started");
        let out = drain_all(&mut d, &[&hv, &a, &b], &mut tx);
        assert_eq!(out, "[a] a0\r\nvm b: started\r\n[b] b0\r\n");
    }

    #[test]
    fn a_flooding_source_does_not_delay_another() {
        let a = Source::new("flood", 4096);
        let b = Source::new("quiet", 4096);
        for _ in 0..100 {
            a.line(&[b'x'; 200]);
        }
        b.line(b"here");
        let mut d = Drainer::new();
        let mut tx = FakeTx {
            fifo: 16,
            sent: Vec::new(),
        };
        let hv = Source::new("", 1024);
        let srcs = [&hv, &a, &b];
        // The quiet guest's line goes out after at most one of the flooder's.
        let mut out = String::new();
        while !out.contains("[quiet] here") {
            assert!(d.pump(3, |i| srcs.get(i).copied(), &mut tx) > 0);
            out.push_str(core::str::from_utf8(&core::mem::take(&mut tx.sent)).unwrap());
            assert!(
                out.len() < 2 * 230,
                "quiet line delayed: {} bytes first",
                out.len()
            );
        }
        // The flooder's queue kept its newest lines and says how much it lost.
        out.push_str(&drain_all(&mut d, &srcs, &mut tx));
        let dropped = 100 * 201 - 4096 / 201 * 201;
        assert!(
            out.starts_with(&format!("[flood] ... ({dropped} bytes dropped)\r\n")),
            "{out}"
        );
        assert_eq!(out.matches("[flood] xxx").count(), 4096 / 201);
        assert!(out.lines().all(|l| l.len() <= 220));
    }

    #[test]
    fn streaming_guest_is_broken_cleanly_by_other_lines() {
        let hv = Source::new("", 1024);
        let g = Source::new("sh", 1024);
        g.raw(b"# ");
        let mut d = Drainer::new();
        let mut tx = FakeTx {
            fifo: 16,
            sent: Vec::new(),
        };
        let srcs = [&hv, &g];
        assert_eq!(drain_all(&mut d, &srcs, &mut tx), "[sh] # ");
        g.raw(b"ls");
        assert_eq!(drain_all(&mut d, &srcs, &mut tx), "ls");
        hv.line(b"hv: note");
        g.raw(b"\r\nok\r\n");
        assert_eq!(
            drain_all(&mut d, &srcs, &mut tx),
            "\r\nhv: note\r\n[sh] ok\r\n"
        );
    }

    #[test]
    fn unprefixed_lines_follow_the_guests_output() {
        let g = Source::new("g", 1024);
        g.raw(b"partial");
        g.unprefixed_line(b"vm g: exited code=0");
        let mut d = Drainer::new();
        let mut tx = FakeTx {
            fifo: 4,
            sent: Vec::new(),
        };
        assert_eq!(
            drain_all(&mut d, &[&g], &mut tx),
            "[g] partial\r\nvm g: exited code=0\r\n"
        );
    }

    #[test]
    fn the_prompt_holds_other_lines_back_until_its_output_is_out() {
        let hv = Source::new("", 1024);
        let g = Source::new("g", 1024);
        let p = Source::new("", 1024);
        g.raw(b"part");
        let mut d = Drainer::new();
        let mut tx = FakeTx {
            fifo: 16,
            sent: Vec::new(),
        };
        let srcs = [&hv, &g, &p];
        assert_eq!(drain_all(&mut d, &srcs, &mut tx), "[g] part");
        d.only = Some(2);
        g.raw(b"ial\r\nmore\r\n");
        hv.line(b"hv: a line of the hypervisor");
        p.raw(b"\nhv> list");
        p.raw(b"\nVM ...\nrow\n");
        // The guest's open line is ended; its lines and the hypervisor's wait.
        assert_eq!(
            drain_all(&mut d, &srcs, &mut tx),
            "\r\n\r\nhv> list\r\nVM ...\r\nrow\r\n"
        );
        assert!(g.queued() > 0 && hv.queued() > 0);
        d.only = None;
        assert_eq!(
            drain_all(&mut d, &srcs, &mut tx),
            "hv: a line of the hypervisor\r\n[g] ial\r\n[g] more\r\n"
        );
    }

    #[test]
    fn room_reflects_the_queue() {
        let g = Source::new("g", 1024);
        assert!(g.has_room());
        for _ in 0..4 {
            g.line(&[b'y'; 199]);
        }
        assert!(!g.has_room());
        let mut d = Drainer::new();
        let mut tx = FakeTx {
            fifo: 16,
            sent: Vec::new(),
        };
        drain_all(&mut d, &[&g], &mut tx);
        assert!(g.has_room());
    }
}
