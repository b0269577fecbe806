//! Entry points for fuzz targets (`fuzz/`): each takes arbitrary bytes from the network
//! and must never panic.

use std::sync::OnceLock;

/// The HTTP upgrade parser.
pub fn upgrade(data: &[u8]) {
    let _ = crate::upgrade::parse(data, crate::upgrade::Limits { max: 8192, max_url: 2048, deflate: true });
}

/// JWT parsing and verification (HS256 verifier with a fixed secret).
pub fn jwt(data: &[u8]) {
    static V: OnceLock<crate::auth::Verifier> = OnceLock::new();
    let v = V.get_or_init(|| crate::auth::Verifier::hs256(b"fuzzing-secret-0123456789", 0));
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = v.verify(token);
    }
}

/// WebSocket frame parsing, unmasking and partial-frame tracking, close payloads,
/// UTF-8 checks of partly received text, and inflating permessage-deflate payloads
/// (never past the limit, whatever the input claims).
pub fn ws_frames(data: &[u8]) {
    let mut buf = data.to_vec();
    let mut pos = 0;
    let deflate = data.first().is_some_and(|b| b & 1 == 1);
    while let crate::ws::Next::Frame(f) = crate::ws::next(&buf[pos..], 1 << 16, deflate) {
        let range = pos + f.payload.start..pos + f.payload.end;
        crate::ws::unmask(&mut buf[range.clone()], f.mask);
        if f.opcode
            == tungstenite::protocol::frame::coding::OpCode::Control(
                tungstenite::protocol::frame::coding::Control::Close,
            )
        {
            let _ = crate::ws::close_code(&buf[range.clone()]);
        }
        if f.rsv1 {
            thread_local! {
                static CODEC: std::cell::RefCell<crate::deflate::Codec> = Default::default();
            }
            const MAX: usize = 1 << 16;
            let mut out = Vec::new();
            let _ = CODEC.with_borrow_mut(|c| c.inflate(&buf[range], MAX, &mut out));
            assert!(out.len() <= MAX + 1, "inflated past the limit: {}", out.len());
        }
        pos += f.len;
    }
    let seen = data.len() / 3;
    let _ = crate::ws::partial_text_ok(&data[pos.min(data.len())..], seen, &data[..data.len().min(3)]);
    let _ = crate::ws::partial_after(data, 0, data.len() / 2);
}

/// A server configuration with a fresh self-signed certificate for `localhost`, and a
/// client configuration speaking `versions` that trusts it (fuzz targets, tests and the
/// `tls_memory` example).
pub fn tls_pair(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (std::sync::Arc<rustls::ServerConfig>, rustls::ClientConfig) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a test certificate");
    let server = crate::tls::config_from_pem(c.cert.pem().as_bytes(), c.key_pair.serialize_pem().as_bytes())
        .expect("a TLS configuration");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.cert.der().clone()).expect("a root");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, client)
}

/// The fuzz targets' TLS configurations (built once).
fn tls_configs() -> &'static (std::sync::Arc<rustls::ServerConfig>, std::sync::Arc<rustls::ClientConfig>) {
    static CFG: OnceLock<(std::sync::Arc<rustls::ServerConfig>, std::sync::Arc<rustls::ClientConfig>)> =
        OnceLock::new();
    CFG.get_or_init(|| {
        let (server, mut client) = tls_pair(rustls::DEFAULT_VERSIONS);
        // The forging mode takes the client's keys to seal records of its own.
        client.enable_secret_extraction = true;
        (server, std::sync::Arc::new(client))
    })
}

