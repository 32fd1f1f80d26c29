//! Power-off: ACPI S5 when the firmware provides ACPI; otherwise Bochs'
//! shutdown port; otherwise every CPU halts after a final message.
use arch::regs::{outb, outw};
use spin::Once;

/// Where and what to write for ACPI S5 (ACPI 6.x 4.8.3.2.1, 7.4.2).
#[derive(Clone, Copy, Debug)]
pub struct AcpiS5 {
    pub pm1a_cnt: u16,
    pub pm1b_cnt: Option<u16>,
    pub slp_typa: u8,
    pub slp_typb: u8,
}

static S5: Once<AcpiS5> = Once::new();
const SLP_EN: u16 = 1 << 13;

pub fn set_acpi_s5(s5: AcpiS5) {
    S5.call_once(|| s5);
}

/// Turns the machine off. Other CPUs must already be stopped or idle.
pub fn poweroff() -> ! {
    if let Some(s5) = S5.get() {
        crate::println!(
            "hv: powering off (ACPI S5 via PM1a_CNT port {:#x})",
            s5.pm1a_cnt
        );
        crate::console::drain();
        // SAFETY: the FADT names these ports as the PM1 control blocks;
        // writing SLP_TYP|SLP_EN is the ACPI-defined way to enter S5.
        unsafe {
            outw(s5.pm1a_cnt, (u16::from(s5.slp_typa) << 10) | SLP_EN);
            if let Some(b) = s5.pm1b_cnt {
                outw(b, (u16::from(s5.slp_typb) << 10) | SLP_EN);
            }
        }
        crate::time::delay_us(100_000);
        crate::println!("hv: ACPI S5 did not power off; trying the emulator shutdown port");
    } else {
        crate::println!("hv: powering off (no ACPI: emulator shutdown port 0x8900)");
    }
    // Let the UART drain first: the emulator exits at once.
    crate::console::drain();
    // Bochs' shutdown port: the bytes of "Shutdown" end the simulation.
    for &b in b"Shutdown" {
        // SAFETY: port 0x8900 is Bochs' shutdown port; on other machines the
        // write goes to an unused ISA port.
        unsafe { outb(0x8900, b) };
    }
    crate::time::delay_us(100_000);
    crate::println!("hv: power-off not available; all CPUs halted");
    arch::regs::halt_forever()
}
