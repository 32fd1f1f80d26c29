//! Intel 8254x (82540EM "e1000") driver, written from Intel's "PCI/PCI-X
//! Family of Gigabit Ethernet Controllers Software Developer's Manual"
//! (8254x SDM): register offsets and bits from its chapter 13, the legacy
//! descriptor formats from 3.2.3 and 3.3.3, the bring-up order from 14
//! (General Initialization: 14.4 receive, 14.5 transmit). Polled: all
//! interrupt causes stay masked.
//!
//! The register access is a trait so the ring logic runs on the host against
//! a fake device ([`fake::FakeE1000`]) that does its "DMA" at the addresses
//! the driver programs, as the hardware does.
use super::{Counters, NicDriver, RxFilter, SendError};
use alloc::boxed::Box;
use core::sync::atomic::{fence, Ordering};

/// PCI device ids of the 8254x parts this driver knows (vendor 8086): the
/// 82540EM/EP and 82545EM/GM copper controllers, which all have EERD and
/// the register set used here.
pub const DEVICE_IDS: &[u16] = &[0x100e, 0x100f, 0x1015, 0x1016, 0x1017, 0x101e, 0x1026];

/// Register offsets in BAR0 (8254x SDM 13.3, table 13-2).
pub mod reg {
    pub const CTRL: u32 = 0x0000;
    pub const STATUS: u32 = 0x0008;
    pub const EERD: u32 = 0x0014;
    pub const ICR: u32 = 0x00c0;
    pub const IMC: u32 = 0x00d8;
    pub const RCTL: u32 = 0x0100;
    pub const TCTL: u32 = 0x0400;
    pub const TIPG: u32 = 0x0410;
    pub const RDBAL: u32 = 0x2800;
    pub const RDBAH: u32 = 0x2804;
    pub const RDLEN: u32 = 0x2808;
    pub const RDH: u32 = 0x2810;
    pub const RDT: u32 = 0x2818;
    pub const TDBAL: u32 = 0x3800;
    pub const TDBAH: u32 = 0x3804;
    pub const TDLEN: u32 = 0x3808;
    pub const TDH: u32 = 0x3810;
    pub const TDT: u32 = 0x3818;
    /// Statistics (clear on read): CRC errors, missed packets, good
    /// packets received/transmitted.
    pub const CRCERRS: u32 = 0x4000;
    pub const MPC: u32 = 0x4010;
    pub const GPRC: u32 = 0x4074;
    pub const GPTC: u32 = 0x4080;
    /// Multicast table array, 128 dwords.
    pub const MTA: u32 = 0x5200;
    /// Receive address n: RAL at 0x5400 + 8n, RAH at 0x5404 + 8n, n < 16
    /// (8254x SDM 13.4.41-42).
    pub const RAL0: u32 = 0x5400;
    pub const RAH0: u32 = 0x5404;
}

/// Receive address entries (RAL/RAH 0..15); entry 0 is the NIC's own MAC.
pub const RA_ENTRIES: usize = 16;
/// RAH.AV: the entry is valid (RAH.AS, bits 17:16, = 00: compare with the
/// destination address).
pub const RAH_AV: u32 = 1 << 31;

/// CTRL bits (8254x SDM 13.4.1).
pub mod ctrl {
    pub const LRST: u32 = 1 << 3;
    pub const ASDE: u32 = 1 << 5;
    pub const SLU: u32 = 1 << 6;
    pub const ILOS: u32 = 1 << 7;
    pub const RST: u32 = 1 << 26;
    pub const VME: u32 = 1 << 30;
    pub const PHY_RST: u32 = 1 << 31;
}

/// STATUS.LU: link up (8254x SDM 13.4.2).
pub const STATUS_LU: u32 = 1 << 1;

/// EERD (8254x SDM 13.4.4): START, DONE, address 15:8, data 31:16.
pub mod eerd {
    pub const START: u32 = 1 << 0;
    pub const DONE: u32 = 1 << 4;
    pub const ADDR_SHIFT: u32 = 8;
    pub const DATA_SHIFT: u32 = 16;
}

/// RCTL bits (8254x SDM 13.4.22).
pub mod rctl {
    pub const EN: u32 = 1 << 1;
    /// Unicast promiscuous: every unicast frame passes the filter.
    pub const UPE: u32 = 1 << 3;
    /// Multicast promiscuous: every multicast frame passes the filter.
    pub const MPE: u32 = 1 << 4;
    /// Broadcast accept.
    pub const BAM: u32 = 1 << 15;
    /// Strip the Ethernet CRC from received frames.
    pub const SECRC: u32 = 1 << 26;
    // BSIZE = 00 with BSEX = 0: 2048-byte buffers; LPE = 0: frames over
    // 1522 bytes are dropped; RDMTS, MO, loopback: 0.
}

