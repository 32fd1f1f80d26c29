//! A complete [`Report`] built from captured console lines of every section, for the tests of
//! the report and the JSON document.

use std::time::Duration;

use super::kvmpeer::{self, PeerReport, PeerRun};
use super::linux_boot::{self, LinuxBoot, LinuxReport};
use super::*;

/// The bench guest's lines of an exit-cost boot.
pub const EXITS_LOG: &str = "\
hv: ferrovisor 0.1.0 starting
hv: tsc: 199997 kHz (calibrated against the PIT)
vm bench: memory overhead 52 KiB for 16 MiB of RAM (EPT 12 KiB, VMCS+XSAVE+bitmaps 36 KiB, heap 4 KiB)
vm bench: started (16 MiB at host 0x1b000000, 1 vcpu, elf64, long mode, image 20952 bytes, EPT 12 KiB)
vm bench: first output 123456 TSC ticks after the manifest was read
[bench] bench: loop 50000 10000 5
[bench] bench: floor 3050000 10000 305
[bench] bench: cpuid 4550000 10000 455
[bench] bench: vmcall 3500000 10000 350
[bench] bench: pio_device 9050000 10000 905
[bench] bench: pio_unclaimed 8050000 10000 805
[bench] bench: rdmsr 6000000 10000 600.0
[bench] bench: kernel_floor 3150000 10000 315
[bench] bench: kernel_cpuid 4650000 10000 465
[bench] bench: done
vm bench: exited code=0
hv: summary: 1 guests: bench exited code=0
";

/// The end of a `linux-3` boot (the hypervisor's summary lines, as sched.rs prints them).
pub const LINUX3_LOG: &str = "\
hv: manifest: 3 guests, time slice 5000 us
vm linux1: started (256 MiB at host 0x20000000, 1 vcpu, bzimage, ...)
[linux1] linux-guest: tsc unstable 0
[linux2] linux-guest: tsc unstable 1
[linux1] linux-guest: powering off
vm linux1: exited code=0 (powered off)
vm linux2: exited code=0 (powered off)
vm linux3: stopped: triple fault
hv: summary: 3 guests: linux1 exited code=0 (powered off), linux2 exited code=0 (powered off), linux3 stopped (triple fault)
vm linux1: longest exit 120000 TSC ticks (reason 30)
vm linux1: timer lateness: 2000 expiries, <10us 1500, <100us 300, <1ms 150, <4ms 50, <10ms 0, >=10ms 0, max 3900 us
vm linux2: longest exit 130000 TSC ticks (reason 48)
vm linux2: timer lateness: 1000 expiries, <10us 100, <100us 200, <1ms 300, <4ms 200, <10ms 150, >=10ms 50, max 28000 us
vm linux3: longest exit 9000 TSC ticks (reason 52)
";

const KVM_LOG: &str = "\
kvm-peer: kernel 6.1.0-56-cloud-amd64, 1 cpu
kvm-peer: insmod kvm: ok
kvm-peer: insmod kvm_intel: ok
kvm-peer: kvm_intel loaded: ept=Y unrestricted_guest=Y
kvmpeer: /bench.elf: entry 0x100000, 16 MiB, command line \"iterations=10000\"
[kvm-bench] bench: loop 20011 10000 2
[kvm-bench] bench: floor unavailable
[kvm-bench] bench: cpuid 10814801 10000 1081
[kvm-bench] bench: vmcall 11412123 10000 1141
[kvm-bench] bench: pio_device 73778028 10000 7377
[kvm-bench] bench: rdmsr 12227202 10000 1222
[kvm-bench] bench: done
kvmpeer: exit code 0
kvm-peer: done
";

const MEM_LOG: &str = "\
hv: memory: loader data (image, heap, stacks, ESP files) 4321 KiB (heap 103 KiB used of 4096 KiB), host page tables 24 KiB, 2950 MiB free for guests
vm mem-01: memory overhead 64 KiB for 128 MiB of RAM (EPT 20 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 4 KiB)
vm mem-01: started (128 MiB at host 0x1b000000, 1 vcpu, elf64)
vm mem-02: memory overhead 68 KiB for 128 MiB of RAM (EPT 24 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 4 KiB)
vm mem-02: started (128 MiB at host 0x1b000000, 1 vcpu, elf64)
vm mem-03: not started: out of memory
";

