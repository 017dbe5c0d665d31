//! The checkpoint directory: Spark's layout, human-readable, every file written atomically.
//!
//! ```text
//! <checkpoint>/
//!   metadata          {"id":"<query id>"}                      stable across restarts
//!   sources/<i>/0     v1 + the source's initial offsets         where batch 0 starts
//!   sources/<i>/files/<n>  v1 + one line per file               a file source's batch n
//!   offsets/<N>       v1                                        write-ahead: written before
//!                     {"batchWatermarkMs":0,"batchTimestampMs":…,"conf":{…}}   batch N runs
//!                     {"demo-topic":{"0":5}}                    one line per source (end, exclusive)
//!   commits/<N>       v1                                        written after the sink
//!                     {"nextBatchWatermarkMs":0}                has batch N
//!   state/<op>/<p>/   <version>.delta, <version>.snapshot       partition p of the op-th
//!                                                               stateful operator's state
//! ```
//!
//! Files are written to a temporary name, fsynced, renamed into place and the directory fsynced,
//! so a crash leaves either the old or the new file, never half of one. A file that cannot be
//! parsed is an error naming the file; nothing is skipped silently.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FlumenError, Result};

/// The format version written in the first line of every log file.
pub const FORMAT_VERSION: &str = "v1";

/// How many batches of offset and commit logs are kept (Spark's `minBatchesToRetain`).
pub const MIN_BATCHES_TO_RETAIN: u64 = 100;

/// The offset log setting that records how many key partitions each stateful operator's
/// state has (Spark records `spark.sql.shuffle.partitions` the same way).
pub const STATE_PARTITIONS_CONF: &str = "flumen.state.partitions";

/// How a query's operator state is split under `state/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateLayout {
    /// `state/<operator>/<partition>/<version>.delta`: this many key partitions per operator.
    Partitioned(usize),
    /// `state/<operator>/<version>.delta`: one partition, as in checkpoints written before state
    /// was partitioned (their offset logs do not record [`STATE_PARTITIONS_CONF`]).
    Single,
}

impl StateLayout {
    /// The number of partitions.
    pub fn partitions(&self) -> usize {
        match self {
            StateLayout::Partitioned(n) => *n,
            StateLayout::Single => 1,
        }
    }
}

/// Batch metadata stored in `offsets/N` (Spark's `OffsetSeqMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetMetadata {
    /// The event-time watermark in effect for the batch, ms since the epoch.
    #[serde(default)]
    pub batch_watermark_ms: i64,
    /// The batch's timestamp (`current_timestamp()`), ms since the epoch.
    #[serde(default)]
    pub batch_timestamp_ms: i64,
    /// Settings that must not change across restarts.
    #[serde(default)]
    pub conf: BTreeMap<String, String>,
}

/// One entry of the offset log: metadata plus each source's end offset.
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetEntry {
    /// Batch metadata.
    pub metadata: OffsetMetadata,
    /// End offsets (exclusive), one per source in source order.
    pub offsets: Vec<Value>,
}

/// One entry of the commit log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitEntry {
    /// The watermark the next batch will use, ms since the epoch.
    #[serde(default)]
    pub next_batch_watermark_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct QueryMetadata {
    id: String,
}

/// A checkpoint directory.
#[derive(Debug)]
pub struct Checkpoint {
    root: PathBuf,
    temporary: bool,
}

