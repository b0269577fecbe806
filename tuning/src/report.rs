//! The figures of a load-generator report that capacity planning reads. The load
//! generator builds its `server` section with [`ServerFigures`] and the planner parses
//! every report as [`Report`], so the two cannot drift apart: a renamed field fails the
//! planner's tests and the bench's end-to-end tests together.

use serde::{Deserialize, Serialize};

/// What the load generator measured on the server process during a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerFigures {
    /// The server's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// RSS before the run, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_before: Option<u64>,
    /// RSS after the run, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_after: Option<u64>,
    /// RSS growth per connection held, bytes (storm, idle).
    #[serde(default)]
    pub bytes_per_conn: Option<f64>,
    /// Server CPU time during the run, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<u64>,
    /// Server CPU per message sent (chat) or per delivery (fanout), µs.
    #[serde(default)]
    pub cpu_us_per_msg: Option<f64>,
}

/// A report, as far as planning reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `storm`, `idle`, `chat`, `fanout`, ...
    #[serde(default)]
    pub scenario: String,
    /// Server readings (absent when the load generator had no server pid).
    #[serde(default)]
    pub server: Option<ServerFigures>,
    /// Idle scenario: memory per idle connection measured by the idle driver itself.
    #[serde(default)]
    pub bytes_per_conn: Option<f64>,
}

impl ServerFigures {
    /// Figures from readings around a run that held `connections` and carried `messages`.
    pub fn from_readings(pid: u32, rss: (u64, u64), cpu_us: u64, connections: u64, messages: u64) -> ServerFigures {
        ServerFigures {
            pid: Some(pid),
            rss_before: Some(rss.0),
            rss_after: Some(rss.1),
            bytes_per_conn: (connections > 0).then(|| rss.1.saturating_sub(rss.0) as f64 / connections as f64),
            cpu_us: Some(cpu_us),
            cpu_us_per_msg: (messages > 0).then(|| cpu_us as f64 / messages as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip_and_unknown_fields_are_ignored() {
        let f = ServerFigures::from_readings(7, (1000, 3000), 500, 4, 10);
        assert_eq!((f.bytes_per_conn, f.cpu_us_per_msg), (Some(500.0), Some(50.0)));
        let r = Report { scenario: "chat".into(), server: Some(f), bytes_per_conn: None };
        let mut v = serde_json::to_value(&r).unwrap();
        v["latency"] = serde_json::json!({"p50": 1});
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), r);
        // No connections, no messages: no per-unit figure.
        let f = ServerFigures::from_readings(7, (1000, 3000), 500, 0, 0);
        assert_eq!((f.bytes_per_conn, f.cpu_us_per_msg), (None, None));
    }
}
