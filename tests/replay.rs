//! `v2x-collector replay` publishing the real captures through a real mosquitto into the
//! collector: the row counts match the captures.

mod common;

use std::time::Duration;

use common::*;

fn replay(broker: &Mosquitto, args: &[&str]) {
    let out = bin()
        .arg("replay")
        .arg("--broker")
        .arg(broker.url())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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
    ] {
        let rows = read_table(&ws.data(), kind).0.map_or(0, |b| b.num_rows());
        assert!(rows > 0, "no {kind} rows");
    }
    assert!(read_table(&ws.data(), "_quarantine").0.is_none());
}
