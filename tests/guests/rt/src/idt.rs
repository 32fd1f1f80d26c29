//! IDT. The 32 exception vectors each print
//! `exception: vector=<n> error=<e> rip=<rip>` and exit with 0x80 + vector,
//! unless a [`probe!`](crate::probe) is armed: then the exception is recorded
//! and execution resumes after the probed instruction.
//!
//! Vectors 32..=255 are absent until a guest installs a gate for one with
//! [`set_gate`] (the IDT limit then grows to cover it).

use crate::println;
use crate::start::exit;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU16, AtomicU64, Ordering};

/// Exception vectors handled by the runtime's own stubs.
const EXCEPTIONS: usize = 32;
const VECTORS: usize = 256;

#[repr(C, align(16))]
struct Idt([u64; VECTORS * 2]);

static mut IDT: Idt = Idt([0; VECTORS * 2]);

/// Current IDT limit (bytes - 1).
static LIMIT: AtomicU16 = AtomicU16::new((EXCEPTIONS * 16 - 1) as u16);

/// Where an armed probe resumes; 0 = no probe armed. Written by `probe!`,
/// cleared by the exception stub when it uses it.
#[doc(hidden)]
pub static PROBE_RESUME: AtomicU64 = AtomicU64::new(0);
/// Vector of the fault a probe caught, with bit 8 set; 0 = none.
static PROBE_VECTOR: AtomicU64 = AtomicU64::new(0);
static PROBE_ERROR: AtomicU64 = AtomicU64::new(0);
static PROBE_RIP: AtomicU64 = AtomicU64::new(0);
static PROBE_RFLAGS: AtomicU64 = AtomicU64::new(0);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

// Stubs push a dummy error code where the CPU pushes none, then the vector.
// The common part checks for an armed probe: if there is one it disarms it,
// records vector, error code and faulting RIP, replaces the RIP in the
// interrupt frame with the resume address and returns there (only RAX is
// used, and restored; IRETQ restores RFLAGS). Otherwise it reports and exits.
global_asm!(
    ".pushsection .text.guest_isr, \"ax\"",
    ".irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "guest_isr_\\v:",
    "push 0",
    "push \\v",
    "jmp guest_isr_common",
    ".endr",
    ".irp v, 8,10,11,12,13,14,17,21,29,30",
    "guest_isr_\\v:",
    "push \\v",
    "jmp guest_isr_common",
    ".endr",
    "guest_isr_common:",
    "push rax",
    "mov rax, qword ptr [rip + {resume}]",
    "test rax, rax",
    "jz 2f",
    "mov qword ptr [rip + {resume}], 0",
    // Frame: [rsp] rax, +8 vector, +16 error, +24 RIP, +32 CS, +40 RFLAGS.
    "xchg rax, qword ptr [rsp + 24]",
    "mov qword ptr [rip + {fault_rip}], rax",
    "mov rax, qword ptr [rsp + 16]",
    "mov qword ptr [rip + {fault_error}], rax",
    "mov rax, qword ptr [rsp + 8]",
    "or rax, 0x100",
    "mov qword ptr [rip + {fault_vector}], rax",
    "mov rax, qword ptr [rsp + 40]",
    "mov qword ptr [rip + {fault_rflags}], rax",
    "pop rax",
    "add rsp, 16",
    "iretq",
    "2:",
    "pop rax",
    "mov rdi, [rsp]",
    "mov rsi, [rsp + 8]",
    "mov rdx, [rsp + 16]",
    "and rsp, -16",
    "call {handler}",
    "ud2",
    ".popsection",
    ".pushsection .rodata.guest_isr_table, \"a\"",
    ".balign 8",
    ".globl guest_isr_table",
    "guest_isr_table:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".quad guest_isr_\\v",
    ".endr",
    ".popsection",
    handler = sym exception,
    resume = sym PROBE_RESUME,
    fault_rip = sym PROBE_RIP,
    fault_error = sym PROBE_ERROR,
    fault_vector = sym PROBE_VECTOR,
    fault_rflags = sym PROBE_RFLAGS,
);

unsafe extern "C" {
    static guest_isr_table: [u64; EXCEPTIONS];
}

extern "C" fn exception(vector: u64, error: u64, rip: u64) -> ! {
    println!(
        "exception: vector={} error={:#x} rip={:#x}",
        vector, error, rip
    );
    exit(0x80 + vector as u8)
}

fn cs() -> u16 {
    let cs: u16;
    // SAFETY: reads the CS selector only.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs
}

/// A present 64-bit interrupt gate (DPL 0) to `handler` in segment `cs`.
fn gate(handler: u64, cs: u16) -> [u64; 2] {
    let low = (handler & 0xFFFF)
        | (u64::from(cs) << 16)
        | (0x8E00 << 32) // present, DPL 0, interrupt gate
        | ((handler >> 16) & 0xFFFF) << 48;
    [low, handler >> 32]
}

