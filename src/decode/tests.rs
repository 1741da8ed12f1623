//! Decoder specifications, on real captures from `../shared/data` where there are some.

use super::*;
use crate::route::builtin_routes;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use std::collections::HashMap;

fn shared(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn decoder() -> Decoder {
    let router = Router::new("/", &builtin_routes()).unwrap();
    let schemas = crate::schema::load_all(None).unwrap();
    let settings = DecodeSettings {
        max_payload_bytes: 1024 * 1024,
        quarantine_keep_bytes: 1024,
        window: TimeWindow::from_config(&TimeConfig::default()).unwrap(),
        unit: TimestampUnit::Us,
    };
    Decoder::new(router, schemas, settings).unwrap()
}

fn us(s: &str) -> i64 {
    time::parse_rfc3339_us(s).unwrap()
}

/// All rows of one table, concatenated across hours.
fn table(d: &mut Decoder, name: &str) -> RecordBatch {
    let batches: Vec<RecordBatch> = d
        .take_batches()
        .into_iter()
        .filter(|b| &*b.table == name)
        .map(|b| b.batch)
        .collect();
    assert!(!batches.is_empty(), "no rows in {name}");
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Every table's rows, concatenated across hours.
fn tables(d: &mut Decoder) -> HashMap<String, RecordBatch> {
    let mut by_table: HashMap<String, Vec<RecordBatch>> = HashMap::new();
    for b in d.take_batches() {
        by_table
            .entry(b.table.to_string())
            .or_default()
            .push(b.batch);
    }
    by_table
        .into_iter()
        .map(|(t, bs)| {
            (
                t,
                arrow::compute::concat_batches(&bs[0].schema(), &bs).unwrap(),
            )
        })
        .collect()
}

fn f64s(b: &RecordBatch, col: &str) -> Vec<Option<f64>> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

fn i64s(b: &RecordBatch, col: &str) -> Vec<Option<i64>> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Int64Type>()
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

fn ts(b: &RecordBatch, col: &str) -> Vec<i64> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec()
}

fn reasons(d: &mut Decoder) -> Vec<String> {
    let q = table(d, crate::quarantine::TABLE);
    strs(&q, "reason").into_iter().flatten().collect()
}

#[test]
fn std_rsm_from_the_capture() {
    let mut d = decoder();
    let recv = us("2026-11-28T09:00:44Z");
    let text = shared("openv2x-payloads/derived_rsm_std_payloads.ndjson");
    let first = text.lines().next().unwrap();
    let out = d.decode("V2X/RSU/R328328/RSM/UP", first.as_bytes(), recv);
    assert_eq!(
        out,
        Outcome::Filed { kind: 4, rows: 13 }.with_kind_of(&d, "rsm_participant")
    );
    let b = table(&mut d, "rsm_participant");
    assert_eq!(b.num_rows(), 13);
    // The first participant: speed 355 (0.02 m/s), heading 20946 (0.0125 deg).
    assert_eq!(f64s(&b, "speed_mps")[0], Some(7.10));
    assert_eq!(f64s(&b, "heading_deg")[0], Some(261.825));
    assert_eq!(f64s(&b, "lat_deg")[0], Some(31.9351607));
    assert_eq!(f64s(&b, "lon_deg")[0], Some(118.8229277));
    assert_eq!(
        f64s(&b, "elevation_m")[0],
        None,
        "null elevation stays null"
    );
    assert_eq!(f64s(&b, "width_m")[0], Some(1.80));
    assert_eq!(f64s(&b, "length_m")[0], Some(5.00));
    assert_eq!(f64s(&b, "height_m")[0], Some(1.50));
    assert_eq!(f64s(&b, "ref_lat_deg")[0], Some(31.9348466));
    assert_eq!(strs(&b, "ptc_type")[0].as_deref(), Some("motor"));
    assert_eq!(strs(&b, "detect_source")[0].as_deref(), Some("video"));
    assert_eq!(strs(&b, "track_id")[0].as_deref(), Some("ad5de"));
    assert_eq!(strs(&b, "lane")[0].as_deref(), Some("23"));
    assert_eq!(i64s(&b, "ptc_id")[0], Some(5));
    assert_eq!(strs(&b, "source_id")[0].as_deref(), Some("R328328"));
    // secMark 43900 rebuilt in the minute nearest the receive time.
    assert_eq!(ts(&b, "event_ts")[0], us("2026-11-28T09:00:43.900Z"));
    assert_eq!(ts(&b, "recv_ts")[0], recv);
    let uids = strs(&b, "msg_uid");
    assert!(
        uids.iter().all(|u| u == &uids[0]),
        "one msg_uid per message"
    );
    assert_eq!(uids[0].as_ref().unwrap().len(), 32);
}

impl Outcome {
    fn with_kind_of(self, d: &Decoder, kind: &str) -> Outcome {
        match self {
            Outcome::Filed { rows, .. } => Outcome::Filed {
                kind: d
                    .kinds()
                    .iter()
                    .position(|k| k.schema.kind == kind)
                    .unwrap(),
                rows,
            },
            other => other,
        }
    }
}

#[test]
fn all_std_rsm_payloads_give_358_participants() {
    let mut d = decoder();
    let recv = us("2026-11-28T09:00:44Z");
    let mut rows = 0;
    for line in shared("openv2x-payloads/derived_rsm_std_payloads.ndjson").lines() {
        match d.decode("V2X/RSU/R328328/RSM/UP", line.as_bytes(), recv) {
            Outcome::Filed { rows: n, .. } => rows += n,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rows, 358);
}

#[test]
fn dawnline_rsm_vendor_floats() {
    let mut d = decoder();
    let file: serde_json::Value =
        serde_json::from_str(&shared("openv2x-payloads/tavern_rsm_payload.json")).unwrap();
    let topic = file["publish_topic"].as_str().unwrap();
    let payload = serde_json::to_vec(&file["payload"]).unwrap();
    let out = d.decode(topic, &payload, us("2026-11-28T09:00:00Z"));
    assert!(matches!(out, Outcome::Filed { rows: 1, .. }), "{out:?}");
    let b = table(&mut d, "rsm_participant");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("DAWNLINE"));
    assert_eq!(f64s(&b, "speed_mps")[0], Some(7.8783015905704525));
    assert_eq!(f64s(&b, "heading_deg")[0], Some(264.3102381554889));
    assert_eq!(f64s(&b, "lat_deg")[0], Some(31.935221261941393));
    assert_eq!(f64s(&b, "ref_lon_deg")[0], Some(118.8213963998263));
    assert_eq!(strs(&b, "lane")[0].as_deref(), Some("eastin_4"));
    // timeStamp 1653016783500 wins over secMark.
    assert_eq!(ts(&b, "event_ts")[0], 1_653_016_783_500_000);
}

#[test]
fn radar_frame_with_string_epoch_and_huge_rcs() {
    let mut d = decoder();
    let text = shared("openv2x-radar/track.json");
    let frames: Vec<serde_json::Value> =
        serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap();
    let payload = serde_json::to_vec(&frames[0]).unwrap();
    let out = d.decode(
        "V2X/RADAR/N22W75HMBLD/TRACK/UP",
        &payload,
        us("2026-11-28T09:00:00Z"),
    );
    let n = frames[0]["targets"].as_array().unwrap().len();
    assert!(
        matches!(out, Outcome::Filed { rows, .. } if rows == n),
        "{out:?}"
    );
    let b = table(&mut d, "radar_target");
    assert_eq!(ts(&b, "event_ts")[0], us("2022-09-29T03:50:15Z"));
    assert_eq!(i64s(&b, "target_id")[0], Some(7286));
    assert_eq!(i64s(&b, "rcs")[0], Some(3214468640));
    // The radar sends km/h.
    assert_eq!(f64s(&b, "speed_mps")[1], Some(-16.846336 / 3.6));
    assert_eq!(f64s(&b, "heading_deg")[0], Some(173.09998));
    assert_eq!(i32s(&b, "lane_no")[0], Some(2));
    assert_eq!(i64s(&b, "frame_number")[0], Some(29));
}

#[test]
fn rsi_dawnline_and_std_events_and_signs() {
    let mut d = decoder();
    let file: serde_json::Value =
        serde_json::from_str(&shared("openv2x-payloads/tavern_rsi_payload.json")).unwrap();
    let payload = serde_json::to_vec(&file["payload"]).unwrap();
    let out = d.decode(
        file["publish_topic"].as_str().unwrap(),
        &payload,
        us("2026-11-28T09:00:00Z"),
    );
    assert!(matches!(out, Outcome::Filed { rows: 1, .. }), "{out:?}");
    let std = r#"{"msgCnt":3,"id":"R1","refPos":{"lat":319348466,"long":1188213963},
        "rtes":[{"rteId":1,"eventType":401,"eventSource":"police","eventPos":{"lat":319353853,"lon":1188218217},"eventRadius":500,"description":"施工"},
                {"rteId":2,"eventType":"707","eventSource":5}],
        "rtss":{"rtsId":9,"signType":38,"signPos":{"lat":319353000,"lon":1188218000}}}"#;
    let out = d.decode(
        "V2X/RSU/R1/RSI/UP",
        std.as_bytes(),
        us("2026-11-28T09:00:00Z"),
    );
    assert!(matches!(out, Outcome::Filed { rows: 3, .. }), "{out:?}");
    let b = table(&mut d, "rsi_event");
    assert_eq!(b.num_rows(), 4);
    let mut items: Vec<(String, Option<i32>, Option<String>)> = strs(&b, "item_type")
        .into_iter()
        .zip(i32s(&b, "type_code"))
        .zip(strs(&b, "event_source"))
        .map(|((t, c), s)| (t.unwrap(), c, s))
        .collect();
    items.sort();
    assert_eq!(
        items,
        vec![
            ("event".into(), Some(401), Some("police".into())),
            ("event".into(), Some(707), Some("detection".into())),
            ("event".into(), Some(707), Some("detection".into())),
            ("sign".into(), Some(38), None),
        ]
    );
    let radius: Vec<f64> = f64s(&b, "radius_m").into_iter().flatten().collect();
    assert_eq!(radius, vec![50.0]);
    assert!(strs(&b, "description").contains(&Some("施工".into())));
}

