//! Object bytes, through `object_store`: the local filesystem or an S3-compatible bucket, with
//! one code path.
//!
//! Bytes are stored as immutable **blobs**, one per committed version, at `{shard}/{etag}`
//! (`etag` is the version's ULID, `shard` its last two characters, so no directory grows
//! huge). Object keys never become backend paths: keys like `a/b` and `a/b/c` can coexist on a
//! filesystem, and a replaced object's old bytes stay readable for downloads already streaming
//! them. Which blob is an object's current version is recorded in Redis (see `store`); the
//! upload that writes a blob and the Redis commit that publishes it are tied together by the
//! lease protocol described there.
//!
//! Blobs are written as multipart uploads (`WriteMultipart`), so a part at a time is in memory
//! and the blob appears only when `complete` succeeds: on the local filesystem a staging file
//! `{blob}#1` is renamed into place, on S3 `CompleteMultipartUpload` makes it visible.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart,
};
use storemesh_runtime::server::ReadinessCheck;

use crate::config::{BackendKind, StorageConfig};
use crate::range::MAX_DOWNLOAD_CHUNK;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot create the local storage directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the object store: {0}")]
    Open(#[from] object_store::Error),
}

#[derive(Clone)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    /// The local backend's root, for removing staging files of uploads whose process died.
    local_root: Option<PathBuf>,
    part_size: usize,
    parts_in_flight: usize,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.store)
    }
}

