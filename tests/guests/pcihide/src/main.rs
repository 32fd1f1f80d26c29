//! The host's NIC is the hypervisor's: a guest's PCI bus (configuration
//! mechanism #1, PCI 3.0 3.2.2.3.2) shows only its own emulated functions,
//! never a host function, and no network controller (class 02) at all. Run
//! with an e1000 on the host's bus. Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use guest_rt::io::{inl, outl};
use guest_rt::println;

guest_rt::entry!(main);

fn read(bus: u32, dev: u32, func: u32, off: u32) -> u32 {
    outl(
        0xcf8,
        0x8000_0000 | (bus << 16) | (dev << 11) | (func << 8) | off,
    );
    inl(0xcfc)
}

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    let mut failures = 0;
    let mut found = 0;
    let mut saw_host_bridge = false;
    // All of bus 0; device 0 of every other bus (a bridge would put one there).
    for bus in 0..256u32 {
        for dev in 0..if bus == 0 { 32 } else { 1 } {
            for func in 0..8u32 {
                let id = read(bus, dev, func, 0);
                if id & 0xffff == 0xffff {
                    if func == 0 {
                        break;
                    }
                    continue;
                }
                found += 1;
                let class = read(bus, dev, func, 8) >> 24;
                println!(
                    "pcihide: {:02x}:{:02x}.{} {:04x}:{:04x} class {:02x}",
                    bus,
                    dev,
                    func,
                    id & 0xffff,
                    id >> 16,
                    class
                );
                if id == 0x1237_8086 && (bus, dev, func) == (0, 0, 0) {
                    saw_host_bridge = true;
                }
                if class == 0x02 || id == 0x100e_8086 {
                    println!("pcihide: FAIL a network controller is visible");
                    failures += 1;
                }
                let multi = (read(bus, dev, 0, 0xc) >> 16) & 0x80 != 0;
                if func == 0 && !multi {
                    break;
                }
            }
        }
    }
    if !saw_host_bridge {
        println!("pcihide: FAIL no 440FX host bridge at 00:00.0");
        failures += 1;
    }
    println!("pcihide: {} functions", found);
    if failures == 0 {
        println!("pcihide: PASS");
        0
    } else {
        1
    }
}
