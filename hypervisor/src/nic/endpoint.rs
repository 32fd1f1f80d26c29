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

/// The NIC seen as a smoltcp device for one poll.
struct Port<'a> {
    nic: &'a mut dyn NicDriver,
    rx: &'a mut [u8],
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
        let n = self.nic.recv(self.rx)?;
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

    fn bare(nic: &mut dyn NicDriver, now_tsc: u64) -> Endpoint {
        let mac = nic.mac();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed =
            now_tsc ^ u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
        let mut rx = vec![0u8; 2048];
        let iface = Interface::new(config, &mut Port { nic, rx: &mut rx }, instant(now_tsc));
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

    /// Frames in and out, timers, DHCP events. Never waits.
    pub fn poll(&mut self, nic: &mut dyn NicDriver, now_tsc: u64) {
        let now = instant(now_tsc);
        let mut port = Port {
            nic,
            rx: &mut self.rx,
        };
        self.iface.poll(now, &mut port, &mut self.sockets);
        let Some(h) = self.dhcp else { return };
        match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            Some(dhcpv4::Event::Configured(c)) => {
                let (a, r) = (c.address, c.router);
                self.configure(a, r, Addressing::Dhcp);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|a| a.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.address = None;
                crate::println!("hv: endpoint: dhcp lease lost ({})", MacFmt(self.mac));
            }
            None => {}
        }
    }
}
