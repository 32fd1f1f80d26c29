//! Debug-exit port 0xF4 (QEMU's isa-debug-exit convention for test guests): a
//! write ends the guest; the value written is its exit code.
use super::{Effects, PortDevice, Request};

pub struct DebugExit;

/// Register-level access (the bus goes through [`PortDevice`]).
impl DebugExit {
    pub fn ports(&self) -> &'static [(u16, u16)] {
        &[(0xF4, 1)]
    }
    pub fn read(&mut self, _port: u16, size: u8) -> u32 {
        super::all_ones(size)
    }
    pub fn write(&mut self, _port: u16, _size: u8, value: u32) -> Request {
        Request::Exit(value)
    }
}

impl PortDevice for DebugExit {
    fn name(&self) -> &'static str {
        "debug-exit"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(0xF4, 1)]
    }
    fn io_read(&mut self, port: u16, size: u8, _now: u64) -> Effects {
        Effects::read(u64::from(self.read(port, size)))
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32, _now: u64) -> Effects {
        Effects::request(self.write(port, size, value))
    }
}

impl crate::state::DeviceState for DebugExit {
    /// The port has no state.
    type Data = ();
    const VERSION: u32 = 1;
    fn save(&self) -> crate::state::State<()> {
        crate::state::State {
            version: 1,
            data: (),
        }
    }
    fn restore(&mut self, state: &crate::state::State<()>) -> Result<(), crate::state::StateError> {
        crate::state::check_version(state.version, 1)
    }
    fn reset(&mut self) {}
}
