//! The Spark DDL schema parser (`from_json`'s schema string, `session.read().schema(..)`).
//!
//! Checked beyond "no panic": a schema that parses has at least one field, and parsing is
//! deterministic.

#![no_main]

use flumen_engine::functions::parse_ddl_schema;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_ddl_schema(text) {
        Ok(schema) => {
            assert!(!schema.fields().is_empty(), "a parsed schema has fields");
            assert_eq!(
                parse_ddl_schema(text).ok(),
                Some(schema),
                "parsing is deterministic"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty(), "errors say something"),
    }
});
