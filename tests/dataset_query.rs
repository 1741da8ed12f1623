//! `v2x-collector query`: SQL over a dataset built through mosquitto and the collector from the
//! real radar capture and BSMs spread over three event-time hours.

mod common;

use std::path::Path;
use std::time::Duration;

use arrow::array::Array;
use common::*;

const HOUR_US: i64 = 3_600_000_000;

/// Runs `v2x-collector <command> --data DATA ARGS...`: (exit code, stdout, stderr).
fn command(command: &str, data: &Path, args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .arg(command)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn query(data: &Path, args: &[&str]) -> (i32, String, String) {
    command("query", data, args)
}

fn json_rows(data: &Path, sql: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = query(data, &["--format", "json", sql]);
    assert_eq!(code, 0, "{sql}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Builds the dataset once: 11,165 radar rows and 3 x 100 BSMs, one hundred in each of the
/// three hours before the current one. Returns (workspace, start of the first hour in us).
fn dataset() -> (Workspace, i64) {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&format!("[mqtt]\nbroker = \"{}\"\n", broker.url()), &[]);
    let now_us = chrono::Utc::now().timestamp_micros();
    let first_hour = (now_us / HOUR_US - 3) * HOUR_US;
    for h in 0..3i64 {
        let lines: Vec<String> = (0..100)
            .map(|i| {
                let ms = (first_hour + h * HOUR_US) / 1000 + 60_000 + i * 1000;
                format!(
                    r#"{{"msgCnt":{i},"id":"car-{h}","timeStamp":{ms},"pos":{{"lat":39.9,"lon":116.5}},"speed":{}.5,"heading":90.0}}"#,
                    i % 30
                )
            })
            .collect();
        publish_lines(
            broker.port,
            &format!("v2x/v1/obu/car-{h}/bsm/up/float"),
            &lines,
        );
    }
    replay_radar(&broker);
    c.wait_processed(300 + 500, Duration::from_secs(60));
    assert!(c.stop().success());
    (ws, first_hour)
}

#[test]
fn sql_over_the_dataset_with_partition_pruning_and_every_format() {
    let (ws, first_hour) = dataset();
    let data = ws.data();

    // Counts per table, against what was published.
    let r = json_rows(&data, "select count(*) as n from radar_target");
    assert_eq!(r[0]["n"], 11_165);
    let r = json_rows(
        &data,
        "select vehicle_id, hour, count(*) as n from bsm group by vehicle_id, hour order by vehicle_id",
    );
    assert_eq!(r.len(), 3, "{r:?}");
    for (h, row) in r.iter().enumerate() {
        assert_eq!(row["vehicle_id"], format!("car-{h}"));
        assert_eq!(row["n"], 100);
        let hour = chrono::DateTime::from_timestamp_micros(first_hour + h as i64 * HOUR_US)
            .unwrap()
            .format("%H")
            .to_string();
        assert_eq!(row["hour"], hour, "the hour partition column");
    }
    // Values survive: speeds of one vehicle, in order.
    let r = json_rows(
        &data,
        "select speed_mps from bsm where vehicle_id = 'car-1' order by event_ts limit 3",
    );
    let speeds: Vec<f64> = r.iter().map(|x| x["speed_mps"].as_f64().unwrap()).collect();
    assert_eq!(speeds, vec![0.5, 1.5, 2.5]);

    // A one-hour window on event_ts: the plan reads only the middle hour's files.
    let from = first_hour + HOUR_US;
    let window = format!(
        "event_ts >= TIMESTAMP '{}' and event_ts < TIMESTAMP '{}'",
        rfc3339(from),
        rfc3339(from + HOUR_US)
    );
    let r = json_rows(
        &data,
        &format!("select count(*) as n from bsm where {window}"),
    );
    assert_eq!(r[0]["n"], 100);
    let (code, plan, err) = query(
        &data,
        &[
            "--format",
            "csv",
            &format!("explain select count(*) from bsm where {window}"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let hour_dir = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .format("date=%Y-%m-%d/hour=%H")
            .to_string()
    };
    assert!(plan.contains(&hour_dir(from)), "{plan}");
    assert!(!plan.contains(&hour_dir(first_hour)), "pruned: {plan}");
    assert!(!plan.contains(&hour_dir(from + HOUR_US)), "pruned: {plan}");

    // Formats: table, CSV, Parquet.
    let (code, table, _) = query(&data, &["select count(*) as n from bsm"]);
    assert_eq!(code, 0);
    assert!(table.contains("| 300 |"), "{table}");
    let (code, csv, _) = query(
        &data,
        &[
            "--format",
            "csv",
            "select vehicle_id, count(*) as n from bsm group by 1 order by 1",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(csv, "vehicle_id,n\ncar-0,100\ncar-1,100\ncar-2,100\n");
    let out = ws.path().join("window.parquet");
    let (code, _, err) = query(
        &data,
        &[
            "--format",
            "parquet",
            "--out",
            out.to_str().unwrap(),
            &format!("select * from bsm where {window} order by source_id, event_ts"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(read_parquet(&out).num_rows(), 100);

    // Errors: bad SQL and unknown tables are usage errors naming the problem.
    let (code, _, err) = query(&data, &["selec nothing"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = query(&data, &["select * from no_such_kind"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no_such_kind"), "{err}");
    assert!(
        err.contains("bsm, messages, quarantine, radar_target")
            || err.contains("bsm, messages, radar_target"),
        "{err}"
    );
    let (code, _, err) = query(&ws.path().join("nowhere"), &["select 1"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = query(&data, &["--format", "parquet", "select 1"]);
    assert_eq!(code, 2, "{err}");
}

fn export(data: &Path, args: &[&str]) -> (i32, String) {
    let (code, _, err) = command("export", data, args);
    (code, err)
}

#[test]
fn export_a_window_sorted_with_its_schema_in_every_format() {
    let (ws, first_hour) = dataset();
    let data = ws.data();
    let from = rfc3339(first_hour + HOUR_US);
    let to = rfc3339(first_hour + 2 * HOUR_US);

    // Parquet: the middle hour only, sorted, schema and filters in the metadata.
    let out = ws.path().join("window.parquet");
    let (code, err) = export(
        &data,
        &[
            "--kind",
            "bsm",
            "--from",
            &from,
            "--to",
            &to,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exported 100 rows"), "{err}");
    let file = std::fs::File::open(&out).unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let kv: std::collections::HashMap<String, String> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(kv["v2x.sorted_by"], "source_id,event_ts");
    assert!(kv["v2x.schema"].contains("speed_mps"), "{kv:?}");
    assert!(kv["v2x.export"].contains("\"bsm\""), "{kv:?}");
    let batch = read_parquet(&out);
    assert_eq!(batch.num_rows(), 100);
    assert!(batch.column_by_name("date").is_none() && batch.column_by_name("hour").is_none());
    let ids = batch.column_by_name("vehicle_id").unwrap();
    let ids = arrow::array::cast::AsArray::as_string::<i32>(ids);
    assert!((0..ids.len()).all(|i| ids.value(i) == "car-1"));
    let ts = batch.column_by_name("event_ts").unwrap();
    let ts =
        arrow::array::cast::AsArray::as_primitive::<arrow::datatypes::TimestampMicrosecondType>(ts);
    assert!(
        (1..ts.len()).all(|i| ts.value(i - 1) <= ts.value(i)),
        "sorted by event_ts"
    );

    // CSV with a source filter, the schema beside it.
    let csv = ws.path().join("two.csv");
    let (code, err) = export(
        &data,
        &[
            "--kind",
            "bsm",
            "--source",
            "car-0",
            "--source",
            "car-2",
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 200, "header and rows");
    let source_col = lines[0].split(',').position(|c| c == "source_id").unwrap();
    let sources: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(source_col).unwrap())
        .collect();
    assert!(sources[..100].iter().all(|s| *s == "car-0"));
    assert!(
        sources[100..].iter().all(|s| *s == "car-2"),
        "sorted by source"
    );
    assert!(ws.path().join("two.csv.schema.json").exists());

    // NDJSON of a whole kind with local `YYYY-MM-DD HH:MM` bounds.
    let nd = ws.path().join("all.ndjson");
    let day = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    let (code, err) = export(
        &data,
        &[
            "--kind",
            "bsm",
            "--from",
            &day(first_hour),
            "--to",
            &day(first_hour + 3 * HOUR_US),
            "--out",
            nd.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&nd).unwrap().lines().count(), 300);

    // Usage errors name the problem; nothing is written.
    let bad = ws.path().join("bad.parquet");
    let bad = bad.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--kind", "bsm", "--from", "yesterday", "--out", bad],
            "--from",
        ),
        (vec!["--kind", "../etc", "--out", bad], "kind"),
        (vec!["--kind", "no_such", "--out", bad], "no_such"),
        (
            vec!["--kind", "bsm", "--source", "a/b", "--out", bad],
            "source",
        ),
        (vec!["--kind", "bsm", "--out", "x.txt"], "format"),
        (
            vec!["--kind", "bsm", "--from", &to, "--to", &from, "--out", bad],
            "before",
        ),
    ] {
        let (code, err) = export(&data, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!Path::new(bad).exists());
}
