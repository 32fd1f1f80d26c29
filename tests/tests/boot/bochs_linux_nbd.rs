//! A Linux guest whose root is an NBD export (tests/manifests/linux-nbd.toml): this test runs
//! nbdkit on the host (a writable copy of rootfs.ext4 on port 10819, the image read-only on
//! port 10820; slirp reaches the host at 10.0.2.2). The hypervisor negotiates both exports
//! through its own e1000 before the guest starts. As the guest starts writing and fsyncing
//! files, the writable export's server is killed; once the hypervisor says the guest's
//! requests wait for it, it is started again: the connection comes back (250 ms doubling to
//! 2 s between attempts), the waiting requests are re-sent, and the guest's writes complete. The guest reads its files back
//! (md5), checks its root with e2fsck, and after power-off the host checks the export file
//! (e2fsck -fn) and reads a file the guest wrote out of it.

use integration_tests::Scenario;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xtask::linux;

/// The manifest's ports.
const RW_PORT: u16 = 10819;
const RO_PORT: u16 = 10820;
/// Where no server listens (guest `nbdgone`).
const NO_PORT: u16 = 10821;
/// Sectors of rootfs.ext4 (64 MiB).
const SECTORS: u64 = xtask::rootfs::SIZE_MIB * 1024 * 1024 / 512;
/// How long the writable export's server stays away once the guest's requests wait for it.
const AFTER_WAITING: Duration = Duration::from_secs(2);

