//! `cargo xtask <command>`: see `cargo xtask help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use xtask::machine::{self, terminal, Echo, Emulator, EndedBy, Input, MachineConfig, Media};
use xtask::prereq::{self, Need};
use xtask::{build, disk, esp, paths, run_command};

const HELP: &str = "\
cargo xtask <command> [options]

Commands:
  build     Build boot.efi (release, x86_64-unknown-uefi) and the test guests.
  image     Lay out an ESP directory and a raw GPT disk image for a manifest.
              --manifest FILE   manifest (default tests/manifests/demo.toml)
              --out DIR         ESP directory (default target/esp)
              --disk FILE       disk image (default target/ferrovisor.img); write it to a
                                USB stick with `dd if=FILE of=/dev/sdX bs=4M conv=fsync`
  import-ovf FILE.ova|FILE.ovf --out DIR [--kernel PATH] [--initrd PATH] [--cmdline STR]
            Import a DMTF OVF 1.x/2.x appliance: writes DIR/manifest.toml (one guest per
            VirtualSystem, with its CPUs, memory, disks and NICs) and each disk as a raw
            image (converted with qemu-img, from qemu-utils). What the descriptor has that a
            guest cannot (CD drives, sound, USB, vendor sections ...) is listed, and noted in
            the manifest. Until guest firmware exists the guests boot the Linux kernel given
            with --kernel directly (default command line `console=ttyS0`). Disks and NICs are
            parsed and validated by the hypervisor; they reach the guest with virtio.
              --out DIR         output directory (created)
              --kernel PATH     bzImage the guests boot (copied into DIR)
              --initrd PATH     initial ramdisk (copied into DIR)
              --cmdline STR     kernel command line, e.g. \"console=ttyS0 root=/dev/vda1\"
  run       Build, make the ESP, boot it and stream the serial console until the machine
            powers off (exit 0) or the timeout (exit 1). The console is interactive: keys
            typed go to the machine's COM1 unchanged (the terminal is in raw mode for the
            run; Ctrl-C goes to the machine too), where the hypervisor takes Ctrl-A <digit>
            (select guest N's console) and Ctrl-A l (list the guests). Ctrl-] ends the run
            (exit 0). Piped stdin goes to COM1 as it comes, e.g.
            `(sleep 60; printf 'ls\r') | cargo xtask run`.
              --emulator bochs|qemu  bochs (default): VT-x and EPT emulated, slow;
                                     qemu: TCG, fast, no VT-x (shows the no-VT-x path)
              --kvm             QEMU with KVM and nested VT-x (-cpu host,+vmx); Intel hosts
              --cpus N          CPUs (default 2)
              --memory MiB      RAM (default 1024: the demo's six guests take 369 MiB, each in one 2 MiB-aligned run)
              --manifest FILE   manifest (default tests/manifests/demo.toml)
              --timeout SECS    give up after SECS (default 900; 0 = never)
              --disk-image      boot the GPT disk image instead of the ESP directory
              --nic             an e1000 NIC with user-mode NAT (Bochs slirp, QEMU user):
                                the hypervisor's uplink; DHCP gives it 10.0.2.15
              --no-build        use what the last build left
  test      Host unit tests, `cargo xtask build`, then the emulator integration tests.
            Arguments after `--` go to the integration test harness (e.g. a test name).
  bench     Benchmark under Bochs (figures, never a pass/fail): VM-exit costs in instructions
            (TSC = instructions under Bochs), scheduling fairness, memory overhead per guest,
            start-up time, the Linux boot, timer lateness, KVM peer, virtio-blk vs tmpfs (blk)
            8 guests on one gold image (goldmem), virtio-net vs loopback (net). Builds boot.efi with --features bench
            into target/bench, boots up to two machines side by side (5 to 10 minutes on 2
            cores), prints tables and writes target/bench/results.json and docs/BENCHMARKS.md.
              --only LIST       some of exits,fairness,console,memory,linux,peer,lateness,
                                blk,goldmem,net
                                (docs/BENCHMARKS.md is then left alone)
              --cycles N        guest TSC ticks each fairness spinner runs (default 1000000000)
              --no-build        use what the last bench build left
  ctl       HOST:PORT [--token T] [--json] COMMAND...: a console command (list, info VM,
            pause VM, snapshot VM [NAME], ...; `ctl HOST:PORT help`) sent to the management
            API, the result printed as the console prints it (token also from
            FERROVISOR_TOKEN); see docs/management.md. Also `export VM NAME FILE` (snapshot
            NAME of VM to FILE) and `import VM NAME FILE` (FILE back as snapshot NAME of VM).
  help      This text.

Runs keep their files (ESP, emulator configuration, serial and emulator logs) in
target/runs/<name>/. The OVMF image can be overridden with FERROVISOR_OVMF=<path>.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<ExitCode> {
    let Some((command, rest)) = args.split_first() else {
        print!("{HELP}");
        return Ok(ExitCode::FAILURE);
    };
    match command.as_str() {
        "build" => {
            Options::parse(rest, &[])?;
            build::build_all()?;
        }
        "image" => image(Options::parse(rest, &["--manifest", "--out", "--disk"])?)?,
        "run" => return run(Options::parse(rest, RUN_OPTIONS)?),
        "test" => return test(rest),
        "import-ovf" => import_ovf(rest)?,
        "bench" => bench(Options::parse(rest, &["--only", "--cycles", "--no-build"])?)?,
        "ctl" => xtask::ctl::main(rest)?,
        "help" | "--help" | "-h" => print!("{HELP}"),
        other => bail!("unknown command `{other}`; see `cargo xtask help`"),
    }
    Ok(ExitCode::SUCCESS)
}

const RUN_OPTIONS: &[&str] = &[
    "--emulator",
    "--kvm",
    "--cpus",
    "--memory",
    "--manifest",
    "--timeout",
    "--disk-image",
    "--no-build",
    "--nic",
];
const FLAGS: &[&str] = &["--kvm", "--disk-image", "--no-build", "--nic"];

/// `--name value`, `--name=value` and flags, checked against the command's list.
#[derive(Debug, Default)]
struct Options(Vec<(String, Option<String>)>);

impl Options {
    fn parse(args: &[String], allowed: &[&str]) -> Result<Self> {
        let mut options = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (arg.as_str(), None),
            };
            if !allowed.contains(&name) {
                bail!("unknown option `{arg}`; see `cargo xtask help`");
            }
            let value = if FLAGS.contains(&name) {
                if inline.is_some() {
                    bail!("{name} takes no value");
                }
                None
            } else {
                Some(match inline {
                    Some(value) => value,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| anyhow!("{name} needs a value"))?,
                })
            };
            options.push((name.to_string(), value));
        }
        Ok(Self(options))
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn number(&self, name: &str, default: u64) -> Result<u64> {
        self.value(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| anyhow!("{name} needs a whole number (got `{v}`)"))
        })
    }

    fn path(&self, name: &str, default: PathBuf) -> PathBuf {
        self.value(name).map_or(default, PathBuf::from)
    }
}

