//! Guest linear-to-physical translation by walking the guest's own page
//! tables (SDM Vol. 3A ch. 4), for fetching the instruction at RIP and
//! reading guest pointers. Guest-physical memory is read through
//! [`GuestPhysRead`]; nothing is written (Accessed and Dirty flags are not set).
//!
//! Paging modes (SDM 4.1.1): off (identity, 32-bit addresses), 32-bit with
//! 4 KiB and, with CR4.PSE, 4 MiB pages (PSE-36 high bits included), PAE with
//! 4 KiB and 2 MiB pages, and 4-level with 4 KiB, 2 MiB and 1 GiB pages.
//! 5-level paging (CR4.LA57) gives [`FaultKind::Unsupported`].
//!
//! Checks: present bits, reserved bits (SDM 4.3, 4.4.2, 4.5.4; bits above
//! MAXPHYADDR are not checked, taken as 52), and access rights (SDM 4.6):
//! R/W with CR0.WP, U/S, execute-disable with EFER.NXE, and SMEP. Not
//! modelled: SMAP (needs RFLAGS.AC), protection keys, canonical-address
//! checks (#GP, not #PF). A failure is a [`WalkFault`]; for the three
//! page-fault kinds the caller injects #PF with CR2 = `gva` and
//! [`WalkFault::pf_error_code`].

use arch::addr::Gpa;

/// Reads guest-physical memory. Returns false when any byte of the range is
/// not readable guest RAM.
pub trait GuestPhysRead {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) -> bool;
}

/// The guest registers that control paging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    /// A user-mode (CPL 3) access.
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl Access {
    /// A supervisor data read.
    pub const READ: Access = Access {
        write: false,
        user: false,
        fetch: false,
    };
    /// A supervisor data write.
    pub const WRITE: Access = Access {
        write: true,
        user: false,
        fetch: false,
    };
    /// A supervisor instruction fetch.
    pub const FETCH: Access = Access {
        write: false,
        user: false,
        fetch: true,
    };
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// An entry with P = 0: #PF.
    NotPresent,
    /// A reserved bit set in a present entry: #PF.
    Reserved,
    /// The access rights don't allow the access: #PF.
    Protection,
    /// A paging mode this walker does not handle (5-level).
    Unsupported,
    /// This guest-physical address (a table or the data) is not guest RAM.
    Unreadable(Gpa),
}

/// A failed translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault {
    /// The linear address being translated (the #PF CR2 value).
    pub gva: u64,
    /// The table level at which it failed: 1 = page table, 2 = page
    /// directory, 3 = PDPT, 4 = PML4; 0 for the data itself.
    pub level: u8,
    pub kind: FaultKind,
    pub access: Access,
    /// Whether the error code reports instruction fetches in this paging
    /// setup (SDM 4.7: CR4.SMEP, or PAE/4-level paging with EFER.NXE).
    pub fetch_reported: bool,
}

impl WalkFault {
    /// Whether the guest should get a #PF (rather than the hypervisor
    /// handling an unreadable table or an unsupported mode).
    pub fn is_page_fault(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::NotPresent | FaultKind::Reserved | FaultKind::Protection
        )
    }

    /// The #PF error code (SDM 4.7): P (bit 0) unless not present, W/R
    /// (bit 1), U/S (bit 2), RSVD (bit 3), I/D (bit 4).
    pub fn pf_error_code(&self) -> u32 {
        let mut e = 0;
        if self.kind != FaultKind::NotPresent {
            e |= 1;
        }
        if self.access.write {
            e |= 1 << 1;
        }
        if self.access.user {
            e |= 1 << 2;
        }
        if self.kind == FaultKind::Reserved {
            e |= 1 << 3;
        }
        if self.access.fetch && self.fetch_reported {
            e |= 1 << 4;
        }
        e
    }
}

/// The paging mode the registers select (SDM 4.1.1, Table 4-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    None,
    Bits32,
    Pae,
    Level4,
    Level5,
}

const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

// Paging-structure entry bits (SDM Tables 4-4 to 4-20).
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Address bits 51:12 (MAXPHYADDR taken as 52).
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
/// PAE PDPTE reserved bits 2:1 and 8:5 (SDM Table 4-8), and 63:52.
const PDPTE_RSVD: u64 = 0x1E6 | 0xFFF0_0000_0000_0000;
/// PAE entries: bits 62:52 are reserved (SDM 4.4.2).
const PAE_HIGH_RSVD: u64 = 0x7FF0_0000_0000_0000;

pub fn paging_mode(regs: &PagingRegs) -> PagingMode {
    if regs.cr0 & CR0_PG == 0 {
        PagingMode::None
    } else if regs.cr4 & CR4_PAE == 0 {
        PagingMode::Bits32
    } else if regs.efer & (EFER_LMA | EFER_LME) == 0 {
        // With CR0.PG = 1, LME and LMA agree; either marks IA-32e mode.
        PagingMode::Pae
    } else if regs.cr4 & CR4_LA57 != 0 {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    }
}

struct Walk<'a, M: GuestPhysRead> {
    mem: &'a M,
    regs: PagingRegs,
    gva: u64,
    access: Access,
    fetch_reported: bool,
    /// Rights accumulated over the levels: all R/W, all U/S, any XD.
    writable: bool,
    user: bool,
    no_exec: bool,
}

