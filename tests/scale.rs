//! Horizontal scale: several collectors share one MQTT subscription (`mqtt.shared_group`) and
//! write into one dataset with no coordination; one is killed and restarted mid-run.
//!
//! `V2X_SHARE_MESSAGES` (default 100,000) sets the traffic.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn start(ws: &Workspace, broker: &Mosquitto, data: &Path, id: &str) -> Collector {
    let extra = config(broker).replacen("[mqtt]\n", "[mqtt]\nshared_group = \"zone\"\n", 1);
    ws.start(
        &extra,
        &["--collector-id", id, "--data", data.to_str().unwrap()],
    )
}

#[test]
fn three_collectors_share_a_subscription_and_lose_nothing() {
    let n = env_or("V2X_SHARE_MESSAGES", 100_000);
    let broker = Mosquitto::start();
    let shared = tempfile::tempdir().unwrap();
    let data = shared.path().join("data");
    let spaces: Vec<Workspace> = (0..3).map(|_| Workspace::new()).collect();
    // One after the other: each writes the kinds' _schema.json at start.
    let mut collectors: Vec<Collector> = spaces
        .iter()
        .enumerate()
        .map(|(i, ws)| start(ws, &broker, &data, &format!("c{}", i + 1)))
        .collect();

    let lines = messages(0..n);
    let half = n / 2;
    publish_lines(broker.port, TOPIC, &lines[..half]);
    // A crash of one member mid-run; it comes back with the same id, WAL and session.
    collectors[1].kill9();
    publish_lines(broker.port, TOPIC, &lines[half..half + n / 4]);
    collectors[1] = start(&spaces[1], &broker, &data, "c2");
    publish_lines(broker.port, TOPIC, &lines[half + n / 4..]);

    // Bounded wait until every message is in a committed file somewhere.
    let started = Instant::now();
    loop {
        let got = rows_by_id(&data).len();
        if got >= n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{got} of {n} messages filed after 180 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut shares = Vec::new();
    for c in &mut collectors {
        assert!(c.stop().success(), "{}", c.log_text());
        shares.push(c.stats().and_then(|s| s["decoded"].as_u64()).unwrap_or(0));
    }
    let (missing, duplicates) = assert_exactly_once(&data, n);
    println!(
        "shared subscription: {n} messages, decoded per collector (last run) {shares:?}, {missing} missing, {duplicates} duplicate rows"
    );
    assert_eq!((missing, duplicates), (0, 0));
    // Every member took part.
    for id in ["c1", "c2", "c3"] {
        let mine = all_files(&data)
            .iter()
            .filter(|f| {
                f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{id}-"))
            })
            .count();
        assert!(mine > 0, "collector {id} wrote no file");
    }
}
