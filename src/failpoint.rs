//! Crash points for the finalize tests. With the `failpoints` feature, `V2X_FAILPOINT=<name>`
//! makes the process abort (as abruptly as `kill -9`) the first time it reaches that point;
//! without the feature, `hit` compiles to nothing.

/// The points: `before_wal_fsync`, `after_wal_fsync`, `mid_parquet`, `after_manifest`,
/// `after_rename`, `before_checkpoint`; for `compact` (see `dataset::compact`):
/// `compact_mid_output`, `compact_before_manifest`, `compact_after_manifest`,
/// `compact_after_exchange`, `compact_mid_cleanup`, `compact_before_manifest_removal`,
/// `compact_after_manifest_removal`.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        use std::sync::OnceLock;
        static ARMED: OnceLock<Option<String>> = OnceLock::new();
        let armed = ARMED.get_or_init(|| std::env::var("V2X_FAILPOINT").ok());
        if armed.as_deref() == Some(name) {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
