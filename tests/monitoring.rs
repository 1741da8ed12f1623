//! Monitoring end to end: a real mosquitto and the collector binary; `/metrics` parsed as
//! Prometheus text and its counters checked against what the test published; every metric
//! the Grafana dashboard and the alert rules in `deploy/` name is served; `/api/status` and
//! `top --once` show the same totals.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{LineInfo, Scrape, Value};

const DASHBOARD: &str = "deploy/grafana/v2x-collector.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The kinds declared in `schemas/`.
fn schema_kinds() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            if p.extension()? != "toml" {
                return None;
            }
            let v: toml::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            Some(v["kind"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `n` valid BSMs and `bad` payloads that are not JSON, all on one vehicle's topic.
fn publish(broker: &Mosquitto, n: usize, bad: usize) {
    publish_lines(broker.port, TOPIC, &messages(0..n));
    let garbage: Vec<String> = (0..bad).map(|i| format!("{{not json {i}")).collect();
    publish_lines(broker.port, TOPIC, &garbage);
}

/// `/metrics`, checked line by line against the text format (the parser crate skips what
/// it cannot read, so a skipped line is a failure here), then parsed.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_get(addr, "/metrics", None).expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    let mut series = HashSet::new();
    for line in body.lines() {
        match LineInfo::parse(line) {
            LineInfo::Empty | LineInfo::Doc { .. } | LineInfo::Type { .. } => {}
            LineInfo::Sample {
                metric_name,
                labels,
                value,
                timestamp,
            } => {
                assert!(
                    value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                    "not a sample value: {line:?}"
                );
                assert!(timestamp.is_none(), "unexpected timestamp: {line:?}");
                assert!(
                    series.insert((metric_name.to_string(), labels.map(str::to_string))),
                    "series served twice: {line:?}"
                );
            }
            LineInfo::Ignored => {
                assert!(
                    line.starts_with('#') && !line.starts_with("# TYPE"),
                    "not Prometheus text: {line:?}"
                );
            }
        }
    }
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the counter or gauge `name` whose labels include `labels`; `None` if absent.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .find_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(s, name, labels).unwrap_or_else(|| panic!("/metrics has no {name}{labels:?}"))
}

/// Sum over every series of `name`.
fn sum(s: &Scrape, name: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .sum()
}

/// Polls `/metrics` until `done` holds (bounded): acks follow the WAL fsync and Parquet
/// commits follow the writer's age limit, both after the decoder has seen the messages.
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = Instant::now();
    loop {
        let s = scrape(addr);
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "/metrics never showed {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(addr, "/api/status", None).expect("GET /api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Starts a broker and a collector, publishes `n` BSMs and `bad` non-JSON payloads, and
/// waits until all are acknowledged and committed to Parquet (BSM rows and quarantine rows).
fn run_traffic(n: usize, bad: usize) -> (Mosquitto, Workspace, Collector, SocketAddr, Scrape) {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let c = ws.start(&config(&broker), &[]);
    let addr = c.http_addr();
    publish(&broker, n, bad);
    c.wait_processed((n + bad) as u64, Duration::from_secs(60));
    let total = (n + bad) as f64;
    let s = scrape_until(addr, "every message acked and every row committed", |s| {
        value(s, "v2x_source_messages_acked_total", &[]) == Some(total)
            && value(s, "v2x_sink_rows_written_total", &[("kind", "bsm")]) == Some(n as f64)
            // The quarantine table's rows are committed too, and one index row per filed BSM.
            && value(s, "v2x_sink_rows_written_total", &[("kind", "_messages")]) == Some(n as f64)
            && sum(s, "v2x_sink_rows_written_total") == total + n as f64
    });
    (broker, ws, c, addr, s)
}

#[test]
fn metrics_parse_and_count_what_was_published() {
    let (n, bad) = (300, 4);
    let (_broker, _ws, _c, _addr, s) = run_traffic(n, bad);
    let (n, bad) = (n as f64, bad as f64);

    assert_eq!(get(&s, "v2x_source_messages_received_total", &[]), n + bad);
    assert_eq!(get(&s, "v2x_source_messages_acked_total", &[]), n + bad);
    assert_eq!(get(&s, "v2x_decode_messages_total", &[("kind", "bsm")]), n);
    assert_eq!(get(&s, "v2x_decode_rows_total", &[("kind", "bsm")]), n);
    assert_eq!(
        get(&s, "v2x_sink_rows_written_total", &[("kind", "bsm")]),
        n
    );
    assert!(get(&s, "v2x_sink_bytes_written_total", &[("kind", "bsm")]) > 0.0);
    assert!(get(&s, "v2x_sink_files_committed_total", &[("kind", "bsm")]) >= 1.0);
    assert_eq!(
        get(
            &s,
            "v2x_quarantine_messages_total",
            &[("reason", "invalid_json")]
        ),
        bad
    );
    assert_eq!(sum(&s, "v2x_quarantine_messages_total"), bad);
    // Every declared kind has its series from the start; only BSMs were sent.
    for kind in schema_kinds() {
        let expected = if kind == "bsm" { n } else { 0.0 };
        assert_eq!(
            get(&s, "v2x_decode_messages_total", &[("kind", &kind)]),
            expected,
            "{kind}"
        );
    }
    assert_eq!(get(&s, "v2x_source_connected", &[]), 1.0);
    assert_eq!(get(&s, "v2x_ready", &[]), 1.0);
    assert_eq!(
        get(
            &s,
            "v2x_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(get(&s, "v2x_sources_seen", &[]), 1.0);
    assert_eq!(get(&s, "v2x_sources_silent", &[]), 0.0);
    assert!(get(&s, "v2x_wal_max_bytes", &[]) > 0.0);
    assert!(get(&s, "v2x_disk_total_bytes", &[]) >= get(&s, "v2x_disk_free_bytes", &[]));
    // Histograms with buckets (the dashboard's quantiles need `le`), which saw the traffic.
    for name in [
        "v2x_ack_lag_seconds",
        "v2x_wal_fsync_seconds",
        "v2x_sink_commit_seconds",
    ] {
        let buckets = s
            .samples
            .iter()
            .find_map(|x| match &x.value {
                Value::Histogram(b) if x.metric == name => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} is not a histogram with buckets"));
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .unwrap_or_else(|| panic!("{name} has no +Inf bucket"));
        assert_eq!(inf.count, get(&s, &format!("{name}_count"), &[]), "{name}");
        assert!(inf.count > 0.0, "{name} recorded nothing");
    }
}

/// The metric names in `text`: every `v2x_[a-z0-9_]+` token.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("v2x_") {
        let before = text.len() - rest.len() + i;
        let boundary = text[..before]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        if boundary {
            out.insert(name);
        }
    }
    out
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(&repo_file(DASHBOARD)).unwrap();
    let mut out = Vec::new();
    let mut stack = vec![&d];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push(e.to_string());
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    out
}

/// The labels of `sum by (...)` groupings in `expr`, less `le` and the scrape's own.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        let Some(list) = part.split(')').next() else {
            continue;
        };
        for l in list.split(',').map(str::trim) {
            if !["le", "instance", "job"].contains(&l) {
                out.insert(l.to_string());
            }
        }
    }
    out
}

