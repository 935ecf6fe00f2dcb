use super::*;
use proptest::prelude::*;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::Resp2Frame;

fn cfg() -> L2Config {
    L2Config {
        prefix: b"rt:".to_vec(),
        password: None,
        db: 0,
        ttl_s: 300,
        timeout: Duration::from_millis(5),
        connect_timeout: Duration::from_millis(100),
    }
}

fn reply(frame: &OwnedFrame) -> Vec<u8> {
    let mut buf = vec![0; frame.encode_len(false)];
    let n = encode(&mut buf, frame, false).unwrap();
    buf.truncate(n);
    buf
}

/// Decodes what the client sent into commands.
fn commands(mut bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (frame, n) = decode(bytes).unwrap().unwrap();
        bytes = &bytes[n..];
        let OwnedFrame::Array(parts) = frame else {
            panic!("not an array")
        };
        out.push(
            parts
                .into_iter()
                .map(|p| match p {
                    OwnedFrame::BulkString(b) => b,
                    other => panic!("{other:?}"),
                })
                .collect(),
        );
    }
    out
}

/// A client connected at `t0`, its Recv submitted.
fn up(cfg: L2Config, t0: Instant) -> Client {
    let mut c = Client::new(cfg, t0);
    assert_eq!(c.poll_op(t0), Some(L2Op::Connect));
    assert_eq!(c.poll_op(t0), None);
    c.handle_connect(Ok(()), t0);
    assert_eq!(c.poll_event(), Some(Event::Up));
    assert_eq!(c.poll_op(t0), Some(L2Op::Recv));
    c
}

/// Everything the client wants written, marked written.
fn flush(c: &mut Client, now: Instant) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(op) = c.poll_op(now) {
        match op {
            L2Op::Send(buf) => {
                all.extend_from_slice(&buf);
                let n = buf.len();
                c.handle_send(Ok(n), buf);
            }
            L2Op::Recv => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    all
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn puts_are_dropped_while_down_and_pipelined_when_up() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    c.put(b"\x01\x02", b"v", t0);
    assert_eq!(c.stats().dropped_puts, 1);
    assert!(!c.lookup(1, b"k", false, t0), "no waiting while down");
    let mut c = up(cfg(), t0);
    c.put(b"\x01\xab", b"value", t0);
    c.put(b"\x02", b"other", t0);
    let sent = flush(&mut c, t0);
    assert_eq!(
        commands(&sent),
        vec![
            vec![
                b"SET".to_vec(),
                b"rt:01ab".to_vec(),
                b"value".to_vec(),
                b"EX".to_vec(),
                b"300".to_vec()
            ],
            vec![
                b"SET".to_vec(),
                b"rt:02".to_vec(),
                b"other".to_vec(),
                b"EX".to_vec(),
                b"300".to_vec()
            ],
        ]
    );
    let mut r = reply(&OwnedFrame::SimpleString(b"OK".to_vec()));
    r.extend(reply(&OwnedFrame::SimpleString(b"OK".to_vec())));
    c.handle_recv(Ok(&r), t0);
    assert!(c.is_up());
    assert_eq!(c.stats().errors, 0);
    assert_eq!(c.stats().puts, 2);
}

#[test]
fn lookups_get_their_own_reply_in_order_and_late_replies_are_dropped() {
    let t0 = Instant::now();
    let mut c = up(cfg(), t0);
    assert!(c.lookup(7, b"\xaa", false, t0));
    assert!(c.lookup(8, b"\xbb", true, t0));
    let sent = flush(&mut c, t0);
    let cmds = commands(&sent);
    assert_eq!(cmds[0], vec![b"GET".to_vec(), b"rt:aa".to_vec()]);
    assert_eq!(cmds[1], vec![b"GETDEL".to_vec(), b"rt:bb".to_vec()]);
    // Lookup 7 times out; 8 is answered after it.
    let t1 = t0 + Duration::from_millis(6);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(5)));
    c.handle_timeout(t1);
    assert_eq!(
        events(&mut c),
        vec![
            Event::Answer {
                token: 7,
                value: None,
                how: Answered::Timeout
            },
            Event::Answer {
                token: 8,
                value: None,
                how: Answered::Timeout
            }
        ]
    );
    assert!(c.lookup(9, b"\xcc", false, t1));
    flush(&mut c, t1);
    let mut r = reply(&OwnedFrame::BulkString(b"late".to_vec()));
    r.extend(reply(&OwnedFrame::Null));
    r.extend(reply(&OwnedFrame::BulkString(b"sess".to_vec())));
    // Split anywhere: answers are the same.
    c.handle_recv(Ok(&r[..3]), t1);
    c.handle_recv(Ok(&r[3..]), t1);
    assert_eq!(
        events(&mut c),
        vec![Event::Answer {
            token: 9,
            value: Some(b"sess".to_vec()),
            how: Answered::Hit
        }]
    );
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.timeouts, s.errors), (1, 0, 2, 0));
}

