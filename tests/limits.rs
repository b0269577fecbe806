//! End-to-end: rate limits, connection caps, slow readers, slow handshakes, graceful drain.

mod common;

use std::io::Write;

use common::*;
use wire::error::ErrorCode;
use wire::frame::{ClientFrame, ConvId, History, PresenceState, ServerFrame};
use wire::Encoding;

#[test]
fn send_rate_limit_answers_rate_limited_and_stores_nothing() {
    let server = Server::start_with(1, "send_rate = 2\nsend_burst = 5");
    let mut a = server.connect("rl-a", "d", Encoding::Json);
    a.send_many((0..10).map(|i| send_to("rl-b", &format!("m{i}"), "x")));
    let (mut acked, mut limited, mut conv) = (Vec::new(), Vec::new(), ConvId(0));
    for _ in 0..10 {
        match a.recv() {
            ServerFrame::Ack(ack) => {
                conv = ack.conv;
                acked.push(ack.client_msg_id)
            }
            ServerFrame::Error(e) if e.code == ErrorCode::RateLimited => {
                assert!(e.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000), "{e:?}");
                limited.push(e.ref_id.unwrap());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(acked.len(), 5, "the burst");
    assert_eq!(limited.len(), 5);
    a.send(&ClientFrame::History(History { req_id: None, conv, before_seq: None, limit: None }));
    match a.recv() {
        ServerFrame::HistoryPage(p) => {
            let ids: Vec<_> = p.messages.into_iter().map(|m| m.client_msg_id).collect();
            assert_eq!(ids, acked, "rate-limited messages were not stored");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn connection_caps_refuse_with_503_and_retry_after() {
    let server = Server::start_with(1, "max_devices_per_user = 2\nmax_connections = 4\nretry_after_secs = 7");
    let _d1 = server.connect("capped", "one", Encoding::Json);
    let mut d2 = server.connect("capped", "two", Encoding::Json);
    let resp = upgrade_response(server.addr, &server.token("capped", Some("three")));
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("Retry-After: 7") && resp.contains("device_limit"), "{resp}");
    // The same device reconnecting replaces its older connection instead.
    let _new = server.connect("capped", "two", Encoding::Json);
    assert_eq!(d2.expect_close(), 4000);
    // Host connection cap: 3 open connections + the one being upgraded passes 4 only
    // at the fifth.
    let _o1 = server.connect("other1", "d", Encoding::Json);
    let _o2 = server.connect("other2", "d", Encoding::Json);
    let resp = upgrade_response(server.addr, &server.token("other3", None));
    assert!(resp.starts_with("HTTP/1.1 503") && resp.contains("connection_limit"), "{resp}");
}

#[test]
fn handshake_rate_limit_refuses_the_excess_with_503() {
    let server = Server::start_with(1, "handshake_rate = 1\nhandshake_burst = 2\nretry_after_secs = 9");
    let token = server.token("hs", None);
    let responses: Vec<String> = (0..4).map(|_| upgrade_response(server.addr, &token)).collect();
    assert_eq!(responses.iter().filter(|s| s.starts_with("HTTP/1.1 101")).count(), 2, "{responses:?}");
    for r in &responses[2..] {
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        // Found by an independent client: this was always 1, whatever the config said.
        assert!(r.contains("Retry-After: 9\r\n") && r.contains("handshake_rate"), "{r}");
    }
}

/// Found by an independent client: `max_connections = 4` on 2 shards admitted 5 to 10,
/// because each shard checked its own count. It is one count for the host.
#[test]
fn max_connections_holds_for_the_whole_host() {
    let server = Server::start_with(2, "max_connections = 4");
    let mut held = Vec::new();
    // Ten users, spread over both shards by the kernel and by their homes.
    for i in 0..10 {
        match upgrade_response_keep(server.addr, &server.token(&format!("host-cap-{i}"), None)) {
            Ok(s) => held.push(s),
            Err(r) => assert!(r.starts_with("HTTP/1.1 503") && r.contains("connection_limit"), "{r}"),
        }
    }
    assert_eq!(held.len(), 4, "exactly max_connections are open at once");
    // Closing one makes room for one (once the server has seen the close).
    drop(held.pop());
    let token = server.token("host-cap-late", None);
    let deadline = std::time::Instant::now() + DEADLINE;
    while upgrade_response_keep(server.addr, &token).is_err() {
        assert!(std::time::Instant::now() < deadline, "the freed place was never given back");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_slow_reader_is_cut_off_and_others_are_unaffected() {
    let server =
        Server::start_with(2, "max_frame = 16384\nmax_body = 8192\nmax_outbound = 65536\npresence_window_ms = 100");
    let mut w = server.connect("sr-watch", "d", Encoding::Json);
    w.send(&ClientFrame::PresenceSub { users: vec!["sr-slow".into()] });
    assert!(matches!(w.recv(), ServerFrame::Presence { .. }));
    // Upgrades, then never reads again (until the end of the test).
    let mut slow = raw_upgrade_small_rcvbuf(server.addr, &server.token("sr-slow", Some("d")));
    // Wait until its watcher sees it online, so the cut-off is a visible change.
    loop {
        if let ServerFrame::Presence { updates } = w.recv() {
            if updates.iter().any(|u| u.user == "sr-slow" && u.state == PresenceState::Online) {
                break;
            }
        }
    }
    let mut fast = server.connect("sr-fast", "d", Encoding::FlatBuffers);
    let mut peer = server.connect("sr-peer", "d", Encoding::Json);
    let body = "y".repeat(8000);
    const N: usize = 1500; // 12 MB: far past the socket buffers and max_outbound
    fast.send_many((0..N).map(|i| send_to("sr-slow", &format!("s{i}"), &body)));
    let mut acked = 0;
    while acked < N {
        match fast.recv() {
            ServerFrame::Ack(a) if a.client_msg_id.starts_with('s') => {
                assert_eq!(a.client_msg_id, format!("s{acked}"));
                acked += 1;
                if acked % 300 == 0 {
                    // Everyone else keeps chatting meanwhile.
                    fast.send(&send_to("sr-peer", &format!("p{acked}"), "still fine"));
                    assert!(matches!(peer.recv(), ServerFrame::Msg(m) if m.client_msg_id == format!("p{acked}")));
                }
            }
            ServerFrame::Ack(_) => {} // a peer message's ack
            other => panic!("{other:?}"),
        }
    }
    // Drain the acks of the peer messages interleaved above, then check the slow
    // reader was disconnected (its watcher sees it go offline).
    let mut seen_offline = false;
    while !seen_offline {
        if let ServerFrame::Presence { updates } = w.recv() {
            seen_offline = updates.iter().any(|u| u.user == "sr-slow" && u.state == PresenceState::Offline);
        }
    }
    // The slow reader, reading at last, finds its connection ended long before the
    // 12 MB sent to it: the server held at most max_outbound beyond the socket buffers.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match std::io::Read::read(&mut slow, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("slow reader's connection still open: {e}"),
        }
    }
    assert!(got.len() < N * 8000 / 2, "received {} bytes", got.len());
    // Walk the frames: whole frames, then a close with 1008 and its reason.
    let mut pos = 0;
    let mut close_code = None;
    while pos + 2 <= got.len() {
        let (op, len7) = (got[pos] & 0x0f, (got[pos + 1] & 0x7f) as usize);
        let (hlen, len) = match len7 {
            126 => (4, u16::from_be_bytes([got[pos + 2], got[pos + 3]]) as usize),
            127 => (10, u64::from_be_bytes(got[pos + 2..pos + 10].try_into().unwrap()) as usize),
            n => (2, n),
        };
        if op == 0x8 {
            close_code = Some(u16::from_be_bytes([got[pos + hlen], got[pos + hlen + 1]]));
        }
        pos += hlen + len;
    }
    assert_eq!(pos, got.len(), "the stream is whole frames");
    assert_eq!(close_code, Some(1008), "a slow reader that reads at last finds a 1008 close");
}

#[test]
fn slow_handshakes_are_closed() {
    let server = Server::start_with(1, "handshake_timeout_secs = 1");
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: slow\r\n").unwrap(); // and never finish
    let t0 = std::time::Instant::now();
    wait_for_eof(&mut s);
    // Never before the configured second; within the sweep's second and a beat after.
    let took = t0.elapsed();
    assert!(took >= std::time::Duration::from_secs(1), "closed early: {took:?}");
    assert!(took <= std::time::Duration::from_secs(4), "closed late: {took:?}");
    let _ok = server.connect("after-slowloris", "d", Encoding::Json);
}

#[test]
fn idle_connections_are_pinged() {
    let server = Server::start_with(1, "ping_interval_secs = 1\nidle_timeout_secs = 5");
    let mut c = server.connect("pinged", "d", Encoding::Json);
    match c.ws.read().expect("a ping within the deadline") {
        tungstenite::Message::Ping(_) => {}
        other => panic!("expected a ping, got {other:?}"),
    }
    // tungstenite answers every ping (on each read): keep reading past idle_timeout, then
    // the connection still works.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(7);
    c.ws.get_mut().set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    while std::time::Instant::now() < until {
        match c.ws.read() {
            Ok(tungstenite::Message::Ping(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("the connection died while answering pings: {e}"),
        }
        let _ = c.ws.flush();
    }
    c.ws.get_mut().set_read_timeout(Some(DEADLINE)).unwrap();
    c.send(&send_to("nobody-home", "alive", "still here"));
    assert!(matches!(c.recv(), ServerFrame::Ack(_)));
}

#[test]
fn sigterm_drains_with_1012_exits_0_and_loses_no_acked_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 2, "drain_secs = 1");
    let mut receiver = server.connect("dr-recv", "d", Encoding::Json);
    let mut senders: Vec<Client> =
        (0..4).map(|i| server.connect(&format!("dr-s{i}"), "d", Encoding::FlatBuffers)).collect();
    // A steady flow: each sender keeps 10 messages in flight and records acks.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(ConvId, String)>::new()));
    let mut threads = Vec::new();
    for (i, mut s) in senders.drain(..).enumerate() {
        let acked = acked.clone();
        threads.push(std::thread::spawn(move || {
            let mut next = 0usize;
            s.send_many((0..10).map(|k| send_to("dr-recv", &format!("s{i}-{k}"), "flow")));
            next += 10;
            loop {
                match s.ws.read() {
                    Ok(tungstenite::Message::Binary(b)) => match wire::fb::decode_server(&b).unwrap() {
                        ServerFrame::Ack(a) => {
                            acked.lock().unwrap().push((a.conv, a.client_msg_id));
                            // The server may already have closed: a failed send is fine,
                            // the close frame is still there to read.
                            let f = wire::fb::encode_client(&send_to("dr-recv", &format!("s{i}-{next}"), "flow"));
                            let _ = s.ws.send(tungstenite::Message::binary(f));
                            next += 1;
                        }
                        other => panic!("{other:?}"),
                    },
                    Ok(tungstenite::Message::Close(c)) => return c.map(|c| u16::from(c.code)),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    for t in threads {
        assert_eq!(t.join().unwrap(), Some(1012), "every sender is closed with 1012");
    }
    loop {
        match receiver.ws.read() {
            Ok(tungstenite::Message::Close(Some(c))) => {
                assert_eq!(u16::from(c.code), 1012);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("receiver got no 1012: {e}"),
        }
    }
    // After a restart every acked message is in history, exactly once (the audit pages
    // as fast as it can: no history limit).
    let server = Server::start_in(&dir, 2, "history_rate = 0");
    let mut r = server.connect("dr-recv", "d", Encoding::Json);
    let acked = acked.lock().unwrap().clone();
    let mut convs: Vec<ConvId> = acked.iter().map(|a| a.0).collect();
    convs.sort();
    convs.dedup();
    let mut stored = std::collections::HashMap::new();
    for conv in convs {
        let mut before = None;
        loop {
            r.send(&ClientFrame::History(History { req_id: None, conv, before_seq: before, limit: Some(100) }));
            let ServerFrame::HistoryPage(p) = r.recv() else { panic!("expected a page") };
            before = p.messages.first().map(|m| m.seq);
            for m in p.messages {
                *stored.entry(m.client_msg_id).or_insert(0) += 1;
            }
            if !p.has_more {
                break;
            }
        }
    }
    for (_, id) in &acked {
        assert_eq!(stored.get(id), Some(&1), "acked {id} stored once");
    }
}

#[test]
fn admin_endpoint_reports_metrics_readiness_and_drains() {
    let mut server = Server::start_with(2, "drain_secs = 1");
    assert_eq!(admin_request(&server, "GET", "/healthz").0, 200);
    assert_eq!(admin_request(&server, "GET", "/readyz").0, 200);
    let mut a = server.connect("adm-a", "d", Encoding::Json);
    let mut b = server.connect("adm-b", "d", Encoding::Json);
    for i in 0..3 {
        a.send(&send_to("adm-b", &format!("m{i}"), "counted"));
        assert!(matches!(a.recv(), ServerFrame::Ack(_)));
        assert!(matches!(b.recv(), ServerFrame::Msg(_)));
    }
    // The conversation-list records of those messages are committed after the acks, so
    // commits go on for a moment: scrape until two scrapes agree on the commit count,
    // then check that one scrape against itself.
    let commits_in = |m: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with("switchboard_commits_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    let scrape = || {
        let (status, metrics) = admin_request(&server, "GET", "/metrics");
        assert_eq!(status, 200, "{metrics}");
        metrics
    };
    let mut metrics = scrape();
    loop {
        let next = scrape();
        let settled = commits_in(&next) == commits_in(&metrics);
        metrics = next;
        if settled {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "commits never settled:\n{metrics}");
    }
    let total = |name: &str| metric_total(&server, name);
    assert_eq!(total("switchboard_messages_stored_total"), 3, "{metrics}");
    assert_eq!(total("switchboard_deliveries_total"), 3, "{metrics}");
    assert!(total("switchboard_accepted_total") >= 2, "{metrics}");
    // Every commit is in the duration histogram; its +Inf bucket is its count.
    let commits = commits_in(&metrics);
    assert!(commits >= 1, "{metrics}");
    let series = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(series("switchboard_commit_duration_seconds_count{") as u64, commits, "{metrics}");
    assert_eq!(
        series("switchboard_commit_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"}")
            + series("switchboard_commit_duration_seconds_bucket{shard=\"1\",le=\"+Inf\"}"),
        commits as f64,
        "{metrics}"
    );
    assert!(series("switchboard_commit_duration_seconds_sum{") > 0.0, "{metrics}");
    // The drain command: not ready any more, clients told 1012, exit 0.
    assert_eq!(admin_request(&server, "POST", "/drain").0, 202);
    assert_eq!(a.expect_close(), 1012);
    assert_eq!(b.expect_close(), 1012);
    let status = server.terminate_wait();
    assert!(status.success(), "{status:?}");
}

/// From the moment a drain is asked for until the process exits, an upgrade gets `503`
/// with `Retry-After`: none is admitted only to be closed with 1012, and the listener does
/// not vanish (a refused TCP connect tells a client nothing).
#[test]
fn upgrades_during_a_drain_get_503_with_retry_after() {
    // 40 idle connections and then a reader: the drain closes 3 a tick (41 over 16 ticks
    // of drain_secs = 4), lowest slots first, so the process is still draining, for
    // seconds, after the first holder is closed and until the reader is.
    let mut server = Server::start_with(1, "drain_secs = 4\nretry_after_secs = 7");
    let mut holders: Vec<_> =
        (0..40).map(|i| raw_upgrade(server.addr, &server.token(&format!("holder{i}"), Some("d")))).collect();
    let mut reader = server.connect("reader", "d", Encoding::Json);
    let token = server.token("late", Some("d"));
    assert_eq!(admin_request(&server, "POST", "/drain").0, 202);
    let refused = |when: &str| {
        let r = upgrade_response(server.addr, &token);
        assert!(r.starts_with("HTTP/1.1 503"), "{when}: {r}");
        assert!(r.contains("Retry-After: 7\r\n"), "{when}: {r}");
    };
    // At once (before the shard's next tick starts the drain), then once it is draining.
    refused("right after POST /drain");
    wait_for_eof(&mut holders[0]);
    for i in 0..5 {
        refused(&format!("while draining, attempt {i}"));
    }
    assert_eq!(reader.expect_close(), 1012);
    let status = server.terminate_wait();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_reconnect_storm_is_absorbed_while_connected_users_keep_chatting() {
    let server = Server::start_with(2, "handshake_rate = 200\nhandshake_burst = 50\nretry_after_secs = 1");
    let mut a = server.connect("storm-a", "d", Encoding::FlatBuffers);
    let mut b = server.connect("storm-b", "d", Encoding::Json);
    let secret = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let addr = server.addr;
    let storm: Vec<_> = (0..8)
        .map(|t| {
            let secret = secret.clone();
            std::thread::spawn(move || {
                let (mut ok, mut busy) = (0, 0);
                let mut held = Vec::new();
                for i in 0..100 {
                    let claims = serde_json::json!({"sub": format!("storm-{t}-{i}"), "exp": now + 600});
                    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &secret).unwrap();
                    let resp = upgrade_response(addr, &token);
                    if resp.starts_with("HTTP/1.1 101") {
                        ok += 1;
                        held.push(resp);
                    } else if resp.starts_with("HTTP/1.1 503") && resp.contains("Retry-After: 1") {
                        busy += 1;
                    } else {
                        panic!("unexpected answer in the storm: {resp}");
                    }
                }
                (ok, busy)
            })
        })
        .collect();
    // Meanwhile, the connected pair keeps exchanging messages.
    for i in 0..100 {
        a.send(&send_to("storm-b", &format!("m{i}"), "during the storm"));
        assert!(matches!(a.recv(), ServerFrame::Ack(_)));
        assert!(matches!(b.recv(), ServerFrame::Msg(m) if m.client_msg_id == format!("m{i}")));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in storm {
        let (o, b) = t.join().unwrap();
        ok += o;
        busy += b;
    }
    assert_eq!(ok + busy, 800);
    assert!(ok >= 100, "the rate still admits upgrades: {ok}");
    assert!(busy >= 100, "the excess is refused with 503: {busy}");
}
