//! The Linux guests' ext4 root file system image, `target/linux/rootfs.ext4`.
//!
//! A guest with this image as a virtio-blk disk and `root=/dev/vda` on its command line mounts
//! it from the initramfs (see [`crate::linux`]) and runs its `/sbin/init` ([`ROOT_INIT`]). It
//! holds the static amd64 busybox with a link for each of its applets in `/bin`, the mount
//! points `/dev /proc /sys /tmp`, and `/root` for the files the workload writes. (64-bit only:
//! the 32-bit kernel can't run the amd64 busybox.)
//!
//! Built with Debian's e2fsprogs (`mke2fs -d`, no root needed) and byte-for-byte
//! reproducible: fixed UUID and directory hash seed, `root_owner=0:0`, every timestamp
//! [`TIMESTAMP`] (`E2FSPROGS_FAKE_TIME` for the file system's own, the staged files' times set
//! with `touch`, and their ctimes, which `mke2fs -d` copies from the staging directory and
//! nothing can set there, with `debugfs`). The image is only rewritten when its bytes changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{linux, paths, prereq};

/// Size of the image.
pub const SIZE_MIB: u64 = 64;
/// The file system's UUID, also its directory hash seed: fixed, so the image is reproducible.
pub const UUID: &str = "6b0e3c39-1b8f-4b6e-9d3c-7f2b5e8a9c01";
/// Every timestamp in the image, in seconds since 1970 (e2fsprogs takes a fake time of 0 as
/// none).
pub const TIMESTAMP: u32 = 1;
/// Its label.
pub const LABEL: &str = "ferrovisor-root";

/// The mke2fs configuration the image is made with (not the host's /etc/mke2fs.conf, so that
/// another host makes the same file system): Debian 12's ext4 features, 4 KiB blocks (also
/// for the `small` usage type mke2fs picks below 512 MiB).
pub const MKE2FS_CONF: &str = "\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
	small = {
		inode_ratio = 16384
	}
";

/// `/sbin/init` of the root file system. Lines starting `linux-guest: ` are for the tests.
pub const ROOT_INIT: &str = r#"#!/bin/sh
# /sbin/init of the ferrovisor Linux test guest's root file system (written by xtask,
# src/rootfs.rs). The initramfs mounted it (root=/dev/vdX) and switched here.
export PATH=/bin:/sbin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
# The last mount on / is this file system (the initramfs' rootfs is listed before it).
echo "linux-guest: root on $(awk '$2 == "/" { d = $1; t = $3 } END { print d " (" t ")" }' /proc/mounts)"

cmdline=" $(cat /proc/cmdline) "
mark=/root/written-by-boot
case "$cmdline" in
*" rootcheck=1 "*)
    if [ -f "$mark" ]; then
        echo "linux-guest: rootcheck: a file from an earlier boot is present: $(cat "$mark")"
    else
        echo "linux-guest: rootcheck: no file from an earlier boot"
    fi
    ;;
esac

# With nbdtest=1 (a root on an NBD export, tests/tests/boot/bochs_linux_nbd.rs): files
# written and fsynced one after another while the test stops and restarts the server, then
# read back from the disk.
case "$cmdline" in
*" nbdtest=1 "*)
    seq 100000 > /tmp/nbd-data
    echo "linux-guest: nbdtest: writing"
    # The test stops the server on that line: the writes below find it gone.
    sleep 2
    for i in 1 2 3 4; do
        if dd if=/tmp/nbd-data of=/root/nbd-$i bs=65536 conv=fsync 2>/dev/null; then
            echo "linux-guest: nbdtest: nbd-$i written and fsynced"
        else
            echo "linux-guest: nbdtest: nbd-$i write failed"
        fi
    done
    sync
    echo 3 > /proc/sys/vm/drop_caches
    for i in 1 2 3 4; do
        echo "linux-guest: nbdtest: nbd-$i md5 $(md5sum < /root/nbd-$i | cut -d' ' -f1)"
    done
    # Figures: 4 MiB written and fsynced, then read cold, on the root (NBD) and on vdc (an
    # in-memory disk, when there is one), in guest seconds (/proc/uptime).
    up() { cut -d' ' -f1 /proc/uptime; }
    bench() {
        t0=$(up)
        dd if=/dev/zero of="$1/bench" bs=65536 count=64 conv=fsync 2>/dev/null
        t1=$(up)
        echo 3 > /proc/sys/vm/drop_caches
        dd if="$1/bench" of=/dev/null bs=65536 2>/dev/null
        t2=$(up)
        rm -f "$1/bench"
        echo "linux-guest: nbdtest: bench $2: write+fsync 4 MiB $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }") s, cold read 4 MiB $(awk "BEGIN { printf \"%.2f\", $t2 - $t1 }") s"
    }
    bench /root nbd
    if [ -b /dev/vdc ] && mount /dev/vdc /mnt 2>/dev/null; then
        bench /mnt memory
        umount /mnt
    fi
    ;;
