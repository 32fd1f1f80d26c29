//! Results as the console prints them (aligned text tables) and as the API sends them (JSON).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::ops::{Outcome, SnapshotInfo, VmInfo, VmSummary};

/// Lays out `rows` under `header` in columns two spaces apart; numeric columns (`right[i]`)
/// are right-aligned. Each line ends with `\r\n` (a serial terminal).
pub fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                let _ = write!(l, "{cell:>w$}");
            } else {
                let _ = write!(l, "{cell:<w$}");
            }
        }
        out.push_str(l.trim_end());
        out.push_str("\r\n");
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn permille(p: u32) -> String {
    format!("{}.{}%", p / 10, p % 10)
}

fn vm_rows(vms: &[VmSummary]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            Vec::from([
                v.name.clone(),
                String::from(v.state.as_str()),
                format!("{}", v.vcpus),
                format!("{}", v.memory_mib),
                format!("{}", v.exits_per_sec),
                permille(v.cpu_share_permille),
            ])
        })
        .collect();
    table(
        &["VM", "STATE", "VCPUS", "MEM(MiB)", "EXITS/S", "CPU"],
        &[false, false, true, true, true, true],
        &rows,
    )
}

fn snapshot_rows(snaps: &[SnapshotInfo]) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            Vec::from([
                s.name.clone(),
                s.vm.clone(),
                format!("{}", s.size_bytes.div_ceil(1024)),
                format!("{}.{:03}", s.taken_at_ms / 1000, s.taken_at_ms % 1000),
            ])
        })
        .collect();
    table(
        &["SNAPSHOT", "VM", "SIZE(KiB)", "TAKEN(s)"],
        &[false, false, true, true],
        &rows,
    )
}

fn vm_info(v: &VmInfo) -> String {
    let mut s = vm_rows(core::slice::from_ref(&v.summary));
    let vcpus: Vec<Vec<String>> = v
        .vcpu_list
        .iter()
        .map(|c| {
            Vec::from([
                format!("{}", c.index),
                match c.cpu {
                    Some(cpu) => format!("cpu{cpu}"),
                    None => String::from("-"),
                },
            ])
        })
        .collect();
    s.push_str(&table(&["VCPU", "ON"], &[true, false], &vcpus));
    let exits: Vec<Vec<String>> = v
        .exits
        .iter()
        .map(|e| Vec::from([e.reason.clone(), format!("{}", e.per_sec)]))
        .collect();
    s.push_str(&table(&["EXIT REASON", "PER SEC"], &[false, true], &exits));
    s
}

/// The console's text for an outcome (lines end with `\r\n`).
pub fn text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Vms(vms) => vm_rows(vms),
        Outcome::Vm(info) => vm_info(info),
        Outcome::Snapshot(s) => format!(
            "snapshot {}: taken of vm {} ({} KiB)\r\n",
            s.name,
            s.vm,
            s.size_bytes.div_ceil(1024)
        ),
        Outcome::Snapshots(snaps) => snapshot_rows(snaps),
        Outcome::Cloned(v) => format!(
            "vm {}: started ({} vcpus, {} MiB)\r\n",
            v.name, v.vcpus, v.memory_mib
        ),
        Outcome::Done(what) => format!("{what}\r\n"),
        Outcome::Help(h) => h.replace('\n', "\r\n"),
    }
}

/// The API's JSON body for an outcome (`None`: no body, 204).
pub fn json(outcome: &Outcome) -> Option<String> {
    #[derive(serde::Serialize)]
    struct Help<'a> {
        help: &'a str,
    }
    let r = match outcome {
        Outcome::Vms(v) => serde_json::to_string(v),
        Outcome::Vm(v) => serde_json::to_string(v),
        Outcome::Snapshot(s) => serde_json::to_string(s),
        Outcome::Snapshots(s) => serde_json::to_string(s),
        Outcome::Cloned(v) => serde_json::to_string(v),
        Outcome::Done(_) => return None,
        Outcome::Help(h) => serde_json::to_string(&Help { help: h }),
    };
    // serializing these plain structs cannot fail; an error still yields valid JSON
    Some(r.unwrap_or_else(|e| error_json(&format!("{e}"))))
}

