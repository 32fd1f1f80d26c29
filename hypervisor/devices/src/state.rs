//! Device state as a value: every model can hand out its complete state as
//! a versioned plain struct, take one back, and return to its power-on
//! state. Snapshots, restore and migration build on this. The structs hold
//! only plain data (integers, byte queues, no pointers or function
//! references) and derive serde's traits; [`crate::snapshot`] frames them
//! into bytes.

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

/// What a restored state is checked against: the values the model can never
/// be in (queue lengths, reserved bits, counts out of range). A state the
/// model saved itself always passes.
pub trait Check {
    fn check(&self) -> Result<(), StateError>;
}

/// Fails with `what` unless `ok`.
pub fn ensure(ok: bool, what: &'static str) -> Result<(), StateError> {
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid(what))
    }
}

/// Stable tags of the device kinds in a byte encoding: never renumbered, a
/// new model gets the next free number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u16)]
pub enum Kind {
    Pic = 1,
    Pit = 2,
    Rtc = 3,
    Uart = 4,
    Pci = 5,
    I8042 = 6,
    Pm = 7,
    PostCode = 8,
    DebugExit = 9,
    IoApic = 10,
    Lapic = 11,
    FwCfg = 13,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Pic,
        Kind::Pit,
        Kind::Rtc,
        Kind::Uart,
        Kind::Pci,
        Kind::I8042,
        Kind::Pm,
        Kind::PostCode,
        Kind::DebugExit,
        Kind::IoApic,
        Kind::Lapic,
        Kind::FwCfg,
    ];

    pub fn tag(self) -> u16 {
        self as u16
    }

    pub fn from_tag(tag: u16) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.tag() == tag)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pic => "pic",
            Kind::Pit => "pit",
            Kind::Rtc => "rtc",
            Kind::Uart => "uart",
            Kind::Pci => "pci",
            Kind::I8042 => "i8042",
            Kind::Pm => "pm",
            Kind::PostCode => "post",
            Kind::DebugExit => "debug-exit",
            Kind::IoApic => "ioapic",
            Kind::Lapic => "lapic",
            Kind::FwCfg => "fw_cfg",
        }
    }
}

/// A model's kind tag.
pub trait Tagged {
    const KIND: Kind;
}

macro_rules! tagged {
    ($($t:ty => $k:ident),* $(,)?) => {
        $(impl Tagged for $t {
            const KIND: Kind = Kind::$k;
        })*
    };
}

tagged!(
    crate::pic::Pic => Pic,
    crate::pit::Pit => Pit,
    crate::rtc::Rtc => Rtc,
    crate::uart::Uart => Uart,
    crate::pci::Pci => Pci,
    crate::i8042::I8042 => I8042,
    crate::pm::Pm => Pm,
    crate::post::PostCode => PostCode,
    crate::debug_exit::DebugExit => DebugExit,
    crate::ioapic::IoApic => IoApic,
    crate::lapic::VLapic => Lapic,
);

/// Why a state could not be read from bytes (or, never for the models here,
/// written to them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BytesError {
    /// The bytes don't start with the device-state magic.
    Magic,
    /// Another version of the framing itself.
    Format { found: u16, expected: u16 },
    /// An entry of a kind this build doesn't know.
    UnknownKind(u16),
    /// An entry of another layout version than this build's model.
    Version {
        kind: Kind,
        found: u32,
        expected: u32,
    },
    /// The bytes end inside the header or an entry.
    Truncated,
    /// Bytes after the last entry, or after an entry's state inside it.
    Trailing { kind: Option<Kind> },
    /// An entry's bytes are not a state of its kind.
    Malformed(Kind),
    /// The state decodes but the model can never be in it.
    Invalid { kind: Kind, what: &'static str },
    /// The target has this device but the bytes have no entry for it.
    Missing { kind: Kind, instance: u16 },
    /// An entry for a device the target doesn't have.
    NoDevice { kind: Kind, instance: u16 },
    /// Two entries for one device.
    Duplicate { kind: Kind, instance: u16 },
    /// More devices or a longer state than the framing can count.
    TooLarge,
    /// The serializer refused a state.
    Encode(Kind),
}