fn import_ovf(args: &[String]) -> Result<()> {
    let Some((input, rest)) = args.split_first().filter(|(a, _)| !a.starts_with("--")) else {
        bail!("import-ovf needs the .ova or .ovf file first; see `cargo xtask help`");
    };
    let options = Options::parse(rest, &["--out", "--kernel", "--initrd", "--cmdline"])?;
    let out = options
        .value("--out")
        .ok_or_else(|| anyhow!("import-ovf needs --out DIR"))?;
    let imported = xtask::ovf::import(&xtask::ovf::ImportOptions {
        input: PathBuf::from(input),
        out: PathBuf::from(out),
        kernel: options.value("--kernel").map(PathBuf::from),
        initrd: options.value("--initrd").map(PathBuf::from),
        cmdline: options.value("--cmdline").map(str::to_string),
    })?;
    for line in xtask::ovf::report(&imported) {
        println!("{line}");
    }
    Ok(())
}

fn image(options: Options) -> Result<()> {
    let manifest = options.path("--manifest", paths::default_manifest());
    let out = options.path("--out", paths::default_esp_dir());
    let disk_path = options.path("--disk", paths::default_disk_image());
    let esp = esp::make_esp(&manifest, &out, &esp::EspSources::default())?;
    let image = disk::write_disk_image(&esp.dir, &disk_path)?;
    println!("ESP directory: {}", esp.dir.display());
    for (inside, source) in &esp.files {
        println!("  {inside:<24} <- {}", paths::display(source));
    }
    println!(
        "disk image:    {} ({} MiB, GPT, FAT32 EFI System Partition at LBA {})",
        image.path.display(),
        image.disk_bytes >> 20,
        image.partition_first_lba
    );
    Ok(())
}

