//! Hostile guest: looks for other guests' data in its RAM, then touches
//! guest-physical memory outside its RAM. The hypervisor should stop it at
//! that access, so nothing after `escape: reading`/`writing` is printed.
//!
//! Command line: `target=<hex>` (default 0x40000000), `write=1` to write.
//! Exit codes: 2 = the access returned (leak), 3 = bad command line.
#![no_std]
#![no_main]

use core::arch::asm;
use core::ptr;
use guest_rt::{cmdline, image, marker, println};

guest_rt::entry!(main);

const DEFAULT_TARGET: u64 = 0x4000_0000;
const LOW_START: u64 = 0x10000;
const MAX_REPORTS: u32 = 4;

fn main(cmd: &'static str, ram_size: u64) -> i32 {
    let target = match cmdline::get(cmd, "target") {
        None => DEFAULT_TARGET,
        Some(s) => match cmdline::parse_hex(s) {
            Some(t) => t,
            None => {
                println!("escape: bad target {}", s);
                return 3;
            }
        },
    };
    let write = cmdline::flag(cmd, "write");

    // Free RAM: above the loader's area and above the image.
    let ram_end = image::ram_end(ram_size);
    let ranges = [
        (LOW_START, image::image_start().min(ram_end)),
        (image::image_end(), ram_end),
    ];
    let mut reports = 0;
    for (start, end) in ranges {
        // SAFETY: the ranges are inside this guest's RAM.
        unsafe {
            marker::scan(start, end, |addr| {
                println!("escape: LEAKED foreign data at {:#x}", addr);
                reports += 1;
                reports < MAX_REPORTS
            })
        };
    }
    // Leave our own marker behind for whoever gets this memory next.
    for (start, end) in ranges {
        // SAFETY: free RAM that nothing in this guest uses.
        unsafe { marker::plant(start, end) };
    }

    if target < ram_size {
        println!("escape: FAIL target {:#x} is inside own RAM", target);
        return 3;
    }
    map(target);
    let p = target as *mut u64;
    if write {
        println!("escape: writing {:#x}", target);
        // SAFETY: deliberately out of bounds; the hypervisor must stop it.
        unsafe { ptr::write_volatile(p, 0x4553_4341_5045_4421) };
        println!("escape: LEAKED write completed");
    } else {
        println!("escape: reading {:#x}", target);
        // SAFETY: deliberately out of bounds; the hypervisor must stop it.
        let value = unsafe { ptr::read_volatile(p) };
        println!("escape: LEAKED read returned {:#x}", value);
    }
    2
}

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
const TABLE_FLAGS: u64 = PRESENT | WRITABLE;

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// Spare tables for mapping a target beyond the loader's 4 GiB map.
static mut POOL: [Table; 2] = [const { Table([0; 512]) }; 2];

/// Identity-maps the 2 MiB page of `target` if the loader's page tables do
/// not (targets above 4 GiB). Non-canonical targets are left to fault.
fn map(target: u64) {
    if target >= 1 << 47 {
        return;
    }
    let cr3: u64;
    // SAFETY: reads CR3 only.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let pool = &raw mut POOL;
    // SAFETY: the paging structures are identity mapped guest RAM below
    // 64 KiB (or POOL); only non-present entries are filled, so no live
    // mapping changes. POOL is used only here, once.
    unsafe {
        let pml4e = ((cr3 & ADDR_MASK) as *mut u64).add(((target >> 39) & 511) as usize);
        if *pml4e & PRESENT == 0 {
            *pml4e = (&raw mut (*pool)[0]) as u64 | TABLE_FLAGS;
        }
        let pdpte = ((*pml4e & ADDR_MASK) as *mut u64).add(((target >> 30) & 511) as usize);
        if *pdpte & PRESENT == 0 {
            *pdpte = (&raw mut (*pool)[1]) as u64 | TABLE_FLAGS;
        } else if *pdpte & HUGE != 0 {
            return;
        }
        let pde = ((*pdpte & ADDR_MASK) as *mut u64).add(((target >> 21) & 511) as usize);
        if *pde & PRESENT == 0 {
            *pde = (target & !0x1F_FFFF) | TABLE_FLAGS | HUGE;
        }
        asm!("invlpg [{}]", in(reg) target, options(nostack, preserves_flags));
    }
}
