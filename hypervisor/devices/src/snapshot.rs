//! Device state as bytes: the framing of one or more device states, and the
//! complete device set of a VM (the port bus with its 8259s, the I/O APIC
//! and every vCPU's local APIC) saved, restored and reset as one.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "FVDS" | format u16 (= FORMAT) | entries u16
//! per entry: kind u16 | instance u16 | layout version u32 | length u32 | state
//! ```
//!
//! `kind` is [`Kind`]'s stable tag, `instance` counts devices of one kind in
//! the VM's order (local APIC n = vCPU n), `state` is the model's state
//! struct in postcard's encoding. The header lets a reader skip an entry it
//! doesn't know ([`entries`]) or refuse it with a specific [`BytesError`];
//! restoring never panics and changes nothing unless every entry is taken.
use crate::ioapic::IoApic;
use crate::lapic::VLapic;
use crate::state::{BytesError, Kind, Stateful};
use crate::Bus;
use alloc::vec::Vec;

pub const MAGIC: [u8; 4] = *b"FVDS";
/// The version of the framing (not of any device's layout).
pub const FORMAT: u16 = 1;

/// One framed device state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub kind: u16,
    pub instance: u16,
    pub version: u32,
    pub state: &'a [u8],
}

/// Frames `entries`.
pub fn frame(entries: &[Entry]) -> Result<Vec<u8>, BytesError> {
    let count = u16::try_from(entries.len()).map_err(|_| BytesError::TooLarge)?;
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for e in entries {
        let len = u32::try_from(e.state.len()).map_err(|_| BytesError::TooLarge)?;
        out.extend_from_slice(&e.kind.to_le_bytes());
        out.extend_from_slice(&e.instance.to_le_bytes());
        out.extend_from_slice(&e.version.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(e.state);
    }
    Ok(out)
}

/// Bytes taken from the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BytesError> {
        if self.0.len() < n {
            return Err(BytesError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BytesError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, BytesError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, BytesError> {
        self.array().map(u32::from_le_bytes)
    }
}

/// The entries of framed bytes, checked for magic, format, truncation and
/// trailing bytes (not for what the entries hold).
pub fn entries(bytes: &[u8]) -> Result<Vec<Entry<'_>>, BytesError> {
    let mut r = Reader(bytes);
    if r.array::<4>()? != MAGIC {
        return Err(BytesError::Magic);
    }
    let format = r.u16()?;
    if format != FORMAT {
        return Err(BytesError::Format {
            found: format,
            expected: FORMAT,
        });
    }
    let count = r.u16()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let kind = r.u16()?;
        let instance = r.u16()?;
        let version = r.u32()?;
        let len = usize::try_from(r.u32()?).map_err(|_| BytesError::Truncated)?;
        let state = r.take(len)?;
        out.push(Entry {
            kind,
            instance,
            version,
            state,
        });
    }
    if !r.0.is_empty() {
        return Err(BytesError::Trailing { kind: None });
    }
    Ok(out)
}

/// Each device's (kind, instance): instances count per kind in order.
fn ids(kinds: impl Iterator<Item = Kind>) -> Result<Vec<(Kind, u16)>, BytesError> {
    let mut out: Vec<(Kind, u16)> = Vec::new();
    for k in kinds {
        let n = out.iter().filter(|(j, _)| *j == k).count();
        out.push((k, u16::try_from(n).map_err(|_| BytesError::TooLarge)?));
    }
    Ok(out)
}

/// The states of `devices`, framed, in their order.
pub fn save(devices: &[&dyn Stateful]) -> Result<Vec<u8>, BytesError> {
    let mut states = Vec::new();
    for d in devices {
        let mut s = Vec::new();
        d.save_bytes(&mut s)?;
        states.push(s);
    }
    let id = ids(devices.iter().map(|d| d.kind()))?;
    let framed: Vec<Entry> = devices
        .iter()
        .zip(&id)
        .zip(&states)
        .map(|((d, &(kind, instance)), s)| Entry {
            kind: kind.tag(),
            instance,
            version: d.layout_version(),
            state: s,
        })
        .collect();
    frame(&framed)
}

