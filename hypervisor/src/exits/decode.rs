//! A minimal x86 instruction decoder for emulating the MMIO accesses that end
//! in EPT violations. The exit gives the guest-physical address and whether it
//! was a read or a write (SDM Vol. 3C 28.2.1), not the data, so the handler
//! decodes the instruction at RIP to learn the width, the register or
//! immediate involved and the instruction length.
//!
//! Covered (SDM Vol. 2): MOV 88/89/8A/8B, MOV C6 /0, C7 /0, MOV A0-A3 (moffs),
//! MOVZX 0F B6/B7, MOVSX 0F BE/BF, the ALU forms ADD/OR/ADC/SBB/AND/SUB/XOR/CMP
//! 00-3B (r/m,r and r,r/m), 80/81/83 /digit, TEST 84/85, F6 /0, F7 /0,
//! XCHG 86/87 (with memory: always locked), BT/BTS/BTR/BTC 0F A3/AB/B3/BB and
//! 0F BA /4-/7, and the string forms MOVS A4/A5, STOS AA/AB, LODS AC/AD
//! (their operands are rSI/rDI: see [`prefixes`] for segment, REP and
//! address size). Prefixes: 66, 67, segment overrides, LOCK, REP, and REX in
//! 64-bit mode. Anything else is `Unsupported`. Only the memory operand's
//! length is decoded, not its address.
//!
//! Use:
//! 1. [`decode`] the bytes at RIP (up to 15; fewer if a page ends: a
//!    `Truncated` error asks for more).
//! 2. [`emulate`] with the guest GPRs (SDM order RAX=0 ... R15=15) and RFLAGS;
//!    it calls `read` for the data when the instruction reads memory and
//!    returns the value to write, if any ([`Decoded::size`] bytes). Or do it by
//!    hand with [`store_value`], [`apply_load`] and [`alu`].
//! 3. Advance RIP by [`Decoded::len`].

/// Code-segment mode, which fixes the default operand and address sizes
/// (SDM Vol. 1 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit code (real mode, or a 16-bit protected-mode segment).
    Real16,
    /// 32-bit protected mode.
    Prot32,
    /// 32-bit code in IA-32e compatibility mode (no REX prefixes).
    Compat,
    /// 64-bit mode.
    Long64,
}

/// The arithmetic or logic operation of a memory-operand ALU instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

impl AluOp {
    /// The /digit order of opcodes 80-83 and the 00-3B rows.
    const GROUP1: [AluOp; 8] = [
        AluOp::Add,
        AluOp::Or,
        AluOp::Adc,
        AluOp::Sbb,
        AluOp::And,
        AluOp::Sub,
        AluOp::Xor,
        AluOp::Cmp,
    ];

    /// False for CMP and TEST, which only set flags.
    pub fn writes_back(self) -> bool {
        !matches!(self, AluOp::Cmp | AluOp::Test)
    }
}

/// What the instruction does with the memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemOp {
    /// reg = mem.
    Load,
    /// mem = reg or imm.
    Store,
    /// reg = zero-extended mem (MOVZX).
    LoadZeroExtend,
    /// reg = sign-extended mem (MOVSX).
    LoadSignExtend,
    /// mem = mem op (reg or imm); CMP and TEST only set flags.
    ReadModifyWrite(AluOp),
    /// reg = reg op mem; CMP only sets flags.
    LoadAlu(AluOp),
    /// mem <-> reg (XCHG), one locked read-modify-write.
    Xchg,
    /// CF = the selected bit of mem; BTS/BTR/BTC then set/clear/flip it. The
    /// bit offset is `reg` or `imm`, taken modulo the operand width (the
    /// access that exited is the operand holding the bit).
    Bit(BitOp),
    /// A string instruction on rSI/rDI.
    String(StringOp),
}

/// BT, BTS, BTR, BTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    Bt,
    Bts,
    Btr,
    Btc,
}

/// String instructions with a memory operand on both or one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringOp {
    /// `ES:rDI = seg:rSI`.
    Movs,
    /// `ES:rDI = rAX`.
    Stos,
    /// `rAX = seg:rSI`.
    Lods,
}

impl MemOp {
    /// Whether the instruction reads the memory operand.
    pub fn reads(self) -> bool {
        !matches!(self, MemOp::Store | MemOp::String(StringOp::Stos))
    }

    /// Whether it may write the memory operand.
    pub fn writes(self) -> bool {
        match self {
            MemOp::Store => true,
            MemOp::ReadModifyWrite(op) => op.writes_back(),
            MemOp::Xchg => true,
            MemOp::Bit(op) => op != BitOp::Bt,
            MemOp::String(op) => op != StringOp::Lods,
            _ => false,
        }
    }
}

/// A general-purpose register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    /// SDM register number: 0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI,
    /// 7 RDI, 8-15 R8-R15.
    pub index: u8,
    /// AH, CH, DH or BH (bits 15:8 of registers 0-3): a byte register
    /// numbered 4-7 without a REX prefix (SDM Vol. 2 2.1.5, Table 3-1).
    pub high_byte: bool,
}

/// A decoded memory-access instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Instruction length in bytes.
    pub len: u8,
    pub op: MemOp,
    /// Bytes of memory accessed: 1, 2, 4 or 8.
    pub size: u8,
    /// The register operand: the source of a store or ALU operation, the
    /// destination of a load. `None` when the other operand is `imm`.
    pub reg: Option<Reg>,
    /// Width of the register operand in bytes (the destination width of
    /// MOVZX/MOVSX; otherwise equal to `size`).
    pub reg_size: u8,
    /// The immediate, sign-extended as the instruction does and truncated
    /// to `size` bytes.
    pub imm: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ran out before the instruction did.
    Truncated,
    /// Longer than the 15-byte limit (SDM Vol. 2 2.3.11): #GP in hardware.
    TooLong,
    /// Not an instruction this decoder handles: the opcode bytes, e.g.
    /// 0xA5 or 0x0FB6.
    Unsupported(u32),
    /// The ModRM names a register, not memory.
    NotMemoryOperand,
}

const MAX_LEN: usize = 15;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    fn next(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// A little-endian value of `n` bytes.
    fn take(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.next()?) << (8 * i);
        }
        Ok(v)
    }
}

fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        n => (1u64 << (8 * u32::from(n))) - 1,
    }
}

fn sign_extend(v: u64, size: u8) -> u64 {
    let shift = 64 - 8 * u32::from(size);
    (((v << shift) as i64) >> shift) as u64
}

