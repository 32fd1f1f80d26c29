//! The peer, side by side: the `bench` exit-cost guest under KVM in the same Bochs.
//!
//! Bochs emulates VT-x, so Debian's kernel booted directly by OVMF (as for the Linux boot
//! ratio, [`super::linux_boot`]) can load `kvm_intel` from its own package and run a VM. The
//! initramfs built here ([`prepare`], in `target/bench/kvm/`) holds busybox, the modules
//! `kvm_intel` needs (from the same kernel package, dependencies resolved from their
//! `.modinfo`, decompressed when the package ships them compressed), the `bench` guest and
//! `kvmpeer`, a minimal KVM VMM in C (`tests/bench/kvmpeer.c`, built here with
//! `gcc -static -O2`). Its /init ([`init_script`]) loads the modules, reports whether
//! `kvm_intel` is loaded and with which parameters, and runs the guest under `kvmpeer` with the
//! command line of `bench-exits.toml`; the guest prints the same `bench:` lines as under
//! ferrovisor, as `[kvm-bench] bench: ...`.
//!
//! Under Bochs the TSC counts instructions in every mode, so an exit's round trip under KVM is
//! the instructions KVM (and, for exits to user space, the kernel's return to `kvmpeer` and
//! `kvmpeer` itself) executes for it, the same unit as ferrovisor's figures.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::{exit_figures, ExitFigure, ExitLines, ExitRun, Table};
use crate::linux::{self, Cpio, LinuxAssets};
use crate::{paths, prereq};

/// The console name `kvmpeer` gives the guest's lines.
pub const CONSOLE_NAME: &str = "kvm-bench";
/// The module whose loading makes `/dev/kvm`.
const KVM_MODULE: &str = "kvm_intel";
/// Where in the kernel package the KVM modules and their usual dependency live.
const MODULE_DIRS: &[&str] = &[
    "./lib/modules/*/kernel/arch/x86/kvm/*",
    "./lib/modules/*/kernel/virt/*",
];

/// Goals of the comparison (displayed, never asserted): (exit type, largest ferrovisor/KVM
/// ratio, what it compares).
pub const GOALS: &[(&str, f64, &str)] = &[
    ("cpuid", 1.0 / 3.0, "≤ 1/3 of KVM's"),
    ("vmcall", 1.0 / 3.0, "≤ 1/3 of KVM's"),
    (
        "pio_device",
        1.0 / 10.0,
        "≤ 1/10 of KVM's I/O exit served by a user-space VMM",
    ),
];

/// `target/bench/kvm/`.
pub fn dir() -> PathBuf {
    super::bench_dir().join("kvm")
}

/// The KVM peer's initramfs.
pub fn initrd() -> PathBuf {
    dir().join("initrd-kvm.gz")
}

/// `tests/bench/kvmpeer.c`.
pub fn vmm_source() -> PathBuf {
    paths::root().join("tests").join("bench").join("kvmpeer.c")
}

/// What [`prepare`] made.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub initrd: PathBuf,
    /// Module names in load order (dependencies first).
    pub modules: Vec<String>,
    pub kernel_deb: PathBuf,
}

/// Builds `kvmpeer`, extracts the modules and writes the initramfs. `guest_cmdline` is the
/// bench guest's command line.
pub fn prepare(assets: &LinuxAssets, guest_cmdline: &str) -> Result<Prepared> {
    let out = dir();
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let vmm = build_vmm(&out)?;
    let deb = kernel_deb(&assets.kernel_release)?;
    let modules = modules_from(&deb, &out.join("modules"), KVM_MODULE)?;
    let bench = paths::guest_bin_dir().join("bench");
    let bench_bytes = fs::read(&bench).with_context(|| {
        format!(
            "reading the bench guest {} (built by the bench's guest build)",
            paths::display(&bench)
        )
    })?;
    let busybox = fs::read(linux::dir().join("busybox")).context("reading target/linux/busybox")?;
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let script = init_script(&names, guest_cmdline)?;
    let cpio = initramfs_cpio(&busybox, &fs::read(&vmm)?, &bench_bytes, &modules, &script);
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    gz.write_all(&cpio)?;
    let initrd = initrd();
    fs::write(&initrd, gz.finish()?).with_context(|| format!("writing {}", initrd.display()))?;
    eprintln!(
        "xtask: bench: KVM peer initramfs {} (modules {}, kvmpeer, bench guest)",
        paths::display(&initrd),
        names.join(", ")
    );
    Ok(Prepared {
        initrd,
        modules: names,
        kernel_deb: deb,
    })
}

