//! `cargo xtask import-ovf`: a DMTF OVF 1.x/2.x appliance (DSP0243) to a ferrovisor manifest.
//!
//! Reads the descriptor (`.ovf`, alone or as the first member of an `.ova` tar), takes from
//! each VirtualSystem its CPUs, memory, disks and NICs, converts every disk image to raw with
//! `qemu-img convert -O raw` and writes a manifest using the `[[guest.disk]]`,
//! `[[guest.nic]]` and `[[network]]` tables. What the descriptor holds that a ferrovisor guest
//! cannot have (CD drives, sound, USB, product sections, vendor extensions ...) is listed on
//! the output and as comments in the manifest, never dropped silently.
//!
//! Until guest firmware exists (issue 15) a guest cannot boot its own disk's boot loader: it
//! boots a Linux kernel given with `--kernel` directly.
//!
//! Parsing ([`parse_descriptor`]) and manifest writing ([`manifest_text`]) are pure and
//! unit-tested; [`import`] does the file work.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use roxmltree::Node;

/// The OVF 1.x envelope namespace.
pub const NS_ENVELOPE_1: &str = "http://schemas.dmtf.org/ovf/envelope/1";
/// The OVF 2.x envelope namespace.
pub const NS_ENVELOPE_2: &str = "http://schemas.dmtf.org/ovf/envelope/2";

const MIB: u64 = 1 << 20;

/// A descriptor problem: the descriptor file, the element (XPath-like, 1-based indexes, with
/// its line) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfError {
    pub file: String,
    pub element: String,
    pub message: String,
}

impl fmt::Display for OvfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.element, self.message)
    }
}

impl std::error::Error for OvfError {}

/// Which OVF major version the envelope namespace says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvfVersion {
    V1,
    V2,
}

/// A `References/File`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub id: String,
    pub href: String,
    /// `ovf:size`, bytes of the file as stored (compressed, if it is).
    pub size: Option<u64>,
    /// `ovf:compression="gzip"`.
    pub gzip: bool,
    pub element: String,
}

/// A `DiskSection/Disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub id: String,
    /// None: a blank disk of `capacity` bytes.
    pub file_ref: Option<String>,
    /// `ovf:capacity` times `ovf:capacityAllocationUnits`, in bytes.
    pub capacity: u64,
    /// `ovf:format` (a URI naming the image format).
    pub format: Option<String>,
    pub element: String,
}

/// What a disk drive Item's HostResource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// `ovf:/disk/<diskId>`.
    Disk(String),
    /// `ovf:/file/<fileId>`.
    File(String),
}

/// A disk drive Item (ResourceType 17) of a VirtualSystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveItem {
    pub source: DiskSource,
    /// The controller Item it hangs off, in words ("SATA controller AHCI").
    pub controller: Option<String>,
    pub element: String,
}

/// An Ethernet adapter Item (ResourceType 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicItem {
    /// `rasd:Connection`: the network name.
    pub connection: Option<String>,
    /// `rasd:Address`: the MAC, when given.
    pub mac: Option<String>,
    /// `rasd:ResourceSubType` (E1000, PCNet32, VmxNet3 ...).
    pub model: Option<String>,
    pub element: String,
}

/// One VirtualSystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualSystem {
    /// `ovf:id`.
    pub id: String,
    /// `vssd:VirtualSystemType` of the hardware section used.
    pub system_type: Option<String>,
    pub vcpus: u32,
    /// Bytes.
    pub memory: u64,
    pub drives: Vec<DriveItem>,
    pub nics: Vec<NicItem>,
    pub element: String,
}

/// The parts of a descriptor the import uses, and what it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub file: String,
    pub version: OvfVersion,
    pub files: Vec<FileRef>,
    pub disks: Vec<Disk>,
    /// `NetworkSection/Network` names.
    pub networks: Vec<String>,
    pub systems: Vec<VirtualSystem>,
    /// Everything not imported, one line each (element and why).
    pub unsupported: Vec<String>,
    /// Assumptions made (defaults filled in, rounding), one line each.
    pub notes: Vec<String>,
}

/// CIM_ResourceAllocationSettingData.ResourceType names (DSP1041 / CIM schema 2.x).
fn resource_type_name(t: u32) -> &'static str {
    match t {
        1 => "other",
        2 => "computer system",
        3 => "processor",
        4 => "memory",
        5 => "IDE controller",
        6 => "parallel SCSI HBA",
        7 => "FC HBA",
        8 => "iSCSI HBA",
        9 => "IB HCA",
        10 => "Ethernet adapter",
        11 => "other network adapter",
        12 => "I/O slot",
        13 => "I/O device",
        14 => "floppy drive",
        15 => "CD drive",
        16 => "DVD drive",
        17 => "disk drive",
        18 => "tape drive",
        19 => "storage extent",
        20 => "other storage device",
        21 => "serial port",
        22 => "parallel port",
        23 => "USB controller",
        24 => "graphics controller",
        25 => "IEEE 1394 controller",
        26 => "partitionable unit",
        27 => "base partitionable unit",
        28 => "power",
        29 => "cooling capacity",
        30 => "Ethernet switch port",
        31 => "logical disk",
        32 => "storage volume",
        33 => "Ethernet connection",
        35 => "sound card",
        _ => "unknown resource type",
    }
}

/// Parses DSP0004 programmatic units ("byte", "byte * 2^20", "byte*10^9", "byte * 1024") and
/// the older names VMware and VirtualBox write ("MegaBytes", "KiloBytes", "GigaBytes").
/// Returns the number of bytes one unit stands for.
pub fn parse_byte_units(units: &str) -> Option<u64> {
    let compact: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    match compact.to_ascii_lowercase().as_str() {
        "byte" | "bytes" => return Some(1),
        "kilobytes" | "kb" | "kib" => return Some(1 << 10),
        "megabytes" | "mb" | "mib" => return Some(1 << 20),
        "gigabytes" | "gb" | "gib" => return Some(1 << 30),
        "terabytes" | "tb" | "tib" => return Some(1 << 40),
        _ => {}
    }
    let mut terms = compact.split('*');
    if !matches!(terms.next(), Some("byte" | "bytes")) {
        return None;
    }
    let mut mult: u64 = 1;
    for term in terms {
        let factor = match term.split_once('^') {
            Some((base, exp)) => {
                let base: u64 = base.parse().ok()?;
                let exp: u32 = exp.parse().ok()?;
                base.checked_pow(exp)?
            }
            None => term.parse().ok()?,
        };
        if factor == 0 {
            return None;
        }
        mult = mult.checked_mul(factor)?;
    }
    Some(mult)
}

/// A guest or network name the manifest accepts (1 to 32 of `A-Z a-z 0-9 _ -`), made from
/// any text; `fallback` when nothing usable is left.
pub fn manifest_name(text: &str, fallback: &str) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if out.trim_matches('_').is_empty() {
        out = fallback.to_string();
    }
    out
}

/// Parsing context: the document and the file name for errors.
struct Ctx<'a, 'input> {
    doc: &'a roxmltree::Document<'input>,
    file: String,
    ns: &'static str,
}

impl<'a, 'input> Ctx<'a, 'input> {
    fn err(&self, element: &str, node: Node, message: impl Into<String>) -> OvfError {
        let pos = self.doc.text_pos_at(node.range().start);
        OvfError {
            file: self.file.clone(),
            element: element.to_string(),
            message: format!("{} (line {})", message.into(), pos.row),
        }
    }

    /// An attribute in the envelope namespace (`ovf:id`), or unqualified as some tools write.
    fn attr(&self, node: Node<'a, 'input>, name: &str) -> Option<&'a str> {
        node.attribute((self.ns, name))
            .or_else(|| node.attribute(name))
    }

    fn is_ovf(&self, node: Node, name: &str) -> bool {
        node.is_element()
            && node.tag_name().name() == name
            && node.tag_name().namespace() == Some(self.ns)
    }

    /// `prefix:Name` of an element, for listings.
    fn qname(&self, node: Node) -> String {
        let name = node.tag_name();
        match name.namespace().and_then(|ns| node.lookup_prefix(ns)) {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}:{}", name.name()),
            _ => name.name().to_string(),
        }
    }

    /// `ovf:required` is true unless it says false (DSP0243: the default is true).
    fn required(&self, node: Node) -> bool {
        !matches!(self.attr(node, "required"), Some("false" | "0"))
    }
}

fn elements<'a, 'input>(node: Node<'a, 'input>) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children().filter(|n| n.is_element())
}

