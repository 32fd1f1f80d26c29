//! The VM's device glue: every port access and every MMIO access that is not
//! RAM goes to the VM's bus (or to the accessing vCPU's own local APIC, the
//! bus's per-vCPU window) with the guest's TSC as the time, and what it
//! changed comes back as one [`Effects`], which [`Vm::apply`] acts on. The
//! exit handlers make one call here per access.
use super::irq::Source;
use super::Vm;
use devices::lapic::Gp;
use devices::{Effects, MmioTarget, Request};

impl Vm {
    /// Host TSC at guest TSC `guest` (device deadlines are guest TSC values).
    fn host_deadline(&self, guest: Option<u64>) -> Option<u64> {
        guest.map(|g| self.host_tsc(g))
    }

    /// A port read by the guest.
    pub fn io_read(&self, port: u16, size: u8) -> u32 {
        let now = self.guest_tsc();
        let fx = self.shared.lock().io.io_read(port, size, now);
        let value = fx.value as u32;
        if !fx.is_quiet() {
            let _ = self.apply(Source::Platform, fx);
        }
        value
    }

    /// A port write by the guest; says what the guest asked the platform to do.
    pub fn io_write(&self, port: u16, size: u8, value: u32) -> Request {
        let now = self.guest_tsc();
        let fx = self
            .shared
            .lock()
            .io
            .io_write_mem(port, size, value, now, &self.mem);
        if fx.is_quiet() {
            return Request::None;
        }
        self.apply(Source::Platform, fx)
    }

    /// Whether a device claims guest-physical `gpa` for vCPU `idx`.
    pub fn mmio_claimed(&self, idx: usize, gpa: u64) -> bool {
        let base = self.lapics[idx].lock().mmio_base();
        self.map.mmio(gpa, Some(base)).is_some()
    }

    /// One MMIO read-modify-write by vCPU `idx` at `gpa` (see
    /// [`devices::mmio_rmw`]), decoded by the VM's address map with
    /// this vCPU's local APIC page. `Err(f)`: nothing claims `gpa`.
    pub fn mmio_rmw<F>(&self, idx: usize, gpa: u64, size: u8, f: F) -> Result<Request, F>
    where
        F: FnOnce(&mut dyn FnMut() -> u64) -> Option<u64>,
    {
        let now = self.guest_tsc();
        let mut l = self.lapics[idx].lock();
        let base = l.mmio_base();
        let Some(target) = self.map.mmio(gpa, Some(base)) else {
            return Err(f);
        };
        // Each arm applies its own Effects where it was built (no move of
        // it through a tuple), and only when the access changed something.
        Ok(match target {
            MmioTarget::LocalApic => {
                let fx = devices::mmio_rmw(&mut *l, gpa.wrapping_sub(base), size, now, f);
                drop(l);
                self.apply_unless_quiet(Source::Vcpu(idx), fx)
            }
            MmioTarget::Bus(target, first) => {
                drop(l);
                let fx = self
                    .shared
                    .lock()
                    .io
                    .mmio_rmw(target, first, gpa, size, now, f);
                self.apply_unless_quiet(Source::Platform, fx)
            }
        })
    }

    /// [`Vm::apply`] for an access that may have changed nothing (the
    /// common MMIO read): a quiet one asks nothing of the platform.
    #[inline(always)]
    fn apply_unless_quiet(&self, src: Source, fx: Effects) -> Request {
        if fx.is_quiet() {
            Request::None
        } else {
            self.apply(src, fx)
        }
    }

    /// WRMSR of an x2APIC register by vCPU `idx`.
    pub fn lapic_write_msr(&self, idx: usize, msr: u32, value: u64) -> Result<(), Gp> {
        let now = self.guest_tsc();
        let fx = self.lapics[idx].lock().write_msr(msr, value, now)?;
        let _ = self.apply(Source::Vcpu(idx), fx);
        Ok(())
    }

    /// WRMSR IA32_TSC_DEADLINE by vCPU `idx`.
    pub fn lapic_write_tsc_deadline(&self, idx: usize, value: u64) {
        let now = self.guest_tsc();
        let fx = self.lapics[idx].lock().write_tsc_deadline(value, now);
        let _ = self.apply(Source::Vcpu(idx), fx);
    }

    /// A byte typed on the hypervisor console for this guest's UART.
    pub fn console_input(&self, byte: u8) {
        let now = self.guest_tsc();
        let fx = self.shared.lock().io.input(byte, now);
        if let Some(fx) = fx {
            let _ = self.apply(Source::Platform, fx);
        }
        self.kick(0);
    }

    /// Brings device time up to date and routes what changed (the BSP's run
    /// loop calls it when a deadline is due); returns the host TSC of the
    /// next device event.
    pub fn poll_devices(&self) -> Option<u64> {
        let now = self.guest_tsc();
        let mut fx: Effects = self.shared.lock().io.advance_mem(now, &self.mem);
        // The caller re-arms with the deadline: no need to mark it dirty.
        let next = fx.deadline.take().flatten();
        let _ = self.apply(Source::Platform, fx);
        self.host_deadline(next)
    }

    /// Host TSC of the next device event, without advancing anything.
    pub fn next_device_event(&self) -> Option<u64> {
        let next = self.shared.lock().io.next_deadline();
        self.host_deadline(next)
    }

    /// Whether the 8259 has a vector for vCPU 0 (LINT0 in ExtINT mode).
    pub fn pic_pending(&self) -> bool {
        self.shared.lock().io.pic.pending()
    }

    pub fn pic_acknowledge(&self) -> Option<u8> {
        self.shared.lock().io.pic.acknowledge()
    }
}