/// `gcc -static -O2` of `tests/bench/kvmpeer.c` into `out/kvmpeer`. As root with apt, installs
/// `gcc` and `libc6-dev` when gcc is missing.
fn build_vmm(out: &Path) -> Result<PathBuf> {
    if !prereq_tool("gcc") {
        if prereq::is_root() && Path::new("/usr/bin/apt-get").is_file() {
            eprintln!("xtask: bench: installing gcc and libc6-dev for the KVM peer's VMM");
            crate::run_command(
                Command::new("apt-get")
                    .args([
                        "install",
                        "-y",
                        "--no-install-recommends",
                        "gcc",
                        "libc6-dev",
                    ])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
        } else {
            bail!(
                "the KVM peer's VMM is C: install gcc and a static C library with the Linux \
                 headers (Debian: `apt-get install gcc libc6-dev`)"
            );
        }
    }
    let exe = out.join("kvmpeer");
    eprintln!(
        "xtask: bench: building {} (gcc -static -O2)",
        paths::display(&vmm_source())
    );
    crate::run_command(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-o"])
            .arg(&exe)
            .arg(vmm_source()),
    )
    .context("building the KVM peer's VMM failed (a static libc and <linux/kvm.h> are needed: libc6-dev)")?;
    Ok(exe)
}

fn prereq_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
}

/// The kernel package the prepared kernel came from (`<release> from <deb>` in
/// `target/linux/vmlinuz.release`).
fn kernel_deb(release: &str) -> Result<PathBuf> {
    let name = release.split_once(" from ").map(|(_, d)| d.trim());
    let Some(name) = name.filter(|n| n.ends_with(".deb")) else {
        bail!(
            "the KVM peer needs the kvm modules of the very kernel that boots, from its Debian \
             package, but target/linux/vmlinuz is `{release}`; delete target/linux/vmlinuz to \
             let xtask fetch the package"
        );
    };
    let deb = linux::dir().join("debs").join(name);
    if !deb.is_file() {
        bail!(
            "the kernel package {} is gone; delete target/linux/vmlinuz to fetch it again",
            deb.display()
        );
    }
    Ok(deb)
}

/// The files of `deb` that match `patterns`, into `into` (see [`crate::linux::extract_any`]).
fn extract(deb: &Path, into: &Path, patterns: &[String]) -> Result<()> {
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    crate::linux::extract_any(deb, into, &patterns)
}

/// Every `*.ko[.xz|.zst|.gz]` under `dir`, by module file stem (`kvm-intel`).
fn module_files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some((stem, _)) = name.split_once(".ko") {
                    found.insert(stem.to_string(), p.clone());
                }
            }
        }
    }
    found
}

/// A module file's bytes, decompressed (busybox `insmod` loads plain ELF modules).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else {
        None
    };
    let bytes = match tool {
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running `{tool} -dc` (install {tool})"))?;
            if !out.status.success() {
                bail!("`{tool} -dc {}` failed", path.display());
            }
            out.stdout
        }
        None if name.ends_with(".ko.gz") => {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(fs::File::open(path)?).read_to_end(&mut v)?;
            v
        }
        None => fs::read(path)?,
    };
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF module", path.display());
    }
    Ok(bytes)
}

