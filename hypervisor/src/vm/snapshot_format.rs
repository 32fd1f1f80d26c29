//! The snapshot byte format (docs/snapshots.md): a header that identifies
//! the format version, the build and the CPU, then sections, each with its
//! own CRC-32. Pure logic, unit-tested on the host; the core fills and reads
//! the sections (snapshot.rs).
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: [u8; 8] = *b"FVSNAP\r\n";
/// Bumped on any change to the layout of the header or of a section
/// (2: virtio functions in DEVICES, DISK sections).
pub const VERSION: u32 = 2;
pub const PAGE: usize = 4096;

/// Section kinds (a snapshot with a kind this build doesn't know is refused).
pub const META: u32 = 1;
pub const VCPU: u32 = 2;
pub const DEVICES: u32 = 3;
pub const RAM: u32 = 4;
/// One per virtio disk (index = attach order): its gold image's identity and
/// its copy-on-write overlay ([`DiskImage`]).
pub const DISK: u32 = 5;

/// What must match for a snapshot to be restored: the build that wrote it
/// and the CPU it ran on (the VMCS and XSAVE layouts depend on both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    /// The hypervisor build (package version and format version).
    pub build: String,
    /// CPUID.0 vendor string.
    pub vendor: [u8; 12],
    /// CPUID.1:EAX (family, model, stepping).
    pub signature: u32,
    /// IA32_VMX_BASIC[30:0].
    pub vmcs_revision: u32,
    /// The XSAVE components the host saves for guests, and the area size.
    pub xsave_mask: u64,
    pub xsave_size: u32,
}

/// Why a snapshot's bytes can't be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    Truncated(&'static str),
    BadMagic,
    Version { found: u32, supported: u32 },
    HeaderChecksum,
    Build { found: String, ours: String },
    Cpu(&'static str),
    Checksum { kind: u32, index: u32 },
    UnknownSection(u32),
    Missing(&'static str),
    Invalid(&'static str),
    TrailingBytes,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Truncated(w) => write!(f, "truncated ({w})"),
            FormatError::BadMagic => write!(f, "not a ferrovisor snapshot (bad magic)"),
            FormatError::Version { found, supported } => {
                write!(f, "format version {found}, this build reads {supported}")
            }
            FormatError::HeaderChecksum => write!(f, "header checksum mismatch"),
            FormatError::Build { found, ours } => {
                write!(f, "taken by build {found}, this is {ours}")
            }
            FormatError::Cpu(what) => write!(f, "taken on another CPU ({what} differs)"),
            FormatError::Checksum { kind, index } => {
                write!(
                    f,
                    "section {} #{index}: checksum mismatch",
                    section_name(*kind)
                )
            }
            FormatError::UnknownSection(k) => write!(f, "unknown section kind {k}"),
            FormatError::Missing(w) => write!(f, "no {w} section"),
            FormatError::Invalid(w) => write!(f, "invalid {w}"),
            FormatError::TrailingBytes => write!(f, "bytes after the last section"),
        }
    }
}

pub fn section_name(kind: u32) -> &'static str {
    match kind {
        META => "meta",
        VCPU => "vcpu",
        DEVICES => "devices",
        RAM => "ram",
        DISK => "disk",
        _ => "unknown",
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's).
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC_TABLE: [u32; 256] = crc_table();

/// Continues a CRC-32 over more bytes (`crc` of what came before).
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// Little-endian writer into a slice of known size.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Panics past the end: sizes are computed before writing ([`Layout`]).
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes())
    }
    fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn slice(&self, from: usize, to: usize) -> &[u8] {
        &self.buf[from..to]
    }
}

/// Little-endian reader; every read says what ran out.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(FormatError::Truncated(what))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.bytes(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, FormatError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        let b = self.bytes(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    pub fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
    pub fn rest(&self) -> usize {
        self.buf.len() - self.pos
    }
}

fn ident_len(id: &Ident) -> usize {
    4 + id.build.len() + 12 + 4 + 4 + 8 + 4
}

/// Bytes of the header: magic, version, section count, identification, CRC.
pub fn header_len(id: &Ident) -> usize {
    8 + 4 + 4 + ident_len(id) + 4
}

/// Bytes of a section's header (kind, index, length, then the CRC of
/// those and the payload).
pub const SECTION_HEADER: usize = 4 + 4 + 8 + 4;

/// A run of non-zero guest pages: first guest-physical page number, count.
pub type Run = (u64, u32);

