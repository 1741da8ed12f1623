//! The HTTP server: the bearer token, readiness, and a source going silent in `/api/status`.
//! HTTPS (`[http.tls]`) is tested in `tls.rs`, beside the broker TLS matrix.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mosquitto, Workspace, http_get, messages, publish_lines};

const TOKEN: &str = "test-token-0123456789abcdef";

fn status(addr: std::net::SocketAddr, token: Option<&str>) -> serde_json::Value {
    let (code, body) = http_get(addr, "/api/status", token).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The entry of `name` in a document's `kinds` list (`/api/status`, `/api/datasets`).
fn kind(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no kind {name} in {doc:#}"))
}

/// A broker and a collector whose HTTP server requires [`TOKEN`].
fn with_token() -> (Mosquitto, Workspace, common::Collector) {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let extra = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config(&broker)
    );
    let c = ws.start_with_env(&extra, &[], &[("V2X_HTTP_TOKEN", TOKEN)]);
    (broker, ws, c)
}

#[test]
fn off_loopback_without_a_token_is_a_configuration_error() {
    let ws = Workspace::new();
    let config =
        ws.config("[mqtt]\nbroker = \"mqtt://127.0.0.1:1\"\n[http]\nlisten = \"0.0.0.0:0\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_v2x-collector"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("http.token"), "{err}");

    // The flag alone is refused too; a short token as well.
    let out = Command::new(env!("CARGO_BIN_EXE_v2x-collector"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--http", "127.0.0.1:0", "--http-token", "short"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at least 16"), "{err}");
}

#[test]
fn the_token_guards_data_routes_but_not_the_probes() {
    let (_broker, _ws, mut c) = with_token();
    let addr = c.http_addr();

    for path in ["/api/status", "/metrics", "/api/datasets"] {
        let (code, _) = http_get(addr, path, None).unwrap();
        assert_eq!(code, 401, "{path} without a token");
        let (code, _) = http_get(addr, path, Some("test-token-0123456789abcdeX")).unwrap();
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, _) = http_get(addr, path, Some(&TOKEN[..TOKEN.len() - 1])).unwrap();
        assert_eq!(code, 401, "{path} with a prefix of the token");
        let (code, body) = http_get(addr, path, Some(TOKEN)).unwrap();
        assert_eq!(code, 200, "{path} with the token: {body}");
    }
    // The probes need no token (Kubernetes cannot send one) and say nothing more than this.
    let (code, body) = http_get(addr, "/healthz", None).unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = http_get(addr, "/readyz", None).unwrap();
    assert_eq!((code, body.trim()), (200, "ready"));
    let (code, page) = http_get(addr, "/", None).unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("<html"), "the dashboard page");
    let (code, _) = http_get(addr, "/../../etc/passwd", Some(TOKEN)).unwrap();
    assert_eq!(code, 404);

    let ready = http_get(addr, "/readyz", Some(TOKEN)).unwrap().1;
    assert_eq!(ready.trim(), "ready", "a token does not change the answer");
    assert!(c.stop().success());
    assert!(
        !c.log_text().contains(TOKEN),
        "the token must never be logged"
    );
}

