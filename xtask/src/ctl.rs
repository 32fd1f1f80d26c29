//! `cargo xtask ctl HOST:PORT [--token T] [--json] COMMAND...`: the management API's client.
//! The command is a console command (`list`, `info VM`, ...; see docs/management.md); it is
//! checked here, sent as its API request, and the result is printed as the console prints
//! it (or the JSON body with `--json`). Failure: the error on stderr and a non-zero exit.
//! Two more commands move snapshot files: `export VM NAME FILE` writes snapshot NAME of VM to
//! FILE (streamed, format: docs/snapshots.md), `import VM NAME FILE` uploads FILE as snapshot
//! NAME of VM (the hypervisor checks it whole before keeping it).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mgmt::client::{
    encode_export, encode_import_head, encode_request, error_text, outcome, parse_head,
    parse_response, request,
};
use mgmt::command::{help_text, parse, Command};
use mgmt::render::text;

/// How long a request may take (connect, send, answer) before the client gives up.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What `ctl` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub addr: String,
    pub token: Option<String>,
    pub json: bool,
    pub words: Vec<String>,
}

/// Parses `HOST:PORT [--token T | --token=T] [--json] COMMAND...` (options before the command).
pub fn parse_args(args: &[String]) -> Result<Args> {
    let mut it = args.iter();
    let Some(addr) = it.next().filter(|a| !a.starts_with("--")) else {
        bail!("usage: cargo xtask ctl HOST:PORT [--token T] [--json] COMMAND... (`help` lists the commands)");
    };
    let mut a = Args {
        addr: addr.clone(),
        token: None,
        json: false,
        words: Vec::new(),
    };
    while let Some(arg) = it.next() {
        if !a.words.is_empty() {
            a.words.push(arg.clone());
        } else if arg == "--token" {
            a.token = Some(
                it.next()
                    .ok_or_else(|| anyhow!("--token needs a value"))?
                    .clone(),
            );
        } else if let Some(t) = arg.strip_prefix("--token=") {
            a.token = Some(t.to_string());
        } else if arg == "--json" {
            a.json = true;
        } else if arg.starts_with("--") {
            bail!("unknown option `{arg}` (--token T, --json)");
        } else {
            a.words.push(arg.clone());
        }
    }
    if a.words.is_empty() {
        bail!("no command; `cargo xtask ctl {} help` lists them", a.addr);
    }
    Ok(a)
}

fn connect(addr: &str) -> Result<TcpStream> {
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("bad address `{addr}` (want HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow!("`{addr}` resolves to no address"))?;
    let stream = TcpStream::connect_timeout(&target, TIMEOUT)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Checks a name as the console does (`export`/`import` are not console commands).
fn check_name(s: &str, what: &str) -> Result<()> {
    mgmt::command::Name::parse(s).map_err(|e| anyhow!("bad {what} name `{s}`: {e}"))?;
    Ok(())
}

/// `export VM NAME FILE`: streams the snapshot file into FILE (via FILE.part, renamed once
/// complete).
pub fn export(addr: &str, token: &str, vm: &str, name: &str, file: &str) -> Result<String> {
    check_name(vm, "VM")?;
    check_name(name, "snapshot")?;
    let mut stream = connect(addr)?;
    stream
        .write_all(&encode_export(vm, name, addr, token))
        .with_context(|| format!("sending to {addr}"))?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head = loop {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("reading the answer from {addr}"))?;
        got.extend_from_slice(&buf[..n]);
        if let Some(h) = parse_head(&got).map_err(|e| anyhow!("{addr}: {e}"))? {
            break h;
        }
        if n == 0 {
            bail!("{addr}: connection closed before a complete response");
        }
    };
    if head.status != 200 {
        let resp = loop {
            if let Some(r) = parse_response(&got, false).map_err(|e| anyhow!("{addr}: {e}"))? {
                break r;
            }
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break parse_response(&got, true)
                    .map_err(|e| anyhow!("{addr}: {e}"))?
                    .ok_or_else(|| anyhow!("{addr}: no answer"))?;
            }
            got.extend_from_slice(&buf[..n]);
        };
        bail!("{}", error_text(resp.status, &resp.body));
    }
    let len = head
        .length
        .ok_or_else(|| anyhow!("{addr}: a snapshot file without Content-Length"))?;
    let part = format!("{file}.part");
    let mut out = std::fs::File::create(&part).with_context(|| format!("cannot create {part}"))?;
    let first = &got[head.body_at.min(got.len())..];
    let first = &first[..first.len().min(len as usize)];
    out.write_all(first)?;
    let mut have = first.len() as u64;
    while have < len {
        let want = (len - have).min(buf.len() as u64) as usize;
        let n = stream
            .read(&mut buf[..want])
            .with_context(|| format!("reading the snapshot from {addr}"))?;
        if n == 0 {
            bail!("{addr}: connection closed after {have} of {len} bytes");
        }
        out.write_all(&buf[..n])?;
        have += n as u64;
    }
    out.sync_all()?;
    drop(out);
    std::fs::rename(&part, file).with_context(|| format!("renaming {part} to {file}"))?;
    Ok(format!(
        "snapshot {name} of vm {vm}: exported to {file} ({} KiB)\n",
        len.div_ceil(1024)
    ))
}

