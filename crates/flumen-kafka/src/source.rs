//! The Kafka streaming source: Spark's offsets and rate limiting over [`KafkaFetcher`].

use async_trait::async_trait;
use flumen_engine::datafusion::arrow::array::RecordBatch;
use flumen_engine::datafusion::arrow::datatypes::SchemaRef;
use flumen_engine::source::{ReadLimit, SourceOffset, SourceReader, StreamSource};
use flumen_engine::{FlumenError, Result};
use serde_json::Value;

use crate::consumer::{KafkaFetcher, OffsetSpec, blocking};
use crate::offsets::{self, PartitionOffsets, offset_of};
use crate::options::{SourceConfig, StartingOffsets, Subscription};
use crate::schema::kafka_schema;

/// A Kafka source definition (what `read_stream().kafka()...load()` creates).
#[derive(Debug, Clone)]
pub struct KafkaSource {
    config: SourceConfig,
}

impl KafkaSource {
    /// A source from validated options.
    pub fn new(config: SourceConfig) -> Self {
        Self { config }
    }

    /// The validated options.
    pub fn config(&self) -> &SourceConfig {
        &self.config
    }
}

#[async_trait]
impl StreamSource for KafkaSource {
    fn schema(&self) -> SchemaRef {
        kafka_schema(self.config.include_headers)
    }

    fn description(&self) -> String {
        format!("KafkaV2[{}]", self.config.subscription.describe())
    }

    fn fingerprint(&self) -> String {
        self.config.subscription.describe()
    }

    fn partition_key(&self) -> Option<flumen_engine::datafusion::logical_expr::Expr> {
        use flumen_engine::functions::{cast_string, col, concat, lit};
        Some(concat([
            col("topic"),
            lit(":"),
            cast_string(col("partition")),
        ]))
    }

    fn read_limit(&self) -> ReadLimit {
        match self.config.max_offsets_per_trigger {
            Some(n) => ReadLimit::MaxRows(n),
            None => ReadLimit::All,
        }
    }

    async fn open(&self) -> Result<Box<dyn SourceReader>> {
        let config = self.config.clone();
        let description = self.description();
        let fetcher = blocking(move || KafkaFetcher::new(&config, description)).await?;
        Ok(Box::new(KafkaReader {
            config: self.config.clone(),
            description: self.description(),
            fetcher: Some(fetcher),
            latest: PartitionOffsets::new(),
            last_batch_at: None,
        }))
    }
}

/// One query run's Kafka reader.
pub(crate) struct KafkaReader {
    /// When this run last planned a batch with new records (`maxTriggerDelay` counts from it).
    last_batch_at: Option<std::time::Instant>,
    config: SourceConfig,
    description: String,
    /// Taken while a blocking operation runs.
    fetcher: Option<KafkaFetcher>,
    /// The latest offsets seen by the last `latest_offset`, for lag metrics.
    latest: PartitionOffsets,
}

impl KafkaReader {
    /// Runs `f` with the fetcher on the blocking pool.
    async fn with_fetcher<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut KafkaFetcher) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut fetcher = self.fetcher.take().ok_or_else(|| {
            FlumenError::IllegalState("the Kafka reader was lost after an earlier failure".into())
        })?;
        let (fetcher, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut fetcher);
            (fetcher, result)
        })
        .await
        .map_err(|e| FlumenError::IllegalState(format!("Kafka worker thread failed: {e}")))?;
        self.fetcher = Some(fetcher);
        result
    }

    fn parse(&self, offset: &SourceOffset) -> Result<PartitionOffsets> {
        offsets::from_json(offset, "offset log entry")
    }
}

/// A partition and a time (ms since the epoch) to look its offset up at.
pub(crate) type PartitionTimestamp = ((String, i32), i64);

/// The timestamp to look up for each of `partitions`: one for all (`startingTimestamp`,
/// `endingTimestamp`), or one each from `*OffsetsByTimestamp`, which must name every partition.
pub(crate) fn timestamps_per_partition(
    all: Option<i64>,
    each: Option<&PartitionOffsets>,
    partitions: &[(String, i32)],
    option: &str,
) -> Result<Option<Vec<PartitionTimestamp>>> {
    if let Some(ts) = all {
        return Ok(Some(partitions.iter().map(|tp| (tp.clone(), ts)).collect()));
    }
    let Some(each) = each else {
        return Ok(None);
    };
    let missing: Vec<String> = partitions
        .iter()
        .filter(|(t, p)| each.get(t).and_then(|ps| ps.get(p)).is_none())
        .map(|(t, p)| format!("{t}-{p}"))
        .collect();
    if !missing.is_empty() {
        return Err(FlumenError::invalid_option(
            option,
            format!(
                "If {option} contains specific timestamps, you must specify all TopicPartitions. Missing: {}",
                missing.join(", ")
            ),
        ));
    }
    Ok(Some(
        partitions
            .iter()
            .map(|(t, p)| ((t.clone(), *p), each[t][p]))
            .collect(),
    ))
}

