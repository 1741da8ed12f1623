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
//! It and `common/` use only the library API that the hot path had before the MAP kinds, so
//! copied into an older checkout they measure it for an A/B.

mod common;

use v2x_collector::config::Config;
use v2x_collector::decode::{Decoder, Raw};
use v2x_collector::sink::{FileSettings, parquet_file};
use v2x_collector::wal::Wal;

use common::{RECV_US, bsm, decode_all, decoder, rsm_payloads};

const ROUNDS: usize = 3;
const BSM_TOPIC: &str = "V2X/OBU/car-1/BSM/UP";
const RSM_TOPIC: &str = "V2X/RSU/R328328/RSM/UP";

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