impl Backend {
    pub fn open(config: &StorageConfig) -> Result<Self, BackendError> {
        let part_size = usize::try_from(config.part_size_bytes).unwrap_or(usize::MAX);
        let parts_in_flight = config.parts_in_flight;
        match config.backend {
            BackendKind::Local => {
                let root = &config.data_dir;
                std::fs::create_dir_all(root).map_err(|source| BackendError::CreateDir {
                    path: root.clone(),
                    source,
                })?;
                // At most 1024 shard directories, so empty ones are kept (no cleanup races).
                let store = LocalFileSystem::new_with_prefix(root)?.with_fsync(config.fsync);
                let local_root = std::fs::canonicalize(root).ok();
                Ok(Self {
                    store: Arc::new(store),
                    local_root,
                    part_size,
                    parts_in_flight,
                })
            }
            BackendKind::S3 => {
                // reqwest is built without a bundled crypto provider; ring is the process's.
                // An error only means another provider was installed first, which is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let s3 = &config.s3;
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_allow_http(s3.allow_http)
                    .with_virtual_hosted_style_request(s3.virtual_hosted_style);
                if !s3.region.is_empty() {
                    builder = builder.with_region(&s3.region);
                }
                if !s3.endpoint.is_empty() {
                    builder = builder.with_endpoint(&s3.endpoint);
                }
                if !s3.access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(&s3.access_key_id)
                        .with_secret_access_key(s3.secret_access_key.expose());
                }
                if !s3.session_token.is_empty() {
                    builder = builder.with_token(s3.session_token.expose());
                }
                let bucket = builder.build()?;
                let store: Arc<dyn ObjectStore> = if s3.prefix.trim_matches('/').is_empty() {
                    Arc::new(bucket)
                } else {
                    Arc::new(PrefixStore::new(bucket, s3.prefix.trim_matches('/')))
                };
                Ok(Self {
                    store,
                    local_root: None,
                    part_size,
                    parts_in_flight,
                })
            }
        }
    }

    /// Where the bytes of version `etag` live.
    pub fn blob_path(etag: &str) -> String {
        let shard = etag.get(etag.len().saturating_sub(2)..).unwrap_or("00");
        format!("{}/{etag}", shard.to_ascii_lowercase())
    }

    /// Starts writing a new blob; nothing is visible until [`BlobWriter::finish`].
    pub async fn writer(&self, blob: &str) -> object_store::Result<BlobWriter> {
        let upload = self.store.put_multipart(&Path::from(blob)).await?;
        Ok(BlobWriter {
            inner: Some(WriteMultipart::new_with_chunk_size(upload, self.part_size)),
            parts_in_flight: self.parts_in_flight,
        })
    }

    /// Streams `range` of a blob in pieces of at most [`MAX_DOWNLOAD_CHUNK`] bytes.
    /// `Err(NotFound)` when the blob is gone (its version was replaced or deleted).
    pub async fn read(
        &self,
        blob: &str,
        range: Range<u64>,
    ) -> object_store::Result<BoxStream<'static, object_store::Result<Bytes>>> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&Path::from(blob), options).await?;
        let range = result.range.clone();
        Ok(match result.payload {
            // object_store reads local files 8 KiB per blocking task; read 1 MiB at a time
            // instead (same bytes, far fewer thread hops).
            GetResultPayload::File(file, path) => read_file(file, path, range),
            GetResultPayload::Stream(stream) => rechunk(stream),
        })
    }

    /// Deletes a blob; a missing blob is fine. On the local backend also removes the staging
    /// file an upload leaves behind when its process dies mid-stream.
    pub async fn delete(&self, blob: &str) -> object_store::Result<()> {
        match self.store.delete(&Path::from(blob)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        if let Some(root) = &self.local_root {
            let staging = root.join(format!("{blob}#1"));
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(staging)).await;
        }
        Ok(())
    }

    /// Every blob in the backend (tests and diagnostics; staging files are not blobs).
    pub async fn list_blobs(&self) -> object_store::Result<Vec<String>> {
        let mut blobs: Vec<String> = self
            .store
            .list(None)
            .map(|meta| meta.map(|meta| meta.location.to_string()))
            .try_collect()
            .await?;
        blobs.sort();
        Ok(blobs)
    }

    /// Whether a blob exists (tests and diagnostics).
    pub async fn exists(&self, blob: &str) -> object_store::Result<bool> {
        match self.store.head(&Path::from(blob)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// Reads `range` of a local file on a blocking thread, 1 MiB at a time, with back-pressure.
fn read_file(
    file: std::fs::File,
    path: PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    use std::io::{Read, Seek, SeekFrom};
    let (tx, rx) = tokio::sync::mpsc::channel::<object_store::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let fail = |source: std::io::Error| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: format!("reading {}: {source}", path.display()).into(),
        };
        let mut file = file;
        if let Err(error) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(fail(error)));
            return;
        }
        let mut remaining = range.end - range.start;
        while remaining > 0 {
            let want = usize::try_from(remaining.min(MAX_DOWNLOAD_CHUNK as u64))
                .unwrap_or(MAX_DOWNLOAD_CHUNK);
            let mut buffer = vec![0_u8; want];
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buffer[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        let _ = tx.blocking_send(Err(fail(error)));
                        return;
                    }
                }
            }
            if filled == 0 {
                let _ = tx.blocking_send(Err(fail(std::io::ErrorKind::UnexpectedEof.into())));
                return;
            }
            buffer.truncate(filled);
            remaining -= filled as u64;
            if tx.blocking_send(Ok(Bytes::from(buffer))).is_err() {
                return; // the download ended (client gone)
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Regroups a byte stream into pieces of at most (and, but for the last, exactly)
/// [`MAX_DOWNLOAD_CHUNK`] bytes: network streams arrive in small frames.
fn rechunk(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let state = (stream, bytes::BytesMut::new(), false);
    futures::stream::unfold(state, |(mut stream, mut buffer, mut ended)| async move {
        loop {
            if buffer.len() >= MAX_DOWNLOAD_CHUNK || (ended && !buffer.is_empty()) {
                let take = buffer.len().min(MAX_DOWNLOAD_CHUNK);
                let piece = buffer.split_to(take).freeze();
                return Some((Ok(piece), (stream, buffer, ended)));
            }
            if ended {
                return None;
            }
            match stream.next().await {
                Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                Some(Err(error)) => return Some((Err(error), (stream, buffer, true))),
                None => ended = true,
            }
        }
    })
    .boxed()
}

/// A blob being written. Dropping it without [`BlobWriter::finish`] aborts the upload.
pub struct BlobWriter {
    inner: Option<WriteMultipart>,
    parts_in_flight: usize,
}

impl BlobWriter {
    /// Queues `bytes`, waiting while `parts_in_flight` parts are being written (back-pressure
    /// keeps memory bounded however fast the client sends).
    pub async fn write(&mut self, bytes: Bytes) -> object_store::Result<()> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(object_store::Error::Generic {
                store: "storemesh",
                source: "write after finish".into(),
            });
        };
        inner.wait_for_capacity(self.parts_in_flight).await?;
        inner.put(bytes);
        Ok(())
    }

    /// Writes the rest and makes the blob visible.
    pub async fn finish(mut self) -> object_store::Result<()> {
        match self.inner.take() {
            Some(inner) => inner.finish().await.map(drop),
            None => Ok(()),
        }
    }

    /// Abandons the blob and removes what was written.
    pub async fn abort(mut self) {
        if let Some(inner) = self.inner.take()
            && let Err(error) = inner.abort().await
        {
            tracing::warn!(%error, "aborting a blob upload failed");
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = inner.abort().await;
            });
        }
    }
}

