//! Device state as a value: every model can hand out its complete state as
//! a versioned plain struct, take one back, and return to its power-on
//! state. Snapshots, restore and migration build on this; nothing here
//! knows about byte encodings (the structs hold only plain data: integers,
//! byte queues, no pointers or function references).

/// The state of one device model, tagged with the layout version of `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State<T> {
    pub version: u32,
    pub data: T,
}

/// Why a state was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Saved by another layout of the model's state.
    Version { found: u32, expected: u32 },
    /// A field holds a value the model can never be in.
    Invalid(&'static str),
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StateError::Version { found, expected } => {
                write!(f, "device state version {found}, expected {expected}")
            }
            StateError::Invalid(what) => write!(f, "device state: invalid {what}"),
        }
    }
}

/// Export, import and power-on reset of a device model's state.
pub trait DeviceState {
    /// The plain struct that holds the complete state.
    type Data: Clone + PartialEq + core::fmt::Debug;
    /// The layout version of [`DeviceState::Data`]; bumped on any change.
    const VERSION: u32;
    fn save(&self) -> State<Self::Data>;
    /// Takes `state` over whole, or changes nothing and says why.
    fn restore(&mut self, state: &State<Self::Data>) -> Result<(), StateError>;
    /// Back to the power-on state (what a power cycle gives).
    fn reset(&mut self);
}

/// Refuses a state of another layout version.
pub fn check_version(found: u32, expected: u32) -> Result<(), StateError> {
    if found == expected {
        Ok(())
    } else {
        Err(StateError::Version { found, expected })
    }
}

