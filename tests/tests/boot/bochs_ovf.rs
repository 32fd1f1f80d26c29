//! An OVF appliance, made the way users get one, imported and booted: the test root file
//! system (`rootfs.ext4`) is turned into a streamOptimized VMDK by `qemu-img`, described by an
//! OVF 1.0 descriptor in the style VMware's tools write, and packed into an `.ova` with `tar`
//! (descriptor first, DSP0243). `xtask::ovf::import` (what `cargo xtask import-ovf` runs)
//! converts it back to a raw disk and writes a manifest; that manifest boots, and the Linux
//! guest runs from the imported disk: root mounted from /dev/vda, a file written and read
//! back, e2fsck clean at power-off.

use integration_tests::Scenario;
use std::fs;
use std::path::Path;
use std::process::Command;
use xtask::{linux, ovf, rootfs};

/// Bytes of rootfs.ext4 (the disk's capacity).
const CAPACITY: u64 = rootfs::SIZE_MIB * 1024 * 1024;

fn descriptor(vmdk: &str, vmdk_size: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-0" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{vmdk}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{CAPACITY}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="appliance">
    <Info>A virtual machine</Info>
    <Name>appliance</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>appliance</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>160MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>160</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `dir/appliance.ova` from the root file system image with qemu-img and tar.
fn make_ova(dir: &Path, rootfs_image: &Path) -> std::path::PathBuf {
    let qemu_img = xtask::prereq::ensure_qemu_img()
        .unwrap_or_else(|e| panic!("qemu-img (Debian qemu-utils) is needed: {e:#}"));
    let vmdk = "appliance-disk1.vmdk";
    run(Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
        .arg("subformat=streamOptimized")
        .arg(rootfs_image)
        .arg(dir.join(vmdk)));
    let vmdk_size = fs::metadata(dir.join(vmdk)).unwrap().len();
    fs::write(dir.join("appliance.ovf"), descriptor(vmdk, vmdk_size)).unwrap();
    let ova = dir.join("appliance.ova");
    run(Command::new("tar").current_dir(dir).args([
        "--format=ustar",
        "-cf",
        "appliance.ova",
        "appliance.ovf",
        vmdk,
    ]));
    ova
}

#[test]
fn bochs_an_imported_ovf_appliance_boots_from_its_disk() {
    let assets = linux::prepare().unwrap_or_else(|e| {
        panic!("the Linux guest's kernel, initramfs and root image are missing: {e:#}")
    });
    let rootfs_image = assets
        .rootfs
        .clone()
        .expect("rootfs.ext4 (built by `cargo xtask build` with e2fsprogs)");
    let work = xtask::paths::root().join("target/runs/ovf-appliance");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let ova = make_ova(&work, &rootfs_image);

    let out = work.join("imported");
    let imported = ovf::import(&ovf::ImportOptions {
        input: ova,
        out: out.clone(),
        kernel: Some(assets.kernel.clone()),
        initrd: Some(assets.initrd.clone()),
        cmdline: Some(
            "console=ttyS0 panic=-1 loglevel=5 root=/dev/vda rootcheck=1 rootfsck=1".into(),
        ),
    })
    .unwrap_or_else(|e| panic!("import-ovf: {e:#}"));
    // The raw disk it wrote holds exactly the image the appliance was made from.
    assert_eq!(imported.disks.len(), 1, "{:?}", imported.disks);
    let (raw, size) = &imported.disks[0];
    assert_eq!(*size, CAPACITY);
    assert!(
        fs::read(raw).unwrap() == fs::read(&rootfs_image).unwrap(),
        "the imported disk differs from the image in the VMDK"
    );
    let disk_name = raw.file_name().unwrap().to_string_lossy().into_owned();

    // Power the machine off when the guest is done: the one line a user adds.
    let text = fs::read_to_string(&imported.manifest).unwrap();
    let manifest = out.join("boot.toml");
    fs::write(
        &manifest,
        format!("[hypervisor]\npoweroff_when_done = true\n\n{text}"),
    )
    .unwrap();

    let mut boot = Scenario::bochs("bochs_ovf", manifest.to_str().unwrap())
        .cpus(1)
        .memory_mib(512)
        .timeout_secs(1200)
        .boot();
    let say = |what: &str| format!("[appliance] linux-guest: {what}");
    boot.line_starting_containing(
        &format!("vm appliance: disk vda: \\hv\\{disk_name} (writable"),
        "00:03.0 irq 11",
    )
    .line(&say("root on /dev/vda (ext4)"))
    .line(&say("rootcheck: no file from an earlier boot"))
    .line(&say(
        "root: wrote /root/written-by-boot (boot 1) and /root/data, synced",
    ))
    .line(&say(&format!("root data md5 {}", rootfs::DATA_MD5)))
    .line_starting(&say("e2fsck -fn /dev/vda: rc=0 (ferrovisor-root: "))
    .powered_off();
    boot.finish();
}
