//! Crash safety against a real mosquitto and the real binary: `kill -9` at random moments and
//! aborts at each step of finalizing. The published messages are the ground truth; the check
//! is 0 missing and 0 duplicate rows.
//!
//! Short versions run in `cargo test`. The full run from RELIABILITY.md (100,000 messages, 20
//! kills) is:
//!
//! ```sh
//! V2X_CRASH_MESSAGES=100000 V2X_CRASH_KILLS=20 cargo test --release --test crash -- --nocapture kill_9
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let n = env_or("V2X_CRASH_MESSAGES", 20_000);
    let kills = env_or("V2X_CRASH_KILLS", 5);
    let broker = Mosquitto::start();
    let ws = Workspace::new();
    // First start creates the persistent session, so nothing published later is missed.
    let mut c = ws.start(&config(&broker), &[]);
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        publish_lines(port, TOPIC, &messages(0..n));
    });
    // A small deterministic generator for the kill moments.
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    for k in 0..kills {
        let wait = Duration::from_millis(150 + next() % 1200);
        std::thread::sleep(wait);
        c.kill9();
        eprintln!("kill {} after {:?}", k + 1, wait);
        c = ws.start(&config(&broker), &[]);
    }
    drop(c);
    publisher.join().unwrap();
    drain(&ws, &broker);
    let (missing, duplicates) = assert_exactly_once(&ws.data(), n);
    if std::env::var_os("V2X_TEST_KEEP").is_some() {
        eprintln!("keeping {}", ws.path().display());
        std::mem::forget(ws);
    }
    println!(
        "crash run: {n} messages, {kills} kills, {missing} missing, {duplicates} duplicate rows, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((missing, duplicates), (0, 0));
}

/// Each finalize step, crashed with `abort()` through a fail point, then restarted.
#[cfg(feature = "failpoints")]
#[test]
fn aborting_at_each_finalize_step_loses_nothing() {
    let runs = env_or("V2X_FAILPOINT_RUNS", 2);
    for point in [
        "before_wal_fsync",
        "after_wal_fsync",
        "mid_parquet",
        "after_manifest",
        "after_rename",
        "before_checkpoint",
    ] {
        for run in 0..runs {
            let broker = Mosquitto::start();
            let ws = Workspace::new();
            let n = 600;
            let mut c = ws.start_with_env(&config(&broker), &[], &[("V2X_FAILPOINT", point)]);
            publish_lines(broker.port, TOPIC, &messages(0..n / 2));
            let exited = c.wait_exit(Duration::from_secs(60));
            assert!(
                exited.is_some_and(|s| !s.success()),
                "{point}: the collector did not stop at the fail point:\n{}",
                c.log_text()
            );
            publish_lines(broker.port, TOPIC, &messages(n / 2..n));
            drain(&ws, &broker);
            let (missing, duplicates) = assert_exactly_once(&ws.data(), n);
            assert_eq!((missing, duplicates), (0, 0), "{point} run {run}");
        }
    }
}
