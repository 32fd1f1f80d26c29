//! Per-CPU state, reached through GS: `gs:[0]` holds the CPU's own `PerCpu` address.
use alloc::boxed::Box;
use arch::desc::{self, Tss, GDT_ENTRIES, KERNEL_CS, KERNEL_DS, TSS_SEL};
use arch::regs::DescriptorTablePointer;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

pub const MAX_CPUS: usize = 64;
const IST_STACK: usize = 16 * 1024;

#[repr(C)]
pub struct PerCpu {
    /// Must stay first: `gs:[0]`.
    self_ptr: u64,
    pub index: usize,
    pub apic_id: u32,
    pub gdt: [u64; GDT_ENTRIES],
    pub tss: Tss,
    /// Physical address of this CPU's VMXON region, once in VMX root operation.
    pub vmxon_region: u64,
    /// Top of the stack this CPU runs the hypervisor on.
    pub stack_top: u64,
}

static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static ONLINE: AtomicUsize = AtomicUsize::new(0);

/// Creates the per-CPU block for CPU `index`, loads its GDT, TSS and GS, and the IDT.
pub fn init_this_cpu(index: usize, apic_id: u32, stack_top: u64) -> &'static mut PerCpu {
    let ist = Box::leak(alloc::vec![0u8; IST_STACK].into_boxed_slice());
    let mut tss = Tss::default();
    tss.ist[0] = (ist.as_ptr() as u64 + IST_STACK as u64) & !0xF;
    tss.iomap_base = core::mem::size_of::<Tss>() as u16;
    let cpu = Box::leak(Box::new(PerCpu {
        self_ptr: 0,
        index,
        apic_id,
        gdt: [0, desc::CODE64, desc::DATA, 0, 0],
        tss,
        vmxon_region: 0,
        stack_top,
    }));
    cpu.self_ptr = cpu as *mut PerCpu as u64;
    let tss_d = desc::tss_descriptor(
        &cpu.tss as *const Tss as u64,
        (core::mem::size_of::<Tss>() - 1) as u32,
    );
    cpu.gdt[3] = tss_d[0];
    cpu.gdt[4] = tss_d[1];
    let gdtr = DescriptorTablePointer {
        limit: (GDT_ENTRIES * 8 - 1) as u16,
        base: cpu.gdt.as_ptr() as u64,
    };
    // SAFETY: the GDT is 'static and holds flat code/data descriptors at the
    // selectors used below; reloading CS with a far return keeps executing here.
    unsafe {
        core::arch::asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, {ds}",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "xor {tmp:e}, {tmp:e}",
            "mov fs, {tmp:e}",
            "mov gs, {tmp:e}",
            "mov {tmp:e}, {tss}",
            "ltr {tmp:x}",
            gdtr = in(reg) &gdtr,
            cs = const KERNEL_CS as u64,
            ds = const KERNEL_DS as u32,
            tss = const TSS_SEL as u32,
            tmp = out(reg) _,
        );
        arch::msr::wrmsr(arch::msr::IA32_GS_BASE, cpu.self_ptr);
    }
    crate::interrupts::load();
    CPUS[index].store(cpu, Ordering::Release);
    ONLINE.fetch_add(1, Ordering::AcqRel);
    cpu
}

/// The executing CPU's block.
pub fn current() -> &'static mut PerCpu {
    let p: u64;
    // SAFETY: GS base points at this CPU's PerCpu once init_this_cpu ran.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: the pointer was leaked from a Box and is only used by this CPU.
    unsafe { &mut *(p as *mut PerCpu) }
}

/// The executing CPU's index, or 0 before per-CPU setup (GS base still 0).
pub fn current_index() -> usize {
    // SAFETY: IA32_GS_BASE exists on every x86-64 CPU.
    let base = unsafe { arch::msr::rdmsr(arch::msr::IA32_GS_BASE) };
    if base == 0 {
        return 0;
    }
    current().index
}

pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

pub fn get(index: usize) -> Option<&'static PerCpu> {
    let p = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: non-null entries are leaked, never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}