esac

# With disktest=1: what the guest sees of its virtio disks (serial = virtio-blk GET_ID, the
# read-only flag, the size in sectors), whether a write to vdb gets through, and which
# interrupt lines the virtio devices are on.
case "$cmdline" in
*" disktest=1 "*)
    for d in /sys/block/vd*; do
        n=${d##*/}
        echo "linux-guest: disk $n serial '$(cat "$d/serial" 2>/dev/null)' ro $(cat "$d/ro") sectors $(cat "$d/size")"
    done
    if [ -b /dev/vdb ]; then
        if dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; then
            echo "linux-guest: disk vdb write: succeeded"
        else
            echo "linux-guest: disk vdb write: refused"
        fi
        echo "linux-guest: disk vdb first MiB md5 $(dd if=/dev/vdb bs=65536 count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
    fi
    echo "linux-guest: virtio irqs $(awk '/virtio/ { printf "%s %s %s; ", $1, $(NF-1), $NF }' /proc/interrupts)"
    ;;
esac

# The workload: write a file, sync, drop the page cache and read it back from the disk.
boot=$(($(sed -n 's/^boot \([0-9]*\).*/\1/p' "$mark" 2>/dev/null | head -n 1) + 1))
echo "boot $boot of this disk, kernel $(uname -r)" > "$mark"
seq 100000 > /root/data
sync
echo 3 > /proc/sys/vm/drop_caches
echo "linux-guest: root: wrote $mark (boot $boot) and /root/data, synced"
echo "linux-guest: root data md5 $(md5sum < /root/data | cut -d' ' -f1)"

off() {
    echo "linux-guest: powering off"
    mount -o remount,ro / 2>/dev/null
    sync
    # With rootfsck=1: a full read-only check of the root file system, now mounted
    # read-only (e2fsck from Debian's e2fsprogs, with its libraries, is in /sbin).
    case "$cmdline" in
    *" rootfsck=1 "*)
        dev=$(awk '$2 == "/" { d = $1 } END { print d }' /proc/mounts)
        /sbin/e2fsck -fn "$dev" > /tmp/fsck.log 2>&1
        rc=$?
        echo "linux-guest: e2fsck -fn $dev: rc=$rc ($(tail -n 1 /tmp/fsck.log))"
        ;;
    esac
    poweroff -f
    echo "linux-guest: poweroff -f failed"
    exit 1
}

