//! The hypervisor's own IPv4 endpoint on the uplink (smoltcp): an address
//! by DHCP, answers to ping (smoltcp's interface replies to ICMP echo
//! requests addressed to it), and a socket set for the services to come.
use super::{MacFmt, NicDriver};
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

/// The largest Ethernet frame, header included, without the CRC.
const MTU: usize = 1514;

/// Frames read from the NIC per [`Endpoint::poll`] at most (the bridge's
/// share of CPU 0 is bounded by it).
pub const RX_BUDGET: usize = 64;

/// Takes the wire's frames for a bridged network.
pub type BridgeIn<'a> = &'a dyn Fn(&[u8]);

/// The NIC seen as a smoltcp device for one poll.
struct Port<'a> {
    nic: &'a mut dyn NicDriver,
    rx: &'a mut [u8],
    /// A bridged network: frames not for the endpoint go there.
    bridge: Option<BridgeIn<'a>>,
    mac: [u8; 6],
    /// Frames this poll may still read from the NIC.
    budget: usize,
}

/// Where a frame from the wire goes when a network is bridged to it: to
/// the endpoint (its own MAC), to the bridge (any other unicast), to both
/// (broadcast and multicast, so ARP for the endpoint's address is seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demux {
    pub endpoint: bool,
    pub bridge: bool,
}

pub fn demux(frame: &[u8], ours: [u8; 6]) -> Demux {
    let Some(dst) = frame.get(..6) else {
        return Demux {
            endpoint: false,
            bridge: false,
        };
    };
    if dst == ours {
        Demux {
            endpoint: true,
            bridge: false,
        }
    } else {
        let group = dst.first().is_some_and(|b| b & 1 != 0);
        Demux {
            endpoint: group,
            bridge: true,
        }
    }
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a>(&'a mut dyn NicDriver);

impl smoltcp::phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; MTU];
        let len = len.min(MTU);
        let r = f(&mut frame[..len]);
        // A full ring drops the frame, as a busy wire would.
        let _ = self.0.send(&frame[..len]);
        r
    }
}

impl Device for Port<'_> {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let n = loop {
            self.budget = self.budget.checked_sub(1)?;
            let n = self.nic.recv(self.rx)?;
            let Some(bridge) = self.bridge else { break n };
            let frame = self.rx.get(..n)?;
            let d = demux(frame, self.mac);
            if d.bridge {
                bridge(frame);
            }
            if d.endpoint {
                break n;
            }
        };
        Some((Rx(&self.rx[..n]), Tx(&mut *self.nic)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        if self.nic.can_send() {
            Some(Tx(&mut *self.nic))
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MTU;
        c.max_burst_size = Some(16);
        c
    }
}

/// How the endpoint got its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Dhcp,
    Static,
}

pub struct Endpoint {
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    rx: Vec<u8>,
    mac: [u8; 6],
    /// The address now in use.
    pub address: Option<Ipv4Cidr>,
}

fn instant(tsc: u64) -> Instant {
    Instant::from_micros((crate::time::tsc_to_ns(tsc) / 1000) as i64)
}

impl Endpoint {
    /// An endpoint that asks DHCP for its address.
    pub fn new(nic: &mut dyn NicDriver, now_tsc: u64) -> Endpoint {
        let mut ep = Endpoint::bare(nic, now_tsc);
        let handle = ep.sockets.add(dhcpv4::Socket::new());
        ep.dhcp = Some(handle);
        ep
    }

    /// An endpoint with a fixed address (and optional default gateway).
    pub fn with_static(
        nic: &mut dyn NicDriver,
        now_tsc: u64,
        address: Ipv4Cidr,
        gateway: Option<smoltcp::wire::Ipv4Address>,
    ) -> Endpoint {
        let mut ep = Endpoint::bare(nic, now_tsc);
        ep.configure(address, gateway, Addressing::Static);
        ep
    }

    /// Drops DHCP for a fixed address (the manifest's `address`).
    pub fn set_static(&mut self, address: Ipv4Cidr, gateway: Option<smoltcp::wire::Ipv4Address>) {
        if let Some(h) = self.dhcp.take() {
            self.sockets.remove(h);
        }
        self.configure(address, gateway, Addressing::Static);
    }