/// A field of a module's `.modinfo` (`name=...`, `depends=...`), read from the raw bytes.
pub fn modinfo<'a>(module: &'a [u8], key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    let mut at = 0;
    while let Some(i) = find(&module[at..], needle.as_bytes()) {
        let start = at + i;
        if start == 0 || module[start - 1] == 0 {
            let value_at = start + needle.len();
            let end = module[value_at..]
                .iter()
                .position(|b| *b == 0)
                .map_or(module.len(), |e| value_at + e);
            return std::str::from_utf8(&module[value_at..end]).ok();
        }
        at = start + 1;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `top` and everything it depends on, from the kernel package, in load order (dependencies
/// first): (module name, decompressed bytes). Cached in `cache/<deb stem>/`.
fn modules_from(deb: &Path, cache: &Path, top: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = cache.join(stem);
    fs::create_dir_all(&dir)?;
    let mut files = module_files(&dir);
    if !files.contains_key(&top.replace('_', "-")) && !files.contains_key(top) {
        eprintln!(
            "xtask: bench: extracting the kvm modules from {}",
            paths::display(deb)
        );
        let patterns: Vec<String> = MODULE_DIRS.iter().map(|p| p.to_string()).collect();
        extract(deb, &dir, &patterns)?;
        files = module_files(&dir);
    }
    let mut order = Vec::new();
    let mut loaded: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    visit(top, deb, &dir, &mut files, &mut loaded, &mut order, 0)?;
    Ok(order
        .into_iter()
        .map(|n| {
            let bytes = loaded.remove(&n).unwrap_or_default();
            (n, bytes)
        })
        .collect())
}

fn visit(
    name: &str,
    deb: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, PathBuf>,
    loaded: &mut BTreeMap<String, Vec<u8>>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<()> {
    if order.iter().any(|n| n == name) || loaded.contains_key(name) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies of {name} nest too deep (a cycle?)");
    }
    let dashed = name.replace('_', "-");
    let path = match files.get(name).or_else(|| files.get(&dashed)) {
        Some(p) => p.clone(),
        None => {
            // Not where the kvm modules live: look for it anywhere in the package.
            let patterns = vec![
                format!("./lib/modules/*/{name}.ko*"),
                format!("./lib/modules/*/{dashed}.ko*"),
            ];
            extract(deb, dir, &patterns)?;
            *files = module_files(dir);
            files
                .get(name)
                .or_else(|| files.get(&dashed))
                .cloned()
                .ok_or_else(|| anyhow!("module {name} is not in {}", deb.display()))?
        }
    };
    let bytes = module_bytes(&path)?;
    loaded.insert(name.to_string(), Vec::new());
    let depends: Vec<String> = modinfo(&bytes, "depends")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    for d in &depends {
        visit(d, deb, dir, files, loaded, order, depth + 1)?;
    }
    loaded.insert(name.to_string(), bytes);
    order.push(name.to_string());
    Ok(())
}

/// The KVM peer's `/init`: load the modules (in `modules` order, from `/lib/modules/<name>.ko`),
/// report, run the bench guest under kvmpeer, say `kvm-peer: done`, halt.
pub fn init_script(modules: &[String], guest_cmdline: &str) -> Result<String> {
    if let Some(bad) = guest_cmdline
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " =_,.:-".contains(*c)))
    {
        bail!(
            "the bench guest's command line `{guest_cmdline}` has `{bad}`, which /init can't quote"
        );
    }
    Ok(format!(
        r#"#!/bin/sh
# /init of the KVM peer initramfs (written by xtask, src/bench/kvmpeer.rs).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
busybox --install -s /bin 2>/dev/null
echo "kvm-peer: kernel $(uname -r), $(nproc) cpu"
for m in {modules}; do
    if out=$(insmod /lib/modules/$m.ko 2>&1); then
        echo "kvm-peer: insmod $m: ok"
    else
        echo "kvm-peer: insmod $m: failed: $out"
    fi
done
dmesg | grep -i -E 'kvm|vmx' | sed 's/^/kvm-peer: dmesg: /'
if grep -q '^{KVM_MODULE} ' /proc/modules; then
    params=""
    for p in ept unrestricted_guest vpid enable_apicv flexpriority preemption_timer enable_shadow_vmcs nested pml; do
        f=/sys/module/{KVM_MODULE}/parameters/$p
        [ -r $f ] && params="$params $p=$(cat $f)"
    done
    echo "kvm-peer: {KVM_MODULE} loaded:$params"
else
    echo "kvm-peer: {KVM_MODULE} not loaded"
fi
if [ -c /dev/kvm ]; then
    kvmpeer /bench.elf "{guest_cmdline}" {CONSOLE_NAME}
    echo "kvm-peer: kvmpeer exit status $?"
else
    echo "kvm-peer: no /dev/kvm"
fi
echo "kvm-peer: done"
sleep 1
poweroff -f
"#,
        modules = modules.join(" "),
    ))
}

