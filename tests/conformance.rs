//! End-to-end: RFC 6455 and RFC 7692 rules that the Autobahn suite checks, tested here
//! too against the ordinary (non-echo) binary over raw sockets: close-frame validation,
//! fail-fast UTF-8, the upgrade's refusals, and permessage-deflate.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// Reads one server frame: (first byte, payload).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("a frame header");
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0], p)
}

/// Reads frames until a close; returns its code (1005 for none).
fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (b0, p) = read_frame(s);
        if b0 & 0x0f == 0x8 {
            return if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
        }
    }
}

/// An upgraded raw connection past its `ready` frame.
fn open(server: &Server, user: &str) -> TcpStream {
    let mut s = raw_upgrade(server.addr, &server.token(user, Some("d")));
    let (b0, ready) = read_frame(&mut s);
    assert_eq!(b0, 0x81, "ready comes as one text frame");
    assert!(ready.starts_with(br#"{"op":"ready""#), "{}", String::from_utf8_lossy(&ready));
    s
}

#[test]
fn close_frames_are_validated() {
    let server = Server::start(1);
    let close = |code: u16, reason: &[u8]| masked_frame(0x88, &[&code.to_be_bytes()[..], reason].concat());
    // Codes a peer may not send: a protocol error, never echoed (1005 and 1006 must
    // not appear on the wire at all).
    for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let mut s = open(&server, "closer");
        s.write_all(&close(bad, b"")).unwrap();
        assert_eq!(close_code(&mut s), 1002, "close code {bad}");
        wait_for_eof(&mut s);
    }
    // A reason that is not UTF-8: invalid payload.
    let mut s = open(&server, "closer");
    s.write_all(&close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"))
        .unwrap();
    assert_eq!(close_code(&mut s), 1007);
    // Valid codes are answered with the same code; an empty close with 1000.
    for ok in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        let mut s = open(&server, "closer");
        s.write_all(&close(ok, "fine, κόσμε".as_bytes())).unwrap();
        assert_eq!(close_code(&mut s), ok);
        wait_for_eof(&mut s);
    }
    let mut s = open(&server, "closer");
    s.write_all(&masked_frame(0x88, b"")).unwrap();
    assert_eq!(close_code(&mut s), 1000);
}

#[test]
fn invalid_utf8_fails_before_the_message_is_complete() {
    let server = Server::start(1);
    let bad = [0xf4, 0x90, 0x80, 0x80]; // U+110000: past the last code point
                                        // Fragment 1 valid, fragment 2 invalid, and no final fragment: fails at fragment 2.
    let mut s = open(&server, "writer");
    s.write_all(&masked_frame(0x01, "κόσμε".as_bytes())).unwrap();
    s.write_all(&masked_frame(0x00, &bad)).unwrap();
    assert_eq!(close_code(&mut s), 1007);
    // A character split across fragments is fine, one broken across them is not.
    let mut s = open(&server, "writer");
    let e = "é".as_bytes();
    s.write_all(&masked_frame(0x01, &e[..1])).unwrap();
    s.write_all(&masked_frame(0x00, &[e[1], b'{'])).unwrap();
    s.write_all(&masked_frame(0x00, &[0xce])).unwrap();
    s.write_all(&masked_frame(0x00, b"x")).unwrap();
    assert_eq!(close_code(&mut s), 1007);
    // Within one frame that has not fully arrived: the header promises 2,000 bytes;
    // the first 30 hold the bad sequence. The close comes without the other 1,970.
    let mut s = open(&server, "writer");
    let mut payload = b"valid text first, then ".to_vec();
    payload.extend_from_slice(&bad);
    payload.resize(2000, b'x');
    let whole = masked_frame(0x81, &payload);
    s.write_all(&whole[..8 + 30]).unwrap();
    assert_eq!(close_code(&mut s), 1007);
    // The same split arriving across several reads, with a valid text: no close; the
    // message completes and is answered (it is not a valid protocol frame: bad_frame).
    let mut s = open(&server, "writer");
    let text = format!("{{\"op\":\"x\",\"pad\":\"{}\"}}", "é".repeat(600));
    let whole = masked_frame(0x81, text.as_bytes());
    for piece in whole.chunks(97) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
    }
    let (b0, reply) = read_frame(&mut s);
    assert_eq!(b0, 0x81);
    assert!(String::from_utf8_lossy(&reply).contains("\"op\":\"error\""), "{}", String::from_utf8_lossy(&reply));
}

