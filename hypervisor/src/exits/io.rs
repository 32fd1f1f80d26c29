//! I/O instructions: decoded from the exit qualification (SDM Vol. 3C
//! 28.2.1, Table 28-5) and sent to the device model that owns the port.
//! INS/OUTS take their address size and segment from the VM-exit
//! instruction-information field (SDM Vol. 3C 28.2.5, Table 28-8) where the
//! CPU reports it (IA32_VMX_BASIC bit 54), else from the instruction's
//! prefixes, and run in the string engine (`string.rs`) through the guest's
//! segmentation and paging: #GP/#SS/#PF go to the guest as hardware raises
//! them, and a long REP is done in chunks with RIP kept on the instruction.
use super::vmexit::{Exit, Info};
use super::{Guest, Outcome};
use crate::vm::vcpu::Flow;
use crate::vm::{Vm, VmEnd};
use crate::vmx::run::RAX;
use devices::Request;

/// The first byte a guest writes to its console is reported once (start-up time).
pub fn note_console_output(vm: &Vm, port: u16) {
    use core::sync::atomic::Ordering;
    if port == 0x3F8 && !vm.first_output.swap(true, Ordering::Relaxed) {
        let t = arch::regs::rdtsc().saturating_sub(crate::vm::MANIFEST_TSC.load(Ordering::Relaxed));
        crate::println!(
            "vm {}: first output {t} TSC ticks after the manifest was read",
            vm.name
        );
    }
}

/// The result of an OUT's device access for the run loop.
pub fn request_flow(request: Request) -> Flow {
    match crate::vm::request_end(request) {
        None => Flow::Continue,
        Some(end) => Flow::End(end),
    }
}

/// IN/OUT and INS/OUTS.
// Inlined into its class path of `exits::run`, where the apply step then
// sees the Outcome's constant parts (no writes, the RIP advance).
#[inline(always)]
pub fn handle<G: Guest>(g: &mut G, e: &Exit) -> Outcome {
    let Info::Io(io) = &e.info else {
        return super::wrong_info(e);
    };
    let q = io.q;
    match &io.string {
        Some(Ok((insn, emu))) => return super::mmio::run_string(g, e, insn, emu, e.len),
        Some(Err(la)) => {
            return Outcome::end(VmEnd::Crashed(alloc::format!(
                "string I/O: cannot fetch the instruction at rip {la:#x}"
            )))
        }
        None => {}
    }
    let mask: u64 = match q.size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    };
    if q.is_in {
        let val = g.io_read(q.port, q.size);
        let rax = &mut g.gprs()[RAX];
        // A 32-bit IN zero-extends into RAX; 8/16-bit ones merge.
        *rax = if q.size == 4 {
            u64::from(val)
        } else {
            (*rax & !mask) | (u64::from(val) & mask)
        };
        Outcome::advance(e.len)
    } else {
        let val = (g.gprs()[RAX] & mask) as u32;
        let request = g.io_write(q.port, q.size, val);
        Outcome::advance(e.len).with_flow(request_flow(request))
    }
}

#[cfg(test)]
mod tests {
    use super::super::string::{Dst, Src};
    use super::super::vmexit::{ins_outs_info, string_insn};
    use crate::vm::gwalk;
    use arch::vmx::exit::IoQualification;

    #[test]
    fn instruction_information_fields() {
        // 16-bit addresses, ES; 32-bit, FS (4 << 15); 64-bit, DS.
        assert_eq!(ins_outs_info(0), (2, 0));
        assert_eq!(ins_outs_info((1 << 7) | (4 << 15)), (4, 4));
        assert_eq!(ins_outs_info((2 << 7) | (3 << 15)), (8, 3));
    }

    #[test]
    fn ins_writes_es_outs_reads_the_segment() {
        // rep insw from 0x1F0; outsb to 0x3F8 with a GS override.
        let ins = IoQualification::decode(0x01F0_0000 | 1 | 8 | 16 | 32);
        let i = string_insn(&ins, 8, gwalk::GS);
        assert_eq!(
            (i.src, i.dst, i.size, i.rep),
            (Src::Port(0x1F0), Dst::Mem, 2, true)
        );
        let outs = IoQualification::decode(0x03F8_0000 | 16);
        let o = string_insn(&outs, 4, gwalk::GS);
        assert_eq!(
            (o.src, o.dst, o.size, o.addr_size, o.rep),
            (Src::Mem(gwalk::GS), Dst::Port(0x3F8), 1, 4, false)
        );
    }
}
