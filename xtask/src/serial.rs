//! Turning the raw serial byte stream into plain text lines.
//!
//! The firmware writes terminal control sequences (clear screen, cursor moves) and `\r\n`; the
//! emulated UART can also deliver a stray NUL when the hypervisor reprograms it while firmware
//! output is still in flight. [`Sanitizer`] removes escape sequences and NULs and turns a run of
//! `\r` ending in `\n` (`\r\n`, and `\r\r\n` from text that already had `\r\n` going through a
//! console that adds `\r`) into one `\n`, and a `\r` followed by text into `\n` too, so every
//! line of output, even one that follows firmware text ending in a bare `\r`, starts a line of
//! its own. It works on a stream (the live console) and on a whole log ([`normalize`]) the same
//! way.

/// Streaming serial-output cleaner; feed it chunks in order.
#[derive(Debug, Default, Clone)]
pub struct Sanitizer {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    /// After one or more `\r`: a line break not yet written (a following `\n` belongs to it).
    CarriageReturn,
    /// After ESC.
    Escape,
    /// Inside `ESC [ ...` up to its final byte.
    Csi,
}

impl Sanitizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cleans one chunk, appending the result to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &byte in input {
            self.state = match (self.state, byte) {
                (State::Escape, b'[') => State::Csi,
                // Two-byte sequences such as `ESC c` or `ESC (`: drop the second byte too.
                (State::Escape, _) => State::Text,
                (State::Csi, 0x40..=0x7e) => State::Text,
                (State::Csi, _) => State::Csi,
                (_, b'\r') | (State::CarriageReturn, 0) => State::CarriageReturn,
                (State::CarriageReturn, b'\n') => {
                    out.push(b'\n');
                    State::Text
                }
                (State::CarriageReturn, byte) => {
                    out.push(b'\n');
                    State::Text.after(byte, out)
                }
                (State::Text, byte) => State::Text.after(byte, out),
            };
        }
    }

    /// Ends the stream: writes a line break still pending from a trailing `\r`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == State::CarriageReturn {
            out.push(b'\n');
        }
        self.state = State::Text;
    }
}

impl State {
    /// The state after `byte` in plain text (not `\r`), writing what it stands for.
    fn after(self, byte: u8, out: &mut Vec<u8>) -> State {
        match byte {
            0x1b => State::Escape,
            0 => State::Text,
            byte => {
                out.push(byte);
                State::Text
            }
        }
    }
}

/// Cleans a whole serial log (see the module documentation).
pub fn normalize(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut sanitizer = Sanitizer::new();
    sanitizer.feed(raw, &mut out);
    sanitizer.finish(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escapes_nuls_and_normalizes_line_ends() {
        let raw = b"\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: starting Boot0001 (x)\r\0hv: ferrovisor 0.1.0 starting\r\ncpu0: up\r\r\n\r\nend\r";
        assert_eq!(
            normalize(raw),
            "BdsDxe: starting Boot0001 (x)\nhv: ferrovisor 0.1.0 starting\ncpu0: up\n\nend\n"
        );
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let raw = b"a\r\nb\x1b[1;2Hc\rd\x1bce\r\r\0\nf\r";
        let whole = normalize(raw);
        for split in 0..raw.len() {
            let mut s = Sanitizer::new();
            let mut out = Vec::new();
            s.feed(&raw[..split], &mut out);
            s.feed(&raw[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), whole, "split at {split}");
        }
        assert_eq!(whole, "a\nbc\nde\nf\n");
    }
}
