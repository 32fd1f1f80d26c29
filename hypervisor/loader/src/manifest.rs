//! The guest manifest: which guests to run and how.
//!
//! The syntax is a subset of TOML 1.0: `# comments`, blank lines, one
//! `[hypervisor]` table, any number of `[[guest]]` and `[[network]]` tables,
//! `[[guest.disk]]` and `[[guest.nic]]` tables (as in TOML, each belongs to
//! the `[[guest]]` above it, and the guest's own keys must come before them),
//! and `key = value` lines whose value is a basic string ("..." with the escapes
//! `\"` `\\` `\n` `\t`), an integer (decimal or `0x` hex, `_` between digits)
//! or a boolean. Sizes are strings such as "16M", "512K", "1G" (binary
//! multiples; K, M, G, T in either case, optionally followed by "iB") or
//! integers counting bytes.
//!
//! ```toml
//! [hypervisor]
//! poweroff_when_done = true
//!
//! [[guest]]
//! name = "linux"
//! memory = "256M"
//! image = "vmlinuz"
//! kind = "bzimage"
//! initrd = "initrd.gz"
//! cmdline = "console=ttyS0"
//!
//! [[guest.disk]]
//! image = "gold.img"      # a raw image in \hv\, size a multiple of 512
//! serial = "root"
//!
//! [[guest.nic]]
//! network = "lan"         # MAC derived from the guest name when absent
//!
//! [[network]]
//! name = "lan"
//! ```
//!
//! Disks and NICs are parsed and validated here (file sizes with
//! [`validate_files`]); attaching them to guests comes with the virtio devices.
//!
//! Every problem is a [`ManifestError`] naming the file, line and field.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The `[hypervisor]` table (defaults when absent).
    pub hypervisor: HvConfig,
    /// The `[[guest]]` tables in file order (may be empty).
    pub guests: Vec<GuestConfig>,
    /// The `[[network]]` tables in file order (may be empty).
    pub networks: Vec<NetworkConfig>,
}

/// One `[[network]]` table: an L2 segment guest NICs attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Same rules as a guest name; unique among networks.
    pub name: String,
    /// Drop frames whose source MAC is not the sending NIC's (default true).
    pub anti_spoofing: bool,
    /// `uplink = "nic0"`: the network is bridged to the host's first
    /// supported NIC (the only name there is, [`UPLINK_NICS`]).
    pub uplink: Option<String>,
    /// Line of the `[[network]]` header.
    pub line: u32,
}

/// The host NIC names a network's `uplink` may give: `nic0` is the first
/// supported NIC the hypervisor finds on the host's PCI bus.
pub const UPLINK_NICS: [&str; 1] = ["nic0"];

/// One `[[guest.disk]]` table: a virtio-blk disk backed by an image file
/// or by an NBD export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Image file, relative to `\hv\` like the kernel image (empty for an
    /// NBD disk).
    pub image: String,
    /// `nbd = "nbd://A.B.C.D[:PORT][/EXPORT]"`: the blocks live on that
    /// server, reached through the hypervisor's own NIC (excludes `image`).
    pub nbd: Option<NbdTarget>,
    /// The guest may not write (default false: writes go to a private
    /// copy-on-write overlay; the image file itself is never changed).
    pub read_only: bool,
    /// What virtio-blk GET_ID returns: at most [`SERIAL_MAX`] printable
    /// ASCII bytes, unique among the guest's disks (default none).
    pub serial: Option<String>,
    /// Keep the overlay across a guest restart (default false: a restarted
    /// guest sees the image as it is in the file again). Writable disks only.
    pub keep_overlay: bool,
    /// Line of the `[[guest.disk]]` header.
    pub line: u32,
    /// Line of its `image` key.
    pub image_line: u32,
}

/// Where an NBD disk's blocks are: `nbd://A.B.C.D[:PORT][/EXPORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdTarget {
    pub addr: [u8; 4],
    /// [`NBD_DEFAULT_PORT`] unless written.
    pub port: u16,
    /// The export name (empty: the server's default export).
    pub export: String,
}

/// The NBD port IANA assigned (the NBD protocol document, "Protocol phases").
pub const NBD_DEFAULT_PORT: u16 = 10809;
/// The longest export name taken here (printable ASCII, no spaces).
pub const NBD_EXPORT_MAX: usize = 255;

impl fmt::Display for NbdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.addr;
        write!(f, "nbd://{a}.{b}.{c}.{d}:{}/{}", self.port, self.export)
    }
}

impl NbdTarget {
    /// Parses `nbd://A.B.C.D[:PORT][/EXPORT]`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let rest = s
            .strip_prefix("nbd://")
            .ok_or("it must start with nbd://")?;
        let (hostport, export) = match rest.split_once('/') {
            Some((h, e)) => (h, e),
            None => (rest, ""),
        };
        let (host, port) = match hostport.split_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or("the port must be a number from 1 to 65535")?;
                (h, port)
            }
            None => (hostport, NBD_DEFAULT_PORT),
        };
        let mut addr = [0u8; 4];
        let mut parts = host.split('.');
        for a in addr.iter_mut() {
            let part = parts.next().unwrap_or("");
            let ok = !part.is_empty()
                && part.len() <= 3
                && part.bytes().all(|b| b.is_ascii_digit())
                && !(part.len() > 1 && part.starts_with('0'));
            *a = part
                .parse::<u8>()
                .ok()
                .filter(|_| ok)
                .ok_or("the server must be an IPv4 address A.B.C.D (no host names)")?;
        }
        if parts.next().is_some() {
            return Err("the server must be an IPv4 address A.B.C.D (no host names)");
        }
        if addr == [0; 4] || addr == [255; 4] || addr[0] >= 224 {
            return Err("the server address must be a unicast address");
        }
        if export.len() > NBD_EXPORT_MAX || !export.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("the export name must be at most 255 printable ASCII bytes without spaces");
        }
        Ok(NbdTarget {
            addr,
            port,
            export: export.to_string(),
        })
    }
}

/// The longest disk serial: virtio-blk GET_ID returns 20 bytes (virtio 1.2,
/// 5.2.6 "Device Operation"; no terminating NUL when all 20 are used).
pub const SERIAL_MAX: usize = 20;

/// Disks per guest at most.
pub const MAX_DISKS: usize = 16;
/// NICs per guest at most.
pub const MAX_NICS: usize = 8;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The individual/group bit (IEEE 802-2014, 8.2): set for multicast.
    pub fn is_multicast(self) -> bool {
        self.0.first().is_some_and(|b| b & 1 != 0)
    }

    /// The universal/local bit: set for locally administered addresses.
    pub fn is_local(self) -> bool {
        self.0.first().is_some_and(|b| b & 2 != 0)
    }

    /// Parses `52:54:00:12:34:56` (or with `-`), hex digits in either case.
    pub fn parse(s: &str) -> Option<MacAddr> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in out.iter_mut() {
            let part = parts.next()?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The MAC a NIC gets when the manifest gives none: a 64-bit FNV-1a hash of
/// the guest name, a 0 byte and the NIC's index (little-endian u32), its low
/// 6 bytes with the locally-administered bit set and the multicast bit clear.
/// The same name and index always give the same address.
pub fn derive_mac(guest: &str, index: u32) -> MacAddr {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let bytes = guest.bytes().chain([0]).chain(index.to_le_bytes());
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    let [a, b, c, d, e, g, _, _] = h.to_le_bytes();
    MacAddr([(a & !1) | 2, b, c, d, e, g])
}

/// Where a NIC's MAC came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSource {
    /// `mac = "..."` in the manifest.
    Manifest,
    /// [`derive_mac`] of the guest name and NIC index.
    Derived,
}

/// One `[[guest.nic]]` table: a virtio-net NIC on a `[[network]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    /// Name of a `[[network]]`.
    pub network: String,
    /// Unicast, not all-zero; unique in the manifest.
    pub mac: MacAddr,
    /// Whether `mac` was written or derived.
    pub mac_source: MacSource,
    /// Line of the `[[guest.nic]]` header.
    pub line: u32,
    /// Line of its `network` key.
    pub network_line: u32,
    /// Line of its `mac` key (the header's when derived).
    pub mac_line: u32,
}

/// The `[hypervisor]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvConfig {
    /// Power the machine off once every guest has stopped (default true).
    pub poweroff_when_done: bool,
    /// Scheduler time slice in microseconds, 1..=1_000_000 (default 5000).
    pub timeslice_us: u32,
    /// `address = "10.0.2.15/24"`: the hypervisor's endpoint on the uplink
    /// NIC takes this address instead of asking DHCP.
    pub address: Option<Ipv4Prefix>,
    /// `gateway = "10.0.2.2"`: its default route (with `address` only).
    pub gateway: Option<[u8; 4]>,
    /// `api_port = 8080`: the TCP port of the management API on the endpoint
    /// (default 8080; the API is served only with `api_token`).
    pub api_port: Option<u16>,
    /// `api_token = "..."`: the bearer token every API request must carry
    /// (RFC 6750 `b64token`, 16 to 128 bytes). Without one the API is off.
    pub api_token: Option<String>,
}

/// The API's TCP port when the manifest names none.
pub const DEFAULT_API_PORT: u16 = 8080;
/// Shortest and longest API token.
pub const API_TOKEN_LEN: (usize, usize) = (16, 128);

/// Whether `t` is a usable bearer token: RFC 6750 2.1's `b64token` syntax
/// (`1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`), and
/// [`API_TOKEN_LEN`] long.
pub fn valid_api_token(t: &str) -> bool {
    let b = t.as_bytes();
    let (body, pad) = b.split_at(b.iter().take_while(|&&c| c != b'=').count());
    (API_TOKEN_LEN.0..=API_TOKEN_LEN.1).contains(&b.len())
        && !body.is_empty()
        && body
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(c))
        && pad.iter().all(|&c| c == b'=')
}

/// An IPv4 address with its prefix length (1-32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    pub addr: [u8; 4],
    pub prefix: u8,
}

/// `a.b.c.d`, each part a decimal 0-255 without sign or leading zeros.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *o = p.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// `a.b.c.d/p` with p 1-32.
pub fn parse_ipv4_prefix(s: &str) -> Option<Ipv4Prefix> {
    let (a, p) = s.split_once('/')?;
    if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = p.parse().ok()?;
    if !(1..=32).contains(&prefix) {
        return None;
    }
    Some(Ipv4Prefix {
        addr: parse_ipv4(a)?,
        prefix,
    })
}

impl Default for HvConfig {
    fn default() -> Self {
        Self {
            poweroff_when_done: true,
            timeslice_us: 5000,
            address: None,
            gateway: None,
            api_port: None,
            api_token: None,
        }
    }
}

/// One `[[guest]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// 1..=32 characters of `A-Z a-z 0-9 _ -`, unique in the manifest.
    pub name: String,
    /// Guest RAM in bytes: a multiple of 1 MiB, from 1 MiB to 64 GiB.
    pub memory: u64,
    /// Virtual CPUs, 1..=64 (default 1).
    pub vcpus: u32,
    /// Path of the kernel image.
    pub image: String,
    /// Image format and, for flat images, where it goes.
    pub kind: ImageKind,
    /// Kernel command line (default empty).
    pub cmdline: String,
    /// What to do when the guest shuts down (default stop).
    pub on_exit: Policy,
    /// What to do when the guest crashes (default stop; also "rollback":
    /// restore its latest snapshot, or restart it cold when it has none).
    pub on_crash: Policy,
    /// Scheduling weight, 1..=1000 (default 100).
    pub weight: u32,
    /// Initial ramdisk path (bzimage and multiboot only).
    pub initrd: Option<String>,
    /// Restarts allowed before the guest stays stopped (default 3).
    pub max_restarts: u32,
    /// Seconds of guest time a vCPU may run with interrupts disabled and no
    /// exit but the preemption timer before the guest counts as hung; 0 (the
    /// default) never: a decompressor or a long computation is legitimate.
    pub irqoff_timeout_s: u32,
    /// What a guest access to guest-physical memory with neither RAM nor a
    /// device behind it does (default: as on a PC, reads all-ones, writes dropped).
    pub unmapped_access: UnmappedAccess,
    /// The `[[guest.disk]]` tables after this guest, in order (may be empty).
    pub disks: Vec<DiskConfig>,
    /// The `[[guest.nic]]` tables after this guest, in order (may be empty).
    pub nics: Vec<NicConfig>,
    /// `snapshot = "x.snap"`: a snapshot file in `\hv\` the guest starts
    /// (and restarts) from instead of its loader's start state; the core
    /// checks it fits this guest (vCPUs, memory, devices, disks) at start-up.
    pub snapshot: Option<String>,
    /// Line of the `snapshot` key (0 without one).
    pub snapshot_line: u32,
    /// Line of the `[[guest]]` header.
    pub line: u32,
}

/// Guest image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// `kind = "elf64"`.
    Elf64,
    /// `kind = "flat"`: raw bytes copied to `load`, started at `entry`.
    Flat {
        load: u64,
        entry: u64,
        mode: EntryMode,
    },
    /// `kind = "bzimage"`: Linux boot protocol.
    BzImage,
    /// `kind = "multiboot"`.
    Multiboot,
}

/// CPU mode a flat image starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// `mode = "real16"`.
    Real16,
    /// `mode = "prot32"`.
    Prot32,
    /// `mode = "long64"`.
    Long64,
}

/// `unmapped_access`: accesses outside RAM and devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmappedAccess {
    /// `"ignore"`: reads return all-ones, writes are dropped (counted, logged once a page).
    Ignore,
    /// `"stop"`: the guest is stopped (on_crash applies).
    Stop,
}

