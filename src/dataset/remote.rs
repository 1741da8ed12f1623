//! A dataset in an S3-compatible bucket (`--data s3://bucket/prefix`), as the collector writes
//! it with `[store] url`: the same `<kind>/date=/hour=/` layout under the prefix. `query` and
//! `export` read it through DataFusion's object store registry; `ls` and `compact` work on
//! local directories only.
//!
//! The client is configured from the standard `AWS_*` environment variables (credentials,
//! `AWS_REGION`, `AWS_ENDPOINT` for MinIO and other S3-compatible stores, `AWS_ALLOW_HTTP`).

use std::path::Path;
use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use super::query::QueryError;

/// `--data` as an object store location, or `None` for a local directory.
pub struct Remote {
    /// `s3://bucket`
    root: ObjectStoreUrl,
    bucket: String,
    prefix: Vec<String>,
    store: Arc<dyn ObjectStore>,
}

impl Remote {
    /// `Some` when `data` is an `s3://` URL.
    pub fn parse(data: &Path) -> Result<Option<Remote>, QueryError> {
        let Some(url) = data.to_str().filter(|s| s.starts_with("s3://")) else {
            return Ok(None);
        };
        let (bucket, prefix) = crate::sink::store::parse_url(url)
            .map_err(|e| QueryError::Usage(format!("--data {url:?} {e}")))?;
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .map_err(|e| QueryError::Usage(format!("--data {url}: {e}")))?;
        let root = ObjectStoreUrl::parse(format!("s3://{bucket}"))?;
        Ok(Some(Remote {
            root,
            bucket,
            prefix,
            store: Arc::new(store),
        }))
    }

    /// Makes the bucket readable by `ctx`.
    pub fn register_with(&self, ctx: &SessionContext) {
        ctx.runtime_env()
            .register_object_store(self.root.as_ref(), self.store.clone());
    }

    fn key(&self, table: &str) -> Key {
        Key::from_iter(self.prefix.iter().map(String::as_str).chain([table]))
    }

    /// The listing URL of a table's directory, `s3://bucket/prefix/<table>/`.
    pub fn table_url(&self, table: &str) -> String {
        format!("s3://{}/{}/", self.bucket, self.key(table))
    }

    /// The tables under the prefix that hold at least one Parquet object: the kinds that are
    /// safe identifiers, `_quarantine` and `_messages`.
    pub async fn tables(&self) -> Result<Vec<String>, QueryError> {
        let prefix = Key::from_iter(self.prefix.iter().map(String::as_str));
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| QueryError::Usage(format!("listing {}: {e}", self.describe())))?;
        let mut out = Vec::new();
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename().map(str::to_string) else {
                continue;
            };
            let table = name == super::QUARANTINE
                || name == super::MESSAGES
                || (!name.starts_with(['_', '.']) && crate::route::is_safe_identifier(&name));
            if table && self.has_parquet(&name).await? {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `table` holds a committed Parquet object (listing stops at the first).
    pub async fn has_parquet(&self, table: &str) -> Result<bool, QueryError> {
        let mut objects = self.store.list(Some(&self.key(table)));
        while let Some(meta) = objects
            .try_next()
            .await
            .map_err(|e| QueryError::Usage(format!("listing {}: {e}", self.describe())))?
        {
            let name = meta.location.filename().unwrap_or_default();
            if name.ends_with(".parquet") && !name.starts_with(['.', '_']) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A small object of `table` as text (`_schema.json`); `None` when it cannot be read.
    pub async fn read_text(&self, table: &str, name: &str) -> Option<String> {
        let key = Key::from_iter(self.prefix.iter().map(String::as_str).chain([table, name]));
        let bytes = self.store.get(&key).await.ok()?.bytes().await.ok()?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        for p in &self.prefix {
            s.push('/');
            s.push_str(p);
        }
        s
    }
}
