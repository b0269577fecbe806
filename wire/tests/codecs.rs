//! Every frame round-trips through both encodings, and bad input maps to its code.

use wire::error::{DecodeError, ErrorCode};
use wire::frame::*;
use wire::{fb, json};

fn msg(kind: MsgKind, body: &[u8]) -> Message {
    Message {
        conv: ConvId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        seq: 42,
        message_id: u64::MAX - 5,
        from: "alice".into(),
        from_device: "phone".into(),
        ts: 1_790_000_000_000,
        kind,
        body: body.to_vec(),
        client_msg_id: "c-1".into(),
        extra: None,
    }
}

fn server_frames() -> Vec<ServerFrame> {
    let page = Page {
        req_id: Some("r1".into()),
        conv: ConvId(7),
        messages: vec![msg(MsgKind::Text, "héllo".as_bytes()), msg(MsgKind::Data, &[0, 255, 7])],
        has_more: true,
    };
    vec![
        ServerFrame::Ready {
            user: "alice".into(),
            device: "phone".into(),
            shard: 1,
            max_frame: 65536,
            encoding: "switchboard.v1.json".into(),
        },
        ServerFrame::Ack(Ack {
            client_msg_id: "c-1".into(),
            conv: ConvId(u128::MAX),
            seq: 1,
            message_id: 99,
            ts: 5,
            duplicate: true,
        }),
        ServerFrame::Msg(msg(MsgKind::Text, b"hi")),
        ServerFrame::Msg(msg(MsgKind::Data, &[1, 2, 3])),
        ServerFrame::HistoryPage(page.clone()),
        ServerFrame::SyncPage(Page { req_id: None, ..page }),
        ServerFrame::Synced { convs: 3 },
        ServerFrame::Error(ErrorFrame {
            code: ErrorCode::NotMember,
            message: "no".into(),
            ref_id: Some("c-9".into()),
            retry_after_ms: None,
        }),
        ServerFrame::Error(ErrorFrame {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            ref_id: None,
            retry_after_ms: Some(250),
        }),
        ServerFrame::Presence {
            updates: vec![
                PresenceUpdate { user: "a".into(), state: PresenceState::Online, last_seen: None },
                PresenceUpdate { user: "b".into(), state: PresenceState::Offline, last_seen: Some(1_790_000_000_000) },
                PresenceUpdate { user: "c".into(), state: PresenceState::Away, last_seen: None },
            ],
        },
        ServerFrame::Typing { conv: ConvId(9), from: "alice".into(), typing: true },
        ServerFrame::Typing { conv: ConvId(9), from: "alice".into(), typing: false },
        ServerFrame::Error(ErrorFrame {
            code: ErrorCode::BadFrame,
            message: "bad".into(),
            ref_id: None,
            retry_after_ms: None,
        }),
    ]
}

fn client_frames() -> Vec<ClientFrame> {
    vec![
        ClientFrame::Hello {
            sync: vec![SyncPoint { conv: ConvId(1), seq: 9 }, SyncPoint { conv: ConvId(u128::MAX), seq: 0 }],
            list_since: Some(1_764_442_800_123),
        },
        ClientFrame::Hello { sync: vec![], list_since: None },
        ClientFrame::Send(Send {
            client_msg_id: "c-1".into(),
            target: Target::User("bob".into()),
            body: "ünïcode ✓".as_bytes().to_vec(),
            kind: MsgKind::Text,
            reply_to: None,
            target_seq: None,
            forward: None,
        }),
        ClientFrame::Send(Send {
            client_msg_id: "c-2".into(),
            target: Target::Conv(ConvId(12345)),
            body: vec![0, 159, 146, 150],
            kind: MsgKind::Data,
            reply_to: None,
            target_seq: None,
            forward: None,
        }),
        ClientFrame::History(History {
            req_id: Some("r".into()),
            conv: ConvId(3),
            before_seq: Some(10),
            limit: Some(5),
        }),
        ClientFrame::History(History { req_id: None, conv: ConvId(3), before_seq: None, limit: None }),
        ClientFrame::PresenceSub { users: vec!["bob".into(), "carol".into()] },
        ClientFrame::PresenceUnsub { users: vec!["bob".into()] },
        ClientFrame::PresenceSet { state: PresenceState::Away, hide_last_seen: Some(true) },
        ClientFrame::PresenceSet { state: PresenceState::Online, hide_last_seen: None },
        ClientFrame::Typing { conv: ConvId(77), typing: true },
        ClientFrame::Typing { conv: ConvId(77), typing: false },
    ]
}

