//! Booting an ESP (or a disk image) under Bochs or QEMU and watching the serial console.
//!
//! Every run has its own working directory holding the emulator configuration and logs, so runs
//! can go side by side. A run ends when the machine powers off, when the emulator exits for any
//! other reason, or at the timeout (the emulator is then killed).
//!
//! How power-off is recognised:
//! - Bochs: the hypervisor writes the bytes of `Shutdown` to port 0x8900; Bochs reports the
//!   panic `Shutdown port: shutdown requested` in its log and exits with status 1.
//! - QEMU: ACPI S5. QEMU's QMP monitor (on QEMU's stdin/stdout) reports a `SHUTDOWN` event
//!   with reason `guest-shutdown`; a guest reset is reported as `guest-reset` and, with
//!   `-no-reboot`, also ends QEMU, so the two can be told apart.
//!
//! The serial console (COM1) always ends up in `serial.log` in the run directory, which
//! [`Console`] follows. With [`Input::None`] (tests, the bench) the emulator writes it itself
//! (Bochs `mode=file`, QEMU `-serial file:`) and nothing can be typed to the machine. With
//! [`Input::Stdin`] (`cargo xtask run`) COM1 is a TCP connection on the loopback interface:
//! xtask listens on a free port first and the emulator connects to it as a client when it
//! starts (Bochs `mode=socket-client`, QEMU `-chardev socket` without `server`), so there is no
//! port race and no wait at start-up; xtask appends what comes over the connection to
//! `serial.log` and sends stdin the other way (see [`terminal`]). Bochs and QEMU only take a
//! byte from the connection when the UART has room for it, so input typed faster than the
//! machine reads it waits in the connection instead of being lost.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::prereq::Emulators;
use crate::serial::{self, Sanitizer};

pub mod terminal;

/// Which emulator runs the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    /// Bochs with VT-x and EPT emulated (`cpu: model=corei7_skylake_x`).
    Bochs,
    /// QEMU with TCG: fast, but its CPU has no VMX.
    Qemu,
    /// QEMU with KVM and `-cpu host,+vmx`: nested VT-x on an Intel host.
    QemuKvm,
}

impl fmt::Display for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Emulator::Bochs => "bochs",
            Emulator::Qemu => "qemu",
            Emulator::QemuKvm => "qemu-kvm",
        })
    }
}

/// What the machine boots from.
#[derive(Debug, Clone)]
pub enum Media {
    /// A directory presented as a FAT disk (Bochs `vvfat`, QEMU `fat:`).
    EspDir(PathBuf),
    /// A raw disk image (GPT + FAT32 ESP).
    DiskImage(PathBuf),
}

/// Where the serial console goes while the machine runs (it is always logged to a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// Nowhere.
    Quiet,
    /// Cleaned text straight to stdout, as it arrives.
    Stdout,
    /// Cleaned text to stderr, each line prefixed (for tests running side by side).
    Prefixed(String),
}

/// Where the machine's COM1 input comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Input {
    /// Nowhere: the machine reads nothing on COM1 (tests, the bench).
    #[default]
    None,
    /// This process' stdin. When it is a terminal (and this process is in its foreground) the
    /// terminal is in raw mode for the run and every key goes to COM1 unchanged, Ctrl-C
    /// included, except [`terminal::QUIT_KEY`] (Ctrl-]), which ends the run. Otherwise the
    /// bytes of stdin (piped input) go to COM1 as they come, up to end of file or the quit key
    /// byte 0x1d; a terminal of which this process is a background job is left alone.
    Stdin,
}

/// One machine to boot.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub emulator: Emulator,
    pub cpus: u32,
    pub memory_mib: u32,
    /// `None`: wait for the machine however long it takes.
    pub timeout: Option<Duration>,
    pub media: Media,
    /// Working directory for configuration and logs; created if missing.
    pub run_dir: PathBuf,
    pub echo: Echo,
    /// An Intel 82540EM (e1000) NIC on the machine's PCI bus, or none.
    pub nic: Option<Nic>,
}

/// The machine's NIC: an e1000 with user-mode NAT to this host (Bochs' `slirp` module, QEMU's
/// `user` netdev): DHCP from 10.0.2.2 hands out 10.0.2.15; nothing needs root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub mac: [u8; 6],
    /// TCP ports of this host forwarded to the machine's DHCP address (10.0.2.15):
    /// (host port on 127.0.0.1, machine port). Bochs' slirp `hostfwd`.
    pub forward: Vec<(u16, u16)>,
}

impl Default for Nic {
    fn default() -> Self {
        Nic {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            forward: Vec::new(),
        }
    }
}

