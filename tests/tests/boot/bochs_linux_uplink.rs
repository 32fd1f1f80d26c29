//! A guest network bridged to the host NIC (tests/manifests/linux-uplink.toml). Bochs' e1000
//! with slirp is the wire; this test serves a file over HTTP on 127.0.0.1:10830, which slirp
//! shows the machine as 10.0.2.2. upwan, on the uplinked "wan", pings 10.0.2.2 and fetches
//! the file (its sha256 must be the file's), while the hypervisor's own endpoint keeps its
//! DHCP address on the same NIC; upiso, on "inner" (no uplink), reaches nothing.

use integration_tests::Scenario;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The manifest's URL: http://10.0.2.2:10830/blob.
const PORT: u16 = 10830;
/// Bytes of the served file: a few hundred frames each way through the bridge.
const BYTES: usize = 192 * 1024;

/// Pseudo-random bytes (xorshift), so a truncated or reordered copy has another digest.
fn blob() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A minimal HTTP/1.0 server: `GET /blob` gets the blob, anything else 404. Counts the
/// requests it answered with the blob.
fn serve(listener: TcpListener, body: Arc<Vec<u8>>, served: Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let ok = req.starts_with(b"GET /blob ");
        let head = if ok {
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
        } else {
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        };
        if c.write_all(head.as_bytes()).is_ok() && ok && c.write_all(&body).is_ok() {
            served.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn bochs_linux_uplink_guest_reaches_the_host_through_the_nic() {
    xtask::linux::prepare().unwrap_or_else(|e| {
        panic!(
            "the Linux guest's kernel and initramfs are missing and could not be prepared: {e:#}"
        )
    });
    let listener = TcpListener::bind(("127.0.0.1", PORT)).unwrap_or_else(|e| {
        panic!("port {PORT} on 127.0.0.1 ({e}): linux-uplink.toml's HTTP server needs it")
    });
    let body = Arc::new(blob());
    let sha = integration_tests::digest("sha256sum", &body);
    let served = Arc::new(AtomicUsize::new(0));
    {
        let (b, s) = (body.clone(), served.clone());
        std::thread::spawn(move || serve(listener, b, s));
    }
    let mut boot = Scenario::bochs("bochs_linux_uplink", "linux-uplink.toml")
        .cpus(2)
        .memory_mib(512)
        .timeout_secs(900)
        .with_nic()
        .boot();

    boot.line_starting("hv: network wan: 1 port, anti-spoofing on, uplink nic0")
        .line_starting("hv: network inner: 1 port, anti-spoofing on")
        // The filter: the NIC's own MAC and upwan's; multicast for ARP and the rest.
        .line_starting_containing(
            "hv: network wan: uplink nic0 (",
            "receive filter 2 addresses, multicast promiscuous",
        )
        // The endpoint still has its DHCP lease on the same NIC.
        .line_starting("hv: endpoint: 10.0.2.15/24 via dhcp")
        .line("[upwan] linux-guest: net eth0 02:fe:00:00:01:01 10.0.2.20/24 link up mtu 1500")
        .line(&format!(
            "[upwan] linux-guest: net fetched http://10.0.2.2:{PORT}/blob sha256 {sha} {BYTES} bytes"
        ))
        .line_starting("[upwan] linux-guest: net ping 10.0.2.2: 3 packets transmitted, 3 packets received")
        // Not bridged: nothing of the wire answers.
        .line("[upiso] linux-guest: net ping 10.0.2.2: 3 packets transmitted, 0 packets received, 100% packet loss")
        .line_starting_containing("hv: nic upiso.0 (02:fe:00:00:01:02) on inner: rx 0 frames 0 bytes", ", spoofed 0")
        .line_starting_containing("hv: network wan: uplink: to wire ", "dropped to wire: link down 0, queue full 0; from wire: spoofed 0")
        .no_line_containing("Kernel panic")
        .line("hv: summary: 2 guests: upwan exited code=0 (powered off), upiso exited code=0 (powered off)")
        .powered_off();
    assert!(
        served.load(Ordering::SeqCst) >= 1,
        "the HTTP server never sent the file"
    );
    boot.finish();
}
