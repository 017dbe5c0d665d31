//! The [`StreamingQuery`] handle (its state, shared with the execution, is in `query_shared.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{FlumenError, Result};
use crate::progress::{StreamingQueryProgress, StreamingQueryStatus};
use crate::query_shared::QueryShared;
pub use crate::query_shared::RECENT_PROGRESS_RETAINED;

/// A handle to a running (or finished) streaming query. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> flumen_engine::Result<()> {
/// use std::sync::Arc;
/// use flumen_engine::datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use flumen_engine::prelude::*;
///
/// let session = StreamSession::new();
/// let schema = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
/// let query = session
///     .stream(Arc::new(MemoryStream::new("words", schema)))?
///     .write_stream()
///     .memory()
///     .query_name("words")
///     .start()
///     .await?;
/// assert_eq!(query.name(), Some("words"));
/// assert!(query.is_active());
/// // Returns when the query is still running after the timeout.
/// let ended = query.await_termination(Some(std::time::Duration::from_millis(10))).await?;
/// assert!(!ended);
///
/// query.stop().await?;
/// assert!(!query.is_active());
/// assert!(query.exception().is_none()); // stopped, not failed
/// assert!(session.active_queries().is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct StreamingQuery {
    pub(crate) shared: Arc<QueryShared>,
}

impl StreamingQuery {
    /// The query id: stored in the checkpoint, the same across restarts.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The id of this run: new at every start.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The query name (`query_name`), if set.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// What the query is doing now.
    pub fn status(&self) -> StreamingQueryStatus {
        self.shared
            .state
            .lock()
            .map(|s| s.status.clone())
            .unwrap_or_else(|_| StreamingQueryStatus::new("Unknown", false, false))
    }

    /// Whether the query is still running.
    pub fn is_active(&self) -> bool {
        !self.shared.terminated()
    }

    /// The most recent progress report.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let batch = RecordBatch::try_from_iter([(
    ///     "word",
    ///     Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
    /// )])?;
    /// let input = Arc::new(MemoryStream::new("words", batch.schema()));
    /// input.add_batch(batch)?;
    /// let query = session
    ///     .stream(input)?
    ///     .write_stream()
    ///     .memory()
    ///     .query_name("words")
    ///     .start()
    ///     .await?;
    /// query.process_all_available().await?;
    ///
    /// let progress = query.last_progress().expect("one batch has run");
    /// assert_eq!((progress.batch_id, progress.num_input_rows), (0, 3));
    /// assert_eq!(progress.sources[0].description, "MemoryStream[words]");
    /// assert_eq!(progress.sources[0].end_offset.to_string(), r#"{"rows":3}"#);
    /// assert_eq!(progress.sink.description, "MemorySink[words]");
    /// println!("{}", progress.pretty_json()); // Spark's JSON form
    /// query.stop().await?;
    /// # Ok(()) }
    /// ```
    pub fn last_progress(&self) -> Option<StreamingQueryProgress> {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.recent.back().cloned())
    }

    /// Up to the last 100 progress reports, oldest first.
    pub fn recent_progress(&self) -> Vec<StreamingQueryProgress> {
        self.shared
            .state
            .lock()
            .map(|s| s.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The error that ended the query, if it failed.
    pub fn exception(&self) -> Option<Arc<FlumenError>> {
        self.shared.state.lock().ok().and_then(|s| s.error.clone())
    }

    /// The physical plan the query re-executes for every micro-batch, with the metrics
    /// accumulated so far (Spark's `explain`). Shows, for instance, that a static join's build
    /// side was read once: its `build_input_rows` stays the size of the static table.
    pub fn explain(&self) -> String {
        let plan = self.shared.plan.lock().ok().and_then(|p| p.clone());
        match plan {
            Some(plan) => {
                datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                    plan.as_ref(),
                )
                .indent(true)
                .to_string()
            }
            None => "<no plan>".to_string(),
        }
    }

    /// Waits for the query to end. With a timeout, returns `Ok(false)` if it is still running
    /// when the timeout passes. Returns the query's error if it failed (also when it had already
    /// ended).
    pub async fn await_termination(&self, timeout: Option<Duration>) -> Result<bool> {
        let mut changes = self.shared.changed.subscribe();
        let wait = async {
            loop {
                if self.shared.terminated() {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let ended = match timeout {
            Some(t) => tokio::time::timeout(t, wait).await.is_ok(),
            None => {
                wait.await;
                true
            }
        };
        match self.shared.failure() {
            Some(e) if ended => Err(e),
            _ => Ok(ended),
        }
    }

    /// Blocks until every record available in the sources when it was called has been processed
    /// and committed (Spark's `processAllAvailable`, meant for tests and examples). Returns the
    /// query's error if it fails meanwhile.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    /// use flumen_engine::prelude::*;
    ///
    /// let numbers = |values: Vec<i64>| {
    ///     RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(values)) as ArrayRef)])
    /// };
    /// let session = StreamSession::new();
    /// let input = Arc::new(MemoryStream::new("numbers", numbers(vec![])?.schema()));
    /// let query = session
    ///     .stream(input.clone())?
    ///     .filter(col("n").gt(lit(1)))?
    ///     .write_stream()
    ///     .memory()
    ///     .query_name("big_numbers")
    ///     .start()
    ///     .await?;
    /// let total = async || -> flumen_engine::Result<usize> {
    ///     let rows = session.sql("SELECT n FROM big_numbers").await?.collect().await?;
    ///     Ok(rows.iter().map(|b| b.num_rows()).sum())
    /// };
    ///
    /// input.add_batch(numbers(vec![1, 2, 3])?)?;
    /// query.process_all_available().await?; // every row added so far is in the sink
    /// assert_eq!(total().await?, 2);
    /// input.add_batch(numbers(vec![4])?)?;
    /// query.process_all_available().await?;
    /// assert_eq!(total().await?, 3);
    /// query.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn process_all_available(&self) -> Result<()> {
        let ticket = self.shared.idle_requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut changes = self.shared.changed.subscribe();
        loop {
            if let Some(e) = self.shared.failure() {
                return Err(e);
            }
            if self.shared.idle_answered.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            if self.shared.terminated() {
                return Ok(());
            }
            if changes.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Stops the query after its current batch (a batch is never left half-written) and waits
    /// for it to end. Called from inside the query (e.g. in `foreach_batch`), it only asks the
    /// query to stop after the batch, since waiting there would wait on itself.
    pub async fn stop(&self) -> Result<()> {
        self.shared.stop.send_replace(true);
        let inside = tokio::task::try_id().is_some_and(|current| {
            self.shared
                .task_id
                .lock()
                .ok()
                .and_then(|id| *id)
                .is_some_and(|id| id == current)
        });
        if inside {
            return Ok(());
        }
        let mut changes = self.shared.changed.subscribe();
        while !self.shared.terminated() {
            if changes.changed().await.is_err() {
                break;
            }
        }
        let task = self.shared.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.await
                .map_err(|e| FlumenError::IllegalState(format!("query task panicked: {e}")))?;
        }
        Ok(())
    }
}
