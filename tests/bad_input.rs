//! End-to-end: bad input gets its documented error or close code; the connection (for
//! request errors) and the server (always) keep serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use tungstenite::Message as WsMessage;
use wire::error::ErrorCode;
use wire::frame::{ClientFrame, ConvId, History, MsgKind, Send, ServerFrame, Target};
use wire::Encoding;

fn expect_error(c: &mut Client, code: ErrorCode) -> wire::frame::ErrorFrame {
    match c.recv() {
        ServerFrame::Error(e) if e.code == code => {
            assert!(!e.message.is_empty());
            e
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// A healthy pair keeps chatting: proves the server (and other connections) are fine.
fn still_serving(server: &Server, tag: &str) {
    let mut a = server.connect(&format!("ok-a-{tag}"), "d", Encoding::Json);
    let mut b = server.connect(&format!("ok-b-{tag}"), "d", Encoding::FlatBuffers);
    a.send(&send_to(&b.user.clone(), "ping", "still here"));
    assert!(matches!(a.recv(), ServerFrame::Ack(_)));
    assert!(matches!(b.recv(), ServerFrame::Msg(_)));
}

#[test]
fn request_errors_keep_the_connection_open() {
    let server = Server::start(2);
    let mut c = server.connect("pat", "d", Encoding::Json);
    let cases: &[(&str, ErrorCode)] = &[
        ("{this is not json", ErrorCode::BadFrame),
        ("[1,2,3]", ErrorCode::BadFrame),
        (r#"{"op":"teleport"}"#, ErrorCode::UnknownOp),
        (r#"{"op":"send","to":"quinn","body":"no id"}"#, ErrorCode::MissingField),
        (r#"{"op":"send","client_msg_id":"c1","body":"nowhere"}"#, ErrorCode::MissingField),
        (r#"{"op":"send","client_msg_id":"c1","conv":"zz","body":"x"}"#, ErrorCode::BadValue),
        (r#"{"op":"history"}"#, ErrorCode::MissingField),
    ];
    for (text, code) in cases {
        c.ws.send(WsMessage::text(*text)).unwrap();
        expect_error(&mut c, *code);
    }
    // Not a member: a conversation that does not exist, and someone else's DM.
    c.send(&ClientFrame::Send(Send {
        reply_to: None,
        target_seq: None,
        forward: None,
        client_msg_id: "c2".into(),
        target: Target::Conv(ConvId(42)),
        body: b"x".to_vec(),
        kind: MsgKind::Text,
    }));
    assert_eq!(expect_error(&mut c, ErrorCode::NotMember).ref_id.as_deref(), Some("c2"));
    let mut r = server.connect("rita", "d", Encoding::Json);
    r.send(&send_to("sam", "r1", "private"));
    let dm = match r.recv() {
        ServerFrame::Ack(a) => a.conv,
        other => panic!("{other:?}"),
    };
    c.send(&ClientFrame::Send(Send {
        reply_to: None,
        target_seq: None,
        forward: None,
        client_msg_id: "c3".into(),
        target: Target::Conv(dm),
        body: b"x".to_vec(),
        kind: MsgKind::Text,
    }));
    expect_error(&mut c, ErrorCode::NotMember);
    c.send(&ClientFrame::History(History { req_id: None, conv: dm, before_seq: None, limit: None }));
    expect_error(&mut c, ErrorCode::NotMember);
    // Body over max_body (default 48 KiB) but frame under max_frame (64 KiB).
    c.send(&send_to("quinn", "big", &"x".repeat(50_000)));
    assert_eq!(expect_error(&mut c, ErrorCode::BodyTooLarge).ref_id.as_deref(), Some("big"));
    // After all that, the same connection still sends.
    c.send(&send_to("quinn", "fine", "after errors"));
    assert!(matches!(c.recv(), ServerFrame::Ack(a) if a.client_msg_id == "fine"));

    let mut f = server.connect("tom", "d", Encoding::FlatBuffers);
    f.ws.send(WsMessage::binary(vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5])).unwrap();
    expect_error(&mut f, ErrorCode::BadFrame);
    let mut server_frame = Vec::new();
    wire::fb::encode_server(&ServerFrame::Synced { convs: 1 }, &mut server_frame);
    f.ws.send(WsMessage::binary(server_frame)).unwrap();
    expect_error(&mut f, ErrorCode::UnknownOp);
    f.send(&send_to("quinn", "f1", "fb fine"));
    assert!(matches!(f.recv(), ServerFrame::Ack(_)));
    still_serving(&server, "requests");
}

#[test]
fn protocol_violations_close_with_the_right_code() {
    let server = Server::start(2);
    // Oversized frame (default max_frame 64 KiB) -> 1009.
    let mut c = server.connect("u1", "d", Encoding::Json);
    c.ws.send(WsMessage::text("x".repeat(70_000))).unwrap();
    assert_eq!(c.expect_close(), 1009);
    // Non-UTF-8 text -> 1007. tungstenite refuses to build such a frame, so write it raw.
    let mut c = server.connect("u2", "d", Encoding::Json);
    let stream = c.ws.get_mut();
    stream.write_all(&masked_frame(0x81, &[0xff, 0xfe, 0xfd])).unwrap();
    assert_eq!(c.expect_close(), 1007);
    // Binary on a JSON connection, text on a FlatBuffers one -> 1003.
    let mut c = server.connect("u3", "d", Encoding::Json);
    c.ws.send(WsMessage::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(c.expect_close(), 1003);
    let mut c = server.connect("u4", "d", Encoding::FlatBuffers);
    c.ws.send(WsMessage::text("{}")).unwrap();
    assert_eq!(c.expect_close(), 1003);
    // Unmasked client frame -> 1002.
    let mut c = server.connect("u5", "d", Encoding::Json);
    c.ws.get_mut().write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(c.expect_close(), 1002);
    // Continuation without a start -> 1002.
    let mut c = server.connect("u6", "d", Encoding::Json);
    c.ws.get_mut().write_all(&masked_frame(0x80, b"orphan")).unwrap();
    assert_eq!(c.expect_close(), 1002);
    still_serving(&server, "violations");
}

#[test]
fn fragmented_messages_are_reassembled() {
    let server = Server::start(1);
    let mut c = server.connect("vic", "d", Encoding::Json);
    let text = String::from_utf8(wire::json::encode_client(&send_to("wes", "frag", "in three parts"))).unwrap();
    let (a, rest) = text.split_at(10);
    let (b, z) = rest.split_at(10);
    let mut bytes = masked_frame(0x1, a.as_bytes());
    bytes.extend(masked_frame(0x89, b"ping")); // control frames may interleave
    bytes.extend(masked_frame(0x0, b.as_bytes()));
    bytes.extend(masked_frame(0x80, z.as_bytes()));
    // Send byte by byte: frames split across reads are reassembled too.
    for byte in bytes {
        c.ws.get_mut().write_all(&[byte]).unwrap();
    }
    assert!(matches!(c.recv(), ServerFrame::Ack(a) if a.client_msg_id == "frag"));
}

#[test]
fn garbage_instead_of_an_upgrade_gets_an_http_error() {
    let server = Server::start(1);
    for (request, status) in [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "426"),
        ("\x16\x03\x01\x02\x00garbage\r\n\r\n", "400"),
        ("POST /ws HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405"),
    ] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        assert!(resp.contains("\"code\""), "error body carries a code: {resp}");
    }
    // Oversized headers: 431.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = s.write_all(format!("GET /ws HTTP/1.1\r\nX-Pad: {}\r\n", "p".repeat(10_000)).as_bytes());
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    still_serving(&server, "http");
}

#[test]
fn per_connection_limits_close_with_1008_and_long_urls_get_414() {
    let server = Server::start_with(1, "max_frames_per_sec = 50\nmax_fragments = 4\nmax_sync_convs = 3\nmax_url = 256");
    // A frame flood: 200 pings in one write, far over 50 per second.
    let mut c = server.connect("flood", "d", Encoding::Json);
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.extend(masked_frame(0x89, b""));
    }
    c.ws.get_mut().write_all(&flood).unwrap();
    assert_eq!(c.expect_close(), 1008);
    // A message in 10 fragments, over 4.
    let mut c = server.connect("frags", "d", Encoding::Json);
    let mut bytes = masked_frame(0x1, b"{");
    for _ in 0..9 {
        bytes.extend(masked_frame(0x0, b" "));
    }
    c.ws.get_mut().write_all(&bytes).unwrap();
    assert_eq!(c.expect_close(), 1008);
    // Too many conversations in one hello: a request error, the connection stays.
    let mut c = server.connect("syncer", "d", Encoding::Json);
    let sync = (0..4).map(|i| wire::frame::SyncPoint { conv: ConvId(i), seq: 0 }).collect();
    c.send(&ClientFrame::Hello { sync, list_since: None });
    expect_error(&mut c, ErrorCode::BadValue);
    c.send(&ClientFrame::Hello { sync: vec![], list_since: None });
    assert!(matches!(c.recv(), ServerFrame::Synced { .. }));
    // An over-long request target: 414 before anything else.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("GET /ws?token={} HTTP/1.1\r\nHost: x\r\n\r\n", "t".repeat(400)).as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 414"), "{resp}");
    still_serving(&server, "limits");
}

/// Found by an independent client: errors for frames refused by validation carry the
/// frame's `client_msg_id` or `req_id`, so a client with requests in flight can match them.
#[test]
fn validation_errors_carry_the_requests_id() {
    let server = Server::start(1);
    let mut c = server.connect("vic", "d", Encoding::Json);
    let cases: &[(&str, ErrorCode, Option<&str>)] = &[
        (
            r#"{"op":"send","client_msg_id":"both","to":"x","conv":"0000000000000000000000000000002a","body":"b"}"#,
            ErrorCode::BadValue,
            Some("both"),
        ),
        (r#"{"op":"send","client_msg_id":"badconv","conv":"zz","body":"b"}"#, ErrorCode::BadValue, Some("badconv")),
        (
            r#"{"op":"send","client_msg_id":"badkind","to":"x","body":"b","kind":"video"}"#,
            ErrorCode::BadValue,
            Some("badkind"),
        ),
        (
            r#"{"op":"send","client_msg_id":"b64","to":"x","body":"***","kind":"data"}"#,
            ErrorCode::BadValue,
            Some("b64"),
        ),
        (r#"{"op":"group","req_id":"g1","action":"add","members":["x"]}"#, ErrorCode::MissingField, Some("g1")),
        (
            r#"{"op":"group","req_id":"g2","action":"add","conv":"8000000000000000000000000000002a","members":[]}"#,
            ErrorCode::MissingField,
            Some("g2"),
        ),
        (r#"{"op":"group","req_id":"g4","action":"create","name":"\u0001"}"#, ErrorCode::BadValue, Some("g4")),
        (r#"{"op":"group","req_id":"g3","action":"dance"}"#, ErrorCode::BadValue, Some("g3")),
        (r#"{"op":"history","req_id":"h1","conv":"nope"}"#, ErrorCode::BadValue, Some("h1")),
        // No usable id: none is invented.
        (r#"{"op":"teleport","req_id":"t1"}"#, ErrorCode::UnknownOp, Some("t1")),
        (r#"{"op":"send","client_msg_id":7,"to":"x","body":"b"}"#, ErrorCode::BadFrame, None),
    ];
    for (text, code, ref_id) in cases {
        c.ws.send(WsMessage::text(*text)).unwrap();
        let e = expect_error(&mut c, *code);
        assert_eq!(e.ref_id.as_deref(), *ref_id, "{text}");
    }
}
