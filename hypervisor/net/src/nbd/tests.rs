//! The client against a scripted server: the bytes each side sends.
use super::*;
use alloc::vec;

const SIZE: u64 = 1 << 20;

fn config() -> Config {
    Config {
        export: String::from("disk"),
        deadline_ms: 1000,
        retry_ms: 100,
        retry_max_ms: 100,
        max_in_flight: 8,
    }
}

fn greeting(flags: u16) -> Vec<u8> {
    let mut g = Vec::new();
    g.extend_from_slice(&NBDMAGIC.to_be_bytes());
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&flags.to_be_bytes());
    g
}

fn opt_reply(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    r.extend_from_slice(&OPT_GO.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut p = INFO_EXPORT.to_be_bytes().to_vec();
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&flags.to_be_bytes());
    opt_reply(REP_INFO, &p)
}

fn reply(error: u32, cookie: u64, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    r.extend_from_slice(&error.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// A request the client sent: (flags, type, cookie, offset, length, data).
type Req = (u16, u16, u64, u64, u32, Vec<u8>);

fn take(c: &mut Client) -> Vec<u8> {
    let b = c.transmit().to_vec();
    c.sent(b.len());
    b
}

fn requests(mut b: &[u8]) -> Vec<Req> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert_eq!(be32(b, 0), Some(REQUEST_MAGIC));
        let flags = be16(b, 4).unwrap();
        let kind = be16(b, 6).unwrap();
        let cookie = be64(b, 8).unwrap();
        let offset = be64(b, 16).unwrap();
        let len = be32(b, 24).unwrap();
        let dl = if kind == CMD_WRITE { len as usize } else { 0 };
        v.push((flags, kind, cookie, offset, len, b[28..28 + dl].to_vec()));
        b = &b[28 + dl..];
    }
    v
}

fn connect(c: &mut Client, flags: u16, now: u64) {
    assert!(c.should_connect(now));
    c.connected(now);
    c.receive(&greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES), now);
    let hs = take(c);
    assert_eq!(
        &hs[..4],
        &(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()
    );
    let mut r = info_export(SIZE, flags);
    r.extend(opt_reply(REP_ACK, &[]));
    c.receive(&r, now);
    assert!(c.is_ready());
}

fn ready(flags: u16) -> Client {
    let mut c = Client::new(config());
    connect(&mut c, flags, 0);
    assert!(matches!(
        c.next_event(),
        Some(Event::Ready { size: SIZE, .. })
    ));
    c
}

const RW: u16 = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_TRIM | TF_SEND_FUA;

#[test]
fn handshake_bytes_and_block_size() {
    let mut c = Client::new(config());
    assert!(c.should_connect(0));
    c.connected(0);
    // The greeting in two pieces: nothing until all 18 bytes are there.
    let g = greeting(FLAG_FIXED_NEWSTYLE);
    c.receive(&g[..10], 0);
    assert!(c.transmit().is_empty());
    c.receive(&g[10..], 0);
    let hs = take(&mut c);
    let mut want = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
    want.extend_from_slice(&IHAVEOPT.to_be_bytes());
    want.extend_from_slice(&OPT_GO.to_be_bytes());
    want.extend_from_slice(&(4u32 + 4 + 2 + 4).to_be_bytes());
    want.extend_from_slice(&4u32.to_be_bytes());
    want.extend_from_slice(b"disk");
    want.extend_from_slice(&2u16.to_be_bytes());
    want.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    want.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    assert_eq!(hs, want, "client flags without NO_ZEROES, then NBD_OPT_GO");
    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [4096u32, 4096, 1 << 20] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    let mut r = info_export(SIZE, RW);
    r.extend(opt_reply(REP_INFO, &bs));
    // An information type not asked for is ignored.
    r.extend(opt_reply(REP_INFO, &[0, 2, b'x']));
    r.extend(opt_reply(REP_ACK, &[]));
    c.receive(&r, 0);
    assert!(c.is_ready());
    let e = c.export().unwrap();
    assert_eq!(
        (e.size, e.flags, e.min_block, e.max_block),
        (SIZE, RW, 4096, 1 << 20)
    );
    // 512-byte requests break the 4096-byte minimum; 2 MiB the maximum.
    let a = c.submit(
        Command::Read {
            offset: 512,
            len: 512,
        },
        0,
    );
    let b = c.submit(
        Command::Read {
            offset: 0,
            len: 2 << 20,
        },
        0,
    );
    assert_eq!(
        c.next_completion().unwrap(),
        Completion {
            id: a,
            result: Err(Error::Unaligned),
            data: vec![]
        }
    );
    assert_eq!(c.next_completion().unwrap().result, Err(Error::OutOfRange));
    let _ = b;
    assert!(c.transmit().is_empty());
}