#[test]
fn spat_one_row_per_phase_state_with_moy_time() {
    let mut d = decoder();
    // 2026-11-28 is day 331 of the year (0-based): moy = 331*1440 + 9*60 + 15.
    let moy = 331 * 1440 + 9 * 60 + 15;
    let payload = format!(
        r#"{{"msgCnt":1,"intersections":[{{"intersectionId":{{"region":1,"id":12111}},"status":"0000000000000000","moy":{moy},"timeStamp":30500,
        "phases":[{{"id":1,"phaseStates":[{{"light":3,"timing":{{"counting":{{"startTime":0,"likelyEndTime":123,"nextDuration":36001}}}}}},{{"light":"protected-green","timing":{{"startTime":123,"likelyEndTime":423}}}}]}},
                  {{"id":2,"phaseStates":[{{"light":"7","timing":{{"startTime":0,"likelyEndTime":30}}}}]}}]}}]}}"#
    );
    let out = d.decode(
        "V2X/RSU/R1/SPAT/UP",
        payload.as_bytes(),
        us("2026-11-28T09:15:31Z"),
    );
    assert!(matches!(out, Outcome::Filed { rows: 3, .. }), "{out:?}");
    let b = table(&mut d, "spat_phase");
    assert_eq!(i32s(&b, "intersection_id"), vec![Some(12111); 3]);
    assert_eq!(i32s(&b, "phase_id"), vec![Some(1), Some(1), Some(2)]);
    assert_eq!(
        strs(&b, "light"),
        vec![
            Some("red".into()),
            Some("protected_green".into()),
            Some("yellow".into())
        ]
    );
    assert_eq!(
        f64s(&b, "likely_end_time_s"),
        vec![Some(12.3), Some(42.3), Some(3.0)]
    );
    assert_eq!(f64s(&b, "next_duration_s")[0], None, "36001 is unavailable");
    assert_eq!(ts(&b, "event_ts")[0], us("2026-11-28T09:15:30.500Z"));
}

#[test]
fn bsm_integer_units() {
    let mut d = decoder();
    let payload = br#"{"msgCnt":"12","id":"A1B2C3D4E5F60708","secMark":59900,
        "pos":{"lat":399000000,"long":1165000000,"elev":-4096},"transmission":"forwardGears",
        "speed":500,"heading":7200,"angle":127,"accelSet":{"long":150,"lat":2001,"vert":-127,"yaw":250},
        "size":{"width":180,"length":460,"height":30},"vehicleClass":{"classification":10},"unknownExtra":{"a":[1,2]}}"#;
    // Received just after the minute rolled over: the event belongs to the previous minute.
    let out = d.decode(
        "v2x/v1/obu/car-7/bsm/up",
        payload,
        us("2026-11-28T10:00:00.100Z"),
    );
    assert!(matches!(out, Outcome::Filed { rows: 1, .. }), "{out:?}");
    let b = table(&mut d, "bsm");
    assert_eq!(ts(&b, "event_ts")[0], us("2026-11-28T09:59:59.900Z"));
    assert_eq!(i32s(&b, "msg_cnt")[0], Some(12));
    assert_eq!(f64s(&b, "speed_mps")[0], Some(10.0));
    assert_eq!(f64s(&b, "heading_deg")[0], Some(90.0));
    assert_eq!(f64s(&b, "lat_deg")[0], Some(39.9));
    assert_eq!(f64s(&b, "elevation_m")[0], None);
    assert_eq!(f64s(&b, "steering_angle_deg")[0], None);
    assert_eq!(f64s(&b, "accel_long_mps2")[0], Some(1.5));
    assert_eq!(f64s(&b, "accel_lat_mps2")[0], None);
    assert_eq!(f64s(&b, "accel_vert_mps2")[0], None);
    assert_eq!(f64s(&b, "yaw_rate_dps")[0], Some(2.5));
    assert_eq!(f64s(&b, "height_m")[0], Some(1.5));
    assert_eq!(
        strs(&b, "transmission")[0].as_deref(),
        Some("forward_gears")
    );
    assert_eq!(
        strs(&b, "vehicle_id")[0].as_deref(),
        Some("A1B2C3D4E5F60708")
    );
}

#[test]
fn vehicle_state_and_objects() {
    let mut d = decoder();
    let state =
        br#"{"timestamp":1764322800123,"pos":{"lat":39.78,"lon":116.5,"alt":31.2},"heading":92.5,
        "speed":11.2,"yaw_rate":1.5,"steering":{"angle":-3.0},"gear":"D","driving_mode":1,
        "wheel_speed":{"fl":11.2},"gnss":{"solution":"rtk_fixed","sats":23}}"#;
    let out = d.decode("V2X/VEH/ego-1/STATE/UP", state, us("2025-11-28T09:40:00Z"));
    assert!(matches!(out, Outcome::Filed { rows: 1, .. }), "{out:?}");
    let objects = br#"{"timestamp":"1764322800200","sensor":"lidar","frame_id":"map","objects":[
        {"id":7,"type":"vehicle","sub_type":"car","position":{"x":451203.1,"y":4412003.7,"z":31.0},"theta":1.57,
         "velocity":{"x":0.1,"y":8.3},"size":{"length":4.6,"width":1.9,"height":1.5},"confidence":0.93},
        {"id":8,"type":3,"position":{"x":1,"y":2},"theta":-3.1,"timestamp":1764322800150}]}"#;
    let out = d.decode(
        "V2X/VEH/ego-1/OBJECTS/UP",
        objects,
        us("2025-11-28T09:40:00Z"),
    );
    assert!(matches!(out, Outcome::Filed { rows: 2, .. }), "{out:?}");
    let s = table(&mut d, "vehicle_state");
    assert_eq!(ts(&s, "event_ts")[0], 1_764_322_800_123_000);
    assert_eq!(strs(&s, "gear")[0].as_deref(), Some("drive"));
    assert_eq!(
        strs(&s, "driving_mode")[0].as_deref(),
        Some("complete_auto_drive")
    );
    assert_eq!(i32s(&s, "gnss_sats")[0], Some(23));
    let mut d2 = decoder();
    d2.decode(
        "V2X/VEH/ego-1/OBJECTS/UP",
        objects,
        us("2025-11-28T09:40:00Z"),
    );
    let o = table(&mut d2, "vehicle_object");
    assert_eq!(f64s(&o, "theta_rad"), vec![Some(1.57), Some(-3.1)]);
    assert_eq!(
        strs(&o, "object_type"),
        vec![Some("vehicle".into()), Some("pedestrian".into())]
    );
    assert_eq!(
        ts(&o, "event_ts"),
        vec![1_764_322_800_200_000, 1_764_322_800_150_000]
    );
    assert_eq!(strs(&o, "sensor")[1].as_deref(), Some("lidar"));
}

