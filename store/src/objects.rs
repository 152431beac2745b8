//! The store's objects in an object store (a local folder by default, or any S3-compatible store):
//! segments, and each partition's manifest as a log of versions.
//!
//! A manifest version is a new object, `manifests/<kind>/<topic>/p<partition>/<version>.json`, created
//! only if it does not exist yet (`PutMode::Create`, which a local folder and S3 both support, unlike
//! conditional overwrites). Two writers that both read version n cannot both publish n + 1: the one that
//! loses (a fenced former owner of the partition) is told so and writes nothing more. Readers take the
//! highest version.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt as _;
use std::str::FromStr as _;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

use crate::manifest::Manifest;

/// An object store error of `store` that is not one of the backend's own.
fn generic(store: &'static str, reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> object_store::Error {
    object_store::Error::Generic { store, source: reason.into() }
}

/// The parts of an `s3://<bucket>/<prefix>` URL.
#[derive(Debug, PartialEq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: Option<String>,
}

/// Checks that `url` names an S3 bucket: `s3://<bucket>` or `s3://<bucket>/<prefix>`.
pub fn s3_url(url: &str) -> Result<S3Url, String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("{url:?} is not a URL: {err}"))?;
    if parsed.scheme() != "s3" {
        return Err(format!("{url:?} must start with s3:// (a local store is set by `path`)"));
    }
    let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| format!("{url:?} names no bucket"))?;
    let prefix = parsed.path().trim_matches('/');
    Ok(S3Url { bucket: bucket.to_owned(), prefix: (!prefix.is_empty()).then(|| prefix.to_owned()) })
}

/// Why an object could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("manifest {name}: {source}")]
    Manifest { name: String, source: serde_json::Error },
    /// Another writer published this version first: this one no longer owns the partition.
    #[error("manifest version {version} of {partition} was published by another writer")]
    Fenced { partition: String, version: u64 },
    #[error("the manifest versions of {partition} keep vanishing while read")]
    Vanishing { partition: String },
}

/// Segments and manifests of one store (shared by every instance that reads it).
#[derive(Debug, Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
}

impl Objects {
    /// The object store `storage` names: the S3 bucket (and prefix) of `storage.url` when it is set,
    /// else the folder `storage.path`.
    pub fn open(storage: &crate::config::Storage) -> Result<Self, ObjectsError> {
        match &storage.url {
            Some(url) => Self::s3(url, &storage.options),
            None => Self::local(&storage.path),
        }
    }

    /// Objects under `s3://<bucket>/<prefix>`, with `options` by `object_store`'s names (`aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, ...) over the standard `AWS_*` environment variables.
    pub fn s3(url: &str, options: &std::collections::BTreeMap<String, String>) -> Result<Self, ObjectsError> {
        let parsed = s3_url(url).map_err(|reason| generic("s3", reason))?;
        let mut builder = AmazonS3Builder::from_env().with_url(url);
        for (key, value) in options {
            let key = AmazonS3ConfigKey::from_str(key)?;
            builder = builder.with_config(key, value);
        }
        let bucket = builder.build()?;
        let store: Arc<dyn ObjectStore> = match parsed.prefix {
            Some(prefix) => Arc::new(PrefixStore::new(bucket, prefix)),
            None => Arc::new(bucket),
        };
        Ok(Self { store })
    }

    /// Objects in the folder `dir`, created if needed.
    pub fn local(dir: &Path) -> Result<Self, ObjectsError> {
        std::fs::create_dir_all(dir).map_err(|err| generic("local", err))?;
        Ok(Self { store: Arc::new(LocalFileSystem::new_with_prefix(dir)?) })
    }

    /// Writes a segment; the same name always carries the same records, so overwriting is harmless.
    pub async fn put_segment(&self, name: &str, bytes: Bytes) -> Result<(), ObjectsError> {
        self.store.put(&ObjectPath::from(name), PutPayload::from(bytes)).await?;
        Ok(())
    }

    pub async fn get(&self, name: &str) -> Result<Bytes, ObjectsError> {
        Ok(self.store.get(&ObjectPath::from(name)).await?.bytes().await?)
    }

    fn manifest_prefix(kind: &str, topic: &str, partition: i32) -> String {
        format!("manifests/{kind}/{topic}/p{partition:05}")
    }

    /// The name of the highest published manifest version of a partition; `None` when there is none.
    pub async fn latest_manifest_name(&self, kind: &str, topic: &str, partition: i32) -> Result<Option<String>, ObjectsError> {
        let prefix = ObjectPath::from(Self::manifest_prefix(kind, topic, partition));
        let listed: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        // Names are zero-padded versions: the greatest name is the latest.
        Ok(listed.into_iter().map(|meta| meta.location.to_string()).filter(|p| p.ends_with(".json")).max())
    }