#[test]
fn garbage_fails_the_connection_once_and_it_comes_back_with_backoff() {
    let t0 = Instant::now();
    let mut c = up(cfg(), t0);
    assert!(c.lookup(1, b"\x01", false, t0));
    flush(&mut c, t0);
    c.handle_recv(Ok(b"\x00\x01garbage\r\n"), t0);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        ev[0],
        Event::Answer {
            token: 1,
            value: None,
            how: Answered::Error
        }
    );
    assert!(
        matches!(&ev[1], Event::Down(r) if r.contains("not RESP")),
        "{ev:?}"
    );
    assert!(c.stats().errors >= 1);
    // The read was answered; nothing in flight: close, then reconnect later.
    assert_eq!(c.poll_op(t0), Some(L2Op::Close));
    assert!(!c.lookup(2, b"\x02", false, t0));
    assert_eq!(c.poll_op(t0), None);
    let retry = c.poll_timeout().unwrap();
    assert_eq!(retry, t0 + BACKOFF_MIN);
    assert_eq!(c.poll_op(retry), Some(L2Op::Connect));
    c.handle_connect(Err("refused".into()), retry);
    assert_eq!(events(&mut c), vec![], "one warning per change");
    assert_eq!(c.poll_op(retry), Some(L2Op::Close));
    assert_eq!(c.poll_timeout(), Some(retry + BACKOFF_MIN * 2));
    let t2 = retry + BACKOFF_MIN * 2;
    assert_eq!(c.poll_op(t2), Some(L2Op::Connect));
    c.handle_connect(Ok(()), t2);
    assert_eq!(events(&mut c), vec![Event::Up]);
}

#[test]
fn auth_and_select_go_first_and_a_refused_auth_takes_the_store_down() {
    let t0 = Instant::now();
    let auth = L2Config {
        password: Some(b"secret".to_vec()),
        db: 3,
        ..cfg()
    };
    let mut c = Client::new(auth.clone(), t0);
    assert_eq!(c.poll_op(t0), Some(L2Op::Connect));
    c.handle_connect(Ok(()), t0);
    assert_eq!(c.poll_event(), None, "not up before AUTH is accepted");
    assert!(!c.lookup(1, b"k", false, t0));
    let cmds = commands(&flush(&mut c, t0));
    assert_eq!(cmds[0], vec![b"AUTH".to_vec(), b"secret".to_vec()]);
    assert_eq!(cmds[1], vec![b"SELECT".to_vec(), b"3".to_vec()]);
    let mut ok = reply(&OwnedFrame::SimpleString(b"OK".to_vec()));
    ok.extend(reply(&OwnedFrame::SimpleString(b"OK".to_vec())));
    c.handle_recv(Ok(&ok), t0);
    assert_eq!(c.poll_event(), Some(Event::Up));
    c.put(b"k", b"v", t0);
    let cmds = commands(&flush(&mut c, t0));
    assert_eq!(cmds[0][0], b"SET".to_vec());

    // A refused password: down, never up, and the backoff grows.
    let mut c = Client::new(auth, t0);
    assert_eq!(c.poll_op(t0), Some(L2Op::Connect));
    c.handle_connect(Ok(()), t0);
    flush(&mut c, t0);
    c.handle_recv(
        Ok(&reply(&OwnedFrame::Error("WRONGPASS invalid".into()))),
        t0,
    );
    assert!(!c.is_up());
    assert!(matches!(&events(&mut c)[..], [Event::Down(r)] if r.contains("WRONGPASS")));
    assert_eq!(c.poll_op(t0), Some(L2Op::Close));
    let t1 = t0 + BACKOFF_MIN;
    assert_eq!(c.poll_op(t1), Some(L2Op::Connect));
    c.handle_connect(Ok(()), t1);
    flush(&mut c, t1);
    c.handle_recv(Ok(&reply(&OwnedFrame::Error("WRONGPASS".into()))), t1);
    assert_eq!(events(&mut c), vec![], "one warning per change");
    assert_eq!(c.poll_op(t1), Some(L2Op::Close));
    assert_eq!(c.poll_timeout(), Some(t1 + BACKOFF_MIN * 2));
}