fn timed(lines: &[(f64, &str)]) -> Vec<(Duration, String)> {
    lines
        .iter()
        .map(|(s, l)| (Duration::from_secs_f64(*s), l.to_string()))
        .collect()
}

fn manifest(file: &str) -> String {
    std::fs::read_to_string(paths::manifests_dir().join(file)).unwrap()
}

/// Every section filled in, as a full `cargo xtask bench` run fills it.
pub fn report() -> Report {
    let exits = ExitReport::new(
        ExitRun::analyse("exits-1", EXITS_LOG, "powered off"),
        ExitRun::analyse(
            "exits-2",
            &EXITS_LOG.replace("cpuid 4550000", "cpuid 4551000"),
            "powered off",
        ),
    );
    let fair_log = "vm spin-a: first output 1000000000 TSC ticks after the manifest was read\n\
                    [spin-a] spinner: units=3300\n[spin-c] spinner: units=1700\n\
                    vm spin-c: first output 1050000000 TSC ticks after the manifest was read\n\
                    [spin-b] spinner: units=3400\n[spin-d] spinner: units=1600\n";
    let mut weighted = FairRun::analyse(
        "fair-weighted",
        &manifest("bench-fair-weighted.toml"),
        fair_log,
        "powered off",
    );
    weighted.wall_s = Some(61.5);
    let equal = FairRun::analyse(
        "fair-equal",
        &manifest("bench-fair-equal.toml"),
        "[spin-a] spinner: units=10\n[spin-b] spinner: units=10\n\
         [spin-c] spinner: units=10\nvm spin-d: stopped: triple fault\n",
        "powered off",
    );
    let console_manifest = "[hypervisor]\n[[guest]]\nname = \"flood-hc\"\ncmdline = \
                            \"role=hypercall writes=50\"\n[[guest]]\nname = \"spin\"\n\
                            cmdline = \"cycles=9\"\n";
    let console_serial = "hv: tsc: 200000 kHz (calibrated against the PIT)\n\
                          hv: manifest: 2 guests, time slice 5000 us\n\
                          vm flood-hc: exited code=0\nvm spin: exited code=0\n\
                          vm flood-hc: longest exit 212345 TSC ticks (reason 18)\n\
                          vm spin: longest exit 9000 TSC ticks (reason 52)\n";
    let console = ConsoleRun::analyse("console", console_manifest, console_serial, "powered off");
    let memory = vec![
        MemRun::analyse("mem-4", 4, 1024, MEM_LOG, "powered off"),
        MemRun::analyse("mem-1", 1, 512, "", "timed out"),
    ];
    let startup = StartupRow::from_lines(
        "mem-4",
        &timed(&[
            (14.5, "hv: ferrovisor 0.1.0 starting"),
            (15.0, "hv: tsc: 199997 kHz (calibrated against the PIT)"),
            (
                20.0,
                "vm a: first output 5000000 TSC ticks after the manifest was read",
            ),
            (
                22.0,
                "vm b: first output 9000000 TSC ticks after the manifest was read",
            ),
        ]),
    )
    .unwrap();
    let hv = timed(&[
        (15.0, "hv: ferrovisor 0.1.0 starting"),
        (
            20.0,
            "[linux] [    0.000000] Linux version 6.1.0-56-cloud-amd64 (x)",
        ),
        (60.0, "[linux] linux-guest: kernel 6.1.0-56-cloud-amd64"),
        (60.1, "[linux] linux-guest: nproc 1"),
        (60.2, "[linux] linux-guest: memtotal 230000 kB"),
        (60.3, "[linux] linux-guest: hypervisor flag yes"),
        (70.0, "[linux] linux-guest: workload md5 ea4d"),
        (71.0, "[linux] linux-guest: powering off"),
        (71.5, "[linux] [    3.250000] reboot: Power down"),
    ]);
    let direct = timed(&[
        (
            30.0,
            "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (x)",
        ),
        (55.0, "linux-guest: workload md5 ea4d"),
        (56.0, "[    1.625000] reboot: System halted"),
    ]);
    let linux = LinuxReport {
        hv: LinuxBoot::analyse("linux-hv", &hv, Some(linux_boot::GUEST), "powered off"),
        direct: LinuxBoot::analyse("linux-direct", &direct, None, "line seen"),
        hv_cmdline: "console=ttyS0 quiet".into(),
        direct_cmdline: direct_cmdline("console=ttyS0 quiet"),
    };
    let lateness = vec![LatenessRun::analyse(
        "linux-3",
        &manifest("bench-linux3.toml"),
        2,
        LINUX3_LOG,
        "powered off",
    )];
    let run = PeerRun::analyse(KVM_LOG, "line seen");
    let rows = kvmpeer::rows(Some(exits.first.figures.as_slice()), run.lines());
    let peer = PeerReport {
        run: Some(run),
        rows,
        not_run: None,
        modules: vec!["kvm".into(), "kvm_intel".into()],
        guest_cmdline: "iterations=10000".into(),
        direct_cmdline: "console=ttyS0 quiet".into(),
    };
    let config = Config {
        bochs_version: "2.7".into(),
        bochs_package: "2.7+dfsg-4".into(),
        cpu_line: "cpu: count=<n>, model=corei7_skylake_x".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        dirty: Some(false),
        date: "2026-12-02 00:00 UTC".into(),
        host_cpu: "Some \"CPU\" @ 2.0GHz".into(),
        host_cores: 2,
        cycles: DEFAULT_CYCLES,
        kernel: Some("6.1.0-56-cloud-amd64 from linux-image.deb".into()),
    };
    let runs = vec![
        RunInfo {
            name: "exits-1".into(),
            manifest: "tests/manifests/bench-exits.toml".into(),
            cpus: 1,
            memory_mib: 512,
            wall_s: Some(42.25),
            powered_off: true,
            line_seen: None,
            summary: "powered off after 42 s".into(),
        },
        RunInfo {
            name: "linux-direct".into(),
            manifest: "vmlinuz + initrd".into(),
            cpus: 1,
            memory_mib: 512,
            wall_s: None,
            powered_off: false,
            line_seen: Some("[    1.625000] reboot: System halted".into()),
            summary: "could not run: no OVMF".into(),
        },
    ];
    Report {
        config,
        exits: Some(exits),
        fairness: vec![equal, weighted],
        console: Some(console),
        memory,
        startup: vec![startup],
        lateness,
        linux: Some(linux),
        peer: Some(peer),
        blk: Some(super::blk::BlkRun::analyse("blk", BLK_LOG, "powered off")),
        goldmem: Some(super::goldmem::GoldRun::analyse(
            "goldmem",
            2,
            GOLD_LOG,
            "powered off",
        )),
        net: None,
        linux_notes: vec!["a note".into()],
        runs,
        wall_s: 600.125,
    }
}

