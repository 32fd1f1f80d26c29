//! The management API: a sans-IO HTTP/1.1 server for one connection (bytes in, bytes out;
//! the core runs it over a TCP socket) and the JSON routes over [`Ops`].
//!
//! Limits and answers (RFC 9110/9112 status codes):
//! - request line longer than [`MAX_REQUEST_LINE`]: 414; request head (line + headers) longer
//!   than [`MAX_HEAD`]: 431; body longer than [`MAX_BODY`]: 413. The connection then closes.
//! - bodies only with `Content-Length`; `Transfer-Encoding: chunked` gets 411 (send a
//!   Content-Length), any other transfer coding 501; both close the connection.
//! - every request needs `Authorization: Bearer <token>` (compared in constant time); without
//!   it the only answer is 401 with `WWW-Authenticate: Bearer`, whatever else is wrong.
//! - a malformed request (including an HTTP/1.1 one without exactly one `Host`, RFC 9112
//!   3.2) gets 400 with the reason in `{"error": "..."}` and closes; an unknown
//!   path 404; a known path with another method 405 with `Allow`.
//! - keep-alive: HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 closes
//!   unless `Connection: keep-alive`. Pipelined requests are answered in order.
//! - a request that never completes is the caller's to time out: [`Connection::pending_since`].

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use serde::Deserialize;

use crate::command::{Command, Name};
use crate::ops::{execute, Ops, Outcome, SnapshotSink, SnapshotSource};
use crate::render::{error_json, json};

/// Longest request line, in bytes (without CRLF).
pub const MAX_REQUEST_LINE: usize = 1024;
/// Longest request head (request line and headers, with the final empty line).
pub const MAX_HEAD: usize = 8192;
/// Longest request body.
pub const MAX_BODY: usize = 4096;
/// Most header lines.
pub const MAX_HEADERS: usize = 64;

/// Whether the caller keeps the connection after sending what [`Connection::receive`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    KeepOpen,
    /// Send the output, then close the connection.
    Close,
}

/// Compares `a` and `b` in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// One response before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    pub allow: Option<&'static str>,
    pub close: bool,
}

impl Response {
    fn error(status: u16, text: &str) -> Response {
        Response {
            status,
            body: Some(error_json(text)),
            allow: None,
            close: false,
        }
    }