impl<M: GuestPhysRead> Walk<'_, M> {
    fn fault(&self, level: u8, kind: FaultKind) -> WalkFault {
        WalkFault {
            gva: self.gva,
            level,
            kind,
            access: self.access,
            fetch_reported: self.fetch_reported,
        }
    }

    fn entry(&self, gpa: u64, size: usize, level: u8) -> Result<u64, WalkFault> {
        let mut b = [0u8; 8];
        let gpa = Gpa(gpa);
        if !self.mem.read(gpa, &mut b[..size]) {
            return Err(self.fault(level, FaultKind::Unreadable(gpa)));
        }
        let e = u64::from_le_bytes(b);
        if e & P == 0 {
            return Err(self.fault(level, FaultKind::NotPresent));
        }
        Ok(e)
    }

    fn collect(&mut self, e: u64) {
        self.writable &= e & RW != 0;
        self.user &= e & US != 0;
        self.no_exec |= e & XD != 0;
    }

    /// Access rights of the translation (SDM 4.6.1).
    fn check(&self, level: u8, nx: bool) -> Result<(), WalkFault> {
        let a = self.access;
        let wp = self.regs.cr0 & CR0_WP != 0;
        let smep_blocks = a.fetch && self.user && self.regs.cr4 & CR4_SMEP != 0;
        let ok = if a.user {
            self.user && (!a.write || self.writable)
        } else {
            (!a.write || self.writable || !wp) && !smep_blocks
        };
        if !ok || (a.fetch && nx && self.no_exec) {
            return Err(self.fault(level, FaultKind::Protection));
        }
        Ok(())
    }

    /// 32-bit paging (SDM 4.3).
    fn bits32(&mut self) -> Result<u64, WalkFault> {
        let va = self.gva & 0xFFFF_FFFF;
        let pde = self.entry((self.regs.cr3 & 0xFFFF_F000) + ((va >> 22) << 2), 4, 2)?;
        self.collect(pde);
        if pde & PS != 0 && self.regs.cr4 & CR4_PSE != 0 {
            // 4 MiB page: bits 39:32 of the address come from PDE bits 20:13,
            // bit 21 is reserved (SDM Table 4-4).
            if pde & (1 << 21) != 0 {
                return Err(self.fault(2, FaultKind::Reserved));
            }
            self.check(2, false)?;
            return Ok((pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32) | (va & 0x3F_FFFF));
        }
        let pte = self.entry((pde & 0xFFFF_F000) + (((va >> 12) & 0x3FF) << 2), 4, 1)?;
        self.collect(pte);
        self.check(1, false)?;
        Ok((pte & 0xFFFF_F000) | (va & 0xFFF))
    }

    /// PAE (SDM 4.4) and 4-level (SDM 4.5) paging.
    fn long(&mut self, pae: bool) -> Result<u64, WalkFault> {
        let nxe = self.regs.efer & EFER_NXE != 0;
        let (mut table, mut level) = if pae {
            // The PDPTE register-equivalent: 4 entries at CR3[31:5].
            let pdpte = self.entry(
                (self.regs.cr3 & 0xFFFF_FFE0) + (((self.gva >> 30) & 3) << 3),
                8,
                3,
            )?;
            if pdpte & PDPTE_RSVD != 0 {
                return Err(self.fault(3, FaultKind::Reserved));
            }
            (pdpte & ADDR, 2u8)
        } else {
            (self.regs.cr3 & ADDR, 4u8)
        };
        loop {
            let shift = 12 + 9 * u32::from(level - 1);
            let e = self.entry(table + (((self.gva >> shift) & 0x1FF) << 3), 8, level)?;
            let leaf = level == 1 || (e & PS != 0 && level <= 3);
            let mut rsvd = (e & XD != 0 && !nxe) || (pae && e & PAE_HIGH_RSVD != 0);
            rsvd |= level == 4 && e & PS != 0;
            if leaf && level > 1 {
                // Large-page address bits below the page size, above the PAT bit.
                rsvd |= e & ((1u64 << shift) - 1) & !0x1FFF != 0;
            }
            if rsvd {
                return Err(self.fault(level, FaultKind::Reserved));
            }
            self.collect(e);
            if leaf {
                self.check(level, nxe)?;
                let page = 1u64 << shift;
                return Ok((e & ADDR & !(page - 1)) | (self.gva & (page - 1)));
            }
            table = e & ADDR;
            level -= 1;
        }
    }
}

/// Translates the linear address `gva` for `access` under `regs`.
pub fn translate(
    mem: &impl GuestPhysRead,
    regs: PagingRegs,
    gva: u64,
    access: Access,
) -> Result<Gpa, WalkFault> {
    let mode = paging_mode(&regs);
    let mut w = Walk {
        mem,
        regs,
        gva,
        access,
        fetch_reported: regs.cr4 & CR4_SMEP != 0
            || (matches!(mode, PagingMode::Pae | PagingMode::Level4) && regs.efer & EFER_NXE != 0),
        writable: true,
        user: true,
        no_exec: false,
    };
    match mode {
        PagingMode::None => Ok(gva & 0xFFFF_FFFF),
        PagingMode::Bits32 => w.bits32(),
        PagingMode::Pae => w.long(true),
        PagingMode::Level4 => w.long(false),
        PagingMode::Level5 => Err(w.fault(5, FaultKind::Unsupported)),
    }
    .map(Gpa)
}

