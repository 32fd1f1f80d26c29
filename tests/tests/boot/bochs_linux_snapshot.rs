//! A snapshot of a Linux guest rooted on a virtio-blk copy-on-write overlay of rootfs.ext4
//! (tests/manifests/linux-snapshot.toml), through the management console: the guest writes
//! a file and waits on its console; it is snapshotted there, then changes the file and
//! writes another (synced to the disk); it is rolled back, and asked (on its console) what
//! its root holds: the file as of the snapshot, the later file gone, read from the disk with
//! the page cache dropped. The same again (the second rollback of a snapshot rewrites only
//! the RAM written since); e2fsck finds the file system clean at power-off. Without the
//! kernel, initramfs and root image this test fails.

use integration_tests::Scenario;
use xtask::linux;

#[test]
fn bochs_linux_snapshot_rolls_back_ram_and_disk_together() {
    linux::prepare().unwrap_or_else(|e| {
        panic!(
            "the Linux guest's kernel, initramfs and root image are missing and could not be \
             prepared: {e:#}; run `cargo xtask build` on a Debian machine that reaches a \
             package mirror"
        )
    });
    let say = |what: &str| format!("[lsnap] linux-guest: {what}");
    let mut boot = Scenario::bochs("bochs_linux_snapshot", "linux-snapshot.toml")
        .cpus(2)
        .memory_mib(768)
        .timeout_secs(900)
        .send_after(
            &say("snaptest: wrote state one, synced; waiting for a console line"),
            b"\x01:snapshot lsnap s1\r",
        )
        .send_after("hv: snapshot s1 of vm lsnap: ", b"change\r")
        .send_after(&say("snaptest: changed: "), b"\x01:rollback lsnap s1\r")
        .send_after("hv: vm lsnap: rolled back to snapshot s1 in ", b"check\r")
        // Again: the second rollback of the same snapshot rewrites only the RAM written
        // since the first, and puts the overlay back again.
        .send_after(&say("snaptest: snapfile "), b"change\r")
        .send_after(&say("snaptest: changed: "), b"\x01:rollback lsnap s1\r")
        .send_after("hv: vm lsnap: rolled back to snapshot s1 in ", b"check\r")
        .send_after(&say("snaptest: snapfile "), b"off\r")
        .boot();
    let serial = boot.result.serial.clone();
    let count = |needle: &str| serial.lines().filter(|l| l.contains(needle)).count();
    boot.line(&say("root on /dev/vda (ext4)"))
        .line_starting("hv: snapshot s1 of vm lsnap: ");
    // Each change reached the disk before its rollback; after each rollback the guest is
    // back in its first wait, with the root as of the snapshot.
    let changed = count(&say(
        "snaptest: changed: state two, /root/later 20000 lines, synced",
    ));
    let rollbacks = count("hv: vm lsnap: rolled back to snapshot s1 in ");
    let back = count(&say("snaptest: snapfile 'state one', /root/later absent"));
    boot.expect(
        (changed, rollbacks, back) == (2, 2, 2),
        &format!("{changed} changes, {rollbacks} rollbacks, {back} checks finding the snapshot's root; want 2 of each"),
    )
    .no_line_containing(&say("snaptest: snapfile 'state two'"))
    .no_line_containing(&say("/root/later present"))
        .line_starting(&say("e2fsck -fn /dev/vda: rc=0 (ferrovisor-root: "))
        .no_line_containing("can't snapshot")
        .no_line_containing("snapshot refused")
        .no_line_containing("Kernel panic")
        .no_line_containing("DEVICE_NEEDS_RESET")
        .no_line_containing("I/O error")
        .no_line_containing("EXT4-fs error")
        .line_starting_containing(
            "vm lsnap: disk vda: overlay ",
            " KiB over \\hv\\rootfs.ext4 (at the end)",
        )
        .line_starting_containing("hv: summary: 1 guest", "lsnap exited code=0 (powered off)")
        .powered_off();
    boot.finish();
}
