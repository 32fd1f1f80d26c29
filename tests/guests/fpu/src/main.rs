//! FPU/SIMD state isolation: enables SSE (and AVX where available), fills
//! XMM0-15 (YMM0-15 with AVX) with a pattern, then yields to the hypervisor
//! over and over, checking after each yield that every register still holds
//! its pattern and doing some arithmetic that leaves it in place. Two
//! instances with different patterns run side by side: a register holding
//! anything else means state leaked between guests (or was lost).
//!
//! Command line: `pattern=<hex byte>` (default 0x5a), `iterations=<n>`
//! (default 200), `yield=0` to spin instead of yielding (for running
//! outside ferrovisor, where VMCALL raises #UD). Exits 0 on PASS, 1 on FAIL, 3 on a bad command line.
//!
//! The runtime is built without SSE (soft-float target), so no compiled code
//! uses the vector registers: only the asm here touches them.
#![no_std]
#![no_main]

use core::arch::asm;
use core::arch::x86_64::__cpuid_count;
use guest_rt::cpu::{self, CR0_EM, CR0_MP, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE};
use guest_rt::hypercall::yield_now;
use guest_rt::{cmdline, println};

guest_rt::entry!(main);

const REGS: usize = 16;
/// Bytes per register slot (a YMM register).
const SLOT: usize = 32;
const DEFAULT_PATTERN: u64 = 0x5A;
const DEFAULT_ITERATIONS: u64 = 200;

/// One 32-byte slot per register.
#[repr(C, align(32))]
struct Image([[u8; SLOT]; REGS]);

/// Added and subtracted again, XORed in twice: arithmetic that must leave the
/// registers as they were.
static DELTA: Image = Image([[0x3C; SLOT]; REGS]);

fn expected(pattern: u8) -> Image {
    let mut img = Image([[pattern; SLOT]; REGS]);
    for (i, slot) in img.0.iter_mut().enumerate() {
        // Byte 0 of each 16-byte lane names the register, so that swapped
        // registers show too.
        slot[0] = i as u8;
        slot[16] = i as u8;
    }
    img
}

/// Turns on SSE, and AVX when `avx`.
fn enable(avx: bool) {
    // SAFETY: clearing EM/TS and setting MP, OSFXSR, OSXMMEXCPT (and
    // OSXSAVE) only enables the FPU/SSE/XSAVE instruction families; XCR0 =
    // x87 | SSE | AVX is valid where CPUID reports AVX and XSAVE.
    unsafe {
        cpu::write_cr0((cpu::read_cr0() & !(CR0_EM | CR0_TS)) | CR0_MP);
        cpu::write_cr4(
            cpu::read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT | if avx { CR4_OSXSAVE } else { 0 },
        );
        if avx {
            asm!("xsetbv", in("ecx") 0, in("eax") 7, in("edx") 0, options(nomem, nostack, preserves_flags));
        }
    }
}

/// Loads the registers from `img` (XMM from the low half of each slot, or
/// the whole YMM).
fn load(img: &Image, avx: bool) {
    let p = img.0.as_ptr();
    // SAFETY: reads 16 × 32 bytes from `img`; writes only vector registers,
    // which no compiled code uses (see the crate docs). SSE/AVX are enabled.
    unsafe {
        if avx {
            asm!(
                ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                "vmovdqu ymm\\i, ymmword ptr [{p} + 32*\\i]",
                ".endr",
                p = in(reg) p,
                options(readonly, nostack, preserves_flags),
            );
        } else {
            asm!(
                ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                "movdqu xmm\\i, xmmword ptr [{p} + 32*\\i]",
                ".endr",
                p = in(reg) p,
                options(readonly, nostack, preserves_flags),
            );
        }
    }
}

