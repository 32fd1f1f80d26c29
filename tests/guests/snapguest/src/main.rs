//! Snapshot test guest: counts ticks (one every `period` TSC ticks), keeps
//! the count in guest RAM and in XMM7 (which no compiled code touches:
//! the target has no SSE), and a marker in RAM that changes from `before` to
//! `changed` at tick `change_at`. Each tick prints
//! `snapguest: tick N marker M`; a tick whose XMM7 copy disagrees with RAM
//! prints `snapguest: FAIL xmm7 ...` (a restore that lost the XSAVE state).
//! With `crash_at=K` it crashes (triple fault) at tick K; it exits 0 after
//! tick `exit_at`.
//!
//! A rollback to a snapshot taken at tick S makes it print tick S+1 with
//! the marker it had then; its TSC continues from the snapshot's, so the
//! next tick comes a period after the last one before the snapshot.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::cpu::{self, CR0_EM, CR0_MP, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT, rdtsc};
use guest_rt::{cmdline, println};

guest_rt::entry!(main);

static TICKS: AtomicU64 = AtomicU64::new(0);
static mut MARKER: [u8; 8] = *b"before  ";

fn xmm7() -> u64 {
    let v: u64;
    // SAFETY: reads XMM7 (SSE is enabled in `main`; no compiled code uses
    // XMM registers on this target).
    unsafe { asm!("movq {}, xmm7", out(reg) v, options(nomem, nostack)) };
    v
}

fn set_xmm7(v: u64) {
    // SAFETY: as in `xmm7`.
    unsafe { asm!("movq xmm7, {}", in(reg) v, options(nomem, nostack)) };
}

fn crash() -> ! {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let empty = Pointer { limit: 0, base: 0 };
    // SAFETY: no usable gate, then #UD: a triple fault; never returns.
    unsafe {
        asm!("lidt [{0}]", "ud2", in(reg) &raw const empty, options(noreturn, readonly, nostack))
    }
}

fn main(cmdline: &'static str, _ram_size: u64) -> i32 {
    let (Some(period), Some(change_at), Some(crash_at), Some(exit_at)) = (
        cmdline::number(cmdline, "period", 20_000_000),
        cmdline::number(cmdline, "change_at", 20),
        cmdline::number(cmdline, "crash_at", 0),
        cmdline::number(cmdline, "exit_at", 100),
    ) else {
        println!("snapguest: bad command line");
        return 3;
    };
    // SAFETY: enables SSE (CR0.EM/TS off, CR4.OSFXSR), as the fpu guest does.
    unsafe {
        cpu::write_cr0((cpu::read_cr0() & !(CR0_EM | CR0_TS)) | CR0_MP);
        cpu::write_cr4(cpu::read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT);
    }
    set_xmm7(0);
    let mut next = rdtsc().wrapping_add(period);
    loop {
        while (rdtsc().wrapping_sub(next) as i64) < 0 {
            core::hint::spin_loop();
        }
        next = next.wrapping_add(period);
        let n = TICKS.load(Ordering::Relaxed);
        let x = xmm7();
        if x != n {
            println!("snapguest: FAIL xmm7 {x} but RAM {n}");
        }
        let n = n + 1;
        TICKS.store(n, Ordering::Relaxed);
        set_xmm7(n);
        let marker = &raw mut MARKER;
        if n == change_at {
            // SAFETY: one vCPU; nothing else refers to MARKER.
            unsafe { *marker = *b"changed " };
        }
        // SAFETY: as above.
        let m = unsafe { *marker };
        let m = core::str::from_utf8(&m).unwrap_or("?").trim_end();
        println!("snapguest: tick {n} marker {m}");
        if crash_at != 0 && n == crash_at {
            println!("snapguest: crashing");
            crash();
        }
        if n >= exit_at {
            return 0;
        }
    }
}