    fn bare(nic: &mut dyn NicDriver, now_tsc: u64) -> Endpoint {
        let mac = nic.mac();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed =
            now_tsc ^ u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
        let mut rx = vec![0u8; 2048];
        let iface = Interface::new(
            config,
            &mut Port {
                nic,
                rx: &mut rx,
                bridge: None,
                mac,
                budget: RX_BUDGET,
            },
            instant(now_tsc),
        );
        Endpoint {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dhcp: None,
            rx,
            mac,
            address: None,
        }
    }

    fn configure(
        &mut self,
        address: Ipv4Cidr,
        gateway: Option<smoltcp::wire::Ipv4Address>,
        how: Addressing,
    ) {
        self.iface.update_ip_addrs(|a| {
            a.clear();
            let _ = a.push(IpCidr::Ipv4(address));
        });
        match gateway {
            Some(g) => {
                let _ = self.iface.routes_mut().add_default_ipv4_route(g);
            }
            None => {
                self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
        self.address = Some(address);
        crate::println!(
            "hv: endpoint: {}/{} via {} ({})",
            address.address(),
            address.prefix_len(),
            match how {
                Addressing::Dhcp => "dhcp",
                Addressing::Static => "static",
            },
            MacFmt(self.mac)
        );
    }

    /// The sockets of the services on this endpoint (the management API).
    pub fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// Opens TCP socket `h` of [`Endpoint::sockets`] to `remote` from
    /// local port `local_port` (the SYN goes out at the next poll).
    pub fn tcp_connect(
        &mut self,
        h: SocketHandle,
        remote: (smoltcp::wire::Ipv4Address, u16),
        local_port: u16,
    ) -> Result<(), smoltcp::socket::tcp::ConnectError> {
        let s = self.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
        s.connect(self.iface.context(), remote, local_port)
    }

    /// Frames in and out, timers, DHCP events. Never waits.
    pub fn poll(&mut self, nic: &mut dyn NicDriver, now_tsc: u64) {
        self.poll_bridged(nic, now_tsc, None);
    }

    /// [`Endpoint::poll`] with a bridged network: at most [`RX_BUDGET`]
    /// frames come off the NIC, and those [`demux`] gives the bridge go to
    /// `bridge`.
    pub fn poll_bridged(
        &mut self,
        nic: &mut dyn NicDriver,
        now_tsc: u64,
        bridge: Option<BridgeIn<'_>>,
    ) {
        let now = instant(now_tsc);
        let mut port = Port {
            nic,
            rx: &mut self.rx,
            bridge,
            mac: self.mac,
            budget: RX_BUDGET,
        };
        self.iface.poll(now, &mut port, &mut self.sockets);
        let Some(h) = self.dhcp else { return };
        match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            Some(dhcpv4::Event::Configured(c)) => {
                let (a, r) = (c.address, c.router);
                self.configure(a, r, Addressing::Dhcp);
            }
            // Also the socket's first event, before any lease: silent then.
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|a| a.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                if self.address.take().is_some() {
                    crate::println!("hv: endpoint: dhcp lease lost ({})", MacFmt(self.mac));
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Counters, SendError};
    use super::*;
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
        Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    };
    use std::collections::VecDeque;

    const OURS: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const PEER: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
    const OUR_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
    const PEER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

    #[derive(Default)]
    struct Wire {
        inbound: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
    }

    impl NicDriver for Wire {
        fn name(&self) -> &'static str {
            "wire"
        }
        fn mac(&self) -> [u8; 6] {
            OURS
        }
        fn link_up(&mut self) -> bool {
            true
        }
        fn can_send(&mut self) -> bool {
            true
        }
        fn send(&mut self, frame: &[u8]) -> Result<(), SendError> {
            self.sent.push(frame.to_vec());
            Ok(())
        }
        fn recv(&mut self, out: &mut [u8]) -> Option<usize> {
            let f = self.inbound.pop_front()?;
            out[..f.len()].copy_from_slice(&f);
            Some(f.len())
        }
        fn counters(&mut self) -> Counters {
            Counters::default()
        }
        fn set_rx_filter(
            &mut self,
            extra: &[[u8; 6]],
            uni: bool,
            all: bool,
        ) -> super::super::RxFilter {
            super::super::RxFilter {
                addresses: 1 + extra.len(),
                unicast_promiscuous: uni,
                multicast_promiscuous: all,
            }
        }
    }

    fn eth(dst: [u8; 6], proto: EthernetProtocol, payload_len: usize) -> (Vec<u8>, EthernetRepr) {
        let repr = EthernetRepr {
            src_addr: EthernetAddress(PEER),
            dst_addr: EthernetAddress(dst),
            ethertype: proto,
        };
        (vec![0u8; repr.buffer_len() + payload_len], repr)
    }

    fn arp_request() -> Vec<u8> {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(PEER),
            source_protocol_addr: PEER_IP,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: OUR_IP,
        };
        let (mut buf, e) = eth([0xff; 6], EthernetProtocol::Arp, arp.buffer_len());
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        e.emit(&mut f);
        arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        buf
    }

