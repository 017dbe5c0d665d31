//! Query listeners: every lifecycle event, in order, with Spark's contents and JSON; failures
//! carried by the terminated event; listeners that panic or block never reach the query; and
//! the `tracing` spans per query and per batch.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flumen::datafusion::arrow::array::{Int64Array, RecordBatch};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use flumen::listener::*;
use flumen::prelude::*;
use flumen_tests::*;
use serde_json::Value;

/// Sends every event it hears to a channel.
struct Recorder(Mutex<Sender<QueryEvent>>);

impl Recorder {
    fn new() -> (Arc<Self>, Receiver<QueryEvent>) {
        let (tx, rx) = channel();
        (Arc::new(Self(Mutex::new(tx))), rx)
    }

    fn send(&self, event: QueryEvent) {
        self.0.lock().unwrap().send(event).ok();
    }
}

impl StreamingQueryListener for Recorder {
    fn on_query_started(&self, event: &QueryStartedEvent) {
        self.send(QueryEvent::Started(event.clone()));
    }
    fn on_query_progress(&self, event: &QueryProgressEvent) {
        self.send(QueryEvent::Progress(Box::new(event.clone())));
    }
    fn on_query_idle(&self, event: &QueryIdleEvent) {
        self.send(QueryEvent::Idle(event.clone()));
    }
    fn on_query_terminated(&self, event: &QueryTerminatedEvent) {
        self.send(QueryEvent::Terminated(event.clone()));
    }
}