/// A TLS server session fed records. The first byte sets the read size (so records are
/// split across reads at every offset). If its top bit is clear, the rest is hostile
/// input, fed until the session fails. If it is set, a real client completes a
/// handshake first. Then, with the next bit clear, the rest is a script of what the
/// client does (application data, key updates, close_notify) and of what the server
/// sends back; every byte the client sends must come out of the session intact, in
/// order. With that bit set, the client's keys seal records the input makes up (any
/// inner content type, any payload: alerts, handshake messages, empty records) and the
/// session must hand on exactly the application data before the first it refuses.
/// Nothing may panic, and the input carried between reads must stay bounded.
pub fn tls_records(data: &[u8]) {
    let (server, client) = tls_configs();
    let Some((&first, rest)) = data.split_first() else { return };
    let step = usize::from(first & 0x7f).max(1);
    let mut session = crate::tls::Session::new(server.clone()).expect("a TLS session");
    let mut plain = Vec::new();
    if first & 0x80 == 0 {
        let _ = feed(step, &mut session, rest, &mut plain);
        let _ = session.write(b"never sent before the handshake", &mut Vec::new());
        return;
    }
    let forging = first & 0x40 != 0;
    let mut c =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().expect("a name")).expect("a client");
    // The handshake: flights back and forth until neither side has more to say.
    for _ in 0..8 {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).expect("client output");
        }
        feed(step, &mut session, &out, &mut plain).expect("the server accepts a real handshake");
        let answer = std::mem::take(&mut session.unsent);
        if forging && !c.is_handshaking() && !out.is_empty() {
            // The client's Finished is in. Its answer (tickets, and the key update the
            // server sends as it leaves rustls, which asks the client to update too) is
            // not delivered: the client's sending key stays the one the server expects.
            break;
        }
        let mut a = &answer[..];
        while !a.is_empty() {
            c.read_tls(&mut a).expect("client input");
            c.process_new_packets().expect("the client accepts the server's flight");
        }
        if out.is_empty() && answer.is_empty() {
            break;
        }
    }
    assert!(!c.is_handshaking(), "the handshake completes");
    if forging {
        return forged_records(c, &mut session, rest, step);
    }
    let (mut sent, mut closed, mut failed) = (Vec::new(), false, false);
    let mut script = rest.iter();
    while let Some(&op) = script.next() {
        let len = usize::from(*script.next().unwrap_or(&0)) * 61;
        match op % 4 {
            0 => {
                let bytes: Vec<u8> = (0..len).map(|i| (i as u8) ^ op).collect();
                use std::io::Write as _;
                c.writer().write_all(&bytes).expect("client write");
                sent.extend_from_slice(&bytes);
            }
            1 => {
                let _ = c.refresh_traffic_keys();
            }
            2 => {
                c.send_close_notify();
                closed = true;
            }
            _ => {
                let mut out = std::mem::take(&mut session.unsent);
                let bytes = vec![op; len];
                session.write(&bytes, &mut out).expect("the server encrypts");
                let mut a = &out[..];
                let mut got = Vec::new();
                while !a.is_empty() {
                    c.read_tls(&mut a).expect("client input");
                    c.process_new_packets().expect("the client decrypts the server's records");
                    use std::io::Read as _;
                    let _ = c.reader().read_to_end(&mut got);
                }
                assert!(got == bytes, "the client read other bytes than the server sent");
            }
        }
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).expect("client output");
        }
        if feed(step, &mut session, &out, &mut plain).is_err() {
            failed = true;
            break;
        }
    }
    assert!(sent.starts_with(&plain), "the server read bytes the client did not send");
    assert!(closed || failed || plain == sent, "the server lost bytes the client sent");
}

/// The forging half of [`tls_records`]: `script` is a list of `[inner type, length,
/// payload...]` records sealed with the client's own TLS 1.3 keys.
fn forged_records(client: rustls::ClientConnection, session: &mut crate::tls::Session, script: &[u8], step: usize) {
    let Some(suite) = client.negotiated_cipher_suite().and_then(|s| s.tls13()) else { return };
    let Ok(secrets) = client.dangerous_extract_secrets() else { return };
    let (seq, keys) = secrets.tx;
    let (key, iv) = match keys {
        rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | rustls::ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => return,
    };
    // aws-lc's TLS 1.3 sealing key starts at sequence 0 (the client sent no data yet).
    if seq != 0 {
        return;
    }
    let mut enc = suite.aead_alg.encrypter(key, iv);
    let (mut expected, mut plain, mut rest) = (Vec::new(), Vec::new(), script);
    for seq in 0.. {
        let [typ, len, ref tail @ ..] = *rest else { break };
        let len = usize::from(len).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        let Some((typ, fed)) = seal_and_feed(&mut *enc, seq, typ, payload, step, session, &mut plain, &mut expected)
        else {
            return;
        };
        // Stop when refused, after an alert (close_notify or fatal: nothing more is
        // read), or after a handshake message (a key update changes the keys the rest
        // would need).
        if fed.is_err() || typ == 21 || typ == 22 {
            break;
        }
    }
    assert!(plain == expected, "the session handed on other bytes than the client's application data");
}

