//! What the platform's firmware tables say: the CPUs (ACPI MADT, else the UEFI
//! MP services list) and how to power off (ACPI FADT + DSDT \_S5).
use crate::bootinfo::BootInfo;
use crate::hostacpi::{AcpiTables, PhysMem};
use crate::machine::Cpu;
use crate::power::{self, AcpiS5};
use crate::println;
use alloc::vec::Vec;

/// Physical memory through the host identity map.
struct Identity {
    top: u64,
}

impl PhysMem for Identity {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > self.top || addr == 0 {
            return false;
        }
        // SAFETY: the range is below the top of the identity map and names
        // firmware tables (ACPI memory), which nothing writes.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }
}

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

/// Reads the ACPI tables, if any: CPUs from the MADT, S5 from FADT + DSDT.
pub fn discover(info: &BootInfo, identity_top: u64) -> Platform {
    let none = Platform {
        madt_cpus: None,
        cpu_source: "UEFI MP services (no ACPI MADT)",
    };
    let Some(rsdp) = info.rsdp else {
        println!("hv: acpi: no RSDP from the firmware: CPUs from UEFI MP services, power-off by emulator port");
        return none;
    };
    let mem = Identity { top: identity_top };
    let tables = match AcpiTables::new(&mem, rsdp) {
        Ok(t) => t,
        Err(e) => {
            println!("hv: acpi: unusable tables ({e}); ignoring ACPI");
            return none;
        }
    };
    match (tables.fadt(&mem), tables.s5(&mem)) {
        (Ok(fadt), Ok(s5)) => match fadt.pm1a_cnt.and_then(|g| g.io_port()) {
            Some(port) => {
                let pm1b = fadt.pm1b_cnt.and_then(|g| g.io_port());
                println!(
                    "hv: acpi: S5 via PM1a_CNT {port:#x} (SLP_TYPa {})",
                    s5.slp_typa
                );
                power::set_acpi_s5(AcpiS5 {
                    pm1a_cnt: port,
                    pm1b_cnt: pm1b,
                    slp_typa: s5.slp_typa,
                    slp_typb: s5.slp_typb,
                });
            }
            None => {
                println!("hv: acpi: FADT has no I/O-port PM1a control block; no ACPI power-off")
            }
        },
        (Err(e), _) | (_, Err(e)) => println!("hv: acpi: no S5 power-off: {e}"),
    }
    match tables.madt(&mem) {
        Ok(madt) => {
            let cpus: Vec<Cpu> = madt
                .cpus
                .iter()
                .filter(|c| c.enabled)
                .map(|c| Cpu { apic_id: c.apic_id })
                .collect();
            if cpus.is_empty() {
                return none;
            }
            Platform {
                madt_cpus: Some(cpus),
                cpu_source: "ACPI MADT",
            }
        }
        Err(e) => {
            println!("hv: acpi: no MADT ({e}); CPUs from UEFI MP services");
            none
        }
    }
}