    fn echo_request(seq: u16) -> Vec<u8> {
        let data = b"ferrovisor ping";
        let icmp = Icmpv4Repr::EchoRequest {
            ident: 0x1234,
            seq_no: seq,
            data,
        };
        let ip = Ipv4Repr {
            src_addr: PEER_IP,
            dst_addr: OUR_IP,
            next_header: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            hop_limit: 64,
        };
        let (mut buf, e) = eth(
            OURS,
            EthernetProtocol::Ipv4,
            ip.buffer_len() + icmp.buffer_len(),
        );
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        e.emit(&mut f);
        let caps = smoltcp::phy::ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()), &caps);
        buf
    }

    #[test]
    fn a_static_endpoint_answers_arp_and_ping() {
        let mut wire = Wire::default();
        let mut ep = Endpoint::with_static(&mut wire, 1, Ipv4Cidr::new(OUR_IP, 24), Some(PEER_IP));
        assert_eq!(ep.address, Some(Ipv4Cidr::new(OUR_IP, 24)));
        wire.inbound.push_back(arp_request());
        wire.inbound.push_back(echo_request(7));
        ep.poll(&mut wire, 1_000_000);
        let caps = smoltcp::phy::ChecksumCapabilities::default();
        let mut arp_reply = false;
        let mut echo_reply = false;
        for f in &wire.sent {
            let f = EthernetFrame::new_checked(&f[..]).unwrap();
            assert_eq!(f.src_addr(), EthernetAddress(OURS));
            match f.ethertype() {
                EthernetProtocol::Arp => {
                    let a = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
                    if let ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Reply,
                        source_protocol_addr,
                        target_hardware_addr,
                        ..
                    } = a
                    {
                        assert_eq!(source_protocol_addr, OUR_IP);
                        assert_eq!(target_hardware_addr, EthernetAddress(PEER));
                        arp_reply = true;
                    }
                }
                EthernetProtocol::Ipv4 => {
                    let p = Ipv4Packet::new_checked(f.payload()).unwrap();
                    let ip = Ipv4Repr::parse(&p, &caps).unwrap();
                    assert_eq!((ip.src_addr, ip.dst_addr), (OUR_IP, PEER_IP));
                    let i = Icmpv4Packet::new_checked(p.payload()).unwrap();
                    match Icmpv4Repr::parse(&i, &caps).unwrap() {
                        Icmpv4Repr::EchoReply {
                            ident,
                            seq_no,
                            data,
                        } => {
                            assert_eq!((ident, seq_no, data), (0x1234, 7, &b"ferrovisor ping"[..]));
                            echo_reply = true;
                        }
                        other => panic!("unexpected ICMP {other:?}"),
                    }
                }
                other => panic!("unexpected ethertype {other:?}"),
            }
        }
        assert!(arp_reply && echo_reply, "sent: {:?}", wire.sent);
    }

    #[test]
    fn a_bridged_endpoint_keeps_its_frames_and_passes_the_rest() {
        let guest = [0x02, 0xfe, 0, 0, 0, 1];
        assert_eq!(
            demux(&echo_request(1), OURS),
            Demux {
                endpoint: true,
                bridge: false
            }
        );
        assert_eq!(
            demux(&arp_request(), OURS),
            Demux {
                endpoint: true,
                bridge: true
            }
        );
        let mut to_guest = echo_request(2);
        to_guest[..6].copy_from_slice(&guest);
        assert_eq!(
            demux(&to_guest, OURS),
            Demux {
                endpoint: false,
                bridge: true
            }
        );
        assert!(!demux(&[0u8; 4], OURS).bridge);

        let mut wire = Wire::default();
        let mut ep = Endpoint::with_static(&mut wire, 1, Ipv4Cidr::new(OUR_IP, 24), Some(PEER_IP));
        wire.inbound.push_back(to_guest.clone());
        wire.inbound.push_back(arp_request());
        wire.inbound.push_back(echo_request(7));
        let bridged = std::cell::RefCell::new(Vec::new());
        let hand = |f: &[u8]| bridged.borrow_mut().push(f.to_vec());
        ep.poll_bridged(&mut wire, 1_000_000, Some(&hand));
        // The guest's frame and the broadcast ARP reached the bridge...
        assert_eq!(*bridged.borrow(), vec![to_guest.clone(), arp_request()]);
        // ...and the endpoint still answered ARP and ping.
        let types: Vec<EthernetProtocol> = wire
            .sent
            .iter()
            .map(|f| EthernetFrame::new_checked(&f[..]).unwrap().ethertype())
            .collect();
        assert!(types.contains(&EthernetProtocol::Arp), "{types:?}");
        assert!(types.contains(&EthernetProtocol::Ipv4), "{types:?}");
        // A burst: at most RX_BUDGET frames come off the NIC per poll.
        bridged.borrow_mut().clear();
        for _ in 0..RX_BUDGET + 10 {
            wire.inbound.push_back(to_guest.clone());
        }
        ep.poll_bridged(&mut wire, 2_000_000, Some(&hand));
        assert_eq!(bridged.borrow().len(), RX_BUDGET);
        assert_eq!(wire.inbound.len(), 10);
    }

    #[test]
    fn a_static_address_replaces_dhcp() {
        let mut wire = Wire::default();
        let mut ep = Endpoint::new(&mut wire, 1);
        ep.set_static(Ipv4Cidr::new(OUR_IP, 24), None);
        assert_eq!(ep.address, Some(Ipv4Cidr::new(OUR_IP, 24)));
        wire.inbound.push_back(arp_request());
        ep.poll(&mut wire, 1_000_000);
        ep.poll(&mut wire, 5_000_000_000);
        // Only the ARP reply: no DHCP discover goes out.
        assert_eq!(wire.sent.len(), 1, "{:?}", wire.sent);
        let f = EthernetFrame::new_checked(&wire.sent[0][..]).unwrap();
        assert_eq!(f.ethertype(), EthernetProtocol::Arp);
    }

    #[test]
    fn a_dhcp_endpoint_starts_by_broadcasting_a_discover() {
        let mut wire = Wire::default();
        let mut ep = Endpoint::new(&mut wire, 1);
        assert_eq!(ep.address, None);
        ep.poll(&mut wire, 1_000_000);
        let f = EthernetFrame::new_checked(&wire.sent[0][..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress([0xff; 6]));
        let p = Ipv4Packet::new_checked(f.payload()).unwrap();
        assert_eq!(p.next_header(), IpProtocol::Udp);
        let udp = smoltcp::wire::UdpPacket::new_checked(p.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (68, 67));
        let dhcp = smoltcp::wire::DhcpPacket::new_checked(udp.payload()).unwrap();
        let repr = smoltcp::wire::DhcpRepr::parse(&dhcp).unwrap();
        assert_eq!(repr.message_type, smoltcp::wire::DhcpMessageType::Discover);
        assert_eq!(repr.client_hardware_address, EthernetAddress(OURS));
    }
}