    fn closing(mut self) -> Response {
        self.close = true;
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Appends the encoded response to `out`.
pub fn encode(r: &Response, out: &mut Vec<u8>) {
    let mut head = String::new();
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    if r.status == 401 {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    if let Some(allow) = r.allow {
        let _ = write!(head, "Allow: {allow}\r\n");
    }
    match &r.body {
        Some(body) => {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        None if r.status == 204 => {}
        None => head.push_str("Content-Length: 0\r\n"),
    }
    if r.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if let Some(body) = &r.body {
        out.extend_from_slice(body.as_bytes());
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    content_length: usize,
    keep_alive: bool,
    authorized: bool,
    expect_continue: bool,
}

/// A head that cannot be served; `authorized` says whether a valid token was seen.
struct HeadError {
    status: u16,
    text: String,
    authorized: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether one header line (without CRLF) carries the valid bearer token.
fn bearer_ok(line: &str, token: &[u8]) -> bool {
    let Some((name, value)) = line.split_once(':') else {
        return false;
    };
    if !name.eq_ignore_ascii_case("authorization") {
        return false;
    }
    let value = value.trim_matches([' ', '\t']);
    let Some((scheme, cred)) = value.split_once(' ') else {
        return false;
    };
    // an empty configured token locks the API
    scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && constant_time_eq(cred.trim_start_matches(' ').as_bytes(), token)
}

/// Whether any complete (CRLF-terminated) header line in `head` has the valid token.
fn any_bearer_ok(head: &[u8], token: &[u8]) -> bool {
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|l| core::str::from_utf8(l.strip_suffix(b"\r")?).ok())
        .any(|l| bearer_ok(l, token))
}

fn parse_head(head: &[u8], token: &[u8]) -> Result<Head, HeadError> {
    let authorized = any_bearer_ok(head, token);
    let bad = |status: u16, text: String| HeadError {
        status,
        text,
        authorized,
    };
    let text = core::str::from_utf8(head)
        .map_err(|_| bad(400, String::from("request head is not UTF-8")))?;
    let text = text.strip_suffix("\r\n").unwrap_or(text);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            400,
            String::from("malformed request line (want `METHOD /path HTTP/1.1`)"),
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(400, format!("malformed method `{method}`")));
    }
    if !target.starts_with('/') {
        return Err(bad(
            400,
            String::from("request target must be a path starting with `/`"),
        ));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => {
            return Err(bad(
                505,
                format!("HTTP version `{v}` not supported (use HTTP/1.1)"),
            ))
        }
        v => return Err(bad(400, format!("malformed HTTP version `{v}`"))),
    };
    let mut h = Head {
        method: String::from(method),
        target: String::from(target),
        http10,
        content_length: 0,
        keep_alive: !http10,
        authorized,
        expect_continue: false,
    };
    let mut length: Option<usize> = None;
    let mut count = 0usize;
    let mut hosts = 0usize;
    for line in lines.take_while(|l| !l.is_empty()) {
        count = count.saturating_add(1);
        if count > MAX_HEADERS {
            return Err(bad(431, format!("more than {MAX_HEADERS} header fields")));
        }
        if line.starts_with([' ', '\t']) {
            return Err(bad(400, String::from("obsolete header line folding")));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(400, format!("header line without `:`: `{line}`")));
        };
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(bad(400, format!("malformed header name `{name}`")));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                value.parse::<usize>().ok()
            } else {
                None
            };
            let Some(n) = n else {
                return Err(bad(400, format!("bad Content-Length `{value}`")));
            };
            if length.is_some_and(|l| l != n) {
                return Err(bad(400, String::from("conflicting Content-Length fields")));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(if value.eq_ignore_ascii_case("chunked") {
                bad(
                    411,
                    String::from("chunked request bodies are not supported; send Content-Length"),
                )
            } else {
                bad(501, format!("transfer coding `{value}` is not implemented"))
            });
        } else if name.eq_ignore_ascii_case("connection") {
            for opt in value.split(',').map(|o| o.trim_matches([' ', '\t'])) {
                if opt.eq_ignore_ascii_case("close") {
                    h.keep_alive = false;
                } else if opt.eq_ignore_ascii_case("keep-alive") && http10 {
                    h.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts = hosts.saturating_add(1);
        } else if name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case("100-continue") {
                h.expect_continue = true;
            } else {
                return Err(bad(400, format!("unsupported Expect `{value}`")));
            }
        }
    }
    // RFC 9112 3.2: an HTTP/1.1 request without Host, or with several, gets 400
    if hosts > 1 || (hosts == 0 && !http10) {
        return Err(bad(
            400,
            String::from("an HTTP/1.1 request needs exactly one Host header"),
        ));
    }
    h.content_length = length.unwrap_or(0);
    Ok(h)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    snapshot: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneBody {
    vm: String,
}

fn name(s: &str, what: &str) -> Result<Name, Response> {
    Name::parse(s).map_err(|e| Response::error(400, &format!("bad {what} name `{s}`: {e}")))
}

fn body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| Response::error(400, &format!("bad JSON body: {e}")))
}

/// The routes: `(method, path) -> Command`, or the error response.
pub fn route(method: &str, target: &str, b: &[u8]) -> Result<Command, Response> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let (allow, cmd): (&'static str, Option<Result<Command, Response>>) = match segs.as_slice() {
        ["vms"] => ("GET", (method == "GET").then_some(Ok(Command::List))),
        ["vms", vm] => (
            "GET",
            (method == "GET").then(|| name(vm, "VM").map(Command::Info)),
        ),
        ["vms", vm, action] => {
            let is_put = method == "PUT";
            let f = |c: fn(Name) -> Command| is_put.then(|| name(vm, "VM").map(c));
            let c = match *action {
                "pause" => f(Command::Pause),
                "resume" => f(Command::Resume),
                "stop" => f(Command::Stop),
                "restart" => f(Command::Restart),
                "snapshot" => is_put.then(|| {
                    let vm = name(vm, "VM")?;
                    let n = if b.iter().all(u8::is_ascii_whitespace) {
                        None
                    } else {
                        body::<SnapshotBody>(b)?.name
                    };
                    let n = n.map(|n| name(&n, "snapshot")).transpose()?;
                    Ok(Command::Snapshot { vm, name: n })
                }),
                "rollback" => is_put.then(|| {
                    let vm = name(vm, "VM")?;
                    let r: RollbackBody = body(b)?;
                    Ok(Command::Rollback {
                        vm,
                        snapshot: name(&r.snapshot, "snapshot")?,
                    })
                }),
                _ => return Err(Response::error(404, &format!("no route `{path}`"))),
            };
            ("PUT", c)
        }
        ["snapshots"] => (
            "GET",
            (method == "GET").then(|| {
                let vm = match query {
                    None | Some("") => None,
                    Some(q) => match q.strip_prefix("vm=") {
                        Some(v) => Some(name(v, "VM")?),
                        None => {
                            return Err(Response::error(
                                400,
                                &format!("unknown query `{q}` (only vm=NAME)"),
                            ))
                        }
                    },
                };
                Ok(Command::Snapshots(vm))
            }),
        ),
        ["snapshots", snap] => (
            "DELETE",
            (method == "DELETE").then(|| name(snap, "snapshot").map(Command::Delete)),
        ),
        ["snapshots", snap, "clone"] => (
            "PUT",
            (method == "PUT").then(|| {
                let snapshot = name(snap, "snapshot")?;
                let c: CloneBody = body(b)?;
                Ok(Command::Clone {
                    snapshot,
                    new_vm: name(&c.vm, "VM")?,
                })
            }),
        ),
        _ => return Err(Response::error(404, &format!("no route `{path}`"))),
    };
    match cmd {
        Some(c) => c,
        None => Err(Response {
            allow: Some(allow),
            ..Response::error(
                405,
                &format!("{method} not allowed on `{path}` (allowed: {allow})"),
            )
        }),
    }
}