#[test]
fn every_metric_the_dashboard_and_alerts_name_is_served() {
    let dashboard = repo_file(DASHBOARD);
    let alerts = repo_file(ALERTS);
    let named: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    assert!(named.len() > 20, "too few metric names found: {named:?}");

    // A little traffic so that nothing is missing only for want of an event.
    let (_broker, _ws, _c, _addr, s) = run_traffic(20, 1);
    let served: BTreeMap<&str, &Value> = s
        .samples
        .iter()
        .map(|x| (x.metric.as_str(), &x.value))
        .collect();
    let mut missing = Vec::new();
    for name in &named {
        let histogram_part = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix));
        let ok = match histogram_part {
            Some(base) if matches!(served.get(base), Some(Value::Histogram(_))) => {
                name.ends_with("_bucket") || served.contains_key(name.as_str())
            }
            _ => match served.get(name.as_str()) {
                // rate() and increase() need counters.
                Some(Value::Counter(_)) => true,
                Some(Value::Gauge(_)) => !name.ends_with("_total"),
                _ => false,
            },
        };
        if !ok {
            missing.push(format!("{name} ({:?})", served.get(name.as_str())));
        }
    }
    assert!(
        missing.is_empty(),
        "named in {DASHBOARD} or {ALERTS} but not served (or of the wrong type): {missing:?}"
    );

    // `sum by (kind)` and the like group by labels the metrics must carry.
    for expr in dashboard_exprs() {
        let labels = grouping_labels(&expr);
        for name in metric_names(&expr) {
            for label in &labels {
                assert!(
                    s.samples
                        .iter()
                        .any(|x| x.metric == name && x.labels.get(label).is_some()),
                    "{name} has no label {label:?}, which `{expr}` groups by"
                );
            }
        }
    }
}

