//! ACPI table discovery and the few tables the hypervisor needs: MADT (CPUs
//! and interrupt controllers), FADT (power-management ports, reset
//! register) and the `\_S5_` sleep type in the DSDT (power off).
//!
//! Memory is reached through [`PhysMem`] so the parsers run on the host
//! against synthetic tables. Section numbers refer to the ACPI 6.5 spec.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Reads physical memory.
pub trait PhysMem {
    /// Fills `buf` from physical address `addr`; false if any byte of the
    /// range is not readable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// A 4-byte table signature such as `APIC`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 4]);

impl Signature {
    /// Multiple APIC Description Table (§5.2.12).
    pub const MADT: Signature = Signature(*b"APIC");
    /// Fixed ACPI Description Table (§5.2.9).
    pub const FADT: Signature = Signature(*b"FACP");
    /// Differentiated System Description Table (§5.2.11.1).
    pub const DSDT: Signature = Signature(*b"DSDT");
    /// Extended System Description Table (§5.2.8).
    pub const XSDT: Signature = Signature(*b"XSDT");
    /// Root System Description Table (§5.2.7).
    pub const RSDT: Signature = Signature(*b"RSDT");
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(\"{self}\")")
    }
}

/// Why ACPI information could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcpiError {
    /// `len` bytes at `addr` could not be read while reading `what`.
    Unreadable {
        what: &'static str,
        addr: u64,
        len: usize,
    },
    /// No "RSD PTR " signature at `addr`.
    RsdpSignature { addr: u64 },
    /// The first 20 bytes of the RSDP do not sum to zero (§5.2.5.3).
    RsdpChecksum { addr: u64 },
    /// The whole ACPI 2.0+ RSDP does not sum to zero (§5.2.5.3).
    RsdpExtendedChecksum { addr: u64 },
    /// The RSDP's length field is smaller than the 36-byte 2.0 structure.
    RsdpLength { addr: u64, len: u32 },
    /// The RSDP has neither an XSDT nor an RSDT address.
    NoRootTable,
    /// A table at `addr` was expected to be `expected` but says `found`.
    TableSignature {
        addr: u64,
        expected: Signature,
        found: Signature,
    },
    /// The bytes of table `sig` at `addr` do not sum to zero (§5.2.6).
    TableChecksum { sig: Signature, addr: u64 },
    /// Table `sig` at `addr` has an impossible length field.
    TableLength {
        sig: Signature,
        addr: u64,
        len: u32,
        reason: &'static str,
    },
    /// Table `sig` is `len` bytes but a field needs `need` bytes.
    Truncated {
        sig: Signature,
        need: usize,
        len: usize,
    },
    /// No table with this signature is listed in the XSDT/RSDT.
    NotFound { sig: Signature },
    /// A MADT entry at byte `offset` of the table is malformed.
    MadtEntry {
        offset: usize,
        entry_type: u8,
        len: u8,
        reason: &'static str,
    },
    /// The FADT gives no DSDT address.
    NoDsdt,
    /// No `Name(_S5_, Package(){...})` in the DSDT.
    S5NotFound,
    /// `\_S5_` at byte `offset` of the DSDT could not be decoded.
    S5Malformed { offset: usize, reason: &'static str },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::Unreadable { what, addr, len } => {
                write!(f, "cannot read {what}: {len} bytes at {addr:#x}")
            }
            AcpiError::RsdpSignature { addr } => write!(f, "no RSDP signature at {addr:#x}"),
            AcpiError::RsdpChecksum { addr } => write!(f, "bad RSDP checksum at {addr:#x}"),
            AcpiError::RsdpExtendedChecksum { addr } => {
                write!(f, "bad RSDP extended checksum at {addr:#x}")
            }
            AcpiError::RsdpLength { addr, len } => {
                write!(f, "RSDP at {addr:#x} has bad length {len}")
            }
            AcpiError::NoRootTable => f.write_str("RSDP gives neither an XSDT nor an RSDT"),
            AcpiError::TableSignature {
                addr,
                expected,
                found,
            } => write!(f, "table at {addr:#x} is {found}, expected {expected}"),
            AcpiError::TableChecksum { sig, addr } => {
                write!(f, "bad checksum in {sig} table at {addr:#x}")
            }
            AcpiError::TableLength {
                sig,
                addr,
                len,
                reason,
            } => write!(f, "{sig} table at {addr:#x} has bad length {len}: {reason}"),
            AcpiError::Truncated { sig, need, len } => {
                write!(f, "{sig} table is {len} bytes, truncated (needs {need})")
            }
            AcpiError::NotFound { sig } => write!(f, "no {sig} table"),
            AcpiError::MadtEntry {
                offset,
                entry_type,
                len,
                reason,
            } => write!(
                f,
                "MADT entry type {entry_type} length {len} at offset {offset:#x}: {reason}"
            ),
            AcpiError::NoDsdt => f.write_str("FADT gives no DSDT address"),
            AcpiError::S5NotFound => f.write_str("no \\_S5_ package in the DSDT"),
            AcpiError::S5Malformed { offset, reason } => {
                write!(f, "\\_S5_ at DSDT offset {offset:#x}: {reason}")
            }
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

/// True if the bytes sum to zero modulo 256 (§5.2.5.3, §5.2.6).
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

