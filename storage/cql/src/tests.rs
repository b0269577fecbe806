use super::*;

#[test]
fn a_shard_past_its_in_flight_bound_is_refused_retryably_and_recovers() {
    let n = AtomicUsize::new(0);
    for _ in 0..3 {
        admit(&n, 3).unwrap();
    }
    let e = admit(&n, 3).unwrap_err();
    assert!(e.retryable(), "{e}");
    assert!(e.to_string().contains("cql_max_in_flight"), "{e}");
    assert_eq!(n.load(Ordering::Relaxed), 3, "a refusal takes no slot");
    n.fetch_sub(1, Ordering::Relaxed);
    admit(&n, 3).unwrap();
}

#[test]
fn errors_are_classified_retryable_or_permanent() {
    use scylla::errors::DbError;
    let timeout = ExecutionError::RequestTimeout(Duration::from_secs(1));
    assert_eq!(classify(&timeout), Failure::Timeout);
    assert!(to_store_error(&timeout).retryable());
    let db = |e: DbError| ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "x".into()));
    let unavailable = db(DbError::Unavailable { consistency: Consistency::LocalQuorum, required: 2, alive: 1 });
    assert_eq!(classify(&unavailable), Failure::Unavailable);
    assert!(to_store_error(&unavailable).retryable());
    let write_timeout = db(DbError::WriteTimeout {
        consistency: Consistency::LocalQuorum,
        received: 1,
        required: 2,
        write_type: scylla::errors::WriteType::Simple,
    });
    assert_eq!(classify(&write_timeout), Failure::Timeout);
    assert_eq!(classify(&db(DbError::Overloaded)), Failure::Unavailable);
    for permanent in [DbError::SyntaxError, DbError::Invalid, DbError::Unauthorized] {
        let e = db(permanent);
        assert_eq!(classify(&e), Failure::Permanent);
        assert!(!to_store_error(&e).retryable());
    }
    assert_eq!(classify(&ExecutionError::EmptyPlan), Failure::Unavailable);
}

#[test]
fn consistency_levels_parse_as_configured() {
    assert_eq!(parse_consistency("local_quorum"), Some(Consistency::LocalQuorum));
    assert_eq!(parse_consistency("QUORUM"), Some(Consistency::Quorum));
    assert_eq!(parse_consistency("one"), Some(Consistency::One));
    assert_eq!(parse_consistency("serial"), None);
    assert_eq!(parse_consistency(""), None);
}

#[test]
fn rows_map_to_the_stored_types() {
    let conv = ConvId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
    assert_eq!(conv_of(&conv_blob(conv)).unwrap(), conv);
    assert!(conv_of(&[1, 2, 3]).is_err());
    let m = StoredMessage {
        ext: None,
        message_id: 7,
        from: "alice".into(),
        from_device: "d".into(),
        client_msg_id: "c1".into(),
        ts: 9,
        kind: 0,
        body: b"hi".to_vec(),
    };
    assert_eq!(StoredMessage::decode(&encode(&m).unwrap()).unwrap(), m);
    let rec = UserRecord { last_seen: Some(5), hide_last_seen: true, receipts_off: false };
    assert_eq!(postcard::from_bytes::<UserRecord>(&encode(&rec).unwrap()).unwrap(), rec);
    let v = InboxValue::Muted(42);
    let back: InboxValue = postcard::from_bytes(&encode(&v).unwrap()).unwrap();
    assert_eq!(back.tag(), v.tag());
}

#[test]
fn metrics_render_every_statement_and_count_outcomes() {
    let m = Metrics::new(2);
    m.observe(Stmt::InsMessage, Duration::from_micros(800), None);
    m.observe(Stmt::InsMessage, Duration::from_millis(30), Some(Failure::Timeout));
    m.observe(Stmt::SelConv, Duration::from_millis(3), Some(Failure::Unavailable));
    m.in_flight(1).fetch_add(4, Ordering::Relaxed);
    assert_eq!(m.counts(Stmt::InsMessage), (1, 0, 1));
    assert_eq!(m.counts(Stmt::SelConv), (0, 1, 0));
    let mut out = String::new();
    m.render(&mut out);
    assert!(
        out.contains("switchboard_cql_requests_total{statement=\"insert_message\",outcome=\"timeout\"} 1"),
        "{out}"
    );
    assert!(
        out.contains("switchboard_cql_request_duration_seconds_bucket{statement=\"insert_message\",le=\"0.001\"} 1")
    );
    assert!(out.contains("switchboard_cql_request_duration_seconds_bucket{statement=\"insert_message\",le=\"0.05\"} 2"));
    assert!(out.contains("switchboard_cql_request_duration_seconds_count{statement=\"insert_message\"} 2"));
    assert!(out.contains("switchboard_cql_in_flight{shard=\"1\"} 4"));
    for s in Stmt::ALL {
        assert!(out.contains(&format!("statement=\"{}\"", s.name())), "{}", s.name());
    }
}

