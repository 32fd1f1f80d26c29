//! A hostile virtio-blk driver: it drives its disk (the virtio 1.x modern PCI
//! function at 00:03.0, BAR0 in I/O space) directly through port I/O and hands
//! the device malformed virtqueues (virtio 1.2 2.7): a descriptor loop, an
//! indirect chain longer than the queue, buffers outside its RAM, lengths
//! that overflow, a device-writable buffer before a readable one, a queue size
//! that is not a power of two, a ring outside RAM and a notification before
//! DRIVER_OK. For each it prints what it observed: the device status
//! (DEVICE_NEEDS_RESET, 2.1.2), whether the request was used and its status
//! byte (VIRTIO_BLK_S_IOERR). Between cases it resets the device (status 0)
//! and at the end does a valid read to show the device recovered. Exits 0
//! when it got that far (the hypervisor still running it is the point).
#![no_std]
#![no_main]

use guest_rt::io::{inb, inl, outb, outl, outw};
use guest_rt::println;
use guest_rt::virtio::*;

guest_rt::entry!(main);

// Guest-physical scratch area (16 MiB guest; the image is at 1 MiB).
const DESC: u64 = 0x80_0000;
const AVAIL: u64 = 0x80_1000;
const USED: u64 = 0x80_2000;
const HDR: u64 = 0x80_3000;
const DATA: u64 = 0x80_4000;
const STATUS_BYTE: u64 = 0x80_5000;
const INDIRECT: u64 = 0x80_6000;

// Common configuration (virtio 1.2 4.1.4.3) offsets in BAR0, as the
// capabilities of this device say (checked below).

const NEEDS_RESET: u8 = 0x40;

const F_INDIRECT: u16 = 4;

fn zero(gpa: u64, len: u64) {
    for i in (0..len).step_by(8) {
        put::<u64>(gpa + i, 0);
    }
}

fn desc(table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = table + 16 * u64::from(i);
    put(d, addr);
    put(d + 8, len);
    put(d + 12, flags);
    put(d + 14, next);
}

struct Dev {
    bar: u16,
    notify: u16,
}

impl Dev {
    fn status(&self) -> u8 {
        inb(self.bar + DEVICE_STATUS)
    }
    fn set_status(&self, s: u8) {
        outb(self.bar + DEVICE_STATUS, s);
    }
    /// Reset, features (VERSION_1 and INDIRECT_DESC), FEATURES_OK; the
    /// queue of `size` at the scratch rings; DRIVER_OK when `go`.
    fn bring_up(&self, size: u16, go: bool) {
        self.set_status(0);
        for a in [DESC, AVAIL, USED] {
            zero(a, 0x1000);
        }
        self.set_status(ACKNOWLEDGE | DRIVER);
        outl(self.bar + DEVICE_FEATURE_SELECT, 0);
        let f0 = inl(self.bar + DEVICE_FEATURE);
        outl(self.bar + DRIVER_FEATURE_SELECT, 0);
        outl(self.bar + DRIVER_FEATURE, f0 & (1 << 28));
        outl(self.bar + DRIVER_FEATURE_SELECT, 1);
        outl(self.bar + DRIVER_FEATURE, 1);
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        outw(self.bar + QUEUE_SELECT, 0);
        outw(self.bar + QUEUE_SIZE, size);
        self.rings(DESC, AVAIL, USED);
        outw(self.bar + QUEUE_ENABLE, 1);
        if go {
            self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        }
    }
    fn rings(&self, d: u64, a: u64, u: u64) {
        for (off, v) in [(QUEUE_DESC, d), (QUEUE_DRIVER, a), (QUEUE_DEVICE, u)] {
            outl(self.bar + off, v as u32);
            outl(self.bar + off + 4, (v >> 32) as u32);
        }
    }
    /// Offers head `head` in a queue of `size` and notifies queue 0.
    fn offer(&self, size: u16, head: u16) {
        let idx: u16 = get(AVAIL + 2);
        put(AVAIL + 4 + 2 * u64::from(idx % size), head);
        put(AVAIL + 2, idx.wrapping_add(1));
        outw(self.notify, 0);
    }
    fn used_idx(&self) -> u16 {
        get(USED + 2)
    }
}

/// A read request of sector 0: header, 512-byte buffer, status byte.
fn read_request(table: u64, first: u16) {
    put::<u32>(HDR, 0); // VIRTIO_BLK_T_IN
    put::<u32>(HDR + 4, 0);
    put::<u64>(HDR + 8, 0);
    put::<u8>(STATUS_BYTE, 0xEE);
    desc(table, first, HDR, 16, F_NEXT, first + 1);
    desc(table, first + 1, DATA, 512, F_NEXT | F_WRITE, first + 2);
    desc(table, first + 2, STATUS_BYTE, 1, F_WRITE, 0);
}

/// What the device did with the case: its status and the request's fate.
fn observe(d: &Dev, case: &str) -> &'static str {
    let st = d.status();
    let used = d.used_idx();
    let req: u8 = get(STATUS_BYTE);
    let what = if st & NEEDS_RESET != 0 {
        "DEVICE_NEEDS_RESET"
    } else if used != 0 && req == 1 {
        "IOERR"
    } else if used != 0 && req == 0 {
        "served"
    } else {
        "ignored"
    };
    println!(
        "vqhostile: {}: {} (status {:#04x}, used idx {}, request status {:#04x})",
        case, what, st, used, req
    );
    what
}