fn read(
    mem: &impl PhysMem,
    what: &'static str,
    addr: u64,
    len: usize,
) -> Result<Vec<u8>, AcpiError> {
    let mut buf = vec![0; len];
    if addr.checked_add(len as u64).is_none() || !mem.read(addr, &mut buf) {
        return Err(AcpiError::Unreadable { what, addr, len });
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------
// RSDP and root tables
// ---------------------------------------------------------------------------

/// Root System Description Pointer (§5.2.5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rsdp {
    /// Where it was found.
    pub addr: u64,
    /// 0 for ACPI 1.0, 2 for ACPI 2.0 and later.
    pub revision: u8,
    /// OEM identifier.
    pub oem_id: [u8; 6],
    /// 32-bit RSDT address (0 if absent).
    pub rsdt_addr: u32,
    /// 64-bit XSDT address (revision 2+ with a non-zero address).
    pub xsdt_addr: Option<u64>,
}

const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;

/// Reads and validates the RSDP at `addr` (from the UEFI configuration
/// table): signature, the 20-byte checksum and, for revision 2+, the
/// extended checksum over its full length (§5.2.5.3).
pub fn parse_rsdp(mem: &impl PhysMem, addr: u64) -> Result<Rsdp, AcpiError> {
    let v1 = read(mem, "RSDP", addr, RSDP_V1_LEN)?;
    if &v1[0..8] != b"RSD PTR " {
        return Err(AcpiError::RsdpSignature { addr });
    }
    if !checksum_ok(&v1) {
        return Err(AcpiError::RsdpChecksum { addr });
    }
    let revision = v1[15];
    let mut oem_id = [0; 6];
    oem_id.copy_from_slice(&v1[9..15]);
    let rsdt_addr = u32_at(&v1, 16);
    let mut xsdt_addr = None;
    if revision >= 2 {
        let v2 = read(mem, "RSDP", addr, RSDP_V2_LEN)?;
        let len = u32_at(&v2, 20);
        if (len as usize) < RSDP_V2_LEN {
            return Err(AcpiError::RsdpLength { addr, len });
        }
        let full = read(mem, "RSDP", addr, len as usize)?;
        if !checksum_ok(&full) {
            return Err(AcpiError::RsdpExtendedChecksum { addr });
        }
        let x = u64_at(&v2, 24);
        if x != 0 {
            xsdt_addr = Some(x);
        }
    }
    if xsdt_addr.is_none() && rsdt_addr == 0 {
        return Err(AcpiError::NoRootTable);
    }
    Ok(Rsdp {
        addr,
        revision,
        oem_id,
        rsdt_addr,
        xsdt_addr,
    })
}

/// Standard table header size (§5.2.6).
pub const HEADER_LEN: usize = 36;
/// Tables larger than this are treated as corrupt.
pub const MAX_TABLE_LEN: u32 = 16 << 20;

/// A checksum-validated table, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Physical address.
    pub addr: u64,
    /// Header signature.
    pub sig: Signature,
    /// Header revision.
    pub revision: u8,
    /// All `length` bytes of the table.
    pub data: Vec<u8>,
}

impl Table {
    /// Bytes after the 36-byte header.
    pub fn body(&self) -> &[u8] {
        &self.data[HEADER_LEN..]
    }

    fn need(&self, need: usize) -> Result<(), AcpiError> {
        if self.data.len() < need {
            return Err(AcpiError::Truncated {
                sig: self.sig,
                need,
                len: self.data.len(),
            });
        }
        Ok(())
    }
}

/// Reads the table at `addr`, checks its signature when `expected` is
/// given, its length and its checksum (§5.2.6).
pub fn read_table(
    mem: &impl PhysMem,
    addr: u64,
    expected: Option<Signature>,
) -> Result<Table, AcpiError> {
    let hdr = read(mem, "table header", addr, HEADER_LEN)?;
    let sig = Signature([hdr[0], hdr[1], hdr[2], hdr[3]]);
    if let Some(expected) = expected {
        if sig != expected {
            return Err(AcpiError::TableSignature {
                addr,
                expected,
                found: sig,
            });
        }
    }
    let len = u32_at(&hdr, 4);
    let bad_len = |reason| AcpiError::TableLength {
        sig,
        addr,
        len,
        reason,
    };
    if (len as usize) < HEADER_LEN {
        return Err(bad_len("shorter than the 36-byte header"));
    }
    if len > MAX_TABLE_LEN {
        return Err(bad_len("larger than 16 MiB"));
    }
    let data = read(mem, "table", addr, len as usize)?;
    if !checksum_ok(&data) {
        return Err(AcpiError::TableChecksum { sig, addr });
    }
    Ok(Table {
        addr,
        sig,
        revision: hdr[8],
        data,
    })
}

/// The root table's list of table addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// The validated RSDP.
    pub rsdp: Rsdp,
    /// `XSDT` or `RSDT`: which root table the entries came from.
    pub root: Signature,
    /// Physical addresses of the description tables.
    pub entries: Vec<u64>,
}

impl AcpiTables {
    /// Validates the RSDP at `rsdp_addr` and reads the XSDT (preferred when
    /// present, §5.2.5.3) or else the RSDT.
    pub fn new(mem: &impl PhysMem, rsdp_addr: u64) -> Result<Self, AcpiError> {
        let rsdp = parse_rsdp(mem, rsdp_addr)?;
        let (root, addr, width) = match rsdp.xsdt_addr {
            Some(x) => (Signature::XSDT, x, 8),
            None => (Signature::RSDT, u64::from(rsdp.rsdt_addr), 4),
        };
        let table = read_table(mem, addr, Some(root))?;
        let body = table.body();
        if body.len() % width != 0 {
            return Err(AcpiError::TableLength {
                sig: root,
                addr,
                len: table.data.len() as u32,
                reason: "entry array is not a whole number of entries",
            });
        }
        let entries = body
            .chunks_exact(width)
            .map(|c| {
                if width == 8 {
                    u64_at(c, 0)
                } else {
                    u64::from(u32_at(c, 0))
                }
            })
            .collect();
        Ok(Self {
            rsdp,
            root,
            entries,
        })
    }

    /// The first listed table with signature `sig`, validated.
    pub fn find(&self, mem: &impl PhysMem, sig: Signature) -> Result<Table, AcpiError> {
        for &addr in &self.entries {
            let s = read(mem, "table signature", addr, 4)?;
            if s[..] == sig.0 {
                return read_table(mem, addr, Some(sig));
            }
        }
        Err(AcpiError::NotFound { sig })
    }

    /// Finds and parses the MADT.
    pub fn madt(&self, mem: &impl PhysMem) -> Result<MadtInfo, AcpiError> {
        parse_madt(&self.find(mem, Signature::MADT)?)
    }

    /// Finds and parses the FADT.
    pub fn fadt(&self, mem: &impl PhysMem) -> Result<Fadt, AcpiError> {
        parse_fadt(&self.find(mem, Signature::FADT)?)
    }

