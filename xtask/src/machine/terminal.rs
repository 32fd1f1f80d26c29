//! The terminal side of an interactive run: raw mode while the machine runs, and the keys typed
//! (or the bytes piped in) on stdin, relayed to the machine's COM1.
//!
//! Raw mode is set and undone with `stty` on stdin (no `unsafe`, no extra crate): `stty -g`
//! saves the settings, `stty raw -echo -iexten opost` makes every key a byte of its own (Ctrl-C,
//! Ctrl-Z, Ctrl-S and Ctrl-V included) while the machine's output still gets `\r\n` line ends,
//! and the saved settings come back when [`RawMode`] is dropped: at the end of the run, on the
//! timeout, on an error and on a panic. A process killed by a signal can't restore them;
//! `stty sane` (or `reset`) does.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;

/// The key that ends an interactive run from the terminal: Ctrl-] (0x1d). It is never sent to
/// the machine. (Ctrl-A is the hypervisor's own prefix: Ctrl-A <digit> selects a guest's
/// console, Ctrl-A l lists the guests.)
pub const QUIT_KEY: u8 = 0x1d;

/// How [`QUIT_KEY`] is written for people.
pub const QUIT_KEY_NAME: &str = "Ctrl-]";

/// At most this much input typed before the machine's COM1 connects is kept for it.
const MAX_EARLY_INPUT: usize = 64 * 1024;

/// Whether stdin is a terminal that this process may read and configure: it is one, and this
/// process is in the terminal's foreground process group (a background job touching it would
/// be stopped by SIGTTIN/SIGTTOU).
pub fn stdin_is_foreground_terminal() -> bool {
    io::stdin().is_terminal()
        && fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| in_foreground(&stat))
            // No /proc: assume the usual case, a job started in the foreground.
            .unwrap_or(true)
}

/// From `/proc/self/stat` (`pid (comm) state ppid pgrp session tty_nr tpgid ...`): whether the
/// process group is the terminal's foreground group.
fn in_foreground(stat: &str) -> Option<bool> {
    // The command name can hold spaces and parentheses: the fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let pgrp: i64 = fields.get(2)?.parse().ok()?;
    let tpgid: i64 = fields.get(5)?.parse().ok()?;
    Some(pgrp == tpgid)
}

/// The terminal on stdin in raw mode; dropping it restores the settings it had.
pub struct RawMode {
    saved: String,
}

impl RawMode {
    /// Puts the terminal on stdin in raw mode (see the module documentation); `None` when its
    /// settings can't be read or changed (the run then goes on with the terminal as it is).
    pub fn enter() -> Option<Self> {
        let saved = stty_output(&["-g"])?;
        let saved = saved.trim().to_string();
        if saved.is_empty() || !stty(&["raw", "-echo", "-iexten", "opost"]) {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if !stty(&[self.saved.as_str()]) {
            let _ = stty(&["sane"]);
        }
    }
}

/// Runs `stty ARGS` on stdin; whether it succeeded.
fn stty(args: &[&str]) -> bool {
    Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What `stty ARGS` on stdin prints, when it succeeds.
fn stty_output(args: &[&str]) -> Option<String> {
    let out = Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Input on its way to the machine's COM1: kept until the emulator has connected, then written
/// to the connection as it comes.
#[derive(Default)]
pub struct Relay {
    link: Mutex<Link>,
    quit: AtomicBool,
}

#[derive(Default)]
struct Link {
    stream: Option<TcpStream>,
    early: Vec<u8>,
}

impl Relay {
    /// The emulator's COM1 connection: input typed so far goes to it at once, later input as it
    /// comes.
    pub fn connect(&self, mut stream: TcpStream) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        let early = std::mem::take(&mut link.early);
        if stream.write_all(&early).is_ok() {
            link.stream = Some(stream);
        }
    }

    /// Whether the quit key was typed.
    pub fn quit_requested(&self) -> bool {
        self.quit.load(Ordering::SeqCst)
    }

    /// Sends `bytes` to the machine (kept until it connects).
    pub fn send(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        match link.stream.as_mut() {
            // A failed write means the emulator is gone; its exit ends the run.
            Some(stream) => {
                if stream.write_all(bytes).is_err() {
                    link.stream = None;
                }
            }
            None => {
                let room = MAX_EARLY_INPUT.saturating_sub(link.early.len());
                link.early
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
    }

    /// Relays `chunk` (bytes read from stdin); `false` once it held the quit key, which is not
    /// sent, nor is anything after it.
    fn feed(&self, chunk: &[u8]) -> bool {
        match chunk.iter().position(|b| *b == QUIT_KEY) {
            Some(at) => {
                self.send(&chunk[..at]);
                self.quit.store(true, Ordering::SeqCst);
                false
            }
            None => {
                self.send(chunk);
                true
            }
        }
    }
}

/// Reads stdin on a thread of its own until end of file or the quit key, relaying what it reads
/// through `relay`; `wake` is told when the quit key comes. The thread is not joined: it may
/// stay blocked in a read until the process exits.
pub fn spawn_stdin_reader(relay: Arc<Relay>, wake: Sender<()>) {
    thread::spawn(move || {
        let mut stdin = io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if !relay.feed(&buf[..n]) {
                let _ = wake.send(());
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn foreground_is_read_from_proc_stat() {
        // pid (comm) state ppid pgrp session tty_nr tpgid
        let fg = "4242 (cargo xtask (x)) S 100 4242 100 34816 4242 4194304 0";
        assert_eq!(in_foreground(fg), Some(true));
        let bg = "4242 (xtask) S 100 4242 100 34816 4300 4194304 0";
        assert_eq!(in_foreground(bg), Some(false));
        assert_eq!(in_foreground("garbage"), None);
    }

    #[test]
    fn input_before_the_connection_is_kept_and_the_quit_key_is_not_sent() {
        let relay = Relay::default();
        assert!(relay.feed(b"ver\r"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        relay.connect(client);
        assert!(relay.feed(b"\x01l"));
        assert!(!relay.quit_requested());
        assert!(!relay.feed(b"ls\x1dafter"));
        assert!(relay.quit_requested());
        relay.link.lock().unwrap().stream = None; // closes the connection
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ver\r\x01lls");
    }
}