/// For models that are plain data throughout: the state is the model's own
/// value. `$reset` is an expression of `me: &mut $t` giving the power-on
/// model.
macro_rules! plain_state {
    ($t:ty, $version:expr, |$me:ident| $reset:expr) => {
        impl $crate::state::DeviceState for $t {
            type Data = $t;
            const VERSION: u32 = $version;
            fn save(&self) -> $crate::state::State<$t> {
                $crate::state::State {
                    version: $version,
                    data: self.clone(),
                }
            }
            fn restore(
                &mut self,
                state: &$crate::state::State<$t>,
            ) -> Result<(), $crate::state::StateError> {
                $crate::state::check_version(state.version, $version)?;
                *self = state.data.clone();
                Ok(())
            }
            fn reset(&mut self) {
                let $me = &mut *self;
                let fresh: $t = $reset;
                *self = fresh;
            }
        }
    };
}
pub(crate) use plain_state;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The round trip every model must pass: `busy` (a model driven away
    /// from power-on) saves a state that a fresh model takes over and saves
    /// back identically; another version is refused without change; reset
    /// gives the fresh model's state.
    pub fn round_trip<D: DeviceState>(busy: &mut D, mut fresh: D)
    where
        D::Data: PartialEq,
    {
        let power_on = fresh.save();
        let saved = busy.save();
        assert_eq!(saved.version, D::VERSION);
        assert_ne!(saved, power_on, "the test should change the state");
        let wrong = State {
            version: D::VERSION + 1,
            data: saved.data.clone(),
        };
        assert_eq!(
            fresh.restore(&wrong),
            Err(StateError::Version {
                found: D::VERSION + 1,
                expected: D::VERSION
            })
        );
        assert_eq!(fresh.save(), power_on, "a refused state changes nothing");
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.save(), saved);
        busy.reset();
        assert_eq!(busy.save(), power_on);
    }

    use crate::{debug_exit, i8042, ioapic, lapic, pci, pic, pit, pm, post, rtc, uart};

    #[test]
    fn pic() {
        let mut p = pic::Pic::new();
        p.write(0x21, 1, 0xFB);
        round_trip(&mut p, pic::Pic::new());
    }

    #[test]
    fn pit() {
        let mut p = pit::Pit::new(crate::NS_CLOCK);
        p.set_time(1_000);
        p.write(0x43, 1, 0x34);
        p.write(0x40, 1, 0x34);
        p.write(0x40, 1, 0x12);
        round_trip(&mut p, pit::Pit::new(crate::NS_CLOCK));
    }

    const DATE: rtc::DateTime = rtc::DateTime {
        year: 2026,
        month: 12,
        day: 1,
        hour: 22,
        minute: 30,
        second: 5,
    };

    #[test]
    fn rtc() {
        let mut r = rtc::Rtc::new(DATE, 0, crate::NS_CLOCK);
        r.write(0x70, 1, 0x0E);
        r.write(0x71, 1, 0x42);
        round_trip(&mut r, rtc::Rtc::new(DATE, 0, crate::NS_CLOCK));
        // The restored clock keeps counting from where it was.
        let mut a = rtc::Rtc::new(DATE, 0, crate::NS_CLOCK);
        let mut b = rtc::Rtc::new(DATE, 0, crate::NS_CLOCK);
        b.set_time(3_000_000_000);
        a.restore(&b.save()).unwrap();
        a.set_time(4_000_000_000);
        assert_eq!(a.datetime().second, 9);
    }

    #[test]
    fn i8042() {
        let mut k = i8042::I8042::new();
        k.write(0x64, 1, 0xAA);
        round_trip(&mut k, i8042::I8042::new());
    }

    #[test]
    fn pci() {
        let mut p = pci::Pci::new();
        p.write(0xCF8, 4, 0x8000_0000);
        round_trip(&mut p, pci::Pci::new());
    }

    #[test]
    fn post() {
        let mut p = post::PostCode::new();
        p.write(0x80, 1, 0x12);
        round_trip(&mut p, post::PostCode::new());
    }

    #[test]
    fn ioapic() {
        let mut a = ioapic::IoApic::new(2);
        a.write_mmio(0, 4, 0x10);
        a.write_mmio(0x10, 4, 0x31);
        round_trip(&mut a, ioapic::IoApic::new(2));
    }

    #[test]
    fn lapic() {
        let mut l = lapic::VLapic::new(1, false, 3);
        l.set_tpr(0x20);
        round_trip(&mut l, lapic::VLapic::new(1, false, 3));
    }

    #[test]
    fn pm() {
        let mut p = pm::Pm::new(0x600, crate::NS_CLOCK);
        p.write(0x600 + pm::PM1_EN, 2, 0x0001);
        round_trip(&mut p, pm::Pm::new(0x600, crate::NS_CLOCK));
    }

    fn no_line(_: usize, _: &str) {}
    fn no_raw(_: usize, _: &[u8]) {}
    fn yes(_: usize) -> bool {
        true
    }
    fn no(_: usize) -> bool {
        false
    }
    const CONSOLE: uart::ConsolePort = uart::ConsolePort {
        source: 0,
        line: no_line,
        raw: no_raw,
        room: yes,
        focused: no,
    };

    #[test]
    fn uart() {
        let mut u = uart::Uart::new(CONSOLE, crate::NS_CLOCK);
        u.write(0x3FF, 1, 0x5A);
        u.write(0x3F8, 1, u32::from(b'h'));
        u.push_input(b'x');
        round_trip(&mut u, uart::Uart::new(CONSOLE, crate::NS_CLOCK));
        let mut bad = uart::Uart::new(CONSOLE, crate::NS_CLOCK).save();
        bad.data.rx = core::iter::repeat_n(0, 4097).collect();
        assert_eq!(
            uart::Uart::new(CONSOLE, crate::NS_CLOCK).restore(&bad),
            Err(StateError::Invalid("receive queue length"))
        );
    }

    #[test]
    fn debug_exit_has_no_state_but_a_version() {
        let mut d = debug_exit::DebugExit;
        assert_eq!(d.restore(&d.save()), Ok(()));
        let wrong = State {
            version: 2,
            data: (),
        };
        assert!(matches!(d.restore(&wrong), Err(StateError::Version { .. })));
    }
}