/// Bytes of a RAM section payload with these runs.
pub fn ram_len(runs: &[Run]) -> usize {
    8 + 8
        + runs
            .iter()
            .map(|&(_, n)| 12 + n as usize * PAGE)
            .sum::<usize>()
}

/// Runs of pages for which `nonzero(page)` holds, over pages `0..pages`.
pub fn runs(pages: u64, mut nonzero: impl FnMut(u64) -> bool) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for p in 0..pages {
        if !nonzero(p) {
            continue;
        }
        match out.last_mut() {
            Some((s, n)) if *s + u64::from(*n) == p && *n < u32::MAX => *n += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

/// Whether a page holds only zero bytes (64 bytes ORed together per test:
/// a snapshot and a restore look at every page of the guest).
pub fn is_zero(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// A section before the RAM: kind, index and its payload as pieces
/// (written one after the other, so large parts are never copied first).
pub type Section<'a> = (u32, u32, Vec<&'a [u8]>);

fn pieces_len(p: &[&[u8]]) -> usize {
    p.iter().map(|b| b.len()).sum()
}

/// Writes a whole snapshot into `out`, which must be exactly
/// [`total_len`] bytes: the small sections as given, then the RAM section,
/// whose pages `page(n)` returns (4 KiB each, for the pages in `runs`).
pub fn write<'p>(
    out: &mut [u8],
    id: &Ident,
    small: &[Section],
    total_pages: u64,
    runs: &[Run],
    mut page: impl FnMut(u64) -> &'p [u8],
) {
    let mut w = Writer::new(out);
    w.bytes(&MAGIC);
    w.u32(VERSION);
    w.u32(small.len() as u32 + 1);
    w.u32(id.build.len() as u32);
    w.bytes(id.build.as_bytes());
    w.bytes(&id.vendor);
    w.u32(id.signature);
    w.u32(id.vmcs_revision);
    w.u64(id.xsave_mask);
    w.u32(id.xsave_size);
    let crc = crc32(w.slice(0, w.pos()));
    w.u32(crc);
    for (kind, index, parts) in small {
        let h = section_head(*kind, *index, pieces_len(parts) as u64);
        w.bytes(&h);
        let crc = parts.iter().fold(crc32(&h), |c, p| crc32_update(c, p));
        w.u32(crc);
        for p in parts {
            w.bytes(p);
        }
    }
    let h = section_head(RAM, 0, ram_len(runs) as u64);
    w.bytes(&h);
    let crc_at = w.pos();
    w.u32(0);
    let start = w.pos();
    w.u64(total_pages);
    w.u64(runs.len() as u64);
    for &(first, n) in runs {
        w.u64(first);
        w.u32(n);
        for p in first..first + u64::from(n) {
            w.bytes(page(p));
        }
    }
    let crc = crc32_update(crc32(&h), w.slice(start, w.pos()));
    w.patch_u32(crc_at, crc);
}

/// A section's kind, index and length, as written (and checksummed) before
/// its CRC.
fn section_head(kind: u32, index: u32, len: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&index.to_le_bytes());
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Bytes of a snapshot with these small sections and RAM runs.
pub fn total_len(id: &Ident, small: &[Section], runs: &[Run]) -> usize {
    header_len(id)
        + small
            .iter()
            .map(|s| SECTION_HEADER + pieces_len(&s.2))
            .sum::<usize>()
        + SECTION_HEADER
        + ram_len(runs)
}

/// A checked snapshot: its sections, borrowed.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub sections: Vec<(u32, u32, &'a [u8])>,
}

impl<'a> Parsed<'a> {
    pub fn one(&self, kind: u32) -> Result<&'a [u8], FormatError> {
        let mut it = self.sections.iter().filter(|s| s.0 == kind);
        let s = it.next().ok_or(FormatError::Missing(section_name(kind)))?;
        if it.next().is_some() {
            return Err(FormatError::Invalid("duplicate section"));
        }
        Ok(s.2)
    }
    /// The sections of `kind`, in index order 0, 1, ... (any gap refused).
    pub fn indexed(&self, kind: u32) -> Result<Vec<&'a [u8]>, FormatError> {
        let mut v: Vec<(u32, &[u8])> = self
            .sections
            .iter()
            .filter(|s| s.0 == kind)
            .map(|s| (s.1, s.2))
            .collect();
        v.sort_by_key(|s| s.0);
        for (i, s) in v.iter().enumerate() {
            if s.0 as usize != i {
                return Err(FormatError::Invalid("section indices"));
            }
        }
        Ok(v.into_iter().map(|s| s.1).collect())
    }
}