impl Nic {
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Bochs' slirp configuration for `dir`: the classic 10.0.2.0/24 network, spelled out, and a
/// text log of every frame (`slirp-pktlog.txt`) for debugging.
pub fn slirp_conf(dir: &Path, nic: &Nic) -> String {
    let mut conf = format!(
        "# slirp config\n\
         restricted = 0\n\
         net = 10.0.2.0\n\
         mask = 255.255.255.0\n\
         host = 10.0.2.2\n\
         dhcpstart = 10.0.2.15\n\
         dns = 10.0.2.3\n\
         pktlog = {}\n",
        dir.join("slirp-pktlog.txt").display()
    );
    // QEMU's syntax (Bochs 2.7 uses QEMU's slirp): tcp:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT.
    for (host, guest) in &nic.forward {
        conf += &format!("hostfwd = tcp:127.0.0.1:{host}-10.0.2.15:{guest}\n");
    }
    conf
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndedBy {
    /// The machine powered itself off.
    PowerOff,
    /// The timeout ran out and the emulator was killed.
    Timeout,
    /// The emulator exited without a power-off (status; 128+N for signal N).
    EmulatorExit(i32),
    /// The quit key ([`terminal::QUIT_KEY`]) was typed and the emulator was killed.
    User,
    /// [`run_until`] saw the serial line it waited for and killed the emulator (the line is in
    /// [`RunResult::reason`]).
    LineSeen,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub emulator: Emulator,
    pub ended_by: EndedBy,
    pub wall: Duration,
    /// The serial console, cleaned by [`serial::normalize`].
    pub serial: String,
    pub serial_log: PathBuf,
    /// Bochs' log, or QEMU's stderr.
    pub emulator_log: PathBuf,
    /// Why the emulator stopped, in its own words, when it said (e.g. a Bochs panic message or
    /// QEMU's shutdown reason).
    pub reason: Option<String>,
    /// The lines of [`Self::serial`], each with the time since the emulator started at which it
    /// was first seen (the log is polled every 50 ms, so that is the resolution).
    pub timed_lines: Vec<(Duration, String)>,
}

impl RunResult {
    /// Lines of the cleaned serial console.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.serial.lines()
    }

    /// A short account of how the run ended.
    pub fn summary(&self) -> String {
        let secs = self.wall.as_secs_f64();
        let how = match &self.ended_by {
            EndedBy::PowerOff => format!("the machine powered off after {secs:.1} s"),
            EndedBy::Timeout => {
                format!("TIMEOUT: the machine had not powered off after {secs:.1} s")
            }
            EndedBy::EmulatorExit(code) => format!(
                "{} exited with status {code} after {secs:.1} s without a power-off",
                self.emulator
            ),
            EndedBy::User => format!(
                "ended from the terminal ({}) after {secs:.1} s",
                terminal::QUIT_KEY_NAME
            ),
            EndedBy::LineSeen => {
                format!("ended after {secs:.1} s on the serial line that was waited for")
            }
        };
        match &self.reason {
            Some(reason) => format!("{how} [{}: {reason}]", self.emulator),
            None => format!("{how} [{}]", self.emulator),
        }
    }

    /// The part of the emulator's log worth reading when a run went wrong: its error and panic
    /// lines (for Bochs these name failing VM-entry checks) and its last lines.
    pub fn emulator_log_excerpt(&self, last_lines: usize) -> String {
        let text = read_tail(&self.emulator_log, 512 * 1024).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let notable: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| is_notable_log_line(l))
            .collect();
        let mut out = String::new();
        if !notable.is_empty() {
            out += "errors and panics:\n";
            for line in &notable[notable.len().saturating_sub(40)..] {
                out += &format!("  {line}\n");
            }
        }
        if lines.is_empty() {
            out += &format!("{} is empty\n", self.emulator_log.display());
            return out;
        }
        out += &format!("last {last_lines} lines:\n");
        for line in &lines[lines.len().saturating_sub(last_lines)..] {
            out += &format!("  {line}\n");
        }
        out
    }
}

/// Bochs log lines at error or panic level (`<ticks>e[...]`, `<ticks>p[...]`), VMX failures
/// and QEMU errors.
fn is_notable_log_line(line: &str) -> bool {
    let level = line.trim_start_matches(|c: char| c.is_ascii_digit());
    level.starts_with("e[")
        || level.starts_with("p[")
        || line.contains("VMFAIL")
        || line.contains("VMEXIT")
        || line.contains("VMABORT")
        || line.contains("qemu-system")
}

/// The `bochsrc` for `cfg`. `ovmf_size` places the firmware image right below 4 GiB.
///
/// Measured with Debian's Bochs 2.7: the PC speaker plugin opens ALSA and, on a machine with no
/// sound card, Bochs can abort with `*** buffer overflow detected ***`, so it is turned off;
/// `rfb` with `timeout=0` is the display that needs no X server (each instance takes the next
/// free port from 5900 up, so runs side by side don't collide); `reset_on_triple_fault=0`
/// makes a triple fault end the run with a panic naming it instead of rebooting the firmware.
/// Bochs 2.7 allocates at most 2048 MiB of host memory for the guest's RAM (`host=`); more
/// guest RAM (`guest=`, up to 3072 MiB here) is backed by a swap file beyond that.
pub fn bochsrc(cfg: &MachineConfig, ovmf: &Path, ovmf_size: u64, vgabios: &Path) -> String {
    bochs_config(cfg, ovmf, ovmf_size, vgabios, Com1::File)
}

/// Where the emulator's COM1 goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Com1 {
    /// Output only, written by the emulator to `serial.log` in the run directory.
    File,
    /// Both ways, over a TCP connection the emulator makes to this port on 127.0.0.1.
    Connect(u16),
}

