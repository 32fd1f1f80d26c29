//! The hypervisor console: COM1 for every line, a `log` logger whose lines are
//! prefixed with their source, and an optional mirror (the UEFI text console
//! while boot services exist).
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use spin::Mutex;
use uart_16550::{BaudRate, Config, Uart16550};

pub const COM1: u16 = 0x3F8;

struct Serial {
    uart: Option<Uart16550<uart_16550::backend::PioBackend>>,
}

static SERIAL: Mutex<Serial> = Mutex::new(Serial { uart: None });
/// A second sink, used only before ExitBootServices; cleared before then.
static MIRROR: AtomicUsize = AtomicUsize::new(0);
static LOGGER: Logger = Logger;
static INIT: AtomicBool = AtomicBool::new(false);

/// Initialises COM1 and installs the logger. Idempotent.
pub fn init() {
    if INIT.swap(true, Ordering::AcqRel) {
        return;
    }
    {
        let mut s = SERIAL.lock();
        // SAFETY: COM1 at 0x3F8 is the platform's first serial port; the
        // hypervisor is its only user once it has the machine.
        if let Ok(mut uart) = unsafe { Uart16550::new_port(COM1) } {
            // 115200 8N1, the usual server console setting.
            let cfg = Config {
                baud_rate: BaudRate::Baud115200,
                ..Config::default()
            };
            if uart.init(cfg).is_ok() {
                s.uart = Some(uart);
            }
        }
    }
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Sets (or clears, with `None`) a function that receives every line as well.
pub fn set_mirror(f: Option<fn(&str)>) {
    MIRROR.store(f.map_or(0, |f| f as usize), Ordering::Release);
}

/// Writes raw bytes to the serial console.
pub fn write_bytes(bytes: &[u8]) {
    let mut s = SERIAL.lock();
    if let Some(uart) = s.uart.as_mut() {
        for &b in bytes {
            if b == b'\n' {
                uart.send_bytes_exact(b"\r");
            }
            uart.send_bytes_exact(&[b]);
        }
    }
}

/// Writes a string to every sink.
pub fn write_str(s: &str) {
    write_bytes(s.as_bytes());
    let m = MIRROR.load(Ordering::Acquire);
    if m != 0 {
        // SAFETY: only `set_mirror` stores here, always a valid `fn(&str)`.
        let f: fn(&str) = unsafe { core::mem::transmute::<usize, fn(&str)>(m) };
        f(s);
    }
}

/// Forcibly unlocks the console (used by the panic path, where the CPU that
/// panicked may hold the lock).
///
/// # Safety
/// Only when every other CPU is stopped or about to be.
pub unsafe fn force_unlock() {
    // SAFETY: forwarded to the caller.
    unsafe { SERIAL.force_unlock() };
}

/// A line buffer that is flushed to the console as one write.
pub struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl LineBuf {
    pub const fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>")
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

/// Prints one line: `args` followed by a newline, written atomically.
pub fn println(args: fmt::Arguments) {
    let mut line = LineBuf::new();
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    let _g = LINE_LOCK.lock();
    // A focused guest's partial line (a shell prompt) may be on screen.
    if !AT_LINE_START.swap(true, Ordering::AcqRel) {
        write_str("\n");
    }
    write_str(line.as_str());
}

static LINE_LOCK: Mutex<()> = Mutex::new(());
/// Whether the console cursor is at the start of a line.
static AT_LINE_START: AtomicBool = AtomicBool::new(true);
/// The guest whose console output streams unbuffered (it has the keyboard).
static FOCUS: Mutex<Option<alloc::string::String>> = Mutex::new(None);
static FOCUS_SET: AtomicBool = AtomicBool::new(false);

/// Gives the keyboard (and unbuffered output) to the guest named `name`.
pub fn set_focus(name: &str) {
    *FOCUS.lock() = Some(alloc::string::String::from(name));
    FOCUS_SET.store(true, Ordering::Release);
}

/// Asked for every byte a guest writes to its UART: without a focused guest
/// (until someone types) it costs one atomic load.
pub fn is_focused(name: &str) -> bool {
    FOCUS_SET.load(Ordering::Acquire) && FOCUS.lock().as_deref() == Some(name)
}

/// Streams output bytes of the focused guest as they come (prompts and echo
/// must show before a newline), with the guest's prefix at each line start.
pub fn guest_raw(guest: &str, bytes: &[u8]) {
    let _g = LINE_LOCK.lock();
    for &b in bytes {
        if AT_LINE_START.load(Ordering::Acquire) {
            if b == b'\r' {
                continue;
            }
            write_str("[");
            write_str(guest);
            write_str("] ");
            AT_LINE_START.store(false, Ordering::Release);
        }
        if b == b'\n' {
            write_str("\n");
            AT_LINE_START.store(true, Ordering::Release);
        } else {
            write_bytes(&[b]);
        }
    }
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

/// Waits until COM1 has sent every byte (LSR.TEMT), bounded.
pub fn drain() {
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
    let mut s = SERIAL.try_lock()?;
    s.uart.as_mut()?.try_receive_byte().ok()
}
