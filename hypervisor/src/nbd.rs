//! NBD disks (`[[guest.disk]] nbd = "nbd://..."`): each is a virtio-blk
//! function whose backend is hv-net's [`NbdDisk`], with one TCP socket on
//! the hypervisor's endpoint (at most [`MAX_LINKS`] in all).
//!
//! Nothing here waits once the guest runs. The guest's notify exit only
//! submits (the request's bytes go into the client's buffer, under the
//! disk's own lock). CPU 0's NIC poll ([`poll`]) moves the bytes between
//! socket and client, a bounded number of rounds per disk, runs the
//! client's deadlines and reconnects; when a request finished it sets the
//! disk's bit in [`Vm::disk_done`] and kicks vCPU 0, which delivers the
//! completions to the used ring before its next entry
//! (`Vm::drain_disks`). Lock order: UPLINK, then [`LINKS`], then a disk's
//! lock; a VM's `shared` lock, then a disk's lock; nothing is taken under a
//! disk's lock.
//!
//! Before the guest starts, [`connect`] runs the endpoint until the export
//! is negotiated (at most [`START_WAIT_MS`]): its size is the disk's
//! capacity.
use crate::vm::Vm;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use devices::virtio::block::{AsyncBlockBackend, BlockDone, BlockError, BlockOp, Submitted};
use hvnet::nbd::{Client, Config};
use hvnet::nbd_disk::NbdDisk;
use loader::manifest::NbdTarget;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::Ipv4Address;
use spin::Mutex;

/// NBD connections at most (each holds two socket buffers).
pub const MAX_LINKS: usize = 8;
/// A request unanswered this long completes with VIRTIO_BLK_S_IOERR.
pub const DEADLINE_MS: u64 = 30_000;
/// Reconnect after 250 ms, doubling to 2 s while attempts fail.
pub const RETRY_MS: u64 = 250;
pub const RETRY_MAX_MS: u64 = 2_000;
/// How long a VM's start waits for its NBD exports.
pub const START_WAIT_MS: u64 = 30_000;
/// NBD requests on the wire at once per disk.
const MAX_IN_FLIGHT: usize = 32;
const RX_BUF: usize = 128 * 1024;
const TX_BUF: usize = 128 * 1024;
/// Receive-and-send rounds per disk per poll: a busy link gives the
/// scheduler loop back after this many.
const ROUNDS: usize = 8;

/// A guest's NBD disk as virtio-blk sees it: the client, shared with the
/// NIC poll that moves its bytes.
pub struct NbdBackend {
    disk: Arc<Mutex<NbdDisk>>,
    /// The manifest's `read_only` (a read-only export is read-only anyway).
    read_only: bool,
}

fn now_ms() -> u64 {
    crate::time::tsc_to_ns(arch::regs::rdtsc()) / 1_000_000
}

impl AsyncBlockBackend for NbdBackend {
    fn capacity(&self) -> u64 {
        self.disk.lock().capacity()
    }
    fn read_only(&self) -> bool {
        self.read_only || self.disk.lock().read_only()
    }
    fn discard_granularity(&self) -> u32 {
        self.disk.lock().discard_granularity()
    }
    fn submit(&mut self, id: u64, op: BlockOp) -> Submitted {
        if self.read_only {
            match op {
                BlockOp::Write { data, .. } => {
                    return Submitted::Done(Err(BlockError::ReadOnly), data)
                }
                BlockOp::Discard { .. } => {
                    return Submitted::Done(Err(BlockError::ReadOnly), Vec::new())
                }
                _ => {}
            }
        }
        let r = {
            let mut d = self.disk.lock();
            d.set_now(now_ms());
            d.submit(id, op)
        };
        BUSY.store(true, Ordering::Release);
        crate::sched::wake_poller();
        r
    }
    fn poll(&mut self) -> Option<BlockDone> {
        self.disk.lock().poll()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection; the client says when to try.
    Idle,
    /// SYN sent.
    Connecting,
    /// Established and handed to the client.
    Up,
}

/// One NBD disk's connection.
struct Link {
    /// `vm NAME: disk vdX` for its console lines.
    label: String,
    target: NbdTarget,
    socket: SocketHandle,
    phase: Phase,
    disk: Arc<Mutex<NbdDisk>>,
    vm: Weak<Vm>,
    /// Its bit in the VM's `disk_done`.
    bit: u64,
    /// The "requests wait" line was printed for this outage.
    said_waiting: bool,
}

static LINKS: Mutex<Vec<Link>> = Mutex::new(Vec::new());
/// Connections made or being made (including [`connect`]'s).
static COUNT: Mutex<usize> = Mutex::new(0);
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
/// Some disk has requests in flight or no connection (set by a submit,
/// refreshed by [`poll`]): CPU 0 polls the NIC every millisecond then.
static BUSY: AtomicBool = AtomicBool::new(false);

/// Whether an NBD disk needs the NIC polled soon.
pub fn busy() -> bool {
    BUSY.load(Ordering::Acquire)
}

/// A fresh local port (49152..65535) for each connection attempt, so a
/// new connection is never taken for an old one still in TIME-WAIT.
fn local_port() -> u16 {
    let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        // Seeded once from the TSC: another boot uses other ports.
        let seed = (arch::regs::rdtsc() % 8192) as u16;
        NEXT_PORT.store(seed.wrapping_add(2), Ordering::Relaxed);
        return 49152 + seed;
    }
    49152 + n % 16384
}