#[test]
fn status_totals_match_and_list_every_kind() {
    let (n, bad) = (250u64, 3u64);
    let (_broker, _ws, _c, addr, metrics) = run_traffic(n as usize, bad as usize);
    let st = status(addr);

    let t = &st["totals"];
    assert_eq!(t["received"], n + bad, "{st:#}");
    assert_eq!(t["acked"], n + bad);
    assert_eq!(t["decoded"], n);
    assert_eq!(t["rows"], n);
    assert_eq!(t["quarantined"], bad);
    // Parquet rows of every table, the quarantine's included, as /metrics counts them; the
    // message index (one row per filed message) is bookkeeping and not in the total.
    assert_eq!(t["rows_committed"], n + bad);
    assert_eq!(
        t["rows_committed"].as_f64(),
        Some(
            sum(&metrics, "v2x_sink_rows_written_total")
                - value(
                    &metrics,
                    "v2x_sink_rows_written_total",
                    &[("kind", "_messages")]
                )
                .unwrap_or(0.0)
        )
    );
    assert!(t["files_committed"].as_u64().unwrap() >= 1);
    // The same figures as /metrics.
    assert_eq!(
        t["received"].as_f64(),
        value(&metrics, "v2x_source_messages_received_total", &[])
    );
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["collector_id"], "test");
    assert_eq!(st["ready"], true);
    assert_eq!(st["health"]["connected"], true);
    assert_eq!(st["health"]["subscribed"], true);

    let kinds: Vec<&str> = st["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = schema_kinds().into_iter().collect();
    assert_eq!(kinds, expected, "every schema kind, sorted by name");
    for k in st["kinds"].as_array().unwrap() {
        let (messages, rows) = if k["kind"] == "bsm" { (n, n) } else { (0, 0) };
        assert_eq!(k["messages"], messages, "{k}");
        assert_eq!(k["rows"], rows, "{k}");
        for rate in ["rate_10s", "rate_1m", "rate_15m"] {
            assert!(k[rate].as_f64().unwrap() >= 0.0, "{k}");
        }
    }

    let sources = st["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{sources:?}");
    let car = &sources[0];
    assert_eq!(car["source_id"], "car-1");
    assert_eq!(car["kinds"], serde_json::json!(["bsm"]));
    assert_eq!(car["messages"], n);
    assert_eq!(car["quarantined"], bad);
    assert_eq!(car["silent"], false);

    assert_eq!(st["quarantine"]["total"], bad);
    let by_reason = st["quarantine"]["by_reason"].as_array().unwrap();
    let invalid = by_reason
        .iter()
        .find(|r| r["reason"] == "invalid_json")
        .expect("invalid_json in by_reason");
    assert_eq!(invalid["count"], bad);
    assert!(st["wal"]["max_bytes"].as_u64().unwrap() > 0);
    assert!(st["disk"]["total_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn top_once_prints_the_same_figures() {
    let (n, bad) = (120u64, 2u64);
    let (_broker, _ws, _c, addr, _) = run_traffic(n as usize, bad as usize);
    let out = bin()
        .args(["top", "--once", "--http", &addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains('\x1b'), "--once prints no escapes:\n{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("v2x-collector test  v"),
        "{text}"
    );
    assert!(
        text.contains(&format!("received {}  acked {}", n + bad, n + bad)),
        "{text}"
    );
    let bsm: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("bsm "))
        .unwrap_or_else(|| panic!("no bsm line:\n{text}"))
        .split_whitespace()
        .collect();
    let count = n.to_string();
    assert_eq!(bsm[..3], ["bsm", count.as_str(), count.as_str()], "{text}");
    for kind in schema_kinds() {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{kind} "))),
            "{kind} missing:\n{text}"
        );
    }
    let car = text
        .lines()
        .find(|l| l.starts_with("car-1 "))
        .unwrap_or_else(|| panic!("no car-1 line:\n{text}"));
    assert!(car.contains(" ok "), "{car}");
    assert!(text.contains(&format!("QUARANTINE {bad}  invalid_json {bad}")));

    // A collector that is not there: a message naming the address, exit 1.
    let out = bin()
        .args([
            "top",
            "--once",
            "--http",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the collector"));
}