fn run(options: Options) -> Result<ExitCode> {
    let kind = match (options.value("--emulator"), options.flag("--kvm")) {
        (Some("bochs"), true) => {
            bail!("--kvm runs QEMU; it cannot be combined with --emulator bochs")
        }
        (_, true) => Emulator::QemuKvm,
        (None | Some("bochs"), false) => Emulator::Bochs,
        (Some("qemu"), false) => Emulator::Qemu,
        (Some(other), false) => bail!("unknown emulator `{other}` (bochs or qemu)"),
    };
    if kind == Emulator::QemuKvm {
        if let Some(why) = prereq::kvm_unusable() {
            bail!("QEMU with KVM cannot run VT-x guests here: {why}");
        }
    }
    let timeout = options.number("--timeout", 900)?;
    let manifest = options.path("--manifest", paths::default_manifest());
    let run_dir = paths::run_dir(&format!("xtask-run-{kind}"));
    let mut cfg = MachineConfig {
        emulator: kind,
        cpus: u32::try_from(options.number("--cpus", 2)?).context("--cpus")?,
        memory_mib: u32::try_from(options.number("--memory", 1024)?).context("--memory")?,
        timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
        media: Media::EspDir(run_dir.join("esp")),
        run_dir: run_dir.clone(),
        echo: Echo::Stdout,
        nic: options.flag("--nic").then(machine::Nic::default),
    };
    machine::validate(&cfg)?;
    let emulators = prereq::ensure(&[match kind {
        Emulator::Bochs => Need::Bochs,
        _ => Need::Qemu,
    }])?;
    if !options.flag("--no-build") {
        build::build_all()?;
    }

    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("removing {}", run_dir.display()))?;
    }
    let esp = esp::make_esp(&manifest, &run_dir.join("esp"), &esp::EspSources::default())?;
    if options.flag("--disk-image") {
        let image = disk::write_disk_image(&esp.dir, &run_dir.join("ferrovisor.img"))?;
        cfg.media = Media::DiskImage(image.path);
    }
    eprintln!(
        "xtask: booting {} with {kind}, {} CPUs, {} MiB; files in {}",
        paths::display(&manifest),
        cfg.cpus,
        cfg.memory_mib,
        run_dir.display()
    );
    if kind == Emulator::Bochs {
        eprintln!("xtask: Bochs needs about 15 s to reach the UEFI application");
    }
    if terminal::stdin_is_foreground_terminal() {
        eprintln!(
            "xtask: keys go to the machine (Ctrl-A <digit>: guest N, Ctrl-A l: list); {} ends the run",
            terminal::QUIT_KEY_NAME
        );
    }
    eprintln!("---- serial console ----");
    let result = machine::run_with(&cfg, &emulators, Input::Stdin)?;
    eprintln!("---- end of serial console ----");
    eprintln!("xtask: {}", result.summary());
    eprintln!("xtask: serial log: {}", result.serial_log.display());
    eprintln!("xtask: {} log: {}", kind, result.emulator_log.display());
    if matches!(result.ended_by, EndedBy::PowerOff | EndedBy::User) {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{}", result.emulator_log_excerpt(30));
    Ok(ExitCode::FAILURE)
}

fn bench(options: Options) -> Result<()> {
    let mut bench = xtask::bench::Options {
        build: !options.flag("--no-build"),
        ..Default::default()
    };
    if let Some(list) = options.value("--only") {
        bench.sections = xtask::bench::Sections::parse(list)?;
    }
    if options.value("--cycles").is_some() {
        bench.cycles = Some(options.number("--cycles", 0)?).filter(|c| *c > 0);
        if bench.cycles.is_none() {
            bail!("--cycles needs a number above 0");
        }
    }
    xtask::bench::run(&bench)?;
    Ok(())
}

fn test(rest: &[String]) -> Result<ExitCode> {
    let harness_args: &[String] = match rest.split_first() {
        None => &[],
        Some((dashes, args)) if dashes == "--" => args,
        Some((other, _)) => bail!("unknown option `{other}` (harness arguments go after `--`)"),
    };
    // Emulators first: a missing package should fail in seconds, not after the builds.
    prereq::ensure(&[Need::Bochs, Need::Qemu])?;
    build::ensure_rust_targets()?;
    eprintln!("xtask: [0/3] lints: rustfmt and clippy (warnings are errors)");
    run_command(build::cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_command(
        build::cargo()
            .args(["fmt", "--all", "--manifest-path"])
            .args([
                &*paths::guests_workspace()
                    .join("Cargo.toml")
                    .to_string_lossy(),
                "--",
                "--check",
            ]),
    )?;
    run_command(build::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "boot",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_command(build::cargo().args([
        "clippy",
        "-p",
        "boot",
        "--release",
        "--target",
        "x86_64-unknown-uefi",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("xtask: [1/3] host unit tests");
    run_command(build::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "boot",
        "--exclude",
        "integration-tests",
    ]))?;
    eprintln!("xtask: [2/3] cargo xtask build");
    build::build_all()?;
    eprintln!("xtask: [3/3] emulator integration tests");
    // Bochs is single-threaded and CPU-bound: two runs side by side fill two cores.
    run_command(
        build::cargo()
            .args(["test", "-p", "integration-tests", "--", "--test-threads=2"])
            .args(harness_args),
    )?;
    Ok(ExitCode::SUCCESS)
}
