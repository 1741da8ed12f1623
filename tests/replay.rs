//! `v2x-collector replay` publishing the real captures through a real mosquitto into the
//! collector: the row counts match the captures.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn replaying_the_captures_gives_their_row_counts() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&format!("[mqtt]\nbroker = \"{}\"\n", broker.url()), &[]);
    let path = |p: &str| shared(p).display().to_string();
    replay(
        &broker,
        &[
            "--topic",
            "V2X/RADAR/N22W75HMBLD/TRACK/UP",
            &path("openv2x-radar/track.json"),
        ],
    );
    replay(
        &broker,
        &[
            "--topic",
            "V2X/RSU/R328328/RSM/UP",
            "--rate",
            "200",
            &path("openv2x-payloads/derived_rsm_std_payloads.ndjson"),
        ],
    );
    replay(
        &broker,
        &[
            &path("openv2x-payloads/tavern_rsm_payload.json"),
            &path("openv2x-payloads/tavern_rsi_payload.json"),
        ],
    );
    c.wait_processed(500 + 9 + 2, Duration::from_secs(60));
    assert!(c.stop().success());
    let rows = |t: &str| read_table(&ws.data(), t).0.map_or(0, |b| b.num_rows());
    assert_eq!(rows("radar_target"), 11_165);
    assert_eq!(rows("rsm_participant"), 358 + 1);
    assert_eq!(rows("rsi_event"), 1);
    assert_eq!(rows("_quarantine"), 0);
}

#[test]
fn replay_without_a_topic_for_bare_payloads_is_a_usage_error() {
    let out = bin()
        .args(["replay", "--broker", "mqtt://127.0.0.1:1"])
        .arg(shared("openv2x-radar/track.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--topic"));
}

