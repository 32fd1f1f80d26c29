//! The client side of the API, sans-IO: a console [`Command`] as an HTTP request, and the
//! response back as the [`Outcome`] the console would print (`cargo xtask ctl` uses this).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Serialize;

use crate::command::Command;
use crate::ops::Outcome;

/// One API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
}
#[derive(Serialize)]
struct Snap<'a> {
    snapshot: &'a str,
}
#[derive(Serialize)]
struct Vm<'a> {
    vm: &'a str,
}

fn json<T: Serialize>(v: &T) -> Option<String> {
    serde_json::to_string(v).ok()
}

/// The request for `cmd` (`None` for `help`, which the client answers itself).
pub fn request(cmd: &Command) -> Option<ApiRequest> {
    let r = |method, path: String, body| ApiRequest { method, path, body };
    Some(match cmd {
        Command::List => r("GET", String::from("/vms"), None),
        Command::Info(vm) => r("GET", format!("/vms/{vm}"), None),
        Command::Pause(vm) => r("PUT", format!("/vms/{vm}/pause"), None),
        Command::Resume(vm) => r("PUT", format!("/vms/{vm}/resume"), None),
        Command::Stop(vm) => r("PUT", format!("/vms/{vm}/stop"), None),
        Command::Restart(vm) => r("PUT", format!("/vms/{vm}/restart"), None),
        Command::Snapshot { vm, name } => r(
            "PUT",
            format!("/vms/{vm}/snapshot"),
            name.as_ref()
                .and_then(|n| json(&Named { name: n.as_str() })),
        ),
        Command::Snapshots(None) => r("GET", String::from("/snapshots"), None),
        Command::Snapshots(Some(vm)) => r("GET", format!("/snapshots?vm={vm}"), None),
        Command::Rollback { vm, snapshot } => r(
            "PUT",
            format!("/vms/{vm}/rollback"),
            json(&Snap {
                snapshot: snapshot.as_str(),
            }),
        ),
        Command::Clone { snapshot, new_vm } => r(
            "PUT",
            format!("/snapshots/{snapshot}/clone"),
            json(&Vm {
                vm: new_vm.as_str(),
            }),
        ),
        Command::Delete(s) => r("DELETE", format!("/snapshots/{s}"), None),
        Command::Help(_) => return None,
    })
}

/// The request's bytes (HTTP/1.1, `Connection: close`).
pub fn encode_request(req: &ApiRequest, host: &str, token: &str) -> Vec<u8> {
    let body = req.body.as_deref().unwrap_or("");
    let mut s = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n",
        req.method, req.path
    );
    if req.body.is_some() {
        s.push_str("Content-Type: application/json\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.into_bytes()
}

/// The path of snapshot `snapshot`'s file (`GET` exports it, `PUT` imports one for `vm`).
pub fn file_path(vm: &str, snapshot: &str) -> String {
    format!("/snapshots/{snapshot}/file?vm={vm}")
}

/// The request head of an export (`GET`, no body).
pub fn encode_export(vm: &str, snapshot: &str, host: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/octet-stream\r\nConnection: close\r\n\r\n",
        file_path(vm, snapshot)
    )
    .into_bytes()
}

/// The request head of an import of a `len`-byte snapshot file (the file follows).
pub fn encode_import_head(vm: &str, snapshot: &str, len: u64, host: &str, token: &str) -> Vec<u8> {
    format!(
        "PUT {} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        file_path(vm, snapshot)
    )
    .into_bytes()
}

/// A final response's head: its status, Content-Length and where the body starts in the
/// bytes given to [`parse_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub length: Option<u64>,
    pub body_at: usize,
}

/// The head of the first final response in `bytes` (1xx skipped); `Ok(None)` while incomplete.
pub fn parse_head(bytes: &[u8]) -> Result<Option<ResponseHead>, String> {
    let mut at = 0usize;
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = core::str::from_utf8(rest.get(..end).unwrap_or_default())
            .map_err(|_| String::from("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line `{status_line}`"))?;
        let mut length = None;
        for l in lines {
            if let Some((n, v)) = l.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = Some(
                        v.trim()
                            .parse::<u64>()
                            .map_err(|_| format!("bad Content-Length `{}`", v.trim()))?,
                    );
                }
            }
        }
        at = at.saturating_add(end).saturating_add(4);
        if !(100..200).contains(&status) {
            return Ok(Some(ResponseHead {
                status,
                length,
                body_at: at,
            }));
        }
    }
}

/// The error text of a failed response's body (the API's `error` field with the status).
pub fn error_text(status: u16, body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        error: String,
    }
    match serde_json::from_str::<E>(body) {
        Ok(e) => format!("{} ({status})", e.error),
        Err(_) => format!("HTTP {status} {body}"),
    }
}

/// A response's status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

/// Parses the first final response in `bytes` (1xx responses are skipped): `Ok(None)` while it
/// is incomplete; `eof` says no more bytes will come (then a body without Content-Length ends
/// there).
pub fn parse_response(bytes: &[u8], eof: bool) -> Result<Option<ApiResponse>, String> {
    let Some(head) = parse_head(bytes)? else {
        return if eof {
            Err(String::from("connection closed before a complete response"))
        } else {
            Ok(None)
        };
    };
    let after = bytes.get(head.body_at..).unwrap_or_default();
    let body = match head.length.map(usize::try_from) {
        Some(Err(_)) => return Err(String::from("Content-Length too large")),
        Some(Ok(n)) if after.len() >= n => after.get(..n).unwrap_or_default(),
        Some(Ok(_)) if eof => return Err(String::from("connection closed inside the body")),
        Some(Ok(_)) => return Ok(None),
        None if head.status == 204 || head.status == 304 => &[],
        None if eof => after,
        None => return Ok(None),
    };
    let body = String::from_utf8(Vec::from(body))
        .map_err(|_| String::from("response body is not UTF-8"))?;
    Ok(Some(ApiResponse {
        status: head.status,
        body,
    }))
}

