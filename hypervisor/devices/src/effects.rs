//! What a device access changed, as one value: the core applies an
//! [`Effects`] in one place and needs nothing else from the model (no
//! re-polling, no diffing of lines).
use crate::lapic::{DeliveryMode, Shorthand};
use alloc::vec::Vec;

/// What the guest asked the platform to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Request {
    #[default]
    None,
    /// End with this exit code (the debug-exit port).
    Exit(u32),
    /// A platform reset (i8042 pulse, reset control register, ...).
    Reset,
    /// Power off (ACPI S5).
    PowerOff,
}

/// ISA IRQ lines (bit n = IRQ n) a device drives: the lines in `mask` are
/// now at `level`, and those in `pulse` had a rising edge since the last
/// report (an edge that may have fallen again, as the PIT's OUT0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    pub mask: u16,
    pub level: u16,
    pub pulse: u16,
}

impl Lines {
    pub fn is_empty(&self) -> bool {
        self.mask == 0 && self.pulse == 0
    }
}

/// An interrupt message on the APIC bus: an IPI a local APIC sends (ICR
/// write, SDM Vol. 3A 11.6.1) or an I/O APIC redirection (82093AA 3.2.4).
/// The router delivers it to the shorthand's targets, or else to every local
/// APIC for which `matches_destination(dest, dest_mode_logical, x2apic)`
/// holds (for `LowestPriority`, to one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub dest_shorthand: Shorthand,
    /// 8-bit xAPIC destination (ICR bits 63:56, RTE bits 63:56) or 32-bit x2APIC one.
    pub dest: u32,
    pub dest_mode_logical: bool,
    /// Whether `dest` is in x2APIC format (the sender was in x2APIC mode).
    pub x2apic: bool,
    pub delivery: DeliveryMode,
    /// Vector (Fixed/LowestPriority) or start page (Startup); else unused.
    pub vector: u8,
    /// ICR level bit (14): assert.
    pub level: bool,
    /// Level-triggered: the local APIC sets the TMR bit, and its EOI goes
    /// back to the I/O APIC.
    pub trigger_level: bool,
    /// The sender's APIC ID (for the "excluding self" shorthand); the I/O
    /// APIC's messages carry [`Message::FROM_IOAPIC`].
    pub source: u32,
}

impl Message {
    pub const FROM_IOAPIC: u32 = u32::MAX;

    /// An I/O APIC message (xAPIC destination format, no shorthand).
    pub fn ioapic(
        vector: u8,
        dest: u8,
        logical: bool,
        delivery: DeliveryMode,
        level_triggered: bool,
    ) -> Self {
        Message {
            dest_shorthand: Shorthand::None,
            dest: u32::from(dest),
            dest_mode_logical: logical,
            x2apic: false,
            delivery,
            vector,
            level: true,
            trigger_level: level_triggered,
            source: Self::FROM_IOAPIC,
        }
    }
}

/// Everything one device access (or one advance of device time) changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The value read (0 for writes), zero-extended.
    pub value: u64,
    /// The IRQ lines of the device, where the access can have changed them
    /// (what the model drives; the bus routes them to the 8259s and the I/O
    /// APIC and leaves their results in `messages` and `intr` instead).
    pub lines: Lines,
    /// Interrupt messages for local APICs: IPIs, and the I/O APIC's
    /// deliveries (the bus adds those that routed `lines` produce).
    pub messages: Vec<Message>,
    /// A local APIC ended this level-triggered vector: its EOI goes to the
    /// I/O APIC (SDM Vol. 3A 11.8.5).
    pub eoi: Option<u8>,
    /// The 8259's INTR output (to the BSP's LINT0) changed to this.
    pub intr: Option<bool>,
    /// The next timer deadline (guest TSC) changed to this; `Some(None)`:
    /// no timer is pending any more.
    pub deadline: Option<Option<u64>>,
    pub request: Request,
}

impl Effects {
    pub const fn none() -> Self {
        Effects {
            value: 0,
            lines: Lines {
                mask: 0,
                level: 0,
                pulse: 0,
            },
            messages: Vec::new(),
            eoi: None,
            intr: None,
            deadline: None,
            request: Request::None,
        }
    }

    /// A read that changed nothing else.
    pub fn read(value: u64) -> Self {
        Effects {
            value,
            ..Self::none()
        }
    }

    pub fn request(request: Request) -> Self {
        Effects {
            request,
            ..Self::none()
        }
    }

    pub fn with_lines(mut self, lines: Lines) -> Self {
        self.lines = lines;
        self
    }

    /// Records the deadline `after` if it differs from `before`.
    pub fn with_deadline(mut self, before: Option<u64>, after: Option<u64>) -> Self {
        if before != after {
            self.deadline = Some(after);
        }
        self
    }

    /// Whether the access changed nothing beyond the value read.
    pub fn is_quiet(&self) -> bool {
        self.lines.is_empty()
            && self.messages.is_empty()
            && self.eoi.is_none()
            && self.intr.is_none()
            && self.deadline.is_none()
            && self.request == Request::None
    }

    /// Adds the effects of a later access (`later` wins where both say
    /// something; the first request is kept; the value is this one's).
    pub fn merge(&mut self, later: Effects) {
        if !later.lines.is_empty() {
            let keep = self.lines.mask & !later.lines.mask;
            self.lines = Lines {
                mask: self.lines.mask | later.lines.mask,
                level: (self.lines.level & keep) | later.lines.level,
                pulse: self.lines.pulse | later.lines.pulse,
            };
        }
        self.messages.extend(later.messages);
        self.eoi = later.eoi.or(self.eoi);
        self.intr = later.intr.or(self.intr);
        self.deadline = later.deadline.or(self.deadline);
        if self.request == Request::None {
            self.request = later.request;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_read_value_and_the_first_request() {
        let mut read = Effects::read(0x14);
        read.deadline = Some(Some(5));
        let mut write = Effects::request(Request::Reset);
        write.eoi = Some(0x31);
        write.deadline = Some(None);
        write.lines = Lines {
            mask: 1 << 4,
            level: 1 << 4,
            pulse: 0,
        };
        read.merge(write);
        assert_eq!(read.value, 0x14);
        assert_eq!(read.eoi, Some(0x31));
        assert_eq!(read.deadline, Some(None), "the later deadline wins");
        assert_eq!(read.request, Request::Reset);
        assert_eq!(read.lines.level, 1 << 4);
        read.merge(Effects::request(Request::PowerOff));
        assert_eq!(read.request, Request::Reset, "the first request stays");
        assert!(!read.is_quiet());
        assert!(Effects::read(7).is_quiet());
    }
}