/// The trimmed text of the first child element named `name` (any namespace: rasd, sasd,
/// epasd and vssd all name their properties the same way).
fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    elements(node)
        .find(|n| n.tag_name().name() == name)
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Parses an OVF descriptor. `file` names it in errors (e.g. "disk.ovf" or
/// "appliance.ova:disk.ovf").
pub fn parse_descriptor(file: &str, xml: &str) -> std::result::Result<Descriptor, OvfError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| OvfError {
        file: file.to_string(),
        element: "document".to_string(),
        message: format!("not well-formed XML: {e}"),
    })?;
    let root = doc.root_element();
    let version = match root.tag_name().namespace() {
        Some(NS_ENVELOPE_1) => OvfVersion::V1,
        Some(NS_ENVELOPE_2) => OvfVersion::V2,
        _ => {
            return Err(OvfError {
                file: file.to_string(),
                element: root.tag_name().name().to_string(),
                message: format!(
                    "the root element is not an OVF Envelope (namespace {NS_ENVELOPE_1} or \
                     {NS_ENVELOPE_2}); found {} in namespace {}",
                    root.tag_name().name(),
                    root.tag_name().namespace().unwrap_or("(none)")
                ),
            })
        }
    };
    let ns = match version {
        OvfVersion::V1 => NS_ENVELOPE_1,
        OvfVersion::V2 => NS_ENVELOPE_2,
    };
    let cx = Ctx {
        doc: &doc,
        file: file.to_string(),
        ns,
    };
    if root.tag_name().name() != "Envelope" {
        return Err(cx.err(
            root.tag_name().name(),
            root,
            "the root element must be Envelope",
        ));
    }
    let mut d = Descriptor {
        file: file.to_string(),
        version,
        files: Vec::new(),
        disks: Vec::new(),
        networks: Vec::new(),
        systems: Vec::new(),
        unsupported: Vec::new(),
        notes: Vec::new(),
    };
    let mut system_nodes = Vec::new();
    for node in elements(root) {
        let name = node.tag_name().name();
        let ovf = node.tag_name().namespace() == Some(ns);
        match name {
            "References" if ovf => parse_references(&cx, node, &mut d)?,
            "DiskSection" if ovf => parse_disks(&cx, node, &mut d)?,
            "NetworkSection" if ovf => {
                for (i, net) in elements(node)
                    .filter(|n| cx.is_ovf(*n, "Network"))
                    .enumerate()
                {
                    let path = format!("NetworkSection/Network[{}]", i + 1);
                    let name = cx
                        .attr(net, "name")
                        .ok_or_else(|| cx.err(&path, net, "no ovf:name"))?;
                    d.networks.push(name.to_string());
                }
            }
            "VirtualSystem" if ovf => system_nodes.push((node, String::new())),
            "VirtualSystemCollection" if ovf => {
                let cid = cx.attr(node, "id").unwrap_or("?");
                for child in elements(node) {
                    if cx.is_ovf(child, "VirtualSystem") {
                        system_nodes.push((child, format!("VirtualSystemCollection[{cid}]/")));
                    } else if !cx.is_ovf(child, "Info") && !cx.is_ovf(child, "Name") {
                        d.unsupported.push(section_line(
                            &cx,
                            child,
                            &format!("VirtualSystemCollection[{cid}]/"),
                        ));
                    }
                }
            }
            _ => d.unsupported.push(section_line(&cx, node, "")),
        }
    }
    if system_nodes.is_empty() {
        return Err(cx.err("Envelope", root, "no VirtualSystem (nothing to import)"));
    }
    for (node, prefix) in system_nodes {
        let sys = parse_system(&cx, node, &prefix, &mut d)?;
        d.systems.push(sys);
    }
    check_links(&cx, &d)?;
    // Files that no disk uses (ISO images, NVRAM ...) are not copied.
    for f in &d.files {
        let used = d
            .disks
            .iter()
            .any(|k| k.file_ref.as_deref() == Some(f.id.as_str()))
            || d.systems
                .iter()
                .flat_map(|s| &s.drives)
                .any(|r| r.source == DiskSource::File(f.id.clone()));
        if !used {
            d.unsupported.push(format!(
                "{}: file '{}' ({}) is used by no disk: not copied",
                f.element, f.id, f.href
            ));
        }
    }
    Ok(d)
}

/// One listing line for a section or element the import does not use.
fn section_line(cx: &Ctx, node: Node, prefix: &str) -> String {
    let req = if cx.required(node) {
        ""
    } else {
        " (ovf:required=\"false\")"
    };
    let what = match node.tag_name().name() {
        "ProductSection" => "product information and properties",
        "EulaSection" => "licence text",
        "AnnotationSection" => "annotation",
        "OperatingSystemSection" => "guest OS type",
        "StartupSection" => "start order",
        "DeploymentOptionSection" => "deployment options (the default configuration is imported)",
        "InstallSection" => "install-time boot",
        "ResourceAllocationSection" => "resource reservations",
        "EnvironmentFilesSection" => "OVF environment files",
        "Info" | "Name" => "text",
        _ => "not understood",
    };
    let extra = match (node.tag_name().name(), child_text(node, "Description")) {
        ("OperatingSystemSection", Some(os)) => format!(" '{os}'"),
        _ => String::new(),
    };
    format!(
        "{prefix}{}{extra}: {what}, not imported{req}",
        cx.qname(node)
    )
}

fn parse_references(cx: &Ctx, node: Node, d: &mut Descriptor) -> std::result::Result<(), OvfError> {
    for (i, f) in elements(node).enumerate() {
        let path = format!("References/{}[{}]", f.tag_name().name(), i + 1);
        if !cx.is_ovf(f, "File") {
            d.unsupported.push(format!(
                "References/{}: not understood, not imported",
                cx.qname(f)
            ));
            continue;
        }
        let id = cx
            .attr(f, "id")
            .ok_or_else(|| cx.err(&path, f, "no ovf:id"))?;
        let href = cx
            .attr(f, "href")
            .ok_or_else(|| cx.err(&path, f, "no ovf:href"))?;
        check_href(href).map_err(|why| cx.err(&path, f, format!("href '{href}': {why}")))?;
        let size =
            match cx.attr(f, "size") {
                None => None,
                Some(s) => Some(s.trim().parse::<u64>().map_err(|_| {
                    cx.err(&path, f, format!("ovf:size '{s}' is not a byte count"))
                })?),
            };
        let gzip = match cx.attr(f, "compression") {
            None | Some("identity") => false,
            Some("gzip") => true,
            Some(other) => {
                return Err(cx.err(
                    &path,
                    f,
                    format!("ovf:compression '{other}' is not supported (gzip is)"),
                ))
            }
        };
        if cx.attr(f, "chunkSize").is_some() {
            return Err(cx.err(&path, f, "chunked files (ovf:chunkSize) are not supported"));
        }
        if d.files.iter().any(|o| o.id == id) {
            return Err(cx.err(&path, f, format!("ovf:id '{id}' is used twice")));
        }
        d.files.push(FileRef {
            id: id.to_string(),
            href: href.to_string(),
            size,
            gzip,
            element: path,
        });
    }
    Ok(())
}

/// A package file must be a plain relative name next to the descriptor.
fn check_href(href: &str) -> std::result::Result<(), &'static str> {
    if href.contains("://") {
        return Err("remote files are not supported (download the package first)");
    }
    if href.is_empty() || href.starts_with('/') || href.contains('\\') {
        return Err("must be a relative file name");
    }
    if href
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err("may not contain empty, `.` or `..` components");
    }
    Ok(())
}

fn parse_disks(cx: &Ctx, node: Node, d: &mut Descriptor) -> std::result::Result<(), OvfError> {
    for (i, k) in elements(node).filter(|n| cx.is_ovf(*n, "Disk")).enumerate() {
        let path = format!("DiskSection/Disk[{}]", i + 1);
        let id = cx
            .attr(k, "diskId")
            .ok_or_else(|| cx.err(&path, k, "no ovf:diskId"))?;
        let cap_text = cx
            .attr(k, "capacity")
            .ok_or_else(|| cx.err(&path, k, "no ovf:capacity"))?;
        let cap: u64 = cap_text.trim().parse().map_err(|_| {
            cx.err(&path, k, format!("ovf:capacity '{cap_text}' is not a number (${{property}} references are not supported)"))
        })?;
        let units = cx.attr(k, "capacityAllocationUnits").unwrap_or("byte");
        let mult = parse_byte_units(units).ok_or_else(|| {
            cx.err(
                &path,
                k,
                format!("unknown capacityAllocationUnits '{units}'"),
            )
        })?;
        let capacity = cap
            .checked_mul(mult)
            .ok_or_else(|| cx.err(&path, k, "capacity overflows 64 bits"))?;
        if capacity == 0 {
            return Err(cx.err(&path, k, "capacity is 0"));
        }
        if d.disks.iter().any(|o| o.id == id) {
            return Err(cx.err(&path, k, format!("ovf:diskId '{id}' is used twice")));
        }
        if cx.attr(k, "parentRef").is_some() {
            return Err(cx.err(&path, k, "delta disks (ovf:parentRef) are not supported"));
        }
        d.disks.push(Disk {
            id: id.to_string(),
            file_ref: cx.attr(k, "fileRef").map(str::to_string),
            capacity,
            format: cx.attr(k, "format").map(str::to_string),
            element: path,
        });
    }
    Ok(())
}

/// Cross-references: every fileRef is in References, every drive's disk or file exists.
fn check_links(cx: &Ctx, d: &Descriptor) -> std::result::Result<(), OvfError> {
    for k in &d.disks {
        if let Some(r) = &k.file_ref {
            if !d.files.iter().any(|f| &f.id == r) {
                return Err(OvfError {
                    file: cx.file.clone(),
                    element: k.element.clone(),
                    message: format!("fileRef '{r}' not in References"),
                });
            }
        }
    }
    for s in &d.systems {
        for r in &s.drives {
            let ok = match &r.source {
                DiskSource::Disk(id) => d.disks.iter().any(|k| &k.id == id),
                DiskSource::File(id) => d.files.iter().any(|f| &f.id == id),
            };
            if !ok {
                let (what, id, section) = match &r.source {
                    DiskSource::Disk(id) => ("disk", id, "DiskSection"),
                    DiskSource::File(id) => ("file", id, "References"),
                };
                return Err(OvfError {
                    file: cx.file.clone(),
                    element: r.element.clone(),
                    message: format!("HostResource names {what} '{id}', not in {section}"),
                });
            }
        }
    }
    Ok(())
}