#[test]
fn heartbeat_takes_its_source_from_the_payload() {
    let mut d = decoder();
    let out = d.decode(
        "V2X/RSU/HB/UP",
        br#"{"rsuEsn":"R328328","protocolVersion":"v1","cpu":"12.5"}"#,
        us("2026-11-28T09:00:00Z"),
    );
    assert!(matches!(out, Outcome::Filed { rows: 1, .. }), "{out:?}");
    let b = table(&mut d, "device_status");
    assert_eq!(strs(&b, "source_id")[0].as_deref(), Some("R328328"));
    assert_eq!(f64s(&b, "cpu_pct")[0], Some(12.5));
    assert_eq!(ts(&b, "event_ts")[0], us("2026-11-28T09:00:00Z"));
}

#[test]
fn real_world_mess_is_tolerated() {
    let mut d = decoder();
    let recv = us("2026-11-28T09:00:44Z");
    let rsm = |body: &str| {
        format!(
            r#"{{"content":{{"rsms":[{{"refPos":{{"lat":1,"lon":2}},"participants":{body}}}]}}}}"#
        )
    };
    // BOM, numbers as strings, a single object where a list belongs, duplicate keys (last wins).
    let mut payload = b"\xEF\xBB\xBF".to_vec();
    payload.extend(
        rsm(r#"{"ptcId":"9","ptcType":"3","secMark":"43900","speed":"100","speed":200,"heading":0,"extra":[1,{"x":2}]}"#)
            .as_bytes(),
    );
    let out = d.decode("V2X/RSU/R1/RSM/UP", &payload, recv);
    assert!(matches!(out, Outcome::Filed { rows: 1, .. }), "{out:?}");
    // A top-level list holding the one object, a huge integer, an empty list, and bytes that are not UTF-8.
    let wrapped = format!(
        "[{}]",
        rsm(
            r#"[{"ptcId":1,"secMark":1,"vehicleClass":{"classification":1},"global_track_id":123456789012345678901234567890}]"#
        )
    );
    assert!(matches!(
        d.decode("V2X/RSU/R1/RSM/UP", wrapped.as_bytes(), recv),
        Outcome::Filed { rows: 1, .. }
    ));
    assert!(matches!(
        d.decode("V2X/RSU/R1/RSM/UP", rsm("[]").as_bytes(), recv),
        Outcome::Filed { rows: 0, .. }
    ));
    let mut gb = rsm(r#"[{"ptcId":2,"secMark":1,"lane":"LANE"}]"#).into_bytes();
    let at = gb.windows(4).position(|w| w == b"LANE").unwrap();
    gb[at] = 0xB6; // a GB2312 lead byte
    assert!(matches!(
        d.decode("V2X/RSU/R1/RSM/UP", &gb, recv),
        Outcome::Filed { rows: 1, .. }
    ));
    let b = table(&mut d, "rsm_participant");
    assert_eq!(b.num_rows(), 3);
    assert_eq!(f64s(&b, "speed_mps")[0], Some(4.0));
    assert_eq!(strs(&b, "ptc_type")[0].as_deref(), Some("pedestrian"));
    assert_eq!(i64s(&b, "ptc_id")[0], Some(9));
}

#[test]
fn malformed_payloads_are_quarantined_with_their_reason() {
    let mut d = decoder();
    let recv = us("2026-11-28T09:00:00Z");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("V2X/RSU/R1/RSM/UP", b"{not json".to_vec(), "invalid_json"),
        (
            "V2X/RSU/R1/RSM/UP",
            br#"{"content":{"rsms":[{"participants":[{"secMark":1}"#.to_vec(),
            "invalid_json",
        ),
        (
            "V2X/RSU/R1/RSM/UP",
            br#"{"content":{"rsms":[{"participants":[{"secMark":1,"speed":"fast"}]}]}}"#.to_vec(),
            "type_mismatch",
        ),
        (
            "V2X/RSU/R1/RSM/UP",
            br#"{"content":{"rsms":[{"participants":7}]}}"#.to_vec(),
            "type_mismatch",
        ),
        (
            "V2X/RSU/R1/RSM/UP",
            br#"{"content":{"rsms":[{"participants":[{"speed":1}]}]}}"#.to_vec(),
            "missing_event_time",
        ),
        (
            "V2X/RADAR/R1/TRACK/UP",
            br#"{"timeStamp":"1664423415000","targets":[{"speed":1}]}"#.to_vec(),
            "missing_field",
        ),
        (
            "V2X/RADAR/R1/TRACK/UP",
            br#"{"timeStamp":"946684800000","targets":[{"targetId":1}]}"#.to_vec(),
            "implausible_time",
        ),
        (
            "V2X/RADAR/R1/TRACK/UP",
            br#"{"timeStamp":"1890000000000","targets":[{"targetId":1}]}"#.to_vec(),
            "implausible_time",
        ),
        ("V2X/RSU/R1/NOPE/UP", b"{}".to_vec(), "unknown_topic"),
        ("V2X/RSU/../RSM/UP", b"{}".to_vec(), "invalid_source_id"),
        ("V2X/RSU/R1/RSM/UP/ACME", b"{}".to_vec(), "unknown_profile"),
        (
            "V2X/RSU/HB/UP",
            br#"{"cpu":1}"#.to_vec(),
            "missing_source_id",
        ),
        (
            "V2X/RSU/HB/UP",
            br#"{"rsuEsn":"../../etc"}"#.to_vec(),
            "invalid_source_id",
        ),
        ("V2X/RSU/R1/RSM/UP", vec![b' '; 1100 * 1024], "too_large"),
        ("V2X/RSU/R1/RSM/UP", b"".to_vec(), "invalid_json"),
        (
            "V2X/RADAR/R1/TRACK/UP",
            br#"{"timeStamp":"1664423415000","number":0}"#.to_vec(),
            "missing_field",
        ),
        (
            "V2X/RSU/R1/RSI/UP",
            br#"{"msgCnt":1}"#.to_vec(),
            "missing_field",
        ),
    ];
    for (topic, payload, want) in &cases {
        let out = d.decode(topic, payload, recv);
        assert!(
            matches!(out, Outcome::Quarantined(r) if r.as_str() == *want),
            "{topic} {:?}: {out:?}, want {want}",
            String::from_utf8_lossy(&payload[..payload.len().min(80)])
        );
    }
    let q = table(&mut d, crate::quarantine::TABLE);
    assert_eq!(q.num_rows(), cases.len());
    let got: Vec<String> = strs(&q, "reason").into_iter().flatten().collect();
    let want: Vec<String> = cases.iter().map(|c| c.2.to_string()).collect();
    assert_eq!(got, want);
    // The oversized payload is kept, truncated to the configured size, with its real length.
    let big = cases.iter().position(|c| c.2 == "too_large").unwrap();
    let sizes = i64s(&q, "payload_bytes");
    assert_eq!(sizes[big], Some(1100 * 1024));
    let kept = q
        .column_by_name("payload")
        .unwrap()
        .as_binary::<i32>()
        .value(big)
        .len();
    assert_eq!(kept, 1024);
}

#[test]
fn a_bad_row_quarantines_the_whole_message() {
    let mut d = decoder();
    let payload = br#"{"timeStamp":"1664423415000","targets":[{"targetId":1},{"targetId":"x"}]}"#;
    let out = d.decode("V2X/RADAR/R1/TRACK/UP", payload, us("2026-11-28T09:00:00Z"));
    assert_eq!(out, Outcome::Quarantined(Reason::TypeMismatch));
    assert_eq!(reasons(&mut d), vec!["type_mismatch".to_string()]);
}

#[test]
fn rows_split_by_event_hour() {
    let mut d = decoder();
    let payload = br#"{"timeStamp":"1664423415000","targets":[{"targetId":1}]}"#;
    let later = br#"{"timeStamp":"1664427015000","targets":[{"targetId":1}]}"#;
    d.decode("V2X/RADAR/R1/TRACK/UP", payload, us("2026-11-28T09:00:00Z"));
    d.decode("V2X/RADAR/R1/TRACK/UP", later, us("2026-11-28T09:00:00Z"));
    let batches = d.take_batches();
    let mut hours: Vec<i64> = batches
        .iter()
        .filter(|b| &*b.table == "radar_target")
        .map(|b| b.hour_us)
        .collect();
    hours.sort();
    assert_eq!(
        hours,
        vec![us("2022-09-29T03:00:00Z"), us("2022-09-29T04:00:00Z")]
    );
    // The message index goes by receive hour.
    let index: Vec<i64> = batches
        .iter()
        .filter(|b| &*b.table == crate::message_index::TABLE)
        .map(|b| b.hour_us)
        .collect();
    assert_eq!(index, vec![us("2026-11-28T09:00:00Z")]);
}

#[test]
fn message_counter_jumps_are_counted_per_source() {
    let mut d = decoder();
    let recv = us("2026-11-28T10:00:00Z");
    let bsm = |cnt: i64| format!(r#"{{"msgCnt":{cnt},"secMark":1000,"pos":{{"lat":1,"long":1}}}}"#);
    // car-1: 125, 126, 127, 0 (wrap), 1, then 5 (3 lost), 5 again (a repeat, not a gap).
    for cnt in [125, 126, 127, 0, 1, 5, 5] {
        d.decode("V2X/OBU/car-1/BSM/UP", bsm(cnt).as_bytes(), recv);
    }
    // car-2 interleaved, in order: no gap.
    for cnt in [7, 8, 9] {
        d.decode("V2X/OBU/car-2/BSM/UP", bsm(cnt).as_bytes(), recv);
    }
    // car-3: 120 then 10: 17 lost across the wrap.
    for cnt in [120, 10] {
        d.decode("V2X/OBU/car-3/BSM/UP", bsm(cnt).as_bytes(), recv);
    }
    let k = d
        .kinds()
        .iter()
        .position(|k| k.schema.kind == "bsm")
        .unwrap();
    let gaps = &d.sequence_gaps().gaps;
    assert_eq!(gaps.get(&(k, "car-1".to_string())), Some(&(1, 3)));
    assert_eq!(gaps.get(&(k, "car-2".to_string())), None);
    assert_eq!(gaps.get(&(k, "car-3".to_string())), Some(&(1, 17)));
    assert_eq!(d.sequence_gaps().total_missed, 20);
}

fn f64_lists(b: &RecordBatch, col: &str) -> Vec<Option<Vec<Option<f64>>>> {
    let list = b.column_by_name(col).unwrap().as_list::<i32>();
    (0..list.len())
        .map(|i| {
            list.is_valid(i)
                .then(|| list.value(i).as_primitive::<Float64Type>().iter().collect())
        })
        .collect()
}

fn i32_lists(b: &RecordBatch, col: &str) -> Vec<Option<Vec<Option<i32>>>> {
    let list = b.column_by_name(col).unwrap().as_list::<i32>();
    (0..list.len())
        .map(|i| {
            list.is_valid(i)
                .then(|| list.value(i).as_primitive::<Int32Type>().iter().collect())
        })
        .collect()
}

fn str_lists(b: &RecordBatch, col: &str) -> Vec<Option<Vec<Option<String>>>> {
    let list = b.column_by_name(col).unwrap().as_list::<i32>();
    (0..list.len())
        .map(|i| {
            list.is_valid(i).then(|| {
                list.value(i)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.map(str::to_string))
                    .collect()
            })
        })
        .collect()
}

fn filed(d: &mut Decoder, topic: &str, payload: &str, recv: i64) -> usize {
    match d.decode(topic, payload.as_bytes(), recv) {
        Outcome::Filed { rows, .. } => rows,
        Outcome::Quarantined(r) => {
            let q = table(d, crate::quarantine::TABLE);
            panic!("{topic}: quarantined as {r}: {:?}", strs(&q, "error"));
        }
    }
}

#[test]
fn ode_map_lanes_with_absolute_nodes() {
    let mut d = decoder();
    let text = shared("usdot-jpo/valid.map.json");
    // The default (CSAE) profile cannot read it; its `metadata`/`payload.data.intersections`
    // detect the ODE shape.
    let rows = filed(
        &mut d,
        "V2X/RSU/RSU12110/MAP/UP",
        &text,
        us("2026-12-01T00:00:00Z"),
    );
    assert_eq!(rows, 28, "one row per GenericLane");
    let b = table(&mut d, "map_lane");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("ode"));
    // Event time: recordGeneratedAt is "", so odeReceivedAt.
    assert_eq!(ts(&b, "event_ts")[0], us("2022-09-30T17:11:55.518847Z"));
    let lane = i32s(&b, "lane_id")
        .iter()
        .position(|l| *l == Some(2))
        .unwrap();
    assert_eq!(i32s(&b, "intersection_id")[lane], Some(12110));
    assert_eq!(f64s(&b, "ref_lat_deg")[lane], Some(39.5952649));
    assert_eq!(f64s(&b, "lane_width_m")[lane], Some(3.66));
    assert_eq!(strs(&b, "lane_type")[lane].as_deref(), Some("vehicle"));
    assert_eq!(
        strs(&b, "directional_use")[lane].as_deref(),
        Some("ingress")
    );
    assert_eq!(i32s(&b, "ingress_approach")[lane], Some(1));
    assert_eq!(
        str_lists(&b, "maneuvers")[lane],
        Some(vec![Some("straight".to_string())])
    );
    assert_eq!(str_lists(&b, "shared_with")[lane], Some(vec![]));
    assert_eq!(
        i32_lists(&b, "connects_to_lane")[lane],
        Some(vec![Some(19)])
    );
    assert_eq!(
        i32_lists(&b, "connects_to_signal_group")[lane],
        Some(vec![Some(4)])
    );
    assert_eq!(
        str_lists(&b, "connects_to_maneuver")[lane],
        Some(vec![Some("straight".to_string())])
    );
    // Nodes: nodeXY6 offsets in cm, each from the node before, the first from refPoint
    // (39.5952649, -105.0914122): (2225, 808), (10517, -161), (2769, 112), ...
    // By hand on WGS-84 (a = 6378137 m, f = 1/298.257223563, e^2 = f(2 - f)) at
    // lat0 = 39.5952649 deg: M = a(1 - e^2) / (1 - e^2 sin^2 lat0)^1.5 = 6361370.78 m,
    // N = a / sqrt(1 - e^2 sin^2 lat0) = 6386827.23 m; lat = lat0 + north / M,
    // lon = lon0 + east / (N cos lat0), in degrees:
    //   node 1: east 22.25, north 8.08 -> 39.5953377, -105.0911532
    //   node 2: east 127.42, north 6.47 -> 39.5953232, -105.0899288
    //   node 3: east 155.11, north 7.59 -> 39.5953333, -105.0896064
    let east = f64_lists(&b, "node_east_m")[lane].clone().unwrap();
    let north = f64_lists(&b, "node_north_m")[lane].clone().unwrap();
    assert_eq!(east.len(), 6);
    assert!((east[1].unwrap() - 127.42).abs() < 1e-9, "{east:?}");
    assert!((north[2].unwrap() - 7.59).abs() < 1e-9, "{north:?}");
    let lat = f64_lists(&b, "node_lat_deg")[lane].clone().unwrap();
    let lon = f64_lists(&b, "node_lon_deg")[lane].clone().unwrap();
    let by_hand = [
        (39.59533767517918, -105.09115316545667),
        (39.59532317418432, -105.08992877611188),
        (39.59533326183292, -105.08960640907796),
    ];
    for (i, (hlat, hlon)) in by_hand.iter().enumerate() {
        // The hand formula is first order: it leaves out the curvature term
        // east^2 tan(lat0) / 2N, 1.5 mm at 155 m east. 5e-8 degree is about 5 mm.
        assert!((lat[i].unwrap() - hlat).abs() < 5e-8, "node {i}: {lat:?}");
        assert!((lon[i].unwrap() - hlon).abs() < 5e-8, "node {i}: {lon:?}");
    }
    // And the curvature term is what the exact values differ by: node 3 lies
    // 155.11^2 * tan(39.595 deg) / (2 * 6386827) = 1.56 mm = 1.40e-8 degree south of it.
    let south_m = (by_hand[2].0 - lat[2].unwrap()).to_radians() * 6361370.78;
    assert!((south_m - 0.00156).abs() < 0.0002, "{south_m}");
    // Egress lanes connect nowhere: lane 6 has one connection to lane 0 with signal group 0.
    let lane6 = i32s(&b, "lane_id")
        .iter()
        .position(|l| *l == Some(6))
        .unwrap();
    assert_eq!(
        strs(&b, "directional_use")[lane6].as_deref(),
        Some("egress")
    );
    assert_eq!(
        str_lists(&b, "speed_limit_type")[lane6],
        Some(vec![
            Some("vehicle_max_speed".to_string()),
            Some("truck_max_speed".to_string())
        ])
    );
}

