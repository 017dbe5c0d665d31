//! The two metadata logs of file streams, in Spark's formats: a first line `v1`, then one JSON
//! object per line.
//!
//! - [`SourceFileLog`]: the files each batch of a file source takes, in the checkpoint
//!   (`<checkpoint>/sources/<i>/files/<n>`, Spark's `FileStreamSourceLog`); entries
//!   `{"path":"file:///in/a.json","timestamp":1700000000000,"batchId":0}`.
//! - [`SinkLog`]: the files each committed batch of a file sink wrote, in the output directory
//!   (`<dir>/_spark_metadata/<batchId>`, Spark's `FileStreamSinkLog`); entries
//!   `{"path":"file:///out/part-00000-….c000.json","size":123,"isDir":false,
//!   "modificationTime":1700000000000,"blockReplication":1,"blockSize":33554432,"action":"add"}`.
//!
//! Both are written atomically (temporary file, fsync, rename, directory fsync). The sink log
//! is compacted as Spark's is: every 10th batch (ids 9, 19, ...) is written as `<n>.compact`,
//! listing every committed file, and readers start at the newest one. (Spark also deletes the
//! batch files a compaction covers after a delay; Flumen keeps them.) The source log, private
//! to the checkpoint, is not compacted.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{FORMAT_VERSION, read_log, to_json, write_atomic, write_durably};
use crate::error::{FlumenError, Result};

/// One file taken by a file source's batch (Spark's `FileEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceFileEntry {
    /// The file, as a `file://` URI.
    pub path: String,
    /// Its modification time when listed, in milliseconds since the epoch.
    pub timestamp: i64,
    /// The log entry (source batch) that took it.
    pub batch_id: i64,
}

/// How often the sink log is compacted (Spark's `spark.sql.streaming.fileSink.log.compactInterval`).
pub const SINK_LOG_COMPACT_INTERVAL: u64 = 10;

/// A file source's log of the files each of its batches takes.
#[derive(Debug, Clone)]
pub struct SourceFileLog {
    dir: PathBuf,
}

impl SourceFileLog {
    /// The log in `dir` (`<checkpoint>/sources/<i>/files`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The path of entry `n`.
    pub fn path(&self, n: i64) -> PathBuf {
        self.dir.join(n.to_string())
    }

    /// The entry numbers present, in order.
    pub fn ids(&self) -> Result<Vec<i64>> {
        let mut ids: Vec<i64> = batch_files(&self.dir)?
            .into_iter()
            .filter(|(_, compact)| !compact)
            .map(|(n, _)| n as i64)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The files of entry `n`.
    pub fn get(&self, n: i64) -> Result<Vec<SourceFileEntry>> {
        let path = self.path(n);
        if !path.exists() {
            return Err(FlumenError::checkpoint(
                path,
                "is missing, so the files of that batch are unknown; restore it or start a new checkpoint location",
            ));
        }
        read_log(&path)?
            .iter()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| {
                    FlumenError::checkpoint(
                        &path,
                        format!("is corrupt ({e} in {line:?}); restore it or start a new checkpoint location"),
                    )
                })
            })
            .collect()
    }

    /// Writes entry `n` (atomically).
    pub fn add(&self, n: i64, entries: &[SourceFileEntry]) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| FlumenError::io(&self.dir, e))?;
        write_atomic(&self.path(n), log_text(entries)?.as_bytes())
    }
}

/// The block size Spark's local file system reports, written in sink entries.
const LOCAL_BLOCK_SIZE: i64 = 33_554_432;

/// One file in a sink's metadata log (Spark's `SinkFileStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkFileEntry {
    /// The file, as a `file://` URI.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Always false for data files.
    #[serde(default)]
    pub is_dir: bool,
    /// Its modification time, in milliseconds since the epoch.
    pub modification_time: i64,
    /// Spark's HDFS block replication (1 for local files).
    #[serde(default = "one")]
    pub block_replication: i32,
    /// Spark's HDFS block size (32 MiB for local files).
    #[serde(default = "local_block_size")]
    pub block_size: i64,
    /// `add`, or `delete` for a file removed by a later batch.
    pub action: String,
}

fn one() -> i32 {
    1
}

fn local_block_size() -> i64 {
    LOCAL_BLOCK_SIZE
}

