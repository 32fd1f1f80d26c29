//! Starting an application processor (SDM Vol. 3A 9.4.4, MP spec B.4): the
//! BSP copies a real-mode trampoline to [`TRAMPOLINE`], sends INIT and two
//! start-up IPIs through the local APIC (xAPIC at 0xFEE00000), and the AP goes
//! through protected mode to long mode with the BSP's page tables, then calls
//! the given entry on the given stack with interrupts off.

use core::arch::global_asm;

/// Guest-physical address of the trampoline (SIPI vector 0x09): below the
/// image, above the loader's page tables, GDT and command line.
pub const TRAMPOLINE: u64 = 0x9000;
const LAPIC: u64 = 0xFEE0_0000;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;

global_asm!(
    ".pushsection .text.ap_tramp, \"ax\"",
    ".code16",
    "ap_tramp_start:",
    // The AP's registers at its first instruction, before anything changes
    // them (see `first_state`); MOVs leave the flags alone.
    "movl %edx, %cs:ap_first+0-ap_tramp_start",
    "movl %esp, %cs:ap_first+4-ap_tramp_start",
    "movl %eax, %cs:ap_first+8-ap_tramp_start",
    "movl %ebx, %cs:ap_first+12-ap_tramp_start",
    "movl %ecx, %cs:ap_first+16-ap_tramp_start",
    "movl %esi, %cs:ap_first+20-ap_tramp_start",
    "movl %edi, %cs:ap_first+24-ap_tramp_start",
    "movl %ebp, %cs:ap_first+28-ap_tramp_start",
    "movl %cr0, %eax",
    "movl %eax, %cs:ap_first+32-ap_tramp_start",
    "movl %cr4, %eax",
    "movl %eax, %cs:ap_first+36-ap_tramp_start",
    "movl %dr6, %eax",
    "movl %eax, %cs:ap_first+40-ap_tramp_start",
    "movl %dr7, %eax",
    "movl %eax, %cs:ap_first+44-ap_tramp_start",
    "movw %cs, %cs:ap_first+48-ap_tramp_start",
    "movw %ds, %cs:ap_first+50-ap_tramp_start",
    "movw %es, %cs:ap_first+52-ap_tramp_start",
    "movw %ss, %cs:ap_first+54-ap_tramp_start",
    "movw %fs, %cs:ap_first+56-ap_tramp_start",
    "movw %gs, %cs:ap_first+58-ap_tramp_start",
    "sgdtl %cs:ap_first+60-ap_tramp_start",
    "sidtl %cs:ap_first+66-ap_tramp_start",
    // Base 0 in DS, ES, SS, FS and GS: each reads the probe at its linear address.
    "movl %ds:ap_probe-ap_tramp_start+0x9000, %eax",
    "movl %eax, %cs:ap_first+72-ap_tramp_start",
    "movl %es:ap_probe-ap_tramp_start+0x9000, %eax",
    "movl %eax, %cs:ap_first+76-ap_tramp_start",
    "movl %ss:ap_probe-ap_tramp_start+0x9000, %eax",
    "movl %eax, %cs:ap_first+80-ap_tramp_start",
    "movl %fs:ap_probe-ap_tramp_start+0x9000, %eax",
    "movl %eax, %cs:ap_first+84-ap_tramp_start",
    "movl %gs:ap_probe-ap_tramp_start+0x9000, %eax",
    "movl %eax, %cs:ap_first+88-ap_tramp_start",
    // EFLAGS through a stack of its own in the trampoline page.
    "movw %cs, %ax",
    "movw %ax, %ss",
    "movl $ap_first_stack_top-ap_tramp_start, %esp",
    "pushfl",
    "popl %eax",
    "movl %eax, %cs:ap_first+92-ap_tramp_start",
    "movl $0x54535041, %cs:ap_first+96-ap_tramp_start",
    "cli",
    "movw %cs, %ax",
    "movw %ax, %ds",
    "lgdtl ap_gdt_ptr - ap_tramp_start",
    "movl %cr0, %eax",
    "orl $1, %eax",
    "movl %eax, %cr0",
    "ljmpl $0x08, $(ap_pm32 - ap_tramp_start + 0x9000)",
    ".code32",
    "ap_pm32:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movl %cr4, %eax",
    "orl $0x20, %eax", // PAE
    "movl %eax, %cr4",
    "movl ap_cr3 - ap_tramp_start + 0x9000, %eax",
    "movl %eax, %cr3",
    "movl $0xC0000080, %ecx", // EFER.LME
    "rdmsr",
    "orl $0x100, %eax",
    "wrmsr",
    "movl %cr0, %eax",
    "orl $0x80000000, %eax", // PG: IA-32e mode is active
    "movl %eax, %cr0",
    "ljmpl $0x18, $(ap_lm64 - ap_tramp_start + 0x9000)",
    ".code64",
    "ap_lm64:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movq ap_stack - ap_tramp_start + 0x9000, %rsp",
    "movq ap_entry - ap_tramp_start + 0x9000, %rax",
    "xorl %ebp, %ebp",
    "call *%rax",
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    ".balign 8",
    "ap_gdt:",
    ".quad 0",
    ".quad 0x00CF9A000000FFFF", // 0x08: 32-bit code
    ".quad 0x00CF92000000FFFF", // 0x10: data
    ".quad 0x00AF9A000000FFFF", // 0x18: 64-bit code
    "ap_gdt_ptr:",
    ".word 31",
    ".long ap_gdt - ap_tramp_start + 0x9000",
    ".balign 8",
    ".global ap_cr3, ap_stack, ap_entry, ap_tramp_start, ap_tramp_end",
    "ap_cr3: .quad 0",
    "ap_stack: .quad 0",
    "ap_entry: .quad 0",
    "ap_probe: .long 0x5AA5F00D",
    ".balign 8",
    ".global ap_first",
    "ap_first: .space 100",
    ".balign 16",
    ".space 16",
    "ap_first_stack_top:",
    "ap_tramp_end:",
    ".popsection",
    options(att_syntax)
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static ap_cr3: u8;
    static ap_stack: u8;
    static ap_entry: u8;
    static ap_first: u8;
}