#[test]
fn csae_map_points_bits_and_choices() {
    let mut d = decoder();
    // Two points: one absolute, one position-LL offset from refPos (not chained).
    let payload = r#"{"msgCnt": 3, "nodes": [{"name": "n19", "id": {"region": 10, "id": 19},
      "refPos": {"lat": 319348466, "long": 1188213963, "elevation": 25},
      "inLinks": [{"name": "18-19", "upstreamNodeId": {"region": 10, "id": 18}, "linkWidth": 1400,
        "lanes": [{"laneID": 16, "laneWidth": 350,
          "laneAttributes": {"shareWith": "0000100000", "laneType": {"vehicle": "00000000"}},
          "maneuvers": "101000000000",
          "connectsTo": [{"remoteIntersection": {"region": 10, "id": 17},
                          "connectingLane": {"lane": 15, "maneuver": "100000000000"}, "phaseId": 3},
                         {"remoteIntersection": {"region": 10, "id": 20},
                          "connectingLane": {"lane": 10, "maneuver": "001000000000"}, "phaseId": 4}],
          "speedLimits": [{"type": "vehicleMaxSpeed", "speed": 833}],
          "points": [{"posOffset": {"offsetLL": {"position-LatLon": {"lon": 1188221527, "lat": 319351114}}}},
                     {"posOffset": {"offsetLL": {"position-LL2": {"lon": 1000, "lat": -500}}}}]},
          {"laneID": 17, "maneuvers": "B000000000000", "points": []}]}]}]}"#;
    let rows = filed(
        &mut d,
        "V2X/RSU/R19/MAP/UP",
        payload,
        us("2026-12-01T08:00:00Z"),
    );
    assert_eq!(rows, 2);
    let b = table(&mut d, "map_lane");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("std"));
    assert_eq!(i32s(&b, "intersection_id"), vec![Some(19), Some(19)]);
    assert_eq!(i32s(&b, "upstream_node_id")[0], Some(18));
    assert_eq!(f64s(&b, "ref_elevation_m")[0], Some(2.5));
    assert_eq!(f64s(&b, "lane_width_m"), vec![Some(3.5), Some(14.0)]);
    assert_eq!(strs(&b, "lane_type")[0].as_deref(), Some("vehicle"));
    assert_eq!(strs(&b, "lane_type")[1], None);
    assert_eq!(
        str_lists(&b, "maneuvers"),
        vec![
            Some(vec![Some("straight".into()), Some("right".into())]),
            Some(vec![])
        ]
    );
    assert_eq!(
        str_lists(&b, "shared_with")[0],
        Some(vec![Some("bus".into())])
    );
    assert_eq!(
        str_lists(&b, "connects_to_maneuver")[0],
        Some(vec![Some("straight".into()), Some("right".into())])
    );
    assert_eq!(
        i32_lists(&b, "connects_to_signal_group")[0],
        Some(vec![Some(3), Some(4)])
    );
    assert_eq!(
        i32_lists(&b, "connects_to_lane")[1],
        None,
        "no connectsTo: null"
    );
    assert_eq!(f64_lists(&b, "speed_limit_mps")[0], Some(vec![Some(16.66)]));
    let lat = f64_lists(&b, "node_lat_deg")[0].clone().unwrap();
    let lon = f64_lists(&b, "node_lon_deg")[0].clone().unwrap();
    assert!((lat[0].unwrap() - 31.9351114).abs() < 1e-12);
    assert!((lon[0].unwrap() - 118.8221527).abs() < 1e-12);
    // Offsets are from refPos: 31.9348466 - 0.00005, 118.8213963 + 0.0001.
    assert!((lat[1].unwrap() - 31.9347966).abs() < 1e-12, "{lat:?}");
    assert!((lon[1].unwrap() - 118.8214963).abs() < 1e-12, "{lon:?}");
    assert_eq!(
        f64_lists(&b, "node_lat_deg")[1],
        Some(vec![]),
        "empty points: empty list"
    );
}