/// The TLS 1.3 record layer from an established session whose keys are fixed
/// (`tls::Session::established_with_fixed_keys`): no handshake, so thousands of inputs a
/// second reach records, key updates, alerts and splits. The first byte sets the read
/// size. Then a script of (op, len, ...) steps:
/// - a record sealed under the client's current key with any inner content type and
///   the payload that follows (alerts, handshake messages, empty and padded records);
/// - a well-formed client `key_update` (asking for the server's when `len` is odd),
///   after which the client seals under its next key;
/// - a new read size;
/// - the server writing `len * 61` bytes, which the client opens, following the
///   server's own key updates; it must read exactly what was written.
///
/// The session must hand on exactly the client's application data before the first
/// record it refuses, never panic, and keep what it carries between reads bounded.
#[cfg(any(fuzzing, test))]
pub fn tls_established(data: &[u8]) {
    use rustls::crypto::cipher::InboundOpaqueMessage;
    use rustls::ContentType;
    let Some((&first, mut rest)) = data.split_first() else { return };
    let mut step = usize::from(first).max(1);
    let suite = crate::tls::fixed_suite();
    let aead = |client: bool, generation: u32| match crate::tls::fixed_secrets(client, generation) {
        rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (key, iv),
        _ => unreachable!("fixed keys are AES-256-GCM"),
    };
    let mut session = crate::tls::Session::established_with_fixed_keys();
    let (key, iv) = aead(true, 0);
    let (mut enc, mut client_gen, mut client_seq) = (suite.aead_alg.encrypter(key, iv), 0u32, 0u64);
    let (key, iv) = aead(false, 0);
    let (mut dec, mut server_gen, mut server_seq) = (suite.aead_alg.decrypter(key, iv), 0u32, 0u64);
    let (mut expected, mut plain) = (Vec::new(), Vec::new());
    while let [op, len, ref tail @ ..] = *rest {
        rest = tail;
        match op % 4 {
            0 | 1 => {
                let (typ, payload) = if op % 4 == 0 {
                    let n = usize::from(len).min(rest.len());
                    let (payload, tail) = rest.split_at(n);
                    rest = tail;
                    // Mostly application data; otherwise any type the input names.
                    (if op & 4 == 0 { 23 } else { op >> 3 }, payload.to_vec())
                } else {
                    (22, vec![24, 0, 0, 1, len & 1])
                };
                let sealed =
                    seal_and_feed(&mut *enc, client_seq, typ, &payload, step, &mut session, &mut plain, &mut expected);
                let Some((typ, fed)) = sealed else { return };
                client_seq += 1;
                if op % 4 == 1 && fed.is_ok() {
                    // Our own well-formed key update was taken: seal under the next key.
                    client_gen += 1;
                    client_seq = 0;
                    let (key, iv) = aead(true, client_gen);
                    enc = suite.aead_alg.encrypter(key, iv);
                    continue;
                }
                // Stop when refused, after an alert (nothing more is read) or after a
                // forged handshake message (a key update changes the keys).
                if fed.is_err() || typ == 21 || typ == 22 {
                    break;
                }
            }
            2 => step = usize::from(len).max(1),
            _ => {
                let bytes: Vec<u8> = (0..usize::from(len) * 61).map(|i| (i as u8) ^ op).collect();
                let mut out = std::mem::take(&mut session.unsent);
                if session.write(&bytes, &mut out).is_err() {
                    break;
                }
                let mut got = Vec::new();
                let mut at = 0;
                while let [_, v0, v1, l0, l1, ..] = out[at..] {
                    let n = usize::from(u16::from_be_bytes([l0, l1]));
                    let version = rustls::ProtocolVersion::from(u16::from_be_bytes([v0, v1]));
                    let body = &mut out[at + 5..at + 5 + n];
                    let msg = dec
                        .decrypt(InboundOpaqueMessage::new(ContentType::ApplicationData, version, body), server_seq)
                        .expect("the client opens the server's records");
                    server_seq += 1;
                    match msg.typ {
                        ContentType::ApplicationData => got.extend_from_slice(msg.payload),
                        ContentType::Handshake => {
                            assert_eq!(msg.payload.get(..4), Some(&[24, 0, 0, 1][..]), "only key updates");
                            server_gen += 1;
                            server_seq = 0;
                            let (key, iv) = aead(false, server_gen);
                            dec = suite.aead_alg.decrypter(key, iv);
                        }
                        other => panic!("the server sent a {other:?} record while writing data"),
                    }
                    at += 5 + n;
                }
                assert_eq!(at, out.len(), "the server wrote a partial record");
                assert!(got == bytes, "the client read other bytes than the server wrote");
            }
        }
    }
    assert!(plain == expected, "the session handed on other bytes than the client's application data");
}

