//! Snapshots through the management console (Ctrl-A :): a guest is snapshotted, changes its
//! marker and counter, and is rolled back twice (each time it continues with the snapshot's
//! values and keeps ticking); a clone of the snapshot runs beside it; a guest with
//! `on_crash = "rollback"` comes back from its snapshot after each crash, faster than a cold
//! restart would get it there (both times printed); a 2-vCPU guest is snapshotted and rolled
//! back while both its vCPUs run. Over the management API (`cargo xtask ctl`'s client code)
//! a snapshot is exported to a file, imported back under another name and rolled back to, and a
//! corrupted copy is refused with the reason; a second, short boot starts a guest from the
//! exported file (`snapshot =` in its manifest) and restarts it from there, and refuses guests
//! whose file is corrupted or whose memory does not match.

use integration_tests::Scenario;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `api_token` in snapshot.toml.
const TOKEN: &str = "bochs-snapshot-api-token-0123";

/// A `cargo xtask ctl` command against the forwarded API port, tried a few times (slirp takes a
/// connection at once and drops it if the machine's side isn't listening yet).
fn ctl(port: u16, words: &str) -> Result<String, String> {
    let addr = format!("127.0.0.1:{port}");
    let words: Vec<String> = words.split(' ').map(String::from).collect();
    let mut last = String::new();
    for _ in 0..3 {
        match xtask::ctl::run(&addr, TOKEN, false, &words) {
            Ok(out) => return Ok(out),
            // an answer from the hypervisor is final
            Err(e) if e.to_string().ends_with(')') => return Err(e.to_string()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(last)
}

/// Where the exported files go (kept for a look afterwards).
fn files_dir() -> PathBuf {
    let d = xtask::paths::target_dir().join("runs/bochs_snapshot_files");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("files dir");
    d
}

/// The API steps while the first machine runs: (what, result).
type Steps = Vec<(String, Result<String, String>)>;

/// Runs the API steps (see [`Steps`]).
fn api_steps(port: u16, dir: &Path) -> Steps {
    let file = dir.join("s1.snap");
    let bad = dir.join("bad.snap");
    let mut out = Vec::new();
    let mut step = |what: String| {
        let r = ctl(port, &what);
        out.push((what, r));
    };
    step(format!("export snapa s1 {}", file.display()));
    if let Ok(mut bytes) = std::fs::read(&file) {
        // A bit flipped in the last page of the RAM section.
        let at = bytes.len() - 100;
        bytes[at] ^= 0x10;
        std::fs::write(&bad, &bytes).expect("writing the corrupted copy");
    }
    step(format!("import snapa imp {}", file.display()));
    step(format!("import snapa bad {}", bad.display()));
    step(String::from("rollback snapa imp"));
    out
}

/// The snapshot file's header: magic, format version, then the build string.
fn header(bytes: &[u8]) -> Option<(&[u8], u32, String)> {
    let magic = bytes.get(..8)?;
    let version = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let blen = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?) as usize;
    let build = String::from_utf8(bytes.get(20..20 + blen)?.to_vec()).ok()?;
    Some((magic, version, build))
}

/// `(tick, marker)` of a `[vm] snapguest: tick N marker M` line.
fn tick(line: &str, vm: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix(&format!("[{vm}] snapguest: tick "))?;
    let (n, m) = rest.split_once(" marker ")?;
    Some((n.parse().ok()?, m.trim_end().to_string()))
}

/// The first tick line of `vm` with marker `before` after the `nth` line (0-based)
/// containing `after`, if it is among the first eight tick lines there: lines the guest
/// printed before the command may still come out after it (the console holds guest lines
/// while the prompt is open, and typing two commands takes some ticks under Bochs).
fn tick_after(lines: &[&str], after: &str, nth: usize, vm: &str) -> Option<(u64, String)> {
    let at = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(after))
        .nth(nth)?
        .0;
    lines[at + 1..]
        .iter()
        .filter_map(|l| tick(l, vm))
        .take(8)
        .find(|(_, m)| m == "before")
}

/// The last tick line of `vm` before the `nth` line containing `before`.
fn tick_before(lines: &[&str], before: &str, nth: usize, vm: &str) -> Option<(u64, String)> {
    let at = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(before))
        .nth(nth)?
        .0;
    lines[..at].iter().rev().find_map(|l| tick(l, vm))
}

