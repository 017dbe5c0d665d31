//! The streaming file source: a directory of JSON Lines, CSV or Parquet files as a stream.
//!
//! Each trigger lists the directory ([`listing`](super::listing): hidden and in-progress files
//! left out; only committed files when it is a file sink's output), keeps the files not taken
//! before, orders them by modification time then path (newest first with `latestFirst`), takes
//! at most `maxFilesPerTrigger` of them, and writes their list to the checkpoint's file log
//! (`sources/0/files/<n>`) before the engine logs the batch's offset. The offset is the number
//! of the last log entry, `{"logOffset":n}` (Spark's `FileStreamSourceOffset`), so a batch is
//! the log entries after its start up to its end, and a re-run batch reads exactly the files
//! logged for it. A restarted query reads its file log back: every logged file counts as
//! taken, and an entry logged by a run that died before its batch's offsets were written is
//! the next batch.
//!
//! `maxFileAge` (default 7 days) works as Spark's: after each batch, files older than the
//! newest file taken so far minus the age are no longer considered (so the first batch takes
//! every file, whatever its age), and with `latestFirst` and `maxFilesPerTrigger` both set it
//! is ignored. `fileNameOnly` identifies files by name instead of path.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use serde_json::{Value, json};

use super::listing::{FileStatus, from_uri, list_data_files, partition_values, to_uri};
use super::log::{SourceFileEntry, SourceFileLog};
use super::read::{ReadOptions, nullable, read_file};
use super::{FileFormat, SCHEMA_REQUIRED};
use crate::error::{FlumenError, Result};
use crate::options::{Options, parse_interval};
use crate::source::{
    ReadLimit, SourceContext, SourceOffset, SourceReader, SourceRef, StreamSource,
};

/// Spark's default `maxFileAge`: one week.
pub const DEFAULT_MAX_FILE_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The directory of the file log under the source's checkpoint directory.
const FILE_LOG_DIR: &str = "files";

/// The file source's own options (Spark's names), validated at `load()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileSourceOptions {
    /// `maxFilesPerTrigger`: at most this many new files per batch. Default: no limit.
    pub max_files_per_trigger: Option<u64>,
    /// `latestFirst`: take the newest files first. Default: false (oldest first).
    pub latest_first: bool,
    /// `maxFileAge`: files older than the newest taken file by more than this are ignored.
    /// Default: 7 days.
    pub max_file_age: Duration,
    /// `fileNameOnly`: a file is identified by its name, not its path. Default: false.
    pub file_name_only: bool,
}

impl Default for FileSourceOptions {
    fn default() -> Self {
        Self {
            max_files_per_trigger: None,
            latest_first: false,
            max_file_age: DEFAULT_MAX_FILE_AGE,
            file_name_only: false,
        }
    }
}

impl FileSourceOptions {
    /// Reads the options; unsupported ones Spark has (`maxBytesPerTrigger`, `cleanSource`)
    /// are refused rather than ignored.
    pub fn from_options(options: &Options) -> Result<Self> {
        if options.contains("maxBytesPerTrigger") {
            return Err(FlumenError::invalid_option(
                "maxBytesPerTrigger",
                "is not supported by Flumen's file source yet; limit batches with maxFilesPerTrigger",
            ));
        }
        if let Some(clean) = options.get("cleanSource")
            && !clean.eq_ignore_ascii_case("off")
        {
            return Err(FlumenError::invalid_option(
                "cleanSource",
                format!(
                    "'{clean}' is not supported by Flumen's file source yet (only 'off'); archive or delete processed files outside the query"
                ),
            ));
        }
        let max_file_age = match options.get("maxFileAge") {
            None => DEFAULT_MAX_FILE_AGE,
            Some(text) => parse_age(text)?,
        };
        Ok(Self {
            max_files_per_trigger: options.get_positive("maxFilesPerTrigger")?,
            latest_first: options.get_bool("latestFirst", false)?,
            max_file_age,
            file_name_only: options.get_bool("fileNameOnly", false)?,
        })
    }

