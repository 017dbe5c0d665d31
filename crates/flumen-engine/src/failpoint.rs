//! Deterministic failpoints for crash tests: the process aborts at a named point of a named
//! batch, as a crash would stop it there.
//!
//! `FLUMEN_FAILPOINT=POINT@BATCH` (read once per process) arms one point; unset, every check is
//! a comparison against a cached `None`. The points, in the order a batch passes them:
//!
//! | point | where the process stops |
//! |---|---|
//! | `after-fetch` | the batch's offsets are logged (`offsets/N`) and its rows fetched; nothing else happened |
//! | `after-state-commit` | the stateful operators wrote the batch's state delta; the sink has not run |
//! | `before-transaction-commit` | (Kafka sink, exactly-once) every record is in the open transaction, which is not committed |
//! | `after-sink-write` | the sink finished the batch (for the exactly-once Kafka sink: its transaction is committed); `commits/N` is not written |
//!
//! The process ends with [`std::process::abort`] (SIGABRT): no destructors, no flushing, like
//! a SIGKILL at that instant.

use std::sync::OnceLock;

/// The environment variable naming the armed failpoint, as `POINT@BATCH`.
pub const FAILPOINT_ENV: &str = "FLUMEN_FAILPOINT";

/// Every failpoint name, for validating the variable.
pub const FAILPOINTS: [&str; 4] = [
    "after-fetch",
    "after-state-commit",
    "before-transaction-commit",
    "after-sink-write",
];

fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let text = std::env::var(FAILPOINT_ENV).ok()?;
            match parse(&text) {
                Some(armed) => Some(armed),
                None => {
                    tracing::warn!(
                        value = %text,
                        "{FAILPOINT_ENV} ignored: expected POINT@BATCH with POINT one of {FAILPOINTS:?}"
                    );
                    None
                }
            }
        })
        .as_ref()
}

fn parse(text: &str) -> Option<(String, u64)> {
    let (point, batch) = text.trim().split_once('@')?;
    let batch = batch.parse().ok()?;
    FAILPOINTS
        .contains(&point)
        .then(|| (point.to_string(), batch))
}

/// Aborts the process if `point` is armed for `batch_id`.
pub fn check(point: &str, batch_id: u64) {
    if let Some((armed_point, armed_batch)) = armed()
        && armed_point == point
        && *armed_batch == batch_id
    {
        eprintln!("{FAILPOINT_ENV}: aborting at {point} of batch {batch_id}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_names_a_known_point_and_a_batch() {
        assert_eq!(parse("after-fetch@3"), Some(("after-fetch".into(), 3)));
        assert_eq!(
            parse(" after-sink-write@0 "),
            Some(("after-sink-write".into(), 0))
        );
        assert_eq!(parse("after-fetch"), None);
        assert_eq!(parse("after-lunch@1"), None);
        assert_eq!(parse("after-fetch@x"), None);
    }
}
