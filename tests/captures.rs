//! Every message of every real capture in `../shared/data`, published on its device's topic to
//! `v2x-collector run` with no configuration (embedded broker, `./data`), over MQTT 5 and over
//! MQTT 3.1.1: all 2,049 are filed, none is quarantined, and one value per new kind is exact.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type};
use common::*;

/// Rows each table must hold after the whole set: kinds, and the message index.
const EXPECTED: &[(&str, usize)] = &[
    ("radar_target", 11_165 + 3), // track.json, and the track frame on the FLOW topic
    ("radar_pass", 501),
    ("radar_flow", 104),
    ("radar_queue", 1_000),
    ("radar_event", 500),
    ("rsm_participant", 358 + 1),
    ("rsi_event", 1),
    ("vir", 3),
    ("bsm", 2),
    ("spat_phase", 6 + 8),
    ("map_lane", 28),
    ("psm", 2),
    ("ssm_object", 1),
    ("_messages", 2_049),
];

/// `run` with nothing but the listener and HTTP ports (free ones, so tests can run side by
/// side), in an empty working directory: the data lands in `./data`.
fn zero_config_run(dir: &std::path::Path) -> (Collector, u16) {
    let port = free_port();
    let log = dir.join("collector.log");
    let child = Command::new(env!("CARGO_BIN_EXE_v2x-collector"))
        .current_dir(dir)
        .args(["--log-format", "json", "run"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let c = Collector {
        child: Some(child),
        log,
        data: dir.join("data"),
    };
    c.wait_log("subscriptions acknowledged", Duration::from_secs(30));
    (c, port)
}

fn table(data: &std::path::Path, name: &str) -> RecordBatch {
    read_table(data, name)
        .0
        .unwrap_or_else(|| panic!("no rows in {name}"))
}

fn f64s(b: &RecordBatch, col: &str) -> Vec<Option<f64>> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

fn i32s(b: &RecordBatch, col: &str) -> Vec<Option<i32>> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Int32Type>()
        .iter()
        .collect()
}

fn strs(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    b.column_by_name(col)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

fn f64_list(b: &RecordBatch, col: &str, row: usize) -> Vec<f64> {
    let list = b.column_by_name(col).unwrap().as_list::<i32>();
    let v = list.value(row);
    v.as_primitive::<Float64Type>()
        .iter()
        .map(|x| x.unwrap())
        .collect()
}

fn publish_everything(protocol: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, port) = zero_config_run(dir.path());
    let all = every_capture();
    assert_eq!(all.len(), 2_049);
    // One mosquitto_pub per topic, in capture order within it.
    let mut by_topic: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (topic, payload) in &all {
        by_topic.entry(topic).or_default().push(payload.clone());
    }
    for (topic, payloads) in &by_topic {
        publish_lines_with(port, topic, payloads, &["-V", protocol, "-q", "1"]);
    }
    // The embedded broker acknowledges on receipt: wait for the collector to take them all.
    c.wait_processed(2_049, Duration::from_secs(120));
    assert!(c.stop().success());
    let data = dir.path().join("data");

    let (q, _) = read_table(&data, "_quarantine");
    if let Some(q) = q {
        panic!(
            "{protocol}: {} quarantined: {:?} {:?}",
            q.num_rows(),
            strs(&q, "reason"),
            strs(&q, "topic")
        );
    }
    for (name, rows) in EXPECTED {
        assert_eq!(table(&data, name).num_rows(), *rows, "{protocol}: {name}");
    }

    // A lane node of valid.map.json: lane 2's first node, 22.25 m east and 8.08 m north of
    // the reference point (39.5952649, -105.0914122); by hand on WGS-84 (M = 6361370.78 m,
    // N = 6386827.23 m at that latitude): 39.5953377, -105.0911532.
    let map = table(&data, "map_lane");
    let lane = i32s(&map, "lane_id")
        .iter()
        .position(|l| *l == Some(2))
        .unwrap();
    let lat = f64_list(&map, "node_lat_deg", lane);
    let lon = f64_list(&map, "node_lon_deg", lane);
    assert!((lat[0] - 39.59533767517918).abs() < 5e-8, "{lat:?}");
    assert!((lon[0] - -105.09115316545667).abs() < 5e-8, "{lon:?}");
    assert_eq!(i32s(&map, "intersection_id")[lane], Some(12110));

    // The SDSM object: refPos (42.3010070, -83.6987660) plus 0.1 m east and north.
    let ssm = table(&data, "ssm_object");
    assert!((f64s(&ssm, "lat_deg")[0].unwrap() - 42.3010079003).abs() < 1e-9);
    assert!((f64s(&ssm, "lon_deg")[0].unwrap() - -83.6987647873).abs() < 1e-9);

    // A radar flow count: lane 2 of the first FLOW message counted 2 small vehicles.
    let flow = table(&data, "radar_flow");
    let ts = flow
        .column_by_name("event_ts")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
        .clone();
    let at = (0..flow.num_rows())
        .find(|&i| ts.value(i) == 1_664_422_806_000_000 && i32s(&flow, "lane_no")[i] == Some(2))
        .unwrap();
    assert_eq!(i32s(&flow, "flow_small")[at], Some(2));

    // A PSM position (both PSM captures are the same pedestrian).
    let psm = table(&data, "psm");
    assert_eq!(f64s(&psm, "lat_deg"), vec![Some(40.2397377); 2]);
    assert_eq!(f64s(&psm, "lon_deg"), vec![Some(-74.2761437); 2]);

    // The ODE BSM: speed 0 m/s at 359.4 degrees (the processed one carries no speed).
    let bsm = table(&data, "bsm");
    let ode = strs(&bsm, "profile")
        .iter()
        .position(|p| p.as_deref() == Some("ode"))
        .unwrap();
    assert_eq!(f64s(&bsm, "speed_mps")[ode], Some(0.0));
    assert_eq!(f64s(&bsm, "heading_deg")[ode], Some(359.4));

    // The index has a row for every message, the empty-handed ones included, and `ls
    // --sources` sums it up per source and kind.
    let index = table(&data, "_messages");
    assert!(index.column_by_name("delay_ms").unwrap().null_count() < index.num_rows());
    let out = run_ok(
        bin()
            .args(["ls", "--sources", "--json", "--data"])
            .arg(&data),
        "ls --sources",
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let radar = lines
        .iter()
        .find(|l| l["source_id"] == "N22W75HMBLD" && l["kind"] == "radar_target")
        .unwrap();
    assert_eq!(radar["messages"], 500);
    assert_eq!(radar["rows"], 11_165);
    let total: u64 = lines.iter().map(|l| l["messages"].as_u64().unwrap()).sum();
    assert_eq!(total, 2_049);

    // Lists survive an export: CSV holds each as a JSON array in one cell (a bare file name
    // as --out writes beside the working directory).
    let out = run_ok(
        bin()
            .current_dir(dir.path())
            .args(["export", "--kind", "map_lane", "--out", "lanes.csv"]),
        "export map_lane to CSV",
    );
    assert!(out.status.success());
    let mut reader = csv::Reader::from_path(dir.path().join("lanes.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = headers.iter().position(|h| h == "node_lat_deg").unwrap();
    let lane_col = headers.iter().position(|h| h == "lane_id").unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 28);
    let lane2 = rows.iter().find(|r| &r[lane_col] == "2").unwrap();
    let nodes: Vec<f64> = serde_json::from_str(&lane2[col]).unwrap();
    // serde_json's default float parsing may be one unit in the last place off.
    assert_eq!(nodes.len(), lat.len());
    assert!(
        nodes.iter().zip(&lat).all(|(a, b)| (a - b).abs() < 1e-12),
        "{nodes:?}"
    );
    assert!(dir.path().join("lanes.csv.schema.json").exists());
    assert_dataset_is_clean(&data);
}

#[test]
fn every_capture_is_filed_over_mqtt5() {
    publish_everything("mqttv5");
}

#[test]
fn every_capture_is_filed_over_mqtt311() {
    publish_everything("mqttv311");
}