#[test]
fn every_filed_message_gets_an_index_row() {
    let mut d = decoder();
    let recv = us("2022-09-29T03:50:15.400Z");
    // A radar frame with two targets, an RSM that saw nobody, and one bad message.
    let frame = br#"{"timeStamp":"1664423415000","targets":[{"targetId":1},{"targetId":2}]}"#;
    assert!(matches!(
        d.decode("V2X/RADAR/R1/TRACK/UP", frame, recv),
        Outcome::Filed { rows: 2, .. }
    ));
    let nobody = br#"{"content":{"rsms":[{"refPos":{"lat":1,"lon":2},"participants":[]}]}}"#;
    assert!(matches!(
        d.decode("V2X/RSU/R2/RSM/UP", nobody, recv + 1),
        Outcome::Filed { rows: 0, .. }
    ));
    d.decode("V2X/RSU/R2/RSM/UP", b"{", recv + 2);
    let ix = table(&mut d, crate::message_index::TABLE);
    assert_eq!(
        ix.num_rows(),
        2,
        "the quarantined message is in _quarantine only"
    );
    assert_eq!(
        strs(&ix, "kind"),
        vec![Some("radar_target".into()), Some("rsm_participant".into())]
    );
    assert_eq!(
        strs(&ix, "source_id"),
        vec![Some("R1".into()), Some("R2".into())]
    );
    assert_eq!(i32s(&ix, "rows"), vec![Some(2), Some(0)]);
    assert_eq!(i64s(&ix, "payload_bytes")[0], Some(frame.len() as i64));
    // Received 400 ms after the frame's time; the empty RSM has no event time.
    assert_eq!(f64s(&ix, "delay_ms"), vec![Some(400.0), None]);
    let event = ix
        .column_by_name("event_ts")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    assert_eq!(event.value(0), us("2022-09-29T03:50:15Z"));
    assert!(event.is_null(1));
    assert_eq!(
        strs(&ix, "msg_uid")[0],
        Some(msg_uid("V2X/RADAR/R1/TRACK/UP", frame))
    );
    let sources = &d.activity().sources;
    assert_eq!(sources["R1"].delay_last_us, 400_000);
    assert_eq!(sources["R2"].delay_samples, 0);
}

/// The `payload` of one of the tavern captures (they carry their publish topic beside it).
fn tavern(name: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&shared(name)).unwrap();
    (
        v["publish_topic"].as_str().unwrap().to_string(),
        v["payload"].to_string(),
    )
}

