//! The server's routes: the page, `/metrics` and the JSON API, as an axum router. GET and HEAD
//! only (HEAD answers GET's headers without the body; other methods get 405 with `Allow`).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flumen_engine::StreamSession;
use serde_json::{Value, json};

use crate::history::History;
use crate::{PAGE, api, metrics};

/// Progress reports `/api/queries/{id}/progress` returns without `?limit=`.
const DEFAULT_PROGRESS_LIMIT: usize = 300;

/// What every handler reads.
#[derive(Clone)]
struct Monitored {
    session: StreamSession,
    history: Arc<History>,
}

/// The router serving `session`'s queries and the progress recorded in `history`.
pub(crate) fn router(session: StreamSession, history: Arc<History>) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/metrics", get(prometheus))
        .route("/api/queries", get(queries))
        .route("/api/queries/{id}", get(query))
        .route("/api/queries/{id}/progress", get(progress))
        .fallback(not_found)
        .with_state(Monitored { session, history })
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

async fn prometheus(State(monitored): State<Monitored>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&monitored.session, &monitored.history),
    )
        .into_response()
}

async fn queries(State(monitored): State<Monitored>) -> Response {
    json_response(StatusCode::OK, &api::queries_json(&monitored.session))
}

async fn query(State(monitored): State<Monitored>, Path(id): Path<String>) -> Response {
    match api::find_query(&monitored.session, &id) {
        Some(query) => json_response(StatusCode::OK, &api::query_json(&query)),
        None => json_response(StatusCode::NOT_FOUND, &api::unknown_query_json(&id)),
    }
}

async fn progress(
    State(monitored): State<Monitored>,
    Path(id): Path<String>,
    RawQuery(query_string): RawQuery,
) -> Response {
    let limit = match query_param(query_string.as_deref(), "limit").map(str::parse::<usize>) {
        None => DEFAULT_PROGRESS_LIMIT,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "limit must be a non-negative integer"}),
            );
        }
    };
    match api::find_query(&monitored.session, &id) {
        Some(query) => json_response(
            StatusCode::OK,
            &api::progress_json(&monitored.history, &query, limit),
        ),
        None => json_response(StatusCode::NOT_FOUND, &api::unknown_query_json(&id)),
    }
}

/// JSON under `/api/`, a line of text elsewhere, both saying where things are.
async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no API endpoint {path}; try /api/queries")}),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            format!(
                "no page at {path}; the monitoring page is at /, the API at /api/queries, metrics at /metrics\n"
            ),
        )
            .into_response()
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, serde_json::to_vec(value).unwrap_or_default()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The value of a `key=value` pair of a query string (not percent-decoded: the API's
/// parameters are numbers).
fn query_param<'q>(query_string: Option<&'q str>, key: &str) -> Option<&'q str> {
    query_string?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_name() {
        assert_eq!(query_param(Some("a=1&limit=5"), "limit"), Some("5"));
        assert_eq!(query_param(Some("limit"), "limit"), None);
        assert_eq!(query_param(None, "limit"), None);
    }
}