impl core::fmt::Display for BytesError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            BytesError::Magic => write!(f, "device state: wrong magic"),
            BytesError::Format { found, expected } => {
                write!(f, "device state: format {found}, expected {expected}")
            }
            BytesError::UnknownKind(t) => write!(f, "device state: unknown device kind {t}"),
            BytesError::Version {
                kind,
                found,
                expected,
            } => write!(
                f,
                "device state: {} layout version {found}, expected {expected}",
                kind.name()
            ),
            BytesError::Truncated => write!(f, "device state: truncated"),
            BytesError::Trailing { kind: Some(k) } => {
                write!(f, "device state: trailing bytes in the {} entry", k.name())
            }
            BytesError::Trailing { kind: None } => {
                write!(f, "device state: trailing bytes after the last entry")
            }
            BytesError::Malformed(k) => write!(f, "device state: malformed {} entry", k.name()),
            BytesError::Invalid { kind, what } => {
                write!(f, "device state: {}: invalid {what}", kind.name())
            }
            BytesError::Missing { kind, instance } => {
                write!(f, "device state: no entry for {} {instance}", kind.name())
            }
            BytesError::NoDevice { kind, instance } => write!(
                f,
                "device state: entry for {} {instance}, which this VM doesn't have",
                kind.name()
            ),
            BytesError::Duplicate { kind, instance } => {
                write!(
                    f,
                    "device state: two entries for {} {instance}",
                    kind.name()
                )
            }
            BytesError::TooLarge => write!(f, "device state: too large for its framing"),
            BytesError::Encode(k) => write!(f, "device state: {} would not encode", k.name()),
        }
    }
}

impl BytesError {
    fn of(kind: Kind, e: StateError) -> BytesError {
        match e {
            StateError::Version { found, expected } => BytesError::Version {
                kind,
                found,
                expected,
            },
            StateError::Invalid(what) => BytesError::Invalid { kind, what },
        }
    }
}

/// A device model's state as bytes, object-safe so that the bus's boxed
/// devices have it too. Every [`DeviceState`] model with a [`Kind`] has it.
pub trait Stateful {
    fn kind(&self) -> Kind;
    /// The layout version of the state bytes.
    fn layout_version(&self) -> u32;
    /// Appends the state (without framing) to `out`.
    fn save_bytes(&self, out: &mut alloc::vec::Vec<u8>) -> Result<(), BytesError>;
    /// Takes a state of layout `version` from `bytes` (all of them), or
    /// changes nothing and says why.
    fn restore_bytes(&mut self, version: u32, bytes: &[u8]) -> Result<(), BytesError>;
    /// [`DeviceState::reset`].
    fn reset_state(&mut self);
}

impl<T> Stateful for T
where
    T: DeviceState + Tagged,
    T::Data: serde::Serialize + serde::de::DeserializeOwned,
{
    fn kind(&self) -> Kind {
        T::KIND
    }
    fn layout_version(&self) -> u32 {
        T::VERSION
    }
    fn save_bytes(&self, out: &mut alloc::vec::Vec<u8>) -> Result<(), BytesError> {
        let state = self.save();
        let taken = core::mem::take(out);
        match postcard::to_extend(&state.data, taken) {
            Ok(v) => {
                *out = v;
                Ok(())
            }
            Err(_) => Err(BytesError::Encode(T::KIND)),
        }
    }
    fn restore_bytes(&mut self, version: u32, bytes: &[u8]) -> Result<(), BytesError> {
        // A layout of another version doesn't decode as this one's.
        check_version(version, T::VERSION).map_err(|e| BytesError::of(T::KIND, e))?;
        let (data, rest) = postcard::take_from_bytes::<T::Data>(bytes)
            .map_err(|_| BytesError::Malformed(T::KIND))?;
        if !rest.is_empty() {
            return Err(BytesError::Trailing {
                kind: Some(T::KIND),
            });
        }
        self.restore(&State { version, data })
            .map_err(|e| BytesError::of(T::KIND, e))
    }
    fn reset_state(&mut self) {
        self.reset();
    }
}

/// serde for byte arrays longer than serde's own impls (32): a tuple of N
/// bytes (no length on the wire; the length is the type's).
pub mod array {
    use core::fmt;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(a: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(N)?;
        for b in a {
            t.serialize_element(b)?;
        }
        t.end()
    }

