//! End to end: real mosquitto (or the embedded broker), the collector binary, real captures
//! from `../shared/data`, Parquet read back with exact values.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use common::*;

fn col_f64(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}
fn col_i64(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<Int64Type>()
        .iter()
        .collect()
}
fn col_i32(b: &RecordBatch, name: &str) -> Vec<Option<i32>> {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<Int32Type>()
        .iter()
        .collect()
}
fn col_str(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = b.column_by_name(name).unwrap();
    let s = c.as_string::<i32>();
    (0..s.len())
        .map(|i| {
            if s.is_null(i) {
                String::new()
            } else {
                s.value(i).to_string()
            }
        })
        .collect()
}
fn col_ts(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec()
}
fn us(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_micros()
}
fn partition_of(event_us: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(event_us).unwrap();
    format!("date={}/hour={}", t.format("%Y-%m-%d"), t.format("%H"))
}

fn synthetic_payloads() -> Vec<(&'static str, String)> {
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    vec![
        (
            "V2X/OBU/car-1/BSM/UP",
            format!(
                r#"{{"msgCnt":5,"id":"0A0B0C0D","timeStamp":{ms},"secMark":1000,"pos":{{"lat":399000000,"long":1165000000,"elev":500}},"speed":500,"heading":7200,"accelSet":{{"long":-150,"lat":0,"vert":0,"yaw":0}},"size":{{"width":180,"length":460,"height":30}},"transmission":2}}"#
            ),
        ),
        (
            "v2x/v1/obu/car-2/bsm/up/float",
            format!(
                r#"{{"msgCnt":"6","id":"car2","timeStamp":"{ms}","pos":{{"lat":39.9,"lon":116.5}},"speed":12.5,"heading":45.0}}"#
            ),
        ),
        (
            "V2X/RSU/R328328/SPAT/UP",
            format!(
                r#"{{"msgCnt":1,"timeStamp":{ms},"intersections":[{{"intersectionId":{{"region":1,"id":12111}},"status":"0","phases":[{{"id":1,"phaseStates":[{{"light":3,"timing":{{"counting":{{"startTime":0,"likelyEndTime":250}}}}}}]}},{{"id":2,"phaseStates":[{{"light":"protected-green","timing":{{"startTime":0,"likelyEndTime":123}}}}]}}]}}]}}"#
            ),
        ),
        (
            "V2X/VEH/ego-1/STATE/UP",
            format!(
                r#"{{"timestamp":{ms},"pos":{{"lat":39.78,"lon":116.5,"alt":31.2}},"heading":92.5,"speed":11.2,"gear":"D","driving_mode":"auto","gnss":{{"solution":"rtk_fixed","sats":23}}}}"#
            ),
        ),
        (
            "V2X/VEH/ego-1/OBJECTS/UP",
            format!(
                r#"{{"timestamp":{ms},"sensor":"fused","frame_id":"map","objects":[{{"id":7,"type":"vehicle","position":{{"x":451203.1,"y":4412003.7,"z":31.0}},"theta":1.25,"velocity":{{"x":0.1,"y":8.3}},"size":{{"length":4.6,"width":1.9,"height":1.5}},"confidence":0.93}},{{"id":8,"type":3,"position":{{"x":451210.0,"y":4412001.0}},"theta":-3.1}}]}}"#
            ),
        ),
        (
            "V2X/RSU/HB/UP",
            format!(r#"{{"rsuEsn":"R328328","timestamp":{ms},"cpu":12.5,"protocolVersion":"v1"}}"#),
        ),
    ]
}

fn tavern(name: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared(&format!("openv2x-payloads/{name}"))).unwrap(),
    )
    .unwrap();
    (
        v["publish_topic"].as_str().unwrap().to_string(),
        serde_json::to_string(&v["payload"]).unwrap(),
    )
}