/// Checks the header against `ours` and every section's checksum.
pub fn parse<'a>(bytes: &'a [u8], ours: &Ident) -> Result<Parsed<'a>, FormatError> {
    let mut r = Reader::new(bytes);
    if r.bytes(8, "magic")? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(FormatError::Version {
            found: version,
            supported: VERSION,
        });
    }
    let count = r.u32("section count")?;
    let blen = r.u32("build")? as usize;
    if blen > 256 {
        return Err(FormatError::Invalid("build string length"));
    }
    let build = r.bytes(blen, "build")?;
    let vendor = r.bytes(12, "vendor")?;
    let signature = r.u32("signature")?;
    let vmcs_revision = r.u32("vmcs revision")?;
    let xsave_mask = r.u64("xsave mask")?;
    let xsave_size = r.u32("xsave size")?;
    let hdr_end = r.pos;
    let crc = r.u32("header checksum")?;
    if crc32(&bytes[..hdr_end]) != crc {
        return Err(FormatError::HeaderChecksum);
    }
    if build != ours.build.as_bytes() {
        return Err(FormatError::Build {
            found: String::from_utf8_lossy(build).into(),
            ours: ours.build.clone(),
        });
    }
    if vendor != ours.vendor {
        return Err(FormatError::Cpu("vendor"));
    }
    if signature != ours.signature {
        return Err(FormatError::Cpu("family/model/stepping"));
    }
    if vmcs_revision != ours.vmcs_revision {
        return Err(FormatError::Cpu("VMCS revision"));
    }
    if xsave_mask != ours.xsave_mask || xsave_size != ours.xsave_size {
        return Err(FormatError::Cpu("XSAVE layout"));
    }
    let mut sections = Vec::new();
    for _ in 0..count {
        let kind = r.u32("section header")?;
        let index = r.u32("section header")?;
        let len = r.u64("section header")?;
        let crc = r.u32("section header")?;
        if !(META..=DISK).contains(&kind) {
            return Err(FormatError::UnknownSection(kind));
        }
        let len = usize::try_from(len).map_err(|_| FormatError::Truncated("section"))?;
        let data = r.bytes(len, "section")?;
        let h = section_head(kind, index, len as u64);
        if crc32_update(crc32(&h), data) != crc {
            return Err(FormatError::Checksum { kind, index });
        }
        sections.push((kind, index, data));
    }
    if !r.done() {
        return Err(FormatError::TrailingBytes);
    }
    Ok(Parsed { sections })
}

/// Runs of a RAM section: first page number and the run's bytes.
pub type RunData<'a> = Vec<(u64, &'a [u8])>;

/// The RAM section: total guest pages and its runs, each with its data.
pub fn ram_runs(data: &[u8]) -> Result<(u64, RunData<'_>), FormatError> {
    let mut r = Reader::new(data);
    let total = r.u64("ram")?;
    let n = r.u64("ram")?;
    let mut out = Vec::new();
    let mut next = 0u64;
    for _ in 0..n {
        let first = r.u64("ram run")?;
        let count = r.u32("ram run")?;
        let end = first
            .checked_add(u64::from(count))
            .ok_or(FormatError::Invalid("ram run"))?;
        if first < next || end > total || count == 0 {
            return Err(FormatError::Invalid("ram run"));
        }
        next = end;
        let bytes = r.bytes(count as usize * PAGE, "ram run data")?;
        out.push((first, bytes));
    }
    if !r.done() {
        return Err(FormatError::TrailingBytes);
    }
    Ok((total, out))
}

/// A DISK section: the gold image the disk is over (name, size, a 64-bit
/// hash of its bytes), the overlay's chunk size, and then the overlay's
/// chunks: a table of (chunk index u64, length u32), indices ascending,
/// followed by their bytes in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImage {
    pub name: String,
    pub base_len: u64,
    pub base_hash: u64,
    pub chunk: u32,
    pub read_only: bool,
}

/// The overlay chunks of a DISK section: index and bytes.
pub type Chunks<'a> = Vec<(u64, &'a [u8])>;