/// The raw response to a hand-written upgrade request.
fn respond(server: &Server, request: &str) -> String {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_upgrade_follows_rfc_6455_section_4() {
    let server = Server::start(1);
    let token = server.token("hs", Some("d"));
    let req = |first: &str, extra: &str| {
        format!(
            "{first}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n{extra}\r\n"
        )
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let host = "Host: t\r\n";
    let r = respond(&server, &req("GET /ws HTTP/1.1", &format!("{host}{key}")).replace("Version: 13", "Version: 8"));
    assert!(r.starts_with("HTTP/1.1 426 ") && r.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{r}");
    let r = respond(&server, &req("GET /ws HTTP/1.1", key));
    assert!(r.starts_with("HTTP/1.1 400 ") && r.contains("Host"), "{r}");
    let r = respond(&server, &req("GET /ws HTTP/1.1", &format!("{host}Sec-WebSocket-Key: c2hvcnQ=\r\n")));
    assert!(r.starts_with("HTTP/1.1 400 ") && r.contains("16 bytes"), "{r}");
    let r = respond(&server, &req("GET /ws HTTP/1.0", &format!("{host}{key}")));
    assert!(r.starts_with("HTTP/1.1 400 ") && r.contains("HTTP/1.1"), "{r}");
    // And the same request done right is upgraded.
    let r = upgrade_response(server.addr, &token);
    assert!(r.starts_with("HTTP/1.1 101 "), "{r}");
}

/// Upgrades offering permessage-deflate; returns the stream and the 101 response head.
fn upgrade_offering(server: &Server, user: &str, offer: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: {offer}\r\n\
         Authorization: Bearer {}\r\n\r\n",
        server.token(user, Some("d"))
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during upgrade");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (s, head)
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    while c.total_in() < data.len() as u64 || out.len() == out.capacity() {
        out.reserve(out.capacity());
        let at = c.total_in() as usize;
        c.compress_vec(&data[at..], &mut out, FlushCompress::Sync).unwrap();
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    out
}

/// The next data frame, inflated if it is compressed: (was compressed, payload).
fn read_message(s: &mut TcpStream) -> (bool, Vec<u8>) {
    let (b0, p) = read_frame(s);
    assert_eq!(b0 & 0x80, 0x80, "final frames only");
    if b0 & 0x40 != 0 {
        (true, inflate(&p))
    } else {
        (false, p)
    }
}

#[test]
fn permessage_deflate_is_negotiated_and_used_both_ways() {
    let server = Server::start_with(2, "permessage_deflate = true\nmax_frame = 65536");
    let (mut a, head) = upgrade_offering(&server, "zara", "permessage-deflate; client_max_window_bits");
    assert!(
        head.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let (compressed, ready) = read_message(&mut a);
    assert!(compressed, "the ready frame is compressed");
    assert!(ready.starts_with(br#"{"op":"ready""#));
    // A plain client (no offer) talks to the compressing one.
    let mut b = open(&server, "yuri");
    let body = "compressible ".repeat(200);
    let send = format!(r#"{{"op":"send","client_msg_id":"z1","to":"yuri","body":"{body}"}}"#);
    let z = deflate(send.as_bytes());
    assert!(z.len() < send.len() / 4);
    a.write_all(&masked_frame(0xc1, &z)).unwrap();
    let (compressed, ack) = read_message(&mut a);
    assert!(compressed && String::from_utf8_lossy(&ack).contains(r#""op":"ack""#), "{}", String::from_utf8_lossy(&ack));
    let (b0, msg) = read_frame(&mut b);
    assert_eq!(b0, 0x81, "the plain client gets an uncompressed frame");
    assert!(String::from_utf8_lossy(&msg).contains(&body));
    // Fragmented compressed message: RSV1 on the first frame only.
    let send = format!(r#"{{"op":"send","client_msg_id":"z2","to":"yuri","body":"{body}"}}"#);
    let z = deflate(send.as_bytes());
    let (one, two) = z.split_at(z.len() / 2);
    a.write_all(&masked_frame(0x41, one)).unwrap();
    a.write_all(&masked_frame(0x80, two)).unwrap();
    let (_, ack) = read_message(&mut a);
    assert!(String::from_utf8_lossy(&ack).contains(r#""client_msg_id":"z2""#));
    let (_, msg) = read_frame(&mut b);
    let msg = String::from_utf8_lossy(&msg);
    assert!(msg.contains(r#""op":"msg""#) && msg.contains(r#""seq":2"#) && msg.contains(&body), "{msg}");
    // RSV1 on a continuation frame is a protocol error.
    a.write_all(&masked_frame(0x41, one)).unwrap();
    a.write_all(&masked_frame(0xc0, two)).unwrap();
    assert_eq!(close_code(&mut a), 1002);
    // A decompression bomb: 100 KB on the wire would inflate to 64 MB; the limit
    // (max_frame) closes it with 1009, and the server stays small.
    let (mut c, _) = upgrade_offering(&server, "xena", "permessage-deflate");
    let _ = read_message(&mut c);
    let rss = rss_bytes(server.pid());
    let bomb = deflate(&vec![b'a'; 64 << 20]);
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    c.write_all(&masked_frame(0xc1, &bomb[..bomb.len().min(65_000)])).unwrap();
    assert_eq!(close_code(&mut c), 1009);
    assert!(rss_bytes(server.pid()) < rss + (8 << 20), "inflating a bomb grew the server by 8 MB or more");
    // Not valid deflate data: 1007.
    let (mut d, _) = upgrade_offering(&server, "wade", "permessage-deflate");
    let _ = read_message(&mut d);
    d.write_all(&masked_frame(0xc1, &[0xff, 0xff, 0xff, 0xff])).unwrap();
    assert_eq!(close_code(&mut d), 1007);
    // The others are unaffected.
    let mut e = open(&server, "vera");
    e.write_all(&masked_frame(0x81, br#"{"op":"send","client_msg_id":"v1","to":"yuri","body":"still here"}"#)).unwrap();
    let (_, ack) = read_frame(&mut e);
    assert!(String::from_utf8_lossy(&ack).contains(r#""op":"ack""#));
}

#[test]
fn server_window_bits_are_honoured_and_compression_is_off_unless_enabled() {
    let server = Server::start_with(1, "permessage_deflate = true");
    let (mut a, head) = upgrade_offering(&server, "ulla", "permessage-deflate; server_max_window_bits=8");
    assert!(head.contains("; server_max_window_bits=8\r\n"), "{head}");
    // The ready frame is longer than 256 bytes? Either way, what arrives must inflate
    // with a 256-byte window: every compressed frame is at most 256 bytes inflated.
    let (compressed, ready) = read_message(&mut a);
    assert!(!compressed || ready.len() <= 256, "compressed {} bytes with an 8-bit window", ready.len());
    drop(a);
    // Off by default: the offer is ignored, and RSV1 is then a protocol error.
    let plain = Server::start(1);
    let (mut b, head) = upgrade_offering(&plain, "tina", "permessage-deflate");
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "{head}");
    let (b0, _) = read_frame(&mut b);
    assert_eq!(b0, 0x81);
    b.write_all(&masked_frame(0xc1, &deflate(b"{}"))).unwrap();
    assert_eq!(close_code(&mut b), 1002);
}

#[test]
fn an_idle_connection_gets_a_close_frame_with_4408() {
    let server = Server::start_with(1, "ping_interval_secs = 1\nidle_timeout_secs = 2");
    // Reads (so it sees the close) but never answers the server's pings.
    let mut s = open(&server, "sleeper");
    assert_eq!(close_code(&mut s), 4408);
    wait_for_eof(&mut s);
}
