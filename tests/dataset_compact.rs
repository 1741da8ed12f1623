//! `v2x-collector compact` on a dataset the collector wrote through mosquitto in many small
//! files (`[writer] max_rows = 50`, `max_age_s = 0.2`): BSMs in two closed hours (three and four
//! hours ago) and in the current hour. Every message has its own vehicle id, so each row maps
//! back to one published message.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use arrow::array::AsArray;
use common::*;

const HOUR_MS: i64 = 3_600_000;
const PER_VEHICLE: usize = 150;
const VEHICLES: usize = 3;
const NOW_ROWS: usize = 100;

fn writer_config(broker: &Mosquitto) -> String {
    format!(
        "[mqtt]\nbroker = \"{}\"\n[writer]\nmax_rows = 50\nmax_age_s = 0.2\n",
        broker.url()
    )
}

/// BSMs `m<first>..`, one per second from `start_ms`, speeds `x.5` so sums are exact.
fn bsms(first: usize, n: usize, start_ms: i64, step_ms: i64) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"msgCnt":{},"id":"m{}","timeStamp":{},"pos":{{"lat":39.9,"lon":116.5}},"speed":{}.5,"heading":90.0}}"#,
                i % 128,
                first + i,
                start_ms + i as i64 * step_ms,
                i % 30
            )
        })
        .collect()
}

/// The dataset: 2 closed hours x 3 vehicles x 150 BSMs, and 100 BSMs in the current hour.
/// Returns the workspace and the number of messages.
fn build() -> (Workspace, usize) {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&writer_config(&broker), &[]);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let first_hour = (now_ms / HOUR_MS - 4) * HOUR_MS;
    let mut n = 0;
    for h in 0..2 {
        for v in 0..VEHICLES {
            let start = first_hour + h * HOUR_MS + 60_000 + v as i64 * 7;
            publish_lines(
                broker.port,
                &format!("v2x/v1/obu/car-{v}/bsm/up/float"),
                &bsms(n, PER_VEHICLE, start, 1000),
            );
            n += PER_VEHICLE;
        }
    }
    // The current hour (or, at an hour's first seconds, the previous one: both are open), in
    // four bursts further apart than max_age_s, so in several files.
    for b in 0..4 {
        if b > 0 {
            std::thread::sleep(Duration::from_millis(400));
        }
        publish_lines(
            broker.port,
            "v2x/v1/obu/car-9/bsm/up/float",
            &bsms(n, NOW_ROWS / 4, now_ms - 2_000 + b as i64 * 100, 1),
        );
        n += NOW_ROWS / 4;
    }
    c.wait_processed(n as u64, Duration::from_secs(60));
    assert!(c.stop().success(), "{}", c.log_text());
    (ws, n)
}

fn copy_of(data: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("data");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(data)
        .arg(&to)
        .output()
        .unwrap();
    assert!(out.status.success());
    (dir, to)
}

fn compact(data: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = bin();
    cmd.arg("compact").arg("--data").arg(data).args(args);
    if let Some(p) = failpoint {
        cmd.env("V2X_FAILPOINT", p);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// (msg_uid, vehicle_id) -> how many rows, over every data file of `bsm`.
fn row_set(data: &Path) -> HashMap<(String, String), usize> {
    let mut out = HashMap::new();
    for f in parquet_files(&data.join("bsm")) {
        let b = read_parquet(&f);
        let uid = b.column_by_name("msg_uid").unwrap().as_string::<i32>();
        let vid = b.column_by_name("vehicle_id").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            *out.entry((uid.value(i).to_string(), vid.value(i).to_string()))
                .or_insert(0) += 1;
        }
    }
    out
}

/// Partition -> its data file names.
fn layout(data: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let root = data.join("bsm");
    for f in parquet_files(&root) {
        let part = f.parent().unwrap().strip_prefix(&root).unwrap();
        out.entry(part.display().to_string())
            .or_default()
            .push(f.file_name().unwrap().to_string_lossy().into_owned());
    }
    out
}

/// No temporary or hidden file anywhere, no work directory left, every data file reads and is
/// sorted by (source_id, event_ts).
fn assert_clean(data: &Path) {
    for f in all_files(data) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.starts_with('.') && !name.ends_with(".tmp"),
            "left over: {}",
            f.display()
        );
        assert!(
            !f.starts_with(data.join("_compact")),
            "left over: {}",
            f.display()
        );
        if name.ends_with(".parquet") {
            let b = read_parquet(&f);
            let src = b.column_by_name("source_id").unwrap().as_string::<i32>();
            let ts = b
                .column_by_name("event_ts")
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            assert!(
                (1..b.num_rows())
                    .all(|i| (src.value(i - 1), ts.value(i - 1)) <= (src.value(i), ts.value(i))),
                "{} is not sorted",
                f.display()
            );
        }
    }
    // Only the (empty) lock directory may remain.
    if let Ok(entries) = std::fs::read_dir(data.join("_compact")) {
        let left: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "work directories left: {left:?}");
    }
}

