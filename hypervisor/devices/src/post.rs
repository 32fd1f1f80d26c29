//! POST-code port 0x80 and the alternative delay port 0xED. On a PC a write to
//! 0x80 goes to a diagnostic display; Linux also writes it as an I/O delay
//! (`io_delay=0x80`, or 0xED with `io_delay=0xed`). Writes are kept; a read
//! gives back the last value written to that port.
use super::{all_ones, Effects, PortDevice, Request};

pub const POST_PORT: u16 = 0x80;
pub const DELAY_PORT: u16 = 0xED;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PostCode {
    /// Last value written to 0x80 (the POST code).
    last: u32,
    /// Last value written to 0xED.
    last_delay: u32,
    /// Writes to 0x80 and 0xED together (they are mostly I/O delays).
    pub writes: u64,
}

impl PostCode {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last POST code the guest wrote to port 0x80.
    pub fn code(&self) -> u32 {
        self.last
    }
}

/// Register-level access (the bus goes through [`PortDevice`]).
impl PostCode {
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let v = if port == POST_PORT {
            self.last
        } else {
            self.last_delay
        };
        v & all_ones(size)
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Request {
        let v = value & all_ones(size);
        if port == POST_PORT {
            self.last = v;
        } else {
            self.last_delay = v;
        }
        self.writes = self.writes.wrapping_add(1);
        Request::None
    }
}

impl PortDevice for PostCode {
    fn name(&self) -> &'static str {
        "post"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(POST_PORT, 1), (DELAY_PORT, 1)]
    }
    fn io_read(&mut self, port: u16, size: u8, _now: u64) -> Effects {
        Effects::read(u64::from(self.read(port, size)))
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, _now: u64) -> Effects {
        Effects::request(self.write(port, size, value))
    }
}

crate::state::plain_state!(PostCode, 1, |_me| PostCode::new());

impl crate::state::Check for PostCode {
    /// Any value can have been written to the ports.
    fn check(&self) -> Result<(), crate::state::StateError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_code_is_stored_and_read_back() {
        let mut p = PostCode::new();
        assert_eq!(p.read(0x80, 1), 0);
        assert_eq!(p.write(0x80, 1, 0x5A), Request::None);
        assert_eq!(p.read(0x80, 1), 0x5A);
        assert_eq!(p.code(), 0x5A);
        p.write(0x80, 4, 0x1234_5678);
        assert_eq!(p.read(0x80, 2), 0x5678);
        assert_eq!(p.read(0x80, 4), 0x1234_5678);
        assert_eq!(p.writes, 2);
    }

    #[test]
    fn delay_port_is_separate() {
        let mut p = PostCode::new();
        p.write(0x80, 1, 0x11);
        p.write(0xED, 1, 0x22);
        assert_eq!(p.read(0x80, 1), 0x11);
        assert_eq!(p.read(0xED, 1), 0x22);
        assert_eq!(p.writes, 2);
        assert_eq!(p.ports(), &[(0x80, 1), (0xED, 1)]);
    }
}