/// The value each segment read of the trampoline's probe gives with base 0.
pub const PROBE: u32 = 0x5AA5_F00D;

/// An AP's registers at the first instruction of its trampoline, as it
/// recorded them (in real mode: 32-bit GPRs and control registers).
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstState {
    pub edx: u32,
    pub esp: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub esi: u32,
    pub edi: u32,
    pub ebp: u32,
    pub cr0: u32,
    pub cr4: u32,
    pub dr6: u32,
    pub dr7: u32,
    /// CS, DS, ES, SS, FS, GS selectors.
    pub sel: [u16; 6],
    /// GDTR and IDTR: (limit, base).
    pub gdtr: (u16, u32),
    pub idtr: (u16, u32),
    /// The probe read through DS, ES, SS, FS, GS ([`PROBE`] if base 0).
    pub probe: [u32; 5],
    pub eflags: u32,
}

/// What the last AP started with [`start_ap`] recorded at its first
/// instruction; `None` until it has.
pub fn first_state() -> Option<FirstState> {
    let start = (&raw const ap_tramp_start) as u64;
    let base = TRAMPOLINE + ((&raw const ap_first) as u64 - start);
    // SAFETY: the slots lie in the trampoline copy `start_ap` made; the AP
    // writes them once, before the flag at +96.
    let rd = |off: u64| unsafe { core::ptr::read_volatile((base + off) as *const u32) };
    let rd16 = |off: u64| unsafe { core::ptr::read_volatile((base + off) as *const u16) };
    if rd(96) != 0x5453_5041 {
        return None;
    }
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    let mut st = FirstState::default();
    let gprs = [
        &mut st.edx,
        &mut st.esp,
        &mut st.eax,
        &mut st.ebx,
        &mut st.ecx,
        &mut st.esi,
        &mut st.edi,
        &mut st.ebp,
        &mut st.cr0,
        &mut st.cr4,
        &mut st.dr6,
        &mut st.dr7,
    ];
    for (i, r) in gprs.into_iter().enumerate() {
        *r = rd(i as u64 * 4);
    }
    for (i, s) in st.sel.iter_mut().enumerate() {
        *s = rd16(48 + i as u64 * 2);
    }
    st.gdtr = (rd16(60), u32::from(rd16(62)) | u32::from(rd16(64)) << 16);
    st.idtr = (rd16(66), u32::from(rd16(68)) | u32::from(rd16(70)) << 16);
    for (i, p) in st.probe.iter_mut().enumerate() {
        *p = rd(72 + i as u64 * 4);
    }
    st.eflags = rd(92);
    Some(st)
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: the local APIC's registers are identity mapped by the loader;
    // ICR writes only send IPIs.
    unsafe { core::ptr::write_volatile((LAPIC + reg) as *mut u32, v) };
}

/// Starts the AP with local APIC ID `apic_id`: it calls `entry` on a stack
/// whose top is `stack_top` (16-byte aligned), with interrupts off.
///
/// # Safety
/// [`TRAMPOLINE`]..+4 KiB must be unused RAM; the stack must belong to that
/// AP alone; `entry` must never return.
pub unsafe fn start_ap(apic_id: u8, entry: extern "C" fn() -> !, stack_top: u64) {
    let start = (&raw const ap_tramp_start) as u64;
    let len = (&raw const ap_tramp_end) as u64 - start;
    let at = |sym: *const u8| (TRAMPOLINE + (sym as u64 - start)) as *mut u64;
    let cr3: u64;
    // SAFETY: reads CR3 only.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    // SAFETY: the caller gives up the trampoline page; the patched slots lie
    // inside the copy (8-byte aligned, as in the original).
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len as usize);
        at(&raw const ap_cr3).write_volatile(cr3);
        at(&raw const ap_stack).write_volatile(stack_top);
        at(&raw const ap_entry).write_volatile(entry as usize as u64);
    }
    let dest = u32::from(apic_id) << 24;
    lapic_write(ICR_HIGH, dest);
    lapic_write(ICR_LOW, 0x0000_4500); // INIT, assert
    spin(200_000);
    for _ in 0..2 {
        lapic_write(ICR_HIGH, dest);
        lapic_write(ICR_LOW, 0x0000_4600 | (TRAMPOLINE >> 12) as u32); // start-up
        spin(20_000);
    }
}

fn spin(n: u64) {
    let t = crate::cpu::rdtsc();
    while crate::cpu::rdtsc().wrapping_sub(t) < n {
        core::hint::spin_loop();
    }
}
