//! The guest ACPI tables of `loader::acpi_gen`, parsed back with the core's
//! own ACPI parser (the one that reads the host firmware's tables).
use crate::hostacpi::{
    self, AcpiTables, GenericAddress, PhysMem, Polarity, Signature, Trigger, S5,
};
use alloc::vec;
use alloc::vec::Vec;
use loader::acpi_gen::*;

const BASE: u64 = 0xE_0000;

struct Blob<'a>(&'a AcpiBlob);

impl PhysMem for Blob<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let b = self.0;
        let Some(off) = addr.checked_sub(b.base_gpa) else {
            return false;
        };
        let off = off as usize;
        match b.bytes.get(off..off + buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

#[test]
fn parses_back_with_the_acpi_module() {
    let cfg = AcpiConfig {
        vcpus: 4,
        pm_base: 0xB000,
        pci_root: true,
        ..AcpiConfig::default()
    };
    let blob = build(BASE, &cfg).unwrap();
    assert_eq!(blob.rsdp_gpa, 0xE_1000);
    assert_eq!(blob.facs_gpa, 0xE_0000);
    let mem = Blob(&blob);
    let t = AcpiTables::new(&mem, blob.rsdp_gpa).unwrap();
    assert_eq!(t.rsdp.revision, 2);
    assert_eq!(&t.rsdp.oem_id, b"FERRO ");
    assert_eq!(t.root, Signature::XSDT);
    assert_eq!(t.entries.len(), 2);

    let m = t.madt(&mem).unwrap();
    assert_eq!(m.lapic_addr, 0xFEE0_0000);
    assert!(m.legacy_pics);
    assert_eq!(m.cpus.len(), 4);
    for (i, c) in m.cpus.iter().enumerate() {
        assert_eq!((c.apic_id, c.processor_uid), (i as u32, i as u32));
        assert!(c.enabled && !c.x2apic);
    }
    assert_eq!(
        m.io_apics,
        vec![hostacpi::IoApic {
            id: 4,
            address: 0xFEC0_0000,
            gsi_base: 0
        }]
    );
    assert_eq!(m.overrides.len(), 2);
    let (irq0, sci) = (m.overrides[0], m.overrides[1]);
    assert_eq!((irq0.bus, irq0.source, irq0.gsi), (0, 0, 2));
    assert_eq!(
        (irq0.polarity(), irq0.trigger()),
        (Polarity::ActiveHigh, Trigger::Edge)
    );
    assert_eq!((sci.bus, sci.source, sci.gsi), (0, 9, 9));
    assert_eq!(
        (sci.polarity(), sci.trigger()),
        (Polarity::ActiveHigh, Trigger::Level)
    );

    let f = t.fadt(&mem).unwrap();
    assert_eq!(f.revision, 6);
    assert_eq!(f.sci_int, 9);
    assert_eq!(f.smi_cmd, 0);
    assert_eq!(f.century, Some(0x32));
    assert_eq!(f.iapc_boot_arch, 0b111);
    assert_eq!(f.flags, 0x0575);
    let pm1a = f.pm1a_cnt.unwrap();
    assert_eq!(
        (pm1a.space_id, pm1a.bit_width, pm1a.io_port()),
        (GenericAddress::SYSTEM_IO, 16, Some(0xB004))
    );
    assert_eq!(f.pm1b_cnt, None);
    let tmr = f.pm_tmr.unwrap();
    assert_eq!((tmr.bit_width, tmr.io_port()), (32, Some(0xB008)));
    let reset = f.reset.unwrap();
    assert_eq!(
        (reset.reg.io_port(), reset.reg.bit_width, reset.value),
        (Some(0xCF9), 8, 6)
    );
    let dsdt = f.dsdt.unwrap();
    assert!(dsdt > blob.rsdp_gpa && dsdt < BASE + blob.bytes.len() as u64);
    assert_eq!(
        t.s5(&mem).unwrap(),
        S5 {
            slp_typa: 5,
            slp_typb: 5
        }
    );

    // The 32-bit fields match the X_ ones.
    let fadt = t.find(&mem, Signature::FADT).unwrap();
    let d = &fadt.data;
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    assert_eq!(u32_at(36) as u64, blob.facs_gpa);
    assert_eq!(&d[132..140], &[0; 8], "X_FIRMWARE_CTRL must be 0");
    assert_eq!(u32_at(40) as u64, dsdt);
    assert_eq!(
        [u32_at(56), u32_at(64), u32_at(76), u32_at(80)],
        [0xB000, 0xB004, 0xB008, 0xB020]
    );
    assert_eq!(&d[88..93], &[4, 2, 0, 4, 4]);
    assert_eq!(&d[148..160], &gas_io(0xB000, 4, 2));
    assert_eq!(&d[220..232], &gas_io(0xB020, 4, 1));
    assert_eq!(d.len(), FADT_LEN);
}

#[test]
fn facs_and_rsdt() {
    let blob = build(BASE, &AcpiConfig::default()).unwrap();
    let b = &blob.bytes;
    assert_eq!(&b[0..4], b"FACS");
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 64);
    assert_eq!(blob.facs_gpa % 64, 0);
    // The RSDT lists the same tables as the XSDT.
    let mem = Blob(&blob);
    let t = AcpiTables::new(&mem, blob.rsdp_gpa).unwrap();
    let rsdp = &b[0x1000..0x1024];
    let rsdt_addr = u32::from_le_bytes(rsdp[16..20].try_into().unwrap());
    let rsdt = hostacpi::read_table(&mem, rsdt_addr.into(), Some(Signature::RSDT)).unwrap();
    let entries: Vec<u64> = rsdt
        .body()
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()).into())
        .collect();
    assert_eq!(entries, t.entries);
    // Every table is 16-byte aligned.
    assert!(t.entries.iter().all(|a| a % 16 == 0));
}

#[test]
fn no_ioapic_no_overrides_and_24bit_timer() {
    let cfg = AcpiConfig {
        ioapic: false,
        pm_timer_32bit: false,
        i8042: false,
        s5_slp_typ: 0,
        ..AcpiConfig::default()
    };
    let blob = build(0x7FF0_0000, &cfg).unwrap();
    let mem = Blob(&blob);
    let t = AcpiTables::new(&mem, blob.rsdp_gpa).unwrap();
    let m = t.madt(&mem).unwrap();
    assert_eq!(m.cpus.len(), 1);
    assert!(m.io_apics.is_empty() && m.overrides.is_empty());
    let f = t.fadt(&mem).unwrap();
    assert_eq!(f.flags & (1 << 8), 0);
    assert_eq!(f.iapc_boot_arch, 0b101);
    assert_eq!(
        t.s5(&mem).unwrap(),
        S5 {
            slp_typa: 0,
            slp_typb: 0
        }
    );
}

#[test]
fn sleep_type_encodings() {
    for v in 0..=7u8 {
        let cfg = AcpiConfig {
            s5_slp_typ: v,
            ..AcpiConfig::default()
        };
        let blob = build(BASE, &cfg).unwrap();
        let mem = Blob(&blob);
        let s5 = AcpiTables::new(&mem, blob.rsdp_gpa)
            .unwrap()
            .s5(&mem)
            .unwrap();
        assert_eq!((s5.slp_typa, s5.slp_typb), (v, v));
    }
}
