//! Faults outside the collector: broker restarts, a lost session, a broker queue overflow
//! while the collector is away, and oversized payloads. Real mosquitto, real binary.

mod common;

use std::time::Duration;

use common::*;

fn count_in_log(c: &Collector, needle: &str) -> usize {
    c.log_text().matches(needle).count()
}

#[test]
fn broker_restarts_with_persistence_lose_nothing() {
    let mut broker = Mosquitto::start_with(
        "persistence true\npersistence_location {dir}/\nautosave_interval 1\nautosave_on_changes true",
    );
    let ws = Workspace::new();
    let c = ws.start(&config(&broker), &[]);
    let per_round = 500;
    let mut sent = 0;
    for (round, kill) in [false, true, false, true].into_iter().enumerate() {
        publish_lines(broker.port, TOPIC, &messages(sent..sent + per_round));
        sent += per_round;
        if kill {
            // SIGKILL: what the broker had not saved is its loss, not ours; let the collector
            // take this round first so the check is about the collector.
            c.wait_processed(sent as u64, Duration::from_secs(60));
        }
        broker.restart(kill);
        c.wait_log_count(
            "subscriptions acknowledged",
            round + 2,
            Duration::from_secs(30),
        );
    }
    publish_lines(broker.port, TOPIC, &messages(sent..sent + per_round));
    sent += per_round;
    drop(c);
    drain(&ws, &broker);
    let (missing, duplicates) = assert_exactly_once(&ws.data(), sent);
    assert_eq!((missing, duplicates), (0, 0));
}

#[test]
fn a_lost_session_is_reported() {
    // Without persistence a restarted mosquitto has forgotten our session.
    let mut broker = Mosquitto::start();
    let ws = Workspace::new();
    let mut c = ws.start(&config(&broker), &[]);
    broker.restart(false);
    c.wait_log("reconnected without a session", Duration::from_secs(30));
    c.wait_log_count("subscriptions acknowledged", 2, Duration::from_secs(30));
    // It resubscribed: traffic still flows.
    publish_lines(broker.port, TOPIC, &messages(0..10));
    c.wait_processed(10, Duration::from_secs(30));
    assert!(c.stop().success());
}

#[test]
fn queue_overflow_while_offline_is_reported_per_source() {
    let broker = Mosquitto::start_with("max_queued_messages 100");
    let ws = Workspace::new();
    let mut c = ws.start(&config(&broker), &[]);
    assert!(c.stop().success());
    // 150 messages from car-1 while the collector is away: the broker keeps 100, drops 50.
    publish_lines(broker.port, TOPIC, &messages(0..150));
    let mut c = ws.start(&config(&broker), &[]);
    c.wait_processed(100, Duration::from_secs(30));
    // The next message shows the jump in msgCnt: 99 -> 150 % 128.
    publish_lines(broker.port, TOPIC, &messages(150..151));
    c.wait_processed(101, Duration::from_secs(30));
    c.wait_log("message counter jumped", Duration::from_secs(10));
    let gap: serde_json::Value = c
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("message counter jumped"))
        })
        .unwrap();
    // Kind and source come from the event's span.
    assert_eq!(gap["span"]["source_id"], "car-1", "{gap}");
    assert_eq!(gap["span"]["kind"], "bsm", "{gap}");
    assert_eq!(gap["fields"]["missed"], 50);
    assert!(c.stop().success());
    assert_eq!(c.stats().unwrap()["gap_messages"], 50);
}

#[test]
fn oversized_payloads_do_not_cause_a_reconnect_loop() {
    for protocol in ["5", "3.1.1"] {
        let broker = Mosquitto::start();
        let ws = Workspace::new();
        let mut c = ws.start(
            &format!(
                "[mqtt]\nbroker = \"{}\"\nprotocol = \"{protocol}\"\nmax_packet_bytes = 1048576\n[decode]\nmax_payload_bytes = 100000\n",
                broker.url()
            ),
            &[],
        );
        // Over the decoder's limit (quarantined) and, for MQTT 5, over the packet limit we
        // announce (the broker must not send it).
        publish_bytes(broker.port, "V2X/OBU/car-1/BSM/UP", &vec![b'x'; 500_000]);
        if protocol == "5" {
            publish_bytes(broker.port, "V2X/OBU/car-1/BSM/UP", &vec![b'x'; 2_000_000]);
        }
        publish_lines(broker.port, TOPIC, &messages(0..20));
        c.wait_processed(21, Duration::from_secs(30));
        assert_eq!(
            count_in_log(&c, "connected to MQTT broker"),
            1,
            "protocol {protocol}: reconnected:\n{}",
            c.log_text()
        );
        assert!(c.stop().success());
        let (q, _) = read_table(&ws.data(), "_quarantine");
        let q = q.expect("quarantine rows");
        assert_eq!(q.num_rows(), 1, "protocol {protocol}");
        let (missing, duplicates) = assert_exactly_once(&ws.data(), 20);
        assert_eq!((missing, duplicates), (0, 0));
    }
}