fn parse_system(
    cx: &Ctx,
    node: Node,
    prefix: &str,
    d: &mut Descriptor,
) -> std::result::Result<VirtualSystem, OvfError> {
    let id = cx
        .attr(node, "id")
        .ok_or_else(|| cx.err(&format!("{prefix}VirtualSystem"), node, "no ovf:id"))?;
    let base = format!("{prefix}VirtualSystem[{id}]");
    // Items may belong to deployment configurations; use the default one.
    let default_config = elements(node)
        .chain(elements(cx.doc.root_element()))
        .filter(|n| cx.is_ovf(*n, "DeploymentOptionSection"))
        .flat_map(elements)
        .filter(|n| cx.is_ovf(*n, "Configuration"))
        .fold(None::<(String, bool)>, |best, c| {
            let is_default = matches!(cx.attr(c, "default"), Some("true" | "1"));
            match best {
                Some((_, true)) => best,
                Some(_) if !is_default => best,
                _ => cx.attr(c, "id").map(|id| (id.to_string(), is_default)),
            }
        })
        .map(|(id, _)| id);
    let mut hw_sections = elements(node).filter(|n| cx.is_ovf(*n, "VirtualHardwareSection"));
    let Some(hw) = hw_sections.next() else {
        return Err(cx.err(&base, node, "no VirtualHardwareSection"));
    };
    for (i, other) in hw_sections.enumerate() {
        let t = elements(other)
            .find(|n| n.tag_name().name() == "System")
            .and_then(|s| child_text(s, "VirtualSystemType"))
            .unwrap_or("?");
        d.unsupported.push(format!(
            "{base}/VirtualHardwareSection[{}] (type {t}): only the first hardware section is used",
            i + 2
        ));
    }
    for child in elements(node) {
        // Info and Name are descriptions (the guest is named after ovf:id).
        let text = cx.is_ovf(child, "Info") || cx.is_ovf(child, "Name");
        if !cx.is_ovf(child, "VirtualHardwareSection") && !text {
            d.unsupported
                .push(section_line(cx, child, &format!("{base}/")));
        }
    }
    let hw_path = format!("{base}/VirtualHardwareSection");
    let system_type = elements(hw)
        .find(|n| n.tag_name().name() == "System")
        .and_then(|s| child_text(s, "VirtualSystemType"))
        .map(str::to_string);

    struct Raw<'a, 'i> {
        node: Node<'a, 'i>,
        path: String,
        rtype: u32,
    }
    let mut items = Vec::new();
    let mut index = 0;
    for item in elements(hw) {
        let tag = item.tag_name().name();
        if !matches!(tag, "Item" | "StorageItem" | "EthernetPortItem") {
            if !matches!(tag, "Info" | "System") {
                d.unsupported.push(format!(
                    "{hw_path}/{}: not understood, not imported",
                    cx.qname(item)
                ));
            }
            continue;
        }
        index += 1;
        let path = format!("{hw_path}/{tag}[{index}]");
        if let (Some(want), Some(configs)) = (&default_config, cx.attr(item, "configuration")) {
            if !configs.split_whitespace().any(|c| c == want) {
                d.notes.push(format!("{path}: belongs to configuration(s) '{configs}', not the default '{want}': skipped"));
                continue;
            }
        }
        let rtype_text = child_text(item, "ResourceType")
            .ok_or_else(|| cx.err(&path, item, "no ResourceType"))?;
        let rtype: u32 = rtype_text.parse().map_err(|_| {
            cx.err(
                &path,
                item,
                format!("ResourceType '{rtype_text}' is not a number"),
            )
        })?;
        items.push(Raw {
            node: item,
            path,
            rtype,
        });
    }

    let describe = |r: &Raw| {
        let name = child_text(r.node, "ElementName")
            .map(|n| format!(", '{n}'"))
            .unwrap_or_default();
        let sub = child_text(r.node, "ResourceSubType")
            .map(|s| format!(" {s}"))
            .unwrap_or_default();
        format!(
            "{} (ResourceType {} {}{sub}{name})",
            r.path,
            r.rtype,
            resource_type_name(r.rtype)
        )
    };
    let quantity = |r: &Raw| -> std::result::Result<u64, OvfError> {
        let q = child_text(r.node, "VirtualQuantity")
            .ok_or_else(|| cx.err(&r.path, r.node, "no VirtualQuantity"))?;
        q.parse().map_err(|_| {
            cx.err(
                &r.path,
                r.node,
                format!("VirtualQuantity '{q}' is not a number"),
            )
        })
    };

    let mut vcpus: Option<u32> = None;
    let mut memory: Option<u64> = None;
    let mut controllers: Vec<(String, String)> = Vec::new();
    for r in items.iter().filter(|r| matches!(r.rtype, 5 | 6 | 20)) {
        let iid = child_text(r.node, "InstanceID")
            .ok_or_else(|| cx.err(&r.path, r.node, "no InstanceID"))?;
        let sub = child_text(r.node, "ResourceSubType")
            .map(|s| format!(" {s}"))
            .unwrap_or_default();
        controllers.push((
            iid.to_string(),
            format!("{}{sub}", resource_type_name(r.rtype)),
        ));
    }
    let mut drives = Vec::new();
    let mut nics = Vec::new();
    for r in &items {
        match r.rtype {
            3 => {
                if vcpus.is_some() {
                    return Err(cx.err(&r.path, r.node, "a second processor Item"));
                }
                let q = quantity(r)?;
                if !(1..=64).contains(&q) {
                    return Err(cx.err(
                        &r.path,
                        r.node,
                        format!("{q} virtual CPUs (ferrovisor guests have 1 to 64)"),
                    ));
                }
                vcpus = Some(q as u32);
            }
            4 => {
                if memory.is_some() {
                    return Err(cx.err(&r.path, r.node, "a second memory Item"));
                }
                let q = quantity(r)?;
                let units = match child_text(r.node, "AllocationUnits") {
                    Some(u) => u,
                    None => {
                        d.notes.push(format!(
                            "{}: no AllocationUnits; taken as MiB (byte * 2^20)",
                            r.path
                        ));
                        "byte * 2^20"
                    }
                };
                let mult = parse_byte_units(units).ok_or_else(|| {
                    cx.err(
                        &r.path,
                        r.node,
                        format!("unknown AllocationUnits '{units}'"),
                    )
                })?;
                let bytes = q
                    .checked_mul(mult)
                    .ok_or_else(|| cx.err(&r.path, r.node, "memory size overflows 64 bits"))?;
                let rounded = bytes.div_ceil(MIB).saturating_mul(MIB);
                if rounded != bytes {
                    d.notes.push(format!(
                        "{}: {bytes} bytes of memory rounded up to {} MiB",
                        r.path,
                        rounded / MIB
                    ));
                }
                if !(MIB..=64 << 30).contains(&rounded) {
                    return Err(cx.err(
                        &r.path,
                        r.node,
                        format!("{bytes} bytes of memory (ferrovisor guests have 1 MiB to 64 GiB)"),
                    ));
                }
                memory = Some(rounded);
            }
            5 | 6 | 20 => d.notes.push(format!(
                "{}: its disks become virtio-blk disks",
                describe(r)
            )),
            17 => {
                let Some(host) = child_text(r.node, "HostResource") else {
                    d.unsupported.push(format!(
                        "{}: an empty drive (no HostResource), not imported",
                        describe(r)
                    ));
                    continue;
                };
                let rest = host.strip_prefix("ovf:").unwrap_or(host);
                let source = if let Some(id) = rest.strip_prefix("/disk/") {
                    DiskSource::Disk(id.to_string())
                } else if let Some(id) = rest.strip_prefix("/file/") {
                    DiskSource::File(id.to_string())
                } else {
                    return Err(cx.err(
                        &r.path,
                        r.node,
                        format!(
                            "HostResource '{host}' is neither ovf:/disk/<id> nor ovf:/file/<id>"
                        ),
                    ));
                };
                let controller = match child_text(r.node, "Parent") {
                    None => None,
                    Some(p) => Some(
                        controllers
                            .iter()
                            .find(|(iid, _)| iid == p)
                            .map(|(_, what)| what.clone())
                            .ok_or_else(|| {
                                cx.err(
                                    &r.path,
                                    r.node,
                                    format!(
                                        "Parent '{p}' is not the InstanceID of a controller Item"
                                    ),
                                )
                            })?,
                    ),
                };
                drives.push(DriveItem {
                    source,
                    controller,
                    element: r.path.clone(),
                });
            }
            10 => {
                let model = child_text(r.node, "ResourceSubType").map(str::to_string);
                d.notes
                    .push(format!("{}: becomes a virtio-net NIC", describe(r)));
                nics.push(NicItem {
                    connection: child_text(r.node, "Connection").map(str::to_string),
                    mac: child_text(r.node, "Address").map(str::to_string),
                    model,
                    element: r.path.clone(),
                });
            }
            _ => {
                let req = if cx.required(r.node) {
                    ""
                } else {
                    " (ovf:required=\"false\")"
                };
                d.unsupported
                    .push(format!("{}: not supported, not imported{req}", describe(r)));
            }
        }
    }
    let vcpus = vcpus.unwrap_or_else(|| {
        d.notes.push(format!(
            "{hw_path}: no processor Item (ResourceType 3); 1 vCPU"
        ));
        1
    });
    let memory = memory.ok_or_else(|| cx.err(&hw_path, hw, "no memory Item (ResourceType 4)"))?;
    Ok(VirtualSystem {
        id: id.to_string(),
        system_type,
        vcpus,
        memory,
        drives,
        nics,
        element: base,
    })
}

// ---------------------------------------------------------------------------
// The manifest
// ---------------------------------------------------------------------------

/// What the guest boots, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// File name of the kernel next to the manifest.
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: String,
}

/// A disk image the import writes: its file name in the output directory and where it comes
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDisk {
    /// File name in the output directory (`<guest>-disk<N>.img`).
    pub out_name: String,
    /// The DiskSection disk, or None for a `ovf:/file/` drive.
    pub disk_id: Option<String>,
    /// The References file, or None for a blank disk.
    pub file_id: Option<String>,
    /// Bytes the raw image must have (the disk's capacity; None: the image's own size).
    pub capacity: Option<u64>,
}

/// One guest of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedGuest {
    pub name: String,
    /// Indexes into [`Plan::disks`], with the serial each gets.
    pub disks: Vec<(usize, String)>,
    /// (network name, MAC when the descriptor gives a usable one).
    pub nics: Vec<(String, Option<String>)>,
}

/// What the import writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub guests: Vec<PlannedGuest>,
    /// Each source disk once, even when several guests use it (a shared gold image).
    pub disks: Vec<PlannedDisk>,
    pub networks: Vec<String>,
    /// Notes added while planning (MACs not usable ...).
    pub notes: Vec<String>,
}