/// Reads past a ModRM memory operand (SIB and displacement), SDM Vol. 2
/// 2.1.5 Tables 2-1 to 2-3 and 2.2.1.6 (RIP-relative is mod 00 r/m 101).
/// Returns the ModRM byte.
fn modrm(c: &mut Cursor, addr_size: u8) -> Result<u8, DecodeError> {
    let m = c.next()?;
    let (md, rm) = (m >> 6, m & 7);
    if md == 3 {
        return Err(DecodeError::NotMemoryOperand);
    }
    let disp = if addr_size == 2 {
        match md {
            0 if rm == 6 => 2,
            0 => 0,
            1 => 1,
            _ => 2,
        }
    } else {
        let mut disp = [0, 1, 4][usize::from(md)];
        if rm == 4 {
            let sib = c.next()?;
            if md == 0 && sib & 7 == 5 {
                disp = 4;
            }
        } else if md == 0 && rm == 5 {
            disp = 4;
        }
        disp
    };
    c.take(disp)?;
    Ok(m)
}

/// Decodes the instruction at the start of `bytes`. See the module
/// documentation for what is covered.
pub fn decode(bytes: &[u8], mode: Mode) -> Result<Decoded, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let (mut opsize, mut addrsize, mut rex) = (false, false, 0u8);
    loop {
        let b = c.peek()?;
        match b {
            0x66 => opsize = true,
            0x67 => addrsize = true,
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0xF0 | 0xF2 | 0xF3 => {}
            0x40..=0x4F if mode == Mode::Long64 => {
                rex = b;
                c.pos += 1;
                continue;
            }
            _ => break,
        }
        // A REX prefix counts only right before the opcode (SDM Vol. 2 2.2.1).
        rex = 0;
        c.pos += 1;
    }
    let rex_w = rex & 8 != 0;
    let rex_r = (rex & 4) << 1;
    // Operand and address sizes (SDM Vol. 1 3.6, Table 3-4).
    let osize: u8 = match mode {
        Mode::Long64 if rex_w => 8,
        Mode::Real16 if !opsize => 2,
        Mode::Real16 => 4,
        _ if opsize => 2,
        _ => 4,
    };
    let asize: u8 = match mode {
        Mode::Long64 if addrsize => 4,
        Mode::Long64 => 8,
        Mode::Real16 if addrsize => 4,
        Mode::Real16 => 2,
        _ if addrsize => 2,
        _ => 4,
    };
    let imm_size = |size: u8| if size == 2 { 2 } else { size.min(4) };
    // Byte registers 4-7 are AH-BH unless any REX prefix is present.
    let byte_reg = |n: u8| {
        if rex == 0 && (4..8).contains(&n) {
            Reg {
                index: n - 4,
                high_byte: true,
            }
        } else {
            Reg {
                index: n,
                high_byte: false,
            }
        }
    };
    let full_reg = |n: u8| Reg {
        index: n,
        high_byte: false,
    };
    let reg_of = |m: u8, size: u8| {
        let n = ((m >> 3) & 7) | rex_r;
        if size == 1 {
            byte_reg(n)
        } else {
            full_reg(n)
        }
    };

    let op = c.next()?;
    let d = |op: MemOp, size: u8, reg: Option<Reg>, imm: Option<u64>, c: &Cursor| Decoded {
        len: c.pos as u8,
        op,
        size,
        reg,
        reg_size: size,
        imm: imm.map(|v| v & mask(size)),
    };
    Ok(match op {
        // ALU r/m,r and r,r/m rows (SDM Vol. 2 Table A-2).
        0x00..=0x3F if op & 7 <= 3 => {
            let alu = AluOp::GROUP1[usize::from(op >> 3)];
            let size = if op & 1 == 0 { 1 } else { osize };
            let m = modrm(&mut c, asize)?;
            let kind = if op & 2 == 0 {
                MemOp::ReadModifyWrite(alu)
            } else {
                MemOp::LoadAlu(alu)
            };
            d(kind, size, Some(reg_of(m, size)), None, &c)
        }
        0x80 | 0x81 | 0x83 => {
            let m = modrm(&mut c, asize)?;
            let alu = AluOp::GROUP1[usize::from((m >> 3) & 7)];
            let (size, n) = match op {
                0x80 => (1, 1),
                0x81 => (osize, imm_size(osize)),
                _ => (osize, 1),
            };
            let imm = sign_extend(c.take(n)?, n);
            d(MemOp::ReadModifyWrite(alu), size, None, Some(imm), &c)
        }
        0x84 | 0x85 => {
            let size = if op == 0x84 { 1 } else { osize };
            let m = modrm(&mut c, asize)?;
            let kind = MemOp::ReadModifyWrite(AluOp::Test);
            d(kind, size, Some(reg_of(m, size)), None, &c)
        }
        0x88..=0x8B => {
            let size = if op & 1 == 0 { 1 } else { osize };
            let m = modrm(&mut c, asize)?;
            let kind = if op & 2 == 0 {
                MemOp::Store
            } else {
                MemOp::Load
            };
            d(kind, size, Some(reg_of(m, size)), None, &c)
        }
        0xA0..=0xA3 => {
            let size = if op & 1 == 0 { 1 } else { osize };
            c.take(asize)?;
            let kind = if op & 2 == 0 {
                MemOp::Load
            } else {
                MemOp::Store
            };
            d(kind, size, Some(full_reg(0)), None, &c)
        }
        0xC6 | 0xC7 | 0xF6 | 0xF7 => {
            let size = if op & 1 == 0 { 1 } else { osize };
            let m = modrm(&mut c, asize)?;
            if (m >> 3) & 7 != 0 {
                return Err(DecodeError::Unsupported(u32::from(op)));
            }
            let n = imm_size(size);
            let imm = sign_extend(c.take(n)?, n);
            let kind = if op < 0xF6 {
                MemOp::Store
            } else {
                MemOp::ReadModifyWrite(AluOp::Test)
            };
            d(kind, size, None, Some(imm), &c)
        }
        0x86 | 0x87 => {
            let size = if op == 0x86 { 1 } else { osize };
            let m = modrm(&mut c, asize)?;
            d(MemOp::Xchg, size, Some(reg_of(m, size)), None, &c)
        }
        0xA4 | 0xA5 | 0xAA | 0xAB | 0xAC | 0xAD => {
            let size = if op & 1 == 0 { 1 } else { osize };
            let kind = match op {
                0xA4 | 0xA5 => StringOp::Movs,
                0xAA | 0xAB => StringOp::Stos,
                _ => StringOp::Lods,
            };
            d(MemOp::String(kind), size, None, None, &c)
        }
        0x0F if matches!(c.peek()?, 0xA3 | 0xAB | 0xB3 | 0xBB) => {
            let op2 = c.next()?;
            let m = modrm(&mut c, asize)?;
            let bit = [BitOp::Bt, BitOp::Bts, BitOp::Btr, BitOp::Btc][usize::from((op2 >> 3) & 3)];
            // The bit offset is a full signed register, not `size` bytes of it.
            Decoded {
                imm: None,
                ..d(MemOp::Bit(bit), osize, Some(reg_of(m, osize)), None, &c)
            }
        }
        0x0F if c.peek()? == 0xBA => {
            c.next()?;
            let m = modrm(&mut c, asize)?;
            let bit = match (m >> 3) & 7 {
                4 => BitOp::Bt,
                5 => BitOp::Bts,
                6 => BitOp::Btr,
                7 => BitOp::Btc,
                _ => return Err(DecodeError::Unsupported(0x0FBA)),
            };
            let imm = c.take(1)?;
            d(MemOp::Bit(bit), osize, None, Some(imm), &c)
        }
        0x0F => {
            let op2 = c.next()?;
            let (kind, size) = match op2 {
                0xB6 => (MemOp::LoadZeroExtend, 1),
                0xB7 => (MemOp::LoadZeroExtend, 2),
                0xBE => (MemOp::LoadSignExtend, 1),
                0xBF => (MemOp::LoadSignExtend, 2),
                _ => return Err(DecodeError::Unsupported(0x0F00 | u32::from(op2))),
            };
            let m = modrm(&mut c, asize)?;
            Decoded {
                reg_size: osize,
                ..d(kind, size, Some(reg_of(m, osize)), None, &c)
            }
        }
        _ => return Err(DecodeError::Unsupported(u32::from(op))),
    })
}

