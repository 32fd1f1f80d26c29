//! A vCPU's architectural state as a value ([`VcpuImage`]) for snapshots:
//! captured from a parked vCPU (its VMCS loaded here for the VMREADs, then
//! VMCLEARed again), restored by staging the VMCS part for the vCPU's next
//! slice (written after its VMCS is set up on the CPU that runs it) and
//! setting the rest at once.
use super::*;
use crate::vm::snapshot_format::{VcpuImage, VMCS_U32, VMCS_U64};
use crate::vmx::entry_check::{GuestState, Seg};
use alloc::boxed::Box;
use alloc::string::String;
use arch::vmx::instr;
use arch::vmx::vmcs::{ctrl, guest};

/// The VMCS fields besides [`GuestState`] that a snapshot keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmcsExtra {
    pub sysenter_cs: u32,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    /// What the guest reads as CR0/CR4 (the host owns some bits).
    pub cr0_shadow: u64,
    pub cr4_shadow: u64,
    /// Primary controls (interrupt/NMI-window exiting as they were) and
    /// entry controls (IA-32e mode guest follows EFER.LMA).
    pub primary: u32,
    pub entry: u32,
    pub entry_err_code: u32,
}

/// Puts the VMCS part of a vCPU into an image's field lists.
pub fn to_image(g: &GuestState, x: &VmcsExtra, img: &mut VcpuImage) {
    let s = &g.segs;
    img.vmcs64 = alloc::vec![
        g.cr0,
        g.cr3,
        g.cr4,
        g.dr7,
        g.rsp,
        g.rip,
        g.rflags,
        g.efer,
        g.pat,
        g.debugctl,
        s[0].base,
        s[1].base,
        s[2].base,
        s[3].base,
        s[4].base,
        s[5].base,
        s[6].base,
        s[7].base,
        g.gdtr_base,
        g.idtr_base,
        g.pending_dbg,
        x.sysenter_esp,
        x.sysenter_eip,
        x.cr0_shadow,
        x.cr4_shadow,
        g.link_ptr,
        0,
    ];
    img.vmcs32 = alloc::vec![
        s[0].limit,
        s[1].limit,
        s[2].limit,
        s[3].limit,
        s[4].limit,
        s[5].limit,
        s[6].limit,
        s[7].limit,
        s[0].ar,
        s[1].ar,
        s[2].ar,
        s[3].ar,
        s[4].ar,
        s[5].ar,
        s[6].ar,
        s[7].ar,
        g.gdtr_limit,
        g.idtr_limit,
        g.activity,
        g.interruptibility,
        x.sysenter_cs,
        g.entry_intr_info,
        x.primary,
        x.entry,
        x.entry_err_code,
    ];
    img.selectors = core::array::from_fn(|i| s[i].sel);
    debug_assert_eq!(img.vmcs64.len(), VMCS_U64.len());
    debug_assert_eq!(img.vmcs32.len(), VMCS_U32.len());
}

/// The VMCS part of an image (None: it has none, or the lists are short).
pub fn from_image(img: &VcpuImage) -> Option<(GuestState, VmcsExtra)> {
    let (a, b) = (&img.vmcs64, &img.vmcs32);
    if a.len() != VMCS_U64.len() || b.len() != VMCS_U32.len() {
        return None;
    }
    let segs: [Seg; 8] = core::array::from_fn(|i| Seg {
        sel: img.selectors[i],
        base: a[10 + i],
        limit: b[i],
        ar: b[8 + i],
    });
    let g = GuestState {
        cr0: a[0],
        cr3: a[1],
        cr4: a[2],
        dr7: a[3],
        rsp: a[4],
        rip: a[5],
        rflags: a[6],
        efer: a[7],
        pat: a[8],
        debugctl: a[9],
        segs,
        gdtr_base: a[18],
        idtr_base: a[19],
        pending_dbg: a[20],
        link_ptr: a[25],
        gdtr_limit: b[16],
        idtr_limit: b[17],
        activity: b[18],
        interruptibility: b[19],
        entry_intr_info: b[21],
    };
    let x = VmcsExtra {
        sysenter_esp: a[21],
        sysenter_eip: a[22],
        cr0_shadow: a[23],
        cr4_shadow: a[24],
        sysenter_cs: b[20],
        primary: b[22],
        entry: b[23],
        entry_err_code: b[24],
    };
    Some((g, x))
}

/// The part of a restored vCPU's state written into its VMCS at its next
/// slice, after the VMCS is set up on that CPU.
#[derive(Clone, Debug)]
pub struct Staged {
    pub guest: GuestState,
    pub extra: VmcsExtra,
    /// The vCPU's TSC offset (the VM's new offset plus its own delta).
    pub tsc_offset: u64,
    /// The GPRs again: `configure` sets the boot state's before this is
    /// applied.
    pub gprs: [u64; 16],
}

/// Bytes of a vCPU's XSAVE area a snapshot keeps.
pub fn xsave_len() -> usize {
    (crate::xsave::area_size() as usize).clamp(576, 2 * mm::PAGE as usize)
}