# With blkbench=1 (`cargo xtask bench`, section blk): sequential reads and writes of the
# virtio disks against the same on tmpfs, each phase between two marks. A mark is a 32-bit
# write of its number to guest-physical 0xFEBFF000 (nothing there), which a bench build of
# the hypervisor reports with its TSC and the VM's exit counts. Marks 1-2 enclose nothing
# (what a mark itself costs), 6-7 the dropping of the page cache for the last, buffered,
# read. vdb is a scratch disk (its own copy-on-write overlay, at most
# 8 MiB), so the writes leave the root file system alone.
case "$cmdline" in
*" blkbench=1 "*)
    mark() { devmem 0xfebff000 32 "$1"; }
    dd if=/dev/vda of=/tmp/disk bs=1M count=64 2>/dev/null
    sync
    echo 3 > /proc/sys/vm/drop_caches
    echo "linux-guest: blkbench: /tmp/disk holds $(wc -c < /tmp/disk) bytes of vda"
    mark 1
    mark 2
    dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/tmp/dd.1
    mark 3
    dd if=/tmp/disk of=/dev/null bs=1M count=64 2>/tmp/dd.2
    mark 4
    dd if=/dev/zero of=/dev/vdb bs=1M count=6 oflag=direct conv=fsync 2>/tmp/dd.3
    mark 5
    dd if=/dev/zero of=/tmp/written bs=1M count=6 conv=fsync 2>/tmp/dd.4
    mark 6
    sync
    echo 3 > /proc/sys/vm/drop_caches
    mark 7
    dd if=/dev/vda of=/dev/null bs=1M count=64 2>/tmp/dd.5
    mark 8
    for n in 1 2 3 4 5; do
        echo "linux-guest: blkbench: phase $n: $(tr '\n' ' ' < /tmp/dd.$n)"
    done
    echo "linux-guest: blkbench: done"
    off
    ;;
esac

case "$cmdline" in
*" interactive=1 "*)
    echo "linux-guest: interactive shell on the console; exit it to power off"
    hostname linux-guest
    export PS1='linux-guest:\w# ' HOME=/root
    setsid cttyhack sh
    ;;
esac
off
"#;

/// The md5 the root workload prints: that of the numbers 1 to 100000, one a line.
pub const DATA_MD5: &str = "dea9193b768319cbb4ff1a137ac03113";

/// busybox applets not linked in `/bin`: the file system's init is [`ROOT_INIT`].
const NOT_LINKED: &[&str] = &["busybox", "init", "linuxrc"];

/// Makes sure `dir/rootfs.ext4` is the image for `busybox` (rebuilt on every call, written only
/// when it changed) and returns its path.
pub fn build(dir: &Path, busybox: &Path) -> Result<PathBuf> {
    let out = dir.join(linux::ROOTFS_FILE);
    let partial = dir.join(format!("{}.partial", linux::ROOTFS_FILE));
    let scratch = dir.join("extract-rootfs");
    build_image(busybox, &partial, &scratch)?;
    let new = fs::read(&partial).with_context(|| format!("reading {}", partial.display()))?;
    let unchanged = fs::read(&out).is_ok_and(|old| old == new);
    if unchanged {
        fs::remove_file(&partial)?;
    } else {
        fs::rename(&partial, &out)?;
    }
    eprintln!(
        "xtask: linux: root file system {} ({SIZE_MIB} MiB ext4{})",
        paths::display(&out),
        if unchanged { "; unchanged" } else { "" }
    );
    Ok(out)
}

