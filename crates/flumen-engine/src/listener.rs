//! Query listeners: callbacks for a session's query lifecycle (Spark's
//! `StreamingQueryListener`).
//!
//! A listener registered with [`StreamSession::add_listener`] hears about every query of the
//! session: when it starts, after each micro-batch (with its [`StreamingQueryProgress`]), when it
//! has been idle for a while, and when it ends (with its error, if it failed).
//!
//! Events are delivered the way Spark delivers them: asynchronously, on one dispatcher thread per
//! session, in the order they happened (so in order per query). A query never waits for its
//! listeners: events go through a bounded queue ([`LISTENER_QUEUE_CAPACITY`]); when a slow listener
//! lets it fill up, further events are dropped and counted, with a warning, instead of stalling
//! the micro-batch loop. A listener that panics is logged and keeps receiving later events; the
//! panic never reaches the query.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> flumen_engine::Result<()> {
//! use std::sync::{Arc, mpsc};
//! use datafusion::arrow::array::{Int64Array, RecordBatch};
//! use datafusion::arrow::datatypes::{DataType, Field, Schema};
//! use flumen_engine::listener::*;
//! use flumen_engine::prelude::*;
//!
//! /// Sends every event's JSON to a channel.
//! struct Recorder(std::sync::Mutex<mpsc::Sender<String>>);
//! impl StreamingQueryListener for Recorder {
//!     fn on_query_started(&self, event: &QueryStartedEvent) {
//!         self.0.lock().unwrap().send(format!("started {}", event.name.as_deref().unwrap_or(""))).ok();
//!     }
//!     fn on_query_progress(&self, event: &QueryProgressEvent) {
//!         self.0.lock().unwrap().send(format!("batch {}: {} rows", event.progress.batch_id, event.progress.num_input_rows)).ok();
//!     }
//!     fn on_query_terminated(&self, event: &QueryTerminatedEvent) {
//!         self.0.lock().unwrap().send(format!("terminated, exception: {:?}", event.exception)).ok();
//!     }
//! }
//!
//! let session = StreamSession::new();
//! let (tx, rx) = mpsc::channel();
//! let id = session.add_listener(Arc::new(Recorder(std::sync::Mutex::new(tx))));
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
//! let input = MemoryStream::new("numbers", schema.clone());
//! input.add_batch(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?)?;
//! let query = session.stream(Arc::new(input))?.write_stream().memory().query_name("numbers").start().await?;
//! query.process_all_available().await?;
//! query.stop().await?;
//!
//! let events: Vec<String> = rx.iter().take(3).collect(); // delivered asynchronously, in order
//! assert_eq!(events, ["started numbers", "batch 0: 3 rows", "terminated, exception: None"]);
//! assert!(session.remove_listener(id));
//! # Ok(()) }
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::progress::StreamingQueryProgress;
use crate::query_shared::{QueryEvents, QueryShared};
use crate::session::StreamSession;

/// How many events may wait for the listeners before new ones are dropped (Spark's listener bus
/// queue holds 10,000 too).
pub const LISTENER_QUEUE_CAPACITY: usize = 10_000;

/// Callbacks for the lifecycle of a session's streaming queries (Spark's
/// `StreamingQueryListener`). Every method does nothing by default; implement the ones you need.
///
/// Methods run on the session's listener thread, never on a query's task: a slow listener delays
/// other listeners' events (and may make the session drop events once
/// [`LISTENER_QUEUE_CAPACITY`] are queued), but never a query.
pub trait StreamingQueryListener: Send + Sync + 'static {
    /// A query was started (posted before `start()` returns, delivered asynchronously).
    fn on_query_started(&self, _event: &QueryStartedEvent) {}

    /// A query finished a micro-batch.
    fn on_query_progress(&self, _event: &QueryProgressEvent) {}

    /// A query found no new data for a while (every 10 s while idle, Spark's
    /// `noDataProgressEventInterval`).
    fn on_query_idle(&self, _event: &QueryIdleEvent) {}

    /// A query ended: stopped, finished its trigger, or failed (then `exception` says why).
    fn on_query_terminated(&self, _event: &QueryTerminatedEvent) {}
}