/// Marks 1-8 of the `blk` guest (phases: empty, read-vda, read-tmpfs, write-vdb, write-tmpfs,
/// page cache dropped, read-vda-buffered).
pub const BLK_LOG: &str = "\
hv: bench mark: vm blk value 1 tsc 1000000 exits 500 (io_instruction=400 ept_violation=100)
hv: bench mark: vm blk value 2 tsc 1100000 exits 510 (io_instruction=405 ept_violation=105)
hv: bench mark: vm blk value 3 tsc 65100000 exits 2510 (io_instruction=1405 ept_violation=1105)
hv: bench mark: vm blk value 4 tsc 97100000 exits 2520 (io_instruction=1410 ept_violation=1110)
hv: bench mark: vm blk value 5 tsc 103100000 exits 2820 (io_instruction=1710 ept_violation=1110)
hv: bench mark: vm blk value 6 tsc 107100000 exits 2830 (io_instruction=1720 ept_violation=1110)
hv: bench mark: vm blk value 7 tsc 110100000 exits 2840 (io_instruction=1730 ept_violation=1110)
hv: bench mark: vm blk value 8 tsc 150100000 exits 3000 (io_instruction=1830 ept_violation=1170)
";

/// Two guests on one gold image.
pub const GOLD_LOG: &str = "\
vm gold-01: memory overhead 100 KiB for 32 MiB of RAM (EPT 20 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 40 KiB)
vm gold-02: memory overhead 104 KiB for 32 MiB of RAM (EPT 24 KiB, VMCS+XSAVE+bitmaps 40 KiB, heap 40 KiB)
hv: disk image rootfs.ext4: 65536 KiB held once (read-only base), shared by 2 disks of 2 guests
vm gold-01: memory: disk overlays 0 KiB
vm gold-02: memory: disk overlays 8 KiB
";