#[test]
fn requests_and_out_of_order_replies() {
    let mut c = ready(RW);
    let w = c.submit(
        Command::Write {
            offset: 4096,
            data: vec![0xAB; 1024],
            fua: true,
        },
        0,
    );
    let r = c.submit(
        Command::Read {
            offset: 0,
            len: 512,
        },
        0,
    );
    let t = c.submit(
        Command::Trim {
            offset: 8192,
            len: 4096,
        },
        0,
    );
    let sent = requests(&take(&mut c));
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[0],
        (CMD_FLAG_FUA, CMD_WRITE, w, 4096, 1024, vec![0xAB; 1024])
    );
    assert_eq!(sent[1], (0, CMD_READ, r, 0, 512, vec![]));
    assert_eq!(sent[2], (0, CMD_TRIM, t, 8192, 4096, vec![]));
    // Replies out of order, the read's data split across two receives.
    let mut rr = reply(0, r, &[7; 512]);
    let tail = rr.split_off(100);
    c.receive(&reply(EIO, t, &[]), 0);
    c.receive(&rr, 0);
    assert!(c
        .next_completion()
        .is_some_and(|x| x.id == t && x.result == Err(Error::Server(EIO))));
    assert!(c.next_completion().is_none(), "the read is not whole yet");
    c.receive(&tail, 0);
    c.receive(&reply(0, w, &[]), 0);
    assert_eq!(
        c.next_completion().unwrap(),
        Completion {
            id: r,
            result: Ok(()),
            data: vec![7; 512]
        }
    );
    let wc = c.next_completion().unwrap();
    assert_eq!(
        (wc.id, wc.result, wc.data.len()),
        (w, Ok(()), 1024),
        "the buffer comes back"
    );
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn flush_waits_for_earlier_writes() {
    let mut c = ready(RW);
    let w1 = c.submit(
        Command::Write {
            offset: 0,
            data: vec![1; 512],
            fua: false,
        },
        0,
    );
    let f = c.submit(Command::Flush, 0);
    let w2 = c.submit(
        Command::Write {
            offset: 512,
            data: vec![2; 512],
            fua: false,
        },
        0,
    );
    let sent: Vec<_> = requests(&take(&mut c)).iter().map(|r| r.2).collect();
    assert_eq!(sent, vec![w1, w2], "the flush is held back");
    c.receive(&reply(0, w2, &[]), 0);
    assert!(c.transmit().is_empty(), "w1 is still unanswered");
    c.receive(&reply(0, w1, &[]), 0);
    let sent = requests(&take(&mut c));
    assert_eq!((sent[0].1, sent[0].2), (CMD_FLUSH, f));
    c.receive(&reply(0, f, &[]), 0);
    let ids: Vec<_> = core::iter::from_fn(|| c.next_completion())
        .map(|x| x.id)
        .collect();
    assert_eq!(ids, vec![w2, w1, f]);
}

#[test]
fn flush_without_send_flush_completes_after_the_writes() {
    let mut c = ready(TF_HAS_FLAGS);
    let w = c.submit(
        Command::Write {
            offset: 0,
            data: vec![1; 512],
            fua: false,
        },
        0,
    );
    let f = c.submit(Command::Flush, 0);
    assert_eq!(requests(&take(&mut c)).len(), 1);
    assert!(c.next_completion().is_none());
    c.receive(&reply(0, w, &[]), 0);
    assert_eq!(c.next_completion().unwrap().id, w);
    assert_eq!(
        c.next_completion().unwrap(),
        Completion {
            id: f,
            result: Ok(()),
            data: vec![]
        }
    );
    // TRIM not offered.
    c.submit(
        Command::Trim {
            offset: 0,
            len: 512,
        },
        0,
    );
    assert_eq!(c.next_completion().unwrap().result, Err(Error::Unsupported));
}

#[test]
fn read_only_export_refuses_writes() {
    let mut c = ready(TF_HAS_FLAGS | TF_READ_ONLY | TF_SEND_TRIM);
    c.submit(
        Command::Write {
            offset: 0,
            data: vec![1; 512],
            fua: false,
        },
        0,
    );
    c.submit(
        Command::Trim {
            offset: 0,
            len: 512,
        },
        0,
    );
    assert_eq!(c.next_completion().unwrap().result, Err(Error::ReadOnly));
    assert_eq!(c.next_completion().unwrap().result, Err(Error::ReadOnly));
    assert!(c.transmit().is_empty(), "nothing sent");
    c.submit(
        Command::Read {
            offset: SIZE - 512,
            len: 1024,
        },
        0,
    );
    assert_eq!(c.next_completion().unwrap().result, Err(Error::OutOfRange));
    c.submit(
        Command::Read {
            offset: u64::MAX - 100,
            len: 512,
        },
        0,
    );
    assert_eq!(
        c.next_completion().unwrap().result,
        Err(Error::OutOfRange),
        "end overflows"
    );
}