    /// Reads the DSDT named by the FADT and extracts `\_S5_`.
    pub fn s5(&self, mem: &impl PhysMem) -> Result<S5, AcpiError> {
        let dsdt = self.fadt(mem)?.dsdt.ok_or(AcpiError::NoDsdt)?;
        let table = read_table(mem, dsdt, Some(Signature::DSDT))?;
        find_s5(table.body()).map_err(|e| match e {
            // Report offsets relative to the whole table.
            AcpiError::S5Malformed { offset, reason } => AcpiError::S5Malformed {
                offset: offset + HEADER_LEN,
                reason,
            },
            other => other,
        })
    }
}

// ---------------------------------------------------------------------------
// MADT (§5.2.12)
// ---------------------------------------------------------------------------

/// A processor from a Local APIC (type 0) or Local x2APIC (type 9) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuEntry {
    /// (x2)APIC ID.
    pub apic_id: u32,
    /// ACPI processor UID.
    pub processor_uid: u32,
    /// Flags bit 0: usable now.
    pub enabled: bool,
    /// Flags bit 1: may be enabled at run time (only meaningful when not
    /// enabled, §5.2.12.2).
    pub online_capable: bool,
    /// From a type 9 (x2APIC) entry.
    pub x2apic: bool,
}

/// An I/O APIC (type 1, §5.2.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApic {
    /// I/O APIC ID.
    pub id: u8,
    /// MMIO base address.
    pub address: u32,
    /// First global system interrupt it handles.
    pub gsi_base: u32,
}

/// Interrupt input polarity (MPS INTI flags bits 1:0, §5.2.12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    ConformsToBus,
    ActiveHigh,
    Reserved,
    ActiveLow,
}

/// Interrupt trigger mode (MPS INTI flags bits 3:2, §5.2.12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    ConformsToBus,
    Edge,
    Reserved,
    Level,
}

/// An interrupt source override (type 2, §5.2.12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptOverride {
    /// 0 = ISA.
    pub bus: u8,
    /// Bus-relative IRQ.
    pub source: u8,
    /// Global system interrupt it is wired to.
    pub gsi: u32,
    /// MPS INTI flags.
    pub flags: u16,
}

impl InterruptOverride {
    /// Flags bits 1:0.
    pub fn polarity(&self) -> Polarity {
        match self.flags & 3 {
            0 => Polarity::ConformsToBus,
            1 => Polarity::ActiveHigh,
            2 => Polarity::Reserved,
            _ => Polarity::ActiveLow,
        }
    }

    /// Flags bits 3:2.
    pub fn trigger(&self) -> Trigger {
        match (self.flags >> 2) & 3 {
            0 => Trigger::ConformsToBus,
            1 => Trigger::Edge,
            2 => Trigger::Reserved,
            _ => Trigger::Level,
        }
    }
}

/// What the MADT says about CPUs and interrupt controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadtInfo {
    /// Local APIC MMIO base (type 5 override when present).
    pub lapic_addr: u64,
    /// MADT flags bit 0 (PCAT_COMPAT): dual 8259 PICs are installed.
    pub legacy_pics: bool,
    /// Processors in table order; an APIC ID listed twice (type 0 and
    /// type 9) is kept once, as first listed.
    pub cpus: Vec<CpuEntry>,
    /// I/O APICs.
    pub io_apics: Vec<IoApic>,
    /// Interrupt source overrides.
    pub overrides: Vec<InterruptOverride>,
}

/// Parses a validated MADT.
pub fn parse_madt(table: &Table) -> Result<MadtInfo, AcpiError> {
    table.need(44)?;
    let d = &table.data;
    let mut info = MadtInfo {
        lapic_addr: u64::from(u32_at(d, 36)),
        legacy_pics: u32_at(d, 40) & 1 != 0,
        cpus: Vec::new(),
        io_apics: Vec::new(),
        overrides: Vec::new(),
    };
    let mut off = 44;
    while off < d.len() {
        if d.len() - off < 2 {
            return Err(AcpiError::MadtEntry {
                offset: off,
                entry_type: d[off],
                len: 0,
                reason: "entry header runs past the end of the table",
            });
        }
        let (ty, len) = (d[off], d[off + 1]);
        let err = |reason| AcpiError::MadtEntry {
            offset: off,
            entry_type: ty,
            len,
            reason,
        };
        if len < 2 {
            return Err(err("length below 2"));
        }
        if off + usize::from(len) > d.len() {
            return Err(err("entry runs past the end of the table"));
        }
        let e = &d[off..off + usize::from(len)];
        let min = match ty {
            0 => 8,
            1 => 12,
            2 => 10,
            5 => 12,
            9 => 16,
            _ => 2,
        };
        if e.len() < min {
            return Err(err("too short for its type"));
        }
        match ty {
            // Processor Local APIC (§5.2.12.2).
            0 => {
                let flags = u32_at(e, 4);
                push_cpu(
                    &mut info.cpus,
                    CpuEntry {
                        apic_id: e[3].into(),
                        processor_uid: e[2].into(),
                        enabled: flags & 1 != 0,
                        online_capable: flags & 2 != 0,
                        x2apic: false,
                    },
                );
            }
            // I/O APIC (§5.2.12.3).
            1 => info.io_apics.push(IoApic {
                id: e[2],
                address: u32_at(e, 4),
                gsi_base: u32_at(e, 8),
            }),
            // Interrupt Source Override (§5.2.12.5).
            2 => info.overrides.push(InterruptOverride {
                bus: e[2],
                source: e[3],
                gsi: u32_at(e, 4),
                flags: u16_at(e, 8),
            }),
            // Local APIC Address Override (§5.2.12.8).
            5 => info.lapic_addr = u64_at(e, 4),
            // Processor Local x2APIC (§5.2.12.12).
            9 => {
                let flags = u32_at(e, 8);
                push_cpu(
                    &mut info.cpus,
                    CpuEntry {
                        apic_id: u32_at(e, 4),
                        processor_uid: u32_at(e, 12),
                        enabled: flags & 1 != 0,
                        online_capable: flags & 2 != 0,
                        x2apic: true,
                    },
                );
            }
            _ => {}
        }
        off += usize::from(len);
    }
    Ok(info)
}

fn push_cpu(cpus: &mut Vec<CpuEntry>, cpu: CpuEntry) {
    if !cpus.iter().any(|c| c.apic_id == cpu.apic_id) {
        cpus.push(cpu);
    }
}