/// The outcome of `cmd` from its response, or the error text (the API's `error` field with the
/// status).
pub fn outcome(cmd: &Command, resp: &ApiResponse) -> Result<Outcome, String> {
    if !(200..300).contains(&resp.status) {
        return Err(error_text(resp.status, &resp.body));
    }
    let bad = |e: serde_json::Error| format!("unexpected response ({}): {e}", resp.status);
    let b = resp.body.as_str();
    Ok(match cmd {
        Command::List => Outcome::Vms(serde_json::from_str(b).map_err(bad)?),
        Command::Info(_) => Outcome::Vm(serde_json::from_str(b).map_err(bad)?),
        Command::Snapshot { .. } => Outcome::Snapshot(serde_json::from_str(b).map_err(bad)?),
        Command::Snapshots(_) => Outcome::Snapshots(serde_json::from_str(b).map_err(bad)?),
        Command::Clone { .. } => Outcome::Cloned(serde_json::from_str(b).map_err(bad)?),
        Command::Pause(vm) => Outcome::Done(format!("vm {vm}: paused")),
        Command::Resume(vm) => Outcome::Done(format!("vm {vm}: resumed")),
        Command::Stop(vm) => Outcome::Done(format!("vm {vm}: stopped")),
        Command::Restart(vm) => Outcome::Done(format!("vm {vm}: restarted")),
        Command::Rollback { vm, snapshot } => {
            Outcome::Done(format!("vm {vm}: rolled back to {snapshot}"))
        }
        Command::Delete(s) => Outcome::Done(format!("snapshot {s}: deleted")),
        Command::Help(c) => Outcome::Help(crate::command::help_text(*c)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse;
    use crate::fake::FakeOps;
    use crate::http::{After, Connection};
    use crate::ops::execute;
    use crate::render::text;

    /// Every command through request → server → response → outcome gives what the console
    /// gives for the same command on the same state.
    #[test]
    fn round_trip_matches_the_console() {
        let mut api = FakeOps::new(&[("web", 2, 128)]);
        let mut console = api.clone();
        for line in [
            "list",
            "info web",
            "pause web",
            "resume web",
            "snapshot web s1",
            "snapshot web",
            "snapshots",
            "snapshots web",
            "rollback web s1",
            "clone s1 w2",
            "delete s1",
            "stop w2",
            "restart w2",
            "info nope",
            "delete s1",
            "pause web",
            "pause web",
        ] {
            let cmd = parse(line).unwrap();
            let req = request(&cmd).unwrap();
            let mut c = Connection::new(b"t");
            let mut out = Vec::new();
            let after = c.receive(0, &encode_request(&req, "hv", "t"), &mut api, &mut out);
            assert_eq!(after, After::Close, "{line}");
            let resp = parse_response(&out, true).unwrap().unwrap();
            let via_api = outcome(&cmd, &resp).map(|o| text(&o));
            let direct = execute(&mut console, &cmd)
                .map(|o| text(&o))
                .map_err(|e| e.to_string());
            match (via_api, direct) {
                (Ok(a), Ok(d)) => assert_eq!(a, d, "{line}"),
                (Err(a), Err(d)) => assert!(a.starts_with(&d), "{line}: {a} vs {d}"),
                (a, d) => panic!("{line}: {a:?} vs {d:?}"),
            }
        }
        assert_eq!(request(&Command::Help(None)), None);
    }

    #[test]
    fn requests_are_the_documented_routes() {
        let r = request(&parse("snapshot web s1").unwrap()).unwrap();
        assert_eq!((r.method, r.path.as_str()), ("PUT", "/vms/web/snapshot"));
        assert_eq!(r.body.as_deref(), Some(r#"{"name":"s1"}"#));
        let r = request(&parse("clone s1 b").unwrap()).unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.body.as_deref()),
            ("PUT", "/snapshots/s1/clone", Some(r#"{"vm":"b"}"#))
        );
        let r = request(&parse("rollback a s1").unwrap()).unwrap();
        assert_eq!(r.body.as_deref(), Some(r#"{"snapshot":"s1"}"#));
        let r = request(&parse("delete s1").unwrap()).unwrap();
        assert_eq!((r.method, r.path.as_str()), ("DELETE", "/snapshots/s1"));
    }

    #[test]
    fn response_parsing() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[", false),
            Ok(None)
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]",
                false
            ),
            Ok(Some(ApiResponse {
                status: 200,
                body: "[]".into()
            }))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Some(ApiResponse {
                status: 204,
                body: "".into()
            }))
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200", true).is_err());
        assert!(parse_response(b"SMTP 200\r\n\r\n", false).is_err());
        let e = outcome(
            &Command::List,
            &ApiResponse {
                status: 401,
                body: r#"{"error":"missing or invalid bearer token"}"#.into(),
            },
        );
        assert_eq!(e, Err("missing or invalid bearer token (401)".into()));
        let e = outcome(
            &Command::List,
            &ApiResponse {
                status: 200,
                body: "{}".into(),
            },
        );
        assert!(e
            .unwrap_err()
            .starts_with("unexpected response (200): invalid type: map"));
    }
}