/// A number in `line` right after `key` (e.g. `restored in ` -> 123).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn bochs_snapshot_rollback_clone_and_rollback_on_crash() {
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port");
    let dir = files_dir();
    let steps: Arc<Mutex<Steps>> = Arc::default();
    let record = steps.clone();
    let call_dir = dir.clone();
    let mut boot = Scenario::bochs("bochs_snapshot", "snapshot.toml")
        .cpus(2)
        .timeout_secs(600)
        .forward_port(api_port, 8080)
        .send_after("[snapc] snapguest: tick 3 ", b"\x01:snapshot snapc c1\r")
        .send_after(
            "[snapa] snapguest: tick 5 ",
            b"\x01:snapshot snapa s1\r\x01:snapshot spin2 p1\r",
        )
        // snapa changes its marker at tick 25 (tests/manifests/snapshot.toml): the snapshot
        // typed after tick 5 is taken well before (typing it takes ~6 ticks under Bochs, and
        // the guest's lines before it may still be queued behind the prompt).
        .send_after(
            "[snapa] snapguest: tick 26 marker changed",
            b"\x01:rollback snapa s1\r\x01:rollback spin2 p1\r",
        )
        .send_after("hv: vm snapa: rolled back to snapshot s1", b"")
        .send_after("[snapa] snapguest: tick 26 marker changed", b"\x01:rollback snapa s1\r")
        .send_after("hv: vm snapa: rolled back to snapshot s1", b"")
        .send_after(
            "[snapa] snapguest: tick ",
            b"\x01:clone s1 snapb\r\x01:rollback snapa c1\r\x01:rollback snapa nosuch\r\x01:snapshots\r",
        )
        // Over the API while snapa still runs: export s1, import it back as `imp` (and a
        // corrupted copy), roll snapa back to `imp`.
        .call_after("no snapshot `nosuch`", move || {
            let got = api_steps(api_port, &call_dir);
            record.lock().unwrap().extend(got);
        })
        .boot();
    let text = boot.result.serial.clone();
    let lines: Vec<&str> = text.lines().collect();

    boot.line_starting("hv: snapshot c1 of vm snapc: ")
        .line_starting("hv: snapshot s1 of vm snapa: ")
        .no_line_containing("FAIL");
    let rollbacks = lines
        .iter()
        .filter(|l| l.starts_with("hv: vm snapa: rolled back to snapshot s1 in "))
        .count();
    boot.expect(
        rollbacks == 2,
        &format!("{rollbacks} rollbacks of snapa, want 2"),
    );

    // Each rollback: from tick 26 or later with the changed marker back to the snapshot's
    // tick (before the change) with the marker it had then, ticking on.
    for nth in 0..2 {
        let rb = "hv: vm snapa: rolled back to snapshot s1";
        let before = tick_before(&lines, rb, nth, "snapa");
        let after = tick_after(&lines, rb, nth, "snapa");
        let ok = matches!((&before, &after),
            (Some((b, bm)), Some((a, am)))
                if *b >= 26 && bm == "changed" && *a >= 5 && *a < 25 && am == "before");
        boot.expect(
            ok,
            &format!("rollback {nth}: tick before {before:?}, after {after:?}"),
        );
    }
    // It keeps working after the second rollback: it changes the marker again and exits.
    let last_rb = lines
        .iter()
        .rposition(|l| l.contains("hv: vm snapa: rolled back to snapshot s1"))
        .unwrap_or(lines.len());
    let changed_again = lines[last_rb..]
        .iter()
        .any(|l| l.starts_with("[snapa] snapguest: tick 26 marker changed"));
    boot.expect(
        changed_again,
        "snapa ticks on to its marker change after the second rollback",
    );
    boot.line("vm snapa: exited code=0");

    // The clone starts at the snapshot's tick, with its marker, and runs to its end beside
    // the original.
    boot.line_starting("vm snapb: started (clone of snapshot s1 of vm snapa");
    let first = lines.iter().find_map(|l| tick(l, "snapb"));
    boot.expect(
        matches!(&first, Some((n, m)) if *n >= 5 && *n < 25 && m == "before"),
        &format!("first tick of the clone: {first:?}"),
    );
    boot.line("vm snapb: exited code=0");

    // Refusals name the reason.
    boot.line_containing("snapshot `c1` was taken of vm `snapc`, not `snapa` (clone it instead)")
        .line_containing("no snapshot `nosuch`");

    // snapc crashes at tick 14 and comes back from c1 twice (max_restarts = 2), then stays
    // stopped; each time the restore beats reloading it plus rerunning it to that state.
    let crash_rb: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("vm snapc: rolled back to snapshot c1 after a crash ("))
        .collect();
    boot.expect(
        crash_rb.len() == 2,
        &format!("two rollbacks after crashes: {crash_rb:?}"),
    );
    for l in &crash_rb {
        let restore = number_after(l, "restored in ");
        let reload = number_after(l, "reload ");
        let run = number_after(l, " us + ");
        let ok = matches!((restore, reload, run), (Some(r), Some(l), Some(g)) if r < l + g);
        boot.expect(ok, &format!("restore faster than a cold restart: {l}"));
    }
    for nth in 0..2 {
        let after = tick_after(
            &lines,
            "vm snapc: rolled back to snapshot c1 after a crash",
            nth,
            "snapc",
        );
        boot.expect(
            matches!(&after, Some((n, m)) if *n >= 3 && *n < 14 && m == "before"),
            &format!("snapc after rollback {nth}: {after:?}"),
        );
    }
    // The 2-vCPU guest, paused with both vCPUs running, continues from its snapshot: the
    // BSP still collects the AP's work and exits.
    boot.line_starting("hv: snapshot p1 of vm spin2: ")
        .line_starting("hv: vm spin2: rolled back to snapshot p1 in ")
        .line_starting("[spin2] spinner: units=")
        .no_line_containing("did not finish")
        .line("vm spin2: exited code=0");
    boot.line_starting("hv: summary: 4 guests: snapa exited code=0, snapc stopped (triple fault")
        .line_starting_containing(
            "hv: summary: 4 guests:",
            "after 2 restarts, spin2 exited code=0, snapb exited code=0",
        )
        .powered_off();
    snapshot_files(&mut boot, &steps.lock().unwrap(), &dir);
    boot.finish();
    start_from_file(&dir);
}

