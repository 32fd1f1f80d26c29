//! Conformance guest: the instructions OS code uses on device registers,
//! carried out on the local APIC page (0xFEE00000: the TPR at 0x80 is
//! read/write, bits 7:0; the version register at 0x30 is read-only) and on
//! memory with nothing behind it (0xD0000000 in the PC hole: reads give
//! all-ones, writes are dropped, the guest keeps running): MOV, MOVZX/MOVSX,
//! XCHG, OR/AND/XOR/TEST with the flags of SDM Vol. 2, BT/BTS/BTR/BTC (CF),
//! MOVS/STOS/LODS with and without REP, with one side or both sides MMIO;
//! and a jump to the empty bus, which raises #UD there (all-ones bytes).
//!
//! Prints `mmioinsn: PASS` and exits 0, or `mmioinsn: FAIL ...` lines and exits 1.
#![no_std]
#![no_main]

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};
use guest_rt::{println, probe};

guest_rt::entry!(main);

const TPR: u64 = 0xFEE0_0080;
const VERSION: u64 = 0xFEE0_0030;
const EMPTY: u64 = 0xD000_0000;

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const ARITH: u64 = CF | PF | ZF | SF | OF;

static mut FAILS: u32 = 0;
static mut RAM: [u32; 8] = [0; 8];

fn check(what: &str, got: u64, want: u64) {
    if got != want {
        println!("mmioinsn: FAIL {}: got {:#x}, want {:#x}", what, got, want);
        // SAFETY: single vCPU.
        unsafe { FAILS += 1 };
    }
}

fn rd(a: u64) -> u32 {
    // SAFETY: a device register or the empty bus, mapped by the loader.
    unsafe { read_volatile(a as *const u32) }
}

fn wr(a: u64, v: u32) {
    // SAFETY: as for `rd`.
    unsafe { write_volatile(a as *mut u32, v) }
}

fn ram() -> *mut u32 {
    (&raw mut RAM).cast()
}

/// Runs `insn` on `addr` with RFLAGS cleared first; evaluates to the
/// arithmetic flags after it.
macro_rules! flags_after {
    ($insn:literal, $addr:expr) => {{
        let f: u64;
        // SAFETY: the instruction touches only the MMIO dword at `addr`.
        unsafe {
            asm!("push 0", "popfq", $insn, "pushfq", "pop {f}", a = in(reg) $addr, f = out(reg) f)
        };
        f & ARITH
    }};
}

