//! Debug-exit port 0xF4 (QEMU's isa-debug-exit convention for test guests): a
//! write ends the guest; the value written is its exit code.
use super::{Action, PortDevice};

pub struct DebugExit;

impl PortDevice for DebugExit {
    fn name(&self) -> &'static str {
        "debug-exit"
    }
    fn ports(&self) -> &'static [(u16, u16)] {
        &[(0xF4, 1)]
    }
    fn read(&mut self, _port: u16, size: u8) -> u32 {
        super::all_ones(size)
    }
    fn write(&mut self, _port: u16, _size: u8, value: u32) -> Action {
        Action::Exit(value)
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
