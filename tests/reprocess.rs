//! `reprocess` end to end: the collector binary against a real mosquitto quarantines the real
//! radar capture while the `radar_target` schema is missing; `reprocess` with the schema back
//! files it, and the rows equal those of a direct ingest, exactly once, also after crashes at
//! each step of its commit.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::*;
use v2x_collector::config::Config;

/// Topics that match no route: quarantined as `unknown_topic`, before and after.
const NOWHERE: &str = "V2X/NOWHERE/X1/UP";

/// A copy of the repository's `schemas/` without `<kind>.toml`.
fn schemas_without(kind: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut copied = 0;
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") && p.file_stem().unwrap() != kind {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            copied += 1;
        }
    }
    assert!(copied >= 5, "schemas/ has the built-in kinds");
    assert!(!dir.path().join(format!("{kind}.toml")).exists());
    dir
}

/// Runs the collector in `ws` against its own mosquitto, publishes with `publish` (which
/// returns how many messages it sent), waits until all are through decode, stops with SIGTERM.
fn ingest(ws: &Workspace, extra: &str, args: &[&str], publish: impl FnOnce(u16) -> u64) {
    let broker = Mosquitto::start();
    let mut c = ws.start(
        &format!("[mqtt]\nbroker = \"{}\"\n{extra}", broker.url()),
        args,
    );
    let n = publish(broker.port);
    c.wait_processed(n, Duration::from_secs(120));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
}