fn lapic() {
    let version = rd(VERSION);
    check("version register nonzero", u64::from(version != 0), 1);
    wr(TPR, 0);

    // XCHG: memory gets the register, the register the old value.
    let mut eax: u32 = 0x20;
    // SAFETY: XCHG with the TPR.
    unsafe {
        asm!("xchg dword ptr [{a}], {v:e}", a = in(reg) TPR, v = inout(reg) eax, options(nostack))
    };
    check("xchg old", u64::from(eax), 0);
    check("xchg new TPR", u64::from(rd(TPR)), 0x20);

    // MOVZX / MOVSX.
    wr(TPR, 0x80);
    let (zx, sx): (u32, u64);
    // SAFETY: loads from the TPR.
    unsafe {
        asm!("movzx {z:e}, byte ptr [{a}]", "movsx {s}, byte ptr [{a}]", a = in(reg) TPR, z = out(reg) zx, s = out(reg) sx, options(nostack, readonly))
    };
    check("movzx", u64::from(zx), 0x80);
    check("movsx", sx, 0xFFFF_FFFF_FFFF_FF80);
    let zw: u32;
    // SAFETY: load from the version register.
    unsafe {
        asm!("movzx {z:e}, word ptr [{a}]", a = in(reg) VERSION, z = out(reg) zw, options(nostack, readonly))
    };
    check("movzx word", u64::from(zw), u64::from(version & 0xFFFF));

    // OR / AND / XOR with flags (CF and OF cleared, SF/ZF/PF from the result).
    wr(TPR, 0x20);
    let f = flags_after!("or dword ptr [{a}], 0x0f", TPR);
    check("or result", u64::from(rd(TPR)), 0x2F);
    check("or flags", f, 0); // 0x2f: five bits set, odd parity
    let f = flags_after!("and dword ptr [{a}], 0xf0", TPR);
    check("and result", u64::from(rd(TPR)), 0x20);
    check("and flags", f, 0);
    let f = flags_after!("xor dword ptr [{a}], 0x20", TPR);
    check("xor result", u64::from(rd(TPR)), 0);
    check("xor flags", f, ZF | PF);
    wr(TPR, 0x81);
    let f = flags_after!("lock or byte ptr [{a}], 0x02", TPR);
    check("lock or byte result", u64::from(rd(TPR)), 0x83);
    check("lock or byte flags", f, SF); // 0x83: three bits, odd parity
    let f = flags_after!("test dword ptr [{a}], 0x80", TPR);
    check("test flags", f, 0); // result 0x80: one bit, odd parity
    check("test leaves the register", u64::from(rd(TPR)), 0x83);
    let f = flags_after!("test dword ptr [{a}], 0x10", TPR);
    check("test zero flags", f, ZF | PF);

    // BT family: CF = the bit before; BTS/BTR/BTC change it.
    wr(TPR, 0x10);
    check("bt 4", flags_after!("bt dword ptr [{a}], 4", TPR) & CF, CF);
    check("bt 5", flags_after!("bt dword ptr [{a}], 5", TPR) & CF, 0);
    check(
        "bts 5 cf",
        flags_after!("bts dword ptr [{a}], 5", TPR) & CF,
        0,
    );
    check("bts 5", u64::from(rd(TPR)), 0x30);
    check(
        "btr 4 cf",
        flags_after!("btr dword ptr [{a}], 4", TPR) & CF,
        CF,
    );
    check("btr 4", u64::from(rd(TPR)), 0x20);
    check(
        "btc 7 cf",
        flags_after!("btc dword ptr [{a}], 7", TPR) & CF,
        0,
    );
    check("btc 7", u64::from(rd(TPR)), 0xA0);
    let f: u64;
    // SAFETY: BT with a register bit offset on the TPR.
    unsafe {
        asm!("push 0", "popfq", "bt dword ptr [{a}], {b:e}", "pushfq", "pop {f}", a = in(reg) TPR, b = in(reg) 7u32, f = out(reg) f)
    };
    check("bt reg", f & CF, CF);

    // rep movsd from the APIC to RAM: version, then the three reserved dwords.
    let r = ram();
    // SAFETY: RAM is ours.
    unsafe { core::ptr::write_bytes(r, 0xAA, 8) };
    let (mut rsi, mut rdi, mut rcx) = (VERSION, r as u64, 4u64);
    // SAFETY: reads 16 bytes of the APIC page, writes 16 bytes of RAM.
    unsafe {
        asm!("rep movsd", inout("rsi") rsi, inout("rdi") rdi, inout("rcx") rcx, options(nostack))
    };
    check("rep movsd rsi", rsi, VERSION + 16);
    check("rep movsd rdi", rdi, r as u64 + 16);
    check("rep movsd rcx", rcx, 0);
    // SAFETY: inside RAM.
    let (v0, v1, v4) = unsafe {
        (
            r.read_volatile(),
            r.add(1).read_volatile(),
            r.add(4).read_volatile(),
        )
    };
    check("rep movsd data", u64::from(v0), u64::from(version));
    check("rep movsd reserved", u64::from(v1), 0);
    check("rep movsd no overrun", u64::from(v4), 0xAAAA_AAAA);

    // movsd from RAM to the TPR; movsb from the APIC to the APIC (both MMIO).
    // SAFETY: inside RAM.
    unsafe { r.write_volatile(0x40) };
    let (mut rsi, mut rdi) = (r as u64, TPR);
    // SAFETY: reads RAM, writes the TPR.
    unsafe { asm!("movsd", inout("rsi") rsi, inout("rdi") rdi, options(nostack)) };
    check("movsd to TPR", u64::from(rd(TPR)), 0x40);
    check("movsd rdi", rdi, TPR + 4);
    check("movsd rsi", rsi, r as u64 + 4);
    let (mut rsi, mut rdi) = (VERSION, TPR);
    // SAFETY: reads the version register, writes the TPR.
    unsafe { asm!("movsb", inout("rsi") rsi, inout("rdi") rdi, options(nostack)) };
    check(
        "movsb APIC to APIC",
        u64::from(rd(TPR)),
        u64::from(version & 0xFF),
    );
    let _ = (rsi, rdi);

    // rep stosd to the TPR (count 1), lodsd from the version register.
    let (mut rdi, mut rcx) = (TPR, 1u64);
    // SAFETY: writes the TPR.
    unsafe {
        asm!("rep stosd", in("eax") 0x50u32, inout("rdi") rdi, inout("rcx") rcx, options(nostack))
    };
    check("rep stosd", u64::from(rd(TPR)), 0x50);
    check("rep stosd rcx", rcx, 0);
    check("rep stosd rdi", rdi, TPR + 4);
    let mut rsi = VERSION;
    let eax: u64;
    // SAFETY: reads the version register.
    unsafe { asm!("mov rax, -1", "lodsd", out("rax") eax, inout("rsi") rsi, options(nostack)) };
    check("lodsd zero-extends", eax, u64::from(version));
    check("lodsd rsi", rsi, VERSION + 4);
    wr(TPR, 0);
}