/// A query started (Spark's `QueryStartedEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryStartedEvent {
    /// The query id (stable across restarts).
    pub id: String,
    /// The id of this run.
    pub run_id: String,
    /// The query name, if any.
    pub name: Option<String>,
    /// When the query started, ISO-8601 UTC with milliseconds.
    pub timestamp: String,
}

/// A query finished a micro-batch (Spark's `QueryProgressEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryProgressEvent {
    /// The batch's progress report.
    pub progress: StreamingQueryProgress,
}

/// A query has been waiting for data (Spark's `QueryIdleEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryIdleEvent {
    /// The query id.
    pub id: String,
    /// The id of this run.
    pub run_id: String,
    /// When the idle trigger ran, ISO-8601 UTC with milliseconds.
    pub timestamp: String,
}

/// A query ended (Spark's `QueryTerminatedEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryTerminatedEvent {
    /// The query id.
    pub id: String,
    /// The id of this run.
    pub run_id: String,
    /// The error that ended the query; `None` when it was stopped or its trigger completed.
    pub exception: Option<String>,
}

macro_rules! json_methods {
    ($($event:ty),*) => {$(
        impl $event {
            /// The event as Spark-shaped JSON text.
            pub fn json(&self) -> String {
                serde_json::to_string(self).unwrap_or_default()
            }
        }
    )*};
}
json_methods!(
    QueryStartedEvent,
    QueryProgressEvent,
    QueryIdleEvent,
    QueryTerminatedEvent
);

/// Any of the four events, as queued for the listeners.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryEvent {
    /// See [`StreamingQueryListener::on_query_started`].
    Started(QueryStartedEvent),
    /// See [`StreamingQueryListener::on_query_progress`].
    Progress(Box<QueryProgressEvent>),
    /// See [`StreamingQueryListener::on_query_idle`].
    Idle(QueryIdleEvent),
    /// See [`StreamingQueryListener::on_query_terminated`].
    Terminated(QueryTerminatedEvent),
}

impl QueryEvent {
    fn name(&self) -> &'static str {
        match self {
            Self::Started(_) => "onQueryStarted",
            Self::Progress(_) => "onQueryProgress",
            Self::Idle(_) => "onQueryIdle",
            Self::Terminated(_) => "onQueryTerminated",
        }
    }

    fn deliver(&self, listener: &dyn StreamingQueryListener) {
        match self {
            Self::Started(e) => listener.on_query_started(e),
            Self::Progress(e) => listener.on_query_progress(e),
            Self::Idle(e) => listener.on_query_idle(e),
            Self::Terminated(e) => listener.on_query_terminated(e),
        }
    }
}

/// Identifies a registered listener, for [`StreamSession::remove_listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

type Listeners = Arc<RwLock<Vec<(ListenerId, Arc<dyn StreamingQueryListener>)>>>;