#[test]
fn refused_export_is_named() {
    let mut c = Client::new(config());
    c.connected(0);
    c.receive(&greeting(FLAG_FIXED_NEWSTYLE), 0);
    take(&mut c);
    c.receive(&opt_reply(0x8000_0006, b"no such export"), 0);
    assert!(c.wants_close());
    let ev = c.next_event().unwrap();
    assert_eq!(
        ev,
        Event::Down {
            reason: DownReason::Refused(RepError::Unknown, "no such export".into()),
            unanswered: 0
        }
    );
    assert!(ev.to_string().contains("NBD_REP_ERR_UNKNOWN"), "{ev}");
    assert!(!c.should_connect(50), "retried after retry_ms");
    assert!(c.should_connect(100));
    // Refused again: no second console line for the same reason.
    c.connected(100);
    c.receive(&greeting(FLAG_FIXED_NEWSTYLE), 100);
    c.receive(&opt_reply(0x8000_0006, b"no such export"), 100);
    assert!(c.wants_close());
    assert!(c.next_event().is_none());
}

#[test]
fn bad_server_bytes_drop_the_connection() {
    let cases: Vec<(Vec<u8>, ProtoError)> = vec![
        (reply(0, 999, &[]), ProtoError::UnknownCookie(999)),
        (
            {
                let mut r = reply(0, 1, &[]);
                r[0] ^= 1;
                r
            },
            ProtoError::BadReplyMagic(SIMPLE_REPLY_MAGIC ^ 0x0100_0000),
        ),
        (
            STRUCTURED_REPLY_MAGIC.to_be_bytes().repeat(4),
            ProtoError::StructuredReply,
        ),
    ];
    for (bytes, want) in cases {
        let mut c = ready(RW);
        let id = c.submit(
            Command::Read {
                offset: 0,
                len: 512,
            },
            0,
        );
        take(&mut c);
        c.receive(&bytes, 0);
        assert!(c.wants_close() && !c.is_ready());
        assert_eq!(
            c.next_event(),
            Some(Event::Down {
                reason: DownReason::Protocol(want),
                unanswered: 1
            })
        );
        assert!(
            c.next_completion().is_none(),
            "the read is not failed, it is re-sent"
        );
        // Reconnect: re-negotiated, the read goes out again with its cookie.
        connect(&mut c, RW, 100);
        assert!(matches!(
            c.next_event(),
            Some(Event::Ready { resent: 1, .. })
        ));
        let sent = requests(&take(&mut c));
        assert_eq!((sent.len(), sent[0].2), (1, id));
        c.receive(&reply(0, id, &[3; 512]), 100);
        assert_eq!(c.next_completion().unwrap().data, vec![3; 512]);
    }
}

