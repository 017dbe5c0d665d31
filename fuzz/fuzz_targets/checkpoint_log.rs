//! Checkpoint log files as a restarted query reads them: the input is split at lines holding
//! only `--8<--` into the contents of `metadata`, `offsets/0`, `commits/0` and
//! `sources/0/0`, which are written to a real checkpoint directory and read back with the
//! engine's `Checkpoint` (and the Kafka source's offset parser for each source line).
//!
//! Whatever the bytes, reading must give a value or an error naming the file, never a panic.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use flumen_engine::checkpoint::Checkpoint;
use flumen_kafka::offsets;
use libfuzzer_sys::fuzz_target;

const SEPARATOR: &[u8] = b"\n--8<--\n";
const FILES: [&str; 4] = ["metadata", "offsets/0", "commits/0", "sources/0/0"];

fn directory() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

fuzz_target!(|data: &[u8]| {
    let root = directory().join("checkpoint");
    let _ = std::fs::remove_dir_all(&root);
    let parts = split(data);
    for (name, bytes) in FILES.iter().zip(&parts) {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create dirs");
        std::fs::write(&path, bytes).expect("write a checkpoint file");
    }
    let checkpoint = Checkpoint::open(&root).expect("open the checkpoint");
    let named = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        assert!(
            FILES.iter().any(|f| text.contains(
                Path::new(f)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(f)
            )) || text.contains("checkpoint"),
            "the error names the file: {text}"
        );
    };
    if let Err(e) = checkpoint.query_id() {
        named(&e);
    }
    match checkpoint.latest_offsets() {
        Ok(Some((_, entry))) => {
            let parsed: Vec<_> = entry
                .offsets
                .iter()
                .filter_map(|value| offsets::from_json(value, "offsets").ok())
                .collect();
            for start in &parsed {
                for end in &parsed {
                    let _ = offsets::count_between(start, end);
                }
            }
        }
        Ok(None) => {}
        Err(e) => named(&e),
    }
    if let Err(e) = checkpoint.latest_commit() {
        named(&e);
    }
    if let Err(e) = checkpoint.state_layout(4) {
        named(&e);
    }
    if let Err(e) = checkpoint.source_initial_offset(0) {
        named(&e);
    }
});