#[test]
fn error_and_unexpected_replies_are_counted_and_answer_nothing() {
    let t0 = Instant::now();
    let mut c = up(cfg(), t0);
    c.lookup(1, b"a", false, t0);
    c.lookup(2, b"b", true, t0);
    c.put(b"c", b"v", t0);
    flush(&mut c, t0);
    let mut r = reply(&OwnedFrame::Error("ERR unknown command".into()));
    r.extend(reply(&OwnedFrame::Integer(5)));
    r.extend(reply(&OwnedFrame::Error("OOM".into())));
    c.handle_recv(Ok(&r), t0);
    assert!(c.is_up(), "error replies keep the connection");
    let ev = events(&mut c);
    assert!(ev.iter().all(|e| matches!(
        e,
        Event::Answer {
            value: None,
            how: Answered::Error,
            ..
        }
    )));
    assert_eq!(ev.len(), 2);
    assert_eq!(c.stats().errors, 3);
}

#[test]
fn a_short_write_sends_the_rest_first() {
    let t0 = Instant::now();
    let mut c = up(cfg(), t0);
    c.put(b"a", b"1", t0);
    let Some(L2Op::Send(buf)) = c.poll_op(t0) else {
        panic!()
    };
    let whole = buf.clone();
    c.put(b"b", b"2", t0);
    c.handle_send(Ok(4), buf);
    let rest = flush(&mut c, t0);
    let mut all = whole[..4].to_vec();
    all.extend_from_slice(&rest);
    assert_eq!(commands(&all).len(), 2);
}

#[test]
fn a_connect_that_hangs_times_out_and_a_stalled_store_is_left() {
    let t0 = Instant::now();
    let mut c = Client::new(cfg(), t0);
    assert_eq!(c.poll_op(t0), Some(L2Op::Connect));
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(c.poll_timeout(), Some(t1));
    c.handle_timeout(t1);
    assert_eq!(c.poll_op(t1), Some(L2Op::Abort));
    assert_eq!(c.poll_op(t1), None, "the connect is still in flight");
    c.handle_connect(Err("cancelled".into()), t1);
    assert_eq!(c.poll_op(t1), Some(L2Op::Close));
    assert!(matches!(&events(&mut c)[..], [Event::Down(_)]));

    let mut c = up(cfg(), t0);
    c.put(b"a", b"1", t0);
    flush(&mut c, t0);
    c.handle_timeout(t0 + STALL);
    assert!(!c.is_up());
    assert_eq!(c.poll_op(t0 + STALL), Some(L2Op::Abort));
    c.handle_recv(Err("cancelled".into()), t0 + STALL);
    assert_eq!(c.poll_op(t0 + STALL), Some(L2Op::Close));
}

#[test]
fn which_hellos_are_looked_up() {
    let tls13 = HelloFacts {
        session_id: vec![1; 32],
        psk_identities: vec![vec![9; 32]],
        offers_tls13: true,
        ..HelloFacts::default()
    };
    assert_eq!(
        lookup_for(&tls13, false, true),
        Some((&[9u8; 32][..], true))
    );
    assert_eq!(lookup_for(&tls13, true, true), None, "stateless tickets");
    let fresh13 = HelloFacts {
        psk_identities: vec![],
        ..tls13.clone()
    };
    assert_eq!(
        lookup_for(&fresh13, false, true),
        None,
        "a random legacy ID"
    );
    assert_eq!(
        lookup_for(&fresh13, false, false),
        Some((&[1u8; 32][..], false)),
        "a TLS 1.2-only server resumes by ID"
    );
    let tls12 = HelloFacts {
        session_id: vec![2; 32],
        ticket_len: Some(0),
        ..HelloFacts::default()
    };
    assert_eq!(
        lookup_for(&tls12, false, true),
        Some((&[2u8; 32][..], false))
    );
    assert_eq!(
        lookup_for(&tls12, true, true),
        Some((&[2u8; 32][..], false))
    );
    let ticket12 = HelloFacts {
        ticket_len: Some(100),
        ..tls12.clone()
    };
    assert_eq!(lookup_for(&ticket12, true, true), None);
    assert_eq!(lookup_for(&HelloFacts::default(), false, true), None);
}