/// Events until (and including) the first terminated event.
fn events_until_terminated(rx: &Receiver<QueryEvent>) -> Vec<QueryEvent> {
    let mut events = Vec::new();
    loop {
        let event = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no terminated event; got {events:#?}"));
        let done = matches!(event, QueryEvent::Terminated(_));
        events.push(event);
        if done {
            return events;
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

fn numbers(schema: &SchemaRef, values: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(Int64Array::from(values))]).unwrap()
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_hears_start_each_batch_and_stop_in_order() {
    let session = StreamSession::new();
    let (recorder, rx) = Recorder::new();
    session.add_listener(recorder);
    let schema = schema();
    let input = MemoryStream::new("numbers", Arc::clone(&schema));
    let query = session
        .stream(Arc::new(input.clone()))
        .unwrap()
        .write_stream()
        .memory()
        .query_name("numbers")
        .start()
        .await
        .unwrap();
    for n in 1..=3 {
        input.add_batch(numbers(&schema, (0..n).collect())).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();

    let events = events_until_terminated(&rx);
    let recent = query.recent_progress();
    assert_eq!(recent.len(), 3, "one progress report per batch");
    assert_eq!(events.len(), 5, "{events:#?}");
    let QueryEvent::Started(started) = &events[0] else {
        panic!("first event: {:?}", events[0]);
    };
    assert_eq!(started.id, query.id());
    assert_eq!(started.run_id, query.run_id());
    assert_eq!(started.name.as_deref(), Some("numbers"));
    chrono_like(&started.timestamp);
    for (batch, event) in events[1..4].iter().enumerate() {
        let QueryEvent::Progress(progress) = event else {
            panic!("event {}: {event:?}", batch + 1);
        };
        assert_eq!(progress.progress, recent[batch]);
        assert_eq!(progress.progress.batch_id, batch as u64);
        assert_eq!(progress.progress.num_input_rows, batch as u64 + 1);
    }
    assert_eq!(
        events[4],
        QueryEvent::Terminated(QueryTerminatedEvent {
            id: query.id().to_string(),
            run_id: query.run_id().to_string(),
            exception: None,
        })
    );

    // Spark's JSON field names.
    let started_json: Value = serde_json::from_str(&started.json()).unwrap();
    assert_eq!(keys(&started_json), ["id", "name", "runId", "timestamp"]);
    assert_eq!(started_json["name"], "numbers");
    let QueryEvent::Progress(first) = &events[1] else {
        unreachable!()
    };
    let progress_json: Value = serde_json::from_str(&first.json()).unwrap();
    assert_eq!(keys(&progress_json), ["progress"]);
    assert_eq!(progress_json["progress"]["batchId"], 0);
    assert_eq!(progress_json["progress"]["numInputRows"], 1);
    assert_eq!(progress_json["progress"]["sink"]["numOutputRows"], 1);
    let QueryEvent::Terminated(terminated) = &events[4] else {
        unreachable!()
    };
    let terminated_json: Value = serde_json::from_str(&terminated.json()).unwrap();
    assert_eq!(
        terminated_json,
        serde_json::json!({"id": query.id(), "runId": query.run_id(), "exception": null})
    );
}

/// Asserts an ISO-8601 UTC timestamp with milliseconds, e.g. `2026-01-01T12:00:00.123Z`.
fn chrono_like(timestamp: &str) {
    let bytes = timestamp.as_bytes();
    assert_eq!(bytes.len(), 24, "{timestamp}");
    assert_eq!(
        (bytes[4], bytes[10], bytes[19], bytes[23]),
        (b'-', b'T', b'.', b'Z'),
        "{timestamp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_query_terminated_event_carries_the_exception() {
    let session = StreamSession::new();
    let (recorder, rx) = Recorder::new();
    session.add_listener(recorder);
    let schema = schema();
    let input = MemoryStream::new("numbers", Arc::clone(&schema));
    input.add_batch(numbers(&schema, vec![1])).unwrap();
    let checkpoint = temp_dir();
    let query = session
        .stream(Arc::new(input.clone()))
        .unwrap()
        .write_stream()
        .checkpoint_location(checkpoint.path().join("cp"))
        .foreach_batch(|_, batch_id| async move {
            if batch_id == 1 {
                Err(FlumenError::IllegalState(
                    "the sink is full; empty it".into(),
                ))
            } else {
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    input.add_batch(numbers(&schema, vec![2])).unwrap();
    assert!(query.await_termination(None).await.is_err());

    let events = events_until_terminated(&rx);
    let names: Vec<&str> = events
        .iter()
        .map(|e| match e {
            QueryEvent::Started(_) => "started",
            QueryEvent::Progress(_) => "progress",
            QueryEvent::Idle(_) => "idle",
            QueryEvent::Terminated(_) => "terminated",
        })
        .collect();
    assert_eq!(names, ["started", "progress", "terminated"]);
    let QueryEvent::Terminated(terminated) = &events[2] else {
        unreachable!()
    };
    assert_eq!(terminated.id, query.id());
    assert_eq!(terminated.run_id, query.run_id());
    assert_eq!(
        terminated.exception.as_deref(),
        Some("sink ForeachBatchSink: batch 1 failed in user code: the sink is full; empty it")
    );
    assert_eq!(
        terminated.exception,
        query.exception().map(|e| e.to_string())
    );
}

/// Panics on every event.
struct Panicker;

impl StreamingQueryListener for Panicker {
    fn on_query_started(&self, _: &QueryStartedEvent) {
        panic!("listener bug");
    }
    fn on_query_progress(&self, _: &QueryProgressEvent) {
        panic!("listener bug");
    }
}

/// Blocks in `on_query_started` until released.
struct Blocker(Mutex<Receiver<()>>);

impl StreamingQueryListener for Blocker {
    fn on_query_started(&self, _: &QueryStartedEvent) {
        self.0.lock().unwrap().recv().ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_or_blocked_listeners_never_reach_the_query() {
    let session = StreamSession::new();
    session.add_listener(Arc::new(Panicker));
    let (release, blocked) = channel();
    session.add_listener(Arc::new(Blocker(Mutex::new(blocked))));
    let (recorder, rx) = Recorder::new();
    let recorder_id = session.add_listener(recorder);

    let schema = schema();
    let input = MemoryStream::new("numbers", Arc::clone(&schema));
    let query = session
        .stream(Arc::new(input.clone()))
        .unwrap()
        .write_stream()
        .memory()
        .query_name("unblocked")
        .start()
        .await
        .unwrap();
    // The blocker holds the dispatcher: batches still run, and no event has been delivered.
    for n in 0..3 {
        input.add_batch(numbers(&schema, vec![n])).unwrap();
        query.process_all_available().await.unwrap();
    }
    assert_eq!(query.recent_progress().len(), 3);
    assert!(
        rx.try_recv().is_err(),
        "events wait behind the blocked listener"
    );

    release.send(()).unwrap();
    query.stop().await.unwrap();
    let events = events_until_terminated(&rx);
    assert_eq!(
        events.len(),
        5,
        "the panicking listener did not stop delivery"
    );
    assert!(query.exception().is_none());
    assert_eq!(session.dropped_listener_events(), 0);

    assert!(session.remove_listener(recorder_id));
    assert!(!session.remove_listener(recorder_id));
    let again = session
        .stream(Arc::new(input.clone()))
        .unwrap()
        .write_stream()
        .memory()
        .query_name("unheard")
        .start()
        .await
        .unwrap();
    again.stop().await.unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a removed listener hears nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_query_posts_idle_events_not_progress() {
    let session = StreamSession::new();
    let (recorder, rx) = Recorder::new();
    session.add_listener(recorder);
    let input = MemoryStream::new("numbers", schema());
    let query = session
        .stream(Arc::new(input))
        .unwrap()
        .write_stream()
        .memory()
        .query_name("idle")
        .start()
        .await
        .unwrap();
    let started = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(started, QueryEvent::Started(_)), "{started:?}");
    // Spark's noDataProgressEventInterval: 10 s.
    let idle = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let QueryEvent::Idle(idle) = idle else {
        panic!("expected an idle event, got {idle:?}");
    };
    assert_eq!(
        (idle.id.as_str(), idle.run_id.as_str()),
        (query.id(), query.run_id())
    );
    chrono_like(&idle.timestamp);
    assert_eq!(
        idle.timestamp,
        query.last_progress().unwrap().timestamp,
        "the idle trigger's progress is still recorded"
    );
    query.stop().await.unwrap();
    let rest = events_until_terminated(&rx);
    assert!(matches!(rest.last(), Some(QueryEvent::Terminated(_))));
}

/// A span's name and its fields as (name, Debug text).
type SpanRecord = (String, Vec<(String, String)>);

/// Records every span's name and fields (a minimal `tracing` subscriber).
#[derive(Default)]
struct SpanLog(Mutex<Vec<SpanRecord>>);

struct FieldText<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

impl tracing::Subscriber for SpanLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut spans = self.0.lock().unwrap();
        let mut fields = Vec::new();
        span.record(&mut FieldText(&mut fields));
        spans.push((span.metadata().name().to_string(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, fields)) = spans.get_mut(span.into_u64() as usize - 1) {
            values.record(&mut FieldText(fields));
        }
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// One thread, so the query's task runs where the subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn spans_per_query_and_per_batch_carry_ids_and_rows() {
    let log = Arc::new(SpanLog::default());
    let _guard = tracing::subscriber::set_default(Arc::clone(&log));
    let session = StreamSession::new();
    let schema = schema();
    let input = MemoryStream::new("numbers", Arc::clone(&schema));
    let query = session
        .stream(Arc::new(input.clone()))
        .unwrap()
        .write_stream()
        .memory()
        .query_name("traced")
        .start()
        .await
        .unwrap();
    for n in [2, 3] {
        input.add_batch(numbers(&schema, (0..n).collect())).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();

    let spans = log.0.lock().unwrap().clone();
    let field = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let queries: Vec<_> = spans.iter().filter(|(name, _)| name == "query").collect();
    assert_eq!(queries.len(), 1, "{spans:?}");
    assert_eq!(field(&queries[0].1, "id"), Some(query.id().to_string()));
    assert_eq!(
        field(&queries[0].1, "run_id"),
        Some(query.run_id().to_string())
    );
    assert_eq!(
        field(&queries[0].1, "name"),
        Some("Some(\"traced\")".to_string())
    );
    let batches: Vec<(Option<String>, Option<String>)> = spans
        .iter()
        .filter(|(name, _)| name == "batch")
        .map(|(_, fields)| (field(fields, "batch_id"), field(fields, "rows")))
        .collect();
    assert_eq!(
        batches,
        [
            (Some("0".to_string()), Some("2".to_string())),
            (Some("1".to_string()), Some("3".to_string())),
        ]
    );
}
