//! Snapshots through the management console (Ctrl-A :): a guest is snapshotted, changes its
//! marker and counter, and is rolled back twice (each time it continues with the snapshot's
//! values and keeps ticking); a clone of the snapshot runs beside it; a guest with
//! `on_crash = "rollback"` comes back from its snapshot after each crash, faster than a cold
//! restart would get it there (both times printed); a 2-vCPU guest is snapshotted and rolled
//! back while both its vCPUs run.

use integration_tests::Scenario;

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
    let mut boot = Scenario::bochs("bochs_snapshot", "snapshot.toml")
        .cpus(2)
        .timeout_secs(600)
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
    boot.finish();
}