#[test]
fn ode_psm_in_the_minute_of_its_ode_receive_time() {
    for file in ["usdot-jpo/valid.psm.json", "usdot-jpo/sample-psm.json"] {
        let mut d = decoder();
        let rows = filed(
            &mut d,
            "V2X/RSU/RSU01/PSM/UP",
            &shared(file),
            us("2026-12-01T00:00:00Z"),
        );
        assert_eq!(rows, 1, "{file}");
        let b = table(&mut d, "psm");
        assert_eq!(strs(&b, "profile")[0].as_deref(), Some("ode"));
        assert_eq!(f64s(&b, "lat_deg")[0], Some(40.2397377));
        assert_eq!(f64s(&b, "lon_deg")[0], Some(-74.2761437));
        assert_eq!(f64s(&b, "speed_mps")[0], Some(0.0));
        // 8898 x 0.0125 deg
        assert_eq!(f64s(&b, "heading_deg")[0], Some(111.225));
        assert_eq!(strs(&b, "basic_type")[0].as_deref(), Some("pedestrian"));
        assert_eq!(strs(&b, "person_id")[0].as_deref(), Some("24779D7E"));
        assert_eq!(i32s(&b, "msg_cnt")[0], Some(26));
        // secMark 3564 in the minute of odeReceivedAt (23:41:08.681 / 15:30:14.926).
        let want = if file.contains("valid") {
            us("2025-01-15T23:41:03.564Z")
        } else {
            us("2023-09-21T15:30:03.564Z")
        };
        assert_eq!(ts(&b, "event_ts")[0], want, "{file}");
    }
}

#[test]
fn csae_psm_and_ssm_in_asn1_names() {
    let mut d = decoder();
    let recv = us("2026-12-01T08:00:30Z");
    let psm = r#"{"msgCnt": 1, "id": "00000000000000AB", "secMark": 23100,
      "pos": {"lat": 319353469, "long": 1188219331, "elevation": 100},
      "posAccuracy": {"semiMajor": 40, "semiMinor": 30, "orientation": 0},
      "speed": 70, "heading": 7200, "overallRadius": 5,
      "non-motorData": {"basicType": 1, "propulsion": {"human": 2}, "clusterSize": 0, "personalReq": {"crossing": 1}}}"#;
    assert_eq!(filed(&mut d, "V2X/RSU/R1/PSM/UP", psm, recv), 1);
    let b = table(&mut d, "psm");
    assert_eq!(f64s(&b, "lat_deg")[0], Some(31.9353469));
    assert_eq!(f64s(&b, "speed_mps")[0], Some(1.4));
    assert_eq!(f64s(&b, "heading_deg")[0], Some(90.0));
    assert_eq!(f64s(&b, "accuracy_semi_major_m")[0], Some(2.0));
    assert_eq!(f64s(&b, "radius_m")[0], Some(0.5));
    assert_eq!(strs(&b, "propulsion")[0].as_deref(), Some("human"));
    assert_eq!(strs(&b, "crossing_request")[0].as_deref(), Some("request"));
    assert_eq!(ts(&b, "event_ts")[0], us("2026-12-01T08:00:23.100Z"));

    let ssm = r#"{"msgCnt": 5, "id": "0000000000000001", "equipmentType": 1, "secMark": 12345,
      "sensorPos": {"lat": 319348466, "long": 1188213963, "elevation": 100},
      "participants": [{"ptc": {"ptcType": 1, "ptcId": 7, "source": 7, "secMark": 12300,
          "pos": {"offsetLL": {"position-LL2": {"lon": 812, "lat": -455}}},
          "speed": 500, "heading": 14400, "size": {"width": 180, "length": 460, "height": 30}},
        "detectedPTCType": 3, "typeConfidence": 180, "tracking": 12}],
      "obstacles": [{"obsType": 6, "obsId": 3, "source": 6, "secMark": 12300,
        "pos": {"offsetLL": {"position-LatLon": {"lon": 1188214063, "lat": 319348506}}},
        "speed": 0, "heading": 0, "size": {"width": 4, "length": 4, "height": 7}}]}"#;
    assert_eq!(filed(&mut d, "V2X/RSU/R1/SSM/UP", ssm, recv), 2);
    let b = table(&mut d, "ssm_object");
    assert_eq!(
        strs(&b, "object_class"),
        vec![Some("participant".into()), Some("obstacle".into())]
    );
    assert_eq!(
        strs(&b, "object_type"),
        vec![Some("car".into()), Some("traffic_cone".into())]
    );
    assert_eq!(f64s(&b, "type_confidence")[0], Some(0.9));
    // 31.9348466 - 0.0000455, 118.8213963 + 0.0000812
    assert!((f64s(&b, "lat_deg")[0].unwrap() - 31.9348011).abs() < 1e-12);
    assert!((f64s(&b, "lon_deg")[0].unwrap() - 118.8214775).abs() < 1e-12);
    assert_eq!(f64s(&b, "lat_deg")[1], Some(31.9348506));
    assert_eq!(f64s(&b, "speed_mps")[0], Some(10.0));
    assert_eq!(f64s(&b, "width_m"), vec![Some(1.8), Some(0.4)]);
    assert_eq!(f64s(&b, "height_m"), vec![Some(1.5), Some(0.7)]);
    assert_eq!(strs(&b, "equipment_type")[0].as_deref(), Some("rsu"));
    // About 7.7 m east and 5.05 m south of the sensor, from the rows' absolute and reference
    // positions with the WGS-84 radii of curvature at the reference latitude.
    let (lat, lon) = (
        f64s(&b, "lat_deg")[0].unwrap(),
        f64s(&b, "lon_deg")[0].unwrap(),
    );
    let (lat0, lon0) = (
        f64s(&b, "ref_lat_deg")[0].unwrap(),
        f64s(&b, "ref_lon_deg")[0].unwrap(),
    );
    let (a, e2) = (6_378_137.0_f64, 6.694_379_990_14e-3_f64);
    let w = (1.0 - e2 * lat0.to_radians().sin().powi(2)).sqrt();
    let east = (lon - lon0).to_radians() * a / w * lat0.to_radians().cos();
    let north = (lat - lat0).to_radians() * a * (1.0 - e2) / w.powi(3);
    assert!(
        (east - 7.67).abs() < 0.05 && (north + 5.05).abs() < 0.05,
        "{east} {north}"
    );
}

#[test]
fn ode_sdsm_objects_at_their_offsets() {
    let mut d = decoder();
    let rows = filed(
        &mut d,
        "V2X/RSU/RSU01/SDSM/UP",
        &shared("usdot-jpo/sample-sdsm.json"),
        us("2026-12-01T00:00:00Z"),
    );
    assert_eq!(rows, 1);
    let b = table(&mut d, "ssm_object");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("ode"));
    assert_eq!(strs(&b, "object_class")[0].as_deref(), Some("vru"));
    assert_eq!(i64s(&b, "object_id")[0], Some(8010));
    assert_eq!(f64s(&b, "type_confidence")[0], Some(0.98));
    assert_eq!(f64s(&b, "speed_mps")[0], Some(0.02));
    assert_eq!(strs(&b, "sender_id")[0].as_deref(), Some("010C0C0A"));
    // sDSMTimeStamp has only the year: the ODE's receive time.
    assert_eq!(ts(&b, "event_ts")[0], us("2025-05-22T22:45:10.967Z"));
    // refPos (42.3010070, -83.6987660) plus offsetX = offsetY = 1 (0.1 m east and north).
    // By hand at lat0 = 42.301007 deg on WGS-84: M = 6364365.45 m, N = 6387829.29 m;
    // lat = 42.301007 + 0.1 / M (rad) = 42.3010079003, lon = -83.698766 + 0.1 / (N cos lat0)
    // = -83.6987647873.
    assert!(
        (f64s(&b, "lat_deg")[0].unwrap() - 42.3010079003).abs() < 1e-9,
        "{:?}",
        f64s(&b, "lat_deg")
    );
    assert!(
        (f64s(&b, "lon_deg")[0].unwrap() + 83.6987647873).abs() < 1e-9,
        "{:?}",
        f64s(&b, "lon_deg")
    );
}

