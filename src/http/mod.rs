//! The collector's HTTP server: `/metrics`, `/healthz`, `/readyz`, `/api/status` and the live
//! dashboard at `/`.
//!
//! Loopback by default. On any other address a bearer token is mandatory (config validation
//! refuses to start without one) and every route except the probes (`/healthz`, `/readyz`,
//! which Kubernetes calls without secrets and which say nothing beyond ready or not and why)
//! and the static page at `/` needs it; the page itself holds no data and sends the token it
//! finds in its URL fragment (`/#token=...`) with each request. Tokens are compared in
//! constant time and never logged. With `[http.tls]` the server speaks HTTPS only.

mod pull;
mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use state::{Shared, StatusInputs};

const DASHBOARD: &str = include_str!("dashboard.html");

/// Latency buckets (seconds) for every histogram: fsync, commit, ack lag.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Installs the process-wide Prometheus recorder once and returns its handle. Metric handles
/// created before this call (the decoder's) would be no-ops, so `run` calls it first.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("the bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Someone else's recorder (an embedding program): render what we can.
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves plain HTTP until [`Server::shutdown`].
    pub async fn start(
        addr: SocketAddr,
        token: Option<String>,
        shared: Arc<Shared>,
    ) -> Result<Server, HttpError> {
        Server::start_with_tls(addr, token, None, shared).await
    }

    /// Binds `addr` and serves HTTPS with `tls` (HTTP when `None`) until [`Server::shutdown`].
    pub async fn start_with_tls(
        addr: SocketAddr,
        token: Option<String>,
        tls: Option<Arc<rustls::ServerConfig>>,
        shared: Arc<Shared>,
    ) -> Result<Server, HttpError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = match tls {
            Some(config) => Listening::Https(
                tls::TlsListener::new(listener, config)
                    .map_err(|source| HttpError::Bind { addr, source })?,
            ),
            None => Listening::Http(listener),
        };
        let app = router(shared.clone(), token.map(Arc::from));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(sample_every_second(shared, stopped.clone()));
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let task = tokio::spawn(async move {
            let served = match listener {
                Listening::Https(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
                Listening::Http(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
            sampler.abort();
        });
        tracing::info!(addr = %local, scheme, "http listening");
        Ok(Server {
            addr: local,
            stop,
            task,
        })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

enum Listening {
    Http(tokio::net::TcpListener),
    Https(tls::TlsListener),
}

async fn sample_every_second(shared: Arc<Shared>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.sample(),
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
    /// One HTTP export at a time.
    exports: Arc<tokio::sync::Semaphore>,
}

fn router(shared: Arc<Shared>, token: Option<Arc<str>>) -> Router {
    let app = App {
        shared,
        token,
        exports: pull::export_slot(),
    };
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/datasets", get(pull::datasets))
        .route("/api/export", get(pull::export))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .layer(middleware::from_fn(common_headers))
        .with_state(app)
}

async fn require_token(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(expected) = &app.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(expected.as_bytes(), g.trim().as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn common_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    std::hint::black_box(diff) == 0
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Unauthenticated (probes cannot send a secret): the body names only fixed conditions
/// (`not connected to the broker`, `data disk full`, ...), never paths, hosts or counts.
async fn readyz(State(app): State<App>) -> Response {
    let problems = app.shared.not_ready();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<App>) -> Response {
    app.shared.update_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.shared.prometheus.render(),
    )
        .into_response()
}

async fn status(State(app): State<App>) -> Response {
    let body = app.shared.status_json().to_string();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmno"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnopq"));
        assert!(!constant_time_eq(b"abc", b""));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_dashboard_loads_nothing_from_elsewhere() {
        // The SVG namespace is a name, not a request.
        let page = DASHBOARD.replace("http://www.w3.org/2000/svg", "");
        for needle in ["http://", "https://", "//cdn", "@import", "src=\"//"] {
            assert!(!page.contains(needle), "dashboard.html references {needle}");
        }
    }
}