impl SinkFileEntry {
    /// An `add` entry for a file just written.
    pub fn add(path: &Path, size: u64, modification_time: i64) -> Self {
        Self {
            path: super::listing::to_uri(path),
            size,
            is_dir: false,
            modification_time,
            block_replication: 1,
            block_size: LOCAL_BLOCK_SIZE,
            action: "add".into(),
        }
    }
}

/// A file sink's metadata log: which files each committed batch wrote.
#[derive(Debug, Clone)]
pub struct SinkLog {
    dir: PathBuf,
}

impl SinkLog {
    /// The log in `dir` (`<output>/_spark_metadata`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last committed batch, if any.
    pub fn latest_batch_id(&self) -> Result<Option<u64>> {
        Ok(batch_files(&self.dir)?.into_iter().map(|(n, _)| n).max())
    }

    /// Every file committed so far: the newest compact file's entries and those of the batches
    /// after it, minus files a later entry deleted, in the order they were added.
    pub fn committed_files(&self) -> Result<Vec<SinkFileEntry>> {
        let files = batch_files(&self.dir)?;
        let Some(latest) = files.iter().map(|(n, _)| *n).max() else {
            return Ok(Vec::new());
        };
        let compact = files.iter().filter(|(_, c)| *c).map(|(n, _)| *n).max();
        let mut entries = Vec::new();
        let first = match compact {
            Some(c) => {
                entries.extend(self.read(&self.dir.join(format!("{c}.compact")))?);
                c + 1
            }
            None => 0,
        };
        for n in first..=latest {
            let path = self.dir.join(n.to_string());
            if !path.exists() {
                return Err(FlumenError::DataFile {
                    path,
                    reason: format!(
                        "is missing although the metadata log goes up to batch {latest}, so which files are committed is unknown; restore it from a backup"
                    ),
                });
            }
            entries.extend(self.read(&path)?);
        }
        let deleted: std::collections::HashSet<String> = entries
            .iter()
            .filter(|e| e.action == "delete")
            .map(|e| e.path.clone())
            .collect();
        Ok(entries
            .into_iter()
            .filter(|e| e.action == "add" && !e.is_dir && !deleted.contains(&e.path))
            .collect())
    }

    fn read(&self, path: &Path) -> Result<Vec<SinkFileEntry>> {
        let bad = |reason: String| FlumenError::DataFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                bad("is not UTF-8 text; restore the file sink's metadata log from a backup".into())
            }
            _ => FlumenError::io(path, e),
        })?;
        let mut lines = text.lines();
        match lines.next() {
            Some(FORMAT_VERSION) => {}
            other => {
                return Err(bad(format!(
                    "starts with {other:?} where the metadata log's version {FORMAT_VERSION} should be; restore it from a backup"
                )));
            }
        }
        lines
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| {
                    bad(format!(
                        "has an entry that is not a file status ({e} in {line:?}); restore it from a backup"
                    ))
                })
            })
            .collect()
    }

    /// Commits batch `batch_id` with its files (atomically). Every
    /// [`SINK_LOG_COMPACT_INTERVAL`]th batch is a compaction, as in Spark: `<batchId>.compact`
    /// lists every committed file so far, so readers (Spark's among them, which expect it) need
    /// not read the whole log.
    pub fn add(&self, batch_id: u64, entries: &[SinkFileEntry]) -> Result<()> {
        let (name, listed) = if (batch_id + 1).is_multiple_of(SINK_LOG_COMPACT_INTERVAL) {
            let mut files = self.committed_files()?;
            files.extend(entries.iter().cloned());
            (format!("{batch_id}.compact"), files)
        } else {
            (batch_id.to_string(), entries.to_vec())
        };
        write_file_atomic(&self.dir.join(name), log_text(&listed)?.as_bytes())
    }
}

/// The batch files of a log directory: `<n>` and `<n>.compact` (other names are ignored).
fn batch_files(dir: &Path) -> Result<Vec<(u64, bool)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FlumenError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| FlumenError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (number, compact) = match name.strip_suffix(".compact") {
            Some(n) => (n, true),
            None => (name, false),
        };
        if let Ok(n) = number.parse::<u64>() {
            out.push((n, compact));
        }
    }
    Ok(out)
}

