//! End-to-end: a hostile client works through its repertoire while a well-behaved pair
//! chats the whole time; every attack gets its documented answer and the pair never
//! notices.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use wire::frame::ServerFrame;
use wire::Encoding;

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let mut v = vec![first, 0x80 | payload.len() as u8];
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// Reads until the server closes; returns the close code if a close frame came.
fn close_code(s: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let mut pos = 0;
    while pos + 2 <= all.len() {
        let (op, len) = (all[pos] & 0x0f, (all[pos + 1] & 0x7f) as usize);
        let (h, len) =
            if len == 126 { (4, u16::from_be_bytes([all[pos + 2], all[pos + 3]]) as usize) } else { (2, len) };
        if op == 8 && len >= 2 {
            return Some(u16::from_be_bytes([all[pos + h], all[pos + h + 1]]));
        }
        pos += h + len;
    }
    None
}

#[test]
fn hostile_client_gets_correct_answers_while_a_good_pair_keeps_chatting() {
    let server = Server::start_with(2, "handshake_timeout_secs = 1\nmax_frames_per_sec = 65535");
    let stop = Arc::new(AtomicBool::new(false));
    let mut a = server.connect("good-a", "d", Encoding::FlatBuffers);
    let mut b = server.connect("good-b", "d", Encoding::Json);
    let s2 = stop.clone();
    let good = std::thread::spawn(move || {
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) || n < 20 {
            a.send(&send_to("good-b", &format!("g{n}"), "unbothered"));
            assert!(matches!(a.recv(), ServerFrame::Ack(x) if x.seq == n + 1));
            assert!(matches!(b.recv(), ServerFrame::Msg(m) if m.seq == n + 1));
            n += 1;
        }
        n
    });
    let token = server.token("evil", Some("d"));
    // Garbage instead of HTTP.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(&[0xde, 0xad, 0xbe, 0xef, b'\r', b'\n', b'\r', b'\n']).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // A truncated frame, then the client vanishes: the server lets go of the connection
    // (its count returns to the good pair's two).
    let mut s = raw_upgrade(server.addr, &token);
    s.write_all(&[0x81, 0xfe, 0x10]).unwrap();
    drop(s);
    let deadline = std::time::Instant::now() + DEADLINE;
    while metric_total(&server, "switchboard_connections") != 2 {
        assert!(std::time::Instant::now() < deadline, "the vanished client's connection was kept");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // An unmasked frame: 1002.
    let mut s = raw_upgrade(server.addr, &token);
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(close_code(&mut s), Some(1002));
    // A length header claiming 2^63 - 1 bytes: 1009 at once, nothing allocated.
    let mut s = raw_upgrade(server.addr, &token);
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&huge).unwrap();
    assert_eq!(close_code(&mut s), Some(1009));
    // Invalid UTF-8 in a text frame: 1007.
    let mut s = raw_upgrade(server.addr, &token);
    s.write_all(&masked(0x81, &[0xc3, 0x28])).unwrap();
    assert_eq!(close_code(&mut s), Some(1007));
    // Slowloris: a handshake that never completes is closed after handshake_timeout.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").unwrap();
    wait_for_eof(&mut s);
    stop.store(true, Ordering::Relaxed);
    let exchanged = good.join().expect("the good pair saw no error");
    assert!(exchanged >= 20, "{exchanged}");
}
