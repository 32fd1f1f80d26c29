//! What a vCPU starts with, as values: the VMX controls for this CPU's
//! capabilities and the guest-state fields for a start state (a loader's
//! boot state, or the real-mode state after a start-up IPI). `configure`
//! writes exactly these; the host tests run the software VM-entry checker
//! (SDM Vol. 3C 27.3.1) on them for every start state the loaders produce.
use super::DR7_INIT;
use crate::vmx::entry_check::{EntryContext, GuestState, Seg};
use crate::vmx::VmxCaps;
use arch::vmx::caps::{guest_cr0_fixed0, ControlError};
use arch::vmx::vmcs::bits;
use loader::setup::{self, Mode};
use loader::EntryState;

/// IA32_PAT at power-on (SDM Vol. 3A 13.12.4, Table 13-12).
pub const PAT_INIT: u64 = 0x0007_0406_0007_0406;
/// RFLAGS at power-on: only the fixed bit 1 (SDM Vol. 3A Table 10-1).
pub const RFLAGS_INIT: u64 = 0x2;

/// The VM-execution, VM-exit and VM-entry controls of a vCPU (SDM Vol. 3C
/// 25.6.1, 25.6.2, 25.7.1, 25.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub pin: u32,
    pub primary: u32,
    pub secondary: u32,
    pub exit: u32,
    pub entry: u32,
}

/// The controls for a CPU with `caps`, starting in `mode` (IA-32e mode
/// guest follows it, SDM Vol. 3C 25.8.1); `virtual_nmis` when the CPU offers
/// virtual NMIs and NMI-window exiting. Each control field is adjusted to
/// its capability MSR (SDM Vol. 3D A.3-A.5).
pub fn controls(caps: &VmxCaps, virtual_nmis: bool, mode: Mode) -> Result<Controls, ControlError> {
    // Virtual NMIs: the CPU tracks the guest's NMI blocking until its
    // IRET, so that every NMI is delivered once the previous one is handled.
    let pin = caps.pin.adjust(
        if virtual_nmis {
            bits::pin::VIRTUAL_NMIS
        } else {
            0
        },
        bits::pin::EXTERNAL_INTERRUPT_EXITING
            | bits::pin::NMI_EXITING
            | bits::pin::PREEMPTION_TIMER,
    )?;
    use bits::primary as p;
    let primary =
        caps.primary.adjust(
            p::MWAIT_EXITING | p::MONITOR_EXITING | p::RDPMC_EXITING | p::USE_TSC_OFFSETTING,
            p::HLT_EXITING
                | p::USE_IO_BITMAPS
                | p::USE_MSR_BITMAPS
                | p::ACTIVATE_SECONDARY_CONTROLS
                | p::CR8_LOAD_EXITING
                | p::CR8_STORE_EXITING,
        )? & !(p::CR3_LOAD_EXITING | p::CR3_STORE_EXITING | p::INVLPG_EXITING | p::RDTSC_EXITING)
            | (caps.primary.allowed0
                & (p::CR3_LOAD_EXITING | p::CR3_STORE_EXITING | p::INVLPG_EXITING));
    use bits::secondary as s;
    // XSAVES stays off (and hidden in CPUID): IA32_XSS isn't switched per vCPU.
    let mut want2 = s::ENABLE_RDTSCP | s::ENABLE_INVPCID;
    if caps.vpid {
        want2 |= s::ENABLE_VPID;
    }
    let secondary = caps
        .secondary
        .adjust(want2, s::ENABLE_EPT | s::UNRESTRICTED_GUEST)?;
    use bits::exit as x;
    let exit = caps.exit.adjust(
        x::SAVE_IA32_PAT | x::LOAD_IA32_PAT | x::SAVE_PREEMPTION_TIMER,
        x::HOST_ADDRESS_SPACE_SIZE
            | x::SAVE_DEBUG_CONTROLS
            | x::SAVE_IA32_EFER
            | x::LOAD_IA32_EFER
            | x::ACK_INTERRUPT_ON_EXIT,
    )?;
    use bits::entry as n;
    let mut entry = caps
        .entry
        .adjust(n::LOAD_IA32_PAT, n::LOAD_IA32_EFER | n::LOAD_DEBUG_CONTROLS)?;
    if mode == Mode::Long64 {
        entry |= n::IA32E_MODE_GUEST;
    } else {
        entry &= !n::IA32E_MODE_GUEST;
    }
    Ok(Controls {
        pin,
        primary,
        secondary,
        exit,
        entry,
    })
}

