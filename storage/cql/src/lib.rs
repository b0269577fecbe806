//! Switchboard's ScyllaDB/Cassandra backend.
//!
//! # Where the driver runs
//! The `scylla` driver needs tokio; a shard's core runs glommio and must never block or
//! take a lock. So a [`Cluster`] owns a small tokio runtime of its own (`threads`, one or
//! two) and one dispatcher thread. A shard holds a [`Partition`]: it submits a read or a
//! commit over a bounded `crossbeam-channel` and gets back a future that a tokio
//! `oneshot` completes; awaiting it on glommio costs no thread, and the driver's thread
//! wakes the shard's task when the answer is there. Each shard has at most
//! `max_in_flight` requests submitted; past that a submission fails at once with a
//! retryable [`StoreError::Unavailable`], which the core answers with `internal`
//! (retryable), so back-pressure never becomes memory.
//!
//! Requests from one shard are pipelined: the writes of a commit run concurrently, each
//! conversation's messages of one bucket go in one single-partition batch together with
//! their dedupe rows (both or neither), and buckets of one conversation are written in
//! order, so what a failed commit leaves behind is always a prefix of its seqs.
//!
//! # Durability
//! A commit returns `Ok` only once every write succeeded at the configured consistency
//! (`LOCAL_QUORUM` by default). A failed or timed-out write fails the commit: the core
//! acknowledges nothing of it and answers `internal` (retryable); a resend is
//! deduplicated. Every statement is idempotent and marked so, so the driver's retry
//! policy may retry any of them.
//!
//! The same [`Partition`] also implements the synchronous [`storage::Store`] trait by
//! waiting for its own futures, for tools and for the conformance suite (never on a
//! shard's reactor).

pub mod metrics;
pub mod schema;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{ExecutionError, PagerExecutionError, RequestAttemptError};
use scylla::policies::retry::{DefaultRetryPolicy, RequestInfo, RetryDecision, RetryPolicy, RetrySession};
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
pub use scylla::statement::Consistency;
use storage::model::{
    dedupe_key, is_group, ConvMeta, CursorRecord, DedupeEntry, InboxEntry, InboxLast, InboxValue, MemberRow,
    StoredMessage, Tail, UserRecord, Write,
};
use storage::read::{ReadDone, ReadReq};
use storage::{Slice, Store, StoreError};
use wire::frame::ConvId;

pub use metrics::Metrics;
use schema::{as_big, bucket, from_big, Stmt, BUCKET};

/// How to reach the cluster and how to talk to it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace (created if missing).
    pub keyspace: String,
    /// Replication strategy class for a keyspace this creates.
    pub replication_class: String,
    /// Replication factor for a keyspace this creates.
    pub replication_factor: u32,
    /// Consistency of every read and write.
    pub consistency: Consistency,
    /// Username and password (both or neither).
    pub credentials: Option<(String, String)>,
    /// TLS to the cluster, trusting this CA (PEM).
    pub tls_ca: Option<PathBuf>,
    /// A request's deadline, retries included.
    pub request_timeout: Duration,
    /// How long connecting may take at start.
    pub connect_timeout: Duration,
    /// Requests one shard may have submitted at once.
    pub max_in_flight: usize,
    /// How long dedupe rows live (seconds).
    pub dedupe_ttl_secs: u32,
    /// Driver runtime threads.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "switchboard".into(),
            replication_class: "NetworkTopologyStrategy".into(),
            replication_factor: 3,
            consistency: Consistency::LocalQuorum,
            credentials: None,
            tls_ca: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            dedupe_ttl_secs: 30 * 24 * 3600,
            threads: 2,
        }
    }
}

