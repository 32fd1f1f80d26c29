//! The management API on the hypervisor's network endpoint: smoltcp TCP
//! sockets listening on the manifest's `api_port`, each connection served
//! by hv-mgmt's sans-IO HTTP server ([`mgmt::http::Connection`]: bearer
//! token compared in constant time, bounded request sizes, 400 with the
//! reason for malformed requests). Polled with the endpoint from CPU 0's
//! scheduler loop; never waits: bytes are taken and sent as far as the
//! sockets allow, and a request that does not complete in time gets a 408.
//! Snapshot files (`/snapshots/NAME/file`) stream: out as the socket takes
//! them, in from the socket into the snapshot's frames.
use alloc::vec;
use alloc::vec::Vec;
use mgmt::http::{After, Connection};
use mgmt::ops::Ops;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use spin::Mutex;

/// Connections served at once (one more waits in the peer's SYN retries).
const SOCKETS: usize = 2;
/// Socket buffers: a request head or body arrives in pieces of at most this.
const RX_BUF: usize = 16384;
const TX_BUF: usize = 16384;
/// A request must be complete this long after its first byte (ms).
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// An idle keep-alive connection is closed after this long (ms).
const IDLE_TIMEOUT_MS: u64 = 60_000;
/// A connection we closed is dropped (RST) if the peer has not finished the
/// close this long after (a vanished peer would hold the socket forever).
const CLOSE_TIMEOUT_MS: u64 = 5_000;
/// No more input is read while this much output waits to be sent.
const MAX_PENDING_OUT: usize = 32 * 1024;

struct Conn {
    handle: SocketHandle,
    http: Option<Connection>,
    out: Vec<u8>,
    last_ms: u64,
    closing: bool,
    /// When `close()` was first called.
    closed_at: Option<u64>,
}

/// The API server: the port, the token and its sockets.
pub struct Server {
    port: u16,
    token: Vec<u8>,
    conns: Vec<Conn>,
}

impl Server {
    pub fn new(port: u16, token: &str) -> Server {
        Server {
            port,
            token: Vec::from(token.as_bytes()),
            conns: Vec::new(),
        }
    }

    /// Serves every connection as far as its socket allows; returns whether
    /// anything was sent (the caller polls the interface again to send it).
    pub fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now_ms: u64,
        ops: &mut dyn Ops,
    ) -> bool {
        while self.conns.len() < SOCKETS {
            let rx = tcp::SocketBuffer::new(vec![0u8; RX_BUF]);
            let tx = tcp::SocketBuffer::new(vec![0u8; TX_BUF]);
            let handle = sockets.add(tcp::Socket::new(rx, tx));
            self.conns.push(Conn {
                handle,
                http: None,
                out: Vec::new(),
                last_ms: now_ms,
                closing: false,
                closed_at: None,
            });
        }
        let mut sent = false;
        for c in &mut self.conns {
            sent |= serve(
                c,
                sockets.get_mut::<tcp::Socket>(c.handle),
                self.port,
                &self.token,
                now_ms,
                ops,
            );
        }
        sent
    }
}

