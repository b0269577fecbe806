//! The driver's counters: requests by statement and outcome, latency histograms, in-flight
//! requests per shard, retries and refusals. Plain atomics: the driver's threads bump
//! them, `/metrics` reads them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::schema::Stmt;
use crate::Failure;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const BOUNDS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct PerStmt {
    ok: AtomicU64,
    error: AtomicU64,
    timeout: AtomicU64,
    buckets: [AtomicU64; BOUNDS.len()],
    sum_us: AtomicU64,
}

/// Every counter of one [`crate::Cluster`].
pub struct Metrics {
    per: Vec<PerStmt>,
    in_flight: Vec<Arc<AtomicUsize>>,
    /// Requests the retry policy sent again.
    pub(crate) retries: Arc<AtomicU64>,
    /// Submissions refused because a shard had `max_in_flight` out.
    pub(crate) refused: AtomicU64,
}

impl Metrics {
    /// Counters for a cluster used by `shards` shards.
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            per: Stmt::ALL.iter().map(|_| PerStmt::default()).collect(),
            in_flight: (0..shards.max(1)).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
            retries: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
        }
    }

    /// Shard `part`'s in-flight counter.
    pub(crate) fn in_flight(&self, part: usize) -> Arc<AtomicUsize> {
        self.in_flight.get(part).cloned().unwrap_or_else(|| Arc::new(AtomicUsize::new(0)))
    }

    /// Counts one request of `s` that took `took` and failed as `failure` (`None`: ok).
    pub(crate) fn observe(&self, s: Stmt, took: Duration, failure: Option<Failure>) {
        let p = &self.per[s.index()];
        match failure {
            None => &p.ok,
            Some(Failure::Timeout) => &p.timeout,
            Some(_) => &p.error,
        }
        .fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            p.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        p.sum_us.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Requests of `s` so far: `(ok, error, timeout)`.
    pub fn counts(&self, s: Stmt) -> (u64, u64, u64) {
        let p = &self.per[s.index()];
        (p.ok.load(Ordering::Relaxed), p.error.load(Ordering::Relaxed), p.timeout.load(Ordering::Relaxed))
    }

    /// Appends the Prometheus text of every counter to `out`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "switchboard_cql_requests_total";
        let _ = writeln!(out, "# HELP {name} CQL requests by statement and outcome.\n# TYPE {name} counter");
        for s in Stmt::ALL {
            let (ok, error, timeout) = self.counts(s);
            for (outcome, v) in [("ok", ok), ("error", error), ("timeout", timeout)] {
                let _ = writeln!(out, "{name}{{statement=\"{}\",outcome=\"{outcome}\"}} {v}", s.name());
            }
        }
        let name = "switchboard_cql_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} CQL request latency by statement (retries included).\n# TYPE {name} histogram"
        );
        for s in Stmt::ALL {
            let p = &self.per[s.index()];
            let mut cum = 0;
            for (i, b) in BOUNDS.iter().enumerate() {
                cum += p.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{statement=\"{}\",le=\"{b}\"}} {cum}", s.name());
            }
            let (ok, error, timeout) = self.counts(s);
            let count = ok + error + timeout;
            let sum = p.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{statement=\"{}\",le=\"+Inf\"}} {count}", s.name());
            let _ = writeln!(out, "{name}_sum{{statement=\"{}\"}} {sum}", s.name());
            let _ = writeln!(out, "{name}_count{{statement=\"{}\"}} {count}", s.name());
        }
        let name = "switchboard_cql_in_flight";
        let _ = writeln!(out, "# HELP {name} CQL requests submitted by a shard and not answered.\n# TYPE {name} gauge");
        for (k, n) in self.in_flight.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{k}\"}} {}", n.load(Ordering::Relaxed));
        }
        let name = "switchboard_cql_retries_total";
        let _ = writeln!(out, "# HELP {name} CQL requests the retry policy sent again.\n# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", self.retries.load(Ordering::Relaxed));
        let name = "switchboard_cql_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Reads and commits refused because a shard had cql_max_in_flight requests out.\n# TYPE {name} counter"
        );
        let _ = writeln!(out, "{name} {}", self.refused.load(Ordering::Relaxed));
    }
}