#[test]
fn bad_negotiation_bytes() {
    let info_bad_len = opt_reply(REP_INFO, &[0, 0, 1, 2, 3]);
    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [3u32, 4096, 1 << 20] {
        bs.extend_from_slice(&v.to_be_bytes());
    }
    let mut oversize = opt_reply(REP_INFO, &[]);
    oversize[16..20].copy_from_slice(&(MAX_OPT_REPLY + 1).to_be_bytes());
    let mut wrong_opt = opt_reply(REP_ACK, &[]);
    wrong_opt[8..12].copy_from_slice(&1u32.to_be_bytes());
    let cases: Vec<(Vec<u8>, ProtoError)> = vec![
        (opt_reply(REP_ACK, &[]), ProtoError::NoExportInfo),
        (info_bad_len, ProtoError::BadInfo(INFO_EXPORT)),
        (
            opt_reply(REP_INFO, &bs),
            ProtoError::BadInfo(INFO_BLOCK_SIZE),
        ),
        (oversize, ProtoError::OversizeOptionReply(MAX_OPT_REPLY + 1)),
        (wrong_opt, ProtoError::WrongOption(1)),
        (opt_reply(2, &[]), ProtoError::UnexpectedReply(2)),
        (
            vec![0xEE; 20],
            ProtoError::BadOptionMagic(0xEEEE_EEEE_EEEE_EEEE),
        ),
    ];
    for (bytes, want) in cases {
        let mut c = Client::new(config());
        c.connected(0);
        c.receive(&greeting(FLAG_FIXED_NEWSTYLE), 0);
        c.receive(&bytes, 0);
        assert_eq!(
            c.next_event(),
            Some(Event::Down {
                reason: DownReason::Protocol(want),
                unanswered: 0
            })
        );
        assert!(c.wants_close());
    }
    let mut old = greeting(0);
    old[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
    for (g, want) in [
        (greeting(0), ProtoError::NotFixedNewstyle),
        (old, ProtoError::OldStyle),
        (vec![0; 18], ProtoError::BadGreeting(0)),
    ] {
        let mut c = Client::new(config());
        c.connected(0);
        c.receive(&g, 0);
        assert_eq!(
            c.next_event(),
            Some(Event::Down {
                reason: DownReason::Protocol(want),
                unanswered: 0
            })
        );
    }
}

#[test]
fn reconnect_resends_unanswered_writes_only() {
    let mut c = ready(RW);
    let a = c.submit(
        Command::Write {
            offset: 0,
            data: vec![1; 512],
            fua: false,
        },
        0,
    );
    let b = c.submit(
        Command::Write {
            offset: 512,
            data: vec![2; 512],
            fua: false,
        },
        0,
    );
    let f = c.submit(Command::Flush, 0);
    take(&mut c);
    c.receive(&reply(0, a, &[]), 0);
    assert_eq!(c.next_completion().unwrap().id, a);
    c.disconnected(10);
    assert_eq!(
        c.next_event(),
        Some(Event::Down {
            reason: DownReason::Transport,
            unanswered: 2
        })
    );
    // Connect refused once: no second event, retried later.
    assert!(c.should_connect(110));
    c.disconnected(110);
    assert!(c.next_event().is_none());
    assert!(!c.should_connect(150));
    connect(&mut c, RW, 210);
    let sent = requests(&take(&mut c));
    assert_eq!(
        sent.iter().map(|r| r.2).collect::<Vec<_>>(),
        vec![b],
        "b again; the flush still waits"
    );
    assert_eq!(sent[0].5, vec![2; 512]);
    c.receive(&reply(0, b, &[]), 210);
    assert_eq!(requests(&take(&mut c))[0].2, f);
}

#[test]
fn size_change_on_reconnect_is_refused() {
    let mut c = ready(RW);
    c.submit(
        Command::Write {
            offset: 0,
            data: vec![1; 512],
            fua: false,
        },
        0,
    );
    c.disconnected(0);
    c.next_event();
    c.connected(100);
    c.receive(&greeting(FLAG_FIXED_NEWSTYLE), 100);
    let mut r = info_export(SIZE * 2, RW);
    r.extend(opt_reply(REP_ACK, &[]));
    c.receive(&r, 100);
    assert!(!c.is_ready());
    assert!(matches!(
        c.next_event(),
        Some(Event::Down {
            reason: DownReason::ExportChanged { .. },
            unanswered: 1
        })
    ));
    assert!(
        requests(&take(&mut c)).is_empty(),
        "nothing written to another disk"
    );
}

#[test]
fn deadline_fails_requests_and_late_replies_are_dropped() {
    let mut c = ready(RW);
    let sent = c.submit(
        Command::Read {
            offset: 0,
            len: 512,
        },
        0,
    );
    take(&mut c);
    c.disconnected(10);
    c.next_event();
    let queued = c.submit(
        Command::Write {
            offset: 0,
            data: vec![9; 512],
            fua: false,
        },
        500,
    );
    c.poll(999);
    assert!(c.next_completion().is_none());
    c.poll(1000);
    assert_eq!(
        c.next_completion().unwrap(),
        Completion {
            id: sent,
            result: Err(Error::TimedOut),
            data: vec![]
        }
    );
    assert_eq!(c.next_event(), Some(Event::TimedOut { requests: 1 }));
    c.poll(1500);
    let q = c.next_completion().unwrap();
    assert_eq!(
        (q.id, q.result, q.data.len()),
        (queued, Err(Error::TimedOut), 512)
    );
    // Reconnected: nothing is re-sent.
    connect(&mut c, RW, 1600);
    assert!(c.transmit().is_empty());

    // On the wire when it expires: its late reply (with data) is consumed.
    let r = c.submit(
        Command::Read {
            offset: 0,
            len: 512,
        },
        2000,
    );
    let x = c.submit(
        Command::Read {
            offset: 512,
            len: 512,
        },
        2500,
    );
    take(&mut c);
    c.poll(3000);
    assert_eq!(c.next_completion().unwrap().id, r);
    let mut both = reply(0, r, &[1; 512]);
    both.extend(reply(0, x, &[2; 512]));
    c.receive(&both, 3001);
    assert!(c.is_ready(), "a late reply is no protocol error");
    assert_eq!(
        c.next_completion().unwrap(),
        Completion {
            id: x,
            result: Ok(()),
            data: vec![2; 512]
        }
    );
    assert!(c.next_completion().is_none());
}

#[test]
fn in_flight_limit() {
    let mut c = ready(RW);
    let ids: Vec<_> = (0..10)
        .map(|i| {
            c.submit(
                Command::Read {
                    offset: i * 512,
                    len: 512,
                },
                0,
            )
        })
        .collect();
    let sent = requests(&take(&mut c));
    assert_eq!(sent.len(), 8);
    c.receive(&reply(0, ids[3], &[0; 512]), 0);
    let more = requests(&take(&mut c));
    assert_eq!(more.iter().map(|r| r.2).collect::<Vec<_>>(), vec![ids[8]]);
}

#[test]
fn eshutdown_disconnects_softly_and_resends() {
    let mut c = ready(RW);
    let w = c.submit(
        Command::Write {
            offset: 0,
            data: vec![5; 512],
            fua: false,
        },
        0,
    );
    take(&mut c);
    c.receive(&reply(ESHUTDOWN, w, &[]), 0);
    assert!(c.wants_close());
    let disc = requests(&take(&mut c));
    assert_eq!(disc[0].1, CMD_DISC);
    assert!(c.next_completion().is_none());
    assert!(matches!(
        c.next_event(),
        Some(Event::Down {
            reason: DownReason::ServerShutdown,
            unanswered: 1
        })
    ));
    connect(&mut c, RW, 100);
    assert_eq!(requests(&take(&mut c))[0].2, w);
}

#[test]
fn shutdown_sends_disc_when_idle() {
    let mut c = ready(RW);
    let r = c.submit(
        Command::Read {
            offset: 0,
            len: 512,
        },
        0,
    );
    take(&mut c);
    c.shutdown();
    assert!(c.transmit().is_empty(), "waits for the read");
    c.submit(Command::Flush, 0);
    assert_eq!(c.next_completion().unwrap().result, Err(Error::ShutDown));
    c.receive(&reply(0, r, &[0; 512]), 0);
    assert_eq!(requests(&take(&mut c))[0].1, CMD_DISC);
    assert!(c.wants_close() && !c.should_connect(10_000));
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random server bytes at every stage.
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let mut c = if round % 2 == 0 {
            ready(RW)
        } else {
            Client::new(config())
        };
        if round % 2 == 1 {
            c.connected(0);
        }
        for i in 0..4 {
            c.submit(
                Command::Read {
                    offset: (next() % 4096) * 512,
                    len: 512,
                },
                0,
            );
            let n = (next() % 64) as usize;
            let mut junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if i == 0 && round % 3 == 0 {
                // A valid magic with a random cookie and error.
                let mut r = reply(next() as u32, next() % 8, &[]);
                r.append(&mut junk);
                junk = r;
            }
            c.receive(&junk, i);
            c.poll(i * 400);
            take(&mut c);
        }
    }
}