/// `import VM NAME FILE`: uploads FILE as snapshot NAME of VM.
pub fn import(addr: &str, token: &str, vm: &str, name: &str, file: &str) -> Result<String> {
    check_name(vm, "VM")?;
    check_name(name, "snapshot")?;
    let mut f = std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?;
    let len = f.metadata()?.len();
    let mut stream = connect(addr)?;
    stream
        .write_all(&encode_import_head(vm, name, len, addr, token))
        .with_context(|| format!("sending to {addr}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    // A refusal from the head alone (409, 507, 404) comes before the body is read: the
    // server then closes, so a failed write ends the upload and the answer is read.
    while sent < len {
        let n = f.read(&mut buf)?;
        if n == 0 {
            bail!("{file} shrank while it was sent");
        }
        if stream.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let mut got = Vec::new();
    let resp = loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !got.is_empty() => 0,
            Err(e) => return Err(e).with_context(|| format!("reading the answer from {addr}")),
        };
        got.extend_from_slice(&buf[..n]);
        if let Some(r) = parse_response(&got, n == 0).map_err(|e| anyhow!("{addr}: {e}"))? {
            break r;
        }
    };
    if resp.status != 201 {
        bail!("{}", error_text(resp.status, &resp.body));
    }
    let info: mgmt::ops::SnapshotInfo = serde_json::from_str(&resp.body)
        .map_err(|e| anyhow!("unexpected response ({}): {e}", resp.status))?;
    Ok(format!(
        "snapshot {}: imported for vm {} from {file} ({} KiB)\n",
        info.name,
        info.vm,
        info.size_bytes.div_ceil(1024)
    ))
}

/// Runs one command against the API at `addr`; returns what to print.
pub fn run(addr: &str, token: &str, json: bool, words: &[String]) -> Result<String> {
    match words {
        [c, vm, name, file] if c == "export" => return export(addr, token, vm, name, file),
        [c, vm, name, file] if c == "import" => return import(addr, token, vm, name, file),
        [c, ..] if c == "export" || c == "import" => bail!("usage: {c} VM NAME FILE"),
        _ => {}
    }
    let cmd = parse(&words.join(" ")).map_err(|e| anyhow!("{e}"))?;
    let Some(req) = request(&cmd) else {
        let Command::Help(c) = cmd else {
            bail!("no request for `{}`", words.join(" "));
        };
        return Ok(help_text(c));
    };
    let mut stream = connect(addr)?;
    let host = addr;
    stream
        .write_all(&encode_request(&req, host, token))
        .with_context(|| format!("sending to {addr}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let resp = loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // the server may reset after a 401 while the request is still being read
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !got.is_empty() => 0,
            Err(e) => return Err(e).with_context(|| format!("reading the answer from {addr}")),
        };
        got.extend_from_slice(&buf[..n]);
        if let Some(r) = parse_response(&got, n == 0).map_err(|e| anyhow!("{addr}: {e}"))? {
            break r;
        }
    };
    let out = outcome(&cmd, &resp).map_err(|e| anyhow!("{e}"))?;
    if json {
        return Ok(if resp.body.is_empty() {
            String::new()
        } else {
            format!("{}\n", resp.body)
        });
    }
    Ok(text(&out).replace("\r\n", "\n"))
}

/// `cargo xtask ctl ...`.
pub fn main(args: &[String]) -> Result<()> {
    let a = parse_args(args)?;
    let token = match a.token {
        Some(t) => t,
        None => std::env::var("FERROVISOR_TOKEN").unwrap_or_default(),
    };
    print!("{}", run(&a.addr, &token, a.json, &a.words)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mgmt::fake::FakeOps;
    use mgmt::http::{After, Connection};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    const TOKEN: &str = "tok-123";

    /// The hv-mgmt server state machine behind a real socket on 127.0.0.1, one connection at a
    /// time, over `ops`; reads are fed to it as they come.
    fn server(ops: Arc<Mutex<FakeOps>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut c = Connection::new(TOKEN.as_bytes());
                let mut buf = [0u8; 512];
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut out = Vec::new();
                    let mut ops = ops.lock().unwrap();
                    let mut after = c.receive(0, &buf[..n], &mut *ops, &mut out);
                    // a snapshot file goes out in bounded pieces
                    while c.sending() {
                        c.pull(8192, &mut out);
                        if s.write_all(&out).is_err() {
                            break;
                        }
                        out.clear();
                        if !c.sending() {
                            after = c.receive(0, &[], &mut *ops, &mut out);
                        }
                    }
                    if s.write_all(&out).is_err() || after == After::Close || c.is_closed() {
                        break;
                    }
                }
            }
        });
        addr
    }

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn commands_over_a_real_socket() {
        let ops = Arc::new(Mutex::new(FakeOps::new(&[("web", 2, 128), ("db", 1, 64)])));
        let addr = server(ops.clone());
        let ctl = |line: &str| run(&addr, TOKEN, false, &words(line)).map_err(|e| format!("{e:#}"));
        assert_eq!(
            ctl("list").unwrap(),
            "VM   STATE    VCPUS  MEM(MiB)  EXITS/S    CPU\n\
             web  running      2       128     1200  12.5%\n\
             db   running      1        64     1200  12.5%\n"
        );
        assert_eq!(ctl("pause web").unwrap(), "vm web: paused\n");
        assert!(ctl("info web").unwrap().starts_with("VM   STATE   VCPUS"));
        assert!(ctl("info web").unwrap().contains("web  paused"));
        assert_eq!(ctl("pause web").unwrap_err(), "VM `web` is paused (409)");
        assert_eq!(ctl("resume web").unwrap(), "vm web: resumed\n");
        assert_eq!(
            ctl("snapshot web s1").unwrap(),
            "snapshot s1: taken of vm web (128 KiB)\n"
        );
        assert!(ctl("snapshots web")
            .unwrap()
            .contains("\ns1        web        128"));
        assert_eq!(
            ctl("rollback web s1").unwrap(),
            "vm web: rolled back to s1\n"
        );
        assert_eq!(
            ctl("clone s1 web2").unwrap(),
            "vm web2: started (2 vcpus, 128 MiB)\n"
        );
        assert_eq!(ctl("delete s1").unwrap(), "snapshot s1: deleted\n");
        assert_eq!(ctl("delete s1").unwrap_err(), "no snapshot `s1` (404)");
        assert_eq!(ctl("stop db").unwrap(), "vm db: stopped\n");
        assert_eq!(ctl("restart db").unwrap(), "vm db: restarted\n");
        assert_eq!(ops.lock().unwrap().vms.len(), 3);
        // checked before anything is sent
        assert_eq!(
            ctl("lst").unwrap_err(),
            "unknown command `lst`; did you mean `list`?"
        );
        assert_eq!(ctl("info").unwrap_err(), "missing argument; usage: info VM");
        assert!(ctl("help").unwrap().contains("rollback VM NAME"));
        let json = run(&addr, TOKEN, true, &words("info db")).unwrap();
        assert!(
            json.starts_with(r#"{"name":"db","state":"running""#),
            "{json}"
        );
    }

    #[test]
    fn snapshot_files_export_and_import_over_a_real_socket() {
        let ops = Arc::new(Mutex::new(FakeOps::new(&[("web", 2, 128)])));
        let addr = server(ops.clone());
        let ctl = |s: &str| run(&addr, TOKEN, false, &words(s));
        ctl("snapshot web s1").unwrap();
        let dir = std::env::temp_dir().join(format!("ctl-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s1.snap");
        let f = file.to_str().unwrap();
        assert_eq!(
            ctl(&format!("export web s1 {f}")).unwrap(),
            format!("snapshot s1 of vm web: exported to {f} (128 KiB)\n")
        );
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes, mgmt::fake::fake_file("web", 128 * 1024));
        assert_eq!(
            ctl(&format!("import web s2 {f}")).unwrap(),
            format!("snapshot s2: imported for vm web from {f} (128 KiB)\n")
        );
        assert!(ops.lock().unwrap().snapshots.iter().any(|s| s.name == "s2"));
        // an in-use name is refused from the head, before the body
        let e = ctl(&format!("import web s2 {f}")).unwrap_err().to_string();
        assert_eq!(e, "a snapshot `s2` exists already (409)");
        // a corrupted copy is refused with the reason
        let mut bad = bytes.clone();
        bad[100_000] ^= 0x55;
        let badf = dir.join("bad.snap");
        std::fs::write(&badf, &bad).unwrap();
        let e = ctl(&format!("import web s3 {}", badf.display()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "snapshot refused: section ram #0: checksum mismatch (400)"
        );
        let e = ctl(&format!("export web nope {f}"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no snapshot `nope` (404)");
        assert!(ctl("export web s1")
            .unwrap_err()
            .to_string()
            .contains("usage: export VM NAME FILE"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wrong_token_is_refused() {
        let ops = Arc::new(Mutex::new(FakeOps::new(&[("web", 1, 16)])));
        let addr = server(ops.clone());
        for token in ["", "tok-12", "tok-1234"] {
            let e = run(&addr, token, false, &words("stop web")).unwrap_err();
            assert_eq!(format!("{e:#}"), "missing or invalid bearer token (401)");
        }
        assert_eq!(
            ops.lock().unwrap().vms[0].state,
            mgmt::ops::VmState::Running
        );
    }

    #[test]
    fn keep_alive_and_split_writes_over_a_real_socket() {
        let ops = Arc::new(Mutex::new(FakeOps::new(&[("web", 1, 16)])));
        let addr = server(ops);
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let first = format!(
            "PUT /vms/web/pause HTTP/1.1\r\nHost: hv\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        );
        // byte by byte, pausing so the server sees many reads
        for b in first.bytes() {
            s.write_all(&[b]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while parse_response(&got, false).unwrap().is_none() {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 204 No Content\r\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let second = format!(
            "GET /vms HTTP/1.1\r\nHost: hv\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(second.as_bytes()).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap(); // the server closes after it
        let r = parse_response(&rest, true).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.contains(r#""state":"paused""#), "{}", r.body);
    }

    #[test]
    fn arguments() {
        let a = |s: &str| parse_args(&words(s)).map_err(|e| e.to_string());
        assert_eq!(
            a("h:1 --token t --json snapshot web s1").unwrap(),
            Args {
                addr: "h:1".into(),
                token: Some("t".into()),
                json: true,
                words: words("snapshot web s1")
            }
        );
        assert_eq!(a("h:1 --token=x list").unwrap().token.as_deref(), Some("x"));
        assert!(a("--token t list").unwrap_err().starts_with("usage:"));
        assert_eq!(
            a("h:1").unwrap_err(),
            "no command; `cargo xtask ctl h:1 help` lists them"
        );
        assert_eq!(
            a("h:1 --tok t list").unwrap_err(),
            "unknown option `--tok` (--token T, --json)"
        );
        assert_eq!(a("h:1 --token").unwrap_err(), "--token needs a value");
        let e = run("127.0.0.1:1", "t", false, &words("list")).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("cannot connect to 127.0.0.1:1"),
            "{e:#}"
        );
    }
}
