//! What the firmware side hands to the hypervisor: one value, built before
//! ExitBootServices, read-only afterwards.
use alloc::string::String;
use alloc::vec::Vec;

/// What a range of the firmware memory map may be used for after takeover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM (EfiConventionalMemory).
    Free,
    /// Firmware boot-services code/data: free once the hypervisor runs on its own
    /// page tables, GDT, IDT and stack.
    BootServices,
    /// Owned by this image (its code, heap, stacks, files read from the ESP).
    Loader,
    /// ACPI tables (reclaimable, but kept: guests' tables may be derived from them).
    AcpiReclaim,
    /// Firmware runtime services, ACPI NVS, MMIO, reserved, persistent: never touched.
    Reserved,
}

#[derive(Clone, Copy, Debug)]
pub struct MemoryRegion {
    pub start: u64,
    pub pages: u64,
    pub kind: MemoryKind,
}

impl MemoryRegion {
    pub fn end(&self) -> u64 {
        self.start + self.pages * 4096
    }
}

/// A CPU as reported by the UEFI MP services protocol.
#[derive(Clone, Copy, Debug)]
pub struct FirmwareCpu {
    pub apic_id: u32,
    pub bsp: bool,
    pub enabled: bool,
}

/// A file read from the ESP's `\hv\` directory into loader-owned pages.
#[derive(Clone, Debug)]
pub struct EspFile {
    pub name: String,
    pub addr: u64,
    pub len: usize,
}

impl EspFile {
    pub fn data(&self) -> &'static [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the boot stage allocated these pages as loader data, filled
        // `len` bytes, and nothing frees or writes them afterwards.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

pub struct BootInfo {
    pub firmware_vendor: String,
    pub firmware_revision: u32,
    pub memory_map: Vec<MemoryRegion>,
    /// Physical address of the ACPI RSDP (2.0 preferred), if the firmware has one.
    pub rsdp: Option<u64>,
    pub smbios: bool,
    pub firmware_cpus: Vec<FirmwareCpu>,
    pub files: Vec<EspFile>,
    /// A 4 KiB page below 1 MiB for the AP start-up trampoline.
    pub trampoline_page: u64,
    /// Why reading the ESP failed, if it did (the hypervisor still comes up).
    pub esp_error: Option<String>,
}

impl BootInfo {
    pub fn file(&self, name: &str) -> Option<&EspFile> {
        self.files
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}
