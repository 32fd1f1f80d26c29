//! The NBD client against real servers: Debian's `nbd-server` and `nbdkit`,
//! started here on 127.0.0.1 over a temporary image file, driven over a
//! std `TcpStream` (the adapter below stands in for the core's smoltcp
//! socket). A missing server is installed with apt-get when running as
//! root; if it can't be, the test says so and skips.
use net::nbd::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

/// Moves bytes between `client` and its socket, connecting when due.
fn pump(client: &mut Client, sock: &mut Option<TcpStream>, port: u16, now: u64) {
    if sock.is_none() && client.should_connect(now) {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_nonblocking(true).unwrap();
                s.set_nodelay(true).unwrap();
                *sock = Some(s);
                client.connected(now);
            }
            Err(_) => client.disconnected(now),
        }
    }
    if let Some(s) = sock.as_mut() {
        let mut down = false;
        while !client.transmit().is_empty() {
            match s.write(client.transmit()) {
                Ok(n) => client.sent(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    down = true;
                    break;
                }
            }
        }
        let mut buf = [0u8; 65536];
        while !down {
            match s.read(&mut buf) {
                Ok(0) => {
                    eprintln!("nbd test: peer closed");
                    down = true
                }
                Ok(n) => client.receive(&buf[..n], now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!("nbd test: read: {e}");
                    down = true
                }
            }
        }
        if down {
            *sock = None;
            client.disconnected(now);
        } else if client.wants_close() && client.transmit().is_empty() {
            *sock = None;
        }
    }
    client.poll(now);
}

/// Drives a [`Client`] over a non-blocking `TcpStream`.
struct Driver {
    client: Client,
    sock: Option<TcpStream>,
    port: u16,
    start: Instant,
    events: Vec<Event>,
    done: Vec<Completion>,
}

impl Driver {
    fn new(port: u16, export: &str) -> Self {
        Self {
            client: Client::new(Config {
                export: export.into(),
                deadline_ms: 30_000,
                retry_ms: 100,
                retry_max_ms: 100,
                max_in_flight: 16,
            }),
            sock: None,
            port,
            start: Instant::now(),
            events: Vec::new(),
            done: Vec::new(),
        }
    }
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn step(&mut self) {
        let now = self.now();
        pump(&mut self.client, &mut self.sock, self.port, now);
        while let Some(e) = self.client.next_event() {
            eprintln!("nbd: {e}");
            self.events.push(e);
        }
        while let Some(c) = self.client.next_completion() {
            self.done.push(c);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    fn until(&mut self, what: &str, mut f: impl FnMut(&Self) -> bool) {
        let t = Instant::now();
        while !f(self) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; events {:?}",
                self.events
            );
            self.step();
        }
    }
    fn ready(&mut self) {
        self.until("negotiation", |d| {
            d.client.is_ready() || !d.events.is_empty()
        });
        assert!(self.client.is_ready(), "{:?}", self.events);
    }
    /// Runs one request to completion.
    fn run(&mut self, cmd: Command) -> Completion {
        let now = self.now();
        let id = self.client.submit(cmd, now);
        self.until("a completion", |d| d.done.iter().any(|c| c.id == id));
        let i = self.done.iter().position(|c| c.id == id).unwrap();
        self.done.remove(i)
    }
}

fn have(tool: &str, package: &str) -> bool {
    let found = |t: &str| {
        Proc::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found(tool) {
        return true;
    }
    let _ = Proc::new("apt-get")
        .args(["install", "-y", package])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if found(tool) {
        return true;
    }
    eprintln!(
        "SKIP: {tool} is not installed and `apt-get install -y {package}` did not install it"
    );
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a socket listens on 127.0.0.1:`port` (/proc/net/tcp: local
/// address 0100007F:PORT, state 0A).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
        })
    })
}

fn wait_listening(port: u16) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "server on {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hv-net-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn image(dir: &Path, name: &str, size: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; size]).unwrap();
    p
}