/// Reads `buf.len()` bytes at linear address `gva`, page by page, so a read
/// that crosses into a differently mapped page is right. Linear addresses
/// wrap at 4 GiB outside 4-level paging. A fault names the page that failed.
pub fn read_virt(
    mem: &impl GuestPhysRead,
    regs: PagingRegs,
    gva: u64,
    access: Access,
    buf: &mut [u8],
) -> Result<(), WalkFault> {
    let wide = paging_mode(&regs) == PagingMode::Level4;
    let mut done = 0usize;
    while done < buf.len() {
        let mut va = gva.wrapping_add(done as u64);
        if !wide {
            va &= 0xFFFF_FFFF;
        }
        let n = ((0x1000 - (va & 0xFFF)) as usize).min(buf.len() - done);
        let pa = translate(mem, regs, va, access)?;
        if !mem.read(pa, &mut buf[done..done + n]) {
            return Err(WalkFault {
                gva: va,
                level: 0,
                kind: FaultKind::Unreadable(pa),
                access,
                fetch_reported: false,
            });
        }
        done += n;
    }
    Ok(())
}

/// Segment registers in the order of the VM-exit instruction-information
/// field (SDM Vol. 3C 28.2.5, Table 28-9 ff.).
pub const ES: u8 = 0;
pub const CS: u8 = 1;
pub const SS: u8 = 2;
pub const DS: u8 = 3;
pub const FS: u8 = 4;
pub const GS: u8 = 5;

/// The hidden part of a segment register as the VMCS holds it (SDM Vol. 3C
/// 25.4.1): base, limit in bytes, access rights (type 3:0, S 4, DPL 6:5,
/// P 7, L 13, D/B 14, G 15, unusable 16).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub ar: u32,
}

/// The CPU mode for address computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrMode {
    /// Real or virtual-8086 mode: limits apply, no type checks.
    Real,
    /// Protected or compatibility mode: limits and types apply.
    Protected,
    /// 64-bit mode: no limits; canonical checks.
    Long64,
}

/// An exception the guest gets for an access (SDM Vol. 3A 6.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// #GP(0).
    Gp,
    /// #SS(0): a stack-segment access.
    Ss,
    /// #PF with CR2 and error code.
    Pf { cr2: u64, code: u32 },
}

impl Fault {
    pub fn vector(self) -> u8 {
        match self {
            Fault::Gp => 13,
            Fault::Ss => 12,
            Fault::Pf { .. } => 14,
        }
    }

    pub fn error_code(self) -> u32 {
        match self {
            Fault::Pf { code, .. } => code,
            _ => 0,
        }
    }
}

/// Whether a 64-bit linear address is canonical (48-bit, SDM Vol. 1 3.3.7.1).
pub fn canonical(la: u64) -> bool {
    ((la as i64) << 16 >> 16) as u64 == la
}

/// The linear address of `size` bytes at `offset` (already truncated to the
/// address size) in segment register `which`, with the checks of SDM Vol. 3A
/// 3.4.5.1 (type), 5.3 (limit, expand-down) and, in 64-bit mode, 3.3.7.1
/// (canonical form; only FS and GS have a base). A violation is #SS(0) for
/// SS and #GP(0) otherwise.
pub fn linear(
    seg: &Segment,
    which: u8,
    offset: u64,
    size: u64,
    write: bool,
    mode: AddrMode,
) -> Result<u64, Fault> {
    let fault = if which == SS { Fault::Ss } else { Fault::Gp };
    let last = offset.wrapping_add(size.max(1) - 1);
    if mode == AddrMode::Long64 {
        let base = if which == FS || which == GS {
            seg.base
        } else {
            0
        };
        let la = base.wrapping_add(offset);
        if !canonical(la) || !canonical(base.wrapping_add(last)) {
            return Err(fault);
        }
        return Ok(la);
    }
    let limit = u64::from(seg.limit);
    let ty = seg.ar & 0xF;
    let code = ty & 8 != 0;
    if mode == AddrMode::Protected {
        // A null or unusable selector, or a write to a code or read-only segment,
        // or a read of an execute-only code segment.
        if seg.ar & (1 << 16) != 0 || seg.ar & (1 << 4) == 0 {
            return Err(fault);
        }
        let ok = if code {
            !write && ty & 2 != 0
        } else {
            !write || ty & 2 != 0
        };
        if !ok {
            return Err(fault);
        }
    }
    let expand_down = !code && ty & 4 != 0 && mode == AddrMode::Protected;
    let in_limit = if expand_down {
        let upper = if seg.ar & (1 << 14) != 0 {
            0xFFFF_FFFF
        } else {
            0xFFFF
        };
        offset > limit && last <= upper && last >= offset
    } else {
        last <= limit && last >= offset
    };
    if !in_limit {
        return Err(fault);
    }
    Ok(seg.base.wrapping_add(offset) & 0xFFFF_FFFF)
}

/// Guest-physical accesses of the emulator: RAM, device or empty bus.
pub trait PhysBus {
    /// The error that ends the emulation (e.g. the guest is stopped).
    type Stop;
    fn read(&mut self, gpa: Gpa, buf: &mut [u8]) -> Result<(), Self::Stop>;
    fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), Self::Stop>;
}

/// Why a linear access failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LinearError<S> {
    /// The guest gets this exception.
    Fault(Fault),
    /// A paging mode the walker does not handle.
    Unsupported,
    /// The bus ended the access.
    Stop(S),
}

fn walk_fault<S>(f: WalkFault) -> LinearError<S> {
    match f.kind {
        FaultKind::Unsupported => LinearError::Unsupported,
        // A paging structure on the empty bus reads all-ones: present, with
        // reserved bits set (SDM 4.7: P and RSVD in the error code).
        FaultKind::Unreadable(_) => LinearError::Fault(Fault::Pf {
            cr2: f.gva,
            code: WalkFault {
                kind: FaultKind::Reserved,
                ..f
            }
            .pf_error_code(),
        }),
        _ => LinearError::Fault(Fault::Pf {
            cr2: f.gva,
            code: f.pf_error_code(),
        }),
    }
}