impl DiskImage {
    /// The section's bytes up to the chunks' data, for chunks `table`.
    pub fn encode_head(&self, table: &[(u64, u32)]) -> Vec<u8> {
        let mut v = Vec::with_capacity(40 + self.name.len() + 12 * table.len());
        v.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v.extend_from_slice(&self.base_len.to_le_bytes());
        v.extend_from_slice(&self.base_hash.to_le_bytes());
        v.extend_from_slice(&self.chunk.to_le_bytes());
        v.push(u8::from(self.read_only));
        v.extend_from_slice(&(table.len() as u64).to_le_bytes());
        for &(i, n) in table {
            v.extend_from_slice(&i.to_le_bytes());
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    /// Checks a DISK section's layout: every chunk inside the base, no
    /// longer than a chunk, indices ascending, the data exactly as long as
    /// the table says.
    pub fn decode(b: &[u8]) -> Result<(DiskImage, Chunks<'_>), FormatError> {
        let mut r = Reader::new(b);
        let n = r.u32("disk")? as usize;
        if n > 256 {
            return Err(FormatError::Invalid("disk image name length"));
        }
        let name = core::str::from_utf8(r.bytes(n, "disk")?)
            .map_err(|_| FormatError::Invalid("disk image name"))?
            .into();
        let d = DiskImage {
            name,
            base_len: r.u64("disk")?,
            base_hash: r.u64("disk")?,
            chunk: r.u32("disk")?,
            read_only: match r.u8("disk")? {
                0 => false,
                1 => true,
                _ => return Err(FormatError::Invalid("disk read-only flag")),
            },
        };
        if !d.chunk.is_power_of_two() || d.chunk < 512 {
            return Err(FormatError::Invalid("disk chunk size"));
        }
        let count = r.u64("disk chunk table")?;
        if count.saturating_mul(12) > r.rest() as u64 {
            return Err(FormatError::Truncated("disk chunk table"));
        }
        let mut table = Vec::with_capacity(count as usize);
        let mut next = 0u64;
        for _ in 0..count {
            let i = r.u64("disk chunk table")?;
            let len = r.u32("disk chunk table")?;
            let start = i
                .checked_mul(u64::from(d.chunk))
                .filter(|&s| s < d.base_len && i >= next)
                .ok_or(FormatError::Invalid("disk chunk index"))?;
            if u64::from(len) != u64::from(d.chunk).min(d.base_len - start) {
                return Err(FormatError::Invalid("disk chunk length"));
            }
            next = i + 1;
            table.push((i, len));
        }
        let mut chunks = Vec::with_capacity(table.len());
        for (i, len) in table {
            chunks.push((i, r.bytes(len as usize, "disk chunk data")?));
        }
        if !r.done() {
            return Err(FormatError::TrailingBytes);
        }
        if d.read_only && !chunks.is_empty() {
            return Err(FormatError::Invalid("overlay of a read-only disk"));
        }
        Ok((d, chunks))
    }
}

/// The META section: what the snapshot is of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub vm: String,
    pub vcpus: u32,
    pub memory: u64,
    /// The guest's TSC when the snapshot was taken.
    pub guest_tsc: u64,
    /// Hypervisor uptime then (ms).
    pub taken_at_ms: u64,
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32 + self.vm.len());
        v.extend_from_slice(&(self.vm.len() as u32).to_le_bytes());
        v.extend_from_slice(self.vm.as_bytes());
        v.extend_from_slice(&self.vcpus.to_le_bytes());
        v.extend_from_slice(&self.memory.to_le_bytes());
        v.extend_from_slice(&self.guest_tsc.to_le_bytes());
        v.extend_from_slice(&self.taken_at_ms.to_le_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<Meta, FormatError> {
        let mut r = Reader::new(b);
        let n = r.u32("meta")? as usize;
        let vm = core::str::from_utf8(r.bytes(n, "meta")?)
            .map_err(|_| FormatError::Invalid("vm name"))?
            .into();
        let m = Meta {
            vm,
            vcpus: r.u32("meta")?,
            memory: r.u64("meta")?,
            guest_tsc: r.u64("meta")?,
            taken_at_ms: r.u64("meta")?,
        };
        if !r.done() {
            return Err(FormatError::TrailingBytes);
        }
        Ok(m)
    }
}

/// One vCPU's state outside guest RAM and the device models.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuImage {
    /// It had run (its VMCS holds state); else it waits for a start-up IPI
    /// and only the fields outside the VMCS count.
    pub configured: bool,
    pub wait_sipi: bool,
    /// In HLT (parked asleep): it sleeps until an interrupt on restore.
    pub halted: bool,
    pub halted_noirq: bool,
    pub gprs: [u64; 16],
    /// Natural-width and 64-bit guest-state and control fields, in the
    /// order of [`VMCS_U64`]; 32-bit ones in the order of [`VMCS_U32`];
    /// segment selectors in VMCS order.
    pub vmcs64: Vec<u64>,
    pub vmcs32: Vec<u32>,
    pub selectors: [u16; 8],
    /// Guest TSC offset minus the VM's (a guest write to IA32_TSC moves only
    /// its own vCPU's).
    pub tsc_delta: u64,
    pub xcr0: u64,
    pub misc_enable: u64,
    pub switched_msrs: Vec<u64>,
    pub debug_regs: [u64; 5],
    pub cr2: u64,
    pub init_cr0: u64,
    /// The event to be injected at the next entry (info, error code, length).
    pub pending_event: Option<(u32, u32, u32)>,
    pub pending_cr2: Option<u64>,
    /// Signals other vCPUs had left in its mailbox: NMI, INIT, and the
    /// start-up IPI (0, or 0x100 | vector).
    pub nmi: bool,
    pub init: bool,
    pub sipi: u32,
    pub xsave: Vec<u8>,
}

