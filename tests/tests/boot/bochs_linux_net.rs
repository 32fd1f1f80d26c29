//! Guest networking under Bochs (tests/manifests/linux-net.toml): four Linux guests with
//! virtio-net NICs on the hypervisor's L2 switch. Two on "lan" fetch 2 MiB from each other
//! (the sha256 each end prints must match), one on "other" can't reach them, and one on "lan"
//! that sends with another guest's MAC has its frames dropped (the switch's `spoofed`
//! counter) while the victim's transfer still completes.

use integration_tests::Scenario;

/// Bytes each transfer guest serves (`netmib=2`).
const BYTES: u64 = 2 << 20;

/// The value after `prefix` on the first line that starts with it.
fn value_after(lines: &[&str], prefix: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim_end().to_string())
}

/// The number after `key ` in the line starting `prefix` (e.g. `spoofed 12`).
fn counter(lines: &[&str], prefix: &str, key: &str) -> Option<u64> {
    let line = lines.iter().find(|l| l.starts_with(prefix))?;
    let at = line.rfind(&format!("{key} "))?;
    line[at + key.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn bochs_linux_net_switch_transfer_isolation_and_anti_spoofing() {
    xtask::linux::prepare().unwrap_or_else(|e| {
        panic!(
            "the Linux guest's kernel and initramfs are missing and could not be prepared: {e:#}"
        )
    });
    let mut boot = Scenario::bochs("bochs_linux_net", "linux-net.toml")
        .cpus(2)
        .memory_mib(768)
        .timeout_secs(1800)
        .boot();
    let lines: Vec<String> = boot.result.lines().map(str::to_string).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();

    boot.line_starting("hv: network lan: 3 ports")
        .line_starting("hv: network other: 1 port");
    // Every NIC is up with its MAC (manifest or derived) and the 1500-byte MTU.
    for (name, mac, addr) in [
        ("neta", "02:fe:00:00:00:01", "10.0.0.1/24"),
        ("netb", "02:fe:00:00:00:02", "10.0.0.2/24"),
        ("netspoof", "02:fe:00:00:00:04", "10.0.0.4/24"),
    ] {
        boot.line(&format!(
            "[{name}] linux-guest: net eth0 {mac} {addr} link up mtu 1500"
        ));
    }
    boot.line_starting_containing(
        "[netiso] linux-guest: net eth0 ",
        " 10.0.0.3/24 link up mtu 1500",
    );

    // Both ways: what each served is what the other received, all of it.
    for (from, to) in [("neta", "netb"), ("netb", "neta")] {
        match value_after(&lines, &format!("[{from}] linux-guest: net sent sha256 ")) {
            Some(sha) => {
                boot.line(&format!(
                    "[{to}] linux-guest: net received sha256 {sha} {BYTES} bytes"
                ));
            }
            None => {
                boot.line_starting(&format!("[{from}] linux-guest: net sent sha256 "));
            }
        }
        boot.line(&format!("[{from}] linux-guest: net peer done"));
    }

    // Another network: not one answer.
    boot.line("[netiso] linux-guest: net ping 10.0.0.1: 3 packets transmitted, 0 packets received, 100% packet loss");
    // The spoofer: reachable as itself, silenced as neta.
    boot.line("[netspoof] linux-guest: net ping 10.0.0.2 with own mac: 2 packets transmitted, 2 packets received, 0% packet loss")
        .line("[netspoof] linux-guest: net mac now 02:fe:00:00:00:01")
        .line("[netspoof] linux-guest: net ping 10.0.0.2 with spoofed mac: 3 packets transmitted, 0 packets received, 100% packet loss");

    // The switch's view, one line per NIC at its VM's end.
    let nic = |n: &str| format!("hv: nic {n}.0 (");
    let spoofed = counter(&lines, &nic("netspoof"), "spoofed");
    assert!(
        spoofed.is_some_and(|s| s >= 3),
        "netspoof's port counted {spoofed:?} spoofed frames, want at least 3 (its 3 pings)"
    );
    for n in ["neta", "netb", "netiso"] {
        boot.line_starting_containing(&nic(n), ", spoofed 0");
    }
    // neta and netb each took in at least the other's 2 MiB.
    for n in ["neta", "netb"] {
        let rx = counter(&lines, &nic(n), "frames");
        let rx_bytes = lines
            .iter()
            .find(|l| l.starts_with(&nic(n)))
            .and_then(|l| l.split(": rx ").nth(1))
            .and_then(|r| r.split(" frames ").nth(1))
            .and_then(|r| r.split(' ').next())
            .and_then(|b| b.parse::<u64>().ok());
        assert!(rx.is_some(), "no hv: nic line for {n}");
        assert!(
            rx_bytes.is_some_and(|b| b > BYTES),
            "{n}'s port received {rx_bytes:?} bytes, want more than {BYTES}"
        );
    }
    // netiso sent (ARP requests) but nothing ever reached it: it is alone on "other".
    boot.line_starting_containing(&nic("netiso"), " on other: rx 0 frames 0 bytes, tx ");
    boot.no_line_containing("Kernel panic")
        .line("hv: summary: 4 guests: neta exited code=0 (powered off), netb exited code=0 (powered off), netiso exited code=0 (powered off), netspoof exited code=0 (powered off)")
        .powered_off();
    boot.finish();
}
