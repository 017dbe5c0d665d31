//! The micro-batch loop: one task per query.
//!
//! Per trigger: ask each source for the end of the next batch (a batch runs when any source has
//! new data); write `offsets/N` (write-ahead, one line per source); fetch exactly those ranges;
//! run them through the query's physical plan; hand the result to the sink with batch id N;
//! write `commits/N`. On restart, a batch with offsets but no commit is re-run with identical
//! offsets and batch id, so an idempotent sink sees it exactly once. With several watermarks,
//! the query's watermark is the minimum of theirs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeZone, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::collect_partitioned;
use futures::FutureExt;
use tracing::Instrument;

use crate::checkpoint::{
    Checkpoint, CommitEntry, MIN_BATCHES_TO_RETAIN, OffsetEntry, OffsetMetadata, StateLayout,
};
use crate::dead_letters::DeadLetters;
use crate::error::{FlumenError, Result};
use crate::failpoint;
use crate::modes::{OutputMode, Trigger};
use crate::plan::QueryPlan;
use crate::progress::{SinkProgress, SourceProgress, StreamingQueryProgress, rate};
use crate::query_shared::QueryShared;
use crate::sink::{SinkContext, StreamSink};
use crate::source::{ReadLimit, SourceContext, SourceOffset, SourceReader};
use crate::stateful::store::StateStore;
use crate::stateful::watermark::{EventTimeStats, WatermarkTracker};
use crate::stateful::{OperatorWatermarks, iso_millis};

/// How long an idle query waits between looks for new data, at most (Spark's
/// `spark.sql.streaming.pollingDelay` is also 10 ms).
const MAX_IDLE_POLL: Duration = Duration::from_millis(10);
/// How often an idle query reports progress (Spark's `noDataProgressEventInterval`).
const IDLE_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the loop needs, assembled by `DataStreamWriter::start`.
pub(crate) struct Execution {
    pub shared: Arc<QueryShared>,
    pub plan: QueryPlan,
    pub sink: Box<dyn StreamSink>,
    pub checkpoint: Checkpoint,
    pub mode: OutputMode,
    pub trigger: Trigger,
    /// Per source: how much one trigger may read.
    pub read_limits: Vec<ReadLimit>,
    pub conf: BTreeMap<String, String>,
    /// How the stateful operators' state is split into key partitions (their count is set).
    pub state_layout: StateLayout,
    /// Partitions idle this long stop holding the watermark back (`None`: never).
    pub watermark_idle_timeout: Option<Duration>,
    /// One tracker per declared watermark (set up by the run loop); the query's watermark is
    /// the minimum of theirs.
    pub trackers: Vec<WatermarkTracker>,
    /// Whether a batch without new data should run next (the watermark moved and a stateful
    /// operator has state to evict or emit).
    pub run_no_data_batch: bool,
    /// Where rows the stateful operators drop as late go, if anywhere.
    pub late_rows: Option<SideOutput>,
    /// Where records `from_json` cannot parse go, if anywhere.
    pub dead_letters: Option<DeadLetters>,
}

/// A side output of the query (late rows, dead letters): a sink and the rows' schema.
pub(crate) struct SideOutput {
    pub sink: Box<dyn StreamSink>,
    pub schema: datafusion::arrow::datatypes::SchemaRef,
}

/// Timings of one trigger, by Spark's phase names.
#[derive(Default)]
struct Phases(BTreeMap<String, u64>);

impl Phases {
    fn record(&mut self, phase: &str, since: Instant) {
        *self.0.entry(phase.to_string()).or_default() += since.elapsed().as_millis() as u64;
    }
}

/// One micro-batch as the loop runs it: which batch, its offset range, its clock and
/// watermark, and where its time went.
struct BatchContext {
    id: u64,
    /// Per source: where the batch starts.
    start: Vec<SourceOffset>,
    /// Per source: where it ends (exclusive).
    end: Vec<SourceOffset>,
    /// Per source: its latest offset when the batch was planned (progress shows it, for lag).
    latest: Vec<SourceOffset>,
    /// Per source: the rows read.
    rows: Vec<u64>,
    /// What `current_timestamp()` returns in this batch (logged in `offsets/N`).
    timestamp_ms: i64,
    /// The watermark the batch runs with (logged in `offsets/N`).
    watermark_ms: i64,
    /// The watermark the batch before ran with (`offsets/N-1`; 0 for batch 0): the stateful
    /// operators judge lateness by it (see [`OperatorWatermarks`]).
    previous_watermark_ms: i64,
    phases: Phases,
    trigger_start: Instant,
}

