//! Dead letters to a Kafka topic: the records `from_json` could not parse, as records a
//! consumer can replay.
//!
//! From a Kafka source, a dead letter keeps the original record's key, value (the exact bytes)
//! and headers, and adds headers naming where it came from and why it failed:
//! `flumen.source.topic`, `flumen.source.partition`, `flumen.source.offset`,
//! `flumen.source.timestamp`, `flumen.source.timestampType` (each source column other than key,
//! value and headers, as text) and `flumen.parse_error`. From a source without a `value`
//! column (e.g. files), the value is the source row as one JSON object and the only added
//! header is `flumen.parse_error`.
//!
//! At-least-once, or exactly-once when the query's Kafka sink is (see
//! [`side_output`](crate::side_output)).

use std::sync::Arc;

use flumen_engine::datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, ListBuilder, RecordBatch, StringBuilder, StructArray,
    StructBuilder, new_null_array,
};
use flumen_engine::datafusion::arrow::compute::cast;
use flumen_engine::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use flumen_engine::dead_letters::PARSE_ERROR_COLUMN;
use flumen_engine::functions::encode_json_column;
use flumen_engine::options::Options;
use flumen_engine::{FlumenError, Result};

use crate::schema::headers_type;
use crate::side_output::{SideOutputToKafka, ToRecords};

/// The header naming why a record is a dead letter.
pub const PARSE_ERROR_HEADER: &str = "flumen.parse_error";
/// The prefix of the headers carrying the source row's other columns (`flumen.source.topic`).
pub const SOURCE_HEADER_PREFIX: &str = "flumen.source.";

/// Dead letters as replayable records: the original key, value and headers, plus context
/// headers.
pub struct DeadLetterRecords {
    record_schema: SchemaRef,
}

/// A [`StreamSink`](flumen_engine::sink::StreamSink) writing dead letters to one topic.
pub type DeadLettersToKafka = SideOutputToKafka<DeadLetterRecords>;

impl DeadLettersToKafka {
    /// A sink to `topic` with the query's options (`kafka.bootstrap.servers`, `kafka.*`,
    /// `exactlyOnce`, `transactionalIdPrefix`).
    pub fn new(topic: &str, query_options: &Options) -> Result<Self> {
        let record_schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Binary, true),
            Field::new("value", DataType::Binary, true),
            Field::new("headers", headers_type(), true),
        ]));
        Self::with(topic, query_options, DeadLetterRecords { record_schema })
    }
}

impl ToRecords for DeadLetterRecords {
    const LABEL: &'static str = "DeadLetters";

    fn record_schema(&self) -> SchemaRef {
        Arc::clone(&self.record_schema)
    }

    /// The Kafka records (key, value, headers) of one batch of dead letters.
    fn records(&self, letters: &RecordBatch) -> Result<RecordBatch> {
        let schema = letters.schema();
        let rows = letters.num_rows();
        let binary = |name: &str| -> Result<Option<ArrayRef>> {
            letters
                .column_by_name(name)
                .map(|c| cast(c, &DataType::Binary).map_err(FlumenError::from))
                .transpose()
        };
        let error = letters
            .column_by_name(PARSE_ERROR_COLUMN)
            .ok_or_else(|| {
                FlumenError::IllegalState(format!(
                    "dead letters without a {PARSE_ERROR_COLUMN} column"
                ))
            })
            .and_then(|c| Ok(cast(c, &DataType::Utf8)?))?;
        let error = error.as_string::<i32>();
        let original_value = binary("value")?;
        let (key, value, context_columns) = match original_value {
            Some(value) => {
                let key = binary("key")?.unwrap_or_else(|| new_null_array(&DataType::Binary, rows));
                let context: Vec<(String, ArrayRef)> = schema
                    .fields()
                    .iter()
                    .zip(letters.columns())
                    .filter(|(f, _)| {
                        !matches!(f.name().as_str(), "key" | "value" | "headers")
                            && f.name() != PARSE_ERROR_COLUMN
                    })
                    .map(|(f, c)| {
                        Ok((
                            format!("{SOURCE_HEADER_PREFIX}{}", f.name()),
                            cast(c, &DataType::Utf8)?,
                        ))
                    })
                    .collect::<Result<_>>()?;
                (key, value, context)
            }
            None => {
                let source_columns: Vec<usize> = (0..schema.fields().len())
                    .filter(|i| schema.field(*i).name() != PARSE_ERROR_COLUMN)
                    .collect();
                let row = StructArray::from(letters.project(&source_columns)?);
                let json: ArrayRef = Arc::new(encode_json_column(&row)?);
                (
                    new_null_array(&DataType::Binary, rows),
                    cast(&json, &DataType::Binary)?,
                    Vec::new(),
                )
            }
        };
        // Kafka's headers column; a source's column of another type stays out of the headers.
        let original_headers = letters
            .column_by_name("headers")
            .filter(|h| h.data_type() == &headers_type())
            .and_then(|h| h.as_list_opt::<i32>().cloned());

        let DataType::List(item) = headers_type() else {
            return Err(FlumenError::IllegalState(
                "headers type is not a list".into(),
            ));
        };
        let DataType::Struct(header_fields) = item.data_type().clone() else {
            return Err(FlumenError::IllegalState(
                "header type is not a struct".into(),
            ));
        };
        let mut headers = ListBuilder::new(StructBuilder::new(
            header_fields,
            vec![
                Box::new(StringBuilder::new()),
                Box::new(BinaryBuilder::new()),
            ],
        ))
        .with_field(Arc::clone(&item));
        for row in 0..rows {
            let entries = headers.values();
            if let Some(list) = &original_headers
                && list.is_valid(row)
            {
                let pairs = list.value(row);
                let pairs = pairs.as_struct();
                let keys = pairs.column(0).as_string::<i32>();
                let values = pairs.column(1).as_binary::<i32>();
                for i in 0..pairs.len() {
                    append_header(
                        entries,
                        keys.value(i),
                        values.is_valid(i).then(|| values.value(i)),
                    );
                }
            }
            for (name, column) in &context_columns {
                let text = column.as_string::<i32>();
                if text.is_valid(row) {
                    append_header(entries, name, Some(text.value(row).as_bytes()));
                }
            }
            append_header(
                entries,
                PARSE_ERROR_HEADER,
                Some(error.value(row).as_bytes()),
            );
            headers.append(true);
        }
        Ok(RecordBatch::try_new(
            Arc::clone(&self.record_schema),
            vec![key, value, Arc::new(headers.finish())],
        )?)
    }
}

fn append_header(entries: &mut StructBuilder, key: &str, value: Option<&[u8]>) {
    if let Some(keys) = entries.field_builder::<StringBuilder>(0) {
        keys.append_value(key);
    }
    if let Some(values) = entries.field_builder::<BinaryBuilder>(1) {
        values.append_option(value);
    }
    entries.append(true);
}
