//! `from_json` with a schema: the first line of the input is a Spark DDL schema (a fixed schema
//! with nested types and a corrupt-record column when it does not parse), every further line is
//! one record (a line holding only `\0` is a null record).
//!
//! Checked beyond "no panic": in PERMISSIVE mode every record gives exactly one row, never an
//! error; a null or blank record gives a null struct; FAILFAST gives the same rows or an error.

#![no_main]

use std::sync::Arc;

use flumen_engine::datafusion::arrow::array::{Array, ArrayRef, StringArray};
use flumen_engine::datafusion::arrow::datatypes::Fields;
use flumen_engine::functions::{JsonOptions, ParseMode, decode_json_column, parse_ddl_schema};
use libfuzzer_sys::fuzz_target;

/// Used when the input's first line is not a schema: every kind of type the decoder handles.
const FALLBACK_SCHEMA: &str = "id BIGINT, name STRING, ok BOOLEAN, score DOUBLE, small TINYINT, \
    price DECIMAL(10,2), day DATE, at TIMESTAMP, raw BINARY, tags ARRAY<STRING>, \
    attrs MAP<STRING, INT>, inner STRUCT<a: INT, b: ARRAY<STRUCT<c: STRING>>>, \
    _corrupt_record STRING";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let schema = parse_ddl_schema(first)
        .or_else(|_| parse_ddl_schema(FALLBACK_SCHEMA))
        .expect("the fallback schema parses");
    let fields: Fields = schema.fields().clone();
    let records: Vec<Option<&str>> = lines.map(|l| (l != "\0").then_some(l)).collect();
    let input: ArrayRef = Arc::new(StringArray::from(records.clone()));

    let permissive = decode_json_column(&input, &fields, &JsonOptions::default())
        .unwrap_or_else(|e| panic!("PERMISSIVE from_json failed: {e}"));
    assert_eq!(permissive.len(), records.len(), "one row per record");
    for (row, record) in records.iter().enumerate() {
        if record.is_none_or(|r| r.trim().is_empty()) {
            assert!(
                permissive.is_null(row),
                "null or blank record {row} must give a null struct"
            );
        }
    }

    let fail_fast = JsonOptions {
        mode: ParseMode::FailFast,
        ..JsonOptions::default()
    };
    if let Ok(strict) = decode_json_column(&input, &fields, &fail_fast) {
        assert_eq!(strict.len(), records.len(), "one row per record");
    }
});