/// Publishes the real captures and the synthetic kinds; returns how many messages.
fn publish_everything(port: u16) -> u64 {
    let radar = radar_frames();
    publish_lines(port, "V2X/RADAR/N22W75HMBLD/TRACK/UP", &radar);
    let rsm: Vec<String> =
        std::fs::read_to_string(shared("openv2x-payloads/derived_rsm_std_payloads.ndjson"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
    publish_lines(port, "V2X/RSU/R328328/RSM/UP", &rsm);
    let mut n = (radar.len() + rsm.len()) as u64;
    for f in ["tavern_rsm_payload.json", "tavern_rsi_payload.json"] {
        let (topic, payload) = tavern(f);
        publish_lines(port, &topic, &[payload]);
        n += 1;
    }
    for (topic, payload) in synthetic_payloads() {
        publish_lines(port, topic, &[payload]);
        n += 1;
    }
    n
}

fn check_everything(data: &std::path::Path) {
    assert_dataset_is_clean(data);

    // Radar: 500 frames, 11,165 targets, all in the hour of the capture.
    let (radar, parts) = read_table(data, "radar_target");
    let radar = radar.expect("radar rows");
    assert_eq!(radar.num_rows(), 11_165);
    assert_eq!(
        parts.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"date=2022-09-29/hour=03".to_string()])
    );
    let ts = col_ts(&radar, "event_ts");
    let ids = col_i64(&radar, "target_id");
    let at = (0..radar.num_rows())
        .find(|&i| ts[i] == us("2022-09-29T03:50:15Z") && ids[i] == Some(6972))
        .expect("target 6972 of the first frame");
    // The radar sends km/h: -16.846336 km/h.
    assert_eq!(col_f64(&radar, "speed_mps")[at], Some(-16.846336 / 3.6));
    assert_eq!(col_f64(&radar, "heading_deg")[at], Some(176.29486));
    assert_eq!(col_f64(&radar, "lat_deg")[at], Some(39.074097759970506));
    assert_eq!(col_i64(&radar, "rcs")[at], Some(3234884272));
    assert_eq!(col_str(&radar, "source_id")[at], "N22W75HMBLD");
    assert_eq!(
        col_str(&radar, "topic")[at],
        "V2X/RADAR/N22W75HMBLD/TRACK/UP"
    );

    // RSM: 358 std participants plus the DAWNLINE one.
    let (rsm, rsm_parts) = read_table(data, "rsm_participant");
    let rsm = rsm.expect("rsm rows");
    let profiles = col_str(&rsm, "profile");
    assert_eq!(profiles.iter().filter(|p| *p == "std").count(), 358);
    assert_eq!(profiles.iter().filter(|p| *p == "DAWNLINE").count(), 1);
    let speed = col_f64(&rsm, "speed_mps");
    let heading = col_f64(&rsm, "heading_deg");
    let track = col_str(&rsm, "track_id");
    let sec_mark = col_i32(&rsm, "sec_mark_ms");
    let first = (0..rsm.num_rows())
        .find(|&i| track[i] == "ad5de" && sec_mark[i] == Some(43900))
        .unwrap();
    assert_eq!(speed[first], Some(7.10));
    assert_eq!(heading[first], Some(261.825));
    assert_eq!(col_f64(&rsm, "width_m")[first], Some(1.8));
    assert_eq!(col_str(&rsm, "ptc_type")[first], "motor");
    let dawn = profiles.iter().position(|p| p == "DAWNLINE").unwrap();
    assert_eq!(speed[dawn], Some(7.8783015905704525));
    assert_eq!(col_ts(&rsm, "event_ts")[dawn], 1_653_016_783_500_000);
    // Rows land in the partition of their own event time.
    let ev = col_ts(&rsm, "event_ts");
    let expected: BTreeSet<String> = ev.iter().map(|t| partition_of(*t)).collect();
    assert_eq!(rsm_parts.iter().cloned().collect::<BTreeSet<_>>(), expected);
    // secMark rebuilt near the receive time: within a minute of it.
    let recv = col_ts(&rsm, "recv_ts");
    for i in (0..rsm.num_rows()).filter(|&i| profiles[i] == "std") {
        assert!((ev[i] - recv[i]).abs() <= 30_000_000, "row {i}");
    }

    let (rsi, _) = read_table(data, "rsi_event");
    let rsi = rsi.expect("rsi rows");
    assert_eq!(rsi.num_rows(), 1);
    assert_eq!(col_i32(&rsi, "type_code"), vec![Some(707)]);
    assert_eq!(col_f64(&rsi, "lat_deg"), vec![Some(31.9353853)]);
    assert_eq!(col_str(&rsi, "event_source"), vec!["detection"]);

    let (bsm, _) = read_table(data, "bsm");
    let bsm = bsm.expect("bsm rows");
    assert_eq!(bsm.num_rows(), 2);
    let by_source: BTreeMap<String, usize> = col_str(&bsm, "source_id")
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, i))
        .collect();
    let c1 = by_source["car-1"];
    assert_eq!(col_f64(&bsm, "speed_mps")[c1], Some(10.0));
    assert_eq!(col_f64(&bsm, "heading_deg")[c1], Some(90.0));
    assert_eq!(col_f64(&bsm, "elevation_m")[c1], Some(50.0));
    assert_eq!(col_f64(&bsm, "accel_long_mps2")[c1], Some(-1.5));
    assert_eq!(col_str(&bsm, "transmission")[c1], "forward_gears");
    let c2 = by_source["car-2"];
    assert_eq!(col_f64(&bsm, "speed_mps")[c2], Some(12.5));
    assert_eq!(col_i32(&bsm, "msg_cnt")[c2], Some(6));

    let (spat, _) = read_table(data, "spat_phase");
    let spat = spat.expect("spat rows");
    assert_eq!(spat.num_rows(), 2);
    let mut lights: Vec<(Option<i32>, String, Option<f64>)> = col_i32(&spat, "phase_id")
        .into_iter()
        .zip(col_str(&spat, "light"))
        .zip(col_f64(&spat, "likely_end_time_s"))
        .map(|((p, l), e)| (p, l, e))
        .collect();
    lights.sort_by_key(|x| x.0);
    assert_eq!(
        lights,
        vec![
            (Some(1), "red".into(), Some(25.0)),
            (Some(2), "protected_green".into(), Some(12.3))
        ]
    );

    let (state, _) = read_table(data, "vehicle_state");
    let state = state.expect("state rows");
    assert_eq!(col_str(&state, "gear"), vec!["drive"]);
    assert_eq!(col_str(&state, "driving_mode"), vec!["complete_auto_drive"]);
    assert_eq!(col_f64(&state, "speed_mps"), vec![Some(11.2)]);

    let (objects, _) = read_table(data, "vehicle_object");
    let objects = objects.expect("object rows");
    assert_eq!(objects.num_rows(), 2);
    let mut theta: Vec<f64> = col_f64(&objects, "theta_rad")
        .into_iter()
        .flatten()
        .collect();
    theta.sort_by(f64::total_cmp);
    assert_eq!(theta, vec![-3.1, 1.25]);

    let (status, _) = read_table(data, "device_status");
    let status = status.expect("status rows");
    assert_eq!(col_str(&status, "source_id"), vec!["R328328"]);

    // Nothing was quarantined.
    assert!(
        read_table(data, "_quarantine").0.is_none(),
        "unexpected quarantine rows"
    );
    // Schema and units beside the data.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("rsm_participant/_schema.json")).unwrap(),
    )
    .unwrap();
    assert!(
        schema["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "speed_mps" && c["unit"] == "m/s")
    );
}

