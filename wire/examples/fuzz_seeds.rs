//! Writes seed inputs for the fuzz targets: every client frame kind in both encodings.
//! Usage: `cargo run -p wire --example fuzz_seeds -- fuzz/corpus`

use wire::frame::*;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("corpus directory"));
    let frames = [
        ClientFrame::Hello { sync: vec![SyncPoint { conv: ConvId(7), seq: 3 }], list_since: None },
        ClientFrame::Send(Send {
            reply_to: None,
            target_seq: None,
            forward: None,
            client_msg_id: "c1".into(),
            target: Target::User("bob".into()),
            body: b"hi".to_vec(),
            kind: MsgKind::Text,
        }),
        ClientFrame::Send(Send {
            reply_to: None,
            target_seq: None,
            forward: None,
            client_msg_id: "c2".into(),
            target: Target::Conv(ConvId(9)),
            body: vec![0, 1, 2],
            kind: MsgKind::Data,
        }),
        ClientFrame::History(History {
            req_id: Some("r".into()),
            conv: ConvId(9),
            before_seq: Some(5),
            limit: Some(2),
        }),
        ClientFrame::PresenceSub { users: vec!["a".into(), "b".into()] },
        ClientFrame::PresenceUnsub { users: vec!["a".into()] },
        ClientFrame::PresenceSet { state: PresenceState::Away, hide_last_seen: Some(true) },
        ClientFrame::Typing { conv: ConvId(9), typing: true },
    ];
    for (target, encode) in [
        ("json_client", wire::json::encode_client as fn(&ClientFrame) -> Vec<u8>),
        ("fb_client", wire::fb::encode_client),
    ] {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        for (i, f) in frames.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), encode(f)).unwrap();
        }
    }
}
