//! QEMU's TCG CPU has no VMX: the hypervisor must say so and power the machine off.

use integration_tests::Scenario;

#[test]
fn qemu_no_vtx() {
    let mut boot = Scenario::qemu("qemu_no_vtx", "hello.toml")
        .timeout_secs(120)
        .boot();
    boot.line("hv: ferrovisor 0.1.0 starting")
        .line_starting("hv: fatal: VT-x (VMX) is not supported by this CPU")
        .line_starting("hv: powering off")
        .powered_off();
    boot.finish();
}