/// What to do when a guest ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `"stop"`.
    Stop,
    /// `"restart"`.
    Restart,
    /// `"rollback"` (on_crash only): back to the guest's latest snapshot.
    Rollback,
}

/// A manifest problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file name given to [`parse`].
    pub file: String,
    /// 1-based line number.
    pub line: u32,
    /// The key concerned, when there is one.
    pub field: Option<String>,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// What is wrong with a manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a comment, table header or `key = value`.
    InvalidLine { text: String },
    /// A key with characters outside `A-Z a-z 0-9 _ -` (quoted and dotted
    /// keys are not supported).
    InvalidKey { key: String },
    /// Nothing after `=`.
    MissingValue,
    /// A string without its closing quote.
    UnterminatedString,
    /// A backslash escape other than `\"` `\\` `\n` `\t`.
    BadEscape { escape: char },
    /// Malformed integer.
    InvalidInteger { text: String },
    /// A TOML value kind this subset lacks, or a bare word.
    UnsupportedValue { text: String },
    /// Text after the value that is not a comment.
    TrailingCharacters { text: String },
    /// A table other than `[hypervisor]` / `[[guest]]`.
    UnknownTable { name: String },
    /// `[guest]` or `[[hypervisor]]`.
    WrongTableForm { name: String, write: &'static str },
    /// `[hypervisor]` twice.
    DuplicateTable { name: String, first_line: u32 },
    /// `key = value` before any table header.
    KeyOutsideTable,
    /// A key the table does not have.
    UnknownKey { table: &'static str },
    /// The same key twice in one table.
    DuplicateKey { first_line: u32 },
    /// A required key is absent from the table starting on this line.
    MissingKey { table: &'static str },
    /// The value has the wrong type or form.
    Expected { what: &'static str, got: String },
    /// The value is outside the allowed range.
    OutOfRange { got: String, allowed: &'static str },
    /// The value is not a multiple of the required unit.
    NotMultiple { got: String, of: &'static str },
    /// Not a valid guest name.
    BadName { got: String },
    /// Two guests with the same name.
    DuplicateGuest { name: String, first_line: u32 },
    /// The key does not apply to this image kind.
    NotForKind {
        kind: &'static str,
        valid_for: &'static str,
    },
    /// `[[guest.disk]]` or `[[guest.nic]]` before any `[[guest]]`.
    NoParentGuest { name: String },
    /// More `[[guest.disk]]` or `[[guest.nic]]` tables than a guest may have.
    TooMany { table: &'static str, max: usize },
    /// Two networks with the same name.
    DuplicateNetwork { name: String, first_line: u32 },
    /// A NIC names a network no `[[network]]` declares.
    UnknownNetwork { name: String },
    /// `uplink` names no host NIC there can be.
    UnknownUplink { got: String },
    /// Two networks name the same uplink.
    UplinkTaken { nic: String, first_line: u32 },
    /// Not a MAC address written `xx:xx:xx:xx:xx:xx`.
    BadMac { got: String },
    /// A MAC with the multicast bit set, or all zeros.
    MacNotUnicast { got: String },
    /// Two NICs with the same MAC (written or derived).
    DuplicateMac { mac: String, first_line: u32 },
    /// A disk serial longer than [`SERIAL_MAX`] bytes or not printable ASCII.
    BadSerial { got: String },
    /// Two disks of one guest with the same serial.
    DuplicateSerial { serial: String, first_line: u32 },
    /// Two keys that exclude each other (the other one is named).
    Conflicts { with: &'static str },
    /// A file the manifest names is not there (from [`validate_files`]).
    MissingFile { path: String },
    /// An `nbd` value that is not `nbd://A.B.C.D[:PORT][/EXPORT]`.
    BadNbd { got: String, why: &'static str },
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::InvalidLine { text } => write!(
                f,
                "expected `key = value`, `[table]` or `[[table]]`, got `{text}`"
            ),
            ErrorKind::InvalidKey { key } => write!(
                f,
                "invalid key `{key}` (keys are A-Z a-z 0-9 _ - without quotes or dots)"
            ),
            ErrorKind::MissingValue => f.write_str("missing value after `=`"),
            ErrorKind::UnterminatedString => f.write_str("string has no closing quote"),
            ErrorKind::BadEscape { escape } => {
                write!(f, "unsupported escape `\\{escape}` (use \\\" \\\\ \\n \\t)")
            }
            ErrorKind::InvalidInteger { text } => write!(f, "invalid integer `{text}`"),
            ErrorKind::UnsupportedValue { text } => write!(
                f,
                "unsupported value `{text}` (expected a \"string\", an integer or true/false)"
            ),
            ErrorKind::TrailingCharacters { text } => {
                write!(f, "unexpected `{text}` after the value")
            }
            ErrorKind::UnknownTable { name } => write!(
                f,
                "unknown table `{name}` (expected [hypervisor], [[guest]], [[guest.disk]], \
                 [[guest.nic]] or [[network]])"
            ),
            ErrorKind::WrongTableForm { name, write } => {
                write!(f, "table `{name}` must be written {write}")
            }
            ErrorKind::DuplicateTable { name, first_line } => {
                write!(f, "table [{name}] already defined at line {first_line}")
            }
            ErrorKind::KeyOutsideTable => {
                f.write_str("key outside any table (put it under [hypervisor] or [[guest]])")
            }
            ErrorKind::UnknownKey { table } => write!(f, "unknown key in {table}"),
            ErrorKind::DuplicateKey { first_line } => {
                write!(f, "duplicate key (first set at line {first_line})")
            }
            ErrorKind::MissingKey { table } => write!(f, "required in {table} but missing"),
            ErrorKind::Expected { what, got } => write!(f, "expected {what}, got {got}"),
            ErrorKind::OutOfRange { got, allowed } => {
                write!(f, "{got} is out of range (allowed: {allowed})")
            }
            ErrorKind::NotMultiple { got, of } => write!(f, "{got} is not a multiple of {of}"),
            ErrorKind::BadName { got } => write!(
                f,
                "{got} is not a valid guest name (1 to 32 characters of A-Z a-z 0-9 _ -)"
            ),
            ErrorKind::DuplicateGuest { name, first_line } => write!(
                f,
                "guest name \"{name}\" already used by the guest at line {first_line}"
            ),
            ErrorKind::NotForKind { kind, valid_for } => {
                write!(f, "not valid for kind \"{kind}\" (only for {valid_for})")
            }
            ErrorKind::NoParentGuest { name } => {
                write!(f, "[[{name}]] must follow the [[guest]] it belongs to")
            }
            ErrorKind::TooMany { table, max } => {
                write!(f, "more than {max} {table} tables in one guest")
            }
            ErrorKind::DuplicateNetwork { name, first_line } => write!(
                f,
                "network name \"{name}\" already used by the network at line {first_line}"
            ),
            ErrorKind::UnknownNetwork { name } => {
                write!(f, "no [[network]] is named \"{name}\"")
            }
            ErrorKind::UnknownUplink { got } => write!(
                f,
                "{got} is not a host NIC (the uplink is \"nic0\", the first supported NIC)"
            ),
            ErrorKind::UplinkTaken { nic, first_line } => write!(
                f,
                "uplink \"{nic}\" is already the uplink of the network at line {first_line}"
            ),
            ErrorKind::BadMac { got } => write!(
                f,
                "{got} is not a MAC address (six hex bytes: \"52:54:00:12:34:56\")"
            ),
            ErrorKind::MacNotUnicast { got } => write!(
                f,
                "{got} is not a unicast MAC address (multicast bit set, or all zeros)"
            ),
            ErrorKind::DuplicateMac { mac, first_line } => {
                write!(f, "MAC {mac} already used by the NIC at line {first_line}")
            }
            ErrorKind::BadSerial { got } => write!(
                f,
                "{got} is not a disk serial (at most {SERIAL_MAX} printable ASCII bytes)"
            ),
            ErrorKind::DuplicateSerial { serial, first_line } => write!(
                f,
                "serial \"{serial}\" already used by this guest's disk at line {first_line}"
            ),
            ErrorKind::Conflicts { with } => write!(f, "cannot be used with {with}"),
            ErrorKind::MissingFile { path } => write!(f, "file \"{path}\" not found"),
            ErrorKind::BadNbd { got, why } => write!(
                f,
                "{got} is not an NBD server (nbd://A.B.C.D[:PORT][/EXPORT]): {why}"
            ),
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(field) = &self.field {
            write!(f, "field '{field}': ")?;
        }
        write!(f, "{}", self.kind)
    }
}

// ---------------------------------------------------------------------------
// Lexing one line
// ---------------------------------------------------------------------------

/// A scalar value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(i128),
    Bool(bool),
}

impl Value {
    /// The value as it would be written in TOML, for messages.
    fn render(&self) -> String {
        match self {
            Value::Str(s) => {
                let mut out = String::from("\"");
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        c => out.push(c),
                    }
                }
                out.push('"');
                out
            }
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
        }
    }
}

enum Line<'a> {
    Blank,
    Table(&'a str),
    ArrayTable(&'a str),
    KeyValue(&'a str, Value),
}

/// A lexing error: the key it concerns (if known) and what.
type LexError = (Option<String>, ErrorKind);

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// What follows a value or header must be blank or a comment.
fn expect_end(rest: &str) -> Result<(), ErrorKind> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(ErrorKind::TrailingCharacters {
            text: rest.to_string(),
        })
    }
}

fn lex_line(raw: &str) -> Result<Line<'_>, LexError> {
    let s = raw.trim();
    if s.is_empty() || s.starts_with('#') {
        return Ok(Line::Blank);
    }
    if let Some(inner) = s.strip_prefix("[[") {
        let (name, tail) = inner.split_once("]]").ok_or_else(|| invalid_line(s))?;
        expect_end(tail).map_err(|k| (None, k))?;
        return Ok(Line::ArrayTable(name.trim()));
    }
    if let Some(inner) = s.strip_prefix('[') {
        let (name, tail) = inner.split_once(']').ok_or_else(|| invalid_line(s))?;
        expect_end(tail).map_err(|k| (None, k))?;
        return Ok(Line::Table(name.trim()));
    }
    let (key, rest) = s.split_once('=').ok_or_else(|| invalid_line(s))?;
    let key = key.trim_end();
    if key.is_empty() {
        return Err(invalid_line(s));
    }
    if !key.chars().all(is_key_char) {
        return Err((
            None,
            ErrorKind::InvalidKey {
                key: key.to_string(),
            },
        ));
    }
    let field = || Some(key.to_string());
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        return Err((field(), ErrorKind::MissingValue));
    }
    let (value, after) = lex_value(rest).map_err(|k| (field(), k))?;
    expect_end(after).map_err(|k| (field(), k))?;
    Ok(Line::KeyValue(key, value))
}

fn invalid_line(s: &str) -> LexError {
    (
        None,
        ErrorKind::InvalidLine {
            text: s.to_string(),
        },
    )
}

/// Lexes a value at the start of `s`; returns it and the rest of the line.
fn lex_value(s: &str) -> Result<(Value, &str), ErrorKind> {
    if let Some(body) = s.strip_prefix('"') {
        return lex_string(body);
    }
    // Everything else runs to whitespace or a comment.
    let end = s
        .find(|c: char| c.is_whitespace() || c == '#')
        .unwrap_or(s.len());
    let (tok, rest) = s.split_at(end);
    match tok {
        "true" => return Ok((Value::Bool(true), rest)),
        "false" => return Ok((Value::Bool(false), rest)),
        _ => {}
    }
    let first = tok.chars().next().unwrap_or(' ');
    if first.is_ascii_digit() || first == '+' || first == '-' {
        return Ok((Value::Int(lex_int(tok)?), rest));
    }
    Err(ErrorKind::UnsupportedValue {
        text: s.trim_end().to_string(),
    })
}

/// Lexes the rest of a basic string after its opening quote (TOML basic
/// strings, restricted to four escapes).
fn lex_string(body: &str) -> Result<(Value, &str), ErrorKind> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((_, c)) = chars.next() {
        match c {
            '"' => return Ok((Value::Str(out), chars.as_str())),
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, e)) => return Err(ErrorKind::BadEscape { escape: e }),
                None => return Err(ErrorKind::UnterminatedString),
            },
            c => out.push(c),
        }
    }
    Err(ErrorKind::UnterminatedString)
}

/// Parses digits with `_` allowed only between two digits (TOML 1.0
/// integers).
fn parse_digits(digits: &str, radix: u32) -> Option<u128> {
    let bytes = digits.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let digit_at = |j: Option<usize>| {
                j.and_then(|j| bytes.get(j))
                    .is_some_and(|&d| (d as char).is_digit(radix))
            };
            let ok = digit_at(i.checked_sub(1)) && digit_at(i.checked_add(1));
            if !ok {
                return None;
            }
            continue;
        }
        let d = (b as char).to_digit(radix)?;
        v = v.checked_mul(radix.into())?.checked_add(d.into())?;
        if v > u128::from(u64::MAX) {
            return None;
        }
    }
    Some(v)
}

