//! Blocking Kafka consumer operations: partition discovery, offset lookup and exact-range
//! fetches into Arrow. Everything here blocks, so callers run it on tokio's blocking pool
//! (see [`blocking`]), never on a runtime worker thread.
//!
//! Partitions are `assign`ed (no consumer-group protocol): the checkpoint owns the offsets.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use flumen_engine::datafusion::arrow::array::RecordBatch;
use flumen_engine::{FlumenError, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedHeaders, Message, Timestamp};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use regex::Regex;
use std::borrow::Cow;
use std::ffi::CStr;

use crate::offsets::PartitionOffsets;

/// Rows per record batch handed to the plan.
pub(crate) const MAX_BATCH_ROWS: usize = 65_536;
/// Value bytes per record batch (well below Arrow's 2 GiB limit for 32-bit offsets).
const MAX_BATCH_BYTES: usize = 256 << 20;
/// Records kept per partition when fetched beyond the current batch.
const MAX_PENDING_RECORDS: usize = 100_000;
use crate::options::{SourceConfig, Subscription, TimestampNoMatch};
use crate::schema::{KafkaRowsBuilder, RecordView};

fn is_timeout(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut)
}

/// A request refused because one of its topics does not exist (any more).
fn is_unknown_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownPartition)
    )
}

/// Runs blocking Kafka work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FlumenError::IllegalState(format!("Kafka worker thread failed: {e}")))?
}

/// A client-creation error as text, with secret property values redacted (librdkafka quotes
/// the value of a property it rejects).
pub(crate) fn client_error(error: &KafkaError, config: &ClientConfig) -> String {
    // config_map() shows rdkafka's own placeholder for the keys it knows as sensitive; the
    // values to look for come from get().
    let keys = config.config_map();
    flumen_engine::options::scrub_secrets(
        &error.to_string(),
        keys.keys()
            .filter_map(|key| config.get(key).map(|value| (*key, value))),
    )
}

/// Offset lookups: earliest or latest (by timestamp: [`KafkaFetcher::offsets_at_timestamps`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum OffsetSpec {
    Earliest,
    Latest,
}

/// A record copied out of librdkafka, kept when it was fetched past the end of a batch.
struct OwnedRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    offset: i64,
    timestamp: Option<i64>,
    timestamp_type: i32,
    headers: Option<Vec<(String, Option<Vec<u8>>)>>,
}

type TopicPartition = (String, i32);

/// A consumer positioned by the engine, plus what it fetched beyond the last batch.
pub(crate) struct KafkaFetcher {
    consumer: BaseConsumer,
    /// Answers metadata and offset requests, never fetches.
    lookups: BaseConsumer,
    description: String,
    bootstrap: String,
    timeout: Duration,
    retries: u32,
    retry_interval: Duration,
    include_headers: bool,
    fail_on_data_loss: bool,
    /// The next offset the consumer will deliver, per assigned partition.
    positions: HashMap<TopicPartition, i64>,
    /// Records fetched past the end of the previous batch, per partition.
    pending: HashMap<TopicPartition, VecDeque<OwnedRecord>>,
}

impl KafkaFetcher {
    /// Creates the consumer (no network traffic yet).
    pub fn new(config: &SourceConfig, description: String) -> Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set(
                "group.id",
                config
                    .group_id
                    .clone()
                    .unwrap_or_else(|| format!("flumen-kafka-source-{}", uuid_like())),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", "10")
            .set("enable.partition.eof", "false");
        for (k, v) in &config.client {
            client.set(k, v);
        }
        let create = |client: &ClientConfig| -> Result<BaseConsumer> {
            client.create().map_err(|e| FlumenError::Source {
                source_name: description.clone(),
                message: format!(
                    "cannot create the Kafka consumer: {}; check the kafka.* options",
                    client_error(&e, client)
                ),
            })
        };
        let consumer = create(&client)?;
        // Metadata and offset lookups get a client of their own: on the fetching consumer's
        // connection they would queue behind its long-polling fetch requests.
        let lookups = create(&client)?;
        Ok(Self {
            consumer,
            lookups,
            description,
            bootstrap: config.bootstrap_servers.clone(),
            timeout: config.poll_timeout,
            retries: config.fetch_offset_retries,
            retry_interval: config.fetch_offset_retry_interval,
            include_headers: config.include_headers,
            fail_on_data_loss: config.fail_on_data_loss,
            positions: HashMap::new(),
            pending: HashMap::new(),
        })
    }