    /// The age limit in milliseconds as it applies: none (`i64::MAX`) with `latestFirst` and
    /// `maxFilesPerTrigger`, where it could skip files that should be read.
    fn effective_max_age_ms(&self) -> i64 {
        if self.latest_first && self.max_files_per_trigger.is_some() {
            i64::MAX
        } else {
            i64::try_from(self.max_file_age.as_millis()).unwrap_or(i64::MAX)
        }
    }
}

/// `maxFileAge` as Spark reads it: a number of milliseconds, or a duration such as `7d`,
/// `12h` or `30 minutes`.
fn parse_age(text: &str) -> Result<Duration> {
    if let Ok(ms) = text.trim().parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    parse_interval(text).map_err(|_| {
        FlumenError::invalid_option(
            "maxFileAge",
            format!("'{text}' is not a duration; write e.g. '7d', '12 hours' or a number of milliseconds"),
        )
    })
}

#[derive(Debug)]
struct Definition {
    format: FileFormat,
    dir: PathBuf,
    schema: SchemaRef,
    options: FileSourceOptions,
    read: ReadOptions,
}

/// A directory of files as a stream (what `read_stream().format("json").schema(..).load(dir)`
/// creates); see the module docs.
#[derive(Debug, Clone)]
pub struct FileSource {
    definition: Arc<Definition>,
}

impl FileSource {
    /// A source reading the `format` files of `dir` as rows of `schema` (required, as in
    /// Spark), with Spark's file source and format options. `dir` must exist.
    pub fn new(
        format: FileFormat,
        dir: impl AsRef<Path>,
        schema: Option<SchemaRef>,
        options: &Options,
    ) -> Result<Self> {
        let schema =
            schema.ok_or_else(|| FlumenError::invalid_option("schema", SCHEMA_REQUIRED))?;
        let dir = existing_dir(dir.as_ref())?;
        Ok(Self {
            definition: Arc::new(Definition {
                format,
                dir,
                schema: nullable(&schema),
                options: FileSourceOptions::from_options(options)?,
                read: ReadOptions::from_options(format, options)?,
            }),
        })
    }

    /// The format of the files.
    pub fn format(&self) -> FileFormat {
        self.definition.format
    }

    /// The directory read (absolute).
    pub fn dir(&self) -> &Path {
        &self.definition.dir
    }

    /// The source options.
    pub fn options(&self) -> &FileSourceOptions {
        &self.definition.options
    }

    /// This source as a [`SourceRef`].
    pub fn into_ref(self) -> SourceRef {
        Arc::new(self)
    }
}

/// `dir` made absolute, or Spark's error when it does not exist.
pub(crate) fn existing_dir(dir: &Path) -> Result<PathBuf> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => dir.canonicalize().map_err(|e| FlumenError::io(dir, e)),
        Ok(_) => Err(FlumenError::invalid_option(
            "path",
            format!(
                "{} is a file; a streaming file source reads a directory (put the file in one)",
                dir.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FlumenError::invalid_option(
            "path",
            format!(
                "Path does not exist: {}; create the directory first (files added later are read as they appear)",
                dir.display()
            ),
        )),
        Err(e) => Err(FlumenError::io(dir, e)),
    }
}

#[async_trait]
impl StreamSource for FileSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.definition.schema)
    }

    fn description(&self) -> String {
        format!("FileStreamSource[{}]", to_uri(&self.definition.dir))
    }

    fn fingerprint(&self) -> String {
        format!(
            "FileStreamSource[{}, {}]",
            self.definition.format,
            to_uri(&self.definition.dir)
        )
    }

    fn read_limit(&self) -> ReadLimit {
        match self.definition.options.max_files_per_trigger {
            Some(n) => ReadLimit::MaxFiles(n),
            None => ReadLimit::All,
        }
    }

    async fn open(&self) -> Result<Box<dyn SourceReader>> {
        Err(FlumenError::IllegalState(
            "a file source keeps the list of files it took in the query's checkpoint; it is opened by a query (StreamSource::open_in)".into(),
        ))
    }

    async fn open_in(&self, context: &SourceContext) -> Result<Box<dyn SourceReader>> {
        let definition = Arc::clone(&self.definition);
        let log = SourceFileLog::new(context.metadata_path.join(FILE_LOG_DIR));
        let reader = blocking(move || FileSourceReader::restore(definition, log)).await?;
        Ok(Box::new(reader))
    }
}

