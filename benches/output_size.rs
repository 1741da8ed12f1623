//! Output size for the simulator's traffic (PRODUCT.md: Parquet <= 10 % of the raw JSON).
//!
//! `cargo bench --bench output_size`. Printed, not timed: it is its own target so that the
//! timed hot path (`--bench hot_path`) and its profiles hold nothing else.

mod common;

use v2x_collector::decode::{Outcome, Raw};
use v2x_collector::sim::zone::Zone;
use v2x_collector::sink::{FileSettings, parquet_file};

use common::{RECV_US, decoder};

/// Five minutes of the default zone (4 RSUs, 10 vehicles, 10 Hz), one file per kind as the
/// default `writer.max_age_s` (300 s) rotation makes them. Printed, not timed.
fn simulator_output_size() {
    let start_ms = RECV_US / 1000;
    let mut zone = Zone::new(1, 4, 10, 10.0, start_ms);
    let mut d = decoder();
    let mut json = std::collections::BTreeMap::<String, (u64, u64)>::new();
    let mut messages = 0u64;
    for n in 0..3000u64 {
        let recv_us = RECV_US + n as i64 * 100_000;
        for m in zone.tick(n) {
            messages += 1;
            let raw = Raw::new(&m.topic, &m.payload, recv_us);
            if let Outcome::Filed { kind, .. } = d.decode_raw(&raw) {
                let name = d.kinds()[kind].schema.kind.clone();
                let e = json.entry(name).or_default();
                e.0 += m.payload.len() as u64;
                e.1 += 1;
            } else {
                panic!("simulated message quarantined: {}", m.topic);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let settings = FileSettings {
        row_group_rows: 128 * 1024,
        zstd_level: 1,
    };
    let mut by_kind = std::collections::BTreeMap::<String, Vec<_>>::new();
    for b in d.take_batches() {
        by_kind
            .entry(b.table.to_string())
            .or_default()
            .push(b.batch);
    }
    let (mut json_total, mut parquet_total) = (0u64, 0u64);
    println!("simulator traffic, 5 minutes of 4 RSUs and 10 vehicles: {messages} messages");
    for (kind, batches) in &by_kind {
        let name = format!("{kind}.parquet");
        let index = kind == v2x_collector::message_index::TABLE;
        let sort = v2x_collector::sink::sort_columns(kind);
        let done = parquet_file::commit(dir.path(), &name, batches, sort, None, &settings).unwrap();
        if index {
            // The message index has no JSON of its own: its bytes count against the total.
            parquet_total += done.bytes;
            println!(
                "  {kind:<16} {messages:>7} rows (one per message)   -> {:>9} Parquet bytes",
                done.bytes
            );
            continue;
        }
        let (bytes, count) = json.get(kind).copied().unwrap_or_default();
        json_total += bytes;
        parquet_total += done.bytes;
        println!(
            "  {kind:<16} {count:>7} messages {bytes:>11} JSON bytes -> {:>9} Parquet bytes ({:.1} %)",
            done.bytes,
            100.0 * done.bytes as f64 / bytes.max(1) as f64
        );
    }
    println!(
        "  total {json_total} JSON bytes -> {parquet_total} Parquet bytes ({:.1} %; target <= 10 %)",
        100.0 * parquet_total as f64 / json_total.max(1) as f64
    );
    // V2X_BENCH_KEEP=DIR keeps the files, to look at their column sizes.
    if let Ok(keep) = std::env::var("V2X_BENCH_KEEP") {
        std::fs::create_dir_all(&keep).unwrap();
        for kind in by_kind.keys() {
            let name = format!("{kind}.parquet");
            std::fs::copy(
                dir.path().join(&name),
                std::path::Path::new(&keep).join(&name),
            )
            .unwrap();
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    simulator_output_size();
}
