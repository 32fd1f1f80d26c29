//! PCI configuration mechanism #1 (PCI Local Bus Specification 3.0,
//! 3.2.2.3.2): CONFIG_ADDRESS at 0xCF8 (32-bit accesses only) and CONFIG_DATA
//! at 0xCFC-0xCFF, with a small table of functions on bus 0. Also the PIIX3
//! reset control register at 0xCF9 (82371SB data sheet, 4.1.14), reached by
//! byte accesses that are not CONFIG_ADDRESS accesses.
//!
//! The default table is an Intel 440FX host bridge (00:00.0) and a PIIX3
//! PCI-to-ISA bridge (00:01.0). More functions are added with [`Pci::add`].
use super::{all_ones, Effects, PortDevice, Request};
use alloc::vec::Vec;

pub const CONFIG_ADDRESS: u16 = 0xCF8;
pub const RESET_CONTROL: u16 = 0xCF9;
pub const CONFIG_DATA: u16 = 0xCFC;

/// CONFIG_ADDRESS: enable bit, bus, device, function, dword register; bits
/// 30:24 and 1:0 are read-only zero (3.2.2.3.2).
const ADDR_ENABLE: u32 = 1 << 31;
const ADDR_MASK: u32 = ADDR_ENABLE | 0x00FF_FFFC;

// PIIX3 RC register (0xCF9).
const RC_SRST: u8 = 1 << 1;
const RC_RCPU: u8 = 1 << 2;

// Standard header offsets (PCI 3.0, 6.1).
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_CODE: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0C;
pub const LATENCY_TIMER: usize = 0x0D;
pub const HEADER_TYPE: usize = 0x0E;
pub const BAR0: usize = 0x10;
pub const INTERRUPT_LINE: usize = 0x3C;
pub const INTERRUPT_PIN: usize = 0x3D;
/// Header type bit 7: the device has more than one function.
pub const MULTI_FUNCTION: u8 = 0x80;

/// 256 bytes of configuration space with per-bit write masks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigSpace {
    #[serde(with = "crate::state::array")]
    data: [u8; 256],
    /// Bits software may write.
    #[serde(with = "crate::state::array")]
    writable: [u8; 256],
    /// Bits cleared by writing 1 (status registers).
    #[serde(with = "crate::state::array")]
    write_one_clear: [u8; 256],
}

impl ConfigSpace {
    /// A type 0 header with the identification registers filled in and
    /// everything else zero and read-only.
    pub fn new(vendor: u16, device: u16, class: [u8; 3], revision: u8, header_type: u8) -> Self {
        let mut c = Self {
            data: [0; 256],
            writable: [0; 256],
            write_one_clear: [0; 256],
        };
        c.set_u16(VENDOR_ID, vendor);
        c.set_u16(DEVICE_ID, device);
        c.data[REVISION_ID] = revision;
        // Class code bytes: programming interface, sub-class, base class.
        c.data[CLASS_CODE] = class[2];
        c.data[CLASS_CODE + 1] = class[1];
        c.data[CLASS_CODE + 2] = class[0];
        c.data[HEADER_TYPE] = header_type;
        c
    }