/// Before/after checks shared by the tests: same rows, closed partitions down to one file
/// each, the open one untouched.
fn assert_compacted(
    data: &Path,
    rows: &HashMap<(String, String), usize>,
    before: &BTreeMap<String, Vec<String>>,
    what: &str,
) {
    assert_clean(data);
    let got = row_set(data);
    assert_eq!(got.len(), rows.len(), "{what}: distinct rows");
    assert_eq!(&got, rows, "{what}: rows lost or duplicated");
    let after = layout(data);
    assert_eq!(after.len(), before.len(), "{what}: partitions");
    let mut untouched = 0;
    for (part, files) in before {
        let now = &after[part];
        if now == files {
            untouched += 1;
        } else {
            assert_eq!(now.len(), 1, "{what}: {part} has {now:?}");
            assert!(now[0].starts_with("compact-"), "{what}: {now:?}");
            assert!(files.len() > 1);
        }
    }
    assert_eq!(
        untouched,
        before.len() - 2,
        "{what}: only the two closed hours change"
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn compaction_killed_at_every_step_then_rerun_loses_and_duplicates_nothing() {
    let (ws, n) = build();
    let rows = row_set(&ws.data());
    assert_eq!(rows.len(), n);
    assert!(rows.values().all(|&c| c == 1));
    let before = layout(&ws.data());
    assert_eq!(before.len(), 3, "{before:?}");
    for (part, files) in &before {
        assert!(
            files.len() >= 2,
            "{part}: {files:?} is not many small files"
        );
    }
    // Each step once; then a crash inside the recovery of a crash.
    let cases: Vec<Vec<&str>> = vec![
        vec!["compact_mid_output"],
        vec!["compact_before_manifest"],
        vec!["compact_after_manifest"],
        vec!["compact_after_exchange"],
        vec!["compact_mid_cleanup"],
        vec!["compact_before_manifest_removal"],
        vec!["compact_after_manifest_removal"],
        vec!["compact_after_exchange", "compact_mid_cleanup"],
        vec!["compact_after_manifest", "compact_after_manifest_removal"],
    ];
    for points in cases {
        let what = points.join(" then ");
        let (_keep, data) = copy_of(&ws.data());
        for p in &points {
            let out = compact(&data, &["--quiet-secs", "0"], Some(p));
            assert!(
                !out.status.success(),
                "{what}: did not stop at {p}: {}",
                text(&out)
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(&format!("failpoint {p}")),
                "{what}: {}",
                text(&out)
            );
            // Whatever the crash left, readers see every row exactly once in committed files.
            let seen = row_set(&data);
            assert_eq!(seen, rows, "{what}: readers after the crash at {p}");
        }
        let out = compact(&data, &["--quiet-secs", "0"], None);
        assert!(out.status.success(), "{what}: {}", text(&out));
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains("recovery: bsm ") && summary.contains("compacted"),
            "{what}: {summary}"
        );
        eprintln!("{what}:\n{summary}");
        assert_compacted(&data, &rows, &before, &what);
    }
}

fn query_json(data: &Path, sql: &str) -> String {
    let out = bin()
        .args(["query", "--format", "json", "--data"])
        .arg(data)
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn query_results_are_identical_after_compaction_and_the_open_hour_is_untouched() {
    let (ws, n) = build();
    let data = ws.data();
    let rows = row_set(&data);
    let before = layout(&data);
    let queries = [
        "select count(*) as n from bsm",
        "select source_id, count(*) as n, sum(speed_mps) as speed, min(event_ts) as first, \
         max(event_ts) as last from bsm group by source_id order by source_id",
        "select date, hour, count(distinct vehicle_id) as n from bsm group by 1, 2 order by 1, 2",
        "select vehicle_id, speed_mps from bsm where source_id = 'car-1' order by event_ts limit 5",
    ];
    let answers: Vec<String> = queries.iter().map(|q| query_json(&data, q)).collect();
    assert!(answers[0].contains(&format!("\"n\":{n}")), "{}", answers[0]);

    // Files just written: left alone by the default --quiet-secs.
    let out = compact(&data, &[], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to compact"),
        "{}",
        text(&out)
    );
    assert_eq!(layout(&data), before);

    // The plan changes nothing.
    let out = compact(&data, &["--quiet-secs", "0", "--dry-run", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["partitions"].as_array().unwrap().len(), 2, "{plan}");
    assert_eq!(plan["skipped"][0]["reason"], "open", "{plan}");
    assert_eq!(layout(&data), before);

    let out = compact(
        &data,
        &["--kind", "bsm", "--quiet-secs", "0", "--json"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = report["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{report}");
    let merged_rows: u64 = parts.iter().map(|p| p["rows"].as_u64().unwrap()).sum();
    assert_eq!(merged_rows as usize, n - NOW_ROWS);
    for p in parts {
        assert_eq!(p["files_after"], 1, "{p}");
        assert!(p["files_before"].as_u64().unwrap() >= 2, "{p}");
    }
    assert_compacted(&data, &rows, &before, "compact");
    for (q, want) in queries.iter().zip(&answers) {
        assert_eq!(&query_json(&data, q), want, "{q}");
    }

    // A second run has nothing left to do; a wrong kind is a usage error.
    let out = compact(&data, &["--quiet-secs", "0"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to compact"));
    for bad in [
        &["--kind", "../bsm"][..],
        &["--kind", "nope"],
        &["--target-bytes", "12X"],
    ] {
        let out = compact(&data, bad, None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
    }
    let out = compact(&ws.path().join("nowhere"), &[], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// Late rows keep arriving in a closed hour while `compact` runs again and again: every row
/// still ends up in the dataset exactly once.
#[test]
fn compaction_beside_a_collector_writing_late_rows_into_the_same_hour() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&writer_config(&broker), &[]);
    let old_ms = (chrono::Utc::now().timestamp_millis() / HOUR_MS - 3) * HOUR_MS + 60_000;
    let batches = 8;
    let per = 200;
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        for b in 0..batches {
            publish_lines(
                port,
                "v2x/v1/obu/car-1/bsm/up/float",
                &bsms(b * per, per, old_ms + (b * per) as i64 * 100, 100),
            );
        }
    });
    let data = ws.data();
    let (mut runs, mut compacted, mut moved) = (0, 0, 0);
    while !publisher.is_finished() || runs < 3 {
        let out = compact(&data, &["--quiet-secs", "0"], None);
        assert!(out.status.success(), "{}", text(&out));
        runs += 1;
        compacted += usize::from(String::from_utf8_lossy(&out.stdout).contains("compacted"));
        moved += usize::from(String::from_utf8_lossy(&out.stderr).contains("moved files"));
        std::thread::sleep(Duration::from_millis(100));
    }
    publisher.join().unwrap();
    let n = batches * per;
    c.wait_processed(n as u64, Duration::from_secs(60));
    assert!(c.stop().success(), "{}", c.log_text());
    let out = compact(&data, &["--quiet-secs", "0"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert_clean(&data);
    let got = row_set(&data);
    assert_eq!(got.len(), n, "rows lost");
    assert!(got.values().all(|&c| c == 1), "rows duplicated");
    let files = layout(&data);
    assert_eq!(files.len(), 1);
    assert_eq!(files.values().next().unwrap().len(), 1, "{files:?}");
    eprintln!(
        "{runs} compact runs while the collector wrote: {compacted} compacted, {moved} moved late files; \
         {} commit retries in the collector",
        c.log_text().matches("commit failed").count()
    );
}