/// Reads (`write` false) or writes `buf.len()` bytes at linear address `la`,
/// page by page, through the guest's paging and `bus`. A write is translated
/// for every page before any byte is written, so a fault leaves memory alone.
pub fn access_linear<B: PhysBus>(
    mem: &impl GuestPhysRead,
    bus: &mut B,
    regs: PagingRegs,
    la: u64,
    user: bool,
    write: bool,
    buf: &mut [u8],
) -> Result<(), LinearError<B::Stop>> {
    let wide = paging_mode(&regs) == PagingMode::Level4;
    let access = Access {
        write,
        user,
        fetch: false,
    };
    // At most two pages for the element sizes used here (up to 8 bytes);
    // longer buffers are split as needed.
    let mut pieces: [(Gpa, usize, usize); 4] = [(Gpa(0), 0, 0); 4];
    let mut count = 0;
    let mut done = 0usize;
    while done < buf.len() {
        let mut va = la.wrapping_add(done as u64);
        if !wide {
            va &= 0xFFFF_FFFF;
        }
        let n = ((0x1000 - (va & 0xFFF)) as usize).min(buf.len() - done);
        let pa = translate(mem, regs, va, access).map_err(walk_fault)?;
        if count == pieces.len() {
            return Err(LinearError::Unsupported);
        }
        pieces[count] = (pa, done, n);
        count += 1;
        done += n;
    }
    for &(pa, off, n) in &pieces[..count] {
        let r = if write {
            bus.write(pa, &buf[off..off + n])
        } else {
            bus.read(pa, &mut buf[off..off + n])
        };
        r.map_err(LinearError::Stop)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Sparse guest RAM below `limit`; unwritten bytes read as zero.
    struct Mem {
        bytes: HashMap<u64, u8>,
        limit: u64,
    }

    impl Mem {
        fn new() -> Self {
            Self {
                bytes: HashMap::new(),
                limit: 1 << 40,
            }
        }
        fn put(&mut self, gpa: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                self.bytes.insert(gpa + i as u64, *b);
            }
        }
        fn put32(&mut self, gpa: u64, v: u32) {
            self.put(gpa, &v.to_le_bytes());
        }
        fn put64(&mut self, gpa: u64, v: u64) {
            self.put(gpa, &v.to_le_bytes());
        }
    }

    impl GuestPhysRead for Mem {
        fn read(&self, gpa: Gpa, buf: &mut [u8]) -> bool {
            let gpa = gpa.0;
            if gpa.saturating_add(buf.len() as u64) > self.limit {
                return false;
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.bytes.get(&(gpa + i as u64)).copied().unwrap_or(0);
            }
            true
        }
    }

    /// The walk's result as a number, as these tests compare it.
    fn translate(mem: &Mem, regs: PagingRegs, gva: u64, access: Access) -> Result<u64, WalkFault> {
        super::translate(mem, regs, gva, access).map(u64::from)
    }

    const PE: u64 = 1;
    const PG: u64 = CR0_PG | PE;
    const USER: Access = Access {
        write: false,
        user: true,
        fetch: false,
    };
    const USER_WRITE: Access = Access {
        write: true,
        user: true,
        fetch: false,
    };

    fn regs32(cr3: u64, cr4: u64) -> PagingRegs {
        PagingRegs {
            cr0: PG,
            cr3,
            cr4,
            efer: 0,
        }
    }

    fn regs_pae(cr3: u64) -> PagingRegs {
        PagingRegs {
            cr0: PG | CR0_WP,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_NXE,
        }
    }

    fn regs64(cr3: u64) -> PagingRegs {
        PagingRegs {
            cr0: PG | CR0_WP,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA | EFER_NXE,
        }
    }

    fn kind(r: Result<u64, WalkFault>) -> (u8, FaultKind) {
        let f = r.unwrap_err();
        (f.level, f.kind)
    }

    #[test]
    fn paging_off_is_identity() {
        let m = Mem::new();
        let r = PagingRegs {
            cr0: PE,
            ..Default::default()
        };
        assert_eq!(paging_mode(&r), PagingMode::None);
        assert_eq!(
            translate(&m, r, 0xFEE0_0300, Access::WRITE),
            Ok(0xFEE0_0300)
        );
        assert_eq!(translate(&m, r, 0x1_0000_1234, Access::READ), Ok(0x1234));
    }

    #[test]
    fn modes() {
        let mut r = regs64(0);
        assert_eq!(paging_mode(&r), PagingMode::Level4);
        r.cr4 |= CR4_LA57;
        assert_eq!(paging_mode(&r), PagingMode::Level5);
        assert_eq!(
            kind(translate(&Mem::new(), r, 0, Access::READ)).1,
            FaultKind::Unsupported
        );
        assert_eq!(paging_mode(&regs_pae(0)), PagingMode::Pae);
        assert_eq!(paging_mode(&regs32(0, 0)), PagingMode::Bits32);
    }

    /// 32-bit tables at 0x1000 (PD) and 0x2000 (PT).
    fn mem32() -> Mem {
        let mut m = Mem::new();
        // 0x0040_0000..: PT at 0x2000, user, writable.
        m.put32(0x1000 + 4, 0x2000 | 7);
        m.put32(0x2000 + 5 * 4, 0x0009_A000 | 7); // 0x0040_5000 -> 0x9A000
        m.put32(0x2000 + 6 * 4, 0x0009_B000 | 1); // read-only, supervisor
                                                  // 0x0080_0000..: a 4 MiB page at 0x0C00_0000 (PSE), read-only user.
        m.put32(0x1000 + 2 * 4, 0x0C00_0000 | 0x80 | 5);
        // 0x00C0_0000..: a 4 MiB page above 4 GiB via PSE-36 (bits 39:32 = 0x12).
        m.put32(0x1000 + 3 * 4, 0x0040_0000 | (0x12 << 13) | 0x80 | 3);
        // 0x0100_0000..: bit 21 set in a 4 MiB PDE: reserved.
        m.put32(0x1000 + 4 * 4, 0x0020_0000 | 0x80 | 3);
        m
    }

    #[test]
    fn bits32_small_and_large_pages() {
        let m = mem32();
        let r = regs32(0x1000, CR4_PSE);
        assert_eq!(translate(&m, r, 0x0040_5123, USER_WRITE), Ok(0x9A123));
        assert_eq!(translate(&m, r, 0x0089_ABCD, USER), Ok(0x0C09_ABCD));
        assert_eq!(
            translate(&m, r, 0x00C0_0010, Access::READ),
            Ok(0x12_0040_0010)
        );
        assert_eq!(
            kind(translate(&m, r, 0x0100_0000, Access::READ)),
            (2, FaultKind::Reserved)
        );
        // Without CR4.PSE the PS bit is ignored and the PDE points to a table:
        // at 0x0C00_0000, which is empty.
        let r = regs32(0x1000, 0);
        assert_eq!(
            kind(translate(&m, r, 0x0080_0000, USER)),
            (1, FaultKind::NotPresent)
        );
        // High address bits of the linear address are ignored.
        assert_eq!(
            translate(&m, r, 0xABCD_0000_0040_5000, Access::READ),
            Ok(0x9A000)
        );
    }

    #[test]
    fn bits32_faults_and_rights() {
        let m = mem32();
        let r = regs32(0x1000, CR4_PSE);
        // Not present at the PD and at the PT.
        let f = translate(&m, r, 0x0000_1000, USER_WRITE).unwrap_err();
        assert_eq!((f.level, f.kind, f.gva), (2, FaultKind::NotPresent, 0x1000));
        assert_eq!(f.pf_error_code(), 0b110);
        assert_eq!(
            kind(translate(&m, r, 0x0040_7000, Access::READ)),
            (1, FaultKind::NotPresent)
        );
        // User read of a supervisor page.
        let f = translate(&m, r, 0x0040_6000, USER).unwrap_err();
        assert_eq!(
            (f.level, f.kind, f.pf_error_code()),
            (1, FaultKind::Protection, 0b101)
        );
        // Supervisor write to a read-only page: allowed unless CR0.WP.
        assert_eq!(translate(&m, r, 0x0040_6000, Access::WRITE), Ok(0x9B000));
        let wp = PagingRegs {
            cr0: PG | CR0_WP,
            ..r
        };
        let f = translate(&m, wp, 0x0040_6000, Access::WRITE).unwrap_err();
        assert_eq!((f.kind, f.pf_error_code()), (FaultKind::Protection, 0b011));
        // User write to a read-only 4 MiB page.
        assert_eq!(
            kind(translate(&m, r, 0x0080_0000, USER_WRITE)),
            (2, FaultKind::Protection)
        );
        // No execute-disable in 32-bit paging, and no I/D bit without SMEP.
        let fetch_user = Access {
            fetch: true,
            user: true,
            write: false,
        };
        let f = translate(&m, r, 0x0040_6000, fetch_user).unwrap_err();
        assert_eq!(f.pf_error_code(), 0b101);
        // SMEP: a supervisor fetch from a user page, I/D reported.
        let smep = regs32(0x1000, CR4_PSE | CR4_SMEP);
        let f = translate(&m, smep, 0x0040_5000, Access::FETCH).unwrap_err();
        assert_eq!(
            (f.kind, f.pf_error_code()),
            (FaultKind::Protection, 0b10001)
        );
        assert_eq!(translate(&m, smep, 0x0040_5000, Access::READ), Ok(0x9A000));
    }

    /// PAE tables: PDPT at 0x3020 (32-byte aligned), PD at 0x4000, PT at 0x5000.
    fn mem_pae() -> Mem {
        let mut m = Mem::new();
        m.put64(0x3020, 0x4000 | 1); // 0..1 GiB
        m.put64(0x3020 + 8, 0x4000 | 1 | (1 << 5)); // 1..2 GiB: reserved bit 5
        m.put64(0x4000, 0x5000 | 7); // 0..2 MiB: PT
        m.put64(0x5000 + 8, 0x1_2345_6000 | 7); // 0x1000 -> 0x1_2345_6000
        m.put64(0x5000 + 16, 0x7000 | 7 | XD); // 0x2000: no-execute
        m.put64(0x4000 + 8, 0x0060_0000 | 0x80 | 3); // 2..4 MiB: 2 MiB page
        m.put64(0x4000 + 16, 0x0060_0000 | 0x80 | 3 | (1 << 13)); // reserved bit 13
        m.put64(0x4000 + 24, 0x0080_0000 | 0x80 | 3 | (1 << 12)); // PAT bit: fine
        m.put64(0x4000 + 32, 0x0080_0000 | 0x80 | 3 | (1 << 60)); // bit 60: reserved in PAE
        m
    }

    #[test]
    fn pae_pages() {
        let m = mem_pae();
        let r = regs_pae(0x3020);
        assert_eq!(translate(&m, r, 0x1ABC, USER), Ok(0x1_2345_6ABC));
        assert_eq!(
            translate(&m, r, 0x0030_1234, Access::WRITE),
            Ok(0x0070_1234)
        );
        assert_eq!(translate(&m, r, 0x0060_0004, Access::READ), Ok(0x0080_0004));
        assert_eq!(
            kind(translate(&m, r, 0x0040_0000, Access::READ)),
            (2, FaultKind::Reserved)
        );
        assert_eq!(
            kind(translate(&m, r, 0x0080_0000, Access::READ)),
            (2, FaultKind::Reserved)
        );
        assert_eq!(
            kind(translate(&m, r, 0x4000_0000, Access::READ)),
            (3, FaultKind::Reserved)
        );
        assert_eq!(
            kind(translate(&m, r, 0x8000_0000, Access::READ)),
            (3, FaultKind::NotPresent)
        );
        assert_eq!(
            kind(translate(&m, r, 0x00A0_0000, Access::READ)),
            (2, FaultKind::NotPresent)
        );
        assert_eq!(
            kind(translate(&m, r, 0x3000, Access::READ)),
            (1, FaultKind::NotPresent)
        );
    }

    #[test]
    fn execute_disable() {
        let m = mem_pae();
        let r = regs_pae(0x3020);
        assert_eq!(translate(&m, r, 0x2000, Access::READ), Ok(0x7000));
        let f = translate(&m, r, 0x2000, Access::FETCH).unwrap_err();
        assert_eq!(
            (f.level, f.kind, f.pf_error_code()),
            (1, FaultKind::Protection, 0b10001)
        );
        // Not-present fetch with NXE: I/D reported, P clear.
        let f = translate(&m, r, 0x3000, Access::FETCH).unwrap_err();
        assert_eq!(f.pf_error_code(), 0b10000);
        // Without EFER.NXE the XD bit is reserved.
        let no_nx = PagingRegs { efer: 0, ..r };
        let f = translate(&m, no_nx, 0x2000, Access::READ).unwrap_err();
        assert_eq!((f.kind, f.pf_error_code()), (FaultKind::Reserved, 0b1001));
        let f = translate(&m, no_nx, 0x3000, Access::FETCH).unwrap_err();
        assert_eq!(f.pf_error_code(), 0, "no I/D without NXE or SMEP");
    }

    /// 4-level tables: PML4 at 0x10000.
    fn mem64() -> Mem {
        let mut m = Mem::new();
        // PML4[0] -> PDPT 0x11000; PML4[511] (kernel half) -> PDPT 0x14000, supervisor.
        m.put64(0x10000, 0x11000 | 7);
        m.put64(0x10000 + 511 * 8, 0x14000 | 3);
        m.put64(0x10000 + 8, 0x0100_0000 | 0x80 | 7); // PS in a PML4E: reserved
                                                      // PDPT[0] -> PD 0x12000; PDPT[1] = 1 GiB page at 4 GiB; PDPT[2] 1 GiB with bit 13.
        m.put64(0x11000, 0x12000 | 7);
        m.put64(0x11000 + 8, 0x1_0000_0000 | 0x80 | 7);
        m.put64(0x11000 + 16, 0x1_0000_0000 | 0x80 | 7 | (1 << 13));
        // PD[0] -> PT 0x13000; PD[1] = 2 MiB page at 0x0120_0000.
        m.put64(0x12000, 0x13000 | 7);
        m.put64(0x12000 + 8, 0x0120_0000 | 0x80 | 7);
        // PT[1]: 0x1000 -> 0xFEE0_0000 read-only, user.
        m.put64(0x13000 + 8, 0xFEE0_0000 | 5);
        // PT[2]: high bits 62:52 are ignored in 4-level paging.
        m.put64(0x13000 + 16, 0x3000 | 7 | (0x7FF << 52));
        // Kernel: PDPT[510] -> PD 0x15000, PD[0] 2 MiB at 0x20_0000.
        m.put64(0x14000 + 510 * 8, 0x15000 | 3);
        m.put64(0x15000, 0x0020_0000 | 0x80 | 3);
        m
    }

    #[test]
    fn four_level_pages() {
        let m = mem64();
        let r = regs64(0x10000);
        assert_eq!(translate(&m, r, 0x1300, USER), Ok(0xFEE0_0300));
        assert_eq!(translate(&m, r, 0x2004, USER_WRITE), Ok(0x3004));
        assert_eq!(translate(&m, r, 0x0020_0ABC, USER_WRITE), Ok(0x0120_0ABC));
        assert_eq!(translate(&m, r, 0x4765_4321, USER), Ok(0x1_0765_4321));
        // Kernel-half address (PML4 511, PDPT 510).
        assert_eq!(
            translate(&m, r, 0xFFFF_FFFF_8012_3456, Access::FETCH),
            Ok(0x0032_3456)
        );
        // CR3 low bits (PCID) are ignored.
        let pcid = PagingRegs {
            cr3: 0x10000 | 0x5,
            ..r
        };
        assert_eq!(translate(&m, pcid, 0x1000, Access::READ), Ok(0xFEE0_0000));
    }

    #[test]
    fn four_level_faults() {
        let m = mem64();
        let r = regs64(0x10000);
        assert_eq!(
            kind(translate(&m, r, 0x0000_0100_0000_0000, Access::READ)),
            (4, FaultKind::NotPresent)
        );
        assert_eq!(
            kind(translate(&m, r, 0x0000_0080_0000_0000, Access::READ)),
            (4, FaultKind::Reserved)
        );
        assert_eq!(
            kind(translate(&m, r, 0xC000_0000, Access::READ)),
            (3, FaultKind::NotPresent)
        );
        assert_eq!(
            kind(translate(&m, r, 0x8000_0000, Access::READ)),
            (3, FaultKind::Reserved)
        );
        assert_eq!(
            kind(translate(&m, r, 0x0040_0000, Access::READ)),
            (2, FaultKind::NotPresent)
        );
        assert_eq!(
            kind(translate(&m, r, 0x3000, Access::READ)),
            (1, FaultKind::NotPresent)
        );
        // Read-only page with CR0.WP; user access to the supervisor half.
        let f = translate(&m, r, 0x1000, Access::WRITE).unwrap_err();
        assert_eq!(
            (f.level, f.kind, f.pf_error_code()),
            (1, FaultKind::Protection, 0b011)
        );
        let f = translate(&m, r, 0xFFFF_FFFF_8000_0000, USER).unwrap_err();
        assert_eq!(
            (f.level, f.kind, f.pf_error_code()),
            (2, FaultKind::Protection, 0b101)
        );
        // SMEP.
        let smep = PagingRegs {
            cr4: r.cr4 | CR4_SMEP,
            ..r
        };
        let f = translate(&m, smep, 0x1000, Access::FETCH).unwrap_err();
        assert_eq!(
            (f.kind, f.pf_error_code()),
            (FaultKind::Protection, 0b10001)
        );
        assert!(f.is_page_fault());
        // A table outside guest RAM.
        let far = PagingRegs { cr3: 1 << 41, ..r };
        let f = translate(&m, far, 0, Access::READ).unwrap_err();
        assert_eq!((f.level, f.kind), (4, FaultKind::Unreadable(Gpa(1 << 41))));
        assert!(!f.is_page_fault());
    }

    #[test]
    fn read_across_pages() {
        let mut m = mem64();
        // Virtual 0x1FFE..0x2002 spans 0xFEE0_0FFE.. and 0x3000..
        m.put(0xFEE0_0FFE, &[1, 2]);
        m.put(0x3000, &[3, 4]);
        let r = regs64(0x10000);
        let mut buf = [0u8; 4];
        read_virt(&m, r, 0x1FFE, USER, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        // The second page is missing: the fault names it.
        let mut buf = [0u8; 15];
        let f = read_virt(&m, r, 0x2FF8, Access::FETCH, &mut buf).unwrap_err();
        assert_eq!((f.gva, f.level, f.kind), (0x3000, 1, FaultKind::NotPresent));
        // Empty reads touch nothing.
        read_virt(&m, r, 0xDEAD_0000, Access::READ, &mut []).unwrap();
        // Unreadable data page.
        let mut small = Mem::new();
        small.limit = 0x10_0000;
        let off = PagingRegs::default();
        let f = read_virt(&small, off, 0xF_FFFE, Access::READ, &mut buf[..4]).unwrap_err();
        assert_eq!(
            (f.gva, f.kind),
            (0x10_0000, FaultKind::Unreadable(Gpa(0x10_0000)))
        );
    }

    #[test]
    fn read_wraps_at_4g_outside_long_mode() {
        let mut m = Mem::new();
        m.put(0xFFFF_FFFF, &[0xAA]);
        m.put(0, &[0xBB]);
        let mut buf = [0u8; 2];
        read_virt(
            &m,
            PagingRegs::default(),
            0xFFFF_FFFF,
            Access::READ,
            &mut buf,
        )
        .unwrap();
        assert_eq!(buf, [0xAA, 0xBB]);
    }

    #[test]
    fn error_code_bits() {
        let f = |kind, access| WalkFault {
            gva: 0,
            level: 1,
            kind,
            access,
            fetch_reported: true,
        };
        assert_eq!(f(FaultKind::NotPresent, Access::READ).pf_error_code(), 0);
        assert_eq!(f(FaultKind::NotPresent, USER_WRITE).pf_error_code(), 6);
        assert_eq!(f(FaultKind::Protection, Access::WRITE).pf_error_code(), 3);
        assert_eq!(f(FaultKind::Reserved, USER).pf_error_code(), 0xD);
        assert_eq!(
            f(FaultKind::Protection, Access::FETCH).pf_error_code(),
            0x11
        );
    }

    fn seg(base: u64, limit: u32, ar: u32) -> Segment {
        Segment { base, limit, ar }
    }

    #[test]
    fn segmentation_limits_and_types() {
        use AddrMode::*;
        let data = seg(0x1_0000, 0xFFFF, 0x93); // read/write data, 16-bit
        assert_eq!(linear(&data, DS, 0xFFFF, 1, true, Protected), Ok(0x1_FFFF));
        assert_eq!(
            linear(&data, DS, 0xFFFF, 2, false, Protected),
            Err(Fault::Gp)
        );
        assert_eq!(
            linear(&data, SS, 0xFFFE, 4, false, Protected),
            Err(Fault::Ss)
        );
        assert_eq!(linear(&data, ES, 0xFFFF, 2, false, Real), Err(Fault::Gp));
        assert_eq!(linear(&data, ES, 0x10, 2, true, Real), Ok(0x1_0010));
        // Read-only data: no writes. Execute-only code: no reads; readable code: reads only.
        let ro = seg(0, 0xFFFF_FFFF, 0xC091);
        assert_eq!(linear(&ro, DS, 0, 1, false, Protected), Ok(0));
        assert_eq!(linear(&ro, DS, 0, 1, true, Protected), Err(Fault::Gp));
        let xo = seg(0, 0xFFFF_FFFF, 0xC099);
        assert_eq!(linear(&xo, CS, 0, 1, false, Protected), Err(Fault::Gp));
        let rx = seg(0, 0xFFFF_FFFF, 0xC09B);
        assert_eq!(linear(&rx, CS, 8, 4, false, Protected), Ok(8));
        assert_eq!(linear(&rx, CS, 8, 4, true, Protected), Err(Fault::Gp));
        // Unusable (null selector) and system segments.
        assert_eq!(
            linear(&seg(0, 0, 1 << 16), ES, 0, 1, true, Protected),
            Err(Fault::Gp)
        );
        assert_eq!(
            linear(&seg(0, 0xFFFF, 0x8B), ES, 0, 1, false, Protected),
            Err(Fault::Gp)
        );
        // Expand-down, 32-bit: valid offsets are (limit, 0xFFFFFFFF].
        let down = seg(0, 0xFFF, 0x4097);
        assert_eq!(linear(&down, SS, 0xFFF, 1, true, Protected), Err(Fault::Ss));
        assert_eq!(linear(&down, SS, 0x1000, 4, true, Protected), Ok(0x1000));
        assert_eq!(
            linear(&down, SS, 0xFFFF_FFFE, 4, true, Protected),
            Err(Fault::Ss)
        );
        // Linear addresses wrap at 4 GiB outside 64-bit mode.
        let high = seg(0xFFFF_F000, 0xFFFF_FFFF, 0xC093);
        assert_eq!(linear(&high, DS, 0x2000, 1, false, Protected), Ok(0x1000));
    }

    #[test]
    fn long_mode_bases_and_canonical_checks() {
        use AddrMode::Long64;
        let fs = seg(0x7000_0000, 0, 0x93);
        assert_eq!(linear(&fs, FS, 0x10, 8, true, Long64), Ok(0x7000_0010));
        // DS/ES/SS bases are ignored, limits too.
        assert_eq!(linear(&fs, DS, 0x10, 8, true, Long64), Ok(0x10));
        assert_eq!(
            linear(&fs, ES, 0x0000_8000_0000_0000, 1, true, Long64),
            Err(Fault::Gp)
        );
        assert_eq!(
            linear(&fs, SS, 0x0000_7FFF_FFFF_FFFC, 8, false, Long64),
            Err(Fault::Ss)
        );
        assert_eq!(
            linear(&fs, DS, 0xFFFF_8000_0000_0000, 8, false, Long64),
            Ok(0xFFFF_8000_0000_0000)
        );
        assert!(canonical(0x0000_7FFF_FFFF_FFFF) && !canonical(0x0001_0000_0000_0000));
    }

    /// A bus over [`Mem`] that records writes and refuses one address.
    struct Bus<'a> {
        mem: &'a mut Mem,
        refuse: u64,
    }

    impl PhysBus for Bus<'_> {
        type Stop = u64;
        fn read(&mut self, gpa: Gpa, buf: &mut [u8]) -> Result<(), u64> {
            if gpa.0 == self.refuse {
                return Err(gpa.0);
            }
            assert!(GuestPhysRead::read(self.mem, gpa, buf));
            Ok(())
        }
        fn write(&mut self, gpa: Gpa, data: &[u8]) -> Result<(), u64> {
            let gpa = gpa.0;
            if gpa == self.refuse {
                return Err(gpa);
            }
            self.mem.put(gpa, data);
            Ok(())
        }
    }

    #[test]
    fn linear_access_through_paging() {
        let mut m = mem64();
        let r = regs64(0x10000);
        let snapshot = Mem {
            bytes: m.bytes.clone(),
            limit: m.limit,
        };
        let mut bus = Bus {
            mem: &mut m,
            refuse: 0xDEAD,
        };
        // A write across two pages: 0x1FFE.. is 0xFEE0_0FFE and 0x3000.
        let mut data = [1, 2, 3, 4];
        // Page 0x1000 is read-only with CR0.WP: #PF, present + write, and nothing written.
        let e = access_linear(&snapshot, &mut bus, r, 0x1FFE, false, true, &mut data);
        assert_eq!(
            e,
            Err(LinearError::Fault(Fault::Pf {
                cr2: 0x1FFE,
                code: 0b011
            }))
        );
        assert_eq!(bus.mem.bytes.get(&0xFEE0_0FFE), None);
        // The same with a read: fine.
        access_linear(&snapshot, &mut bus, r, 0x1FFE, false, false, &mut data).unwrap();
        // Not present: #PF with CR2 at the page that faults, user bit from CPL 3.
        let e = access_linear(&snapshot, &mut bus, r, 0x2FFC, true, true, &mut [0u8; 8]);
        assert_eq!(
            e,
            Err(LinearError::Fault(Fault::Pf {
                cr2: 0x3000,
                code: 0b110
            }))
        );
        // Writable page: written through the bus.
        access_linear(&snapshot, &mut bus, r, 0x2008, false, true, &mut [9u8, 8]).unwrap();
        assert_eq!(bus.mem.bytes.get(&0x3009), Some(&8));
        // Paging off: identity; the bus may refuse.
        let off = PagingRegs::default();
        bus.refuse = 0x5000;
        let e = access_linear(
            &snapshot,
            &mut bus,
            off,
            0x5000,
            false,
            false,
            &mut [0u8; 2],
        );
        assert_eq!(e, Err(LinearError::Stop(0x5000)));
        // A page table outside RAM reads all-ones: #PF with P and RSVD.
        let far = PagingRegs { cr3: 1 << 41, ..r };
        let e = access_linear(&snapshot, &mut bus, far, 0x1000, false, true, &mut [0u8; 1]);
        assert_eq!(
            e,
            Err(LinearError::Fault(Fault::Pf {
                cr2: 0x1000,
                code: 0b1011
            }))
        );
    }
}
