//! One Bochs boot with two CPUs (VT-x and EPT emulated) running the first test guests.

use integration_tests::Scenario;

#[test]
fn bochs_vmx_root_two_cpus_and_first_guests() {
    let mut boot = Scenario::bochs("bochs_basic", "basic.toml")
        .cpus(2)
        .timeout_secs(600)
        .with_nic()
        .boot();
    boot.line("hv: ferrovisor 0.1.0 starting")
        .line_starting("cpu0: entered VMX root operation")
        .line_starting("cpu1: entered VMX root operation");

    boot.line_starting("vm hello: started")
        .line("[hello] hello from a ferrovisor guest")
        .line("vm hello: exited code=0");
    boot.line("[cpuid] cpuid: tsc frequency: ok")
        .line("[cpuid] cpuid: PASS")
        .line("vm cpuid: exited code=0");
    // Guest memory copies end exactly at the end of RAM (hypercall checks
    // one byte further and ranges wrapping 2^64 get EFAULT).
    boot.line("[hypercall] hypercall: console write from the top of ram works")
        .line("[hypercall] hypercall: console write one byte past the end of ram: ok")
        .line("[hypercall] hypercall: console write wrapping past 2^64: ok")
        .line("[hypercall] hypercall: PASS")
        .line("vm hypercall: exited code=0");
    boot.line("[memtest] memtest: PASS")
        .line("vm memtest: exited code=0");

    // Reaching outside its own memory stops a guest; nothing else is harmed.
    boot.line_starting_containing("vm escape-high: stopped: ", "EPT violation")
        .line_starting_containing("vm escape-hole: stopped: ", "EPT violation")
        .no_line_containing("LEAKED")
        .line("[witness] witness: done")
        .line("vm witness: exited code=0");

    // Restart policy: two restarts, then the final exit is reported.
    boot.line("vm again: restarting (1 of at most 2)")
        .line("vm again: restarting (2 of at most 2)")
        .line("vm again: exited code=0");
    // Bad input: refused with the defect named, before the guest starts.
    boot.line_starting_containing("vm bad-image: not started: ", "bad ELF64 image")
        .no_line_containing("vm bad-image: started");

    // Console floods hold no CPU: the worker beside three flooders finishes its fixed work
    // while they still flood, and their full queues drop the oldest lines, counted.
    boot.line("[worker] conflood: worker done 60 units")
        .line("vm worker: exited code=0")
        .line_before(
            "[worker] conflood: worker done 60 units",
            "[flood1] conflood: done 1000 writes",
        )
        .line_before(
            "[worker] conflood: worker done 60 units",
            "[flood2] conflood: done 1000 writes",
        )
        .line("vm flood1: exited code=0")
        .line("vm flood2: exited code=0")
        .line_starting_containing("[flood1] ... (", " bytes dropped)")
        .line_starting_containing("[flood3] ... (", " bytes dropped)")
        .line("[flood3] conflood: done 20 writes")
        .line("vm flood3: exited code=0")
        .no_line_containing("conflood: FAIL")
        .line_starting_containing("vm flood1: longest exit ", " TSC ticks (reason ")
        .line_starting_containing("vm worker: longest exit ", " TSC ticks (reason ");
    // Whole lines only: no guest's line is cut into by another's.
    let cut: Vec<String> = boot
        .result
        .lines()
        .filter(|l| l.starts_with("[flood") && l.contains("conflood: flood "))
        .filter(|l| !(l.len() == "[floodN] ".len() + 63 && l.ends_with("...")))
        .map(str::to_string)
        .collect();
    assert!(
        cut.is_empty(),
        "flood lines cut or mixed: {:?}",
        &cut[..cut.len().min(5)]
    );

    // The machine's e1000 is found on the host's PCI bus, driven by the hypervisor (link up,
    // the MAC Bochs was given) and its endpoint gets slirp's DHCP address; the guests' PCI bus
    // doesn't show it.
    boot.line_starting_containing("hv: pci: ", " 8086:100e class 02.00.00 (uplink NIC)")
        .line_starting_containing(
            "hv: nic: ",
            " e1000 (Intel 8254x) mac 52:54:00:12:34:56, link up",
        )
        .line("hv: endpoint: 10.0.2.15/24 via dhcp (52:54:00:12:34:56)")
        .no_line_containing("no uplink")
        .no_line_containing("dhcp lease lost")
        .no_line_containing("hv: nic: link down")
        .line_starting_containing("hv: nic: rx ", ", missed 0, crc errors 0")
        .no_line_containing("hv: nic: rx 0 frames")
        .no_line_containing(", tx 0 frames")
        .line("[pcihide] pcihide: PASS")
        .line("vm pcihide: exited code=0")
        .no_line_containing("pcihide: FAIL");

    boot.line_starting("hv: summary:")
        .line_starting("hv: powering off")
        .powered_off();
    boot.finish();
}