fn empty_bus() {
    check("read of nothing", u64::from(rd(EMPTY)), 0xFFFF_FFFF);
    wr(EMPTY, 0x1234_5678);
    check("write dropped", u64::from(rd(EMPTY)), 0xFFFF_FFFF);
    let q: u64;
    // SAFETY: the empty bus.
    unsafe {
        asm!("mov {q}, qword ptr [{a}]", a = in(reg) EMPTY + 8, q = out(reg) q, options(nostack, readonly))
    };
    check("qword read of nothing", q, u64::MAX);
    let b: u32;
    // SAFETY: as above.
    unsafe {
        asm!("movzx {b:e}, byte ptr [{a}]", a = in(reg) EMPTY + 1, b = out(reg) b, options(nostack, readonly))
    };
    check("movzx of nothing", u64::from(b), 0xFF);
    let mut x: u32 = 7;
    // SAFETY: as above.
    unsafe {
        asm!("xchg dword ptr [{a}], {v:e}", a = in(reg) EMPTY, v = inout(reg) x, options(nostack))
    };
    check("xchg with nothing", u64::from(x), 0xFFFF_FFFF);
    let f = flags_after!("test dword ptr [{a}], -1", EMPTY);
    check("test all-ones", f, SF | PF);
    let f = flags_after!("bt dword ptr [{a}], 3", EMPTY);
    check("bt all-ones", f & CF, CF);
    let f = flags_after!("and dword ptr [{a}], 0", EMPTY);
    check("and on nothing: flags from all-ones AND 0", f, ZF | PF);
    check("and dropped", u64::from(rd(EMPTY)), 0xFFFF_FFFF);

    // rep movsb from nothing into RAM; rep stosb into nothing.
    let r = ram();
    // SAFETY: RAM is ours.
    unsafe { core::ptr::write_bytes(r, 0, 8) };
    let (mut rsi, mut rdi, mut rcx) = (EMPTY + 0x100, r as u64, 6u64);
    // SAFETY: reads the empty bus, writes 6 bytes of RAM.
    unsafe {
        asm!("rep movsb", inout("rsi") rsi, inout("rdi") rdi, inout("rcx") rcx, options(nostack))
    };
    // SAFETY: inside RAM.
    let (w0, w1) = unsafe { (r.read_volatile(), r.add(1).read_volatile()) };
    check("rep movsb from nothing", u64::from(w0), 0xFFFF_FFFF);
    check("rep movsb length", u64::from(w1), 0xFFFF);
    check("rep movsb rcx", rcx, 0);
    check("rep movsb rdi", rdi, r as u64 + 6);
    check("rep movsb rsi", rsi, EMPTY + 0x106);
    let (mut rdi, mut rcx) = (EMPTY + 0x200, 16u64);
    // SAFETY: writes the empty bus.
    unsafe {
        asm!("rep stosb", in("al") 0u8, inout("rdi") rdi, inout("rcx") rcx, options(nostack))
    };
    check("rep stosb rdi", rdi, EMPTY + 0x210);
    check(
        "rep stosb dropped",
        u64::from(rd(EMPTY + 0x200)),
        0xFFFF_FFFF,
    );
    check("rep stosb rcx", rcx, 0);
}

/// Executing from the empty bus: a PC fetches 0xFF 0xFF, FF /7, which is undefined: #UD
/// at that address.
fn execute_nothing() {
    let target = EMPTY + 0x800;
    // SAFETY: the jump faults at the target; the probe resumes after it.
    let f = unsafe { probe!("jmp {t}"; t = in(reg) target) };
    check(
        "fetch from nothing: vector",
        f.map_or(0, |f| u64::from(f.vector)),
        6,
    );
    check("fetch from nothing: rip", f.map_or(0, |f| f.rip), target);
}

fn main(_cmd: &'static str, _ram: u64) -> i32 {
    lapic();
    empty_bus();
    execute_nothing();
    println!("mmioinsn: still running after the empty-bus accesses");
    // SAFETY: single vCPU.
    let fails = unsafe { FAILS };
    if fails == 0 {
        println!("mmioinsn: PASS");
        0
    } else {
        println!("mmioinsn: FAIL ({} checks)", fails);
        1
    }
}