/// Readiness: the backend answers (a `HEAD` of a path that need not exist).
pub struct BackendReadiness(pub Backend);

impl ReadinessCheck for BackendReadiness {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.0
                .exists(".readiness")
                .await
                .map(drop)
                .map_err(|error| format!("object store: {error}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_are_sharded_by_the_random_end_of_the_ulid() {
        assert_eq!(
            Backend::blob_path("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            "av/01ARZ3NDEKTSV4RRFFQ69G5FAV"
        );
    }

    #[tokio::test]
    async fn rechunk_regroups_into_full_pieces() {
        let pieces: Vec<object_store::Result<Bytes>> = (0..5)
            .map(|_| Ok(Bytes::from(vec![7_u8; 300 * 1024])))
            .collect();
        let out: Vec<Bytes> = rechunk(futures::stream::iter(pieces).boxed())
            .map(|piece| piece.unwrap())
            .collect()
            .await;
        let sizes: Vec<usize> = out.iter().map(Bytes::len).collect();
        assert_eq!(
            sizes,
            [MAX_DOWNLOAD_CHUNK, 1500 * 1024 - MAX_DOWNLOAD_CHUNK]
        );
    }

    #[tokio::test]
    async fn local_round_trip_and_abort() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            data_dir: dir.path().to_path_buf(),
            part_size_bytes: 1024 * 1024,
            ..StorageConfig::default()
        };
        let backend = Backend::open(&config).unwrap();
        let blob = Backend::blob_path("01ARZ3NDEKTSV4RRFFQ69G5FAV");
        let data: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
        let mut writer = backend.writer(&blob).await.unwrap();
        for piece in data.chunks(700_000) {
            writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        assert!(
            !backend.exists(&blob).await.unwrap(),
            "invisible until finished"
        );
        writer.finish().await.unwrap();
        assert!(backend.exists(&blob).await.unwrap());
        let read: Vec<u8> = backend
            .read(&blob, 100..2_500_000)
            .await
            .unwrap()
            .map(|piece| piece.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(read, data[100..2_500_000]);
        backend.delete(&blob).await.unwrap();
        backend.delete(&blob).await.unwrap();
        assert!(!backend.exists(&blob).await.unwrap());

        let other = Backend::blob_path("01ARZ3NDEKTSV4RRFFQ69G5FAW");
        let mut writer = backend.writer(&other).await.unwrap();
        writer.write(Bytes::from_static(b"partial")).await.unwrap();
        writer.abort().await;
        assert!(!backend.exists(&other).await.unwrap());
        let leftovers: Vec<_> = walk(dir.path());
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