/// nbd-server in the foreground with exports "disk" (flush, trim, fua) and
/// "ro" (read-only).
fn nbd_server(dir: &Path, port: u16, disk: &Path) -> Server {
    let conf = dir.join("config");
    std::fs::write(
        &conf,
        format!(
            "[generic]\n    port = {port}\n    listenaddr = 127.0.0.1\n[disk]\n    exportname = {d}\n    flush = true\n    trim = true\n    fua = true\n[ro]\n    exportname = {d}\n    readonly = true\n",
            d = disk.display()
        ),
    )
    .unwrap();
    let child = Proc::new("nbd-server")
        .args(["-C", conf.to_str().unwrap(), "-d"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // In the foreground (-d) it serves one connection: readiness is seen
    // in the kernel's socket table, not by connecting.
    let t = Instant::now();
    while !listening(port) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nbd-server on {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

fn nbdkit(port: u16, disk: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["-f", "-i", "127.0.0.1", "-p"];
    let p = port.to_string();
    args.push(&p);
    let file = format!("file={}", disk.display());
    let mut tail: Vec<&str> = extra.to_vec();
    tail.insert(0, "file");
    tail.insert(1, &file);
    if let Some(i) = extra.iter().position(|a| a.starts_with("--filter")) {
        // Filters go before the plugin name.
        args.push(extra[i]);
        tail.retain(|a| !a.starts_with("--filter"));
    }
    args.extend(tail);
    let child = Proc::new("nbdkit")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port);
    Server(child)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31) as usize + i * 7 + i / 512) as u8)
        .collect()
}

/// Handshake, writes read back intact (some in flight together), flush, trim.
fn exercise(d: &mut Driver, disk: &Path) {
    d.ready();
    let e = d.client.export().unwrap();
    assert_eq!(e.size, 4 << 20);
    assert_eq!(e.flags & TF_READ_ONLY, 0);
    assert_ne!(e.flags & TF_SEND_FLUSH, 0, "flags {:#x}", e.flags);
    assert_ne!(e.flags & TF_SEND_TRIM, 0, "flags {:#x}", e.flags);
    // Eight writes in flight at once, then read back.
    let now = d.now();
    let ids: Vec<u64> = (0..8u64)
        .map(|i| {
            d.client.submit(
                Command::Write {
                    offset: i * 65536,
                    data: pattern(i, 65536),
                    fua: i == 0,
                },
                now,
            )
        })
        .collect();
    d.until("the writes", |d| {
        ids.iter().all(|id| d.done.iter().any(|c| c.id == *id))
    });
    assert!(
        d.done.iter().all(|c| c.result.is_ok()),
        "{:?}",
        d.done.iter().map(|c| c.result).collect::<Vec<_>>()
    );
    d.done.clear();
    assert_eq!(d.run(Command::Flush).result, Ok(()));
    for i in (0..8u64).rev() {
        let c = d.run(Command::Read {
            offset: i * 65536,
            len: 65536,
        });
        assert_eq!(c.result, Ok(()));
        assert!(c.data == pattern(i, 65536), "block {i} read back differs");
    }
    // On the server's file too.
    let f = std::fs::read(disk).unwrap();
    assert!(f[3 * 65536..4 * 65536] == pattern(3, 65536)[..]);
    assert_eq!(
        d.run(Command::Trim {
            offset: 0,
            len: 65536
        })
        .result,
        Ok(())
    );
    // Past the end: refused here, never sent.
    assert_eq!(
        d.run(Command::Read {
            offset: (4 << 20) - 512,
            len: 1024
        })
        .result,
        Err(Error::OutOfRange)
    );
    // A soft disconnect.
    d.client.shutdown();
    d.until("DISC", |d| d.sock.is_none());
}

