//! The fixed schema of Kafka rows (Spark's), and a builder from Kafka records to Arrow.
use flumen_engine::datafusion::arrow::array::ArrayBuilder;

use std::sync::{Arc, LazyLock};

use flumen_engine::Result;
use flumen_engine::datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, ListArray, RecordBatch, StringBuilder,
    StructArray, TimestampMillisecondBuilder,
};
use flumen_engine::datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use flumen_engine::datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit,
};

/// The type of the `headers` column: `array<struct<key: string, value: binary>>`.
pub fn headers_type() -> DataType {
    DataType::List(header_item())
}

fn header_item() -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(header_fields()),
        true,
    ))
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| Arc::new(Schema::new(base_fields())));
static SCHEMA_WITH_HEADERS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.push(Field::new("headers", headers_type(), true));
    Arc::new(Schema::new(fields))
});

fn base_fields() -> Vec<Field> {
    vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("UTC"))),
            true,
        ),
        Field::new("timestampType", DataType::Int32, false),
    ]
}

/// Spark's Kafka row schema: `key`, `value` (binary), `topic`, `partition`, `offset`,
/// `timestamp` (UTC, ms), `timestampType` (0 create time, 1 log append time, -1 none), and
/// `headers` when asked for.
pub fn kafka_schema(include_headers: bool) -> SchemaRef {
    if include_headers {
        Arc::clone(&SCHEMA_WITH_HEADERS)
    } else {
        Arc::clone(&SCHEMA)
    }
}

/// One Kafka record, borrowed or owned, as the builder needs it.
pub struct RecordView<'a> {
    /// Key bytes.
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub value: Option<&'a [u8]>,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms, when the record has one.
    pub timestamp: Option<i64>,
    /// 0 = create time, 1 = log append time, -1 = none.
    pub timestamp_type: i32,
}

/// Builds a record batch of Kafka rows.
pub struct KafkaRowsBuilder {
    include_headers: bool,
    key: BinaryBuilder,
    value: BinaryBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    timestamp_type: Int32Builder,
    header_offsets: Vec<i32>,
    header_validity: Vec<bool>,
    header_keys: StringBuilder,
    header_values: BinaryBuilder,
}

impl KafkaRowsBuilder {
    /// An empty builder.
    pub fn new(include_headers: bool, capacity: usize) -> Self {
        Self {
            include_headers,
            key: BinaryBuilder::with_capacity(capacity, capacity * 8),
            value: BinaryBuilder::with_capacity(capacity, capacity * 128),
            topic: StringBuilder::with_capacity(capacity, capacity * 16),
            partition: Int32Builder::with_capacity(capacity),
            offset: Int64Builder::with_capacity(capacity),
            timestamp: TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            timestamp_type: Int32Builder::with_capacity(capacity),
            header_offsets: vec![0],
            header_validity: Vec::new(),
            header_keys: StringBuilder::new(),
            header_values: BinaryBuilder::new(),
        }
    }

    /// Rows added so far.
    pub fn len(&self) -> usize {
        self.offset.len()
    }

    /// Bytes of values added so far.
    pub fn value_bytes(&self) -> usize {
        self.value.values_slice().len()
    }

    /// Whether no rows were added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a record; `headers` is `None` for a record without headers (a null `headers` cell).
    pub fn append<'h>(
        &mut self,
        record: &RecordView<'_>,
        headers: Option<impl Iterator<Item = (&'h str, Option<&'h [u8]>)>>,
    ) {
        self.key.append_option(record.key);
        self.value.append_option(record.value);
        self.topic.append_value(record.topic);
        self.partition.append_value(record.partition);
        self.offset.append_value(record.offset);
        self.timestamp.append_option(record.timestamp);
        self.timestamp_type.append_value(record.timestamp_type);
        if self.include_headers {
            let mut count = 0;
            if let Some(headers) = headers {
                for (k, v) in headers {
                    self.header_keys.append_value(k);
                    self.header_values.append_option(v);
                    count += 1;
                }
                self.header_validity.push(true);
            } else {
                self.header_validity.push(false);
            }
            let last = *self.header_offsets.last().unwrap_or(&0);
            self.header_offsets.push(last + count);
        }
    }

    /// The rows as a record batch with [`kafka_schema`].
    pub fn finish(mut self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.timestamp_type.finish()),
        ];
        if self.include_headers {
            let entries = StructArray::try_new(
                header_fields(),
                vec![
                    Arc::new(self.header_keys.finish()),
                    Arc::new(self.header_values.finish()),
                ],
                None,
            )?;
            let list = ListArray::try_new(
                header_item(),
                OffsetBuffer::new(self.header_offsets.into()),
                Arc::new(entries),
                Some(NullBuffer::from(self.header_validity)),
            )?;
            columns.push(Arc::new(list));
        }
        Ok(RecordBatch::try_new(
            kafka_schema(self.include_headers),
            columns,
        )?)
    }
}