// ---------------------------------------------------------------------------
// FADT (§5.2.9)
// ---------------------------------------------------------------------------

/// Generic Address Structure (§5.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenericAddress {
    /// 0 = system memory, 1 = system I/O, others per Table 5.1.
    pub space_id: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Register offset in bits.
    pub bit_offset: u8,
    /// Access size (0 undefined, 1 byte, 2 word, 3 dword, 4 qword).
    pub access_size: u8,
    /// Address in that space.
    pub address: u64,
}

impl GenericAddress {
    /// Address space ID of system memory.
    pub const SYSTEM_MEMORY: u8 = 0;
    /// Address space ID of system I/O.
    pub const SYSTEM_IO: u8 = 1;

    fn parse(b: &[u8]) -> Self {
        Self {
            space_id: b[0],
            bit_width: b[1],
            bit_offset: b[2],
            access_size: b[3],
            address: u64_at(b, 4),
        }
    }

    fn io(port: u32, bytes: u8) -> Self {
        Self {
            space_id: Self::SYSTEM_IO,
            bit_width: bytes.saturating_mul(8),
            bit_offset: 0,
            access_size: 0,
            address: port.into(),
        }
    }

    /// The I/O port, if this register is in system I/O space.
    pub fn io_port(&self) -> Option<u16> {
        if self.space_id != Self::SYSTEM_IO {
            return None;
        }
        u16::try_from(self.address).ok()
    }
}

/// The reset register and the value to write to it (FADT RESET_REG, §5.2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetRegister {
    pub reg: GenericAddress,
    pub value: u8,
}

/// The FADT fields the hypervisor uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fadt {
    /// Header revision.
    pub revision: u8,
    /// DSDT address: X_DSDT when present and non-zero, else DSDT.
    pub dsdt: Option<u64>,
    /// SCI interrupt.
    pub sci_int: u16,
    /// SMI command port (0 = ACPI mode cannot be switched).
    pub smi_cmd: u32,
    /// Values to write to `smi_cmd` to enter/leave ACPI mode.
    pub acpi_enable: u8,
    pub acpi_disable: u8,
    /// PM1a control block: X_PM1a_CNT_BLK when non-zero, else PM1a_CNT_BLK.
    pub pm1a_cnt: Option<GenericAddress>,
    /// PM1b control block, same rule; `None` when the system has none.
    pub pm1b_cnt: Option<GenericAddress>,
    /// PM timer block, same rule.
    pub pm_tmr: Option<GenericAddress>,
    /// RTC CMOS index of the century, `None` when not supported.
    pub century: Option<u8>,
    /// IA-PC boot architecture flags (bit 0 legacy devices, bit 1 8042).
    pub iapc_boot_arch: u16,
    /// Fixed feature flags.
    pub flags: u32,
    /// Reset register, when RESET_REG_SUP is set and the table has it.
    pub reset: Option<ResetRegister>,
}

impl Fadt {
    /// Flags bit 10: the reset register is supported.
    pub const RESET_REG_SUP: u32 = 1 << 10;
    /// Flags bit 20: hardware-reduced ACPI (no PM1 fixed hardware).
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// ACPI 1.0 FADT length; everything later is optional by length.
const FADT_V1_LEN: usize = 116;

/// Parses a validated FADT (field offsets from §5.2.9).
pub fn parse_fadt(table: &Table) -> Result<Fadt, AcpiError> {
    table.need(FADT_V1_LEN)?;
    let d = &table.data;
    let has = |end: usize| d.len() >= end;
    // A 64-bit X_ field wins when present and non-zero (§5.2.9).
    let block = |legacy_off: usize, len: u8, x_off: usize| {
        if has(x_off + 12) {
            let g = GenericAddress::parse(&d[x_off..x_off + 12]);
            if g.address != 0 {
                return Some(g);
            }
        }
        let port = u32_at(d, legacy_off);
        (port != 0).then(|| GenericAddress::io(port, len))
    };
    let pm1_cnt_len = d[89];
    let flags = u32_at(d, 112);
    let x_dsdt = if has(148) { u64_at(d, 140) } else { 0 };
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(u32_at(d, 40))
    };
    let reset = if flags & Fadt::RESET_REG_SUP != 0 && has(129) {
        Some(ResetRegister {
            reg: GenericAddress::parse(&d[116..128]),
            value: d[128],
        })
    } else {
        None
    };
    Ok(Fadt {
        revision: table.revision,
        dsdt: (dsdt != 0).then_some(dsdt),
        sci_int: u16_at(d, 46),
        smi_cmd: u32_at(d, 48),
        acpi_enable: d[52],
        acpi_disable: d[53],
        pm1a_cnt: block(64, pm1_cnt_len, 172),
        pm1b_cnt: block(68, pm1_cnt_len, 184),
        pm_tmr: block(76, d[91], 208),
        century: (d[108] != 0).then_some(d[108]),
        iapc_boot_arch: u16_at(d, 109),
        flags,
        reset,
    })
}

// ---------------------------------------------------------------------------
// \_S5_ (§7.4.2, AML encoding §20.2)
// ---------------------------------------------------------------------------

/// SLP_TYPa/SLP_TYPb values for the soft-off state (`\_S5`, §7.4.2); written
/// to PM1a/PM1b_CNT bits 12:10 with SLP_EN (bit 13) to power off (PM1
/// Control Register, chapter 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S5 {
    pub slp_typa: u8,
    pub slp_typb: u8,
}

const NAME_OP: u8 = 0x08;
const PACKAGE_OP: u8 = 0x12;

/// Finds `Name(_S5_, Package(){a, b, ...})` in AML and decodes `a` and `b`.
pub fn find_s5(aml: &[u8]) -> Result<S5, AcpiError> {
    let mut i = 0;
    while let Some(pos) = aml[i..].windows(4).position(|w| w == b"_S5_") {
        let at = i + pos;
        i = at + 1;
        // NameOp, optionally followed by the root prefix '\'.
        let named = match at {
            0 => false,
            1 => aml[0] == NAME_OP,
            _ => aml[at - 1] == NAME_OP || (aml[at - 1] == b'\\' && aml[at - 2] == NAME_OP),
        };
        if !named || aml.get(at + 4) != Some(&PACKAGE_OP) {
            continue;
        }
        return decode_s5_package(aml, at + 5);
    }
    Err(AcpiError::S5NotFound)
}

