//! The JSON API: `/api/queries`, `/api/queries/{id}` and `/api/queries/{id}/progress`.
//!
//! Field names follow Spark (`runId`, `isActive`, `lastProgress`, and the progress reports'
//! own `StreamingQueryProgress` JSON), so a tool reading Spark's REST-ish output reads these.

use flumen_engine::{StreamSession, StreamingQuery};
use serde_json::{Value, json};

use crate::history::History;

/// One query run as `/api/queries` lists it.
pub(crate) fn query_json(query: &StreamingQuery) -> Value {
    let status = serde_json::to_value(query.status()).unwrap_or(Value::Null);
    let last = query
        .last_progress()
        .and_then(|p| serde_json::to_value(p).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": query.id(),
        "runId": query.run_id(),
        "name": query.name(),
        "status": status,
        "isActive": query.is_active(),
        "exception": query.exception().map(|e| e.to_string()),
        "lastProgress": last,
    })
}

/// Every query run of the session, in the order they started.
pub(crate) fn queries_json(session: &StreamSession) -> Value {
    Value::Array(session.queries().iter().map(query_json).collect())
}

/// Finds a run by run id, or the latest run of a query id.
pub(crate) fn find_query(session: &StreamSession, id: &str) -> Option<StreamingQuery> {
    let queries = session.queries();
    queries
        .iter()
        .rev()
        .find(|q| q.run_id() == id)
        .or_else(|| queries.iter().rev().find(|q| q.id() == id))
        .cloned()
}

/// The recorded progress reports of a run, oldest first (at most `limit`).
pub(crate) fn progress_json(history: &History, query: &StreamingQuery, limit: usize) -> Value {
    let reports = history.progress(query.run_id(), limit).unwrap_or_else(|| {
        let recent = query.recent_progress();
        let skip = recent.len().saturating_sub(limit);
        recent.into_iter().skip(skip).collect()
    });
    serde_json::to_value(reports).unwrap_or(Value::Array(Vec::new()))
}

/// The body of a 404 for an unknown query id.
pub(crate) fn unknown_query_json(id: &str) -> Value {
    json!({
        "error": format!(
            "no query with id or runId '{id}' in this session; GET /api/queries lists them"
        )
    })
}