#[test]
fn vir_requests_from_the_openv2x_captures() {
    let mut d = decoder();
    let recv = us("2026-12-01T00:00:00Z");
    for file in [
        "openv2x-payloads/tavern_clc_payload.json",
        "openv2x-payloads/tavern_dnp_payload.json",
        "openv2x-payloads/tavern_sds_payload.json",
    ] {
        let (topic, payload) = tavern(file);
        assert_eq!(filed(&mut d, &topic, &payload, recv), 1, "{file}");
    }
    let b = table(&mut d, "vir");
    assert_eq!(strs(&b, "vehicle_id")[0].as_deref(), Some("39"));
    assert_eq!(i32s(&b, "msg_cnt")[0], Some(2));
    assert_eq!(ts(&b, "event_ts")[0], 1_653_016_893_400_000);
    assert_eq!(f64s(&b, "lat_deg")[0], Some(31.9353469));
    assert_eq!(f64s(&b, "elevation_m")[0], Some(10.0));
    assert_eq!(
        strs(&b, "current_behavior"),
        vec![
            Some("lane_change_right".into()),
            Some("lane_change_left".into()),
            None
        ]
    );
    assert_eq!(
        str_lists(&b, "req_type"),
        vec![
            Some(vec![Some("lane_change".into())]),
            Some(vec![Some("retrograde".into())]),
            Some(vec![Some("sensor_sharing".into())])
        ]
    );
    assert_eq!(
        str_lists(&b, "req_status")[0],
        Some(vec![Some("confirmed".into())])
    );
    assert_eq!(i32_lists(&b, "req_target_lane")[1], Some(vec![Some(1)]));
    assert_eq!(f64_lists(&b, "req_life_time_s")[2], Some(vec![Some(0.5)]));
    assert_eq!(
        str_lists(&b, "req_priority")[2],
        Some(vec![Some("B11100000".into())])
    );
}

#[test]
fn ode_and_processed_bsm() {
    let mut d = decoder();
    let recv = us("2026-12-01T00:00:00Z");
    // On the plain OBU topic: the default profile cannot read it, detection finds `ode`.
    assert_eq!(
        filed(
            &mut d,
            "V2X/OBU/12A7A951/BSM/UP",
            &shared("usdot-jpo/valid.bsm.json"),
            recv
        ),
        1
    );
    let b = table(&mut d, "bsm");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("ode"));
    assert_eq!(f64s(&b, "speed_mps")[0], Some(0.0));
    assert_eq!(f64s(&b, "heading_deg")[0], Some(359.4));
    assert_eq!(f64s(&b, "lat_deg")[0], Some(40.5671913));
    assert_eq!(f64s(&b, "elevation_m")[0], Some(1505.9));
    assert_eq!(
        f64s(&b, "accel_lat_mps2")[0],
        None,
        "2001 passes through as unavailable"
    );
    assert_eq!(
        f64s(&b, "accel_vert_mps2")[0],
        None,
        "-127 passes through as unavailable"
    );
    assert_eq!(f64s(&b, "accel_long_mps2")[0], Some(0.0));
    assert_eq!(f64s(&b, "width_m")[0], Some(2.08));
    assert_eq!(f64s(&b, "length_m")[0], Some(5.86));
    assert_eq!(strs(&b, "transmission")[0].as_deref(), Some("unavailable"));
    assert_eq!(i32s(&b, "msg_cnt")[0], Some(25));
    // secMark 2800 in the minute of odeReceivedAt 12:32:03.811.
    assert_eq!(ts(&b, "event_ts")[0], us("2024-08-12T12:32:02.800Z"));
    // The same message through jpo-geojsonconverter; named by the topic's profile segment.
    let processed = shared("usdot-jpo/sample.processed-bsm.json");
    assert_eq!(
        filed(
            &mut d,
            "V2X/OBU/12A7A951/BSM/UP/PROCESSED",
            &processed,
            recv
        ),
        1
    );
    let b = table(&mut d, "bsm");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("PROCESSED"));
    assert_eq!(f64s(&b, "lat_deg")[0], Some(40.5671913));
    assert_eq!(f64s(&b, "lon_deg")[0], Some(-105.0342901));
    assert_eq!(f64s(&b, "heading_deg")[0], Some(359.4));
    assert_eq!(ts(&b, "event_ts")[0], us("2024-08-12T12:32:04.303409Z"));
    // And detected without the segment.
    assert_eq!(
        filed(&mut d, "V2X/OBU/12A7A951/BSM/UP", &processed, recv),
        1
    );
    let b = table(&mut d, "bsm");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("processed"));
}

#[test]
fn ode_spat_timemarks_become_countdowns() {
    let mut d = decoder();
    let rows = filed(
        &mut d,
        "V2X/RSU/RSU12111/SPAT/UP",
        &shared("usdot-jpo/valid.spat.json"),
        us("2026-12-01T00:00:00Z"),
    );
    assert_eq!(rows, 6);
    let b = table(&mut d, "spat_phase");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("ode"));
    assert_eq!(i32s(&b, "intersection_id")[0], Some(12111));
    // timeStamp 35176 ms in the minute of odeReceivedAt (23:02:53.824), moy null.
    assert_eq!(ts(&b, "event_ts")[0], us("2022-10-18T23:02:35.176Z"));
    assert_eq!(
        i32s(&b, "phase_id"),
        vec![Some(2), Some(4), Some(6), Some(8), Some(1), Some(5)]
    );
    assert_eq!(strs(&b, "light")[0].as_deref(), Some("protected_green"));
    assert_eq!(strs(&b, "light")[1].as_deref(), Some("red"));
    assert_eq!(strs(&b, "color")[0].as_deref(), Some("green"));
    assert_eq!(strs(&b, "color")[1].as_deref(), Some("red"));
    assert_eq!(
        strs(&b, "intersection_status")[0].as_deref(),
        Some("manual_control")
    );
    // minEndTime 22181 tenths = 36:58.1 into the hour; from 02:35.176 that is 2062.924 s.
    let min_end = f64s(&b, "min_end_time_s")[1].unwrap();
    assert!((min_end - 2062.924).abs() < 1e-6, "{min_end}");
    assert_eq!(f64s(&b, "likely_end_time_s")[1], None);
}

#[test]
fn processed_spat_times_are_countdowns_from_utc_timestamp() {
    let mut d = decoder();
    let rows = filed(
        &mut d,
        "V2X/RSU/RSU12110/SPAT/UP",
        &shared("usdot-jpo/sample.processed-spat.json"),
        us("2026-12-01T00:00:00Z"),
    );
    assert_eq!(rows, 8);
    let b = table(&mut d, "spat_phase");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("processed"));
    assert_eq!(i32s(&b, "intersection_id")[0], Some(12110));
    assert_eq!(ts(&b, "event_ts")[0], us("2022-11-17T22:55:28.744Z"));
    assert_eq!(strs(&b, "light")[6].as_deref(), Some("protected_green"));
    // That sample's converter put the ends in the previous hour (22:03:48.1 against
    // 22:55:28.744): kept as the negative countdown it is, -3100.644 s.
    let end = f64s(&b, "min_end_time_s")[0].unwrap();
    assert!((end + 3100.644).abs() < 1e-6, "{end}");
    assert_eq!(f64s(&b, "start_time_s")[0], None);
}

#[test]
fn csae_and_j2735_light_numbers_differ() {
    let mut d = decoder();
    let recv = us("2026-12-01T08:00:30Z");
    let csae = r#"{"intersections": [{"intersectionId": {"region": 1, "id": 7}, "timeStamp": 30000,
      "phases": [{"id": 1, "phaseStates": [{"light": 8}, {"light": 4}, {"light": 7}]}]}]}"#;
    assert_eq!(filed(&mut d, "V2X/RSU/R7/SPAT/UP", csae, recv), 3);
    let b = table(&mut d, "spat_phase");
    assert_eq!(
        strs(&b, "light"),
        vec![
            Some("flashing_yellow".into()),
            Some("flashing_green".into()),
            Some("yellow".into())
        ]
    );
    assert_eq!(
        strs(&b, "color"),
        vec![
            Some("yellow".into()),
            Some("green".into()),
            Some("yellow".into())
        ]
    );
    // The same numbers in J2735 (the ODE also sends names): 8 protected clearance, 4
    // pre-movement, 7 permissive clearance.
    let j2735 = r#"{"metadata": {"odeReceivedAt": "2026-12-01T08:00:30Z"}, "payload": {"data": {
      "intersectionStateList": {"intersectionStatelist": [{"id": {"region": 1, "id": 7}, "timeStamp": 30000,
        "states": {"movementList": [{"signalGroup": 1, "state_time_speed": {"movementEventList": [
          {"eventState": 8}, {"eventState": 4}, {"eventState": "PERMISSIVE_CLEARANCE"}]}}]}}]}}}}"#;
    assert_eq!(filed(&mut d, "V2X/RSU/R7/SPAT/UP", j2735, recv), 3);
    let b = table(&mut d, "spat_phase");
    assert_eq!(
        strs(&b, "light"),
        vec![
            Some("protected_yellow".into()),
            Some("red_yellow".into()),
            Some("permissive_yellow".into())
        ]
    );
    assert_eq!(
        strs(&b, "color"),
        vec![
            Some("yellow".into()),
            Some("red".into()),
            Some("yellow".into())
        ]
    );
}

