//! What an exit handler returns: how the run loop goes on and every change
//! to guest state the VMCS holds. The run loop's apply step
//! (`exits::apply`) performs the VMWRITEs; handlers never touch the VMCS.
use crate::vm::vcpu::Flow;

/// What happens to RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rip {
    /// Left as it is (a fault, an instruction to run again, an exit that
    /// isn't an instruction).
    Keep,
    /// Past the instruction by this many bytes; blocking by STI and MOV SS
    /// ends with it (SDM Vol. 3C 25.4.2). `Advance(0)` ends the blocking
    /// only (a REP string instruction that completed some iterations).
    Advance(u64),
}

/// An exception for the next VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inject {
    Exception {
        vector: u8,
        error_code: Option<u32>,
    },
    /// #PF with CR2 (SDM Vol. 3A 6.15, #PF).
    PageFault {
        cr2: u64,
        code: u32,
    },
}

impl Inject {
    pub const UD: Inject = Inject::Exception {
        vector: super::UD,
        error_code: None,
    };
    pub const GP0: Inject = Inject::Exception {
        vector: super::GP,
        error_code: Some(0),
    };
}

/// One guest-state or control write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    None,
    Rsp(u64),
    Rflags(u64),
    /// CR0: the read shadow (what the guest sees) and the value the CPU runs with.
    Cr0 {
        shadow: u64,
        real: u64,
    },
    Cr4 {
        shadow: u64,
        real: u64,
    },
    Efer(u64),
    /// The IA-32e mode guest entry control (follows EFER.LMA).
    EntryIa32e(bool),
    Pat(u64),
    SysenterCs(u32),
    SysenterEsp(u64),
    SysenterEip(u64),
    /// The four PAE PDPTEs (SDM Vol. 3C 27.3.2.4: with EPT, VM entry loads them
    /// from the VMCS).
    Pdptes([u64; 4]),
    TscOffset(u64),
}

/// At most this many writes per exit (a MOV to CR0 into PAE paging: PDPTEs,
/// EFER, the entry control and CR0).
pub const MAX_WRITES: usize = 4;

/// What a handler tells the run loop.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub flow: Flow,
    pub rip: Rip,
    pub inject: Option<Inject>,
    writes: [Write; MAX_WRITES],
    n: u8,
}

impl Outcome {
    /// Nothing changes; the guest goes on.
    pub fn resume() -> Self {
        Self::flow(Flow::Continue)
    }

    pub fn flow(flow: Flow) -> Self {
        Outcome {
            flow,
            rip: Rip::Keep,
            inject: None,
            writes: [Write::None; MAX_WRITES],
            n: 0,
        }
    }

    /// The guest goes on at `rip` after `writes` (`Write::None` entries are
    /// skipped): built in one piece, so that it lands in the caller's slot.
    #[inline(always)]
    pub fn with_writes(rip: Rip, writes: [Write; 2]) -> Self {
        let [a, b] = writes;
        let n = u8::from(a != Write::None) + u8::from(b != Write::None);
        let (a, b) = if a == Write::None { (b, a) } else { (a, b) };
        Outcome {
            flow: Flow::Continue,
            rip,
            inject: None,
            writes: [a, b, Write::None, Write::None],
            n,
        }
    }

    /// The instruction of `len` bytes is done.
    pub fn advance(len: u64) -> Self {
        Self::resume().rip(Rip::Advance(len))
    }

    /// The guest gets `e` (RIP stays on the faulting instruction).
    pub fn fault(e: Inject) -> Self {
        let mut o = Self::resume();
        o.inject = Some(e);
        o
    }

    pub fn end(end: crate::vm::VmEnd) -> Self {
        Self::flow(Flow::End(end))
    }

    pub fn rip(mut self, rip: Rip) -> Self {
        self.rip = rip;
        self
    }

    pub fn with_flow(mut self, flow: Flow) -> Self {
        self.flow = flow;
        self
    }

    /// Adds a write (in order: the apply step performs them as listed).
    pub fn write(mut self, w: Write) -> Self {
        self.push(w);
        self
    }

    pub fn push(&mut self, w: Write) {
        let n = usize::from(self.n);
        // More than MAX_WRITES is a bug of a handler: caught by the host tests.
        debug_assert!(n < MAX_WRITES, "too many writes in one outcome");
        if let Some(slot) = self.writes.get_mut(n) {
            *slot = w;
            self.n += 1;
        }
    }

    pub fn writes(&self) -> &[Write] {
        &self.writes[..usize::from(self.n)]
    }
}