fn lex_int(tok: &str) -> Result<i128, ErrorKind> {
    let bad = || ErrorKind::InvalidInteger {
        text: tok.to_string(),
    };
    if let Some(hex) = tok.strip_prefix("0x") {
        return parse_digits(hex, 16).map(|v| v as i128).ok_or_else(bad);
    }
    let (neg, digits) = if let Some(d) = tok.strip_prefix('-') {
        (true, d)
    } else if let Some(d) = tok.strip_prefix('+') {
        (false, d)
    } else {
        (false, tok)
    };
    // Leading zeros are not allowed (TOML 1.0), so "010" is not octal.
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(bad());
    }
    let v = parse_digits(digits, 10).ok_or_else(bad)? as i128;
    // v <= u64::MAX: its negation fits i128.
    Ok(if neg {
        v.checked_neg().ok_or_else(bad)?
    } else {
        v
    })
}

// ---------------------------------------------------------------------------
// Value conversion
// ---------------------------------------------------------------------------

fn expected(what: &'static str, v: &Value) -> ErrorKind {
    ErrorKind::Expected {
        what,
        got: v.render(),
    }
}

fn to_str(v: Value) -> Result<String, ErrorKind> {
    match v {
        Value::Str(s) => Ok(s),
        other => Err(expected("a string", &other)),
    }
}

fn to_path(v: Value) -> Result<String, ErrorKind> {
    match v {
        Value::Str(s) if !s.is_empty() => Ok(s),
        other => Err(expected("a non-empty path string", &other)),
    }
}

fn to_bool(v: &Value) -> Result<bool, ErrorKind> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(expected("true or false", other)),
    }
}

fn to_u32(v: &Value, min: u32, max: u32, allowed: &'static str) -> Result<u32, ErrorKind> {
    match v {
        Value::Int(i) if (i128::from(min)..=i128::from(max)).contains(i) => Ok(*i as u32),
        Value::Int(_) => Err(ErrorKind::OutOfRange {
            got: v.render(),
            allowed,
        }),
        other => Err(expected("an integer", other)),
    }
}

fn to_addr(v: &Value) -> Result<u64, ErrorKind> {
    match v {
        Value::Int(i) if (0..=i128::from(u64::MAX)).contains(i) => Ok(*i as u64),
        Value::Int(_) => Err(ErrorKind::OutOfRange {
            got: v.render(),
            allowed: "0 to 0xffff_ffff_ffff_ffff",
        }),
        other => Err(expected("an integer address", other)),
    }
}

const SIZE_WHAT: &str = "a size like \"64M\"";

/// A size: an integer byte count or a string such as "16M".
fn to_size(v: &Value) -> Result<u64, ErrorKind> {
    let too_big = || ErrorKind::OutOfRange {
        got: v.render(),
        allowed: "at most 2^64 - 1 bytes",
    };
    match v {
        Value::Int(i) if *i < 0 => Err(ErrorKind::OutOfRange {
            got: v.render(),
            allowed: "0 or more bytes",
        }),
        Value::Int(i) => u64::try_from(*i).map_err(|_| too_big()),
        Value::Str(s) => {
            let split = s
                .find(|c: char| !c.is_ascii_digit() && c != '_')
                .unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n = parse_digits(num, 10).ok_or_else(|| expected(SIZE_WHAT, v))?;
            let unit = unit.strip_suffix("iB").unwrap_or(unit);
            let mult: u64 = match unit {
                "" if !s.ends_with("iB") => 1,
                "K" | "k" => KIB,
                "M" | "m" => MIB,
                "G" | "g" => GIB,
                "T" | "t" => 1 << 40,
                _ => return Err(expected(SIZE_WHAT, v)),
            };
            u64::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(too_big)
        }
        Value::Bool(_) => Err(expected(SIZE_WHAT, v)),
    }
}

fn to_enum<T: Copy>(v: &Value, options: &[(&str, T)], what: &'static str) -> Result<T, ErrorKind> {
    if let Value::Str(s) = v {
        if let Some((_, t)) = options.iter().find(|(name, _)| name == s) {
            return Ok(*t);
        }
    }
    Err(expected(what, v))
}

fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.chars().all(is_key_char)
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KindTag {
    Elf64,
    Flat,
    BzImage,
    Multiboot,
}

impl KindTag {
    const OPTIONS: [(&'static str, KindTag); 4] = [
        ("elf64", KindTag::Elf64),
        ("flat", KindTag::Flat),
        ("bzimage", KindTag::BzImage),
        ("multiboot", KindTag::Multiboot),
    ];

    fn name(self) -> &'static str {
        match self {
            KindTag::Elf64 => "elf64",
            KindTag::Flat => "flat",
            KindTag::BzImage => "bzimage",
            KindTag::Multiboot => "multiboot",
        }
    }
}

const POLICIES: [(&str, Policy); 2] = [("stop", Policy::Stop), ("restart", Policy::Restart)];
const POLICY_WHAT: &str = "one of \"stop\", \"restart\"";
const CRASH_POLICIES: [(&str, Policy); 3] = [
    ("stop", Policy::Stop),
    ("restart", Policy::Restart),
    ("rollback", Policy::Rollback),
];
const CRASH_POLICY_WHAT: &str = "one of \"stop\", \"restart\", \"rollback\"";
const UNMAPPED: [(&str, UnmappedAccess); 2] = [
    ("ignore", UnmappedAccess::Ignore),
    ("stop", UnmappedAccess::Stop),
];
const UNMAPPED_WHAT: &str = "one of \"ignore\", \"stop\"";
const MODES: [(&str, EntryMode); 3] = [
    ("real16", EntryMode::Real16),
    ("prot32", EntryMode::Prot32),
    ("long64", EntryMode::Long64),
];

