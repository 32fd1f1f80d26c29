//! Linux guests on virtio-blk disks (tests/manifests/linux-disk.toml): two guests with their
//! root on the same gold image (`rootfs.ext4`), held once by the hypervisor, each with its own
//! copy-on-write overlay; a read-only second disk with a serial; a restart that drops one
//! guest's overlay and keeps the other's (`keep_overlay = true`); e2fsck clean at the end of
//! every boot. Without the kernel, initramfs and root image this test fails: it never passes
//! by skipping the Linux guests.

use integration_tests::Scenario;
use xtask::linux;

/// Sectors of rootfs.ext4 (64 MiB).
const SECTORS: u64 = xtask::rootfs::SIZE_MIB * 1024 * 1024 / 512;

#[test]
fn bochs_linux_guests_share_a_gold_image_with_private_overlays() {
    linux::prepare().unwrap_or_else(|e| {
        panic!(
            "the Linux guest's kernel, initramfs and root image are missing and could not be \
             prepared: {e:#}; run `cargo xtask build` on a Debian machine that reaches a \
             package mirror"
        )
    });
    let mut boot = Scenario::bochs("bochs_linux_disk", "linux-disk.toml")
        .cpus(2)
        .memory_mib(1024)
        .timeout_secs(1800)
        .boot();

    // The image is held once for all four disks of the two guests.
    boot.line(&format!(
        "hv: disk image rootfs.ext4: {} KiB held once (read-only base), shared by 4 disks of 2 guests",
        SECTORS / 2
    ));
    for (name, serial) in [("diska", "gold-root-a"), ("diskb", "gold-root-b")] {
        let say = |what: &str| format!("[{name}] linux-guest: {what}");
        boot.line(&format!(
            "vm {name}: disk vda: \\hv\\rootfs.ext4 (writable, private copy-on-write overlay), serial \"{serial}\", 00:03.0 irq 11"
        ))
        .line(&format!(
            "vm {name}: disk vdb: \\hv\\rootfs.ext4 (read-only), serial \"gold-ro\", 00:04.0 irq 10"
        ))
        // What the guest sees: its root on vda, the serials through GET_ID, vdb read-only
        // (VIRTIO_BLK_F_RO) and a write to it refused, both devices on the GSIs the _PRT
        // and the Interrupt Line registers name, level-triggered (fasteoi) as PCI INTx is.
        .line_times(&say("root on /dev/vda (ext4)"), 2)
        .line_times(
            &say(&format!("disk vda serial '{serial}' ro 0 sectors {SECTORS}")),
            2,
        )
        .line_times(
            &say(&format!("disk vdb serial 'gold-ro' ro 1 sectors {SECTORS}")),
            2,
        )
        .line_times(&say("disk vdb write: refused"), 2)
        .line_starting_containing(&say("virtio irqs "), "10: 10-fasteoi virtio1; 11: 11-fasteoi virtio0;")
        .line_times(&say("root: wrote /root/written-by-boot (boot 1) and /root/data, synced"), if name == "diska" { 2 } else { 1 })
        .line(&say(&format!("root data md5 {}", xtask::rootfs::DATA_MD5)))
        .no_line_containing(&say("poweroff -f failed"));
        // e2fsck -fn of the root after it is remounted read-only: clean, both boots.
        let clean = say("e2fsck -fn /dev/vda: rc=0 (ferrovisor-root: ");
        let checks = boot
            .result
            .lines()
            .filter(|l| l.starts_with(&clean))
            .count();
        assert_eq!(checks, 2, "[{name}] two clean e2fsck runs");
        boot.no_line_containing(&say("e2fsck -fn /dev/vda: rc=1"))
            .no_line_containing(&say("e2fsck -fn /dev/vda: rc=4"));
        // The read-only disk reads the gold image's first MiB, the same in both guests.
        boot.line_starting(&say("disk vdb first MiB md5 "));
    }
    // Neither guest sees the other's file: diska's first boot and diskb's first boot each
    // find their root as the gold image has it.
    // diska restarts without its overlay: the gold image again, no file from boot 1.
    boot.line_times(
        "[diska] linux-guest: rootcheck: no file from an earlier boot",
        2,
    )
    .line_starting_containing(
        "vm diska: disk vda: overlay of ",
        " KiB dropped: \\hv\\rootfs.ext4 as it is again",
    )
    // diskb keeps its overlay and finds the file its first boot wrote (and only that).
    .line_times(
        "[diskb] linux-guest: rootcheck: no file from an earlier boot",
        1,
    )
    .line_starting_containing(
        "[diskb] linux-guest: rootcheck: a file from an earlier boot is present: ",
        "boot 1 of this disk",
    )
    .line("[diskb] linux-guest: root: wrote /root/written-by-boot (boot 2) and /root/data, synced")
    .line_starting_containing(
        "vm diskb: disk vda: overlay of ",
        " KiB kept (keep_overlay)",
    );

    // Each overlay is reported when its guest ends; the read-only disks have none.
    let serial = boot.result.serial.clone();
    for name in ["diska", "diskb"] {
        let prefix = format!("vm {name}: disk vda: overlay ");
        let sizes: Vec<u64> = serial
            .lines()
            .filter_map(|l| {
                l.strip_prefix(&prefix)?
                    .strip_suffix(" KiB over \\hv\\rootfs.ext4 (at the end)")?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(
            sizes.len(),
            2,
            "[{name}] two end-of-run overlay lines: {sizes:?}"
        );
        assert!(
            sizes.iter().all(|&k| k > 0 && k <= 8 * 1024),
            "[{name}] the overlay holds the guest's writes, at most 8 MiB: {sizes:?}"
        );
        boot.line_times(
            &format!(
                "vm {name}: disk vdb: overlay 0 KiB over \\hv\\rootfs.ext4 (at the end), read-only"
            ),
            2,
        )
        .line_starting(&format!("vm {name}: memory: disk overlays "))
        // A read-only disk has no overlay to drop or keep on the restart.
        .no_line_containing(&format!("vm {name}: disk vdb: overlay of "));
    }
    boot.no_line_containing("Kernel panic")
        .no_line_containing("DEVICE_NEEDS_RESET")
        .no_line_containing("I/O error")
        .line_starting_containing(
            "hv: summary: 2 guests",
            "diska exited code=0 (powered off) after 1 restart",
        )
        .line_starting_containing(
            "hv: summary: 2 guests",
            "diskb exited code=0 (powered off) after 1 restart",
        )
        .line_starting("hv: powering off")
        .powered_off();
    boot.finish();
}
