//! The HTTP/1.1 upgrade: parse the request (httparse), pick the encoding from
//! `Sec-WebSocket-Protocol`, find the token, and build the 101 or the refusal.
//!
//! Runs on whichever shard accepted the socket, before any per-user state exists; the
//! request bytes are the only buffer a connection holds during its handshake.

use base64::Engine as _;
use wire::Encoding;

use crate::deflate::{self, Negotiated};

/// A parsed, valid upgrade request.
#[derive(Debug)]
pub struct Request {
    /// `Sec-WebSocket-Accept` value for the response.
    pub accept_key: String,
    /// The token from `Authorization: Bearer`, a `bearer.<token>` subprotocol entry or
    /// `?token=` (in that order).
    pub token: Option<String>,
    /// `?device=`, if given.
    pub device: Option<String>,
    /// Negotiated encoding.
    pub encoding: Encoding,
    /// Whether the client offered a subprotocol we picked (echo it in the 101).
    pub echo_protocol: bool,
    /// permessage-deflate, if offered acceptably and enabled.
    pub deflate: Negotiated,
    /// The `Sec-WebSocket-Extensions` answer, when an extension was negotiated.
    pub extensions: Option<String>,
    /// The `Origin` header (browsers send it; other clients usually do not).
    pub origin: Option<String>,
    /// `?refusals=close`: refuse by accepting and closing with a code a browser sees.
    pub close_refusals: bool,
}

/// The close frame a refusal becomes for a client that asked for `?refusals=close`:
/// 4000 + the HTTP status (4429 for the handshake rate) and a JSON reason
/// `{"code","message","retry_after"}` within the 123 bytes a close reason may hold (the
/// message is cut at a character boundary when it does not fit).
pub fn refusal_close(r: &Refusal) -> (u16, String) {
    let code = match (r.status, r.code) {
        (503, "handshake_rate") => 4429,
        (s, _) => 4000 + s,
    };
    let mut message = r.message.clone();
    loop {
        let mut v = serde_json::json!({"code": r.code, "message": message});
        if let Some(secs) = r.retry_after {
            v["retry_after"] = secs.into();
        }
        let text = v.to_string();
        if text.len() <= 123 || message.is_empty() {
            return (code, text);
        }
        message.pop();
    }
}

/// Whether a request from `origin` may upgrade under `allowed` (empty: any origin).
/// Origins compare as ASCII case-insensitive `scheme://host[:port]`; a request without
/// `Origin` (not from a browser) is let through: the token authenticates it.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(o) => allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o.trim_end_matches('/'))),
    }
}

/// An HTTP refusal: status, and a JSON body with a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human explanation.
    pub message: String,
    /// `Retry-After` seconds (503 only).
    pub retry_after: Option<u32>,
}

impl Refusal {
    /// A refusal without `Retry-After`.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, code, message: message.into(), retry_after: None }
    }

    /// HTTP 503 with `Retry-After`: the server is at a limit; come back later.
    pub fn busy(code: &'static str, message: impl Into<String>, retry_after: u32) -> Refusal {
        Refusal { status: 503, code, message: message.into(), retry_after: Some(retry_after) }
    }
}

/// Outcome of feeding the bytes received so far.
#[derive(Debug)]
pub enum Parsed {
    /// Need more bytes.
    Partial,
    /// A complete request of `len` bytes (bytes after it are WebSocket frames).
    Done {
        /// The request.
        req: Request,
        /// Its length in bytes.
        len: usize,
    },
    /// Refuse with this response and close.
    Refuse(Refusal),
}

const MAX_HEADERS: usize = 32;

/// What the listener allows an upgrade to negotiate, besides the limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of request line and headers.
    pub max: usize,
    /// Longest request target.
    pub max_url: usize,
    /// Accept permessage-deflate offers.
    pub deflate: bool,
}