/// [`bochsrc`] with COM1 going to `com1`. Bochs' `socket-client` mode connects when Bochs
/// starts; a failed connection leaves the port unconnected (Bochs doesn't stop).
fn bochs_config(
    cfg: &MachineConfig,
    ovmf: &Path,
    ovmf_size: u64,
    vgabios: &Path,
    com1: Com1,
) -> String {
    let rom_address = 0x1_0000_0000u64 - ovmf_size;
    let disk = match &cfg.media {
        Media::EspDir(dir) => format!("type=disk, path=\"{}\", mode=vvfat", dir.display()),
        Media::DiskImage(img) => format!("type=disk, path=\"{}\", mode=flat", img.display()),
    };
    let dir = &cfg.run_dir;
    let com1 = match com1 {
        Com1::File => format!("mode=file, dev=\"{}\"", dir.join("serial.log").display()),
        Com1::Connect(port) => format!("mode=socket-client, dev={}:{port}", Ipv4Addr::LOCALHOST),
    };
    format!(
        "# Generated by cargo xtask; rewritten for every run.\n\
         config_interface: textconfig\n\
         plugin_ctrl: speaker=0\n\
         display_library: rfb, options=\"timeout=0\"\n\
         memory: guest={mem}, host={host}\n\
         romimage: file=\"{ovmf}\", address={rom_address:#x}\n\
         vgaromimage: file=\"{vga}\"\n\
         cpu: count={cpus}, model=corei7_skylake_x, ips=200000000, reset_on_triple_fault=0\n\
         pci: enabled=1, chipset=i440fx\n\
         ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n\
         ata0-master: {disk}\n\
         boot: disk\n\
         com1: enabled=1, {com1}\n\
         port_e9_hack: enabled=1\n\
         {nic}\
         mouse: enabled=0\n\
         log: \"{log}\"\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n",
        mem = cfg.memory_mib,
        host = cfg.memory_mib.min(BOCHS_MAX_HOST_MIB),
        ovmf = ovmf.display(),
        vga = vgabios.display(),
        cpus = cfg.cpus,
        log = dir.join("bochs.log").display(),
        nic = match &cfg.nic {
            None => String::new(),
            Some(n) => format!(
                "e1000: enabled=1, mac={}, ethmod=slirp, script=\"{}\"\n",
                n.mac_string(),
                dir.join("slirp.conf").display()
            ),
        },
    )
}

/// The largest `memory: host=` Bochs 2.7 accepts (it refuses 3072: "out of range 1 to 2048").
const BOCHS_MAX_HOST_MIB: u32 = 2048;

/// QEMU's command-line arguments for `cfg`.
pub fn qemu_args(cfg: &MachineConfig, ovmf: &Path) -> Vec<String> {
    qemu_args_with(cfg, ovmf, Com1::File)
}

/// [`qemu_args`] with COM1 going to `com1`. A client socket chardev connects when QEMU starts;
/// QEMU exits with an error if it can't.
fn qemu_args_with(cfg: &MachineConfig, ovmf: &Path, com1: Com1) -> Vec<String> {
    let mut args: Vec<String> = vec!["-machine".into(), "q35".into()];
    match cfg.emulator {
        Emulator::QemuKvm => args.extend(["-accel", "kvm", "-cpu", "host,+vmx"].map(String::from)),
        _ => args.extend(["-accel", "tcg", "-cpu", "max"].map(String::from)),
    }
    // QEMU option values separate sub-options with ',': a literal comma is written twice.
    let escape = |p: &Path| p.display().to_string().replace(',', ",,");
    let drive = match &cfg.media {
        Media::EspDir(dir) => format!("format=raw,file=fat:rw:{}", escape(dir)),
        Media::DiskImage(img) => format!("format=raw,file={}", escape(img)),
    };
    args.extend([
        "-m".into(),
        cfg.memory_mib.to_string(),
        "-smp".into(),
        cfg.cpus.to_string(),
        "-bios".into(),
        ovmf.display().to_string(),
        "-drive".into(),
        drive,
    ]);
    match com1 {
        Com1::File => args.extend([
            "-serial".into(),
            format!("file:{}", cfg.run_dir.join("serial.log").display()),
        ]),
        Com1::Connect(port) => args.extend([
            "-chardev".into(),
            format!("socket,id=com1,host={},port={port}", Ipv4Addr::LOCALHOST),
            "-serial".into(),
            "chardev:com1".into(),
        ]),
    }
    if let Some(n) = &cfg.nic {
        args.extend([
            "-netdev".into(),
            "user,id=uplink".into(),
            "-device".into(),
            format!("e1000,netdev=uplink,mac={}", n.mac_string()),
        ]);
    }
    args.extend([
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-reboot".into(),
        "-qmp".into(),
        "stdio".into(),
    ]);
    args
}

/// Boots `cfg` and waits until it powers off, the emulator exits, or the timeout. Nothing is
/// sent to the machine's COM1 ([`Input::None`]).
pub fn run(cfg: &MachineConfig, emulators: &Emulators) -> Result<RunResult> {
    run_with(cfg, emulators, Input::None)
}

/// [`run`] with the machine's COM1 input coming from `input`; with [`Input::Stdin`] the run
/// also ends when the quit key is typed ([`EndedBy::User`]).
pub fn run_with(cfg: &MachineConfig, emulators: &Emulators, input: Input) -> Result<RunResult> {
    run_inner(cfg, emulators, input, None)
}

/// [`run`] that also ends, killing the emulator, as soon as a serial line passes `until`
/// ([`EndedBy::LineSeen`], the line in [`RunResult::reason`]): for machines that cannot power
/// themselves off, e.g. Linux booted directly by the firmware under Bochs, where there is no
/// ACPI and `poweroff -f` only halts.
pub fn run_until(
    cfg: &MachineConfig,
    emulators: &Emulators,
    until: &dyn Fn(&str) -> bool,
) -> Result<RunResult> {
    run_inner(cfg, emulators, Input::None, Some(until))
}

/// One step of a scripted console session ([`run_scripted`]): once a serial line containing
/// `after` has appeared (after the previous step ran) and `delay` has passed since, `action`
/// runs.
#[derive(Clone)]
pub struct Step {
    pub after: String,
    pub delay: Duration,
    pub action: Action,
    /// [`Action::Send`]: the time between two bytes. A UART's receive FIFO holds 16 bytes,
    /// which a hypervisor that looks at its console between time slices may not empty in time
    /// when a whole line arrives at once (as a paste would); typed keys come this way.
    pub pace: Duration,
}