/// `{"error": "<text>"}`, the body of every API error.
pub fn error_json(text: &str) -> String {
    #[derive(serde::Serialize)]
    struct E<'a> {
        error: &'a str,
    }
    serde_json::to_string(&E { error: text }).unwrap_or_else(|_| String::from("{\"error\":\"?\"}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse;
    use crate::fake::FakeOps;
    use crate::ops::{execute, OpError, Ops};

    fn run(ops: &mut FakeOps, line: &str) -> Result<String, String> {
        let cmd = parse(line).map_err(|e| e.to_string())?;
        execute(ops, &cmd)
            .map(|o| text(&o))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "NUM"],
            &[false, true],
            &[
                vec!["long-name".into(), "5".into()],
                vec!["x".into(), "12345".into()],
            ],
        );
        assert_eq!(
            t,
            "A            NUM\r\nlong-name      5\r\nx          12345\r\n"
        );
    }

    #[test]
    fn console_outputs() {
        let mut o = FakeOps::new(&[("web", 2, 128), ("database", 1, 64)]);
        assert_eq!(
            run(&mut o, "list").unwrap(),
            "VM        STATE    VCPUS  MEM(MiB)  EXITS/S    CPU\r\n\
             web       running      2       128     1200  12.5%\r\n\
             database  running      1        64     1200  12.5%\r\n"
        );
        let info = run(&mut o, "info web").unwrap();
        assert!(
            info.contains("VCPU  ON\r\n   0  cpu0\r\n   1  cpu1\r\n"),
            "{info}"
        );
        assert!(
            info.contains("EXIT REASON    PER SEC\r\nio                1000\r\n"),
            "{info}"
        );
        assert_eq!(run(&mut o, "pause web").unwrap(), "vm web: paused\r\n");
        assert!(run(&mut o, "info web").unwrap().contains("   0  -\r\n"));
        assert_eq!(run(&mut o, "pause web").unwrap_err(), "VM `web` is paused");
        assert_eq!(run(&mut o, "resume web").unwrap(), "vm web: resumed\r\n");
        assert_eq!(
            run(&mut o, "stop database").unwrap(),
            "vm database: stopped\r\n"
        );
        assert_eq!(
            run(&mut o, "restart database").unwrap(),
            "vm database: restarted\r\n"
        );
        assert_eq!(
            run(&mut o, "snapshot web s1").unwrap(),
            "snapshot s1: taken of vm web (128 KiB)\r\n"
        );
        assert_eq!(
            run(&mut o, "snapshot web").unwrap(),
            "snapshot web-2: taken of vm web (128 KiB)\r\n"
        );
        assert_eq!(
            run(&mut o, "snapshots").unwrap(),
            "SNAPSHOT  VM   SIZE(KiB)  TAKEN(s)\r\ns1        web        128     1.250\r\nweb-2     web        128     1.500\r\n"
        );
        assert_eq!(
            run(&mut o, "snapshots database").unwrap().lines().count(),
            1
        );
        assert_eq!(run(&mut o, "snapshots nope").unwrap_err(), "no VM `nope`");
        assert_eq!(
            run(&mut o, "rollback web s1").unwrap(),
            "vm web: rolled back to s1\r\n"
        );
        assert_eq!(
            run(&mut o, "rollback database s1").unwrap_err(),
            "snapshot `s1` was taken of vm `web`, not `database` (clone it instead)"
        );
        assert_eq!(
            run(&mut o, "clone s1 web2").unwrap(),
            "vm web2: started (2 vcpus, 128 MiB)\r\n"
        );
        assert_eq!(
            run(&mut o, "clone s1 web2").unwrap_err(),
            "a VM `web2` exists already"
        );
        assert_eq!(
            run(&mut o, "delete s1").unwrap(),
            "snapshot s1: deleted\r\n"
        );
        assert_eq!(run(&mut o, "delete s1").unwrap_err(), "no snapshot `s1`");
        assert_eq!(run(&mut o, "info s1").unwrap_err(), "no VM `s1`");
        let help = run(&mut o, "help").unwrap();
        assert_eq!(help.matches("\r\n").count(), crate::command::COMMANDS.len());
        assert_eq!(
            run(&mut o, "lst").unwrap_err(),
            "unknown command `lst`; did you mean `list`?"
        );
    }

    #[test]
    fn json_outputs() {
        let o = FakeOps::new(&[("web", 2, 128)]);
        let vms = Outcome::Vms(o.list());
        assert_eq!(
            json(&vms).unwrap(),
            r#"[{"name":"web","state":"running","vcpus":2,"memory_mib":128,"exits_per_sec":1200,"cpu_share_permille":125}]"#
        );
        let info = json(&Outcome::Vm(
            o.info(&crate::command::Name::parse("web").unwrap())
                .unwrap(),
        ))
        .unwrap();
        assert!(
            info.starts_with(r#"{"name":"web","state":"running""#),
            "{info}"
        );
        assert!(
            info.contains(r#""vcpu_list":[{"index":0,"cpu":0},{"index":1,"cpu":1}]"#),
            "{info}"
        );
        assert_eq!(json(&Outcome::Done("x".into())), None);
        assert_eq!(error_json("a \"q\""), r#"{"error":"a \"q\""}"#);
        assert_eq!(json(&Outcome::Help("h".into())).unwrap(), r#"{"help":"h"}"#);
    }

    #[test]
    fn error_statuses() {
        let n = crate::command::Name::parse("a").unwrap();
        assert_eq!(OpError::NoSuchVm(n.clone()).status(), 404);
        assert_eq!(OpError::NoSuchSnapshot(n.clone()).status(), 404);
        assert_eq!(OpError::VmExists(n.clone()).status(), 409);
        assert_eq!(OpError::SnapshotExists(n).status(), 409);
        assert_eq!(OpError::OutOfMemory { needed: 1, free: 0 }.status(), 507);
        assert_eq!(OpError::Unsupported("snapshots".into()).status(), 501);
        assert_eq!(
            OpError::Unsupported("snapshots".into()).to_string(),
            "not supported: snapshots"
        );
        assert_eq!(OpError::Failed("x".into()).status(), 500);
    }
}