/// The initramfs: busybox, the modules, kvmpeer, the bench guest and /init.
pub fn initramfs_cpio(
    busybox: &[u8],
    vmm: &[u8],
    bench: &[u8],
    modules: &[(String, Vec<u8>)],
    init: &str,
) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
        cpio.dir(d, 0o755);
    }
    cpio.file("bin/busybox", 0o755, busybox);
    // What /init runs before `busybox --install` links the rest.
    for applet in ["sh", "mount"] {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    cpio.file("bin/kvmpeer", 0o755, vmm);
    cpio.file("bench.elf", 0o644, bench);
    for (name, bytes) in modules {
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, bytes);
    }
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("init", 0o755, init.as_bytes());
    cpio.finish()
}

// ---------------------------------------------------------------------------------------------
// The KVM run, read

/// What the KVM peer's boot printed.
#[derive(Debug, Clone)]
pub struct PeerRun {
    /// `kvm-peer: ...` lines (module loading, parameters, kvmpeer's status).
    pub peer_lines: Vec<String>,
    /// `kvmpeer: ...` lines (the VMM's own messages).
    pub vmm_lines: Vec<String>,
    pub exits: ExitRun,
    pub kvm_loaded: bool,
    pub ended: String,
}

impl PeerRun {
    pub fn analyse(serial: &str, ended: &str) -> Self {
        let mut peer_lines = Vec::new();
        let mut vmm_lines = Vec::new();
        for line in serial.lines() {
            let line = line.trim();
            if let Some(at) = line.find("kvm-peer: ") {
                peer_lines.push(line[at + "kvm-peer: ".len()..].to_string());
            } else if let Some(rest) = line.strip_prefix("kvmpeer: ") {
                vmm_lines.push(rest.to_string());
            }
        }
        let kvm_loaded = peer_lines
            .iter()
            .any(|l| l.starts_with(&format!("{KVM_MODULE} loaded")));
        let mut exits = ExitRun::analyse("kvm-peer", serial, ended);
        exits.outcome = peer_lines
            .iter()
            .find(|l| l.starts_with("kvmpeer exit status"))
            .cloned();
        Self {
            peer_lines,
            vmm_lines,
            exits,
            kvm_loaded,
            ended: ended.to_string(),
        }
    }

    pub fn lines(&self) -> &ExitLines {
        &self.exits.lines
    }
}

/// One row of the side-by-side table.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    pub kind: String,
    pub what: String,
    pub ferrovisor: Option<f64>,
    pub kvm: Option<f64>,
    /// ferrovisor / KVM.
    pub ratio: Option<f64>,
    /// The goal's largest ratio and its words, when there is one.
    pub goal: Option<(f64, String)>,
}

impl PeerRow {
    pub fn goal_met(&self) -> Option<bool> {
        Some(self.ratio? <= self.goal.as_ref()?.0)
    }
}

/// ferrovisor's figures (the `exits-1` boot, if it ran) beside KVM's.
pub fn rows(ferrovisor: Option<&[ExitFigure]>, kvm: &ExitLines) -> Vec<PeerRow> {
    let kvm = exit_figures(kvm);
    let kinds: Vec<(String, String)> = super::EXIT_TYPES
        .iter()
        .filter(|(k, _)| !matches!(*k, "loop" | "floor" | "hlt"))
        .map(|(k, w)| (k.to_string(), w.to_string()))
        .collect();
    kinds
        .into_iter()
        .map(|(kind, what)| {
            let get = |figs: &[ExitFigure]| {
                figs.iter()
                    .find(|f| f.kind == kind)
                    .and_then(|f| f.round_trip)
            };
            let f = ferrovisor.and_then(get);
            let k = get(&kvm);
            let ratio = match (f, k) {
                (Some(f), Some(k)) if k > 0.0 => Some(f / k),
                _ => None,
            };
            let goal = GOALS
                .iter()
                .find(|(g, _, _)| *g == kind)
                .map(|(_, r, w)| (*r, w.to_string()));
            PeerRow {
                kind,
                what,
                ferrovisor: f,
                kvm: k,
                ratio,
                goal,
            }
        })
        .collect()
}