fn main(_cmdline: &'static str, ram_size: u64) -> i32 {
    // Find the virtio-blk function (1af4:1042) on bus 0.
    let Some(dev) = (0..32).find(|&dv| cfg_read(dv, 0) == 0x1042_1af4) else {
        println!("vqhostile: FAIL no virtio-blk function on bus 0");
        return 1;
    };
    let bar = cfg_read(dev, 0x10);
    let line = cfg_read(dev, 0x3c) & 0xff;
    println!(
        "vqhostile: virtio-blk at 00:{:02x}.0, BAR0 {:#x}, interrupt line {}",
        dev, bar, line
    );
    // Walk the capability list for the notify capability (cfg_type 2).
    let mut notify_off = None;
    let mut cap = cfg_read(dev, 0x34) & 0xff;
    while cap != 0 {
        let head = cfg_read(dev, cap);
        if head & 0xff == 0x09 && (head >> 24) & 0xff == 2 {
            notify_off = Some(cfg_read(dev, cap + 8) as u16);
        }
        cap = (head >> 8) & 0xff;
    }
    let Some(notify_off) = notify_off else {
        println!("vqhostile: FAIL no notify capability");
        return 1;
    };
    // I/O decoding off: the BAR's ports read all-ones.
    let base = (bar & 0xfffc) as u16;
    println!(
        "vqhostile: before I/O enable: status port reads {:#x}",
        inb(base + DEVICE_STATUS)
    );
    cfg_write(dev, 0x04, 0x0005);
    let d = Dev {
        bar: base,
        notify: base + notify_off,
    };

    // 0. A valid read, to see the device works at all.
    d.bring_up(8, true);
    read_request(DESC, 0);
    d.offer(8, 0);
    let first: [u8; 10] = get(DATA);
    observe(&d, "valid read");
    println!(
        "vqhostile: sector 0 starts {:?}",
        core::str::from_utf8(&first).unwrap_or("?")
    );

    // 1. A notification before DRIVER_OK (3.1.1: the device must not
    //    consume buffers before it): nothing is used until DRIVER_OK.
    d.bring_up(8, false);
    read_request(DESC, 0);
    d.offer(8, 0);
    observe(&d, "notify before DRIVER_OK");
    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    observe(&d, "then DRIVER_OK");

    // 2. A queue size that is not a power of two (2.7).
    d.bring_up(3, true);
    observe(&d, "queue size 3");

    // 3. A loop: 0 -> 1 -> 0.
    d.bring_up(8, true);
    read_request(DESC, 0);
    desc(DESC, 1, DATA, 512, F_NEXT | F_WRITE, 0);
    d.offer(8, 0);
    observe(&d, "descriptor loop");

    // 4. An indirect chain of 8 descriptors in a queue of 4 (2.7.5.3.1).
    d.bring_up(4, true);
    put::<u8>(STATUS_BYTE, 0xEE);
    for i in 0..8u16 {
        let flags = if i == 7 { F_WRITE } else { F_NEXT | F_WRITE };
        desc(INDIRECT, i, DATA + 64 * u64::from(i), 64, flags, i + 1);
    }
    desc(INDIRECT, 0, HDR, 16, F_NEXT, 1);
    desc(DESC, 0, INDIRECT, 8 * 16, F_INDIRECT, 0);
    d.offer(4, 0);
    observe(&d, "chain longer than the queue");

    // 5. A data buffer outside RAM (1 GiB in a 16 MiB guest).
    d.bring_up(8, true);
    read_request(DESC, 0);
    desc(DESC, 1, 0x4000_0000, 512, F_NEXT | F_WRITE, 2);
    d.offer(8, 0);
    observe(&d, "buffer outside RAM");

    // 6. Lengths that overflow: address + length wraps past 2^64.
    d.bring_up(8, true);
    read_request(DESC, 0);
    desc(DESC, 1, u64::MAX - 0x100, 0x1000, F_NEXT | F_WRITE, 2);
    d.offer(8, 0);
    observe(&d, "address+length overflow");

    // 7. Chain total length of 2^32 or more (2.7.5.2).
    d.bring_up(8, true);
    read_request(DESC, 0);
    desc(DESC, 1, DATA, 0xFFFF_FF00, F_NEXT | F_WRITE, 2);
    desc(DESC, 2, DATA, 0x200, F_NEXT | F_WRITE, 3);
    desc(DESC, 3, STATUS_BYTE, 1, F_WRITE, 0);
    d.offer(8, 0);
    observe(&d, "total length overflow");

    // 8. A device-writable buffer before a readable one (2.7.4.2).
    d.bring_up(8, true);
    put::<u8>(STATUS_BYTE, 0xEE);
    desc(DESC, 0, DATA, 512, F_NEXT | F_WRITE, 1);
    desc(DESC, 1, HDR, 16, F_NEXT, 2);
    desc(DESC, 2, STATUS_BYTE, 1, F_WRITE, 0);
    d.offer(8, 0);
    observe(&d, "writable before readable");

    // 9. Rings outside RAM.
    d.set_status(0);
    d.set_status(ACKNOWLEDGE | DRIVER);
    outl(d.bar + DRIVER_FEATURE_SELECT, 1);
    outl(d.bar + DRIVER_FEATURE, 1);
    d.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    outw(d.bar + QUEUE_SIZE, 8);
    d.rings(ram_size + 0x1000_0000, AVAIL, USED);
    outw(d.bar + QUEUE_ENABLE, 1);
    zero(USED, 0x1000);
    observe(&d, "ring outside RAM");

    // 10. After a reset the device works again.
    d.bring_up(8, true);
    put::<[u8; 10]>(DATA, [0; 10]);
    read_request(DESC, 0);
    d.offer(8, 0);
    let ok = observe(&d, "valid read after reset") == "served";
    let again: [u8; 10] = get(DATA);
    if !ok || again != first {
        println!("vqhostile: FAIL the device did not recover");
        return 1;
    }
    println!("vqhostile: done, the device recovered");
    0
}
