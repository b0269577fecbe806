//! End-to-end: tokens. Bad tokens get HTTP 401 and no upgrade.

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use wire::frame::ServerFrame;
use wire::Encoding;

fn jwt(secret: &str, sub: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = serde_json::json!({"sub": sub, "exp": now + exp_offset, "iat": now});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[test]
fn bad_tokens_get_401_and_good_ones_connect() {
    let server = Server::start(1);
    assert_eq!(upgrade_status(server.addr, None), Some(401), "missing");
    assert_eq!(upgrade_status(server.addr, Some("not.a.jwt")), Some(401), "malformed");
    assert_eq!(
        upgrade_status(server.addr, Some(&jwt("some-other-secret-123456", "x", 3600))),
        Some(401),
        "wrong signature"
    );
    assert_eq!(upgrade_status(server.addr, Some(&jwt(SECRET, "x", -3600))), Some(401), "expired");
    assert_eq!(upgrade_status(server.addr, Some(&jwt(SECRET, "x", 3600))), None, "valid");
    // The token can also ride in the query string (browsers cannot set headers), and
    // the device id comes from ?device= when the token has none.
    let token = jwt(SECRET, "yara", 3600);
    let url = format!("ws://{}/ws?token={token}&device=tablet", server.addr);
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut ws, _) = tungstenite::client::client(url, stream).unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => match wire::json::decode_server(t.as_bytes()).unwrap() {
            ServerFrame::Ready { user, device, encoding, .. } => {
                assert_eq!(
                    (user.as_str(), device.as_str(), encoding.as_str()),
                    ("yara", "tablet", Encoding::Json.subprotocol())
                )
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_token_command_mints_tokens_the_server_accepts() {
    let server = Server::start(1);
    let c = server.connect("zoe", "watch", Encoding::FlatBuffers);
    assert_eq!((c.user.as_str(), c.device.as_str()), ("zoe", "watch"));
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn signed(alg: jsonwebtoken::Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, key).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn public_key_tokens_ed25519_pem_and_rs256_jwks_with_issuer_and_audience() {
    let toml = format!(
        "jwt_public_key = {:?}\njwt_jwks = {:?}\njwt_issuer = \"auth.example\"\njwt_audience = \"chat\"\njwt_leeway_secs = 0",
        fixture("ed25519-public.pem"),
        fixture("jwks.json")
    );
    let server = Server::start_with(1, &toml);
    let ed = EncodingKey::from_ed_pem(&std::fs::read(fixture("ed25519-private.pem")).unwrap()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let good = |sub: &str| serde_json::json!({"sub": sub, "exp": now() + 600, "iss": "auth.example", "aud": "chat"});
    use jsonwebtoken::Algorithm::{EdDSA, HS256, RS256};
    // Accepted: EdDSA (PEM, no kid; and JWKS kid ed-1), RS256 by JWKS kid.
    for token in [
        signed(EdDSA, None, &ed, good("pk-ed")),
        signed(EdDSA, Some("ed-1"), &ed, good("pk-ed-kid")),
        signed(RS256, Some("rsa-1"), &rsa, good("pk-rsa")),
    ] {
        assert_eq!(upgrade_status(server.addr, Some(&token)), None);
    }
    let refused = |token: String, why: &str| assert_eq!(upgrade_status(server.addr, Some(&token)), Some(401), "{why}");
    refused(signed(RS256, Some("rsa-unknown"), &rsa, good("x")), "unknown kid");
    refused(signed(EdDSA, None, &ed, serde_json::json!({"sub": "x", "exp": now() + 600, "aud": "chat"})), "no iss");
    refused(
        signed(EdDSA, None, &ed, serde_json::json!({"sub": "x", "exp": now() + 600, "iss": "evil", "aud": "chat"})),
        "wrong iss",
    );
    refused(
        signed(
            EdDSA,
            None,
            &ed,
            serde_json::json!({"sub": "x", "exp": now() + 600, "iss": "auth.example", "aud": "ads"}),
        ),
        "wrong aud",
    );
    refused(
        signed(
            EdDSA,
            None,
            &ed,
            serde_json::json!({"sub": "x", "exp": now() + 600, "nbf": now() + 300, "iss": "auth.example", "aud": "chat"}),
        ),
        "not yet valid",
    );
    // Algorithm confusion: an HS256 token whose HMAC key is the RSA *public* key.
    let public_as_secret = EncodingKey::from_secret(&std::fs::read(fixture("rsa-public.pem")).unwrap());
    refused(signed(HS256, Some("rsa-1"), &public_as_secret, good("x")), "HS256 signed with the public key");
}

#[test]
fn revoking_a_device_closes_it_refuses_its_tokens_and_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 2, "");
    let old_token = server.token("rev-alice", Some("phone"));
    let mut phone = Client::connect(server.addr, &old_token, Encoding::Json);
    let mut laptop = server.connect("rev-alice", "laptop", Encoding::Json);
    let (status, body) = admin_request(&server, "POST", "/revoke?user=rev-alice&device=phone");
    assert_eq!(status, 200, "{body}");
    assert_eq!(phone.expect_close(), 4003);
    // The user's other device is untouched.
    laptop.send(&common::send_to("rev-bob", "still-here", "laptop works"));
    assert!(matches!(laptop.recv(), ServerFrame::Ack(_)));
    assert_eq!(upgrade_status(server.addr, Some(&old_token)), Some(401), "old token refused");
    // Across a restart too.
    server.kill9();
    let server = Server::start_in(&dir, 2, "");
    assert_eq!(upgrade_status(server.addr, Some(&old_token)), Some(401), "still refused after restart");
    // Signing in again (a token issued after the revocation) works.
    let later = serde_json::json!({"sub": "rev-alice", "device": "phone", "exp": now() + 600, "iat": now() + 5});
    let fresh = encode(&Header::default(), &later, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    assert_eq!(upgrade_status(server.addr, Some(&fresh)), None);
}

/// A browser's WebSocket API cannot set headers; it can offer subprotocols. A
/// `bearer.<token>` entry next to the encoding's authenticates, and only the encoding is
/// echoed back (a token never has to travel in the URL).
#[test]
fn a_token_in_a_subprotocol_entry_authenticates_and_is_not_echoed() {
    use std::io::{Read, Write};
    let server = Server::start(1);
    let upgrade = |protocols: &str| {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let token = server.token("browser", Some("tab"));
    let ok = upgrade(&format!("switchboard.v1.json, bearer.{token}"));
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    assert!(ok.contains("Sec-WebSocket-Protocol: switchboard.v1.json\r\n"), "{ok}");
    assert!(!ok.contains("bearer."), "the token is not echoed: {ok}");
    let ok = upgrade(&format!("bearer.{token}, switchboard.v1.fb"));
    assert!(ok.contains("Sec-WebSocket-Protocol: switchboard.v1.fb\r\n"), "{ok}");
    let bad = upgrade("switchboard.v1.json, bearer.not-a-token");
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");
    let none = upgrade("switchboard.v1.json");
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
}
