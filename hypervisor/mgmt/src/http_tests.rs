use super::*;
use crate::fake::FakeOps;

const TOKEN: &str = "s3cret-token";

fn ops() -> FakeOps {
    FakeOps::new(&[("web", 2, 128), ("db", 1, 64)])
}

/// One parsed response: status, headers (lower-case names), body.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.0 == name)
            .map(|h| h.1.as_str())
    }
    fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        v["error"].as_str().unwrap().to_string()
    }
}

/// Splits `out` into responses (each framed by its Content-Length).
fn responses(mut out: &[u8]) -> Vec<Resp> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let end = find(out, b"\r\n\r\n").expect("response head");
        let head = core::str::from_utf8(&out[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|h| h.0 == "content-length")
            .map(|h| h.1.parse().unwrap())
            .unwrap_or(0);
        let body = core::str::from_utf8(&out[end + 4..end + 4 + len])
            .unwrap()
            .to_string();
        out = &out[end + 4 + len..];
        v.push(Resp {
            status,
            headers,
            body,
        });
    }
    v
}

fn req(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: hv\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `raw` in one read on a fresh connection.
fn send(ops: &mut FakeOps, raw: &str) -> (Vec<Resp>, After) {
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    let after = c.receive(0, raw.as_bytes(), ops, &mut out);
    (responses(&out), after)
}

fn one(ops: &mut FakeOps, raw: &str) -> Resp {
    let (mut r, _) = send(ops, raw);
    assert_eq!(r.len(), 1, "{r:?}");
    r.remove(0)
}

#[test]
fn constant_time_compare() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn get_vms_lists_them() {
    let mut o = ops();
    let r = one(&mut o, &req("GET", "/vms", ""));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: Vec<crate::ops::VmSummary> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v, o.vms);
    assert!(r.body.contains("\"state\":\"running\""), "{}", r.body);
}

#[test]
fn get_one_vm_and_unknown_vm() {
    let mut o = ops();
    let r = one(&mut o, &req("GET", "/vms/web", ""));
    assert_eq!(r.status, 200);
    let v: crate::ops::VmInfo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v.summary.name, "web");
    assert_eq!(v.vcpu_list.len(), 2);
    let r = one(&mut o, &req("GET", "/vms/nope", ""));
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "no VM `nope`");
    let r = one(&mut o, &req("GET", "/vms/a%2Fb", ""));
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .starts_with("bad VM name `a%2Fb`: may not contain `%`"),
        "{}",
        r.error()
    );
}

#[test]
fn actions_change_state_and_conflicts_are_409() {
    let mut o = ops();
    for (path, status) in [
        ("/vms/web/pause", 204),
        ("/vms/web/pause", 409),
        ("/vms/web/resume", 204),
        ("/vms/web/stop", 204),
        ("/vms/web/resume", 409),
        ("/vms/web/restart", 204),
    ] {
        let r = one(&mut o, &req("PUT", path, ""));
        assert_eq!(r.status, status, "{path}: {}", r.body);
        if status == 204 {
            assert!(r.body.is_empty());
            assert_eq!(r.header("content-length"), None);
        }
    }
    assert_eq!(o.vms[0].state, crate::ops::VmState::Running);
    let r = one(&mut o, &req("PUT", "/vms/db/resume", ""));
    assert_eq!(r.error(), "VM `db` is running");
}