/// Parses the upgrade request in `buf` (RFC 6455 4.2.1).
pub fn parse(buf: &[u8], limits: Limits) -> Parsed {
    let Limits { max, max_url, .. } = limits;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= max => {
            return Parsed::Refuse(Refusal::new(
                431,
                "headers_too_large",
                format!("request headers exceed {max} bytes"),
            ))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) if len > max => {
            return Parsed::Refuse(Refusal::new(
                431,
                "headers_too_large",
                format!("request headers exceed {max} bytes"),
            ))
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refuse(Refusal::new(431, "headers_too_large", format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Parsed::Refuse(Refusal::new(400, "bad_request", format!("malformed HTTP request: {e}"))),
    };
    if req.path.is_some_and(|p| p.len() > max_url) {
        return Parsed::Refuse(Refusal::new(414, "uri_too_long", format!("request target exceeds {max_url} bytes")));
    }
    if req.method != Some("GET") {
        return Parsed::Refuse(Refusal::new(405, "method_not_allowed", "use GET with a WebSocket upgrade"));
    }
    if req.version != Some(1) {
        return Parsed::Refuse(Refusal::new(400, "bad_request", "a WebSocket upgrade needs HTTP/1.1"));
    }
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let has_token = |name: &str, token: &str| {
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).any(|h| {
            std::str::from_utf8(h.value).is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Parsed::Refuse(Refusal::new(426, "upgrade_required", "this endpoint speaks WebSocket only"));
    }
    if header("sec-websocket-version") != Some(b"13") {
        return Parsed::Refuse(Refusal::new(426, "upgrade_required", "Sec-WebSocket-Version must be 13"));
    }
    if header("host").is_none_or(|h| h.is_empty()) {
        return Parsed::Refuse(Refusal::new(400, "bad_request", "missing Host header"));
    }
    let Some(key) = header("sec-websocket-key") else {
        return Parsed::Refuse(Refusal::new(400, "bad_request", "missing Sec-WebSocket-Key"));
    };
    // The key is a base64-encoded 16-byte nonce (RFC 6455 4.2.1, item 5).
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.trim_ascii());
    if decoded.map(|k| k.len()) != Ok(16) {
        return Parsed::Refuse(Refusal::new(400, "bad_request", "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let (deflate, extensions) = match limits.deflate {
        true => deflate::negotiate(
            req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions")).map(|h| h.value),
        )
        .map_or((Negotiated::OFF, None), |(n, answer)| (n, Some(answer))),
        false => (Negotiated::OFF, None),
    };
    // Encoding: the first protocol the client offers that we speak; JSON when none. A
    // `bearer.<token>` entry carries the token, as a browser may send it (its WebSocket
    // API sets no headers); it is never echoed.
    let mut encoding = Encoding::Json;
    let mut echo_protocol = false;
    let mut protocol_token = None;
    for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol")) {
        for entry in std::str::from_utf8(h.value).unwrap_or_default().split(',').map(str::trim) {
            if let Some(t) = entry.strip_prefix("bearer.") {
                protocol_token.get_or_insert_with(|| t.to_owned());
            } else if !echo_protocol {
                if let Some(e) = Encoding::from_subprotocol(entry) {
                    encoding = e;
                    echo_protocol = true;
                }
            }
        }
    }
    let mut token = header("authorization")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned())
        .or(protocol_token);
    let mut device = None;
    let mut close_refusals = false;
    if let Some(query) = req.path.and_then(|p| p.split_once('?')).map(|(_, q)| q) {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "token" if token.is_none() => token = percent_decode(v),
                "device" => device = percent_decode(v),
                "refusals" => close_refusals = v == "close",
                _ => {}
            }
        }
    }
    Parsed::Done {
        req: Request {
            accept_key: tungstenite::handshake::derive_accept_key(key),
            token,
            device,
            encoding,
            echo_protocol,
            deflate,
            extensions,
            origin: header("origin").and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned),
            close_refusals,
        },
        len,
    }
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value; `None` for a bad escape
/// or non-UTF-8. Shared by the upgrade's query and the admin endpoint's.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The `101 Switching Protocols` response.
pub fn accept(req: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(req.accept_key.as_bytes());
    if req.echo_protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(req.encoding.subprotocol().as_bytes());
    }
    if let Some(ext) = &req.extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(ext.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// A refusal response; the connection closes after it.
pub fn refuse(r: &Refusal, out: &mut Vec<u8>) {
    let reason = match r.status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = serde_json::json!({"code": r.code, "message": r.message}).to_string();
    let extra = match (r.status, r.retry_after) {
        // RFC 6455 4.4: a version refusal names the versions we speak.
        (426, _) => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n".to_owned(),
        (_, Some(secs)) => format!("Retry-After: {secs}\r\n"),
        _ => String::new(),
    };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {reason}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            r.status,
            body.len()
        )
        .as_bytes(),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusals_become_close_codes_with_a_bounded_json_reason() {
        let (code, reason) = refusal_close(&Refusal::new(401, "unauthorized", "token expired"));
        assert_eq!((code, reason.as_str()), (4401, r#"{"code":"unauthorized","message":"token expired"}"#));
        assert_eq!(refusal_close(&Refusal::busy("handshake_rate", "slow down", 3)).0, 4429);
        let (code, reason) = refusal_close(&Refusal::busy("draining", "é".repeat(200), 5));
        assert_eq!(code, 4503);
        assert!(reason.len() <= 123, "{}", reason.len());
        let v: serde_json::Value = serde_json::from_str(&reason).unwrap();
        assert_eq!((v["code"].as_str(), v["retry_after"].as_u64()), (Some("draining"), Some(5)));
        assert_eq!(refusal_close(&Refusal::new(403, "forbidden_origin", "no")).0, 4403);
    }

    #[test]
    fn origins_match_exactly_ignoring_case_and_a_trailing_slash() {
        let allowed = vec!["https://chat.example.com".to_owned(), "http://localhost:8080/".to_owned()];
        assert!(origin_allowed(&[], Some("https://anything.example")));
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&allowed, Some("https://chat.example.com")));
        assert!(origin_allowed(&allowed, Some("HTTPS://CHAT.EXAMPLE.COM/")));
        assert!(origin_allowed(&allowed, Some("http://localhost:8080")));
        assert!(!origin_allowed(&allowed, Some("https://chat.example.com.evil.net")));
        assert!(!origin_allowed(&allowed, Some("http://chat.example.com")));
        assert!(!origin_allowed(&allowed, Some("null")));
    }

    use super::*;

    const REQ: &str = "GET /ws?token=abc&device=my%20phone HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat, switchboard.v1.fb\r\n\r\n";

    const LIMITS: Limits = Limits { max: 8192, max_url: 2048, deflate: false };

    fn parse(buf: &[u8], max: usize, max_url: usize) -> Parsed {
        super::parse(buf, Limits { max, max_url, ..LIMITS })
    }

    #[test]
    fn parses_a_browser_style_upgrade() {
        for cut in 0..REQ.len() - 1 {
            assert!(matches!(parse(&REQ.as_bytes()[..cut], 8192, 2048), Parsed::Partial));
        }
        let Parsed::Done { req, len } = parse(REQ.as_bytes(), 8192, 2048) else { panic!("not parsed") };
        assert_eq!(len, REQ.len());
        assert_eq!(req.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!((req.token.as_deref(), req.device.as_deref()), (Some("abc"), Some("my phone")));
        assert_eq!((req.encoding, req.echo_protocol), (Encoding::FlatBuffers, true));
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        let status = |s: &str| match parse(s.as_bytes(), 8192, 2048) {
            Parsed::Refuse(r) => r.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
        assert_eq!(status("POST / HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("\x00\x01garbage\r\n\r\n"), 400);
        assert_eq!(status(&REQ.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")), 400);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(status(&big), 431);
        let long = format!("GET /ws?token={} HTTP/1.1\r\nHost: x\r\n\r\n", "t".repeat(3000));
        assert_eq!(status(&long), 414);
        // RFC 6455 4.2.1: HTTP/1.1, a Host, a 16-byte key.
        assert_eq!(status(&REQ.replace("HTTP/1.1", "HTTP/1.0")), 400);
        assert_eq!(status(&REQ.replace("Host: x\r\n", "")), 400);
        assert_eq!(status(&REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==")), 400);
        assert_eq!(status(&REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "not base64!")), 400);
        assert_eq!(status(&REQ.replace("Version: 13", "Version: 8")), 426);
    }

    #[test]
    fn a_version_refusal_names_version_13() {
        let Parsed::Refuse(r) = parse(REQ.replace("Version: 13", "Version: 8").as_bytes(), 8192, 2048) else {
            panic!("not refused")
        };
        let mut out = Vec::new();
        refuse(&r, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 ") && text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
    }

    #[test]
    fn negotiates_permessage_deflate_only_when_enabled() {
        let offer =
            REQ.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n");
        let Parsed::Done { req, .. } = parse(offer.as_bytes(), 8192, 2048) else { panic!() };
        assert_eq!((req.deflate, req.extensions), (Negotiated::OFF, None));
        let Parsed::Done { req, .. } = super::parse(offer.as_bytes(), Limits { deflate: true, ..LIMITS }) else {
            panic!()
        };
        assert_eq!(req.deflate, Negotiated(15));
        let mut out = Vec::new();
        accept(&req, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"), "{text}");
    }
}