/// Serves one authorized, complete request.
pub fn serve(ops: &mut dyn Ops, method: &str, target: &str, b: &[u8]) -> Response {
    let cmd = match route(method, target, b) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match execute(ops, &cmd) {
        Ok(outcome) => {
            let status = match outcome {
                Outcome::Snapshot(_) | Outcome::Cloned(_) => 201,
                Outcome::Done(_) => 204,
                _ => 200,
            };
            Response {
                status,
                body: json(&outcome),
                allow: None,
                close: false,
            }
        }
        Err(e) => Response::error(e.status(), &format!("{e}")),
    }
}

/// A snapshot file request: `GET /snapshots/NAME/file[?vm=VM]` sends it,
/// `PUT /snapshots/NAME/file?vm=VM` uploads one (the body is the file, of any length).
enum FileReq {
    Export { snapshot: Name, vm: Option<Name> },
    Import { snapshot: Name, vm: Name },
}

/// `None`: not a file path; else the request or its error response.
fn file_route(method: &str, target: &str) -> Option<Result<FileReq, Response>> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path.strip_suffix('/').unwrap_or(path);
    let snap = path.strip_prefix("/snapshots/")?.strip_suffix("/file")?;
    if snap.contains('/') {
        return None;
    }
    Some((|| {
        let snapshot = name(snap, "snapshot")?;
        let vm = match query {
            None | Some("") => None,
            Some(q) => match q.strip_prefix("vm=") {
                Some(v) => Some(name(v, "VM")?),
                None => {
                    return Err(Response::error(
                        400,
                        &format!("unknown query `{q}` (only vm=NAME)"),
                    ))
                }
            },
        };
        match (method, vm) {
            ("GET", vm) => Ok(FileReq::Export { snapshot, vm }),
            ("PUT", Some(vm)) => Ok(FileReq::Import { snapshot, vm }),
            ("PUT", None) => Err(Response::error(
                400,
                "an upload names the VM it is for: PUT /snapshots/NAME/file?vm=VM",
            )),
            _ => Err(Response {
                allow: Some("GET, PUT"),
                ..Response::error(
                    405,
                    &format!("{method} not allowed on `{path}` (allowed: GET, PUT)"),
                )
            }),
        }
    })())
}

