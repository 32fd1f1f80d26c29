//! String instructions (INS, OUTS, MOVS, STOS, LODS), with and without REP,
//! as one engine: each iteration moves one element from its source (a port,
//! `seg:rSI` or the accumulator) to its destination (a port, `ES:rDI` or the
//! accumulator), then steps rSI/rDI by the element size (down when
//! RFLAGS.DF = 1) and, with REP, decrements rCX — all at the instruction's
//! address size (SDM Vol. 2 "INS", "OUTS", "MOVS", "STOS", "LODS", "REP";
//! Vol. 1 3.7.5: 16-bit address size uses and updates SI/DI/CX only).
//!
//! A REP instruction runs at most `budget` iterations per call; when that
//! leaves rCX non-zero the caller keeps RIP on the instruction so that it
//! executes (and exits) again, and interrupts are taken in between, as
//! hardware does between iterations (SDM Vol. 2 "REP": "the instruction can
//! be interrupted"). A fault leaves the registers as the completed
//! iterations left them, with RIP on the instruction.
use crate::vm::gwalk::{Fault, ES};

pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RSI: usize = 6;
pub const RDI: usize = 7;
const DF: u64 = 1 << 10;

/// Where an element comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    Port(u16),
    /// `seg:rSI`, `seg` in the instruction-information encoding (DS by default).
    Mem(u8),
    /// AL/AX/EAX/RAX.
    Acc,
}

/// Where an element goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dst {
    Port(u16),
    /// `ES:rDI` (no override possible).
    Mem,
    Acc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringInsn {
    pub src: Src,
    pub dst: Dst,
    /// Element size: 1, 2, 4 or 8.
    pub size: u8,
    /// Address size: 2, 4 or 8.
    pub addr_size: u8,
    pub rep: bool,
}

/// Why a string instruction stopped early.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop<E> {
    /// The guest gets this exception (RIP stays on the instruction).
    Fault(Fault),
    /// The emulation cannot go on (the guest ends, or a device asked to).
    End(E),
}

/// The rest of the machine, as a string instruction sees it.
pub trait StringEnv {
    type End;
    /// Reads `buf.len()` bytes at `seg:offset` (offset already truncated).
    fn read_mem(&mut self, seg: u8, offset: u64, buf: &mut [u8]) -> Result<(), Stop<Self::End>>;
    fn write_mem(&mut self, seg: u8, offset: u64, data: &[u8]) -> Result<(), Stop<Self::End>>;
    fn port_in(&mut self, port: u16, size: u8) -> u32;
    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop<Self::End>>;
}

/// How far the instruction got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Finished: advance RIP.
    Done,
    /// Iterations remain (rCX != 0): leave RIP on the instruction.
    Again,
}

fn mask(bytes: u8) -> u64 {
    match bytes {
        8 => u64::MAX,
        n => (1u64 << (8 * u32::from(n))) - 1,
    }
}

/// Writes an address-size register: 16-bit keeps bits 63:16, 32-bit
/// zero-extends (SDM Vol. 1 3.4.1.1), 64-bit replaces.
pub fn set_sized(reg: &mut u64, value: u64, size: u8) {
    *reg = match size {
        1 => (*reg & !0xFF) | (value & 0xFF),
        2 => (*reg & !0xFFFF) | (value & 0xFFFF),
        4 => value & 0xFFFF_FFFF,
        _ => value,
    };
}