fn seg(s: setup::Seg) -> Seg {
    Seg {
        sel: s.sel,
        base: s.base,
        limit: s.limit,
        ar: s.ar,
    }
}

/// The guest-state fields (SDM Vol. 3C 25.4) for starting at `entry`, with
/// IA32_VMX_CR0_FIXED0 and IA32_VMX_CR4_FIXED0 (SDM Vol. 3D A.7, A.8)
/// forced into CR0 and CR4: the guest sees its own values through the read
/// shadows, and with unrestricted guest CR0.PE and PG are its own (SDM Vol.
/// 3C 27.3.1.1). DS's descriptor goes to ES, SS, FS and GS too; LDTR is
/// unusable (a present LDT at 0, limit 0xFFFF, in real mode, as after
/// RESET) and TR a present, busy TSS, as VM entry requires (27.3.1.2).
pub fn guest_state(entry: &EntryState, cr0_fixed0: u64, cr4_fixed0: u64) -> GuestState {
    let ds = seg(entry.ds);
    GuestState {
        cr0: entry.cr0 | guest_cr0_fixed0(cr0_fixed0, true),
        cr3: entry.cr3,
        cr4: entry.cr4 | cr4_fixed0,
        // DR7 and IA32_DEBUGCTL travel in the VMCS (debug-controls entry and
        // exit controls), so a breakpoint survives exits.
        dr7: DR7_INIT,
        rsp: entry.rsp,
        rip: entry.rip,
        rflags: RFLAGS_INIT,
        efer: entry.efer,
        pat: PAT_INIT,
        debugctl: 0,
        segs: [
            ds,
            seg(entry.cs),
            ds,
            ds,
            ds,
            ds,
            if entry.mode == Mode::Real16 {
                // As after RESET/INIT (SDM Vol. 3A Table 10-1): a present
                // LDT at 0 with limit 0xFFFF.
                Seg {
                    sel: 0,
                    base: 0,
                    limit: 0xFFFF,
                    ar: 0x82,
                }
            } else {
                Seg {
                    sel: 0,
                    base: 0,
                    limit: 0,
                    ar: 0x1_0000, // unusable
                }
            },
            Seg {
                sel: 0,
                base: 0,
                limit: 0xFFFF,
                ar: 0x8B, // present, busy TSS
            },
        ],
        gdtr_base: entry.gdt_base,
        idtr_base: 0,
        gdtr_limit: entry.gdt_limit,
        idtr_limit: 0xFFFF,
        activity: 0,
        interruptibility: 0,
        pending_dbg: 0,
        link_ptr: u64::MAX,
        entry_intr_info: 0,
    }
}

/// What the entry checks need besides the guest state, for `ctl` and the
/// CPU's fixed-bit MSRs and address widths.
pub fn entry_context(
    ctl: &Controls,
    fixed: [u64; 4],
    maxphyaddr: u8,
    linear_width: u8,
) -> EntryContext {
    let [cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1] = fixed;
    EntryContext {
        entry_controls: ctl.entry,
        secondary_controls: if ctl.primary & bits::primary::ACTIVATE_SECONDARY_CONTROLS != 0 {
            ctl.secondary
        } else {
            0
        },
        cr0_fixed0,
        cr0_fixed1,
        cr4_fixed0,
        cr4_fixed1,
        maxphyaddr,
        linear_width,
    }
}