/// Spark's `SeenFilesMap`: the files taken so far (with their modification times), purged of
/// those older than the age limit.
#[derive(Debug)]
struct SeenFiles {
    files: HashMap<String, i64>,
    /// Files taken and since purged: not new, but not skipped for their age either (only a
    /// file never taken gets the age warning). As large as the directory's listing at most.
    purged: HashSet<String>,
    max_age_ms: i64,
    latest_ms: i64,
    last_purge_ms: i64,
}

impl SeenFiles {
    fn new(max_age_ms: i64) -> Self {
        Self {
            files: HashMap::new(),
            purged: HashSet::new(),
            max_age_ms,
            latest_ms: 0,
            last_purge_ms: i64::MIN,
        }
    }

    fn add(&mut self, key: String, modification_ms: i64) {
        self.latest_ms = self.latest_ms.max(modification_ms);
        self.files.insert(key, modification_ms);
    }

    /// Neither taken before nor older than the age limit at the last purge.
    fn is_new(&self, key: &str, modification_ms: i64) -> bool {
        modification_ms >= self.last_purge_ms && !self.files.contains_key(key)
    }

    /// Never taken, but older than the age limit at the last purge.
    fn is_too_old(&self, key: &str, modification_ms: i64) -> bool {
        modification_ms < self.last_purge_ms
            && !self.files.contains_key(key)
            && !self.purged.contains(key)
    }

    /// Forgets files older than the newest one minus the age limit; from now on such files
    /// are not new.
    fn purge(&mut self) {
        self.last_purge_ms = self.latest_ms.saturating_sub(self.max_age_ms);
        let threshold = self.last_purge_ms;
        let purged = &mut self.purged;
        self.files.retain(|key, modified| {
            let keep = *modified >= threshold;
            if !keep {
                purged.insert(key.clone());
            }
            keep
        });
    }
}

/// One query run's reader of a file source.
struct FileSourceReader {
    definition: Arc<Definition>,
    log: SourceFileLog,
    /// The newest entry of the file log (-1 when empty).
    latest_entry: i64,
    seen: SeenFiles,
    /// The files an available-now run may take (fixed when it starts).
    available_now: Option<HashSet<String>>,
    /// Files left out for their age and already warned about.
    warned_too_old: HashSet<String>,
}

impl FileSourceReader {
    /// Reads the file log back: every logged file is taken.
    fn restore(definition: Arc<Definition>, log: SourceFileLog) -> Result<Self> {
        let mut seen = SeenFiles::new(definition.options.effective_max_age_ms());
        let ids = log.ids()?;
        for (expected, n) in ids.iter().enumerate() {
            if *n != expected as i64 {
                return Err(FlumenError::checkpoint(
                    log.path(expected as i64),
                    "is missing while later entries of the file log exist, so which files were read is unknown; restore it or start a new checkpoint location",
                ));
            }
            for entry in log.get(*n)? {
                let key = file_key(&definition, &from_uri(&entry.path));
                seen.add(key, entry.timestamp);
            }
        }
        seen.purge();
        Ok(Self {
            latest_entry: ids.last().copied().unwrap_or(-1),
            definition,
            log,
            seen,
            available_now: None,
            warned_too_old: HashSet::new(),
        })
    }