fn garbage() -> Vec<String> {
    (0..3).map(|i| format!(r#"{{"nobody":{i}}}"#)).collect()
}

/// The quarantined dataset: radar frames without their schema, BSMs that file normally, and
/// three messages on a topic no route knows.
fn quarantined(frames: &[String]) -> (Workspace, tempfile::TempDir) {
    let ws = Workspace::new();
    let schemas = schemas_without("radar_target");
    let dir = schemas.path().to_str().unwrap().to_string();
    ingest(&ws, "", &["--schema-dir", &dir], |port| {
        publish_lines(port, RADAR_TOPIC, frames);
        publish_lines(port, TOPIC, &messages(0..50));
        publish_lines(port, NOWHERE, &garbage());
        (frames.len() + 50 + 3) as u64
    });
    (ws, schemas)
}

fn reprocess_cmd(data: &Path, args: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.arg("reprocess")
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("V2X_CONFIG")
        .env_remove("V2X_SCHEMA_DIR")
        .env_remove("V2X_FAILPOINT")
        .env("RUST_LOG", "warn");
    c
}

fn run_reprocess(data: &Path, args: &[&str]) -> Output {
    reprocess_cmd(data, args).output().unwrap()
}

/// `reprocess --json ARGS`, which must succeed; its report.
fn reprocess_json(data: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_reprocess(data, &[&["--json"], args].concat());
    assert!(
        out.status.success(),
        "reprocess {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "reprocess --json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Each row of `b` as one string of every column (but `skip`), `name=value`.
fn row_strings(b: &RecordBatch, skip: &[&str]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let cols: Vec<(String, ArrayFormatter)> = b
        .schema()
        .fields()
        .iter()
        .zip(b.columns())
        .filter(|(f, _)| !skip.contains(&f.name().as_str()))
        .map(|(f, c)| {
            (
                f.name().clone(),
                ArrayFormatter::try_new(c.as_ref(), &opts).unwrap(),
            )
        })
        .collect();
    (0..b.num_rows())
        .map(|i| {
            cols.iter()
                .map(|(n, f)| format!("{n}={}", f.value(i)))
                .collect::<Vec<_>>()
                .join("\u{1f}")
        })
        .collect()
}

/// Every row of `table` (only those with `topic`, when given), sorted.
fn table_rows(data: &Path, table: &str, topic: Option<&str>, skip: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in parquet_files(&data.join(table)) {
        let b = read_parquet(&f);
        let topics = b
            .column_by_name("topic")
            .unwrap()
            .as_string::<i32>()
            .clone();
        for (i, row) in row_strings(&b, skip).into_iter().enumerate() {
            if topic.is_none_or(|t| topics.value(i) == t) {
                out.push(row);
            }
        }
    }
    out.sort();
    out
}

/// What a direct ingest of the quarantined messages gives: the library's decoder with the
/// built-in schemas and routes, fed each quarantine row of `topic` with its own receive time.
/// (radar_target rows, `_messages` rows), sorted.
fn reference(data: &Path, topic: &str) -> (Vec<String>, Vec<String>) {
    let (q, _) = read_table(data, "_quarantine");
    let q = q.expect("quarantine rows");
    let topics = q.column_by_name("topic").unwrap().as_string::<i32>();
    let payloads = q.column_by_name("payload").unwrap().as_binary::<i32>();
    let recv = q
        .column_by_name("recv_ts")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let mut decoder = v2x_collector::pipeline::build_decoder(&Config::default()).unwrap();
    for i in 0..q.num_rows() {
        if topics.value(i) == topic {
            decoder.decode(topics.value(i), payloads.value(i), recv.value(i));
        }
    }
    let (mut radar, mut index) = (Vec::new(), Vec::new());
    for b in decoder.take_batches() {
        match &*b.table {
            "radar_target" => radar.extend(row_strings(&b.batch, &[])),
            "_messages" => index.extend(row_strings(&b.batch, &[])),
            other => panic!("unexpected table {other}"),
        }
    }
    radar.sort();
    index.sort();
    (radar, index)
}

/// Quarantine rows with `topic`, by reason.
fn quarantine_reasons(data: &Path, topic: &str) -> Vec<String> {
    let (q, _) = read_table(data, "_quarantine");
    let q = q.expect("quarantine rows");
    let topics = q.column_by_name("topic").unwrap().as_string::<i32>();
    let reasons = q.column_by_name("reason").unwrap().as_string::<i32>();
    (0..q.num_rows())
        .filter(|i| topics.value(*i) == topic)
        .map(|i| reasons.value(i).to_string())
        .collect()
}

/// Every file below `data` with its size: what "changes nothing" compares.
fn snapshot(data: &Path) -> Vec<(PathBuf, u64)> {
    all_files(data)
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

/// After a run: `_reprocess` holds only ledger entries, no staged or temporary file is left
/// anywhere, every file `reprocess` published is named `reprocess-<run>-<6 digits>.parquet`,
/// reads, and is sorted like the collector's files.
fn assert_clean(data: &Path) {
    for f in all_files(data) {
        let rel = f.strip_prefix(data).unwrap().display().to_string();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.ends_with(".tmp") && !name.ends_with(".part"),
            "left over: {rel}"
        );
        if rel.starts_with("_reprocess/") {
            assert!(
                rel.starts_with("_reprocess/ledger/") && name.ends_with(".json"),
                "left in _reprocess: {rel}"
            );
            continue;
        }
        if let Some(rest) = name.strip_prefix("reprocess-") {
            let (run, seq) = rest
                .strip_suffix(".parquet")
                .unwrap()
                .rsplit_once('-')
                .unwrap();
            assert!(!run.is_empty(), "{rel}");
            assert!(
                seq.len() == 6 && seq.bytes().all(|b| b.is_ascii_digit()),
                "{rel}"
            );
            let b = read_parquet(&f);
            let sort = if rel.starts_with("_messages/") {
                "recv_ts"
            } else {
                "event_ts"
            };
            let src = b.column_by_name("source_id").unwrap().as_string::<i32>();
            let ts = b
                .column_by_name(sort)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            let sorted = (1..b.num_rows())
                .all(|i| (src.value(i - 1), ts.value(i - 1)) <= (src.value(i), ts.value(i)));
            assert!(sorted, "{rel} is not sorted by (source_id, {sort})");
        }
    }
    let entries = std::fs::read_dir(data.join("_reprocess")).unwrap();
    for e in entries {
        assert_eq!(e.unwrap().file_name(), "ledger", "only the ledger stays");
    }
}

fn partitions(data: &Path, table: &str) -> BTreeSet<String> {
    read_table(data, table).1.into_iter().collect()
}

/// The Parquet key-value metadata of a file.
fn kv(path: &Path) -> Vec<(String, String)> {
    use parquet::file::reader::FileReader;
    let r = parquet::file::serialized_reader::SerializedFileReader::new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap();
    let mut out: Vec<(String, String)> = r
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|k| k.key.starts_with("v2x."))
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for f in all_files(from) {
        let dst = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dst).unwrap();
    }
}

/// The acceptance test: ingest with the radar schema removed, restore it, reprocess; the rows
/// then equal a direct ingest. Then a second run files nothing and a dry run changes nothing.
#[test]
fn reprocessed_rows_equal_a_direct_ingest() {
    let frames = radar_frames();
    assert_eq!(frames.len(), 500);
    let (ws, _schemas) = quarantined(&frames);
    let data = ws.data();
    assert!(
        parquet_files(&data.join("radar_target")).is_empty(),
        "no radar rows without the schema"
    );
    assert_eq!(
        quarantine_reasons(&data, RADAR_TOPIC),
        vec!["unknown_kind"; 500]
    );
    assert_eq!(quarantine_reasons(&data, NOWHERE), vec!["unknown_topic"; 3]);
    let bsm_before = table_rows(&data, "bsm", None, &[]);
    assert_eq!(bsm_before.len(), 50);
    let quarantine_before = snapshot(&data.join("_quarantine"));

    // A direct ingest of the same capture, with every schema, for comparison.
    let direct = Workspace::new();
    ingest(&direct, "", &[], |port| {
        publish_lines(port, RADAR_TOPIC, &frames);
        frames.len() as u64
    });

    // A dry run says what would happen and changes nothing.
    let before = snapshot(&data);
    let dry = reprocess_json(&data, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["candidates"], 503);
    assert_eq!(dry["filed"]["messages"], 500);
    assert_eq!(dry["filed"]["rows"], 11_165);
    assert_eq!(dry["filed"]["kinds"]["radar_target"]["messages"], 500);
    assert_eq!(dry["still_failing"]["unknown_topic"], 3);
    assert_eq!(dry["sets"].as_array().unwrap().len(), 0);
    assert_eq!(snapshot(&data), before, "--dry-run changed the dataset");
    assert!(!data.join("_reprocess").exists());

    // The real run, with the built-in schemas.
    let out = run_reprocess(&data, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("503 candidates"), "{summary}");
    assert!(
        summary.contains("filed: 500 messages, 11165 rows"),
        "{summary}"
    );
    assert!(summary.contains("unknown_topic"), "{summary}");
    assert!(summary.contains("already reprocessed: 0"), "{summary}");
    assert_clean(&data);

    // Every column of every row equals what a direct ingest gives with the same receive times.
    let (want_radar, want_index) = reference(&data, RADAR_TOPIC);
    assert_eq!(want_radar.len(), 11_165);
    let got_radar = table_rows(&data, "radar_target", None, &[]);
    assert!(
        got_radar == want_radar,
        "radar_target rows differ from a direct decode"
    );
    let got_index = table_rows(&data, "_messages", Some(RADAR_TOPIC), &[]);
    assert_eq!(got_index.len(), 500);
    assert!(
        got_index == want_index,
        "_messages rows differ from a direct decode"
    );
    // And the collector's own ingest of the capture, but for when it was received.
    assert!(
        table_rows(&data, "radar_target", None, &["recv_ts"])
            == table_rows(&direct.data(), "radar_target", None, &["recv_ts"]),
        "radar_target rows differ from the collector's direct ingest"
    );
    assert!(
        table_rows(
            &data,
            "_messages",
            Some(RADAR_TOPIC),
            &["recv_ts", "delay_ms"]
        ) == table_rows(&direct.data(), "_messages", None, &["recv_ts", "delay_ms"]),
        "_messages rows differ from the collector's direct ingest"
    );
    // The same partitions, the same schema and metadata in the files, `_schema.json` beside.
    assert_eq!(
        partitions(&data, "radar_target"),
        partitions(&direct.data(), "radar_target")
    );
    assert_eq!(
        partitions(&data, "radar_target"),
        BTreeSet::from(["date=2022-09-29/hour=03".to_string()])
    );
    let ours = parquet_files(&data.join("radar_target"));
    let theirs = parquet_files(&direct.data().join("radar_target"));
    assert_eq!(
        read_parquet(&ours[0]).schema(),
        read_parquet(&theirs[0]).schema()
    );
    assert_eq!(kv(&ours[0]), kv(&theirs[0]));
    assert_eq!(
        std::fs::read_to_string(data.join("radar_target/_schema.json")).unwrap(),
        std::fs::read_to_string(direct.data().join("radar_target/_schema.json")).unwrap()
    );
    // What filed normally and the quarantine itself are untouched.
    assert_eq!(table_rows(&data, "bsm", None, &[]), bsm_before);
    assert_eq!(snapshot(&data.join("_quarantine")), quarantine_before);

    // A second run files nothing again.
    let files = snapshot(&data);
    let again = reprocess_json(&data, &[]);
    assert_eq!(again["candidates"], 503);
    assert_eq!(again["filed"]["messages"], 0);
    assert_eq!(again["already_reprocessed"], 500);
    assert_eq!(again["still_failing"]["unknown_topic"], 3);
    let after: Vec<_> = snapshot(&data)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(data.join("_reprocess")))
        .collect();
    let files: Vec<_> = files
        .into_iter()
        .filter(|(p, _)| !p.starts_with(data.join("_reprocess")))
        .collect();
    assert_eq!(after, files, "a second run changed the dataset");
    // And a dry run now has nothing to file either.
    let dry = reprocess_json(&data, &["--dry-run"]);
    assert_eq!(dry["filed"]["messages"], 0);
    assert_eq!(dry["already_reprocessed"], 500);
}

/// `--reason`, `--topic`, `--kind`, `--from` and `--to` choose the rows; what is left out is
/// reprocessed by a later run.
#[test]
fn filters_choose_the_quarantine_rows() {
    let frames = &radar_frames()[..50];
    let (ws, _schemas) = quarantined(frames);
    let data = ws.data();
    let counts = |args: &[&str]| {
        let r = reprocess_json(&data, &[&["--dry-run"], args].concat());
        (
            r["candidates"].as_u64().unwrap(),
            r["filed"]["messages"].as_u64().unwrap(),
        )
    };
    assert_eq!(counts(&[]), (53, 50));
    assert_eq!(counts(&["--reason", "unknown_topic"]), (3, 0));
    assert_eq!(counts(&["--reason", "unknown_kind"]), (50, 50));
    assert_eq!(
        counts(&["--reason", "unknown_kind", "--reason", "unknown_topic"]),
        (53, 50)
    );
    assert_eq!(counts(&["--reason", "invalid_json"]), (0, 0));
    assert_eq!(counts(&["--topic", "V2X/RADAR/+/TRACK/UP"]), (50, 50));
    assert_eq!(counts(&["--topic", "V2X/NOWHERE/#"]), (3, 0));
    assert_eq!(counts(&["--topic", "v2x/#"]), (0, 0));
    // The radar rows have no kind column (no schema named it); their topic routes to it now.
    assert_eq!(counts(&["--kind", "radar_target"]), (50, 50));
    assert_eq!(counts(&["--kind", "bsm"]), (0, 0));
    // Receive times: all rows came in the last few minutes.
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339();
    let now = chrono::Utc::now();
    let later = fmt(now + chrono::Duration::hours(2));
    let earlier = fmt(now - chrono::Duration::hours(2));
    assert_eq!(counts(&["--from", &later]), (0, 0));
    assert_eq!(counts(&["--to", &earlier]), (0, 0));
    assert_eq!(counts(&["--from", &earlier, "--to", &later]), (53, 50));
    let day = now.format("%Y-%m-%d").to_string();
    assert_eq!(
        counts(&["--to", &day]),
        (0, 0),
        "a date is its midnight UTC"
    );

    // File only the radar frames, then the rest: nothing twice.
    let r = reprocess_json(&data, &["--topic", "V2X/RADAR/#", "--from", &earlier]);
    assert_eq!(r["filed"]["messages"], 50);
    assert_eq!(r["still_failing"].as_object().unwrap().len(), 0);
    let r = reprocess_json(&data, &[]);
    assert_eq!(r["filed"]["messages"], 0);
    assert_eq!(r["already_reprocessed"], 50);
    assert_eq!(r["still_failing"]["unknown_topic"], 3);
    assert_clean(&data);
    let (want, _) = reference(&data, RADAR_TOPIC);
    assert!(table_rows(&data, "radar_target", None, &[]) == want);
}

/// Payloads cut when they were quarantined are counted and never filed; whole ones of the same
/// `too_large` reason file once the limit is raised.
#[test]
fn truncated_payloads_are_reported_never_filed() {
    let frames = radar_frames();
    let (cut, whole) = (&frames[..20], &frames[20..40]);
    let big = |f: &[String]| f.iter().filter(|p| p.len() > 5000).count();
    assert!(big(cut) > 0 && big(whole) > 0 && big(cut) < 20);
    let ws = Workspace::new();
    ingest(
        &ws,
        "[decode]\nmax_payload_bytes = 5000\nquarantine_payload_keep_bytes = 1000\n",
        &[],
        |port| {
            publish_lines(port, RADAR_TOPIC, cut);
            20
        },
    );
    ingest(&ws, "[decode]\nmax_payload_bytes = 5000\n", &[], |port| {
        publish_lines(port, RADAR_TOPIC, whole);
        20
    });
    let data = ws.data();
    let reasons = quarantine_reasons(&data, RADAR_TOPIC);
    assert_eq!(reasons.len(), big(cut) + big(whole));
    assert!(reasons.iter().all(|r| r == "too_large"));
    let filed_before = table_rows(&data, "radar_target", None, &[]).len();

    // With the collector's limit, the whole ones still fail: the decoder is built from the
    // config exactly as `run` builds it.
    let config = ws.path().join("limit.toml");
    std::fs::write(&config, "[decode]\nmax_payload_bytes = 5000\n").unwrap();
    let r = reprocess_json(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(r["truncated"], big(cut));
    assert_eq!(r["filed"]["messages"], 0);
    assert_eq!(r["still_failing"]["too_large"], big(whole));

    // The default limit (1 MiB): the whole ones file, the cut ones never.
    let r = reprocess_json(&data, &["--reason", "too_large"]);
    assert_eq!(r["candidates"], big(cut) + big(whole));
    assert_eq!(r["truncated"], big(cut));
    assert_eq!(r["filed"]["messages"], big(whole));
    let stdout = String::from_utf8_lossy(&run_reprocess(&data, &[]).stdout).to_string();
    assert!(
        stdout.contains(&format!("truncated (cannot be reprocessed): {}", big(cut))),
        "{stdout}"
    );
    assert_clean(&data);
    // Exactly the frames that were whole are now filed (the capture repeats some frames: those
    // in both halves are left out of the check).
    let mut uids = BTreeSet::new();
    for f in parquet_files(&data.join("radar_target")) {
        let b = read_parquet(&f);
        let u = b.column_by_name("msg_uid").unwrap().as_string::<i32>();
        uids.extend((0..b.num_rows()).map(|i| u.value(i).to_string()));
    }
    let uid = |p: &String| v2x_collector::decode::msg_uid(RADAR_TOPIC, p.as_bytes());
    for p in cut.iter().filter(|p| p.len() > 5000 && !whole.contains(p)) {
        assert!(!uids.contains(&uid(p)), "a truncated frame was filed");
    }
    for p in whole.iter().filter(|p| p.len() > 5000) {
        assert!(uids.contains(&uid(p)), "a whole frame was not filed");
    }
    let targets = |p: &String| {
        serde_json::from_str::<serde_json::Value>(p).unwrap()["targets"]
            .as_array()
            .unwrap()
            .len()
    };
    let reprocessed: usize = whole.iter().filter(|p| p.len() > 5000).map(targets).sum();
    assert_eq!(
        table_rows(&data, "radar_target", None, &[]).len(),
        filed_before + reprocessed
    );
}

/// Exit 2 for what the user can fix: a reason, a time, a topic filter, a kind, the data
/// directory. An empty dataset is fine.
#[test]
fn bad_usage_exits_2() {
    let ws = Workspace::new();
    let data = ws.data();
    std::fs::create_dir_all(&data).unwrap();
    for args in [
        vec!["--reason", "no_such_reason"],
        vec!["--from", "yesterday"],
        vec!["--to", "2026-13-01"],
        vec!["--from", "2026-01-02", "--to", "2026-01-01"],
        vec!["--topic", "a/#/b"],
        vec!["--kind", "no_such_kind"],
        vec!["--commit-messages", "0"],
    ] {
        let out = run_reprocess(&data, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
    let out = run_reprocess(&ws.path().join("missing"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = run_reprocess(&data, &["--schema-dir", "/nonexistent/schemas"]);
    assert_eq!(out.status.code(), Some(2));
    let r = reprocess_json(&data, &[]);
    assert_eq!(r["candidates"], 0);
    assert_eq!(r["filed"]["messages"], 0);
}

/// A crash (an abort, as abrupt as `kill -9`) at each step of a commit set, with three sets of
/// at most 200 messages: the next run finishes or undoes the interrupted set and files the
/// rest, and the dataset then holds exactly the rows of a direct ingest, no duplicate, nothing
/// left over; one more run files nothing.
#[cfg(feature = "failpoints")]
#[test]
fn a_crash_at_any_step_is_made_good_by_the_next_run() {
    let frames = radar_frames();
    let (base, _schemas) = quarantined(&frames);
    let (want_radar, want_index) = reference(&base.data(), RADAR_TOPIC);
    for point in [
        "mid_parquet",
        "reprocess_before_manifest",
        "reprocess_after_manifest",
        "reprocess_after_rename",
        // The third rename: the first of the second set, after a whole first set.
        "reprocess_after_rename#3",
        "reprocess_before_ledger",
        "reprocess_before_ledger#2",
        "reprocess_after_ledger",
    ] {
        let ws = Workspace::new();
        let data = ws.data();
        copy_tree(&base.data(), &data);
        let out = reprocess_cmd(&data, &["--commit-messages", "200"])
            .env("V2X_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("failpoint"),
            "{point}: reprocess did not stop at the fail point: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = reprocess_json(&data, &["--commit-messages", "200"]);
        let recovered = r["recovered"].as_array().unwrap();
        assert_eq!(recovered.len(), 1, "{point}: {r}");
        let filed = r["filed"]["messages"].as_u64().unwrap();
        let already = r["already_reprocessed"].as_u64().unwrap();
        assert_eq!(filed + already, 500, "{point}: {r}");
        assert_clean(&data);
        let radar = table_rows(&data, "radar_target", None, &[]);
        assert_eq!(
            radar.len(),
            want_radar.len(),
            "{point}: rows lost or duplicated"
        );
        assert!(radar == want_radar, "{point}: radar_target rows differ");
        assert!(
            table_rows(&data, "_messages", Some(RADAR_TOPIC), &[]) == want_index,
            "{point}: _messages rows differ"
        );
        let again = reprocess_json(&data, &[]);
        assert_eq!(again["filed"]["messages"], 0, "{point}");
        assert_eq!(again["already_reprocessed"], 500, "{point}");
        assert_eq!(again["recovered"].as_array().unwrap().len(), 0, "{point}");
    }
}

#[test]
fn run_finishes_a_reprocess_interrupted_after_its_manifest() {
    let frames = radar_frames();
    let (base, _schemas) = quarantined(&frames);
    let (want_radar, _) = reference(&base.data(), RADAR_TOPIC);
    let ws = Workspace::new();
    let data = ws.data();
    copy_tree(&base.data(), &data);
    let out = reprocess_cmd(&data, &["--commit-messages", "200"])
        .env("V2X_FAILPOINT", "reprocess_after_manifest")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fail point stopped it");
    // A collector started on the dataset completes the set before it takes messages.
    let broker = Mosquitto::start();
    let mut c = ws.start(&config(&broker), &[]);
    c.wait_log(
        "completed an interrupted reprocess",
        Duration::from_secs(30),
    );
    assert!(c.stop().success());
    // The first set (200 frames) is in the ledger and nothing else is left in _reprocess.
    let left: Vec<String> = std::fs::read_dir(data.join("_reprocess"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["ledger".to_string()]);
    assert_eq!(
        std::fs::read_dir(data.join("_reprocess/ledger"))
            .unwrap()
            .count(),
        1
    );
    // The next reprocess has nothing to recover and files the rest exactly once.
    let r = reprocess_json(&data, &[]);
    assert_eq!(r["recovered"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["already_reprocessed"], 200, "{r}");
    assert!(table_rows(&data, "radar_target", None, &[]) == want_radar);
}