fn read_reg(regs: &[u64; 16], r: Reg) -> u64 {
    let v = regs[usize::from(r.index & 15)];
    if r.high_byte {
        v >> 8
    } else {
        v
    }
}

/// Writes `size` bytes of `value` into a register: 8- and 16-bit writes
/// keep the other bits, 32-bit writes zero bits 63:32 (SDM Vol. 1 3.4.1.1).
fn write_reg(regs: &mut [u64; 16], r: Reg, size: u8, value: u64) {
    let slot = &mut regs[usize::from(r.index & 15)];
    *slot = match size {
        1 if r.high_byte => (*slot & !0xFF00) | ((value & 0xFF) << 8),
        1 => (*slot & !0xFF) | (value & 0xFF),
        2 => (*slot & !0xFFFF) | (value & 0xFFFF),
        4 => value & 0xFFFF_FFFF,
        _ => value,
    };
}

/// The source operand of a store or ALU instruction (immediate or register),
/// truncated to `d.size` bytes: for a store, the value to write.
pub fn store_value(regs: &[u64; 16], d: &Decoded) -> u64 {
    let v = match (d.imm, d.reg) {
        (Some(imm), _) => imm,
        (None, Some(r)) => read_reg(regs, r),
        (None, None) => 0,
    };
    v & mask(d.size)
}

/// Completes a load (`Load`, `LoadZeroExtend`, `LoadSignExtend`) with the
/// `d.size` bytes read from the device: extends them as the instruction says
/// and writes `d.reg_size` bytes of the register. Other operations are left
/// alone (see [`emulate`]).
pub fn apply_load(regs: &mut [u64; 16], d: &Decoded, value: u64) {
    let Some(r) = d.reg else {
        return;
    };
    let v = match d.op {
        MemOp::Load | MemOp::LoadZeroExtend => value & mask(d.size),
        MemOp::LoadSignExtend => sign_extend(value, d.size),
        _ => return,
    };
    write_reg(regs, r, d.reg_size, v);
}

// RFLAGS bits (SDM Vol. 1 3.4.3.1).
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// `dst op src` on `size`-byte operands, as the instruction pages of SDM
/// Vol. 2 define result and flags (AND/OR/XOR/TEST clear CF, OF and the
/// undefined AF). Returns the result and the new RFLAGS; ADC/SBB take CF
/// from `rflags`.
pub fn alu(op: AluOp, size: u8, dst: u64, src: u64, rflags: u64) -> (u64, u64) {
    let m = mask(size);
    let sign = 1u64 << (8 * u32::from(size) - 1);
    let (a, b) = (dst & m, src & m);
    let carry_in = u64::from(rflags & CF != 0);
    let (r, cf, of, af) = match op {
        AluOp::Add | AluOp::Adc => {
            let c = if op == AluOp::Adc { carry_in } else { 0 };
            let full = u128::from(a) + u128::from(b) + u128::from(c);
            let r = full as u64 & m;
            let of = (a ^ r) & (b ^ r) & sign != 0;
            (r, full > u128::from(m), of, (a ^ b ^ r) & 0x10 != 0)
        }
        AluOp::Sub | AluOp::Sbb | AluOp::Cmp => {
            let c = if op == AluOp::Sbb { carry_in } else { 0 };
            let r = a.wrapping_sub(b).wrapping_sub(c) & m;
            let cf = u128::from(a) < u128::from(b) + u128::from(c);
            let of = (a ^ b) & (a ^ r) & sign != 0;
            (r, cf, of, (a ^ b ^ r) & 0x10 != 0)
        }
        AluOp::And | AluOp::Test => (a & b, false, false, false),
        AluOp::Or => (a | b, false, false, false),
        AluOp::Xor => (a ^ b, false, false, false),
    };
    let mut f = rflags & !(CF | PF | AF | ZF | SF | OF);
    for (on, bit) in [
        (cf, CF),
        ((r as u8).count_ones() & 1 == 0, PF),
        (af, AF),
        (r == 0, ZF),
        (r & sign != 0, SF),
        (of, OF),
    ] {
        if on {
            f |= bit;
        }
    }
    (r, f)
}