/// Decides guest, disk and network names from a parsed descriptor.
pub fn plan(d: &Descriptor) -> Plan {
    let mut p = Plan {
        guests: Vec::new(),
        disks: Vec::new(),
        networks: Vec::new(),
        notes: Vec::new(),
    };
    let mut names = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for (i, s) in d.systems.iter().enumerate() {
        let base = manifest_name(&s.id, &format!("vm{}", i + 1));
        let mut name = base.clone();
        let mut n = 2;
        while names.contains(&name) {
            let suffix = format!("-{n}");
            name = format!("{}{suffix}", &base[..base.len().min(32 - suffix.len())]);
            n += 1;
        }
        names.insert(name.clone());
        let mut g = PlannedGuest {
            name: name.clone(),
            disks: Vec::new(),
            nics: Vec::new(),
        };
        for r in &s.drives {
            let (disk_id, file_id, capacity) = match &r.source {
                DiskSource::Disk(id) => {
                    let k = d.disks.iter().find(|k| &k.id == id);
                    (
                        Some(id.clone()),
                        k.and_then(|k| k.file_ref.clone()),
                        k.map(|k| k.capacity),
                    )
                }
                DiskSource::File(id) => (None, Some(id.clone()), None),
            };
            let existing = p
                .disks
                .iter()
                .position(|k| k.disk_id == disk_id && k.file_id == file_id && disk_id.is_some());
            let index = match existing {
                Some(i) => i,
                None => {
                    p.disks.push(PlannedDisk {
                        out_name: format!("{name}-disk{}.img", g.disks.len() + 1),
                        disk_id: disk_id.clone(),
                        file_id: file_id.clone(),
                        capacity,
                    });
                    p.disks.len() - 1
                }
            };
            let raw = disk_id.or(file_id).unwrap_or_default();
            let mut serial: String = raw
                .chars()
                .filter(|c| (' '..='~').contains(c))
                .take(loader::manifest::SERIAL_MAX)
                .collect();
            let mut n = g.disks.len() + 1;
            while serial.is_empty() || g.disks.iter().any(|(_, s)| *s == serial) {
                serial = format!("disk{n}");
                n += 1;
            }
            g.disks.push((index, serial));
        }
        for nic in &s.nics {
            let net = match &nic.connection {
                Some(c) => manifest_name(c, "net"),
                None => {
                    p.notes.push(format!(
                        "{}: no Connection; attached to network \"default\"",
                        nic.element
                    ));
                    "default".to_string()
                }
            };
            let mac = nic.mac.as_ref().and_then(|m| {
                match loader::manifest::MacAddr::parse(m.trim()) {
                    Some(a) if !a.is_multicast() && a.0 != [0; 6] => {
                        let a = a.to_string();
                        if macs.contains(&a) {
                            p.notes.push(format!(
                                "{}: Address '{m}' is already another NIC's; one is derived from the guest name",
                                nic.element
                            ));
                            return None;
                        }
                        macs.insert(a.clone());
                        Some(a)
                    }
                    _ => {
                        p.notes.push(format!(
                            "{}: Address '{m}' is not a unicast MAC; one is derived from the guest name",
                            nic.element
                        ));
                        None
                    }
                }
            });
            if !p.networks.contains(&net) {
                p.networks.push(net.clone());
            }
            g.nics.push((net, mac));
        }
        p.guests.push(g);
    }
    for n in &d.networks {
        let net = manifest_name(n, "net");
        if !p.networks.contains(&net) {
            p.networks.push(net);
        }
    }
    p
}

/// A TOML basic string in the subset the hypervisor's parser reads (escapes `\"` `\\` `\n`
/// `\t`; other control characters become `?`).
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A comment line: no line breaks inside.
fn comment(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("# {flat}\n")
}

/// The manifest text for a plan; `warnings` (package members not used ...) become comments.
pub fn manifest_text(
    source: &str,
    d: &Descriptor,
    p: &Plan,
    boot: &BootFiles,
    warnings: &[String],
) -> String {
    let mut t = String::new();
    t += &comment(&format!(
        "Imported from {source} by `cargo xtask import-ovf`."
    ));
    t +=
        "# Until guest firmware exists (issue 15) a guest cannot run its disk's own boot loader:\n";
    t += "# it boots the Linux kernel given with --kernel (`image` below) directly, with the\n";
    t += "# command line given with --cmdline (say root= for the appliance's root partition).\n";
    t += "# The [[guest.disk]] and [[guest.nic]] tables reach the guest as virtio-blk and\n";
    t += "# virtio-net devices (the guest's kernel needs their drivers), each NIC on the\n";
    t += "# [[network]] switch its descriptor named.\n";
    let mut listed: Vec<&String> = d.unsupported.iter().collect();
    listed.dedup();
    if !listed.is_empty() {
        t += "#\n# Not imported from the descriptor:\n";
        for u in listed {
            t += &comment(&format!("  {u}"));
        }
    }
    let notes: Vec<&String> = d.notes.iter().chain(&p.notes).collect();
    if !notes.is_empty() {
        t += "#\n# Notes:\n";
        for n in notes {
            t += &comment(&format!("  {n}"));
        }
    }
    if !warnings.is_empty() {
        t += "#\n# Warnings:\n";
        for w in warnings {
            t += &comment(&format!("  {w}"));
        }
    }
    for (g, s) in p.guests.iter().zip(&d.systems) {
        t += "\n[[guest]]\n";
        t += &comment(&format!(
            "{} ({}), OVF {}",
            s.element,
            s.system_type.as_deref().unwrap_or("no VirtualSystemType"),
            match d.version {
                OvfVersion::V1 => "1.x",
                OvfVersion::V2 => "2.x",
            }
        ));
        t += &format!("name = {}\n", toml_str(&g.name));
        t += &format!("memory = \"{}M\"\n", s.memory / MIB);
        t += &format!("vcpus = {}\n", s.vcpus);
        t += &format!("image = {}\n", toml_str(&boot.kernel));
        t += "kind = \"bzimage\"\n";
        if let Some(initrd) = &boot.initrd {
            t += &format!("initrd = {}\n", toml_str(initrd));
        }
        t += &format!("cmdline = {}\n", toml_str(&boot.cmdline));
        for ((index, serial), drive) in g.disks.iter().zip(&s.drives) {
            let disk = &p.disks[*index];
            t += "\n[[guest.disk]]\n";
            let from = match (&disk.disk_id, &disk.file_id) {
                (Some(k), Some(f)) => format!("disk '{k}', file '{f}'"),
                (Some(k), None) => format!("disk '{k}' (blank)"),
                (None, Some(f)) => format!("file '{f}'"),
                (None, None) => String::new(),
            };
            let ctl = drive
                .controller
                .as_ref()
                .map(|c| format!(" on the {c}"))
                .unwrap_or_default();
            t += &comment(&format!("{}: {from}{ctl}", drive.element));
            t += &format!("image = {}\n", toml_str(&disk.out_name));
            t += &format!("serial = {}\n", toml_str(serial));
        }
        for ((net, mac), nic) in g.nics.iter().zip(&s.nics) {
            t += "\n[[guest.nic]]\n";
            let model = nic
                .model
                .as_ref()
                .map(|m| format!(" (was {m})"))
                .unwrap_or_default();
            t += &comment(&format!("{}{model}", nic.element));
            t += &format!("network = {}\n", toml_str(net));
            if let Some(mac) = mac {
                t += &format!("mac = {}\n", toml_str(mac));
            }
        }
    }
    for n in &p.networks {
        t += &format!("\n[[network]]\nname = {}\n", toml_str(n));
    }
    t
}

// ---------------------------------------------------------------------------
// The import
// ---------------------------------------------------------------------------

/// `cargo xtask import-ovf` options.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The `.ova` or `.ovf` file.
    pub input: PathBuf,
    /// Output directory (created).
    pub out: PathBuf,
    /// Linux kernel (bzImage) the guests boot; copied next to the manifest.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk; copied next to the manifest.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default `console=ttyS0`).
    pub cmdline: Option<String>,
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub manifest: PathBuf,
    pub descriptor: Descriptor,
    pub plan: Plan,
    /// (file written, size in bytes).
    pub disks: Vec<(PathBuf, u64)>,
    /// Lines for the user: warnings about what still has to be done.
    pub warnings: Vec<String>,
}

/// The source of package files: a directory (`.ovf`) or files taken out of an `.ova`.
struct Package {
    /// Where the package's files are (the descriptor's directory, or the extraction
    /// directory).
    dir: PathBuf,
    /// Removed when the import ends.
    scratch: Option<PathBuf>,
    /// Names files in errors: "x.ova:disk.vmdk" or the path.
    label: String,
}

impl Drop for Package {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Reads an `.ova`: the descriptor (the first `.ovf` member, DSP0243 says it comes first)
/// and every other regular member, extracted into `scratch`.
fn open_ova(path: &Path, scratch: &Path) -> Result<(String, String, Package, Vec<String>)> {
    let ova_name = file_label(path);
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let package = Package {
        dir: scratch.to_path_buf(),
        scratch: Some(scratch.to_path_buf()),
        label: ova_name.clone(),
    };
    let mut descriptor: Option<(String, String)> = None;
    let mut members = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("{ova_name}: not a tar archive"))?
    {
        let mut entry = entry.with_context(|| format!("{ova_name}: reading the tar archive"))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_string();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if check_href(&name).is_err() || name.contains('/') {
            bail!("{ova_name}: member '{name}' is not a plain file name");
        }
        if name.ends_with(".ovf") {
            if let Some((first, _)) = &descriptor {
                bail!("{ova_name}: two descriptors, '{first}' and '{name}'");
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .with_context(|| format!("{ova_name}:{name}: not UTF-8 text"))?;
            descriptor = Some((name, text));
        } else {
            members.push(name.clone());
            let dest = scratch.join(&name);
            let mut out =
                fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
            std::io::copy(&mut entry, &mut out)
                .with_context(|| format!("{ova_name}: extracting '{name}'"))?;
        }
    }
    let (name, text) =
        descriptor.ok_or_else(|| anyhow!("{ova_name}: no .ovf descriptor in the archive"))?;
    Ok((format!("{ova_name}:{name}"), text, package, members))
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The `qemu-img -f` format for a disk, from `ovf:format` or the file name.
pub fn image_format(format: Option<&str>, href: &str) -> Option<&'static str> {
    if let Some(f) = format {
        let f = f.to_ascii_lowercase();
        if f.contains("vmdk") {
            return Some("vmdk");
        }
        if f.contains("qcow") {
            return Some("qcow2");
        }
        if f.contains("vhdx") {
            return Some("vhdx");
        }
        if f.contains("vhd") {
            return Some("vpc");
        }
        if f.ends_with("raw") || f.contains("wikipedia.org/wiki/byte") {
            return Some("raw");
        }
    }
    let ext = href.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("vmdk") => Some("vmdk"),
        Some("qcow2" | "qcow") => Some("qcow2"),
        Some("vhd") => Some("vpc"),
        Some("vhdx") => Some("vhdx"),
        Some("img" | "raw") => Some("raw"),
        _ => None,
    }
}

