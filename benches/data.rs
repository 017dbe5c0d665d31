//! The benchmark inputs: Titanic-shaped passengers (the examples' seeded generator) as compact
//! JSON messages, one per Kafka record.

use std::sync::Arc;

use arrow_json::writer::LineDelimited;
use flumen::datafusion::arrow::array::{RecordBatch, StringArray};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema};
use flumen_examples::titanic;

/// The seed every benchmark uses.
pub const SEED: u64 = 1912;

/// `rows` passengers as JSON messages (nulls omitted, as Spark's `to_json` does).
pub fn titanic_messages(rows: usize) -> Vec<Vec<u8>> {
    let batch = titanic::generate(rows, SEED).expect("the generator");
    json_lines(&batch)
}

/// Each row of `batch` as a compact JSON object.
pub fn json_lines(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let mut buffer = Vec::with_capacity(batch.num_rows() * 200);
    {
        let mut writer = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(false)
            .build::<_, LineDelimited>(&mut buffer);
        writer.write(batch).expect("JSON encoding");
        writer.finish().expect("JSON encoding");
    }
    buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The messages as the `value` string column of a stream, `rows_per_batch` rows per record
/// batch (the size a source fetch hands the plan).
pub fn value_batches(messages: &[Vec<u8>], rows_per_batch: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]));
    messages
        .chunks(rows_per_batch)
        .map(|chunk| {
            let values = StringArray::from_iter_values(
                chunk
                    .iter()
                    .map(|m| std::str::from_utf8(m).expect("the generator writes UTF-8")),
            );
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)])
                .expect("one string column")
        })
        .collect()
}