/// The nodes of the test cluster (`CQL_TEST_NODES`, set by the test command once it has
/// started one).
fn test_nodes() -> Vec<String> {
    let nodes = std::env::var("CQL_TEST_NODES").expect("CQL_TEST_NODES names the test cluster's nodes");
    nodes.split(',').map(str::to_owned).collect()
}

/// The test cluster's user and password (`CQL_TEST_CREDENTIALS=user:password`, set when
/// the test command starts its node with password authentication).
fn test_credentials() -> Option<(String, String)> {
    let v = std::env::var("CQL_TEST_CREDENTIALS").ok()?;
    let (u, p) = v.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// A fresh keyspace on the test cluster, replicated once per node there.
fn test_config(label: &str) -> Config {
    let nodes = test_nodes();
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    Config {
        credentials: test_credentials(),
        replication_factor: u32::try_from(nodes.len()).unwrap().min(3),
        keyspace: format!("sb_{label}_{}", unique % 1_000_000_000_000),
        nodes,
        ..Config::default()
    }
}

#[test]
#[ignore = "needs a CQL node: run by scripts/test with CQL_TEST_NODES"]
fn conformance_against_a_real_node() {
    let cfg = test_config("conf");
    let cluster = Cluster::connect(&cfg, 1).unwrap();
    // Every "reopen" of the suite is the same keyspace seen again.
    storage::conformance::run(|_dir| Box::new(cluster.partition(0)));
    let (ok, error, timeout) = cluster.metrics().counts(Stmt::InsMessage);
    assert!(ok > 0 && error == 0 && timeout == 0, "{ok} {error} {timeout}");
}

#[test]
#[ignore = "needs a CQL node: run by scripts/test with CQL_TEST_NODES"]
fn the_shard_count_is_recorded_and_enforced() {
    let cfg = test_config("shards");
    drop(Cluster::connect(&cfg, 2).unwrap());
    drop(Cluster::connect(&cfg, 2).unwrap());
    let e = Cluster::connect(&cfg, 3).err().expect("another shard count is refused");
    assert!(e.to_string().contains("created with 2 shards"), "{e}");
}

#[test]
#[ignore = "needs a CQL node: run by scripts/test with CQL_TEST_NODES"]
fn messages_across_buckets_page_and_reload_their_tail() {
    let cfg = test_config("buckets");
    let cluster = Cluster::connect(&cfg, 1).unwrap();
    let p = cluster.partition(0);
    let conv = ConvId(77);
    let msg = |i: u64| StoredMessage {
        ext: None,
        message_id: 10_000 + i,
        from: "alice".into(),
        from_device: "d".into(),
        client_msg_id: if i.is_multiple_of(3) { String::new() } else { format!("c{i}") },
        ts: i,
        kind: 0,
        body: format!("m{i}").into_bytes(),
    };
    // 2,100 messages span three buckets; commit them in uneven batches.
    let mut seq = 1;
    while seq <= 2100 {
        let end = (seq + 173).min(2101);
        let writes: Vec<Write> = (seq..end).map(|s| Write::Message { conv, seq: s, msg: msg(s).into() }).collect();
        Store::commit(&p, &writes).unwrap();
        seq = end;
    }
    let page = p.newest(conv, 0, u64::MAX, 50).unwrap();
    assert_eq!(page.messages.first().unwrap().0, 2051);
    assert_eq!(page.messages.last().unwrap().0, 2100);
    assert!(page.has_more);
    // A page straddling a bucket boundary is dense.
    let page = p.newest(conv, 0, 1030, 20).unwrap();
    assert_eq!(page.messages.iter().map(|m| m.0).collect::<Vec<_>>(), (1010..1030).collect::<Vec<_>>());
    // A sync after 1000 gets exactly the newer ones, across buckets.
    let page = p.newest(conv, 1000, u64::MAX, 5000).unwrap();
    assert_eq!(page.messages.len(), 1100);
    assert!(!page.has_more);
    assert_eq!(page.messages[0].1, msg(1001));
    // The tail: newest seq and the newest 1,200 keyed entries (of 1,400), across buckets.
    let tail = p.conv_tail(conv, 1200).unwrap();
    assert_eq!(tail.last_seq, 2100);
    assert_eq!(tail.recent.len(), 1200);
    assert!(tail.recent.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(tail.recent.iter().all(|(s, e)| !s.is_multiple_of(3) && e.message_id == 10_000 + s));
    assert_eq!(tail.recent.last().unwrap().1.key, dedupe_key("alice", "c2099"));
    // An edit rewrites a message in an old bucket; a message without a key clears the
    // dedupe row at its seq.
    let mut edited = msg(5);
    edited.body = b"edited".to_vec();
    Store::commit(&p, &[Write::Message { conv, seq: 5, msg: edited.clone().into() }]).unwrap();
    assert_eq!(p.newest(conv, 4, 6, 1).unwrap().messages[0].1, edited);
}

#[test]
#[ignore = "needs a CQL node: run by scripts/test with CQL_TEST_NODES"]
fn submissions_complete_on_the_driver_and_back_pressure_refuses() {
    let mut cfg = test_config("inflight");
    cfg.max_in_flight = 4;
    let cluster = Cluster::connect(&cfg, 1).unwrap();
    let p = cluster.partition(0);
    let conv = ConvId(9);
    // Submitting never blocks; the fifth of five submitted at once is refused.
    let futs: Vec<_> = (0..5).map(|_| p.submit_read(ReadReq::User { user: "u".into() })).collect();
    assert_eq!(p.in_flight(), 4);
    let done = p.handle.block_on(join_all(futs));
    assert_eq!(done.iter().filter(|r| r.is_ok()).count(), 4);
    let refused = done.iter().find_map(|r| r.as_ref().err()).expect("one refused");
    assert!(refused.retryable());
    assert_eq!(p.in_flight(), 0);
    assert_eq!(cluster.metrics().refused.load(Ordering::Relaxed), 1);
    // A commit's future resolves once durable; the read after it sees the message.
    let m = StoredMessage {
        ext: None,
        message_id: 1,
        from: "a".into(),
        from_device: "d".into(),
        client_msg_id: "x".into(),
        ts: 1,
        kind: 0,
        body: b"b".to_vec(),
    };
    let meta = storage::model::ConvMeta {
        kind: storage::model::ConvKind::Direct,
        members: vec!["a".into(), "b".into()],
        created: 1,
    };
    let writes: Arc<[Write]> = vec![Write::Conv { conv, meta }, Write::Message { conv, seq: 1, msg: m.into() }].into();
    p.handle.block_on(p.submit_commit(writes)).unwrap();
    match p.handle.block_on(p.submit_read(ReadReq::Conv { conv, dedupe: 10 })).unwrap() {
        ReadDone::Conv { tail, .. } => assert_eq!(tail.last_seq, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
#[ignore = "needs a CQL node with password authentication: run by scripts/test"]
fn wrong_or_missing_credentials_are_refused_with_the_reason() {
    let (user, _) = test_credentials().expect("CQL_TEST_CREDENTIALS names the node's user");
    let mut cfg = test_config("auth");
    cfg.connect_timeout = Duration::from_secs(10);
    cfg.credentials = Some((user, "not-the-password".into()));
    let e = Cluster::connect(&cfg, 1).err().expect("a wrong password is refused");
    assert!(e.to_string().to_ascii_lowercase().contains("authenticat"), "{e}");
    cfg.credentials = None;
    let e = Cluster::connect(&cfg, 1).err().expect("no credentials are refused");
    assert!(e.to_string().to_ascii_lowercase().contains("authenticat"), "{e}");
}

#[test]
#[ignore = "needs a CQL node accepting TLS: run by scripts/test with CQL_TEST_TLS_CA"]
fn tls_to_the_cluster_is_verified_against_the_configured_ca() {
    let ca = std::path::PathBuf::from(std::env::var("CQL_TEST_TLS_CA").expect("CQL_TEST_TLS_CA: the nodes' CA"));
    let mut cfg = test_config("tls");
    cfg.tls_ca = Some(ca);
    let cluster = Cluster::connect(&cfg, 1).unwrap();
    let p = cluster.partition(0);
    let rec = UserRecord { last_seen: Some(7), hide_last_seen: false, receipts_off: true };
    Store::commit(&p, &[Write::User { user: "tls".into(), record: rec }]).unwrap();
    assert_eq!(p.user_record("tls").unwrap(), rec);
    drop(p);
    drop(cluster);
    // A CA that did not sign the nodes' certificate: no connection at all.
    cfg.tls_ca = Some("/etc/ssl/certs/ca-certificates.crt".into());
    cfg.connect_timeout = Duration::from_secs(10);
    let e = Cluster::connect(&cfg, 1).err().expect("an unknown issuer is refused");
    assert!(e.to_string().to_ascii_lowercase().contains("certificate"), "{e}");
    // A file without a certificate is a configuration error.
    let empty = tempfile::NamedTempFile::new().unwrap();
    cfg.tls_ca = Some(empty.path().to_owned());
    let e = Cluster::connect(&cfg, 1).err().expect("no certificate");
    assert!(e.to_string().contains("no certificate"), "{e}");
}