/// Imports `opts.input` into `opts.out`.
pub fn import(opts: &ImportOptions) -> Result<Imported> {
    let input = &opts.input;
    let lower = input.to_string_lossy().to_ascii_lowercase();
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let (desc_name, text, package, members) = if lower.ends_with(".ova") {
        open_ova(input, &opts.out.join(".import-ova"))?
    } else if lower.ends_with(".ovf") {
        let text =
            fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
        let dir = input.parent().unwrap_or(Path::new(".")).to_path_buf();
        let package = Package {
            dir,
            scratch: None,
            label: file_label(input),
        };
        (file_label(input), text, package, Vec::new())
    } else {
        bail!("{}: expected a .ova or .ovf file", input.display());
    };
    let descriptor = parse_descriptor(&desc_name, &text)?;
    let plan = plan(&descriptor);
    let mut warnings = Vec::new();
    for m in members {
        if !descriptor.files.iter().any(|f| f.href == m) {
            let what = match m.rsplit_once('.').map(|(_, e)| e) {
                Some("mf") => "the package manifest (file digests): not checked",
                Some("cert") => "the package certificate: not checked",
                _ => "not named in References: not used",
            };
            warnings.push(format!("{}: member '{m}': {what}", package.label));
        }
    }

    // Disks first: the manifest is only written once they all converted.
    let mut disks = Vec::new();
    let work = opts.out.join(".import-work");
    for pd in &plan.disks {
        let dest = opts.out.join(&pd.out_name);
        let disk = pd
            .disk_id
            .as_ref()
            .and_then(|id| descriptor.disks.iter().find(|k| &k.id == id));
        let element = disk.map(|k| k.element.clone()).unwrap_or_default();
        match pd
            .file_id
            .as_ref()
            .and_then(|id| descriptor.files.iter().find(|f| &f.id == id))
        {
            None => {
                let size = pd.capacity.unwrap_or(0);
                let f = fs::File::create(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                f.set_len(size.next_multiple_of(512))?;
            }
            Some(f) => {
                let src = package.dir.join(&f.href);
                let meta = fs::metadata(&src).map_err(|e| {
                    anyhow!(
                        "{desc_name}: {}: {}: {e}",
                        f.element,
                        describe_member(&package, &f.href)
                    )
                })?;
                if let Some(size) = f.size {
                    if meta.len() != size {
                        bail!(
                            "{desc_name}: {}: ovf:size is {size} but {} has {} bytes",
                            f.element,
                            describe_member(&package, &f.href),
                            meta.len()
                        );
                    }
                }
                let mut src = src;
                if f.gzip {
                    fs::create_dir_all(&work)?;
                    let plain = work.join(format!("{}.gunzip", pd.out_name));
                    let mut dec = flate2::read::GzDecoder::new(fs::File::open(&src)?);
                    let mut out = fs::File::create(&plain)?;
                    std::io::copy(&mut dec, &mut out).with_context(|| {
                        format!("{desc_name}: {}: gunzip of '{}'", f.element, f.href)
                    })?;
                    src = plain;
                }
                let fmt = image_format(disk.and_then(|k| k.format.as_deref()), f.href.trim_end_matches(".gz"))
                    .ok_or_else(|| {
                        anyhow!(
                            "{desc_name}: {}: unknown disk format '{}' (known: vmdk, qcow2, vhd, vhdx, raw)",
                            if element.is_empty() { &f.element } else { &element },
                            disk.and_then(|k| k.format.as_deref()).unwrap_or(&f.href)
                        )
                    })?;
                convert(&src, fmt, &dest).with_context(|| {
                    format!("{desc_name}: {}: converting '{}'", f.element, f.href)
                })?;
            }
        }
        let mut size = fs::metadata(&dest)?.len();
        if let Some(cap) = pd.capacity {
            if size > cap {
                bail!(
                    "{desc_name}: {element}: the image holds {size} bytes, more than the disk's capacity of {cap}"
                );
            }
            if size < cap {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&dest)?
                    .set_len(cap)?;
                size = cap;
            }
        }
        if !size.is_multiple_of(512) {
            let padded = size.next_multiple_of(512);
            fs::OpenOptions::new()
                .write(true)
                .open(&dest)?
                .set_len(padded)?;
            warnings.push(format!(
                "{}: padded from {size} to {padded} bytes (whole 512-byte sectors)",
                pd.out_name
            ));
            size = padded;
        }
        disks.push((dest, size));
    }
    let _ = fs::remove_dir_all(&work);

    // The boot files, next to the manifest.
    let copy_in = |p: &Path, what: &str| -> Result<String> {
        let name = file_label(p);
        if check_href(&name).is_err() {
            bail!("{what} {}: not a usable file name", p.display());
        }
        let dest = opts.out.join(&name);
        if fs::canonicalize(p).ok() != fs::canonicalize(&dest).ok() {
            fs::copy(p, &dest).with_context(|| format!("copying {what} {}", p.display()))?;
        }
        Ok(name)
    };
    let kernel = match &opts.kernel {
        Some(k) => copy_in(k, "kernel")?,
        None => {
            warnings.push(format!(
                "no --kernel: put a Linux bzImage at {} before booting the manifest",
                opts.out.join("vmlinuz").display()
            ));
            "vmlinuz".to_string()
        }
    };
    let initrd = match &opts.initrd {
        Some(i) => Some(copy_in(i, "initrd")?),
        None => None,
    };
    let boot = BootFiles {
        kernel,
        initrd,
        cmdline: opts
            .cmdline
            .clone()
            .unwrap_or_else(|| "console=ttyS0".to_string()),
    };
    let text = manifest_text(&file_label(input), &descriptor, &plan, &boot, &warnings);
    // What we write must be what the hypervisor accepts.
    let manifest_path = opts.out.join("manifest.toml");
    let parsed = loader::manifest::parse("manifest.toml", &text)
        .map_err(|e| anyhow!("import-ovf wrote a manifest the hypervisor rejects (a bug): {e}"))?;
    loader::manifest::validate_files("manifest.toml", &parsed, |name| {
        fs::metadata(opts.out.join(name)).ok().map(|m| m.len())
    })
    .map_err(|e| anyhow!("import-ovf wrote a manifest the hypervisor rejects (a bug): {e}"))?;
    fs::write(&manifest_path, text)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    Ok(Imported {
        manifest: manifest_path,
        descriptor,
        plan,
        disks,
        warnings,
    })
}

fn describe_member(p: &Package, href: &str) -> String {
    if p.scratch.is_some() {
        format!("member '{href}' of {}", p.label)
    } else {
        format!("'{}'", p.dir.join(href).display())
    }
}