/// A log file's text: the version line, then one JSON object per entry.
fn log_text<T: Serialize>(entries: &[T]) -> Result<String> {
    let mut text = FORMAT_VERSION.to_string();
    for entry in entries {
        text.push('\n');
        text.push_str(&to_json(entry)?);
    }
    Ok(text)
}

/// Writes `bytes` to `path` atomically and durably: a hidden temporary file beside it, fsynced,
/// renamed, and the directory fsynced. Errors name the
/// path.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durably(path, bytes).map_err(|e| FlumenError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_entries_have_sparks_fields_in_sparks_order() {
        let entry = SinkFileEntry::add(
            Path::new("/out/part-00000.c000.json"),
            12,
            1_700_000_000_000,
        );
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"path":"file:///out/part-00000.c000.json","size":12,"isDir":false,"modificationTime":1700000000000,"blockReplication":1,"blockSize":33554432,"action":"add"}"#
        );
    }

    #[test]
    fn committed_files_start_at_the_newest_compact_file_and_drop_deleted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = SinkLog::new(dir.path());
        let entry = |name: &str, action: &str| SinkFileEntry {
            action: action.into(),
            ..SinkFileEntry::add(Path::new(name), 1, 0)
        };
        log.add(0, &[entry("/o/a", "add")]).unwrap();
        // Spark's compaction of batches 0..=1 (batch 0's file may since have been removed).
        let compact = format!(
            "v1\n{}\n{}",
            serde_json::to_string(&entry("/o/a", "add")).unwrap(),
            serde_json::to_string(&entry("/o/b", "add")).unwrap()
        );
        std::fs::write(dir.path().join("1.compact"), compact).unwrap();
        std::fs::remove_file(dir.path().join("0")).unwrap();
        log.add(2, &[entry("/o/c", "add"), entry("/o/a", "delete")])
            .unwrap();
        let paths: Vec<String> = log
            .committed_files()
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["file:///o/b", "file:///o/c"]);
        assert_eq!(log.latest_batch_id().unwrap(), Some(2));

        std::fs::write(dir.path().join("3"), "v1\n{\"path\":").unwrap();
        let err = log.committed_files().unwrap_err().to_string();
        assert!(
            err.contains("/3: has an entry that is not a file status"),
            "{err}"
        );
    }

    #[test]
    fn every_tenth_batch_is_a_compaction_listing_every_committed_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = SinkLog::new(dir.path());
        for batch in 0..12u64 {
            let file = format!("/o/{batch}");
            log.add(batch, &[SinkFileEntry::add(Path::new(&file), 1, 0)])
                .unwrap();
        }
        assert!(!dir.path().join("9").exists());
        let compact = std::fs::read_to_string(dir.path().join("9.compact")).unwrap();
        let lines: Vec<&str> = compact.lines().collect();
        assert_eq!(lines[0], "v1");
        let paths: Vec<String> = lines[1..]
            .iter()
            .map(|l| serde_json::from_str::<SinkFileEntry>(l).unwrap().path)
            .collect();
        let first_ten: Vec<String> = (0..10).map(|b| format!("file:///o/{b}")).collect();
        assert_eq!(paths, first_ten);
        assert_eq!(log.latest_batch_id().unwrap(), Some(11));
        // Readers start at the compaction: the batch files it covers are no longer needed.
        for batch in 0..9 {
            std::fs::remove_file(dir.path().join(batch.to_string())).unwrap();
        }
        let all: Vec<String> = log
            .committed_files()
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        let twelve: Vec<String> = (0..12).map(|b| format!("file:///o/{b}")).collect();
        assert_eq!(all, twelve);
    }

    #[test]
    fn source_log_round_trips_and_names_missing_entries() {
        let dir = tempfile::tempdir().unwrap();
        let log = SourceFileLog::new(dir.path().join("files"));
        let entries = vec![SourceFileEntry {
            path: "file:///in/a.json".into(),
            timestamp: 5,
            batch_id: 0,
        }];
        log.add(0, &entries).unwrap();
        assert_eq!(log.get(0).unwrap(), entries);
        assert_eq!(log.ids().unwrap(), [0]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("files/0")).unwrap(),
            "v1\n{\"path\":\"file:///in/a.json\",\"timestamp\":5,\"batchId\":0}"
        );
        let err = log.get(1).unwrap_err().to_string();
        assert!(err.contains("files/1 is missing"), "{err}");
    }
}