/// Moves bytes between `sock` and `client`; returns whether anything was
/// sent or received (the endpoint should be polled again).
fn drive(
    ep: &mut crate::nic::endpoint::Endpoint,
    h: SocketHandle,
    phase: &mut Phase,
    target: &NbdTarget,
    client: &mut Client,
    now: u64,
) -> bool {
    client.poll(now);
    let mut moved = false;
    if *phase == Phase::Idle {
        if !client.should_connect(now) {
            return false;
        }
        if ep.address.is_none() {
            // No address yet (DHCP): try again after the backoff.
            client.disconnected(now);
            return false;
        }
        let remote = (Ipv4Address::from(target.addr), target.port);
        match ep.tcp_connect(h, remote, local_port()) {
            Ok(()) => {
                *phase = Phase::Connecting;
                return true;
            }
            Err(_) => {
                client.disconnected(now);
                return false;
            }
        }
    }
    let s = ep.sockets().get_mut::<tcp::Socket>(h);
    if *phase == Phase::Connecting {
        match s.state() {
            tcp::State::Established => {
                client.connected(now);
                *phase = Phase::Up;
            }
            tcp::State::SynSent | tcp::State::SynReceived => return false,
            // Refused (RST), timed out, or closed at once.
            _ => {
                s.abort();
                *phase = Phase::Idle;
                client.disconnected(now);
                return false;
            }
        }
    }
    for _ in 0..ROUNDS {
        let mut progress = false;
        if s.can_recv() {
            if let Ok(n) = s.recv(|data| {
                client.receive(data, now);
                (data.len(), data.len())
            }) {
                progress |= n > 0;
            }
        }
        let out = client.transmit();
        if !out.is_empty() && s.can_send() {
            if let Ok(n) = s.send_slice(out) {
                client.sent(n);
                progress |= n > 0;
            }
        }
        moved |= progress;
        if !progress {
            break;
        }
    }
    if client.wants_close() && client.transmit().is_empty() {
        // The client ended this connection (protocol error, refused export,
        // DISC sent): it went down already and retries by itself.
        s.abort();
        *phase = Phase::Idle;
    } else if s.state() != tcp::State::Established && !s.can_recv() {
        // The server closed (FIN, after its last bytes were taken) or reset.
        s.abort();
        *phase = Phase::Idle;
        client.disconnected(now);
    }
    moved
}

/// Console lines for what the client reports.
fn events(label: &str, target: &NbdTarget, client: &mut Client) {
    while let Some(e) = client.next_event() {
        crate::println!("{label}: {target}: {e}");
    }
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; RX_BUF]),
        tcp::SocketBuffer::new(vec![0u8; TX_BUF]),
    );
    // Request headers are small and each waits for its reply: no Nagle.
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    // A server gone silent ends the connection (then a reconnect).
    s.set_timeout(Some(smoltcp::time::Duration::from_secs(10)));
    s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(3)));
    s
}

/// Connects disk `label` to `target` and waits (at most
/// [`START_WAIT_MS`]) for the export's negotiation; then the disk is the
/// VM's backend and its connection is driven by [`poll`] from then on.
/// Call before the scheduler runs. `vm`/`bit`: whom [`poll`] signals.
pub fn connect(
    label: String,
    target: &NbdTarget,
    read_only: bool,
    vm: Weak<Vm>,
    bit: u64,
) -> Result<NbdBackend, String> {
    {
        let mut n = COUNT.lock();
        if *n >= MAX_LINKS {
            return Err(alloc::format!(
                "{target}: more than {MAX_LINKS} NBD disks (each holds a TCP connection of the hypervisor's endpoint)"
            ));
        }
        *n += 1;
    }
    let r = negotiate(&label, target);
    let (client, socket) = match r {
        Ok(x) => x,
        Err(e) => {
            *COUNT.lock() -= 1;
            return Err(e);
        }
    };
    let disk = NbdDisk::new(client).ok_or_else(|| alloc::format!("{target}: not negotiated"))?;
    let disk = Arc::new(Mutex::new(disk));
    LINKS.lock().push(Link {
        label,
        target: target.clone(),
        socket,
        phase: Phase::Up,
        disk: disk.clone(),
        vm,
        bit,
        said_waiting: false,
    });
    Ok(NbdBackend { disk, read_only })
}

