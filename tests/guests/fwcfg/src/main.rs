//! Reads the machine through QEMU's firmware configuration device (fw_cfg,
//! QEMU docs/specs/fw_cfg.rst) the way firmware and Linux's `qemu_fw_cfg`
//! driver do: the signature and feature bits through the selector/data
//! ports, the CPU count and RAM size, the file directory, `etc/e820` through
//! the DMA interface, and DMA failures. Prints what it read; exits 0 when
//! every check passed, 1 otherwise. The test compares the printed CPU count
//! and RAM size with the manifest's.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut};
use guest_rt::io::{inb, inl, outl, outw};
use guest_rt::println;

guest_rt::entry!(main);

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const DMA: u16 = 0x514;
const FILE_DIR: u16 = 0x19;

fn select(key: u16) {
    outw(SELECTOR, key);
}

fn read_bytes(buf: &mut [u8]) {
    for b in buf {
        *b = inb(DATA);
    }
}

fn read_u16(key: u16) -> u16 {
    select(key);
    let mut b = [0; 2];
    read_bytes(&mut b);
    u16::from_le_bytes(b)
}

/// The `FWCfgDmaAccess` structure: control, length, address, big-endian.
#[repr(C, align(16))]
struct Access {
    control: u32,
    length: u32,
    address: u64,
}

static mut ACCESS: Access = Access {
    control: 0,
    length: 0,
    address: 0,
};
static mut BUF: [u8; 4096] = [0; 4096];

/// Runs one DMA operation; returns the control word the device wrote back.
fn dma(control: u32, length: u32, address: u64) -> u32 {
    let a = addr_of_mut!(ACCESS);
    // SAFETY: one vCPU; the structure is ours and identity-mapped (its
    // virtual address is the guest-physical address the device gets).
    unsafe {
        (*a).control = control.to_be();
        (*a).length = length.to_be();
        (*a).address = address.to_be();
    }
    let gpa = a as u64;
    outl(DMA, ((gpa >> 32) as u32).to_be());
    outl(DMA + 4, (gpa as u32).to_be());
    // SAFETY: as above; the device wrote the result (volatile: not this
    // code's store).
    u32::from_be(unsafe { core::ptr::read_volatile(addr_of!((*a).control)) })
}

fn main(_cmdline: &'static str, ram_size: u64) -> i32 {
    let mut failures = 0;
    let mut check = |ok: bool, what: &str| {
        if !ok {
            println!("fwcfg: FAIL {}", what);
            failures += 1;
        }
    };
    select(0);
    let mut sig = [0u8; 4];
    read_bytes(&mut sig);
    check(&sig == b"QEMU", "signature");
    select(1);
    let mut id = [0u8; 4];
    read_bytes(&mut id);
    let id = u32::from_le_bytes(id);
    println!(
        "fwcfg: signature {} features {:#x}",
        core::str::from_utf8(&sig).unwrap_or("?"),
        id
    );
    check(id & 3 == 3, "traditional and DMA interfaces");
    let dma_sig = (u64::from(inl(DMA).to_be()) << 32) | u64::from(inl(DMA + 4).to_be());
    check(
        dma_sig == 0x5145_4D55_2043_4647,
        "DMA signature \"QEMU CFG\"",
    );

    let cpus = read_u16(0x05);
    let max_cpus = read_u16(0x0F);
    select(0x03);
    let mut ram = [0u8; 8];
    read_bytes(&mut ram);
    let ram = u64::from_le_bytes(ram);
    println!(
        "fwcfg: cpus {} max {} ram {} MiB",
        cpus,
        max_cpus,
        ram >> 20
    );
    check(cpus == max_cpus, "max cpus");
    check(ram == ram_size, "RAM size is what the loader said");

    // The file directory, through the data port.
    select(FILE_DIR);
    let mut count = [0u8; 4];
    read_bytes(&mut count);
    let count = u32::from_be_bytes(count);
    let mut e820 = None;
    for _ in 0..count.min(64) {
        let mut entry = [0u8; 64];
        read_bytes(&mut entry);
        let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let key = u16::from_be_bytes([entry[4], entry[5]]);
        let name = &entry[8..];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        let name = core::str::from_utf8(name).unwrap_or("?");
        println!("fwcfg: file {} key {:#x} size {}", name, key, size);
        if name == "etc/e820" {
            e820 = Some((key, size));
        }
    }
    let Some((key, size)) = e820 else {
        println!("fwcfg: FAIL no etc/e820");
        return 1;
    };
    // etc/e820 by DMA: select + read into BUF.
    let buf = addr_of_mut!(BUF) as u64;
    let len = size.min(4096);
    let status = dma(u32::from(key) << 16 | 1 << 3 | 1 << 1, len, buf);
    check(status == 0, "DMA read of etc/e820");
    let mut ram_total = 0u64;
    let mut entries = 0;
    for i in 0..(len / 20) as usize {
        // SAFETY: BUF is ours; the device finished writing it.
        let e = unsafe { core::ptr::read_volatile(addr_of!(BUF)) };
        let e = &e[i * 20..i * 20 + 20];
        let base = u64::from_le_bytes(e[0..8].try_into().unwrap_or([0; 8]));
        let length = u64::from_le_bytes(e[8..16].try_into().unwrap_or([0; 8]));
        let kind = u32::from_le_bytes(e[16..20].try_into().unwrap_or([0; 4]));
        println!("fwcfg: e820 {:#x} {:#x} type {}", base, length, kind);
        if kind == 1 {
            ram_total += length;
        }
        entries += 1;
    }
    println!(
        "fwcfg: e820 {} entries, {} KiB of RAM",
        entries,
        ram_total >> 10
    );
    check(
        entries > 0 && ram_total > 0 && ram_total <= ram,
        "e820 RAM within RAM_SIZE",
    );
    // Read on past the end: zeros, and the transfer succeeds.
    // SAFETY: BUF is ours and nothing else refers to it now.
    unsafe { core::ptr::write_volatile(addr_of_mut!(BUF).cast::<[u8; 8]>(), [0xEE; 8]) };
    check(dma(1 << 1, 8, buf) == 0, "DMA read past the end");
    // SAFETY: as above.
    let past = unsafe { core::ptr::read_volatile(addr_of!(BUF)) };
    check(past[..8] == [0; 8], "zeros past the end");
    // Errors: a write (the items are read-only), a buffer outside RAM.
    check(dma(1 << 3 | 1 << 4, 4, buf) & 1 == 1, "DMA write refused");
    check(
        dma(1 << 1, 16, 0xFFFF_0000_0000) & 1 == 1,
        "DMA outside RAM refused",
    );
    if failures == 0 {
        println!("fwcfg: PASS");
        0
    } else {
        1
    }
}