/// Checks without changing anything that `bytes` holds exactly one entry
/// per device of `devices` (by kind and instance) in the layout version
/// each model writes: what an imported snapshot must pass before it is kept.
pub fn check(bytes: &[u8], devices: &[&dyn Stateful]) -> Result<(), BytesError> {
    let entries = entries(bytes)?;
    let id = ids(devices.iter().map(|d| d.kind()))?;
    let mut seen: Vec<bool> = id.iter().map(|_| false).collect();
    for e in &entries {
        let kind = Kind::from_tag(e.kind).ok_or(BytesError::UnknownKind(e.kind))?;
        let at = id.iter().position(|&d| d == (kind, e.instance));
        let no = BytesError::NoDevice {
            kind,
            instance: e.instance,
        };
        let i = at.ok_or(no)?;
        let slot = seen.get_mut(i).ok_or(no)?;
        if *slot {
            return Err(BytesError::Duplicate {
                kind,
                instance: e.instance,
            });
        }
        *slot = true;
        let ours = devices.get(i).map_or(0, |d| d.layout_version());
        if e.version != ours {
            return Err(BytesError::Version {
                kind,
                found: e.version,
                expected: ours,
            });
        }
    }
    for (&(kind, instance), s) in id.iter().zip(&seen) {
        if !s {
            return Err(BytesError::Missing { kind, instance });
        }
    }
    Ok(())
}

/// Takes every device's state from `bytes`, which must hold exactly one
/// entry per device (matched by kind and instance, in any order). On any
/// error nothing has changed.
pub fn restore(bytes: &[u8], devices: &mut [&mut dyn Stateful]) -> Result<(), BytesError> {
    let entries = entries(bytes)?;
    let id = ids(devices.iter().map(|d| d.kind()))?;
    // The entry for each device.
    let mut plan: Vec<Option<&Entry>> = id.iter().map(|_| None).collect();
    for e in &entries {
        let kind = Kind::from_tag(e.kind).ok_or(BytesError::UnknownKind(e.kind))?;
        let at = id.iter().position(|&d| d == (kind, e.instance));
        let slot = at
            .and_then(|i| plan.get_mut(i))
            .ok_or(BytesError::NoDevice {
                kind,
                instance: e.instance,
            })?;
        if slot.is_some() {
            return Err(BytesError::Duplicate {
                kind,
                instance: e.instance,
            });
        }
        *slot = Some(e);
    }
    let mut taken = Vec::new();
    for (&(kind, instance), e) in id.iter().zip(&plan) {
        taken.push(e.ok_or(BytesError::Missing { kind, instance })?);
    }
    // What to go back to if a later entry is refused.
    let mut backup = Vec::new();
    for d in devices.iter() {
        let mut s = Vec::new();
        d.save_bytes(&mut s)?;
        backup.push(s);
    }
    for (i, e) in taken.iter().enumerate() {
        let refused = match devices.get_mut(i) {
            Some(d) => d.restore_bytes(e.version, e.state).err(),
            None => None,
        };
        if let Some(err) = refused {
            for (d, b) in devices.iter_mut().zip(&backup).take(i) {
                // A state the model just saved is always taken back.
                let v = d.layout_version();
                let _ = d.restore_bytes(v, b);
            }
            return Err(err);
        }
    }
    Ok(())
}

/// A VM's complete device set: its bus (port devices, the 8259 pair and
/// the I/O APIC) and the local APIC of each vCPU (index = vCPU).
pub struct VmDevices<'a> {
    pub bus: &'a mut Bus,
    pub lapics: &'a mut [&'a mut VLapic],
}

impl VmDevices<'_> {
    fn list(&self) -> Vec<&dyn Stateful> {
        let mut out = self.bus.states();
        out.extend(self.lapics.iter().map(|l| &**l as &dyn Stateful));
        out
    }

    /// All device states, framed.
    pub fn save(&self) -> Result<Vec<u8>, BytesError> {
        save(&self.list())
    }

    /// Takes a saved set whole (the same devices, by kind and instance), or
    /// changes nothing and says why. The bus's IRQ lines are re-read at
    /// its next advance.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), BytesError> {
        let mut list = self.bus.states_mut();
        list.extend(
            self.lapics
                .iter_mut()
                .map(|l| &mut **l as &mut dyn Stateful),
        );
        restore(bytes, &mut list)?;
        self.bus.forget_lines();
        Ok(())
    }

    /// Whether `bytes` is a complete state of this device set ([`check`]).
    pub fn check(&self, bytes: &[u8]) -> Result<(), BytesError> {
        check(bytes, &self.list())
    }

    /// Power-on state for every device.
    pub fn reset(&mut self) {
        self.bus.reset();
        for l in self.lapics.iter_mut() {
            crate::state::DeviceState::reset(&mut **l);
        }
    }
}

