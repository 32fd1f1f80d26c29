//! Entry point, exit and panic handling.

use crate::io::outb;
use crate::{cmdline, idt, println};
use core::arch::{asm, naked_asm};
use core::sync::atomic::{AtomicBool, Ordering};

/// Debug-exit port: an 8-bit OUT ends the guest with that exit code.
const DEBUG_EXIT_PORT: u16 = 0xF4;

unsafe extern "Rust" {
    // SAFETY: defined by `entry!` in every guest binary with exactly this
    // signature.
    safe fn __guest_main(cmdline: &'static str, ram_size: u64) -> i32;
}

/// Image entry. RDI = command line pointer, RSI = RAM size.
// SAFETY: naked because no stack exists yet; the asm sets one up and never
// returns. `_start` is the only symbol of that name in the image.
#[unsafe(naked)]
#[unsafe(no_mangle)]
unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "cli",
        "cld",
        "lea rsp, [rip + __stack_top]",
        "xor ebp, ebp",
        "mov r12, rdi",
        "mov r13, rsi",
        // Zero .bss (includes the stack, nothing is on it yet).
        "lea rdi, [rip + __bss_start]",
        "lea rcx, [rip + __bss_end]",
        "sub rcx, rdi",
        "xor eax, eax",
        "rep stosb",
        "mov rdi, r12",
        "mov rsi, r13",
        "call {entry}",
        "2:",
        "cli",
        "hlt",
        "jmp 2b",
        entry = sym rust_entry,
    )
}

extern "C" fn rust_entry(cmdline_ptr: *const u8, ram_size: u64) -> ! {
    idt::init();
    // SAFETY: the loader passes a NUL-terminated string in identity-mapped
    // memory below 64 KiB that nothing in the guest writes.
    let cmdline = unsafe { cmdline::from_ptr(cmdline_ptr) };
    let code = __guest_main(cmdline, ram_size);
    exit(code as u8)
}

static EXITING: AtomicBool = AtomicBool::new(false);

/// Ends the guest with `code` via the debug-exit port, falling back to the
/// SHUTDOWN hypercall. Guarded: where nothing handles VMCALL it raises #UD,
/// whose handler calls `exit` again.
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT_PORT, code);
    if !EXITING.swap(true, Ordering::Relaxed) {
        crate::hypercall::exit_hypercall(code);
    }
    halt_forever()
}

/// Halts with interrupts off, forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stops the vCPU; touches no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panic: {}", info);
    exit(0xFF)
}