    fn error(&self, message: String) -> FlumenError {
        FlumenError::Source {
            source_name: self.description.clone(),
            message,
        }
    }

    /// Runs a metadata or offset request, retrying a failure `fetchOffset.numRetries` times
    /// (Spark's rule). A request that used up its whole timeout is not retried: the broker is
    /// unreachable rather than briefly unavailable, and the timeout is the promised bound.
    fn retrying<T>(&self, request: impl Fn() -> KafkaResult<T>) -> KafkaResult<T> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match request() {
                Err(e)
                    if attempt < self.retries
                        && !is_timeout(&e)
                        && started.elapsed() < self.timeout =>
                {
                    attempt += 1;
                    tracing::debug!(source = %self.description, error = %e, attempt, "retrying Kafka request");
                    std::thread::sleep(self.retry_interval);
                }
                result => return result,
            }
        }
    }

    fn unreachable(&self, what: &str, e: &KafkaError) -> FlumenError {
        self.error(format!(
            "cannot {what} from Kafka at {} within {:?} ({e}); check kafka.bootstrap.servers and that the broker is running \
             (the wait is set by the kafkaConsumer.pollTimeoutMs option)",
            self.bootstrap, self.timeout
        ))
    }

    /// Runs one ListOffsets request for `request` (by time, or earliest/latest).
    ///
    /// librdkafka fails the whole request when one of its topics is unknown, which is what a
    /// topic deleted since the metadata was read looks like. The partitions that no longer exist
    /// are then data loss: an error with `failOnDataLoss` (the default), otherwise a warning and
    /// the request again without them (the caller finds them missing from the answer). Stale
    /// metadata that still lists a deleted topic is asked again until the timeout.
    fn lookup_offsets(
        &self,
        mut request: TopicPartitionList,
        what: &str,
    ) -> Result<TopicPartitionList> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let error = match self.retrying(|| {
                self.lookups
                    .offsets_for_times(request.clone(), self.timeout)
            }) {
                Ok(answer) => return Ok(answer),
                Err(e) if is_unknown_topic(&e) => e,
                Err(e) => return Err(self.unreachable(what, &e)),
            };
            let gone = self.missing_partitions(&request)?;
            if gone.is_empty() {
                if Instant::now() >= deadline {
                    return Err(self.unreachable(what, &error));
                }
                std::thread::sleep(self.retry_interval.max(Duration::from_millis(100)));
                continue;
            }
            let names: Vec<String> = gone.iter().map(|(t, p)| format!("{t}-{p}")).collect();
            if self.fail_on_data_loss {
                return Err(self.error(format!(
                    "cannot {what}: partitions {} no longer exist, the topic may have been deleted. \
                     If you don't want your streaming query to fail on such cases, set the source option \"failOnDataLoss\" to \"false\".",
                    names.join(", ")
                )));
            }
            tracing::warn!(partitions = ?names, "partitions disappeared (failOnDataLoss=false)");
            let mut remaining = TopicPartitionList::new();
            for elem in request.elements() {
                if !gone.contains(&(elem.topic().to_string(), elem.partition())) {
                    remaining
                        .add_partition_offset(elem.topic(), elem.partition(), elem.offset())
                        .map_err(|e| {
                            self.error(format!(
                                "bad partition {}-{}: {e}",
                                elem.topic(),
                                elem.partition()
                            ))
                        })?;
                }
            }
            if remaining.count() == 0 {
                return Ok(remaining);
            }
            request = remaining;
        }
    }

    /// The partitions of `request` that the cluster's metadata no longer has.
    fn missing_partitions(&self, request: &TopicPartitionList) -> Result<Vec<TopicPartition>> {
        let wanted: Vec<TopicPartition> = request
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut topics: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
        topics.dedup();
        let single = if topics.len() == 1 {
            Some(topics[0])
        } else {
            None
        };
        let metadata = self
            .retrying(|| self.lookups.fetch_metadata(single, self.timeout))
            .map_err(|e| self.unreachable("read topic metadata", &e))?;
        let existing: BTreeSet<TopicPartition> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| {
                t.partitions()
                    .iter()
                    .map(|p| (t.name().to_string(), p.id()))
            })
            .collect();
        Ok(wanted
            .into_iter()
            .filter(|tp| !existing.contains(tp))
            .collect())
    }

    /// The partitions `subscription` covers now. Topics that do not exist yet have none
    /// (subscribe and pattern wait for them); assigned partitions must exist.
    pub fn partitions(&self, subscription: &Subscription) -> Result<Vec<TopicPartition>> {
        // One topic: ask for just that one (cheap on big clusters; consumers do not auto-create
        // topics). Otherwise every topic, which a pattern needs anyway.
        let single = match subscription {
            Subscription::Subscribe(topics) if topics.len() == 1 => Some(topics[0].as_str()),
            _ => None,
        };
        let metadata = self
            .retrying(|| self.lookups.fetch_metadata(single, self.timeout))
            .map_err(|e| self.unreachable("read topic metadata", &e))?;
        let mut existing: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for topic in metadata.topics() {
            if topic.error().is_none() {
                existing.insert(
                    topic.name().to_string(),
                    topic.partitions().iter().map(|p| p.id()).collect(),
                );
            }
        }
        let mut result = Vec::new();
        match subscription {
            Subscription::Subscribe(topics) => {
                for t in topics {
                    for p in existing.get(t).into_iter().flatten() {
                        result.push((t.clone(), *p));
                    }
                }
            }
            Subscription::Pattern(pattern) => {
                let regex = Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| self.error(format!("invalid subscribePattern: {e}")))?;
                for (t, parts) in &existing {
                    if regex.is_match(t) && !t.starts_with("__") {
                        result.extend(parts.iter().map(|p| (t.clone(), *p)));
                    }
                }
            }
            Subscription::Assign(assign) => {
                for (t, parts) in assign {
                    let have = existing.get(t);
                    for p in parts {
                        if !have.is_some_and(|h| h.contains(p)) {
                            return Err(self.error(format!(
                                "assigned partition {t}-{p} does not exist; create the topic or fix the assign option"
                            )));
                        }
                        result.push((t.clone(), *p));
                    }
                }
            }
        }
        result.sort();
        Ok(result)
    }

    /// Looks up offsets for `partitions` in one request.
    pub fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<PartitionOffsets> {
        let mut out = PartitionOffsets::new();
        if partitions.is_empty() {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        let raw = match spec {
            OffsetSpec::Earliest => Offset::Beginning,
            OffsetSpec::Latest => Offset::End,
        };
        for (t, p) in partitions {
            tpl.add_partition_offset(t, *p, raw)
                .map_err(|e| self.error(format!("bad partition {t}-{p}: {e}")))?;
        }
        let result = self.lookup_offsets(tpl, "read partition offsets")?;
        for elem in result.elements() {
            if let Err(e) = elem.error() {
                // A partition deleted since the metadata was read: data loss, judged as the
                // other vanished partitions are (the caller sees it missing from the result).
                let deleted = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownPartition
                    )
                );
                if deleted && !self.fail_on_data_loss {
                    tracing::warn!(
                        topic = elem.topic(),
                        partition = elem.partition(),
                        "partition disappeared (failOnDataLoss=false)"
                    );
                    continue;
                }
                let hint = if deleted {
                    ": the topic may have been deleted. If you don't want your streaming query to fail on such cases, set the source option \"failOnDataLoss\" to \"false\"."
                } else {
                    ""
                };
                return Err(self.error(format!(
                    "cannot read the offsets of {}-{}: {e}{hint}",
                    elem.topic(),
                    elem.partition()
                )));
            }
            let offset = match elem.offset() {
                Offset::Offset(o) => o,
                other => {
                    return Err(self.error(format!(
                        "unexpected offset {other:?} for {}-{}",
                        elem.topic(),
                        elem.partition()
                    )));
                }
            };
            out.entry(elem.topic().to_string())
                .or_default()
                .insert(elem.partition(), offset);
        }
        Ok(out)
    }

    /// The first offset whose record's timestamp is at or after each partition's timestamp
    /// (Kafka's ListOffsets by time). A partition with no such record follows `no_match`:
    /// an error naming it, or its latest offset.
    pub fn offsets_at_timestamps(
        &self,
        timestamps: &[(TopicPartition, i64)],
        no_match: TimestampNoMatch,
    ) -> Result<PartitionOffsets> {
        let mut out = PartitionOffsets::new();
        if timestamps.is_empty() {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), ts) in timestamps {
            tpl.add_partition_offset(t, *p, Offset::Offset(*ts))
                .map_err(|e| self.error(format!("bad partition {t}-{p}: {e}")))?;
        }
        let result = self.lookup_offsets(tpl, "look up offsets by timestamp")?;
        let mut unmatched = Vec::new();
        for elem in result.elements() {
            let tp = (elem.topic().to_string(), elem.partition());
            if let Err(e) = elem.error() {
                return Err(self.error(format!(
                    "cannot look up offsets by timestamp in {}-{}: {e}",
                    tp.0, tp.1
                )));
            }
            match elem.offset() {
                Offset::Offset(o) => {
                    out.entry(tp.0).or_default().insert(tp.1, o);
                }
                Offset::End if no_match == TimestampNoMatch::Latest => unmatched.push(tp),
                Offset::End => {
                    let ts = timestamps
                        .iter()
                        .find(|(wanted, _)| *wanted == tp)
                        .map_or(-1, |(_, ts)| *ts);
                    return Err(self.error(format!(
                        "No offset matched from request of topic-partition {}-{} and timestamp {ts}; \
                         set startingOffsetsByTimestampStrategy to 'latest' to start such partitions \
                         at their latest offset",
                        tp.0, tp.1
                    )));
                }
                other => {
                    return Err(
                        self.error(format!("unexpected offset {other:?} for {}-{}", tp.0, tp.1))
                    );
                }
            }
        }
        for (t, ps) in self.list_offsets(&unmatched, OffsetSpec::Latest)? {
            out.entry(t).or_default().extend(ps);
        }
        Ok(out)
    }

    /// Reads exactly the records in `[from, to)` of each partition, as record batches of at most
    /// [`MAX_BATCH_ROWS`] rows (so no column outgrows Arrow's 32-bit offsets).
    pub fn fetch(&mut self, ranges: &[(TopicPartition, i64, i64)]) -> Result<Vec<RecordBatch>> {
        let total: i64 = ranges.iter().map(|(_, f, t)| (t - f).max(0)).sum();
        let capacity = (total.max(0) as usize).min(MAX_BATCH_ROWS);
        let mut out = Batches::new(self.include_headers, capacity);
        // Per partition: the next offset wanted and the end.
        let mut wanted: HashMap<TopicPartition, (i64, i64)> = HashMap::new();
        for (tp, from, to) in ranges {
            if from < to {
                wanted.insert(tp.clone(), (*from, *to));
            }
        }
        // Serve what an earlier fetch already brought in.
        for (tp, (next, to)) in wanted.iter_mut() {
            let Some(queue) = self.pending.get_mut(tp) else {
                continue;
            };
            while queue.front().is_some_and(|r| r.offset < *next) {
                queue.pop_front();
            }
            if queue.front().is_some_and(|r| r.offset != *next) {
                // A gap between what we hold and what we need: refetch from the broker.
                queue.clear();
                continue;
            }
            while let Some(record) = queue.front() {
                if record.offset >= *to {
                    break;
                }
                if let Some(record) = queue.pop_front() {
                    out.append_owned(&tp.0, tp.1, &record)?;
                    *next = record.offset + 1;
                }
            }
        }
        wanted.retain(|_, (next, to)| next < to);
        if wanted.is_empty() {
            return out.finish();
        }
        self.position_consumer(&wanted, false)?;

        let mut last_progress = Instant::now();
        let mut last_check = Instant::now();
        while !wanted.is_empty() {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    let tp = (msg.topic().to_string(), msg.partition());
                    let offset = msg.offset();
                    self.positions.insert(tp.clone(), offset + 1);
                    let Some((next, to)) = wanted.get_mut(&tp) else {
                        // A partition this batch does not need (already complete): keep it.
                        keep_pending(&mut self.pending, &mut self.positions, tp, &msg);
                        continue;
                    };
                    if offset < *next {
                        continue;
                    }
                    if offset > *next {
                        self.data_loss(&tp, *next, offset)?;
                    }
                    if offset >= *to {
                        keep_pending(&mut self.pending, &mut self.positions, tp.clone(), &msg);
                        wanted.remove(&tp);
                        continue;
                    }
                    let (timestamp, timestamp_type) = timestamp_of(msg.timestamp());
                    let headers = msg.headers().map(header_pairs);
                    out.append(
                        &RecordView {
                            key: msg.key(),
                            value: msg.payload(),
                            topic: &tp.0,
                            partition: tp.1,
                            offset,
                            timestamp,
                            timestamp_type,
                        },
                        headers
                            .as_ref()
                            .map(|h| h.iter().map(|(k, v)| (k.as_ref(), *v))),
                    )?;
                    *next = offset + 1;
                    if *next >= *to {
                        wanted.remove(&tp);
                    }
                    last_progress = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    // An offset we need is gone (retention, a recreated topic).
                    self.skip_lost_records(&mut wanted)?;
                    last_progress = Instant::now();
                }
                Some(Err(e)) => {
                    // Transient client errors (a broker restarting, a connection dropped) are
                    // retried by librdkafka; a lasting one ends in the timeout below.
                    tracing::warn!(source = %self.description, error = %e, "Kafka consumer error; retrying");
                }
                None => {}
            }
            if last_check.elapsed() >= Duration::from_millis(100) {
                last_check = Instant::now();
                self.finish_skipped_ranges(&mut wanted);
                if last_progress.elapsed() > self.timeout {
                    let missing: Vec<String> = wanted
                        .iter()
                        .map(|((t, p), (next, to))| format!("{t}-{p} [{next}, {to})"))
                        .collect();
                    return Err(self.error(format!(
                        "timed out after {:?} fetching {} from Kafka at {}; is the broker reachable? \
                         (the wait is set by the kafkaConsumer.pollTimeoutMs option)",
                        self.timeout,
                        missing.join(", "),
                        self.bootstrap
                    )));
                }
            }
        }
        out.finish()
    }

    /// Records skipped by the broker (transaction markers, compaction) leave gaps at the end of
    /// a range; the consumer's position tells when it has moved past them.
    fn finish_skipped_ranges(&self, wanted: &mut HashMap<TopicPartition, (i64, i64)>) {
        if let Ok(positions) = self.consumer.position() {
            for elem in positions.elements() {
                let tp = (elem.topic().to_string(), elem.partition());
                if let (Offset::Offset(pos), Some((_, to))) = (elem.offset(), wanted.get(&tp))
                    && pos >= *to
                {
                    wanted.remove(&tp);
                }
            }
        }
    }

    /// Handles records that no longer exist: an error with `failOnDataLoss` (the default),
    /// otherwise a warning and a jump to the earliest offset still available.
    fn skip_lost_records(
        &mut self,
        wanted: &mut HashMap<TopicPartition, (i64, i64)>,
    ) -> Result<()> {
        let partitions: Vec<TopicPartition> = wanted.keys().cloned().collect();
        let earliest = self.list_offsets(&partitions, OffsetSpec::Earliest)?;
        for (tp, (next, to)) in wanted.iter_mut() {
            let low = earliest
                .get(&tp.0)
                .and_then(|p| p.get(&tp.1))
                .copied()
                .unwrap_or(*next);
            if low > *next {
                if self.fail_on_data_loss {
                    return Err(self.data_loss_error(
                        tp,
                        *next,
                        &format!("the earliest offset is now {low}"),
                    ));
                }
                tracing::warn!(topic = %tp.0, partition = tp.1, lost_from = *next, lost_to = low.min(*to), "records were lost before they were read (failOnDataLoss=false)");
                *next = low.min(*to);
            }
        }
        wanted.retain(|_, (next, to)| next < to);
        if !wanted.is_empty() {
            self.position_consumer(wanted, true)?;
        }
        Ok(())
    }

    /// Assigns partitions so each one delivers from the offset `wanted` needs next; only
    /// re-assigns when some partition is not already there.
    fn position_consumer(
        &mut self,
        wanted: &HashMap<TopicPartition, (i64, i64)>,
        force: bool,
    ) -> Result<()> {
        let in_place = !force
            && wanted.iter().all(|(tp, (next, _))| {
                self.positions.get(tp) == Some(next)
                    && self.pending.get(tp).is_none_or(VecDeque::is_empty)
            });
        if in_place {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        let mut positions = HashMap::new();
        for (tp, (next, _)) in wanted {
            tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*next))
                .map_err(|e| self.error(format!("cannot assign {}-{}: {e}", tp.0, tp.1)))?;
            positions.insert(tp.clone(), *next);
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| self.error(format!("cannot assign partitions: {e}")))?;
        self.positions = positions;
        self.pending.clear();
        Ok(())
    }

    fn data_loss_error(&self, tp: &TopicPartition, from: i64, detail: &str) -> FlumenError {
        self.error(format!(
            "Some data may have been lost because they are not available in Kafka any more; either the data was aged out by Kafka \
             or the topic may have been deleted before all the data in the topic was processed (partition {}-{}, wanted offset {from}: {detail}). \
             If you don't want your streaming query to fail on such cases, set the source option \"failOnDataLoss\" to \"false\".",
            tp.0, tp.1
        ))
    }

    fn data_loss(&self, tp: &TopicPartition, expected: i64, got: i64) -> Result<()> {
        // Compacted topics and transaction markers also skip offsets; only a gap at the
        // start of a partition's range, below the log start, is data loss.
        let low = self
            .list_offsets(std::slice::from_ref(tp), OffsetSpec::Earliest)
            .ok()
            .and_then(|o| o.get(&tp.0).and_then(|p| p.get(&tp.1)).copied());
        if low.is_some_and(|low| low > expected) {
            if self.fail_on_data_loss {
                return Err(self.data_loss_error(
                    tp,
                    expected,
                    &format!("the earliest offset is now {}", low.unwrap_or(got)),
                ));
            }
            tracing::warn!(topic = %tp.0, partition = tp.1, expected, got, "records were lost before they were read (failOnDataLoss=false)");
        }
        Ok(())
    }

    /// Commits `offsets` to the consumer group (monitoring only).
    pub fn commit(&self, offsets: &PartitionOffsets) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (t, parts) in offsets {
            for (p, o) in parts {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                    .map_err(|e| self.error(e.to_string()))?;
            }
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| self.error(format!("cannot commit offsets to the consumer group: {e}")))
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

