//! The state a streaming query's execution shares with its handles: status, recent progress,
//! the error that ended it, stop and idle requests, and where its lifecycle events go.
//!
//! A leaf below both sides: the micro-batch loop (`exec.rs`) writes it, the API's
//! [`StreamingQuery`](crate::StreamingQuery) reads it, and the session's listeners hear about it
//! through [`QueryEvents`], which `listener.rs` implements.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::FlumenError;
use crate::progress::{StreamingQueryProgress, StreamingQueryStatus};

/// Where a query's lifecycle events go (the session's listener bus). Each call reads what it
/// needs from the query's shared state, and should cost nothing when nobody listens.
pub(crate) trait QueryEvents: Send + Sync + std::fmt::Debug {
    /// The query started.
    fn started(&self, query: &QueryShared);
    /// The query recorded a progress report (its latest).
    fn progress(&self, query: &QueryShared);
    /// The query found no data, as of `timestamp`.
    fn idle(&self, query: &QueryShared, timestamp: String);
    /// The query ended.
    fn terminated(&self, query: &QueryShared);
}

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
    /// Where the query's lifecycle events go, set when the session registers the query.
    pub events: std::sync::OnceLock<Arc<dyn QueryEvents>>,
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
            events: std::sync::OnceLock::new(),
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

    pub(crate) fn failure(&self) -> Option<FlumenError> {
        let state = self.state.lock().ok()?;
        state.error.as_ref().map(|cause| FlumenError::QueryFailed {
            name: self.name.clone().unwrap_or_else(|| "<unnamed>".into()),
            id: self.id.clone(),
            run_id: self.run_id.clone(),
            cause: Arc::clone(cause),
        })
    }

    pub(crate) fn terminated(&self) -> bool {
        self.state.lock().map(|s| s.terminated).unwrap_or(true)
    }

    /// Called once, when the session registers the query: remembers where its events go and
    /// tells them the query started.
    pub(crate) fn attach_events(&self, events: Arc<dyn QueryEvents>) {
        if self.events.set(events).is_ok()
            && let Some(events) = self.events.get()
        {
            events.started(self);
        }
    }

    /// Tells the listeners about the latest progress report.
    pub(crate) fn post_last_progress(&self) {
        if let Some(events) = self.events.get() {
            events.progress(self);
        }
    }

    /// Tells the listeners the query is idle, as of `timestamp`.
    pub(crate) fn post_idle(&self, timestamp: String) {
        if let Some(events) = self.events.get() {
            events.idle(self, timestamp);
        }
    }

    /// Tells the listeners the query ended (with its error, if it failed).
    pub(crate) fn post_terminated(&self) {
        if let Some(events) = self.events.get() {
            events.terminated(self);
        }
    }
}