/// What the KVM side of each row is.
pub(super) fn kvm_path(kind: &str) -> &'static str {
    match kind {
        "cpuid" | "rdmsr" => "in the kernel (KVM)",
        "vmcall" => "in the kernel: KVM's hypercall handler (nr 0 → -KVM_ENOSYS)",
        "pio_device" | "pio_unclaimed" => "KVM_EXIT_IO to kvmpeer (user space)",
        "mmio_device" => "KVM_EXIT_MMIO to kvmpeer (user space)",
        _ => "",
    }
}

pub fn table(rows: &[PeerRow]) -> Table {
    let mut t = Table::new(&[
        "exit type",
        "ferrovisor instr/round trip",
        "KVM instr/round trip",
        "KVM path",
        "ferrovisor/KVM",
        "goal",
        "goal met",
    ]);
    let num = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"));
    for r in rows {
        t.row(vec![
            r.kind.clone(),
            num(r.ferrovisor),
            num(r.kvm),
            kvm_path(&r.kind).to_string(),
            r.ratio
                .map_or_else(|| "n/a".to_string(), |x| format!("{x:.3}")),
            r.goal.as_ref().map_or(String::new(), |(_, w)| w.clone()),
            match r.goal_met() {
                Some(true) => "met".into(),
                Some(false) => "not met".into(),
                None if r.goal.is_some() => "n/a".into(),
                None => String::new(),
            },
        ]);
    }
    t
}

/// Everything about the peer run, for the report.
#[derive(Debug, Clone)]
pub struct PeerReport {
    pub run: Option<PeerRun>,
    pub rows: Vec<PeerRow>,
    /// Why it could not run at all (preparation failed).
    pub not_run: Option<String>,
    pub modules: Vec<String>,
    pub guest_cmdline: String,
    pub direct_cmdline: String,
}

