//! Hostile guest: executes every VMX instruction, GETSEC, MONITOR, MWAIT and
//! RDPMC. VMX is hidden from guests, so each must raise #UD, which a probe
//! catches before moving on to the next. Exits 0 on PASS, 1 on FAIL.
#![no_std]
#![no_main]

use guest_rt::idt::Fault;
use guest_rt::{println, probe};

guest_rt::entry!(main);

const UD: u8 = 6;

/// A 4 KiB-aligned page for the memory operands (a would-be VMXON region or
/// VMCS); it only has to be addressable.
#[repr(C, align(4096))]
struct Page([u64; 512]);

static mut REGION: Page = Page([0; 512]);

/// Runs the probe named `name` and returns what it raised.
fn run(name: &str) -> Option<Fault> {
    let region = &raw mut REGION;
    let page = region as u64;
    // SAFETY (every probe below): each instruction either raises an exception,
    // which the probe catches, or (were VMX really available to this guest)
    // operates on the scratch page REGION, whose first word holds the page's
    // own address, or on registers the asm declares. The probes touch no
    // memory Rust relies on. `ptr` is REGION's address.
    unsafe {
        region.cast::<u64>().write(page);
        match name {
            "vmxon" => probe!("vmxon qword ptr [{ptr}]"; ptr = in(reg) page),
            "vmclear" => probe!("vmclear qword ptr [{ptr}]"; ptr = in(reg) page),
            "vmptrld" => probe!("vmptrld qword ptr [{ptr}]"; ptr = in(reg) page),
            "vmptrst" => probe!("vmptrst qword ptr [{ptr}]"; ptr = in(reg) page),
            // Field 0x6C16: host RIP (VMREAD dest, field; VMWRITE field, value).
            "vmread" => probe!("vmread {v}, {f}"; v = out(reg) _, f = in(reg) 0x6C16_u64),
            "vmwrite" => probe!("vmwrite {f}, {v}"; f = in(reg) 0x6C16_u64, v = in(reg) 0_u64),
            "vmlaunch" => probe!("vmlaunch"),
            "vmresume" => probe!("vmresume"),
            "vmxoff" => probe!("vmxoff"),
            // Type 2 (all contexts); the 128-bit descriptor lies in REGION.
            "invept" => {
                probe!("invept {t}, xmmword ptr [{ptr}]"; t = in(reg) 2_u64, ptr = in(reg) page)
            }
            "invvpid" => {
                probe!("invvpid {t}, xmmword ptr [{ptr}]"; t = in(reg) 2_u64, ptr = in(reg) page)
            }
            // Function 0: EPTP switching, entry 0.
            "vmfunc" => probe!("vmfunc"; in("eax") 0, in("ecx") 0),
            // Leaf 0: CAPABILITIES, which only writes EAX (EBX, the index,
            // is only read and can't be an asm operand).
            "getsec" => probe!("getsec"; inout("eax") 0 => _),
            "monitor" => probe!("monitor"; in("rax") page, in("ecx") 0, in("edx") 0),
            "mwait" => probe!("mwait"; in("eax") 0, in("ecx") 0),
            "rdpmc" => probe!("rdpmc"; in("ecx") 0, out("eax") _, out("edx") _),
            _ => unreachable!(),
        }
    }
}

const PROBES: [&str; 16] = [
    "vmxon", "vmclear", "vmptrld", "vmptrst", "vmread", "vmwrite", "vmlaunch", "vmresume",
    "vmxoff", "invept", "invvpid", "vmfunc", "getsec", "monitor", "mwait", "rdpmc",
];

fn main(_cmdline: &'static str, _ram_size: u64) -> i32 {
    let mut failed = 0;
    for name in PROBES {
        match run(name) {
            Some(f) if f.vector == UD => println!("vmxinsn: {}: #UD", name),
            Some(f) => {
                println!(
                    "vmxinsn: FAIL {} raised vector {} (error {:#x}) at {:#x}, not #UD",
                    name, f.vector, f.error, f.rip
                );
                failed += 1;
            }
            None => {
                println!("vmxinsn: FAIL {} completed without #UD", name);
                failed += 1;
            }
        }
    }
    if failed == 0 {
        println!("vmxinsn: PASS");
        0
    } else {
        println!("vmxinsn: FAIL {} of {} instructions", failed, PROBES.len());
        1
    }
}
