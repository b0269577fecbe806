//! The data directory: `<dir>/SHARDS` records the shard count, `<dir>/shard-<k>/` holds
//! partition `k`. Messages are placed by `home(conv) = hash(conv) mod N`, so opening
//! the same data with another N would look in the wrong partitions: refused.

use std::path::{Path, PathBuf};

use crate::StoreError;

/// The path of partition `k`.
pub fn partition_dir(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("shard-{k}"))
}

/// Creates `dir` if needed and checks (or records) the shard count.
pub fn check_shard_count(dir: &Path, shards: usize) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Layout(format!("cannot create data dir {}: {e}", dir.display())))?;
    let file = dir.join("SHARDS");
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let recorded: usize = text
                .trim()
                .parse()
                .map_err(|_| StoreError::Layout(format!("{} is not a number: {text:?}", file.display())))?;
            if recorded != shards {
                return Err(StoreError::Layout(format!(
                    "data dir {} was created with {recorded} shards; start with --shards {recorded} \
                     (re-sharding an existing data dir is not supported yet)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(&file, format!("{shards}\n"))
            .map_err(|e| StoreError::Layout(format!("cannot write {}: {e}", file.display()))),
        Err(e) => Err(StoreError::Layout(format!("cannot read {}: {e}", file.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_count_is_recorded_and_enforced() {
        let d = tempfile::tempdir().unwrap();
        check_shard_count(d.path(), 2).unwrap();
        check_shard_count(d.path(), 2).unwrap();
        let err = check_shard_count(d.path(), 3).unwrap_err().to_string();
        assert!(err.contains("created with 2 shards"), "{err}");
    }
}