/// TCTL bits (8254x SDM 13.4.33).
pub mod tctl {
    pub const EN: u32 = 1 << 1;
    /// Pad short packets to 64 bytes.
    pub const PSP: u32 = 1 << 3;
    pub const CT_SHIFT: u32 = 4;
    pub const COLD_SHIFT: u32 = 12;
    /// Collision threshold 0x0F; collision distance 0x40 (full duplex)
    /// (8254x SDM 14.5).
    pub const CT: u32 = 0x0f;
    pub const COLD_FD: u32 = 0x40;
}

/// TIPG for copper on the 82540/82545: IPGT 10, IPGR1 8, IPGR2 6
/// (8254x SDM 13.4.34).
pub const TIPG_COPPER: u32 = 10 | (8 << 10) | (6 << 20);

/// Receive descriptor status DD/EOP (8254x SDM 3.2.3.1).
pub const RX_DD: u8 = 1 << 0;
pub const RX_EOP: u8 = 1 << 1;
/// Transmit descriptor command EOP/IFCS/RS and status DD (8254x SDM 3.3.3).
pub const TX_EOP: u8 = 1 << 0;
pub const TX_IFCS: u8 = 1 << 1;
pub const TX_RS: u8 = 1 << 3;
pub const TX_DD: u8 = 1 << 0;

/// Descriptors per ring: RDLEN/TDLEN must be multiples of 128 bytes (8
/// descriptors).
pub const RING: usize = 32;
/// Bytes per buffer (RCTL.BSIZE 2048).
pub const BUF: usize = 2048;
/// The largest frame sent, without the CRC the NIC appends (IFCS).
pub const MAX_FRAME: usize = 1514;

/// Access to the NIC's registers.
pub trait Regs {
    fn read(&mut self, off: u32) -> u32;
    fn write(&mut self, off: u32, v: u32);
}

/// BAR0 mapped uncached in the hypervisor's identity map.
pub struct Mmio {
    base: *mut u32,
}

// SAFETY: the registers are MMIO; the driver that owns `Mmio` is used under
// one lock, so no two CPUs access them at once.
unsafe impl Send for Mmio {}

impl Mmio {
    /// # Safety
    /// `base` is BAR0 of an 8254x, identity mapped and uncached, 128 KiB,
    /// used by nothing else.
    pub unsafe fn new(base: u64) -> Mmio {
        Mmio {
            base: base as *mut u32,
        }
    }
}

impl Regs for Mmio {
    fn read(&mut self, off: u32) -> u32 {
        // SAFETY: `off` is one of the register offsets above, inside the
        // 128 KiB BAR that `new`'s caller vouched for; MMIO needs volatile.
        unsafe { self.base.byte_add(off as usize).read_volatile() }
    }
    fn write(&mut self, off: u32, v: u32) {
        // SAFETY: as in `read`.
        unsafe { self.base.byte_add(off as usize).write_volatile(v) }
    }
}

/// Legacy receive descriptor (8254x SDM 3.2.3).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RxDesc {
    pub addr: u64,
    pub length: u16,
    pub checksum: u16,
    pub status: u8,
    pub errors: u8,
    pub special: u16,
}

/// Legacy transmit descriptor (8254x SDM 3.3.3).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct TxDesc {
    pub addr: u64,
    pub length: u16,
    pub cso: u8,
    pub cmd: u8,
    pub status: u8,
    pub css: u8,
    pub special: u16,
}

/// A descriptor ring: 128-byte aligned (the base must be 16-byte aligned;
/// 128 keeps it on cache lines).
#[repr(C, align(128))]
pub struct Ring<D>(pub [D; RING]);

#[repr(C, align(4096))]
pub struct Buffers(pub [[u8; BUF]; RING]);

impl Buffers {
    /// 64 KiB straight on the heap (never as a temporary on the stack).
    fn boxed() -> Box<Buffers> {
        // SAFETY: all zeros is a valid `Buffers` (plain bytes).
        unsafe { Box::<Buffers>::new_zeroed().assume_init() }
    }
}

/// The physical address of driver memory: the hypervisor runs on an
/// identity map, so it is the pointer's value.
fn phys<T>(p: *const T) -> u64 {
    p as u64
}

/// Why bring-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// CTRL.RST did not clear within 10 ms.
    ResetTimeout,
    /// Neither RAL/RAH nor the EEPROM gave a unicast MAC.
    NoMac,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            InitError::ResetTimeout => "the device reset (CTRL.RST) did not complete",
            InitError::NoMac => "no valid MAC address in RAL/RAH or the EEPROM",
        })
    }
}

/// A driven 8254x.
pub struct E1000<R: Regs> {
    regs: R,
    rx: Box<Ring<RxDesc>>,
    rx_bufs: Box<Buffers>,
    /// The next receive descriptor the device fills.
    rx_next: usize,
    tx: Box<Ring<TxDesc>>,
    tx_bufs: Box<Buffers>,
    /// The next free transmit slot (the value TDT gets after it is used).
    tx_tail: usize,
    /// The oldest transmit descriptor not yet seen done.
    tx_clean: usize,
    mac: [u8; 6],
    counters: Counters,
}

