//! (a) Kafka payload JSON → Arrow: a query that parses the records (`from_json` → `data.*`,
//! through the public API) against raw arrow-json, a `serde_json::Value` → builders path, a
//! typed serde struct, and a parse that builds nothing. The function the query calls,
//! `decode_json_column`, is also timed on its own, labelled as a micro-benchmark.

use std::sync::Arc;

use flumen::datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringArray,
    StringBuilder,
};
use flumen::datafusion::arrow::datatypes::{DataType, SchemaRef};
use flumen::functions::{JsonOptions, decode_json_column};
use flumen::prelude::*;
use flumen_examples::titanic;
use serde::Deserialize;

use crate::data::{titanic_messages, value_batches};
use crate::measure::{Figure, Sample, median, time, time_async};
use crate::pipeline::{parsed_values, run_to_noop_sink, run_to_noop_sink_with_dead_letters};

/// Rows per record batch the source hands the plan.
const CHUNK: usize = 65_536;
/// Rows per arrow-json flush (its default batch size).
const FLUSH: usize = 8_192;

/// The engine, as users run it: a memory stream of the records, `from_json` → `data.*`, into a
/// `foreach_batch` sink that does nothing, available-now.
async fn query(batches: &[RecordBatch], schema: &SchemaRef) -> usize {
    let session = StreamSession::new();
    let parsed = parsed_values(&session, batches, None, Arc::clone(schema));
    run_to_noop_sink(parsed).await as usize
}

/// [`query`] with a dead-letter output; returns (rows, dead letters).
async fn query_with_dead_letters(batches: &[RecordBatch], schema: &SchemaRef) -> (usize, u64) {
    let session = StreamSession::new();
    let parsed = parsed_values(&session, batches, None, Arc::clone(schema));
    let (rows, letters) = run_to_noop_sink_with_dead_letters(parsed).await;
    (rows as usize, letters)
}

/// The cost of a dead-letter output: the same query with and without one, on records that all
/// parse and on records of which one in a hundred is cut short.
fn dead_letters(
    rows: usize,
    reps: usize,
    runtime: &tokio::runtime::Runtime,
    messages: &[Vec<u8>],
    schema: &SchemaRef,
) -> Vec<Figure> {
    let mut broken: Vec<Vec<u8>> = messages.to_vec();
    for m in broken.iter_mut().step_by(100) {
        m.truncate(m.len() / 2);
    }
    let expected_letters = broken.len().div_ceil(100) as u64;
    let (good, bad) = (
        value_batches(messages, CHUNK),
        value_batches(&broken, CHUNK),
    );
    let mut samples: [Vec<Sample>; 4] = Default::default();
    for _ in 0..reps {
        for (i, batches) in [&good, &bad].into_iter().enumerate() {
            let (n, s) = runtime.block_on(time_async(query(batches, schema)));
            assert_eq!(n, rows);
            samples[2 * i].push(s);
            let ((n, letters), s) =
                runtime.block_on(time_async(query_with_dead_letters(batches, schema)));
            assert_eq!(n, rows);
            assert_eq!(letters, if i == 0 { 0 } else { expected_letters });
            samples[2 * i + 1].push(s);
        }
    }
    let [plain, lettered, plain_bad, lettered_bad] = samples.map(|s| median(&s));
    let rows = rows as u64;
    vec![
        Figure::rate(
            "a: dead letters on, none malformed",
            "query with dead_letters_foreach_batch",
            "the same query without",
            rows,
            lettered,
            plain,
        )
        .at_least(0.95),
        Figure::rate(
            "a: dead letters on, 1% malformed",
            "query with dead_letters_foreach_batch",
            "the same query without",
            rows,
            lettered_bad,
            plain_bad,
        )
        .note(format!("{expected_letters} dead letters")),
    ]
}

/// Micro-benchmark of the function `from_json` calls: the `value` column as strings, then
/// `decode_json_column`, on one core.
fn function(messages: &[Vec<u8>], schema: &SchemaRef) -> usize {
    let options = JsonOptions::default();
    let mut rows = 0;
    for chunk in messages.chunks(CHUNK) {
        let values: ArrayRef = Arc::new(StringArray::from_iter_values(
            chunk.iter().map(|m| std::str::from_utf8(m).expect("UTF-8")),
        ));
        let decoded = decode_json_column(&values, schema.fields(), &options).expect("decode");
        rows += decoded.len();
    }
    rows
}

/// Raw arrow-json: one `decode` per message, a flush every 8192 rows.
fn arrow_json_decoder(messages: &[Vec<u8>], schema: &SchemaRef) -> usize {
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(FLUSH)
        .build_decoder()
        .expect("decoder");
    let mut rows = 0;
    for (i, m) in messages.iter().enumerate() {
        decoder.decode(m).expect("decode");
        if (i + 1) % FLUSH == 0 {
            rows += decoder.flush().expect("flush").map_or(0, |b| b.num_rows());
        }
    }
    rows + decoder.flush().expect("flush").map_or(0, |b| b.num_rows())
}

