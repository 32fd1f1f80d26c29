//! Hostile guest: about 2000 hypercalls with garbage numbers and arguments
//! (pseudo-random, fixed seed). Every return must be a documented error code
//! or the valid result of the call. Never calls SHUTDOWN, and never asks
//! CONSOLE_WRITE to print anything but an empty buffer or its own message.
//! Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use guest_rt::hypercall::{
    self as hc, ABI_VERSION, CONSOLE_WRITE, CONSOLE_WRITE_MAX, EFAULT, EINVAL, ENOSYS, EPERM,
    SHUTDOWN, YIELD,
};
use guest_rt::{image, println};

guest_rt::entry!(main);

/// The benchmark-only floor call of a `bench` build of the hypervisor:
/// it returns with RAX unchanged, so it is left out of the garbage.
const BENCH_FLOOR: u64 = 0xFFFF_0000;
const ROUNDS: u32 = 250;
const MESSAGE: &[u8] = b"hcgarbage: console write from the garbage run\n";

/// xorshift64*: deterministic garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What a call may return.
#[derive(Clone, Copy)]
enum Want {
    /// Exactly this value.
    Exactly(i64),
    /// One of two values.
    Either(i64, i64),
}

impl Want {
    fn accepts(self, got: i64) -> bool {
        match self {
            Want::Exactly(a) => got == a,
            Want::Either(a, b) => got == a || got == b,
        }
    }
}

#[derive(Default)]
struct Stats {
    calls: u32,
    ok: u32,
    enosys: u32,
    efault: u32,
    einval: u32,
    eperm: u32,
    failures: u32,
}

impl Stats {
    fn call(&mut self, nr: u64, a1: u64, a2: u64, a3: u64, want: Want) {
        let got = hc::hypercall(nr, a1, a2, a3) as i64;
        self.calls += 1;
        match got {
            ENOSYS => self.enosys += 1,
            EFAULT => self.efault += 1,
            EINVAL => self.einval += 1,
            EPERM => self.eperm += 1,
            _ => self.ok += 1,
        }
        if !want.accepts(got) {
            if self.failures < 8 {
                println!(
                    "hcgarbage: FAIL call {:#x}({:#x}, {:#x}, {:#x}) returned {}",
                    nr, a1, a2, a3, got
                );
            }
            self.failures += 1;
        }
    }
}

/// A number no call has: random, but never 0..=3 or the bench floor.
fn unknown_nr(rng: &mut Rng) -> u64 {
    loop {
        let nr = match rng.next() % 4 {
            0 => rng.next(),
            1 => 4 + rng.next() % 252,
            2 => rng.next() | (1 << 63),
            // A real call number with high bits set: a hypervisor that
            // truncated RAX would run ABI_VERSION or YIELD.
            _ => (rng.next() << 32) | ((rng.next() % 2) * 2),
        };
        if nr > SHUTDOWN && nr != BENCH_FLOOR {
            return nr;
        }
    }
}

/// Where RAM that doesn't fit below it is split off to continue from 4 GiB
/// (the PCI hole); 3 GiB is the lowest such boundary in use.
const HOLE_START: u64 = 0xC000_0000;
const FOUR_GIB: u64 = 1 << 32;

/// An address above all of the guest's RAM: RAM is `[0, ram_size)` when it
/// fits below the hole, else it ends below 4 GiB + `ram_size`.
fn ram_top(ram_size: u64) -> u64 {
    if ram_size <= HOLE_START {
        ram_size
    } else {
        FOUR_GIB + ram_size
    }
}

/// The end of the RAM range that starts at 0.
fn low_ram_end(ram_size: u64) -> u64 {
    ram_size.min(HOLE_START)
}

/// A guest-physical address where no byte of a buffer is RAM.
fn outside_ram(rng: &mut Rng, ram_size: u64) -> u64 {
    let top = ram_top(ram_size);
    match rng.next() % 6 {
        0 => top,
        1 => 0xFFFF_FFFF_FFFF_F000,
        2 => 1 << 63,
        3 => u64::MAX,
        4 => top.max(FOUR_GIB) + rng.next() % (1 << 40),
        _ => top + rng.next() % (u64::MAX - top),
    }
}

fn run(rng: &mut Rng, s: &mut Stats, ram_size: u64) {
    let lens = [0, 1, 16, CONSOLE_WRITE_MAX, CONSOLE_WRITE_MAX + 1, u64::MAX];
    let inside = image::image_start();
    for round in 0..ROUNDS {
        // Unknown numbers with garbage arguments.
        for _ in 0..3 {
            let nr = unknown_nr(rng);
            s.call(
                nr,
                rng.next(),
                rng.next(),
                rng.next(),
                Want::Exactly(ENOSYS),
            );
        }
        // Known calls with garbage in every argument they ignore.
        s.call(
            ABI_VERSION,
            rng.next(),
            rng.next(),
            rng.next(),
            Want::Exactly(1),
        );
        // CONSOLE_WRITE outside RAM: EFAULT, or EINVAL where the length is
        // also too long; a zero length may be accepted as writing nothing.
        let len = lens[(rng.next() % lens.len() as u64) as usize];
        let gpa = outside_ram(rng, ram_size);
        let want = match len {
            0 => Want::Either(0, EFAULT),
            l if l > CONSOLE_WRITE_MAX => Want::Either(EINVAL, EFAULT),
            _ => Want::Exactly(EFAULT),
        };
        s.call(CONSOLE_WRITE, gpa, len, rng.next(), want);
        // Too long, at an address inside RAM: EINVAL.
        let len = CONSOLE_WRITE_MAX + 1 + rng.next() % (u64::MAX - CONSOLE_WRITE_MAX - 1);
        s.call(
            CONSOLE_WRITE,
            inside,
            len,
            rng.next(),
            Want::Exactly(EINVAL),
        );
        // Straddling the end of (low) RAM: EFAULT.
        let back = 1 + rng.next() % 15;
        s.call(
            CONSOLE_WRITE,
            low_ram_end(ram_size) - back,
            16,
            rng.next(),
            Want::Exactly(EFAULT),
        );
        // Empty, inside RAM: writes nothing.
        s.call(CONSOLE_WRITE, inside, 0, rng.next(), Want::Exactly(0));
        // YIELD with garbage arguments, now and then.
        if round % 16 == 0 {
            s.call(YIELD, rng.next(), rng.next(), rng.next(), Want::Exactly(0));
        }
    }
    // Once: a real write, with garbage in the unused argument.
    s.call(
        CONSOLE_WRITE,
        MESSAGE.as_ptr() as u64,
        MESSAGE.len() as u64,
        rng.next(),
        Want::Exactly(MESSAGE.len() as i64),
    );
}

fn main(_cmdline: &'static str, ram_size: u64) -> i32 {
    let mut rng = Rng(0x6863_6761_7262_6167);
    let mut s = Stats::default();
    run(&mut rng, &mut s, ram_size);
    println!(
        "hcgarbage: {} calls: {} ok, {} ENOSYS, {} EFAULT, {} EINVAL, {} EPERM",
        s.calls, s.ok, s.enosys, s.efault, s.einval, s.eperm
    );
    if s.failures == 0 {
        println!("hcgarbage: PASS");
        0
    } else {
        println!("hcgarbage: FAIL {} calls", s.failures);
        1
    }
}