#[test]
fn snapshot_rollback_clone_delete() {
    let mut o = ops();
    let r = one(
        &mut o,
        &req("PUT", "/vms/web/snapshot", r#"{"name": "s1"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let s: crate::ops::SnapshotInfo = serde_json::from_str(&r.body).unwrap();
    assert_eq!((s.name.as_str(), s.vm.as_str()), ("s1", "web"));
    // without a body the core picks the name
    let r = one(&mut o, &req("PUT", "/vms/db/snapshot", ""));
    assert_eq!(r.status, 201);
    assert!(r.body.contains("\"name\":\"db-2\""), "{}", r.body);
    let r = one(
        &mut o,
        &req("PUT", "/vms/web/snapshot", r#"{"name": "s1"}"#),
    );
    assert_eq!(
        (r.status, r.error()),
        (409, "a snapshot `s1` exists already".into())
    );
    let r = one(&mut o, &req("GET", "/snapshots", ""));
    assert_eq!(r.status, 200);
    let all: Vec<crate::ops::SnapshotInfo> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(all.len(), 2);
    let r = one(&mut o, &req("GET", "/snapshots?vm=db", ""));
    let of_db: Vec<crate::ops::SnapshotInfo> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(of_db.len(), 1);
    assert_eq!(one(&mut o, &req("GET", "/snapshots?vm=zz", "")).status, 404);
    assert_eq!(one(&mut o, &req("GET", "/snapshots?x=1", "")).status, 400);
    let r = one(
        &mut o,
        &req("PUT", "/vms/web/rollback", r#"{"snapshot":"s1"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = one(
        &mut o,
        &req("PUT", "/vms/db/rollback", r#"{"snapshot":"s1"}"#),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = one(
        &mut o,
        &req("PUT", "/vms/web/rollback", r#"{"snapshot":"s9"}"#),
    );
    assert_eq!((r.status, r.error()), (404, "no snapshot `s9`".into()));
    let r = one(
        &mut o,
        &req("PUT", "/snapshots/s1/clone", r#"{"vm":"web2"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(o.vms.iter().any(|v| v.name == "web2"));
    let r = one(
        &mut o,
        &req("PUT", "/snapshots/s1/clone", r#"{"vm":"web2"}"#),
    );
    assert_eq!(r.status, 409);
    assert_eq!(one(&mut o, &req("DELETE", "/snapshots/s1", "")).status, 204);
    assert_eq!(one(&mut o, &req("DELETE", "/snapshots/s1", "")).status, 404);
}

#[test]
fn out_of_memory_is_507() {
    let mut o = ops();
    o.free_bytes = 1000;
    let r = one(&mut o, &req("PUT", "/vms/web/snapshot", ""));
    assert_eq!(r.status, 507);
    assert_eq!(
        r.error(),
        "not enough hypervisor memory: 128 KiB needed, 0 KiB free"
    );
}

#[test]
fn bad_bodies_get_the_serde_error() {
    let mut o = ops();
    let r = one(&mut o, &req("PUT", "/vms/web/snapshot", r#"{"nam": "s1"}"#));
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .starts_with("bad JSON body: unknown field `nam`, expected `name`"),
        "{}",
        r.error()
    );
    let r = one(
        &mut o,
        &req("PUT", "/vms/web/rollback", r#"{"snapshot": 5}"#),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .contains("invalid type: integer `5`, expected a string"),
        "{}",
        r.error()
    );
    let r = one(&mut o, &req("PUT", "/vms/web/rollback", ""));
    assert!(r.error().contains("EOF while parsing"), "{}", r.error());
    let r = one(&mut o, &req("PUT", "/snapshots/s1/clone", r#"{}"#));
    assert!(r.error().contains("missing field `vm`"), "{}", r.error());
    let r = one(&mut o, &req("PUT", "/snapshots/s1/clone", r#"{"vm":"-x"}"#));
    assert_eq!(
        r.error(),
        "bad VM name `-x`: must start with a letter or digit"
    );
    // the framing was fine: the connection stays open
    let (_, after) = send(&mut o, &req("PUT", "/vms/web/rollback", "{"));
    assert_eq!(after, After::KeepOpen);
}

#[test]
fn unknown_paths_404_and_wrong_methods_405() {
    let mut o = ops();
    for p in [
        "/",
        "/vm",
        "/vms/web/explode",
        "/snapshots/a/b",
        "/vms/a/b/c",
    ] {
        let r = one(&mut o, &req("GET", p, ""));
        assert_eq!(r.status, 404, "{p}");
    }
    for (m, p, allow) in [
        ("POST", "/vms", "GET"),
        ("DELETE", "/vms/web", "GET"),
        ("GET", "/vms/web/pause", "PUT"),
        ("PUT", "/snapshots", "GET"),
        ("GET", "/snapshots/s1", "DELETE"),
        ("GET", "/snapshots/s1/clone", "PUT"),
    ] {
        let r = one(&mut o, &req(m, p, ""));
        assert_eq!(r.status, 405, "{m} {p}");
        assert_eq!(r.header("allow"), Some(allow), "{m} {p}");
    }
    // a trailing slash is the same path
    assert_eq!(one(&mut o, &req("GET", "/vms/", "")).status, 200);
}

#[test]
fn without_the_token_only_401() {
    let mut o = ops();
    let cases = [
        "GET /vms HTTP/1.1\r\nHost: hv\r\n\r\n".to_string(),
        "GET /vms HTTP/1.1\r\nAuthorization: Bearer s3cret-tokeN\r\n\r\n".into(),
        "GET /vms HTTP/1.1\r\nAuthorization: Bearer s3cret-token-longer\r\n\r\n".into(),
        "GET /vms HTTP/1.1\r\nAuthorization: Basic s3cret-token\r\n\r\n".into(),
        "GET /vms HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n".into(),
        // otherwise wrong requests: still 401
        "GET /nothing HTTP/1.1\r\n\r\n".into(),
        "PUT /vms HTTP/1.1\r\n\r\n".into(),
        "GARBAGE\r\n\r\n".into(),
        "PUT /vms/web/stop HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        "PUT /vms/web/stop HTTP/1.1\r\nContent-Length: 999999\r\n\r\n".into(),
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE)),
        format!("GET /vms HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)),
    ];
    for raw in cases {
        let (r, after) = send(&mut o, &raw);
        assert_eq!(r.len(), 1, "{raw:.60}");
        assert_eq!(r[0].status, 401, "{raw:.60}");
        assert_eq!(r[0].header("www-authenticate"), Some("Bearer"));
        assert_eq!(r[0].error(), "missing or invalid bearer token");
        assert_eq!(after, After::Close);
    }
    // the state was not touched
    let (r, _) = send(&mut o, "PUT /vms/web/stop HTTP/1.1\r\n\r\n");
    assert_eq!(r[0].status, 401);
    assert_eq!(o.vms[0].state, crate::ops::VmState::Running);
    // an empty configured token locks the API
    let mut c = Connection::new(b"");
    let mut out = Vec::new();
    c.receive(
        0,
        b"GET /vms HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n",
        &mut o,
        &mut out,
    );
    assert_eq!(responses(&out)[0].status, 401);
    // scheme and header name are case-insensitive
    let r = one(
        &mut o,
        &format!("GET /vms HTTP/1.1\r\nHOST: hv\r\nauthorization: bearer {TOKEN}\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn too_large_parts() {
    let mut o = ops();
    let auth = format!("Host: hv\r\nAuthorization: Bearer {TOKEN}\r\n");
    let line = format!(
        "GET /{} HTTP/1.1\r\n{auth}\r\n",
        "a".repeat(MAX_REQUEST_LINE)
    );
    let (r, after) = send(&mut o, &line);
    assert_eq!((r[0].status, after), (414, After::Close));
    let head = format!(
        "GET /vms HTTP/1.1\r\n{auth}X: {}\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    let (r, after) = send(&mut o, &head);
    assert_eq!((r[0].status, after), (431, After::Close));
    assert_eq!(
        r[0].error(),
        format!("request head longer than {MAX_HEAD} bytes")
    );
    // a head that never ends is refused as soon as it is too long, not left hanging
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    assert_eq!(
        c.receive(
            0,
            format!("GET /vms HTTP/1.1\r\n{auth}").as_bytes(),
            &mut o,
            &mut out
        ),
        After::KeepOpen
    );
    let mut after = After::KeepOpen;
    for _ in 0..MAX_HEAD {
        after = c.receive(1, b"X: y\r\n", &mut o, &mut out);
        if after == After::Close {
            break;
        }
    }
    assert_eq!(after, After::Close);
    assert_eq!(responses(&out)[0].status, 431);
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X{i}: y\r\n"))
        .collect();
    let r = one(&mut o, &format!("GET /vms HTTP/1.1\r\n{auth}{many}\r\n"));
    assert_eq!(r.status, 431);
    let big = format!(
        "PUT /vms/web/snapshot HTTP/1.1\r\n{auth}Content-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    let (r, after) = send(&mut o, &big);
    assert_eq!((r[0].status, after), (413, After::Close));
    // exactly MAX_BODY is fine (the JSON is then what is wrong)
    let body = format!("{{\"name\":\"s1\"}}{}", " ".repeat(MAX_BODY - 13));
    assert_eq!(body.len(), MAX_BODY);
    assert_eq!(
        one(&mut o, &req("PUT", "/vms/web/snapshot", &body)).status,
        201
    );
}

#[test]
fn transfer_encodings_are_refused_with_the_reason() {
    let mut o = ops();
    let auth = format!("Host: hv\r\nAuthorization: Bearer {TOKEN}\r\n");
    let (r, after) = send(
        &mut o,
        &format!(
            "PUT /vms/web/snapshot HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    );
    assert_eq!((r[0].status, after), (411, After::Close));
    assert_eq!(
        r[0].error(),
        "chunked request bodies are not supported; send Content-Length"
    );
    let (r, _) = send(
        &mut o,
        &format!("PUT /vms/web/snapshot HTTP/1.1\r\n{auth}Transfer-Encoding: gzip\r\n\r\n"),
    );
    assert_eq!(r[0].status, 501);
    assert_eq!(r[0].error(), "transfer coding `gzip` is not implemented");
}

#[test]
fn malformed_requests_are_400_with_the_reason() {
    let mut o = ops();
    let auth = format!("Host: hv\r\nAuthorization: Bearer {TOKEN}");
    for (raw, why, status) in [
        (
            format!("GET /vms\r\n{auth}\r\n\r\n"),
            "malformed request line (want `METHOD /path HTTP/1.1`)",
            400,
        ),
        (
            format!("GET  /vms HTTP/1.1\r\n{auth}\r\n\r\n"),
            "malformed request line (want `METHOD /path HTTP/1.1`)",
            400,
        ),
        (
            format!("get /vms HTTP/1.1\r\n{auth}\r\n\r\n"),
            "malformed method `get`",
            400,
        ),
        (
            format!("GET vms HTTP/1.1\r\n{auth}\r\n\r\n"),
            "request target must be a path starting with `/`",
            400,
        ),
        (
            format!("GET /vms HTTP/2.0\r\n{auth}\r\n\r\n"),
            "HTTP version `HTTP/2.0` not supported (use HTTP/1.1)",
            505,
        ),
        (
            format!("GET /vms FTP\r\n{auth}\r\n\r\n"),
            "malformed HTTP version `FTP`",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nbroken\r\n\r\n"),
            "header line without `:`: `broken`",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nX : y\r\n\r\n"),
            "malformed header name `X `",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nX: y\r\n z\r\n\r\n"),
            "obsolete header line folding",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nContent-Length: 1x\r\n\r\n"),
            "bad Content-Length `1x`",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nContent-Length: -1\r\n\r\n"),
            "bad Content-Length `-1`",
            400,
        ),
        (
            format!(
                "GET /vms HTTP/1.1\r\n{auth}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            ),
            "conflicting Content-Length fields",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nExpect: tea\r\n\r\n"),
            "unsupported Expect `tea`",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
            "an HTTP/1.1 request needs exactly one Host header",
            400,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nHost: b\r\n\r\n"),
            "an HTTP/1.1 request needs exactly one Host header",
            400,
        ),
        (
            format!("GET /vms HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
            "",
            200,
        ),
        (
            format!("GET /vms HTTP/1.1\r\n{auth}\r\nX: \u{ff}\r\n\r\n"),
            "",
            200,
        ),
    ] {
        let (r, after) = send(&mut o, &raw);
        assert_eq!(r[0].status, status, "{raw:?}: {}", r[0].body);
        if status != 200 {
            assert_eq!(r[0].error(), why);
            assert_eq!(after, After::Close);
        }
    }
    let mut bad = req("GET", "/vms", "").into_bytes();
    bad.splice(5..5, [0xff]);
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    assert_eq!(c.receive(0, &bad, &mut o, &mut out), After::Close);
    assert_eq!(responses(&out)[0].error(), "request head is not UTF-8");
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let mut o = ops();
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    assert_eq!(
        c.receive(
            0,
            req("PUT", "/vms/web/pause", "").as_bytes(),
            &mut o,
            &mut out
        ),
        After::KeepOpen
    );
    assert_eq!(
        c.receive(1, req("GET", "/vms/web", "").as_bytes(), &mut o, &mut out),
        After::KeepOpen
    );
    let r = responses(&out);
    assert_eq!((r[0].status, r[1].status), (204, 200));
    assert!(r[1].body.contains("\"state\":\"paused\""));
    // pipelined in one read, the last asking to close
    let mut out = Vec::new();
    let both = req("PUT", "/vms/web/resume", "")
        + &req("GET", "/vms", "").replace("Host: hv\r\n", "Host: hv\r\nConnection: close\r\n");
    assert_eq!(
        c.receive(2, both.as_bytes(), &mut o, &mut out),
        After::Close
    );
    let r = responses(&out);
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].status, r[1].status), (204, 200));
    assert_eq!(r[1].header("connection"), Some("close"));
    assert!(c.is_closed());
    // nothing more once closed
    let mut out = Vec::new();
    assert_eq!(
        c.receive(3, req("GET", "/vms", "").as_bytes(), &mut o, &mut out),
        After::Close
    );
    assert!(out.is_empty());
}

#[test]
fn http10_closes_unless_keep_alive() {
    let mut o = ops();
    let r10 = req("GET", "/vms", "").replace("HTTP/1.1", "HTTP/1.0");
    let (_, after) = send(&mut o, &r10);
    assert_eq!(after, After::Close);
    let ka = r10.replace("Host: hv", "Connection: Keep-Alive");
    let (_, after) = send(&mut o, &ka);
    assert_eq!(after, After::KeepOpen);
}

#[test]
fn a_request_split_across_many_reads() {
    let mut o = ops();
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    let raw = format!(
        "\r\n{}",
        req("PUT", "/vms/web/snapshot", r#"{"name":"split"}"#)
    );
    assert_eq!(c.pending_since(), None);
    for (t, b) in raw.bytes().enumerate() {
        assert!(out.is_empty(), "answered early at byte {t}");
        assert_eq!(
            c.receive(t as u64 + 10, &[b], &mut o, &mut out),
            After::KeepOpen
        );
        // the empty line before the request is skipped: it starts no request
        if t == 1 {
            assert_eq!(c.pending_since(), None);
        } else if t + 1 < raw.len() {
            assert_eq!(
                c.pending_since(),
                Some(if t == 0 { 10 } else { 12 }),
                "byte {t}"
            );
        }
    }
    let r = responses(&out);
    assert_eq!(r[0].status, 201);
    assert_eq!(c.pending_since(), None);
    assert_eq!(o.snapshots[0].name, "split");
}

#[test]
fn an_incomplete_request_is_the_callers_timeout() {
    let mut o = ops();
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    c.receive(5, b"GET /vms HTTP/1.1\r\nAuth", &mut o, &mut out);
    c.receive(9, b"orization: x", &mut o, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.pending_since(), Some(5));
    c.time_out(&mut out);
    let r = responses(&out);
    assert_eq!(r[0].status, 408);
    assert_eq!(r[0].header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn expect_100_continue() {
    let mut o = ops();
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    let body = r#"{"name":"e1"}"#;
    let head = format!(
        "PUT /vms/web/snapshot HTTP/1.1\r\nHost: hv\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.receive(0, head.as_bytes(), &mut o, &mut out);
    assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    out.clear();
    c.receive(1, body.as_bytes(), &mut o, &mut out);
    assert_eq!(responses(&out)[0].status, 201);
}

#[test]
fn documented_serde_error_text() {
    let mut o = ops();
    let r = one(&mut o, &req("PUT", "/vms/web/snapshot", r#"{"nam": "s1"}"#));
    assert_eq!(
        r.error(),
        "bad JSON body: unknown field `nam`, expected `name` at line 1 column 6"
    );
}

/// The head of a request with `len` body bytes to follow.
fn put_head(path: &str, len: usize) -> String {
    format!("PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len}\r\n\r\n")
}

/// Sends a whole snapshot file through `pull` in bounded steps; returns the head and body.
fn export(c: &mut Connection, ops: &mut FakeOps, path: &str) -> (String, Vec<u8>) {
    let mut out = Vec::new();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    c.receive(0, req.as_bytes(), ops, &mut out);
    let end = find(&out, b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8(out[..end].to_vec()).unwrap();
    let mut body = out[end..].to_vec();
    while c.sending() {
        let mut piece = Vec::new();
        let n = c.pull(1000, &mut piece);
        assert!(n <= 1000 && piece.len() == n, "{n}");
        body.extend_from_slice(&piece);
    }
    (head, body)
}

#[test]
fn a_snapshot_file_is_streamed_out_and_back_in() {
    let mut ops = ops();
    ops.snapshot(
        &Name::parse("web").unwrap(),
        Some(&Name::parse("s1").unwrap()),
    )
    .unwrap();
    let mut c = Connection::new(TOKEN.as_bytes());
    let (head, file) = export(&mut c, &mut ops, "/snapshots/s1/file?vm=web");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/octet-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("Content-Length: 131072\r\n"), "{head}");
    assert_eq!(file, crate::fake::fake_file("web", 128 * 1024));

    // the same connection: uploaded in pieces under another name
    let mut out = Vec::new();
    let h = put_head("/snapshots/s2/file?vm=web", file.len());
    c.receive(1, h.as_bytes(), &mut ops, &mut out);
    for piece in file.chunks(3000) {
        assert!(out.is_empty());
        c.receive(2, piece, &mut ops, &mut out);
    }
    let r = responses(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 201, "{r:?}");
    assert!(
        r[0].body
            .contains("\"name\":\"s2\",\"vm\":\"web\",\"size_bytes\":131072"),
        "{r:?}"
    );
    assert!(ops
        .snapshots
        .iter()
        .any(|s| s.name == "s2" && s.vm == "web"));
    assert!(!c.is_closed());
}

#[test]
fn an_export_of_another_vms_or_a_missing_snapshot_is_refused() {
    let mut ops = ops();
    ops.snapshot(
        &Name::parse("web").unwrap(),
        Some(&Name::parse("s1").unwrap()),
    )
    .unwrap();
    let mut c = Connection::new(TOKEN.as_bytes());
    let (head, body) = export(&mut c, &mut ops, "/snapshots/s1/file?vm=db");
    assert!(head.starts_with("HTTP/1.1 409 "), "{head}");
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("taken of vm `web`, not `db`"));
    let (head, _) = export(&mut c, &mut ops, "/snapshots/nope/file");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
}

#[test]
fn a_request_pipelined_behind_an_export_is_answered_after_the_file() {
    let mut ops = ops();
    ops.snapshot(
        &Name::parse("db").unwrap(),
        Some(&Name::parse("d").unwrap()),
    )
    .unwrap();
    let mut c = Connection::new(TOKEN.as_bytes());
    let two = format!(
        "GET /snapshots/d/file HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\nGET /vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    c.receive(0, two.as_bytes(), &mut ops, &mut out);
    while c.sending() {
        c.pull(4096, &mut out);
    }
    c.receive(1, &[], &mut ops, &mut out);
    let end = find(&out, b"\r\n\r\n").unwrap() + 4;
    let head = core::str::from_utf8(&out[..end]).unwrap();
    assert!(head.contains("Content-Length: 65536\r\n"), "{head}");
    assert_eq!(
        &out[end..end + 65536],
        &crate::fake::fake_file("db", 65536)[..]
    );
    let r = responses(&out[end + 65536..]);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 200);
    assert!(r[0].body.contains("\"name\":\"web\""), "{r:?}");
    assert!(c.is_closed());
}

#[test]
fn bad_uploads_get_their_reason() {
    let mut ops = ops();
    ops.snapshot(
        &Name::parse("web").unwrap(),
        Some(&Name::parse("s1").unwrap()),
    )
    .unwrap();
    let good = crate::fake::fake_file("web", 128 * 1024);
    let send = |ops: &mut FakeOps, path: &str, body: &[u8]| {
        let mut c = Connection::new(TOKEN.as_bytes());
        let mut out = Vec::new();
        c.receive(0, put_head(path, body.len()).as_bytes(), ops, &mut out);
        if !c.is_closed() {
            c.receive(0, body, ops, &mut out);
        }
        let r = responses(&out).remove(0);
        (r.status, r.error(), c.is_closed())
    };
    let mut bad = good.clone();
    bad[70_000] ^= 1;
    let (st, e, _) = send(&mut ops, "/snapshots/s2/file?vm=web", &bad);
    assert_eq!(
        (st, e.as_str()),
        (400, "snapshot refused: section ram #0: checksum mismatch")
    );
    let (st, e, _) = send(&mut ops, "/snapshots/s2/file?vm=web", b"hello");
    assert_eq!(st, 400);
    assert!(e.contains("bad magic"), "{e}");
    let (st, e, _) = send(&mut ops, "/snapshots/s2/file?vm=db", &good);
    assert_eq!(st, 400);
    assert!(e.contains("a snapshot of vm `db` has 65536"), "{e}");
    // refused from the head alone, the body unread: the connection closes
    let (st, e, closed) = send(&mut ops, "/snapshots/s1/file?vm=web", &good);
    assert_eq!(
        (st, e.as_str(), closed),
        (409, "a snapshot `s1` exists already", true)
    );
    ops.free_bytes = 1000;
    let (st, e, closed) = send(&mut ops, "/snapshots/s3/file?vm=web", &good);
    assert_eq!((st, closed), (507, true));
    assert!(e.contains("not enough hypervisor memory"), "{e}");
    let (st, e, _) = send(&mut ops, "/snapshots/s3/file", &good);
    assert_eq!(st, 400);
    assert!(e.contains("?vm=VM"), "{e}");
    let (st, _, _) = send(&mut ops, "/snapshots/x/file?vm=nope", &good);
    assert_eq!(st, 404);
    assert_eq!(ops.snapshots.len(), 1);
}

#[test]
fn other_methods_on_a_snapshot_file_get_405() {
    let mut ops = ops();
    let mut c = Connection::new(TOKEN.as_bytes());
    let mut out = Vec::new();
    let req = format!(
        "DELETE /snapshots/s1/file HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    c.receive(0, req.as_bytes(), &mut ops, &mut out);
    let r = responses(&out);
    assert_eq!(r[0].status, 405);
    assert_eq!(r[0].header("allow"), Some("GET, PUT"));
}
