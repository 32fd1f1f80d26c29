//! Generates a guest's ACPI tables (ACPI 6.3; section numbers below are the
//! same in 6.5): RSDP, XSDT, RSDT, FADT, FACS, MADT and a DSDT with `\_S5_`
//! and optionally a PCI root bridge `\_SB.PCI0`.
//!
//! The tables are built as one byte blob for a guest-physical area starting
//! at `base_gpa` (4 KiB aligned, below 4 GiB):
//!
//! | offset | what | E820 type |
//! | --- | --- | --- |
//! | 0x0000 | FACS (64 bytes, 64-byte aligned, §5.2.10) | NVS (4 KiB page) |
//! | 0x1000 | RSDP (36 bytes, 16-byte aligned, §5.2.5) | ACPI |
//! | then | XSDT, RSDT, FADT, MADT, DSDT, each 16-byte aligned | ACPI |
//!
//! With `base_gpa` in 0xE0000..0xFFFFF, the RSDP is also where the legacy
//! BIOS-area scan (§5.2.5.1) looks. [`AcpiBlob::e820_areas`] gives the
//! ranges to mark in the memory map.
//!
//! Interrupt model: the MADT lists one enabled Processor Local APIC per vCPU
//! (APIC IDs and ACPI processor UIDs 0..n), the local APIC at 0xFEE00000,
//! PCAT_COMPAT (8259s present), LINT1 as NMI on all processors, and with an
//! I/O APIC (ID n, at 0xFEC00000, GSI base 0): ISA IRQ 0 -> GSI 2 (edge,
//! active high) and the SCI, ISA IRQ 9 -> GSI 9, level-triggered,
//! active-high. The PM model must therefore raise GSI 9 as a level
//! interrupt, asserted (high) while an enabled PM1/GPE0 status bit is set.

use crate::e820::E820Type;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Local APIC MMIO base.
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// I/O APIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// The SCI's ISA IRQ and GSI.
pub const SCI_IRQ: u16 = 9;
/// Reset register: I/O port 0xCF9 (reset control), value 0x06 (full reset).
pub const RESET_PORT: u16 = 0xCF9;
pub const RESET_VALUE: u8 = 0x06;
/// RTC CMOS index of the century byte.
pub const CENTURY_INDEX: u8 = 0x32;
/// The default area size.
pub const DEFAULT_MAX_LEN: usize = 128 << 10;

/// Offsets of the PM registers from the PM base.
pub const PM1A_EVT_OFF: u16 = 0x00;
pub const PM1A_CNT_OFF: u16 = 0x04;
pub const PM_TMR_OFF: u16 = 0x08;
pub const GPE0_OFF: u16 = 0x20;
/// Lengths of the PM register blocks.
const PM1_EVT_LEN: u8 = 4;
const PM1_CNT_LEN: u8 = 2;
const PM_TMR_LEN: u8 = 4;
const GPE0_LEN: u8 = 4;

const OEM_ID: &[u8; 6] = b"FERRO ";
const OEM_TABLE_ID: &[u8; 8] = b"FERROVSR";
const CREATOR_ID: &[u8; 4] = b"FRVR";
const HEADER_LEN: usize = 36;
const FACS_LEN: usize = 64;
const RSDP_OFF: usize = 0x1000;
const RSDP_LEN: usize = 36;
const RSDP_END: usize = RSDP_OFF + RSDP_LEN;
/// XSDT and RSDT with two entries each (FADT, MADT).
const XSDT_LEN: usize = HEADER_LEN + 8 * 2;
const RSDT_LEN: usize = HEADER_LEN + 4 * 2;
/// The last port of the PM register blocks, from the block's base.
const PM_BLOCK_LAST: u16 = GPE0_OFF + GPE0_LEN as u16 - 1;
/// Bytes of the FADT (revision 6).
pub const FADT_LEN: usize = 276;

/// What to describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; their local APIC IDs are 0..vcpus.
    pub vcpus: u32,
    /// I/O port base of the PM registers: PM1a_EVT = base, PM1a_CNT =
    /// base + 4, PM_TMR = base + 8, GPE0 = base + 0x20 (4 bytes).
    pub pm_base: u16,
    /// The PM timer counts 32 bits (TMR_VAL_EXT) rather than 24.
    pub pm_timer_32bit: bool,
    /// Describe an I/O APIC (and the interrupt source overrides).
    pub ioapic: bool,
    /// SLP_TYPa = SLP_TYPb for `\_S5_` (3 bits): what the PM model takes as
    /// "power off" with SLP_EN.
    pub s5_slp_typ: u8,
    /// Add `\_SB.PCI0` (PNP0A03, bus 0) to the DSDT.
    pub pci_root: bool,
    /// With `pci_root`: a `_PRT` (§6.2.13) routing INTA# of each (PCI device
    /// number on bus 0, GSI) to that GSI of the I/O APIC (Source 0: a
    /// hardwired GSI; level-triggered, active-low, as PCI interrupts are).
    pub pci_intx: &'static [(u8, u8)],
    /// IAPC_BOOT_ARCH bit 1: an 8042 keyboard controller is present.
    pub i8042: bool,
    /// Size of the area the tables must fit in.
    pub max_len: usize,
}

