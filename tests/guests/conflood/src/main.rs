//! Console flooding, and a worker to run beside it.
//!
//! `role=hypercall writes=<n>`: `n` CONSOLE_WRITE hypercalls of 4 KiB (64
//! lines of 64 bytes each), as fast as they return; each must return 4096.
//! `role=uart writes=<n>`: `n` bursts of 4 KiB written to the UART's THR
//! without looking at LSR (a guest that ignores the transmitter's state).
//! Both print `conflood: flooding`, then `conflood: done <n> writes`.
//!
//! `role=worker units=<n>`: `n` fixed units of computation (an LCG run
//! 100 000 times) with a progress line every 10 units, then
//! `conflood: worker done <n> units`. Beside flooders, it finishes its work
//! while they still flood only if no flood holds a CPU in a long exit.
//!
//! Exits 0, 1 when a write is refused, 3 on a bad command line.
#![no_std]
#![no_main]

use core::hint::black_box;
use guest_rt::hypercall as hc;
use guest_rt::io::outb;
use guest_rt::{cmdline, println};

guest_rt::entry!(main);

const WRITE: usize = 4096;
const LINE: usize = 64;
const STEPS_PER_UNIT: u32 = 100_000;

/// 4 KiB of console text: 64 numbered lines of 64 bytes.
fn fill(buf: &mut [u8; WRITE], round: u64) {
    for (i, line) in buf.chunks_mut(LINE).enumerate() {
        line.fill(b'.');
        let head = b"conflood: flood ";
        line[..head.len()].copy_from_slice(head);
        let mut n = round * 64 + i as u64;
        let mut pos = head.len() + 10;
        while pos > head.len() {
            pos -= 1;
            line[pos] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        line[LINE - 1] = b'\n';
    }
}

fn flood(uart: bool, writes: u64) -> i32 {
    println!("conflood: flooding");
    let mut buf = [0u8; WRITE];
    for round in 0..writes {
        fill(&mut buf, round);
        if uart {
            for &b in buf.iter() {
                outb(0x3F8, b);
            }
        } else {
            let r = hc::console_write(&buf);
            if r != WRITE as i64 {
                println!("conflood: FAIL console write returned {}", r);
                return 1;
            }
        }
    }
    println!("conflood: done {} writes", writes);
    0
}

fn unit(mut x: u64) -> u64 {
    for _ in 0..STEPS_PER_UNIT {
        x = black_box(x)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    x
}

fn work(units: u64) -> i32 {
    let mut x = 1;
    for i in 1..=units {
        x = unit(x);
        if i % 10 == 0 {
            println!("conflood: worker progress {}", i);
        }
    }
    black_box(x);
    println!("conflood: worker done {} units", units);
    0
}

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let (Some(writes), Some(units)) = (
        cmdline::number(cmd, "writes", 100),
        cmdline::number(cmd, "units", 100),
    ) else {
        println!("conflood: FAIL bad command line");
        return 3;
    };
    match cmdline::get(cmd, "role") {
        Some("hypercall") => flood(false, writes),
        Some("uart") => flood(true, writes),
        Some("worker") => work(units),
        _ => {
            println!("conflood: FAIL role= must be hypercall, uart or worker");
            3
        }
    }
}
