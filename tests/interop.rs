//! Interop: the dataset the collector writes, read by the tools users read it with.
//!
//! Builds a dataset through mosquitto and the collector (BSMs over four event-time hours that
//! cross a date boundary and include single-digit hours, plus the real radar capture), then runs
//! `tools/interop.py` in a Python venv the test makes once and caches beside the build
//! (`$CARGO_TARGET_DIR/interop-venv`, with pyarrow, DuckDB and, when it installs, Polars). Each
//! reader's counts and values must match what was published and what `v2x-collector query`
//! says. The exported files (`query --format parquet --out`, and `export` in each of its
//! formats) are read back the same way.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const HOUR_US: i64 = 3_600_000_000;
/// The BSM hours: across midnight, single- and double-digit hours.
const HOURS: [&str; 4] = [
    "2026-01-04T23:00:00Z",
    "2026-01-05T00:00:00Z",
    "2026-01-05T09:00:00Z",
    "2026-01-05T10:00:00Z",
];
const VEHICLES: usize = 3;
const PER_HOUR: usize = 25;
/// The export window: all of hours 00 and 09, none of 23 or 10 (no row sits on an edge).
const FROM: &str = "2026-01-04T23:30:00Z";
const TO: &str = "2026-01-05T09:30:00Z";

fn us(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

/// One published BSM and the values the dataset must hold for it.
struct Bsm {
    source: String,
    event_us: i64,
    speed: f64,
    lat: f64,
    payload: String,
}

fn bsms() -> Vec<Bsm> {
    let mut out = Vec::new();
    for hour in HOURS {
        for v in 0..VEHICLES {
            for i in 0..PER_HOUR {
                let event_us = us(hour) + 60_000_000 + i as i64 * 1_000_000 + v as i64 * 100_000;
                let speed = v as f64 * 10.0 + i as f64 * 0.25;
                let lat = 39.9 + i as f64 * 1e-4;
                let lon = 116.5 + v as f64 * 1e-3;
                // `{}` prints the shortest text that parses back to the same f64.
                let payload = format!(
                    r#"{{"msgCnt":{},"id":"car-{v}","timeStamp":{},"pos":{{"lat":{lat},"lon":{lon}}},"speed":{speed},"heading":{}.0}}"#,
                    i % 128,
                    event_us / 1000,
                    (i * 7) % 360
                );
                out.push(Bsm {
                    source: format!("car-{v}"),
                    event_us,
                    speed,
                    lat,
                    payload,
                });
            }
        }
    }
    out
}

/// Builds the dataset: every BSM of [`bsms`] and the radar capture.
fn dataset(ws: &Workspace, published: &[Bsm]) {
    let broker = Mosquitto::start();
    let mut c = ws.start(&format!("[mqtt]\nbroker = \"{}\"\n", broker.url()), &[]);
    for v in 0..VEHICLES {
        let source = format!("car-{v}");
        let lines: Vec<String> = published
            .iter()
            .filter(|b| b.source == source)
            .map(|b| b.payload.clone())
            .collect();
        publish_lines(
            broker.port,
            &format!("v2x/v1/obu/{source}/bsm/up/float"),
            &lines,
        );
    }
    replay_radar(&broker);
    c.wait_processed(published.len() as u64 + 500, Duration::from_secs(120));
    assert!(c.stop().success(), "{}", c.log_text());
}

/// The radar capture's own figures: (rows, sum of speed, sum of rcs, first and last event us).
fn radar_published() -> (usize, f64, i64, i64, i64) {
    let text = std::fs::read_to_string(shared("openv2x-radar/track.json")).unwrap();
    let frames: Vec<Value> = serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap();
    let (mut rows, mut speed, mut rcs) = (0, 0.0, 0i64);
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for f in &frames {
        let ms: i64 = f["timeStamp"].as_str().unwrap().parse().unwrap();
        lo = lo.min(ms * 1000);
        hi = hi.max(ms * 1000);
        for t in f["targets"].as_array().unwrap() {
            rows += 1;
            // The radar sends km/h; the column is m/s.
            speed += t["speed"].as_f64().unwrap() / 3.6;
            rcs += t["rcs"].as_i64().unwrap();
        }
    }
    (rows, speed, rcs, lo, hi)
}

// ---- The Python side ----------------------------------------------------------------------

/// The venv's Python with pyarrow and DuckDB (and Polars when it installs), made once and kept
/// in `<target>/interop-venv`.
fn python() -> PathBuf {
    python_venv(
        "interop-venv",
        "pyarrow, duckdb",
        &["pyarrow>=15", "duckdb>=1.1"],
        &["polars>=1.0"],
    )
}

fn interop(data: &Path, exports: &[PathBuf]) -> Value {
    let py = python();
    let mut cmd = Command::new(py);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/interop.py"))
        .arg("--data")
        .arg(data);
    for e in exports {
        cmd.arg("--export").arg(e);
    }
    let out = run_ok(&mut cmd, "tools/interop.py");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tools/interop.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

// ---- v2x-collector query ------------------------------------------------------------------

fn query_json(data: &Path, sql: &str) -> Vec<Value> {
    let out = run_ok(
        bin()
            .arg("query")
            .arg("--data")
            .arg(data)
            .args(["--format", "json", sql]),
        "v2x-collector query",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What `query` says of one kind, in the shape the interop tool reports for each reader:
/// rows, by_source, by_partition, aggregates of `numeric` columns, event_ts range.
fn query_facts(data: &Path, kind: &str, numeric: &[String]) -> Value {
    let mut exprs = vec![
        "count(*) as n".to_string(),
        "cast(min(event_ts) as bigint) as ts_min".to_string(),
        "cast(max(event_ts) as bigint) as ts_max".to_string(),
    ];
    for (i, c) in numeric.iter().enumerate() {
        for f in ["count", "sum", "min", "max"] {
            exprs.push(format!("{f}(\"{c}\") as {f}_{i}"));
        }
    }
    let row = &query_json(data, &format!("select {} from {kind}", exprs.join(", ")))[0];
    // `query --format json` leaves out null fields.
    let get = |k: &str| row.get(k).cloned().unwrap_or(Value::Null);
    let mut aggs = serde_json::Map::new();
    for (i, c) in numeric.iter().enumerate() {
        aggs.insert(
            c.clone(),
            serde_json::json!({
                "count": get(&format!("count_{i}")),
                "sum": get(&format!("sum_{i}")),
                "min": get(&format!("min_{i}")),
                "max": get(&format!("max_{i}")),
            }),
        );
    }
    let by_source: serde_json::Map<String, Value> = query_json(
        data,
        &format!("select source_id, count(*) as n from {kind} group by 1"),
    )
    .into_iter()
    .map(|r| (r["source_id"].as_str().unwrap().to_string(), r["n"].clone()))
    .collect();
    let by_partition: serde_json::Map<String, Value> = query_json(
        data,
        &format!("select date, hour, count(*) as n from {kind} group by 1, 2"),
    )
    .into_iter()
    .map(|r| {
        (
            format!(
                "date={}/hour={}",
                r["date"].as_str().unwrap(),
                r["hour"].as_str().unwrap()
            ),
            r["n"].clone(),
        )
    })
    .collect();
    serde_json::json!({
        "rows": get("n"),
        "by_source": by_source,
        "by_partition": by_partition,
        "aggregates": aggs,
        "timestamps": {"event_ts": {"min_us": get("ts_min"), "max_us": get("ts_max")}},
    })
}

// ---- Comparisons --------------------------------------------------------------------------

/// Equal as JSON values, with integers exact and floats to a relative 1e-9 (readers sum in
/// different orders).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => close(x.as_f64().unwrap(), y.as_f64().unwrap()),
        },
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
}

#[track_caller]
fn assert_same(what: &str, got: &Value, want: &Value) {
    assert!(same(got, want), "{what}:\n got  {got}\n want {want}");
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The readers the tool ran: pyarrow and DuckDB always, Polars when it imported.
fn readers(report: &Value) -> Vec<&'static str> {
    let mut r = vec!["pyarrow", "duckdb"];
    if report["polars"] == "ok" {
        r.push("polars");
    } else {
        eprintln!("note: Polars not checked: {}", report["polars"]);
    }
    r
}

#[track_caller]
fn reader<'a>(entry: &'a Value, name: &str) -> &'a Value {
    let r = &entry["readers"][name];
    assert!(r["error"].is_null(), "{name} failed: {}", r["trace"]);
    r
}

