//! WAL framing and recovery: the intact prefix, whatever happened to the bytes after it.

use super::*;
use proptest::prelude::*;

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            lsn: 100 + i as u64,
            recv_us: 1_764_320_444_000_000 + i as i64,
            qos: (i % 2) as u8,
            dup: i % 3 == 0,
            topic: format!("V2X/RSU/R{i}/RSM/UP"),
            payload: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 7 % 50)).into_bytes(),
        })
        .collect()
}

fn encode_all(rs: &[Record]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for r in rs {
        encode(
            &mut out, r.lsn, r.recv_us, r.qos, r.dup, &r.topic, &r.payload,
        );
        ends.push(out.len());
    }
    (out, ends)
}

#[test]
fn round_trip() {
    let rs = records(20);
    let (bytes, _) = encode_all(&rs);
    let scan = decode_segment(&bytes);
    assert_eq!(scan.records, rs);
    assert_eq!(scan.skipped_bytes, 0);
    assert!(scan.damage.is_none());
}

#[test]
fn truncation_at_every_offset_keeps_exactly_the_whole_records() {
    let rs = records(12);
    let (bytes, ends) = encode_all(&rs);
    for cut in 0..=bytes.len() {
        let scan = decode_segment(&bytes[..cut]);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(scan.records, rs[..whole], "cut at {cut}");
        let kept = if whole == 0 { 0 } else { ends[whole - 1] };
        assert_eq!(scan.skipped_bytes as usize, cut - kept, "cut at {cut}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A flipped bit anywhere: recovery returns exactly the records before the damaged one.
    #[test]
    fn a_flipped_bit_keeps_the_prefix(n in 1usize..16, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let rs = records(n);
        let (mut bytes, ends) = encode_all(&rs);
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let damaged = ends.iter().position(|&e| i < e).unwrap();
        let scan = decode_segment(&bytes);
        prop_assert_eq!(&scan.records[..], &rs[..damaged]);
        prop_assert!(scan.damage.is_some());
    }

    /// Random garbage appended after good records (a torn write of junk) never panics and
    /// never loses the good records.
    #[test]
    fn garbage_tail_is_skipped(n in 0usize..8, tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let rs = records(n);
        let (mut bytes, _) = encode_all(&rs);
        let good = bytes.len();
        bytes.extend_from_slice(&tail);
        let scan = decode_segment(&bytes);
        prop_assert_eq!(&scan.records[..n.min(scan.records.len())], &rs[..n.min(scan.records.len())]);
        prop_assert!(scan.records.len() >= n);
        prop_assert!(scan.skipped_bytes as usize <= bytes.len() - good);
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_segment(&bytes);
    }
}

#[test]
fn segments_rotate_and_checkpoint_deletes_only_what_is_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), 0, 4096).unwrap();
    for i in 0..200 {
        wal.append(i, 1, false, "t", &[b'x'; 100]).unwrap();
    }
    wal.sync().unwrap();
    let segs = segments(dir.path()).unwrap();
    assert!(segs.len() > 3, "{segs:?}");
    let all: Vec<Record> = segs
        .iter()
        .flat_map(|(_, p)| read_segment(p).unwrap().records)
        .collect();
    assert_eq!(all.len(), 200);
    assert!(all.iter().enumerate().all(|(i, r)| r.lsn == i as u64));
    // Checkpoint in the middle of the third segment: the first two go.
    let third = segs[2].0;
    let deleted = write_checkpoint(dir.path(), third + 1).unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(read_checkpoint(dir.path()).unwrap(), third + 1);
    let left = segments(dir.path()).unwrap();
    assert_eq!(left[0].0, third);
    // The active segment is never deleted, whatever the checkpoint.
    write_checkpoint(dir.path(), u64::MAX).unwrap();
    assert_eq!(segments(dir.path()).unwrap().len(), 1);
}