/// The head of a snapshot file being sent.
pub fn encode_file_head(len: u64, close: bool, out: &mut Vec<u8>) {
    let mut head = String::new();
    let _ = write!(
        head,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n"
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
}

/// A snapshot file being sent: the next offset, whether to close after it.
struct Outgoing {
    src: Box<dyn SnapshotSource>,
    offset: u64,
    close: bool,
}

/// A snapshot file being received: bytes still to come.
struct Incoming {
    sink: Box<dyn SnapshotSink>,
    left: u64,
    close: bool,
}

/// Bytes of a snapshot file copied per [`Connection::pull`] step.
pub const FILE_PIECE: usize = 4096;

/// One HTTP connection's server state.
pub struct Connection {
    token: Vec<u8>,
    buf: Vec<u8>,
    /// The head of the request whose body is still arriving.
    head: Option<Head>,
    pending_since: Option<u64>,
    closed: bool,
    outgoing: Option<Outgoing>,
    incoming: Option<Incoming>,
}

impl core::fmt::Debug for Connection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.buf.len())
            .field("head", &self.head)
            .field("pending_since", &self.pending_since)
            .field("closed", &self.closed)
            .field("sending", &self.outgoing.as_ref().map(|o| o.offset))
            .field("receiving", &self.incoming.as_ref().map(|i| i.left))
            .finish()
    }
}

impl Connection {
    /// A connection served with bearer token `token` (empty: every request gets 401).
    pub fn new(token: &[u8]) -> Self {
        Connection {
            token: Vec::from(token),
            buf: Vec::new(),
            head: None,
            pending_since: None,
            closed: false,
            outgoing: None,
            incoming: None,
        }
    }

    /// Whether a snapshot file is being sent ([`Self::pull`] has more).
    pub fn sending(&self) -> bool {
        self.outgoing.is_some()
    }

    /// Appends up to `max` bytes of the snapshot file being sent to `out` (in pieces of
    /// [`FILE_PIECE`]); returns how many. When the file is done, requests that came
    /// meanwhile are served by the next [`Self::receive`] (bytes or none).
    pub fn pull(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        let Some(o) = self.outgoing.as_mut() else {
            return 0;
        };
        let mut piece = [0u8; FILE_PIECE];
        let mut done = 0usize;
        let len = o.src.size();
        while done < max && o.offset < len {
            let want =
                len.saturating_sub(o.offset)
                    .min(max.saturating_sub(done).min(FILE_PIECE) as u64) as usize;
            let Some(dst) = piece.get_mut(..want) else {
                break;
            };
            let n = o.src.read_at(o.offset, dst);
            if n == 0 {
                break;
            }
            out.extend_from_slice(piece.get(..n).unwrap_or_default());
            o.offset = o.offset.saturating_add(n as u64);
            done = done.saturating_add(n);
        }
        if o.offset >= len || done == 0 {
            // At the end (or the source ended early: the length was promised, so close).
            let close = o.close || o.offset < len;
            self.outgoing = None;
            if close {
                self.closed = true;
                self.buf.clear();
                self.head = None;
                self.pending_since = None;
            }
        }
        done
    }

    /// When the first byte of the request still incomplete arrived (`None`: between
    /// requests). The caller closes the connection when this is too long ago.
    pub fn pending_since(&self) -> Option<u64> {
        self.pending_since
    }