/// A session's listeners and the queue to their dispatcher thread.
pub(crate) struct ListenerBus {
    listeners: Listeners,
    /// Started with the first listener; dropping it ends the dispatcher thread.
    sender: Mutex<Option<SyncSender<QueryEvent>>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for ListenerBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerBus")
            .field("listeners", &self.listeners.read().map(|l| l.len()).ok())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl ListenerBus {
    pub(crate) fn new() -> Self {
        Self {
            listeners: Arc::new(RwLock::new(Vec::new())),
            sender: Mutex::new(None),
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn add(&self, listener: Arc<dyn StreamingQueryListener>) -> ListenerId {
        let id = ListenerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        if let Ok(mut listeners) = self.listeners.write() {
            listeners.push((id, listener));
        }
        if let Ok(mut sender) = self.sender.lock()
            && sender.is_none()
        {
            let (tx, rx) = sync_channel(LISTENER_QUEUE_CAPACITY);
            let listeners = Arc::clone(&self.listeners);
            let spawned = std::thread::Builder::new()
                .name("flumen-listeners".into())
                .spawn(move || dispatch(&rx, &listeners));
            match spawned {
                Ok(_) => *sender = Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the query listener thread; listeners will not be called")
                }
            }
        }
        id
    }

    fn remove(&self, id: ListenerId) -> bool {
        self.listeners
            .write()
            .map(|mut listeners| {
                let before = listeners.len();
                listeners.retain(|(i, _)| *i != id);
                listeners.len() != before
            })
            .unwrap_or(false)
    }

    fn has_listeners(&self) -> bool {
        self.listeners
            .read()
            .map(|l| !l.is_empty())
            .unwrap_or(false)
    }

    /// Queues an event for the listeners registered now; never blocks.
    pub(crate) fn post(&self, event: QueryEvent) {
        if !self.has_listeners() {
            return;
        }
        let Ok(sender) = self.sender.lock() else {
            return;
        };
        let Some(sender) = sender.as_ref() else {
            return;
        };
        match sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Once per power of two, so a stuck listener does not flood the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        event = event.name(),
                        dropped,
                        "the query listeners are {LISTENER_QUEUE_CAPACITY} events behind; dropping events (a listener is too slow or blocked)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Events dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The dispatcher thread: delivers each event to every listener, containing panics.
fn dispatch(events: &Receiver<QueryEvent>, listeners: &Listeners) {
    while let Ok(event) = events.recv() {
        let current: Vec<_> = listeners
            .read()
            .map(|l| l.iter().map(|(_, l)| Arc::clone(l)).collect())
            .unwrap_or_default();
        for listener in current {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| event.deliver(listener.as_ref())))
            {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::warn!(
                    event = event.name(),
                    panic = %message,
                    "a streaming query listener panicked; the query is unaffected"
                );
            }
        }
    }
}

/// Now, as Spark formats event timestamps.
pub(crate) fn now_timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl StreamSession {
    /// Registers a listener for the lifecycle events of this session's queries (Spark's
    /// `spark.streams.addListener`). It hears about events that happen from now on, for queries
    /// started before or after it was added. Returns an id for [`StreamSession::remove_listener`].
    pub fn add_listener(&self, listener: Arc<dyn StreamingQueryListener>) -> ListenerId {
        self.listener_bus().add(listener)
    }

    /// Unregisters a listener; returns false if it was not registered. Events already queued may
    /// still reach it.
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        self.listener_bus().remove(id)
    }

    /// How many listener events this session has dropped because its listeners fell
    /// [`LISTENER_QUEUE_CAPACITY`] events behind (0 unless a listener is too slow).
    pub fn dropped_listener_events(&self) -> u64 {
        self.listener_bus().dropped()
    }
}

/// The engine's hooks: each builds and posts an event only when the session has listeners.
impl QueryEvents for ListenerBus {
    fn started(&self, query: &QueryShared) {
        self.post_with(|| {
            QueryEvent::Started(QueryStartedEvent {
                id: query.id.clone(),
                run_id: query.run_id.clone(),
                name: query.name.clone(),
                timestamp: now_timestamp(),
            })
        });
    }

    fn progress(&self, query: &QueryShared) {
        self.post_with(|| {
            let progress = query.state.lock().ok()?.recent.back().cloned()?;
            Some(QueryEvent::Progress(Box::new(QueryProgressEvent {
                progress,
            })))
        });
    }

    fn idle(&self, query: &QueryShared, timestamp: String) {
        self.post_with(|| {
            QueryEvent::Idle(QueryIdleEvent {
                id: query.id.clone(),
                run_id: query.run_id.clone(),
                timestamp,
            })
        });
    }

    fn terminated(&self, query: &QueryShared) {
        self.post_with(|| {
            let exception = query
                .state
                .lock()
                .ok()
                .and_then(|s| s.error.as_ref().map(|e| e.to_string()));
            QueryEvent::Terminated(QueryTerminatedEvent {
                id: query.id.clone(),
                run_id: query.run_id.clone(),
                exception,
            })
        });
    }
}

impl ListenerBus {
    /// Builds and posts an event, only when someone listens.
    fn post_with<E: Into<Option<QueryEvent>>>(&self, event: impl FnOnce() -> E) {
        if self.has_listeners()
            && let Some(event) = event().into()
        {
            self.post(event);
        }
    }
}