impl Default for AcpiConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            pm_base: 0x600,
            pm_timer_32bit: true,
            ioapic: true,
            s5_slp_typ: 5,
            pci_root: false,
            pci_intx: &[],
            i8042: true,
            max_len: DEFAULT_MAX_LEN,
        }
    }
}

/// Why tables could not be generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiGenError {
    /// No vCPUs.
    NoVcpus,
    /// More vCPUs than 8-bit APIC IDs allow (0xFF is the broadcast ID and
    /// the I/O APIC takes the ID after the last vCPU).
    TooManyVcpus { vcpus: u32 },
    /// `base_gpa` is not 4 KiB aligned.
    Unaligned { base: u64 },
    /// The area reaches above 4 GiB, out of reach of the 32-bit pointers.
    Above4G { base: u64, end: u64 },
    /// The tables need more than `max_len` bytes.
    TooLarge { need: usize, max: usize },
    /// SLP_TYP does not fit in 3 bits.
    BadSleepType { value: u8 },
    /// The PM register blocks run past I/O port 0xFFFF.
    PmBaseTooHigh { base: u16 },
}

impl fmt::Display for AcpiGenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AcpiGenError::NoVcpus => f.write_str("acpi: a guest needs at least one vCPU"),
            AcpiGenError::TooManyVcpus { vcpus } => write!(
                f,
                "acpi: {vcpus} vCPUs do not fit in 8-bit APIC IDs (at most 254 with the I/O APIC's)"
            ),
            AcpiGenError::Unaligned { base } => {
                write!(f, "acpi: table area base {base:#x} is not 4 KiB aligned")
            }
            AcpiGenError::Above4G { base, end } => write!(
                f,
                "acpi: table area [{base:#x}, {end:#x}) reaches above 4 GiB"
            ),
            AcpiGenError::TooLarge { need, max } => {
                write!(f, "acpi: tables need {need} bytes, the area has {max}")
            }
            AcpiGenError::BadSleepType { value } => {
                write!(f, "acpi: \\_S5_ sleep type {value} does not fit in 3 bits")
            }
            AcpiGenError::PmBaseTooHigh { base } => write!(
                f,
                "acpi: PM register blocks from port {base:#x} run past port 0xffff"
            ),
        }
    }
}

/// The generated tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiBlob {
    /// Guest-physical address of `bytes[0]`.
    pub base_gpa: u64,
    /// Everything, to copy to `base_gpa`.
    pub bytes: Vec<u8>,
    /// Where the RSDP is (for the zero page's `acpi_rsdp_addr` or the UEFI
    /// configuration table).
    pub rsdp_gpa: u64,
    /// Where the FACS is.
    pub facs_gpa: u64,
}

impl AcpiBlob {
    /// The memory-map ranges: the FACS page as NVS (the FACS must not be
    /// reported as memory, §5.2.10) and the tables as ACPI reclaim.
    pub fn e820_areas(&self) -> [(u64, u64, E820Type); 2] {
        let len = self.bytes.len() as u64;
        let tables = RSDP_OFF as u64;
        [
            (self.base_gpa, tables, E820Type::Nvs),
            (
                // build() keeps the blob below 4 GiB and longer than the FACS page.
                self.base_gpa.saturating_add(tables),
                len.next_multiple_of(4096).saturating_sub(tables),
                E820Type::Acpi,
            ),
        ]
    }
}

/// The byte that makes `bytes` (with their checksum field zero) sum to zero
/// modulo 256 (§5.2.5.3, §5.2.6).
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// Writes a little-endian value. Every offset here is a constant inside the
/// table's fixed length; a write past the end would be dropped (and the
/// round-trip tests would see it).
fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = off.checked_add(v.len()).and_then(|end| b.get_mut(off..end)) {
        d.copy_from_slice(v);
    }
}