    /// Whether the connection is done (the caller closes it once the output is sent).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The caller's timeout on an incomplete request ([`Self::pending_since`]): writes a
    /// 408 to `out` and closes the connection.
    pub fn time_out(&mut self, out: &mut Vec<u8>) {
        if !self.closed {
            encode(
                &Response::error(408, "request not completed in time").closing(),
                out,
            );
        }
        self.closed = true;
        self.buf.clear();
        self.head = None;
        self.pending_since = None;
    }

    /// Feeds the bytes that arrived at time `now` (any unit the caller likes); responses to
    /// every request they complete go to `out`.
    pub fn receive(
        &mut self,
        now: u64,
        bytes: &[u8],
        ops: &mut dyn Ops,
        out: &mut Vec<u8>,
    ) -> After {
        if self.closed {
            return After::Close;
        }
        if (self.pending_since.is_none() || self.incoming.is_some()) && !bytes.is_empty() {
            // an upload times out only when it stops making progress
            self.pending_since = Some(now);
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.step(ops, out) {
                Step::NeedMore => {
                    if self.buf.is_empty() && self.head.is_none() {
                        self.pending_since = None;
                    }
                    return After::KeepOpen;
                }
                Step::Served => {
                    self.pending_since = (!self.buf.is_empty()).then_some(now);
                }
                Step::Close => {
                    self.closed = true;
                    self.buf.clear();
                    self.head = None;
                    self.pending_since = None;
                    return After::Close;
                }
            }
        }
    }

    fn refuse(&self, r: Response, authorized: bool, out: &mut Vec<u8>) -> Step {
        let r = if authorized {
            r
        } else {
            Response::error(401, "missing or invalid bearer token")
        };
        encode(&r.closing(), out);
        Step::Close
    }