fn negotiate(label: &str, target: &NbdTarget) -> Result<(Client, SocketHandle), String> {
    let mut client = Client::new(Config {
        export: target.export.clone(),
        // Also the negotiation's limit on one connection.
        deadline_ms: DEADLINE_MS,
        retry_ms: RETRY_MS,
        retry_max_ms: RETRY_MAX_MS,
        max_in_flight: MAX_IN_FLIGHT,
    });
    let socket = crate::nic::with_uplink(|up| up.endpoint.sockets().add(new_socket())).ok_or_else(
        || alloc::format!("{target}: the host has no NIC with the hypervisor's endpoint (an NBD disk needs one)"),
    )?;
    let start = now_ms();
    let mut phase = Phase::Idle;
    let mut last: Option<String> = None;
    loop {
        let now = now_ms();
        crate::nic::with_uplink(|up| {
            let tsc = arch::regs::rdtsc();
            up.endpoint.poll(&mut *up.nic, tsc);
            if drive(
                &mut up.endpoint,
                socket,
                &mut phase,
                target,
                &mut client,
                now,
            ) {
                up.endpoint.poll(&mut *up.nic, tsc);
            }
        });
        while let Some(e) = client.next_event() {
            crate::println!("{label}: {target}: {e}");
            last = Some(alloc::format!("{e}"));
        }
        if client.is_ready() {
            return Ok((client, socket));
        }
        if now.saturating_sub(start) >= START_WAIT_MS {
            crate::nic::with_uplink(|up| {
                up.endpoint.sockets().get_mut::<tcp::Socket>(socket).abort();
                up.endpoint.poll(&mut *up.nic, arch::regs::rdtsc());
                up.endpoint.sockets().remove(socket);
            });
            return Err(alloc::format!(
                "{target}: export not negotiated within {} s ({})",
                START_WAIT_MS / 1000,
                last.as_deref().unwrap_or(if phase == Phase::Idle {
                    "no connection"
                } else {
                    "the server did not answer"
                })
            ));
        }
        crate::time::delay_us(1000);
    }
}

/// Closes the connections of `vm`'s NBD disks (a VM whose creation failed
/// after some of them connected): their sockets go, and they no longer
/// count against [`MAX_LINKS`].
pub fn release(vm: &Weak<Vm>) {
    let mut links = LINKS.lock();
    let mut gone = Vec::new();
    links.retain(|l| {
        let mine = Weak::ptr_eq(&l.vm, vm);
        if mine {
            gone.push(l.socket);
        }
        !mine
    });
    drop(links);
    if gone.is_empty() {
        return;
    }
    *COUNT.lock() -= gone.len();
    crate::nic::with_uplink(|up| {
        for &h in &gone {
            up.endpoint.sockets().get_mut::<tcp::Socket>(h).abort();
        }
        // The RSTs go out before the sockets are dropped.
        up.endpoint.poll(&mut *up.nic, arch::regs::rdtsc());
        for h in gone {
            up.endpoint.sockets().remove(h);
        }
    });
}

/// Drives every NBD connection (CPU 0's NIC poll, UPLINK held); returns
/// whether anything moved (the endpoint is polled again to send it).
pub fn poll(ep: &mut crate::nic::endpoint::Endpoint, now_tsc: u64) -> bool {
    let Some(mut links) = LINKS.try_lock() else {
        return false;
    };
    let now = crate::time::tsc_to_ns(now_tsc) / 1_000_000;
    let mut moved = false;
    let mut busy = false;
    for l in links.iter_mut() {
        let done = {
            let mut d = l.disk.lock();
            let client = d.client_mut();
            moved |= drive(ep, l.socket, &mut l.phase, &l.target, client, now);
            events(&l.label, &l.target, client);
            let waiting = client.outstanding();
            if client.is_ready() {
                l.said_waiting = false;
            } else if waiting > 0 && !l.said_waiting {
                // Once per outage: the guest's I/O waits for the server.
                l.said_waiting = true;
                crate::println!(
                    "{}: {}: no connection: {waiting} requests wait for the server",
                    l.label,
                    l.target
                );
            }
            busy |= waiting > 0 || l.phase != Phase::Up;
            d.has_done()
        };
        if done {
            if let Some(vm) = l.vm.upgrade() {
                // Only the first completion since the last drain kicks.
                if vm.disk_done.fetch_or(l.bit, Ordering::AcqRel) & l.bit == 0 {
                    vm.kick(0);
                }
            }
        }
    }
    BUSY.store(busy, Ordering::Release);
    moved
}
