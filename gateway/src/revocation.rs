//! Device revocation: an operator revokes a user's device (admin `POST /revoke`); its
//! live connections close with 4003 and its tokens issued up to that moment stop
//! working, across restarts.
//!
//! The admin thread owns the list and persists it (`data_dir/revoked.json`, written to
//! a temporary file, fsync'd, renamed); it then sends the entry to every shard over a
//! crossbeam channel and answers once each shard confirmed. Each shard keeps its own
//! copy and drains the channel on its beat (non-blocking `try_recv`), so nothing on a
//! shard ever waits on a lock.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One revocation: tokens of `(user, device)` issued at or before `revoked_at` are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoke {
    /// User id.
    pub user: String,
    /// Device id.
    pub device: String,
    /// Seconds since the epoch.
    pub revoked_at: u64,
}

/// The revoked devices.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    /// user → device → revoked_at (nested so lookups borrow `&str`: no allocation per upgrade).
    map: HashMap<String, HashMap<String, u64>>,
}

impl Revocations {
    /// Records a revocation (a later one for the same device wins).
    pub fn insert(&mut self, r: &Revoke) {
        let at = self.map.entry(r.user.clone()).or_default().entry(r.device.clone()).or_insert(0);
        *at = (*at).max(r.revoked_at);
    }

    /// Is a token for `(user, device)` issued at `iat` revoked? (No `iat`: 0, revoked.)
    pub fn is_revoked(&self, user: &str, device: &str, iat: u64) -> bool {
        self.map.get(user).and_then(|d| d.get(device)).is_some_and(|at| iat <= *at)
    }

    /// Every entry.
    pub fn entries(&self) -> Vec<Revoke> {
        self.map
            .iter()
            .flat_map(|(u, ds)| ds.iter().map(|(d, at)| Revoke { user: u.clone(), device: d.clone(), revoked_at: *at }))
            .collect()
    }
}

/// Where the list lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("revoked.json")
}

/// Loads the list (empty when the file does not exist).
pub fn load(data_dir: &Path) -> anyhow::Result<Revocations> {
    let p = path(data_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Revocations::default()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", p.display()),
    };
    let list: Vec<Revoke> = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let mut r = Revocations::default();
    list.iter().for_each(|x| r.insert(x));
    Ok(r)
}

/// Writes the list durably (temporary file, fsync, rename, fsync of the directory).
pub fn save(data_dir: &Path, r: &Revocations) -> std::io::Result<()> {
    let p = path(data_dir);
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(&r.entries()).map_err(std::io::Error::other)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_persist_and_apply_to_older_tokens_only() {
        let d = tempfile::tempdir().unwrap();
        let mut r = load(d.path()).unwrap();
        r.insert(&Revoke { user: "a".into(), device: "phone".into(), revoked_at: 100 });
        save(d.path(), &r).unwrap();
        let r = load(d.path()).unwrap();
        assert!(r.is_revoked("a", "phone", 100) && r.is_revoked("a", "phone", 0));
        assert!(!r.is_revoked("a", "phone", 101), "a token issued later works");
        assert!(!r.is_revoked("a", "laptop", 0) && !r.is_revoked("b", "phone", 0));
    }
}