    struct Bytes<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for Bytes<N> {
        type Value = [u8; N];
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "{N} bytes")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut a = [0u8; N];
            for (i, b) in a.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            Ok(a)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        d.deserialize_tuple(N, Bytes::<N>)
    }
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
                $crate::state::Check::check(&state.data)?;
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
    pub fn round_trip<D: DeviceState + Stateful>(busy: &mut D, fresh: D)
    where
        D::Data: PartialEq,
    {
        let power_on = fresh.save();
        let saved = busy.save();
        // `fresh` comes back holding the busy state.
        let mut fresh = round_trip_values(busy, fresh);
        // The same through bytes: they give the busy state back, and the
        // restored model saves the same bytes again.
        let bytes = crate::snapshot::save(&[&fresh]).unwrap();
        fresh.reset();
        assert_eq!(fresh.save(), power_on);
        crate::snapshot::restore(&bytes, &mut [&mut fresh]).unwrap();
        assert_eq!(fresh.save(), saved);
        assert_eq!(crate::snapshot::save(&[&fresh]).unwrap(), bytes);
    }

    /// The value part of [`round_trip`], for models that have no byte
    /// encoding yet (the virtio devices and the switch, not yet in a VM's
    /// device set). Returns `fresh` holding the busy state.
    pub fn round_trip_values<D: DeviceState>(busy: &mut D, mut fresh: D) -> D
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
        fresh
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

    /// `busy`'s one entry with `f` applied to its state bytes, restored
    /// into a fresh model: the error, and the fresh model unchanged.
    fn corrupt<D: DeviceState + Stateful>(
        busy: &D,
        mut fresh: D,
        f: impl Fn(&mut Vec<u8>),
    ) -> BytesError {
        let bytes = crate::snapshot::save(&[busy]).unwrap();
        let e = crate::snapshot::entries(&bytes).unwrap()[0];
        let mut state = e.state.to_vec();
        f(&mut state);
        let bad = crate::snapshot::frame(&[crate::snapshot::Entry { state: &state, ..e }]).unwrap();
        let before = fresh.save();
        let err = crate::snapshot::restore(&bad, &mut [&mut fresh]).unwrap_err();
        assert_eq!(fresh.save(), before, "{err}");
        err
    }

    #[test]
    fn decoding_checks_what_a_model_can_be_in() {
        // Postcard writes a u8 as one byte, fields in declaration order.
        // Pit: counters[0].mode is the first byte; modes stop at 5.
        let p = pit::Pit::new(crate::NS_CLOCK);
        assert_eq!(
            corrupt(&p, pit::Pit::new(crate::NS_CLOCK), |s| s[0] = 7),
            BytesError::Invalid {
                kind: Kind::Pit,
                what: "PIT counter mode"
            }
        );
        // Pic: the master's irr, isr, imr, input, then ELCR (bits 0-2 reserved).
        let p = pic::Pic::new();
        assert_eq!(
            corrupt(&p, pic::Pic::new(), |s| s[4] = 0x07),
            BytesError::Invalid {
                kind: Kind::Pic,
                what: "ELCR reserved bits"
            }
        );
        // A state cut short, or with a byte after it, is refused as such.
        assert_eq!(
            corrupt(&p, pic::Pic::new(), |s| {
                s.pop();
            }),
            BytesError::Malformed(Kind::Pic)
        );
        assert_eq!(
            corrupt(&p, pic::Pic::new(), |s| s.push(0)),
            BytesError::Trailing {
                kind: Some(Kind::Pic)
            }
        );
        let mut long = uart::Uart::new(CONSOLE, crate::NS_CLOCK).save();
        long.data.line = core::iter::repeat_n('x', 241).collect();
        assert_eq!(
            uart::Uart::new(CONSOLE, crate::NS_CLOCK).restore(&long),
            Err(StateError::Invalid("console line length"))
        );
        let mut bad = pm::Pm::new(0x600, crate::NS_CLOCK).save();
        bad.data.pm1_cnt |= 1 << 13;
        assert_eq!(
            pm::Pm::new(0x600, crate::NS_CLOCK).restore(&bad),
            Err(StateError::Invalid("PM1 control bits"))
        );
    }

    #[test]
    fn kinds_have_stable_distinct_tags() {
        // Tags are never renumbered: a saved state names its device by them.
        let tags: [(Kind, u16); 12] = [
            (Kind::Pic, 1),
            (Kind::Pit, 2),
            (Kind::Rtc, 3),
            (Kind::Uart, 4),
            (Kind::Pci, 5),
            (Kind::I8042, 6),
            (Kind::Pm, 7),
            (Kind::PostCode, 8),
            (Kind::DebugExit, 9),
            (Kind::IoApic, 10),
            (Kind::Lapic, 11),
            (Kind::FwCfg, 13),
        ];
        assert_eq!(Kind::ALL.map(|k| (k, k.tag())), tags);
        for k in Kind::ALL {
            assert_eq!(Kind::from_tag(k.tag()), Some(k));
        }
        assert_eq!(Kind::from_tag(0), None);
        assert_eq!(Kind::from_tag(14), None);
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