    fn step(&mut self, ops: &mut dyn Ops, out: &mut Vec<u8>) -> Step {
        if self.outgoing.is_some() {
            // the next request waits for the file before it
            return Step::NeedMore;
        }
        if self.incoming.is_some() {
            return self.upload(ops, out);
        }
        if self.head.is_none() {
            // RFC 9112 2.2: ignore empty lines before a request line
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            let end = find(&self.buf, b"\r\n\r\n");
            let line_end = find(&self.buf, b"\r\n").unwrap_or(self.buf.len());
            if line_end > MAX_REQUEST_LINE {
                let text = format!("request line longer than {MAX_REQUEST_LINE} bytes");
                let auth = any_bearer_ok(&self.buf, &self.token);
                return self.refuse(Response::error(414, &text), auth, out);
            }
            let Some(end) = end.filter(|&e| e.saturating_add(4) <= MAX_HEAD) else {
                if self.buf.len() >= MAX_HEAD {
                    let text = format!("request head longer than {MAX_HEAD} bytes");
                    let auth = any_bearer_ok(&self.buf, &self.token);
                    return self.refuse(Response::error(431, &text), auth, out);
                }
                return Step::NeedMore;
            };
            let head_end = end.saturating_add(4);
            // with the last header line's CRLF (lines are read CRLF-terminated)
            let head = self.buf.get(..end.saturating_add(2)).unwrap_or_default();
            let parsed = parse_head(head, &self.token);
            self.buf.drain(..head_end);
            match parsed {
                Err(e) => {
                    return self.refuse(Response::error(e.status, &e.text), e.authorized, out)
                }
                Ok(h) if !h.authorized => {
                    // the body cannot be skipped safely without reading it: close
                    return self.refuse(Response::error(401, ""), false, out);
                }
                Ok(h) if file_route(&h.method, &h.target).is_some() => {
                    return self.file(h, ops, out);
                }
                Ok(h) if h.content_length > MAX_BODY => {
                    let text = format!("request body longer than {MAX_BODY} bytes");
                    return self.refuse(Response::error(413, &text), true, out);
                }
                Ok(h) => {
                    if h.expect_continue && self.buf.len() < h.content_length {
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    self.head = Some(h);
                }
            }
        }
        let Some(h) = self.head.as_ref() else {
            return Step::NeedMore;
        };
        if self.buf.len() < h.content_length {
            return Step::NeedMore;
        }
        let Some(h) = self.head.take() else {
            return Step::NeedMore;
        };
        let body: Vec<u8> = self.buf.drain(..h.content_length).collect();
        let mut r = serve(ops, &h.method, &h.target, &body);
        // a 400 from routing (bad name or JSON) leaves the framing intact: keep-alive holds
        r.close |= !h.keep_alive;
        encode(&r, out);
        if r.close {
            Step::Close
        } else {
            Step::Served
        }
    }
}

impl Connection {
    /// Starts a snapshot file request (its head is complete).
    fn file(&mut self, h: Head, ops: &mut dyn Ops, out: &mut Vec<u8>) -> Step {
        let close = !h.keep_alive;
        let answer = |r: Response, out: &mut Vec<u8>, close: bool| {
            let r = Response { close, ..r };
            encode(&r, out);
            if close {
                Step::Close
            } else {
                Step::Served
            }
        };
        match file_route(&h.method, &h.target) {
            None => answer(Response::error(404, "no route"), out, true),
            // the body (if any) is not read: close
            Some(Err(r)) => answer(r, out, close || h.content_length > 0),
            Some(Ok(FileReq::Export { snapshot, vm })) => {
                if h.content_length > 0 {
                    return answer(
                        Response::error(400, "a GET of a snapshot file has no body"),
                        out,
                        true,
                    );
                }
                match ops.export(&snapshot, vm.as_ref()) {
                    Err(e) => answer(Response::error(e.status(), &format!("{e}")), out, close),
                    Ok(src) => {
                        encode_file_head(src.size(), close, out);
                        self.outgoing = Some(Outgoing {
                            src,
                            offset: 0,
                            close,
                        });
                        Step::NeedMore
                    }
                }
            }
            Some(Ok(FileReq::Import { snapshot, vm })) => {
                if h.content_length == 0 {
                    return answer(
                        Response::error(400, "empty upload (the body is the snapshot file)"),
                        out,
                        close,
                    );
                }
                match ops.import(&vm, &snapshot, h.content_length as u64) {
                    // refused before the body: it is not read, so close
                    Err(e) => answer(Response::error(e.status(), &format!("{e}")), out, true),
                    Ok(sink) => {
                        if h.expect_continue && self.buf.is_empty() {
                            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        }
                        self.incoming = Some(Incoming {
                            sink,
                            left: h.content_length as u64,
                            close,
                        });
                        self.upload(ops, out)
                    }
                }
            }
        }
    }

    /// Passes what arrived of an upload on; answers once it is complete.
    fn upload(&mut self, ops: &mut dyn Ops, out: &mut Vec<u8>) -> Step {
        let Some(inc) = self.incoming.as_mut() else {
            return Step::NeedMore;
        };
        let n = (self.buf.len() as u64).min(inc.left) as usize;
        if n > 0 {
            inc.sink.write(self.buf.get(..n).unwrap_or_default());
            self.buf.drain(..n);
            inc.left = inc.left.saturating_sub(n as u64);
        }
        if inc.left > 0 {
            return Step::NeedMore;
        }
        let Some(inc) = self.incoming.take() else {
            return Step::NeedMore;
        };
        let r = match ops.import_done(inc.sink) {
            Ok(info) => Response {
                status: 201,
                body: json(&Outcome::Snapshot(info)),
                allow: None,
                close: inc.close,
            },
            Err(e) => Response {
                close: inc.close,
                ..Response::error(e.status(), &format!("{e}"))
            },
        };
        encode(&r, out);
        if r.close {
            Step::Close
        } else {
            Step::Served
        }
    }
}

enum Step {
    NeedMore,
    Served,
    Close,
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
