//! Spark option strings as users pass them: each input line is `key=value` and the set goes
//! through the Kafka source's option validation (subscribe/assign/subscribePattern, offsets
//! JSON, timestamps, trigger limits, `kafka.*`), and every value through the interval, output
//! mode, parse mode, number and boolean parsers.
//!
//! Whatever the text, the outcome is a value or an error that names the option, never a panic.

#![no_main]

use flumen_engine::OutputMode;
use flumen_engine::functions::ParseMode;
use flumen_engine::options::{Options, parse_interval};
use flumen_kafka::SourceConfig;
use flumen_kafka::offsets;
use flumen_kafka::options::parse_assign;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut options = Options::new();
    for line in text.lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        options.set(key, value);
    }
    for streaming in [true, false] {
        if let Err(e) = SourceConfig::from_options(&options, streaming) {
            assert!(!e.to_string().is_empty());
        }
    }
    for (key, value) in options.iter() {
        let _ = parse_interval(value);
        let _ = value.parse::<OutputMode>();
        let _ = ParseMode::parse(value);
        let _ = parse_assign(value);
        if let Ok(parsed) = offsets::parse(value, key) {
            let _ = offsets::count_between(&parsed, &parsed);
        }
        let _ = options.get_bool(key, false);
        let _ = options.get_positive(key);
        let _ = options.get_millis(key);
    }
});