/// Unmounts a tmpfs when the test ends, however it ends.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_acks_and_recovers_by_itself() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    // The WAL lives on a 2 MiB tmpfs (needs root, as CI is; elsewhere the test says so and
    // checks nothing).
    let Some(_fs) = Tmpfs::mount(&ws.path().join("wal"), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let extra = format!("{}\n[wal]\nsegment_bytes = 65536\n", config(&broker));
    let c = ws.start(&extra, &[]);
    publish_lines(broker.port, TOPIC, &messages(0..200));
    c.wait_processed(200, Duration::from_secs(30));
    // Fill the filesystem, leaving almost nothing.
    let ballast = ws.path().join("wal/ballast");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4096", "count=1000"])
        .arg(format!("of={}", ballast.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let acked_before = c.stats().unwrap()["acked"].as_u64().unwrap();
    publish_lines(broker.port, TOPIC, &messages(200..2200));
    c.wait_log("write-ahead log failed", Duration::from_secs(30));
    // While the log cannot be written nothing more is acknowledged.
    std::thread::sleep(Duration::from_secs(1));
    let acked_during = c.stats().unwrap()["acked"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.stats().unwrap()["acked"].as_u64().unwrap(), acked_during);
    assert!(
        acked_during < acked_before + 2000,
        "acked everything despite a full disk"
    );
    assert!(c.child.is_some(), "the collector must not crash");
    // Space returns: it resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    c.wait_log(
        "write-ahead log recovered; acknowledging again",
        Duration::from_secs(30),
    );
    drop(c);
    drain(&ws, &broker);
    let (missing, duplicates) = assert_exactly_once(&ws.data(), 2200);
    assert_eq!((missing, duplicates), (0, 0));
}

#[test]
fn deploy_mosquitto_config_starts() {
    // The shipped config, on a free port with its state in a scratch directory.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/mosquitto.conf"
    ))
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let passwd = scratch.path().join("passwd");
    std::fs::write(&passwd, "").unwrap();
    let extra: String = text
        .lines()
        .filter(|l| !l.starts_with("listener") && !l.starts_with("allow_anonymous"))
        .map(|l| {
            if l.starts_with("persistence_location") {
                "persistence_location {dir}/".to_string()
            } else if l.starts_with("password_file") {
                format!("password_file {}", passwd.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let broker = Mosquitto::start_with(&extra);
    // It listens; the collector connects and subscribes to it.
    let ws = Workspace::new();
    let mut c = ws.start(&format!("[mqtt]\nbroker = \"{}\"\n", broker.url()), &[]);
    assert!(c.stop().success());
}

#[test]
fn the_wal_bound_pauses_acks_commits_and_resumes() {
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    // Files would stay open for an hour; the 256 KiB bound forces commits instead.
    let extra = format!(
        "[mqtt]\nbroker = \"{}\"\n[writer]\nmax_age_s = 3600\n[wal]\nsegment_bytes = 65536\nmax_bytes = 262144\n",
        broker.url()
    );
    let c = ws.start(&extra, &[]);
    let n = 6000;
    publish_lines(broker.port, TOPIC, &messages(0..n));
    c.wait_processed(n as u64, Duration::from_secs(60));
    c.wait_log("write-ahead log at its bound", Duration::from_secs(10));
    c.wait_log(
        "write-ahead log below its bound again",
        Duration::from_secs(30),
    );
    let wal_bytes: u64 = std::fs::read_dir(ws.path().join("wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        wal_bytes < 262_144 + 65_536 * 2,
        "WAL grew to {wal_bytes} bytes"
    );
    drop(c);
    drain(&ws, &broker);
    let (missing, duplicates) = assert_exactly_once(&ws.data(), n);
    assert_eq!((missing, duplicates), (0, 0));
}