    // Set-up helpers: bytes beyond the 256-byte space are ignored.
    pub fn set_u8(&mut self, off: usize, v: u8) {
        self.put(off, &[v]);
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    fn put(&mut self, off: usize, bytes: &[u8]) {
        for (d, &b) in self.data.iter_mut().skip(off).zip(bytes) {
            *d = b;
        }
    }
    /// Makes the bits of `mask` (little-endian, `len` bytes) at `off` writable.
    pub fn set_writable(&mut self, off: usize, len: usize, mask: u32) {
        let bytes = mask.to_le_bytes();
        for (w, &m) in self
            .writable
            .iter_mut()
            .skip(off)
            .zip(bytes.iter().take(len))
        {
            *w = m;
        }
    }
    /// Makes the bits of `mask` at `off` write-one-to-clear.
    pub fn set_write_one_clear(&mut self, off: usize, len: usize, mask: u32) {
        let bytes = mask.to_le_bytes();
        for (w, &m) in self
            .write_one_clear
            .iter_mut()
            .skip(off)
            .zip(bytes.iter().take(len))
        {
            *w = m;
        }
    }

    /// Declares BAR `index` (0-5) as a `size`-byte (a power of two) region:
    /// the address bits below the size read as zero, so writing all-ones and
    /// reading back gives the size (PCI 3.0, 6.2.5.1).
    pub fn set_bar(&mut self, index: usize, size: u32, io: bool) {
        let Some(off) = index.checked_mul(4).and_then(|o| o.checked_add(BAR0)) else {
            return;
        };
        // A size above 2 GiB rounds to 0: then no address bit is writable.
        let size = size
            .max(if io { 4 } else { 16 })
            .checked_next_power_of_two()
            .unwrap_or(0);
        let low = if io { 0x1 } else { 0x0 };
        self.set_u32(off, low);
        self.set_writable(off, 4, !size.wrapping_sub(1));
    }

    pub fn read(&self, off: usize, size: usize) -> u32 {
        self.data
            .iter()
            .skip(off)
            .take(size)
            .enumerate()
            .fold(0, |v, (i, &b)| v | u32::from(b) << (i << 3))
    }

    /// The 256 bytes as software reads them.
    pub fn data(&self) -> &[u8; 256] {
        &self.data
    }

    /// Takes `data` as the register contents (a saved state of this very
    /// function): every bit software can't write must be what it is here,
    /// so a state can change only what the guest could have programmed.
    /// Refused whole, or taken whole.
    pub fn take_programmed(&mut self, data: &[u8; 256]) -> Result<(), crate::state::StateError> {
        let foreign = self
            .data
            .iter()
            .zip(data.iter())
            .zip(self.writable.iter())
            .any(|((&a, &b), &w)| (a ^ b) & !w != 0);
        crate::state::ensure(!foreign, "PCI configuration (read-only bits)")?;
        self.data = *data;
        Ok(())
    }

    pub fn write(&mut self, off: usize, size: usize, value: u32) {
        let bytes = value.to_le_bytes();
        let cells = self
            .data
            .iter_mut()
            .zip(self.writable.iter().zip(self.write_one_clear.iter()))
            .skip(off);
        for ((d, (&w, &c)), &b) in cells.zip(bytes.iter().take(size)) {
            *d = (*d & !w) | (b & w);
            *d &= !(b & c);
        }
    }
}

/// One function on the bus.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciFunction {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    pub config: ConfigSpace,
}

/// Intel 82441FX PMC (440FX host bridge): 8086:1237, class 06/00/00.
pub fn host_bridge_440fx() -> PciFunction {
    let mut c = ConfigSpace::new(0x8086, 0x1237, [0x06, 0x00, 0x00], 0x02, 0x00);
    // PCICMD 0006h: memory and bus master always on; SERR# enable (bit 8)
    // and parity error response (bit 6) writable.
    c.set_u16(COMMAND, 0x0006);
    c.set_writable(COMMAND, 2, 0x0140);
    // PCISTS 0280h: fast back-to-back, medium DEVSEL; abort bits W1C.
    c.set_u16(STATUS, 0x0280);
    c.set_write_one_clear(STATUS, 2, 0xF900);
    c.set_writable(LATENCY_TIMER, 1, 0xF8);
    // PAM0-PAM6 (0x59-0x5F): shadow RAM attributes, kept for firmware-like
    // guests; SMRAM (0x72) default 02h.
    c.set_writable(0x59, 1, 0x30);
    for off in 0x5A..=0x5F {
        c.set_writable(off, 1, 0x33);
    }
    c.set_u8(0x72, 0x02);
    c.set_writable(0x72, 1, 0x78);
    PciFunction {
        bus: 0,
        device: 0,
        function: 0,
        config: c,
    }
}