/// Resolves where a new query starts, per Spark's rules (timestamp > specific > earliest/latest).
pub(crate) fn resolve_start(
    fetcher: &KafkaFetcher,
    config: &SourceConfig,
    partitions: &[(String, i32)],
) -> Result<PartitionOffsets> {
    if let Some(timestamps) = timestamps_per_partition(
        config.starting_timestamp,
        config.starting_by_timestamp.as_ref(),
        partitions,
        "startingOffsetsByTimestamp",
    )? {
        return fetcher.offsets_at_timestamps(&timestamps, config.starting_no_match);
    }
    match &config.starting {
        StartingOffsets::Earliest => fetcher.list_offsets(partitions, OffsetSpec::Earliest),
        StartingOffsets::Latest => fetcher.list_offsets(partitions, OffsetSpec::Latest),
        StartingOffsets::Specific(given) => {
            let given_parts: Vec<(String, i32)> = given
                .iter()
                .flat_map(|(t, ps)| ps.keys().map(move |p| (t.clone(), *p)))
                .collect();
            let missing: Vec<String> = partitions
                .iter()
                .filter(|tp| !given_parts.contains(tp))
                .map(|(t, p)| format!("{t}-{p}"))
                .collect();
            if !missing.is_empty() {
                return Err(FlumenError::invalid_option(
                    "startingOffsets",
                    format!(
                        "If startingOffsets contains specific offsets, you must specify all TopicPartitions. \
                         Use -1 for latest, -2 for earliest. Missing: {}",
                        missing.join(", ")
                    ),
                ));
            }
            let earliest = fetcher.list_offsets(partitions, OffsetSpec::Earliest)?;
            let latest = fetcher.list_offsets(partitions, OffsetSpec::Latest)?;
            let mut out = PartitionOffsets::new();
            for (t, p) in partitions {
                let o = offset_of(given, t, *p)?;
                let resolved = match o {
                    -2 => offset_of(&earliest, t, *p)?,
                    -1 => offset_of(&latest, t, *p)?,
                    o if o >= 0 => o,
                    o => {
                        return Err(FlumenError::invalid_option(
                            "startingOffsets",
                            format!(
                                "offset {o} for {t}-{p} is not valid; use -2 (earliest), -1 (latest) or an offset"
                            ),
                        ));
                    }
                };
                out.entry(t.clone()).or_default().insert(*p, resolved);
            }
            Ok(out)
        }
    }
}

/// Spark's `maxOffsetsPerTrigger` split: proportional to each partition's backlog.
pub(crate) fn rate_limit(
    start: &PartitionOffsets,
    latest: &PartitionOffsets,
    limit: u64,
) -> PartitionOffsets {
    let size = |t: &str, p: i32, end: i64| -> i64 {
        let from = start.get(t).and_then(|s| s.get(&p)).copied().unwrap_or(end);
        (end - from).max(0)
    };
    let total: i64 = latest
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |(p, e)| size(t, *p, *e)))
        .sum();
    if total as u64 <= limit {
        return latest.clone();
    }
    let mut out = PartitionOffsets::new();
    for (t, ps) in latest {
        for (p, end) in ps {
            let backlog = size(t, *p, *end);
            let begin = end - backlog;
            let prorate = limit as f64 * (backlog as f64 / total as f64);
            let take = if prorate < 1.0 {
                prorate.ceil()
            } else {
                prorate.floor()
            } as i64;
            out.entry(t.clone())
                .or_default()
                .insert(*p, begin + take.min(backlog));
        }
    }
    out
}

impl KafkaReader {
    /// Spark's `minOffsetsPerTrigger`: fewer new records than that wait for more, until
    /// `maxTriggerDelay` has passed since the last batch (the run's first batch never waits;
    /// available-now reads ignore the minimum).
    fn delays_batch(&self, new_records: i64, available_now: bool) -> bool {
        let Some(min) = self.config.min_offsets_per_trigger else {
            return false;
        };
        !available_now
            && (new_records.max(0) as u64) < min
            && self
                .last_batch_at
                .is_some_and(|at| at.elapsed() < self.config.max_trigger_delay)
    }
}

