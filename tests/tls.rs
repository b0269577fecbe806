//! End-to-end: WSS with rustls: both TLS versions, handoff of TLS sessions between
//! shards, session resumption, certificate reload without restart, and hostile bytes.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message as WsMessage, WebSocket};
use wire::frame::ServerFrame;
use wire::Encoding;

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn client_config(cert_pem: &Path, version: &'static rustls::SupportedProtocolVersion) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(cert_pem).unwrap()[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn connect(server: &Server, cfg: &Arc<ClientConfig>, user: &str, enc: Encoding) -> WebSocket<Tls> {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let conn = ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let tls = StreamOwned::new(conn, tcp);
    let mut req = format!("wss://localhost:{}/ws", server.addr.port()).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {}", server.token(user, Some("d"))).parse().unwrap());
    req.headers_mut().insert("Sec-WebSocket-Protocol", enc.subprotocol().parse().unwrap());
    let (mut ws, _) = tungstenite::client(req, tls).expect("WSS upgrade");
    assert!(matches!(recv(&mut ws), ServerFrame::Ready { .. }));
    ws
}

fn recv(ws: &mut WebSocket<Tls>) -> ServerFrame {
    loop {
        match ws.read().expect("a frame") {
            WsMessage::Text(t) => return wire::json::decode_server(t.as_bytes()).unwrap(),
            WsMessage::Binary(b) => return wire::fb::decode_server(&b).unwrap(),
            _ => {}
        }
    }
}

fn send(ws: &mut WebSocket<Tls>, enc: Encoding, to: &str, id: &str) {
    let f = send_to(to, id, "over tls");
    let m = match enc {
        Encoding::Json => WsMessage::text(String::from_utf8(wire::json::encode_client(&f)).unwrap()),
        Encoding::FlatBuffers => WsMessage::binary(wire::fb::encode_client(&f)),
    };
    ws.send(m).unwrap();
}

fn peer_cert(ws: &WebSocket<Tls>) -> CertificateDer<'static> {
    ws.get_ref().conn.peer_certificates().unwrap()[0].clone().into_owned()
}

#[test]
fn wss_both_versions_across_shards_with_resumption() {
    let server = Server::start_with(2, "tls_dev = true");
    let cert = server.dir.join("dev-cert.pem");
    let v13 = client_config(&cert, &rustls::version::TLS13);
    let v12 = client_config(&cert, &rustls::version::TLS12);
    // Pick users on different shards so TLS sessions are handed off both ways.
    let a = "tls-alice".to_owned();
    let b = (0..)
        .map(|i| format!("tls-bob{i}"))
        .find(|b| shard::ids::home_of_user(b, 2) != shard::ids::home_of_user(&a, 2))
        .unwrap();
    let mut wa = connect(&server, &v13, &a, Encoding::FlatBuffers);
    let mut wb = connect(&server, &v12, &b, Encoding::Json);
    assert_eq!(wa.get_ref().conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(wb.get_ref().conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(wa.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for i in 0..50 {
        send(&mut wa, Encoding::FlatBuffers, &b, &format!("a{i}"));
        assert!(matches!(recv(&mut wa), ServerFrame::Ack(x) if x.seq == 2 * i + 1));
        assert!(matches!(recv(&mut wb), ServerFrame::Msg(m) if m.client_msg_id == format!("a{i}")));
        send(&mut wb, Encoding::Json, &a, &format!("b{i}"));
        assert!(matches!(recv(&mut wb), ServerFrame::Ack(_)));
        assert!(matches!(recv(&mut wa), ServerFrame::Msg(m) if m.client_msg_id == format!("b{i}")));
    }
    // A reconnect with the same client config resumes the session (ticket).
    let again = connect(&server, &v13, &a, Encoding::Json);
    assert_eq!(again.get_ref().conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    let again12 = connect(&server, &v12, &b, Encoding::Json);
    assert_eq!(again12.get_ref().conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
}

#[test]
fn certificate_reload_on_sighup_keeps_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let write_cert = || {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    };
    write_cert();
    let toml = format!("tls_cert = {cert:?}\ntls_key = {key:?}");
    let server = Server::start_with(1, &toml);
    let old_cfg = client_config(&cert, &rustls::version::TLS13);
    let mut old = connect(&server, &old_cfg, "reload-a", Encoding::Json);
    let old_der = peer_cert(&old);
    write_cert();
    server.signal("HUP");
    // The new certificate is served within a beat; poll new handshakes until it shows.
    let new_cfg = client_config(&cert, &rustls::version::TLS13);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let tcp = TcpStream::connect(server.addr).unwrap();
        let conn = ClientConnection::new(new_cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        if tls.conn.complete_io(&mut tls.sock).is_ok() {
            assert_ne!(tls.conn.peer_certificates().unwrap()[0].as_ref(), old_der.as_ref());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the reloaded certificate was never served");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The connection made before the reload still works.
    send(&mut old, Encoding::Json, "reload-b", "after-reload");
    assert!(matches!(recv(&mut old), ServerFrame::Ack(_)));
}

#[test]
fn garbage_on_the_tls_port_is_refused_and_others_are_served() {
    use std::io::{Read, Write};
    let server = Server::start_with(1, "tls_dev = true");
    for junk in
        [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3][..], &[0u8; 300][..]]
    {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(junk).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf); // an alert, then EOF
    }
    let cfg = client_config(&server.dir.join("dev-cert.pem"), &rustls::version::TLS13);
    let mut c = connect(&server, &cfg, "tls-ok", Encoding::Json);
    send(&mut c, Encoding::Json, "tls-ok2", "fine");
    assert!(matches!(recv(&mut c), ServerFrame::Ack(_)));
}