/// A MAC is usable if it is unicast and not all zeros.
pub fn valid_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// The MAC held in RAL0/RAH0 if RAH.AV (bit 31) says it is valid.
pub fn mac_from_ral(ral: u32, rah: u32) -> Option<[u8; 6]> {
    if rah & (1 << 31) == 0 {
        return None;
    }
    let l = ral.to_le_bytes();
    let h = rah.to_le_bytes();
    Some([l[0], l[1], l[2], l[3], h[0], h[1]])
}

/// The MAC from EEPROM words 0-2 (8254x SDM 5.6.1: Ethernet address,
/// low byte first in each word).
pub fn mac_from_eeprom(words: [u16; 3]) -> [u8; 6] {
    let [a, b] = words[0].to_le_bytes();
    let [c, d] = words[1].to_le_bytes();
    let [e, f] = words[2].to_le_bytes();
    [a, b, c, d, e, f]
}

impl<R: Regs> E1000<R> {
    /// Resets the device and brings receive and transmit up (8254x SDM 14).
    /// `delay_us` waits; the reset is polled for at most 10 ms.
    pub fn init(mut regs: R, delay_us: &dyn Fn(u64)) -> Result<Self, InitError> {
        // Mask everything before and after the reset (14.3: interrupts are
        // disabled across a global reset).
        regs.write(reg::IMC, 0xffff_ffff);
        let c = regs.read(reg::CTRL);
        regs.write(reg::CTRL, c | ctrl::RST);
        delay_us(1);
        let mut waited = 0;
        while regs.read(reg::CTRL) & ctrl::RST != 0 {
            if waited >= 10_000 {
                return Err(InitError::ResetTimeout);
            }
            delay_us(10);
            waited += 10;
        }
        regs.write(reg::IMC, 0xffff_ffff);
        let _ = regs.read(reg::ICR);

        let mac = match mac_from_ral(regs.read(reg::RAL0), regs.read(reg::RAH0)) {
            Some(m) if valid_mac(m) => m,
            _ => {
                let mut w = [0u16; 3];
                for (i, word) in (0u32..).zip(w.iter_mut()) {
                    *word = read_eeprom(&mut regs, i, delay_us).unwrap_or(0);
                }
                let m = mac_from_eeprom(w);
                if !valid_mac(m) {
                    return Err(InitError::NoMac);
                }
                m
            }
        };

        // Link: set link up with auto speed detection; clear the link and
        // PHY resets, loss-of-signal inversion and VLAN mode (14.3).
        let c = regs.read(reg::CTRL);
        regs.write(
            reg::CTRL,
            (c | ctrl::SLU | ctrl::ASDE) & !(ctrl::LRST | ctrl::PHY_RST | ctrl::ILOS | ctrl::VME),
        );

        let mut nic = E1000 {
            regs,
            rx: Box::new(Ring([RxDesc::default(); RING])),
            rx_bufs: Buffers::boxed(),
            rx_next: 0,
            tx: Box::new(Ring([TxDesc::default(); RING])),
            tx_bufs: Buffers::boxed(),
            tx_tail: 0,
            tx_clean: 0,
            mac,
            counters: Counters::default(),
        };
        nic.program_address();
        nic.init_rx();
        nic.init_tx();
        Ok(nic)
    }

    fn program_address(&mut self) {
        let m = self.mac;
        self.write_ra(0, Some(m));
        for i in 1..RA_ENTRIES {
            self.write_ra(i, None);
        }
        for i in 0..128 {
            self.regs.write(reg::MTA + 4 * i, 0);
        }
    }