#[test]
fn simulate_fills_every_kind_with_nothing_quarantined() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&format!("[mqtt]\nbroker = \"{}\"\n", broker.url()), &[]);
    let out = bin()
        .args([
            "simulate",
            "--broker",
            &broker.url(),
            "--max",
            "--count",
            "8000",
        ])
        .args(["--rsus", "3", "--vehicles", "4", "--connections", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_processed(8000, Duration::from_secs(120));
    assert!(c.stop().success());
    for kind in [
        "rsm_participant",
        "bsm",
        "spat_phase",
        "rsi_event",
        "radar_target",
        "vehicle_state",
        "vehicle_object",
        "device_status",
        "map_lane",
        "psm",
        "ssm_object",
    ] {
        let rows = read_table(&ws.data(), kind).0.map_or(0, |b| b.num_rows());
        assert!(rows > 0, "no {kind} rows");
    }
    assert!(read_table(&ws.data(), "_quarantine").0.is_none());
}

/// V2X-Seq CSV (trajectories and traffic lights, two intersections, a `#` in their ids, extra
/// columns, rows grouped by object as the published files are) through a real mosquitto.
#[test]
fn replaying_v2xseq_csv_files_objects_and_signal_phases() {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
    use v2x_collector::sim::v2xseq::{intersection_id, phase_id};

    let dir = tempfile::tempdir().unwrap();
    let trajectories = dir.path().join("trajectories.csv");
    std::fs::write(
        &trajectories,
        "city,timestamp,id,type,sub_type,tag,x,y,z,length,width,height,theta,v_x,v_y,intersect_id\n\
PEK,1626155191.2,100001,VEHICLE,CAR,AV,417630.072477,4731292.5,0.0,4.193262,1.660346,1.516335,2.110587,-0.04137,0.066339,yizhuang#4-1_po\n\
PEK,1626155191.3,100001,VEHICLE,CAR,AV,417630.600217,4731291.9,0.0,4.192796,1.656584,1.512959,2.1099,0.0,0.0,yizhuang#4-1_po\n\
PEK,1626155191.4,100001,VEHICLE,CAR,AV,417631.183671,4731290.4,0.0,4.19243,1.653452,1.510157,2.108647,0.0,0.0,yizhuang#4-1_po\n\
PEK,1626155191.2,100002,PEDESTRIAN,PEDESTRIAN,OTHERS,417640.0,4731280.0,,0.5,0.5,1.7,-1.2,0.3,-1.1,yizhuang#4-1_po\n\
PEK,1626155191.3,100002,PEDESTRIAN,PEDESTRIAN,OTHERS,417640.03,4731279.89,,0.5,0.5,1.7,-1.2,0.3,-1.1,yizhuang#4-1_po\n\
\n\
PEK,1626155191.2,200001,BICYCLE,CYCLIST,OTHERS,417000.5,4731000.25,0.1,1.8,0.6,1.5,-1.5,1.0,-2.0,\"yizhuang#7-1_po\"\n\
PEK,1626155191.3,200001,BICYCLE,CYCLIST,OTHERS,417000.6,4731000.05,0.1,1.8,0.6,1.5,-1.5,1.0,-2.0,yizhuang#7-1_po\n",
    )
    .unwrap();
    let lights = dir.path().join("traffic_lights.csv");
    std::fs::write(
        &lights,
        "\u{feff}timestamp,x,y,direction,lane_id,color_1,remain_1,color_2,remain_2,color_3,remain_3,intersect_id,city\n\
1626155191.2,417600.5,4731300.5,EAST,15312342_1_-1,GREEN,12.5,YELLOW,3,RED,60,yizhuang#4-1_po,PEK\n\
1626155191.2,417610.5,4731310.5,NORTH,15132559_1_-2,RED,15.5,GREEN,45,YELLOW,3,yizhuang#4-1_po,PEK\n\
1626155191.2,417000.0,4731000.0,WEST,15646013_1_-1,YELLOW,2,RED,40,GREEN,30,yizhuang#7-1_po,PEK\n\
1626155191.3,417600.5,4731300.5,EAST,15312342_1_-1,GREEN,12.4,YELLOW,3,RED,60,yizhuang#4-1_po,PEK\n\
1626155191.3,417610.5,4731310.5,NORTH,15132559_1_-2,RED,15.4,GREEN,45,YELLOW,3,yizhuang#4-1_po,PEK\n",
    )
    .unwrap();

    let broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&format!("[mqtt]\nbroker = \"{}\"\n", broker.url()), &[]);
    replay(
        &broker,
        &[
            &trajectories.display().to_string(),
            &lights.display().to_string(),
        ],
    );
    // Frames per (timestamp, intersection): 3 + 2 of objects, 2 + 1 of signal phases.
    c.wait_processed(5 + 3, Duration::from_secs(60));
    assert!(c.stop().success());
    assert!(read_table(&ws.data(), "_quarantine").0.is_none());
    assert_dataset_is_clean(&ws.data());

    let strs = |b: &arrow::record_batch::RecordBatch, name: &str| -> Vec<Option<String>> {
        let c = b.column_by_name(name).unwrap().as_string::<i32>().clone();
        (0..c.len())
            .map(|i| (!c.is_null(i)).then(|| c.value(i).to_string()))
            .collect()
    };
    let f64s = |b: &arrow::record_batch::RecordBatch, name: &str| -> Vec<Option<f64>> {
        let c = b.column_by_name(name).unwrap();
        c.as_primitive::<Float64Type>().iter().collect()
    };
    let event_ts = |b: &arrow::record_batch::RecordBatch| -> Vec<i64> {
        let c = b.column_by_name("event_ts").unwrap();
        c.as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    };

    let objects = read_table(&ws.data(), "vehicle_object").0.expect("objects");
    assert_eq!(objects.num_rows(), 7);
    let ids: Vec<i64> = objects
        .column_by_name("object_id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    let (source, x, theta, ts) = (
        strs(&objects, "source_id"),
        f64s(&objects, "x_m"),
        f64s(&objects, "theta_rad"),
        event_ts(&objects),
    );
    let (types, z) = (strs(&objects, "object_type"), f64s(&objects, "z_m"));
    let per_source = |s: &str| source.iter().filter(|v| v.as_deref() == Some(s)).count();
    assert_eq!(per_source("yizhuang_4-1_po"), 5);
    assert_eq!(per_source("yizhuang_7-1_po"), 2);
    let car = (0..objects.num_rows())
        .find(|&i| ids[i] == 100001 && ts[i] == 1_626_155_191_200_000)
        .expect("the car's first row");
    assert_eq!(source[car].as_deref(), Some("yizhuang_4-1_po"));
    assert_eq!(x[car], Some(417630.072477));
    assert_eq!(theta[car], Some(2.110587));
    assert_eq!(types[car].as_deref(), Some("vehicle"));
    assert_eq!(strs(&objects, "sub_type")[car].as_deref(), Some("car"));
    assert_eq!(strs(&objects, "sensor")[car].as_deref(), Some("fused"));
    assert_eq!(
        strs(&objects, "frame_id")[car].as_deref(),
        Some("v2xseq_map")
    );
    assert_eq!(strs(&objects, "object_id_text")[car], None);
    let bike = (0..objects.num_rows())
        .find(|&i| ids[i] == 200001 && ts[i] == 1_626_155_191_300_000)
        .expect("the bicycle's second row");
    assert_eq!(source[bike].as_deref(), Some("yizhuang_7-1_po"));
    assert_eq!((x[bike], theta[bike]), (Some(417000.6), Some(-1.5)));
    assert_eq!(types[bike].as_deref(), Some("bicycle"));
    // An empty z is a null, not a zero.
    let walker = (0..objects.num_rows()).find(|&i| ids[i] == 100002).unwrap();
    assert_eq!(
        (types[walker].as_deref(), z[walker]),
        (Some("pedestrian"), None)
    );

    let spat = read_table(&ws.data(), "spat_phase").0.expect("phases");
    // Three states per light row: 2 + 1 + 2 rows.
    assert_eq!(spat.num_rows(), 15);
    let i32s = |name: &str| -> Vec<i32> {
        let c = spat.column_by_name(name).unwrap();
        c.as_primitive::<Int32Type>().values().to_vec()
    };
    let (phase, intersection) = (i32s("phase_id"), i32s("intersection_id"));
    let (source, ts) = (strs(&spat, "source_id"), event_ts(&spat));
    let (light, start, end) = (
        strs(&spat, "light"),
        f64s(&spat, "start_time_s"),
        f64s(&spat, "likely_end_time_s"),
    );
    let east = phase_id("EAST", "15312342_1_-1");
    let mut states: Vec<(String, f64, f64)> = (0..spat.num_rows())
        .filter(|&i| i64::from(phase[i]) == east && ts[i] == 1_626_155_191_200_000)
        .map(|i| {
            assert_eq!(source[i].as_deref(), Some("yizhuang_4-1_po"));
            assert_eq!(
                i64::from(intersection[i]),
                intersection_id("yizhuang#4-1_po")
            );
            (
                light[i].clone().unwrap(),
                start[i].unwrap(),
                end[i].unwrap(),
            )
        })
        .collect();
    states.sort_by(|a, b| a.1.total_cmp(&b.1));
    let rounded: Vec<(&str, i64, i64)> = states
        .iter()
        .map(|(l, s, e)| {
            (
                l.as_str(),
                (s * 10.0).round() as i64,
                (e * 10.0).round() as i64,
            )
        })
        .collect();
    assert_eq!(
        rounded,
        vec![
            ("permissive_green", 0, 125),
            ("yellow", 125, 155),
            ("red", 155, 755)
        ]
    );
    let west = (0..spat.num_rows())
        .find(|&i| {
            i64::from(phase[i]) == phase_id("WEST", "15646013_1_-1") && start[i] == Some(0.0)
        })
        .expect("the west light's current state");
    assert_eq!(source[west].as_deref(), Some("yizhuang_7-1_po"));
    assert_eq!(
        (light[west].as_deref(), end[west]),
        (Some("yellow"), Some(2.0))
    );
}

#[test]
fn a_malformed_v2xseq_csv_is_a_usage_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.csv");
    std::fs::write(
        &f,
        "timestamp,id,type,sub_type,x,y,z,length,width,height,theta,v_x,v_y,intersect_id\n\
1626155191.2,1,VEHICLE,CAR,417630.0,4731292.5,0,4.2,1.7,1.5,2.1,0,0,yizhuang#4-1_po\n\
1626155191.3,1,VEHICLE,CAR,417630.5,north,0,4.2,1.7,1.5,2.1,0,0,yizhuang#4-1_po\n",
    )
    .unwrap();
    let out = bin()
        .args(["replay", "--broker", "mqtt://127.0.0.1:1"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv") && err.contains("line 3") && err.contains("\"north\""),
        "{err}"
    );
}