/// The API steps' results, and the exported file's header.
fn snapshot_files(boot: &mut integration_tests::Boot, steps: &Steps, dir: &Path) {
    boot.expect(steps.len() == 4, &format!("API steps: {steps:?}"));
    let res = |i: usize| steps.get(i).map(|s| s.1.clone());
    let file = dir.join("s1.snap");
    let want = format!("snapshot s1 of vm snapa: exported to {} (", file.display());
    boot.expect(
        matches!(res(0), Some(Ok(ref o)) if o.starts_with(&want)),
        &format!("export: {:?}", res(0)),
    );
    let bytes = std::fs::read(&file).unwrap_or_default();
    let h = header(&bytes);
    boot.expect(
        matches!(&h, Some((m, 2, b)) if *m == b"FVSNAP\r\n" && b == "ferrovisor 0.1.0 snapshot format 2"),
        &format!("exported file header: {h:?} ({} bytes)", bytes.len()),
    );
    boot.expect(
        matches!(res(1), Some(Ok(ref o)) if o.starts_with("snapshot imp: imported for vm snapa from ")),
        &format!("import: {:?}", res(1)),
    );
    boot.expect(
        res(2)
            == Some(Err(String::from(
                "snapshot refused: section ram #0: checksum mismatch (400)",
            ))),
        &format!("import of a corrupted copy: {:?}", res(2)),
    );
    boot.expect(
        res(3) == Some(Ok(String::from("vm snapa: rolled back to imp\n"))),
        &format!("rollback to the imported snapshot: {:?}", res(3)),
    );
    boot.line_starting("hv: snapshot imp of vm snapa: imported, ")
        .line_starting("hv: vm snapa: rolled back to snapshot imp in ");
    let lines: Vec<&str> = boot.result.serial.lines().collect();
    let after = tick_after(
        &lines,
        "hv: vm snapa: rolled back to snapshot imp",
        0,
        "snapa",
    );
    boot.expect(
        matches!(&after, Some((n, m)) if *n >= 5 && *n < 25 && m == "before"),
        &format!("snapa after the rollback to the imported copy: {after:?}"),
    );
}

/// The second boot: a guest started from the exported file, restarted from it once, and two
/// guests refused at start-up with the manifest line and the reason.
fn start_from_file(dir: &Path) {
    let manifest = dir.join("from_file.toml");
    std::fs::write(
        &manifest,
        "[hypervisor]
poweroff_when_done = true

[[guest]]
name = \"snapr\"
memory = \"16M\"
image = \"snapguest.elf\"
kind = \"elf64\"
snapshot = \"s1.snap\"
on_exit = \"restart\"
max_restarts = 1

[[guest]]
name = \"badfile\"
memory = \"16M\"
image = \"snapguest.elf\"
kind = \"elf64\"
snapshot = \"bad.snap\"

[[guest]]
name = \"bigger\"
memory = \"32M\"
image = \"snapguest.elf\"
kind = \"elf64\"
snapshot = \"s1.snap\"
",
    )
    .expect("writing the manifest");
    let mut boot = Scenario::bochs("bochs_snapshot_file", manifest.to_str().unwrap())
        .cpus(1)
        .timeout_secs(300)
        .boot();
    boot.line("vm snapr: starts from snapshot file \\hv\\s1.snap (manifest line 9)")
        .line("vm badfile: not started: snapshot file \\hv\\bad.snap (manifest line 18): snapshot refused: section ram #0: checksum mismatch")
        .line("vm bigger: not started: snapshot file \\hv\\s1.snap (manifest line 25): snapshot refused: snapshot of 1 vCPUs and 16 MiB, the VM has 1 and 32 MiB")
        .line_starting("vm snapr: started from snapshot file \\hv\\s1.snap again in ");
    let text = boot.result.serial.clone();
    let lines: Vec<&str> = text.lines().collect();
    // It continues from the snapshot's tick and marker (never from tick 1), both times.
    let first = lines.iter().find_map(|l| tick(l, "snapr"));
    boot.expect(
        matches!(&first, Some((n, m)) if *n >= 5 && *n < 25 && m == "before"),
        &format!("first tick of the guest started from the file: {first:?}"),
    );
    let again = tick_after(&lines, "vm snapr: started from snapshot file", 0, "snapr");
    boot.expect(
        matches!(&again, Some((n, m)) if *n >= 5 && *n < 25 && m == "before"),
        &format!("first tick after its restart: {again:?}"),
    );
    boot.no_line_containing("[snapr] snapguest: tick 1 ")
        .line_starting("[snapr] snapguest: tick 26 marker changed")
        .powered_off();
    boot.finish();
}