impl Vcpu {
    /// This parked vCPU's state. `vm_tsc_offset` is the VM's TSC offset.
    /// The vCPU must be released (VMCLEARed, as parked vCPUs are); its VMCS
    /// is made current here and cleared again.
    pub fn capture(&mut self, vm_tsc_offset: u64) -> Result<VcpuImage, String> {
        if self.active_on.is_some() {
            return Err(format!("vcpu {} is still active on a CPU", self.index));
        }
        if !self.configured && !self.wait_sipi {
            return Err(format!(
                "vcpu {} is starting up (start-up IPI received); try again",
                self.index
            ));
        }
        let mut img = VcpuImage {
            configured: self.configured,
            wait_sipi: self.wait_sipi,
            halted_noirq: self.halted_noirq,
            gprs: self.regs.gpr,
            xcr0: self.xcr0,
            misc_enable: self.msrs.misc_enable,
            switched_msrs: self.switched_msrs.to_vec(),
            debug_regs: self.debug_regs,
            cr2: self.cr2,
            init_cr0: self.init_cr0,
            pending_event: self.pending_event.map(|e| (e.info, e.error_code, e.len)),
            pending_cr2: self.pending_cr2,
            ..Default::default()
        };
        if self.configured {
            // SAFETY: the VMCS is this vCPU's and active on no CPU (parked).
            unsafe { instr::vmptrld(self.vmcs) }.map_err(|e| format!("VMPTRLD: {e}"))?;
            let g = GuestState::read_current()?;
            let x = VmcsExtra {
                sysenter_cs: rd(guest::IA32_SYSENTER_CS.read(), "IA32_SYSENTER_CS")?,
                sysenter_esp: rd(guest::IA32_SYSENTER_ESP.read(), "IA32_SYSENTER_ESP")?,
                sysenter_eip: rd(guest::IA32_SYSENTER_EIP.read(), "IA32_SYSENTER_EIP")?,
                cr0_shadow: rd(ctrl::CR0_READ_SHADOW.read(), "CR0_READ_SHADOW")?,
                cr4_shadow: rd(ctrl::CR4_READ_SHADOW.read(), "CR4_READ_SHADOW")?,
                primary: rd(
                    ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS.read(),
                    "PRIMARY_PROCBASED_EXEC_CONTROLS",
                )?,
                entry: rd(ctrl::VMENTRY_CONTROLS.read(), "VMENTRY_CONTROLS")?,
                entry_err_code: rd(
                    ctrl::VMENTRY_EXCEPTION_ERR_CODE.read(),
                    "VMENTRY_EXCEPTION_ERR_CODE",
                )?,
            };
            let off = rd(ctrl::TSC_OFFSET.read(), "TSC_OFFSET")?;
            // SAFETY: as above; VMCLEAR makes it loadable on any CPU again.
            unsafe { instr::vmclear(self.vmcs) }.map_err(|e| format!("VMCLEAR: {e}"))?;
            self.launched = false;
            // The snapshot starts a new dirty-log period: no cached EPT
            // translation may skip setting a dirty flag.
            self.last_cpu = None;
            to_image(&g, &x, &mut img);
            img.tsc_delta = off.wrapping_sub(vm_tsc_offset);
        }
        let n = xsave_len();
        // SAFETY: the area is this vCPU's 8 KiB allocation, not in use while parked.
        let area = unsafe { core::slice::from_raw_parts(self.xsave_area as *const u8, n) };
        img.xsave = area.to_vec();
        Ok(img)
    }

    /// Takes `img` as this (parked or not yet scheduled) vCPU's state: it
    /// continues from there at its next slice. `vm_tsc_offset` is the VM's
    /// TSC offset after the restore.
    pub fn restore_image(&mut self, img: &VcpuImage, vm_tsc_offset: u64) -> Result<(), String> {
        if self.active_on.is_some() {
            return Err(format!("vcpu {} is still active on a CPU", self.index));
        }
        if img.switched_msrs.len() != self.switched_msrs.len() || img.xsave.len() != xsave_len() {
            return Err(format!("vcpu {}: MSR or XSAVE layout differs", self.index));
        }
        let staged = if img.configured {
            let (guest, extra) =
                from_image(img).ok_or_else(|| format!("vcpu {}: VMCS fields", self.index))?;
            Some(Box::new(Staged {
                guest,
                extra,
                tsc_offset: vm_tsc_offset.wrapping_add(img.tsc_delta),
                gprs: img.gprs,
            }))
        } else if img.wait_sipi {
            None
        } else {
            return Err(format!("vcpu {}: neither running nor waiting", self.index));
        };
        self.regs.gpr = img.gprs;
        self.xcr0 = img.xcr0;
        self.msrs.misc_enable = img.misc_enable;
        self.switched_msrs.copy_from_slice(&img.switched_msrs);
        self.debug_regs = img.debug_regs;
        self.cr2 = img.cr2;
        self.init_cr0 = img.init_cr0;
        self.pending_event = img.pending_event.map(|(info, error_code, len)| Event {
            info,
            error_code,
            len,
        });
        self.pending_cr2 = img.pending_cr2;
        // SAFETY: as in `capture`.
        let area =
            unsafe { core::slice::from_raw_parts_mut(self.xsave_area as *mut u8, img.xsave.len()) };
        area.copy_from_slice(&img.xsave);
        self.wait_sipi = img.wait_sipi;
        self.set_halted_noirq(img.halted_noirq);
        if img.wait_sipi {
            self.vm.mailbox[self.index]
                .stuck
                .store(irq::WAIT_SIPI, core::sync::atomic::Ordering::SeqCst);
        }
        self.start_state = None;
        self.configured = false;
        self.launched = false;
        self.staged = staged;
        // Its RAM changed under its TLB entries (and the dirty log restarts).
        self.last_cpu = None;
        self.start_halted = img.halted;
        self.spin_tsc = 0;
        self.next_timer = 0;
        self.timers_dirty = true;
        Ok(())
    }