/// `qemu-img convert -f FMT -O raw`; a raw source is copied.
fn convert(src: &Path, fmt: &str, dest: &Path) -> Result<()> {
    if fmt == "raw" {
        fs::copy(src, dest).with_context(|| format!("copying {}", src.display()))?;
        return Ok(());
    }
    let qemu_img = crate::prereq::ensure_qemu_img()?;
    let out = Command::new(qemu_img)
        .args(["convert", "-q", "-f", fmt, "-O", "raw"])
        .arg(src)
        .arg(dest)
        .output()
        .context("running qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img convert -f {fmt} -O raw failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The lines `cargo xtask import-ovf` prints.
pub fn report(i: &Imported) -> Vec<String> {
    let mut lines = vec![format!("import-ovf: wrote {}", i.manifest.display())];
    for (g, s) in i.plan.guests.iter().zip(&i.descriptor.systems) {
        lines.push(format!(
            "  guest {}: {} vCPU{}, {} MiB, {} disk{}, {} NIC{}",
            g.name,
            s.vcpus,
            if s.vcpus == 1 { "" } else { "s" },
            s.memory / MIB,
            g.disks.len(),
            if g.disks.len() == 1 { "" } else { "s" },
            g.nics.len(),
            if g.nics.len() == 1 { "" } else { "s" },
        ));
    }
    for (path, size) in &i.disks {
        lines.push(format!("  disk {} ({size} bytes, raw)", path.display()));
    }
    for n in &i.plan.networks {
        lines.push(format!("  network {n}"));
    }
    for u in &i.descriptor.unsupported {
        lines.push(format!("  not imported: {u}"));
    }
    for n in i.descriptor.notes.iter().chain(&i.plan.notes) {
        lines.push(format!("  note: {n}"));
    }
    for w in &i.warnings {
        lines.push(format!("  warning: {w}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use loader::manifest::{self as hvm, MacSource};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-ovf-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// qemu-img, installed if need be; None (with the reason printed) when it can't be had.
    fn qemu_img() -> Option<PathBuf> {
        match crate::prereq::ensure_qemu_img() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("SKIPPED: qemu-img is absent and could not be installed: {e:#}");
                None
            }
        }
    }

    /// A raw image with a recognisable pattern: a header, pseudo-random bytes spread over
    /// the image (so a streamOptimized VMDK has several grains) and a trailer.
    fn pattern_image(len: usize) -> Vec<u8> {
        let mut img = vec![0u8; len];
        img[..24].copy_from_slice(b"ferrovisor ovf test disk");
        let mut x: u32 = 0x1234_5678;
        for chunk in (4096..len - 4096).step_by(128 * 1024) {
            for b in &mut img[chunk..chunk + 1000] {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
        }
        let end = len - 16;
        img[end..].copy_from_slice(b"--end of disk --");
        img
    }

    fn envelope(ns: &str, body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="{v}" xml:lang="en-US"
    xmlns="{ns}" xmlns:ovf="{ns}"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:vbox="http://www.virtualbox.org/ovf/machine">
{body}
</Envelope>
"#,
            v = if ns == NS_ENVELOPE_2 { "2.0" } else { "1.0" }
        )
    }

    /// A descriptor as VirtualBox 6/7 exports one with "OVF 2.0" chosen.
    fn virtualbox_ovf(vmdk_size: u64, capacity: u64) -> String {
        envelope(
            NS_ENVELOPE_2,
            &format!(
                r#"  <References>
    <File ovf:id="file1" ovf:href="web-disk001.vmdk" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="6e7c1c2a-0b1c-4a57-9d7e-1f1b0e0c7a11"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="96">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>web</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>2 virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>256 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>256 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>ideController0</rasd:Caption>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>ideController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>usb</rasd:Caption>
        <rasd:Description>USB Controller</rasd:Description>
        <rasd:ElementName>usb</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceType>23</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AddressOnParent>3</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:Caption>sound</rasd:Caption>
        <rasd:Description>Sound Card</rasd:Description>
        <rasd:ElementName>sound</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceSubType>ensoniq1371</rasd:ResourceSubType>
        <rasd:ResourceType>35</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>cdrom1</rasd:Caption>
        <rasd:Description>CD-ROM Drive</rasd:Description>
        <rasd:ElementName>cdrom1</rasd:ElementName>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{{5b8c4f0e-2d3a-4c1e-9f00-000000000001}}" name="web">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware><CPU count="2"/></Hardware>
    </vbox:Machine>
  </VirtualSystem>"#
            ),
        )
    }

    /// Writes a tar with the descriptor first, as DSP0243 requires of an OVA.
    fn write_ova(path: &Path, members: &[(&str, &[u8])]) {
        let mut b = tar::Builder::new(fs::File::create(path).unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
    }

    fn parse_manifest(path: &Path) -> hvm::Manifest {
        let text = fs::read_to_string(path).unwrap();
        hvm::parse("manifest.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn virtualbox_ova_with_stream_optimized_vmdk() {
        let Some(qemu_img) = qemu_img() else { return };
        let dir = scratch("vbox");
        let raw = pattern_image(4 << 20);
        fs::write(dir.join("src.raw"), &raw).unwrap();
        crate::run_command(
            Command::new(&qemu_img)
                .args([
                    "convert",
                    "-q",
                    "-f",
                    "raw",
                    "-O",
                    "vmdk",
                    "-o",
                    "subformat=streamOptimized",
                ])
                .arg(dir.join("src.raw"))
                .arg(dir.join("web-disk001.vmdk")),
        )
        .unwrap();
        let vmdk = fs::read(dir.join("web-disk001.vmdk")).unwrap();
        // It really is a compressed VMDK, not a copy of the raw bytes.
        assert_eq!(&vmdk[..4], b"KDMV");
        assert!(vmdk.len() < raw.len());
        let ovf = virtualbox_ovf(vmdk.len() as u64, raw.len() as u64);
        let ova = dir.join("web.ova");
        let mf = b"SHA256 (web.ovf) = 00\nSHA256 (web-disk001.vmdk) = 00\n";
        write_ova(
            &ova,
            &[
                ("web.ovf", ovf.as_bytes()),
                ("web-disk001.vmdk", &vmdk),
                ("web.mf", mf),
            ],
        );
        fs::write(dir.join("vmlinuz"), b"not really a kernel").unwrap();

        let out = dir.join("out");
        let imported = import(&ImportOptions {
            input: ova.clone(),
            out: out.clone(),
            kernel: Some(dir.join("vmlinuz")),
            initrd: None,
            cmdline: Some("console=ttyS0 root=/dev/vda".into()),
        })
        .unwrap();
        assert_eq!(imported.descriptor.version, OvfVersion::V2);
        assert_eq!(
            imported.descriptor.systems[0].system_type.as_deref(),
            Some("virtualbox-2.2")
        );

        // The manifest, read by the hypervisor's own parser.
        let m = parse_manifest(&out.join("manifest.toml"));
        assert_eq!(m.guests.len(), 1);
        let g = &m.guests[0];
        assert_eq!(g.name, "web");
        assert_eq!(g.vcpus, 2);
        assert_eq!(g.memory, 256 << 20);
        assert_eq!(g.image, "vmlinuz");
        assert_eq!(g.kind, hvm::ImageKind::BzImage);
        assert_eq!(g.cmdline, "console=ttyS0 root=/dev/vda");
        assert_eq!(g.disks.len(), 1);
        assert_eq!(g.disks[0].image, "web-disk1.img");
        assert_eq!(g.disks[0].serial.as_deref(), Some("vmdisk1"));
        assert!(!g.disks[0].read_only && !g.disks[0].keep_overlay);
        assert_eq!(g.nics.len(), 1);
        assert_eq!(g.nics[0].network, "NAT");
        assert_eq!(g.nics[0].mac_source, MacSource::Derived);
        assert_eq!(m.networks.len(), 1);
        assert_eq!(m.networks[0].name, "NAT");
        assert_eq!(
            fs::read(out.join("vmlinuz")).unwrap(),
            b"not really a kernel"
        );

        // The converted image holds exactly the source bytes.
        let converted = fs::read(out.join("web-disk1.img")).unwrap();
        assert_eq!(converted.len(), raw.len());
        assert!(converted == raw, "converted image differs from the source");
        assert_eq!(
            imported.disks,
            vec![(out.join("web-disk1.img"), raw.len() as u64)]
        );

        // What was left out is listed, in the output and in the manifest.
        let listed = imported.descriptor.unsupported.join("\n");
        for want in [
            "Item[5] (ResourceType 23 USB controller, 'usb'): not supported, not imported (ovf:required=\"false\")",
            "Item[6] (ResourceType 35 sound card ensoniq1371, 'sound'): not supported",
            "Item[8] (ResourceType 15 CD drive, 'cdrom1'): not supported, not imported",
            "VirtualSystem[web]/vbox:Machine: not understood, not imported (ovf:required=\"false\")",
            "VirtualSystem[web]/OperatingSystemSection 'Debian_64': guest OS type, not imported",
        ] {
            assert!(listed.contains(want), "missing {want:?} in:\n{listed}");
        }
        assert_eq!(imported.descriptor.unsupported.len(), 5, "{listed}");
        let text = fs::read_to_string(out.join("manifest.toml")).unwrap();
        for u in &imported.descriptor.unsupported {
            assert!(text.contains(&format!("#   {u}\n")), "{u} not in:\n{text}");
        }
        assert!(text.contains(
            "web.ova: member 'web.mf': the package manifest (file digests): not checked"
        ));
        assert!(text.contains("--kernel"), "{text}");
        let report = report(&imported).join("\n");
        assert!(
            report.contains("guest web: 2 vCPUs, 256 MiB, 1 disk, 1 NIC"),
            "{report}"
        );
        assert!(report.contains("not imported: VirtualSystem[web]/VirtualHardwareSection/Item[6]"));
        assert!(report.contains("E1000"), "{report}");
        // The extraction directory is gone.
        assert!(!out.join(".import-ova").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn ovf1(body_refs: &str, disks: &str, items: &str) -> String {
        envelope(
            NS_ENVELOPE_1,
            &format!(
                r#"  <References>
{body_refs}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{disks}
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <ProductSection ovf:required="false">
    <Info>Product</Info>
    <Product>Test appliance</Product>
  </ProductSection>
  <VirtualSystem ovf:id="app server">
    <Info>A virtual machine</Info>
    <Name>app server</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-07</vssd:VirtualSystemType>
      </System>
{items}
    </VirtualHardwareSection>
  </VirtualSystem>"#
            ),
        )
    }

    const OVF1_ITEMS: &str = r#"      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits>
        <rasd:ElementName>1024MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/system</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 2</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/scratch</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>00:50:56:01:02:03</rasd:Address>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceSubType>PCNet32</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:ElementName>Floppy 1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceType>14</rasd:ResourceType>
      </Item>"#;

    /// OVF 1.0 (VMware style): a raw disk smaller than its capacity, a blank disk, memory in
    /// "byte * 2^30", a MAC in rasd:Address, a ProductSection and a floppy.
    #[test]
    fn ovf1_directory_with_raw_and_blank_disks() {
        let dir = scratch("ovf1");
        let raw = pattern_image(512 << 10);
        fs::write(dir.join("system.img"), &raw).unwrap();
        let ovf = ovf1(
            &format!(
                r#"    <File ovf:href="system.img" ovf:id="file1" ovf:size="{}"/>"#,
                raw.len()
            ),
            r#"    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="system" ovf:fileRef="file1"/>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="scratch"/>"#,
            OVF1_ITEMS,
        );
        fs::write(dir.join("app.ovf"), &ovf).unwrap();
        fs::write(dir.join("bzImage"), b"kernel").unwrap();
        fs::write(dir.join("initrd.gz"), b"initrd").unwrap();
        let out = dir.join("out");
        let imported = import(&ImportOptions {
            input: dir.join("app.ovf"),
            out: out.clone(),
            kernel: Some(dir.join("bzImage")),
            initrd: Some(dir.join("initrd.gz")),
            cmdline: None,
        })
        .unwrap();
        assert_eq!(imported.descriptor.version, OvfVersion::V1);
        let m = parse_manifest(&out.join("manifest.toml"));
        let g = &m.guests[0];
        assert_eq!(g.name, "app_server");
        assert_eq!((g.vcpus, g.memory), (1, 1 << 30));
        assert_eq!(g.image, "bzImage");
        assert_eq!(g.initrd.as_deref(), Some("initrd.gz"));
        assert_eq!(g.cmdline, "console=ttyS0");
        let images: Vec<_> = g.disks.iter().map(|k| k.image.as_str()).collect();
        assert_eq!(images, ["app_server-disk1.img", "app_server-disk2.img"]);
        let serials: Vec<_> = g
            .disks
            .iter()
            .map(|k| k.serial.as_deref().unwrap())
            .collect();
        assert_eq!(serials, ["system", "scratch"]);
        assert_eq!(g.nics[0].network, "VM_Network");
        assert_eq!(g.nics[0].mac, hvm::MacAddr([0, 0x50, 0x56, 1, 2, 3]));
        assert_eq!(g.nics[0].mac_source, MacSource::Manifest);
        assert_eq!(m.networks[0].name, "VM_Network");

        // The raw disk is copied and extended to its capacity; the blank one is zeros.
        let system = fs::read(out.join("app_server-disk1.img")).unwrap();
        assert_eq!(system.len(), 1 << 20);
        assert!(system[..raw.len()] == raw[..]);
        assert!(system[raw.len()..].iter().all(|&b| b == 0));
        let blank = fs::read(out.join("app_server-disk2.img")).unwrap();
        assert_eq!(blank.len(), 8 << 20);
        assert!(blank.iter().all(|&b| b == 0));

        let listed = imported.descriptor.unsupported.join("\n");
        assert!(listed.contains("ProductSection: product information and properties, not imported (ovf:required=\"false\")"), "{listed}");
        assert!(
            listed.contains("Item[7] (ResourceType 14 floppy drive, 'Floppy 1'): not supported"),
            "{listed}"
        );
        assert_eq!(imported.descriptor.unsupported.len(), 2, "{listed}");

        // `cargo xtask image` puts the kernel, initrd and disk images into \hv\.
        fs::write(dir.join("boot.efi"), b"MZ").unwrap();
        let sources = crate::esp::EspSources {
            boot_efi: dir.join("boot.efi"),
            guest_dir: dir.join("none"),
        };
        let esp = dir.join("esp");
        crate::esp::make_esp(&imported.manifest, &esp, &sources).unwrap();
        assert_eq!(
            fs::read(esp.join("hv/app_server-disk1.img")).unwrap(),
            system
        );
        assert_eq!(
            fs::read(esp.join("hv/app_server-disk2.img")).unwrap().len(),
            8 << 20
        );
        assert_eq!(fs::read(esp.join("hv/bzImage")).unwrap(), b"kernel");
        assert_eq!(fs::read(esp.join("hv/initrd.gz")).unwrap(), b"initrd");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ovf1_with_vmdk_disk() {
        let Some(qemu_img) = qemu_img() else { return };
        let dir = scratch("ovf1vmdk");
        let raw = pattern_image(2 << 20);
        fs::write(dir.join("src.raw"), &raw).unwrap();
        crate::run_command(
            Command::new(&qemu_img)
                .args([
                    "convert",
                    "-q",
                    "-f",
                    "raw",
                    "-O",
                    "vmdk",
                    "-o",
                    "subformat=streamOptimized",
                ])
                .arg(dir.join("src.raw"))
                .arg(dir.join("system.vmdk")),
        )
        .unwrap();
        let ovf = ovf1(
            r#"    <File ovf:href="system.vmdk" ovf:id="file1"/>"#,
            r#"    <Disk ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="system" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="scratch"/>"#,
            OVF1_ITEMS,
        );
        fs::write(dir.join("app.ovf"), &ovf).unwrap();
        let out = dir.join("out");
        let imported = import(&ImportOptions {
            input: dir.join("app.ovf"),
            out: out.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(fs::read(out.join("app_server-disk1.img")).unwrap() == raw);
        // No --kernel: the manifest names vmlinuz and the user is told to supply it.
        assert_eq!(
            parse_manifest(&imported.manifest).guests[0].image,
            "vmlinuz"
        );
        assert!(imported
            .warnings
            .iter()
            .any(|w| w.starts_with("no --kernel")));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_errors_name_the_element() {
        let dir = scratch("ferr");
        fs::write(dir.join("system.img"), vec![0u8; 4096]).unwrap();
        let write = |refs: &str| {
            let ovf = ovf1(
                refs,
                r#"    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="system" ovf:fileRef="file1"/>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="scratch"/>"#,
                OVF1_ITEMS,
            );
            fs::write(dir.join("app.ovf"), ovf).unwrap();
            import(&ImportOptions {
                input: dir.join("app.ovf"),
                out: dir.join("out"),
                ..Default::default()
            })
            .unwrap_err()
            .to_string()
        };
        let e = write(r#"<File ovf:href="system.img" ovf:id="file1" ovf:size="4097"/>"#);
        assert!(
            e.starts_with("app.ovf: References/File[1]: ovf:size is 4097 but '")
                && e.ends_with("system.img' has 4096 bytes"),
            "{e}"
        );
        let e = write(r#"<File ovf:href="absent.img" ovf:id="file1"/>"#);
        assert!(e.starts_with("app.ovf: References/File[1]: '"), "{e}");
        assert!(e.contains("absent.img"), "{e}");
        let e = write(r#"<File ovf:href="system.qcow3" ovf:id="file1"/>"#);
        // (The file is checked first.)
        assert!(e.contains("system.qcow3"), "{e}");
        fs::write(dir.join("system.xyz"), vec![0u8; 512]).unwrap();
        let e = write(r#"<File ovf:href="system.xyz" ovf:id="file1"/>"#);
        assert_eq!(
            e,
            "app.ovf: DiskSection/Disk[1]: unknown disk format 'system.xyz' (known: vmdk, qcow2, vhd, vhdx, raw)"
        );
        // A raw image bigger than the disk's capacity.
        fs::write(dir.join("big.img"), vec![0u8; 2 << 20]).unwrap();
        let e = write(r#"<File ovf:href="big.img" ovf:id="file1"/>"#);
        assert_eq!(
            e,
            "app.ovf: DiskSection/Disk[1]: the image holds 2097152 bytes, more than the disk's capacity of 1048576"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ova_errors() {
        let dir = scratch("ovaerr");
        let ova = dir.join("x.ova");
        let run = || {
            import(&ImportOptions {
                input: ova.clone(),
                out: dir.join("out"),
                ..Default::default()
            })
            .unwrap_err()
            .to_string()
        };
        write_ova(&ova, &[("disk.vmdk", b"x")]);
        assert_eq!(run(), "x.ova: no .ovf descriptor in the archive");
        write_ova(&ova, &[("a.ovf", b"<a/>"), ("b.ovf", b"<b/>")]);
        assert_eq!(run(), "x.ova: two descriptors, 'a.ovf' and 'b.ovf'");
        write_ova(&ova, &[("a.ovf", b"<Envelope")]);
        assert!(
            run().starts_with("x.ova:a.ovf: document: not well-formed XML"),
            "{}",
            run()
        );
        fs::write(
            &ova,
            b"this is not a tar archive at all, just text that goes on",
        )
        .unwrap();
        let e = run();
        assert!(e.starts_with("x.ova: "), "{e}");
        let e = import(&ImportOptions {
            input: dir.join("x.zip"),
            out: dir.join("out"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("x.zip: expected a .ova or .ovf file"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    // ---- descriptor parsing alone -------------------------------------------

    fn parse_err(xml: &str) -> String {
        parse_descriptor("disk.ovf", xml).unwrap_err().to_string()
    }

    fn minimal(refs: &str, disks: &str, items: &str) -> String {
        let memory = r#"<Item><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:VirtualQuantity>64</rasd:VirtualQuantity></Item>"#;
        envelope(
            NS_ENVELOPE_1,
            &format!(
                "<References>{refs}</References>\n<DiskSection><Info>d</Info>{disks}</DiskSection>\n\
                 <VirtualSystem ovf:id=\"vm\"><Info>v</Info><VirtualHardwareSection><Info>h</Info>\n{memory}\n{items}\n\
                 </VirtualHardwareSection></VirtualSystem>"
            ),
        )
    }

    #[test]
    fn malformed_descriptors() {
        let e =
            parse_err("<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"><References>");
        assert!(
            e.starts_with("disk.ovf: document: not well-formed XML: "),
            "{e}"
        );
        let e = parse_err("<Envelope xmlns=\"http://example.com/other\"/>");
        assert!(
            e.starts_with("disk.ovf: Envelope: the root element is not an OVF Envelope"),
            "{e}"
        );
        let e = parse_err(&envelope(NS_ENVELOPE_2, "<References/>"));
        assert_eq!(
            e,
            "disk.ovf: Envelope: no VirtualSystem (nothing to import) (line 2)"
        );
        // Missing References entry.
        let e = parse_err(&minimal(
            r#"<File ovf:id="file1" ovf:href="a.vmdk"/>"#,
            r#"<Disk ovf:diskId="d1" ovf:fileRef="file1" ovf:capacity="1"/><Disk ovf:diskId="d2" ovf:fileRef="file9" ovf:capacity="1"/>"#,
            "",
        ));
        assert_eq!(
            e,
            "disk.ovf: DiskSection/Disk[2]: fileRef 'file9' not in References"
        );
        // Unknown units, on a disk and on memory.
        let e = parse_err(&minimal(
            "",
            r#"<Disk ovf:diskId="d1" ovf:capacity="1" ovf:capacityAllocationUnits="furlongs"/>"#,
            "",
        ));
        assert_eq!(
            e,
            "disk.ovf: DiskSection/Disk[1]: unknown capacityAllocationUnits 'furlongs' (line 9)"
        );
        let xml = minimal("", "", "").replace("byte * 2^20", "byte * 2^");
        let e = parse_err(&xml);
        assert!(
            e.starts_with("disk.ovf: VirtualSystem[vm]/VirtualHardwareSection/Item[1]: unknown AllocationUnits 'byte * 2^'"),
            "{e}"
        );
        // A drive naming a disk that does not exist.
        let e = parse_err(&minimal(
            "",
            "",
            "<Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/nope</rasd:HostResource></Item>",
        ));
        assert_eq!(
            e,
            "disk.ovf: VirtualSystem[vm]/VirtualHardwareSection/Item[2]: HostResource names disk 'nope', not in DiskSection"
        );
        // A drive whose Parent is no controller.
        let e = parse_err(&minimal(
            "",
            r#"<Disk ovf:diskId="d1" ovf:capacity="1"/>"#,
            "<Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:Parent>2</rasd:Parent></Item>",
        ));
        assert!(e.starts_with("disk.ovf: VirtualSystem[vm]/VirtualHardwareSection/Item[2]: Parent '2' is not the InstanceID of a controller Item"), "{e}");
        // CPU counts.
        for (q, ok) in [("0", false), ("65", false), ("64", true), ("lots", false)] {
            let xml = minimal("", "", &format!("<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>{q}</rasd:VirtualQuantity></Item>"));
            let r = parse_descriptor("disk.ovf", &xml);
            assert_eq!(r.is_ok(), ok, "{q}: {r:?}");
            if let Err(e) = r {
                assert!(e.element.ends_with("Item[2]"), "{e}");
            }
        }
        // Memory out of range.
        let xml = minimal("", "", "").replace(
            "<rasd:VirtualQuantity>64</",
            "<rasd:VirtualQuantity>65537</",
        );
        let e = parse_err(&xml).to_string();
        assert!(
            e.contains(
                "Item[1]: 68720525312 bytes of memory (ferrovisor guests have 1 MiB to 64 GiB)"
            ),
            "{e}"
        );
        // No memory at all.
        let xml = envelope(
            NS_ENVELOPE_1,
            "<VirtualSystem ovf:id=\"vm\"><VirtualHardwareSection/></VirtualSystem>",
        );
        assert!(parse_err(&xml).starts_with(
            "disk.ovf: VirtualSystem[vm]/VirtualHardwareSection: no memory Item (ResourceType 4)"
        ));
        let xml = envelope(
            NS_ENVELOPE_1,
            "<VirtualSystem ovf:id=\"vm\"><Info>x</Info></VirtualSystem>",
        );
        assert!(
            parse_err(&xml).starts_with("disk.ovf: VirtualSystem[vm]: no VirtualHardwareSection")
        );
        // Files outside the package, twice the same id, unsupported compression.
        for (file, want) in [
            (
                r#"<File ovf:id="f" ovf:href="http://example.com/a.vmdk"/>"#,
                "href 'http://example.com/a.vmdk': remote files are not supported",
            ),
            (
                r#"<File ovf:id="f" ovf:href="../a.vmdk"/>"#,
                "href '../a.vmdk': may not contain empty, `.` or `..` components",
            ),
            (
                r#"<File ovf:id="f" ovf:href="/etc/passwd"/>"#,
                "href '/etc/passwd': must be a relative file name",
            ),
            (
                r#"<File ovf:id="f" ovf:href="a" ovf:compression="bzip2"/>"#,
                "ovf:compression 'bzip2' is not supported (gzip is)",
            ),
            (
                r#"<File ovf:id="f" ovf:href="a" ovf:size="-1"/>"#,
                "ovf:size '-1' is not a byte count",
            ),
            (
                r#"<File ovf:id="f" ovf:href="a" ovf:chunkSize="1000"/>"#,
                "chunked files (ovf:chunkSize) are not supported",
            ),
            (
                r#"<File ovf:id="f" ovf:href="a"/><File ovf:id="f" ovf:href="b"/>"#,
                "ovf:id 'f' is used twice",
            ),
        ] {
            let e = parse_err(&minimal(file, "", ""));
            assert!(e.starts_with("disk.ovf: References/File["), "{e}");
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = parse_err(&minimal(
            "",
            r#"<Disk ovf:diskId="d" ovf:capacity="${size}"/>"#,
            "",
        ));
        assert!(
            e.contains("DiskSection/Disk[1]: ovf:capacity '${size}' is not a number"),
            "{e}"
        );
        let e = parse_err(&minimal("", r#"<Disk ovf:capacity="1"/>"#, ""));
        assert!(e.contains("DiskSection/Disk[1]: no ovf:diskId"), "{e}");
    }

    #[test]
    fn collections_configurations_and_shared_disks() {
        // Two systems in a collection share one disk; items of a non-default configuration
        // are skipped; ovf:/file/ drives; gzip-compressed references are accepted.
        let item = |rtype: u32, extra: &str| {
            format!("<Item{extra}><rasd:InstanceID>{rtype}</rasd:InstanceID><rasd:ResourceType>{rtype}</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity><rasd:AllocationUnits>byte*2^30</rasd:AllocationUnits><rasd:HostResource>ovf:/disk/gold</rasd:HostResource></Item>")
        };
        let system = |id: &str, more: &str| {
            format!(
                "<VirtualSystem ovf:id=\"{id}\"><Info>v</Info><VirtualHardwareSection><Info>h</Info>{}{}{more}</VirtualHardwareSection></VirtualSystem>",
                item(4, ""),
                item(17, ""),
            )
        };
        let xml = envelope(
            NS_ENVELOPE_2,
            &format!(
                r#"<References><File ovf:id="g" ovf:href="gold.vmdk.gz" ovf:compression="gzip"/><File ovf:id="iso" ovf:href="tools.iso"/></References>
<DiskSection><Info>d</Info><Disk ovf:diskId="gold" ovf:fileRef="g" ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection>
<DeploymentOptionSection><Info>c</Info><Configuration ovf:id="small"><Label>s</Label></Configuration><Configuration ovf:id="big" ovf:default="true"><Label>b</Label></Configuration></DeploymentOptionSection>
<VirtualSystemCollection ovf:id="pair"><Info>c</Info>{}{}</VirtualSystemCollection>"#,
                system("a",
                    "<Item ovf:configuration=\"small\"><rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>\
                     <Item ovf:configuration=\"big\"><rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>"
                ),
                system("a", ""),
            ),
        );
        let d = parse_descriptor("p.ovf", &xml).unwrap();
        assert_eq!(d.systems.len(), 2);
        assert_eq!(
            d.systems[0].element,
            "VirtualSystemCollection[pair]/VirtualSystem[a]"
        );
        assert_eq!(d.systems[0].vcpus, 4);
        assert_eq!(d.systems[1].vcpus, 1);
        assert_eq!(d.systems[0].memory, 1 << 30);
        assert!(d.files[0].gzip);
        assert!(
            d.unsupported
                .iter()
                .any(|u| u.contains("file 'iso' (tools.iso) is used by no disk")),
            "{:?}",
            d.unsupported
        );
        assert!(
            d.unsupported
                .iter()
                .any(|u| u.starts_with("DeploymentOptionSection")),
            "{:?}",
            d.unsupported
        );
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("not the default 'big': skipped")),
            "{:?}",
            d.notes
        );
        let p = plan(&d);
        let names: Vec<_> = p.guests.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["a", "a-2"]);
        // One gold image, used by both guests.
        assert_eq!(p.disks.len(), 1);
        assert_eq!(p.guests[0].disks, vec![(0, "gold".to_string())]);
        assert_eq!(p.guests[1].disks, vec![(0, "gold".to_string())]);
        let boot = BootFiles {
            kernel: "vmlinuz".into(),
            initrd: None,
            cmdline: "console=ttyS0 \"quoted\"".into(),
        };
        let text = manifest_text("p.ovf", &d, &p, &boot, &["a\nwarning".into()]);
        let m = hvm::parse("m.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(m.guests[0].disks[0].image, m.guests[1].disks[0].image);
        assert_eq!(m.guests[0].cmdline, "console=ttyS0 \"quoted\"");
        assert!(text.contains("# Warnings:\n#   a warning\n"), "{text}");

        // The same MAC on two systems' NICs: the second one is derived (and noted).
        let nic = "<Item><rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType><rasd:Connection>n</rasd:Connection><rasd:Address>00:50:56:aa:bb:cc</rasd:Address></Item>";
        let xml = envelope(
            NS_ENVELOPE_1,
            &format!(
                r#"<References><File ovf:id="g" ovf:href="g.img"/></References><DiskSection><Info>d</Info><Disk ovf:diskId="gold" ovf:fileRef="g" ovf:capacity="1"/></DiskSection>{}{}"#,
                system("x", nic),
                system("y", nic)
            ),
        );
        let d = parse_descriptor("p.ovf", &xml).unwrap();
        let p = plan(&d);
        assert_eq!(p.guests[0].nics[0].1.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(p.guests[1].nics[0].1, None);
        assert!(
            p.notes.iter().any(|n| n.contains("already another NIC's")),
            "{:?}",
            p.notes
        );
        let text = manifest_text("p.ovf", &d, &p, &boot, &[]);
        let m = hvm::parse("m.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(m.guests[1].nics[0].mac, hvm::derive_mac("y", 0));
    }

    #[test]
    fn units() {
        for (u, want) in [
            ("byte", Some(1)),
            ("bytes", Some(1)),
            ("byte * 2^20", Some(1 << 20)),
            ("byte*2^30", Some(1 << 30)),
            ("byte * 10^6", Some(1_000_000)),
            ("byte * 1024", Some(1024)),
            ("byte * 2^10 * 1024", Some(1 << 20)),
            ("MegaBytes", Some(1 << 20)),
            ("KiloBytes", Some(1 << 10)),
            ("GigaBytes", Some(1 << 30)),
            ("hertz * 10^6", None),
            ("byte * 2^", None),
            ("byte * 0", None),
            ("byte * 2^64", None),
            ("byte * 2^40 * 2^40", None),
            ("furlongs", None),
            ("", None),
        ] {
            assert_eq!(parse_byte_units(u), want, "{u}");
        }
    }

    #[test]
    fn names_and_formats() {
        assert_eq!(manifest_name("web", "x"), "web");
        assert_eq!(manifest_name("VM Network", "x"), "VM_Network");
        assert_eq!(manifest_name("  ", "net"), "net");
        assert_eq!(manifest_name("äöü", "vm1"), "vm1");
        assert_eq!(manifest_name(&"a".repeat(40), "x").len(), 32);
        let vmdk = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
        assert_eq!(image_format(Some(vmdk), "x"), Some("vmdk"));
        assert_eq!(
            image_format(
                Some("http://www.gnome.org/~markmc/qcow-image-format.html"),
                "x"
            ),
            Some("qcow2")
        );
        assert_eq!(image_format(None, "disk.vhd"), Some("vpc"));
        assert_eq!(image_format(None, "disk.IMG"), Some("raw"));
        assert_eq!(image_format(None, "disk.iso"), None);
    }
}