    /// The files of the directory not taken yet. A file never taken but older than the age
    /// limit (`maxFileAge`; e.g. copied in keeping an old modification time) is left out, as
    /// Spark leaves it out, with a warning the first time it is seen.
    async fn new_files(&mut self) -> Result<Vec<FileStatus>> {
        let dir = self.definition.dir.clone();
        let listed = blocking(move || list_data_files(&dir)).await?;
        let mut new = Vec::new();
        for file in listed {
            let key = file_key(&self.definition, &file.path);
            if self.seen.is_new(&key, file.modification_ms) {
                new.push(file);
            } else if self.seen.is_too_old(&key, file.modification_ms)
                && self.warned_too_old.insert(key)
            {
                tracing::warn!(
                    file = %file.path.display(),
                    modified_ms = file.modification_ms,
                    "skipping a file older than maxFileAge allows (relative to the newest file seen); touch it or raise maxFileAge to read it"
                );
            }
        }
        Ok(new)
    }

    fn description(&self) -> String {
        format!("FileStreamSource[{}]", to_uri(&self.definition.dir))
    }
}

/// How a file is identified among those taken: its path, or with `fileNameOnly` its name.
fn file_key(definition: &Definition, path: &Path) -> String {
    if definition.options.file_name_only {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        to_uri(path)
    }
}

fn log_offset(offset: &SourceOffset, source: &str) -> Result<i64> {
    offset
        .get("logOffset")
        .and_then(Value::as_i64)
        .ok_or_else(|| FlumenError::Source {
            source_name: source.to_string(),
            message: format!(
                "offset {offset} is not of the form {{\"logOffset\":N}}; the checkpoint belongs to another kind of source: start a new checkpoint location"
            ),
        })
}

fn offset_of(entry: i64) -> SourceOffset {
    json!({ "logOffset": entry })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        FlumenError::IllegalState(format!("a file source worker thread failed: {e}"))
    })?
}

#[async_trait]
impl SourceReader for FileSourceReader {
    async fn initial_offset(&mut self) -> Result<SourceOffset> {
        Ok(offset_of(-1))
    }

    async fn prepare_for_trigger_available_now(
        &mut self,
        start: &SourceOffset,
    ) -> Result<SourceOffset> {
        log_offset(start, &self.description())?;
        let files = self.new_files().await?;
        let keys: HashSet<String> = files
            .iter()
            .map(|f| file_key(&self.definition, &f.path))
            .collect();
        let count = keys.len();
        self.available_now = Some(keys);
        Ok(json!({ "availableNowFiles": count }))
    }

