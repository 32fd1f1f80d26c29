//! What exit handlers reach besides the [`Exit`](super::Exit): the vCPU's
//! registers and state the VMCS doesn't hold, its local APIC, its VM's
//! memory and devices. The run loop passes the [`Vcpu`]; host tests pass a
//! model of a vCPU (`exits/tests.rs`).
use super::mmio::{self, GuestEnv, VcpuBus};
use super::msr::MsrState;
use super::string::{self, Progress, Stop, StringInsn};
use super::vmexit::Emu;
use crate::vm::memory::Gpa;
use crate::vm::vcpu::Vcpu;
use crate::vm::VmEnd;
use devices::lapic::{Gp, VLapic};
use devices::Request;
use loader::manifest::UnmappedAccess;

pub trait Guest {
    /// The general-purpose registers the VMCS doesn't hold (RSP is in the
    /// [`Exit`](super::Exit) where a handler needs it; slot 4 is unused).
    fn gprs(&mut self) -> &mut [u64; 16];
    fn index(&self) -> usize;
    fn vcpus(&self) -> u32;
    fn xcr0(&self) -> u64;
    /// Sets the guest's XCR0 (already validated) on this CPU and for later.
    fn load_xcr0(&mut self, value: u64);
    /// The XCR0 components guests are offered.
    fn xcr0_supported(&self) -> u64;
    fn msrs(&mut self) -> &mut MsrState;
    /// This vCPU's local APIC, for reads and state that has no effects.
    fn lapic(&self) -> spin::MutexGuard<'_, VLapic>;
    /// WRMSR of an x2APIC register: the write and what it changed (EOI,
    /// IPI, timer) applied; `Err` is #GP.
    fn lapic_write_msr(&self, msr: u32, value: u64) -> Result<(), Gp>;
    /// WRMSR IA32_TSC_DEADLINE, its effects applied.
    fn lapic_write_tsc_deadline(&self, value: u64);
    fn guest_tsc(&self) -> u64;
    /// Copies guest RAM at `gpa`; false if any of it isn't RAM.
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> bool;
    fn console_write(&self, bytes: &[u8]);
    fn io_read(&self, port: u16, size: u8) -> u32;
    /// A port write, its effects applied; what the guest asked the
    /// platform to do.
    fn io_write(&self, port: u16, size: u8, value: u32) -> Request;
    /// Whether a device on the VM's bus (or this vCPU's local APIC page)
    /// claims `gpa`.
    fn device_at(&self, gpa: u64) -> bool;
    /// The manifest says `unmapped_access = "stop"`.
    fn unmapped_stop(&self) -> bool;
    /// An access to the empty bus: counted and logged, or the guest's end.
    fn unmapped(&self, gpa: u64, write: bool, rip: u64) -> Result<(), VmEnd>;
    /// One locked read-modify-write of `size` bytes at `gpa` (a device, RAM
    /// or the empty bus): `f` gets a reader and returns what to write.
    fn mmio_rmw(
        &mut self,
        gpa: u64,
        size: usize,
        writes: bool,
        rip: u64,
        f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    ) -> Result<(), VmEnd>;
    /// Runs a string instruction through the guest's segmentation and
    /// paging (see `string::run`), for up to [`mmio::REP_BUDGET`] iterations.
    fn run_string(
        &mut self,
        insn: &StringInsn,
        regs: &mut [u64; 16],
        emu: &Emu,
        rip: u64,
    ) -> Result<Progress, Stop<VmEnd>>;
}

impl Guest for Vcpu {
    fn gprs(&mut self) -> &mut [u64; 16] {
        &mut self.regs.gpr
    }

    fn index(&self) -> usize {
        self.index
    }

    fn vcpus(&self) -> u32 {
        self.vm.config.vcpus
    }

    fn xcr0(&self) -> u64 {
        self.xcr0
    }

    fn load_xcr0(&mut self, value: u64) {
        self.xcr0 = value;
        // SAFETY: the value passed the architectural checks for this CPU; the host
        // itself uses no extended state, so the guest's XCR0 stays loaded.
        unsafe { arch::regs::xsetbv(0, value) };
    }

    fn xcr0_supported(&self) -> u64 {
        crate::xsave::guest_mask()
    }

    fn msrs(&mut self) -> &mut MsrState {
        &mut self.msrs
    }

    fn lapic(&self) -> spin::MutexGuard<'_, VLapic> {
        self.vm.lapics[self.index].lock()
    }

    fn lapic_write_msr(&self, msr: u32, value: u64) -> Result<(), Gp> {
        self.vm.lapic_write_msr(self.index, msr, value)
    }

    fn lapic_write_tsc_deadline(&self, value: u64) {
        self.vm.lapic_write_tsc_deadline(self.index, value);
    }

    fn guest_tsc(&self) -> u64 {
        self.vm.guest_tsc()
    }

    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.vm.mem.read_into(Gpa(gpa), buf).is_ok()
    }

    fn console_write(&self, bytes: &[u8]) {
        self.vm.console_write(bytes);
    }

    fn io_read(&self, port: u16, size: u8) -> u32 {
        self.vm.io_read(port, size)
    }

    fn io_write(&self, port: u16, size: u8, value: u32) -> Request {
        super::io::note_console_output(&self.vm, port);
        self.vm.io_write(port, size, value)
    }

    fn device_at(&self, gpa: u64) -> bool {
        self.vm.mmio_claimed(self.index, gpa)
    }

    fn unmapped_stop(&self) -> bool {
        self.vm.config.unmapped_access == UnmappedAccess::Stop
    }

    fn unmapped(&self, gpa: u64, write: bool, rip: u64) -> Result<(), VmEnd> {
        super::ept::unmapped(&self.vm, gpa, write, rip)
    }

    fn mmio_rmw(
        &mut self,
        gpa: u64,
        size: usize,
        writes: bool,
        rip: u64,
        f: impl FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    ) -> Result<(), VmEnd> {
        let mut bus = VcpuBus {
            vm: &self.vm,
            idx: self.index,
            now: self.vm.guest_tsc(),
            rip,
        };
        bus.rmw(gpa, size, writes, f)
    }

    fn run_string(
        &mut self,
        insn: &StringInsn,
        regs: &mut [u64; 16],
        emu: &Emu,
        rip: u64,
    ) -> Result<Progress, Stop<VmEnd>> {
        let mut env = GuestEnv::new(&self.vm, self.index, emu, rip);
        string::run(insn, regs, emu.rflags, &mut env, mmio::REP_BUDGET)
    }
}