impl PeerReport {
    /// `kvm_intel loaded: ept=Y ...` as /init printed it.
    pub fn kvm_line(&self) -> Option<String> {
        let prefix = format!("{KVM_MODULE} loaded:");
        self.run.as_ref()?.peer_lines.iter().find_map(|l| {
            let params = l.strip_prefix(&prefix)?.trim();
            Some(format!("{KVM_MODULE} loaded, with the parameters {params}"))
        })
    }

    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(why) = &self.not_run {
            notes.push(format!("the KVM peer did not run: {why}"));
            return notes;
        }
        let Some(run) = &self.run else {
            return notes;
        };
        if !run.kvm_loaded {
            notes.push(format!(
                "{KVM_MODULE} did not load; what /init said: {}",
                run.peer_lines.join(" | ")
            ));
        }
        if !run.lines().done {
            notes.push(format!(
                "the guest under KVM did not print `bench: done` (kvmpeer: {}; boot: {})",
                if run.vmm_lines.is_empty() {
                    "said nothing".to_string()
                } else {
                    run.vmm_lines.join(" | ")
                },
                run.ended
            ));
        }
        if self.rows.iter().all(|r| r.ferrovisor.is_none()) {
            notes.push(
                "no ferrovisor figures to compare with (the exits section did not run)".into(),
            );
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_exit_lines;
    use super::*;

    const KVM_LOG: &str = "\
[    0.256736] Failed to access perfctr msr (MSR c4 is 0)\r
kvm-peer: kernel 6.1.0-56-cloud-amd64, 1 cpu
kvm-peer: insmod irqbypass: ok
kvm-peer: insmod kvm: ok
kvm-peer: insmod kvm_intel: ok
kvm-peer: kvm_intel loaded: ept=Y unrestricted_guest=Y
kvmpeer: /bench.elf: entry 0x100000, 16 MiB, command line \"iterations=10000\"
[kvm-bench] bench: loop 20011 10000 2
[kvm-bench] bench: floor unavailable
[kvm-bench] bench: cpuid 10814801 10000 1081
[kvm-bench] bench: vmcall 11412123 10000 1141
[kvm-bench] bench: pio_device 73778028 10000 7377
[kvm-bench] bench: pio_unclaimed 73681953 10000 7368
[kvm-bench] bench: rdmsr 12227202 10000 1222
[kvm-bench] bench: mmio_device start
[kvm-bench] bench: mmio_device 101052031 10000 10105
[kvm-bench] bench: done
kvmpeer: guest exited, 20617 I/O and 10000 MMIO exits to user space
kvmpeer: exit code 0
kvm-peer: kvmpeer exit status 0
kvm-peer: done
";

    #[test]
    fn the_kvm_run_is_read_and_compared() {
        let run = PeerRun::analyse(KVM_LOG, "line");
        assert!(run.kvm_loaded);
        assert!(run.lines().done);
        assert!(run.lines().floor_unavailable());
        assert_eq!(run.vmm_lines.len(), 3);
        let ferro = exit_figures(&parse_exit_lines(
            "[bench] bench: loop 20000 10000 2\n[bench] bench: cpuid 5020000 10000 502\n\
             [bench] bench: pio_device 7020000 10000 702\n",
        ));
        let rows = rows(Some(&ferro), run.lines());
        let cpuid = rows.iter().find(|r| r.kind == "cpuid").unwrap();
        assert!((cpuid.kvm.unwrap() - 1079.479).abs() < 1e-9);
        assert!((cpuid.ratio.unwrap() - 500.0 / 1079.479).abs() < 1e-9);
        assert_eq!(cpuid.goal_met(), Some(false));
        let pio = rows.iter().find(|r| r.kind == "pio_device").unwrap();
        assert_eq!(pio.goal_met(), Some(true));
        let vmcall = rows.iter().find(|r| r.kind == "vmcall").unwrap();
        assert_eq!((vmcall.ferrovisor, vmcall.goal_met()), (None, None));
        assert!(rows.iter().all(|r| r.kind != "loop" && r.kind != "floor"));
        let text = table(&rows).text();
        assert!(text.contains("not met"), "{text}");
        assert!(text.contains("KVM_EXIT_IO to kvmpeer"), "{text}");
    }

    #[test]
    fn modinfo_fields_are_found() {
        let ko = b"\x7fELF....\0license=GPL\0depends=kvm,irqbypass\0name=kvm_intel\0xdepends=no\0";
        assert_eq!(modinfo(ko, "depends"), Some("kvm,irqbypass"));
        assert_eq!(modinfo(ko, "name"), Some("kvm_intel"));
        assert_eq!(modinfo(ko, "vermagic"), None);
        let nodeps = b"\0depends=\0";
        assert_eq!(modinfo(nodeps, "depends"), Some(""));
    }

    #[test]
    fn init_loads_the_modules_and_runs_the_guest() {
        let s = init_script(&["irqbypass".into(), "kvm".into()], "iterations=10000").unwrap();
        assert!(s.contains("for m in irqbypass kvm; do"), "{s}");
        assert!(
            s.contains("kvmpeer /bench.elf \"iterations=10000\" kvm-bench"),
            "{s}"
        );
        assert!(s.contains("echo \"kvm-peer: done\""), "{s}");
        assert!(init_script(&[], "a\"b").is_err());
        let cpio = initramfs_cpio(b"bb", b"vmm", b"elf", &[("kvm".into(), b"ko".to_vec())], &s);
        let text = String::from_utf8_lossy(&cpio);
        for name in ["bin/kvmpeer", "bench.elf", "lib/modules/kvm.ko", "init"] {
            assert!(text.contains(name), "{name}");
        }
    }
}
