//! Pulling data over HTTP: `/api/datasets` (what `ls --json` prints) and `/api/export` (what
//! `export` writes, streamed as a download).
//!
//! `GET /api/export?kind=K[&from=T][&to=T][&source=ID]...[&format=parquet|csv|ndjson]`. The
//! kind and sources must be safe identifiers and are looked up among the dataset's own
//! directories, never joined from raw request text; times are RFC 3339 or `YYYY-MM-DD[ HH:MM]`
//! UTC. The export is written to an unlinked temporary file and streamed from it, one export at
//! a time (a second one gets 503 while the first runs).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::App;
use crate::dataset::export::{self, Request};
use crate::dataset::query::Format;

/// One export at a time: it is CPU and disk heavy inside the collector.
pub(super) fn export_slot() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(1))
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, format!("{msg}\n")).into_response()
}

/// Decodes `%XX` and `+` of one query-string component.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `key=value` pairs of a query string, decoded; `None` if any is malformed.
pub fn query_pairs(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

pub(super) async fn datasets(State(app): State<App>) -> Response {
    let data = app.shared.inputs.data_dir.clone();
    match tokio::task::spawn_blocking(move || crate::dataset::ls::list(&data)).await {
        Ok(Ok(listing)) => match serde_json::to_string(&listing) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub(super) async fn export(State(app): State<App>, RawQuery(q): RawQuery) -> Response {
    let Some(pairs) = query_pairs(q.as_deref().unwrap_or("")) else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let (mut kind, mut from, mut to, mut sources, mut format) =
        (None, None, None, Vec::new(), Format::Parquet);
    for (k, v) in pairs {
        match k.as_str() {
            "kind" => kind = Some(v),
            "source" => sources.push(v),
            "from" | "to" => {
                let Some(us) = export::parse_time(&v) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("{k} {v:?} is not RFC 3339 or YYYY-MM-DD[ HH:MM] (UTC)"),
                    );
                };
                if k == "from" {
                    from = Some(us);
                } else {
                    to = Some(us);
                }
            }
            "format" => {
                format = match v.as_str() {
                    "parquet" => Format::Parquet,
                    "csv" => Format::Csv,
                    "ndjson" | "json" => Format::Json,
                    _ => return error(StatusCode::BAD_REQUEST, "format: parquet, csv or ndjson"),
                }
            }
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {k:?}")),
        }
    }
    let Some(kind) = kind else {
        return error(StatusCode::BAD_REQUEST, "kind is required");
    };
    // Only a kind that exists as one of the dataset's own directories.
    let data = app.shared.inputs.data_dir.clone();
    match crate::dataset::kinds(&data) {
        Ok(kinds) if kinds.contains(&kind) => {}
        Ok(_) => return error(StatusCode::NOT_FOUND, format!("no kind {kind:?}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    let Ok(_permit) = app.exports.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "another export is running; try again when it is done",
        );
    };
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let (ext, mime) = match format {
        Format::Csv => ("csv", "text/csv"),
        Format::Json => ("ndjson", "application/x-ndjson"),
        _ => ("parquet", "application/vnd.apache.parquet"),
    };
    let out: PathBuf = std::env::temp_dir().join(format!(
        "v2x-export-{}-{}.{ext}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let req = Request {
        data,
        kind: kind.clone(),
        from_us: from,
        to_us: to,
        sources,
        out: out.clone(),
        format,
        memory_bytes: export::DEFAULT_MEMORY_BYTES,
    };
    let summary = match export::run(&req, |_, _| {}).await {
        Ok(s) => s,
        Err(e) if e.exit_code() == 2 => return error(StatusCode::BAD_REQUEST, e),
        Err(e) => {
            tracing::warn!(error = %e, kind = %kind, "HTTP export failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    };
    let file = match tokio::fs::File::open(&out).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    // Unlinked now: the open handle keeps the content until the download ends.
    let _ = std::fs::remove_file(&out);
    let mut side = out.into_os_string();
    side.push(".schema.json");
    let _ = std::fs::remove_file(side);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{kind}.{ext}\""),
            ),
            (header::CONTENT_LENGTH, summary.bytes.to_string()),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let p = query_pairs("kind=bsm&source=a&source=b&from=2026-11-28+09%3A00").unwrap();
        assert_eq!(
            p,
            vec![
                ("kind".into(), "bsm".into()),
                ("source".into(), "a".into()),
                ("source".into(), "b".into()),
                ("from".into(), "2026-11-28 09:00".into()),
            ]
        );
        assert_eq!(query_pairs("kind=..%2F..%2Fetc").unwrap()[0].1, "../../etc");
        assert!(query_pairs("kind=%zz").is_none());
        assert!(query_pairs("kind=%f").is_none());
        assert!(query_pairs("kind=%ff").is_none(), "not UTF-8");
    }
}