fn timestamp_of(ts: Timestamp) -> (Option<i64>, i32) {
    match ts {
        Timestamp::NotAvailable => (None, -1),
        Timestamp::CreateTime(t) => (Some(t), 0),
        Timestamp::LogAppendTime(t) => (Some(t), 1),
    }
}

fn own(msg: &rdkafka::message::BorrowedMessage<'_>) -> OwnedRecord {
    let (timestamp, timestamp_type) = timestamp_of(msg.timestamp());
    OwnedRecord {
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        offset: msg.offset(),
        timestamp,
        timestamp_type,
        headers: msg.headers().map(|h| {
            header_pairs(h)
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.map(<[u8]>::to_vec)))
                .collect()
        }),
    }
}

/// Keeps a record fetched past what the current batch needs, for the next batch; a partition
/// whose buffer grows too large is dropped and re-read from the broker instead.
fn keep_pending(
    pending: &mut HashMap<TopicPartition, VecDeque<OwnedRecord>>,
    positions: &mut HashMap<TopicPartition, i64>,
    tp: TopicPartition,
    msg: &rdkafka::message::BorrowedMessage<'_>,
) {
    let queue = pending.entry(tp.clone()).or_default();
    if queue.len() >= MAX_PENDING_RECORDS {
        queue.clear();
        positions.remove(&tp);
        return;
    }
    queue.push_back(own(msg));
}