#[test]
fn real_captures_through_mosquitto_mqtt5() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&format!("[mqtt]\nbroker = \"{}\"\n", broker.url()), &[]);
    let n = publish_everything(broker.port);
    c.wait_processed(n, Duration::from_secs(120));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
    check_everything(&ws.data());
}

#[test]
fn embedded_broker_gives_the_same_rows() {
    let ws = Workspace::new();
    let port = free_port();
    let mut c = ws.start("", &["--listen", &format!("127.0.0.1:{port}")]);
    let n = publish_everything(port);
    c.wait_processed(n, Duration::from_secs(120));
    // Ctrl-C, as a user at a terminal would stop it.
    let status = c.stop_with("INT");
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
    check_everything(&ws.data());
}

#[test]
fn garbage_unknown_topics_and_hostile_ids_land_in_quarantine() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(
        &format!(
            "[mqtt]\nbroker = \"{}\"\nprotocol = \"3.1.1\"\n[decode]\nmax_payload_bytes = 50000\n",
            broker.url()
        ),
        &[],
    );
    let long_id = "x".repeat(10_000);
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            "V2X/RSU/R1/RSM/UP".into(),
            b"{not json".to_vec(),
            "invalid_json",
        ),
        (
            "V2X/RSU/R1/RSM/UP".into(),
            b"\xff\xfe garbage \x00\x01".to_vec(),
            "invalid_json",
        ),
        (
            "V2X/RADAR/R1/TRACK/UP".into(),
            br#"{"timeStamp":"1664423415000","targets":[{"targetId":"seven"}]}"#.to_vec(),
            "type_mismatch",
        ),
        (
            "V2X/RADAR/R1/TRACK/UP".into(),
            br#"{"timeStamp":"1664423415000","targets":[{"speed":1}]}"#.to_vec(),
            "missing_field",
        ),
        (
            "V2X/RADAR/R1/TRACK/UP".into(),
            br#"{"timeStamp":"4102444800000","targets":[{"targetId":1}]}"#.to_vec(),
            "implausible_time",
        ),
        ("V2X/RSU/R1/NOPE/UP".into(), b"{}".to_vec(), "unknown_topic"),
        (
            "v2x/v1/nothing/here".into(),
            b"{}".to_vec(),
            "unknown_topic",
        ),
        (
            "V2X/RSU/../RSM/UP".into(),
            b"{}".to_vec(),
            "invalid_source_id",
        ),
        (
            "V2X/RSU/..%2F..%2Fetc/RSM/UP".into(),
            b"{}".to_vec(),
            "invalid_source_id",
        ),
        (
            "V2X/RSU/.hidden/RSM/UP".into(),
            b"{}".to_vec(),
            "invalid_source_id",
        ),
        (
            format!("V2X/RSU/{long_id}/RSM/UP"),
            b"{}".to_vec(),
            "invalid_source_id",
        ),
        (
            "V2X/RSU/a b/RSM/UP".into(),
            b"{}".to_vec(),
            "invalid_source_id",
        ),
        (
            "V2X/RSU/ÿ/RSM/UP".into(),
            b"{}".to_vec(),
            "invalid_source_id",
        ),
        (
            "V2X/RSU/../../../etc/RSM/UP".into(),
            b"{}".to_vec(),
            "unknown_topic",
        ),
        (
            "V2X/RSU/HB/UP".into(),
            br#"{"rsuEsn":"../../x"}"#.to_vec(),
            "invalid_source_id",
        ),
        (
            "V2X/RSU/R1/RSM/UP/EVIL".into(),
            b"[]".to_vec(),
            "unknown_profile",
        ),
        ("V2X/RSU/R1/RSM/UP".into(), vec![b'['; 60_000], "too_large"),
    ];
    for (topic, payload, _) in &cases {
        publish_bytes(broker.port, topic, payload);
    }
    // Normal traffic still flows afterwards.
    publish_lines(
        broker.port,
        "V2X/RADAR/N22W75HMBLD/TRACK/UP",
        &radar_frames()[..10],
    );
    c.wait_processed(cases.len() as u64 + 10, Duration::from_secs(60));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());

    let data = ws.data();
    assert_dataset_is_clean(&data);
    let (q, _) = read_table(&data, "_quarantine");
    let q = q.expect("quarantine rows");
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for r in col_str(&q, "reason") {
        *got.entry(r).or_default() += 1;
    }
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, r) in &cases {
        *want.entry(r.to_string()).or_default() += 1;
    }
    assert_eq!(got, want);
    // Raw payload bytes and topic are kept as they came.
    let topics = col_str(&q, "topic");
    let payloads = q.column_by_name("payload").unwrap().as_binary::<i32>();
    assert!(
        topics
            .iter()
            .any(|t| t == &format!("V2X/RSU/{long_id}/RSM/UP")),
        "hostile topic kept as data"
    );
    let garbage = (0..q.num_rows())
        .find(|&i| payloads.value(i) == b"\xff\xfe garbage \x00\x01")
        .expect("garbage kept byte for byte");
    assert_eq!(col_str(&q, "reason")[garbage], "invalid_json");
    let too_large = col_str(&q, "reason")
        .iter()
        .position(|r| r == "too_large")
        .unwrap();
    assert_eq!(col_i64(&q, "payload_bytes")[too_large], Some(60_000));
    // Only the declared tables exist under the data directory, and nothing was written
    // outside it.
    let tables: BTreeSet<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let kinds: BTreeSet<String> = v2x_collector::schema::load_all(None)
        .unwrap()
        .into_iter()
        .map(|s| s.kind)
        .chain(["_quarantine".to_string(), "_messages".to_string()])
        .collect();
    assert_eq!(tables, kinds);
    let outside: Vec<_> = all_files(ws.path())
        .into_iter()
        .filter(|p| !p.starts_with(&data) && !p.starts_with(ws.path().join("wal")))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !(n == "config.toml" || n.starts_with("collector-"))
        })
        .collect();
    assert!(outside.is_empty(), "files outside --data: {outside:?}");
    let (radar, _) = read_table(&data, "radar_target");
    assert_eq!(
        radar.unwrap().num_rows(),
        radar_frames()[..10]
            .iter()
            .map(|f| f.matches("targetId").count())
            .sum::<usize>()
    );
}