impl Execution {
    /// Runs the query until it is stopped, its trigger is done, or it fails; records the outcome
    /// in the shared state.
    pub async fn run(mut self) {
        let span = tracing::info_span!("query", id = %self.shared.id, run_id = %self.shared.run_id, name = ?self.shared.name);
        let shared = Arc::clone(&self.shared);
        // A panic here is a bug; it must still end the query with an error, not leave its
        // handle waiting forever.
        let outcome = std::panic::AssertUnwindSafe(self.run_loop().instrument(span))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(FlumenError::IllegalState(format!(
                    "the query's execution panicked ({message}); this is a bug in Flumen, please report it"
                )))
            });
        if let Err(e) = &outcome {
            tracing::error!(query = %shared.id, error = %e, "streaming query failed");
        } else if self.checkpoint.is_temporary()
            && let Err(e) = self.checkpoint.remove()
        {
            tracing::warn!(error = %e, "could not remove the temporary checkpoint");
        }
        shared.update(|s| {
            s.terminated = true;
            s.status.is_trigger_active = false;
            match outcome {
                Ok(()) => s.status.message = "Stopped".into(),
                Err(e) => {
                    s.status.message = format!("Terminated with exception: {e}");
                    s.error = Some(Arc::new(e));
                }
            }
        });
        shared.post_terminated();
    }

    async fn run_loop(&mut self) -> Result<()> {
        let mut readers: Vec<Box<dyn SourceReader>> = Vec::with_capacity(self.plan.sources.len());
        for (i, planned) in self.plan.sources.iter().enumerate() {
            let context = SourceContext::new(self.checkpoint.source_metadata_path(i));
            readers.push(planned.source.open_in(&context).await?);
        }
        let last_committed_batch = self.checkpoint.latest_commit()?.map(|(n, _)| n);
        let last_planned_batch = self.checkpoint.latest_offsets()?.map(|(n, _)| n);
        let context = SinkContext::new(
            self.shared.id.to_string(),
            self.shared.run_id.to_string(),
            last_committed_batch,
        )
        .with_last_planned_batch(last_planned_batch);
        self.sink.open(&context).await?;
        if let Some(late) = &mut self.late_rows {
            late.sink.open(&context).await?;
        }
        if let Some(dead) = &mut self.dead_letters {
            dead.output.sink.open(&context).await?;
        }

        // Recover: where does the next batch start, and is there an uncommitted batch to re-run?
        let mut start: Vec<SourceOffset>;
        let mut next_batch: u64;
        let mut watermark_ms = 0i64;
        // The watermark of the last batch run (the next batch's "previous" watermark).
        let mut last_batch_watermark_ms = 0i64;
        match self.checkpoint.latest_offsets()? {
            None => {
                start = Vec::with_capacity(readers.len());
                for (i, reader) in readers.iter_mut().enumerate() {
                    start.push(match self.checkpoint.source_initial_offset(i)? {
                        Some(offset) => offset,
                        None => {
                            let offset = reader.initial_offset().await?;
                            self.checkpoint.write_source_initial_offset(i, &offset)?;
                            offset
                        }
                    });
                }
                next_batch = 0;
                self.restore_state(0, watermark_ms)?;
            }
            Some((n, entry)) => {
                let end = self.logged_offsets(n, entry.offsets)?;
                let committed = self.checkpoint.latest_commit()?;
                if let Some((_, commit)) = &committed {
                    watermark_ms = commit.next_batch_watermark_ms;
                }
                if committed.as_ref().is_some_and(|(c, _)| *c >= n) {
                    last_batch_watermark_ms = entry.metadata.batch_watermark_ms;
                    start = end;
                    next_batch = n + 1;
                    self.restore_state(next_batch, watermark_ms)?;
                } else {
                    // The batch runs again with the watermark it was logged with.
                    watermark_ms = entry.metadata.batch_watermark_ms;
                    self.restore_state(n, watermark_ms)?;
                    let (batch_start, previous_watermark_ms) = self.batch_start(n)?;
                    tracing::info!(
                        batch = n,
                        "re-running the uncommitted batch with its logged offsets"
                    );
                    let mut batch = BatchContext {
                        id: n,
                        start: batch_start,
                        end: end.clone(),
                        latest: end.clone(),
                        rows: Vec::new(),
                        timestamp_ms: entry.metadata.batch_timestamp_ms,
                        watermark_ms,
                        previous_watermark_ms,
                        phases: Phases::default(),
                        trigger_start: Instant::now(),
                    };
                    self.run_batch(&mut readers, &mut batch).await?;
                    last_batch_watermark_ms = batch.watermark_ms;
                    watermark_ms = self.watermark_or(watermark_ms);
                    start = end;
                    next_batch = n + 1;
                    if self.trigger.runs_one_batch() {
                        // Spark's Once runs one batch: here, the one that was left uncommitted.
                        return Ok(());
                    }
                }
            }
        }

        // For available-now / once: the offsets available at start are the targets.
        let targets = if self.trigger.stops_when_caught_up() {
            let mut targets = Vec::with_capacity(readers.len());
            for (reader, start) in readers.iter_mut().zip(&start) {
                targets.push(reader.prepare_for_trigger_available_now(start).await?);
            }
            Some(targets)
        } else {
            None
        };
        let mut idle_wait = Duration::from_millis(1);
        let mut last_idle_progress = Instant::now();
        let mut last_trigger = Instant::now();
        let mut first_trigger = true;
        loop {
            if self.shared.stop_requested() {
                return Ok(());
            }
            if let Some(interval) = self.trigger.interval()
                && !first_trigger
            {
                let due = last_trigger + interval;
                if self.sleep_until_or_stop(due).await {
                    return Ok(());
                }
            }
            first_trigger = false;
            let trigger_start = Instant::now();
            last_trigger = trigger_start;
            let idle_ticket = self.shared.idle_requested.load(Ordering::SeqCst);
            let mut phases = Phases::default();

            let t = Instant::now();
            let mut end = Vec::with_capacity(readers.len());
            for (i, reader) in readers.iter_mut().enumerate() {
                let source_limit = self.read_limits.get(i).copied().unwrap_or(ReadLimit::All);
                let limit = self.trigger.read_limit(source_limit);
                let target = targets.as_ref().and_then(|t| t.get(i));
                end.push(reader.latest_offset(&start[i], limit, target).await?);
            }
            phases.record("latestOffset", t);

            if end == start && self.no_data_batch_due() {
                // The watermark moved: run a batch without data so state is evicted and
                // finished windows are emitted now, not when the next row arrives.
            } else if end == start {
                // No new data: everything available when `idle_ticket` was read is committed.
                self.shared
                    .idle_answered
                    .fetch_max(idle_ticket, Ordering::SeqCst);
                if targets.is_some() {
                    return Ok(());
                }
                self.shared
                    .set_status("Waiting for data to arrive", false, false);
                if last_idle_progress.elapsed() >= IDLE_PROGRESS_INTERVAL {
                    last_idle_progress = Instant::now();
                    self.report_idle(next_batch, &start, &end, &readers);
                }
                if self.trigger.interval().is_none() {
                    if self.sleep_until_or_stop(Instant::now() + idle_wait).await {
                        return Ok(());
                    }
                    idle_wait = (idle_wait * 2).min(MAX_IDLE_POLL);
                }
                continue;
            }
            idle_wait = Duration::from_millis(1);

            let batch_timestamp_ms = Utc::now().timestamp_millis();
            let t = Instant::now();
            self.checkpoint.write_offsets(
                next_batch,
                &OffsetEntry {
                    metadata: OffsetMetadata {
                        batch_watermark_ms: watermark_ms,
                        batch_timestamp_ms,
                        conf: self.conf.clone(),
                    },
                    offsets: end.clone(),
                },
            )?;
            phases.record("walCommit", t);

            let latest = readers
                .iter()
                .zip(&end)
                .map(|(r, e)| r.report_latest_offset().unwrap_or_else(|| e.clone()))
                .collect();
            let mut batch = BatchContext {
                id: next_batch,
                start: start.clone(),
                end: end.clone(),
                latest,
                rows: Vec::new(),
                timestamp_ms: batch_timestamp_ms,
                watermark_ms,
                previous_watermark_ms: last_batch_watermark_ms,
                phases,
                trigger_start,
            };
            self.run_batch(&mut readers, &mut batch).await?;
            last_batch_watermark_ms = batch.watermark_ms;
            watermark_ms = self.watermark_or(watermark_ms);
            // Old logs go every 10 batches: listing the directories each batch costs more than
            // keeping a few extra files.
            if next_batch >= MIN_BATCHES_TO_RETAIN && next_batch.is_multiple_of(10) {
                let keep_from = next_batch + 1 - MIN_BATCHES_TO_RETAIN;
                self.checkpoint.purge_before(keep_from)?;
                for (i, operator) in self.plan.operators.iter().enumerate() {
                    let dirs = self.checkpoint.state_dirs(i, self.state_layout);
                    for dir in operator.store_dirs(&dirs) {
                        StateStore::purge(&dir, keep_from)?;
                    }
                }
            }
            start = end;
            next_batch += 1;
            if self.trigger.runs_one_batch() {
                return Ok(());
            }
        }
    }

    /// The end offsets logged for batch `n`: one per source, as many as the query reads.
    fn logged_offsets(&self, n: u64, offsets: Vec<SourceOffset>) -> Result<Vec<SourceOffset>> {
        if offsets.len() != self.plan.sources.len() {
            return Err(FlumenError::checkpoint(
                self.checkpoint.offsets_path(n),
                format!(
                    "has offsets for {} sources, but the query reads {}; the streams of a query cannot change for an existing checkpoint: restore the query or start a new checkpoint location",
                    offsets.len(),
                    self.plan.sources.len()
                ),
            ));
        }
        Ok(offsets)
    }

    /// Where batch `n` starts (the end of batch n-1, or the sources' initial offsets), and the
    /// watermark batch n-1 ran with (0 for batch 0).
    fn batch_start(&self, n: u64) -> Result<(Vec<SourceOffset>, i64)> {
        if n == 0 {
            let start = (0..self.plan.sources.len())
                .map(|i| {
                    self.checkpoint.source_initial_offset(i)?.ok_or_else(|| {
                        FlumenError::checkpoint(
                            self.checkpoint.source_initial_path(i),
                            "is missing, so batch 0 cannot be re-run; restore it or start a new checkpoint location",
                        )
                    })
                })
                .collect::<Result<_>>()?;
            return Ok((start, 0));
        }
        let previous = self.checkpoint.offsets(n - 1).map_err(|e| match e {
            FlumenError::Io { path, .. } => FlumenError::checkpoint(
                path,
                format!("is missing: batch {} doesn't exist, so batch {n} cannot be re-run; restore it or start a new checkpoint location", n - 1),
            ),
            other => other,
        })?;
        let watermark_ms = previous.metadata.batch_watermark_ms;
        Ok((self.logged_offsets(n - 1, previous.offsets)?, watermark_ms))
    }

    /// Restores the stateful operators for running batch `version` next, and the watermark.
    fn restore_state(&mut self, version: u64, watermark_ms: i64) -> Result<()> {
        for (i, operator) in self.plan.operators.iter().enumerate() {
            operator.restore(&self.checkpoint.state_dirs(i, self.state_layout), version)?;
        }
        self.trackers = self
            .plan
            .watermarks
            .iter()
            .map(|w| {
                WatermarkTracker::new(w.spec.delay_ms, self.watermark_idle_timeout, watermark_ms)
            })
            .collect();
        Ok(())
    }

    /// The query's watermark: the minimum of its watermarks' (`current` when it declares
    /// none).
    fn watermark_or(&self, current: i64) -> i64 {
        self.trackers
            .iter()
            .map(WatermarkTracker::watermark_ms)
            .min()
            .unwrap_or(current)
    }

    /// Whether the next batch should run without new data: the last batch moved the
    /// watermark, or idle partitions stopped holding it back, and state waits for it.
    fn no_data_batch_due(&mut self) -> bool {
        if self.run_no_data_batch {
            return true;
        }
        if self.trackers.is_empty() {
            return false;
        }
        let before = self.watermark_or(0);
        let now = Instant::now();
        let mut advanced = false;
        for tracker in &mut self.trackers {
            advanced |= tracker.advance(now);
        }
        if !advanced {
            return false;
        }
        let after = self.watermark_or(0);
        self.plan
            .operators
            .iter()
            .any(|op| op.wants_batch_for_watermark(before, after))
    }

    /// Spark's `eventTime` progress: the batch's watermark, and min/max/avg event times.
    fn event_time_progress(
        &self,
        watermark_ms: i64,
        stats: Option<&EventTimeStats>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if self.plan.watermarks.is_empty() {
            return out;
        }
        out.insert("watermark".into(), iso_millis(watermark_ms));
        if let Some(stats) = stats
            && let (Some(min), Some(max)) = (stats.min, stats.max)
            && stats.count > 0
        {
            out.insert("min".into(), iso_millis(min.div_euclid(1000)));
            out.insert("max".into(), iso_millis(max.div_euclid(1000)));
            let avg = (stats.sum / stats.count as i128) as i64;
            out.insert("avg".into(), iso_millis(avg.div_euclid(1000)));
        }
        out
    }

    /// Sleeps until `due`; returns true when a stop was requested meanwhile.
    async fn sleep_until_or_stop(&self, due: Instant) -> bool {
        let mut stop = self.shared.stop.subscribe();
        if *stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => self.shared.stop_requested(),
            _ = stop.wait_for(|s| *s) => true,
        }
    }

    /// Runs one micro-batch whose offsets are logged: the normal path and the re-run of an
    /// uncommitted batch after a restart both come here.
    async fn run_batch(
        &mut self,
        readers: &mut [Box<dyn SourceReader>],
        batch: &mut BatchContext,
    ) -> Result<()> {
        let batch_id = batch.id;
        let watermark_ms = batch.watermark_ms;
        let span = tracing::info_span!("batch", batch_id, rows = tracing::field::Empty);
        let batch_span = span.clone();
        async {
            self.shared.set_status("Processing new data", true, true);
            let operators = &self.plan.operators;
            let propagation = &self.plan.propagation;
            let eviction = propagation.input_watermarks(operators, watermark_ms);
            let late_events = propagation.input_watermarks(operators, batch.previous_watermark_ms);
            for (i, operator) in operators.iter().enumerate() {
                operator.begin_batch(OperatorWatermarks {
                    late_events_ms: late_events[i],
                    eviction_ms: eviction[i],
                });
            }
            let t = Instant::now();
            let mut inputs = Vec::with_capacity(readers.len());
            for (i, reader) in readers.iter_mut().enumerate() {
                let (start, end) = (&batch.start[i], &batch.end[i]);
                // Dead letters carry whole source rows, so then every column is read.
                let projection = match &self.dead_letters {
                    Some(_) => None,
                    None => self.plan.sources[i].projection.as_deref(),
                };
                inputs.push(if start == end {
                    Vec::new()
                } else {
                    reader.get_batch(start, end, projection).await?
                });
            }
            batch.phases.record("getBatch", t);
            failpoint::check("after-fetch", batch_id);
            batch.rows = inputs
                .iter()
                .map(|input| input.iter().map(|b| b.num_rows() as u64).sum())
                .collect();
            let input_rows: u64 = batch.rows.iter().sum();
            batch_span.record("rows", input_rows);

            let t = Instant::now();
            // A query with dead letters reads one stream (checked at start()).
            let source_rows = match (&self.dead_letters, inputs.first_mut()) {
                (Some(_), Some(input)) => match &self.plan.sources[0].projection {
                    None => input.clone(),
                    Some(columns) => {
                        let projected = input
                            .iter()
                            .map(|b| b.project(columns))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        std::mem::replace(input, projected)
                    }
                },
                _ => Vec::new(),
            };
            let output = self.execute_plan(inputs, batch.timestamp_ms).await?;
            let output_rows: i64 = output.iter().map(|b| b.num_rows() as i64).sum();
            for (i, operator) in self.plan.operators.iter().enumerate() {
                operator.commit(
                    &self.checkpoint.state_dirs(i, self.state_layout),
                    batch_id + 1,
                )?;
            }
            failpoint::check("after-state-commit", batch_id);
            // Late rows first: a crash before `commits/N` re-runs the batch, which drops the
            // same rows again, so the side output gets them with the same batch id.
            if let Some(late) = &mut self.late_rows {
                let mut rows = Vec::new();
                for (operator, missed_ms) in self.plan.operators.iter().zip(&late_events) {
                    let name = operator.progress().operator_name;
                    rows.extend(operator.late_rows().take(&late.schema, &name, *missed_ms)?);
                }
                late.sink
                    .add_batch(batch_id, &late.schema, rows, OutputMode::Append)
                    .await?;
            }
            // Dead letters too: a re-run batch meets the same malformed records.
            if let Some(dead) = &mut self.dead_letters {
                let letters = dead.collect(&source_rows)?;
                let schema = Arc::clone(&dead.output.schema);
                dead.output
                    .sink
                    .add_batch(batch_id, &schema, letters, OutputMode::Append)
                    .await?;
            }
            self.sink
                .add_batch(batch_id, &self.plan.output_schema, output, self.mode)
                .await?;
            failpoint::check("after-sink-write", batch_id);
            batch.phases.record("addBatch", t);

            let event_stats: Vec<Option<EventTimeStats>> = self
                .plan
                .watermarks
                .iter()
                .map(|w| w.stats.lock().ok().map(|s| s.clone()))
                .collect();
            let now = Instant::now();
            for ((tracker, planned), stats) in self
                .trackers
                .iter_mut()
                .zip(&self.plan.watermarks)
                .zip(&event_stats)
            {
                if let (Some(stats), Some(reader), Some(end)) = (
                    stats,
                    readers.get(planned.source),
                    batch.end.get(planned.source),
                ) {
                    tracker.register(reader.partition_keys(end), now);
                    tracker.observe(stats, now);
                    tracker.advance(now);
                }
            }
            let next_watermark_ms = self.watermark_or(watermark_ms);
            self.run_no_data_batch = self
                .plan
                .operators
                .iter()
                .any(|op| op.wants_batch_for_watermark(watermark_ms, next_watermark_ms));

            let t = Instant::now();
            self.checkpoint.write_commit(
                batch_id,
                &CommitEntry {
                    next_batch_watermark_ms: next_watermark_ms,
                },
            )?;
            for (reader, end) in readers.iter_mut().zip(&batch.end) {
                reader.commit(end).await?;
            }
            batch.phases.record("commitOffsets", t);
            batch.phases.record("triggerExecution", batch.trigger_start);

            let mut progress = self.progress(batch, input_rows, output_rows, readers);
            let merged = merge_stats(event_stats.iter().flatten());
            progress.event_time = self.event_time_progress(watermark_ms, merged.as_ref());
            progress.state_operators = self.plan.operators.iter().map(|op| op.progress()).collect();
            self.shared.push_progress(progress);
            self.shared
                .set_status("Waiting for next trigger", true, false);
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn execute_plan(
        &self,
        inputs: Vec<Vec<RecordBatch>>,
        batch_timestamp_ms: i64,
    ) -> Result<Vec<RecordBatch>> {
        for (planned, input) in self.plan.sources.iter().zip(inputs) {
            planned.slot.fill(input)?;
        }
        for planned in &self.plan.watermarks {
            if let Ok(mut stats) = planned.stats.lock() {
                *stats = EventTimeStats::default();
            }
        }
        let plan = Arc::clone(&self.plan.physical);
        let ctx = Arc::clone(&self.plan.task_ctx);
        // Every output partition runs as its own task; their rows are concatenated in
        // partition order, so a stateless query keeps the input's row order.
        self.plan.clock.set(batch_timestamp_ms);
        let output = collect_partitioned(plan, ctx).await?;
        Ok(output.into_iter().flatten().collect())
    }

    fn report_idle(
        &self,
        batch_id: u64,
        start: &[SourceOffset],
        latest: &[SourceOffset],
        readers: &[Box<dyn SourceReader>],
    ) {
        let mut phases = Phases::default();
        phases.0.insert("triggerExecution".into(), 0);
        let idle = BatchContext {
            id: batch_id,
            start: start.to_vec(),
            end: start.to_vec(),
            latest: latest.to_vec(),
            rows: Vec::new(),
            timestamp_ms: 0,
            watermark_ms: 0,
            previous_watermark_ms: 0,
            phases,
            trigger_start: Instant::now(),
        };
        let progress = self.progress(&idle, 0, 0, readers);
        self.shared.push_idle_progress(progress);
    }

    fn progress(
        &self,
        batch: &BatchContext,
        input_rows: u64,
        output_rows: i64,
        readers: &[Box<dyn SourceReader>],
    ) -> StreamingQueryProgress {
        let (batch_id, phases) = (batch.id, &batch.phases);
        let trigger_ms = phases.0.get("triggerExecution").copied().unwrap_or(0);
        let since_previous_ms = self
            .shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.recent.back().map(|p| p.timestamp.clone()))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| (Utc::now() - t.with_timezone(&Utc)).num_milliseconds() as f64);
        let now = Utc::now();
        let timestamp = Utc
            .timestamp_millis_opt(now.timestamp_millis() - trigger_ms as i64)
            .single()
            .unwrap_or(now)
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let input_rate = since_previous_ms.and_then(|ms| rate(input_rows, ms));
        let processed_rate = rate(input_rows, trigger_ms as f64);
        let sources = self
            .plan
            .sources
            .iter()
            .zip(readers)
            .enumerate()
            .map(|(i, (planned, reader))| {
                let rows = batch.rows.get(i).copied().unwrap_or(0);
                let (start, end, latest) = (&batch.start[i], &batch.end[i], &batch.latest[i]);
                SourceProgress {
                    description: planned.source.description(),
                    start_offset: start.clone(),
                    end_offset: end.clone(),
                    latest_offset: latest.clone(),
                    num_input_rows: rows,
                    input_rows_per_second: since_previous_ms.and_then(|ms| rate(rows, ms)),
                    processed_rows_per_second: rate(rows, trigger_ms as f64),
                    metrics: reader.metrics(latest, end),
                }
            })
            .collect();
        StreamingQueryProgress {
            id: self.shared.id.clone(),
            run_id: self.shared.run_id.clone(),
            name: self.shared.name.clone(),
            timestamp,
            batch_id,
            batch_duration: trigger_ms,
            num_input_rows: input_rows,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            duration_ms: phases.0.clone(),
            event_time: BTreeMap::new(),
            state_operators: Vec::new(),
            sources,
            sink: SinkProgress {
                description: self.sink.description(),
                num_output_rows: output_rows,
            },
        }
    }
}

/// The event-time statistics of several watermarks as one (for progress).
fn merge_stats<'a>(stats: impl Iterator<Item = &'a EventTimeStats>) -> Option<EventTimeStats> {
    let mut merged: Option<EventTimeStats> = None;
    for s in stats {
        let Some(m) = &mut merged else {
            merged = Some(s.clone());
            continue;
        };
        m.min = match (m.min, s.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        m.max = match (m.max, s.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        m.sum += s.sum;
        m.count += s.count;
    }
    merged
}

/// Fails when settings recorded in the checkpoint's last offset log differ from `conf`.
pub(crate) fn check_conf_unchanged(
    checkpoint: &Checkpoint,
    conf: &BTreeMap<String, String>,
) -> Result<()> {
    let Some((n, entry)) = checkpoint.latest_offsets()? else {
        return Ok(());
    };
    for (key, value) in conf {
        if let Some(old) = entry.metadata.conf.get(key)
            && old != value
        {
            return Err(FlumenError::checkpoint(
                checkpoint.offsets_path(n),
                format!(
                    "was written with {key} = {old}, but this query has {value}; \
                     this cannot change for an existing checkpoint: restore the original setting or start a new checkpoint location"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