/// The applets of `busybox`, from `busybox --list` when it runs here (it is static: the amd64
/// one runs on an amd64 host), else the few the initramfs links.
fn applets(busybox: &Path) -> Vec<String> {
    let listed = Command::new(busybox)
        .arg("--list")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|a| !a.is_empty() && !a.contains('/'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut applets = if listed.is_empty() {
        linux::initramfs_applets()
    } else {
        listed
    };
    applets.retain(|a| !NOT_LINKED.contains(&a.as_str()));
    applets.sort();
    applets.dedup();
    applets
}

/// Builds the image for `busybox` at `out` (replaced), staging its tree in `scratch`.
pub fn build_image(busybox: &Path, out: &Path, scratch: &Path) -> Result<()> {
    let mke2fs = prereq::ensure_tool("mke2fs", "e2fsprogs")?;
    let debugfs = prereq::ensure_tool("debugfs", "e2fsprogs")?;
    let touch = prereq::ensure_tool("touch", "coreutils")?;

    let _ = fs::remove_dir_all(scratch);
    let root = scratch.join("root");
    for d in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc", "mnt", "newroot",
    ] {
        fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    set_mode(&root.join("bin/busybox"), 0o755)?;
    for applet in applets(busybox) {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(&applet))
            .with_context(|| format!("linking /bin/{applet}"))?;
    }
    fs::write(root.join("sbin/init"), ROOT_INIT)?;
    set_mode(&root.join("sbin/init"), 0o755)?;
    fs::write(root.join("etc/hostname"), "linux-guest\n")?;
    std::os::unix::fs::symlink("/proc/self/mounts", root.join("etc/mtab"))
        .context("linking /etc/mtab")?;
    let e2fsck = prereq::ensure_tool("e2fsck", "e2fsprogs")?;
    copy_with_libraries(&e2fsck, &root, "sbin/e2fsck")?;
    set_mode(&root.join("tmp"), 0o1777)?;
    set_mode(&root.join("root"), 0o700)?;

    // Every staged path, for the timestamps (parents before children does not matter).
    let mut staged = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p.clone());
            }
            staged.push(p);
        }
    }
    staged.sort();
    let mut touch_cmd = Command::new(&touch);
    touch_cmd
        .args(["-h", "-d", &format!("@{TIMESTAMP}")])
        .arg(&root)
        .args(&staged);
    crate::run_command(&mut touch_cmd)?;

    let _ = fs::remove_file(out);
    let conf = scratch.join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF)?;
    let mut mk = Command::new(&mke2fs);
    mk.args(["-q", "-F", "-t", "ext4", "-L", LABEL, "-U", UUID, "-E"])
        .arg(format!("root_owner=0:0,hash_seed={UUID}"))
        .arg("-d")
        .arg(&root)
        .arg(out)
        .arg(format!("{SIZE_MIB}M"))
        // The file system's own timestamps (e2fsprogs 1.47.0 reads this; later ones also
        // SOURCE_DATE_EPOCH).
        .env("E2FSPROGS_FAKE_TIME", TIMESTAMP.to_string())
        .env("SOURCE_DATE_EPOCH", TIMESTAMP.to_string())
        .env("MKE2FS_CONFIG", &conf)
        .stdout(Stdio::null());
    crate::run_command(&mut mk)?;

    // mke2fs -d copies each file's ctime, which nothing can set here: set them in the image.
    let mut script = String::new();
    for p in &staged {
        let inside = p.strip_prefix(&root).expect("staged under root");
        script += &format!("sif \"/{}\" ctime {TIMESTAMP}\n", inside.display());
    }
    let script_path = scratch.join("debugfs.cmds");
    fs::write(&script_path, script)?;
    let status = Command::new(&debugfs)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(out)
        .env("E2FSPROGS_FAKE_TIME", TIMESTAMP.to_string())
        .env("SOURCE_DATE_EPOCH", TIMESTAMP.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("starting debugfs")?;
    if !status.success() {
        bail!(
            "debugfs -w -f {} {} failed ({status})",
            script_path.display(),
            out.display()
        );
    }
    let _ = fs::remove_dir_all(scratch);
    Ok(())
}