impl Checkpoint {
    /// Opens (creating if needed) the checkpoint at `root`, and checks it can be written.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["offsets", "commits", "sources"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| FlumenError::io(&path, e))?;
        }
        let checkpoint = Self {
            root,
            temporary: false,
        };
        checkpoint.check_writable()?;
        Ok(checkpoint)
    }

    /// A new checkpoint in a fresh temporary directory, deleted when the query stops cleanly
    /// (Spark does the same for console and memory sinks without a checkpoint location).
    pub fn temporary() -> Result<Self> {
        let root = std::env::temp_dir().join(format!("flumen-checkpoint-{}", uuid::Uuid::new_v4()));
        let mut checkpoint = Self::open(root)?;
        checkpoint.temporary = true;
        Ok(checkpoint)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `offsets/<batch_id>`: the write-ahead log entry of a batch.
    pub fn offsets_path(&self, batch_id: u64) -> PathBuf {
        self.root.join("offsets").join(batch_id.to_string())
    }

    /// `sources/<index>`: the directory of source `index`'s own metadata (its initial offsets
    /// in `0`, and whatever the source keeps there, such as the file source's file log).
    pub fn source_metadata_path(&self, index: usize) -> PathBuf {
        self.root.join("sources").join(index.to_string())
    }

    /// `sources/<index>/0`: where source `index` started.
    pub fn source_initial_path(&self, index: usize) -> PathBuf {
        self.root.join("sources").join(index.to_string()).join("0")
    }

    /// The state directories of the query's `operator`-th stateful operator, one per
    /// partition: `state/<operator>/<partition>` (or `state/<operator>` in the
    /// [`StateLayout::Single`] layout).
    pub fn state_dirs(&self, operator: usize, layout: StateLayout) -> Vec<PathBuf> {
        let dir = self.root.join("state").join(operator.to_string());
        match layout {
            StateLayout::Single => vec![dir],
            StateLayout::Partitioned(n) => (0..n).map(|p| dir.join(p.to_string())).collect(),
        }
    }

    /// How this checkpoint lays out its state: as recorded in its newest offset log, or, for a
    /// new checkpoint, `default_partitions` partitions. The count is fixed once a batch has
    /// been planned: a query restarted with another `target_partitions` keeps the checkpoint's.
    pub fn state_layout(&self, default_partitions: usize) -> Result<StateLayout> {
        let Some((n, entry)) = self.latest_offsets()? else {
            return Ok(StateLayout::Partitioned(default_partitions.max(1)));
        };
        match entry.metadata.conf.get(STATE_PARTITIONS_CONF) {
            None => Ok(StateLayout::Single),
            Some(v) => match v.parse::<usize>() {
                Ok(count) if count > 0 => Ok(StateLayout::Partitioned(count)),
                _ => Err(FlumenError::checkpoint(
                    self.offsets_path(n),
                    format!(
                        "has {STATE_PARTITIONS_CONF} = '{v}', which is not a positive number; restore the file or start a new checkpoint location"
                    ),
                )),
            },
        }
    }

    /// Whether this is a temporary checkpoint.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    fn check_writable(&self) -> Result<()> {
        let probe = self
            .root
            .join(format!(".flumen-write-check-{}", uuid::Uuid::new_v4()));
        fs::write(&probe, b"ok").map_err(|e| {
            FlumenError::checkpoint(
                &self.root,
                format!("is not writable ({e}); fix its permissions or choose another checkpoint location"),
            )
        })?;
        fs::remove_file(&probe).map_err(|e| FlumenError::io(&probe, e))
    }

    /// The query id stored in `metadata`, creating it for a new checkpoint.
    ///
    /// A checkpoint that already has batches but no `metadata` is an error, not a new query
    /// (a new id there would silently disconnect the query from its history).
    pub fn query_id(&self) -> Result<String> {
        let path = self.root.join("metadata");
        match fs::read(&path) {
            Ok(bytes) => {
                let meta: QueryMetadata = serde_json::from_slice(&bytes).map_err(|e| {
                    FlumenError::checkpoint(
                        &path,
                        format!("is corrupt ({e}); restore it or start a new checkpoint location"),
                    )
                })?;
                Ok(meta.id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.latest("offsets")?.is_some() {
                    return Err(FlumenError::checkpoint(
                        &path,
                        "is missing although the checkpoint has offset logs; restore it or start a new checkpoint location",
                    ));
                }
                let id = uuid::Uuid::new_v4().to_string();
                let text = serde_json::to_string(&QueryMetadata { id: id.clone() })
                    .map_err(|e| FlumenError::IllegalState(e.to_string()))?;
                write_atomic(&path, text.as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(FlumenError::io(&path, e)),
        }
    }

    /// The highest batch id in `dir` (`offsets` or `commits`), if any.
    fn latest(&self, dir: &str) -> Result<Option<u64>> {
        Ok(self.batch_ids(dir)?.into_iter().max())
    }

    fn batch_ids(&self, dir: &str) -> Result<Vec<u64>> {
        let path = self.root.join(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FlumenError::io(&path, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| FlumenError::io(&path, e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The latest offset log entry, if any.
    pub fn latest_offsets(&self) -> Result<Option<(u64, OffsetEntry)>> {
        match self.latest("offsets")? {
            Some(n) => Ok(Some((n, self.offsets(n)?))),
            None => Ok(None),
        }
    }

    /// The latest committed batch, if any.
    pub fn latest_commit(&self) -> Result<Option<(u64, CommitEntry)>> {
        match self.latest("commits")? {
            Some(n) => Ok(Some((n, self.commit(n)?))),
            None => Ok(None),
        }
    }

    /// Reads `offsets/N`.
    pub fn offsets(&self, batch_id: u64) -> Result<OffsetEntry> {
        let path = self.root.join("offsets").join(batch_id.to_string());
        let lines = read_log(&path)?;
        let Some((meta, sources)) = lines.split_first() else {
            return Err(truncated(&path, "no metadata line"));
        };
        let metadata: OffsetMetadata = parse_json(&path, meta)?;
        let offsets = sources
            .iter()
            .map(|line| parse_json::<Value>(&path, line))
            .collect::<Result<Vec<_>>>()?;
        Ok(OffsetEntry { metadata, offsets })
    }

    /// Reads `commits/N`.
    pub fn commit(&self, batch_id: u64) -> Result<CommitEntry> {
        let path = self.root.join("commits").join(batch_id.to_string());
        let lines = read_log(&path)?;
        match lines.first() {
            Some(line) => parse_json(&path, line),
            None => Err(truncated(&path, "no commit line")),
        }
    }

    /// Writes `offsets/N` (before the batch runs).
    pub fn write_offsets(&self, batch_id: u64, entry: &OffsetEntry) -> Result<()> {
        let mut text = format!("{FORMAT_VERSION}\n");
        text.push_str(&to_json(&entry.metadata)?);
        for offset in &entry.offsets {
            text.push('\n');
            text.push_str(&offset.to_string());
        }
        write_atomic(
            &self.root.join("offsets").join(batch_id.to_string()),
            text.as_bytes(),
        )
    }

    /// Writes `commits/N` (after the sink has the batch).
    pub fn write_commit(&self, batch_id: u64, entry: &CommitEntry) -> Result<()> {
        let text = format!("{FORMAT_VERSION}\n{}", to_json(entry)?);
        write_atomic(
            &self.root.join("commits").join(batch_id.to_string()),
            text.as_bytes(),
        )
    }

    /// The initial offsets of source `index` (`sources/<index>/0`), if recorded.
    pub fn source_initial_offset(&self, index: usize) -> Result<Option<Value>> {
        let path = self.source_initial_path(index);
        if !path.exists() {
            return Ok(None);
        }
        let lines = read_log(&path)?;
        match lines.first() {
            Some(line) => parse_json(&path, line).map(Some),
            None => Err(truncated(&path, "no offset line")),
        }
    }

    /// Records the initial offsets of source `index`.
    pub fn write_source_initial_offset(&self, index: usize, offset: &Value) -> Result<()> {
        let dir = self.root.join("sources").join(index.to_string());
        fs::create_dir_all(&dir).map_err(|e| FlumenError::io(&dir, e))?;
        write_atomic(
            &dir.join("0"),
            format!("{FORMAT_VERSION}\n{offset}").as_bytes(),
        )
    }

    /// Deletes offset and commit logs of batches before `keep_from`.
    pub fn purge_before(&self, keep_from: u64) -> Result<()> {
        for dir in ["offsets", "commits"] {
            for id in self.batch_ids(dir)? {
                if id < keep_from {
                    let path = self.root.join(dir).join(id.to_string());
                    fs::remove_file(&path).map_err(|e| FlumenError::io(&path, e))?;
                }
            }
        }
        Ok(())
    }

    /// Removes the directory (temporary checkpoints, after a clean stop).
    pub fn remove(&self) -> Result<()> {
        fs::remove_dir_all(&self.root).map_err(|e| FlumenError::io(&self.root, e))
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| FlumenError::IllegalState(e.to_string()))
}

fn truncated(path: &Path, what: &str) -> FlumenError {
    FlumenError::checkpoint(
        path,
        format!("is truncated ({what}); restore it or start a new checkpoint location"),
    )
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, line: &str) -> Result<T> {
    serde_json::from_str(line).map_err(|e| {
        FlumenError::checkpoint(
            path,
            format!("is corrupt ({e} in {line:?}); restore it or start a new checkpoint location"),
        )
    })
}

/// Reads a log file and checks its version line; returns the remaining lines.
pub(crate) fn read_log(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => FlumenError::checkpoint(
            path,
            "is not valid UTF-8 text; restore it or start a new checkpoint location",
        ),
        _ => FlumenError::io(path, e),
    })?;
    let mut lines = text.lines();
    match lines.next() {
        Some(FORMAT_VERSION) => {}
        Some(v) if v.starts_with('v') && v[1..].parse::<u32>().is_ok() => {
            return Err(FlumenError::checkpoint(
                path,
                format!(
                    "has format {v}, newer than this Flumen ({FORMAT_VERSION}); upgrade Flumen to read it"
                ),
            ));
        }
        Some(_) => {
            return Err(FlumenError::checkpoint(
                path,
                format!(
                    "is corrupt (first line is not a version such as {FORMAT_VERSION}); restore it or start a new checkpoint location"
                ),
            ));
        }
        None => {
            return Err(truncated(path, &format!("{} bytes", text.len())));
        }
    }
    Ok(lines.map(str::to_string).collect())
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durably(path, bytes).map_err(|e| {
        FlumenError::checkpoint(
            path,
            format!("cannot be written ({e}); check the checkpoint location's permissions and free space"),
        )
    })
}

/// Writes `bytes` to `path` atomically and durably: a hidden temporary file beside it,
/// fsynced, renamed over `path`, and the directory fsynced. The temporary file is removed on
/// failure.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_offsets_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        let id = cp.query_id().unwrap();
        assert_eq!(cp.query_id().unwrap(), id, "the id is stable");
        let entry = OffsetEntry {
            metadata: OffsetMetadata {
                batch_watermark_ms: 0,
                batch_timestamp_ms: 1_700_000_000_000,
                conf: BTreeMap::from([("k".to_string(), "v".to_string())]),
            },
            offsets: vec![json!({"demo-topic": {"0": 5}})],
        };
        cp.write_offsets(0, &entry).unwrap();
        cp.write_commit(0, &CommitEntry::default()).unwrap();
        assert_eq!(cp.latest_offsets().unwrap(), Some((0, entry)));
        assert_eq!(cp.latest_commit().unwrap().map(|c| c.0), Some(0));
        let text = fs::read_to_string(dir.path().join("offsets/0")).unwrap();
        assert_eq!(
            text,
            "v1\n{\"batchWatermarkMs\":0,\"batchTimestampMs\":1700000000000,\"conf\":{\"k\":\"v\"}}\n{\"demo-topic\":{\"0\":5}}"
        );
    }

    #[test]
    fn corrupt_and_truncated_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        fs::write(dir.path().join("offsets/3"), "v1\n{\"batchWat").unwrap();
        let err = cp.latest_offsets().unwrap_err().to_string();
        assert!(err.contains("offsets/3 is corrupt"), "{err}");
        fs::write(dir.path().join("commits/3"), "").unwrap();
        let err = cp.latest_commit().unwrap_err().to_string();
        assert!(err.contains("commits/3 is truncated"), "{err}");
        fs::write(dir.path().join("commits/3"), "v9\n{}").unwrap();
        let err = cp.latest_commit().unwrap_err().to_string();
        assert!(err.contains("has format v9"), "{err}");
    }
}
