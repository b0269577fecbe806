//! Micro-benchmarks (criterion): frame encode/decode in both encodings, one cross-shard
//! hop (unbatched and batched), local fan-out to N recipients, a storage append batch
//! (with its fdatasync), and JWT verification.
//!
//! `cargo bench -p switchboard-bench --bench micro` (figures: docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use switchboard::ws;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use wire::frame::{ClientFrame, ConvId, Message, MsgKind, Send, ServerFrame, Target};
use wire::{fb, json, Encoding};

fn msg() -> Message {
    Message {
        conv: ConvId(0x1234_5678_9abc_def0_1122_3344_5566_7788),
        seq: 4242,
        message_id: 250_389_905_841_062_912,
        from: "alice".into(),
        from_device: "phone".into(),
        ts: 1_795_387_205_572,
        kind: MsgKind::Text,
        body: vec![b'x'; 64],
        client_msg_id: "c-1029".into(),
    }
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let frame = ServerFrame::Msg(msg());
    let send = ClientFrame::Send(Send {
        client_msg_id: "c-1029".into(),
        target: Target::User("bob".into()),
        body: vec![b'x'; 64],
        kind: MsgKind::Text,
    });
    for enc in [Encoding::Json, Encoding::FlatBuffers] {
        let mut out = Vec::with_capacity(512);
        g.bench_function(BenchmarkId::new("encode_msg", format!("{enc:?}")), |b| {
            b.iter(|| {
                out.clear();
                enc.encode_server(&frame, &mut out);
                out.len()
            })
        });
        let bytes = match enc {
            Encoding::Json => json::encode_client(&send),
            Encoding::FlatBuffers => fb::encode_client(&send),
        };
        g.bench_function(BenchmarkId::new("decode_send", format!("{enc:?}")), |b| {
            b.iter(|| enc.decode_client(&bytes).unwrap())
        });
    }
    g.finish();
}

/// Sends `n` 64-byte messages from one executor to another, `batch` per channel item;
/// returns the time from the first send to the last receive.
fn hop(n: usize, batch: usize) -> Duration {
    let (tx, rx) = shared_channel::new_bounded::<Vec<[u8; 64]>>(1024);
    let rxh = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let rx = rx.connect().await;
            let mut got = 0;
            while got < n {
                got += rx.recv().await.expect("sender alive").len();
            }
            Instant::now()
        })
        .unwrap();
    let txh = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let tx = tx.connect().await;
            let start = Instant::now();
            let mut left = n;
            while left > 0 {
                let k = batch.min(left);
                tx.send(vec![[7u8; 64]; k]).await.expect("receiver alive");
                left -= k;
            }
            start
        })
        .unwrap();
    let start = txh.join().unwrap();
    rxh.join().unwrap() - start
}

fn mesh(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_hop");
    g.throughput(Throughput::Elements(1));
    for batch in [1usize, 16, 256] {
        g.bench_function(BenchmarkId::new("64B_messages_per_item", batch), |b| {
            b.iter_custom(|iters| {
                let n = (iters as usize).max(1000);
                hop(n, batch) * iters as u32 / n as u32
            })
        });
    }
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("local_fanout");
    let frame = ServerFrame::Msg(msg());
    for n in [1usize, 100, 5000] {
        let mut outs: Vec<Vec<u8>> = (0..n).map(|_| Vec::with_capacity(256)).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("encode_once_append_to", n), |b| {
            b.iter(|| {
                // What a destination shard does per stored message: encode the `msg`
                // frame once, append it to each recipient connection's output.
                let mut bytes = Vec::with_capacity(256);
                ws::write_frame_with(&mut bytes, OpCode::Data(Data::Binary), |o| {
                    Encoding::FlatBuffers.encode_server(&frame, o)
                });
                for o in outs.iter_mut() {
                    o.clear();
                    o.extend_from_slice(&bytes);
                }
            })
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    use storage::model::{StoredMessage, Write};
    use storage::Store;
    let mut g = c.benchmark_group("storage_commit_fsync");
    g.sample_size(20);
    let dir = tempfile::tempdir().unwrap();
    let s = storage::embedded::EmbeddedStore::open(dir.path()).unwrap();
    let mut seq = 0u64;
    for n in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("messages", n), |b| {
            b.iter(|| {
                let writes: Vec<Write> = (0..n)
                    .map(|_| {
                        seq += 1;
                        Write::Message {
                            conv: ConvId(1),
                            seq,
                            msg: StoredMessage {
                                message_id: seq,
                                from: "alice".into(),
                                from_device: "d".into(),
                                client_msg_id: format!("c{seq}"),
                                ts: seq,
                                kind: 0,
                                body: vec![b'x'; 64],
                            },
                        }
                    })
                    .collect();
                s.commit(&writes).unwrap()
            })
        });
    }
    g.finish();
}

fn jwt(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt_verify");
    let secret = b"bench-secret-0123456789abcdef";
    let v = switchboard::auth::Verifier::hs256(secret, 0);
    let token = switchboard::auth::mint(secret, "alice", Some("phone"), Duration::from_secs(3600)).unwrap();
    g.bench_function("HS256", |b| b.iter(|| v.verify(&token).unwrap()));
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let pem = std::fs::read(fixtures.join("ed25519-public.pem")).unwrap();
    let ed = switchboard::auth::Verifier::new(&switchboard::auth::KeySources {
        public_pem: Some(&pem),
        ..Default::default()
    })
    .unwrap();
    let key =
        jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(fixtures.join("ed25519-private.pem")).unwrap()).unwrap();
    let claims = serde_json::json!({"sub": "alice", "exp": shard::ids::now_ms() / 1000 + 3600});
    let ed_token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA), &claims, &key).unwrap();
    g.bench_function("EdDSA", |b| b.iter(|| ed.verify(&ed_token).unwrap()));
    g.finish();
}

criterion_group!(benches, codecs, mesh, fanout, store, jwt);
criterion_main!(benches);