/// Copies the host's dynamically linked `tool` to `inside` under `root`, with the shared
/// libraries `ldd` lists (at the same paths), so that it runs in the guest.
fn copy_with_libraries(tool: &Path, root: &Path, inside: &str) -> Result<()> {
    let dest = root.join(inside);
    fs::copy(tool, &dest).with_context(|| format!("copying {}", tool.display()))?;
    set_mode(&dest, 0o755)?;
    let out = Command::new("ldd")
        .arg(tool)
        .output()
        .context("starting ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", tool.display());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let lib = root.join(path.trim_start_matches('/'));
        if let Some(parent) = lib.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(path, &lib).with_context(|| format!("copying {path}"))?;
        set_mode(&lib, 0o755)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of this test under target/.
    fn scratch(name: &str) -> PathBuf {
        let d = paths::target_dir().join("xtask-tests").join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A stand-in for busybox: a shell script that lists three applets (the real busybox is
    /// only in target/linux/ after `cargo xtask build`).
    fn fake_busybox(dir: &Path) -> PathBuf {
        let bb = dir.join("busybox");
        fs::write(
            &bb,
            "#!/bin/sh\n[ \"$1\" = --list ] && printf 'sh\\nmount\\ninit\\nswitch_root\\n'\n",
        )
        .unwrap();
        set_mode(&bb, 0o755).unwrap();
        bb
    }

    fn debugfs(image: &Path, request: &str) -> String {
        let debugfs = prereq::ensure_tool("debugfs", "e2fsprogs").unwrap();
        let out = Command::new(debugfs)
            .args(["-R", request])
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "debugfs -R {request}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn builds_a_clean_reproducible_ext4_image_with_busybox_and_init() {
        let dir = scratch("rootfs");
        let bb = fake_busybox(&dir);
        let a = dir.join("a.ext4");
        build_image(&bb, &a, &dir.join("stage-a")).unwrap();
        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes.len() as u64, SIZE_MIB << 20);
        // The ext4 superblock is at byte 1024; s_magic at its offset 56.
        assert_eq!(&bytes[1080..1082], &0xEF53u16.to_le_bytes());

        let stats = debugfs(&a, "stats");
        for feature in ["has_journal", "extent", "metadata_csum", "64bit", "flex_bg"] {
            assert!(
                stats.lines().any(|l| l.starts_with("Filesystem features:")
                    && l.split_whitespace().any(|w| w == feature)),
                "no {feature}:\n{stats}"
            );
        }
        assert!(stats.contains(&format!("Filesystem UUID:          {UUID}")));
        assert!(stats.contains("Block size:               4096"));

        let root = debugfs(&a, "ls -l /");
        for name in [
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "root",
            "etc",
            "lost+found",
        ] {
            assert!(
                root.split_whitespace().any(|w| w == name),
                "no /{name} in:\n{root}"
            );
        }
        let bin = debugfs(&a, "ls -l /bin");
        for name in ["busybox", "sh", "mount", "switch_root"] {
            assert!(
                bin.split_whitespace().any(|w| w == name),
                "no /bin/{name}:\n{bin}"
            );
        }
        // `init` is the file system's own script, not busybox's applet.
        assert!(!bin.split_whitespace().any(|w| w == "init"), "{bin}");
        assert_eq!(debugfs(&a, "cat /sbin/init"), ROOT_INIT);
        assert!(debugfs(&a, "stat /sbin/init").contains("Mode:  0755"));
        assert!(debugfs(&a, "stat /bin/sh").contains("Fast link dest: \"busybox\""));
        assert!(debugfs(&a, "stat /bin/sh").contains("User:     0   Group:     0"));

        let e2fsck = prereq::ensure_tool("e2fsck", "e2fsprogs").unwrap();
        let fsck = Command::new(e2fsck).arg("-fn").arg(&a).output().unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck -fn: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );

        // Same input, another time and staging directory: the same bytes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = dir.join("b.ext4");
        build_image(&bb, &b, &dir.join("stage-b")).unwrap();
        let other = fs::read(&b).unwrap();
        let differ: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != other[i]).collect();
        assert!(
            differ.is_empty(),
            "the image is not reproducible: {} bytes differ, first at {:?}",
            differ.len(),
            &differ[..differ.len().min(16)]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn root_init_prints_the_root_and_checks_for_an_earlier_boot() {
        for line in [
            "echo \"linux-guest: root on $(awk",
            "linux-guest: rootcheck: a file from an earlier boot is present",
            "linux-guest: rootcheck: no file from an earlier boot",
            "*\" rootcheck=1 \"*)",
            "sync",
            "poweroff -f",
        ] {
            assert!(ROOT_INIT.contains(line), "{line}");
        }
        let numbers: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
        let digest = Command::new("md5sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(numbers.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(String::from_utf8_lossy(&digest.stdout).starts_with(DATA_MD5));
    }
}
