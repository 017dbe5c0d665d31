//! Rows a stateful operator drops because they are behind the watermark, kept for a side output
//! instead of disappearing (`DataStreamWriter::late_rows_to_memory` and friends).
//!
//! An operator records the input rows it dropped while a side output is configured; after the
//! batch, the micro-batch loop takes them, adds which operator dropped them and the watermark
//! they missed, and hands them to the late-rows sink with the batch's id. A row of a sliding
//! window is late only when every window it falls into was dropped: a row that still counts in
//! one window is not lost.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{FlumenError, Result};

/// The column of a late row that names the operator that dropped it (Spark's operator names:
/// `stateStoreSave` for an aggregation, `dedupe` or `dedupeWithinWatermark`).
pub const LATE_OPERATOR_COLUMN: &str = "late_operator";

/// The column of a late row that holds the watermark it missed (a UTC timestamp, ms).
pub const LATE_WATERMARK_COLUMN: &str = "late_watermark";

/// The schema of the late rows of an operator that reads `input` (in a chain, the operator
/// nearest the source, which sees every column): its columns, then
/// [`LATE_OPERATOR_COLUMN`] and [`LATE_WATERMARK_COLUMN`].
pub fn late_rows_schema(input: &Schema) -> Result<SchemaRef> {
    for name in [LATE_OPERATOR_COLUMN, LATE_WATERMARK_COLUMN] {
        if input.field_with_name(name).is_ok() {
            return Err(FlumenError::invalid_option(
                "lateRows",
                format!(
                    "the stateful operator's input already has a column named {name}, which late rows add; rename it"
                ),
            ));
        }
    }
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(LATE_OPERATOR_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(
        LATE_WATERMARK_COLUMN,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    ));
    Ok(Arc::new(Schema::new(fields)))
}

/// The late rows one operator dropped in the current batch, recorded only while capturing.
#[derive(Debug, Default)]
pub(crate) struct LateRows {
    capturing: AtomicBool,
    rows: Mutex<Vec<RecordBatch>>,
}

impl LateRows {
    /// Starts (or stops) recording.
    pub fn set_capturing(&self, on: bool) {
        self.capturing.store(on, Ordering::Relaxed);
    }

    /// Whether dropped rows should be recorded.
    pub fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// Records the rows of `input` where `late` is true (when capturing).
    pub fn record(&self, input: &RecordBatch, late: &BooleanArray) -> Result<()> {
        if !self.capturing() || late.true_count() == 0 {
            return Ok(());
        }
        let rows = filter_record_batch(input, late)?;
        self.lock()?.push(rows);
        Ok(())
    }

    /// Forgets what was recorded (a new batch starts).
    pub fn clear(&self) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.clear();
        }
    }

    /// The rows recorded since the batch began, with `operator` and `watermark_ms` added, as
    /// `schema` (from [`late_rows_schema`]).
    pub fn take(
        &self,
        schema: &SchemaRef,
        operator: &str,
        watermark_ms: i64,
    ) -> Result<Vec<RecordBatch>> {
        let taken = std::mem::take(&mut *self.lock()?);
        let input_fields = schema.fields().len().saturating_sub(2);
        taken
            .into_iter()
            .map(|batch| {
                let n = batch.num_rows();
                // By name: an operator further down a chain may read other columns than the
                // one the schema was made from; what it lacks is null.
                let mut columns: Vec<ArrayRef> = schema.fields()[..input_fields]
                    .iter()
                    .map(|field| match batch.column_by_name(field.name()) {
                        Some(column) if column.data_type() == field.data_type() => {
                            Arc::clone(column)
                        }
                        _ => new_null_array(field.data_type(), n),
                    })
                    .collect();
                columns.push(Arc::new(StringArray::from(vec![operator; n])));
                columns.push(Arc::new(
                    TimestampMillisecondArray::from(vec![watermark_ms; n]).with_timezone("UTC"),
                ));
                Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
            })
            .collect()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<RecordBatch>>> {
        self.rows
            .lock()
            .map_err(|_| FlumenError::IllegalState("late rows poisoned by an earlier panic".into()))
    }
}

/// Input rows none of whose `entries` survived: `entry_rows[e]` is the input row of entry `e`
/// (windows expanded), `kept[e]` whether the entry survived the watermark. Rows without any
/// entry (no event time) are not late.
pub(crate) fn rows_with_every_entry_dropped(
    input_rows: usize,
    entry_rows: &[u32],
    kept: &BooleanArray,
) -> BooleanArray {
    let mut entries = vec![0u32; input_rows];
    let mut survivors = vec![0u32; input_rows];
    for (e, &row) in entry_rows.iter().enumerate() {
        entries[row as usize] += 1;
        if kept.value(e) {
            survivors[row as usize] += 1;
        }
    }
    entries
        .iter()
        .zip(&survivors)
        .map(|(&n, &s)| Some(n > 0 && s == 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_late_only_when_all_its_windows_were_dropped() {
        // Row 0: two windows, both dropped. Row 1: one of two dropped. Row 2: no window.
        let late = rows_with_every_entry_dropped(
            3,
            &[0, 0, 1, 1],
            &BooleanArray::from(vec![false, false, false, true]),
        );
        assert_eq!(late, BooleanArray::from(vec![true, false, false]));
    }

    #[test]
    fn late_rows_carry_the_operator_and_the_missed_watermark() -> Result<()> {
        let input = RecordBatch::try_from_iter([(
            "word",
            Arc::new(StringArray::from(vec!["owl", "donkey", "cat"])) as ArrayRef,
        )])?;
        let schema = late_rows_schema(&input.schema())?;
        let late = LateRows::default();
        late.record(&input, &BooleanArray::from(vec![false, true, false]))?;
        assert!(
            late.take(&schema, "dedupe", 5_000)?.is_empty(),
            "not capturing"
        );
        late.set_capturing(true);
        late.record(&input, &BooleanArray::from(vec![false, true, false]))?;
        let rows = late.take(&schema, "dedupe", 5_000)?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)?.to_string();
        assert_eq!(
            text,
            "+--------+---------------+----------------------+\n\
             | word   | late_operator | late_watermark       |\n\
             +--------+---------------+----------------------+\n\
             | donkey | dedupe        | 1970-01-01T00:00:05Z |\n\
             +--------+---------------+----------------------+"
        );
        assert!(
            late.take(&schema, "dedupe", 5_000)?.is_empty(),
            "taken once"
        );
        Ok(())
    }

    #[test]
    fn an_input_column_named_like_a_late_column_is_refused() {
        let input = Schema::new(vec![Field::new(LATE_OPERATOR_COLUMN, DataType::Utf8, true)]);
        let error = late_rows_schema(&input).unwrap_err().to_string();
        assert!(
            error.contains("already has a column named late_operator"),
            "{error}"
        );
    }
}
