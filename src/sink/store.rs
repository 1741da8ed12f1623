//! Object store output: committed files go to an S3-compatible bucket instead of `data_dir`.
//!
//! The commit protocol of [`super`] is unchanged; only its last step differs. Files are written
//! and fsynced under a local spool (`<wal>/spool`, laid out like the dataset), named in the
//! commit manifest, then each is **uploaded** to its key (where the local output renames) and
//! its spool copy removed. The WAL checkpoint advances only once every upload of the set has
//! completed, so a crash or an outage at any point leaves either the WAL's rows or the objects,
//! and the manifest finishes the set at the next attempt.
//!
//! An object is never half visible: a file below `multipart_part_bytes` is one PUT; a larger
//! one is a multipart upload, completed or aborted. The upload id is written beside the spool
//! file before the first part, so an upload cut short by a crash is aborted when the set is
//! finished on restart rather than left to linger in the bucket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{BackoffConfig, ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};

use crate::config::StoreConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store {url}: {reason}")]
    Config { url: String, reason: String },
    #[error("cannot start the object store client: {0}")]
    Runtime(std::io::Error),
    #[error("uploading {file} to {key}: {source}")]
    Upload {
        file: PathBuf,
        key: String,
        source: object_store::Error,
    },
    #[error("writing {key}: {source}")]
    Put {
        key: String,
        source: object_store::Error,
    },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An S3-compatible bucket and key prefix, with the runtime its async client runs on (the
/// writer thread is synchronous).
pub struct ObjectTarget {
    rt: tokio::runtime::Runtime,
    s3: AmazonS3,
    bucket: String,
    prefix: Vec<String>,
    part_bytes: usize,
}

impl std::fmt::Debug for ObjectTarget {
    // The client holds credentials: show only where it writes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTarget")
            .field("url", &self.url())
            .finish()
    }
}

/// Splits `s3://bucket/some/prefix` into the bucket and the prefix's segments.
pub fn parse_url(url: &str) -> Result<(String, Vec<String>), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or("must look like s3://bucket/prefix (S3-compatible stores only)")?;
    let mut parts = rest.split('/').filter(|p| !p.is_empty());
    let bucket = parts.next().ok_or("names no bucket")?.to_string();
    let prefix: Vec<String> = parts.map(str::to_string).collect();
    for p in &prefix {
        if p == "." || p == ".." || p.chars().any(|c| c.is_control()) {
            return Err(format!("has an unsafe prefix segment {p:?}"));
        }
    }
    Ok((bucket, prefix))
}

