//! A well-behaved virtio-blk writer for the gold-image memory bench
//! (`bench-goldmem.toml`): it drives the virtio 1.x modern PCI function of its
//! first disk through port I/O (BAR0 in I/O space, as the hypervisor puts
//! it), writes `kib=<n>` KiB (default 256) of a pattern from sector 0 in
//! 64 KiB requests (VIRTIO_BLK_T_OUT, virtio 1.2 5.2.6), reads the first
//! request back (VIRTIO_BLK_T_IN) and compares it, then exits 0. Each write
//! lands in the disk's private copy-on-write overlay.
#![no_std]
#![no_main]

use guest_rt::cmdline;
use guest_rt::io::{inl, outb, outl, outw};
use guest_rt::println;
use guest_rt::virtio::*;

guest_rt::entry!(main);

// Guest-physical scratch area (a 32 MiB guest; the image is at 1 MiB).
const DESC: u64 = 0x80_0000;
const AVAIL: u64 = 0x80_1000;
const USED: u64 = 0x80_2000;
const HDR: u64 = 0x80_3000;
const STATUS_BYTE: u64 = 0x80_4000;
const DATA: u64 = 0x100_0000;
/// Bytes per request.
const CHUNK: u64 = 64 * 1024;
const QSIZE: u16 = 8;

// Common configuration (virtio 1.2 4.1.4.3) offsets in BAR0.

const T_IN: u32 = 0;
const T_OUT: u32 = 1;

fn desc(i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = DESC + 16 * u64::from(i);
    put(d, addr);
    put(d + 8, len);
    put(d + 12, flags);
    put(d + 14, next);
}

/// The byte at offset `i` of the pattern.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) >> 3) as u8 ^ 0x5a
}

struct Dev {
    bar: u16,
    notify: u16,
}

impl Dev {
    fn bring_up(&self) -> bool {
        let status = self.bar + DEVICE_STATUS;
        outb(status, 0);
        for a in [DESC, AVAIL, USED] {
            for i in (0..0x1000).step_by(8) {
                put::<u64>(a + i, 0);
            }
        }
        outb(status, ACKNOWLEDGE | DRIVER);
        // VIRTIO_F_VERSION_1 (bit 32) only.
        outl(self.bar + DEVICE_FEATURE_SELECT, 1);
        if inl(self.bar + DEVICE_FEATURE) & 1 == 0 {
            return false;
        }
        outl(self.bar + DRIVER_FEATURE_SELECT, 0);
        outl(self.bar + DRIVER_FEATURE, 0);
        outl(self.bar + DRIVER_FEATURE_SELECT, 1);
        outl(self.bar + DRIVER_FEATURE, 1);
        outb(status, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if guest_rt::io::inb(status) & FEATURES_OK == 0 {
            return false;
        }
        outw(self.bar + QUEUE_SELECT, 0);
        outw(self.bar + QUEUE_SIZE, QSIZE);
        for (off, v) in [
            (QUEUE_DESC, DESC),
            (QUEUE_DRIVER, AVAIL),
            (QUEUE_DEVICE, USED),
        ] {
            outl(self.bar + off, v as u32);
            outl(self.bar + off + 4, (v >> 32) as u32);
        }
        outw(self.bar + QUEUE_ENABLE, 1);
        outb(status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        true
    }

    /// One request of `len` bytes at `sector` from/to DATA; its status byte
    /// (0 = VIRTIO_BLK_S_OK), or None if the device never used it.
    fn request(&self, kind: u32, sector: u64, len: u32) -> Option<u8> {
        put::<u32>(HDR, kind);
        put::<u32>(HDR + 4, 0);
        put::<u64>(HDR + 8, sector);
        put::<u8>(STATUS_BYTE, 0xEE);
        let data_flags = if kind == T_IN {
            F_NEXT | F_WRITE
        } else {
            F_NEXT
        };
        desc(0, HDR, 16, F_NEXT, 1);
        desc(1, DATA, len, data_flags, 2);
        desc(2, STATUS_BYTE, 1, F_WRITE, 0);
        let idx: u16 = get(AVAIL + 2);
        put(AVAIL + 4 + 2 * u64::from(idx % QSIZE), 0u16);
        put(AVAIL + 2, idx.wrapping_add(1));
        outw(self.notify, 0);
        for _ in 0..10_000_000u32 {
            if get::<u16>(USED + 2) == idx.wrapping_add(1) {
                return Some(get(STATUS_BYTE));
            }
            core::hint::spin_loop();
        }
        None
    }
}

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let Some(kib) = cmdline::number(cmd, "kib", 256).filter(|k| *k > 0 && *k <= 8192) else {
        println!("blkwrite: FAIL bad kib= (1 to 8192)");
        return 1;
    };
    let Some(dev) = (0..32).find(|&dv| cfg_read(dv, 0) == 0x1042_1af4) else {
        println!("blkwrite: FAIL no virtio-blk function on bus 0");
        return 1;
    };
    let bar = cfg_read(dev, 0x10);
    // The notify capability (virtio 1.2 4.1.4.4, cfg_type 2).
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
        println!("blkwrite: FAIL no notify capability");
        return 1;
    };
    cfg_write(dev, 0x04, 0x0005);
    let base = (bar & 0xfffc) as u16;
    let d = Dev {
        bar: base,
        notify: base + notify_off,
    };
    if !d.bring_up() {
        println!("blkwrite: FAIL the device refused VIRTIO_F_VERSION_1");
        return 1;
    }
    let total = kib * 1024;
    let mut done = 0u64;
    let mut requests = 0u32;
    while done < total {
        let len = CHUNK.min(total - done);
        for i in 0..len {
            put::<u8>(DATA + i, pattern(done + i));
        }
        match d.request(T_OUT, done / 512, len as u32) {
            Some(0) => {}
            other => {
                println!("blkwrite: FAIL write at byte {}: status {:?}", done, other);
                return 1;
            }
        }
        done += len;
        requests += 1;
    }
    for i in 0..CHUNK.min(total) {
        put::<u8>(DATA + i, 0);
    }
    if d.request(T_IN, 0, CHUNK.min(total) as u32) != Some(0) {
        println!("blkwrite: FAIL read-back");
        return 1;
    }
    if (0..CHUNK.min(total)).any(|i| get::<u8>(DATA + i) != pattern(i)) {
        println!("blkwrite: FAIL the read-back differs from what was written");
        return 1;
    }
    println!(
        "blkwrite: wrote {} KiB in {} requests, read back the first {} KiB: same",
        kib,
        requests,
        CHUNK.min(total) / 1024
    );
    0
}