/// Decodes the package whose PkgLength starts at `off`.
fn decode_s5_package(aml: &[u8], off: usize) -> Result<S5, AcpiError> {
    let bad = |offset, reason| AcpiError::S5Malformed { offset, reason };
    let lead = *aml.get(off).ok_or(bad(off, "truncated package length"))?;
    // PkgLength (§20.2.4): bits 7:6 of the lead byte count following bytes.
    let extra = usize::from(lead >> 6);
    let pkg_len = if extra == 0 {
        usize::from(lead & 0x3F)
    } else {
        let mut v = usize::from(lead & 0x0F);
        for k in 0..extra {
            let b = *aml
                .get(off + 1 + k)
                .ok_or(bad(off, "truncated package length"))?;
            v |= usize::from(b) << (4 + 8 * k);
        }
        v
    };
    // The length counts from the PkgLength bytes to the end of the package.
    let end = off
        .checked_add(pkg_len)
        .filter(|&e| e <= aml.len())
        .ok_or(bad(off, "package runs past the end of the table"))?;
    let mut p = off + 1 + extra;
    let count = *aml[..end].get(p).ok_or(bad(p, "truncated element count"))?;
    if count < 2 {
        return Err(bad(p, "package has fewer than 2 elements"));
    }
    p += 1;
    let a = s5_element(&aml[..end], &mut p)?;
    let b = s5_element(&aml[..end], &mut p)?;
    Ok(S5 {
        slp_typa: a,
        slp_typb: b,
    })
}

