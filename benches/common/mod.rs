//! What the benches share: the receive time, the decoder, and the payloads, so that every
//! bench (and an A/B against an older checkout, which copies this folder) measures the same
//! input. Uses only the library API that the hot path had before the MAP kinds.
#![allow(dead_code)] // each bench uses its part

use std::hint::black_box;

use v2x_collector::config::Config;
use v2x_collector::decode::{Decoder, Outcome};
use v2x_collector::pipeline::build_decoder;

pub const RECV_US: i64 = 1_764_320_444_000_000; // 2025-11-28T09:00:44Z

pub fn decoder() -> Decoder {
    build_decoder(&Config::default()).expect("built-in schemas")
}

/// A CSAE integer BSM of about 330 bytes, varied per message like real traffic.
pub fn bsm(i: u32) -> Vec<u8> {
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

pub fn rsm_payloads() -> Vec<Vec<u8>> {
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

pub fn decode_all(d: &mut Decoder, topic: &str, payloads: &[Vec<u8>]) -> usize {
    let mut rows = 0;
    for p in payloads {
        if let Outcome::Filed { rows: n, .. } = d.decode(topic, p, RECV_US) {
            rows += n;
        }
    }
    black_box(d.take_batches());
    rows
}