/// Every element of a JSON array capture (BOM allowed), as payload texts.
fn array(name: &str) -> Vec<String> {
    let text = shared(name);
    let v: Vec<serde_json::Value> =
        serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap();
    v.into_iter().map(|x| x.to_string()).collect()
}

#[test]
fn radar_feeds_from_the_capture() {
    let mut d = decoder();
    let recv = us("2026-12-01T00:00:00Z");
    let mut rows = HashMap::new();
    for (feed, kind) in [
        ("cross", "radar_pass"),
        ("flow", "radar_flow"),
        ("status", "radar_queue"),
        ("event", "radar_event"),
    ] {
        let topic = format!("V2X/RADAR/N22W75HMBLD/{}/UP", feed.to_uppercase());
        let mut n = 0;
        for p in array(&format!("openv2x-radar/{feed}.json")) {
            n += filed(&mut d, &topic, &p, recv);
        }
        rows.insert(kind, n);
    }
    let mut tables = tables(&mut d);
    let flow = tables.remove("radar_flow").unwrap();
    // The first FLOW message (timeStamp 1664422806000): lane 2 counted 2 small vehicles at
    // 2 km/h.
    let t0 = 1_664_422_806_000_000;
    let at = (0..flow.num_rows())
        .find(|&i| ts(&flow, "event_ts")[i] == t0 && i32s(&flow, "lane_no")[i] == Some(2))
        .unwrap();
    assert_eq!(i32s(&flow, "flow_small")[at], Some(2));
    assert_eq!(i32s(&flow, "flow_large")[at], Some(0));
    assert_eq!(i32s(&flow, "flow_right")[at], Some(10));
    assert_eq!(f64s(&flow, "avg_speed_mps")[at], Some(2.0 / 3.6));
    assert_eq!(f64s(&flow, "avg_length_m")[at], Some(4.5));
    assert_eq!(rows["radar_flow"], flow.num_rows());
    let queue = tables.remove("radar_queue").unwrap();
    assert_eq!(rows["radar_queue"], queue.num_rows());
    assert!(queue.num_rows() >= 500);
    let pass = tables.remove("radar_pass").unwrap();
    assert_eq!(rows["radar_pass"], pass.num_rows());
    assert_eq!(strs(&pass, "vehicle_type")[0].as_deref(), Some("small"));
    let event = tables.remove("radar_event").unwrap();
    assert_eq!(event.num_rows(), 500);
    assert_eq!(
        strs(&event, "event_type")[0].as_deref(),
        Some("queue_over_limit")
    );
    assert_eq!(f64s(&event, "lat_deg")[0], Some(39.073168317));
}

#[test]
fn a_track_frame_on_the_flow_topic_is_filed_as_radar_targets() {
    let mut d = decoder();
    let (topic, payload) = tavern("openv2x-payloads/tavern_mwr_payload.json");
    assert_eq!(topic, "V2X/RADAR/R328328/FLOW/UP");
    assert_eq!(
        filed(&mut d, &topic, &payload, us("2026-12-01T00:00:00Z")),
        3
    );
    let b = table(&mut d, "radar_target");
    assert_eq!(strs(&b, "profile")[0].as_deref(), Some("eroad"));
    assert_eq!(strs(&b, "source_id")[0].as_deref(), Some("R328328"));
    assert_eq!(strs(&b, "device_id")[0].as_deref(), Some("N6W107HMBLD"));
    assert_eq!(i64s(&b, "target_id")[0], Some(26219));
    assert_eq!(f64s(&b, "speed_mps")[0], Some(-23.999228 / 3.6));
    // report_time 2022-10-31 15:39:22 Beijing time.
    assert_eq!(ts(&b, "event_ts")[0], us("2022-10-31T07:39:22Z"));
}

/// Every message of every capture in `../shared/data`, on the topic its device uses.
pub(crate) fn every_capture() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (feed, n) in [
        ("track", 500),
        ("cross", 500),
        ("flow", 26),
        ("status", 500),
        ("event", 500),
    ] {
        let topic = format!("V2X/RADAR/N22W75HMBLD/{}/UP", feed.to_uppercase());
        let payloads = array(&format!("openv2x-radar/{feed}.json"));
        assert_eq!(payloads.len(), n, "{feed}");
        out.extend(payloads.into_iter().map(|p| (topic.clone(), p)));
    }
    for line in shared("openv2x-payloads/derived_rsm_std_payloads.ndjson").lines() {
        out.push(("V2X/RSU/R328328/RSM/UP".into(), line.to_string()));
    }
    for name in ["clc", "dnp", "mwr", "rsi", "rsm", "sds"] {
        out.push(tavern(&format!(
            "openv2x-payloads/tavern_{name}_payload.json"
        )));
    }
    for (file, topic) in [
        ("valid.bsm.json", "V2X/OBU/12A7A951/BSM/UP"),
        ("sample.processed-bsm.json", "V2X/OBU/12A7A951/BSM/UP"),
        ("valid.spat.json", "V2X/RSU/RSU12111/SPAT/UP"),
        ("sample.processed-spat.json", "V2X/RSU/RSU12110/SPAT/UP"),
        ("valid.map.json", "V2X/RSU/RSU12110/MAP/UP"),
        ("valid.psm.json", "V2X/RSU/RSU12110/PSM/UP"),
        ("sample-psm.json", "V2X/RSU/RSU12110/PSM/UP"),
        ("sample-sdsm.json", "V2X/RSU/RSU12110/SDSM/UP"),
    ] {
        out.push((topic.to_string(), shared(&format!("usdot-jpo/{file}"))));
    }
    out
}

#[test]
fn every_message_of_every_capture_is_filed() {
    let mut d = decoder();
    let all = every_capture();
    assert_eq!(all.len(), 2049);
    let recv = us("2026-12-01T00:00:00Z");
    let mut quarantined = Vec::new();
    for (topic, payload) in &all {
        if let Outcome::Quarantined(r) = d.decode(topic, payload.as_bytes(), recv) {
            quarantined.push(format!("{topic}: {r}"));
        }
    }
    assert!(quarantined.is_empty(), "{quarantined:?}");
    let tables = tables(&mut d);
    assert_eq!(tables[crate::message_index::TABLE].num_rows(), 2049);
    assert!(!tables.contains_key(crate::quarantine::TABLE));
}

#[test]
fn relayed_psm_counters_are_followed_per_person() {
    let mut d = decoder();
    let recv = us("2026-12-01T08:00:30Z");
    let psm = |id: &str, cnt: u32| {
        format!(
            r#"{{"msgCnt": {cnt}, "id": "{id}", "secMark": 23100, "pos": {{"lat": 319353469, "long": 1188219331}}, "speed": 70, "heading": 7200}}"#
        )
    };
    // One roadside unit relays two pedestrians, each counting on its own: no gap.
    for cnt in 0..5 {
        filed(&mut d, "V2X/RSU/R1/PSM/UP", &psm("AA", cnt), recv);
        filed(&mut d, "V2X/RSU/R1/PSM/UP", &psm("BB", 100 + cnt), recv);
    }
    assert_eq!(d.sequence_gaps().total_missed, 0);
    // A jump of one person's counter is a gap.
    filed(&mut d, "V2X/RSU/R1/PSM/UP", &psm("AA", 9), recv);
    assert_eq!(d.sequence_gaps().total_missed, 4);
}