/// Parses a consistency level as written in configuration (`local_quorum`, `quorum`,
/// `one`, `all`, ...).
pub fn parse_consistency(s: &str) -> Option<Consistency> {
    Some(match s.to_ascii_lowercase().as_str() {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

/// A connection to the cluster, shared by every shard of the process.
pub struct Cluster {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
    jobs: Option<crossbeam_channel::Sender<Job>>,
    dispatcher: Option<std::thread::JoinHandle<()>>,
    max_in_flight: usize,
}

/// What every request needs: the session, its prepared statements and the metrics.
struct Inner {
    session: Session,
    stmts: Vec<PreparedStatement>,
    ttl: i32,
    metrics: Metrics,
}

/// One submitted request.
struct Job {
    part: i32,
    work: Work,
    in_flight: Arc<AtomicUsize>,
}

enum Work {
    Read(ReadReq, tokio::sync::oneshot::Sender<Result<ReadDone, StoreError>>),
    Commit(Arc<[Write]>, tokio::sync::oneshot::Sender<Result<(), StoreError>>),
}

impl Cluster {
    /// Connects, creates or migrates the schema, checks (or records) the shard count
    /// and prepares every statement. Blocks the calling thread (at start-up).
    pub fn connect(cfg: &Config, shards: usize) -> Result<Cluster, StoreError> {
        if !schema::valid_keyspace(&cfg.keyspace) {
            return Err(StoreError::Layout(format!(
                "cql_keyspace {:?} is not a valid keyspace name (letters, digits, _)",
                cfg.keyspace
            )));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads.max(1))
            .thread_name("cql-driver")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the CQL driver runtime: {e}")))?;
        let metrics = Metrics::new(shards);
        let inner = rt.block_on(async {
            let session = tokio::time::timeout(cfg.connect_timeout, session(cfg, &metrics)).await.map_err(|_| {
                StoreError::Unavailable(format!(
                    "no CQL node of {:?} answered within {:?}",
                    cfg.nodes, cfg.connect_timeout
                ))
            })??;
            migrate(&session, cfg, shards).await?;
            let mut stmts = Vec::with_capacity(Stmt::ALL.len());
            for s in Stmt::ALL {
                let mut p = session
                    .prepare(s.text(&cfg.keyspace))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("cannot prepare {}: {e}", s.name())))?;
                p.set_is_idempotent(true);
                stmts.push(p);
            }
            let ttl = i32::try_from(cfg.dedupe_ttl_secs).unwrap_or(i32::MAX);
            Ok::<_, StoreError>(Inner { session, stmts, ttl, metrics })
        })?;
        let inner = Arc::new(inner);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.max_in_flight.saturating_mul(shards).max(1));
        let handle = rt.handle().clone();
        let for_jobs = inner.clone();
        let dispatcher = std::thread::Builder::new()
            .name("cql-dispatch".into())
            .spawn(move || {
                // Ends when every partition (sender) is gone.
                for job in rx.iter() {
                    handle.spawn(run(for_jobs.clone(), job));
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the CQL dispatcher: {e}")))?;
        Ok(Cluster {
            inner,
            rt: Some(rt),
            jobs: Some(tx),
            dispatcher: Some(dispatcher),
            max_in_flight: cfg.max_in_flight.max(1),
        })
    }

    /// The view of shard `part`'s data (its conversations and users).
    pub fn partition(&self, part: usize) -> Partition {
        let rt = self.rt.as_ref().expect("runtime lives as long as the cluster");
        Partition {
            inner: self.inner.clone(),
            handle: rt.handle().clone(),
            jobs: self.jobs.clone().expect("sender lives as long as the cluster"),
            part: i32::try_from(part).unwrap_or(i32::MAX),
            in_flight: self.inner.metrics.in_flight(part),
            max_in_flight: self.max_in_flight,
        }
    }

    /// The driver's counters, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A shareable handle on the metrics (they outlive nothing: read them while the
    /// cluster is up).
    pub fn metrics_handle(&self) -> Arc<dyn Fn(&mut String) + Send + Sync> {
        let inner = self.inner.clone();
        Arc::new(move |out: &mut String| inner.metrics.render(out))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The dispatcher ends once every sender is gone (partitions hold clones: they
        // must be dropped first, as the shards are).
        self.jobs = None;
        if let Some(d) = self.dispatcher.take() {
            let _ = d.join();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

async fn session(cfg: &Config, metrics: &Metrics) -> Result<Session, StoreError> {
    let profile = ExecutionProfile::builder()
        .consistency(cfg.consistency)
        .request_timeout(Some(cfg.request_timeout))
        .retry_policy(Arc::new(CountingRetry { counter: metrics.retries.clone() }))
        .build();
    let mut b = SessionBuilder::new()
        .known_nodes(&cfg.nodes)
        .connection_timeout(cfg.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some((user, pass)) = &cfg.credentials {
        b = b.user(user, pass);
    }
    if let Some(ca) = &cfg.tls_ca {
        b = b.tls_context(Some(tls_config(ca)?));
    }
    b.build().await.map_err(|e| StoreError::Unavailable(format!("cannot connect to {:?}: {e}", cfg.nodes)))
}

/// A rustls client configuration trusting the CA certificates in `ca` (PEM).
fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    let bad = |e: String| StoreError::Layout(format!("cql_tls_ca {}: {e}", ca.display()));
    let pem = std::fs::read(ca).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Creates the keyspace, applies the schema files newer than the recorded version and
/// checks (or records) the shard count.
async fn migrate(session: &Session, cfg: &Config, shards: usize) -> Result<(), StoreError> {
    let ks = &cfg.keyspace;
    let ddl = |e: ExecutionError| StoreError::Unavailable(format!("schema change failed: {e}"));
    session
        .query_unpaged(schema::create_keyspace(ks, &cfg.replication_class, cfg.replication_factor), ())
        .await
        .map_err(ddl)?;
    // The meta table comes with version 1; until it exists the version is 0.
    let recorded = |key: &'static str| {
        let q = format!("SELECT value FROM {ks}.meta WHERE key = ?");
        async move {
            match session.query_unpaged(q, (key,)).await {
                Ok(r) => rows::<(i64,)>(r).map(|v| v.first().map(|r| r.0)),
                Err(_) => Ok(None),
            }
        }
    };
    let mut version = recorded("schema_version").await?.unwrap_or(0);
    for (v, text) in schema::FILES {
        if *v <= version {
            continue;
        }
        for stmt in schema::statements(text, ks) {
            session.query_unpaged(stmt, ()).await.map_err(ddl)?;
        }
        session.await_schema_agreement().await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let q = format!("INSERT INTO {ks}.meta (key, value) VALUES ('schema_version', ?)");
        session.query_unpaged(q, (*v,)).await.map_err(ddl)?;
        version = *v;
    }
    if version > schema::latest() {
        return Err(StoreError::Layout(format!(
            "keyspace {ks} has schema version {version}; this build knows up to {}",
            schema::latest()
        )));
    }
    let n = i64::try_from(shards).unwrap_or(i64::MAX);
    match recorded("shards").await? {
        Some(recorded) if recorded != n => Err(StoreError::Layout(format!(
            "keyspace {ks} was created with {recorded} shards; start with --shards {recorded} \
             (re-sharding is not supported yet)"
        ))),
        Some(_) => Ok(()),
        None => {
            let q = format!("INSERT INTO {ks}.meta (key, value) VALUES ('shards', ?)");
            session.query_unpaged(q, (n,)).await.map_err(ddl).map(|_| ())
        }
    }
}

/// The driver's default retry policy, counting its retries.
#[derive(Debug)]
struct CountingRetry {
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl RetryPolicy for CountingRetry {
    fn new_session(&self) -> Box<dyn RetrySession> {
        Box::new(CountingSession { inner: DefaultRetryPolicy::new().new_session(), counter: self.counter.clone() })
    }
}

struct CountingSession {
    inner: Box<dyn RetrySession>,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl RetrySession for CountingSession {
    fn decide_should_retry(&mut self, info: RequestInfo) -> RetryDecision {
        let d = self.inner.decide_should_retry(info);
        if matches!(d, RetryDecision::RetrySameTarget(_) | RetryDecision::RetryNextTarget(_)) {
            self.counter.fetch_add(1, Ordering::Relaxed);
        }
        d
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// Why a request failed, as the core needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The cluster did not answer in time (the write may or may not have happened).
    Timeout,
    /// Not enough replicas, a connection broke, an overloaded node: retrying may work.
    Unavailable,
    /// The statement itself is wrong (a bug): retrying will not help.
    Permanent,
}

/// Classifies a driver error.
pub fn classify(e: &ExecutionError) -> Failure {
    use scylla::errors::DbError;
    match e {
        ExecutionError::RequestTimeout(_) => Failure::Timeout,
        ExecutionError::BadQuery(_) => Failure::Permanent,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => match db {
            DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => Failure::Timeout,
            DbError::SyntaxError
            | DbError::Invalid
            | DbError::AlreadyExists { .. }
            | DbError::Unauthorized
            | DbError::ConfigError
            | DbError::ProtocolError
            | DbError::AuthenticationError => Failure::Permanent,
            _ => Failure::Unavailable,
        },
        ExecutionError::LastAttemptError(RequestAttemptError::SerializationError(_)) => Failure::Permanent,
        _ => Failure::Unavailable,
    }
}

fn to_store_error(e: &ExecutionError) -> StoreError {
    match classify(e) {
        Failure::Permanent => StoreError::Corrupt(format!("CQL statement refused: {e}")),
        Failure::Timeout => StoreError::Unavailable(format!("CQL request timed out: {e}")),
        Failure::Unavailable => StoreError::Unavailable(format!("CQL request failed: {e}")),
    }
}

fn decode_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("unexpected CQL result: {e}"))
}

/// The rows of a result, as `R`.
fn rows<R>(r: QueryResult) -> Result<Vec<R>, StoreError>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = r.into_rows_result().map_err(decode_err)?;
    let out: Result<Vec<R>, _> = rows.rows::<R>().map_err(decode_err)?.collect();
    out.map_err(decode_err)
}

fn conv_blob(conv: ConvId) -> [u8; 16] {
    conv.to_be_bytes()
}

fn conv_of(b: &[u8]) -> Result<ConvId, StoreError> {
    let a: [u8; 16] = b.try_into().map_err(|_| decode_err("a conversation id is not 16 bytes"))?;
    Ok(ConvId(u128::from_be_bytes(a)))
}

/// A record stored as a blob, in the embedded store's encoding (postcard; read back
/// with the versioned decoders of [`storage::model`]).
fn encode(v: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Runs one submitted job on the driver runtime and answers it.
async fn run(inner: Arc<Inner>, job: Job) {
    let Job { part, work, in_flight } = job;
    match work {
        Work::Read(req, tx) => {
            let r = inner.read(part, &req).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(r);
        }
        Work::Commit(writes, tx) => {
            let r = inner.commit(part, &writes).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(r);
        }
    }
}

impl Inner {
    fn stmt(&self, s: Stmt) -> &PreparedStatement {
        &self.stmts[s.index()]
    }

    /// Runs a prepared statement, counting it by outcome and latency.
    async fn exec(&self, s: Stmt, values: impl SerializeRow) -> Result<QueryResult, StoreError> {
        let start = Instant::now();
        let r = self.session.execute_unpaged(self.stmt(s), values).await;
        self.metrics.observe(s, start.elapsed(), r.as_ref().err().map(classify));
        r.map_err(|e| to_store_error(&e))
    }

    /// Runs a prepared read of a whole partition page by page, collecting its rows.
    async fn exec_all<R>(&self, s: Stmt, values: impl SerializeRow) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let start = Instant::now();
        let r: Result<Vec<R>, StoreError> = async {
            let pager = self
                .session
                .execute_iter(self.stmt(s).clone(), values)
                .await
                .map_err(|e: PagerExecutionError| StoreError::Unavailable(e.to_string()))?;
            let stream = pager.rows_stream::<R>().map_err(decode_err)?;
            stream.try_collect().await.map_err(|e| StoreError::Unavailable(format!("CQL paging failed: {e}")))
        }
        .await;
        let failure = r.as_ref().err().map(|_| Failure::Unavailable);
        self.metrics.observe(s, start.elapsed(), failure);
        r
    }

    /// Runs one unlogged batch of `s` with `rows` (one partition: atomic).
    async fn batch<V: SerializeRow>(&self, parts: Vec<(Stmt, V)>) -> Result<(), StoreError> {
        let Some(first) = parts.first().map(|p| p.0) else { return Ok(()) };
        let mut b = Batch::new(BatchType::Unlogged);
        b.set_is_idempotent(true);
        let mut values = Vec::with_capacity(parts.len());
        for (s, v) in parts {
            b.append_statement(self.stmt(s).clone());
            values.push(v);
        }
        let start = Instant::now();
        let r = self.session.batch(&b, values).await;
        self.metrics.observe(first, start.elapsed(), r.as_ref().err().map(classify));
        r.map(|_| ()).map_err(|e| to_store_error(&e))
    }

    // ---- writes ----

    /// Applies `writes`. `Ok` once all of them succeeded at the configured consistency.
    async fn commit(&self, part: i32, writes: &[Write]) -> Result<(), StoreError> {
        // Messages grouped by conversation (in order), then by bucket.
        let mut convs: Vec<(ConvId, Vec<(u64, &StoredMessage)>)> = Vec::new();
        let mut others = Vec::new();
        for w in writes {
            match w {
                Write::Message { conv, seq, msg } => match convs.iter_mut().find(|c| c.0 == *conv) {
                    Some(c) => c.1.push((*seq, msg)),
                    None => convs.push((*conv, vec![(*seq, msg)])),
                },
                w => others.push(self.write_one(part, w)),
            }
        }
        let messages = convs.into_iter().map(|(conv, msgs)| self.write_messages(conv, msgs));
        let (a, b) = futures_util::future::join(join_all(messages), join_all(others)).await;
        for r in a.into_iter().chain(b) {
            r?;
        }
        Ok(())
    }

    /// One conversation's messages: a bucket's marker first when the batch starts a
    /// bucket, then one batch (messages with their dedupe rows) per bucket, in order.
    async fn write_messages(&self, conv: ConvId, mut msgs: Vec<(u64, &StoredMessage)>) -> Result<(), StoreError> {
        msgs.sort_by_key(|m| m.0);
        let c = conv_blob(conv);
        let mut i = 0;
        while i < msgs.len() {
            let b = bucket(msgs[i].0);
            let end = msgs[i..].iter().position(|m| bucket(m.0) != b).map_or(msgs.len(), |p| i + p);
            if msgs[i..end].iter().any(|m| m.0.is_multiple_of(BUCKET) || m.0 == 1) {
                self.exec(Stmt::InsBucket, (&c[..], b)).await?;
            }
            let mut parts: Vec<(Stmt, BatchRow)> = Vec::with_capacity(2 * (end - i));
            for (seq, m) in &msgs[i..end] {
                let body = postcard::to_allocvec(*m).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                parts.push((Stmt::InsMessage, BatchRow::Message(c.to_vec(), b, as_big(*seq), body)));
                let key = if m.client_msg_id.is_empty() {
                    Vec::new()
                } else {
                    dedupe_key(&m.from, &m.client_msg_id).to_be_bytes().to_vec()
                };
                let row = (c.to_vec(), b, as_big(*seq), key, as_big(m.message_id), as_big(m.ts), self.ttl);
                parts.push((Stmt::InsDedupe, BatchRow::Dedupe(row)));
            }
            self.batch(parts).await?;
            i = end;
        }
        Ok(())
    }

    /// Every write but a message.
    async fn write_one(&self, part: i32, w: &Write) -> Result<(), StoreError> {
        match w {
            Write::Conv { conv, meta } => {
                let c = conv_blob(*conv);
                let mut all = vec![self.exec(Stmt::InsConv, (&c[..], encode(meta)?)).await.map(|_| ())];
                let idx = meta.members.iter().map(|u| self.exec(Stmt::InsUserConv, (u.as_str(), part, &c[..])));
                all.extend(join_all(idx).await.into_iter().map(|r| r.map(|_| ())));
                all.into_iter().collect()
            }
            Write::Unindex { conv, user } => {
                self.exec(Stmt::DelUserConv, (user.as_str(), part, &conv_blob(*conv)[..])).await.map(|_| ())
            }
            Write::Cursor { conv, user, cursor } => {
                let v = (
                    &conv_blob(*conv)[..],
                    user.as_str(),
                    as_big(cursor.delivered),
                    as_big(cursor.read),
                    cursor.private,
                );
                self.exec(Stmt::InsCursor, v).await.map(|_| ())
            }
            Write::User { user, record } => {
                self.exec(Stmt::InsUser, (user.as_str(), encode(record)?)).await.map(|_| ())
            }
            Write::Inbox { user, conv, at, value } => {
                let tag = i8::from_ne_bytes([value.tag()]);
                let v = (user.as_str(), &conv_blob(*conv)[..], tag, as_big(*at), encode(value)?);
                self.exec(Stmt::InsInbox, v).await.map(|_| ())
            }
            Write::Member { conv, user, row } => {
                let c = conv_blob(*conv);
                let (a, b) = futures_util::future::join(
                    self.exec(Stmt::InsUserConv, (user.as_str(), part, &c[..])),
                    self.exec(Stmt::InsMember, (&c[..], user.as_str(), as_big(row.joined), as_big(row.left))),
                )
                .await;
                a.and(b).map(|_| ())
            }
            Write::GroupLast { conv, at, last } => {
                let v = (&conv_blob(*conv)[..], part, as_big(*at), encode(last)?);
                self.exec(Stmt::InsGroupLast, v).await.map(|_| ())
            }
            Write::Hide { conv, user, seq } => {
                self.exec(Stmt::InsHidden, (&conv_blob(*conv)[..], user.as_str(), as_big(*seq))).await.map(|_| ())
            }
            Write::Reaction { conv, seq, user, emoji } => {
                let (c, b, s) = (conv_blob(*conv), bucket(*seq), as_big(*seq));
                if emoji.is_empty() {
                    self.exec(Stmt::DelReaction, (&c[..], b, s, user.as_str())).await.map(|_| ())
                } else {
                    self.exec(Stmt::InsReaction, (&c[..], b, s, user.as_str(), emoji.as_str())).await.map(|_| ())
                }
            }
            Write::Message { .. } => Err(StoreError::Corrupt("messages are written by write_messages".into())),
        }
    }

    // ---- reads ----

    async fn read(&self, part: i32, req: &ReadReq) -> Result<ReadDone, StoreError> {
        Ok(match req {
            ReadReq::Conv { conv, dedupe } => {
                let meta = self.conv_meta(*conv).await?;
                let (tail, cursors, rows) = match &meta {
                    Some(m) => {
                        let group = matches!(m.kind, storage::model::ConvKind::Group(_));
                        let members = async {
                            if group {
                                self.members(*conv).await
                            } else {
                                Ok(Vec::new())
                            }
                        };
                        let (t, c, r) =
                            futures_util::future::join3(self.conv_tail(*conv, *dedupe), self.cursors(*conv), members)
                                .await;
                        (t?, c?, r?)
                    }
                    None => (Tail::default(), Vec::new(), Vec::new()),
                };
                ReadDone::Conv { meta: meta.map(Box::new), tail, cursors, rows }
            }
            ReadReq::Page { conv, after, before, limit, viewer } => {
                let mut slice = self.newest(*conv, *after, *before, *limit).await?;
                self.decorate(*conv, &mut slice, viewer).await?;
                ReadDone::Page(slice)
            }
            ReadReq::Sync { user, points, per_conv } => {
                let convs = self.user_convs(part, user).await?;
                let pages = convs.into_iter().map(|conv| async move {
                    let after = points.iter().find(|p| p.conv == conv).map_or(0, |p| p.seq);
                    let (after, before) = match self.member(conv, user).await? {
                        Some(row) => row.clamp(after, u64::MAX),
                        None => (after, u64::MAX),
                    };
                    let mut slice = self.newest(conv, after, before, *per_conv).await?;
                    self.decorate(conv, &mut slice, user).await?;
                    Ok::<_, StoreError>((conv, slice))
                });
                let mut out = Vec::new();
                for r in join_all(pages).await {
                    let (conv, slice) = r?;
                    if !slice.messages.is_empty() {
                        out.push((conv, slice));
                    }
                }
                ReadDone::Sync(out)
            }
            ReadReq::User { user } => ReadDone::User(self.user_record(user).await?),
            ReadReq::Member { conv, user } => ReadDone::Member(self.member(*conv, user).await?),
            ReadReq::Inbox { user } => ReadDone::Inbox(self.inbox(part, user).await?),
        })
    }

    /// Drops what `viewer` hid and adds the reactions, as the embedded store's reads do.
    async fn decorate(&self, conv: ConvId, slice: &mut Slice, viewer: &str) -> Result<(), StoreError> {
        let Some((lo, hi)) = storage::read::bounds(slice) else { return Ok(()) };
        if !viewer.is_empty() {
            storage::read::drop_hidden(slice, &self.hidden(conv, viewer, lo, hi).await?);
        }
        let Some((lo, hi)) = storage::read::bounds(slice) else { return Ok(()) };
        storage::read::add_reactions(slice, &self.reactions(conv, lo, hi).await?, viewer);
        Ok(())
    }

    async fn conv_meta(&self, conv: ConvId) -> Result<Option<ConvMeta>, StoreError> {
        let r = rows::<(Vec<u8>,)>(self.exec(Stmt::SelConv, (&conv_blob(conv)[..],)).await?)?;
        match r.first() {
            None => Ok(None),
            Some((v,)) => ConvMeta::decode(v).map(Some).map_err(decode_err),
        }
    }

    /// The newest bucket a conversation wrote (`None`: no message).
    async fn top_bucket(&self, conv: ConvId) -> Result<Option<i64>, StoreError> {
        let r = rows::<(i64,)>(self.exec(Stmt::SelTopBucket, (&conv_blob(conv)[..],)).await?)?;
        Ok(r.first().map(|r| r.0))
    }

    async fn newest(&self, conv: ConvId, after: u64, before: u64, limit: usize) -> Result<Slice, StoreError> {
        if before <= after.saturating_add(1) {
            return Ok(Slice::default());
        }
        let Some(top) = self.top_bucket(conv).await? else { return Ok(Slice::default()) };
        let c = conv_blob(conv);
        let lowest = bucket(after.saturating_add(1));
        let mut b = top.min(bucket(before - 1));
        let mut messages: Vec<(u64, StoredMessage)> = Vec::new();
        let want = limit.saturating_add(1);
        while b >= lowest && messages.len() < want {
            let left = i32::try_from(want - messages.len()).unwrap_or(i32::MAX);
            let q = (&c[..], b, as_big(after), as_big(before), left);
            for (seq, body) in rows::<(i64, Vec<u8>)>(self.exec(Stmt::SelMessages, q).await?)? {
                messages.push((from_big(seq), StoredMessage::decode(&body).map_err(decode_err)?));
            }
            b -= 1;
        }
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(Slice { messages, has_more })
    }

    async fn conv_tail(&self, conv: ConvId, limit: usize) -> Result<Tail, StoreError> {
        let Some(top) = self.top_bucket(conv).await? else { return Ok(Tail::default()) };
        let c = conv_blob(conv);
        // The newest stored seq: the top bucket's first row (a bucket whose marker was
        // written by a commit that failed before its messages may be empty).
        let mut b = top;
        let mut last_seq = 0;
        while b >= 0 {
            if let Some((s,)) = rows::<(i64,)>(self.exec(Stmt::SelLastSeq, (&c[..], b)).await?)?.first() {
                last_seq = from_big(*s);
                break;
            }
            b -= 1;
        }
        // The dedupe rows of the newest `limit` messages with a key, from the buckets
        // those messages can be in.
        let mut recent = Vec::new();
        // A bucket holds at most BUCKET rows, so each query reads a whole bucket; rows
        // without a key (group events) may need one bucket more.
        let floor = b.saturating_sub(i64::try_from(limit.div_ceil(BUCKET as usize) + 1).unwrap_or(i64::MAX));
        while b >= 0 && b >= floor && recent.len() < limit && last_seq > 0 {
            let q = (&c[..], b, as_big(last_seq), BUCKET as i32);
            for (seq, key, message_id, ts) in rows::<(i64, Vec<u8>, i64, i64)>(self.exec(Stmt::SelDedupe, q).await?)? {
                if recent.len() == limit {
                    break;
                }
                let Ok(k) = <[u8; 16]>::try_from(key.as_slice()) else { continue };
                let e = DedupeEntry { key: u128::from_be_bytes(k), message_id: from_big(message_id), ts: from_big(ts) };
                recent.push((from_big(seq), e));
            }
            b -= 1;
        }
        recent.reverse();
        Ok(Tail { last_seq, recent })
    }

    async fn user_convs(&self, part: i32, user: &str) -> Result<Vec<ConvId>, StoreError> {
        let r = self.exec_all::<(Vec<u8>,)>(Stmt::SelUserConvs, (user.to_owned(), part)).await?;
        r.iter().map(|(c,)| conv_of(c)).collect()
    }

    async fn cursors(&self, conv: ConvId) -> Result<Vec<(String, CursorRecord)>, StoreError> {
        let r = self.exec_all::<(String, i64, i64, bool)>(Stmt::SelCursors, (conv_blob(conv).to_vec(),)).await?;
        Ok(r.into_iter()
            .map(|(u, d, rd, p)| (u, CursorRecord { delivered: from_big(d), read: from_big(rd), private: p }))
            .collect())
    }

    async fn user_record(&self, user: &str) -> Result<UserRecord, StoreError> {
        let r = rows::<(Vec<u8>,)>(self.exec(Stmt::SelUser, (user,)).await?)?;
        match r.first() {
            None => Ok(UserRecord::default()),
            Some((v,)) => postcard::from_bytes(v).map_err(decode_err),
        }
    }

    async fn members(&self, conv: ConvId) -> Result<Vec<(String, MemberRow)>, StoreError> {
        let r = self.exec_all::<(String, i64, i64)>(Stmt::SelMembers, (conv_blob(conv).to_vec(),)).await?;
        Ok(r.into_iter().map(|(u, j, l)| (u, MemberRow { joined: from_big(j), left: from_big(l) })).collect())
    }

    async fn member(&self, conv: ConvId, user: &str) -> Result<Option<MemberRow>, StoreError> {
        let r = rows::<(i64, i64)>(self.exec(Stmt::SelMember, (&conv_blob(conv)[..], user)).await?)?;
        Ok(r.first().map(|(j, l)| MemberRow { joined: from_big(*j), left: from_big(*l) }))
    }

    async fn reactions(&self, conv: ConvId, lo: u64, hi: u64) -> Result<Vec<(u64, String, String)>, StoreError> {
        let c = conv_blob(conv);
        let mut out = Vec::new();
        let mut last = bucket(hi);
        if last > bucket(lo) {
            // A wide range ends at the newest bucket written.
            let Some(top) = self.top_bucket(conv).await? else { return Ok(out) };
            last = last.min(top);
        }
        for b in bucket(lo)..=last {
            let q = (&c[..], b, as_big(lo), as_big(hi));
            for (seq, user, emoji) in rows::<(i64, String, String)>(self.exec(Stmt::SelReactions, q).await?)? {
                out.push((from_big(seq), user, emoji));
            }
        }
        Ok(out)
    }

    async fn hidden(&self, conv: ConvId, user: &str, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        let q = (&conv_blob(conv)[..], user, as_big(lo), as_big(hi));
        let r = rows::<(i64,)>(self.exec(Stmt::SelHidden, q).await?)?;
        Ok(r.into_iter().map(|(s,)| from_big(s)).collect())
    }

    async fn group_last(&self, part: i32, conv: ConvId) -> Result<Option<(u64, InboxLast)>, StoreError> {
        let r = rows::<(i64, Vec<u8>)>(self.exec(Stmt::SelGroupLast, (&conv_blob(conv)[..], part)).await?)?;
        match r.first() {
            None => Ok(None),
            Some((at, v)) => Ok(Some((from_big(*at), postcard::from_bytes(v).map_err(decode_err)?))),
        }
    }

    async fn inbox(&self, part: i32, user: &str) -> Result<Vec<InboxEntry>, StoreError> {
        let r = self.exec_all::<(Vec<u8>, i8, i64, Vec<u8>)>(Stmt::SelInbox, (user.to_owned(),)).await?;
        let mut out: Vec<InboxEntry> = Vec::new();
        for (c, _tag, at, v) in r {
            let conv = conv_of(&c)?;
            let value: InboxValue = postcard::from_bytes(&v).map_err(decode_err)?;
            if out.last().is_none_or(|e| e.conv != conv) {
                out.push(InboxEntry { conv, ..InboxEntry::default() });
            }
            if let Some(e) = out.last_mut() {
                e.apply(from_big(at), value);
            }
        }
        let groups = out.iter().enumerate().filter(|(_, e)| is_group(e.conv) && e.in_group()).map(|(i, e)| (i, e.conv));
        let lasts = join_all(groups.map(|(i, conv)| async move { (i, self.group_last(part, conv).await) })).await;
        for (i, last) in lasts {
            if let Some((at, last)) = last? {
                out[i].with_group_last(at, &last);
            }
        }
        Ok(out)
    }
}

/// A row of a message batch: a message or its dedupe row.
enum BatchRow {
    Message(Vec<u8>, i64, i64, Vec<u8>),
    Dedupe((Vec<u8>, i64, i64, Vec<u8>, i64, i64, i32)),
}

impl SerializeRow for BatchRow {
    fn serialize(
        &self,
        ctx: &scylla::serialize::row::RowSerializationContext<'_>,
        writer: &mut scylla::serialize::writers::RowWriter,
    ) -> Result<(), scylla::serialize::SerializationError> {
        match self {
            BatchRow::Message(c, b, s, m) => (c, b, s, m).serialize(ctx, writer),
            BatchRow::Dedupe(row) => row.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Shard `part`'s view of the cluster: what a shard submits its reads and commits to.
pub struct Partition {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    jobs: crossbeam_channel::Sender<Job>,
    part: i32,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

impl Partition {
    fn submit(&self, work: Work) -> Result<(), StoreError> {
        if let Err(e) = admit(&self.in_flight, self.max_in_flight) {
            self.inner.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let job = Job { part: self.part, work, in_flight: self.in_flight.clone() };
        self.jobs.try_send(job).map_err(|_| {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            StoreError::Unavailable("the CQL driver is not taking requests".into())
        })
    }

    /// Submits a read; the future completes on the driver's thread. Never blocks.
    pub fn submit_read(
        &self,
        req: ReadReq,
    ) -> impl std::future::Future<Output = Result<ReadDone, StoreError>> + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let submitted = self.submit(Work::Read(req, tx));
        async move {
            submitted?;
            rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the CQL driver stopped".into())))
        }
    }

    /// Submits a commit; the future completes once every write succeeded (or one
    /// failed). Never blocks.
    pub fn submit_commit(
        &self,
        writes: Arc<[Write]>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let submitted = self.submit(Work::Commit(writes, tx));
        async move {
            submitted?;
            rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the CQL driver stopped".into())))
        }
    }

    /// Requests submitted and not answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Waits for a future of this partition from a thread outside the driver runtime.
    fn wait<T>(&self, f: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.handle.block_on(f)
    }
}

/// Takes a slot for one request of a shard that has `in_flight` out, or refuses
/// (retryably) when `max` are out already.
fn admit(in_flight: &AtomicUsize, max: usize) -> Result<(), StoreError> {
    let n = in_flight.fetch_add(1, Ordering::Relaxed);
    if n >= max {
        in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(StoreError::Unavailable(format!("{max} CQL requests in flight on this shard (cql_max_in_flight)")));
    }
    Ok(())
}

/// Blocking access, for tools and the conformance suite: each call waits for the same
/// requests a shard submits. Never call it on a shard's reactor or a driver thread.
impl Store for Partition {
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.wait(self.submit_commit(writes.to_vec().into()))
    }

    fn conv_meta(&self, conv: ConvId) -> Result<Option<ConvMeta>, StoreError> {
        self.wait(self.inner.conv_meta(conv))
    }

    fn newest(&self, conv: ConvId, after: u64, before: u64, limit: usize) -> Result<Slice, StoreError> {
        self.wait(self.inner.newest(conv, after, before, limit))
    }

    fn user_convs(&self, user: &str) -> Result<Vec<ConvId>, StoreError> {
        self.wait(self.inner.user_convs(self.part, user))
    }

    fn conv_tail(&self, conv: ConvId, limit: usize) -> Result<Tail, StoreError> {
        self.wait(self.inner.conv_tail(conv, limit))
    }

    fn cursors(&self, conv: ConvId) -> Result<Vec<(String, CursorRecord)>, StoreError> {
        self.wait(self.inner.cursors(conv))
    }

    fn user_record(&self, user: &str) -> Result<UserRecord, StoreError> {
        self.wait(self.inner.user_record(user))
    }

    fn members(&self, conv: ConvId) -> Result<Vec<(String, MemberRow)>, StoreError> {
        self.wait(self.inner.members(conv))
    }

    fn member(&self, conv: ConvId, user: &str) -> Result<Option<MemberRow>, StoreError> {
        self.wait(self.inner.member(conv, user))
    }

    fn reactions(&self, conv: ConvId, lo: u64, hi: u64) -> Result<Vec<(u64, String, String)>, StoreError> {
        self.wait(self.inner.reactions(conv, lo, hi))
    }

    fn hidden(&self, conv: ConvId, user: &str, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        self.wait(self.inner.hidden(conv, user, lo, hi))
    }

    fn group_last(&self, conv: ConvId) -> Result<Option<(u64, InboxLast)>, StoreError> {
        self.wait(self.inner.group_last(self.part, conv))
    }

    fn inbox(&self, user: &str) -> Result<Vec<InboxEntry>, StoreError> {
        self.wait(self.inner.inbox(self.part, user))
    }
}

#[cfg(test)]
mod tests;
