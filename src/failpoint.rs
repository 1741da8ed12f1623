//! Crash points for the finalize tests. With the `failpoints` feature, `V2X_FAILPOINT=<name>`
//! makes the process abort (as abruptly as `kill -9`) the first time it reaches that point, and
//! `V2X_FAILPOINT=<name>#<n>` the n-th time; without the feature, `hit` compiles to nothing.

/// The points: `before_wal_fsync`, `after_wal_fsync`, `mid_parquet`, `after_manifest`,
/// `after_rename`, `before_checkpoint`; for `compact` (see `dataset::compact`):
/// `compact_mid_output`, `compact_before_manifest`, `compact_after_manifest`,
/// `compact_after_exchange`, `compact_mid_cleanup`, `compact_before_manifest_removal`,
/// `compact_after_manifest_removal`; for `reprocess` (see `dataset::reprocess`; it writes its
/// files through `mid_parquet` too): `reprocess_before_manifest`, `reprocess_after_manifest`,
/// `reprocess_after_rename`, `reprocess_before_ledger`, `reprocess_after_ledger`.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
        static HITS: AtomicU64 = AtomicU64::new(0);
        let armed = ARMED.get_or_init(|| {
            let v = std::env::var("V2X_FAILPOINT").ok()?;
            Some(match v.split_once('#') {
                Some((point, n)) => (point.to_string(), n.parse().unwrap_or(1)),
                None => (v, 1),
            })
        });
        if let Some((point, at)) = armed
            && point == name
            && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *at
        {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