fn load() {
    let pointer = Pointer {
        limit: LIMIT.load(Ordering::Relaxed),
        base: (&raw const IDT) as u64,
    };
    // SAFETY: IDT is a static with valid gates for every vector the limit
    // covers, or not-present ones (which raise #NP).
    unsafe {
        asm!("lidt [{0}]", in(reg) &raw const pointer, options(readonly, nostack, preserves_flags))
    };
}

/// Fills and loads the IDT (64-bit interrupt gates, current CS).
pub(crate) fn init() {
    let cs = cs();
    let idt = &raw mut IDT;
    // SAFETY: the table is read-only data emitted above.
    let handlers = unsafe { &guest_isr_table };
    for (v, &handler) in handlers.iter().enumerate() {
        // SAFETY: single-threaded init before any exception can be handled;
        // nothing else references IDT.
        unsafe { (&mut (*idt).0)[2 * v..2 * v + 2].copy_from_slice(&gate(handler, cs)) };
    }
    load();
}

/// Installs an interrupt gate for `vector` (32..=255) pointing at `handler`
/// and extends the IDT limit to cover it if needed.
///
/// # Safety
/// `handler` must be the address of code that handles the interrupt
/// (preserving every register it changes) and returns with IRETQ. No
/// interrupt for `vector` may arrive while this runs.
pub unsafe fn set_gate(vector: u8, handler: u64) {
    assert!(
        usize::from(vector) >= EXCEPTIONS,
        "vector {vector} is an exception"
    );
    let v = usize::from(vector);
    let idt = &raw mut IDT;
    // SAFETY: single vCPU; the entry is not in use per the caller.
    unsafe { (&mut (*idt).0)[2 * v..2 * v + 2].copy_from_slice(&gate(handler, cs())) };
    let needed = ((v + 1) * 16 - 1) as u16;
    LIMIT.fetch_max(needed, Ordering::Relaxed);
    load();
}

/// Points exception `vector` (0..=31) at `handler` instead of the runtime's
/// report-and-exit stub (e.g. an NMI handler).
///
/// # Safety
/// As for [`set_gate`]; the handler must also cope with the CPU's frame for
/// that vector (an error code or not).
pub unsafe fn set_exception_gate(vector: u8, handler: u64) {
    assert!(
        usize::from(vector) < EXCEPTIONS,
        "vector {vector} is not an exception"
    );
    let v = usize::from(vector);
    let idt = &raw mut IDT;
    // SAFETY: single vCPU; the entry is not in use per the caller.
    unsafe { (&mut (*idt).0)[2 * v..2 * v + 2].copy_from_slice(&gate(handler, cs())) };
    load();
}

/// An exception caught by a [`probe!`](crate::probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    /// The error code the CPU pushed (0 for vectors without one).
    pub error: u64,
    /// Address of the faulting instruction.
    pub rip: u64,
    /// RFLAGS as saved in the exception frame (RF, bit 16, is set for faults).
    pub rflags: u64,
}

/// Forgets any previously recorded fault (used by `probe!`).
#[doc(hidden)]
pub fn probe_reset() {
    PROBE_VECTOR.store(0, Ordering::Relaxed);
}

/// The fault the last probe caught, if any; disarms the probe (used by
/// `probe!`).
#[doc(hidden)]
pub fn probe_result() -> Option<Fault> {
    PROBE_RESUME.store(0, Ordering::Relaxed);
    let v = PROBE_VECTOR.swap(0, Ordering::Relaxed);
    (v != 0).then(|| Fault {
        vector: v as u8,
        error: PROBE_ERROR.load(Ordering::Relaxed),
        rip: PROBE_RIP.load(Ordering::Relaxed),
        rflags: PROBE_RFLAGS.load(Ordering::Relaxed),
    })
}

/// Runs instructions that may raise an exception and resumes after them if
/// one does. Evaluates to `Option<`[`Fault`]`>`: `None` if the instructions
/// completed, else the exception (after which their outputs hold whatever the
/// registers held when it happened).
///
/// Syntax: `probe!("template"[, "template"...][; operands])`, where the
/// templates and operands are as for `asm!`. Operands may be named or explicit
/// registers (not positional); `probe_resume` and `probe_slot` are taken, as
/// is the local label `2`. The instructions must not jump out of the block.
///
/// The expansion contains `asm!`, so the call must be in an `unsafe` block
/// whose justification covers the probed instructions.
///
/// ```ignore
/// // SAFETY: RDMSR only reads an MSR (or faults).
/// let fault = unsafe { probe!("rdmsr"; in("ecx") msr, out("eax") lo, out("edx") hi) };
/// ```
#[macro_export]
macro_rules! probe {
    ($($insn:literal),+ $(; $($operands:tt)*)?) => {{
        $crate::idt::probe_reset();
        ::core::arch::asm!(
            "lea {probe_resume}, [rip + 2f]",
            "mov qword ptr [rip + {probe_slot}], {probe_resume}",
            $($insn,)+
            "2:",
            "mov qword ptr [rip + {probe_slot}], 0",
            probe_resume = out(reg) _,
            probe_slot = sym $crate::idt::PROBE_RESUME,
            $($($operands)*)?
        );
        $crate::idt::probe_result()
    }};
}
