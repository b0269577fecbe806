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