/// Names of the 64-bit/natural fields a [`VcpuImage`] holds, in order.
pub const VMCS_U64: [&str; 27] = [
    "cr0",
    "cr3",
    "cr4",
    "dr7",
    "rsp",
    "rip",
    "rflags",
    "efer",
    "pat",
    "debugctl",
    "es_base",
    "cs_base",
    "ss_base",
    "ds_base",
    "fs_base",
    "gs_base",
    "ldtr_base",
    "tr_base",
    "gdtr_base",
    "idtr_base",
    "pending_dbg",
    "sysenter_esp",
    "sysenter_eip",
    "cr0_shadow",
    "cr4_shadow",
    "link_ptr",
    "reserved",
];
/// Names of the 32-bit fields a [`VcpuImage`] holds, in order.
pub const VMCS_U32: [&str; 25] = [
    "es_limit",
    "cs_limit",
    "ss_limit",
    "ds_limit",
    "fs_limit",
    "gs_limit",
    "ldtr_limit",
    "tr_limit",
    "es_ar",
    "cs_ar",
    "ss_ar",
    "ds_ar",
    "fs_ar",
    "gs_ar",
    "ldtr_ar",
    "tr_ar",
    "gdtr_limit",
    "idtr_limit",
    "activity",
    "interruptibility",
    "sysenter_cs",
    "entry_intr_info",
    "primary_controls",
    "entry_controls",
    "entry_err_code",
];

fn put_u64s(v: &mut Vec<u8>, xs: &[u64]) {
    v.extend_from_slice(&(xs.len() as u32).to_le_bytes());
    for x in xs {
        v.extend_from_slice(&x.to_le_bytes());
    }
}

fn get_u64s(r: &mut Reader, max: usize) -> Result<Vec<u64>, FormatError> {
    let n = r.u32("vcpu")? as usize;
    if n > max {
        return Err(FormatError::Invalid("vcpu field count"));
    }
    (0..n).map(|_| r.u64("vcpu")).collect()
}