fn serve(
    c: &mut Conn,
    s: &mut tcp::Socket,
    port: u16,
    token: &[u8],
    now_ms: u64,
    ops: &mut dyn Ops,
) -> bool {
    use tcp::State;
    match s.state() {
        State::Closed | State::TimeWait => {
            // Done with the last client: listen for the next.
            if s.state() == State::TimeWait {
                s.abort();
            }
            c.http = None;
            c.out.clear();
            c.closing = false;
            c.closed_at = None;
            let _ = s.listen(port);
            return false;
        }
        // Not connected yet.
        State::Listen | State::SynReceived | State::SynSent => return false,
        _ => {}
    }
    let http = c.http.get_or_insert_with(|| {
        c.last_ms = now_ms;
        Connection::new(token)
    });
    let mut buf = [0u8; 1024];
    while !c.closing && c.out.len() < MAX_PENDING_OUT && s.can_recv() {
        let n = match s.recv_slice(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        c.last_ms = now_ms;
        if http.receive(now_ms, &buf[..n], ops, &mut c.out) == After::Close {
            c.closing = true;
        }
    }
    if !c.closing {
        if http
            .pending_since()
            .is_some_and(|t| now_ms.saturating_sub(t) >= REQUEST_TIMEOUT_MS)
        {
            http.time_out(&mut c.out);
            c.closing = true;
        } else if now_ms.saturating_sub(c.last_ms) >= IDLE_TIMEOUT_MS
            || (s.state() == State::CloseWait && !s.can_recv())
        {
            // Idle too long, or the client has sent its FIN: nothing more will come.
            c.closing = true;
        }
    }
    let mut sent = false;
    loop {
        // A snapshot file goes out as the socket takes it: at most TX_BUF
        // of it waits on the heap.
        if http.sending() && c.out.len() < TX_BUF && !c.closing {
            if http.pull(TX_BUF - c.out.len(), &mut c.out) > 0 {
                c.last_ms = now_ms;
            }
            if !http.sending() {
                // Requests that came behind the file are served now.
                if http.receive(now_ms, &[], ops, &mut c.out) == After::Close || http.is_closed() {
                    c.closing = true;
                }
            }
        }
        let before = c.out.len();
        while !c.out.is_empty() && s.may_send() && s.can_send() {
            match s.send_slice(&c.out) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    c.out.drain(..n);
                    sent = true;
                }
            }
        }
        if !http.sending() || c.out.len() == before || !s.can_send() {
            break;
        }
    }
    if c.closing && c.out.is_empty() {
        s.close();
        let at = *c.closed_at.get_or_insert(now_ms);
        if now_ms.saturating_sub(at) >= CLOSE_TIMEOUT_MS {
            s.abort();
        }
    } else if c.closing && now_ms.saturating_sub(c.last_ms) >= IDLE_TIMEOUT_MS {
        // The peer takes none of the answer.
        s.abort();
    }
    sent
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// The manifest's API settings; prints what is served (call before the
/// scheduler runs).
pub fn configure(port: Option<u16>, token: Option<&str>, have_nic: bool) {
    let port = port.unwrap_or(loader::manifest::DEFAULT_API_PORT);
    let Some(token) = token else {
        crate::println!("hv: api: off (no api_token in the manifest)");
        return;
    };
    if !have_nic {
        crate::println!("hv: api: off (no uplink NIC for the endpoint)");
        return;
    }
    crate::println!(
        "hv: api: http on tcp port {port} of the endpoint (bearer token from the manifest)"
    );
    *SERVER.lock() = Some(Server::new(port, token));
}

