//! Micro-benchmarks (criterion): frame encode/decode in both encodings, one cross-shard
//! hop (unbatched and batched), local fan-out to N recipients, a storage append batch
//! (with its fdatasync), JWT verification, and permessage-deflate of one chat message.
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
        extra: None,
    }
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let frame = ServerFrame::Msg(msg());
    let send = ClientFrame::Send(Send {
        reply_to: None,
        target_seq: None,
        forward: None,
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

/// `n` new 64-byte messages of one conversation, numbered on from `seq`.
fn writes(n: usize, seq: &mut u64) -> Vec<storage::model::Write> {
    use storage::model::{StoredMessage, Write};
    (0..n)
        .map(|_| {
            *seq += 1;
            Write::Message {
                conv: ConvId(1),
                seq: *seq,
                msg: std::sync::Arc::new(StoredMessage {
                    ext: None,
                    message_id: *seq,
                    from: "alice".into(),
                    from_device: "d".into(),
                    client_msg_id: format!("c{seq}"),
                    ts: *seq,
                    kind: 0,
                    body: vec![b'x'; 64],
                }),
            }
        })
        .collect()
}

/// The group commit's storage costs: fjall with fdatasync (the path with the commit log
/// off), and with the log: encoding a record, its O_DSYNC direct write, and fjall's
/// unsynced apply behind it.
fn store(c: &mut Criterion) {
    use storage::Store;
    let dir = tempfile::tempdir().unwrap();
    let s = storage::embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap();
    let mut seq = 0u64;
    let mut g = c.benchmark_group("storage_commit_fsync");
    g.sample_size(20);
    for n in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("messages", n), |b| b.iter(|| s.commit(&writes(n, &mut seq)).unwrap()));
    }
    g.finish();
    let mut g = c.benchmark_group("storage_apply_unsynced");
    for n in [16usize, 128, 2048] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("messages", n), |b| b.iter(|| s.apply(&writes(n, &mut seq)).unwrap()));
    }
    g.finish();
    let mut g = c.benchmark_group("commit_log_encode");
    for n in [1usize, 16, 128] {
        let batch = writes(n, &mut seq);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("messages", n), |b| {
            b.iter(|| {
                let mut out = Vec::new();
                storage::log::encode_record(7, 0, &batch, storage::log::RECORD_ALIGN, &mut out).unwrap();
                out
            })
        });
    }
    g.finish();
    commit_log_write(c, &dir.path().join("log"));
}

/// One record appended to a zero-filled log file with one direct O_DSYNC write, as a
/// shard does (through glommio's `DmaFile`), 1 / 16 / 128 messages per record.
fn commit_log_write(c: &mut Criterion, path: &std::path::Path) {
    use glommio::io::{DmaFile, OpenOptions};
    const SIZE: u64 = 64 << 20;
    let ex = LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
    let file: std::rc::Rc<DmaFile> = ex.run(async {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(path)
            .await
            .unwrap();
        let mut zeros = f.alloc_dma_buffer(1 << 20);
        zeros.as_bytes_mut().fill(0);
        let zeros = std::rc::Rc::new(zeros);
        for k in 0..SIZE >> 20 {
            f.write_rc_at(zeros.clone(), k << 20).await.unwrap();
        }
        f.fdatasync().await.unwrap();
        std::rc::Rc::new(f)
    });
    let mut g = c.benchmark_group("commit_log_append_odsync");
    g.sample_size(20);
    let mut seq = 0u64;
    let mut pos = 0u64;
    for n in [1usize, 16, 128] {
        let mut record = Vec::new();
        storage::log::encode_record(7, 0, &writes(n, &mut seq), storage::log::RECORD_ALIGN, &mut record).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("messages", n), |b| {
            b.iter(|| {
                let len = record.len() as u64;
                if pos + len > SIZE {
                    pos = 0;
                }
                let at = pos;
                pos += len;
                let (file, bytes) = (file.clone(), &record);
                ex.run(async move {
                    let mut buf = file.alloc_dma_buffer(bytes.len());
                    buf.as_bytes_mut().copy_from_slice(bytes);
                    file.write_at(buf, at).await.unwrap()
                })
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

/// permessage-deflate as the gateway does it: one `msg` frame (JSON, a 200-byte text
/// body) compressed as a message of its own, and a client's compressed `send` inflated,
/// each with the shard's codec reset per message.
fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    let mut m = msg();
    m.body = b"hey, are we still on for dinner tonight? I booked the place near the station for \
        eight, the one with the garden. Let me know if that works or if you'd rather go later on.    "
        .to_vec();
    let mut frame = Vec::new();
    Encoding::Json.encode_server(&ServerFrame::Msg(m), &mut frame);
    let mut codec = switchboard::deflate::Codec::default();
    let mut z = Vec::with_capacity(1024);
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("compress_msg_json", |b| {
        b.iter(|| {
            z.clear();
            codec.compress(&frame, &mut z);
            z.len()
        })
    });
    z.clear();
    codec.compress(&frame, &mut z);
    let mut out = Vec::with_capacity(1024);
    g.bench_function("inflate_msg_json", |b| b.iter(|| codec.inflate(&z, 65_536, &mut out).map(|()| out.len())));
    eprintln!("deflate: a {}-byte msg frame compresses to {} bytes", frame.len(), z.len());
    g.finish();
}

criterion_group!(benches, codecs, mesh, fanout, store, jwt, deflate);
criterion_main!(benches);