/// Tracks which keys a table has set, and where.
#[derive(Default)]
struct Seen(Vec<(&'static str, u32)>);

impl Seen {
    /// Resolves `key` against `known`, rejecting unknown and repeated keys.
    fn claim(
        &mut self,
        key: &str,
        line: u32,
        known: &[&'static str],
        table: &'static str,
    ) -> Result<&'static str, ErrorKind> {
        let k = *known
            .iter()
            .find(|k| **k == key)
            .ok_or(ErrorKind::UnknownKey { table })?;
        if let Some(&(_, first_line)) = self.0.iter().find(|(s, _)| *s == k) {
            return Err(ErrorKind::DuplicateKey { first_line });
        }
        self.0.push((k, line));
        Ok(k)
    }

    fn line_of(&self, key: &str) -> Option<u32> {
        self.0.iter().find(|(k, _)| *k == key).map(|&(_, l)| l)
    }
}

const HV_TABLE: &str = "[hypervisor]";
const HV_KEYS: [&str; 6] = [
    "poweroff_when_done",
    "timeslice_us",
    "address",
    "gateway",
    "api_port",
    "api_token",
];

const GUEST_TABLE: &str = "[[guest]]";
const GUEST_KEYS: [&str; 17] = [
    "name",
    "memory",
    "vcpus",
    "image",
    "kind",
    "cmdline",
    "on_exit",
    "on_crash",
    "weight",
    "initrd",
    "max_restarts",
    "irqoff_timeout_s",
    "unmapped_access",
    "load",
    "entry",
    "mode",
    "snapshot",
];

fn set_hv(
    hv: &mut HvConfig,
    seen: &mut Seen,
    key: &str,
    v: Value,
    line: u32,
) -> Result<(), ErrorKind> {
    match seen.claim(key, line, &HV_KEYS, HV_TABLE)? {
        "poweroff_when_done" => hv.poweroff_when_done = to_bool(&v)?,
        "address" => {
            let what = "an IPv4 address with its prefix length, like \"10.0.2.15/24\"";
            match &v {
                Value::Str(t) => {
                    hv.address = Some(parse_ipv4_prefix(t).ok_or_else(|| expected(what, &v))?)
                }
                _ => return Err(expected(what, &v)),
            }
        }
        "gateway" => {
            let what = "an IPv4 address, like \"10.0.2.2\"";
            match &v {
                Value::Str(t) => {
                    hv.gateway = Some(parse_ipv4(t).ok_or_else(|| expected(what, &v))?)
                }
                _ => return Err(expected(what, &v)),
            }
        }
        "api_port" => hv.api_port = Some(to_u32(&v, 1, 65535, "1 to 65535")? as u16),
        "api_token" => {
            const WHAT: &str =
                "a bearer token of 16 to 128 bytes of A-Z a-z 0-9 - . _ ~ + / (then = only)";
            match v {
                Value::Str(t) if valid_api_token(&t) => hv.api_token = Some(t),
                // The value is a secret: the message says what is wrong, not what it is.
                Value::Str(t) => {
                    return Err(ErrorKind::Expected {
                        what: WHAT,
                        got: alloc::format!("a string of {} bytes that is not one", t.len()),
                    })
                }
                other => return Err(expected(WHAT, &other)),
            }
        }
        _ => hv.timeslice_us = to_u32(&v, 1, 1_000_000, "1 to 1000000 microseconds")?,
    }
    Ok(())
}

const NET_TABLE: &str = "[[network]]";
const NET_KEYS: [&str; 3] = ["name", "anti_spoofing", "uplink"];
const DISK_TABLE: &str = "[[guest.disk]]";
const DISK_KEYS: [&str; 5] = ["image", "nbd", "read_only", "serial", "keep_overlay"];
const NIC_TABLE: &str = "[[guest.nic]]";
const NIC_KEYS: [&str; 2] = ["network", "mac"];

/// Errors from finishing a table: (line, field, kind).
type FinishError = (u32, &'static str, ErrorKind);

/// A `[[network]]` table being read.
struct NetworkBuilder {
    line: u32,
    seen: Seen,
    name: Option<String>,
    anti_spoofing: bool,
    uplink: Option<String>,
}

impl NetworkBuilder {
    fn new(line: u32) -> Self {
        Self {
            line,
            seen: Seen::default(),
            name: None,
            anti_spoofing: true,
            uplink: None,
        }
    }

    fn set(&mut self, key: &str, v: Value, line: u32) -> Result<(), ErrorKind> {
        match self.seen.claim(key, line, &NET_KEYS, NET_TABLE)? {
            "name" => {
                let s = to_str(v)?;
                if !valid_name(&s) {
                    return Err(ErrorKind::BadName {
                        got: Value::Str(s).render(),
                    });
                }
                self.name = Some(s);
            }
            "uplink" => {
                let s = to_str(v)?;
                if !UPLINK_NICS.contains(&s.as_str()) {
                    return Err(ErrorKind::UnknownUplink {
                        got: Value::Str(s).render(),
                    });
                }
                self.uplink = Some(s);
            }
            _ => self.anti_spoofing = to_bool(&v)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<NetworkConfig, FinishError> {
        let name = self.name.ok_or((
            self.line,
            "name",
            ErrorKind::MissingKey { table: NET_TABLE },
        ))?;
        Ok(NetworkConfig {
            name,
            anti_spoofing: self.anti_spoofing,
            uplink: self.uplink,
            line: self.line,
        })
    }
}

fn valid_serial(s: &str) -> bool {
    s.len() <= SERIAL_MAX && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A `[[guest.disk]]` table being read.
struct DiskBuilder {
    line: u32,
    seen: Seen,
    image: Option<String>,
    nbd: Option<NbdTarget>,
    read_only: bool,
    serial: Option<String>,
    keep_overlay: bool,
}

impl DiskBuilder {
    fn set(&mut self, key: &str, v: Value, line: u32) -> Result<(), ErrorKind> {
        match self.seen.claim(key, line, &DISK_KEYS, DISK_TABLE)? {
            "image" => self.image = Some(to_path(v)?),
            "nbd" => {
                let s = to_str(v)?;
                let t = NbdTarget::parse(&s).map_err(|why| ErrorKind::BadNbd {
                    got: Value::Str(s.clone()).render(),
                    why,
                })?;
                self.nbd = Some(t);
            }
            "read_only" => self.read_only = to_bool(&v)?,
            "serial" => {
                let s = to_str(v)?;
                if !valid_serial(&s) {
                    return Err(ErrorKind::BadSerial {
                        got: Value::Str(s).render(),
                    });
                }
                self.serial = Some(s);
            }
            _ => self.keep_overlay = to_bool(&v)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<DiskConfig, FinishError> {
        let line_of = |key| self.seen.line_of(key).unwrap_or(self.line);
        if self.nbd.is_some() {
            let with = if self.image.is_some() {
                Some(("image", "nbd (a disk is an image file or an NBD export)"))
            } else if self.keep_overlay {
                Some((
                    "keep_overlay",
                    "nbd (an NBD disk has no overlay: its writes go to the server)",
                ))
            } else {
                None
            };
            if let Some((key, with)) = with {
                return Err((line_of(key), key, ErrorKind::Conflicts { with }));
            }
        }
        let image = match (&self.image, &self.nbd) {
            (Some(i), _) => i.clone(),
            (None, Some(_)) => String::new(),
            (None, None) => {
                return Err((
                    self.line,
                    "image",
                    ErrorKind::MissingKey { table: DISK_TABLE },
                ))
            }
        };
        if self.read_only && self.keep_overlay {
            let kind = ErrorKind::Conflicts {
                with: "read_only = true (a read-only disk has no overlay)",
            };
            return Err((line_of("keep_overlay"), "keep_overlay", kind));
        }
        let image_line = line_of(if self.nbd.is_some() { "nbd" } else { "image" });
        Ok(DiskConfig {
            image,
            nbd: self.nbd,
            read_only: self.read_only,
            serial: self.serial,
            keep_overlay: self.keep_overlay,
            line: self.line,
            image_line,
        })
    }
}

/// A `[[guest.nic]]` table as read; its MAC is derived when the guest ends.
struct NicBuilder {
    line: u32,
    seen: Seen,
    network: Option<String>,
    mac: Option<MacAddr>,
}

impl NicBuilder {
    fn set(&mut self, key: &str, v: Value, line: u32) -> Result<(), ErrorKind> {
        match self.seen.claim(key, line, &NIC_KEYS, NIC_TABLE)? {
            "network" => {
                let s = to_str(v)?;
                if !valid_name(&s) {
                    return Err(ErrorKind::BadName {
                        got: Value::Str(s).render(),
                    });
                }
                self.network = Some(s);
            }
            _ => {
                let bad = |v: &Value| ErrorKind::BadMac { got: v.render() };
                let mac = match &v {
                    Value::Str(s) => MacAddr::parse(s).ok_or_else(|| bad(&v))?,
                    _ => return Err(bad(&v)),
                };
                if mac.is_multicast() || mac.0 == [0; 6] {
                    return Err(ErrorKind::MacNotUnicast { got: v.render() });
                }
                self.mac = Some(mac);
            }
        }
        Ok(())
    }
}

/// A `[[guest.disk]]` or `[[guest.nic]]` table being read.
enum SubTable {
    Disk(DiskBuilder),
    Nic(NicBuilder),
}

impl SubTable {
    fn new(disk: bool, line: u32) -> Self {
        if disk {
            SubTable::Disk(DiskBuilder {
                line,
                seen: Seen::default(),
                image: None,
                nbd: None,
                read_only: false,
                serial: None,
                keep_overlay: false,
            })
        } else {
            SubTable::Nic(NicBuilder {
                line,
                seen: Seen::default(),
                network: None,
                mac: None,
            })
        }
    }

    fn set(&mut self, key: &str, v: Value, line: u32) -> Result<(), ErrorKind> {
        match self {
            SubTable::Disk(d) => d.set(key, v, line),
            SubTable::Nic(n) => n.set(key, v, line),
        }
    }

    /// Checks the table and adds it to `guest` (the last `[[guest]]`).
    fn finish_into(self, guest: &mut GuestConfig) -> Result<(), FinishError> {
        match self {
            SubTable::Disk(d) => {
                let serial_line = d.seen.line_of("serial").unwrap_or(d.line);
                let disk = d.finish()?;
                if let Some(serial) = &disk.serial {
                    let first = guest
                        .disks
                        .iter()
                        .find(|o| o.serial.as_ref() == Some(serial));
                    if let Some(first) = first {
                        let kind = ErrorKind::DuplicateSerial {
                            serial: serial.clone(),
                            first_line: first.line,
                        };
                        return Err((serial_line, "serial", kind));
                    }
                }
                guest.disks.push(disk);
            }
            SubTable::Nic(n) => {
                let network = n.network.ok_or((
                    n.line,
                    "network",
                    ErrorKind::MissingKey { table: NIC_TABLE },
                ))?;
                let (mac, mac_source) = match n.mac {
                    Some(mac) => (mac, MacSource::Manifest),
                    None => {
                        let index = u32::try_from(guest.nics.len()).unwrap_or(u32::MAX);
                        (derive_mac(&guest.name, index), MacSource::Derived)
                    }
                };
                guest.nics.push(NicConfig {
                    network,
                    mac,
                    mac_source,
                    line: n.line,
                    network_line: n.seen.line_of("network").unwrap_or(n.line),
                    mac_line: n.seen.line_of("mac").unwrap_or(n.line),
                });
            }
        }
        Ok(())
    }
}

/// A `[[guest]]` table being read.
struct GuestBuilder {
    line: u32,
    seen: Seen,
    name: Option<String>,
    memory: Option<u64>,
    vcpus: u32,
    image: Option<String>,
    kind: Option<KindTag>,
    cmdline: String,
    on_exit: Policy,
    on_crash: Policy,
    weight: u32,
    initrd: Option<String>,
    max_restarts: u32,
    irqoff_timeout_s: u32,
    unmapped_access: UnmappedAccess,
    load: Option<u64>,
    entry: Option<u64>,
    mode: Option<EntryMode>,
    snapshot: Option<String>,
}

impl GuestBuilder {
    fn new(line: u32) -> Self {
        Self {
            line,
            seen: Seen::default(),
            name: None,
            memory: None,
            vcpus: 1,
            image: None,
            kind: None,
            cmdline: String::new(),
            on_exit: Policy::Stop,
            on_crash: Policy::Stop,
            weight: 100,
            initrd: None,
            max_restarts: 3,
            irqoff_timeout_s: 0,
            unmapped_access: UnmappedAccess::Ignore,
            load: None,
            entry: None,
            mode: None,
            snapshot: None,
        }
    }

    fn set(&mut self, key: &str, v: Value, line: u32) -> Result<(), ErrorKind> {
        match self.seen.claim(key, line, &GUEST_KEYS, GUEST_TABLE)? {
            "name" => {
                let s = to_str(v)?;
                if !valid_name(&s) {
                    return Err(ErrorKind::BadName {
                        got: Value::Str(s).render(),
                    });
                }
                self.name = Some(s);
            }
            "memory" => {
                let m = to_size(&v)?;
                if !(MIB..=64 * GIB).contains(&m) {
                    return Err(ErrorKind::OutOfRange {
                        got: v.render(),
                        allowed: "1M to 64G",
                    });
                }
                if !m.is_multiple_of(MIB) {
                    return Err(ErrorKind::NotMultiple {
                        got: v.render(),
                        of: "1M",
                    });
                }
                self.memory = Some(m);
            }
            "vcpus" => self.vcpus = to_u32(&v, 1, 64, "1 to 64")?,
            "image" => self.image = Some(to_path(v)?),
            "kind" => {
                let what = "one of \"elf64\", \"flat\", \"bzimage\", \"multiboot\"";
                self.kind = Some(to_enum(&v, &KindTag::OPTIONS, what)?);
            }
            "cmdline" => self.cmdline = to_str(v)?,
            "on_exit" => self.on_exit = to_enum(&v, &POLICIES, POLICY_WHAT)?,
            "on_crash" => self.on_crash = to_enum(&v, &CRASH_POLICIES, CRASH_POLICY_WHAT)?,
            "weight" => self.weight = to_u32(&v, 1, 1000, "1 to 1000")?,
            "initrd" => self.initrd = Some(to_path(v)?),
            "max_restarts" => self.max_restarts = to_u32(&v, 0, u32::MAX, "0 to 4294967295")?,
            "irqoff_timeout_s" => self.irqoff_timeout_s = to_u32(&v, 0, 3600, "0 to 3600 seconds")?,
            "unmapped_access" => self.unmapped_access = to_enum(&v, &UNMAPPED, UNMAPPED_WHAT)?,
            "load" => self.load = Some(to_addr(&v)?),
            "entry" => self.entry = Some(to_addr(&v)?),
            "snapshot" => self.snapshot = Some(to_path(v)?),
            _ => {
                let what = "one of \"real16\", \"prot32\", \"long64\"";
                self.mode = Some(to_enum(&v, &MODES, what)?);
            }
        }
        Ok(())
    }

    /// Cross-key checks; errors are (line, field, kind).
    fn finish(self) -> Result<GuestConfig, FinishError> {
        let missing = |key| (self.line, key, ErrorKind::MissingKey { table: GUEST_TABLE });
        let name = self.name.clone().ok_or_else(|| missing("name"))?;
        let memory = self.memory.ok_or_else(|| missing("memory"))?;
        let image = self.image.clone().ok_or_else(|| missing("image"))?;
        let tag = self.kind.ok_or_else(|| missing("kind"))?;
        let line_of = |key| self.seen.line_of(key).unwrap_or(self.line);

        if tag != KindTag::Flat {
            for key in ["load", "entry", "mode"] {
                if self.seen.line_of(key).is_some() {
                    let kind = ErrorKind::NotForKind {
                        kind: tag.name(),
                        valid_for: "kind \"flat\"",
                    };
                    return Err((line_of(key), key, kind));
                }
            }
        }
        if self.initrd.is_some() && !matches!(tag, KindTag::BzImage | KindTag::Multiboot) {
            let kind = ErrorKind::NotForKind {
                kind: tag.name(),
                valid_for: "kind \"bzimage\" or \"multiboot\"",
            };
            return Err((line_of("initrd"), "initrd", kind));
        }
        let kind = match tag {
            KindTag::Elf64 => ImageKind::Elf64,
            KindTag::BzImage => ImageKind::BzImage,
            KindTag::Multiboot => ImageKind::Multiboot,
            KindTag::Flat => {
                let load = self.load.ok_or_else(|| missing("load"))?;
                let mode = self.mode.ok_or_else(|| missing("mode"))?;
                let entry = self.entry.unwrap_or(load);
                // Real mode reaches only the first 1 MiB, 32-bit mode 4 GiB.
                let mode_limit = match mode {
                    EntryMode::Real16 => Some((MIB, "below 0x100000 for mode \"real16\"")),
                    EntryMode::Prot32 => Some((4 * GIB, "below 0x1_0000_0000 for mode \"prot32\"")),
                    EntryMode::Long64 => None,
                };
                let ram = Some((memory, "inside guest memory"));
                for (key, value) in [("load", load), ("entry", entry)] {
                    for (limit, allowed) in [mode_limit, ram].into_iter().flatten() {
                        if value >= limit {
                            let got = format!("{value:#x}");
                            let kind = ErrorKind::OutOfRange { got, allowed };
                            return Err((line_of(key), key, kind));
                        }
                    }
                }
                ImageKind::Flat { load, entry, mode }
            }
        };
        Ok(GuestConfig {
            name,
            memory,
            vcpus: self.vcpus,
            image,
            kind,
            cmdline: self.cmdline,
            on_exit: self.on_exit,
            on_crash: self.on_crash,
            weight: self.weight,
            initrd: self.initrd,
            max_restarts: self.max_restarts,
            irqoff_timeout_s: self.irqoff_timeout_s,
            unmapped_access: self.unmapped_access,
            disks: Vec::new(),
            nics: Vec::new(),
            snapshot_line: self.seen.line_of("snapshot").unwrap_or(0),
            snapshot: self.snapshot,
            line: self.line,
        })
    }
}

enum Section {
    Top,
    Hypervisor,
    Guest(GuestBuilder),
    Network(NetworkBuilder),
    /// A `[[guest.disk]]` or `[[guest.nic]]` of the last guest in `guests`.
    Sub(SubTable),
}

struct Parser<'f> {
    file: &'f str,
    hv: HvConfig,
    hv_seen: Seen,
    hv_line: Option<u32>,
    guests: Vec<GuestConfig>,
    networks: Vec<NetworkConfig>,
    section: Section,
}

impl Parser<'_> {
    fn err(&self, line: u32, field: Option<&str>, kind: ErrorKind) -> ManifestError {
        ManifestError {
            file: self.file.to_string(),
            line,
            field: field.map(str::to_string),
            kind,
        }
    }

    /// Ends the current table, validating a finished guest or network.
    fn close_section(&mut self) -> Result<(), ManifestError> {
        let g = match core::mem::replace(&mut self.section, Section::Top) {
            Section::Guest(g) => g,
            Section::Network(n) => {
                let name_line = n.seen.line_of("name");
                let uplink_line = n.seen.line_of("uplink");
                let net = n
                    .finish()
                    .map_err(|(line, field, kind)| self.err(line, Some(field), kind))?;
                if let Some(first) = self.networks.iter().find(|o| o.name == net.name) {
                    let kind = ErrorKind::DuplicateNetwork {
                        name: net.name.clone(),
                        first_line: first.line,
                    };
                    return Err(self.err(name_line.unwrap_or(net.line), Some("name"), kind));
                }
                if let Some(nic) = &net.uplink {
                    if let Some(first) = self
                        .networks
                        .iter()
                        .find(|o| o.uplink.as_ref() == Some(nic))
                    {
                        let kind = ErrorKind::UplinkTaken {
                            nic: nic.clone(),
                            first_line: first.line,
                        };
                        return Err(self.err(
                            uplink_line.unwrap_or(net.line),
                            Some("uplink"),
                            kind,
                        ));
                    }
                }
                self.networks.push(net);
                return Ok(());
            }
            Section::Sub(sub) => {
                // A guest's keys end at its first sub-table, so the guest
                // was finished (and checked) when that table began.
                let r = match self.guests.last_mut() {
                    Some(guest) => sub.finish_into(guest),
                    None => Ok(()),
                };
                return r.map_err(|(line, field, kind)| self.err(line, Some(field), kind));
            }
            Section::Top | Section::Hypervisor => return Ok(()),
        };
        let name_line = g.seen.line_of("name");
        let guest = g
            .finish()
            .map_err(|(line, field, kind)| self.err(line, Some(field), kind))?;
        if let Some(first) = self.guests.iter().find(|o| o.name == guest.name) {
            let kind = ErrorKind::DuplicateGuest {
                name: guest.name.clone(),
                first_line: first.line,
            };
            return Err(self.err(name_line.unwrap_or(guest.line), Some("name"), kind));
        }
        self.guests.push(guest);
        Ok(())
    }

    /// Starts `[[guest.disk]]` (`disk`) or `[[guest.nic]]`: as in TOML, it
    /// belongs to the last `[[guest]]` defined, whatever tables came between.
    fn open_sub(&mut self, disk: bool, line: u32) -> Result<(), ManifestError> {
        self.close_section()?;
        let Some(guest) = self.guests.last() else {
            let name = String::from(if disk { "guest.disk" } else { "guest.nic" });
            return Err(self.err(line, None, ErrorKind::NoParentGuest { name }));
        };
        let (count, max, table) = if disk {
            (guest.disks.len(), MAX_DISKS, DISK_TABLE)
        } else {
            (guest.nics.len(), MAX_NICS, NIC_TABLE)
        };
        if count >= max {
            return Err(self.err(line, None, ErrorKind::TooMany { table, max }));
        }
        self.section = Section::Sub(SubTable::new(disk, line));
        Ok(())
    }

    fn open_table(&mut self, name: &str, line: u32, array: bool) -> Result<(), ManifestError> {
        // `[[ guest . disk ]]` is `[[guest.disk]]` in TOML.
        let parts: Vec<&str> = name.split('.').map(str::trim).collect();
        let name = parts.join(".");
        let name = name.as_str();
        match (name, array) {
            ("guest.disk", true) => return self.open_sub(true, line),
            ("guest.nic", true) => return self.open_sub(false, line),
            _ => {}
        }
        self.close_section()?;
        let kind = match (name, array) {
            ("hypervisor", false) => {
                if let Some(first_line) = self.hv_line {
                    let name = name.to_string();
                    return Err(self.err(
                        line,
                        None,
                        ErrorKind::DuplicateTable { name, first_line },
                    ));
                }
                self.hv_line = Some(line);
                self.section = Section::Hypervisor;
                return Ok(());
            }
            ("guest", true) => {
                self.section = Section::Guest(GuestBuilder::new(line));
                return Ok(());
            }
            ("network", true) => {
                self.section = Section::Network(NetworkBuilder::new(line));
                return Ok(());
            }
            ("network", false) => ErrorKind::WrongTableForm {
                name: name.to_string(),
                write: "[[network]]",
            },
            ("guest.disk", false) => ErrorKind::WrongTableForm {
                name: name.to_string(),
                write: "[[guest.disk]]",
            },
            ("guest.nic", false) => ErrorKind::WrongTableForm {
                name: name.to_string(),
                write: "[[guest.nic]]",
            },
            ("hypervisor", true) => ErrorKind::WrongTableForm {
                name: name.to_string(),
                write: "[hypervisor]",
            },
            ("guest", false) => ErrorKind::WrongTableForm {
                name: name.to_string(),
                write: "[[guest]]",
            },
            _ => ErrorKind::UnknownTable {
                name: name.to_string(),
            },
        };
        Err(self.err(line, None, kind))
    }

    fn set(&mut self, key: &str, v: Value, line: u32) -> Result<(), ManifestError> {
        let r = match &mut self.section {
            Section::Top => Err(ErrorKind::KeyOutsideTable),
            Section::Hypervisor => set_hv(&mut self.hv, &mut self.hv_seen, key, v, line),
            Section::Guest(g) => g.set(key, v, line),
            Section::Network(n) => n.set(key, v, line),
            Section::Sub(sub) => sub.set(key, v, line),
        };
        r.map_err(|kind| self.err(line, Some(key), kind))
    }
}

/// Parses a manifest. `file` only names the source in errors.
pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
    let mut p = Parser {
        file,
        hv: HvConfig::default(),
        hv_seen: Seen::default(),
        hv_line: None,
        guests: Vec::new(),
        networks: Vec::new(),
        section: Section::Top,
    };
    for (i, raw) in text.lines().enumerate() {
        let line = u32::try_from(i.saturating_add(1)).unwrap_or(u32::MAX);
        let lexed = lex_line(raw).map_err(|(field, kind)| p.err(line, field.as_deref(), kind))?;
        match lexed {
            Line::Blank => {}
            Line::Table(name) => p.open_table(name, line, false)?,
            Line::ArrayTable(name) => p.open_table(name, line, true)?,
            Line::KeyValue(key, value) => p.set(key, value, line)?,
        }
    }
    p.close_section()?;
    check_nics(&p)?;
    Ok(Manifest {
        hypervisor: p.hv,
        guests: p.guests,
        networks: p.networks,
    })
}

/// Whole-manifest NIC checks (networks may be declared after the guests
/// using them): every network exists, no MAC is used twice.
fn check_nics(p: &Parser<'_>) -> Result<(), ManifestError> {
    let mut macs: Vec<(MacAddr, u32)> = Vec::new();
    for nic in p.guests.iter().flat_map(|g| g.nics.iter()) {
        if !p.networks.iter().any(|n| n.name == nic.network) {
            let kind = ErrorKind::UnknownNetwork {
                name: nic.network.clone(),
            };
            return Err(p.err(nic.network_line, Some("network"), kind));
        }
        if let Some(&(_, first_line)) = macs.iter().find(|(m, _)| *m == nic.mac) {
            let kind = ErrorKind::DuplicateMac {
                mac: nic.mac.to_string(),
                first_line,
            };
            return Err(p.err(nic.mac_line, Some("mac"), kind));
        }
        macs.push((nic.mac, nic.line));
    }
    Ok(())
}

/// Checks the image files a parsed manifest's disks name, given
/// `size_of(path)`: the file's size in bytes, or `None` when it is absent.
/// A disk image must exist and hold a whole number of 512-byte sectors
/// (virtio-blk counts capacity in 512-byte sectors), at least one.
/// `file` names the manifest in errors, as for [`parse`].
pub fn validate_files(
    file: &str,
    manifest: &Manifest,
    size_of: impl Fn(&str) -> Option<u64>,
) -> Result<(), ManifestError> {
    let err = |line, kind| ManifestError {
        file: file.to_string(),
        line,
        field: Some("image".to_string()),
        kind,
    };
    for disk in manifest.guests.iter().flat_map(|g| g.disks.iter()) {
        if disk.nbd.is_some() {
            continue; // its size is the export's, known once connected
        }
        let size = size_of(&disk.image).ok_or_else(|| {
            let path = disk.image.clone();
            err(disk.image_line, ErrorKind::MissingFile { path })
        })?;
        let got = || format!("\"{}\" ({size} bytes)", disk.image);
        if size == 0 {
            let kind = ErrorKind::OutOfRange {
                got: got(),
                allowed: "at least 512 bytes",
            };
            return Err(err(disk.image_line, kind));
        }
        if !size.is_multiple_of(512) {
            let kind = ErrorKind::NotMultiple {
                got: got(),
                of: "512 bytes",
            };
            return Err(err(disk.image_line, kind));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"# ferrovisor guest manifest
[hypervisor]
poweroff_when_done = false   # keep running
timeslice_us = 10_000

[[guest]]
name = "linux-1"
memory = "512M"
vcpus = 2
image = "\\EFI\\guests\\vmlinuz"
kind = "bzimage"
initrd = "initrd.gz"
cmdline = "console=ttyS0 quiet \"x\"\t#not a comment"
on_exit = "stop"
on_crash = "restart"
weight = 200
max_restarts = 0
irqoff_timeout_s = 30
unmapped_access = "stop"

[[guest]]   # minimal flat real-mode guest
name = "rt_0"
memory = 0x20_0000
image = "rt.bin"
kind = "flat"
load = 0x7c00
mode = "real16"

[[guest]]
name = "k64"
memory = "1GiB"
image = "kernel.elf"
kind = "elf64"

[[guest]]
name = "mb"
memory = "64m"
image = "mb.bin"
kind = "multiboot"

[[guest]]
name = "flat64"
memory = "16M"
image = "f.bin"
kind = "flat"
load = 0x100000
entry = 0x100040
mode = "long64"
"#;

    fn err(text: &str) -> ManifestError {
        parse("m.toml", text).unwrap_err()
    }

    /// Asserts the error line, field and kind.
    fn check(text: &str, line: u32, field: Option<&str>, kind: ErrorKind) {
        let e = err(text);
        assert_eq!(
            (e.line, e.field.as_deref(), &e.kind),
            (line, field, &kind),
            "{e}"
        );
    }

    fn guest(extra: &str) -> String {
        format!("[[guest]]\nname = \"g\"\nmemory = \"16M\"\nimage = \"g.elf\"\nkind = \"elf64\"\n{extra}")
    }

    #[test]
    fn a_snapshot_to_start_from_parses_with_its_line() {
        let m = parse("m", &guest("snapshot = \"web.snap\"\n")).unwrap();
        let g = &m.guests[0];
        assert_eq!(g.snapshot.as_deref(), Some("web.snap"));
        assert!(g.snapshot_line > g.line, "{} {}", g.snapshot_line, g.line);
        let e = parse("m", &guest("snapshot = \"\"\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("snapshot"), "{e}");
    }

    #[test]
    fn on_crash_rollback_parses() {
        let m = parse("m", &guest("on_crash = \"rollback\"\n")).unwrap();
        assert_eq!(m.guests[0].on_crash, Policy::Rollback);
        assert_eq!(m.guests[0].on_exit, Policy::Stop);
    }

    #[test]
    fn full_example() {
        let m = parse("hv/manifest.toml", FULL).unwrap();
        assert_eq!(
            m.hypervisor,
            HvConfig {
                poweroff_when_done: false,
                timeslice_us: 10_000,
                ..HvConfig::default()
            }
        );
        assert_eq!(m.guests.len(), 5);
        let g = &m.guests[0];
        assert_eq!(
            *g,
            GuestConfig {
                name: "linux-1".into(),
                memory: 512 * MIB,
                vcpus: 2,
                image: "\\EFI\\guests\\vmlinuz".into(),
                kind: ImageKind::BzImage,
                cmdline: "console=ttyS0 quiet \"x\"\t#not a comment".into(),
                on_exit: Policy::Stop,
                on_crash: Policy::Restart,
                weight: 200,
                initrd: Some("initrd.gz".into()),
                max_restarts: 0,
                irqoff_timeout_s: 30,
                unmapped_access: UnmappedAccess::Stop,
                disks: Vec::new(),
                nics: Vec::new(),
                snapshot: None,
                snapshot_line: 0,
                line: 6,
            }
        );
        let g = &m.guests[1];
        assert_eq!(g.name, "rt_0");
        assert_eq!(g.memory, 2 * MIB);
        assert_eq!(
            g.kind,
            ImageKind::Flat {
                load: 0x7c00,
                entry: 0x7c00,
                mode: EntryMode::Real16
            }
        );
        // Defaults.
        assert_eq!((g.vcpus, g.weight, g.max_restarts), (1, 100, 3));
        assert_eq!((g.on_exit, g.on_crash), (Policy::Stop, Policy::Stop));
        assert_eq!(
            (g.irqoff_timeout_s, g.unmapped_access),
            (0, UnmappedAccess::Ignore)
        );
        assert_eq!((g.cmdline.as_str(), g.initrd.as_ref()), ("", None));
        assert_eq!(g.line, 21);
        assert_eq!(m.guests[2].memory, GIB);
        assert_eq!(m.guests[2].kind, ImageKind::Elf64);
        assert_eq!(m.guests[3].kind, ImageKind::Multiboot);
        assert_eq!(m.guests[3].memory, 64 * MIB);
        assert_eq!(
            m.guests[4].kind,
            ImageKind::Flat {
                load: 0x100000,
                entry: 0x100040,
                mode: EntryMode::Long64
            }
        );
    }

    #[test]
    fn empty_and_comment_only_manifests() {
        for text in ["", "\n\n", "# nothing\n   # here\n", "[hypervisor]\n"] {
            let m = parse("m.toml", text).unwrap();
            assert_eq!(m.hypervisor, HvConfig::default());
            assert!(m.guests.is_empty());
        }
        assert!(HvConfig::default().poweroff_when_done);
        assert_eq!(HvConfig::default().timeslice_us, 5000);
    }

    #[test]
    fn api_port_and_token() {
        let m = parse(
            "m",
            "[hypervisor]\napi_port = 9000\napi_token = \"s3cr3t-t0ken_0123==\"\n",
        )
        .unwrap();
        assert_eq!(m.hypervisor.api_port, Some(9000));
        assert_eq!(
            m.hypervisor.api_token.as_deref(),
            Some("s3cr3t-t0ken_0123==")
        );
        assert_eq!(HvConfig::default().api_token, None);
        for bad in [0, 65536, -1] {
            check(
                &format!("[hypervisor]\napi_port = {bad}\n"),
                2,
                Some("api_port"),
                ErrorKind::OutOfRange {
                    got: format!("{bad}"),
                    allowed: "1 to 65535",
                },
            );
        }
        const WHAT: &str =
            "a bearer token of 16 to 128 bytes of A-Z a-z 0-9 - . _ ~ + / (then = only)";
        for bad in [
            "short",
            "has space in it 0123",
            "=abcdefghijklmnopq",
            "abcdefghijklmnop=q",
            "\u{e9}abcdefghijklmnop",
        ] {
            let e = parse("m", &format!("[hypervisor]\napi_token = \"{bad}\"\n")).unwrap_err();
            assert_eq!(
                (e.line, e.field.as_deref()),
                (2, Some("api_token")),
                "{bad}"
            );
            assert_eq!(
                e.kind,
                ErrorKind::Expected {
                    what: WHAT,
                    got: format!("a string of {} bytes that is not one", bad.len()),
                }
            );
            // The secret is never echoed.
            assert!(!format!("{e}").contains(bad), "{e}");
        }
        check(
            "[hypervisor]\napi_token = 5\n",
            2,
            Some("api_token"),
            ErrorKind::Expected {
                what: WHAT,
                got: "5".into(),
            },
        );
        assert!(valid_api_token(&"a".repeat(128)));
        assert!(!valid_api_token(&"a".repeat(129)));
        assert!(valid_api_token("abcdefghijklmno/+~"));
    }

    #[test]
    fn endpoint_address_and_gateway() {
        let m = parse(
            "m.toml",
            "[hypervisor]\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n",
        )
        .unwrap();
        assert_eq!(
            m.hypervisor.address,
            Some(Ipv4Prefix {
                addr: [10, 0, 2, 15],
                prefix: 24
            })
        );
        assert_eq!(m.hypervisor.gateway, Some([10, 0, 2, 2]));
        assert_eq!(HvConfig::default().address, None);
        for bad in [
            "10.0.2.15",
            "10.0.2.15/0",
            "10.0.2.15/33",
            "10.0.2/24",
            "10.0.2.256/24",
            "10.0.2.015/24",
            "10.0.2.15.1/24",
            "10.0.2.15/",
            "a.b.c.d/8",
            "10.0.2.15/+8",
        ] {
            check(
                &format!("[hypervisor]\naddress = \"{bad}\"\n"),
                2,
                Some("address"),
                ErrorKind::Expected {
                    what: "an IPv4 address with its prefix length, like \"10.0.2.15/24\"",
                    got: format!("\"{bad}\""),
                },
            );
        }
        check(
            "[hypervisor]\ngateway = 10\n",
            2,
            Some("gateway"),
            ErrorKind::Expected {
                what: "an IPv4 address, like \"10.0.2.2\"",
                got: "10".into(),
            },
        );
        assert_eq!(parse_ipv4("0.0.0.0"), Some([0; 4]));
        assert_eq!(parse_ipv4("255.255.255.255"), Some([255; 4]));
        assert_eq!(parse_ipv4("1.2.3.-4"), None);
    }

    #[test]
    fn crlf_line_endings() {
        let m = parse("m.toml", "[[guest]]\r\nname = \"a\"\r\nmemory = 1048576\r\nimage = \"a\"\r\nkind = \"elf64\"\r\n").unwrap();
        assert_eq!(m.guests[0].memory, MIB);
    }

    #[test]
    fn display_format() {
        let e = parse(
            "hv/manifest.toml",
            "# x\n\n[[guest]]\nname = \"a\"\nimage = \"a\"\nkind = \"elf64\"\nmemory = \"lots\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "hv/manifest.toml:7: field 'memory': expected a size like \"64M\", got \"lots\""
        );
        let e = parse("m.toml", "[foo]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.toml:1: unknown table `foo` (expected [hypervisor], [[guest]], [[guest.disk]], \
             [[guest.nic]] or [[network]])"
        );
    }

    #[test]
    fn syntax_errors() {
        check(
            "[hypervisor]\njust words\n",
            2,
            None,
            ErrorKind::InvalidLine {
                text: "just words".into(),
            },
        );
        check(
            "[hypervisor]\n\"quoted\" = 1\n",
            2,
            None,
            ErrorKind::InvalidKey {
                key: "\"quoted\"".into(),
            },
        );
        check(
            "[hypervisor]\na.b = 1\n",
            2,
            None,
            ErrorKind::InvalidKey { key: "a.b".into() },
        );
        check(
            "[hypervisor]\ntimeslice_us 5\n",
            2,
            None,
            ErrorKind::InvalidLine {
                text: "timeslice_us 5".into(),
            },
        );
        check(
            "[hypervisor]\ntimeslice us = 5\n",
            2,
            None,
            ErrorKind::InvalidKey {
                key: "timeslice us".into(),
            },
        );
        check(
            "[hypervisor]\n\ntimeslice_us =   # none\n",
            3,
            Some("timeslice_us"),
            ErrorKind::MissingValue,
        );
        check(
            &guest("cmdline = \"abc\n"),
            6,
            Some("cmdline"),
            ErrorKind::UnterminatedString,
        );
        check(
            &guest("cmdline = \"a\\qb\"\n"),
            6,
            Some("cmdline"),
            ErrorKind::BadEscape { escape: 'q' },
        );
        check(
            &guest("cmdline = \"a\" b\n"),
            6,
            Some("cmdline"),
            ErrorKind::TrailingCharacters { text: "b".into() },
        );
        check(
            "[hypervisor] x\n",
            1,
            None,
            ErrorKind::TrailingCharacters { text: "x".into() },
        );
        check(
            "[hypervisor\n",
            1,
            None,
            ErrorKind::InvalidLine {
                text: "[hypervisor".into(),
            },
        );
    }

    #[test]
    fn integer_and_value_syntax() {
        for bad in [
            "1__0",
            "1_",
            "0x",
            "0xg",
            "012",
            "1.5",
            "-0x10",
            "99999999999999999999999",
        ] {
            check(
                &format!("[hypervisor]\ntimeslice_us = {bad}\n"),
                2,
                Some("timeslice_us"),
                ErrorKind::InvalidInteger { text: bad.into() },
            );
        }
        for bad in ["[1, 2]", "{ a = 1 }", "'lit'", "yes", "True", "_1"] {
            check(
                &format!("[hypervisor]\ntimeslice_us = {bad}\n"),
                2,
                Some("timeslice_us"),
                ErrorKind::UnsupportedValue { text: bad.into() },
            );
        }
        let m = parse("m", "[hypervisor]\ntimeslice_us = 0x1_F4\n").unwrap();
        assert_eq!(m.hypervisor.timeslice_us, 500);
        let m = parse("m", "[hypervisor]\ntimeslice_us = +7#c\n").unwrap();
        assert_eq!(m.hypervisor.timeslice_us, 7);
    }

    #[test]
    fn table_errors() {
        check(
            "[hypervisor]\n[networks]\n",
            2,
            None,
            ErrorKind::UnknownTable {
                name: "networks".into(),
            },
        );
        check(
            "[hypervisor]\n[network]\n",
            2,
            None,
            ErrorKind::WrongTableForm {
                name: "network".into(),
                write: "[[network]]",
            },
        );
        check(
            "[[vm]]\n",
            1,
            None,
            ErrorKind::UnknownTable { name: "vm".into() },
        );
        check(
            "[guest]\n",
            1,
            None,
            ErrorKind::WrongTableForm {
                name: "guest".into(),
                write: "[[guest]]",
            },
        );
        check(
            "[[hypervisor]]\n",
            1,
            None,
            ErrorKind::WrongTableForm {
                name: "hypervisor".into(),
                write: "[hypervisor]",
            },
        );
        check(
            "[hypervisor]\n\n[ hypervisor ]\n",
            3,
            None,
            ErrorKind::DuplicateTable {
                name: "hypervisor".into(),
                first_line: 1,
            },
        );
        check(
            "# top\nname = \"x\"\n",
            2,
            Some("name"),
            ErrorKind::KeyOutsideTable,
        );
    }

    #[test]
    fn unknown_and_duplicate_keys() {
        check(
            "[hypervisor]\nspeed = 1\n",
            2,
            Some("speed"),
            ErrorKind::UnknownKey {
                table: "[hypervisor]",
            },
        );
        check(
            &guest("ram = \"1G\"\n"),
            6,
            Some("ram"),
            ErrorKind::UnknownKey { table: "[[guest]]" },
        );
        check(
            &guest("vcpus = 1\nvcpus = 2\n"),
            7,
            Some("vcpus"),
            ErrorKind::DuplicateKey { first_line: 6 },
        );
        check(
            "[hypervisor]\ntimeslice_us = 5\ntimeslice_us = 5\n",
            3,
            Some("timeslice_us"),
            ErrorKind::DuplicateKey { first_line: 2 },
        );
    }

    #[test]
    fn missing_required_keys_point_at_header() {
        let full = [
            "name = \"g\"",
            "memory = \"16M\"",
            "image = \"g\"",
            "kind = \"elf64\"",
        ];
        let keys = ["name", "memory", "image", "kind"];
        for (skip, key) in keys.iter().enumerate() {
            let mut text = String::from("[hypervisor]\n\n[[guest]]\n");
            for (i, l) in full.iter().enumerate() {
                if i != skip {
                    text.push_str(l);
                    text.push('\n');
                }
            }
            check(
                &text,
                3,
                Some(*key),
                ErrorKind::MissingKey { table: "[[guest]]" },
            );
        }
        // Flat needs load and mode.
        let flat = "[[guest]]\nname = \"f\"\nmemory = \"16M\"\nimage = \"f\"\nkind = \"flat\"\n";
        check(
            &format!("{flat}mode = \"real16\"\n"),
            1,
            Some("load"),
            ErrorKind::MissingKey { table: "[[guest]]" },
        );
        check(
            &format!("{flat}load = 0x1000\n"),
            1,
            Some("mode"),
            ErrorKind::MissingKey { table: "[[guest]]" },
        );
    }

    #[test]
    fn wrong_types() {
        check(
            "[hypervisor]\npoweroff_when_done = \"yes\"\n",
            2,
            Some("poweroff_when_done"),
            ErrorKind::Expected {
                what: "true or false",
                got: "\"yes\"".into(),
            },
        );
        check(
            &guest("vcpus = \"2\"\n"),
            6,
            Some("vcpus"),
            ErrorKind::Expected {
                what: "an integer",
                got: "\"2\"".into(),
            },
        );
        check(
            "[[guest]]\nname = 5\n",
            2,
            Some("name"),
            ErrorKind::Expected {
                what: "a string",
                got: "5".into(),
            },
        );
        check(
            "[[guest]]\nmemory = true\n",
            2,
            Some("memory"),
            ErrorKind::Expected {
                what: SIZE_WHAT,
                got: "true".into(),
            },
        );
        for bad in ["lots", "16X", "M", "16 M", "", "16iB"] {
            check(
                &format!("[[guest]]\nmemory = \"{bad}\"\n"),
                2,
                Some("memory"),
                ErrorKind::Expected {
                    what: SIZE_WHAT,
                    got: format!("\"{bad}\""),
                },
            );
        }
        check(
            &guest("unmapped_access = \"allones\"\n"),
            6,
            Some("unmapped_access"),
            ErrorKind::Expected {
                what: UNMAPPED_WHAT,
                got: "\"allones\"".into(),
            },
        );
        check(
            &guest("on_crash = \"reboot\"\n"),
            6,
            Some("on_crash"),
            ErrorKind::Expected {
                what: CRASH_POLICY_WHAT,
                got: "\"reboot\"".into(),
            },
        );
        // Rolling back is for crashes only: a guest that exits meant to.
        check(
            &guest("on_exit = \"rollback\"\n"),
            6,
            Some("on_exit"),
            ErrorKind::Expected {
                what: POLICY_WHAT,
                got: "\"rollback\"".into(),
            },
        );
        check(
            "[[guest]]\nkind = \"pe\"\n",
            2,
            Some("kind"),
            ErrorKind::Expected {
                what: "one of \"elf64\", \"flat\", \"bzimage\", \"multiboot\"",
                got: "\"pe\"".into(),
            },
        );
        check(
            "[[guest]]\nimage = \"\"\n",
            2,
            Some("image"),
            ErrorKind::Expected {
                what: "a non-empty path string",
                got: "\"\"".into(),
            },
        );
        check(
            "[[guest]]\nload = \"0x1000\"\n",
            2,
            Some("load"),
            ErrorKind::Expected {
                what: "an integer address",
                got: "\"0x1000\"".into(),
            },
        );
    }

    #[test]
    fn sizes() {
        let mem = |s: &str| {
            parse(
                "m",
                &format!("[[guest]]\nname=\"a\"\nimage=\"a\"\nkind=\"elf64\"\nmemory = {s}\n"),
            )
            .map(|m| m.guests[0].memory)
        };
        assert_eq!(mem("\"1M\""), Ok(MIB));
        assert_eq!(mem("\"1024K\""), Ok(MIB));
        assert_eq!(mem("\"2048KiB\""), Ok(2 * MIB));
        assert_eq!(mem("\"64G\""), Ok(64 * GIB));
        assert_eq!(mem("\"1_024M\""), Ok(GIB));
        assert_eq!(mem("\"3145728\""), Ok(3 * MIB));
        assert_eq!(mem("0x100000"), Ok(MIB));
    }

    #[test]
    fn out_of_range() {
        let r = |got: &str, allowed| ErrorKind::OutOfRange {
            got: got.into(),
            allowed,
        };
        check(&guest("vcpus = 0\n"), 6, Some("vcpus"), r("0", "1 to 64"));
        check(&guest("vcpus = 65\n"), 6, Some("vcpus"), r("65", "1 to 64"));
        check(
            &guest("weight = 1001\n"),
            6,
            Some("weight"),
            r("1001", "1 to 1000"),
        );
        check(
            &guest("weight = -1\n"),
            6,
            Some("weight"),
            r("-1", "1 to 1000"),
        );
        check(
            &guest("irqoff_timeout_s = 3601\n"),
            6,
            Some("irqoff_timeout_s"),
            r("3601", "0 to 3600 seconds"),
        );
        check(
            &guest("max_restarts = 4294967296\n"),
            6,
            Some("max_restarts"),
            r("4294967296", "0 to 4294967295"),
        );
        check(
            "[hypervisor]\ntimeslice_us = 0\n",
            2,
            Some("timeslice_us"),
            r("0", "1 to 1000000 microseconds"),
        );
        check(
            "[[guest]]\nmemory = \"512K\"\n",
            2,
            Some("memory"),
            r("\"512K\"", "1M to 64G"),
        );
        check(
            "[[guest]]\nmemory = \"65G\"\n",
            2,
            Some("memory"),
            r("\"65G\"", "1M to 64G"),
        );
        check(
            "[[guest]]\nmemory = \"99999999999T\"\n",
            2,
            Some("memory"),
            r("\"99999999999T\"", "at most 2^64 - 1 bytes"),
        );
        check(
            "[[guest]]\nmemory = -5\n",
            2,
            Some("memory"),
            r("-5", "0 or more bytes"),
        );
        check(
            "[[guest]]\nmemory = \"1536K\"\n",
            2,
            Some("memory"),
            ErrorKind::NotMultiple {
                got: "\"1536K\"".into(),
                of: "1M",
            },
        );
    }

    #[test]
    fn flat_addresses_checked_against_mode_and_memory() {
        let flat = |extra: &str| {
            format!("[[guest]]\nname = \"f\"\nmemory = \"16M\"\nimage = \"f\"\nkind = \"flat\"\n{extra}")
        };
        check(
            &flat("load = 0x100000\nmode = \"real16\"\n"),
            6,
            Some("load"),
            ErrorKind::OutOfRange {
                got: "0x100000".into(),
                allowed: "below 0x100000 for mode \"real16\"",
            },
        );
        check(
            &flat("load = 0x1000\nentry = 0x1_0000_0000\nmode = \"prot32\"\n"),
            7,
            Some("entry"),
            ErrorKind::OutOfRange {
                got: "0x100000000".into(),
                allowed: "below 0x1_0000_0000 for mode \"prot32\"",
            },
        );
        check(
            &flat("mode = \"long64\"\nload = 0x1000000\n"),
            7,
            Some("load"),
            ErrorKind::OutOfRange {
                got: "0x1000000".into(),
                allowed: "inside guest memory",
            },
        );
        check(
            &flat("load = 0x1000\nmode = \"protected\"\n"),
            7,
            Some("mode"),
            ErrorKind::Expected {
                what: "one of \"real16\", \"prot32\", \"long64\"",
                got: "\"protected\"".into(),
            },
        );
    }

    #[test]
    fn keys_not_for_kind() {
        check(
            &guest("load = 0x1000\n"),
            6,
            Some("load"),
            ErrorKind::NotForKind {
                kind: "elf64",
                valid_for: "kind \"flat\"",
            },
        );
        check(
            &guest("\nmode = \"real16\"\n"),
            7,
            Some("mode"),
            ErrorKind::NotForKind {
                kind: "elf64",
                valid_for: "kind \"flat\"",
            },
        );
        // The kind key may come after the offending key.
        check(
            "[[guest]]\ninitrd = \"i\"\nname = \"g\"\nmemory = \"16M\"\nimage = \"g\"\nkind = \"elf64\"\n",
            2,
            Some("initrd"),
            ErrorKind::NotForKind {
                kind: "elf64",
                valid_for: "kind \"bzimage\" or \"multiboot\"",
            },
        );
    }

    #[test]
    fn guest_names() {
        for bad in [
            "",
            "has space",
            "dot.ted",
            "ümlaut",
            "a23456789012345678901234567890123",
        ] {
            check(
                &format!("[[guest]]\nname = \"{bad}\"\n"),
                2,
                Some("name"),
                ErrorKind::BadName {
                    got: format!("\"{bad}\""),
                },
            );
        }
        let ok = "A_-9a23456789012345678901234567";
        assert_eq!(ok.len(), 31);
        let text = format!(
            "[[guest]]\nname = \"{ok}x\"\nmemory = \"1M\"\nimage = \"a\"\nkind = \"elf64\"\n"
        );
        assert_eq!(parse("m", &text).unwrap().guests[0].name.len(), 32);
    }

    #[test]
    fn duplicate_guest_names() {
        let text = format!("{}\n{}", guest(""), guest("vcpus = 2\n"));
        // Second guest header on line 7, its name on line 8.
        check(
            &text,
            8,
            Some("name"),
            ErrorKind::DuplicateGuest {
                name: "g".into(),
                first_line: 1,
            },
        );
        let e = err(&text);
        assert_eq!(
            e.to_string(),
            "m.toml:8: field 'name': guest name \"g\" already used by the guest at line 1"
        );
    }

    #[test]
    fn first_error_in_file_order_wins() {
        // A bad value in guest 1 is reported before a syntax error later.
        let text = format!("{}\n[[guest]]\n!!!\n", guest("vcpus = 0\n"));
        assert_eq!(err(&text).line, 6);
        // A missing key in guest 1 is reported when guest 2 starts.
        let text = "[[guest]]\nname = \"a\"\n[[guest]]\nbogus = 1\n";
        check(
            text,
            1,
            Some("memory"),
            ErrorKind::MissingKey { table: "[[guest]]" },
        );
    }

    #[test]
    fn error_display_messages() {
        let cases = [
            (
                "[[guest]]\nvcpus = 0\n",
                "m.toml:2: field 'vcpus': 0 is out of range (allowed: 1 to 64)",
            ),
            (
                "[[guest]]\n",
                "m.toml:1: field 'name': required in [[guest]] but missing",
            ),
            (
                "[hypervisor]\nx = 1\n",
                "m.toml:2: field 'x': unknown key in [hypervisor]",
            ),
            (
                "[[guest]]\ncmdline = \"\\x\"\n",
                "m.toml:2: field 'cmdline': unsupported escape `\\x` (use \\\" \\\\ \\n \\t)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text).to_string(), want);
        }
    }

    // ---- disks, NICs, networks -------------------------------------------

    const IO: &str = r#"[[guest]]
name = "web"
memory = "64M"
image = "vmlinuz"
kind = "bzimage"

[[guest.disk]]
image = "gold.img"
serial = "root-disk"

[[ guest . disk ]]   # whitespace around the dot, as TOML allows
image = "data.img"
read_only = true
serial = "ABCDEFGHIJKLMNOPQRST"

[[guest.nic]]
network = "lan"

[[guest.nic]]
network = "dmz"
mac = "52:54:00:AB:cd:01"

[[network]]
name = "lan"

[[network]]
name = "dmz"
anti_spoofing = false

[[guest.disk]]   # belongs to "web", the last [[guest]], as in TOML
image = "late.img"
keep_overlay = true

[[guest]]
name = "db"
memory = "64M"
image = "vmlinuz"
kind = "bzimage"

[[guest.disk]]
image = "gold.img"
serial = "root-disk"

[[guest.nic]]
network = "lan"
"#;

    #[test]
    fn disks_nics_networks() {
        let m = parse("m.toml", IO).unwrap();
        assert_eq!(
            m.networks,
            vec![
                NetworkConfig {
                    name: "lan".into(),
                    anti_spoofing: true,
                    uplink: None,
                    line: 23,
                },
                NetworkConfig {
                    name: "dmz".into(),
                    anti_spoofing: false,
                    uplink: None,
                    line: 26,
                },
            ]
        );
        let web = &m.guests[0];
        assert_eq!(
            web.disks,
            vec![
                DiskConfig {
                    image: "gold.img".into(),
                    nbd: None,
                    read_only: false,
                    serial: Some("root-disk".into()),
                    keep_overlay: false,
                    line: 7,
                    image_line: 8,
                },
                DiskConfig {
                    image: "data.img".into(),
                    nbd: None,
                    read_only: true,
                    serial: Some("ABCDEFGHIJKLMNOPQRST".into()),
                    keep_overlay: false,
                    line: 11,
                    image_line: 12,
                },
                DiskConfig {
                    image: "late.img".into(),
                    nbd: None,
                    read_only: false,
                    serial: None,
                    keep_overlay: true,
                    line: 30,
                    image_line: 31,
                },
            ]
        );
        assert_eq!(
            web.nics,
            vec![
                NicConfig {
                    network: "lan".into(),
                    mac: derive_mac("web", 0),
                    mac_source: MacSource::Derived,
                    line: 16,
                    network_line: 17,
                    mac_line: 16,
                },
                NicConfig {
                    network: "dmz".into(),
                    mac: MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]),
                    mac_source: MacSource::Manifest,
                    line: 19,
                    network_line: 20,
                    mac_line: 21,
                },
            ]
        );
        let db = &m.guests[1];
        assert_eq!(db.line, 34);
        assert_eq!(db.disks.len(), 1);
        assert_eq!(db.disks[0].serial.as_deref(), Some("root-disk"));
        assert_eq!(db.nics.len(), 1);
        assert_eq!(db.nics[0].mac, derive_mac("db", 0));
        assert_ne!(db.nics[0].mac, web.nics[0].mac);
        // A guest without any has none.
        let m = parse("m.toml", &guest("")).unwrap();
        assert!(m.guests[0].disks.is_empty() && m.guests[0].nics.is_empty());
        assert!(m.networks.is_empty());
    }

    #[test]
    fn derived_macs_are_stable_local_unicast() {
        // Pinned: a MAC must not change between hypervisor versions (guests
        // keep their DHCP leases and interface names).
        // (Values from an independent FNV-1a implementation.)
        assert_eq!(derive_mac("web", 0).to_string(), "32:c1:50:7e:a3:5f");
        assert_eq!(derive_mac("web", 1).to_string(), "a2:04:1b:28:9b:b3");
        assert_eq!(derive_mac("web", 0), derive_mac("web", 0));
        let mut seen = Vec::new();
        for i in 0..200u32 {
            for name in ["a", "b", "web", "web1", "linux-guest-with-a-long-name"] {
                let mac = derive_mac(name, i);
                assert!(mac.is_local(), "{mac}");
                assert!(!mac.is_multicast(), "{mac}");
                assert_ne!(mac.0, [0; 6]);
                assert!(!seen.contains(&mac), "{name} {i}: {mac} repeats");
                seen.push(mac);
            }
        }
        // The separator keeps ("a", 0x31..) and ("a1", ..) apart.
        assert_ne!(derive_mac("a1", 0), derive_mac("a", 0x31));
    }

    #[test]
    fn mac_parsing() {
        let mac = MacAddr::parse("02:00:5E:10:00:ff").unwrap();
        assert_eq!(mac.0, [2, 0, 0x5e, 0x10, 0, 0xff]);
        assert_eq!(mac.to_string(), "02:00:5e:10:00:ff");
        assert_eq!(MacAddr::parse("02-00-5e-10-00-ff"), Some(mac));
        assert_eq!(MacAddr::parse(&mac.to_string()), Some(mac));
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:ff:01",
            "2:0:5e:10:0:ff",
            "02:00:5e:10:00:fg",
            "02:00-5e:10:00:ff",
            "0200.5e10.00ff",
            "02:00:5e:10:00:+f",
        ] {
            assert_eq!(MacAddr::parse(bad), None, "{bad}");
        }
        assert!(MacAddr([1, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x52, 0x54, 0, 0, 0, 1]).is_local());
        assert!(!MacAddr([0x00, 0x1b, 0x21, 0, 0, 1]).is_local());
    }

    fn nic_guest(nic: &str) -> String {
        format!(
            "[[network]]\nname = \"lan\"\n\n{}\n[[guest.nic]]\n{nic}",
            guest("")
        )
    }

    #[test]
    fn nic_errors() {
        // nic_guest: network 1-2, guest 4-8, [[guest.nic]] at 10, `nic` from 11.
        check(
            &nic_guest("mac = \"52:54:00:00:00:01\"\n"),
            10,
            Some("network"),
            ErrorKind::MissingKey {
                table: "[[guest.nic]]",
            },
        );
        check(
            &nic_guest("network = \"wan\"\n"),
            11,
            Some("network"),
            ErrorKind::UnknownNetwork { name: "wan".into() },
        );
        check(
            &nic_guest("network = \"bad name\"\n"),
            11,
            Some("network"),
            ErrorKind::BadName {
                got: "\"bad name\"".into(),
            },
        );
        check(
            &nic_guest("network = \"lan\"\nspeed = 100\n"),
            12,
            Some("speed"),
            ErrorKind::UnknownKey {
                table: "[[guest.nic]]",
            },
        );
        for bad in [
            "\"52:54:00:00:01\"",
            "\"52:54:00:00:00:zz\"",
            "5254",
            "true",
        ] {
            check(
                &nic_guest(&format!("network = \"lan\"\nmac = {bad}\n")),
                12,
                Some("mac"),
                ErrorKind::BadMac { got: bad.into() },
            );
        }
        for bad in [
            "\"01:00:5e:00:00:01\"",
            "\"ff:ff:ff:ff:ff:ff\"",
            "\"00:00:00:00:00:00\"",
            "\"33-33-00-00-00-01\"",
        ] {
            check(
                &nic_guest(&format!("network = \"lan\"\nmac = {bad}\n")),
                12,
                Some("mac"),
                ErrorKind::MacNotUnicast { got: bad.into() },
            );
        }
        // A network declared after the guest that uses it is fine.
        let later = format!(
            "{}[[guest.nic]]\nnetwork = \"lan\"\n[[network]]\nname = \"lan\"\n",
            guest("")
        );
        assert_eq!(parse("m", &later).unwrap().guests[0].nics.len(), 1);
    }

    #[test]
    fn duplicate_macs() {
        let text = nic_guest(
            "network = \"lan\"\nmac = \"52:54:00:00:00:01\"\n[[guest.nic]]\nnetwork = \"lan\"\nmac = \"52:54:00:00:00:01\"\n",
        );
        check(
            &text,
            15,
            Some("mac"),
            ErrorKind::DuplicateMac {
                mac: "52:54:00:00:00:01".into(),
                first_line: 10,
            },
        );
        // A written MAC that equals another guest's derived one.
        let derived = derive_mac("g", 0).to_string();
        let text = format!(
            "{}[[guest]]\nname = \"h\"\nmemory = \"16M\"\nimage = \"h\"\nkind = \"elf64\"\n[[guest.nic]]\nnetwork = \"lan\"\nmac = \"{derived}\"\n",
            nic_guest("network = \"lan\"\n")
        );
        check(
            &text,
            19,
            Some("mac"),
            ErrorKind::DuplicateMac {
                mac: derived,
                first_line: 10,
            },
        );
    }

    #[test]
    fn network_uplink() {
        let m = parse(
            "t.toml",
            "[[network]]\nname = \"lan\"\nuplink = \"nic0\"\n[[network]]\nname = \"internal\"\n",
        )
        .unwrap();
        assert_eq!(m.networks[0].uplink.as_deref(), Some("nic0"));
        assert_eq!(m.networks[1].uplink, None);
    }

    #[test]
    fn network_errors() {
        check(
            "[[network]]\nanti_spoofing = true\n",
            1,
            Some("name"),
            ErrorKind::MissingKey {
                table: "[[network]]",
            },
        );
        check(
            "[[network]]\nname = \"a\"\n[[network]]\nname = \"a\"\n",
            4,
            Some("name"),
            ErrorKind::DuplicateNetwork {
                name: "a".into(),
                first_line: 1,
            },
        );
        check(
            "[[network]]\nname = \"a.b\"\n",
            2,
            Some("name"),
            ErrorKind::BadName {
                got: "\"a.b\"".into(),
            },
        );
        check(
            "[[network]]\nname = \"a\"\nuplink = \"eth0\"\n",
            3,
            Some("uplink"),
            ErrorKind::UnknownUplink {
                got: "\"eth0\"".into(),
            },
        );
        check(
            "[[network]]\nname = \"a\"\nuplink = \"nic0\"\n[[network]]\nname = \"b\"\nuplink = \"nic0\"\n",
            6,
            Some("uplink"),
            ErrorKind::UplinkTaken {
                nic: "nic0".into(),
                first_line: 1,
            },
        );
        check(
            "[[network]]\nname = \"a\"\nanti_spoofing = \"no\"\n",
            3,
            Some("anti_spoofing"),
            ErrorKind::Expected {
                what: "true or false",
                got: "\"no\"".into(),
            },
        );
        check(
            "[[network]]\nname = \"a\"\nvlan = 5\n",
            3,
            Some("vlan"),
            ErrorKind::UnknownKey {
                table: "[[network]]",
            },
        );
    }

    fn disk_guest(disk: &str) -> String {
        // Guest 1-5, [[guest.disk]] at 6, `disk` from 7.
        format!("{}[[guest.disk]]\n{disk}", guest(""))
    }

    #[test]
    fn nbd_disks() {
        let m = parse(
            "m.toml",
            &disk_guest("nbd = \"nbd://10.0.2.2\"\n[[guest.disk]]\nnbd = \"nbd://192.168.1.20:10900/root-disk\"\nread_only = true\n"),
        )
        .unwrap();
        let d = &m.guests[0].disks;
        assert_eq!(
            d[0].nbd,
            Some(NbdTarget {
                addr: [10, 0, 2, 2],
                port: NBD_DEFAULT_PORT,
                export: String::new()
            })
        );
        assert_eq!((d[0].image.as_str(), d[0].image_line), ("", 7));
        assert_eq!(
            d[1].nbd,
            Some(NbdTarget {
                addr: [192, 168, 1, 20],
                port: 10900,
                export: "root-disk".into()
            })
        );
        assert!(d[1].read_only);
        assert_eq!(
            d[1].nbd.as_ref().unwrap().to_string(),
            "nbd://192.168.1.20:10900/root-disk"
        );
        // An NBD disk needs no file on the ESP.
        validate_files("m.toml", &m, |_| None).unwrap();
        for (url, why) in [
            ("http://10.0.2.2", "it must start with nbd://"),
            (
                "nbd://nbd.example.com",
                "the server must be an IPv4 address A.B.C.D (no host names)",
            ),
            (
                "nbd://10.0.2",
                "the server must be an IPv4 address A.B.C.D (no host names)",
            ),
            (
                "nbd://10.0.2.2.5",
                "the server must be an IPv4 address A.B.C.D (no host names)",
            ),
            (
                "nbd://10.0.2.256",
                "the server must be an IPv4 address A.B.C.D (no host names)",
            ),
            (
                "nbd://10.0.2.2:0",
                "the port must be a number from 1 to 65535",
            ),
            (
                "nbd://10.0.2.2:70000",
                "the port must be a number from 1 to 65535",
            ),
            (
                "nbd://10.0.2.2:/x",
                "the port must be a number from 1 to 65535",
            ),
            (
                "nbd://0.0.0.0",
                "the server address must be a unicast address",
            ),
            (
                "nbd://224.0.0.1",
                "the server address must be a unicast address",
            ),
            (
                "nbd://10.0.2.2/a b",
                "the export name must be at most 255 printable ASCII bytes without spaces",
            ),
        ] {
            check(
                &disk_guest(&format!("nbd = \"{url}\"\n")),
                7,
                Some("nbd"),
                ErrorKind::BadNbd {
                    got: format!("\"{url}\""),
                    why,
                },
            );
        }
        check(
            &disk_guest("image = \"d\"\nnbd = \"nbd://10.0.2.2\"\n"),
            7,
            Some("image"),
            ErrorKind::Conflicts {
                with: "nbd (a disk is an image file or an NBD export)",
            },
        );
        check(
            &disk_guest("nbd = \"nbd://10.0.2.2\"\nkeep_overlay = true\n"),
            8,
            Some("keep_overlay"),
            ErrorKind::Conflicts {
                with: "nbd (an NBD disk has no overlay: its writes go to the server)",
            },
        );
    }

    #[test]
    fn disk_errors() {
        check(
            &disk_guest("serial = \"s\"\n"),
            6,
            Some("image"),
            ErrorKind::MissingKey {
                table: "[[guest.disk]]",
            },
        );
        check(
            &disk_guest("image = \"\"\n"),
            7,
            Some("image"),
            ErrorKind::Expected {
                what: "a non-empty path string",
                got: "\"\"".into(),
            },
        );
        check(
            &disk_guest("image = \"d\"\nread_only = 1\n"),
            8,
            Some("read_only"),
            ErrorKind::Expected {
                what: "true or false",
                got: "1".into(),
            },
        );
        for bad in ["ABCDEFGHIJKLMNOPQRSTU", "tab\there", "ümlaut"] {
            let text = disk_guest(&format!(
                "image = \"d\"\nserial = \"{}\"\n",
                bad.replace('\t', "\\t")
            ));
            check(
                &text,
                8,
                Some("serial"),
                ErrorKind::BadSerial {
                    got: Value::Str(bad.into()).render(),
                },
            );
        }
        check(
            &disk_guest("image = \"d\"\nserial = 5\n"),
            8,
            Some("serial"),
            ErrorKind::Expected {
                what: "a string",
                got: "5".into(),
            },
        );
        check(
            &disk_guest("image = \"d\"\nread_only = true\nkeep_overlay = true\n"),
            9,
            Some("keep_overlay"),
            ErrorKind::Conflicts {
                with: "read_only = true (a read-only disk has no overlay)",
            },
        );
        check(
            &disk_guest(
                "image = \"d\"\nserial = \"s\"\n[[guest.disk]]\nimage = \"e\"\nserial = \"s\"\n",
            ),
            11,
            Some("serial"),
            ErrorKind::DuplicateSerial {
                serial: "s".into(),
                first_line: 6,
            },
        );
        // The guest's own keys end at its first sub-table, as in TOML.
        check(
            &disk_guest("image = \"d\"\nvcpus = 2\n"),
            8,
            Some("vcpus"),
            ErrorKind::UnknownKey {
                table: "[[guest.disk]]",
            },
        );
        // The same serial in two guests is fine.
        let two = format!(
            "{}[[guest]]\nname = \"h\"\nmemory = \"16M\"\nimage = \"h\"\nkind = \"elf64\"\n[[guest.disk]]\nimage = \"d\"\nserial = \"s\"\n",
            disk_guest("image = \"d\"\nserial = \"s\"\n")
        );
        assert_eq!(parse("m", &two).unwrap().guests[1].disks.len(), 1);
    }

    #[test]
    fn sub_table_placement() {
        check(
            "[[guest.disk]]\nimage = \"d\"\n",
            1,
            None,
            ErrorKind::NoParentGuest {
                name: "guest.disk".into(),
            },
        );
        check(
            "[hypervisor]\n[[guest.nic]]\n",
            2,
            None,
            ErrorKind::NoParentGuest {
                name: "guest.nic".into(),
            },
        );
        check(
            &format!("{}[guest.disk]\n", guest("")),
            6,
            None,
            ErrorKind::WrongTableForm {
                name: "guest.disk".into(),
                write: "[[guest.disk]]",
            },
        );
        check(
            &format!("{}[[guest.cdrom]]\n", guest("")),
            6,
            None,
            ErrorKind::UnknownTable {
                name: "guest.cdrom".into(),
            },
        );
        // The guest is checked when its first sub-table starts.
        check(
            "[[guest]]\nname = \"g\"\n[[guest.disk]]\nimage = \"d\"\n",
            1,
            Some("memory"),
            ErrorKind::MissingKey { table: "[[guest]]" },
        );
    }

    #[test]
    fn too_many_sub_tables() {
        let mut text = guest("");
        for _ in 0..MAX_DISKS {
            text.push_str("[[guest.disk]]\nimage = \"d\"\n");
        }
        assert_eq!(parse("m", &text).unwrap().guests[0].disks.len(), MAX_DISKS);
        text.push_str("[[guest.disk]]\nimage = \"d\"\n");
        check(
            &text,
            6 + 2 * MAX_DISKS as u32,
            None,
            ErrorKind::TooMany {
                table: "[[guest.disk]]",
                max: MAX_DISKS,
            },
        );
        let mut text = format!("[[network]]\nname = \"n\"\n{}", guest(""));
        for _ in 0..MAX_NICS {
            text.push_str("[[guest.nic]]\nnetwork = \"n\"\n");
        }
        let m = parse("m", &text).unwrap();
        assert_eq!(m.guests[0].nics.len(), MAX_NICS);
        // Each index derives its own MAC.
        assert_eq!(m.guests[0].nics[7].mac, derive_mac("g", 7));
        text.push_str("[[guest.nic]]\nnetwork = \"n\"\n");
        check(
            &text,
            8 + 2 * MAX_NICS as u32,
            None,
            ErrorKind::TooMany {
                table: "[[guest.nic]]",
                max: MAX_NICS,
            },
        );
    }

    #[test]
    fn validate_disk_files() {
        let text = disk_guest("image = \"a.img\"\n[[guest.disk]]\nimage = \"b.img\"\n");
        let m = parse("hv/manifest.toml", &text).unwrap();
        let sizes = |a: Option<u64>, b: Option<u64>| {
            move |p: &str| match p {
                "a.img" => a,
                "b.img" => b,
                _ => None,
            }
        };
        let v = |a, b| validate_files("hv/manifest.toml", &m, sizes(a, b));
        assert_eq!(v(Some(512), Some(64 << 20)), Ok(()));
        let e = v(Some(512), None).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref(), &e.kind),
            (
                9,
                Some("image"),
                &ErrorKind::MissingFile {
                    path: "b.img".into()
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "hv/manifest.toml:9: field 'image': file \"b.img\" not found"
        );
        let e = v(Some(1000), Some(512)).unwrap_err();
        assert_eq!(
            (e.line, &e.kind),
            (
                7,
                &ErrorKind::NotMultiple {
                    got: "\"a.img\" (1000 bytes)".into(),
                    of: "512 bytes"
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "hv/manifest.toml:7: field 'image': \"a.img\" (1000 bytes) is not a multiple of 512 bytes"
        );
        let e = v(Some(512), Some(0)).unwrap_err();
        assert_eq!(
            (e.line, &e.kind),
            (
                9,
                &ErrorKind::OutOfRange {
                    got: "\"b.img\" (0 bytes)".into(),
                    allowed: "at least 512 bytes"
                }
            )
        );
        // Manifests without disks need no files.
        let m = parse("m", &guest("")).unwrap();
        assert_eq!(validate_files("m", &m, |_| None), Ok(()));
    }

    #[test]
    fn io_error_display_messages() {
        let cases = [
            (
                nic_guest("network = \"wan\"\n"),
                "m.toml:11: field 'network': no [[network]] is named \"wan\"",
            ),
            (
                nic_guest("network = \"lan\"\nmac = \"01:00:5e:00:00:01\"\n"),
                "m.toml:12: field 'mac': \"01:00:5e:00:00:01\" is not a unicast MAC address \
                 (multicast bit set, or all zeros)",
            ),
            (
                nic_guest("network = \"lan\"\nmac = \"nope\"\n"),
                "m.toml:12: field 'mac': \"nope\" is not a MAC address (six hex bytes: \
                 \"52:54:00:12:34:56\")",
            ),
            (
                disk_guest("read_only = true\n"),
                "m.toml:6: field 'image': required in [[guest.disk]] but missing",
            ),
            (
                disk_guest("image = \"d\"\nserial = \"123456789012345678901\"\n"),
                "m.toml:8: field 'serial': \"123456789012345678901\" is not a disk serial \
                 (at most 20 printable ASCII bytes)",
            ),
            (
                "[[network]]\nname = \"a\"\n[[network]]\nname = \"a\"\n".to_string(),
                "m.toml:4: field 'name': network name \"a\" already used by the network at line 1",
            ),
            (
                "[[guest.nic]]\n".to_string(),
                "m.toml:1: [[guest.nic]] must follow the [[guest]] it belongs to",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(&text).to_string(), want);
        }
    }
}
