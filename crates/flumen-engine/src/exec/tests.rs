//! The micro-batch loop on a [`MemoryStream`] and a sink that records what it is handed: how
//! triggers cut batches, and that a batch left uncommitted is re-run with its id and rows.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::modes::{OutputMode, Trigger};
use crate::sink::StreamSink;
use crate::{MemoryStream, StreamSession};

/// What the sink was handed: `(batch id, values)` per call.
type Seen = Arc<Mutex<Vec<(u64, Vec<i64>)>>>;

#[derive(Debug)]
struct RecordingSink(Seen);

#[async_trait]
impl StreamSink for RecordingSink {
    fn description(&self) -> String {
        "RecordingSink".into()
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        _mode: OutputMode,
    ) -> Result<()> {
        let mut values = Vec::new();
        for batch in &batches {
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("an Int64 column");
            values.extend((0..column.len()).map(|i| column.value(i)));
        }
        self.0.lock().expect("lock").push((batch_id, values));
        Ok(())
    }
}

fn numbers(values: &[i64]) -> (MemoryStream, RecordBatch) {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int64Array::from(values.to_vec()))],
    )
    .expect("batch");
    (MemoryStream::new("numbers", schema), batch)
}

/// Runs `input` to the end of its trigger with `checkpoint`; returns what the sink saw.
async fn run(input: MemoryStream, trigger: Trigger, checkpoint: &std::path::Path) -> Seen {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let session = StreamSession::new();
    let query = session
        .stream(Arc::new(input))
        .expect("stream")
        .write_stream()
        .trigger(trigger)
        .checkpoint_location(checkpoint)
        .sink_factory(move |_, _, _| Ok(Box::new(RecordingSink(sink))))
        .start()
        .await
        .expect("start");
    query.await_termination(None).await.expect("run");
    seen
}

fn seen(seen: &Seen) -> Vec<(u64, Vec<i64>)> {
    seen.lock().expect("lock").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_now_reads_in_batches_of_the_read_limit_then_stops() {
    let (input, batch) = numbers(&[1, 2, 3, 4, 5]);
    let input = input.with_max_rows_per_trigger(2);
    input.add_batch(batch).expect("add");
    let dir = tempfile::tempdir().expect("dir");
    let out = run(input, Trigger::AvailableNow, dir.path()).await;
    assert_eq!(
        seen(&out),
        vec![(0, vec![1, 2]), (1, vec![3, 4]), (2, vec![5])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_reads_everything_in_one_batch_despite_the_read_limit() {
    let (input, batch) = numbers(&[1, 2, 3, 4, 5]);
    let input = input.with_max_rows_per_trigger(2);
    input.add_batch(batch).expect("add");
    let dir = tempfile::tempdir().expect("dir");
    let out = run(input, Trigger::Once, dir.path()).await;
    assert_eq!(seen(&out), vec![(0, vec![1, 2, 3, 4, 5])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_batch_runs_again_with_its_id_and_rows_then_new_data_follows() {
    let (input, batch) = numbers(&[1, 2, 3, 4, 5]);
    let input = input.with_max_rows_per_trigger(2);
    input.add_batch(batch).expect("add");
    let dir = tempfile::tempdir().expect("dir");
    run(input.clone(), Trigger::AvailableNow, dir.path()).await;
    // A crash between the sink and the commit log of the last batch.
    std::fs::remove_file(dir.path().join("commits/2")).expect("commit of batch 2");
    let (_, more) = numbers(&[6, 7]);
    input.add_batch(more).expect("add");
    let out = run(input, Trigger::AvailableNow, dir.path()).await;
    assert_eq!(seen(&out), vec![(2, vec![5]), (3, vec![6, 7])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_checkpoint_resumes_after_its_last_batch() {
    let (input, batch) = numbers(&[1, 2, 3]);
    input.add_batch(batch).expect("add");
    let dir = tempfile::tempdir().expect("dir");
    run(input.clone(), Trigger::AvailableNow, dir.path()).await;
    let out = run(input.clone(), Trigger::AvailableNow, dir.path()).await;
    assert_eq!(seen(&out), Vec::<(u64, Vec<i64>)>::new());
    let (_, more) = numbers(&[4]);
    input.add_batch(more).expect("add");
    let out = run(input, Trigger::Once, dir.path()).await;
    assert_eq!(seen(&out), vec![(1, vec![4])]);
}