/// A table with its standard header (§5.2.6): signature, length (filled by
/// [`finish`]), revision, checksum (by [`finish`]), OEM ID, OEM table ID,
/// OEM revision, creator ID, creator revision.
fn table(sig: &[u8; 4], revision: u8, len: usize) -> Vec<u8> {
    let mut t = vec![0u8; len];
    put(&mut t, 0, sig);
    put(&mut t, 8, &[revision]);
    put(&mut t, 10, OEM_ID);
    put(&mut t, 16, OEM_TABLE_ID);
    put(&mut t, 24, &1u32.to_le_bytes());
    put(&mut t, 28, CREATOR_ID);
    put(&mut t, 32, &1u32.to_le_bytes());
    t
}

/// Sets the length and checksum of a table.
fn finish(t: &mut [u8]) {
    let len = t.len() as u32;
    put(t, 4, &len.to_le_bytes());
    put(t, 9, &[0]);
    let sum = checksum(t);
    put(t, 9, &[sum]);
}

/// Generic Address Structure (§5.2.3.2) for an I/O port register:
/// address space 1 (system I/O), bit width, bit offset 0, access size
/// (1 byte, 2 word, 3 dword), address.
pub fn gas_io(port: u16, bytes: u8, access: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1;
    g[1] = bytes.saturating_mul(8);
    g[3] = access;
    put(&mut g, 4, &u64::from(port).to_le_bytes());
    g
}

/// The FADT (§5.2.9, revision 6, 276 bytes).
fn fadt(cfg: &AcpiConfig, facs: u64, dsdt: u64) -> Vec<u8> {
    let mut t = table(b"FACP", 6, FADT_LEN);
    // build() checked that the whole block fits below port 0x10000.
    let pm1a_evt = cfg.pm_base.wrapping_add(PM1A_EVT_OFF);
    let pm1a_cnt = cfg.pm_base.wrapping_add(PM1A_CNT_OFF);
    let pm_tmr = cfg.pm_base.wrapping_add(PM_TMR_OFF);
    let gpe0 = cfg.pm_base.wrapping_add(GPE0_OFF);
    // FIRMWARE_CTRL (36) set, so X_FIRMWARE_CTRL (132) stays zero.
    put(&mut t, 36, &(facs as u32).to_le_bytes());
    put(&mut t, 40, &(dsdt as u32).to_le_bytes());
    // 45 Preferred_PM_Profile 0: unspecified.
    put(&mut t, 46, &SCI_IRQ.to_le_bytes());
    // 48 SMI_CMD 0, 52 ACPI_ENABLE 0, 53 ACPI_DISABLE 0: the hardware is
    // always in ACPI mode (SCI_EN reads 1).
    put(&mut t, 56, &u32::from(pm1a_evt).to_le_bytes());
    put(&mut t, 64, &u32::from(pm1a_cnt).to_le_bytes());
    put(&mut t, 76, &u32::from(pm_tmr).to_le_bytes());
    put(&mut t, 80, &u32::from(gpe0).to_le_bytes());
    put(&mut t, 88, &[PM1_EVT_LEN, PM1_CNT_LEN]);
    put(&mut t, 91, &[PM_TMR_LEN, GPE0_LEN]);
    // P_LVL2_LAT > 100 and P_LVL3_LAT > 1000: no C2, no C3.
    put(&mut t, 96, &101u16.to_le_bytes());
    put(&mut t, 98, &1001u16.to_le_bytes());
    put(&mut t, 108, &[CENTURY_INDEX]);
    // IAPC_BOOT_ARCH: bit 0 LEGACY_DEVICES, bit 1 8042, bit 2 VGA Not Present.
    let boot_arch: u16 = 1 | (u16::from(cfg.i8042) << 1) | (1 << 2);
    put(&mut t, 109, &boot_arch.to_le_bytes());
    // Flags: WBINVD (0), PROC_C1 (2), PWR_BUTTON (4) and SLP_BUTTON (5) =
    // no fixed-feature buttons, FIX_RTC (6) = no RTC wake status,
    // TMR_VAL_EXT (8), RESET_REG_SUP (10).
    let mut flags: u32 = 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 10;
    if cfg.pm_timer_32bit {
        flags |= 1 << 8;
    }
    put(&mut t, 112, &flags.to_le_bytes());
    put(&mut t, 116, &gas_io(RESET_PORT, 1, 1));
    put(&mut t, 128, &[RESET_VALUE]);
    // 129 ARM_BOOT_ARCH 0; 131 FADT minor version 3 (ACPI 6.3).
    put(&mut t, 131, &[3]);
    put(&mut t, 140, &dsdt.to_le_bytes());
    put(&mut t, 148, &gas_io(pm1a_evt, PM1_EVT_LEN, 2));
    put(&mut t, 172, &gas_io(pm1a_cnt, PM1_CNT_LEN, 2));
    put(&mut t, 208, &gas_io(pm_tmr, PM_TMR_LEN, 3));
    put(&mut t, 220, &gas_io(gpe0, GPE0_LEN, 1));
    // 244/256 sleep control/status registers: only for hardware-reduced
    // ACPI; 268 hypervisor vendor identity.
    put(&mut t, 268, b"FERROVSR");
    finish(&mut t);
    t
}