    /// The manifest version `name`; `None` when it no longer exists (superseded and deleted).
    pub async fn read_manifest(&self, name: &str) -> Result<Option<Manifest>, ObjectsError> {
        let bytes = match self.store.get(&ObjectPath::from(name)).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| ObjectsError::Manifest { name: name.to_owned(), source })
    }

    /// The highest published manifest version of a partition; an empty one when there is none.
    pub async fn latest_manifest(&self, kind: &str, topic: &str, partition: i32) -> Result<Manifest, ObjectsError> {
        // A version superseded and deleted between the listing and the read is listed again: the writer
        // keeps the latest versions, so the second listing finds one that exists.
        for _ in 0..3 {
            let Some(name) = self.latest_manifest_name(kind, topic, partition).await? else { return Ok(Manifest::default()) };
            if let Some(manifest) = self.read_manifest(&name).await? {
                return Ok(manifest);
            }
        }
        Err(ObjectsError::Vanishing { partition: Self::manifest_prefix(kind, topic, partition) })
    }

    /// Deletes the manifest versions of a partition older than `keep_from`; a reader that listed one of
    /// them a moment ago lists again. Best effort: what is left is deleted next time.
    pub async fn prune_manifests(&self, kind: &str, topic: &str, partition: i32, keep_from: u64) -> Result<(), ObjectsError> {
        let prefix = Self::manifest_prefix(kind, topic, partition);
        let listed: Vec<_> = self.store.list(Some(&ObjectPath::from(prefix.as_str()))).try_collect().await?;
        for meta in listed {
            let version = meta.location.filename().and_then(|f| f.strip_suffix(".json")).and_then(|v| v.parse::<u64>().ok());
            if version.is_some_and(|v| v < keep_from) {
                self.delete(meta.location.as_ref()).await?;
            }
        }
        Ok(())
    }

    /// Deletes an object; one already gone is fine.
    pub async fn delete(&self, name: &str) -> Result<(), ObjectsError> {
        match self.store.delete(&ObjectPath::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The names of the objects under `prefix` (a folder) whose file name starts with `start`.
    pub async fn names_starting(&self, prefix: &str, start: &str) -> Result<Vec<String>, ObjectsError> {
        let listed: Vec<_> = self.store.list(Some(&ObjectPath::from(prefix))).try_collect().await?;
        Ok(listed
            .into_iter()
            .filter(|meta| meta.location.filename().is_some_and(|f| f.starts_with(start)))
            .map(|meta| meta.location.to_string())
            .collect())
    }

    /// Publishes `manifest` as its version, unless another writer published that version first.
    pub async fn publish_manifest(&self, kind: &str, topic: &str, partition: i32, manifest: &Manifest) -> Result<(), ObjectsError> {
        let prefix = Self::manifest_prefix(kind, topic, partition);
        let name = format!("{prefix}/{:020}.json", manifest.version);
        let json = serde_json::to_vec(manifest).map_err(|source| ObjectsError::Manifest { name: name.clone(), source })?;
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&ObjectPath::from(name), PutPayload::from(json), options).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(ObjectsError::Fenced { partition: prefix, version: manifest.version }),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SegmentMeta;

    fn segment(first: i64, next: i64) -> SegmentMeta {
        SegmentMeta { name: format!("s{first}"), first_offset: first, next_offset: next, rows: 1, bytes: 1, min_time_ns: 0, max_time_ns: 0 }
    }

    #[tokio::test]
    async fn the_latest_manifest_wins_and_a_second_writer_of_a_version_is_fenced() {
        let dir = std::env::temp_dir().join(format!("runnel-objects-{}-{:?}", std::process::id(), std::time::SystemTime::now()));
        let objects = Objects::local(&dir).unwrap();
        assert_eq!(objects.latest_manifest("aggregates", "t", 0).await.unwrap(), Manifest::default());

        objects.put_segment("aggregates/t/p00000/a.parquet", Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(objects.get("aggregates/t/p00000/a.parquet").await.unwrap(), Bytes::from_static(b"abc"));

        // Two writers read the empty manifest and both prepare version 1: one wins.
        let (mut first, mut second) = (Manifest::default(), Manifest::default());
        first.append(segment(0, 10)).unwrap();
        second.append(segment(0, 12)).unwrap();
        objects.publish_manifest("aggregates", "t", 0, &first).await.unwrap();
        let fenced = objects.publish_manifest("aggregates", "t", 0, &second).await;
        assert!(matches!(fenced, Err(ObjectsError::Fenced { version: 1, .. })), "{fenced:?}");
        assert_eq!(objects.latest_manifest("aggregates", "t", 0).await.unwrap(), first);

        // Versions past 9 still sort: the names are zero-padded.
        let mut next = first.clone();
        for offset in (10..120).step_by(10) {
            next.append(segment(offset, offset + 10)).unwrap();
            objects.publish_manifest("aggregates", "t", 0, &next).await.unwrap();
        }
        assert_eq!(objects.latest_manifest("aggregates", "t", 0).await.unwrap(), next);
        assert_eq!(next.version, 12);
        assert_eq!(objects.latest_manifest("aggregates", "t", 1).await.unwrap(), Manifest::default(), "partitions are apart");
        // Pruning keeps the latest versions readable.
        objects.prune_manifests("aggregates", "t", 0, 11).await.unwrap();
        assert_eq!(objects.latest_manifest("aggregates", "t", 0).await.unwrap(), next);
        let name = objects.latest_manifest_name("aggregates", "t", 0).await.unwrap().unwrap();
        assert!(name.ends_with("/00000000000000000012.json"), "{name}");
        let kept = objects.names_starting("manifests/aggregates/t/p00000", "0000000000000000001").await.unwrap();
        assert_eq!(kept.len(), 2, "versions 11 and 12: {kept:?}");
        let pruned = name.replace("12.json", "03.json");
        assert_eq!(objects.read_manifest(&pruned).await.unwrap(), None, "{pruned} is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
