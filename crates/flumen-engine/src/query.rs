//! The [`StreamingQuery`] handle and the state it shares with the query's execution.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{FlumenError, Result};
use crate::progress::{StreamingQueryProgress, StreamingQueryStatus};

/// The mutable part of a query's shared state.
#[derive(Debug)]
pub(crate) struct QueryState {
    pub status: StreamingQueryStatus,
    pub recent: VecDeque<StreamingQueryProgress>,
    pub error: Option<Arc<FlumenError>>,
    pub terminated: bool,
}

/// How many progress reports a query keeps (Spark's `numRecentProgressUpdates`).
pub const RECENT_PROGRESS_RETAINED: usize = 100;

/// State shared between a query's handle(s) and its execution task.
#[derive(Debug)]
pub(crate) struct QueryShared {
    pub id: String,
    pub run_id: String,
    pub name: Option<String>,
    pub state: Mutex<QueryState>,
    /// Bumped on every state change; waiters watch it.
    pub changed: watch::Sender<u64>,
    /// Set to true to ask the execution task to stop.
    pub stop: watch::Sender<bool>,
    /// `process_all_available` requests issued / answered (see [`StreamingQuery::process_all_available`]).
    pub idle_requested: AtomicU64,
    pub idle_answered: AtomicU64,
    pub task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The id of the task running the query.
    pub task_id: Mutex<Option<tokio::task::Id>>,
    /// The query's physical plan, for `explain`.
    pub plan: Mutex<Option<Arc<dyn datafusion::physical_plan::ExecutionPlan>>>,
    /// The session's listeners, set when the query is registered (see `listener.rs`).
    pub listeners: std::sync::OnceLock<Arc<crate::listener::ListenerBus>>,
}

impl QueryShared {
    pub(crate) fn new(id: String, name: Option<String>) -> Self {
        Self {
            id,
            run_id: uuid::Uuid::new_v4().to_string(),
            name,
            state: Mutex::new(QueryState {
                status: StreamingQueryStatus::new("Initializing sources", false, false),
                recent: VecDeque::new(),
                error: None,
                terminated: false,
            }),
            changed: watch::channel(0).0,
            stop: watch::channel(false).0,
            idle_requested: AtomicU64::new(0),
            idle_answered: AtomicU64::new(0),
            task: Mutex::new(None),
            task_id: Mutex::new(None),
            plan: Mutex::new(None),
            listeners: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut QueryState)) {
        if let Ok(mut state) = self.state.lock() {
            f(&mut state);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    pub(crate) fn set_status(&self, message: &str, data: bool, active: bool) {
        self.update(|s| s.status = StreamingQueryStatus::new(message, data, active));
    }

    pub(crate) fn push_progress(&self, progress: StreamingQueryProgress) {
        self.record_progress(progress);
        self.post_last_progress();
    }

    /// Records the progress of a trigger that found no data; listeners hear `on_query_idle`.
    pub(crate) fn push_idle_progress(&self, progress: StreamingQueryProgress) {
        let timestamp = progress.timestamp.clone();
        self.record_progress(progress);
        self.post_idle(timestamp);
    }

    fn record_progress(&self, progress: StreamingQueryProgress) {
        tracing::info!(target: "flumen::progress", query = %self.id, batch = progress.batch_id, rows = progress.num_input_rows, "{}", progress.json());
        self.update(|s| {
            if s.recent.len() == RECENT_PROGRESS_RETAINED {
                s.recent.pop_front();
            }
            s.recent.push_back(progress);
        });
    }

    pub(crate) fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    fn failure(&self) -> Option<FlumenError> {
        let state = self.state.lock().ok()?;
        state.error.as_ref().map(|cause| FlumenError::QueryFailed {
            name: self.name.clone().unwrap_or_else(|| "<unnamed>".into()),
            id: self.id.clone(),
            run_id: self.run_id.clone(),
            cause: Arc::clone(cause),
        })
    }

    fn terminated(&self) -> bool {
        self.state.lock().map(|s| s.terminated).unwrap_or(true)
    }
}

/// A handle to a running (or finished) streaming query. Cheap to clone.
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