/// The FACS (§5.2.10): no checksum, version 2, everything else zero (no
/// waking vector, no global lock users).
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; FACS_LEN];
    put(&mut f, 0, b"FACS");
    put(&mut f, 4, &(FACS_LEN as u32).to_le_bytes());
    put(&mut f, 32, &[2]);
    f
}

/// The MADT (§5.2.12, revision 5).
fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = table(b"APIC", 5, HEADER_LEN);
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    // Flags bit 0 PCAT_COMPAT: dual 8259s installed.
    t.extend_from_slice(&1u32.to_le_bytes());
    for i in 0..cfg.vcpus as u8 {
        // Processor Local APIC (§5.2.12.2): type 0, length 8, ACPI
        // processor UID, APIC ID, flags bit 0 Enabled.
        t.extend_from_slice(&[0, 8, i, i]);
        t.extend_from_slice(&1u32.to_le_bytes());
    }
    if cfg.ioapic {
        // I/O APIC (§5.2.12.3): type 1, length 12, ID, reserved, address,
        // GSI base.
        t.extend_from_slice(&[1, 12, cfg.vcpus as u8, 0]);
        t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        // Interrupt Source Overrides (§5.2.12.5): type 2, length 10, bus 0
        // (ISA), source IRQ, GSI, MPS INTI flags (bits 1:0 polarity 01 =
        // active high; bits 3:2 trigger 01 = edge, 11 = level).
        let iso = |t: &mut Vec<u8>, irq: u8, gsi: u32, flags: u16| {
            t.extend_from_slice(&[2, 10, 0, irq]);
            t.extend_from_slice(&gsi.to_le_bytes());
            t.extend_from_slice(&flags.to_le_bytes());
        };
        // The PIT's IRQ 0 is wired to I/O APIC input 2.
        iso(&mut t, 0, 2, 0b0101);
        // The SCI: level, active high.
        iso(&mut t, SCI_IRQ as u8, SCI_IRQ.into(), 0b1101);
    }
    // Local APIC NMI (§5.2.12.7): type 4, length 6, UID 0xFF = all
    // processors, flags 0 (conforms to the bus), LINT1.
    t.extend_from_slice(&[4, 6, 0xFF, 0, 0, 1]);
    finish(&mut t);
    t
}

/// AML PkgLength (§20.2.4): the length of the package including the
/// PkgLength bytes themselves. One byte holds up to 63 (bits 5:0); longer
/// lengths put the byte count - 1 in bits 7:6 of the lead byte, the low 4
/// bits of the length in its bits 3:0 and the rest in the following bytes.
fn pkg_length(body_len: usize) -> Vec<u8> {
    // Lengths that n = 1, 2, 3 bytes hold: below 2^6, 2^12, 2^20 (4 bytes:
    // 2^28). Table bodies are far shorter than usize::MAX, so the sums of
    // body_len and n are exact.
    let mut n: usize = 1;
    for bits in [6u32, 12, 20] {
        if body_len.saturating_add(n) < 1 << bits {
            break;
        }
        n = n.saturating_add(1);
    }
    let total = body_len.saturating_add(n);
    if n == 1 {
        return vec![total as u8];
    }
    let mut v = vec![((n as u8).saturating_sub(1) << 6) | (total as u8 & 0x0F)];
    // The following bytes: bits 11:4, 19:12, 27:20.
    for shift in [4u32, 12, 20].into_iter().take(n.saturating_sub(1)) {
        v.push((total >> shift) as u8);
    }
    v
}

/// An AML integer constant (§20.2.3): ZeroOp 0x00, OneOp 0x01, else
/// BytePrefix 0x0A and the byte.
fn aml_byte(v: u8) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        _ => vec![0x0A, v],
    }
}