#[test]
fn nbd_server_exports() {
    if !have("nbd-server", "nbd-server") {
        return;
    }
    let dir = tempdir("nbd-server");
    let disk = image(&dir, "disk.img", 4 << 20);
    let port = free_port();
    let _s = nbd_server(&dir, port, &disk);
    let mut d = Driver::new(port, "disk");
    exercise(&mut d, &disk);
    drop(_s);

    // The read-only export: flagged, and writes refused.
    let port = free_port();
    let _s = nbd_server(&dir, port, &disk);
    let mut d = Driver::new(port, "ro");
    d.ready();
    assert_ne!(d.client.export().unwrap().flags & TF_READ_ONLY, 0);
    assert_eq!(
        d.run(Command::Write {
            offset: 0,
            data: vec![1; 512],
            fua: false
        })
        .result,
        Err(Error::ReadOnly)
    );
    assert_eq!(
        d.run(Command::Read {
            offset: 65536,
            len: 512
        })
        .data,
        pattern(1, 512)
    );
    drop(_s);

    // An export that does not exist: named in the event.
    let port = free_port();
    let _s = nbd_server(&dir, port, &disk);
    let mut d = Driver::new(port, "nosuch");
    d.until("the refusal", |d| !d.events.is_empty());
    match &d.events[0] {
        Event::Down {
            reason: DownReason::Refused(e, _),
            ..
        } => {
            assert!(matches!(e, RepError::Unknown | RepError::Policy), "{e:?}");
            eprintln!("nbd-server refused 'nosuch' with {}", e.name());
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(!d.client.is_ready());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nbdkit_exports() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempdir("nbdkit");
    let disk = image(&dir, "disk.img", 4 << 20);
    let port = free_port();
    let _s = nbdkit(port, &disk, &[]);
    let mut d = Driver::new(port, "");
    exercise(&mut d, &disk);
    drop(_s);

    let port = free_port();
    let _s = nbdkit(port, &disk, &["-r"]);
    let mut d = Driver::new(port, "");
    d.ready();
    assert_ne!(d.client.export().unwrap().flags & TF_READ_ONLY, 0);
    assert_eq!(
        d.run(Command::Write {
            offset: 0,
            data: vec![1; 512],
            fua: false
        })
        .result,
        Err(Error::ReadOnly)
    );
    drop(_s);

    // The exportname filter: only "good" exists.
    let port = free_port();
    let _s = nbdkit(
        port,
        &disk,
        &[
            "--filter=exportname",
            "exportname=good",
            "exportname-strict=true",
        ],
    );
    let mut d = Driver::new(port, "bad");
    d.until("the refusal", |d| !d.events.is_empty());
    assert!(
        matches!(
            &d.events[0],
            Event::Down {
                reason: DownReason::Refused(_, _),
                ..
            }
        ),
        "{:?}",
        d.events
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server is killed with writes in flight and started again: every
/// write acknowledged before is on the disk, and the rest were re-sent and
/// completed.
#[test]
fn nbdkit_killed_mid_write() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempdir("nbdkit-kill");
    let disk = image(&dir, "disk.img", 4 << 20);
    let port = free_port();
    // Slow writes, so some are still in flight when it dies.
    let s = nbdkit(port, &disk, &["--filter=delay", "delay-write=40ms"]);
    let mut d = Driver::new(port, "");
    d.ready();
    const N: u64 = 48;
    let now = d.now();
    let ids: Vec<u64> = (0..N)
        .map(|i| {
            d.client.submit(
                Command::Write {
                    offset: i * 65536,
                    data: pattern(i + 100, 65536),
                    fua: false,
                },
                now,
            )
        })
        .collect();
    d.until("some acknowledgements", |d| d.done.len() >= 8);
    drop(s); // SIGKILL
    d.until("the connection loss", |d| {
        d.events.iter().any(|e| matches!(e, Event::Down { .. }))
    });
    // Replies already received before the end of the stream count too.
    let acked_before: Vec<u64> = d.done.iter().map(|c| c.id).collect();
    assert!(d.done.iter().all(|c| c.result.is_ok()));
    assert!(
        (acked_before.len() as u64) < N,
        "all done before the kill: the test proves nothing"
    );
    let unanswered = d.events.iter().find_map(|e| match e {
        Event::Down { unanswered, .. } => Some(*unanswered),
        _ => None,
    });
    assert_eq!(unanswered, Some(N as usize - acked_before.len()));
    // Nothing acknowledged is lost: the process died, the file stayed.
    let f = std::fs::read(&disk).unwrap();
    for (i, id) in ids.iter().enumerate() {
        if acked_before.contains(id) {
            let i = i as u64;
            assert!(
                f[(i * 65536) as usize..][..65536] == pattern(i + 100, 65536)[..],
                "acknowledged write {i} is not on disk"
            );
        }
    }
    // Down for a while: requests wait (no errors within the deadline).
    for _ in 0..200 {
        d.step();
    }
    assert_eq!(
        d.done.len(),
        acked_before.len(),
        "nothing failed while the server was down"
    );
    let _s = nbdkit(port, &disk, &[]);
    d.until("every write", |d| d.done.len() as u64 == N);
    assert!(d.done.iter().all(|c| c.result == Ok(())));
    let resent = d.events.iter().rev().find_map(|e| match e {
        Event::Ready { resent, .. } => Some(*resent),
        _ => None,
    });
    assert_eq!(
        resent,
        Some((N as usize) - acked_before.len()),
        "{:?}",
        d.events
    );
    assert_eq!(d.run(Command::Flush).result, Ok(()));
    for i in 0..N {
        let c = d.run(Command::Read {
            offset: i * 65536,
            len: 65536,
        });
        assert!(
            c.data == pattern(i + 100, 65536),
            "write {i} missing after the restart"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The NBD export as virtio-blk's backend: block requests (a read, a
/// write, a flush, a discard of two ranges) through `AsyncBlockBackend`.
#[test]
fn nbdkit_as_block_backend() {
    use devices::virtio::block::{AsyncBlockBackend, BlockDone, BlockOp, Submitted};
    use net::nbd_disk::NbdDisk;
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempdir("nbdkit-disk");
    let disk = image(&dir, "disk.img", 4 << 20);
    let port = free_port();
    let _s = nbdkit(port, &disk, &[]);
    let mut d = Driver::new(port, "");
    d.ready();
    let start = d.start;
    let mut sock = d.sock.take();
    let mut b = NbdDisk::new(d.client).expect("negotiated");
    assert_eq!(b.capacity(), (4 << 20) / 512);
    assert!(!b.read_only());
    let mut run = |b: &mut NbdDisk, id: u64, op: BlockOp| -> BlockDone {
        let now = start.elapsed().as_millis() as u64;
        b.set_now(now);
        assert_eq!(b.submit(id, op), Submitted::Pending);
        let t = Instant::now();
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "block request {id} never finished"
            );
            let now = start.elapsed().as_millis() as u64;
            pump(b.client_mut(), &mut sock, port, now);
            if let Some(done) = b.poll() {
                assert_eq!(done.id, id);
                return done;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let data = pattern(7, 8192);
    let w = run(
        &mut b,
        1,
        BlockOp::Write {
            sector: 16,
            data: data.clone(),
        },
    );
    assert_eq!(
        (w.result, w.buf.len()),
        (Ok(()), 8192),
        "the write buffer comes back"
    );
    assert_eq!(run(&mut b, 2, BlockOp::Flush).result, Ok(()));
    let r = run(
        &mut b,
        3,
        BlockOp::Read {
            sector: 16,
            buf: vec![0; 8192],
        },
    );
    assert_eq!(r.result, Ok(()));
    assert!(r.buf == data, "read back differs");
    let t = run(
        &mut b,
        4,
        BlockOp::Discard {
            ranges: vec![(0, 8), (1024, 8)],
        },
    );
    assert_eq!(t.result, Ok(()));
    let e = run(
        &mut b,
        5,
        BlockOp::Read {
            sector: (4 << 20) / 512,
            buf: vec![0; 512],
        },
    );
    assert!(e.result.is_err(), "past the end");
    let _ = std::fs::remove_dir_all(&dir);
}