#[test]
fn status_flags_a_source_that_went_silent() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let extra = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\nsilent_after_s = 2.0\n",
        common::config(&broker)
    );
    let mut c = ws.start(&extra, &[]);
    let addr = c.http_addr();
    let quiet = "v2x/v1/obu/quiet-car/bsm/up/float";
    let busy = "v2x/v1/obu/busy-car/bsm/up/float";
    publish_lines(broker.port, quiet, &messages(0..20));

    // The busy source keeps sending; wait (bounded) until the quiet one is flagged.
    let started = Instant::now();
    let mut i = 20;
    let mut seen_fresh = false;
    let last = loop {
        publish_lines(broker.port, busy, &messages(i..i + 5));
        i += 5;
        let s = status(addr, None);
        let find = |id: &str| {
            s["sources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["source_id"] == id)
                .cloned()
        };
        if let (Some(q), Some(b)) = (find("quiet-car"), find("busy-car")) {
            if q["silent"] == false {
                seen_fresh = true;
            }
            if q["silent"] == true {
                assert_eq!(b["silent"], false, "{s:#}");
                assert_eq!(q["messages"], 20, "{s:#}");
                assert_eq!(q["kinds"], serde_json::json!(["bsm"]));
                assert!(q["silent_for_s"].as_f64().unwrap() > 2.0);
                break s;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "quiet-car never flagged silent: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        seen_fresh,
        "quiet-car was listed as sending before it went silent"
    );
    assert!(
        last["kinds"].as_array().unwrap().len() >= 8,
        "every kind is listed"
    );

    // Every published message is counted for its kind, once the last ones are in.
    let started = Instant::now();
    loop {
        let s = status(addr, None);
        let bsm = kind(&s, "bsm");
        if bsm["messages"].as_u64() == Some(i as u64) {
            assert_eq!(s["totals"]["decoded"].as_u64(), Some(i as u64), "{s:#}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "bsm messages never reached {i}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The same count in Prometheus.
    let metrics = http_get(addr, "/metrics", None).unwrap().1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("v2x_sources_silent ") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(c.stop().success());
}

#[test]
fn datasets_and_exports_over_http_with_hostile_identifiers_refused() {
    let (broker, _ws, mut c) = with_token();
    let addr = c.http_addr();
    publish_lines(broker.port, common::TOPIC, &messages(0..120));
    c.wait_processed(120, Duration::from_secs(30));
    // Wait until the rows are committed (writer.max_age_s = 0.5 in the test config).
    let started = Instant::now();
    let listing = loop {
        let (code, body) = http_get(addr, "/api/datasets", Some(TOKEN)).unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let bsm = kind(&v, "bsm");
        if bsm["rows"] == 120 {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{v:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every built-in kind has its directory (and `_schema.json`) from the start.
    assert_eq!(
        listing["kinds"].as_array().unwrap().len(),
        v2x_collector::schema::BUILTIN.len()
    );

    // A CSV export of one source, and a Parquet one.
    let (code, csv) = http_get(
        addr,
        "/api/export?kind=bsm&source=car-1&format=csv",
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(code, 200, "{csv}");
    assert_eq!(csv.lines().count(), 1 + 120, "{csv}");
    let (code, parquet) = http_get(addr, "/api/export?kind=bsm", Some(TOKEN)).unwrap();
    assert_eq!(code, 200);
    assert!(parquet.starts_with("PAR1"), "a Parquet download");
    let (code, none) = http_get(
        addr,
        "/api/export?kind=bsm&source=nobody&format=ndjson",
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!((code, none.as_str()), (200, ""));

    // The token is needed; hostile kinds, sources and paths get nothing.
    assert_eq!(http_get(addr, "/api/export?kind=bsm", None).unwrap().0, 401);
    assert_eq!(http_get(addr, "/api/datasets", None).unwrap().0, 401);
    for (path, want) in [
        ("/api/export?kind=..%2F..%2Fetc", 404),
        ("/api/export?kind=../wal", 404),
        ("/api/export?kind=_quarantine", 404),
        ("/api/export?kind=%2Fetc%2Fpasswd", 404),
        ("/api/export?kind=bsm&source=..%2F..", 400),
        ("/api/export?kind=bsm&source=a%00b", 400),
        ("/api/export?kind=bsm&from=yesterday", 400),
        ("/api/export?kind=bsm&format=exe", 400),
        ("/api/export?kind=bsm&evil=1", 400),
        ("/api/export", 400),
        ("/api/export?kind=%zz", 400),
        ("/api/export/../../etc/passwd", 404),
        ("/api/datasets/..%2F..%2Fetc%2Fpasswd", 404),
    ] {
        let (code, body) = http_get(addr, path, Some(TOKEN)).unwrap();
        assert_eq!(code, want, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}");
    }
    assert!(c.stop().success());
}