    /// Receive address entry `i`: AV cleared first, so the filter never
    /// matches half an address, then RAL, then RAH with AV (13.4.41-42).
    fn write_ra(&mut self, i: usize, mac: Option<[u8; 6]>) {
        let at = 8 * i as u32;
        self.regs.write(reg::RAH0 + at, 0);
        let Some(m) = mac else {
            self.regs.write(reg::RAL0 + at, 0);
            return;
        };
        self.regs
            .write(reg::RAL0 + at, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        self.regs.write(
            reg::RAH0 + at,
            u32::from_le_bytes([m[4], m[5], 0, 0]) | RAH_AV,
        );
    }

    /// 14.4: descriptors with buffers, RDBAL/RDLEN, RDH = 0, RDT = the last
    /// descriptor (all but one owned by the device), then RCTL.
    fn init_rx(&mut self) {
        for i in 0..RING {
            self.rx.0[i] = RxDesc {
                addr: phys(self.rx_bufs.0[i].as_ptr()),
                ..RxDesc::default()
            };
        }
        let base = phys(self.rx.0.as_ptr());
        self.regs.write(reg::RDBAL, base as u32);
        self.regs.write(reg::RDBAH, (base >> 32) as u32);
        self.regs.write(reg::RDLEN, (RING * 16) as u32);
        self.regs.write(reg::RDH, 0);
        fence(Ordering::SeqCst);
        self.regs.write(reg::RDT, (RING - 1) as u32);
        self.regs
            .write(reg::RCTL, rctl::EN | rctl::BAM | rctl::SECRC);
    }

    /// 14.5: TDBAL/TDLEN, TDH = TDT = 0, TCTL, TIPG.
    fn init_tx(&mut self) {
        let base = phys(self.tx.0.as_ptr());
        self.regs.write(reg::TDBAL, base as u32);
        self.regs.write(reg::TDBAH, (base >> 32) as u32);
        self.regs.write(reg::TDLEN, (RING * 16) as u32);
        self.regs.write(reg::TDH, 0);
        self.regs.write(reg::TDT, 0);
        self.regs.write(
            reg::TCTL,
            tctl::EN
                | tctl::PSP
                | (tctl::CT << tctl::CT_SHIFT)
                | (tctl::COLD_FD << tctl::COLD_SHIFT),
        );
        self.regs.write(reg::TIPG, TIPG_COPPER);
    }

    fn rx_status(&self, i: usize) -> u8 {
        // SAFETY: the descriptor is ours; the device writes it by DMA, so the
        // read must not be cached in a register or elided.
        unsafe { core::ptr::addr_of!(self.rx.0[i].status).read_volatile() }
    }

    fn tx_status(&self, i: usize) -> u8 {
        // SAFETY: as in `rx_status`.
        unsafe { core::ptr::addr_of!(self.tx.0[i].status).read_volatile() }
    }

    /// Frees transmit slots the device has finished (DD written back
    /// because RS was set).
    fn reclaim_tx(&mut self) {
        while self.tx_clean != self.tx_tail && self.tx_status(self.tx_clean) & TX_DD != 0 {
            self.tx_clean = (self.tx_clean + 1) % RING;
        }
    }

    /// Transmit slots free now.
    pub fn tx_free(&mut self) -> usize {
        self.reclaim_tx();
        RING - 1 - (self.tx_tail + RING - self.tx_clean) % RING
    }

    /// The statistics registers, accumulated (they clear on read).
    pub fn refresh_counters(&mut self) {
        self.counters.hw_rx_good += u64::from(self.regs.read(reg::GPRC));
        self.counters.hw_tx_good += u64::from(self.regs.read(reg::GPTC));
        self.counters.hw_rx_missed += u64::from(self.regs.read(reg::MPC));
        self.counters.hw_rx_crc_errors += u64::from(self.regs.read(reg::CRCERRS));
    }
}

/// Reads EEPROM word `addr` through EERD (8254x SDM 5.3.1, 13.4.4).
fn read_eeprom<R: Regs>(regs: &mut R, addr: u32, delay_us: &dyn Fn(u64)) -> Option<u16> {
    regs.write(reg::EERD, eerd::START | (addr << eerd::ADDR_SHIFT));
    for _ in 0..1000 {
        let v = regs.read(reg::EERD);
        if v & eerd::DONE != 0 {
            return Some((v >> eerd::DATA_SHIFT) as u16);
        }
        delay_us(1);
    }
    None
}

impl<R: Regs + Send> NicDriver for E1000<R> {
    fn name(&self) -> &'static str {
        "e1000 (Intel 8254x)"
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        self.regs.read(reg::STATUS) & STATUS_LU != 0
    }

