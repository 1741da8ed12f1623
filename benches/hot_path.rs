//! The in-process hot path: payload bytes -> decoded Arrow rows -> committed Parquet.
//!
//! `cargo bench --bench hot_path`. Figures are per core (one thread). BENCHMARKS.md records
//! them with the machine they came from.

mod common;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use v2x_collector::config::Config;
use v2x_collector::decode::{Decoder, Raw};
use v2x_collector::sink::{FileSettings, parquet_file};
use v2x_collector::wal::Wal;

use common::{RECV_US, bsm, decode_all, decoder, rsm_payloads};

/// Commits everything the decoder holds as one sorted, zstd, fsynced file per table (the
/// kind's rows, and the message index as `run` writes it beside them); returns their bytes.
fn commit_all(d: &mut Decoder, dir: &std::path::Path, n: u64, settings: &FileSettings) -> u64 {
    let mut tables: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for b in d.take_batches() {
        tables.entry(b.table.to_string()).or_default().push(b.batch);
    }
    let mut bytes = 0;
    for (table, batches) in &tables {
        bytes += parquet_file::commit(
            dir,
            &format!("bench-{table}-{n:020}.parquet"),
            batches,
            v2x_collector::sink::sort_columns(table),
            None,
            settings,
        )
        .unwrap()
        .bytes;
    }
    bytes
}

fn bench(c: &mut Criterion) {
    // As `run` starts.
    assert!(v2x_collector::heap::keep_freed_buffers());
    let bsms: Vec<Vec<u8>> = (0..10_000).map(bsm).collect();
    let bsm_bytes: usize = bsms.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("decode");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(bsms.len() as u64));
    g.bench_function("bsm_messages", |b| {
        let mut d = decoder();
        b.iter(|| decode_all(&mut d, "V2X/OBU/car-1/BSM/UP", &bsms))
    });
    let rsms = rsm_payloads();
    let rows = decode_all(&mut decoder(), "V2X/RSU/R328328/RSM/UP", &rsms);
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("rsm_participant_rows", |b| {
        let mut d = decoder();
        b.iter(|| decode_all(&mut d, "V2X/RSU/R328328/RSM/UP", &rsms))
    });
    g.finish();

    // Decode plus a committed (sorted, zstd, fsynced) Parquet file.
    let mut g = c.benchmark_group("decode_to_parquet");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(bsms.len() as u64));
    let dir = tempfile::tempdir().unwrap();
    let settings = FileSettings {
        row_group_rows: 128 * 1024,
        zstd_level: 1,
    };
    let mut n = 0u64;
    let mut parquet_bytes = 0u64;
    g.bench_function("bsm_messages", |b| {
        let mut d = decoder();
        b.iter(|| {
            for p in &bsms {
                d.decode("V2X/OBU/car-1/BSM/UP", p, RECV_US);
            }
            n += 1;
            parquet_bytes = commit_all(&mut d, dir.path(), n, &settings);
        })
    });
    g.finish();

    // The whole in-process path as `run` does it: every message appended to the WAL and
    // decoded, one fsync per group of `decode.batch_messages`, then one committed file.
    let mut g = c.benchmark_group("wal_decode_parquet");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(bsms.len() as u64));
    let wal_dir = tempfile::tempdir().unwrap();
    let group = Config::default().decode.batch_messages;
    g.bench_function("bsm_messages", |b| {
        let mut d = decoder();
        let mut wal = Wal::open(wal_dir.path(), 0, 64 << 20).unwrap();
        let topic = "V2X/OBU/car-1/BSM/UP";
        b.iter(|| {
            for (i, p) in bsms.iter().enumerate() {
                wal.append(RECV_US, 1, false, topic, p).unwrap();
                d.decode_raw(&Raw::new(topic, p, RECV_US));
                if (i + 1) % group == 0 {
                    wal.sync().unwrap();
                }
            }
            wal.sync().unwrap();
            n += 1;
            commit_all(&mut d, dir.path(), n, &settings);
        })
    });
    g.finish();
    if parquet_bytes > 0 {
        println!(
            "BSM: {} raw JSON bytes per 10,000 messages -> {} Parquet bytes ({:.1} %)",
            bsm_bytes,
            parquet_bytes,
            100.0 * parquet_bytes as f64 / bsm_bytes as f64
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