#[async_trait]
impl SourceReader for KafkaReader {
    async fn initial_offset(&mut self) -> Result<SourceOffset> {
        let config = self.config.clone();
        let start = self
            .with_fetcher(move |f| {
                let partitions = f.partitions(&config.subscription)?;
                resolve_start(f, &config, &partitions)
            })
            .await?;
        Ok(offsets::to_json(&start))
    }

    async fn latest_offset(
        &mut self,
        start: &SourceOffset,
        limit: ReadLimit,
        cap: Option<&SourceOffset>,
    ) -> Result<SourceOffset> {
        let requested_start = start.clone();
        let mut start = self.parse(start)?;
        let cap = cap.map(|c| self.parse(c)).transpose()?;
        let subscription = self.config.subscription.clone();
        let known = start.clone();
        let (latest, earliest_new) = self
            .with_fetcher(move |f| {
                let partitions = f.partitions(&subscription)?;
                let latest = f.list_offsets(&partitions, OffsetSpec::Latest)?;
                let new: Vec<(String, i32)> = partitions
                    .into_iter()
                    .filter(|(t, p)| !start_has(&known, t, *p))
                    .collect();
                let earliest_new = f.list_offsets(&new, OffsetSpec::Earliest)?;
                Ok((latest, earliest_new))
            })
            .await?;
        // Partitions that vanished: data loss unless failOnDataLoss is off.
        let gone: Vec<String> = start
            .iter()
            .flat_map(|(t, ps)| ps.keys().map(move |p| (t, *p)))
            .filter(|(t, p)| !start_has(&latest, t, *p))
            .map(|(t, p)| format!("{t}-{p}"))
            .collect();
        if !gone.is_empty() && !matches!(self.config.subscription, Subscription::Assign(_)) {
            if self.config.fail_on_data_loss {
                return Err(FlumenError::Source {
                    source_name: self.description.clone(),
                    message: format!(
                        "partitions {} are gone: some data may have been missed. If you don't want your streaming query to fail on such cases, set the source option \"failOnDataLoss\" to \"false\".",
                        gone.join(", ")
                    ),
                });
            }
            tracing::warn!(partitions = ?gone, "partitions disappeared (failOnDataLoss=false)");
        }
        // New partitions start at earliest.
        for (t, ps) in &earliest_new {
            for (p, o) in ps {
                start.entry(t.clone()).or_default().insert(*p, *o);
            }
        }
        for (t, ps) in &latest {
            for (p, l) in ps {
                let s = offset_of(&start, t, *p)?;
                if *l < s {
                    let message = format!(
                        "partition {t}-{p}'s latest offset {l} is behind the offset {s} already read: the topic may have been deleted and recreated. \
                         Some data may have been lost. If you don't want your streaming query to fail on such cases, set the source option \"failOnDataLoss\" to \"false\"."
                    );
                    if self.config.fail_on_data_loss {
                        return Err(FlumenError::Source {
                            source_name: self.description.clone(),
                            message,
                        });
                    }
                    tracing::warn!("{message}");
                }
            }
        }
        self.latest = latest.clone();
        // An available-now query reads only what was there when it started: partitions that
        // appeared since are left for a later run.
        let latest = match &cap {
            Some(cap) => latest
                .into_iter()
                .filter_map(|(t, ps)| {
                    let allowed = cap.get(&t)?;
                    let ps: std::collections::BTreeMap<i32, i64> = ps
                        .into_iter()
                        .filter(|(p, _)| allowed.contains_key(p))
                        .collect();
                    Some((t, ps))
                })
                .collect(),
            None => latest,
        };
        let mut end = match limit {
            ReadLimit::All | ReadLimit::MaxFiles(_) => latest,
            ReadLimit::MaxRows(n) => rate_limit(&start, &latest, n),
        };
        // Never move backwards, never beyond the cap.
        for (t, ps) in end.iter_mut() {
            for (p, e) in ps.iter_mut() {
                let s = offset_of(&start, t, *p)?;
                if let Some(c) = cap.as_ref().and_then(|c| c.get(t)).and_then(|c| c.get(p)) {
                    *e = (*e).min(*c);
                }
                if *e < s && self.config.fail_on_data_loss {
                    *e = s;
                }
            }
        }
        // Keep only partitions that are still there, plus those recorded in start (so the
        // offsets compare equal when nothing new arrived).
        for (t, ps) in &start {
            for (p, s) in ps {
                end.entry(t.clone()).or_default().entry(*p).or_insert(*s);
            }
        }
        let new_records: i64 = end
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, e)| (t, *p, *e)))
            .map(|(t, p, e)| (e - offset_of(&start, t, p).unwrap_or(e)).max(0))
            .sum();
        if self.delays_batch(new_records, cap.is_some()) {
            return Ok(requested_start);
        }
        if new_records > 0 {
            self.last_batch_at = Some(std::time::Instant::now());
        }
        Ok(offsets::to_json(&end))
    }

    async fn get_batch(
        &mut self,
        start: &SourceOffset,
        end: &SourceOffset,
        projection: Option<&[usize]>,
    ) -> Result<Vec<RecordBatch>> {
        let start = self.parse(start)?;
        let end = self.parse(end)?;
        let new_parts: Vec<(String, i32)> = end
            .iter()
            .flat_map(|(t, ps)| ps.keys().map(move |p| (t.clone(), *p)))
            .filter(|(t, p)| !start_has(&start, t, *p))
            .collect();
        let batches = self
            .with_fetcher(move |f| {
                let earliest_new = f.list_offsets(&new_parts, OffsetSpec::Earliest)?;
                let mut ranges = Vec::new();
                for (t, ps) in &end {
                    for (p, to) in ps {
                        let from = start
                            .get(t)
                            .and_then(|s| s.get(p))
                            .or_else(|| earliest_new.get(t).and_then(|s| s.get(p)))
                            .copied()
                            .unwrap_or(0);
                        ranges.push(((t.clone(), *p), from, *to));
                    }
                }
                f.fetch(&ranges)
            })
            .await?;
        match projection {
            Some(p) => Ok(batches
                .iter()
                .map(|b| b.project(p))
                .collect::<Result<Vec<_>, _>>()?),
            None => Ok(batches),
        }
    }

    async fn commit(&mut self, end: &SourceOffset) -> Result<()> {
        if self.config.group_id.is_none() {
            return Ok(());
        }
        let end = self.parse(end)?;
        self.with_fetcher(move |f| f.commit(&end)).await
    }

    fn partition_keys(&self, offset: &SourceOffset) -> Vec<String> {
        offsets::from_json(offset, "end")
            .map(|o| {
                o.iter()
                    .flat_map(|(t, ps)| ps.keys().map(move |p| format!("{t}:{p}")))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn metrics(
        &self,
        _latest: &SourceOffset,
        end: &SourceOffset,
    ) -> serde_json::Map<String, Value> {
        let mut metrics = serde_json::Map::new();
        let Ok(end) = offsets::from_json(end, "end") else {
            return metrics;
        };
        let lags: Vec<i64> = self
            .latest
            .iter()
            .flat_map(|(t, ps)| {
                let end = &end;
                ps.iter().map(move |(p, l)| {
                    let e = end.get(t).and_then(|e| e.get(p)).copied().unwrap_or(*l);
                    (l - e).max(0)
                })
            })
            .collect();
        if lags.is_empty() {
            return metrics;
        }
        let min = lags.iter().min().copied().unwrap_or(0);
        let max = lags.iter().max().copied().unwrap_or(0);
        let avg = lags.iter().sum::<i64>() as f64 / lags.len() as f64;
        metrics.insert(
            "minOffsetsBehindLatest".into(),
            Value::from(min.to_string()),
        );
        metrics.insert(
            "maxOffsetsBehindLatest".into(),
            Value::from(max.to_string()),
        );
        metrics.insert(
            "avgOffsetsBehindLatest".into(),
            Value::from(avg.to_string()),
        );
        metrics
    }

    fn count_between(&self, start: &SourceOffset, end: &SourceOffset) -> Option<u64> {
        Some(offsets::count_between(
            &self.parse(start).ok()?,
            &self.parse(end).ok()?,
        ))
    }

    fn report_latest_offset(&self) -> Option<SourceOffset> {
        (!self.latest.is_empty()).then(|| offsets::to_json(&self.latest))
    }
}

fn start_has(offsets: &PartitionOffsets, topic: &str, partition: i32) -> bool {
    offsets
        .get(topic)
        .is_some_and(|p| p.contains_key(&partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_splits_by_backlog_like_spark() {
        use std::collections::BTreeMap;
        let start: PartitionOffsets =
            BTreeMap::from([("t".into(), BTreeMap::from([(0, 0), (1, 0)]))]);
        let latest: PartitionOffsets =
            BTreeMap::from([("t".into(), BTreeMap::from([(0, 90), (1, 10)]))]);
        let end = rate_limit(&start, &latest, 10);
        assert_eq!(end["t"][&0], 9);
        assert_eq!(end["t"][&1], 1);
        assert_eq!(rate_limit(&start, &latest, 1000), latest);
    }
}
