//! The dataset as readers see it: `<data>/<kind>/date=YYYY-MM-DD/hour=HH/*.parquet`, plus the
//! `_quarantine` table beside the kinds. `ls`, `query`, `export`, `compact` and `reprocess` all
//! find their files here, so that what counts as a kind, a partition or a data file is decided once.
//!
//! Only committed files are data: temporary files (`.name.tmp`), anything starting with `.` or
//! `_` (`_schema.json`) and anything not ending in `.parquet` are skipped. Symbolic links are
//! never followed, so nothing outside the data directory is listed. A kind is a directory whose
//! name is a safe identifier (the same rule the router applies to topic segments), so a kind
//! given on the command line can never name a path outside its directory.

pub mod compact;
pub mod export;
pub mod ls;
pub mod query;
pub mod remote;
pub mod reprocess;

use std::path::{Path, PathBuf};

use crate::route::is_safe_identifier;

/// The table of messages that could not be filed (see [`crate::quarantine`]).
pub const QUARANTINE: &str = crate::quarantine::TABLE;
/// The table of one row per filed message (see [`crate::message_index`]).
pub const MESSAGES: &str = crate::message_index::TABLE;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "data directory {} does not exist (give --data DIR or set V2X_DATA)",
        path.display()
    )]
    NoDataDir { path: PathBuf },
    #[error("{} is not a directory (give the dataset directory with --data DIR)", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "{} is in an object store: `query` and `export` read it directly, `ls` and `compact` need a local copy (aws s3 sync)",
        path.display()
    )]
    Remote { path: PathBuf },
    #[error(
        "{kind:?} is not a kind: a kind starts with a letter or digit and uses only A-Z a-z 0-9 _ . - (at most 64)"
    )]
    InvalidKind { kind: String },
    #[error("no kind {kind:?} in {}; `v2x-collector ls` lists the kinds", data.display())]
    NoSuchKind { kind: String, data: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DatasetError {
    /// 2 for what the user can fix on the command line (a wrong directory or kind), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            DatasetError::Io { .. } => 1,
            _ => 2,
        }
    }
}

/// One committed Parquet file of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub path: PathBuf,
    /// The kind, or `_quarantine`.
    pub kind: String,
    /// `YYYY-MM-DD` of the partition (UTC).
    pub date: String,
    /// Hour of the partition, 0 to 23 (UTC).
    pub hour: u8,
    pub bytes: u64,
}

impl DataFile {
    /// `date=YYYY-MM-DD/hour=HH`, the partition relative to the table directory.
    pub fn partition(&self) -> String {
        format!("date={}/hour={:02}", self.date, self.hour)
    }
}

/// Checks that `kind` is a safe identifier, so `<data>/<kind>` stays inside `<data>`.
pub fn validate_kind(kind: &str) -> Result<(), DatasetError> {
    if is_safe_identifier(kind) {
        Ok(())
    } else {
        Err(DatasetError::InvalidKind {
            kind: kind.to_owned(),
        })
    }
}

/// The kinds present in `data`, sorted. `_quarantine` and other `_` or `.` names are not kinds.
pub fn kinds(data: &Path) -> Result<Vec<String>, DatasetError> {
    check_data_dir(data)?;
    let mut out: Vec<String> = read_dir(data)?
        .into_iter()
        .filter(|(_, ft)| ft.is_dir())
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| !name.starts_with(['_', '.']) && is_safe_identifier(name))
        .collect();
    out.sort();
    Ok(out)
}

/// The committed data files of `kind`, sorted by partition and name.
pub fn files(data: &Path, kind: &str) -> Result<Vec<DataFile>, DatasetError> {
    validate_kind(kind)?;
    check_data_dir(data)?;
    let dir = data.join(kind);
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Err(DatasetError::NoSuchKind {
            kind: kind.to_owned(),
            data: data.to_owned(),
        });
    }
    table_files(data, kind)
}

/// The committed files of the quarantine table (none when it does not exist).
pub fn quarantine_files(data: &Path) -> Result<Vec<DataFile>, DatasetError> {
    check_data_dir(data)?;
    table_files(data, QUARANTINE)
}

