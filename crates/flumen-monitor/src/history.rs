//! What the server remembers about a session's queries: a bounded history of progress reports per
//! query run (for the page's charts) and running totals (for Prometheus counters).
//!
//! It is fed by a [`StreamingQueryListener`] registered on the session, so it hears about queries
//! started after the server, and seeded from each existing query's `recent_progress()` so queries
//! started before it are not blank. Everything else — status, activity, errors — is read live
//! from the query handles, which are always current.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use flumen_engine::listener::{
    QueryIdleEvent, QueryProgressEvent, QueryStartedEvent, StreamingQueryListener,
};
use flumen_engine::{StreamSession, StreamingQuery, StreamingQueryProgress};

/// Upper bounds (seconds) of the batch-duration histogram's buckets.
pub(crate) const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How many of the latest reports a new one is compared with to drop duplicates.
const DEDUP_WINDOW: usize = 256;

/// Totals over the batches the server has seen of one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    /// Micro-batches that ran (triggers that found data).
    pub batches: u64,
    pub input_rows: u64,
    pub output_rows: u64,
    /// Milliseconds per phase (`durationMs`), summed.
    pub phase_ms: BTreeMap<String, u64>,
    /// Batches per duration bucket (not cumulative); the last slot is `+Inf`.
    pub duration_buckets: [u64; DURATION_BUCKETS.len() + 1],
    pub duration_sum_seconds: f64,
    /// Rows dropped by the watermark, per stateful operator name.
    pub dropped_by_watermark: BTreeMap<String, u64>,
}

impl Totals {
    pub(crate) fn add(&mut self, progress: &StreamingQueryProgress) {
        self.batches += 1;
        self.input_rows += progress.num_input_rows;
        self.output_rows += progress.sink.num_output_rows.max(0) as u64;
        for (phase, ms) in &progress.duration_ms {
            *self.phase_ms.entry(phase.clone()).or_default() += ms;
        }
        let seconds = progress.batch_duration as f64 / 1000.0;
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[bucket] += 1;
        self.duration_sum_seconds += seconds;
        for (name, op) in operator_names(progress) {
            *self.dropped_by_watermark.entry(name).or_default() += op.num_rows_dropped_by_watermark;
        }
    }
}

/// Stateful operators with names unique within the report (`stateStoreSave`, `stateStoreSave#1`).
pub(crate) fn operator_names(
    progress: &StreamingQueryProgress,
) -> Vec<(String, &flumen_engine::StateOperatorProgress)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    progress
        .state_operators
        .iter()
        .map(|op| {
            let n = seen.entry(op.operator_name.as_str()).or_default();
            let name = if *n == 0 {
                op.operator_name.clone()
            } else {
                format!("{}#{n}", op.operator_name)
            };
            *n += 1;
            (name, op)
        })
        .collect()
}

/// One query run's history.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub progress: VecDeque<StreamingQueryProgress>,
    pub totals: Totals,
}

/// The recorded runs, by run id.
#[derive(Debug)]
pub(crate) struct History {
    capacity: usize,
    runs: Mutex<HashMap<String, Run>>,
}

/// Whether a progress report is for a trigger that ran a batch (an idle trigger's report times
/// only `triggerExecution`).
fn ran_a_batch(progress: &StreamingQueryProgress) -> bool {
    progress.duration_ms.contains_key("addBatch")
}

impl History {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            runs: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Run>> {
        // A panic while holding the lock cannot leave a run half-updated in a harmful way, so a
        // poisoned lock is still used.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a report unless it is already there (seeding and events can overlap).
    fn record(runs: &mut HashMap<String, Run>, capacity: usize, progress: StreamingQueryProgress) {
        let run = runs.entry(progress.run_id.clone()).or_default();
        let duplicate = run
            .progress
            .iter()
            .rev()
            .take(DEDUP_WINDOW)
            .any(|p| p.batch_id == progress.batch_id && p.timestamp == progress.timestamp);
        if duplicate {
            return;
        }
        if ran_a_batch(&progress) {
            run.totals.add(&progress);
        }
        if run.progress.len() >= capacity {
            run.progress.pop_front();
        }
        run.progress.push_back(progress);
    }

    /// Records everything the session's queries still hold. Call with the lock held, right after
    /// the listener is registered: later events wait on the lock, then deduplicate.
    pub(crate) fn seed(&self, runs: &mut HashMap<String, Run>, session: &StreamSession) {
        for query in session.queries() {
            runs.entry(query.run_id().to_string()).or_default();
            for progress in query.recent_progress() {
                Self::record(runs, self.capacity, progress);
            }
        }
    }

    /// The recorded reports of a run, oldest first, at most `limit`.
    pub(crate) fn progress(
        &self,
        run_id: &str,
        limit: usize,
    ) -> Option<Vec<StreamingQueryProgress>> {
        let runs = self.lock();
        let run = runs.get(run_id)?;
        let skip = run.progress.len().saturating_sub(limit);
        Some(run.progress.iter().skip(skip).cloned().collect())
    }

    /// The totals of a run.
    pub(crate) fn totals(&self, run_id: &str) -> Totals {
        self.lock()
            .get(run_id)
            .map(|r| r.totals.clone())
            .unwrap_or_default()
    }
}

/// The listener feeding a [`History`].
pub(crate) struct Recorder {
    pub history: Arc<History>,
    pub session: StreamSession,
}

impl Recorder {
    fn query(&self, run_id: &str) -> Option<StreamingQuery> {
        self.session
            .queries()
            .into_iter()
            .rev()
            .find(|q| q.run_id() == run_id)
    }
}

impl StreamingQueryListener for Recorder {
    fn on_query_started(&self, event: &QueryStartedEvent) {
        self.history.lock().entry(event.run_id.clone()).or_default();
    }

    fn on_query_progress(&self, event: &QueryProgressEvent) {
        let mut runs = self.history.lock();
        History::record(&mut runs, self.history.capacity, event.progress.clone());
    }

    fn on_query_idle(&self, event: &QueryIdleEvent) {
        // The idle trigger's report (zero rows) keeps the charts' timelines going.
        let Some(progress) = self.query(&event.run_id).and_then(|q| q.last_progress()) else {
            return;
        };
        if progress.timestamp == event.timestamp {
            let mut runs = self.history.lock();
            History::record(&mut runs, self.history.capacity, progress);
        }
    }
}
