//! Real guest operating systems under Bochs, all in one boot (tests/manifests/linux.toml): two
//! Linux guests (Debian's stock cloud kernel with the busybox initramfs from `cargo xtask
//! build`; 1 and 2 vCPUs, 256 MiB each), a Multiboot kernel and a 16-bit real-mode guest.
//!
//! The Linux guests' `/init` (xtask/src/linux.rs) prints `linux-guest: ...` lines and powers
//! off through ACPI S5. Without the kernel and initramfs this test fails: it never passes by
//! skipping the Linux guests.

use std::io::Write as _;
use std::time::Duration;

use integration_tests::Scenario;
use xtask::linux::{self, WORKLOAD_MD5};

/// The Linux guests: (name, vCPUs), as in linux.toml. linux4 has more vCPUs than the
/// machine has CPUs.
const LINUX_GUESTS: &[(&str, u32)] = &[("linux1", 1), ("linux2", 2), ("linux4", 4)];

#[test]
fn bochs_linux_multiboot_and_real_mode_guests() {
    // `cargo xtask build` prepared these (or warned why it could not); this reuses them, or
    // fetches them when they are still missing.
    let assets = linux::prepare().unwrap_or_else(|e| {
        panic!(
            "the Linux guest's kernel and initramfs are missing and could not be prepared: {e:#}\n\
             They come from Debian packages (linux-image-*-cloud-amd64, busybox-static) through \
             apt-get download: run `cargo xtask build` on a Debian machine that reaches a \
             package mirror, or put a bzImage at {} yourself.",
            linux::dir().join(linux::KERNEL_FILE).display()
        )
    });
    // "6.1.0-56-cloud-amd64 from linux-image-..._amd64.deb": the release `uname -r` prints.
    let release = assets
        .kernel_release
        .split_whitespace()
        .next()
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string);

    let mut boot = Scenario::bochs("bochs_linux", "linux.toml")
        .cpus(2)
        .memory_mib(1024)
        .timeout_secs(900)
        .boot();
    boot.line("hv: ferrovisor 0.1.0 starting")
        .line_starting("cpu0: entered VMX root operation")
        .line_starting("cpu1: entered VMX root operation");

    for &(name, vcpus) in LINUX_GUESTS {
        let say = |what: &str| format!("[{name}] linux-guest: {what}");
        boot.line_starting(&format!("vm {name}: started"))
            .line_starting(&say("kernel 6."));
        if let Some(release) = &release {
            boot.line(&say(&format!("kernel {release}")));
        }
        boot.line(&say(&format!("nproc {vcpus}")))
            .line_starting_containing(&say("memtotal "), " kB")
            .line(&say("hypervisor flag yes"))
            // CPUID leaf 0DH consistent with what XSETBV/XSAVEC do: the kernel keeps
            // XSAVE (and so AVX2, which the emulated Skylake-X has) and warns about nothing.
            .line(&say("avx2 yes"))
            .line(&say("kernel warnings 0"))
            .line(&say(&format!("workload md5 {WORKLOAD_MD5}")))
            .line(&say("powering off"))
            .no_line_containing(&say("poweroff -f failed"))
            .line(&format!("vm {name}: exited code=0 (powered off)"));
    }
    boot.no_line_containing("Kernel panic")
        .no_line_containing("XSAVE consistency problem");
    // The SMP stress on 4 vCPUs over 2 CPUs: every hash right, no worker killed.
    boot.line("[linux4] linux-guest: stress 6 rounds of 8 workers: 0 wrong, 0 faults");

    boot.line("[mb] mbkernel: magic ok")
        .line_starting_containing("[mb] mbkernel: mem_lower ", " KiB mem_upper ")
        .line_starting_containing("[mb] mbkernel: cmdline ", "hello multiboot")
        .line_starting_containing("[mb] mbkernel: mmap ", " entries")
        .line("[mb] mbkernel: loader ferrovisor")
        .line("[mb] mbkernel: PASS")
        .line("vm mb: exited code=0");

    boot.line("[legacy] realmode: hello from 16-bit real mode")
        .line("[legacy] realmode: sum 1..100 = 5050")
        .line("[legacy] realmode: PASS")
        .line("vm legacy: exited code=0");

    boot.line_starting("hv: summary: 5 guests");
    for done in [
        "linux1 exited code=0 (powered off)",
        "linux2 exited code=0 (powered off)",
        "linux4 exited code=0 (powered off)",
        "mb exited code=0",
        "legacy exited code=0",
    ] {
        boot.line_starting_containing("hv: summary:", done);
    }
    boot.line_starting("hv: powering off").powered_off();

    report_timings(&boot.result.timed_lines);
    let memtotals: Vec<(String, Option<u64>)> = LINUX_GUESTS
        .iter()
        .map(|&(name, _)| (name.to_string(), memtotal_kb(&boot.result.serial, name)))
        .collect();
    boot.finish();

    // 256 MiB of guest RAM, less what the firmware area and the kernel keep for themselves.
    for (name, kb) in memtotals {
        let kb = kb.unwrap_or_default();
        assert!(
            (128 * 1024..=256 * 1024).contains(&kb),
            "[{name}] MemTotal {kb} kB is not plausible for a 256 MiB guest"
        );
    }
}

/// The number on a guest's `linux-guest: memtotal <n> kB` line.
fn memtotal_kb(serial: &str, guest: &str) -> Option<u64> {
    let prefix = format!("[{guest}] linux-guest: memtotal ");
    serial.lines().find_map(|l| {
        l.strip_prefix(&prefix)?
            .strip_suffix(" kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// How long (wall time from the emulator's start) each guest took to reach its milestones, to
/// stderr past the harness' capture: the Linux boot time under Bochs is worth watching.
fn report_timings(timed_lines: &[(Duration, String)]) {
    let first = |prefix: &str| {
        timed_lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| t.as_secs_f64())
    };
    let mut report = String::from("[bochs_linux] timings (s since Bochs started):");
    let mut milestones = vec![("hypervisor".to_string(), "hv: ferrovisor".to_string())];
    for &(name, _) in LINUX_GUESTS {
        milestones.push((format!("{name} started"), format!("vm {name}: started")));
        milestones.push((
            format!("{name} in /init"),
            format!("[{name}] linux-guest: kernel"),
        ));
        milestones.push((format!("{name} ended"), format!("vm {name}: exited")));
    }
    milestones.push(("mb ended".into(), "vm mb: exited".into()));
    milestones.push(("legacy ended".into(), "vm legacy: exited".into()));
    milestones.push(("power-off".into(), "hv: powering off".into()));
    for (what, prefix) in milestones {
        match first(&prefix) {
            Some(t) => report += &format!(" {what} {t:.1};"),
            None => report += &format!(" {what} -;"),
        }
    }
    let _ = writeln!(std::io::stderr(), "{report}");
}