/// Record batches being filled, a new one every [`MAX_BATCH_ROWS`] rows.
struct Batches {
    include_headers: bool,
    capacity: usize,
    current: KafkaRowsBuilder,
    done: Vec<RecordBatch>,
}

impl Batches {
    fn new(include_headers: bool, capacity: usize) -> Self {
        Self {
            include_headers,
            capacity,
            current: KafkaRowsBuilder::new(include_headers, capacity),
            done: Vec::new(),
        }
    }

    fn append<'h>(
        &mut self,
        record: &RecordView<'_>,
        headers: Option<impl Iterator<Item = (&'h str, Option<&'h [u8]>)>>,
    ) -> Result<()> {
        if self.current.len() >= MAX_BATCH_ROWS || self.current.value_bytes() >= MAX_BATCH_BYTES {
            let full = std::mem::replace(
                &mut self.current,
                KafkaRowsBuilder::new(self.include_headers, self.capacity),
            );
            self.done.push(full.finish()?);
        }
        self.current.append(record, headers);
        Ok(())
    }

    fn append_owned(&mut self, topic: &str, partition: i32, r: &OwnedRecord) -> Result<()> {
        self.append(
            &RecordView {
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                topic,
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                timestamp_type: r.timestamp_type,
            },
            r.headers
                .as_ref()
                .map(|h| h.iter().map(|(k, v)| (k.as_str(), v.as_deref()))),
        )
    }

    fn finish(mut self) -> Result<Vec<RecordBatch>> {
        if !self.current.is_empty() || self.done.is_empty() {
            self.done.push(self.current.finish()?);
        }
        Ok(self.done)
    }
}