impl VcpuImage {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(512 + self.xsave.len());
        let flags = u8::from(self.configured)
            | u8::from(self.wait_sipi) << 1
            | u8::from(self.halted) << 2
            | u8::from(self.halted_noirq) << 3
            | u8::from(self.pending_event.is_some()) << 4
            | u8::from(self.pending_cr2.is_some()) << 5
            | u8::from(self.nmi) << 6
            | u8::from(self.init) << 7;
        v.push(flags);
        for g in self.gprs {
            v.extend_from_slice(&g.to_le_bytes());
        }
        put_u64s(&mut v, &self.vmcs64);
        v.extend_from_slice(&(self.vmcs32.len() as u32).to_le_bytes());
        for x in &self.vmcs32 {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for s in self.selectors {
            v.extend_from_slice(&s.to_le_bytes());
        }
        for x in [
            self.tsc_delta,
            self.xcr0,
            self.misc_enable,
            self.cr2,
            self.init_cr0,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        put_u64s(&mut v, &self.switched_msrs);
        for d in self.debug_regs {
            v.extend_from_slice(&d.to_le_bytes());
        }
        let (i, e, l) = self.pending_event.unwrap_or_default();
        for x in [i, e, l] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&self.pending_cr2.unwrap_or(0).to_le_bytes());
        v.extend_from_slice(&self.sipi.to_le_bytes());
        v.extend_from_slice(&(self.xsave.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.xsave);
        v
    }

    pub fn decode(b: &[u8]) -> Result<VcpuImage, FormatError> {
        let mut r = Reader::new(b);
        let flags = r.u8("vcpu flags")?;
        let mut img = VcpuImage {
            nmi: flags & 64 != 0,
            init: flags & 128 != 0,
            configured: flags & 1 != 0,
            wait_sipi: flags & 2 != 0,
            halted: flags & 4 != 0,
            halted_noirq: flags & 8 != 0,
            ..Default::default()
        };
        for g in img.gprs.iter_mut() {
            *g = r.u64("vcpu gprs")?;
        }
        img.vmcs64 = get_u64s(&mut r, VMCS_U64.len())?;
        let n = r.u32("vcpu")? as usize;
        if n > VMCS_U32.len() {
            return Err(FormatError::Invalid("vcpu field count"));
        }
        img.vmcs32 = (0..n).map(|_| r.u32("vcpu")).collect::<Result<_, _>>()?;
        if img.configured && (img.vmcs64.len() != VMCS_U64.len() || n != VMCS_U32.len()) {
            return Err(FormatError::Invalid("vcpu field count"));
        }
        for s in img.selectors.iter_mut() {
            *s = r.u16("vcpu selectors")?;
        }
        img.tsc_delta = r.u64("vcpu")?;
        img.xcr0 = r.u64("vcpu")?;
        img.misc_enable = r.u64("vcpu")?;
        img.cr2 = r.u64("vcpu")?;
        img.init_cr0 = r.u64("vcpu")?;
        img.switched_msrs = get_u64s(&mut r, 64)?;
        for d in img.debug_regs.iter_mut() {
            *d = r.u64("vcpu debug registers")?;
        }
        let ev = (r.u32("vcpu")?, r.u32("vcpu")?, r.u32("vcpu")?);
        img.pending_event = (flags & 16 != 0).then_some(ev);
        let cr2 = r.u64("vcpu")?;
        img.pending_cr2 = (flags & 32 != 0).then_some(cr2);
        img.sipi = r.u32("vcpu sipi")?;
        if img.sipi != 0 && img.sipi & !0xFF != 0x100 {
            return Err(FormatError::Invalid("vcpu start-up IPI"));
        }
        let n = r.u32("vcpu xsave")? as usize;
        img.xsave = r.bytes(n, "vcpu xsave")?.into();
        if !r.done() {
            return Err(FormatError::TrailingBytes);
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn ident() -> Ident {
        Ident {
            build: "ferrovisor 0.1.0 snap 1".into(),
            vendor: *b"GenuineIntel",
            signature: 0x50654,
            vmcs_revision: 0x2b,
            xsave_mask: 7,
            xsave_size: 832,
        }
    }

    fn image() -> VcpuImage {
        VcpuImage {
            configured: true,
            halted: true,
            gprs: core::array::from_fn(|i| i as u64 * 0x1111),
            vmcs64: (0..VMCS_U64.len() as u64).map(|i| i << 40 | 7).collect(),
            vmcs32: (0..VMCS_U32.len() as u32).map(|i| i * 3 + 1).collect(),
            selectors: [8, 0x10, 0x18, 0x18, 0, 0, 0, 0x28],
            tsc_delta: u64::MAX - 5,
            xcr0: 7,
            misc_enable: 1,
            switched_msrs: vec![1, 2, 3, 4, 5, 6],
            debug_regs: [1, 2, 3, 4, 0xFFFF_0FF0],
            cr2: 0xdead_b000,
            init_cr0: 0x6000_0010,
            pending_event: Some((0x8000_0020, 0, 0)),
            pending_cr2: None,
            nmi: true,
            sipi: 0x108,
            xsave: (0..832).map(|i| i as u8).collect(),
            ..Default::default()
        }
    }

    /// 8 pages of guest RAM: pages 1, 2 and 6 non-zero.
    fn ram() -> Vec<u8> {
        let mut m = vec![0u8; 8 * PAGE];
        m[PAGE + 5] = 1;
        m[2 * PAGE + PAGE - 1] = 0xAA;
        m[6 * PAGE] = 0x55;
        m
    }

    fn snapshot() -> Vec<u8> {
        let id = ident();
        let meta = Meta {
            vm: "a".into(),
            vcpus: 1,
            memory: 8 * PAGE as u64,
            guest_tsc: 123_456,
            taken_at_ms: 99,
        }
        .encode();
        let cpu = image().encode();
        let dev = b"FVDS-devices".to_vec();
        let disk = DiskImage {
            name: "gold.img".into(),
            base_len: 3 * 4096 + 512,
            base_hash: 0x1234_5678_9abc_def0,
            chunk: 4096,
            read_only: false,
        };
        let (c0, c3) = (vec![7u8; 4096], vec![9u8; 512]);
        let head = disk.encode_head(&[(0, 4096), (3, 512)]);
        let small: [Section; 4] = [
            (META, 0, vec![&meta]),
            (VCPU, 0, vec![&cpu]),
            (DEVICES, 0, vec![&dev]),
            (DISK, 0, vec![&head, &c0, &c3]),
        ];
        let mem = ram();
        let r = runs(8, |p| !is_zero(&mem[p as usize * PAGE..][..PAGE]));
        let mut out = vec![0u8; total_len(&id, &small, &r)];
        write(&mut out, &id, &small, 8, &r, |p| {
            &mem[p as usize * PAGE..][..PAGE]
        });
        out
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_update(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn zero_pages_are_skipped_and_runs_merge() {
        let mem = ram();
        let r = runs(8, |p| !is_zero(&mem[p as usize * PAGE..][..PAGE]));
        assert_eq!(r, vec![(1, 2), (6, 1)]);
        assert!(is_zero(&[0; PAGE]));
        // Any byte of a page counts, also past the last whole 64 bytes.
        for i in [0, 63, 64, 4095] {
            let mut p = [0u8; PAGE];
            p[i] = 1;
            assert!(!is_zero(&p), "{i}");
        }
        assert!(!is_zero(&[0, 0, 1]));
        assert!(!is_zero(&mem[6 * PAGE..7 * PAGE]));
    }

    #[test]
    fn a_snapshot_round_trips() {
        let bytes = snapshot();
        let p = parse(&bytes, &ident()).unwrap();
        let meta = Meta::decode(p.one(META).unwrap()).unwrap();
        assert_eq!((meta.vm.as_str(), meta.guest_tsc), ("a", 123_456));
        let cpus = p.indexed(VCPU).unwrap();
        assert_eq!(cpus.len(), 1);
        assert_eq!(VcpuImage::decode(cpus[0]).unwrap(), image());
        assert_eq!(p.one(DEVICES).unwrap(), b"FVDS-devices");
        let (d, chunks) = DiskImage::decode(p.indexed(DISK).unwrap()[0]).unwrap();
        assert_eq!(
            (d.name.as_str(), d.base_len, d.chunk),
            ("gold.img", 3 * 4096 + 512, 4096)
        );
        assert_eq!(d.base_hash, 0x1234_5678_9abc_def0);
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].0, chunks[0].1), (0, &[7u8; 4096][..]));
        assert_eq!((chunks[1].0, chunks[1].1), (3, &[9u8; 512][..]));
        let (total, runs) = ram_runs(p.one(RAM).unwrap()).unwrap();
        assert_eq!(total, 8);
        let mem = ram();
        // Rebuilt RAM equals the original: runs restored, the rest zero.
        let mut back = vec![0u8; 8 * PAGE];
        for (first, data) in runs {
            back[first as usize * PAGE..][..data.len()].copy_from_slice(data);
        }
        assert_eq!(back, mem);
        // Only 3 of 8 pages (and the disk's 4.5 KiB) take space.
        assert!(bytes.len() < 6 * PAGE, "{}", bytes.len());
    }

    #[test]
    fn every_corrupted_byte_is_refused() {
        let bytes = snapshot();
        let id = ident();
        // Flipping any single byte anywhere is caught (header or section
        // checksums, lengths, magic, version, identification).
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(parse(&b, &id).is_err(), "byte {i} flipped was accepted");
        }
        // Truncation at any point, and extra bytes.
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n], &id).is_err(), "truncated to {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(parse(&longer, &id).unwrap_err(), FormatError::TrailingBytes);
    }

    #[test]
    fn an_incompatible_snapshot_is_refused_with_the_reason() {
        let bytes = snapshot();
        let mut other = ident();
        other.build = "ferrovisor 0.2.0 snap 1".into();
        let e = parse(&bytes, &other).unwrap_err();
        assert!(matches!(e, FormatError::Build { .. }), "{e}");
        assert!(alloc::format!("{e}").contains("0.1.0"));
        let mut other = ident();
        other.signature = 0x906ea;
        assert_eq!(
            parse(&bytes, &other).unwrap_err(),
            FormatError::Cpu("family/model/stepping")
        );
        let mut other = ident();
        other.vendor = *b"AuthenticAMD";
        assert_eq!(
            parse(&bytes, &other).unwrap_err(),
            FormatError::Cpu("vendor")
        );
        let mut other = ident();
        other.xsave_size = 2688;
        assert_eq!(
            parse(&bytes, &other).unwrap_err(),
            FormatError::Cpu("XSAVE layout")
        );
        // A newer format version, with a valid header checksum.
        let mut b = bytes.clone();
        b[8] = 3;
        let hl = header_len(&ident());
        let crc = crc32(&b[..hl - 4]);
        b[hl - 4..hl].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            parse(&b, &ident()).unwrap_err(),
            FormatError::Version {
                found: 3,
                supported: 2
            }
        );
        // A format 1 snapshot (before virtio and disks) is refused.
        let mut b = bytes.clone();
        b[8] = 1;
        let crc = crc32(&b[..hl - 4]);
        b[hl - 4..hl].copy_from_slice(&crc.to_le_bytes());
        let e = parse(&b, &ident()).unwrap_err();
        assert_eq!(
            e,
            FormatError::Version {
                found: 1,
                supported: 2
            }
        );
        assert_eq!(
            alloc::format!("{e}"),
            "format version 1, this build reads 2"
        );
    }

    #[test]
    fn disk_sections_are_validated() {
        let d = DiskImage {
            name: "g".into(),
            base_len: 2 * 4096,
            base_hash: 1,
            chunk: 4096,
            read_only: false,
        };
        let c = vec![1u8; 4096];
        let whole = |t: &[(u64, u32)], n: usize| {
            let mut v = d.encode_head(t);
            for _ in 0..n {
                v.extend_from_slice(&c);
            }
            v
        };
        assert!(DiskImage::decode(&whole(&[(0, 4096), (1, 4096)], 2)).is_ok());
        let bad = [
            (
                whole(&[(1, 4096), (0, 4096)], 2),
                FormatError::Invalid("disk chunk index"),
            ),
            (
                whole(&[(2, 4096)], 1),
                FormatError::Invalid("disk chunk index"),
            ),
            (
                whole(&[(0, 512)], 1),
                FormatError::Invalid("disk chunk length"),
            ),
            (whole(&[(0, 4096)], 2), FormatError::TrailingBytes),
        ];
        for (b, e) in bad {
            assert_eq!(DiskImage::decode(&b).unwrap_err(), e);
        }
        let b = whole(&[(0, 4096), (1, 4096)], 2);
        for n in 0..b.len() {
            assert!(DiskImage::decode(&b[..n]).is_err(), "truncated to {n}");
        }
        let ro = DiskImage {
            read_only: true,
            ..d.clone()
        };
        let mut b = ro.encode_head(&[(0, 4096)]);
        b.extend_from_slice(&c);
        assert_eq!(
            DiskImage::decode(&b).unwrap_err(),
            FormatError::Invalid("overlay of a read-only disk")
        );
    }

    #[test]
    fn section_contents_are_validated() {
        // A vCPU section with a checksum that fits but bad contents.
        assert!(VcpuImage::decode(&[0x80]).is_err());
        let mut bad = image();
        bad.sipi = 0x12;
        assert_eq!(
            VcpuImage::decode(&bad.encode()).unwrap_err(),
            FormatError::Invalid("vcpu start-up IPI")
        );
        let mut e = image().encode();
        e.push(0);
        assert_eq!(
            VcpuImage::decode(&e).unwrap_err(),
            FormatError::TrailingBytes
        );
        let e = image().encode();
        assert!(VcpuImage::decode(&e[..e.len() - 1]).is_err());
        // RAM runs out of order, past the end, or empty.
        let mut r = Vec::new();
        r.extend_from_slice(&4u64.to_le_bytes());
        r.extend_from_slice(&1u64.to_le_bytes());
        r.extend_from_slice(&3u64.to_le_bytes());
        r.extend_from_slice(&2u32.to_le_bytes());
        r.extend_from_slice(&[0; 2 * PAGE]);
        assert_eq!(ram_runs(&r).unwrap_err(), FormatError::Invalid("ram run"));
        // Missing and duplicate sections.
        let p = Parsed {
            sections: vec![
                (VCPU, 0, &[][..]),
                (VCPU, 2, &[][..]),
                (META, 0, &[][..]),
                (META, 0, &[][..]),
            ],
        };
        assert_eq!(p.one(RAM).unwrap_err(), FormatError::Missing("ram"));
        assert!(p.one(META).is_err());
        assert!(p.indexed(VCPU).is_err());
    }
}