/// The path of engines that go through a generic JSON value: `serde_json::Value` per
/// message, then Arrow builders field by field.
fn serde_value(messages: &[Vec<u8>], schema: &SchemaRef) -> usize {
    let mut rows = 0;
    for chunk in messages.chunks(CHUNK) {
        let mut builders: Vec<Box<dyn ArrayBuilder>> = schema
            .fields()
            .iter()
            .map(|f| -> Box<dyn ArrayBuilder> {
                match f.data_type() {
                    DataType::Int64 => Box::new(Int64Builder::with_capacity(chunk.len())),
                    DataType::Float64 => Box::new(Float64Builder::with_capacity(chunk.len())),
                    _ => Box::new(StringBuilder::with_capacity(chunk.len(), chunk.len() * 16)),
                }
            })
            .collect();
        for m in chunk {
            let value: serde_json::Value = serde_json::from_slice(m).expect("JSON");
            for (field, builder) in schema.fields().iter().zip(builders.iter_mut()) {
                let v = value.get(field.name());
                let any = builder.as_any_mut();
                match field.data_type() {
                    DataType::Int64 => any
                        .downcast_mut::<Int64Builder>()
                        .expect("int builder")
                        .append_option(v.and_then(serde_json::Value::as_i64)),
                    DataType::Float64 => any
                        .downcast_mut::<Float64Builder>()
                        .expect("float builder")
                        .append_option(v.and_then(serde_json::Value::as_f64)),
                    _ => any
                        .downcast_mut::<StringBuilder>()
                        .expect("string builder")
                        .append_option(v.and_then(serde_json::Value::as_str)),
                }
            }
        }
        let arrays: Vec<ArrayRef> = builders.iter_mut().map(|b| b.finish()).collect();
        rows += arrays[0].len();
    }
    rows
}

/// A typed struct per message; no Arrow at all.
#[derive(Deserialize)]
#[allow(non_snake_case, dead_code)]
struct Passenger<'a> {
    PassengerId: Option<i64>,
    Survived: Option<i64>,
    Pclass: Option<i64>,
    #[serde(borrow)]
    Name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    Sex: Option<std::borrow::Cow<'a, str>>,
    Age: Option<f64>,
    SibSp: Option<i64>,
    Parch: Option<i64>,
    #[serde(borrow)]
    Ticket: Option<std::borrow::Cow<'a, str>>,
    Fare: Option<f64>,
    #[serde(borrow)]
    Cabin: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    Embarked: Option<std::borrow::Cow<'a, str>>,
}

fn serde_struct(messages: &[Vec<u8>]) -> usize {
    messages
        .iter()
        .map(|m| {
            let p: Passenger<'_> = serde_json::from_slice(m).expect("JSON");
            std::hint::black_box(p.PassengerId).map_or(1, |_| 1)
        })
        .sum()
}

/// Parse and validate only, building nothing: the ceiling of any JSON path.
fn parse_only(messages: &[Vec<u8>]) -> usize {
    messages
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde::de::IgnoredAny>(m).expect("JSON");
            1
        })
        .sum()
}

/// Runs (a).
pub fn run(rows: usize, reps: usize, runtime: &tokio::runtime::Runtime) -> Vec<Figure> {
    let messages = titanic_messages(rows);
    let batches = value_batches(&messages, CHUNK);
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let schema = titanic::schema();
    let mut samples: [Vec<Sample>; 6] = Default::default();
    for _ in 0..reps {
        // Interleaved: each repetition runs every path once, on the same messages.
        let (n, s) = runtime.block_on(time_async(query(&batches, &schema)));
        assert_eq!(n, rows);
        samples[0].push(s);
        let (n, s) = time(|| function(&messages, &schema));
        assert_eq!(n, rows);
        samples[5].push(s);
        let (n, s) = time(|| arrow_json_decoder(&messages, &schema));
        assert_eq!(n, rows);
        samples[1].push(s);
        let (n, s) = time(|| serde_value(&messages, &schema));
        assert_eq!(n, rows);
        samples[2].push(s);
        let (n, s) = time(|| serde_struct(&messages));
        assert_eq!(n, rows);
        samples[3].push(s);
        let (n, s) = time(|| parse_only(&messages));
        assert_eq!(n, rows);
        samples[4].push(s);
    }
    let [e, b1, b2, l1, l0, f] = samples.map(|s| median(&s));
    let letters = dead_letters(rows, reps, runtime, &messages, &schema);
    let rows = rows as u64;
    let mb = |s: Sample| bytes as f64 / 1e6 / s.wall.as_secs_f64();
    let engine = "query: from_json → data.*";
    vec![
        Figure::rate(
            "a: micro: decode_json_column",
            "decode_json_column (1 core)",
            "arrow-json Decoder (1 core)",
            rows,
            f,
            b1,
        )
        .note("function-level micro-benchmark, not a query"),
        Figure::rate(
            "a: decode vs arrow-json",
            engine,
            "arrow-json Decoder",
            rows,
            e,
            b1,
        )
        .at_least(0.9)
        .note(format!(
            "engine {:.0} MB/s, {} B/message",
            mb(e),
            bytes as u64 / rows
        )),
        Figure::rate(
            "a: decode vs serde Value",
            engine,
            "serde_json::Value → builders",
            rows,
            e,
            b2,
        )
        .at_least(3.0),
        Figure::rate(
            "a: decode vs serde struct",
            engine,
            "serde typed struct (no Arrow)",
            rows,
            e,
            l1,
        )
        .at_least(0.8),
        Figure::rate(
            "a: decode vs parse only",
            engine,
            "serde IgnoredAny (ceiling)",
            rows,
            e,
            l0,
        )
        .at_least(0.3),
    ]
    .into_iter()
    .chain(letters)
    .collect()
}