/// A record's headers. Keys that are not valid UTF-8 are decoded leniently (U+FFFD) — rdkafka's
/// own accessor would panic on them.
#[allow(unsafe_code)]
fn header_pairs(headers: &BorrowedHeaders) -> Vec<(Cow<'_, str>, Option<&[u8]>)> {
    // SAFETY: `BorrowedHeaders` is rdkafka's zero-sized view of librdkafka's `rd_kafka_headers_t`
    // (rdkafka itself casts between the two); the pointers librdkafka returns stay valid while
    // the message, which `headers` borrows from, is alive.
    unsafe {
        let native =
            headers as *const BorrowedHeaders as *const rdkafka::bindings::rd_kafka_headers_t;
        let count = rdkafka::bindings::rd_kafka_header_cnt(native);
        let mut pairs = Vec::with_capacity(count);
        for idx in 0..count {
            let mut name = std::ptr::null();
            let mut value = std::ptr::null();
            let mut size = 0usize;
            let err = rdkafka::bindings::rd_kafka_header_get_all(
                native, idx, &mut name, &mut value, &mut size,
            );
            if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || name.is_null()
            {
                continue;
            }
            let key = String::from_utf8_lossy(CStr::from_ptr(name).to_bytes());
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value as *const u8, size));
            pairs.push((key, value));
        }
        pairs
    }
}