/// Decodes one integer package element (§20.2.3) as a 3-bit SLP_TYP value.
fn s5_element(aml: &[u8], p: &mut usize) -> Result<u8, AcpiError> {
    let start = *p;
    let bad = |reason| AcpiError::S5Malformed {
        offset: start,
        reason,
    };
    let op = *aml.get(start).ok_or(bad("truncated package element"))?;
    let width = match op {
        0x00 | 0x01 => 0, // ZeroOp, OneOp
        0x0A => 1,        // BytePrefix
        0x0B => 2,        // WordPrefix
        0x0C => 4,        // DWordPrefix
        0x0E => 8,        // QWordPrefix
        0x02..=0x07 => 0, // a raw byte, as some firmware emits
        _ => return Err(bad("package element is not an integer")),
    };
    let bytes = aml
        .get(start + 1..start + 1 + width)
        .ok_or(bad("truncated package element"))?;
    let value = if width == 0 {
        u64::from(op)
    } else {
        bytes
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    };
    *p = start + 1 + width;
    // SLP_TYP is a 3-bit field of the PM1 control register (chapter 4).
    u8::try_from(value)
        .ok()
        .filter(|&v| v <= 7)
        .ok_or(bad("sleep type value does not fit in 3 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use std::vec::Vec;

    /// Physical memory made of byte regions.
    #[derive(Default)]
    struct FakeMem {
        regions: Vec<(u64, Vec<u8>)>,
    }

    impl FakeMem {
        fn put(&mut self, addr: u64, bytes: Vec<u8>) {
            self.regions.push((addr, bytes));
        }
    }

    impl PhysMem for FakeMem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            for (base, bytes) in &self.regions {
                if addr >= *base && addr + buf.len() as u64 <= base + bytes.len() as u64 {
                    let o = (addr - base) as usize;
                    buf.copy_from_slice(&bytes[o..o + buf.len()]);
                    return true;
                }
            }
            false
        }
    }

    /// Sets byte `at` so the whole slice sums to zero.
    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let sum = b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        b[at] = 0u8.wrapping_sub(sum);
    }

    /// A table with a valid header and checksum around `body`.
    fn table(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.push(revision);
        t.push(0); // checksum
        t.extend_from_slice(b"FERRO ");
        t.extend_from_slice(b"TESTTBL ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"TEST");
        t.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(t.len(), HEADER_LEN);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(b"RSD PTR ");
        r.push(0);
        r.extend_from_slice(b"FERRO ");
        r.push(0); // revision
        r.extend_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = rsdp_v1(rsdt);
        r[15] = 2;
        fix_checksum(&mut r, 8);
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        fix_checksum(&mut r, 32);
        r
    }

    fn madt_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xFEE0_0000u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
                                                  // Type 0: uid 0, apic 0, enabled.
        b.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        // Type 0: uid 1, apic 2, online capable only.
        b.extend_from_slice(&[0, 8, 1, 2, 2, 0, 0, 0]);
        // Type 1: I/O APIC id 4 at 0xFEC00000, GSI base 0.
        b.extend_from_slice(&[1, 12, 4, 0]);
        b.extend_from_slice(&0xFEC0_0000u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        // Type 2: ISA IRQ 0 -> GSI 2, flags 0.
        b.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
        // Type 2: ISA IRQ 9 -> GSI 9, active low, level.
        b.extend_from_slice(&[2, 10, 0, 9, 9, 0, 0, 0, 0x0F, 0]);
        // Type 4 (NMI): ignored.
        b.extend_from_slice(&[4, 6, 0xFF, 0, 0, 1]);
        // Type 9: x2APIC id 300, enabled, uid 7.
        b.extend_from_slice(&[9, 16, 0, 0]);
        b.extend_from_slice(&300u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        // Type 9 repeating APIC ID 0: dropped as a duplicate.
        b.extend_from_slice(&[9, 16, 0, 0]);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&9u32.to_le_bytes());
        b
    }

    /// A full (276-byte) FADT body with legacy and X_ fields.
    fn fadt_body(dsdt32: u32, x_dsdt: u64, x_pm1a: u64) -> Vec<u8> {
        let mut t = vec![0u8; 276];
        t[40..44].copy_from_slice(&dsdt32.to_le_bytes());
        t[46..48].copy_from_slice(&9u16.to_le_bytes()); // SCI
        t[48..52].copy_from_slice(&0xB2u32.to_le_bytes());
        t[52] = 0xA0;
        t[53] = 0xA1;
        t[64..68].copy_from_slice(&0x604u32.to_le_bytes()); // PM1a_CNT
        t[76..80].copy_from_slice(&0x608u32.to_le_bytes()); // PM_TMR
        t[89] = 2; // PM1_CNT_LEN
        t[91] = 4; // PM_TMR_LEN
        t[108] = 0x32; // century
        t[109..111].copy_from_slice(&3u16.to_le_bytes());
        t[112..116].copy_from_slice(&Fadt::RESET_REG_SUP.to_le_bytes());
        t[116] = 1; // RESET_REG: system I/O
        t[117] = 8;
        t[120..128].copy_from_slice(&0xCF9u64.to_le_bytes());
        t[128] = 6;
        t[140..148].copy_from_slice(&x_dsdt.to_le_bytes());
        t[172] = 1; // X_PM1a_CNT_BLK: system I/O, 16 bits
        t[173] = 16;
        t[175] = 2;
        t[176..184].copy_from_slice(&x_pm1a.to_le_bytes());
        t[HEADER_LEN..].to_vec()
    }

    fn s5_aml(pkg: &[u8]) -> Vec<u8> {
        // Some unrelated AML, then Name(\_S5_, Package(){...}).
        let mut a = vec![0x10, 0x05, b'\\', b'_', b'S', b'B', b'_'];
        a.extend_from_slice(&[NAME_OP, b'\\', b'_', b'S', b'5', b'_', PACKAGE_OP]);
        a.push(pkg.len() as u8 + 1);
        a.extend_from_slice(pkg);
        a
    }

    const RSDP: u64 = 0xE_0000;
    const XSDT: u64 = 0x7FE_0000;
    const RSDT: u64 = 0x7FE_1000;
    const MADT: u64 = 0x7FE_2000;
    const FADT: u64 = 0x7FE_3000;
    const DSDT: u64 = 0x7FE_4000;

    /// A full ACPI 2.0 system: RSDP -> XSDT -> {FADT, MADT}, FADT -> DSDT.
    fn system() -> FakeMem {
        let mut m = FakeMem::default();
        m.put(RSDP, rsdp_v2(RSDT as u32, XSDT));
        let mut x = Vec::new();
        for a in [FADT, MADT] {
            x.extend_from_slice(&a.to_le_bytes());
        }
        m.put(XSDT, table(b"XSDT", 1, &x));
        m.put(RSDT, table(b"RSDT", 1, &(FADT as u32).to_le_bytes()));
        m.put(MADT, table(b"APIC", 3, &madt_body()));
        m.put(FADT, table(b"FACP", 6, &fadt_body(0, DSDT, 0x604)));
        m.put(
            DSDT,
            table(b"DSDT", 2, &s5_aml(&[4, 0x0A, 5, 0x0A, 5, 0, 0])),
        );
        m
    }

    #[test]
    fn rsdp_v1_and_v2() {
        let mut m = FakeMem::default();
        m.put(0x1000, rsdp_v1(0x2000));
        let r = parse_rsdp(&m, 0x1000).unwrap();
        assert_eq!((r.revision, r.rsdt_addr, r.xsdt_addr), (0, 0x2000, None));
        assert_eq!(&r.oem_id, b"FERRO ");
        m.put(0x3000, rsdp_v2(0x2000, 0x4000));
        let r = parse_rsdp(&m, 0x3000).unwrap();
        assert_eq!((r.revision, r.xsdt_addr), (2, Some(0x4000)));
    }

    #[test]
    fn rsdp_errors() {
        let mut m = FakeMem::default();
        assert_eq!(
            parse_rsdp(&m, 0x1000),
            Err(AcpiError::Unreadable {
                what: "RSDP",
                addr: 0x1000,
                len: 20
            })
        );
        let mut bad = rsdp_v1(0x2000);
        bad[0] = b'X';
        m.put(0x1000, bad);
        assert_eq!(
            parse_rsdp(&m, 0x1000),
            Err(AcpiError::RsdpSignature { addr: 0x1000 })
        );
        let mut bad = rsdp_v1(0x2000);
        bad[16] ^= 1;
        m.put(0x2000, bad);
        assert_eq!(
            parse_rsdp(&m, 0x2000),
            Err(AcpiError::RsdpChecksum { addr: 0x2000 })
        );
        let mut bad = rsdp_v2(0, 0x4000);
        bad[24] ^= 1; // XSDT address, covered only by the extended checksum
        m.put(0x3000, bad);
        assert_eq!(
            parse_rsdp(&m, 0x3000),
            Err(AcpiError::RsdpExtendedChecksum { addr: 0x3000 })
        );
        m.put(0x4000, rsdp_v1(0));
        assert_eq!(parse_rsdp(&m, 0x4000), Err(AcpiError::NoRootTable));
        let mut short = rsdp_v2(0x2000, 0x4000);
        short[20] = 20;
        fix_checksum(&mut short, 32);
        m.put(0x5000, short);
        assert_eq!(
            parse_rsdp(&m, 0x5000),
            Err(AcpiError::RsdpLength {
                addr: 0x5000,
                len: 20
            })
        );
    }

    #[test]
    fn xsdt_preferred_over_rsdt() {
        let m = system();
        let t = AcpiTables::new(&m, RSDP).unwrap();
        assert_eq!(t.root, Signature::XSDT);
        assert_eq!(t.entries, [FADT, MADT]);
    }

    #[test]
    fn rsdt_used_for_acpi_1() {
        let mut m = system();
        m.put(0x9000, rsdp_v1(RSDT as u32));
        let t = AcpiTables::new(&m, 0x9000).unwrap();
        assert_eq!(t.root, Signature::RSDT);
        assert_eq!(t.entries, [FADT]);
        assert_eq!(
            t.find(&m, Signature::MADT),
            Err(AcpiError::NotFound {
                sig: Signature::MADT
            })
        );
        assert!(t.fadt(&m).is_ok());
    }

    #[test]
    fn table_checksum_and_length_errors() {
        let mut m = FakeMem::default();
        let mut t = table(b"APIC", 1, &madt_body());
        t[40] ^= 0x10;
        m.put(0x1000, t);
        let e = read_table(&m, 0x1000, Some(Signature::MADT)).unwrap_err();
        assert_eq!(
            e,
            AcpiError::TableChecksum {
                sig: Signature::MADT,
                addr: 0x1000
            }
        );
        assert_eq!(e.to_string(), "bad checksum in APIC table at 0x1000");

        let mut t = table(b"FACP", 1, &[]);
        t[4] = 10;
        m.put(0x2000, t);
        assert!(matches!(
            read_table(&m, 0x2000, None),
            Err(AcpiError::TableLength { len: 10, .. })
        ));

        // Length says 200 but only 50 bytes are readable.
        let mut t = table(b"FACP", 1, &[0; 14]);
        t[4] = 200;
        m.put(0x3000, t);
        assert_eq!(
            read_table(&m, 0x3000, None),
            Err(AcpiError::Unreadable {
                what: "table",
                addr: 0x3000,
                len: 200
            })
        );
        assert_eq!(
            read_table(&m, 0x1000, Some(Signature::FADT)),
            Err(AcpiError::TableSignature {
                addr: 0x1000,
                expected: Signature::FADT,
                found: Signature::MADT
            })
        );
    }

    #[test]
    fn bad_checksum_in_found_table() {
        let mut m = system();
        let mut t = table(b"APIC", 3, &madt_body());
        t[50] ^= 1;
        m.regions.retain(|(a, _)| *a != MADT);
        m.put(MADT, t);
        let tables = AcpiTables::new(&m, RSDP).unwrap();
        assert_eq!(
            tables.madt(&m),
            Err(AcpiError::TableChecksum {
                sig: Signature::MADT,
                addr: MADT
            })
        );
    }

    #[test]
    fn madt_entries() {
        let m = system();
        let info = AcpiTables::new(&m, RSDP).unwrap().madt(&m).unwrap();
        assert_eq!(info.lapic_addr, 0xFEE0_0000);
        assert!(info.legacy_pics);
        assert_eq!(
            info.cpus,
            [
                CpuEntry {
                    apic_id: 0,
                    processor_uid: 0,
                    enabled: true,
                    online_capable: false,
                    x2apic: false
                },
                CpuEntry {
                    apic_id: 2,
                    processor_uid: 1,
                    enabled: false,
                    online_capable: true,
                    x2apic: false
                },
                CpuEntry {
                    apic_id: 300,
                    processor_uid: 7,
                    enabled: true,
                    online_capable: false,
                    x2apic: true
                },
            ]
        );
        assert_eq!(
            info.io_apics,
            [IoApic {
                id: 4,
                address: 0xFEC0_0000,
                gsi_base: 0
            }]
        );
        assert_eq!(info.overrides.len(), 2);
        assert_eq!((info.overrides[0].source, info.overrides[0].gsi), (0, 2));
        assert_eq!(info.overrides[0].polarity(), Polarity::ConformsToBus);
        assert_eq!(info.overrides[1].polarity(), Polarity::ActiveLow);
        assert_eq!(info.overrides[1].trigger(), Trigger::Level);
    }

    #[test]
    fn madt_lapic_override() {
        let mut body = madt_body();
        body.extend_from_slice(&[5, 12, 0, 0]);
        body.extend_from_slice(&0x1_FEE0_0000u64.to_le_bytes());
        let t = read_table(&mem_with(table(b"APIC", 3, &body)), 0x1000, None).unwrap();
        assert_eq!(parse_madt(&t).unwrap().lapic_addr, 0x1_FEE0_0000);
    }

    fn mem_with(t: Vec<u8>) -> FakeMem {
        let mut m = FakeMem::default();
        m.put(0x1000, t);
        m
    }

    #[test]
    fn madt_malformed_entries() {
        let bad = |extra: &[u8]| {
            let mut body = madt_body();
            let off = HEADER_LEN + body.len();
            body.extend_from_slice(extra);
            let t = read_table(&mem_with(table(b"APIC", 3, &body)), 0x1000, None).unwrap();
            (off, parse_madt(&t).unwrap_err())
        };
        let (off, e) = bad(&[0, 0]);
        assert_eq!(
            e,
            AcpiError::MadtEntry {
                offset: off,
                entry_type: 0,
                len: 0,
                reason: "length below 2"
            }
        );
        let (_, e) = bad(&[1, 20, 0, 0]);
        assert!(matches!(
            e,
            AcpiError::MadtEntry {
                reason: "entry runs past the end of the table",
                ..
            }
        ));
        let (_, e) = bad(&[9, 8, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            e,
            AcpiError::MadtEntry {
                entry_type: 9,
                reason: "too short for its type",
                ..
            }
        ));
        let (_, e) = bad(&[7]);
        assert!(matches!(
            e,
            AcpiError::MadtEntry {
                reason: "entry header runs past the end of the table",
                ..
            }
        ));
        let t = read_table(&mem_with(table(b"APIC", 3, &[0; 4])), 0x1000, None).unwrap();
        assert_eq!(
            parse_madt(&t),
            Err(AcpiError::Truncated {
                sig: Signature::MADT,
                need: 44,
                len: 40
            })
        );
    }

    #[test]
    fn fadt_prefers_x_fields() {
        let m = system();
        let f = AcpiTables::new(&m, RSDP).unwrap().fadt(&m).unwrap();
        assert_eq!(f.revision, 6);
        assert_eq!(f.dsdt, Some(DSDT));
        let pm1a = f.pm1a_cnt.unwrap();
        assert_eq!(
            (pm1a.io_port(), pm1a.bit_width, pm1a.access_size),
            (Some(0x604), 16, 2)
        );
        assert_eq!(f.pm1b_cnt, None);
        assert_eq!(f.pm_tmr.unwrap().io_port(), Some(0x608));
        assert_eq!(f.pm_tmr.unwrap().bit_width, 32);
        assert_eq!(f.century, Some(0x32));
        assert_eq!(f.iapc_boot_arch, 3);
        assert_eq!((f.sci_int, f.smi_cmd, f.acpi_enable), (9, 0xB2, 0xA0));
        let r = f.reset.unwrap();
        assert_eq!((r.reg.io_port(), r.value), (Some(0xCF9), 6));
    }

    #[test]
    fn fadt_falls_back_to_32bit_fields() {
        // X_ fields zero: use DSDT and PM1a_CNT_BLK.
        let t = table(b"FACP", 4, &fadt_body(0x1234_0000, 0, 0));
        let f = parse_fadt(&read_table(&mem_with(t), 0x1000, None).unwrap()).unwrap();
        assert_eq!(f.dsdt, Some(0x1234_0000));
        assert_eq!(
            f.pm1a_cnt,
            Some(GenericAddress {
                space_id: 1,
                bit_width: 16,
                bit_offset: 0,
                access_size: 0,
                address: 0x604
            })
        );
    }

    #[test]
    fn fadt_acpi1_length_and_truncation() {
        // An ACPI 1.0 FADT: 116 bytes, no reset register, no X_ fields.
        let body = fadt_body(0x5000, 0xDEAD_0000, 0x9999);
        let t = table(b"FACP", 1, &body[..FADT_V1_LEN - HEADER_LEN]);
        let f = parse_fadt(&read_table(&mem_with(t), 0x1000, None).unwrap()).unwrap();
        assert_eq!(f.dsdt, Some(0x5000));
        assert_eq!(f.pm1a_cnt.unwrap().io_port(), Some(0x604));
        assert_eq!(f.reset, None);

        let t = table(b"FACP", 1, &body[..50]);
        assert_eq!(
            parse_fadt(&read_table(&mem_with(t), 0x1000, None).unwrap()),
            Err(AcpiError::Truncated {
                sig: Signature::FADT,
                need: 116,
                len: 86
            })
        );
    }

    #[test]
    fn s5_through_tables() {
        let m = system();
        let s5 = AcpiTables::new(&m, RSDP).unwrap().s5(&m).unwrap();
        assert_eq!(
            s5,
            S5 {
                slp_typa: 5,
                slp_typb: 5
            }
        );
    }

    #[test]
    fn s5_no_dsdt() {
        let mut m = system();
        m.regions.retain(|(a, _)| *a != FADT);
        m.put(FADT, table(b"FACP", 6, &fadt_body(0, 0, 0)));
        let t = AcpiTables::new(&m, RSDP).unwrap();
        assert_eq!(t.s5(&m), Err(AcpiError::NoDsdt));
    }

    #[test]
    fn s5_element_encodings() {
        // ZeroOp / OneOp.
        assert_eq!(
            find_s5(&s5_aml(&[2, 0x00, 0x01])),
            Ok(S5 {
                slp_typa: 0,
                slp_typb: 1
            })
        );
        // Raw bytes, without the root prefix, 4 elements.
        let aml = [
            NAME_OP, b'_', b'S', b'5', b'_', PACKAGE_OP, 6, 4, 7, 7, 0, 0,
        ];
        assert_eq!(
            find_s5(&aml),
            Ok(S5 {
                slp_typa: 7,
                slp_typb: 7
            })
        );
        // Word prefix and a two-byte PkgLength.
        let mut aml = vec![NAME_OP, b'_', b'S', b'5', b'_', PACKAGE_OP, 0x40 | 8, 0];
        aml.extend_from_slice(&[2, 0x0B, 3, 0, 0x0A, 4]);
        assert_eq!(
            find_s5(&aml),
            Ok(S5 {
                slp_typa: 3,
                slp_typb: 4
            })
        );
    }

    #[test]
    fn s5_not_found_or_malformed() {
        assert_eq!(find_s5(b"no sleep states here"), Err(AcpiError::S5NotFound));
        // "_S5_" as a method, not a Name with a Package: skipped.
        let aml = [0x14, 0x08, b'_', b'S', b'5', b'_', 0x00, 0xA4, 0x00];
        assert_eq!(find_s5(&aml), Err(AcpiError::S5NotFound));
        // Element that is not an integer.
        let aml = s5_aml(&[2, 0x0D, b'x', 0]);
        assert!(matches!(
            find_s5(&aml),
            Err(AcpiError::S5Malformed {
                reason: "package element is not an integer",
                ..
            })
        ));
        // Value wider than 3 bits.
        assert!(matches!(
            find_s5(&s5_aml(&[2, 0x0A, 9, 0])),
            Err(AcpiError::S5Malformed {
                reason: "sleep type value does not fit in 3 bits",
                ..
            })
        ));
        // Only one element.
        assert!(matches!(
            find_s5(&s5_aml(&[1, 0x0A, 5])),
            Err(AcpiError::S5Malformed {
                reason: "package has fewer than 2 elements",
                ..
            })
        ));
        // Package length beyond the end of the AML.
        let aml = [NAME_OP, b'_', b'S', b'5', b'_', PACKAGE_OP, 30, 2, 5, 5];
        assert_eq!(
            find_s5(&aml),
            Err(AcpiError::S5Malformed {
                offset: 6,
                reason: "package runs past the end of the table"
            })
        );
        // Element truncated at the end of the package.
        let aml = [NAME_OP, b'_', b'S', b'5', b'_', PACKAGE_OP, 4, 2, 5, 0x0A];
        assert_eq!(
            find_s5(&aml),
            Err(AcpiError::S5Malformed {
                offset: 9,
                reason: "truncated package element"
            })
        );
    }

    #[test]
    fn s5_malformed_offset_is_table_relative() {
        let mut m = system();
        m.regions.retain(|(a, _)| *a != DSDT);
        m.put(DSDT, table(b"DSDT", 2, &s5_aml(&[2, 0x0A, 9, 0])));
        let e = AcpiTables::new(&m, RSDP).unwrap().s5(&m).unwrap_err();
        // Body offset 16 (first element) + header.
        assert_eq!(
            e,
            AcpiError::S5Malformed {
                offset: HEADER_LEN + 16,
                reason: "sleep type value does not fit in 3 bits"
            }
        );
        assert_eq!(
            e.to_string(),
            "\\_S5_ at DSDT offset 0x34: sleep type value does not fit in 3 bits"
        );
    }

    #[test]
    fn signature_display_escapes() {
        assert_eq!(Signature(*b"APIC").to_string(), "APIC");
        assert_eq!(Signature([0, b'A', 0xFF, b' ']).to_string(), "\\x00A\\xff ");
    }
}