/// Intel 82371SB PIIX3 function 0 (PCI-to-ISA bridge): 8086:7000, class
/// 06/01/00, multi-function header.
pub fn isa_bridge_piix3() -> PciFunction {
    let mut c = ConfigSpace::new(0x8086, 0x7000, [0x06, 0x01, 0x00], 0x00, MULTI_FUNCTION);
    // PCICMD 0007h: I/O, memory, bus master hardwired on; special cycles
    // (bit 3) writable. PCISTS 0280h.
    c.set_u16(COMMAND, 0x0007);
    c.set_writable(COMMAND, 2, 0x0008);
    c.set_u16(STATUS, 0x0280);
    c.set_write_one_clear(STATUS, 2, 0x7800);
    // IORT (4Ch, default 4Dh), XBCS (4Eh, 03h), PIRQRC[A:D] (60h-63h, 80h =
    // routing disabled), TOM (69h, 02h), MSTAT (6Ah), MBIRQ0/1 (70h, 71h,
    // 80h), MBDMA (76h, 77h, 04h), APICBASE (80h).
    c.set_u8(0x4C, 0x4D);
    c.set_writable(0x4C, 1, 0xFF);
    c.set_u16(0x4E, 0x0003);
    c.set_writable(0x4E, 2, 0x07FF);
    for off in 0x60..=0x63 {
        c.set_u8(off, 0x80);
        c.set_writable(off, 1, 0x8F);
    }
    c.set_u8(0x69, 0x02);
    c.set_writable(0x69, 1, 0xFE);
    c.set_writable(0x6A, 2, 0x00FF);
    for off in [0x70, 0x71] {
        c.set_u8(off, 0x80);
        c.set_writable(off, 1, 0xCF);
    }
    for off in [0x76, 0x77] {
        c.set_u8(off, 0x04);
        c.set_writable(off, 1, 0x87);
    }
    c.set_writable(0x80, 1, 0x3F);
    PciFunction {
        bus: 0,
        device: 1,
        function: 0,
        config: c,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pci {
    address: u32,
    reset_control: u8,
    functions: Vec<PciFunction>,
}

impl Default for Pci {
    fn default() -> Self {
        Self::new()
    }
}

impl Pci {
    /// The default platform: 440FX host bridge and PIIX3 ISA bridge.
    pub fn new() -> Self {
        let mut p = Self::empty();
        p.add(host_bridge_440fx());
        p.add(isa_bridge_piix3());
        p
    }

    pub fn empty() -> Self {
        Self {
            address: 0,
            reset_control: 0,
            functions: Vec::new(),
        }
    }

    /// Adds a function, replacing one at the same address.
    pub fn add(&mut self, f: PciFunction) {
        self.functions
            .retain(|g| (g.bus, g.device, g.function) != (f.bus, f.device, f.function));
        self.functions.push(f);
    }

    pub fn function(&mut self, bus: u8, device: u8, function: u8) -> Option<&mut PciFunction> {
        self.functions
            .iter_mut()
            .find(|f| (f.bus, f.device, f.function) == (bus, device, function))
    }

    /// A configuration read; absent functions read all-ones (a master abort,
    /// 3.2.2.3.2), so their vendor ID is 0xFFFF.
    pub fn config_read(&mut self, bus: u8, device: u8, function: u8, off: usize, size: u8) -> u32 {
        match self.function(bus, device, function) {
            Some(f) => f.config.read(off, usize::from(size)),
            None => all_ones(size),
        }
    }

    pub fn config_write(
        &mut self,
        bus: u8,
        device: u8,
        function: u8,
        off: usize,
        size: u8,
        value: u32,
    ) {
        if let Some(f) = self.function(bus, device, function) {
            f.config.write(off, usize::from(size), value);
        }
    }

    /// The function and offset CONFIG_DATA + `byte` reaches, if enabled.
    fn target(&self, byte: u16) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        if a & ADDR_ENABLE == 0 {
            return None;
        }
        let bus = (a >> 16) as u8;
        let device = ((a >> 11) & 0x1F) as u8;
        let function = ((a >> 8) & 7) as u8;
        // The register number has bits 1:0 clear; `byte` is 0..3.
        let off = (a & 0xFC) as usize | usize::from(byte & 3);
        Some((bus, device, function, off))
    }
}

/// Register-level access (the bus goes through [`PortDevice`]).
impl Pci {
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match (port, size) {
            (CONFIG_ADDRESS, 4) => self.address,
            (RESET_CONTROL, 1) => u32::from(self.reset_control),
            (CONFIG_DATA..=0xCFF, _) => {
                // CONFIG_DATA is dword-aligned: the byte within it.
                let byte = port & 3;
                match self.target(byte) {
                    // An access must stay within the dword.
                    Some((b, d, f, off)) if byte.saturating_add(u16::from(size)) <= 4 => {
                        self.config_read(b, d, f, off, size)
                    }
                    _ => all_ones(size),
                }
            }
            // Other widths at 0xCF8-0xCFB are ordinary I/O with nothing there.
            _ => all_ones(size),
        }
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Request {
        match (port, size) {
            (CONFIG_ADDRESS, 4) => self.address = value & ADDR_MASK,
            (RESET_CONTROL, 1) => {
                let v = value as u8;
                // Only SRST is kept; RCPU reads back 0.
                self.reset_control = v & RC_SRST;
                // RCPU going from 0 to 1 resets: a hard reset with SRST (0x06,
                // what Linux's reboot=pci writes after 0x02), a soft reset
                // (INIT) without; both restart the guest here. RCPU reads back
                // 0, so every write with it set is such a transition.
                if v & RC_RCPU != 0 {
                    return Request::Reset;
                }
            }
            (CONFIG_DATA..=0xCFF, _) => {
                // CONFIG_DATA is dword-aligned: the byte within it.
                let byte = port & 3;
                if let Some((b, d, f, off)) = self.target(byte) {
                    if byte.saturating_add(u16::from(size)) <= 4 {
                        self.config_write(b, d, f, off, size, value);
                    }
                }
            }
            _ => {}
        }
        Request::None
    }
}

/// The reset control register's requests come back as [`Request::Reset`].
impl PortDevice for Pci {
    fn name(&self) -> &'static str {
        "pci"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(CONFIG_ADDRESS, 8)]
    }
    fn io_read(&mut self, port: u16, size: u8, _now: u64) -> Effects {
        Effects::read(u64::from(self.read(port, size)))
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, _now: u64) -> Effects {
        Effects::request(self.write(port, size, value))
    }
    fn config_target(&self, port: u16, size: u8) -> Option<(u8, u8, u8, usize)> {
        if !(CONFIG_DATA..=0xCFF).contains(&port) {
            return None;
        }
        let byte = port & 3;
        if byte.saturating_add(u16::from(size)) > 4 {
            return None;
        }
        self.target(byte)
    }
}