/// Runs up to `budget` iterations (at least one) of `insn`.
pub fn run<E: StringEnv>(
    insn: &StringInsn,
    regs: &mut [u64; 16],
    rflags: u64,
    env: &mut E,
    budget: u64,
) -> Result<Progress, Stop<E::End>> {
    let am = mask(insn.addr_size);
    let size = usize::from(insn.size);
    let step = if rflags & DF != 0 {
        (u64::from(insn.size)).wrapping_neg()
    } else {
        u64::from(insn.size)
    };
    let iterations = if insn.rep {
        let count = regs[RCX] & am;
        if count == 0 {
            return Ok(Progress::Done);
        }
        count.min(budget.max(1))
    } else {
        1
    };
    for _ in 0..iterations {
        let mut buf = [0u8; 8];
        match insn.src {
            Src::Port(p) => {
                let v = env.port_in(p, insn.size);
                buf[..4].copy_from_slice(&v.to_le_bytes());
            }
            Src::Mem(seg) => env.read_mem(seg, regs[RSI] & am, &mut buf[..size])?,
            Src::Acc => buf = regs[RAX].to_le_bytes(),
        }
        let value = u64::from_le_bytes(buf) & mask(insn.size);
        match insn.dst {
            Dst::Port(p) => env.port_out(p, insn.size, value as u32)?,
            Dst::Mem => env.write_mem(ES, regs[RDI] & am, &buf[..size])?,
            Dst::Acc => set_sized(&mut regs[RAX], value, insn.size),
        }
        if matches!(insn.src, Src::Mem(_)) {
            let v = regs[RSI].wrapping_add(step);
            set_sized(&mut regs[RSI], v, insn.addr_size);
        }
        if insn.dst == Dst::Mem {
            let v = regs[RDI].wrapping_add(step);
            set_sized(&mut regs[RDI], v, insn.addr_size);
        }
        if insn.rep {
            let v = regs[RCX].wrapping_sub(1);
            set_sized(&mut regs[RCX], v, insn.addr_size);
        }
    }
    if insn.rep && regs[RCX] & am != 0 {
        Ok(Progress::Again)
    } else {
        Ok(Progress::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::gwalk::DS;
    use std::collections::HashMap;
    use std::vec::Vec;

    /// Flat memory per segment (address = offset), a port that counts up from
    /// `next_in`, a log of port writes, and an optional faulting offset.
    #[derive(Default)]
    struct Env {
        mem: HashMap<(u8, u64), u8>,
        next_in: u32,
        out: Vec<(u16, u8, u32)>,
        fault_at: Option<u64>,
    }

    impl StringEnv for Env {
        type End = ();
        fn read_mem(&mut self, seg: u8, off: u64, buf: &mut [u8]) -> Result<(), Stop<()>> {
            if self.fault_at == Some(off) {
                return Err(Stop::Fault(Fault::Gp));
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *self.mem.get(&(seg, off + i as u64)).unwrap_or(&0);
            }
            Ok(())
        }
        fn write_mem(&mut self, seg: u8, off: u64, data: &[u8]) -> Result<(), Stop<()>> {
            if self.fault_at == Some(off) {
                return Err(Stop::Fault(Fault::Pf { cr2: off, code: 2 }));
            }
            for (i, b) in data.iter().enumerate() {
                self.mem.insert((seg, off + i as u64), *b);
            }
            Ok(())
        }
        fn port_in(&mut self, _port: u16, size: u8) -> u32 {
            let v = self.next_in;
            self.next_in = self.next_in.wrapping_add(1);
            (u64::from(v) & mask(size)) as u32
        }
        fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop<()>> {
            self.out.push((port, size, value));
            Ok(())
        }
    }

    fn insn(src: Src, dst: Dst, size: u8, addr_size: u8, rep: bool) -> StringInsn {
        StringInsn {
            src,
            dst,
            size,
            addr_size,
            rep,
        }
    }

    #[test]
    fn rep_outsb_sends_the_string_in_order() {
        let mut e = Env::default();
        for (i, b) in b"hello".iter().enumerate() {
            e.mem.insert((DS, 0x1000 + i as u64), *b);
        }
        let mut r = [0u64; 16];
        r[RSI] = 0x1000;
        r[RCX] = 5;
        let i = insn(Src::Mem(DS), Dst::Port(0x3F8), 1, 8, true);
        assert_eq!(run(&i, &mut r, 2, &mut e, 100), Ok(Progress::Done));
        let bytes: Vec<u8> = e.out.iter().map(|o| o.2 as u8).collect();
        assert_eq!(bytes, b"hello");
        assert!(e.out.iter().all(|o| o.0 == 0x3F8 && o.1 == 1));
        assert_eq!((r[RSI], r[RCX]), (0x1005, 0));
    }

    #[test]
    fn segment_override_is_used_for_the_source() {
        let mut e = Env::default();
        e.mem.insert((4, 0x10), 0xAB);
        let mut r = [0u64; 16];
        r[RSI] = 0x10;
        let i = insn(Src::Mem(4), Dst::Port(0x80), 1, 8, false);
        run(&i, &mut r, 2, &mut e, 1).unwrap();
        assert_eq!(e.out, [(0x80, 1, 0xAB)]);
    }

    #[test]
    fn rep_insw_stores_to_es_and_counts_down_with_df() {
        let mut e = Env {
            next_in: 0x1234,
            ..Default::default()
        };
        let mut r = [0u64; 16];
        r[RDI] = 0x2004;
        r[RCX] = 3;
        let i = insn(Src::Port(0x1F0), Dst::Mem, 2, 8, true);
        assert_eq!(run(&i, &mut r, 2 | DF, &mut e, 100), Ok(Progress::Done));
        assert_eq!(r[RDI], 0x2004 - 6);
        let w = |a: u64| u16::from_le_bytes([e.mem[&(ES, a)], e.mem[&(ES, a + 1)]]);
        assert_eq!((w(0x2004), w(0x2002), w(0x2000)), (0x1234, 0x1235, 0x1236));
    }

    #[test]
    fn insd_without_rep_does_one_element_and_keeps_rcx() {
        let mut e = Env {
            next_in: 0xFFFF_FFFF,
            ..Default::default()
        };
        let mut r = [0u64; 16];
        r[RDI] = 0x100;
        r[RCX] = 7;
        let i = insn(Src::Port(0x60), Dst::Mem, 4, 8, false);
        assert_eq!(run(&i, &mut r, 2, &mut e, 100), Ok(Progress::Done));
        assert_eq!((r[RDI], r[RCX]), (0x104, 7));
        assert_eq!(e.mem[&(ES, 0x103)], 0xFF);
    }

    #[test]
    fn address_size_masks_and_wraps_registers() {
        let mut e = Env::default();
        // 16-bit: DI wraps 0xFFFF -> 0x0000 inside the upper bits; CX counts.
        let mut r = [0u64; 16];
        r[RDI] = 0xAAAA_0000_1234_FFFF;
        r[RCX] = 0x5555_0000_0001_0002; // CX = 2: upper bits ignored
        let i = insn(Src::Acc, Dst::Mem, 1, 2, true);
        assert_eq!(run(&i, &mut r, 2, &mut e, 100), Ok(Progress::Done));
        assert_eq!(r[RDI], 0xAAAA_0000_1234_0001);
        assert_eq!(r[RCX], 0x5555_0000_0001_0000);
        assert!(e.mem.contains_key(&(ES, 0xFFFF)) && e.mem.contains_key(&(ES, 0)));
        // 32-bit (0x67 in 64-bit mode): the updated registers are zero-extended.
        let mut r = [0u64; 16];
        r[RSI] = 0xFFFF_FFFF_0000_0010;
        r[RCX] = 0xFFFF_FFFF_0000_0001;
        let i = insn(Src::Mem(DS), Dst::Port(0x80), 4, 4, true);
        run(&i, &mut r, 2, &mut e, 100).unwrap();
        assert_eq!((r[RSI], r[RCX]), (0x14, 0));
    }

    #[test]
    fn zero_count_does_nothing() {
        let mut e = Env::default();
        let mut r = [0u64; 16];
        r[RCX] = 0x1_0000; // CX = 0 at 16-bit address size
        let i = insn(Src::Mem(DS), Dst::Port(0x80), 1, 2, true);
        assert_eq!(run(&i, &mut r, 2, &mut e, 100), Ok(Progress::Done));
        assert!(e.out.is_empty());
        assert_eq!(r[RCX], 0x1_0000);
    }

    #[test]
    fn long_rep_is_done_in_chunks() {
        let mut e = Env::default();
        let mut r = [0u64; 16];
        r[RCX] = 10;
        let i = insn(Src::Mem(DS), Dst::Port(0x80), 1, 8, true);
        assert_eq!(run(&i, &mut r, 2, &mut e, 4), Ok(Progress::Again));
        assert_eq!((r[RCX], r[RSI], e.out.len()), (6, 4, 4));
        assert_eq!(run(&i, &mut r, 2, &mut e, 4), Ok(Progress::Again));
        assert_eq!(run(&i, &mut r, 2, &mut e, 4), Ok(Progress::Done));
        assert_eq!((r[RCX], r[RSI], e.out.len()), (0, 10, 10));
    }

    #[test]
    fn a_fault_leaves_the_completed_iterations() {
        let mut e = Env {
            fault_at: Some(0x102),
            ..Default::default()
        };
        let mut r = [0u64; 16];
        r[RDI] = 0x100;
        r[RCX] = 4;
        let i = insn(Src::Port(0x60), Dst::Mem, 1, 8, true);
        let res = run(&i, &mut r, 2, &mut e, 100);
        assert_eq!(
            res,
            Err(Stop::Fault(Fault::Pf {
                cr2: 0x102,
                code: 2
            }))
        );
        assert_eq!((r[RDI], r[RCX]), (0x102, 2));
    }

    #[test]
    fn movs_stos_lods() {
        let mut e = Env::default();
        for i in 0..8u64 {
            e.mem.insert((DS, 0x10 + i), i as u8 + 1);
        }
        let mut r = [0u64; 16];
        r[RSI] = 0x10;
        r[RDI] = 0x80;
        r[RCX] = 2;
        // rep movsd
        let i = insn(Src::Mem(DS), Dst::Mem, 4, 8, true);
        run(&i, &mut r, 2, &mut e, 100).unwrap();
        assert_eq!(e.mem[&(ES, 0x87)], 8);
        assert_eq!((r[RSI], r[RDI], r[RCX]), (0x18, 0x88, 0));
        // stosq
        r[RAX] = 0x1122_3344_5566_7788;
        let i = insn(Src::Acc, Dst::Mem, 8, 8, false);
        run(&i, &mut r, 2, &mut e, 100).unwrap();
        assert_eq!((e.mem[&(ES, 0x88)], e.mem[&(ES, 0x8F)]), (0x88, 0x11));
        // lodsw merges into AX; lodsd zero-extends.
        r[RSI] = 0x10;
        r[RAX] = u64::MAX;
        let i = insn(Src::Mem(DS), Dst::Acc, 2, 8, false);
        run(&i, &mut r, 2, &mut e, 100).unwrap();
        assert_eq!(r[RAX], 0xFFFF_FFFF_FFFF_0201);
        let i = insn(Src::Mem(DS), Dst::Acc, 4, 8, false);
        run(&i, &mut r, 2, &mut e, 100).unwrap();
        assert_eq!(r[RAX], 0x0605_0403);
    }
}