    fn can_send(&mut self) -> bool {
        self.tx_free() > 0
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), SendError> {
        if frame.len() > MAX_FRAME || frame.len() < 14 {
            self.counters.tx_dropped += 1;
            return Err(SendError::BadLength);
        }
        if self.tx_free() == 0 {
            self.counters.tx_dropped += 1;
            return Err(SendError::Busy);
        }
        let i = self.tx_tail;
        self.tx_bufs.0[i][..frame.len()].copy_from_slice(frame);
        self.tx.0[i] = TxDesc {
            addr: phys(self.tx_bufs.0[i].as_ptr()),
            length: frame.len() as u16,
            cmd: TX_EOP | TX_IFCS | TX_RS,
            ..TxDesc::default()
        };
        // The descriptor and buffer reach memory before the tail moves.
        fence(Ordering::SeqCst);
        self.tx_tail = (i + 1) % RING;
        self.regs.write(reg::TDT, self.tx_tail as u32);
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn recv(&mut self, out: &mut [u8]) -> Option<usize> {
        loop {
            let i = self.rx_next;
            if self.rx_status(i) & RX_DD == 0 {
                return None;
            }
            // Read the rest of the descriptor only after DD.
            fence(Ordering::SeqCst);
            let d = self.rx.0[i];
            let ok = d.status & RX_EOP != 0
                && d.errors == 0
                && usize::from(d.length) <= BUF
                && usize::from(d.length) <= out.len();
            let got = if ok {
                let n = usize::from(d.length);
                out[..n].copy_from_slice(&self.rx_bufs.0[i][..n]);
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += n as u64;
                Some(n)
            } else {
                // Errored, spanning descriptors (LPE is off, so the device
                // shouldn't) or too big for the caller: dropped.
                self.counters.rx_dropped += 1;
                None
            };
            // Give the descriptor back: clear its status, then move RDT onto
            // it (the tail is one past the last descriptor the device owns).
            self.rx.0[i].status = 0;
            self.rx.0[i].errors = 0;
            fence(Ordering::SeqCst);
            self.regs.write(reg::RDT, i as u32);
            self.rx_next = (i + 1) % RING;
            if got.is_some() {
                return got;
            }
        }
    }

    fn counters(&mut self) -> Counters {
        self.refresh_counters();
        self.counters
    }

    /// RAL/RAH 1..15 get `extra`; more than 15 (or `all_unicast`) sets
    /// RCTL.UPE instead (the entries are cleared). `all_multicast` sets
    /// RCTL.MPE; BAM stays on.
    fn set_rx_filter(
        &mut self,
        extra: &[[u8; 6]],
        all_unicast: bool,
        all_multicast: bool,
    ) -> RxFilter {
        let promiscuous = all_unicast || extra.len() > RA_ENTRIES - 1;
        for i in 1..RA_ENTRIES {
            let m = if promiscuous {
                None
            } else {
                extra.get(i - 1).copied()
            };
            self.write_ra(i, m);
        }
        let mut r = self.regs.read(reg::RCTL) & !(rctl::UPE | rctl::MPE);
        if promiscuous {
            r |= rctl::UPE;
        }
        if all_multicast {
            r |= rctl::MPE;
        }
        self.regs.write(reg::RCTL, r);
        RxFilter {
            addresses: if promiscuous { 1 } else { 1 + extra.len() },
            unicast_promiscuous: promiscuous,
            multicast_promiscuous: all_multicast,
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! A model of the 82540EM's registers and descriptor processing, enough
    //! to check the driver's ring handling: reset, EERD, RAL/RAH, link,
    //! RX/TX rings by "DMA" at the programmed addresses, statistics.
    use super::*;
    use std::vec::Vec;

    pub struct FakeE1000 {
        pub regs: Vec<u32>,
        pub eeprom: [u16; 64],
        /// RAL/RAH as loaded at reset (None: not loaded, AV clear).
        pub mac_in_ral: Option<[u8; 6]>,
        pub sent: Vec<Vec<u8>>,
        pub reset_reads: u32,
        pub link: bool,
    }

    impl FakeE1000 {
        pub fn new(mac: [u8; 6]) -> FakeE1000 {
            let mut eeprom = [0u16; 64];
            for i in 0..3 {
                eeprom[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
            }
            FakeE1000 {
                regs: vec![0; 0x2_0000 / 4],
                eeprom,
                mac_in_ral: Some(mac),
                sent: Vec::new(),
                reset_reads: 2,
                link: true,
            }
        }

        fn r(&self, off: u32) -> u32 {
            self.regs[off as usize / 4]
        }
        fn w(&mut self, off: u32, v: u32) {
            self.regs[off as usize / 4] = v;
        }

        fn reset(&mut self) {
            self.regs.iter_mut().for_each(|r| *r = 0);
            if let Some(m) = self.mac_in_ral {
                self.w(reg::RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
                self.w(
                    reg::RAH0,
                    u32::from_le_bytes([m[4], m[5], 0, 0]) | (1 << 31),
                );
            }
            // The reset bit reads set for a few reads, then clears.
            self.w(reg::CTRL, ctrl::RST | ctrl::LRST);
        }

        fn ring_len(&self, len_reg: u32) -> u32 {
            self.r(len_reg) / 16
        }

        fn desc_ptr(&self, bal: u32, i: u32) -> *mut u8 {
            let base = u64::from(self.r(bal)) | (u64::from(self.r(bal + 4)) << 32);
            (base + u64::from(i) * 16) as *mut u8
        }

        /// Transmits descriptors from TDH up to TDT.
        fn transmit(&mut self) {
            if self.r(reg::TCTL) & tctl::EN == 0 {
                return;
            }
            let n = self.ring_len(reg::TDLEN);
            while self.r(reg::TDH) != self.r(reg::TDT) {
                let h = self.r(reg::TDH);
                let p = self.desc_ptr(reg::TDBAL, h) as *mut TxDesc;
                // SAFETY: in these host tests the "physical" address the
                // driver programs is a pointer into its own live ring.
                let mut d = unsafe { p.read_volatile() };
                let frame =
                    // SAFETY: as above, for the buffer the descriptor names.
                    unsafe { std::slice::from_raw_parts(d.addr as *const u8, usize::from(d.length)) };
                self.sent.push(frame.to_vec());
                if d.cmd & TX_RS != 0 {
                    d.status |= TX_DD;
                }
                // SAFETY: as above.
                unsafe { p.write_volatile(d) };
                let gptc = self.r(reg::GPTC) + 1;
                self.w(reg::GPTC, gptc);
                self.w(reg::TDH, (h + 1) % n);
            }
        }

        /// The receive filter (8254x SDM 3.2.1, 13.4.22): broadcast with
        /// BAM, multicast with MPE (the MTA is all zeros here), unicast with
        /// UPE or a valid RAL/RAH entry equal to the destination.
        pub fn accepts(&self, frame: &[u8]) -> bool {
            let rctl = self.r(reg::RCTL);
            let dst = &frame[..6];
            if dst == [0xff; 6] && rctl & rctl::BAM != 0 {
                return true;
            }
            if dst[0] & 1 != 0 {
                return rctl & rctl::MPE != 0;
            }
            rctl & rctl::UPE != 0
                || (0..RA_ENTRIES as u32).any(|i| {
                    let ral = self.r(reg::RAL0 + 8 * i);
                    let rah = self.r(reg::RAH0 + 8 * i);
                    mac_from_ral(ral, rah).is_some_and(|m| m[..] == *dst)
                })
        }

        /// A frame arrives from the wire. False if the filter refused it or
        /// it was missed (no descriptor owned by the device, or receive
        /// off: counted in MPC).
        pub fn deliver(&mut self, frame: &[u8]) -> bool {
            if !self.accepts(frame) {
                return false;
            }
            let n = self.ring_len(reg::RDLEN);
            let h = self.r(reg::RDH);
            if self.r(reg::RCTL) & rctl::EN == 0 || n == 0 || h == self.r(reg::RDT) {
                let mpc = self.r(reg::MPC) + 1;
                self.w(reg::MPC, mpc);
                return false;
            }
            let p = self.desc_ptr(reg::RDBAL, h) as *mut RxDesc;
            // SAFETY: as in `transmit`.
            let mut d = unsafe { p.read_volatile() };
            assert!(frame.len() <= BUF);
            // SAFETY: as in `transmit`; the buffer is BUF bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(frame.as_ptr(), d.addr as *mut u8, frame.len())
            };
            d.length = frame.len() as u16;
            d.status = RX_DD | RX_EOP;
            d.errors = 0;
            // SAFETY: as above.
            unsafe { p.write_volatile(d) };
            let gprc = self.r(reg::GPRC) + 1;
            self.w(reg::GPRC, gprc);
            self.w(reg::RDH, (h + 1) % n);
            true
        }
    }

    impl Regs for &mut FakeE1000 {
        fn read(&mut self, off: u32) -> u32 {
            (**self).read(off)
        }
        fn write(&mut self, off: u32, v: u32) {
            (**self).write(off, v)
        }
    }

    impl Regs for FakeE1000 {
        fn read(&mut self, off: u32) -> u32 {
            match off {
                reg::CTRL => {
                    let c = self.r(reg::CTRL);
                    if c & ctrl::RST != 0 {
                        if self.reset_reads == 0 {
                            self.w(reg::CTRL, c & !ctrl::RST);
                        } else {
                            self.reset_reads -= 1;
                        }
                    }
                    c
                }
                reg::STATUS => {
                    if self.link && self.r(reg::CTRL) & ctrl::SLU != 0 {
                        STATUS_LU | 1
                    } else {
                        0
                    }
                }
                reg::GPRC | reg::GPTC | reg::MPC | reg::CRCERRS | reg::ICR => {
                    let v = self.r(off);
                    self.w(off, 0);
                    v
                }
                _ => self.r(off),
            }
        }

        fn write(&mut self, off: u32, v: u32) {
            match off {
                reg::CTRL if v & ctrl::RST != 0 => self.reset(),
                reg::EERD => {
                    let v = if v & eerd::START != 0 {
                        let a = ((v >> eerd::ADDR_SHIFT) & 0xff) as usize;
                        eerd::DONE | (u32::from(self.eeprom[a]) << eerd::DATA_SHIFT)
                    } else {
                        v
                    };
                    self.w(off, v);
                }
                reg::TDT => {
                    self.w(off, v);
                    self.transmit();
                }
                _ => self.w(off, v),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeE1000;
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn up(dev: &mut FakeE1000) -> E1000<&mut FakeE1000> {
        E1000::init(dev, &|_| {}).unwrap()
    }

    fn frame(n: usize, tag: u8) -> Vec<u8> {
        let mut f = vec![tag; n];
        f[..6].copy_from_slice(&MAC);
        f
    }

    #[test]
    fn mac_decoding() {
        assert_eq!(mac_from_ral(0x1200_5452, 0x8000_5634), Some(MAC));
        assert_eq!(mac_from_ral(0x1200_5452, 0x0000_5634), None);
        assert_eq!(mac_from_eeprom([0x5452, 0x1200, 0x5634]), MAC);
        assert!(!valid_mac([0; 6]));
        assert!(!valid_mac([1, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn bring_up_programs_the_rings_and_link() {
        let mut dev = FakeE1000::new(MAC);
        let mut nic = up(&mut dev);
        assert_eq!(nic.mac(), MAC);
        assert!(nic.link_up());
        drop(nic);
        assert_eq!(dev.regs[reg::RCTL as usize / 4] & rctl::EN, rctl::EN);
        assert_eq!(dev.regs[reg::TCTL as usize / 4] & tctl::EN, tctl::EN);
        assert_eq!(dev.regs[reg::RDLEN as usize / 4], 512);
        assert_eq!(dev.regs[reg::RDT as usize / 4], 31);
        assert_eq!(
            dev.regs[reg::CTRL as usize / 4] & (ctrl::SLU | ctrl::LRST),
            ctrl::SLU
        );
        assert_eq!(dev.regs[reg::RDBAL as usize / 4] % 16, 0);
    }

    #[test]
    fn mac_comes_from_the_eeprom_when_ral_is_not_valid() {
        let mut dev = FakeE1000::new(MAC);
        dev.mac_in_ral = None;
        let nic = up(&mut dev);
        assert_eq!(nic.mac(), MAC);
        drop(nic);
        // And is programmed into RAL0/RAH0 with AV, so unicast to it passes.
        assert_eq!(
            mac_from_ral(
                dev.regs[reg::RAL0 as usize / 4],
                dev.regs[reg::RAH0 as usize / 4]
            ),
            Some(MAC)
        );
    }

    #[test]
    fn the_receive_filter_takes_the_bridged_macs_then_goes_promiscuous() {
        let dev: *mut FakeE1000 = Box::into_raw(Box::new(FakeE1000::new(MAC)));
        // SAFETY: as in the ring tests below.
        let mut nic = E1000::init(unsafe { &mut *dev }, &|_| {}).unwrap();
        let to = |d: [u8; 6]| {
            let mut f = frame(60, 9);
            f[..6].copy_from_slice(&d);
            f
        };
        let guest = |i: u8| [0x02, 0xfe, 0, 0, 0, i];
        let mcast = [0x33, 0x33, 0, 0, 0, 1];
        // SAFETY: as above, one access at a time.
        let dev = unsafe { &mut *dev };
        // Before: our MAC and broadcast only.
        assert!(dev.accepts(&to(MAC)) && dev.accepts(&to([0xff; 6])));
        assert!(!dev.accepts(&to(guest(1))) && !dev.accepts(&to(mcast)));
        // 15 guests: entries 1..15, exact filtering, multicast promiscuous.
        let fifteen: Vec<[u8; 6]> = (1..=15).map(guest).collect();
        let f = nic.set_rx_filter(&fifteen, false, true);
        assert_eq!(
            f,
            RxFilter {
                addresses: 16,
                unicast_promiscuous: false,
                multicast_promiscuous: true
            }
        );
        let rctl = dev.regs[reg::RCTL as usize / 4];
        assert_eq!(
            rctl & (rctl::UPE | rctl::MPE | rctl::EN),
            rctl::MPE | rctl::EN
        );
        for i in 1..=15 {
            assert!(dev.accepts(&to(guest(i))), "guest {i}");
        }
        assert_eq!(
            mac_from_ral(
                dev.regs[(reg::RAL0 + 8 * 15) as usize / 4],
                dev.regs[(reg::RAH0 + 8 * 15) as usize / 4]
            ),
            Some(guest(15))
        );
        assert!(dev.accepts(&to(MAC)) && dev.accepts(&to(mcast)));
        assert!(!dev.accepts(&to(guest(16))));
        assert!(dev.deliver(&to(guest(3))) && !dev.deliver(&to(guest(16))));
        // 16: unicast promiscuous, the extra entries cleared.
        let sixteen: Vec<[u8; 6]> = (1..=16).map(guest).collect();
        assert!(nic.set_rx_filter(&sixteen, false, true).unicast_promiscuous);
        assert_eq!(dev.regs[reg::RCTL as usize / 4] & rctl::UPE, rctl::UPE);
        assert_eq!(dev.regs[(reg::RAH0 + 8) as usize / 4] & RAH_AV, 0);
        assert!(dev.accepts(&to(guest(16))) && dev.accepts(&to(guest(200))));
        // Back to two: exact again, entries past them invalid.
        assert_eq!(nic.set_rx_filter(&fifteen[..2], false, false).addresses, 3);
        assert_eq!(
            dev.regs[reg::RCTL as usize / 4] & (rctl::UPE | rctl::MPE),
            0
        );
        assert!(dev.accepts(&to(guest(2))) && !dev.accepts(&to(guest(3))));
        // Guests that may use any MAC (anti-spoofing off): promiscuous.
        assert!(
            nic.set_rx_filter(&fifteen[..2], true, true)
                .unicast_promiscuous
        );
        assert!(dev.accepts(&to(guest(3))));
        nic.set_rx_filter(&fifteen[..2], false, false);
        assert!(!dev.accepts(&to(mcast)) && dev.accepts(&to([0xff; 6])));
        drop(nic);
        // SAFETY: from `Box::into_raw` above, freed once.
        drop(unsafe { Box::from_raw(dev) });
    }

    #[test]
    fn a_reset_that_never_completes_is_an_error() {
        let mut dev = FakeE1000::new(MAC);
        dev.reset_reads = u32::MAX;
        assert_eq!(
            E1000::init(&mut dev, &|_| {}).err(),
            Some(InitError::ResetTimeout)
        );
    }

    #[test]
    fn frames_are_sent_in_order_and_slots_come_back() {
        // The fake lives behind a raw pointer so the test can look at it
        // while the driver holds its `&mut`, as the wire would.
        let dev: *mut FakeE1000 = Box::into_raw(Box::new(FakeE1000::new(MAC)));
        // SAFETY: `dev` is live until the end of the test and only used
        // from this thread, one access at a time.
        let mut nic = E1000::init(unsafe { &mut *dev }, &|_| {}).unwrap();
        for round in 0..3u8 {
            for k in 0..(RING - 1) as u8 {
                nic.send(&frame(
                    60 + usize::from(k),
                    round.wrapping_mul(40).wrapping_add(k),
                ))
                .unwrap();
            }
        }
        // SAFETY: as above.
        let sent = unsafe { &(*dev).sent };
        assert_eq!(sent.len(), 3 * (RING - 1));
        assert_eq!(sent[5], frame(65, 5));
        assert_eq!(sent[RING - 1 + 2], frame(62, 42));
        let c = nic.counters();
        assert_eq!((c.tx_frames, c.hw_tx_good), (93, 93));
        assert!(nic.send(&[0u8; 10]).is_err());
        assert!(nic.send(&[0u8; 1515]).is_err());
        drop(nic);
        // SAFETY: from `Box::into_raw` above, freed once.
        drop(unsafe { Box::from_raw(dev) });
    }

    #[test]
    fn a_ring_the_device_has_not_finished_is_full() {
        let dev: *mut FakeE1000 = Box::into_raw(Box::new(FakeE1000::new(MAC)));
        // SAFETY: as in the test above.
        let mut nic = E1000::init(unsafe { &mut *dev }, &|_| {}).unwrap();
        // Transmit off on the device side: nothing completes.
        // SAFETY: as above.
        unsafe { (&mut (*dev).regs)[reg::TCTL as usize / 4] = 0 };
        for _ in 0..RING - 1 {
            nic.send(&frame(60, 1)).unwrap();
        }
        assert!(!nic.can_send());
        assert_eq!(nic.send(&frame(60, 1)), Err(SendError::Busy));
        // SAFETY: as above.
        unsafe {
            (&mut (*dev).regs)[reg::TCTL as usize / 4] = tctl::EN;
            (*dev).write(reg::TDT, (RING - 1) as u32);
        }
        assert!(nic.can_send());
        drop(nic);
        // SAFETY: as above.
        drop(unsafe { Box::from_raw(dev) });
    }

    #[test]
    fn received_frames_come_out_in_order_and_descriptors_go_back() {
        let dev: *mut FakeE1000 = Box::into_raw(Box::new(FakeE1000::new(MAC)));
        // SAFETY: as in the tests above.
        let mut nic = E1000::init(unsafe { &mut *dev }, &|_| {}).unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(nic.recv(&mut buf), None);
        // More frames than the ring holds, in bursts: the driver gives each
        // descriptor back, so none is missed.
        for burst in 0..10u8 {
            for k in 0..20u8 {
                // SAFETY: as above.
                assert!(unsafe { (*dev).deliver(&frame(64 + usize::from(k), burst ^ k)) });
            }
            for k in 0..20u8 {
                let n = nic.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &frame(64 + usize::from(k), burst ^ k)[..]);
            }
            assert_eq!(nic.recv(&mut buf), None);
        }
        // With the ring full (RING - 1 owned by the device), the next is missed.
        for _ in 0..RING - 1 {
            // SAFETY: as above.
            assert!(unsafe { (*dev).deliver(&frame(64, 7)) });
        }
        // SAFETY: as above.
        assert!(!unsafe { (*dev).deliver(&frame(64, 7)) });
        let c = nic.counters();
        assert_eq!((c.rx_frames, c.hw_rx_good, c.hw_rx_missed), (200, 231, 1));
        // A frame too big for the caller's buffer is dropped, not truncated.
        let mut small = [0u8; 32];
        assert_eq!(nic.recv(&mut small), None);
        assert_eq!(nic.counters().rx_dropped as usize, RING - 1);
        drop(nic);
        // SAFETY: as above.
        drop(unsafe { Box::from_raw(dev) });
    }
}