    /// Writes a staged restore into the VMCS, current and freshly set up on
    /// this CPU (by `configure`).
    pub(super) fn apply_staged(&mut self) -> Result<(), String> {
        let Some(s) = self.staged.take() else {
            return Ok(());
        };
        self.regs.gpr = s.gprs;
        let mut g = s.guest;
        // The event to inject is `pending_event`'s; an exit left none here.
        g.entry_intr_info = 0;
        vmcs_setup::write_guest_state(&g)?;
        let x = &s.extra;
        let r = |r: Result<(), arch::vmx::instr::VmFail>, f: &str| {
            r.map_err(|e| format!("VMWRITE of {f} failed: {e}"))
        };
        // SAFETY: this vCPU's VMCS is current on this CPU (run_slice).
        unsafe {
            r(guest::IA32_SYSENTER_CS.write(x.sysenter_cs), "sysenter cs")?;
            r(
                guest::IA32_SYSENTER_ESP.write(x.sysenter_esp),
                "sysenter esp",
            )?;
            r(
                guest::IA32_SYSENTER_EIP.write(x.sysenter_eip),
                "sysenter eip",
            )?;
            r(ctrl::CR0_READ_SHADOW.write(x.cr0_shadow), "cr0 shadow")?;
            r(ctrl::CR4_READ_SHADOW.write(x.cr4_shadow), "cr4 shadow")?;
            r(
                ctrl::PRIMARY_PROCBASED_EXEC_CONTROLS.write(x.primary),
                "primary controls",
            )?;
            r(ctrl::VMENTRY_CONTROLS.write(x.entry), "entry controls")?;
            r(
                ctrl::VMENTRY_EXCEPTION_ERR_CODE.write(x.entry_err_code),
                "entry error code",
            )?;
            r(ctrl::TSC_OFFSET.write(s.tsc_offset), "tsc offset")?;
        }
        Ok(())
    }
}

/// A checked VMREAD for the capture: a failure is a hypervisor bug, reported with the field.
fn rd<T>(r: Result<T, arch::vmx::instr::VmFail>, field: &'static str) -> Result<T, String> {
    r.map_err(|fail| {
        String::from(crate::exits::vmexit::VmcsError {
            write: false,
            field,
            fail,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmcs_fields_round_trip_through_an_image() {
        let mut g = GuestState {
            cr0: 0x8000_0031,
            cr3: 0x1000,
            cr4: 0x2020,
            dr7: 0x400,
            rsp: 0x7000,
            rip: 0x10_0000,
            rflags: 0x202,
            efer: 0xD01,
            pat: 0x0007_0406_0007_0406,
            debugctl: 0,
            gdtr_base: 0x5000,
            idtr_base: 0x6000,
            gdtr_limit: 0x27,
            idtr_limit: 0xFFF,
            activity: 0,
            interruptibility: 1,
            pending_dbg: 0x4000,
            link_ptr: u64::MAX,
            entry_intr_info: 0,
            ..Default::default()
        };
        for (i, s) in g.segs.iter_mut().enumerate() {
            *s = Seg {
                sel: 8 * i as u16,
                base: 0x1000 * i as u64,
                limit: 0xFFFF + i as u32,
                ar: 0x93 + i as u32,
            };
        }
        let x = VmcsExtra {
            sysenter_cs: 0x10,
            sysenter_esp: 0x9000,
            sysenter_eip: 0xA000,
            cr0_shadow: 0x11,
            cr4_shadow: 0x20,
            primary: 0x8401_E172,
            entry: 0x93FF,
            entry_err_code: 0,
        };
        let mut img = VcpuImage {
            configured: true,
            ..Default::default()
        };
        to_image(&g, &x, &mut img);
        let back = VcpuImage::decode(&img.encode()).unwrap();
        assert_eq!(from_image(&back), Some((g, x)));
        // Short field lists are refused, not read past.
        img.vmcs32.pop();
        assert_eq!(from_image(&img), None);
    }
}