/// A compressed EISA ID (§19.6.35 EISAID): three letters of 5 bits each
/// ('A' = 1) then four hex digits, stored big-endian as a DWord.
fn eisa_id(id: &[u8; 7]) -> u32 {
    // Uppercase letters give 1..26; anything else is masked to 5 bits.
    let l = |c: u8| u16::from(c.wrapping_sub(b'@')) & 0x1F;
    let vendor = (l(id[0]) << 10) | (l(id[1]) << 5) | l(id[2]);
    let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u16;
    let product = id[3..].iter().fold(0u16, |a, &c| (a << 4) | hex(c));
    let be = [
        (vendor >> 8) as u8,
        vendor as u8,
        (product >> 8) as u8,
        product as u8,
    ];
    u32::from_le_bytes(be)
}

/// A Word Address Space Descriptor (§6.4.3.5.3) that the bridge produces:
/// `kind` 1 = I/O, 2 = bus numbers; fixed minimum and maximum, positive
/// decode; `type_flags` 3 for I/O = ISA and non-ISA ranges.
fn word_space(kind: u8, type_flags: u8, min: u16, max: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = 0x88; // large item, Word Address Space Descriptor
    d[1..3].copy_from_slice(&13u16.to_le_bytes()); // length after byte 2
    d[3] = kind;
    d[4] = 0b1100; // _MAF | _MIF, _DEC = 0, producer
    d[5] = type_flags;
    // granularity 0, translation offset 0 (bytes 6..8, 12..14)
    d[8..10].copy_from_slice(&min.to_le_bytes());
    d[10..12].copy_from_slice(&max.to_le_bytes());
    // _LEN = max - min + 1; 0x10000 (the whole space) wraps to 0, as a Word can't hold it.
    let len = max.wrapping_sub(min).wrapping_add(1);
    d[14..16].copy_from_slice(&len.to_le_bytes());
    d
}

/// PCI0's `_CRS` (PCI Firmware 3.x §4.1.3: a host bridge reports its bus
/// range and windows): bus 0 only, the configuration ports 0xCF8-0xCFF it
/// consumes, and all other I/O ports as windows. No memory window: the
/// guest's PCI functions have I/O BARs only.
fn pci0_crs() -> Vec<u8> {
    let mut r = Vec::new();
    r.extend(word_space(2, 0, 0, 0)); // WordBusNumber: 0..0
                                      // IO (Decode16, 0x0CF8, 0x0CF8, 1, 8) (§6.4.2.5)
    r.extend([0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]);
    r.extend(word_space(1, 3, 0x0000, 0x0CF7)); // WordIO
    r.extend(word_space(1, 3, 0x0D00, 0xFFFF)); // WordIO
    r.extend([0x79, 0x00]); // End Tag, checksum 0 = valid (§6.4.2.9)
    r
}

/// The DSDT's AML (§20, Definition Block body).
fn dsdt_aml(cfg: &AcpiConfig) -> Vec<u8> {
    let mut aml = Vec::new();
    // Name (\_S5_, Package (4) { SLP_TYPa, SLP_TYPb, 0, 0 }) (§7.4.2.6)
    let mut elems = vec![4u8]; // NumElements
    elems.extend(aml_byte(cfg.s5_slp_typ)); // SLP_TYPa
    elems.extend(aml_byte(cfg.s5_slp_typ)); // SLP_TYPb
    elems.extend([0x00, 0x00]); // reserved: ZeroOp, ZeroOp
    aml.push(0x08); // NameOp
    aml.extend(b"\\_S5_"); // RootChar, NameSeg
    aml.push(0x12); // PackageOp
    aml.extend(pkg_length(elems.len()));
    aml.extend(elems);
    if cfg.pci_root {
        // Device (PCI0) { Name (_HID, EisaId ("PNP0A03")) Name (_BBN, 0) }
        let mut dev = b"PCI0".to_vec(); // NameSeg
        dev.extend([0x08, b'_', b'H', b'I', b'D']); // NameOp "_HID"
        dev.push(0x0C); // DWordPrefix
        dev.extend(eisa_id(b"PNP0A03").to_le_bytes());
        dev.extend([0x08, b'_', b'B', b'B', b'N']); // NameOp "_BBN"
        dev.push(0x00); // ZeroOp
                        // Name (_CRS, ResourceTemplate () { ... }): what the root bridge decodes.
        let crs = pci0_crs();
        dev.extend([0x08, b'_', b'C', b'R', b'S']); // NameOp "_CRS"
        dev.push(0x11); // BufferOp
        let mut buffer = aml_byte(crs.len() as u8); // BufferSize
        buffer.extend(crs);
        dev.extend(pkg_length(buffer.len()));
        dev.extend(buffer);
        if !cfg.pci_intx.is_empty() {
            // Name (_PRT, Package () { Package () { 0xDDDDFFFF, 0, 0, GSI }, ... }):
            // address = device << 16 | 0xFFFF (any function), pin 0 = INTA#.
            let mut entries = vec![cfg.pci_intx.len() as u8]; // NumElements
            for &(device, gsi) in cfg.pci_intx {
                let mut e = vec![4u8]; // NumElements
                e.push(0x0C); // DWordPrefix
                e.extend((u32::from(device) << 16 | 0xFFFF).to_le_bytes());
                e.push(0x00); // pin: ZeroOp (INTA#)
                e.push(0x00); // source: ZeroOp (a GSI)
                e.extend(aml_byte(gsi)); // source index: the GSI
                entries.push(0x12); // PackageOp
                entries.extend(pkg_length(e.len()));
                entries.extend(e);
            }
            dev.extend([0x08, b'_', b'P', b'R', b'T']); // NameOp "_PRT"
            dev.push(0x12); // PackageOp
            dev.extend(pkg_length(entries.len()));
            dev.extend(entries);
        }
        let mut device = vec![0x5B, 0x82]; // ExtOpPrefix, DeviceOp
        device.extend(pkg_length(dev.len()));
        device.extend(dev);
        // Scope (\_SB) { ... }
        let mut scope_body = b"\\_SB_".to_vec(); // RootChar, NameSeg
        scope_body.extend(device);
        aml.push(0x10); // ScopeOp
        aml.extend(pkg_length(scope_body.len()));
        aml.extend(scope_body);
    }
    aml
}

