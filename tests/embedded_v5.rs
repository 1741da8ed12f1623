//! The embedded broker takes MQTT 5 and MQTT 3.1.1 devices on one port: `run` with no broker
//! configured, real captures published by mosquitto_pub (both versions, QoS 0 and 1) and by a
//! paho-mqtt client, the collector stopped with SIGTERM, the Parquet read back.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use arrow::array::AsArray;
use common::*;

const RSM_TOPIC: &str = "V2X/RSU/R328328/RSM/UP";
/// Participants in `derived_rsm_std_payloads.ndjson` (9 messages).
const RSM_ROWS: usize = 358;
/// Targets in all 500 frames of `track.json`.
const RADAR_ROWS: usize = 11_165;

fn rsm_lines() -> Vec<String> {
    std::fs::read_to_string(shared("openv2x-payloads/derived_rsm_std_payloads.ndjson"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn rows(data: &std::path::Path, table: &str) -> usize {
    read_table(data, table).0.map_or(0, |b| b.num_rows())
}

/// Starts the collector with nothing but `--listen` (and `extra` config), as a user would.
fn collector(ws: &Workspace, extra: &str) -> (Collector, u16) {
    let port = free_port();
    let c = ws.start(extra, &["--listen", &format!("127.0.0.1:{port}")]);
    (c, port)
}

#[test]
fn mqtt5_and_311_devices_share_the_default_listener() {
    let ws = Workspace::new();
    let (mut c, port) = collector(&ws, "");
    let radar = radar_frames();
    assert_eq!(radar.len(), 500);
    let rsm = rsm_lines();
    assert_eq!(rsm.len(), 9);

    // The radar capture, split over every kind of publisher (each frame once: the collector
    // drops repeated frames as redeliveries).
    publish_lines_with(
        port,
        RADAR_TOPIC,
        &radar[..150],
        &["-V", "mqttv5", "-q", "1"],
    );
    publish_lines_with(
        port,
        RADAR_TOPIC,
        &radar[150..250],
        &["-V", "mqttv5", "-q", "0"],
    );
    publish_lines_with(
        port,
        RADAR_TOPIC,
        &radar[250..350],
        &["-V", "mqttv311", "-q", "1"],
    );
    publish_lines_with(
        port,
        RADAR_TOPIC,
        &radar[350..400],
        &["-V", "mqttv311", "-q", "0"],
    );
    let v5 = paho_publish(port, "5", 1, RADAR_TOPIC, &radar[400..500]);
    assert_eq!(v5.connack, 0);
    assert_eq!(v5.published, 100, "every PUBACK came: {v5:?}");
    assert!(v5.failed_acks.is_empty(), "{v5:?}");

    // The RSM captures: paho at both versions and QoS levels.
    let a = paho_publish(port, "5", 0, RSM_TOPIC, &rsm[..3]);
    let b = paho_publish(port, "3.1.1", 1, RSM_TOPIC, &rsm[3..6]);
    let d = paho_publish(port, "5", 1, RSM_TOPIC, &rsm[6..]);
    for (r, n) in [(&a, 3), (&b, 3), (&d, 3)] {
        assert_eq!((r.connack, r.published), (0, n), "{r:?}");
        assert!(r.failed_acks.is_empty(), "{r:?}");
    }

    c.wait_processed((radar.len() + rsm.len()) as u64, Duration::from_secs(180));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
    assert_dataset_is_clean(&ws.data());
    assert_eq!(rows(&ws.data(), "radar_target"), RADAR_ROWS);
    assert_eq!(rows(&ws.data(), "rsm_participant"), RSM_ROWS);
    assert_eq!(rows(&ws.data(), "_quarantine"), 0);
}

/// `mosquitto_pub -V mqttv5 -q 1` used to wait forever for a CONNACK on the default listener;
/// now each call ends with its PUBACK (the helper fails the test after a bounded time).
#[test]
fn an_mqtt5_publisher_gets_its_puback_and_exits() {
    let ws = Workspace::new();
    let (mut c, port) = collector(&ws, "");
    let rsm = rsm_lines();
    for line in &rsm {
        publish_bytes_with(
            port,
            RSM_TOPIC,
            line.as_bytes(),
            &["-V", "mqttv5", "-q", "1"],
        );
    }
    c.wait_processed(rsm.len() as u64, Duration::from_secs(60));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
    assert_eq!(rows(&ws.data(), "rsm_participant"), RSM_ROWS);
}

/// A payload of exactly `embedded.max_payload_bytes` passes the MQTT 5 path and gets its PUBACK;
/// the decoder's own, smaller limit then quarantines it as `too_large`.
#[test]
fn an_mqtt5_payload_at_the_embedded_limit_reaches_the_collector() {
    let ws = Workspace::new();
    let limit = 2 * 1024 * 1024;
    let (mut c, port) = collector(
        &ws,
        &format!("[embedded]\nmax_payload_bytes = {limit}\n[decode]\nmax_payload_bytes = 65536\n"),
    );
    let mut payload = br#"{"timeStamp":1664423415000,"pad":""#.to_vec();
    payload.resize(limit - 2, b'x');
    payload.extend_from_slice(br#""}"#);
    assert_eq!(payload.len(), limit);
    publish_bytes_with(port, RADAR_TOPIC, &payload, &["-V", "mqttv5", "-q", "1"]);
    c.wait_processed(1, Duration::from_secs(60));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
    let (q, _) = read_table(&ws.data(), "_quarantine");
    let q = q.expect("a quarantine row");
    assert_eq!(q.num_rows(), 1);
    let reason = q.column_by_name("reason").unwrap().as_string::<i32>();
    assert_eq!(reason.value(0), "too_large");
    let topic = q.column_by_name("topic").unwrap().as_string::<i32>();
    assert_eq!(topic.value(0), RADAR_TOPIC);
}

/// `embedded.listen_v5` still works (as a second address that takes both versions), and bytes
/// that are not an MQTT CONNECT get the connection closed without disturbing anyone else.
#[test]
fn listen_v5_is_a_second_address_and_garbage_is_closed() {
    let ws = Workspace::new();
    let second = free_port();
    let (mut c, port) = collector(
        &ws,
        &format!("[embedded]\nlisten_v5 = \"127.0.0.1:{second}\"\n"),
    );

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "closed without an answer");

    let rsm = rsm_lines();
    publish_lines_with(second, RSM_TOPIC, &rsm[..4], &["-V", "mqttv5", "-q", "1"]);
    publish_lines_with(
        second,
        RSM_TOPIC,
        &rsm[4..7],
        &["-V", "mqttv311", "-q", "1"],
    );
    publish_lines_with(port, RSM_TOPIC, &rsm[7..], &["-V", "mqttv5", "-q", "1"]);
    c.wait_processed(rsm.len() as u64, Duration::from_secs(60));
    let status = c.stop();
    assert!(status.success(), "exit {status:?}:\n{}", c.log_text());
    assert_eq!(rows(&ws.data(), "rsm_participant"), RSM_ROWS);
}