/// Seals one record of `typ` holding `payload` under the client's key, feeds it to the
/// session and checks what came out: the record's application data (added to
/// `expected` if the session took it), or nothing for any other type. Returns the type
/// the session saw and whether it took the record; `None` if sealing failed.
#[allow(clippy::too_many_arguments)]
fn seal_and_feed(
    enc: &mut dyn rustls::crypto::cipher::MessageEncrypter,
    seq: u64,
    typ: u8,
    payload: &[u8],
    step: usize,
    session: &mut crate::tls::Session,
    plain: &mut Vec<u8>,
    expected: &mut Vec<u8>,
) -> Option<(u8, Result<(), rustls::Error>)> {
    use rustls::crypto::cipher::{OutboundChunks, OutboundPlainMessage};
    let msg = OutboundPlainMessage {
        typ: rustls::ContentType::from(typ),
        version: rustls::ProtocolVersion::TLSv1_2,
        payload: OutboundChunks::Single(payload),
    };
    let sealed = enc.encrypt(msg, seq).ok()?;
    // What the peer sees (RFC 8446 5.4): the last non-zero byte of payload ++ type is
    // the content type; zeros after it are padding.
    let mut inner = payload.to_vec();
    inner.push(typ);
    let (typ, payload) = match inner.iter().rposition(|&b| b != 0) {
        Some(i) => (inner[i], &inner[..i]),
        None => (0, &[][..]),
    };
    let before = plain.len();
    let fed = feed(step, session, &sealed.encode(), plain);
    match rustls::ContentType::from(typ) {
        rustls::ContentType::ApplicationData if fed.is_ok() => expected.extend_from_slice(payload),
        _ => assert_eq!(plain.len(), before, "a record of type {typ} came out as application data"),
    }
    Some((typ, fed))
}

/// Feeds `bytes` to the session in reads of `step` bytes, checking the bound on what it
/// carries between reads.
fn feed(
    step: usize,
    session: &mut crate::tls::Session,
    bytes: &[u8],
    plain: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    for chunk in bytes.chunks(step) {
        let mut chunk = chunk.to_vec();
        session.read(&mut chunk, plain)?;
        assert!(session.carried() <= crate::tls::MAX_PARTIAL, "TLS input held past the bound");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The fast TLS entry point runs its scripts (the fuzz target explores the rest):
    /// data, a requested key update, server writes across it, splits, a close.
    #[test]
    fn tls_established_runs_scripts() {
        let mut script = vec![7, 0, 40];
        script.extend_from_slice(&[b'a'; 40]);
        script.extend_from_slice(&[1, 1, 3, 2, 2, 1, 0, 10]);
        script.extend_from_slice(b"0123456789");
        script.extend_from_slice(&[3, 3, 1, 0, 3, 1]);
        super::tls_established(&script);
        // Forged records of every content type, in reads of 1 to 255 bytes.
        for step in [1u8, 5, 255] {
            for typ in 0..32u8 {
                super::tls_established(&[step, 4 | (typ << 3), 3, 1, 2, 3, 0, 2, b'x', b'y', 3, 1]);
            }
        }
        // A cheap stand-in for the fuzzer: scripts from a fixed-seed generator.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let input: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            super::tls_established(&input);
        }
    }
}
