//! The contract between the engine and a streaming source.
//!
//! A [`StreamSource`] is a source *definition* (what `read_stream()...load()` returns); each
//! query opens its own [`SourceReader`]. Offsets are opaque JSON to the engine: the engine stores
//! them in the checkpoint's offset log and hands them back verbatim, so a restart re-reads
//! exactly the same range. For Kafka they are Spark's `{"topic":{"partition":offset}}` maps, with
//! the end offset exclusive.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use serde_json::Value;

use crate::error::Result;

/// A position in a source, as JSON (stored verbatim in `offsets/N`).
pub type SourceOffset = Value;

/// How much a trigger may read (Spark's `ReadLimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    /// Everything available.
    All,
    /// At most this many records, summed over partitions.
    MaxRows(u64),
    /// At most this many files (Spark's `maxFilesPerTrigger`); sources without files read
    /// everything.
    MaxFiles(u64),
}

/// What a source learns about the query it is opened for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceContext {
    /// A directory of the checkpoint reserved for this source's own metadata (Spark's
    /// `<checkpoint>/sources/<i>`), e.g. the file source's log of the files each batch takes.
    /// The engine keeps the source's initial offset in its file `0`.
    pub metadata_path: PathBuf,
}

impl SourceContext {
    /// A context whose source metadata lives in `metadata_path`.
    pub fn new(metadata_path: impl Into<PathBuf>) -> Self {
        Self {
            metadata_path: metadata_path.into(),
        }
    }
}

/// A streaming source definition: a fixed schema, and a way to open a reader per query.
#[async_trait]
pub trait StreamSource: Debug + Send + Sync {
    /// The schema of the rows this source produces (fixed, like Spark's Kafka schema).
    fn schema(&self) -> SchemaRef;

    /// A description for progress reports, e.g. `KafkaV2[Subscribe[demo-topic]]`.
    fn description(&self) -> String;

    /// A fingerprint of the settings that must not change across restarts of one checkpoint
    /// (e.g. the subscribed topics). Stored in the offset log and compared on restart.
    fn fingerprint(&self) -> String {
        self.description()
    }

    /// How much one trigger may read (e.g. Kafka's `maxOffsetsPerTrigger`); everything by default.
    fn read_limit(&self) -> ReadLimit {
        ReadLimit::All
    }

    /// An expression naming each row's source partition (for Kafka `topic:partition`), if the
    /// source has partitions: watermarks are tracked per partition.
    fn partition_key(&self) -> Option<datafusion::logical_expr::Expr> {
        None
    }

    /// Opens a reader for one query run.
    async fn open(&self) -> Result<Box<dyn SourceReader>>;

    /// Opens a reader for one query run of the query described by `context`; sources that
    /// keep metadata in the checkpoint (the file source) need it. By default [`open`](Self::open).
    async fn open_in(&self, context: &SourceContext) -> Result<Box<dyn SourceReader>> {
        let _ = context;
        self.open().await
    }
}

/// One query run's connection to a source.
#[async_trait]
pub trait SourceReader: Send + Sync {
    /// Where a brand-new query starts (from the source's starting options).
    async fn initial_offset(&mut self) -> Result<SourceOffset>;

    /// The end offset of the next batch starting at `start`: as far as the data available now,
    /// but no further than `limit` allows or than `cap` (the target of an available-now trigger).
    /// Equal to `start` when there is no new data.
    async fn latest_offset(
        &mut self,
        start: &SourceOffset,
        limit: ReadLimit,
        cap: Option<&SourceOffset>,
    ) -> Result<SourceOffset>;

    /// The rows in `[start, end)`, exactly; calling it again with the same range yields the
    /// same rows (as long as the source still retains them).
    async fn get_batch(
        &mut self,
        start: &SourceOffset,
        end: &SourceOffset,
        projection: Option<&[usize]>,
    ) -> Result<Vec<RecordBatch>>;

    /// Called once when an available-now (or once) query starts, after any uncommitted batch
    /// was re-run: fixes what "available now" means and returns the offset to stop at, which
    /// is then passed to [`latest_offset`](Self::latest_offset) as its `cap` (Spark's
    /// `prepareForTriggerAvailableNow`). The offset need not be one a batch ends at; it is not
    /// logged. By default, the latest offset with no limit.
    async fn prepare_for_trigger_available_now(
        &mut self,
        start: &SourceOffset,
    ) -> Result<SourceOffset> {
        self.latest_offset(start, ReadLimit::All, None).await
    }

    /// Called after batch ending at `end` is committed; sources may release data or commit
    /// offsets for monitoring. The default does nothing.
    async fn commit(&mut self, _end: &SourceOffset) -> Result<()> {
        Ok(())
    }

    /// The most recent offset available in the source, as seen by the last `latest_offset`
    /// call, before rate limits (Spark's `reportLatestOffset`); progress reports show it as
    /// `latestOffset`, so monitors can compute lag. `None` (the default) reports the batch's end.
    fn report_latest_offset(&self) -> Option<SourceOffset> {
        None
    }

    /// Source-specific metrics for progress (e.g. Kafka lag), as a JSON object of strings.
    fn metrics(
        &self,
        _latest: &SourceOffset,
        _end: &SourceOffset,
    ) -> serde_json::Map<String, Value> {
        serde_json::Map::new()
    }

    /// The partitions an offset covers, named as [`StreamSource::partition_key`] names them: a
    /// partition that has not delivered rows yet still holds the watermark back, until it is
    /// idle.
    fn partition_keys(&self, _offset: &SourceOffset) -> Vec<String> {
        Vec::new()
    }

    /// Counts rows between two offsets when the source can tell without reading (Kafka can).
    fn count_between(&self, _start: &SourceOffset, _end: &SourceOffset) -> Option<u64> {
        None
    }
}

/// A source shared between frames and queries.
pub type SourceRef = Arc<dyn StreamSource>;