impl ObjectTarget {
    /// Builds the client: `AWS_*` environment variables first (credentials, region, endpoint,
    /// session token), then whatever the configuration sets. Makes no request.
    pub fn new(cfg: &StoreConfig) -> Result<ObjectTarget, StoreError> {
        let url = cfg.url.clone().unwrap_or_default();
        let bad = |reason: String| StoreError::Config {
            url: url.clone(),
            reason,
        };
        let (bucket, prefix) = parse_url(&url).map_err(bad)?;
        let timeout = Duration::from_secs_f64(cfg.timeout_s.max(0.1));
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_timeout(timeout)
                    .with_connect_timeout(timeout.min(Duration::from_secs(10))),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: cfg.max_retries,
                retry_timeout: timeout * (cfg.max_retries as u32 + 1),
            });
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s.expose());
        }
        // The builder's errors name settings, never secret values.
        let s3 = b.build().map_err(|e| bad(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("v2x-store")
            .build()
            .map_err(StoreError::Runtime)?;
        Ok(ObjectTarget {
            rt,
            s3,
            bucket,
            prefix,
            part_bytes: cfg.multipart_part_bytes.max(1),
        })
    }

    /// Runs one request to completion on the client's runtime. The writer thread calls this
    /// directly; at start-up the caller is inside the collector's async runtime, where
    /// blocking on another runtime is not allowed, so the request runs on a scoped thread.
    fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.rt.block_on(f);
        }
        std::thread::scope(|s| {
            s.spawn(|| self.rt.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `s3://bucket/prefix`, for logs.
    pub fn url(&self) -> String {
        let mut u = format!("s3://{}", self.bucket);
        for p in &self.prefix {
            u.push('/');
            u.push_str(p);
        }
        u
    }

    /// The key of a dataset-relative path (`kind/date=.../hour=../name.parquet`).
    pub fn key(&self, rel: &Path) -> Key {
        let parts = self
            .prefix
            .iter()
            .cloned()
            .chain(rel.iter().map(|s| s.to_string_lossy().into_owned()));
        Key::from_iter(parts)
    }

    /// Writes a small object in one request (the kinds' `_schema.json`).
    pub fn put_bytes(&self, rel: &Path, bytes: Vec<u8>) -> Result<(), StoreError> {
        let key = self.key(rel);
        self.run(self.s3.put(&key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|source| StoreError::Put {
                key: key.to_string(),
                source,
            })
    }

    /// Uploads the spool file `file` to the key of `rel`, then removes the file. An upload id
    /// recorded beside the file by an attempt that never finished is aborted first.
    pub fn upload(&self, file: &Path, rel: &Path) -> Result<u64, StoreError> {
        let key = self.key(rel);
        let started = Instant::now();
        let io = |step, source| StoreError::Io {
            step,
            path: file.to_owned(),
            source,
        };
        let record = upload_record(file);
        if let Ok(id) = std::fs::read_to_string(&record) {
            let id = id.trim().to_string();
            match self.run(self.s3.abort_multipart(&key, &id)) {
                Ok(()) => {
                    tracing::info!(key = %key, "aborted an upload an earlier attempt left unfinished")
                }
                // Completed or aborted already.
                Err(object_store::Error::NotFound { .. }) => {}
                // The store is not answering: keep the id for the next attempt.
                Err(source) => {
                    return Err(StoreError::Upload {
                        file: file.to_owned(),
                        key: key.to_string(),
                        source,
                    });
                }
            }
            std::fs::remove_file(&record).map_err(|e| io("removing upload record of", e))?;
        }
        let size = std::fs::metadata(file).map_err(|e| io("reading", e))?.len();
        let upload_err = |source| StoreError::Upload {
            file: file.to_owned(),
            key: key.to_string(),
            source,
        };
        if size < self.part_bytes as u64 {
            let bytes = std::fs::read(file).map_err(|e| io("reading", e))?;
            self.run(self.s3.put(&key, PutPayload::from(bytes)))
                .map_err(upload_err)?;
        } else {
            self.multipart(file, &key, &record)?;
            metrics::counter!("v2x_store_multipart_uploads_total").increment(1);
        }
        metrics::counter!("v2x_store_uploads_total").increment(1);
        metrics::counter!("v2x_store_upload_bytes_total").increment(size);
        metrics::histogram!("v2x_store_upload_seconds").record(started.elapsed().as_secs_f64());
        std::fs::remove_file(file).map_err(|e| io("removing uploaded", e))?;
        Ok(size)
    }

    fn multipart(&self, file: &Path, key: &Key, record: &Path) -> Result<(), StoreError> {
        use std::io::Read;
        let upload_err = |source| StoreError::Upload {
            file: file.to_owned(),
            key: key.to_string(),
            source,
        };
        let io = |step, source| StoreError::Io {
            step,
            path: file.to_owned(),
            source,
        };
        let id = self
            .run(self.s3.create_multipart(key))
            .map_err(upload_err)?;
        // Durable before the first part, so a crash from here on leaves an id to abort.
        super::parquet_file::write_atomic(record, id.as_bytes())
            .map_err(|e| io("recording the upload id beside", e))?;
        let result = (|| {
            let mut f = std::fs::File::open(file).map_err(|e| io("reading", e))?;
            let mut parts: Vec<PartId> = Vec::new();
            loop {
                let mut buf = Vec::with_capacity(self.part_bytes);
                (&mut f)
                    .take(self.part_bytes as u64)
                    .read_to_end(&mut buf)
                    .map_err(|e| io("reading", e))?;
                if buf.is_empty() {
                    break;
                }
                let part = self
                    .run(self.s3.put_part(key, &id, parts.len(), buf.into()))
                    .map_err(upload_err)?;
                parts.push(part);
                crate::failpoint::hit("mid_multipart");
            }
            self.run(self.s3.complete_multipart(key, &id, parts))
                .map_err(upload_err)
        })();
        match result {
            Ok(_) => {
                let _ = std::fs::remove_file(record);
                Ok(())
            }
            Err(e) => {
                match self.run(self.s3.abort_multipart(key, &id)) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(record);
                    }
                    // The record stays, so the next attempt aborts it.
                    Err(a) => {
                        tracing::warn!(key = %key, error = %a, "could not abort a failed upload")
                    }
                }
                metrics::counter!("v2x_store_multipart_aborted_total").increment(1);
                Err(e)
            }
        }
    }
}

/// Where the id of a multipart upload of `file` is kept while it runs.
fn upload_record(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".mpu");
    file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_safe_prefix() {
        assert_eq!(
            parse_url("s3://lake/zone1/raw").unwrap(),
            ("lake".into(), vec!["zone1".into(), "raw".into()])
        );
        assert_eq!(parse_url("s3://lake").unwrap(), ("lake".into(), vec![]));
        assert!(parse_url("s3://").is_err());
        assert!(parse_url("gs://lake").is_err());
        assert!(parse_url("s3://lake/../x").is_err());
    }

    #[test]
    fn keys_join_prefix_and_partition_path() {
        let t = ObjectTarget::new(&StoreConfig {
            url: Some("s3://lake/zone1".into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some(crate::config::Secret::new("SECRETVALUE123")),
            ..StoreConfig::default()
        })
        .unwrap();
        let k = t.key(Path::new("bsm/date=2026-11-29/hour=05/c1-1.parquet"));
        assert_eq!(k.as_ref(), "zone1/bsm/date=2026-11-29/hour=05/c1-1.parquet");
        assert_eq!(t.url(), "s3://lake/zone1");
        assert!(!format!("{t:?}").contains("SECRETVALUE123"));
    }
}