fn align16(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(16), 0);
}

/// Builds the tables for the area at `base_gpa` (see the module docs).
pub fn build(base_gpa: u64, cfg: &AcpiConfig) -> Result<AcpiBlob, AcpiGenError> {
    if cfg.vcpus == 0 {
        return Err(AcpiGenError::NoVcpus);
    }
    if cfg.vcpus > 254 {
        return Err(AcpiGenError::TooManyVcpus { vcpus: cfg.vcpus });
    }
    if !base_gpa.is_multiple_of(4096) {
        return Err(AcpiGenError::Unaligned { base: base_gpa });
    }
    if cfg.s5_slp_typ > 7 {
        return Err(AcpiGenError::BadSleepType {
            value: cfg.s5_slp_typ,
        });
    }
    if cfg.pm_base.checked_add(PM_BLOCK_LAST).is_none() {
        return Err(AcpiGenError::PmBaseTooHigh { base: cfg.pm_base });
    }

    let mut b = facs();
    b.resize(RSDP_END, 0);
    align16(&mut b);
    // Offsets below `end`, which is checked against 4 GiB before use.
    let gpa = |off: usize| base_gpa.saturating_add(off as u64);

    // Fixed order: XSDT, RSDT, FADT, MADT, DSDT. Sizes are known up front.
    let madt = madt(cfg);
    let mut dsdt = table(b"DSDT", 2, HEADER_LEN);
    dsdt.extend(dsdt_aml(cfg));
    finish(&mut dsdt);
    let xsdt_off = b.len();
    // A few KiB in all: the saturating sums are exact.
    let rsdt_off = xsdt_off.saturating_add(XSDT_LEN).next_multiple_of(16);
    let fadt_off = rsdt_off.saturating_add(RSDT_LEN).next_multiple_of(16);
    let madt_off = fadt_off.saturating_add(FADT_LEN).next_multiple_of(16);
    let dsdt_off = madt_off.saturating_add(madt.len()).next_multiple_of(16);
    let end = dsdt_off.saturating_add(dsdt.len());
    if end > cfg.max_len {
        return Err(AcpiGenError::TooLarge {
            need: end,
            max: cfg.max_len,
        });
    }
    let end_gpa = base_gpa.saturating_add(end as u64);
    if end_gpa > 0x1_0000_0000 {
        return Err(AcpiGenError::Above4G {
            base: base_gpa,
            end: end_gpa,
        });
    }

    // XSDT (§5.2.8): 64-bit entries.
    let mut xsdt = table(b"XSDT", 1, HEADER_LEN);
    for off in [fadt_off, madt_off] {
        xsdt.extend(gpa(off).to_le_bytes());
    }
    finish(&mut xsdt);
    // RSDT (§5.2.7): 32-bit entries.
    let mut rsdt = table(b"RSDT", 1, HEADER_LEN);
    for off in [fadt_off, madt_off] {
        rsdt.extend((gpa(off) as u32).to_le_bytes());
    }
    finish(&mut rsdt);
    let fadt = fadt(cfg, base_gpa, gpa(dsdt_off));

    for (off, t) in [
        (xsdt_off, &xsdt),
        (rsdt_off, &rsdt),
        (fadt_off, &fadt),
        (madt_off, &madt),
        (dsdt_off, &dsdt),
    ] {
        b.resize(off, 0);
        b.extend_from_slice(t);
    }

    // RSDP (§5.2.5.3): "RSD PTR ", checksum over the first 20 bytes, OEM ID,
    // revision 2, RSDT address, length 36, XSDT address, extended checksum
    // over all 36 bytes, 3 reserved.
    let mut r = [0u8; RSDP_LEN];
    put(&mut r, 0, b"RSD PTR ");
    put(&mut r, 9, OEM_ID);
    r[15] = 2;
    put(&mut r, 16, &(gpa(rsdt_off) as u32).to_le_bytes());
    put(&mut r, 20, &(RSDP_LEN as u32).to_le_bytes());
    put(&mut r, 24, &gpa(xsdt_off).to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    put(&mut b, RSDP_OFF, &r);

    Ok(AcpiBlob {
        base_gpa,
        bytes: b,
        rsdp_gpa: gpa(RSDP_OFF),
        facs_gpa: base_gpa,
    })
}

#[cfg(test)]
mod tests {
    // Parsing the tables back with the core's ACPI parser is tested in the
    // core (hypervisor/src/acpi_gen_tests.rs).
    use super::*;
    use alloc::string::ToString;

    const BASE: u64 = 0xE_0000;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
    }

    #[test]
    fn legacy_scan_finds_the_rsdp() {
        let blob = build(BASE, &AcpiConfig::default()).unwrap();
        let b = &blob.bytes;
        let found = (0..b.len() - 20)
            .step_by(16)
            .find(|&o| b[o..].starts_with(b"RSD PTR ") && checksum_ok(&b[o..o + 20]))
            .map(|o| BASE + o as u64);
        assert_eq!(found, Some(blob.rsdp_gpa));
        assert!(blob.rsdp_gpa >= 0xE_0000 && blob.rsdp_gpa < 0x10_0000);
    }

    #[test]
    fn dsdt_aml_bytes() {
        let cfg = AcpiConfig {
            pci_root: true,
            ..AcpiConfig::default()
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            // Name (\_S5_, Package (4) { 5, 5, 0, 0 })
            0x08, b'\\', b'_', b'S', b'5', b'_',
            0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00,
            // Scope (\_SB) {  (PkgLength 98)
            0x10, 0x42, 0x06, b'\\', b'_', b'S', b'B', b'_',
            //   Device (PCI0) {  (PkgLength 89)
            0x5B, 0x82, 0x49, 0x05, b'P', b'C', b'I', b'0',
            //     Name (_HID, EisaId ("PNP0A03"))
            0x08, b'_', b'H', b'I', b'D', 0x0C, 0x41, 0xD0, 0x0A, 0x03,
            //     Name (_BBN, Zero)
            0x08, b'_', b'B', b'B', b'N', 0x00,
            //     Name (_CRS, Buffer (58) {
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x3D, 0x0A, 58,
            //       WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,
            //                      0, 0, 0, 0, 1)
            0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0, 0, 0x00, 0x00, 0x00, 0x00, 0, 0, 0x01, 0x00,
            //       IO (Decode16, 0x0CF8, 0x0CF8, 1, 8)
            0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08,
            //       WordIO (..., EntireRange, 0, 0x0000, 0x0CF7, 0, 0x0CF8)
            0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0, 0, 0x00, 0x00, 0xF7, 0x0C, 0, 0, 0xF8, 0x0C,
            //       WordIO (..., EntireRange, 0, 0x0D00, 0xFFFF, 0, 0xF300)
            0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0, 0, 0x00, 0x0D, 0xFF, 0xFF, 0, 0, 0x00, 0xF3,
            //       EndTag })
            0x79, 0x00,
        ];
        assert_eq!(dsdt_aml(&cfg), want, "{:02x?}", dsdt_aml(&cfg));
        assert_eq!(eisa_id(b"PNP0A03"), 0x030A_D041);
        assert_eq!(eisa_id(b"PNP0C0F"), 0x0F0C_D041);
        let plain = dsdt_aml(&AcpiConfig::default());
        assert_eq!(plain, want[..15]);
    }

    #[test]
    fn dsdt_prt_routes_each_device_to_its_gsi() {
        let cfg = AcpiConfig {
            pci_root: true,
            pci_intx: &[(3, 11), (4, 10)],
            ..AcpiConfig::default()
        };
        let aml = dsdt_aml(&cfg);
        #[rustfmt::skip]
        let prt: &[u8] = &[
            // Name (_PRT, Package (2) {
            0x08, b'_', b'P', b'R', b'T', 0x12, 0x1A, 0x02,
            //   Package (4) { 0x0003FFFF, Zero, Zero, 11 },
            0x12, 0x0B, 0x04, 0x0C, 0xFF, 0xFF, 0x03, 0x00, 0x00, 0x00, 0x0A, 11,
            //   Package (4) { 0x0004FFFF, Zero, Zero, 10 } })
            0x12, 0x0B, 0x04, 0x0C, 0xFF, 0xFF, 0x04, 0x00, 0x00, 0x00, 0x0A, 10,
        ];
        assert!(aml.ends_with(prt), "{aml:02x?}");
        // The Device and Scope lengths grew by the _PRT's bytes.
        let base = dsdt_aml(&AcpiConfig {
            pci_root: true,
            ..AcpiConfig::default()
        });
        assert_eq!(aml.len(), base.len() + prt.len());
        // Both PkgLengths are two bytes here (§20.2.4): low nibble, then << 4.
        let len2 = |b: &[u8]| usize::from(b[0] & 0x0F) | usize::from(b[1]) << 4;
        assert_eq!(len2(&aml[16..]), len2(&base[16..]) + prt.len(), "Scope");
        assert_eq!(len2(&aml[25..]), len2(&base[25..]) + prt.len(), "Device");
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(0), [0x01]);
        assert_eq!(pkg_length(62), [0x3F]);
        // 63 + 2 = 65 = 0x41: lead 0x41 (1 extra byte, low nibble 1), 0x04.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        assert_eq!(pkg_length(0xFFD), [0x4F, 0xFF]);
        assert_eq!(pkg_length(0xFFE), [0x81, 0x00, 0x01]);
        assert_eq!(pkg_length(0xF_FFFC), [0x8F, 0xFF, 0xFF]);
        assert_eq!(pkg_length(0xF_FFFD), [0xC1, 0x00, 0x00, 0x01]);
    }

    #[test]
    fn checksum_helper() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[1, 2, 3]), 0xFA);
        let mut v = vec![0xFFu8, 0x80, 0x7F, 0];
        v[3] = checksum(&v);
        assert!(checksum_ok(&v));
    }

    #[test]
    fn e820_areas_cover_the_blob() {
        let blob = build(BASE, &AcpiConfig::default()).unwrap();
        let [nvs, tables] = blob.e820_areas();
        assert_eq!(nvs, (0xE_0000, 0x1000, E820Type::Nvs));
        assert_eq!(tables.0, 0xE_1000);
        assert_eq!(tables.2, E820Type::Acpi);
        assert!(tables.0 + tables.1 >= BASE + blob.bytes.len() as u64);
        assert_eq!((tables.0 + tables.1) % 4096, 0);
    }

    #[test]
    fn config_errors() {
        let cfg = AcpiConfig::default();
        let err = |base: u64, c: AcpiConfig| build(base, &c).unwrap_err();
        assert_eq!(
            err(BASE, AcpiConfig { vcpus: 0, ..cfg }),
            AcpiGenError::NoVcpus
        );
        let e = err(BASE, AcpiConfig { vcpus: 255, ..cfg });
        assert_eq!(e, AcpiGenError::TooManyVcpus { vcpus: 255 });
        build(BASE, &AcpiConfig { vcpus: 254, ..cfg }).unwrap();
        assert_eq!(
            err(BASE + 16, cfg),
            AcpiGenError::Unaligned { base: BASE + 16 }
        );
        let e = err(0xFFFF_F000, cfg);
        assert!(matches!(
            e,
            AcpiGenError::Above4G {
                base: 0xFFFF_F000,
                ..
            }
        ));
        assert!(e.to_string().contains("reaches above 4 GiB"));
        let e = err(
            BASE,
            AcpiConfig {
                max_len: 0x1000,
                ..cfg
            },
        );
        assert!(matches!(e, AcpiGenError::TooLarge { max: 0x1000, .. }));
        assert_eq!(
            err(
                BASE,
                AcpiConfig {
                    s5_slp_typ: 8,
                    ..cfg
                }
            ),
            AcpiGenError::BadSleepType { value: 8 }
        );
        let e = err(
            BASE,
            AcpiConfig {
                pm_base: 0xFFF0,
                ..cfg
            },
        );
        assert_eq!(e, AcpiGenError::PmBaseTooHigh { base: 0xFFF0 });
        assert_eq!(
            e.to_string(),
            "acpi: PM register blocks from port 0xfff0 run past port 0xffff"
        );
    }
}
