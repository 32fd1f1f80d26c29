//! One Bochs boot of CPU conformance guests (tests/manifests/conformance.toml): state that must
//! not leak between guests or survive a restart, NMIs, and guests that can never run again.

use integration_tests::Scenario;

#[test]
fn bochs_cpu_conformance() {
    let mut boot = Scenario::bochs("bochs_conformance", "conformance.toml")
        .cpus(2)
        .timeout_secs(600)
        .boot();

    boot.line("[witness] witness: done")
        .line("vm witness: exited code=0");

    // Power-on values, debug registers and CR2 kept per vCPU across hundreds of yields while
    // the other instance writes its own pattern on the same CPUs, a data breakpoint that
    // survives an exit, RF in the frames of injected faults.
    for name in ["cpustate-a", "cpustate-b"] {
        boot.line(&format!("[{name}] cpustate: power-on state ok"))
            .line(&format!(
                "[{name}] cpustate: registers kept over 300 yields"
            ))
            .line(&format!(
                "[{name}] cpustate: #GP from MOV to CR4 has RF set: ok"
            ))
            .line(&format!("[{name}] cpustate: #UD from VMXON has RF set: ok"))
            .line(&format!("[{name}] cpustate: PASS"))
            .line(&format!("vm {name}: exited code=0"));
    }
    boot.line_starting("[cpustate-a] cpustate: breakpoint across exits ok");

    // A restart is a power cycle: the run after the restart sees power-on registers and the
    // same device state as the first run, not what the first run left.
    boot.line_times("[cpustate-r] cpustate: power-on state ok", 2)
        .line_times("[cpustate-r] cpustate: dirtied", 2)
        .line_times("[cpustate-r] cpustate: PASS", 2)
        .same_lines_starting("[cpustate-r] cpustate: devices ", 2)
        // The RTC is battery-backed: the year the first run set shows after
        // the restart (the first run shows the host's year).
        .line_times("[cpustate-r] cpustate: rtc year 2001", 1)
        .line_starting("vm cpustate-r: restarting (1 of at most 1)");

    // fw_cfg reports the manifest's vCPUs and RAM, its file directory and etc/e820 (by DMA).
    boot.line("[fwcfg] fwcfg: signature QEMU features 0x3")
        .line("[fwcfg] fwcfg: cpus 3 max 3 ram 48 MiB")
        .line("[fwcfg] fwcfg: file etc/e820 key 0x20 size 120")
        .line("[fwcfg] fwcfg: e820 0x100000 0x2f00000 type 1")
        .line("[fwcfg] fwcfg: e820 6 entries, 48767 KiB of RAM")
        .line("[fwcfg] fwcfg: PASS")
        .no_line_containing("fwcfg: FAIL")
        .line("vm fwcfg: exited code=0")
        .line("[mbfwcfg] mbkernel: fw_cfg cpus 2 ram 24576 KiB")
        .line("[mbfwcfg] mbkernel: PASS")
        .line("vm mbfwcfg: exited code=0");

    // Every NMI is delivered, one at a time.
    boot.line("[nmi] nmi: self-NMI 3 delivered")
        .line("[nmi] nmi: NMI sent inside the handler delivered after its IRET")
        .line("[nmi] nmi: PASS")
        .line("vm nmi: exited code=0");

    // An AP starts in the INIT state of SDM Vol. 3A Table 10-1.
    boot.line("[apstate] apstate: ESP = 0x0 ok")
        .line("[apstate] apstate: CR0 = 0x60000010 ok")
        .line("[apstate] apstate: EFLAGS = 0x2 ok")
        .line("[apstate] apstate: CS = 0x900 ok")
        .line("[apstate] apstate: DR6 = 0xffff0ff0 ok")
        .line_starting("[apstate] apstate: EDX (processor signature) = 0x")
        .line("[apstate] apstate: PASS")
        .line("vm apstate: exited code=0");

    // Guests in which no vCPU can ever run again are ended.
    boot.line_starting_containing(
        "vm init-self: stopped: ",
        "hung: no vCPU can run again (vcpu 0 waits for a start-up IPI)",
    )
    .line_starting_containing(
        "vm init-all: stopped: ",
        "hung: no vCPU can run again (vcpu 0 waits for a start-up IPI, vcpu 1 waits for a start-up IPI)",
    )
    .line_starting_containing(
        "vm hlt-cli-smp: stopped: ",
        "hung: no vCPU can run again (vcpu 0 HLT with interrupts disabled, vcpu 1 waits for a start-up IPI)",
    );

    boot.no_line_containing("FAIL")
        .line_starting("hv: summary: 11 guests")
        .no_line_containing("hv: fatal")
        .line_starting("hv: powering off")
        .powered_off();
    boot.finish();
}