/// nbdkit serving `file` on 127.0.0.1:`port` in the foreground (killed with the test).
fn nbdkit(file: &Path, port: u16, read_only: bool, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("nbdkit log");
    let mut c = Command::new("nbdkit");
    c.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string());
    if read_only {
        c.arg("-r");
    }
    c.arg("file")
        .arg(format!("file={}", file.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let child = c.spawn().unwrap_or_else(|e| {
        panic!("starting nbdkit ({e}): install it with `apt-get install nbdkit` (.ci/run does)")
    });
    // Listening before the hypervisor connects (it retries anyway).
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nbdkit does not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn free(port: u16) {
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        panic!("port {port} on 127.0.0.1 is in use: linux-nbd.toml's NBD server needs it");
    }
}

struct Servers {
    rw: Mutex<Option<Child>>,
    ro: Mutex<Option<Child>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in [&self.rw, &self.ro] {
            if let Some(mut c) = s.lock().unwrap().take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[test]
fn bochs_linux_root_on_nbd_survives_a_server_restart() {
    let assets = linux::prepare().unwrap_or_else(|e| {
        panic!(
            "the Linux guest's kernel, initramfs and root image are missing and could not be \
             prepared: {e:#}; run `cargo xtask build` on a Debian machine that reaches a \
             package mirror"
        )
    });
    let gold = assets
        .rootfs
        .expect("rootfs.ext4 (cargo xtask build makes it)");
    free(RW_PORT);
    free(RO_PORT);
    free(NO_PORT);
    let dir: PathBuf = xtask::paths::run_dir("bochs_linux_nbd-export");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("root.ext4");
    std::fs::copy(&gold, &export).unwrap();
    let gold_copy = dir.join("gold.ext4");
    std::fs::copy(&gold, &gold_copy).unwrap();
    let servers = Arc::new(Servers {
        rw: Mutex::new(Some(nbdkit(
            &export,
            RW_PORT,
            false,
            &dir.join("nbdkit-rw-1.log"),
        ))),
        ro: Mutex::new(Some(nbdkit(
            &gold_copy,
            RO_PORT,
            true,
            &dir.join("nbdkit-ro.log"),
        ))),
    });

    let (s, s2, e) = (servers.clone(), servers.clone(), export.clone());
    let logs = dir.clone();
    let mut boot = Scenario::bochs("bochs_linux_nbd", "linux-nbd.toml")
        .cpus(2)
        .memory_mib(1024)
        .timeout_secs(1200)
        .with_nic()
        .call_after("linux-guest: nbdtest: writing", move || {
            // The server goes away before the guest's writes...
            if let Some(mut c) = s.rw.lock().unwrap().take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        })
        .call_after(
            "vm nbd: disk vda: nbd://10.0.2.2:10819/: no connection: ",
            move || {
                // ... and comes back once they wait for it.
                std::thread::sleep(AFTER_WAITING);
                *s2.rw.lock().unwrap() =
                    Some(nbdkit(&e, RW_PORT, false, &logs.join("nbdkit-rw-2.log")));
            },
        )
        .send_after(
            "linux-guest: nbdtest: nbd-4 written and fsynced",
            b"\x01:snapshot nbd\r",
        )
        .boot();
    drop(servers);

    let vda = "vm nbd: disk vda: nbd://10.0.2.2:10819/";
    let vdb = "vm nbd: disk vdb: nbd://10.0.2.2:10820/gold";
    let say = |what: &str| format!("[nbd] linux-guest: {what}");
    // Both exports negotiated before the guest starts: their sizes are the capacities.
    boot.line_starting(&format!(
        "{vda}: connected: {} bytes, flags ",
        SECTORS * 512
    ))
    .line_starting_containing(
        &format!("{vdb}: connected: {} bytes, flags ", SECTORS * 512),
        "(read-only)",
    )
    .line(&format!(
        "{vda} (blocks on the NBD server), serial \"nbd-root\", 00:03.0 irq 11"
    ))
    .line(&format!(
        "{vdb} (blocks on the NBD server), no serial, 00:04.0 irq 10"
    ))
    // The guest's view: its root on vda, vdb read-only because the export is.
    .line(&say("root on /dev/vda (ext4)"))
    .line(&say(&format!(
        "disk vda serial 'nbd-root' ro 0 sectors {SECTORS}"
    )))
    .line(&say(&format!("disk vdb serial '' ro 1 sectors {SECTORS}")))
    .line(&say("disk vdb write: refused"))
    // Past 8 NBD connections a guest is refused, and what it had connected is released:
    // the unreachable server's guest after it still gets its connection (and its 30 s).
    .line(
        "vm nbdmany: not started: NBD disk (manifest line 58): nbd://10.0.2.2:10820/: more than 8 NBD disks (each holds a TCP connection of the hypervisor's endpoint)",
    )
    .line_starting(
        "vm nbdgone: not started: NBD disk (manifest line 69): nbd://10.0.2.2:10821/: export not negotiated within 30 s (",
    );
    let many = boot
        .result
        .lines()
        .filter(|l| {
            l.starts_with("vm nbdmany: disk vd") && l.contains(": connected: 67108864 bytes")
        })
        .count();
    boot.expect(
        many == 6,
        &format!("nbdmany connected 6 disks before the 7th was refused ({many})"),
    );
    // The server killed and back: the link went down, the guest's requests waited (said
    // once), the link came back with them re-sent, and the writes completed after that.
    let lost = format!("{vda}: connection lost: ");
    boot.line_starting(&lost).line_starting_containing(
        &format!("{vda}: no connection: "),
        " requests wait for the server",
    );
    let lines: Vec<String> = boot.result.lines().map(str::to_string).collect();
    let at = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l));
    let lost_at = at(&|l| l.starts_with(&lost));
    let back_at = lost_at.and_then(|i| {
        lines[i..]
            .iter()
            .position(|l| l.starts_with(&format!("{vda}: connected: ")))
            .map(|j| i + j)
    });
    let resent: usize = back_at
        .and_then(|i| {
            let l = &lines[i];
            let n = l.split(", ").find(|p| p.ends_with(" requests re-sent"))?;
            n.trim_end_matches(" requests re-sent").parse().ok()
        })
        .unwrap_or(0);
    let written = at(&|l| l == say("nbdtest: nbd-4 written and fsynced"));
    let negotiated = at(&|l| l.starts_with(&format!("{vdb}: connected: ")));
    let started = at(&|l| l.starts_with("vm nbd: started ("));
    boot.expect(
        matches!((negotiated, started), (Some(n), Some(s)) if n < s),
        "both exports negotiated before the guest started",
    )
    .expect(
        back_at.is_some(),
        "the connection came back after it was lost",
    )
    .expect(
        resent > 0,
        &format!("requests were waiting and were re-sent on the new connection ({resent})"),
    )
    .expect(
        matches!((back_at, written), (Some(b), Some(w)) if w > b),
        "the last fsync completed after the reconnect",
    );
    for i in 1..=4 {
        boot.line(&say(&format!("nbdtest: nbd-{i} written and fsynced")))
            .line(&say(&format!(
                "nbdtest: nbd-{i} md5 {}",
                xtask::rootfs::DATA_MD5
            )));
    }
    boot.no_line_containing("write failed")
        .line(&say(&format!("root data md5 {}", xtask::rootfs::DATA_MD5)))
        .line_starting(&say("e2fsck -fn /dev/vda: rc=0 (ferrovisor-root: "))
        // No snapshot of a VM whose blocks live on a server.
        .line_containing(
            "VM `nbd` has 2 NBD disk(s): their blocks live on the NBD server, which a snapshot can't hold or roll back",
        )
        .no_line_containing("requests timed out")
        .no_line_containing("I/O error")
        .no_line_containing("Kernel panic")
        .no_line_containing("DEVICE_NEEDS_RESET")
        .line_starting_containing("hv: summary: 1 guest", "nbd exited code=0 (powered off)")
        .line_starting("hv: powering off")
        .powered_off();

    // Figures (guest seconds under Bochs: instructions, plus slirp's real time for NBD):
    // printed, never a pass/fail.
    for disk in ["nbd", "memory"] {
        let prefix = say(&format!("nbdtest: bench {disk}: "));
        boot.line_starting(&prefix);
        if let Some(l) = boot.result.lines().find(|l| l.starts_with(&prefix)) {
            let num = |after: &str| -> Option<f64> {
                l.split(after).nth(1)?.split(' ').next()?.parse().ok()
            };
            let secs = [num("write+fsync 4 MiB "), num("cold read 4 MiB ")];
            let rate = |s: f64| if s > 0.0 { 4.0 / s } else { f64::INFINITY };
            if let [Some(w), Some(r)] = secs {
                eprintln!(
                    "[bochs_linux_nbd] {disk}: write+fsync {:.2} MiB/s, cold read {:.2} MiB/s (guest time)",
                    rate(w),
                    rate(r)
                );
            }
        }
    }

    // The export file itself, after power-off: clean, with the guest's files in it.
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&export)
        .output()
        .expect("e2fsck (e2fsprogs)");
    boot.expect(
        fsck.status.success(),
        &format!(
            "host e2fsck -fn of the export: {} {}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        ),
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /root/nbd-4"])
        .arg(&export)
        .stderr(Stdio::null())
        .output()
        .expect("debugfs (e2fsprogs)");
    boot.expect(
        integration_tests::digest("md5sum", &cat.stdout) == xtask::rootfs::DATA_MD5,
        "/root/nbd-4 read from the export file on the host has the guest's data",
    );
    boot.finish();
}