/// The I/O APIC at power-on with every input line low (every entry is
/// masked then, so lowering them delivers nothing).
pub fn reset_ioapic(ioapic: &mut IoApic) {
    crate::state::DeviceState::reset(ioapic);
    for pin in 0..crate::ioapic::PINS {
        let _ = ioapic.set_irq(pin as u32, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DeviceState;
    use crate::{debug_exit, i8042, pci, pit, pm, post, rtc, uart, PortDevice, NS_CLOCK};
    use alloc::boxed::Box;

    fn no_line(_: usize, _: &str) {}
    fn no_raw(_: usize, _: &[u8]) {}
    fn yes(_: usize) -> bool {
        true
    }
    fn no(_: usize) -> bool {
        false
    }

    const DATE: rtc::DateTime = rtc::DateTime {
        year: 2026,
        month: 12,
        day: 1,
        hour: 23,
        minute: 59,
        second: 58,
    };
    const S: u64 = 1_000_000_000;

    /// A VM's devices at power-on, as the core builds them.
    struct Set {
        bus: Bus,
        lapics: Vec<VLapic>,
    }

    impl Set {
        fn new(vcpus: u32) -> Set {
            let mut bus = Bus::new(IoApic::new(vcpus as u8));
            let console = uart::ConsolePort {
                source: 0,
                line: no_line,
                raw: no_raw,
                room: yes,
                focused: no,
            };
            let devs: [Box<dyn PortDevice>; 8] = [
                Box::new(uart::Uart::new(console, NS_CLOCK)),
                Box::new(debug_exit::DebugExit),
                Box::new(pit::Pit::new(NS_CLOCK)),
                Box::new(rtc::Rtc::new(DATE, 0, NS_CLOCK)),
                Box::new(pci::Pci::new()),
                Box::new(i8042::I8042::new()),
                Box::new(pm::Pm::new(0x600, NS_CLOCK)),
                Box::new(post::PostCode::new()),
            ];
            for d in devs {
                bus.register(d).unwrap();
            }
            Set {
                bus,
                lapics: (0..vcpus).map(|i| VLapic::new(i, i == 0, 10)).collect(),
            }
        }

        fn with<R>(&mut self, f: impl FnOnce(&mut VmDevices) -> R) -> R {
            let mut l: Vec<&mut VLapic> = self.lapics.iter_mut().collect();
            let mut d = VmDevices {
                bus: &mut self.bus,
                lapics: &mut l,
            };
            f(&mut d)
        }

        fn save(&mut self) -> Vec<u8> {
            self.with(|d| d.save()).unwrap()
        }

        fn restore(&mut self, bytes: &[u8]) -> Result<(), BytesError> {
            self.with(|d| d.restore(bytes))
        }

        /// Mid-activity: PIT channel 0 counting in mode 2, 8259 IRR bits,
        /// keystrokes queued in the UART, an RTC alarm due every second,
        /// an I/O APIC entry and the BSP's APIC timer running.
        fn busy(vcpus: u32) -> Set {
            let mut s = Set::new(vcpus);
            let b = &mut s.bus;
            // Linux-like 8259 init, IRQ 3 and 5 raised while masked.
            for (p, v) in [
                (0x20, 0x11),
                (0x21, 0x30),
                (0x21, 4),
                (0x21, 1),
                (0x21, 0xFF),
            ] {
                b.io_write(p, 1, v, 0);
            }
            b.pic.set_irq(3, true);
            b.pic.set_irq(5, true);
            b.io_write(0x43, 1, 0x34, 1_000);
            b.io_write(0x40, 1, 0xE8, 1_000);
            b.io_write(0x40, 1, 0x03, 1_000);
            for k in *b"ls\r" {
                b.input(k, 0);
            }
            // Alarm "don't care" in all three fields, AIE on.
            for (r, v) in [(1, 0xC0), (3, 0xC0), (5, 0xC0), (0x0B, 0x22)] {
                b.io_write(0x70, 1, r, 2_000);
                b.io_write(0x71, 1, v, 2_000);
            }
            let _ = b.advance(S / 2);
            s.bus.ioapic.write_mmio(0, 4, 0x10 + 2 * 4);
            s.bus.ioapic.write_mmio(0x10, 4, 0x31);
            let _ = s.bus.ioapic.set_irq(4, true);
            let l = &mut s.lapics[0];
            let _ = l.write_mmio(0xF0, 0x1FF, 0);
            let _ = l.write_mmio(0x3E0, 0x3, 0);
            let _ = l.write_mmio(0x320, 0x20040, 0);
            let _ = l.write_mmio(0x380, 100_000, 0);
            s
        }

        /// What the guest would see next: the set run on to `t`.
        fn observe(&mut self, t: u64) -> (u16, u32, u32, u32, Option<u64>) {
            let _ = self.bus.advance(t);
            let irq = self.bus.lines();
            self.bus.io_write(0x43, 1, 0, t);
            let lo = self.bus.io_read(0x40, 1, t).value as u32;
            let hi = self.bus.io_read(0x40, 1, t).value as u32;
            self.bus.io_write(0x70, 1, 0x0C, t);
            let c = self.bus.io_read(0x71, 1, t).value as u32;
            let rx = self.bus.io_read(0x3F8, 1, t).value as u32;
            (
                irq,
                lo | hi << 8,
                c,
                rx,
                self.lapics[0].next_timer_deadline(),
            )
        }
    }

    #[test]
    fn a_power_on_set_round_trips_to_identical_bytes() {
        let bytes = Set::new(2).save();
        let mut t = Set::new(2);
        t.restore(&bytes).unwrap();
        assert_eq!(t.save(), bytes);
        // Twelve entries: the 8259s, eight port devices, I/O APIC, 2 LAPICs.
        assert_eq!(entries(&bytes).unwrap().len(), 12);
    }

    #[test]
    fn a_busy_set_round_trips_and_runs_on_the_same() {
        let mut busy = Set::busy(2);
        let bytes = busy.save();
        let mut fresh = Set::new(2);
        assert_ne!(fresh.save(), bytes, "the test should change the state");
        fresh.restore(&bytes).unwrap();
        assert_eq!(fresh.save(), bytes);
        assert_eq!(fresh.bus.pic.irr() & 0x28, 0x28);
        // Both continue alike: the PIT count, the RTC's alarm flag (AF at
        // the update at 1 s), the next keystroke, the APIC timer.
        let a = busy.observe(S + S / 4);
        let b = fresh.observe(S + S / 4);
        assert_eq!(a, b);
        assert_ne!(a.2 & 0x20, 0, "the alarm fired: {a:?}");
        assert_eq!(a.3, u32::from(b'l'));
        assert!(a.4.is_some());
        // Entries in another order are taken just the same.
        let mut e = entries(&bytes).unwrap();
        e.reverse();
        let mut other = Set::new(2);
        other.restore(&frame(&e).unwrap()).unwrap();
        assert_eq!(other.save(), bytes);
    }

    #[test]
    fn reset_gives_the_power_on_set() {
        let mut busy = Set::busy(2);
        busy.with(|d| d.reset());
        let got = busy.save();
        let want = Set::new(2).save();
        let (got, want) = (entries(&got).unwrap(), entries(&want).unwrap());
        for (g, w) in got.iter().zip(&want) {
            // The RTC is battery-backed: it keeps its date.
            if g.kind != Kind::Rtc.tag() {
                assert_eq!(g, w, "kind {}", g.kind);
            }
        }
        assert!(busy.bus.ioapic.entry(4).is_some_and(|e| e & 1 << 16 != 0));
        // The I/O APIC's input went low with the UART that drove it: raising
        // it again is an edge that delivers once the entry is unmasked.
        busy.bus.ioapic.write_mmio(0, 4, 0x10 + 2 * 4);
        busy.bus.ioapic.write_mmio(0x10, 4, 0x31);
        assert_eq!(busy.bus.ioapic.set_irq(4, true).len(), 1);
        // The clock reads on from where it was, counted from guest time 0.
        let mut rtc = rtc::Rtc::new(DATE, 0, NS_CLOCK);
        rtc.set_time(3 * S);
        rtc.reset();
        rtc.set_time(S);
        assert_eq!(rtc.datetime().second, 2);
        assert_eq!(rtc.datetime().minute, 0);
    }

    #[test]
    fn a_reset_bus_forgets_the_lines_its_devices_drove() {
        let mut s = Set::busy(1);
        let _ = s.bus.advance(S + S / 4);
        assert_ne!(s.bus.lines() & 1 << 8, 0, "the RTC alarm asserts IRQ 8");
        s.bus.reset();
        // The UART (device 0) raises IRQ 4 (THRE, OUT2): the combined lines
        // hold that and nothing the RTC drove before the reset.
        s.bus.io_write(0x3FC, 1, 0x08, 0);
        s.bus.io_write(0x3F9, 1, 0x02, 0);
        assert_eq!(s.bus.lines(), 1 << 4);
    }

    /// `bytes` with its entries changed by `f`, framed again.
    fn edit<'a>(bytes: &'a [u8], f: impl FnOnce(&mut Vec<Entry<'a>>)) -> Vec<u8> {
        let mut e = entries(bytes).unwrap();
        f(&mut e);
        frame(&e).unwrap()
    }

    #[test]
    fn check_takes_a_complete_set_and_names_what_does_not_match() {
        let bytes = Set::busy(2).save();
        let mut target = Set::new(2);
        let before = target.save();
        target.with(|d| d.check(&bytes)).unwrap();
        // Another vCPU count: a local APIC too many, or one missing.
        let three = Set::busy(3).save();
        assert_eq!(
            target.with(|d| d.check(&three)),
            Err(BytesError::NoDevice {
                kind: Kind::Lapic,
                instance: 2
            })
        );
        let mut one = Set::new(1);
        assert_eq!(
            one.with(|d| d.check(&bytes)),
            Err(BytesError::NoDevice {
                kind: Kind::Lapic,
                instance: 1
            })
        );
        let short = edit(&bytes, |e| {
            e.pop();
        });
        assert_eq!(
            target.with(|d| d.check(&short)),
            Err(BytesError::Missing {
                kind: Kind::Lapic,
                instance: 1
            })
        );
        let newer = edit(&bytes, |e| e[0].version = 7);
        assert!(matches!(
            target.with(|d| d.check(&newer)),
            Err(BytesError::Version { found: 7, .. })
        ));
        let twice = edit(&bytes, |e| {
            let first = e[0];
            e.push(first);
        });
        assert!(matches!(
            target.with(|d| d.check(&twice)),
            Err(BytesError::Duplicate { .. })
        ));
        // Nothing changed by any check.
        assert_eq!(target.save(), before);
    }

    #[test]
    fn every_corruption_has_its_error_and_changes_nothing() {
        let bytes = Set::busy(2).save();
        let mut target = Set::new(2);
        target.bus.io_write(0x21, 1, 0xFB, 0);
        let before = target.save();
        let last = |e: &mut Vec<Entry>| e.len() - 1;
        let bad_uart = {
            let mut u = uart::Uart::new(
                uart::ConsolePort {
                    source: 0,
                    line: no_line,
                    raw: no_raw,
                    room: yes,
                    focused: no,
                },
                NS_CLOCK,
            )
            .save();
            u.data.rx = core::iter::repeat_n(b'x', 4097).collect();
            postcard::to_allocvec(&u.data).unwrap()
        };
        let mut more = Set::busy(3);
        let cases: Vec<(Vec<u8>, BytesError)> = vec![
            (
                {
                    let mut b = bytes.clone();
                    b[0] ^= 1;
                    b
                },
                BytesError::Magic,
            ),
            (
                {
                    let mut b = bytes.clone();
                    b[4] = 2;
                    b
                },
                BytesError::Format {
                    found: 2,
                    expected: FORMAT,
                },
            ),
            (
                edit(&bytes, |e| e[3].kind = 99),
                BytesError::UnknownKind(99),
            ),
            (
                // The last device: every one before it was already taken
                // and must be put back.
                edit(&bytes, |e| {
                    let i = last(e);
                    e[i].version = 2;
                }),
                BytesError::Version {
                    kind: Kind::Lapic,
                    found: 2,
                    expected: 1,
                },
            ),
            (
                {
                    let mut b = bytes.clone();
                    b.push(0);
                    b
                },
                BytesError::Trailing { kind: None },
            ),
            (
                edit(&bytes, |e| e[1].state = &bad_uart),
                BytesError::Invalid {
                    kind: Kind::Uart,
                    what: "receive queue length",
                },
            ),
            (
                edit(&bytes, |e| e[3].state = &[]),
                BytesError::Malformed(Kind::Pit),
            ),
            (
                edit(&bytes, |e| {
                    e.pop();
                }),
                BytesError::Missing {
                    kind: Kind::Lapic,
                    instance: 1,
                },
            ),
            (
                more.save(),
                BytesError::NoDevice {
                    kind: Kind::Lapic,
                    instance: 2,
                },
            ),
            (
                edit(&bytes, |e| {
                    let p = e[3];
                    e.push(p);
                }),
                BytesError::Duplicate {
                    kind: Kind::Pit,
                    instance: 0,
                },
            ),
        ];
        for (bad, want) in &cases {
            assert_eq!(target.restore(bad), Err(*want));
            assert_eq!(target.save(), before, "{want} changed the target");
        }
        // Cut anywhere, the bytes are refused as truncated.
        for n in 0..bytes.len() {
            assert_eq!(
                target.restore(&bytes[..n]),
                Err(BytesError::Truncated),
                "{n}"
            );
        }
        assert_eq!(target.save(), before);
        target.restore(&bytes).unwrap();
        assert_eq!(target.save(), bytes);
    }
}