crate::state::plain_state!(Pci, 1, |_me| Pci::new());

impl crate::state::Check for Pci {
    fn check(&self) -> Result<(), crate::state::StateError> {
        use crate::state::ensure;
        for (i, f) in self.functions.iter().enumerate() {
            ensure(
                f.device < 32 && f.function < 8,
                "PCI device/function number",
            )?;
            let at = |g: &PciFunction| (g.bus, g.device, g.function);
            let dup = self
                .functions
                .iter()
                .skip(i.saturating_add(1))
                .any(|g| at(g) == at(f));
            ensure(!dup, "PCI function address (twice)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(bus: u8, dev: u8, func: u8, reg: u8) -> u32 {
        ADDR_ENABLE
            | u32::from(bus) << 16
            | u32::from(dev) << 11
            | u32::from(func) << 8
            | u32::from(reg)
    }

    fn cfg_read(p: &mut Pci, dev: u8, func: u8, reg: u8, size: u8) -> u32 {
        p.write(0xCF8, 4, addr(0, dev, func, reg & 0xFC));
        p.read(0xCFC + u16::from(reg & 3), size)
    }

    #[test]
    fn linux_type1_probe() {
        // pci_check_type1(): byte write to 0xCFB, then CONFIG_ADDRESS
        // read-back of 0x80000000.
        let mut p = Pci::new();
        assert_eq!(p.write(0xCFB, 1, 0x01), Request::None);
        let saved = p.read(0xCF8, 4);
        p.write(0xCF8, 4, 0x8000_0000);
        assert_eq!(p.read(0xCF8, 4), 0x8000_0000);
        p.write(0xCF8, 4, saved);
        assert_eq!(p.read(0xCF8, 4), 0);
    }

    #[test]
    fn address_register_reserved_bits_read_zero() {
        let mut p = Pci::new();
        p.write(0xCF8, 4, 0xFFFF_FFFF);
        assert_eq!(p.read(0xCF8, 4), 0x80FF_FFFC);
        // Byte and word reads of 0xCF8 are not CONFIG_ADDRESS.
        assert_eq!(p.read(0xCF8, 1), 0xFF);
        assert_eq!(p.read(0xCF8, 2), 0xFFFF);
        p.write(0xCF8, 2, 0);
        assert_eq!(p.read(0xCF8, 4), 0x80FF_FFFC);
    }

    #[test]
    fn host_bridge_identity() {
        let mut p = Pci::new();
        assert_eq!(cfg_read(&mut p, 0, 0, 0x00, 4), 0x1237_8086);
        assert_eq!(cfg_read(&mut p, 0, 0, 0x08, 4), 0x0600_0002);
        assert_eq!(cfg_read(&mut p, 0, 0, 0x0E, 1), 0x00);
        assert_eq!(cfg_read(&mut p, 0, 0, 0x0A, 2), 0x0600);
        assert_eq!(cfg_read(&mut p, 0, 0, 0x04, 4), 0x0280_0006);
        for bar in 0..6 {
            assert_eq!(cfg_read(&mut p, 0, 0, 0x10 + 4 * bar, 4), 0);
        }
    }

    #[test]
    fn isa_bridge_identity() {
        let mut p = Pci::new();
        assert_eq!(cfg_read(&mut p, 1, 0, 0x00, 2), 0x8086);
        assert_eq!(cfg_read(&mut p, 1, 0, 0x02, 2), 0x7000);
        assert_eq!(cfg_read(&mut p, 1, 0, 0x0B, 1), 0x06);
        assert_eq!(cfg_read(&mut p, 1, 0, 0x0A, 1), 0x01);
        assert_eq!(cfg_read(&mut p, 1, 0, 0x0E, 1), 0x80);
        assert_eq!(cfg_read(&mut p, 1, 0, 0x60, 4), 0x8080_8080);
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let mut p = Pci::new();
        assert_eq!(cfg_read(&mut p, 2, 0, 0, 4), 0xFFFF_FFFF);
        assert_eq!(cfg_read(&mut p, 1, 1, 0, 2), 0xFFFF);
        assert_eq!(cfg_read(&mut p, 31, 7, 0, 1), 0xFF);
        // Bus 1 does not exist.
        p.write(0xCF8, 4, addr(1, 0, 0, 0));
        assert_eq!(p.read(0xCFC, 4), 0xFFFF_FFFF);
        // Disabled: CONFIG_DATA is plain I/O.
        p.write(0xCF8, 4, 0);
        assert_eq!(p.read(0xCFC, 4), 0xFFFF_FFFF);
        p.write(0xCFC, 4, 0);
        assert_eq!(cfg_read(&mut p, 0, 0, 0, 4), 0x1237_8086);
    }

    #[test]
    fn byte_and_word_offsets_within_config_data() {
        let mut p = Pci::new();
        p.write(0xCF8, 4, addr(0, 0, 0, 0x00));
        assert_eq!(p.read(0xCFC, 1), 0x86);
        assert_eq!(p.read(0xCFD, 1), 0x80);
        assert_eq!(p.read(0xCFE, 2), 0x1237);
        assert_eq!(p.read(0xCFF, 1), 0x12);
        // Crossing the dword: nothing.
        assert_eq!(p.read(0xCFF, 2), 0xFFFF);
        assert_eq!(p.read(0xCFE, 4), 0xFFFF_FFFF);
    }

    #[test]
    fn identification_is_read_only() {
        let mut p = Pci::new();
        p.write(0xCF8, 4, addr(0, 0, 0, 0));
        p.write(0xCFC, 4, 0);
        assert_eq!(p.read(0xCFC, 4), 0x1237_8086);
        p.write(0xCF8, 4, addr(0, 0, 0, 0x08));
        p.write(0xCFC, 4, 0);
        assert_eq!(p.read(0xCFC, 4), 0x0600_0002);
        p.write(0xCF8, 4, addr(0, 0, 0, 0x10));
        p.write(0xCFC, 4, 0xFFFF_FFFF);
        assert_eq!(p.read(0xCFC, 4), 0, "no BARs");
    }

    #[test]
    fn command_status_and_latency() {
        let mut p = Pci::new();
        p.write(0xCF8, 4, addr(0, 0, 0, 0x04));
        p.write(0xCFC, 2, 0xFFFF);
        assert_eq!(p.read(0xCFC, 2), 0x0146);
        p.write(0xCFC, 2, 0x0000);
        assert_eq!(p.read(0xCFC, 2), 0x0006, "hardwired bits stay");
        // Status: writing ones does not set anything.
        p.write(0xCFE, 2, 0xFFFF);
        assert_eq!(p.read(0xCFE, 2), 0x0280);
        p.write(0xCF8, 4, addr(0, 0, 0, 0x0C));
        p.write(0xCFD, 1, 0xFF);
        assert_eq!(p.read(0xCFD, 1), 0xF8);
    }

    #[test]
    fn write_one_to_clear_status() {
        let mut c = ConfigSpace::new(0x1234, 0x5678, [0xFF, 0, 0], 0, 0);
        c.set_u16(STATUS, 0x3000);
        c.set_write_one_clear(STATUS, 2, 0xF900);
        c.write(STATUS, 2, 0x1000);
        assert_eq!(c.read(STATUS, 2), 0x2000);
    }

    #[test]
    fn pirq_routing_registers_are_writable() {
        let mut p = Pci::new();
        p.write(0xCF8, 4, addr(0, 1, 0, 0x60));
        p.write(0xCFD, 1, 0x0B);
        assert_eq!(p.read(0xCFC, 4), 0x8080_0B80);
        p.write(0xCFC, 1, 0x7F);
        assert_eq!(p.read(0xCFC, 1), 0x0F, "reserved bits 6:4 stay 0");
    }

    #[test]
    fn bar_sizing() {
        let mut f = PciFunction {
            bus: 0,
            device: 3,
            function: 0,
            config: ConfigSpace::new(0x1AF4, 0x1000, [0x02, 0x00, 0x00], 0, 0),
        };
        f.config.set_bar(0, 0x20, true);
        f.config.set_bar(1, 0x1000, false);
        let mut p = Pci::new();
        p.add(f);
        p.write(0xCF8, 4, addr(0, 3, 0, 0x10));
        p.write(0xCFC, 4, 0xFFFF_FFFF);
        assert_eq!(p.read(0xCFC, 4), 0xFFFF_FFE1);
        p.write(0xCFC, 4, 0xC000);
        assert_eq!(p.read(0xCFC, 4), 0xC001);
        p.write(0xCF8, 4, addr(0, 3, 0, 0x14));
        p.write(0xCFC, 4, 0xFFFF_FFFF);
        assert_eq!(p.read(0xCFC, 4), 0xFFFF_F000);
        assert_eq!(p.config_read(0, 3, 0, 0, 4), 0x1000_1AF4);
    }

    #[test]
    fn add_replaces_same_address() {
        let mut p = Pci::new();
        p.add(PciFunction {
            bus: 0,
            device: 0,
            function: 0,
            config: ConfigSpace::new(0x1111, 0x2222, [6, 0, 0], 0, 0),
        });
        assert_eq!(p.config_read(0, 0, 0, 0, 4), 0x2222_1111);
        p.config_write(0, 0, 0, 0, 4, 0);
        assert_eq!(p.config_read(0, 0, 0, 0, 4), 0x2222_1111);
    }

    #[test]
    fn reset_control_register() {
        let mut p = Pci::new();
        // Linux reboot=pci: 0x02, then 0x06.
        assert_eq!(p.write(0xCF9, 1, 0x02), Request::None);
        assert_eq!(p.read(0xCF9, 1), 0x02);
        assert_eq!(p.write(0xCF9, 1, 0x06), Request::Reset);
        assert_eq!(p.read(0xCF9, 1), 0x02, "RCPU reads back 0");
        // Soft reset also restarts.
        assert_eq!(p.write(0xCF9, 1, 0x04), Request::Reset);
        assert_eq!(p.write(0xCF9, 1, 0x00), Request::None);
        // A word write at 0xCF8 is not the RC register.
        assert_eq!(p.write(0xCF8, 2, 0x0600), Request::None);
    }

    #[test]
    fn a_reset_control_write_requests_a_reset() {
        let mut p = Pci::new();
        assert_eq!(
            PortDevice::io_write(&mut p, 0xCF9, 1, 0x06, 0).request,
            Request::Reset
        );
        assert!(PortDevice::io_write(&mut p, 0xCF9, 1, 0x02, 0).is_quiet());
        assert_eq!(PortDevice::io_read(&mut p, 0xCF9, 1, 0).value, 0x02);
    }
}