#[test]
fn sigterm_during_traffic_leaves_only_complete_files() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(
        &format!(
            "[mqtt]\nbroker = \"{}\"\n[writer]\nmax_rows = 3000\nmax_age_s = 0.5\n",
            broker.url()
        ),
        &[],
    );
    let frames = radar_frames();
    let many: Vec<String> = (0..8).flat_map(|_| frames.iter().cloned()).collect();
    let port = broker.port;
    let publisher =
        std::thread::spawn(move || publish_lines(port, "V2X/RADAR/N22W75HMBLD/TRACK/UP", &many));
    c.wait_processed(300, Duration::from_secs(60));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
    publisher.join().unwrap();
    let data = ws.data();
    assert_dataset_is_clean(&data);
    let files = parquet_files(&data.join("radar_target"));
    assert!(!files.is_empty());
    // Every acknowledged message made it into a committed file.
    let stats = c.stats().unwrap();
    let (radar, _) = read_table(&data, "radar_target");
    assert_eq!(
        radar.unwrap().num_rows() as u64,
        stats["rows_committed"].as_u64().unwrap(),
        "rows_committed counts the kinds' rows, not the message index"
    );
    assert_eq!(stats["rows"], stats["rows_committed"]);
}

#[test]
fn messages_published_while_down_arrive_after_restart() {
    for protocol in ["5", "3.1.1"] {
        let broker = Mosquitto::start();
        let ws = Workspace::new();
        let config = format!(
            "[mqtt]\nbroker = \"{}\"\nprotocol = \"{protocol}\"\n",
            broker.url()
        );
        let mut c = ws.start(&config, &[]);
        assert!(c.stop().success());
        // The broker keeps the persistent session's queue while the collector is away.
        let frames = radar_frames();
        publish_lines(broker.port, "V2X/RADAR/N22W75HMBLD/TRACK/UP", &frames[..50]);
        let mut c = ws.start(&config, &[]);
        c.wait_processed(50, Duration::from_secs(60));
        assert!(c.stop().success());
        let (radar, _) = read_table(&ws.data(), "radar_target");
        let want: usize = frames[..50]
            .iter()
            .map(|f| f.matches("targetId").count())
            .sum();
        assert_eq!(radar.unwrap().num_rows(), want, "protocol {protocol}");
    }
}
