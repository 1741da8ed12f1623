//! The hot path's workloads as fixed amounts of work, for counting instructions.
//!
//! Wall-clock figures on this shared two-core machine swing by 20 % between runs; callgrind's
//! instruction counts do not (the same binary and input give the same count). Each workload
//! runs once to warm the builders up, then `ROUNDS` times inside a function whose name starts
//! with `measured_`, so that only those are counted:
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect='*measured_*' \
//!     target/release/deps/instructions-<hash> bsm      # or rsm, wal_parquet
//! ```
//!
//! callgrind prints `Collected : N`; divide by `ROUNDS` x the messages of one round. Run
//! without valgrind, it prints the figure it counts per round as a check that it did the work.
//! The file uses only the library API that the hot path had before the MAP kinds, so the same
//! file measures an older checkout for an A/B.

use std::hint::black_box;

use v2x_collector::config::Config;
use v2x_collector::decode::{Decoder, Outcome, Raw};
use v2x_collector::pipeline::build_decoder;
use v2x_collector::sink::{FileSettings, parquet_file};
use v2x_collector::wal::Wal;

const RECV_US: i64 = 1_764_320_444_000_000; // 2025-11-28T09:00:44Z
const ROUNDS: usize = 3;
const BSM_TOPIC: &str = "V2X/OBU/car-1/BSM/UP";
const RSM_TOPIC: &str = "V2X/RSU/R328328/RSM/UP";

fn decoder() -> Decoder {
    build_decoder(&Config::default()).expect("built-in schemas")
}

/// The CSAE integer BSM of `hot_path`, about 330 bytes, varied per message.
fn bsm(i: u32) -> Vec<u8> {
    format!(
        r#"{{"msgCnt":{},"id":"A1B2C3D4{:08X}","secMark":{},"pos":{{"lat":{},"long":{},"elev":512}},"transmission":2,"speed":{},"heading":{},"angle":3,"accelSet":{{"long":{},"lat":0,"vert":0,"yaw":12}},"brakes":{{"brakePadel":1}},"size":{{"width":180,"length":460,"height":30}},"vehicleClass":{{"classification":10}}}}"#,
        i % 128,
        i % 997,
        (i * 100) % 60_000,
        399_000_000 + i % 10_000,
        1_165_000_000 + i % 10_000,
        500 + i % 300,
        (i * 7) % 28_800,
        (i % 300) as i32 - 150,
    )
    .into_bytes()
}

fn rsm_payloads() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/openv2x-payloads/derived_rsm_std_payloads.ndjson"
    );
    std::fs::read_to_string(path)
        .expect("../shared/data beside the repository")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// Decodes every payload and finishes the builders; returns the rows filed.
fn decode_all(d: &mut Decoder, topic: &str, payloads: &[Vec<u8>]) -> usize {
    let mut rows = 0;
    for p in payloads {
        if let Outcome::Filed { rows: n, .. } = d.decode(topic, p, RECV_US) {
            rows += n;
        }
    }
    black_box(d.take_batches());
    rows
}

#[inline(never)]
fn measured_decode(d: &mut Decoder, topic: &str, payloads: &[Vec<u8>]) -> usize {
    (0..ROUNDS).map(|_| decode_all(d, topic, payloads)).sum()
}

/// Every message appended to the WAL and decoded, one fsync per group, then one committed
/// zstd file per table, as `run` does it.
fn wal_parquet_round(
    d: &mut Decoder,
    wal: &mut Wal,
    dir: &std::path::Path,
    payloads: &[Vec<u8>],
    n: usize,
) -> u64 {
    let group = Config::default().decode.batch_messages;
    let settings = FileSettings {
        row_group_rows: 128 * 1024,
        zstd_level: 1,
    };
    for (i, p) in payloads.iter().enumerate() {
        wal.append(RECV_US, 1, false, BSM_TOPIC, p).unwrap();
        d.decode_raw(&Raw::new(BSM_TOPIC, p, RECV_US));
        if (i + 1) % group == 0 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    let mut tables: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for b in d.take_batches() {
        tables.entry(b.table.to_string()).or_default().push(b.batch);
    }
    let mut bytes = 0;
    for (table, batches) in &tables {
        // Spelled out rather than `sink::sort_columns`, which older checkouts lack.
        let sort: &[&str] = if table == "_messages" {
            &["source_id", "recv_ts"]
        } else {
            &["source_id", "event_ts"]
        };
        let name = format!("bench-{table}-{n:020}.parquet");
        bytes += parquet_file::commit(dir, &name, batches, sort, None, &settings)
            .unwrap()
            .bytes;
    }
    bytes
}

#[inline(never)]
fn measured_wal_parquet(
    d: &mut Decoder,
    wal: &mut Wal,
    dir: &std::path::Path,
    payloads: &[Vec<u8>],
) -> u64 {
    (1..=ROUNDS)
        .map(|n| wal_parquet_round(d, wal, dir, payloads, n))
        .sum()
}

fn main() {
    let Some(workload) = std::env::args().skip(1).find(|a| !a.starts_with('-')) else {
        // `cargo bench` runs every target with `--bench` and no workload: nothing to count.
        println!("instructions: name a workload (bsm, rsm, wal_parquet); see the file's doc");
        return;
    };
    let mut d = decoder();
    match workload.as_str() {
        "bsm" => {
            let bsms: Vec<Vec<u8>> = (0..10_000).map(bsm).collect();
            decode_all(&mut d, BSM_TOPIC, &bsms);
            let rows = measured_decode(&mut d, BSM_TOPIC, &bsms);
            println!("bsm: {} messages, {rows} rows", ROUNDS * bsms.len());
        }
        "rsm" => {
            let rsms = rsm_payloads();
            decode_all(&mut d, RSM_TOPIC, &rsms);
            let rows = measured_decode(&mut d, RSM_TOPIC, &rsms);
            println!("rsm: {} messages, {rows} rows", ROUNDS * rsms.len());
        }
        "wal_parquet" => {
            let dir = tempfile::tempdir().unwrap();
            let wal_dir = tempfile::tempdir().unwrap();
            let mut wal = Wal::open(wal_dir.path(), 0, 64 << 20).unwrap();
            let bsms: Vec<Vec<u8>> = (0..10_000).map(bsm).collect();
            wal_parquet_round(&mut d, &mut wal, dir.path(), &bsms, 0);
            let bytes = measured_wal_parquet(&mut d, &mut wal, dir.path(), &bsms);
            println!(
                "wal_parquet: {} messages, {bytes} Parquet bytes",
                ROUNDS * bsms.len()
            );
        }
        other => {
            eprintln!("instructions: unknown workload {other:?} (bsm, rsm, wal_parquet)");
            std::process::exit(2);
        }
    }
}