#[test]
fn silent_server_is_dropped_after_the_deadline() {
    let mut c = Client::new(config());
    c.connected(0);
    c.receive(&greeting(FLAG_FIXED_NEWSTYLE)[..5], 0);
    c.poll(999);
    assert!(c.next_event().is_none());
    c.poll(1000);
    assert_eq!(
        c.next_event(),
        Some(Event::Down {
            reason: DownReason::NegotiationTimedOut,
            unanswered: 0
        })
    );
    assert!(c.wants_close());
    assert!(c.should_connect(1100));
}

#[test]
fn failed_attempts_back_off_doubling_up_to_the_maximum() {
    let mut c = Client::new(Config {
        retry_ms: 250,
        retry_max_ms: 2000,
        ..config()
    });
    assert!(c.should_connect(0));
    // Connection attempts that fail: waits of 250, 500, 1000, 2000, 2000 ms.
    let mut now = 0;
    for wait in [250, 500, 1000, 2000, 2000] {
        c.disconnected(now);
        assert!(
            !c.should_connect(now + wait - 1),
            "waits {wait} ms after {now}"
        );
        assert!(c.should_connect(now + wait));
        now += wait;
    }
    // A successful negotiation starts the series again.
    connect(&mut c, TF_HAS_FLAGS, now);
    c.disconnected(now);
    assert!(!c.should_connect(now + 249));
    assert!(c.should_connect(now + 250));
}