#[test]
fn server_frames_round_trip_in_both_encodings() {
    for f in server_frames() {
        let mut out = Vec::new();
        json::encode_server(&f, &mut out);
        assert_eq!(json::decode_server(&out).unwrap(), f, "json: {}", String::from_utf8_lossy(&out));
        let mut out = Vec::new();
        fb::encode_server(&f, &mut out);
        assert_eq!(fb::decode_server(&out).unwrap(), f);
    }
}

#[test]
fn client_frames_round_trip_in_both_encodings() {
    for f in client_frames() {
        assert_eq!(json::decode_client(&json::encode_client(&f)).unwrap(), f);
        assert_eq!(fb::decode_client(&fb::encode_client(&f)).unwrap(), f);
    }
}

#[test]
fn json_bad_input_maps_to_codes() {
    let cases: &[(&str, ErrorCode)] = &[
        ("{not json", ErrorCode::BadFrame),
        ("[]", ErrorCode::BadFrame),
        (r#"{"op":"fly"}"#, ErrorCode::UnknownOp),
        (r#"{"op":"ack"}"#, ErrorCode::UnknownOp),
        (r#"{"client_msg_id":"x"}"#, ErrorCode::MissingField),
        (r#"{"op":"send","to":"bob","body":"x"}"#, ErrorCode::MissingField),
        (r#"{"op":"send","client_msg_id":"c","body":"x"}"#, ErrorCode::MissingField),
        (r#"{"op":"send","client_msg_id":"c","to":"bob"}"#, ErrorCode::MissingField),
        (
            r#"{"op":"send","client_msg_id":"c","to":"bob","conv":"00000000000000000000000000000001","body":"x"}"#,
            ErrorCode::BadValue,
        ),
        (r#"{"op":"send","client_msg_id":"c","conv":"xyz","body":"x"}"#, ErrorCode::BadValue),
        (r#"{"op":"send","client_msg_id":"","to":"bob","body":"x"}"#, ErrorCode::BadValue),
        (r#"{"op":"send","client_msg_id":"c","to":"bob","body":"!!","kind":"data"}"#, ErrorCode::BadValue),
        (r#"{"op":"send","client_msg_id":"c","to":"bob","body":"x","kind":"video"}"#, ErrorCode::BadValue),
        (r#"{"op":"send","client_msg_id":7,"to":"bob","body":"x"}"#, ErrorCode::BadFrame),
        (r#"{"op":"history"}"#, ErrorCode::MissingField),
        (r#"{"op":"presence_sub"}"#, ErrorCode::MissingField),
        (r#"{"op":"presence_sub","users":[""]}"#, ErrorCode::BadValue),
        (r#"{"op":"presence_set","state":"offline"}"#, ErrorCode::BadValue),
        (r#"{"op":"presence_set","state":"asleep"}"#, ErrorCode::BadValue),
        (r#"{"op":"typing"}"#, ErrorCode::MissingField),
    ];
    for (input, code) in cases {
        let err = json::decode_client(input.as_bytes()).unwrap_err();
        assert_eq!(err.code(), *code, "{input} -> {err}");
    }
}

#[test]
fn fb_bad_input_is_rejected_not_read() {
    assert!(matches!(fb::decode_client(b""), Err(DecodeError::Malformed(_))));
    assert!(matches!(fb::decode_client(&[0xff; 64]), Err(DecodeError::Malformed(_))));
    // A valid server frame is not a client frame.
    let mut out = Vec::new();
    fb::encode_server(&ServerFrame::Synced { convs: 1 }, &mut out);
    assert_eq!(fb::decode_client(&out).unwrap_err().code(), ErrorCode::UnknownOp);
    // Every truncation of a valid frame is an error or a valid frame, never a panic.
    let good = fb::encode_client(&client_frames()[2]);
    for n in 0..good.len() {
        let _ = fb::decode_client(&good[..n]);
    }
    // Non-UTF-8 text body sent over FlatBuffers is caught by the shared check.
    let bad = fb::encode_client(&ClientFrame::Send(Send {
        client_msg_id: "c".into(),
        target: Target::User("bob".into()),
        body: vec![0xff, 0xfe],
        kind: MsgKind::Text,
        reply_to: None,
        target_seq: None,
        forward: None,
    }));
    assert_eq!(fb::decode_client(&bad).unwrap_err().code(), ErrorCode::BadValue);
}

#[test]
fn lifecycle_sends_are_checked_in_both_encodings() {
    let bad = |j: &str| json::decode_client(j.as_bytes()).unwrap_err().code();
    let to = r#""op":"send","client_msg_id":"c","conv":"0000000000000000000000000000002a""#;
    assert_eq!(
        bad(&format!(r#"{{{to},"kind":"edit","body":"x"}}"#)),
        ErrorCode::MissingField,
        "an edit needs a target"
    );
    assert_eq!(bad(&format!(r#"{{{to},"kind":"text","body":"x","target":3}}"#)), ErrorCode::BadValue);
    assert_eq!(bad(&format!(r#"{{{to},"kind":"delete","body":"x","target":3}}"#)), ErrorCode::BadValue);
    assert_eq!(bad(&format!(r#"{{{to},"kind":"reaction","body":"hello","target":3}}"#)), ErrorCode::BadValue);
    assert_eq!(bad(&format!(r#"{{{to},"kind":"reaction","body":"👍👍","target":3}}"#)), ErrorCode::BadValue);
    assert_eq!(bad(&format!(r#"{{{to},"kind":"edit","body":"x","target":3,"reply_to":1}}"#)), ErrorCode::BadValue);
    assert_eq!(bad(&format!(r#"{{{to},"kind":"text","body":"x","reply_to":0}}"#)), ErrorCode::BadValue);
    assert_eq!(bad(&format!(r#"{{{to},"kind":"media","body":"{{\"url\":\"http://x\"}}"}}"#)), ErrorCode::BadValue);
    let media = r#"{\"url\":\"https://cdn.example/v.mp4\",\"mime\":\"video/mp4\",\"size\":10,\"sha256\":\"HEX\"}"#;
    let ok = media.replace("HEX", &"0f".repeat(32));
    assert!(json::decode_client(format!(r#"{{{to},"kind":"media","body":"{ok}"}}"#).as_bytes()).is_ok());
    let upper = media.replace("HEX", &"0F".repeat(32));
    assert_eq!(bad(&format!(r#"{{{to},"kind":"media","body":"{upper}"}}"#)), ErrorCode::BadValue);
    for e in ["👍", "👍🏽", "❤️", "🇫🇷", "👨‍👩‍👧", ""] {
        let j = format!(r#"{{{to},"kind":"reaction","body":"{e}","target":3}}"#);
        assert!(json::decode_client(j.as_bytes()).is_ok(), "{e:?} is one emoji");
    }
    // The same rules over FlatBuffers.
    let send = Send {
        client_msg_id: "c".into(),
        target: Target::Conv(ConvId(42)),
        body: b"not an emoji".to_vec(),
        kind: MsgKind::Reaction,
        reply_to: None,
        target_seq: Some(3),
        forward: None,
    };
    let bytes = fb::encode_client(&ClientFrame::Send(send));
    assert_eq!(fb::decode_client(&bytes).unwrap_err().code(), ErrorCode::BadValue);
}
