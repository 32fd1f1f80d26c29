//! The UEFI application: gathers what the firmware knows, reads the guest
//! files from the ESP, exits boot services and hands one `BootInfo` to the
//! hypervisor. No hypervisor logic lives here.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ptr::NonNull;
use hypervisor::bootinfo::{BootInfo, EspFile, FirmwareCpu, MemoryKind, MemoryRegion};
use hypervisor::println;
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::prelude::*;
use uefi::proto::pi::mp::MpServices;
use uefi::table::cfg;

/// The hypervisor heap (host data structures; guest RAM comes from frames).
const HEAP_BYTES: usize = 32 << 20;
const STACK_BYTES: usize = 256 << 10;
/// Largest file read from `\hv\`.
const MAX_FILE: u64 = 256 << 20;

#[entry]
fn efi_main() -> Status {
    let Ok(heap) = alloc_pages(HEAP_BYTES) else {
        return Status::OUT_OF_RESOURCES;
    };
    // SAFETY: the pages were just allocated as loader data and are ours for
    // the life of the machine; no allocation happened before this.
    unsafe { hypervisor::heap::init(heap.as_ptr(), HEAP_BYTES) };
    hypervisor::console::init();
    hypervisor::console::set_mirror(Some(uefi_print));
    hypervisor::banner();

    let info = Box::leak(Box::new(gather()));
    let stack = match alloc_pages(STACK_BYTES) {
        Ok(p) => p.as_ptr() as u64 + STACK_BYTES as u64,
        Err(_) => return Status::OUT_OF_RESOURCES,
    };
    hypervisor::console::set_mirror(None);
    // SAFETY: nothing of boot services is used after this point: the heap,
    // the stack and every file live in loader-data pages.
    let mmap = unsafe { boot::exit_boot_services(None) };
    info.memory_map = mmap
        .entries()
        .map(|d| MemoryRegion {
            start: d.phys_start,
            pages: d.page_count,
            kind: kind_of(d.ty),
        })
        .collect();
    hypervisor::enter(info, stack)
}

fn alloc_pages(bytes: usize) -> uefi::Result<NonNull<u8>> {
    boot::allocate_pages(
        AllocateType::AnyPages,
        MemoryType::LOADER_DATA,
        bytes.div_ceil(4096),
    )
}

fn kind_of(ty: MemoryType) -> MemoryKind {
    match ty {
        MemoryType::CONVENTIONAL => MemoryKind::Free,
        MemoryType::BOOT_SERVICES_CODE | MemoryType::BOOT_SERVICES_DATA => MemoryKind::BootServices,
        MemoryType::LOADER_CODE | MemoryType::LOADER_DATA => MemoryKind::Loader,
        MemoryType::ACPI_RECLAIM => MemoryKind::AcpiReclaim,
        _ => MemoryKind::Reserved,
    }
}