/// The committed files of the message index (none when it does not exist).
pub fn message_files(data: &Path) -> Result<Vec<DataFile>, DatasetError> {
    check_data_dir(data)?;
    table_files(data, MESSAGES)
}

/// Takes an exclusive `flock` on directory `dir` without waiting: `Ok(None)` when another
/// process holds it. The lock lasts as long as the returned descriptor (or the process: the
/// kernel drops it when the holder dies, even by `kill -9`). `compact` and `reprocess` keep
/// two runs of themselves apart with it.
pub(crate) fn lock_dir(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    let f = std::fs::File::open(dir)?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(e)
            };
        }
    }
    Ok(Some(f))
}

/// The data directory must exist and be a directory (a symlink to one is fine: the user named it).
fn check_data_dir(data: &Path) -> Result<(), DatasetError> {
    if data.to_str().is_some_and(|s| s.starts_with("s3://")) {
        return Err(DatasetError::Remote {
            path: data.to_owned(),
        });
    }
    match std::fs::metadata(data) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DatasetError::NotADirectory {
            path: data.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DatasetError::NoDataDir {
            path: data.to_owned(),
        }),
        Err(source) => Err(DatasetError::Io {
            path: data.to_owned(),
            source,
        }),
    }
}

/// Walks `<data>/<table>/date=*/hour=*/*.parquet`. Entries that vanish while we walk (a commit's
/// rename, a compaction's removal) are skipped, not errors.
fn table_files(data: &Path, table: &str) -> Result<Vec<DataFile>, DatasetError> {
    let root = data.join(table);
    let mut out = Vec::new();
    for (date_name, ft) in read_dir(&root)? {
        let Some(date) = date_name.to_str().and_then(|n| n.strip_prefix("date=")) else {
            continue;
        };
        if !ft.is_dir() || !valid_date(date) {
            continue;
        }
        let date_dir = root.join(&date_name);
        for (hour_name, ft) in read_dir(&date_dir)? {
            let Some(hour) = hour_name.to_str().and_then(parse_hour_dir) else {
                continue;
            };
            if !ft.is_dir() {
                continue;
            }
            let hour_dir = date_dir.join(&hour_name);
            for (file_name, ft) in read_dir(&hour_dir)? {
                let Some(name) = file_name.to_str() else {
                    continue;
                };
                if !ft.is_file() || !is_data_file_name(name) {
                    continue;
                }
                let path = hour_dir.join(name);
                let bytes = match std::fs::symlink_metadata(&path) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(DatasetError::Io { path, source }),
                };
                out.push(DataFile {
                    path,
                    kind: table.to_owned(),
                    date: date.to_owned(),
                    hour,
                    bytes,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.date, a.hour, &a.path).cmp(&(&b.date, b.hour, &b.path)));
    Ok(out)
}

/// A committed data file: `*.parquet`, not hidden or temporary.
fn is_data_file_name(name: &str) -> bool {
    !name.starts_with(['.', '_']) && name.len() > ".parquet".len() && name.ends_with(".parquet")
}

/// `YYYY-MM-DD`, zero-padded, a real calendar date.
fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// `hour=HH` with HH from `00` to `23`.
fn parse_hour_dir(name: &str) -> Option<u8> {
    let h = name.strip_prefix("hour=")?;
    let b = h.as_bytes();
    if b.len() != 2 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hour = (b[0] - b'0') * 10 + (b[1] - b'0');
    (hour < 24).then_some(hour)
}

/// The entries of `dir` with their own type (a symlink stays a symlink). A missing directory
/// is empty: it may have been removed since its parent was listed.
fn read_dir(dir: &Path) -> Result<Vec<(std::ffi::OsString, std::fs::FileType)>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        match entry.file_type() {
            Ok(ft) => out.push((entry.file_name(), ft)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn kinds_skip_quarantine_hidden_and_unsafe_names() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "bsm",
            "radar_target",
            "_quarantine",
            ".hidden",
            "bad name",
            "-x",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        touch(&dir.path().join("file_not_dir"), b"");
        assert_eq!(kinds(dir.path()).unwrap(), ["bsm", "radar_target"]);
    }

    #[test]
    fn a_missing_data_dir_is_named() {
        let err = kinds(Path::new("/nonexistent/v2x-data")).unwrap_err();
        assert!(matches!(err, DatasetError::NoDataDir { .. }));
        assert!(err.to_string().contains("/nonexistent/v2x-data"));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn files_are_committed_parquet_in_valid_partitions_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(&d.join("bsm/date=2026-01-02/hour=03/c-2.parquet"), b"12345");
        touch(&d.join("bsm/date=2026-01-02/hour=03/c-1.parquet"), b"123");
        touch(&d.join("bsm/date=2026-01-01/hour=23/c-0.parquet"), b"1");
        touch(
            &d.join("bsm/date=2026-01-02/hour=03/.c-3.parquet.tmp"),
            b"x",
        );
        touch(&d.join("bsm/date=2026-01-02/hour=03/_c-4.parquet"), b"x");
        touch(&d.join("bsm/date=2026-01-02/hour=03/notes.txt"), b"x");
        touch(&d.join("bsm/date=2026-01-02/hour=03/.parquet"), b"x");
        touch(&d.join("bsm/date=2026-01-02/hour=24/c-5.parquet"), b"x");
        touch(&d.join("bsm/date=2026-01-02/hour=3/c-6.parquet"), b"x");
        touch(&d.join("bsm/date=2026-02-30/hour=00/c-7.parquet"), b"x");
        touch(&d.join("bsm/date=2026-1-02/hour=00/c-8.parquet"), b"x");
        touch(&d.join("bsm/stray.parquet"), b"x");
        touch(&d.join("bsm/_schema.json"), b"{}");
        let got = files(d, "bsm").unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|f| f.path.strip_prefix(d).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "bsm/date=2026-01-01/hour=23/c-0.parquet",
                "bsm/date=2026-01-02/hour=03/c-1.parquet",
                "bsm/date=2026-01-02/hour=03/c-2.parquet",
            ]
        );
        assert_eq!(got[0].kind, "bsm");
        assert_eq!(got[0].date, "2026-01-01");
        assert_eq!(got[0].hour, 23);
        assert_eq!(got[2].bytes, 5);
        assert_eq!(got[2].partition(), "date=2026-01-02/hour=03");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        touch(
            &outside
                .path()
                .join("date=2026-01-01/hour=00/secret.parquet"),
            b"x",
        );
        touch(&outside.path().join("secret.parquet"), b"x");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let part = d.join("bsm/date=2026-01-01/hour=00");
        touch(&part.join("c-0.parquet"), b"x");
        std::os::unix::fs::symlink(outside.path(), d.join("linked_kind")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("date=2026-01-01"),
            d.join("bsm/date=2026-01-02"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.parquet"),
            part.join("c-1.parquet"),
        )
        .unwrap();
        assert_eq!(kinds(d).unwrap(), ["bsm"]);
        let got = files(d, "bsm").unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].path.ends_with("c-0.parquet"));
    }

    #[test]
    fn hostile_kinds_are_rejected_before_any_path_is_built() {
        let dir = tempfile::tempdir().unwrap();
        for k in [
            "..",
            ".",
            "../etc",
            "a/b",
            "/etc",
            "",
            "_quarantine",
            "a\\b",
            "a b",
        ] {
            let err = files(dir.path(), k).unwrap_err();
            assert!(matches!(err, DatasetError::InvalidKind { .. }), "{k:?}");
            assert_eq!(err.exit_code(), 2);
        }
        assert!(validate_kind("rsm_participant").is_ok());
        assert!(matches!(
            files(dir.path(), "bsm").unwrap_err(),
            DatasetError::NoSuchKind { .. }
        ));
    }

    #[test]
    fn quarantine_is_its_own_table() {
        let dir = tempfile::tempdir().unwrap();
        assert!(quarantine_files(dir.path()).unwrap().is_empty());
        touch(
            &dir.path()
                .join("_quarantine/date=2026-01-01/hour=00/c-0.parquet"),
            b"x",
        );
        let q = quarantine_files(dir.path()).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].kind, "_quarantine");
    }
}