/// Carries out a decoded instruction against a device: calls `read` once
/// for the `d.size` bytes at the faulting address when the instruction
/// reads memory, updates the registers and RFLAGS, and returns the value to
/// write there (`d.size` bytes), if any. RIP is the caller's to advance.
pub fn emulate(
    d: &Decoded,
    regs: &mut [u64; 16],
    rflags: &mut u64,
    read: impl FnOnce() -> u64,
) -> Option<u64> {
    match d.op {
        MemOp::Store => Some(store_value(regs, d)),
        MemOp::Load | MemOp::LoadZeroExtend | MemOp::LoadSignExtend => {
            apply_load(regs, d, read());
            None
        }
        MemOp::ReadModifyWrite(op) => {
            let (r, f) = alu(op, d.size, read(), store_value(regs, d), *rflags);
            *rflags = f;
            op.writes_back().then_some(r)
        }
        MemOp::LoadAlu(op) => {
            let mem = read();
            let reg = d.reg?;
            let (r, f) = alu(op, d.size, read_reg(regs, reg), mem, *rflags);
            *rflags = f;
            if op.writes_back() {
                write_reg(regs, reg, d.reg_size, r);
            }
            None
        }
        MemOp::Xchg => {
            let reg = d.reg?;
            let new = store_value(regs, d);
            write_reg(regs, reg, d.size, read());
            Some(new)
        }
        MemOp::Bit(op) => {
            let offset = match (d.imm, d.reg) {
                (Some(imm), _) => imm,
                (None, Some(r)) => read_reg(regs, r),
                (None, None) => 0,
            };
            let (r, f) = bit_op(op, d.size, read(), offset, *rflags);
            *rflags = f;
            (op != BitOp::Bt).then_some(r)
        }
        // Both operands may be memory: see `string::run`.
        MemOp::String(_) => None,
    }
}

/// BT/BTS/BTR/BTC on a `size`-byte operand: the bit `offset mod (8 * size)`
/// goes to CF and is then set, cleared or flipped; ZF is unaffected and
/// OF/SF/AF/PF (undefined) are kept (SDM Vol. 2 "BT"). Returns the new
/// operand value and RFLAGS.
pub fn bit_op(op: BitOp, size: u8, value: u64, offset: u64, rflags: u64) -> (u64, u64) {
    let bit = offset & (8 * u64::from(size) - 1);
    let m = 1u64 << bit;
    let f = if value & m != 0 {
        rflags | CF
    } else {
        rflags & !CF
    };
    let r = match op {
        BitOp::Bt => value,
        BitOp::Bts => value | m,
        BitOp::Btr => value & !m,
        BitOp::Btc => value ^ m,
    };
    (r & mask(size), f)
}

/// The legacy prefixes of an instruction that matter for its memory
/// operands: the segment override (instruction-information encoding, see
/// `gwalk::ES`..`GS`), REP/REPNE, and the address size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefixes {
    pub seg: Option<u8>,
    pub rep: bool,
    pub addr_size: u8,
}