fn gather() -> BootInfo {
    let firmware_vendor = uefi::system::firmware_vendor().to_string();
    let firmware_revision = uefi::system::firmware_revision();
    let (rsdp, smbios) = uefi::system::with_config_table(|t| {
        let find = |g| t.iter().find(|e| e.guid == g).map(|e| e.address as u64);
        let rsdp = find(cfg::ConfigTableEntry::ACPI2_GUID)
            .or_else(|| find(cfg::ConfigTableEntry::ACPI_GUID));
        let smbios = find(cfg::ConfigTableEntry::SMBIOS3_GUID)
            .or_else(|| find(cfg::ConfigTableEntry::SMBIOS_GUID))
            .is_some();
        (rsdp, smbios)
    });
    let firmware_cpus = mp_cpus();
    println!(
        "hv: uefi: {} cpus reported by MP services",
        firmware_cpus.len()
    );
    // A page below 1 MiB for the AP trampoline (real-mode SIPI vector).
    let trampoline_page = boot::allocate_pages(
        AllocateType::MaxAddress(0x9_F000),
        MemoryType::LOADER_DATA,
        1,
    )
    .map(|p| p.as_ptr() as u64)
    .unwrap_or(0);
    let (files, esp_error) = match read_esp() {
        Ok(f) => (f, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    for f in &files {
        println!("hv: esp: \\hv\\{} ({} bytes)", f.name, f.len);
    }
    if let Some(e) = &esp_error {
        println!("hv: esp: {e}");
    }
    BootInfo {
        firmware_vendor,
        firmware_revision,
        memory_map: Vec::new(),
        rsdp,
        smbios,
        firmware_cpus,
        files,
        trampoline_page,
        esp_error,
    }
}

fn mp_cpus() -> Vec<FirmwareCpu> {
    let Ok(handle) = boot::get_handle_for_protocol::<MpServices>() else {
        return Vec::new();
    };
    let Ok(mp) = boot::open_protocol_exclusive::<MpServices>(handle) else {
        return Vec::new();
    };
    let Ok(count) = mp.get_number_of_processors() else {
        return Vec::new();
    };
    (0..count.total)
        .filter_map(|i| mp.get_processor_info(i).ok())
        .map(|p| FirmwareCpu {
            apic_id: p.processor_id as u32,
            bsp: p.is_bsp(),
            enabled: p.is_enabled(),
        })
        .collect()
}

/// Reads every file of `\hv\` on the volume this image was loaded from into
/// loader-data pages.
fn read_esp() -> Result<Vec<EspFile>, String> {
    use uefi::proto::media::file::{File, FileAttribute, FileMode};
    let mut fs = boot::get_image_file_system(boot::image_handle())
        .map_err(|e| alloc::format!("no file system: {e:?}"))?;
    let mut root = fs
        .open_volume()
        .map_err(|e| alloc::format!("cannot open the ESP: {e:?}"))?;
    let dir = match root.open(cstr16!("hv"), FileMode::Read, FileAttribute::empty()) {
        Ok(d) => d,
        Err(_) => return Ok(Vec::new()),
    };
    let Some(mut dir) = dir.into_directory() else {
        return Err("\\hv is not a directory".into());
    };
    let mut files = Vec::new();
    let mut buf = alloc::vec![0u8; 4096];
    loop {
        let info = match dir.read_entry(&mut buf) {
            Ok(Some(i)) => i,
            Ok(None) => break,
            Err(e) => return Err(alloc::format!("reading \\hv: {:?}", e.status())),
        };
        if info.attribute().contains(FileAttribute::DIRECTORY) {
            continue;
        }
        let name = info.file_name().to_string();
        let size = info.file_size();
        if size > MAX_FILE {
            return Err(alloc::format!(
                "\\hv\\{name} is {size} bytes; the limit is {MAX_FILE}"
            ));
        }
        let name16 = info.file_name();
        let file = dir
            .open(name16, FileMode::Read, FileAttribute::empty())
            .map_err(|e| alloc::format!("opening \\hv\\{name}: {:?}", e.status()))?;
        let Some(mut file) = file.into_regular_file() else {
            continue;
        };
        let addr = if size == 0 {
            0
        } else {
            alloc_pages(size as usize)
                .map_err(|_| alloc::format!("no memory for \\hv\\{name}"))?
                .as_ptr() as u64
        };
        let mut done = 0usize;
        while (done as u64) < size {
            // SAFETY: `addr` points to at least `size` bytes of fresh loader pages.
            let dst = unsafe {
                core::slice::from_raw_parts_mut((addr as *mut u8).add(done), size as usize - done)
            };
            let n = file
                .read(dst)
                .map_err(|e| alloc::format!("reading \\hv\\{name}: {:?}", e.status()))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        files.push(EspFile {
            name,
            addr,
            len: done,
        });
    }
    Ok(files)
}

fn uefi_print(s: &str) {
    uefi::system::with_stdout(|out| {
        for part in s.split_inclusive('\n') {
            let (text, nl) = match part.strip_suffix('\n') {
                Some(t) => (t, true),
                None => (part, false),
            };
            let _ = core::fmt::Write::write_str(out, text);
            if nl {
                let _ = core::fmt::Write::write_str(out, "\r\n");
            }
        }
    });
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hypervisor::on_panic(info)
}
