//! One Bochs boot with hostile guests beside a witness: every hostile act ends only the guest
//! that did it, with a diagnostic, and everyone else finishes.

use integration_tests::Scenario;

#[test]
fn bochs_adversarial_guests_are_contained() {
    let mut boot = Scenario::bochs("bochs_adversarial", "adversarial.toml")
        .cpus(2)
        .timeout_secs(900)
        .boot();

    // No NIC on this machine: one line says so, and nothing else networks.
    boot.line_starting_containing(
        "hv: nic: no supported NIC among ",
        " PCI functions: no uplink",
    )
    .no_line_containing("hv: endpoint:")
    // An NBD disk needs the endpoint: its guest is refused at once, with the reason.
    .line(
        "vm nbdnonic: not started: NBD disk (manifest line 160): nbd://10.0.2.2:10809/none: the host has no NIC with the hypervisor's endpoint (an NBD disk needs one)",
    );

    // Well-behaved work completes next to everything below.
    boot.line("[witness] witness: done")
        .line("vm witness: exited code=0");

    // VMX instructions inject #UD; MSR and CPUID sweeps see no host-only state; garbage
    // hypercalls, invalid XCR0 values and a full port sweep are answered, not fatal.
    for name in [
        "vmxinsn",
        "msrsweep",
        "cpuidsweep",
        "hcgarbage",
        "xsetbv",
        "iosweep",
        // CR0/CR4/CR8 writes the SDM forbids are #GP(0), CR8 is the TPR and masks
        // interrupts, CPUID leaf 0DH matches XSETBV and XSAVEC, MISC_ENABLE/MCG/APIC_BASE,
        // the VMCS-held MSRs (PAT, SYSENTER, EFER) read back what was written.
        "crmsr",
    ] {
        boot.line(&format!("[{name}] {name}: PASS"))
            .line(&format!("vm {name}: exited code=0"));
    }

    // Two guests hammer the FPU/SSE/AVX registers with their own patterns and yield all the
    // time: neither ever sees the other's values.
    boot.line("[fpu-a] fpu: PASS")
        .line("vm fpu-a: exited code=0")
        .line("[fpu-b] fpu: PASS")
        .line("vm fpu-b: exited code=0");

    // Hung and crashed guests are stopped with the reason; the escape guests run with
    // unmapped_access = "stop".
    boot.line_starting_containing(
        "vm cli-spin: stopped: ",
        "spinning with interrupts disabled",
    )
    .line_starting_containing("vm hlt-cli: stopped: ", "HLT with interrupts disabled")
    .line_starting_containing("vm triple: stopped: ", "triple fault")
    .line_starting_containing(
        "vm escape-4g: stopped: ",
        "EPT violation: write at guest-physical 0x100000000",
    )
    .line("vm escape-far: exited code=142");

    // String I/O: the rep outsb lines reach the console whole, in every form.
    boot.line("[strio] strio: rep outsb reached the console")
        .line("[strio] strio: rep outsb with DF=1, in reverse")
        .line("[strio] strio: rep outsb with an FS override")
        .line("[strio] strio: rep outsb with 32-bit addresses")
        .line("[strio] strio: PASS")
        .line("vm strio: exited code=0");
    // MMIO instructions on the local APIC and on the empty bus: the unmapped accesses are
    // logged once per page, counted, and the guest runs to the end.
    boot.line("[mmioinsn] mmioinsn: still running after the empty-bus accesses")
        .line("[mmioinsn] mmioinsn: PASS")
        .line("vm mmioinsn: unmapped read at guest-physical 0xd0000000 (ignored)")
        .line_starting_containing("vm mmioinsn: ", "unmapped accesses ignored")
        .line("vm mmioinsn: exited code=0");
    // The xAPIC page is per vCPU: the BSP's moved page and its old one are the empty bus
    // for the vCPU that doesn't have its APIC there.
    boot.line("[apicpage] apicpage: PASS")
        .line("vm apicpage: unmapped read at guest-physical 0xfee00020 (ignored)")
        .line("vm apicpage: unmapped read at guest-physical 0xfeb00020 (ignored)")
        .line("vm apicpage: exited code=0");
    // A hostile virtio-blk driver (tests/guests/vqhostile): every malformed virtqueue marks
    // the device DEVICE_NEEDS_RESET (virtio 1.2 2.1.2) instead of reaching outside its RAM
    // or stopping anything; a notification before DRIVER_OK is held until DRIVER_OK (3.1.1);
    // after a reset a valid read works again.
    let vq = |what: &str| format!("[vqhostile] vqhostile: {what}");
    boot.line(&vq("virtio-blk at 00:03.0, BAR0 0xc001, interrupt line 11"))
        .line(&vq("before I/O enable: status port reads 0xff"))
        .line(&vq(
            "valid read: served (status 0x0f, used idx 1, request status 0x00)",
        ))
        .line(&vq("sector 0 starts \"ferrovisor\""))
        .line(&vq(
            "notify before DRIVER_OK: ignored (status 0x0b, used idx 0, request status 0xee)",
        ))
        .line(&vq(
            "then DRIVER_OK: served (status 0x0f, used idx 1, request status 0x00)",
        ));
    for case in [
        "queue size 3",
        "descriptor loop",
        "chain longer than the queue",
        "buffer outside RAM",
        "address+length overflow",
        "total length overflow",
        "writable before readable",
        "ring outside RAM",
    ] {
        boot.line_starting(&vq(&format!("{case}: DEVICE_NEEDS_RESET (status 0x4")));
    }
    boot.line(&vq(
        "valid read after reset: served (status 0x0f, used idx 1, request status 0x00)",
    ))
    .line(&vq("done, the device recovered"))
    .line("vm vqhostile: exited code=0")
    .line(
        "vm vqhostile: virtio-blk 00:03.0: marked DEVICE_NEEDS_RESET 8 times, last: Queue(0, RingOutsideRam)",
    )
    .line("hv: disk image vqdisk.img: 4 KiB held once (read-only base), shared by 1 disk of 1 guest");

    boot.no_line_containing("LEAKED").no_line_containing("FAIL");

    boot.line_starting("hv: summary: 19 guests")
        .no_line_containing("hv: fatal")
        .line_starting("hv: powering off")
        .powered_off();
    boot.finish();
}
