//! `v2x-collector ls` on datasets the collector wrote from a real mosquitto: the radar capture
//! replayed with `replay`, BSMs from two vehicles and one payload that goes to quarantine. What
//! `ls` reports is checked against the files on disk and the rows read back.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use common::*;

fn ls(data: &Path, json: bool) -> std::process::Output {
    let mut cmd = bin();
    cmd.arg("ls").arg("--data").arg(data);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

fn ls_json(data: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out = ls(data, true);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ls --json printed no JSON ({e}): {stderr}"));
    (out.status.code(), json, stderr)
}

fn kind<'a>(listing: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    listing["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap_or_else(|| panic!("no {name} in {listing:#}"))
}

fn ts_us(v: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("an RFC 3339 string"))
        .unwrap()
        .timestamp_micros()
}

/// Every number `ls` gives for `table`, recomputed from the files and their rows.
fn assert_matches_disk(data: &Path, entry: &serde_json::Value, table: &str) {
    let files = parquet_files(&data.join(table));
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let partitions: BTreeSet<_> = files.iter().map(|f| f.parent().unwrap()).collect();
    assert_eq!(entry["files"], files.len(), "{table}");
    assert_eq!(entry["bytes"], bytes, "{table}");
    assert_eq!(entry["partitions"], partitions.len(), "{table}");
    let (rows, _) = read_table(data, table);
    let rows = rows.expect("rows");
    assert_eq!(entry["rows"], rows.num_rows(), "{table}");
    if table == "_quarantine" {
        return;
    }
    let ts = rows
        .column_by_name("event_ts")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let min = arrow::compute::min(ts).unwrap();
    let max = arrow::compute::max(ts).unwrap();
    assert_eq!(ts_us(&entry["min_event_ts"]), min, "{table}");
    assert_eq!(ts_us(&entry["max_event_ts"]), max, "{table}");
    let src = rows.column_by_name("source_id").unwrap().as_string::<i32>();
    let sources: HashSet<&str> = (0..src.len()).map(|i| src.value(i)).collect();
    assert_eq!(entry["sources"], sources.len(), "{table}");
    // Partitions of two or more files are all small here (far under 8 MiB and 100,000 rows).
    let small: usize = partitions
        .iter()
        .map(|p| files.iter().filter(|f| f.parent() == Some(p)).count())
        .filter(|n| *n >= 2)
        .sum();
    assert_eq!(entry["small_files"], small, "{table}");
    if small > 0 {
        let w = entry["warning"].as_str().unwrap();
        assert!(w.contains(&format!("compact --kind {table}")), "{w}");
    } else {
        assert!(entry["warning"].is_null());
    }
    assert_eq!(entry["errors"], serde_json::json!([]));
}

#[test]
fn ls_reports_the_published_rows_files_times_and_sources() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&config(&broker), &[]);
    replay_radar(&broker);
    publish_lines(
        broker.port,
        "v2x/v1/obu/car-1/bsm/up/float",
        &messages(0..200),
    );
    publish_lines(
        broker.port,
        "v2x/v1/obu/car-2/bsm/up/float",
        &messages(200..350),
    );
    publish_bytes(broker.port, "v2x/v1/obu/car-1/bsm/up/float", b"{not json");
    c.wait_processed(
        radar_frames().len() as u64 + 350 + 1,
        Duration::from_secs(120),
    );
    assert!(c.stop().success(), "{}", c.log_text());
    let data = ws.data();

    let (code, listing, stderr) = ls_json(&data);
    assert_eq!(code, Some(0), "{stderr}");
    // The collector writes every kind's `_schema.json` at start; kinds without data list empty.
    let kinds = listing["kinds"].as_array().unwrap();
    assert!(kinds.len() > 2, "{listing:#}");
    for k in kinds {
        if k["kind"] != "bsm" && k["kind"] != "radar_target" {
            assert_eq!((&k["files"], &k["rows"]), (&0.into(), &0.into()), "{k:#}");
            assert!(k["min_event_ts"].is_null() && k["max_event_ts"].is_null());
        }
    }

    let radar = kind(&listing, "radar_target");
    assert_eq!(radar["rows"], 11_165);
    assert_eq!(radar["sources"], 1);
    assert_matches_disk(&data, radar, "radar_target");

    let bsm = kind(&listing, "bsm");
    assert_eq!(bsm["rows"], 350);
    assert_eq!(bsm["sources"], 2);
    assert_matches_disk(&data, bsm, "bsm");

    let q = &listing["quarantine"];
    assert_eq!(q["rows"], 1);
    assert_matches_disk(&data, q, "_quarantine");

    let out = ls(&data, false);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in ["KIND", "radar_target", "bsm", "_quarantine", "11165", "350"] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
    let first = radar["min_event_ts"].as_str().unwrap();
    // The table shows milliseconds: the same instant, to the millisecond.
    let ms = chrono::DateTime::parse_from_rfc3339(first)
        .unwrap()
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert!(table.contains(&ms), "{ms} missing from:\n{table}");
}

#[test]
fn a_corrupt_file_is_listed_with_its_error_and_exit_1() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&config(&broker), &[]);
    publish_lines(broker.port, TOPIC, &messages(0..50));
    c.wait_processed(50, Duration::from_secs(60));
    assert!(c.stop().success(), "{}", c.log_text());
    let data = ws.data();
    let good = parquet_files(&data.join("bsm"));
    let part = good[0].parent().unwrap();
    std::fs::write(
        part.join("junk.parquet"),
        b"PAR1 garbage, not a footer PAR1",
    )
    .unwrap();
    // Temporary and hidden files are not data: never listed, never errors.
    std::fs::write(part.join(".test-9.parquet.tmp"), b"half written").unwrap();

    let (code, listing, stderr) = ls_json(&data);
    assert_eq!(code, Some(1), "{listing:#}");
    let bsm = kind(&listing, "bsm");
    assert_eq!(bsm["rows"], 50, "the readable files still count");
    assert_eq!(bsm["files"], good.len() + 1);
    let errors = bsm["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{listing:#}");
    assert!(
        errors[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("junk.parquet"),
        "{listing:#}"
    );
    assert!(!errors[0]["error"].as_str().unwrap().is_empty());
    assert!(stderr.contains("junk.parquet"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = ls(&data, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bsm"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.parquet"));
}

#[test]
fn a_missing_data_dir_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-data");
    for json in [false, true] {
        let out = ls(&missing, json);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    }
    // V2X_DATA stands in for --data.
    let out = bin().arg("ls").env("V2X_DATA", &missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-data"));
}

#[test]
fn an_empty_data_dir_lists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (code, listing, _) = ls_json(dir.path());
    assert_eq!(code, Some(0));
    assert_eq!(listing["kinds"], serde_json::json!([]));
    assert_eq!(listing["quarantine"]["files"], 0);
    let out = ls(dir.path(), false);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("_quarantine"));
}