/// CR0 after RESET: CD, NW and ET (SDM Vol. 3A Table 10-1).
pub const CR0_RESET: u64 = 0x6000_0010;
/// CR0.CD and CR0.NW, which INIT leaves as they were (Table 10-1, note 2).
pub const CR0_CD_NW: u64 = 0x6000_0000;
const CR0_ET: u64 = 0x10;

/// The state an application processor starts in after INIT and a start-up
/// IPI with `vector` (SDM Vol. 3A 9.4.4.2, 10.4.2; the registers as after
/// INIT, Table 10-1): real mode at vector:0000 with CS base vector << 12;
/// DS, ES, SS, FS and GS selector 0, base 0, limit 0xFFFF, present R/W data;
/// RSP and the other GPRs 0 but RDX, which holds the processor signature
/// (`signature`, CPUID.01H:EAX as the guest's CPUID gives it); CR0 ET and
/// the CD and NW of `cr0_before` (CR0 before the INIT; [`CR0_RESET`] if the
/// vCPU never ran), CR3, CR4 and EFER 0; GDTR and IDTR base 0 limit 0xFFFF.
pub fn sipi_state(vector: u8, signature: u32, cr0_before: u64) -> EntryState {
    let vector = u64::from(vector);
    let mut st = setup::real16(0);
    st.cs = setup::Seg {
        sel: (vector << 8) as u16,
        base: vector << 12,
        limit: 0xFFFF,
        ar: 0x9B,
    };
    st.rip = 0;
    st.rsp = 0;
    st.rdx = u64::from(signature);
    st.cr0 = CR0_ET | (cr0_before & CR0_CD_NW);
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::entry_check::{check_all, GuestStateError as E, SegReg};
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;
    use arch::vmx::caps::{ControlCaps, ControlKind as K, EptVpidCap, VmxBasic, VmxMisc};
    use core::cell::RefCell;
    use loader::{self, e820::GuestRam, manifest};

    const MIB: usize = 1 << 20;

    /// Zeroed guest RAM (all below the MMIO hole) for the loaders.
    struct Ram(RefCell<Vec<u8>>);

    impl Ram {
        fn new(size: usize) -> Self {
            Ram(RefCell::new(vec![0; size]))
        }
    }

    impl GuestRam for Ram {
        fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
            let start = usize::try_from(gpa).ok()?;
            let mut m = self.0.borrow_mut();
            m.get_mut(start..start.checked_add(data.len())?)?
                .copy_from_slice(data);
            Some(())
        }
        fn size(&self) -> u64 {
            self.0.borrow().len() as u64
        }
    }

    /// A CPU's VMX capabilities. `true_controls`: the default1 controls may
    /// be 0 (IA32_VMX_TRUE_*_CTLS, SDM Vol. 3D A.2), as under Bochs;
    /// otherwise CR3-load/store and INVLPG exiting are forced on.
    fn caps(true_controls: bool) -> VmxCaps {
        let ctl = |kind, allowed0: u32, allowed1: u32| {
            ControlCaps::from_msr(kind, (u64::from(allowed1) << 32) | u64::from(allowed0))
        };
        let (pin0, primary0, exit0, entry0) = if true_controls {
            (0x16, 0x0400_6172, 0x0003_6DFB, 0x0000_11FB)
        } else {
            (0x16, 0x0401_E172, 0x0003_6DFF, 0x0000_11FF)
        };
        VmxCaps {
            basic: VmxBasic::from_msr(4 | (0x1000 << 32) | (6 << 50) | (1 << 54) | (1 << 55)),
            pin: ctl(K::PinBased, pin0, 0xFF),
            primary: ctl(K::PrimaryProcBased, primary0, 0xFFF9_FFFE),
            // Bochs 2.7's IA32_VMX_PROCBASED_CTLS2 (ENVIRONMENT.md).
            secondary: ctl(K::SecondaryProcBased, 0, 0x0217_7FFF),
            exit: ctl(K::Exit, exit0, 0x003F_FFFF),
            entry: ctl(K::Entry, entry0, 0x0000_F3FF),
            misc: VmxMisc::from_msr(0x0300_01E5),
            ept: EptVpidCap::from_msr(0xF01_0633_4141),
            feature_control: 5,
            vpid: true,
        }
    }

    /// IA32_VMX_CR0_FIXED0/1 and CR4_FIXED0/1 of a typical CPU: PE, NE, PG
    /// and VMXE fixed to 1.
    const FIXED: [u64; 4] = [0x8000_0021, 0xFFFF_FFFF, 0x2000, 0x0037_67FF];

    /// The guest state and entry context `configure` builds for `st`.
    fn built(
        st: &EntryState,
        true_controls: bool,
        virtual_nmis: bool,
    ) -> (GuestState, EntryContext) {
        let ctl = controls(&caps(true_controls), virtual_nmis, st.mode).unwrap();
        let gs = guest_state(st, FIXED[0], FIXED[2]);
        (gs, entry_context(&ctl, FIXED, 39, 48))
    }

    fn guest(kind: &str) -> manifest::GuestConfig {
        let text = alloc::format!(
            "[[guest]]\nname = \"g\"\nmemory = \"64M\"\nimage = \"g.img\"\n{kind}\ncmdline = \"console=ttyS0\"\n"
        );
        let mut m = manifest::parse("t.toml", &text).unwrap();
        m.guests.remove(0)
    }

    /// Loads `image` as `kind` through the real loader into 64 MiB of RAM.
    fn load(kind: &str, image: &[u8]) -> EntryState {
        let ram = Ram::new(64 * MIB);
        loader::load(&guest(kind), image, None, &ram).unwrap()
    }

    fn put(b: &mut [u8], at: usize, v: &[u8]) {
        b[at..at + v.len()].copy_from_slice(v);
    }

    /// An ELF64 executable with one PT_LOAD of `code` at 1 MiB, entered at its start.
    fn elf64(code: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000 + code.len()];
        put(&mut b, 0, b"\x7fELF\x02\x01\x01");
        put(&mut b, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut b, 18, &62u16.to_le_bytes()); // EM_X86_64
        put(&mut b, 20, &1u32.to_le_bytes());
        put(&mut b, 24, &0x10_0000u64.to_le_bytes()); // e_entry
        put(&mut b, 32, &64u64.to_le_bytes()); // e_phoff
        put(&mut b, 52, &64u16.to_le_bytes()); // e_ehsize
        put(&mut b, 54, &56u16.to_le_bytes()); // e_phentsize
        put(&mut b, 56, &1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        put(&mut b, ph, &1u32.to_le_bytes()); // PT_LOAD
        put(&mut b, ph + 4, &5u32.to_le_bytes()); // R X
        put(&mut b, ph + 8, &0x1000u64.to_le_bytes()); // p_offset
        put(&mut b, ph + 16, &0x10_0000u64.to_le_bytes()); // p_vaddr
        put(&mut b, ph + 24, &0x10_0000u64.to_le_bytes()); // p_paddr
        put(&mut b, ph + 32, &(code.len() as u64).to_le_bytes());
        put(&mut b, ph + 40, &(code.len() as u64).to_le_bytes());
        put(&mut b, ph + 48, &0x1000u64.to_le_bytes());
        put(&mut b, 0x1000, code);
        b
    }

    /// A Multiboot image with the a.out kludge (Multiboot 0.6.96 3.1.1):
    /// loaded at 1 MiB, entered after its header.
    fn multiboot() -> Vec<u8> {
        let load = 0x10_0000u32;
        let flags = 0x0001_0003u32; // page align, memory info, addresses valid
        let mut b = Vec::new();
        for v in [
            0x1BAD_B002,
            flags,
            0u32.wrapping_sub(0x1BAD_B002).wrapping_sub(flags),
            load,         // header_addr
            load,         // load_addr
            load + 0x100, // load_end_addr
            load + 0x100, // bss_end_addr
            load + 32,    // entry_addr
        ] {
            b.extend_from_slice(&u32::to_le_bytes(v));
        }
        b.resize(0x100, 0xF4); // hlt
        b
    }

    /// A bzImage with a 2.15 setup header (Linux boot.rst) of a relocatable
    /// kernel at 16 MiB; `kernel64`: XLF_KERNEL_64 (64-bit entry at +0x200).
    fn bzimage(kernel64: bool) -> Vec<u8> {
        let setup_sects = 4u8;
        let off = (usize::from(setup_sects) + 1) * 512;
        let kernel_len = 0x1000usize;
        let mut b = vec![0u8; off + kernel_len];
        b[0x1F1] = setup_sects;
        put(
            &mut b,
            0x1F4,
            &((kernel_len as u32).div_ceil(16)).to_le_bytes(),
        );
        put(&mut b, 0x1FE, &0xAA55u16.to_le_bytes());
        put(&mut b, 0x200, &[0xEB, 0x6A]);
        put(&mut b, 0x202, b"HdrS");
        put(&mut b, 0x206, &0x020Fu16.to_le_bytes());
        b[0x211] = 1; // LOADED_HIGH
        put(&mut b, 0x214, &0x10_0000u32.to_le_bytes());
        put(&mut b, 0x22C, &0x7FFF_FFFFu32.to_le_bytes());
        put(&mut b, 0x230, &0x20_0000u32.to_le_bytes());
        b[0x234] = 1; // relocatable
        b[0x235] = 21;
        let xloadflags: u16 = if kernel64 { 0x7F } else { 0x1C };
        put(&mut b, 0x236, &xloadflags.to_le_bytes());
        put(&mut b, 0x238, &0x7FFu32.to_le_bytes());
        put(&mut b, 0x258, &0x100_0000u64.to_le_bytes());
        put(&mut b, 0x260, &0x10_0000u32.to_le_bytes());
        b
    }

    /// Every start state the loaders and the SIPI path produce, named.
    fn start_states() -> Vec<(String, EntryState)> {
        let code = [0xF4u8; 64];
        let flat = |mode: &str, load: u64, entry: u64| {
            let kind = alloc::format!(
                "kind = \"flat\"\nload = {load:#x}\nentry = {entry:#x}\nmode = \"{mode}\""
            );
            (
                alloc::format!("flat {mode} at {entry:#x}"),
                self::load(&kind, &code),
            )
        };
        let mut v = vec![
            flat("real16", 0x7C00, 0x7C00),
            // A real-mode entry above 64 KiB: CS base and selector nonzero.
            flat("real16", 0x9_1000, 0x9_1010),
            flat("prot32", 0x10_0000, 0x10_0000),
            flat("long64", 0x10_0000, 0x10_0010),
            (
                String::from("elf64"),
                load("kind = \"elf64\"", &elf64(&code)),
            ),
            (
                String::from("multiboot"),
                load("kind = \"multiboot\"", &multiboot()),
            ),
            (
                String::from("bzImage, 64-bit boot protocol"),
                load("kind = \"bzimage\"", &bzimage(true)),
            ),
            (
                String::from("bzImage, 32-bit boot protocol"),
                load("kind = \"bzimage\"", &bzimage(false)),
            ),
        ];
        // The AP start after INIT-SIPI-SIPI (an INIT puts any vCPU, the BSP
        // too, into wait-for-SIPI in software; it next enters from here).
        for vector in [0x00, 0x09, 0x9F, 0xFF] {
            v.push((
                alloc::format!("SIPI vector {vector:#x}"),
                sipi_state(vector, SKX_SIGNATURE, CR0_RESET),
            ));
        }
        // An AP that ran with caching on before its INIT.
        v.push((
            String::from("SIPI vector 0x9 after running"),
            sipi_state(0x09, SKX_SIGNATURE, 0x8000_0033),
        ));
        v
    }

    #[test]
    fn loaders_produce_what_they_promise() {
        // The test follows the loaders: each case is the mode it names.
        let modes: Vec<Mode> = start_states().iter().map(|(_, st)| st.mode).collect();
        use Mode::*;
        assert_eq!(
            modes,
            [
                Real16, Real16, Prot32, Long64, Long64, Prot32, Long64, Prot32, Real16, Real16,
                Real16, Real16, Real16
            ]
        );
        let st = sipi_state(0x9F, SKX_SIGNATURE, CR0_RESET);
        assert_eq!((st.cs.sel, st.cs.base, st.rip), (0x9F00, 0x9_F000, 0));
    }

    /// CPUID.01H:EAX of a Skylake-X (family 6, model 0x55, stepping 4).
    const SKX_SIGNATURE: u32 = 0x0005_0654;

    /// What an AP sees at its first instruction after INIT-SIPI: the values
    /// of SDM Vol. 3A Table 10-1 (INIT column), with CS from the vector
    /// (9.4.4.2), and what the VMCS gets for them.
    #[test]
    fn sipi_start_is_the_init_state_of_table_10_1() {
        for (vector, cr0_before, cr0) in [
            (0x09u8, CR0_RESET, 0x6000_0010),
            (0x9F, 0x8000_0033, 0x10), // ran with caching on
            (0x10, 0xE000_0031, 0x6000_0010),
            (0x10, 0x4000_0011, 0x4000_0010), // CD alone stays
        ] {
            let st = sipi_state(vector, SKX_SIGNATURE, cr0_before);
            let v = u64::from(vector);
            assert_eq!(st.mode, Mode::Real16);
            assert_eq!((st.rip, st.rsp), (0, 0), "EIP 0, ESP 0");
            assert_eq!((st.rax, st.rbx, st.rsi, st.rdi), (0, 0, 0, 0));
            assert_eq!(st.rdx, 0x0005_0654, "EDX: the processor signature");
            assert_eq!(st.cr0, cr0, "CR0 {cr0_before:#x} before");
            assert_eq!((st.cr3, st.cr4, st.efer), (0, 0, 0));
            assert_eq!(
                (st.cs.sel, st.cs.base, st.cs.limit),
                ((v << 8) as u16, v << 12, 0xFFFF)
            );
            assert_eq!(st.cs.ar, 0x9B, "CS: present, R/W code, accessed");
            assert_eq!(
                (st.ds.sel, st.ds.base, st.ds.limit, st.ds.ar),
                (0, 0, 0xFFFF, 0x93)
            );
            assert_eq!((st.gdt_base, st.gdt_limit), (0, 0xFFFF));

            let (gs, ctx) = built(&st, true, true);
            assert!(check_all(&gs, &ctx).is_empty());
            assert_eq!((gs.rip, gs.rsp, gs.rflags), (0, 0, 0x2), "EFLAGS 0x2");
            for r in [SegReg::Ds, SegReg::Es, SegReg::Ss, SegReg::Fs, SegReg::Gs] {
                let s = gs.seg(r);
                assert_eq!(
                    (s.sel, s.base, s.limit, s.ar),
                    (0, 0, 0xFFFF, 0x93),
                    "{r:?}"
                );
            }
            let cs = gs.seg(SegReg::Cs);
            assert_eq!(
                (cs.sel, cs.base, cs.limit, cs.ar),
                ((v << 8) as u16, v << 12, 0xFFFF, 0x9B)
            );
            let ldtr = gs.seg(SegReg::Ldtr);
            assert_eq!(
                (ldtr.sel, ldtr.base, ldtr.limit, ldtr.ar),
                (0, 0, 0xFFFF, 0x82),
                "LDTR"
            );
            let tr = gs.seg(SegReg::Tr);
            assert_eq!(
                (tr.sel, tr.base, tr.limit, tr.ar & 0x80),
                (0, 0, 0xFFFF, 0x80),
                "TR"
            );
            assert_eq!((gs.gdtr_base, gs.gdtr_limit), (0, 0xFFFF), "GDTR");
            assert_eq!((gs.idtr_base, gs.idtr_limit), (0, 0xFFFF), "IDTR");
            assert_eq!(gs.dr7, 0x400, "DR7");
            assert_eq!((gs.efer, gs.cr3, gs.cr4 & !FIXED[2]), (0, 0, 0));
            assert_eq!(gs.cr0 & 0x8000_0001, 0, "real mode, no paging");
            assert_eq!((gs.activity, gs.interruptibility), (0, 0));
        }
    }

    #[test]
    fn every_start_state_passes_the_vm_entry_checks() {
        for (name, st) in start_states() {
            for true_controls in [false, true] {
                for vnmi in [false, true] {
                    let (gs, ctx) = built(&st, true_controls, vnmi);
                    let errs = check_all(&gs, &ctx);
                    assert!(errs.is_empty(), "{name}: {errs:?}");
                }
            }
            // The loader's CR0/CR4 bits stay (the guest reads them through
            // the shadows); the real registers gain only fixed-to-1 bits, and
            // PE and PG stay the loader's (unrestricted guest).
            let (gs, ctx) = built(&st, true, true);
            assert_eq!(gs.cr0 & st.cr0, st.cr0, "{name}");
            assert_eq!(gs.cr0 & !st.cr0 & !FIXED[0], 0, "{name}");
            assert_eq!(gs.cr0 & 0x8000_0001, st.cr0 & 0x8000_0001, "{name}");
            assert_eq!(gs.cr4, st.cr4 | FIXED[2], "{name}");
            assert_eq!(
                (gs.rip, gs.rsp, gs.efer),
                (st.rip, st.rsp, st.efer),
                "{name}"
            );
            assert_eq!(gs.seg(SegReg::Cs).sel, st.cs.sel, "{name}");
            assert_eq!(
                ctx.entry_controls & bits::entry::IA32E_MODE_GUEST != 0,
                st.mode == Mode::Long64,
                "{name}"
            );
        }
    }

    /// The checker is not vacuous on these states: each broken variant fails
    /// with the rule it breaks.
    #[test]
    fn broken_variants_of_every_start_state_fail_the_checks() {
        type Breaker = fn(&mut GuestState, &mut EntryContext);
        type Expect = fn(&E) -> bool;
        let breakers: [(&str, Breaker, Expect); 7] = [
            (
                "RFLAGS bit 1 clear",
                |g, _| g.rflags = 0,
                |e| matches!(e, E::RflagsReserved { .. }),
            ),
            (
                "CR4.VMXE clear",
                |g, _| g.cr4 &= !0x2000,
                |e| matches!(e, E::Cr4Fixed { .. }),
            ),
            (
                "CR0.NE clear",
                |g, _| g.cr0 &= !0x20,
                |e| matches!(e, E::Cr0Fixed { .. }),
            ),
            (
                "IA-32e mode guest flipped",
                |_, c| c.entry_controls ^= bits::entry::IA32E_MODE_GUEST,
                |e| matches!(e, E::EferLmaMismatch { .. }),
            ),
            (
                "TR unusable",
                |g, _| g.seg_mut(SegReg::Tr).ar |= 0x1_0000,
                |e| matches!(e, E::TrUnusable { .. }),
            ),
            (
                "CS not present",
                |g, _| g.seg_mut(SegReg::Cs).ar &= !0x80,
                |e| matches!(e, E::NotPresent { .. }),
            ),
            (
                "VMCS link pointer unaligned",
                |g, _| g.link_ptr = 0x1234,
                |e| matches!(e, E::LinkPtrUnaligned { .. }),
            ),
        ];
        for (name, st) in start_states() {
            for (what, brk, expect) in breakers {
                let (mut gs, mut ctx) = built(&st, true, true);
                brk(&mut gs, &mut ctx);
                let errs = check_all(&gs, &ctx);
                assert!(errs.iter().any(expect), "{name}, {what}: {errs:?}");
            }
        }
    }
}