/// What a [`Step`] does.
#[derive(Clone)]
pub enum Action {
    /// Sends these bytes to the machine's COM1 (as if typed).
    Send(Vec<u8>),
    /// Calls this on the thread that watches the machine (e.g. to talk to its network while it
    /// runs); the console is read on once it returns.
    Call(Arc<dyn Fn() + Send + Sync>),
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match &self.action {
            Action::Send(b) => format!("send {:?}", String::from_utf8_lossy(b)),
            Action::Call(_) => "call".to_string(),
        };
        write!(
            f,
            "after `{}` + {:?}: {action} ({:?} a byte)",
            self.after, self.delay, self.pace
        )
    }
}

/// [`run`] with COM1 input from `script`: each step waits for its line, then sends its bytes
/// or makes its call. COM1 is a connection to this process, as with [`Input::Stdin`]. Steps
/// whose line never comes are left undone (the checks on the console then fail).
pub fn run_scripted(
    cfg: &MachineConfig,
    emulators: &Emulators,
    script: &[Step],
) -> Result<RunResult> {
    let mut tries = 0;
    loop {
        let r = run_once(cfg, emulators, Input::Stdin, None, Some(script))?;
        tries += 1;
        if !rfb_bind_failure(&r) || tries == 4 {
            return Ok(r);
        }
        eprintln!("xtask: bochs found no free display port (5900-5949); starting it again in 3 s");
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The next step of a script, if it is due: `lines` are the console's lines so far, `from` the
/// first not yet looked at for step `next`'s trigger, `seen` when that trigger was seen.
fn script_due(
    script: &[Step],
    next: usize,
    lines: &[(Duration, String)],
    from: &mut usize,
    seen: &mut Option<Instant>,
    now: Instant,
) -> bool {
    let Some(step) = script.get(next) else {
        return false;
    };
    if seen.is_none() {
        if let Some(i) = lines[(*from).min(lines.len())..]
            .iter()
            .position(|(_, l)| l.contains(&step.after))
        {
            *from += i + 1;
            *seen = Some(now);
        } else {
            *from = lines.len();
        }
    }
    seen.is_some_and(|t| now.duration_since(t) >= step.delay)
}

/// Bochs' display server (the only display library Debian builds without X) listens on the
/// first free TCP port of 5900-5949; when none is free at that moment Bochs exits at once.
/// That is a start-up failure of the emulator, not a result: try again a few times.
fn rfb_bind_failure(r: &RunResult) -> bool {
    r.emulator == Emulator::Bochs
        && matches!(r.ended_by, EndedBy::EmulatorExit(_))
        && r.wall < Duration::from_secs(10)
        && r.reason
            .as_deref()
            .is_some_and(|m| m.contains("RFB could not bind"))
}

fn run_inner(
    cfg: &MachineConfig,
    emulators: &Emulators,
    input: Input,
    until: Option<&dyn Fn(&str) -> bool>,
) -> Result<RunResult> {
    let mut tries = 0;
    loop {
        let r = run_once(cfg, emulators, input, until, None)?;
        tries += 1;
        if !rfb_bind_failure(&r) || tries == 4 || input != Input::None {
            return Ok(r);
        }
        eprintln!("xtask: bochs found no free display port (5900-5949); starting it again in 3 s");
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn run_once(
    cfg: &MachineConfig,
    emulators: &Emulators,
    input: Input,
    until: Option<&dyn Fn(&str) -> bool>,
    script: Option<&[Step]>,
) -> Result<RunResult> {
    fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("creating {}", cfg.run_dir.display()))?;
    let serial_log = cfg.run_dir.join("serial.log");
    let _ = fs::remove_file(&serial_log);
    File::create(&serial_log).with_context(|| format!("creating {}", serial_log.display()))?;
    let ovmf = emulators
        .ovmf
        .as_deref()
        .context("no OVMF firmware found (install the `ovmf` package or set FERROVISOR_OVMF)")?;

    // Listening before the emulator starts: it connects to this as it comes up.
    let listener = match input {
        Input::None => None,
        Input::Stdin => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .context("listening on 127.0.0.1 for the emulator's COM1")?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
    };
    let com1 = match &listener {
        None => Com1::File,
        Some(listener) => Com1::Connect(listener.local_addr()?.port()),
    };

    let (mut command, emulator_log) = match cfg.emulator {
        Emulator::Bochs => {
            let bochs = emulators
                .bochs
                .as_deref()
                .context("bochs is not installed")?;
            let vgabios = emulators
                .vgabios
                .as_deref()
                .context("no VGA BIOS for Bochs")?;
            let rc = cfg.run_dir.join("bochsrc");
            let ovmf_size = fs::metadata(ovmf)?.len();
            fs::write(&rc, bochs_config(cfg, ovmf, ovmf_size, vgabios, com1))?;
            if let Some(nic) = &cfg.nic {
                fs::write(
                    cfg.run_dir.join("slirp.conf"),
                    slirp_conf(&cfg.run_dir, nic),
                )?;
            }
            // Debian's Bochs has the internal debugger: without commands it stops at a prompt.
            let commands = cfg.run_dir.join("bochs-debugger.rc");
            fs::write(&commands, "c\n")?;
            let log = cfg.run_dir.join("bochs.log");
            let _ = fs::remove_file(&log);
            let mut cmd = Command::new(bochs);
            cmd.arg("-q").arg("-f").arg(&rc).arg("-rc").arg(&commands);
            let out = File::create(cfg.run_dir.join("bochs.out"))?;
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            (cmd, log)
        }
        Emulator::Qemu | Emulator::QemuKvm => {
            let qemu = emulators
                .qemu
                .as_deref()
                .context("qemu-system-x86_64 is not installed")?;
            let mut cmd = Command::new(qemu);
            cmd.args(qemu_args_with(cfg, ovmf, com1));
            let log = cfg.run_dir.join("qemu.err");
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(File::create(&log)?);
            (cmd, log)
        }
    };
    fs::write(cfg.run_dir.join("command.txt"), format!("{command:?}\n"))?;

    // Raw mode before the emulator starts, so that no key typed meanwhile is echoed or taken
    // as a signal; restored when `raw` is dropped, whichever way this function returns.
    // A terminal of which this process is a background job is left alone: touching it would
    // stop the process (SIGTTIN/SIGTTOU).
    let mut link = listener.map(|listener| SerialLink::new(listener, serial_log.clone()));
    let mut raw = None;
    if let (Some(link), None) = (&link, script) {
        let foreground = terminal::stdin_is_foreground_terminal();
        if foreground {
            raw = terminal::RawMode::enter();
        }
        if foreground || !io::stdin().is_terminal() {
            terminal::spawn_stdin_reader(link.relay.clone(), link.wake_tx.clone());
        }
    }

    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let qmp = match cfg.emulator {
        Emulator::Bochs => None,
        _ => Some(Qmp::start(&mut child)),
    };

    let mut console = Console::new(&serial_log, cfg.echo.clone(), start);
    let mut lines_checked = 0;
    let (mut step, mut step_from, mut step_seen) = (0usize, 0usize, None);
    let stop = loop {
        if let Some(link) = &mut link {
            link.accept();
            link.warn_if_unconnected(start.elapsed());
        }
        console.pump();
        if let (Some(script), Some(link)) = (script, &link) {
            let lines = &console.timed_lines;
            while script_due(
                script,
                step,
                lines,
                &mut step_from,
                &mut step_seen,
                Instant::now(),
            ) {
                match &script[step].action {
                    Action::Send(bytes) if script[step].pace.is_zero() => link.relay.send(bytes),
                    Action::Send(bytes) => {
                        for b in bytes {
                            link.relay.send(std::slice::from_ref(b));
                            thread::sleep(script[step].pace);
                        }
                    }
                    Action::Call(f) => f(),
                }
                step += 1;
                step_seen = None;
            }
        }
        if let Some(until) = until {
            let seen = console.timed_lines[lines_checked..]
                .iter()
                .find(|(_, line)| until(line))
                .map(|(_, line)| line.clone());
            lines_checked = console.timed_lines.len();
            if let Some(line) = seen {
                let _ = child.kill();
                let _ = child.wait();
                break Stop::Seen(line);
            }
        }
        if let Some(status) = child.try_wait()? {
            break Stop::Exited(status);
        }
        let user = link.as_ref().is_some_and(|l| l.relay.quit_requested());
        if user || cfg.timeout.is_some_and(|t| start.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            break if user { Stop::User } else { Stop::Timeout };
        }
        match &link {
            // Woken early by output from the machine or by the quit key.
            Some(link) => link.wait(Duration::from_millis(50)),
            None => thread::sleep(Duration::from_millis(50)),
        }
    };
    let wall = start.elapsed();
    if let Some(link) = link {
        // The emulator is gone, so its end of the connection is closed: this returns once the
        // last of its output is in the log.
        link.finish();
    }
    console.pump();
    drop(raw);
    console.finish();

    let qmp_events = qmp.map(Qmp::finish).unwrap_or_default();
    let (ended_by, reason) = match stop {
        Stop::Timeout => (EndedBy::Timeout, None),
        Stop::User => (EndedBy::User, None),
        Stop::Seen(line) => (EndedBy::LineSeen, Some(line)),
        Stop::Exited(status) if cfg.emulator == Emulator::Bochs => {
            bochs_ending(status, &emulator_log)
        }
        Stop::Exited(status) => qemu_ending(status, &qmp_events),
    };
    let raw = fs::read(&serial_log).unwrap_or_default();
    Ok(RunResult {
        emulator: cfg.emulator,
        ended_by,
        wall,
        serial: serial::normalize(&raw),
        serial_log,
        emulator_log,
        reason,
        timed_lines: console.timed_lines,
    })
}

/// Why the wait for the machine stopped.
enum Stop {
    Exited(ExitStatus),
    Timeout,
    User,
    Seen(String),
}

/// COM1 as a TCP connection from the emulator ([`Com1::Connect`]): what comes over it is
/// appended to the serial log by a thread of its own, and input goes the other way through
/// [`terminal::Relay`].
struct SerialLink {
    /// Until the emulator has connected.
    listener: Option<TcpListener>,
    serial_log: PathBuf,
    relay: Arc<terminal::Relay>,
    /// Told when output has been appended to the log, and when the quit key was typed.
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    reader: Option<thread::JoinHandle<()>>,
    /// Whether [`Self::warn_if_unconnected`] has spoken.
    warned: bool,
}

/// See [`SerialLink::warn_if_unconnected`].
const CONNECT_WARNING_AFTER: Duration = Duration::from_secs(30);

impl SerialLink {
    fn new(listener: TcpListener, serial_log: PathBuf) -> Self {
        let (wake_tx, wake_rx) = mpsc::channel();
        Self {
            listener: Some(listener),
            serial_log,
            relay: Arc::default(),
            wake_tx,
            wake_rx,
            reader: None,
            warned: false,
        }
    }

    /// Takes the emulator's connection once it has come; the first one only.
    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        self.listener = None;
        let _ = stream.set_nonblocking(false);
        // Keys go out one by one as they are typed.
        let _ = stream.set_nodelay(true);
        let log = fs::OpenOptions::new().append(true).open(&self.serial_log);
        let (Ok(mut log), Ok(mut from_machine)) = (log, stream.try_clone()) else {
            return;
        };
        let wake = self.wake_tx.clone();
        self.reader = Some(thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match from_machine.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                if log.write_all(&buf[..n]).is_err() {
                    return;
                }
                let _ = wake.send(());
            }
        }));
        self.relay.connect(stream);
    }

    /// Says so, once, when the emulator hasn't connected by [`CONNECT_WARNING_AFTER`] (both
    /// connect while they start, in well under a second); its console is then lost.
    fn warn_if_unconnected(&mut self, elapsed: Duration) {
        if self.listener.is_some() && !self.warned && elapsed >= CONNECT_WARNING_AFTER {
            self.warned = true;
            let port = self.listener.as_ref().and_then(|l| l.local_addr().ok());
            eprintln!(
                "xtask: the emulator has not connected its COM1 to {} after {} s; see its log",
                port.map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string()),
                elapsed.as_secs()
            );
        }
    }

    /// Sleeps up to `max`, less when woken.
    fn wait(&self, max: Duration) {
        if self.wake_rx.recv_timeout(max).is_ok() {
            while self.wake_rx.try_recv().is_ok() {}
        }
    }

    /// Waits for the emulator's output to be in the log (after the emulator has exited).
    fn finish(self) {
        if let Some(reader) = self.reader {
            let _ = reader.join();
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    status.code().unwrap_or(-1)
}

/// Bochs exits with status 1 on every fatal panic; the log says which one it was.
fn bochs_ending(status: ExitStatus, log: &Path) -> (EndedBy, Option<String>) {
    let tail = read_tail(log, 64 * 1024).unwrap_or_default();
    let panic = tail.lines().rev().find_map(|l| {
        l.split_once(">>PANIC<< ")
            .map(|(_, msg)| msg.trim().to_string())
    });
    match panic {
        Some(msg) if msg.contains("Shutdown port: shutdown requested") => {
            (EndedBy::PowerOff, Some(msg))
        }
        panic => (EndedBy::EmulatorExit(exit_code(status)), panic),
    }
}

/// QEMU exits 0 after a guest power-off and, with `-no-reboot`, after a guest reset too; the
/// QMP `SHUTDOWN` event's reason tells them apart.
fn qemu_ending(status: ExitStatus, qmp_events: &str) -> (EndedBy, Option<String>) {
    let reason = qmp_events
        .lines()
        .filter(|l| l.contains("\"SHUTDOWN\""))
        .find_map(|l| {
            let (_, rest) = l.split_once("\"reason\": \"")?;
            rest.split_once('"').map(|(reason, _)| reason.to_string())
        });
    match reason.as_deref() {
        Some("guest-shutdown") if status.success() => (EndedBy::PowerOff, reason),
        _ => (EndedBy::EmulatorExit(exit_code(status)), reason),
    }
}

/// QEMU's QMP monitor on its stdin/stdout: enables events, then collects everything it says.
struct Qmp {
    stdin: std::process::ChildStdin,
    reader: thread::JoinHandle<String>,
}

impl Qmp {
    fn start(child: &mut Child) -> Self {
        let mut stdin = child.stdin.take().expect("QEMU's stdin is piped");
        let mut stdout = child.stdout.take().expect("QEMU's stdout is piped");
        // QMP sends events only after capabilities negotiation; QEMU reads this after its
        // greeting. Keeping stdin open keeps the monitor alive. A QEMU that already died is
        // reported by its exit status, so a failed write needs no error of its own.
        let _ = stdin.write_all(b"{\"execute\": \"qmp_capabilities\"}\n");
        let reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Self { stdin, reader }
    }

    fn finish(self) -> String {
        drop(self.stdin);
        self.reader.join().unwrap_or_default()
    }
}

/// Follows the serial log file as the emulator writes it.
struct Console {
    path: PathBuf,
    file: Option<File>,
    echo: Echo,
    sanitizer: Sanitizer,
    pending: Vec<u8>,
    /// Whether the last byte echoed to stdout ended a line (stderr gets whole lines only).
    at_line_start: bool,
    /// When the emulator started; lines are timed from here.
    start: Instant,
    /// The cleaned text of the line not yet ended.
    line: Vec<u8>,
    /// Every ended line with the time it was first seen.
    timed_lines: Vec<(Duration, String)>,
}

impl Console {
    fn new(path: &Path, echo: Echo, start: Instant) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            echo,
            sanitizer: Sanitizer::new(),
            pending: Vec::new(),
            at_line_start: true,
            start,
            line: Vec::new(),
            timed_lines: Vec::new(),
        }
    }

    /// Reads whatever the emulator wrote since the last call, times its lines and echoes it.
    fn pump(&mut self) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut raw = Vec::new();
        if file.read_to_end(&mut raw).is_err() || raw.is_empty() {
            return;
        }
        let mut clean = Vec::new();
        self.sanitizer.feed(&raw, &mut clean);
        self.take_lines(&clean);
        self.pending.extend_from_slice(&clean);
        self.write_pending();
    }

    /// Adds the lines `clean` ends to [`Self::timed_lines`], timed now.
    fn take_lines(&mut self, clean: &[u8]) {
        let now = self.start.elapsed();
        for &byte in clean {
            if byte == b'\n' {
                let text = String::from_utf8_lossy(&self.line).into_owned();
                self.timed_lines.push((now, text));
                self.line.clear();
            } else {
                self.line.push(byte);
            }
        }
    }

    /// Echoes the cleaned text so far: all of it to stdout, whole lines to stderr (so that runs
    /// side by side don't interleave mid-line). Writes to the streams directly, not through
    /// `print!`, so that a test harness capturing output does not hold it back.
    fn write_pending(&mut self) {
        match &self.echo {
            Echo::Quiet => self.pending.clear(),
            Echo::Stdout => {
                if let Some(last) = self.pending.last() {
                    self.at_line_start = *last == b'\n';
                }
                let mut out = io::stdout().lock();
                let _ = out.write_all(&self.pending);
                let _ = out.flush();
                self.pending.clear();
            }
            Echo::Prefixed(prefix) => {
                let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else {
                    return;
                };
                let text = String::from_utf8_lossy(&self.pending[..=end]).into_owned();
                self.pending.drain(..=end);
                let mut err = io::stderr().lock();
                for line in text.lines() {
                    let _ = writeln!(err, "{prefix}{line}");
                }
            }
        }
    }

    /// Writes what is still pending and ends a last unterminated line.
    fn finish(&mut self) {
        let mut clean = Vec::new();
        self.sanitizer.finish(&mut clean);
        self.take_lines(&clean);
        if !self.line.is_empty() {
            self.take_lines(b"\n");
        }
        self.pending.extend_from_slice(&clean);
        let open_line = match self.pending.last() {
            Some(last) => *last != b'\n',
            None => !self.at_line_start,
        };
        if open_line {
            self.pending.push(b'\n');
        }
        self.write_pending();
    }
}

