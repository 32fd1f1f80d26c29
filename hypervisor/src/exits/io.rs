//! I/O instructions: decoded from the exit qualification (SDM Vol. 3C
//! 28.2.1, Table 28-5) and sent to the device model that owns the port.
//! INS/OUTS take their address size and segment from the VM-exit
//! instruction-information field (SDM Vol. 3C 28.2.5, Table 28-8) where the
//! CPU reports it (IA32_VMX_BASIC bit 54), else from the instruction's
//! prefixes, and run in the string engine (`string.rs`) through the guest's
//! segmentation and paging: #GP/#SS/#PF go to the guest as hardware raises
//! them, and a long REP is done in chunks with RIP kept on the instruction.
use super::decode::{self};
use super::string::{Dst, Src, StringInsn};
use crate::vm::gwalk;
use crate::vm::vcpu::{Flow, Vcpu};
use crate::vm::{Vm, VmEnd};
use crate::vmx::run::RAX;
use arch::vmx::exit::IoQualification;
use arch::vmx::vmcs::ro;

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

/// Address size (bytes) and segment of INS/OUTS from the instruction-
/// information field: bits 9:7 address size (0 = 16, 1 = 32, 2 = 64 bits),
/// bits 17:15 segment (OUTS only; INS always writes ES).
pub fn ins_outs_info(info: u32) -> (u8, u8) {
    let addr_size = match (info >> 7) & 7 {
        0 => 2,
        1 => 4,
        _ => 8,
    };
    (addr_size, ((info >> 15) & 7) as u8)
}

/// The string-engine form of an INS/OUTS exit.
pub fn string_insn(q: &IoQualification, addr_size: u8, seg: u8) -> StringInsn {
    let (src, dst) = if q.is_in {
        (Src::Port(q.port), Dst::Mem)
    } else {
        (Src::Mem(seg), Dst::Port(q.port))
    };
    StringInsn {
        src,
        dst,
        size: q.size,
        addr_size,
        rep: q.rep,
    }
}

fn string_io(v: &mut Vcpu, q: &IoQualification) -> Flow {
    let (addr_size, seg) = if crate::vmx::caps().basic.ins_outs_info {
        ins_outs_info(ro::VMEXIT_INSTRUCTION_INFO.read().unwrap_or(0))
    } else {
        let mut bytes = [0u8; 15];
        let n = match super::mmio::fetch(v, &mut bytes) {
            Ok(n) => n,
            Err(e) => return Flow::End(VmEnd::Crashed(alloc::format!("string I/O: {e}"))),
        };
        let p = decode::prefixes(&bytes[..n], super::mmio::cpu_mode());
        (p.addr_size, p.seg.unwrap_or(gwalk::DS))
    };
    let insn = string_insn(q, addr_size, seg);
    let len = ro::VMEXIT_INSTRUCTION_LEN.read().unwrap_or(0) as u64;
    super::mmio::run_string(v, &insn, len)
}

pub fn handle(v: &mut Vcpu) -> Flow {
    let q = IoQualification::decode(ro::EXIT_QUALIFICATION.read().unwrap_or(0));
    if q.string {
        return string_io(v, &q);
    }
    let mask: u64 = match q.size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    };
    if q.is_in {
        let val = v.vm.io_read(q.port, q.size);
        let rax = &mut v.regs.gpr[RAX];
        // A 32-bit IN zero-extends into RAX; 8/16-bit ones merge.
        *rax = if q.size == 4 {
            u64::from(val)
        } else {
            (*rax & !mask) | (u64::from(val) & mask)
        };
        v.advance_rip();
        Flow::Continue
    } else {
        let val = (v.regs.gpr[RAX] & mask) as u32;
        note_console_output(&v.vm, q.port);
        let end = crate::vm::request_end(v.vm.io_write(q.port, q.size, val));
        v.advance_rip();
        match end {
            None => Flow::Continue,
            Some(end) => Flow::End(end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