/// Stores the registers into `img`.
fn store(img: &mut Image, avx: bool) {
    let p = img.0.as_mut_ptr();
    // SAFETY: writes 16 × 32 bytes into `img`; only reads vector registers.
    unsafe {
        if avx {
            asm!(
                ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                "vmovdqu ymmword ptr [{p} + 32*\\i], ymm\\i",
                ".endr",
                p = in(reg) p,
                options(nostack, preserves_flags),
            );
        } else {
            asm!(
                ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                "movdqu xmmword ptr [{p} + 32*\\i], xmm\\i",
                ".endr",
                p = in(reg) p,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Arithmetic that leaves every register as it was: byte add then subtract
/// (SSE2), and with AVX an XOR twice over the full YMM.
fn churn(avx: bool) {
    let d = DELTA.0.as_ptr();
    // SAFETY: reads DELTA; changes vector registers only transiently (each
    // ends as it began) and no compiled code uses them.
    unsafe {
        asm!(
            ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "paddb xmm\\i, xmmword ptr [{d}]",
            "psubb xmm\\i, xmmword ptr [{d}]",
            ".endr",
            d = in(reg) d,
            options(readonly, nostack, preserves_flags),
        );
        if avx {
            asm!(
                ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                "vxorps ymm\\i, ymm\\i, ymmword ptr [{d}]",
                "vxorps ymm\\i, ymm\\i, ymmword ptr [{d}]",
                ".endr",
                d = in(reg) d,
                options(readonly, nostack, preserves_flags),
            );
        }
    }
}

/// The first register that differs: (index, whether its upper half).
fn mismatch(got: &Image, want: &Image, avx: bool) -> Option<(usize, bool)> {
    let len = if avx { SLOT } else { 16 };
    (0..REGS).find_map(|i| {
        let (g, w) = (&got.0[i][..len], &want.0[i][..len]);
        (g != w).then(|| (i, g[..16] == w[..16]))
    })
}

/// Shows a register slot as hex, most significant byte first.
struct Hex<'a>(&'a [u8]);

impl core::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("0x")?;
        self.0.iter().rev().try_for_each(|b| write!(f, "{:02x}", b))
    }
}

fn main(cmd: &'static str, _ram_size: u64) -> i32 {
    let pattern = cmdline::get(cmd, "pattern").map_or(Some(DEFAULT_PATTERN), cmdline::parse_hex);
    let Some(pattern) = pattern.and_then(|p| u8::try_from(p).ok()) else {
        println!("fpu: FAIL bad pattern= argument");
        return 3;
    };
    let Some(iterations) = cmdline::number(cmd, "iterations", DEFAULT_ITERATIONS) else {
        println!("fpu: FAIL bad iterations= argument");
        return 3;
    };
    let yields = cmdline::get(cmd, "yield") != Some("0");
    let l1 = __cpuid_count(1, 0);
    let xsave = l1.ecx & (1 << 26) != 0;
    let avx_cpu = l1.ecx & (1 << 28) != 0;
    // XCR0 must be able to hold AVX state too.
    let avx = xsave && avx_cpu && __cpuid_count(0xD, 0).eax & 0b111 == 0b111;
    println!(
        "fpu: pattern={:#04x} avx={} iterations={}",
        pattern, avx as u8, iterations
    );
    enable(avx);
    let want = expected(pattern);
    let mut got = Image([[0; SLOT]; REGS]);
    load(&want, avx);
    for n in 0..iterations {
        if yields {
            yield_now();
        }
        store(&mut got, avx);
        if let Some((i, upper)) = mismatch(&got, &want, avx) {
            let (kind, bytes) = if upper {
                ("ymm", &got.0[i][..])
            } else {
                ("xmm", &got.0[i][..16])
            };
            println!(
                "fpu: FAIL register {}{} = {} (iteration {})",
                kind,
                i,
                Hex(bytes),
                n
            );
            return 1;
        }
        churn(avx);
    }
    // The churn after the last check must have left everything too.
    store(&mut got, avx);
    if let Some((i, _)) = mismatch(&got, &want, avx) {
        println!("fpu: FAIL register xmm{} changed by arithmetic", i);
        return 1;
    }
    println!("fpu: PASS");
    0
}