/// The last `max` bytes of a file, as text.
fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// Checks `cfg` for values the emulators reject, before starting one.
pub fn validate(cfg: &MachineConfig) -> Result<()> {
    if cfg.cpus == 0 || cfg.cpus > 64 {
        bail!("--cpus must be between 1 and 64 (got {})", cfg.cpus);
    }
    // Bochs' 32-bit memory model and the OVMF image below 4 GiB leave at most 3 GiB of RAM.
    if cfg.memory_mib < 64 || (cfg.emulator == Emulator::Bochs && cfg.memory_mib > 3072) {
        bail!(
            "--memory must be between 64 and {} MiB for {} (got {})",
            if cfg.emulator == Emulator::Bochs {
                3072
            } else {
                u32::MAX
            },
            cfg.emulator,
            cfg.memory_mib
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(emulator: Emulator) -> MachineConfig {
        MachineConfig {
            emulator,
            cpus: 2,
            memory_mib: 512,
            timeout: Some(Duration::from_secs(60)),
            media: Media::EspDir(PathBuf::from("/r/esp")),
            run_dir: PathBuf::from("/r"),
            echo: Echo::Quiet,
            nic: None,
        }
    }

    #[test]
    fn bochsrc_has_the_settings_that_boot_ovmf_with_vmx() {
        let rc = bochsrc(
            &cfg(Emulator::Bochs),
            Path::new("/usr/share/ovmf/OVMF.fd"),
            2 * 1024 * 1024,
            Path::new("/vga.bin"),
        );
        for line in [
            "romimage: file=\"/usr/share/ovmf/OVMF.fd\", address=0xffe00000",
            "cpu: count=2, model=corei7_skylake_x, ips=200000000, reset_on_triple_fault=0",
            "memory: guest=512, host=512",
            "ata0-master: type=disk, path=\"/r/esp\", mode=vvfat",
            "com1: enabled=1, mode=file, dev=\"/r/serial.log\"",
            "display_library: rfb, options=\"timeout=0\"",
            "panic: action=fatal",
            "plugin_ctrl: speaker=0",
            "log: \"/r/bochs.log\"",
        ] {
            assert!(rc.lines().any(|l| l == line), "missing `{line}` in\n{rc}");
        }
    }

    #[test]
    fn console_times_every_line_even_when_quiet() {
        let dir = std::env::temp_dir().join(format!("xtask-console-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        fs::write(&path, b"\x1b[2Jfirst\r\nsec").unwrap();
        let mut console = Console::new(&path, Echo::Quiet, Instant::now());
        console.pump();
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"ond\r\nlast")
            .unwrap();
        console.pump();
        console.finish();
        let lines: Vec<&str> = console
            .timed_lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(lines, ["first", "second", "last"]);
        assert!(console.timed_lines[0].0 <= console.timed_lines[1].0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn script_steps_wait_for_their_line_then_their_delay() {
        let step = |after: &str, ms| Step {
            after: after.into(),
            delay: Duration::from_millis(ms),
            action: Action::Send(Vec::new()),
            pace: Duration::ZERO,
        };
        let script = [step("ready", 0), step("ready", 100)];
        let t0 = Instant::now();
        let line = |s: &str| (Duration::ZERO, s.to_string());
        let mut lines = vec![line("boot"), line("x ready")];
        let (mut from, mut seen) = (0, None);
        assert!(script_due(&script, 0, &lines, &mut from, &mut seen, t0));
        assert_eq!(from, 2);
        // The second step needs a `ready` line after the first one's.
        seen = None;
        assert!(!script_due(&script, 1, &lines, &mut from, &mut seen, t0));
        assert_eq!((from, seen), (2, None));
        lines.push(line("ready again"));
        assert!(!script_due(&script, 1, &lines, &mut from, &mut seen, t0));
        assert_eq!(seen, Some(t0));
        let later = t0 + Duration::from_millis(100);
        assert!(script_due(&script, 1, &lines, &mut from, &mut seen, later));
        assert!(!script_due(&script, 2, &lines, &mut from, &mut seen, later));
    }

    #[test]
    fn slirp_forwards_host_ports_to_the_machine() {
        let nic = Nic {
            forward: vec![(18080, 8080)],
            ..Nic::default()
        };
        let conf = slirp_conf(Path::new("/r"), &nic);
        assert!(
            conf.ends_with("\nhostfwd = tcp:127.0.0.1:18080-10.0.2.15:8080\n"),
            "{conf}"
        );
    }

    #[test]
    fn a_nic_is_opt_in_and_uses_slirp() {
        let mut c = cfg(Emulator::Bochs);
        let rc = bochsrc(&c, Path::new("/o.fd"), 2 << 20, Path::new("/v.bin"));
        assert!(!rc.contains("e1000"), "{rc}");
        assert!(!qemu_args(&c, Path::new("/o.fd"))
            .join(" ")
            .contains("e1000"));
        c.nic = Some(Nic::default());
        let rc = bochsrc(&c, Path::new("/o.fd"), 2 << 20, Path::new("/v.bin"));
        assert!(
            rc.contains(
                "e1000: enabled=1, mac=52:54:00:12:34:56, ethmod=slirp, script=\"/r/slirp.conf\"\n"
            ),
            "{rc}"
        );
        let conf = slirp_conf(Path::new("/r"), &Nic::default());
        assert!(conf.starts_with("# slirp config\n"), "{conf}");
        assert!(conf.contains("dhcpstart = 10.0.2.15\n"), "{conf}");
        c.emulator = Emulator::Qemu;
        let args = qemu_args(&c, Path::new("/o.fd")).join(" ");
        assert!(
            args.contains(
                "-netdev user,id=uplink -device e1000,netdev=uplink,mac=52:54:00:12:34:56"
            ),
            "{args}"
        );
    }

    #[test]
    fn bochs_host_memory_is_capped() {
        let mut c = cfg(Emulator::Bochs);
        c.memory_mib = 3072;
        let rc = bochsrc(&c, Path::new("/o.fd"), 2 << 20, Path::new("/v.bin"));
        assert!(rc.contains("memory: guest=3072, host=2048\n"), "{rc}");
    }

    #[test]
    fn qemu_args_for_tcg_and_kvm() {
        let mut c = cfg(Emulator::Qemu);
        c.media = Media::EspDir(PathBuf::from("/a,b/esp"));
        let args = qemu_args(&c, Path::new("/ovmf.fd")).join(" ");
        assert!(args.contains("-accel tcg -cpu max"), "{args}");
        assert!(
            args.contains("-drive format=raw,file=fat:rw:/a,,b/esp"),
            "{args}"
        );
        assert!(args.contains("-smp 2 "), "{args}");
        assert!(args.contains("-serial file:/r/serial.log"), "{args}");
        assert!(args.contains("-no-reboot -qmp stdio"), "{args}");
        let kvm = qemu_args(&cfg(Emulator::QemuKvm), Path::new("/ovmf.fd")).join(" ");
        assert!(kvm.contains("-accel kvm -cpu host,+vmx"), "{kvm}");
    }

    #[test]
    fn interactive_com1_is_a_connection_to_xtask() {
        let rc = bochs_config(
            &cfg(Emulator::Bochs),
            Path::new("/o.fd"),
            2 << 20,
            Path::new("/v.bin"),
            Com1::Connect(40123),
        );
        assert!(
            rc.contains("\ncom1: enabled=1, mode=socket-client, dev=127.0.0.1:40123\n"),
            "{rc}"
        );
        let args = qemu_args_with(
            &cfg(Emulator::Qemu),
            Path::new("/ovmf.fd"),
            Com1::Connect(40123),
        )
        .join(" ");
        assert!(
            args.contains(
                "-chardev socket,id=com1,host=127.0.0.1,port=40123 -serial chardev:com1 "
            ),
            "{args}"
        );
        assert!(!args.contains("file:"), "{args}");
    }

    #[test]
    fn qmp_shutdown_reason_decides_power_off() {
        use std::os::unix::process::ExitStatusExt;
        let ok = ExitStatus::from_raw(0);
        let off = "{\"QMP\": {}}\n{\"return\": {}}\n{\"timestamp\": {\"seconds\": 1}, \"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}\n";
        assert_eq!(qemu_ending(ok, off).0, EndedBy::PowerOff);
        let reset = off.replace("guest-shutdown", "guest-reset");
        let (ended, reason) = qemu_ending(ok, &reset);
        assert_eq!(ended, EndedBy::EmulatorExit(0));
        assert_eq!(reason.as_deref(), Some("guest-reset"));
        assert_eq!(
            qemu_ending(ExitStatus::from_raw(1 << 8), "").0,
            EndedBy::EmulatorExit(1)
        );
    }

    #[test]
    fn bochs_shutdown_port_panic_is_a_power_off() {
        use std::os::unix::process::ExitStatusExt;
        let dir = std::env::temp_dir().join(format!("xtask-machine-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("bochs.log");
        let status = ExitStatus::from_raw(1 << 8);
        fs::write(&log, "00000000000i[      ] x\n00788006550p[UNMAP ] >>PANIC<< Shutdown port: shutdown requested\n").unwrap();
        assert_eq!(bochs_ending(status, &log).0, EndedBy::PowerOff);
        fs::write(&log, "00000000001e[CPU0  ] VMFAIL: VMCS invalid host TR selector\n00000000002p[CPU0  ] >>PANIC<< exception(): 3rd (13) exception with no resolution\n").unwrap();
        let (ended, reason) = bochs_ending(status, &log);
        assert_eq!(ended, EndedBy::EmulatorExit(1));
        assert!(reason.unwrap().starts_with("exception(): 3rd (13)"));
        let result = RunResult {
            emulator: Emulator::Bochs,
            ended_by: ended,
            wall: Duration::from_secs(1),
            serial: String::new(),
            serial_log: dir.join("serial.log"),
            emulator_log: log,
            reason: None,
            timed_lines: Vec::new(),
        };
        let excerpt = result.emulator_log_excerpt(5);
        assert!(
            excerpt.contains("errors and panics:\n  00000000001e[CPU0  ] VMFAIL"),
            "{excerpt}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