    async fn latest_offset(
        &mut self,
        start: &SourceOffset,
        limit: ReadLimit,
        cap: Option<&SourceOffset>,
    ) -> Result<SourceOffset> {
        let start_entry = log_offset(start, &self.description())?;
        if start_entry > self.latest_entry {
            return Err(FlumenError::checkpoint(
                self.log.path(start_entry),
                "is missing although the offset log refers to it; restore it or start a new checkpoint location",
            ));
        }
        if self.latest_entry > start_entry {
            // Logged by a run that stopped before the batch's offsets were written: that
            // entry is the next batch, whatever is in the directory now.
            return Ok(offset_of(start_entry + 1));
        }
        let mut files = self.new_files().await?;
        if cap.is_some()
            && let Some(allowed) = &self.available_now
        {
            files.retain(|f| allowed.contains(&file_key(&self.definition, &f.path)));
        }
        files.sort_by(|a, b| (a.modification_ms, &a.path).cmp(&(b.modification_ms, &b.path)));
        if self.definition.options.latest_first {
            files.reverse();
        }
        if let ReadLimit::MaxFiles(n) = limit {
            files.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if files.is_empty() {
            return Ok(offset_of(start_entry));
        }
        let entry = self.latest_entry + 1;
        let entries: Vec<SourceFileEntry> = files
            .iter()
            .map(|f| SourceFileEntry {
                path: to_uri(&f.path),
                timestamp: f.modification_ms,
                batch_id: entry,
            })
            .collect();
        let log = self.log.clone();
        blocking(move || log.add(entry, &entries)).await?;
        for f in &files {
            self.seen
                .add(file_key(&self.definition, &f.path), f.modification_ms);
        }
        self.seen.purge();
        self.latest_entry = entry;
        tracing::debug!(entry, files = files.len(), "file source took new files");
        Ok(offset_of(entry))
    }

    async fn get_batch(
        &mut self,
        start: &SourceOffset,
        end: &SourceOffset,
        projection: Option<&[usize]>,
    ) -> Result<Vec<RecordBatch>> {
        let description = self.description();
        let (from, to) = (
            log_offset(start, &description)?,
            log_offset(end, &description)?,
        );
        let log = self.log.clone();
        let files: Vec<(i64, SourceFileEntry)> = blocking(move || {
            let mut files = Vec::new();
            for n in from + 1..=to {
                files.extend(log.get(n)?.into_iter().map(|e| (n, e)));
            }
            Ok(files)
        })
        .await?;
        // The files are read in parallel, in as many groups as there are cores, and their
        // rows concatenated in log order.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_group = files.len().div_ceil(workers).max(1);
        let reads = files.chunks(per_group).map(|group| {
            let group = group.to_vec();
            let definition = Arc::clone(&self.definition);
            blocking(move || {
                let mut out = Vec::new();
                for (n, entry) in group {
                    out.extend(read_logged_file(&definition, n, &entry)?);
                }
                Ok(out)
            })
        });
        let groups = futures::future::try_join_all(reads).await?;
        let batches = groups.into_iter().flatten().filter(|b| b.num_rows() > 0);
        match projection {
            Some(p) => batches
                .map(|b| b.project(p).map_err(FlumenError::from))
                .collect(),
            None => Ok(batches.collect()),
        }
    }
}

/// Reads one file of log entry `n`.
fn read_logged_file(
    definition: &Definition,
    n: i64,
    entry: &SourceFileEntry,
) -> Result<Vec<RecordBatch>> {
    let path = from_uri(&entry.path);
    if !path.exists() {
        return Err(FlumenError::DataFile {
            path,
            reason: format!(
                "was taken by the file source's batch {n} but is gone; put it back to re-run the batch (or start a new checkpoint location, which reads the directory anew)"
            ),
        });
    }
    let partitions = partition_values(&definition.dir, &path);
    read_file(&path, &partitions, &definition.schema, &definition.read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_files_follow_sparks_age_rule() {
        let day = 86_400_000;
        let mut seen = SeenFiles::new(7 * day);
        // Before the first purge every file is new, however old.
        assert!(seen.is_new("a", 0));
        seen.add("a".into(), 0);
        seen.add("b".into(), 10 * day);
        seen.purge();
        assert!(!seen.is_new("b", 10 * day), "taken");
        assert!(
            !seen.is_new("c", 2 * day),
            "older than the newest minus 7 days"
        );
        assert!(seen.is_new("d", 4 * day));
        assert!(!seen.files.contains_key("a"), "purged, yet still not new");
        assert!(!seen.is_new("a", 0));
    }

    #[test]
    fn options_are_validated() {
        let options: Options = [("maxFileAge", "2d"), ("maxFilesPerTrigger", "3")]
            .into_iter()
            .collect();
        let parsed = FileSourceOptions::from_options(&options).unwrap();
        assert_eq!(parsed.max_file_age, Duration::from_secs(2 * 86_400));
        assert_eq!(parsed.max_files_per_trigger, Some(3));
        assert_eq!(parsed.effective_max_age_ms(), 2 * 86_400_000);
        let latest: Options = [("latestFirst", "true"), ("maxFilesPerTrigger", "1")]
            .into_iter()
            .collect();
        assert_eq!(
            FileSourceOptions::from_options(&latest)
                .unwrap()
                .effective_max_age_ms(),
            i64::MAX
        );
        for (key, value) in [
            ("maxFilesPerTrigger", "0"),
            ("maxFileAge", "soon"),
            ("maxBytesPerTrigger", "10"),
            ("cleanSource", "delete"),
            ("latestFirst", "yes"),
        ] {
            let options: Options = [(key, value)].into_iter().collect();
            let err = FileSourceOptions::from_options(&options).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