/// Reads the prefixes at the start of `bytes` (SDM Vol. 2 2.1.1; the last
/// segment override wins; in 64-bit mode only FS and GS count). Stops at
/// the 15-byte limit.
pub fn prefixes(bytes: &[u8], mode: Mode) -> Prefixes {
    let mut p = Prefixes {
        seg: None,
        rep: false,
        addr_size: 0,
    };
    let mut addr = false;
    let long = mode == Mode::Long64;
    for &b in bytes.iter().take(MAX_LEN) {
        match b {
            // 64-bit mode ignores the ES, CS, SS and DS overrides (SDM Vol. 1 3.3.7.1).
            0x26 | 0x2E | 0x36 | 0x3E if long => {}
            0x26 => p.seg = Some(0),
            0x2E => p.seg = Some(1),
            0x36 => p.seg = Some(2),
            0x3E => p.seg = Some(3),
            0x64 => p.seg = Some(4),
            0x65 => p.seg = Some(5),
            0x67 => addr = true,
            0xF2 | 0xF3 => p.rep = true,
            0x66 | 0xF0 => {}
            0x40..=0x4F if mode == Mode::Long64 => {}
            _ => break,
        }
    }
    p.addr_size = match mode {
        Mode::Long64 if addr => 4,
        Mode::Long64 => 8,
        Mode::Real16 if addr => 4,
        Mode::Real16 => 2,
        _ if addr => 2,
        _ => 4,
    };
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use DecodeError as E;

    fn r(index: u8) -> Option<Reg> {
        Some(Reg {
            index,
            high_byte: false,
        })
    }

    fn hi(index: u8) -> Option<Reg> {
        Some(Reg {
            index,
            high_byte: true,
        })
    }

    fn dec(bytes: &[u8]) -> Decoded {
        decode(bytes, Mode::Long64).unwrap()
    }

    fn plain(len: u8, op: MemOp, size: u8, reg: Option<Reg>, imm: Option<u64>) -> Decoded {
        Decoded {
            len,
            op,
            size,
            reg,
            reg_size: size,
            imm,
        }
    }

    #[test]
    fn mov_loads_and_stores_64() {
        // mov eax, [rdi+0x320]
        assert_eq!(
            dec(&[0x8B, 0x87, 0x20, 0x03, 0x00, 0x00]),
            plain(6, MemOp::Load, 4, r(0), None)
        );
        // mov [rax], edx
        assert_eq!(dec(&[0x89, 0x10]), plain(2, MemOp::Store, 4, r(2), None));
        // mov [rax], bx
        assert_eq!(
            dec(&[0x66, 0x89, 0x18]),
            plain(3, MemOp::Store, 2, r(3), None)
        );
        // mov rax, [rax]
        assert_eq!(
            dec(&[0x48, 0x8B, 0x00]),
            plain(3, MemOp::Load, 8, r(0), None)
        );
        // mov [rax], r8d
        assert_eq!(
            dec(&[0x44, 0x89, 0x00]),
            plain(3, MemOp::Store, 4, r(8), None)
        );
        // mov r15, [rbx+rcx*8+0x10]
        assert_eq!(
            dec(&[0x4C, 0x8B, 0x7C, 0xCB, 0x10]),
            plain(5, MemOp::Load, 8, r(15), None)
        );
        // mov eax, [r13+0] (r/m 101 with mod 01 still needs its disp8)
        assert_eq!(
            dec(&[0x41, 0x8B, 0x45, 0x00]),
            plain(4, MemOp::Load, 4, r(0), None)
        );
        // mov cl, [rsi]
        assert_eq!(dec(&[0x8A, 0x0E]), plain(2, MemOp::Load, 1, r(1), None));
    }

    #[test]
    fn byte_registers_with_and_without_rex() {
        // mov [0xfee00000], ah: SIB with no base and no index, disp32.
        assert_eq!(
            dec(&[0x88, 0x24, 0x25, 0x00, 0x00, 0xE0, 0xFE]),
            plain(7, MemOp::Store, 1, hi(0), None)
        );
        // mov [rax], dh
        assert_eq!(dec(&[0x88, 0x30]), plain(2, MemOp::Store, 1, hi(2), None));
        // mov [rax], sil (any REX selects SIL)
        assert_eq!(
            dec(&[0x40, 0x88, 0x30]),
            plain(3, MemOp::Store, 1, r(6), None)
        );
        // mov r9b, [rax]
        assert_eq!(
            dec(&[0x44, 0x8A, 0x08]),
            plain(3, MemOp::Load, 1, r(9), None)
        );
        // movzx esi, byte [rax]: the destination is never a high byte.
        assert_eq!(dec(&[0x0F, 0xB6, 0x30]).reg, r(6));
    }

    #[test]
    fn mov_immediates() {
        // mov dword [rip+0x1000], 0xdeadbeef
        assert_eq!(
            dec(&[0xC7, 0x05, 0x00, 0x10, 0x00, 0x00, 0xEF, 0xBE, 0xAD, 0xDE]),
            plain(10, MemOp::Store, 4, None, Some(0xDEAD_BEEF))
        );
        // mov qword [rax], -1 (imm32 sign-extended)
        assert_eq!(
            dec(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF]),
            plain(7, MemOp::Store, 8, None, Some(u64::MAX))
        );
        // mov word [rax], 0x1234
        assert_eq!(
            dec(&[0x66, 0xC7, 0x00, 0x34, 0x12]),
            plain(5, MemOp::Store, 2, None, Some(0x1234))
        );
        // mov byte [r12], 5 (REX.B r/m 100 still takes a SIB)
        assert_eq!(
            dec(&[0x41, 0xC6, 0x04, 0x24, 0x05]),
            plain(5, MemOp::Store, 1, None, Some(5))
        );
        // C7 /1 is not a MOV.
        assert_eq!(
            decode(&[0xC7, 0x08, 0, 0, 0, 0], Mode::Long64),
            Err(E::Unsupported(0xC7))
        );
    }

    #[test]
    fn movzx_movsx() {
        let zx = |len, size, reg, reg_size| Decoded {
            len,
            op: MemOp::LoadZeroExtend,
            size,
            reg: r(reg),
            reg_size,
            imm: None,
        };
        // movzx eax, byte [rcx]
        assert_eq!(dec(&[0x0F, 0xB6, 0x01]), zx(3, 1, 0, 4));
        // movzx edx, word [rdi+8]
        assert_eq!(dec(&[0x0F, 0xB7, 0x57, 0x08]), zx(4, 2, 2, 4));
        // movzx r10, word [rax]
        assert_eq!(dec(&[0x4C, 0x0F, 0xB7, 0x10]), zx(4, 2, 10, 8));
        // movsx eax, byte [rcx+2]
        let d = dec(&[0x0F, 0xBE, 0x41, 0x02]);
        assert_eq!(
            (d.op, d.size, d.reg_size, d.len),
            (MemOp::LoadSignExtend, 1, 4, 4)
        );
        // movsx rax, word [rcx]
        let d = dec(&[0x48, 0x0F, 0xBF, 0x01]);
        assert_eq!(
            (d.op, d.size, d.reg_size, d.len),
            (MemOp::LoadSignExtend, 2, 8, 4)
        );
        assert_eq!(
            decode(&[0x0F, 0xAE, 0x00], Mode::Long64),
            Err(E::Unsupported(0x0FAE))
        );
    }

    #[test]
    fn moffs_forms() {
        // mov eax, [moffs64]
        let b = [0xA1, 0x00, 0x03, 0xE0, 0xFE, 0, 0, 0, 0];
        assert_eq!(dec(&b), plain(9, MemOp::Load, 4, r(0), None));
        // mov [moffs32], al with 67 in 64-bit mode
        assert_eq!(
            dec(&[0x67, 0xA2, 0x00, 0x03, 0xE0, 0xFE]),
            plain(6, MemOp::Store, 1, r(0), None)
        );
        // mov [moffs64], rax
        let b = [0x48, 0xA3, 0, 0, 0xE0, 0xFE, 0, 0, 0, 0];
        assert_eq!(dec(&b), plain(10, MemOp::Store, 8, r(0), None));
        // 32-bit mode: mov [0xfee000b0], eax
        assert_eq!(
            decode(&[0xA3, 0xB0, 0x00, 0xE0, 0xFE], Mode::Prot32),
            Ok(plain(5, MemOp::Store, 4, r(0), None))
        );
        // 16-bit mode: mov al, [0x1234]
        assert_eq!(
            decode(&[0xA0, 0x34, 0x12], Mode::Real16),
            Ok(plain(3, MemOp::Load, 1, r(0), None))
        );
    }

    #[test]
    fn alu_forms() {
        use AluOp::*;
        use MemOp::{LoadAlu, ReadModifyWrite as Rmw};
        // or dword [rax+4], 1
        assert_eq!(
            dec(&[0x83, 0x48, 0x04, 0x01]),
            plain(4, Rmw(Or), 4, None, Some(1))
        );
        // and dword [rax+0x10], 0xfffeffff
        assert_eq!(
            dec(&[0x81, 0x60, 0x10, 0xFF, 0xFF, 0xFE, 0xFF]),
            plain(7, Rmw(And), 4, None, Some(0xFFFE_FFFF))
        );
        // and qword [rax], -0x10 (imm8 sign-extended to 64 bits)
        assert_eq!(
            dec(&[0x48, 0x83, 0x20, 0xF0]),
            plain(4, Rmw(And), 8, None, Some(0xFFFF_FFFF_FFFF_FFF0))
        );
        // lock or dword [rax], 0x10000
        assert_eq!(
            dec(&[0xF0, 0x81, 0x08, 0x00, 0x00, 0x01, 0x00]),
            plain(7, Rmw(Or), 4, None, Some(0x1_0000))
        );
        // cmp byte [rdx], 0x80
        assert_eq!(
            dec(&[0x80, 0x3A, 0x80]),
            plain(3, Rmw(Cmp), 1, None, Some(0x80))
        );
        // or [rdi], eax / or eax, [rdi] / and [rsi], ecx / and ecx, [rsi]
        assert_eq!(dec(&[0x09, 0x07]), plain(2, Rmw(Or), 4, r(0), None));
        assert_eq!(dec(&[0x0B, 0x07]), plain(2, LoadAlu(Or), 4, r(0), None));
        assert_eq!(dec(&[0x21, 0x0E]), plain(2, Rmw(And), 4, r(1), None));
        assert_eq!(dec(&[0x23, 0x0E]), plain(2, LoadAlu(And), 4, r(1), None));
        // add [rax], bl / sub rdx, [rax] / xor [rax], ax / cmp r8d, [rax]
        assert_eq!(dec(&[0x00, 0x18]), plain(2, Rmw(Add), 1, r(3), None));
        assert_eq!(
            dec(&[0x48, 0x2B, 0x10]),
            plain(3, LoadAlu(Sub), 8, r(2), None)
        );
        assert_eq!(dec(&[0x66, 0x31, 0x00]), plain(3, Rmw(Xor), 2, r(0), None));
        assert_eq!(
            dec(&[0x44, 0x3B, 0x00]),
            plain(3, LoadAlu(Cmp), 4, r(8), None)
        );
        // test [rdi], eax / test byte [rax], bh
        assert_eq!(dec(&[0x85, 0x07]), plain(2, Rmw(Test), 4, r(0), None));
        assert_eq!(dec(&[0x84, 0x38]), plain(2, Rmw(Test), 1, hi(3), None));
        // test dword [rax], 0x100 / test byte [rax+1], 0x80
        assert_eq!(
            dec(&[0xF7, 0x00, 0x00, 0x01, 0x00, 0x00]),
            plain(6, Rmw(Test), 4, None, Some(0x100))
        );
        assert_eq!(
            dec(&[0xF6, 0x40, 0x01, 0x80]),
            plain(4, Rmw(Test), 1, None, Some(0x80))
        );
        // F7 /3 is NEG: not handled.
        assert_eq!(
            decode(&[0xF7, 0x18], Mode::Long64),
            Err(E::Unsupported(0xF7))
        );
    }

    #[test]
    fn sixteen_and_thirty_two_bit_modes() {
        // mov ax, [bx]
        assert_eq!(
            decode(&[0x8B, 0x07], Mode::Real16),
            Ok(plain(2, MemOp::Load, 2, r(0), None))
        );
        // mov word [0x1234], 0xabcd (mod 00 r/m 110 is disp16)
        assert_eq!(
            decode(&[0xC7, 0x06, 0x34, 0x12, 0xCD, 0xAB], Mode::Real16),
            Ok(plain(6, MemOp::Store, 2, None, Some(0xABCD)))
        );
        // mov [bx+2], ax / mov [bx], eax (66 widens) / mov ax, [esp] (67 gives SIB)
        assert_eq!(decode(&[0x89, 0x47, 0x02], Mode::Real16).unwrap().len, 3);
        assert_eq!(
            decode(&[0x66, 0x89, 0x07], Mode::Real16),
            Ok(plain(3, MemOp::Store, 4, r(0), None))
        );
        assert_eq!(
            decode(&[0x67, 0x8B, 0x04, 0x24], Mode::Real16),
            Ok(plain(4, MemOp::Load, 2, r(0), None))
        );
        // 32-bit: mov word [eax], 0x1234; mov eax, [ebp+disp32]
        assert_eq!(
            decode(&[0x66, 0xC7, 0x00, 0x34, 0x12], Mode::Prot32),
            Ok(plain(5, MemOp::Store, 2, None, Some(0x1234)))
        );
        assert_eq!(
            decode(&[0x8B, 0x85, 0, 0, 0, 0], Mode::Compat),
            Ok(plain(6, MemOp::Load, 4, r(0), None))
        );
        // 32-bit with 67: 16-bit addressing, mod 10 disp16
        assert_eq!(
            decode(&[0x67, 0x89, 0x87, 0, 0], Mode::Prot32).unwrap().len,
            5
        );
        // No REX outside 64-bit mode: 0x48 is DEC EAX.
        assert_eq!(
            decode(&[0x48, 0x8B, 0x00], Mode::Compat),
            Err(E::Unsupported(0x48))
        );
    }

    #[test]
    fn prefix_rules() {
        // A REX followed by a legacy prefix is ignored: this is a 16-bit store.
        assert_eq!(
            dec(&[0x48, 0x66, 0x89, 0x00]),
            plain(4, MemOp::Store, 2, r(0), None)
        );
        // REX.W beats 66.
        assert_eq!(dec(&[0x66, 0x48, 0x89, 0x00]).size, 8);
        // Segment override and REP are skipped.
        assert_eq!(
            dec(&[0x64, 0xF3, 0x8B, 0x00]),
            plain(4, MemOp::Load, 4, r(0), None)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            decode(&[0x89, 0xC0], Mode::Long64),
            Err(E::NotMemoryOperand)
        );
        assert_eq!(decode(&[], Mode::Long64), Err(E::Truncated));
        assert_eq!(decode(&[0x8B], Mode::Long64), Err(E::Truncated));
        assert_eq!(decode(&[0x8B, 0x87, 0x20], Mode::Long64), Err(E::Truncated));
        assert_eq!(decode(&[0x66, 0x66], Mode::Long64), Err(E::Truncated));
        assert_eq!(decode(&[0xC7, 0x00, 1, 2], Mode::Long64), Err(E::Truncated));
        // CMPS/SCAS are not handled.
        for op in [0xA6u8, 0xA7, 0xAE, 0xAF] {
            assert_eq!(
                decode(&[op], Mode::Long64),
                Err(E::Unsupported(u32::from(op)))
            );
        }
        // 0F BA /0-/3 is undefined.
        assert_eq!(
            decode(&[0x0F, 0xBA, 0x00, 1], Mode::Long64),
            Err(E::Unsupported(0x0FBA))
        );
        // Fifteen bytes of prefixes leave no room for an opcode.
        assert_eq!(decode(&[0x66; 20], Mode::Long64), Err(E::TooLong));
        let mut long = [0x2E; 16];
        long[13] = 0x8B;
        long[14] = 0x80;
        assert_eq!(decode(&long, Mode::Long64), Err(E::TooLong));
        // Exactly 15 bytes is fine.
        let mut ok = [0x2E; 15];
        ok[9..15].copy_from_slice(&[0x8B, 0x80, 0, 0, 0, 0]);
        assert_eq!(decode(&ok, Mode::Long64).unwrap().len, 15);
    }

    #[test]
    fn load_width_semantics() {
        let mut regs = [0xFFFF_FFFF_FFFF_FFFFu64; 16];
        // 32-bit destination zero-extends.
        apply_load(&mut regs, &dec(&[0x8B, 0x00]), 0x1234_5678);
        assert_eq!(regs[0], 0x1234_5678);
        // 16-bit and 8-bit destinations merge.
        apply_load(&mut regs, &dec(&[0x66, 0x8B, 0x08]), 0xABCD);
        assert_eq!(regs[1], 0xFFFF_FFFF_FFFF_ABCD);
        apply_load(&mut regs, &dec(&[0x8A, 0x10]), 0x42);
        assert_eq!(regs[2], 0xFFFF_FFFF_FFFF_FF42);
        // mov ah, [rax]
        apply_load(&mut regs, &dec(&[0x8A, 0x20]), 0x99);
        assert_eq!(regs[0], 0x1234_9978);
        // 64-bit, and extra bytes above `size` are ignored.
        apply_load(&mut regs, &dec(&[0x4C, 0x8B, 0x18]), 0x0102_0304_0506_0708);
        assert_eq!(regs[11], 0x0102_0304_0506_0708);
        apply_load(&mut regs, &dec(&[0x8A, 0x18]), 0xAB12);
        assert_eq!(regs[3], 0xFFFF_FFFF_FFFF_FF12);
        // movzx / movsx
        apply_load(&mut regs, &dec(&[0x0F, 0xB6, 0x30]), 0x80);
        assert_eq!(regs[6], 0x80);
        apply_load(&mut regs, &dec(&[0x0F, 0xBE, 0x38]), 0x80);
        assert_eq!(regs[7], 0xFFFF_FF80);
        apply_load(&mut regs, &dec(&[0x48, 0x0F, 0xBF, 0x28]), 0x8000);
        assert_eq!(regs[5], 0xFFFF_FFFF_FFFF_8000);
        apply_load(&mut regs, &dec(&[0x66, 0x0F, 0xBE, 0x20]), 0xFE);
        assert_eq!(regs[4], 0xFFFF_FFFF_FFFF_FFFE);
        // Not a load: registers untouched.
        let before = regs;
        apply_load(&mut regs, &dec(&[0x89, 0x00]), 0);
        assert_eq!(regs, before);
    }

    #[test]
    fn store_values() {
        let mut regs = [0u64; 16];
        regs[0] = 0x1122_3344_5566_7788;
        regs[8] = 0xAAAA_BBBB_CCCC_DDDD;
        assert_eq!(store_value(&regs, &dec(&[0x89, 0x00])), 0x5566_7788);
        assert_eq!(store_value(&regs, &dec(&[0x48, 0x89, 0x00])), regs[0]);
        assert_eq!(store_value(&regs, &dec(&[0x66, 0x89, 0x00])), 0x7788);
        assert_eq!(store_value(&regs, &dec(&[0x88, 0x00])), 0x88);
        assert_eq!(store_value(&regs, &dec(&[0x88, 0x20])), 0x77, "ah");
        assert_eq!(store_value(&regs, &dec(&[0x44, 0x89, 0x00])), 0xCCCC_DDDD);
        assert_eq!(
            store_value(&regs, &dec(&[0xC7, 0x00, 0x78, 0x56, 0x34, 0x12])),
            0x1234_5678
        );
    }

    #[test]
    fn alu_flags() {
        // add: carry, zero, parity
        let (r, f) = alu(AluOp::Add, 1, 0xFF, 1, 0);
        assert_eq!(
            (r, f & (CF | ZF | PF | AF | OF | SF)),
            (0, CF | ZF | PF | AF)
        );
        // add: signed overflow
        let (r, f) = alu(AluOp::Add, 4, 0x7FFF_FFFF, 1, 0);
        assert_eq!(r, 0x8000_0000);
        assert_eq!(f & (OF | SF | CF), OF | SF);
        // sub / cmp: borrow
        let (r, f) = alu(AluOp::Cmp, 2, 1, 2, 0);
        assert_eq!(r, 0xFFFF);
        assert_eq!(f & (CF | SF | ZF | OF), CF | SF);
        // adc and sbb use CF
        assert_eq!(alu(AluOp::Adc, 8, u64::MAX, 0, CF).0, 0);
        assert_ne!(alu(AluOp::Adc, 8, u64::MAX, 0, CF).1 & CF, 0);
        assert_eq!(alu(AluOp::Sbb, 4, 5, 2, CF).0, 2);
        assert_eq!(alu(AluOp::Sbb, 4, 0, 0, CF).1 & CF, CF);
        // logic ops clear CF/OF and keep other RFLAGS bits
        let (r, f) = alu(AluOp::And, 4, 0xF0, 0x0F, CF | OF | (1 << 9) | 2);
        assert_eq!((r, f), (0, ZF | PF | (1 << 9) | 2));
        assert_eq!(alu(AluOp::Xor, 1, 0x81, 0x01, 0).0, 0x80);
        assert_eq!(alu(AluOp::Or, 2, 0x100, 1, 0).1 & PF, 0);
    }

    #[test]
    fn emulate_end_to_end() {
        let mut regs = [0u64; 16];
        let mut fl = 2u64;
        // Store: nothing read.
        regs[2] = 0xCAFE;
        let w = emulate(&dec(&[0x89, 0x10]), &mut regs, &mut fl, || panic!());
        assert_eq!(w, Some(0xCAFE));
        // Load.
        let w = emulate(&dec(&[0x8B, 0x08]), &mut regs, &mut fl, || 7);
        assert_eq!((w, regs[1]), (None, 7));
        // or dword [rax+4], 1: read-modify-write.
        let w = emulate(&dec(&[0x83, 0x48, 0x04, 0x01]), &mut regs, &mut fl, || 0x10);
        assert_eq!(w, Some(0x11));
        // test dword [rax], 0x100: flags only.
        let d = dec(&[0xF7, 0x00, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(emulate(&d, &mut regs, &mut fl, || 0x100), None);
        assert_eq!(fl & ZF, 0);
        assert_eq!(emulate(&d, &mut regs, &mut fl, || 0x200), None);
        assert_ne!(fl & ZF, 0);
        // or eax, [rdi]: register destination, zero-extended.
        regs[0] = 0xFFFF_FFFF_0000_0001;
        assert_eq!(
            emulate(&dec(&[0x0B, 0x07]), &mut regs, &mut fl, || 0x10),
            None
        );
        assert_eq!(regs[0], 0x11);
        // cmp eax, [rax]: registers untouched.
        assert_eq!(
            emulate(&dec(&[0x3B, 0x00]), &mut regs, &mut fl, || 0x11),
            None
        );
        assert_eq!(regs[0], 0x11);
        assert_ne!(fl & ZF, 0);
        assert_eq!(fl & 2, 2, "reserved bit 1 kept");
    }

    #[test]
    fn xchg_bt_and_string_forms() {
        // xchg [rax], ecx / xchg [rbx], dl / xchg [rdi], r9 (REX.WR)
        assert_eq!(dec(&[0x87, 0x08]), plain(2, MemOp::Xchg, 4, r(1), None));
        assert_eq!(dec(&[0x86, 0x13]), plain(2, MemOp::Xchg, 1, r(2), None));
        assert_eq!(
            dec(&[0x4C, 0x87, 0x0F]),
            plain(3, MemOp::Xchg, 8, r(9), None)
        );
        // bt [rax], ecx / bts [rax], edx / btr [rax], ebx / btc [rax], esi
        use BitOp::*;
        for (op2, b, reg) in [
            (0xA3, Bt, 1),
            (0xAB, Bts, 2),
            (0xB3, Btr, 3),
            (0xBB, Btc, 6),
        ] {
            let m = reg << 3;
            assert_eq!(
                dec(&[0x0F, op2, m]),
                plain(3, MemOp::Bit(b), 4, r(reg), None)
            );
        }
        // bt dword [rax+8], 5 / btr word [rax], 3 / bts qword [rax], 63
        assert_eq!(
            dec(&[0x0F, 0xBA, 0x60, 0x08, 0x05]),
            plain(5, MemOp::Bit(Bt), 4, None, Some(5))
        );
        assert_eq!(
            dec(&[0x66, 0x0F, 0xBA, 0x30, 0x03]),
            plain(5, MemOp::Bit(Btr), 2, None, Some(3))
        );
        assert_eq!(
            dec(&[0x48, 0x0F, 0xBA, 0x28, 63]),
            plain(5, MemOp::Bit(Bts), 8, None, Some(63))
        );
        // movsb / rep movsd / rep stosq / lodsw / 32-bit mode movsw
        let st = |len, op, size| plain(len, MemOp::String(op), size, None, None);
        assert_eq!(dec(&[0xA4]), st(1, StringOp::Movs, 1));
        assert_eq!(dec(&[0xF3, 0xA5]), st(2, StringOp::Movs, 4));
        assert_eq!(dec(&[0xF3, 0x48, 0xAB]), st(3, StringOp::Stos, 8));
        assert_eq!(dec(&[0x66, 0xAD]), st(2, StringOp::Lods, 2));
        assert_eq!(
            decode(&[0x66, 0xA5], Mode::Prot32),
            Ok(st(2, StringOp::Movs, 2))
        );
        assert!(MemOp::String(StringOp::Movs).reads() && MemOp::String(StringOp::Movs).writes());
        assert!(!MemOp::String(StringOp::Stos).reads());
        assert!(!MemOp::String(StringOp::Lods).writes());
        assert!(MemOp::Xchg.reads() && MemOp::Xchg.writes());
        assert!(!MemOp::Bit(Bt).writes() && MemOp::Bit(Btc).writes());
    }

    #[test]
    fn prefix_scan() {
        let p = prefixes(&[0x64, 0xF3, 0x67, 0xA4], Mode::Long64);
        assert_eq!(
            p,
            Prefixes {
                seg: Some(4),
                rep: true,
                addr_size: 4
            }
        );
        // The last segment override wins; REX is skipped in 64-bit mode.
        let p = prefixes(&[0x2E, 0x26, 0xAB], Mode::Prot32);
        assert_eq!((p.seg, p.rep, p.addr_size), (Some(0), false, 4));
        let p = prefixes(&[0x65, 0x48, 0xAB], Mode::Long64);
        assert_eq!((p.seg, p.rep, p.addr_size), (Some(5), false, 8));
        // 64-bit mode ignores ES/CS/SS/DS overrides.
        assert_eq!(prefixes(&[0x36, 0x6E], Mode::Long64).seg, None);
        assert_eq!(prefixes(&[0x26, 0xA4], Mode::Long64).seg, None);
        // outsb in real mode: 16-bit addresses; 0x67 makes them 32-bit.
        assert_eq!(prefixes(&[0x6E], Mode::Real16).addr_size, 2);
        assert_eq!(prefixes(&[0x67, 0xF3, 0x6E], Mode::Real16).addr_size, 4);
        assert_eq!(prefixes(&[0x67, 0x6F], Mode::Prot32).addr_size, 2);
        assert_eq!(prefixes(&[0x36, 0x6F], Mode::Compat).seg, Some(2));
    }

    #[test]
    fn bit_ops_and_xchg_semantics() {
        use BitOp::*;
        // CF gets the bit; ZF/SF/OF/PF/AF kept; bit offset modulo the width.
        let keep = ZF | SF | OF | PF | AF | 2;
        assert_eq!(bit_op(Bt, 4, 0x20, 5, keep), (0x20, keep | CF));
        assert_eq!(bit_op(Bt, 4, 0x20, 37, keep | CF), (0x20, keep | CF));
        assert_eq!(bit_op(Bt, 4, 0x20, 4, CF), (0x20, 0));
        assert_eq!(bit_op(Bts, 2, 0, 17, 0), (2, 0));
        assert_eq!(bit_op(Btr, 8, u64::MAX, 63, 0), (u64::MAX >> 1, CF));
        assert_eq!(bit_op(Btc, 4, 0x8000_0000, 31, 0), (0, CF));
        // A negative register offset (-1) selects the top bit of this operand.
        assert_eq!(bit_op(Bt, 4, 0x8000_0000, u64::MAX, 0).1, CF);
        // emulate: bts [rax], ecx with ecx = 3 writes back; bt doesn't.
        let mut regs = [0u64; 16];
        regs[1] = 3;
        let mut fl = 2;
        let w = emulate(&dec(&[0x0F, 0xAB, 0x08]), &mut regs, &mut fl, || 0x1);
        assert_eq!((w, fl), (Some(0x9), 2));
        let w = emulate(&dec(&[0x0F, 0xA3, 0x08]), &mut regs, &mut fl, || 0x9);
        assert_eq!((w, fl), (None, 2 | CF));
        // xchg [rax], ecx: memory gets ECX, ECX (zero-extended) the old value.
        regs[1] = 0xFFFF_FFFF_1234_5678;
        let w = emulate(&dec(&[0x87, 0x08]), &mut regs, &mut fl, || 0xAABB_CCDD);
        assert_eq!((w, regs[1]), (Some(0x1234_5678), 0xAABB_CCDD));
        // xchg [rax], ah: byte merge into bits 15:8.
        regs[0] = 0x1111;
        let w = emulate(&dec(&[0x86, 0x20]), &mut regs, &mut fl, || 0x77);
        assert_eq!((w, regs[0]), (Some(0x11), 0x7711));
    }
}