/// The layout and every reader's view of one kind, against `query` and the partitions
/// expected from the published event times.
fn check_kind(data: &Path, report: &Value, kind: &str, hours_us: &BTreeSet<i64>) -> Value {
    let entry = &report["kinds"][kind];
    assert!(entry.is_object(), "{kind} missing from {report}");
    assert!(
        entry["error"].is_null(),
        "{kind} layout: {}",
        entry["trace"]
    );
    let dirs: Vec<String> = hours_us
        .iter()
        .map(|h| {
            chrono::DateTime::from_timestamp_micros(*h)
                .unwrap()
                .format("date=%Y-%m-%d/hour=%H")
                .to_string()
        })
        .collect();
    assert_same(
        &format!("{kind} partition directories"),
        &entry["partition_dirs"],
        &serde_json::json!(dirs),
    );
    assert_eq!(entry["bad_partition_dirs"], serde_json::json!([]));
    assert_eq!(
        entry["files_with_partition_columns_inside"],
        serde_json::json!([]),
        "date and hour live in the path only"
    );

    // The columns a reader must see: the file's own plus the two partition columns.
    let file = &parquet_files(&data.join(kind))[0];
    let mut columns: BTreeSet<String> = read_parquet(file)
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    columns.extend(["date".to_string(), "hour".to_string()]);

    let pa = reader(entry, "pyarrow");
    let numeric: Vec<String> = pa["aggregates"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(numeric.contains(&"speed_mps".to_string()), "{numeric:?}");
    let want = query_facts(data, kind, &numeric);

    let dates: BTreeSet<String> = dirs.iter().map(|d| d[5..15].to_string()).collect();
    let hours: BTreeSet<String> = dirs.iter().map(|d| d[21..23].to_string()).collect();
    for name in readers(report) {
        let r = reader(entry, name);
        let seen: BTreeSet<String> = r["columns"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(seen, columns, "{name} columns of {kind}");
        for key in ["rows", "by_source", "by_partition", "aggregates"] {
            assert_same(&format!("{name} {key} of {kind}"), &r[key], &want[key]);
        }
        for end in ["min_us", "max_us"] {
            assert_same(
                &format!("{name} event_ts {end} of {kind}"),
                &r["timestamps"]["event_ts"][end],
                &want["timestamps"]["event_ts"][end],
            );
        }
        // event_ts is an instant in UTC for every reader, not a naive local time.
        let ts_type = r["columns"]["event_ts"].as_str().unwrap();
        assert!(
            ts_type.contains("UTC") || ts_type == "TIMESTAMP WITH TIME ZONE",
            "{name} reads event_ts as {ts_type}"
        );
        // Partition values: the right ones whatever type the reader gives them, every row's
        // partition agrees with its event_ts, and read as text they keep the zero padding.
        assert_eq!(r["partition_mismatches"], 0, "{name} {kind}");
        let pc = &r["partition_columns"];
        let got_dates: BTreeSet<String> = pc["date"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got_dates, dates, "{name} date values of {kind}");
        let got_hours: BTreeSet<String> = pc["hour"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| match v {
                Value::Number(n) => format!("{:02}", n.as_i64().unwrap()),
                Value::String(s) => s.clone(),
                other => panic!("{name} hour value {other}"),
            })
            .collect();
        assert_eq!(got_hours, hours, "{name} hour values of {kind}");
        assert_same(
            &format!("{name} partition values read as text, {kind}"),
            &r["partition_as_text"],
            &serde_json::json!({"date": dates, "hour": hours}),
        );
    }
    want
}

/// Every reader's view of one exported file: rows, sources, values and sort order.
fn check_export(report: &Value, file: &Path, want: &Value, columns: &[&str], sorted: bool) {
    let entry = &report["exports"][file.to_str().unwrap()];
    for name in ["pyarrow", "duckdb"] {
        let r = &entry[name];
        assert!(
            r["error"].is_null(),
            "{name} cannot read {}: {}",
            file.display(),
            r["trace"]
        );
        let what = format!("{name} reading {}", file.display());
        assert_same(&format!("{what}: rows"), &r["rows"], &want["rows"]);
        assert_same(
            &format!("{what}: sources"),
            &r["by_source"],
            &want["by_source"],
        );
        for c in columns {
            assert_same(
                &format!("{what}: {c}"),
                &r["aggregates"][c],
                &want["aggregates"][c],
            );
        }
        if sorted {
            assert_eq!(r["sorted_by_source_event_ts"], true, "{what}");
            for end in ["min_us", "max_us"] {
                assert_same(
                    &format!("{what}: event_ts {end}"),
                    &r["timestamps"]["event_ts"][end],
                    &want["timestamps"]["event_ts"][end],
                );
            }
        }
    }
}

fn export_exists() -> bool {
    bin()
        .args(["export", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn pyarrow_duckdb_and_polars_read_the_tree_and_the_exports() {
    let started = Instant::now();
    let published = bsms();
    let ws = Workspace::new();
    dataset(&ws, &published);
    let data = ws.data();
    // A file being written is `.name.tmp` beside the committed ones: readers must skip it.
    let part = data.join("bsm/date=2026-01-05/hour=09");
    std::fs::write(part.join(".test-99999999999999999999.parquet.tmp"), b"half").unwrap();

    // The window, through `query --out` and (once it exists) `export` in each format.
    let window = format!("event_ts >= TIMESTAMP '{FROM}' and event_ts < TIMESTAMP '{TO}'");
    let query_out = ws.path().join("query-window.parquet");
    run_ok(
        bin().arg("query").arg("--data").arg(&data).args([
            "--format",
            "parquet",
            "--out",
            query_out.to_str().unwrap(),
            &format!("select * from bsm where {window} order by source_id, event_ts"),
        ]),
        "query --format parquet --out",
    );
    let mut exports = vec![query_out.clone()];
    let has_export = export_exists();
    let export_file = |ext: &str| ws.path().join(format!("export-window.{ext}"));
    let one_source = ws.path().join("export-car-1.parquet");
    if has_export {
        for ext in ["parquet", "csv", "ndjson"] {
            run_ok(
                bin()
                    .arg("export")
                    .arg("--data")
                    .arg(&data)
                    .args(["--kind", "bsm", "--from", FROM, "--to", TO, "--out"])
                    .arg(export_file(ext)),
                "v2x-collector export",
            );
            exports.push(export_file(ext));
        }
        run_ok(
            bin()
                .arg("export")
                .arg("--data")
                .arg(&data)
                .args(["--kind", "bsm", "--from", FROM, "--to", TO])
                .args(["--source", "car-1", "--out"])
                .arg(&one_source),
            "v2x-collector export --source",
        );
        exports.push(one_source.clone());
    } else {
        eprintln!("note: `v2x-collector export` does not exist yet; only `query --out` checked");
    }

    let report = interop(&data, &exports);
    eprintln!("interop report: {}", report["versions"]);
    let kinds: BTreeSet<&String> = report["kinds"].as_object().unwrap().keys().collect();
    assert_eq!(
        kinds,
        BTreeSet::from([&"bsm".to_string(), &"radar_target".to_string()])
    );

    // BSM: every reader against query, and query against what was published.
    let bsm_hours: BTreeSet<i64> = published
        .iter()
        .map(|b| b.event_us / HOUR_US * HOUR_US)
        .collect();
    let q = check_kind(&data, &report, "bsm", &bsm_hours);
    assert_eq!(q["rows"], published.len());
    let mut by_source = BTreeMap::new();
    for b in &published {
        *by_source.entry(b.source.clone()).or_insert(0) += 1;
    }
    assert_same(
        "bsm by source",
        &q["by_source"],
        &serde_json::json!(by_source),
    );
    for h in &bsm_hours {
        let key = chrono::DateTime::from_timestamp_micros(*h)
            .unwrap()
            .format("date=%Y-%m-%d/hour=%H")
            .to_string();
        assert_eq!(q["by_partition"][&key], VEHICLES * PER_HOUR, "{key}");
    }
    let speed = &q["aggregates"]["speed_mps"];
    assert!(close(
        f(&speed["sum"]),
        published.iter().map(|b| b.speed).sum()
    ));
    assert!(close(
        f(&speed["max"]),
        published.iter().map(|b| b.speed).fold(f64::MIN, f64::max)
    ));
    assert!(close(
        f(&q["aggregates"]["lat_deg"]["sum"]),
        published.iter().map(|b| b.lat).sum()
    ));
    let ts = &q["timestamps"]["event_ts"];
    assert_eq!(
        ts["min_us"],
        published.iter().map(|b| b.event_us).min().unwrap()
    );
    assert_eq!(
        ts["max_us"],
        published.iter().map(|b| b.event_us).max().unwrap()
    );

    // Radar: every reader against query, and query against the capture.
    let (rows, speed_sum, rcs_sum, first, last) = radar_published();
    let q = check_kind(
        &data,
        &report,
        "radar_target",
        &BTreeSet::from([first / HOUR_US * HOUR_US]),
    );
    assert_eq!(q["rows"], rows);
    assert_same(
        "radar sources",
        &q["by_source"],
        &serde_json::json!({"N22W75HMBLD": rows}),
    );
    assert!(close(f(&q["aggregates"]["speed_mps"]["sum"]), speed_sum));
    assert_eq!(
        q["aggregates"]["rcs"]["sum"], rcs_sum,
        "int64 beyond 32 bits"
    );
    assert_eq!(q["timestamps"]["event_ts"]["min_us"], first);
    assert_eq!(q["timestamps"]["event_ts"]["max_us"], last);

    // The window as exported: what was published in it, sorted by (source_id, event_ts).
    let (from, to) = (us(FROM), us(TO));
    let in_window: Vec<&Bsm> = published
        .iter()
        .filter(|b| b.event_us >= from && b.event_us < to)
        .collect();
    let facts = |rows: &[&Bsm]| {
        let mut by_source = BTreeMap::new();
        for b in rows {
            *by_source.entry(b.source.clone()).or_insert(0) += 1;
        }
        let speeds = rows.iter().map(|b| b.speed);
        serde_json::json!({
            "rows": rows.len(),
            "by_source": by_source,
            "aggregates": {"speed_mps": {
                "count": rows.len(),
                "sum": speeds.clone().sum::<f64>(),
                "min": speeds.clone().fold(f64::MAX, f64::min),
                "max": speeds.fold(f64::MIN, f64::max),
            }},
            "timestamps": {"event_ts": {
                "min_us": rows.iter().map(|b| b.event_us).min(),
                "max_us": rows.iter().map(|b| b.event_us).max(),
            }},
        })
    };
    let want = facts(&in_window);
    assert_eq!(in_window.len(), 2 * VEHICLES * PER_HOUR);
    check_export(&report, &query_out, &want, &["speed_mps"], true);
    if has_export {
        check_export(
            &report,
            &export_file("parquet"),
            &want,
            &["speed_mps"],
            true,
        );
        // The export carries the schema in the Parquet footer, as the dataset's files do.
        let keys = &report["exports"][export_file("parquet").to_str().unwrap()]["pyarrow"]["footer_metadata_keys"];
        assert!(
            keys.as_array()
                .unwrap()
                .contains(&Value::from("v2x.schema")),
            "export footer metadata: {keys}"
        );
        // CSV and NDJSON: the same rows and values; their times are text each reader
        // parses its own way, so order is checked on the Parquet files.
        for ext in ["csv", "ndjson"] {
            check_export(&report, &export_file(ext), &want, &["speed_mps"], false);
        }
        let car1: Vec<&Bsm> = in_window
            .iter()
            .copied()
            .filter(|b| b.source == "car-1")
            .collect();
        check_export(&report, &one_source, &facts(&car1), &["speed_mps"], true);
    }

    // What each reader makes of the partition columns and timestamps, for the README.
    for kind in ["bsm", "radar_target"] {
        for name in readers(&report) {
            let r = &report["kinds"][kind]["readers"][name];
            eprintln!(
                "{kind} {name}: date {} hour {} event_ts {}",
                r["partition_columns"]["date"]["type"],
                r["partition_columns"]["hour"]["type"],
                r["columns"]["event_ts"]
            );
        }
    }
    eprintln!("interop test took {:.1} s", started.elapsed().as_secs_f64());
}