#[derive(Debug, Clone)]
enum Step {
    Lookup {
        key: u8,
        take: bool,
    },
    Put {
        key: u8,
        val: u8,
    },
    /// The server answers what it has, in chunks of this size.
    Serve(usize),
    Advance(u64),
    Garbage(Vec<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, any::<bool>()).prop_map(|(key, take)| Step::Lookup { key, take }),
        3 => (0u8..6, any::<u8>()).prop_map(|(key, val)| Step::Put { key, val }),
        4 => (1usize..40).prop_map(Step::Serve),
        2 => (0u64..8).prop_map(Step::Advance),
        1 => proptest::collection::vec(any::<u8>(), 1..12).prop_map(Step::Garbage),
    ]
}

proptest! {
    /// Against a model store, with replies split anywhere, timeouts and
    /// garbage interleaved: every lookup is answered exactly once; an
    /// answer with a value is the value the store held for that key;
    /// nothing panics, and the client reconnects after garbage.
    #[test]
    fn every_lookup_is_answered_once_and_right(steps in proptest::collection::vec(step(), 1..60)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut c = up(cfg(), t0);
        let mut store: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        // Bytes the server will send back, and what each lookup asked.
        let mut to_client: Vec<u8> = Vec::new();
        let mut asked: HashMap<u64, (Vec<u8>, Option<Vec<u8>>)> = HashMap::new();
        let mut answered: HashMap<u64, usize> = HashMap::new();
        let mut token = 0u64;
        let mut recv_in_flight = true;
        for s in steps {
            match s {
                Step::Lookup { key, take } => {
                    token += 1;
                    if c.lookup(token, &[key], take, now) {
                        asked.insert(token, (store_key(b"rt:", &[key]), None));
                    }
                }
                Step::Put { key, val } => c.put(&[key], &[val], now),
                Step::Serve(chunk) => {
                    // The server executes what was written, in order.
                    while let Some(op) = c.poll_op(now) {
                        match op {
                            L2Op::Send(buf) => {
                                for cmd in commands(&buf) {
                                    let r = match cmd[0].as_slice() {
                                        b"SET" => {
                                            store.insert(cmd[1].clone(), cmd[2].clone());
                                            OwnedFrame::SimpleString(b"OK".to_vec())
                                        }
                                        b"GET" => store.get(&cmd[1]).cloned().map_or(OwnedFrame::Null, OwnedFrame::BulkString),
                                        b"GETDEL" => store.remove(&cmd[1]).map_or(OwnedFrame::Null, OwnedFrame::BulkString),
                                        other => panic!("{other:?}"),
                                    };
                                    if let OwnedFrame::BulkString(v) = &r {
                                        // Remember what a lookup of this key may see.
                                        for (k, seen) in asked.values_mut() {
                                            if *k == cmd[1] && seen.is_none() && cmd[0] != b"SET" {
                                                *seen = Some(v.clone());
                                            }
                                        }
                                    }
                                    to_client.extend(reply(&r));
                                }
                                let n = buf.len();
                                c.handle_send(Ok(n), buf);
                            }
                            L2Op::Recv => recv_in_flight = true,
                            L2Op::Abort => {
                                if recv_in_flight {
                                    recv_in_flight = false;
                                    c.handle_recv(Err("cancelled".into()), now);
                                }
                            }
                            L2Op::Close => {
                                to_client.clear();
                            }
                            L2Op::Connect => c.handle_connect(Ok(()), now),
                        }
                    }
                    if recv_in_flight && !to_client.is_empty() {
                        let n = chunk.min(to_client.len());
                        let part: Vec<u8> = to_client.drain(..n).collect();
                        recv_in_flight = false;
                        c.handle_recv(Ok(&part), now);
                    }
                }
                Step::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    c.handle_timeout(now);
                }
                Step::Garbage(g) => {
                    if recv_in_flight {
                        recv_in_flight = false;
                        let mut g = g;
                        g.insert(0, b'!');
                        c.handle_recv(Ok(&g), now);
                        to_client.clear();
                    }
                }
            }
            while let Some(e) = c.poll_event() {
                if let Event::Answer { token, value, how } = e {
                    *answered.entry(token).or_default() += 1;
                    let (_, seen) = &asked[&token];
                    if let Some(v) = value {
                        prop_assert_eq!(how, Answered::Hit);
                        prop_assert!(seen.is_some());
                        prop_assert_eq!(v.len(), 1);
                    }
                }
            }
        }
        // Time passes: every lookup is answered.
        c.handle_timeout(now + Duration::from_secs(60));
        while let Some(e) = c.poll_event() {
            if let Event::Answer { token, .. } = e {
                *answered.entry(token).or_default() += 1;
            }
        }
        for t in asked.keys() {
            prop_assert_eq!(answered.get(t), Some(&1), "token {}", t);
        }
        prop_assert_eq!(c.lookups_waiting(), 0);
    }
}