/// Serves the API on the endpoint's sockets (from `nic::poll`).
pub fn poll(sockets: &mut SocketSet<'static>, now_tsc: u64) -> bool {
    let Some(mut g) = SERVER.try_lock() else {
        return false;
    };
    let Some(server) = g.as_mut() else {
        return false;
    };
    let now_ms = crate::time::tsc_to_ns(now_tsc) / 1_000_000;
    server.poll(sockets, now_ms, &mut super::CoreOps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mgmt::fake::FakeOps;
    use smoltcp::iface::{Config, Interface};
    use smoltcp::phy::{Loopback, Medium};
    use smoltcp::time::Instant;
    use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
    use std::string::String;

    const TOKEN: &str = "test-token-0123456789";

    /// A server and a client on one loopback interface; returns what the client read for
    /// each request (each closes its connection).
    fn exchange(requests: &[&str]) -> Vec<String> {
        exchange_for(requests, 2000)
    }

    fn exchange_for(requests: &[&str], steps: u64) -> Vec<String> {
        let ops = FakeOps::new(&[("web", 2, 128)]);
        exchange_bytes(
            requests.iter().map(|r| r.as_bytes().to_vec()).collect(),
            steps,
            ops,
        )
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect()
    }

    fn exchange_bytes(requests: Vec<Vec<u8>>, steps: u64, mut ops: FakeOps) -> Vec<Vec<u8>> {
        let mut dev = Loopback::new(Medium::Ethernet);
        let cfg = Config::new(EthernetAddress([2, 0, 0, 0, 0, 1]).into());
        let mut iface = Interface::new(cfg, &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut server = Server::new(8080, TOKEN);
        let mut now = 0u64;
        let mut answers = Vec::new();
        for (i, req) in requests.iter().enumerate() {
            let rx = tcp::SocketBuffer::new(vec![0u8; 8192]);
            let tx = tcp::SocketBuffer::new(vec![0u8; 8192]);
            let h = sockets.add(tcp::Socket::new(rx, tx));
            let mut sent = 0usize;
            let mut got = Vec::new();
            for step in 0..steps {
                now += 1;
                iface.poll(Instant::from_millis(now as i64), &mut dev, &mut sockets);
                server.poll(&mut sockets, now, &mut ops);
                let c = sockets.get_mut::<tcp::Socket>(h);
                if step == 1 {
                    let local = 49000 + i as u16;
                    c.connect(iface.context(), (IpAddress::v4(127, 0, 0, 1), 8080), local)
                        .unwrap();
                }
                if sent < req.len() && c.may_send() {
                    sent += c.send_slice(&req[sent..]).unwrap();
                }
                while c.can_recv() {
                    let mut buf = [0u8; 512];
                    let n = c.recv_slice(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                if sent == req.len() && !c.may_recv() && step > 10 {
                    c.close();
                    break;
                }
            }
            answers.push(got);
        }
        answers
    }

    #[test]
    fn requests_are_answered_and_the_connection_closed() {
        let auth = format!("Authorization: Bearer {TOKEN}\r\n");
        let h = "Host: x\r\nConnection: close\r\n";
        let a = exchange(&[
            &format!("GET /vms HTTP/1.1\r\n{h}\r\n"),
            &format!("GET /vms HTTP/1.1\r\n{h}Authorization: Bearer nope\r\n\r\n"),
            &format!("GET /vms HTTP/1.1\r\n{h}{auth}\r\n"),
            &format!("GET /vms HTTP/1.1\r\n{h}{auth}Content-Length: x\r\n\r\n"),
        ]);
        assert!(a[0].starts_with("HTTP/1.1 401 "), "{a:?}");
        assert!(a[0].contains("WWW-Authenticate: Bearer\r\n"), "{a:?}");
        assert!(a[1].starts_with("HTTP/1.1 401 "), "{a:?}");
        assert!(a[2].starts_with("HTTP/1.1 200 "), "{a:?}");
        assert!(a[2].ends_with("\"name\":\"web\",\"state\":\"running\",\"vcpus\":2,\"memory_mib\":128,\"exits_per_sec\":1200,\"cpu_share_permille\":125}]"), "{a:?}");
        assert!(a[3].starts_with("HTTP/1.1 400 "), "{a:?}");
        assert!(a[3].contains("bad Content-Length"), "{a:?}");
    }

    #[test]
    fn a_snapshot_file_streams_out_and_back_in_through_the_sockets() {
        use mgmt::ops::Ops;
        let mut ops = FakeOps::new(&[("web", 2, 128)]);
        let name = |s: &str| mgmt::command::Name::parse(s).unwrap();
        ops.snapshot(&name("web"), Some(&name("s1"))).unwrap();
        let file = mgmt::fake::fake_file("web", 128 * 1024);
        let auth = format!("Host: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n");
        let get = format!("GET /snapshots/s1/file?vm=web HTTP/1.1\r\n{auth}\r\n").into_bytes();
        let mut put = format!(
            "PUT /snapshots/s2/file?vm=web HTTP/1.1\r\n{auth}Content-Length: {}\r\n\r\n",
            file.len()
        )
        .into_bytes();
        put.extend_from_slice(&file);
        let a = exchange_bytes(vec![get, put], 20_000, ops);
        let end = a[0].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = std::str::from_utf8(&a[0][..end]).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Length: 131072\r\n"), "{head}");
        // Many times the socket's buffer, all of it, in order.
        assert!(file.len() > 4 * TX_BUF);
        assert!(a[0][end..] == file[..], "{} bytes", a[0].len() - end);
        let put_answer = String::from_utf8(a[1].clone()).unwrap();
        assert!(put_answer.starts_with("HTTP/1.1 201 "), "{put_answer}");
        assert!(put_answer.contains("\"name\":\"s2\""), "{put_answer}");
    }

    #[test]
    fn an_incomplete_request_times_out_with_408() {
        let a = exchange_for(&["GET /vms HTTP/1.1\r\nHost: x\r\n"], 12_000);
        assert!(a[0].starts_with("HTTP/1.1 408 "), "{a:?}");
    }
}
