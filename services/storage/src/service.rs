//! `storemesh.storage.v1.StorageService`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use storemesh_proto::storage::v1 as pb;
use storemesh_proto::storage::v1::upload_header::Target;
use storemesh_proto::storage::v1::upload_request::Payload;
use storemesh_runtime::auth::{Identity, caller};
use storemesh_runtime::error::Violations;
use storemesh_runtime::{ServiceError, ServiceResult};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::authz::{self, ProductOwners, WriteKind};
use crate::backend::{Backend, BlobWriter};
use crate::config::StorageConfig;
use crate::events::{self, TraceContext};
use crate::janitor::JanitorHandle;
use crate::store::{Begin, Commit, Idempotency, ObjectRecord, Store, now_ms};
use crate::{keys, limits, page_token, range, sniff, validate};

/// Largest `UploadRequest.chunk`, per the contract.
pub const MAX_UPLOAD_CHUNK: usize = 4 * 1024 * 1024;

const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 500;

/// The storage service. Cheap to clone; the janitor stops when the last clone is dropped.
#[derive(Clone)]
pub struct StorageApi {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    backend: Backend,
    owners: Arc<dyn ProductOwners>,
    config: StorageConfig,
    _janitor: Option<JanitorHandle>,
}

impl StorageApi {
    pub fn new(
        store: Store,
        backend: Backend,
        owners: Arc<dyn ProductOwners>,
        config: StorageConfig,
        janitor: Option<JanitorHandle>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                backend,
                owners,
                config,
                _janitor: janitor,
            }),
        }
    }

    fn config(&self) -> &StorageConfig {
        &self.inner.config
    }
}

fn check_key(field: &str, key: &str) -> ServiceResult<()> {
    match keys::key_problem(key) {
        Some(problem) => Err(ServiceError::invalid(field, problem)),
        None => Ok(()),
    }
}

/// The caller's raw access token, forwarded to the catalog for ownership checks.
fn bearer<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn backend_error(error: object_store::Error) -> ServiceError {
    tracing::warn!(%error, "object store failed");
    ServiceError::Unavailable("object store unavailable, retry later".into())
}

/// What a validated upload header asks for.
struct Plan {
    key: String,
    /// `key:…` or `prefix:…`: what a repeated idempotency key must target too.
    target: String,
    declared_type: String,
    image: bool,
    expected_size: Option<u64>,
    expected_sha256: String,
    metadata: HashMap<String, String>,
    idempotency_key: String,
    limit: u64,
}

impl Plan {
    fn from_header(header: pb::UploadHeader, config: &StorageConfig) -> ServiceResult<Self> {
        let mut violations = Violations::new();
        let (key, target) = match header.target {
            Some(Target::Key(key)) => {
                if let Some(problem) = keys::key_problem(&key) {
                    violations.add("header.key", problem);
                }
                let target = format!("key:{key}");
                (key, target)
            }
            Some(Target::KeyPrefix(prefix)) => {
                let id = ulid::Ulid::new().to_string();
                if let Some(problem) = keys::key_prefix_problem(&prefix, &id) {
                    violations.add("header.key_prefix", problem);
                }
                (format!("{prefix}{id}"), format!("prefix:{prefix}"))
            }
            None => {
                violations.add("header.key", "set key or key_prefix");
                (String::new(), String::new())
            }
        };
        let image = violations.is_empty() && keys::classify(&key).is_image();
        let declared_type = header.content_type;
        if let Some(problem) = sniff::content_type_problem(&declared_type) {
            violations.add("header.content_type", problem);
        } else if image
            && !declared_type.is_empty()
            && sniff::ImageType::from_content_type(&declared_type).is_none()
        {
            violations.add(
                "header.content_type",
                "on image prefixes must be image/jpeg, image/png, image/webp or image/gif",
            );
        }
        if let Some(problem) = validate::sha256_problem(&header.expected_sha256) {
            violations.add("header.expected_sha256", problem);
        }
        for problem in validate::metadata_problems(&header.metadata) {
            violations.add("header.metadata", problem);
        }
        if let Some(problem) = validate::idempotency_key_problem(&header.idempotency_key) {
            violations.add("header.idempotency_key", problem);
        }
        violations.into_result()?;
        let limit = limits::limit_for(&config.limits, config.max_object_bytes, &key);
        Ok(Self {
            key,
            target,
            declared_type,
            image,
            expected_size: header.expected_size_bytes,
            expected_sha256: header.expected_sha256,
            metadata: header.metadata,
            idempotency_key: header.idempotency_key,
            limit,
        })
    }

    fn too_large(&self) -> ServiceError {
        ServiceError::ResourceExhausted {
            message: format!(
                "the object exceeds the size limit of {} bytes for its prefix",
                self.limit
            ),
            retry_after: None,
        }
    }

    /// The content type to store, from the declared type and the object's first bytes (at
    /// least [`sniff::SNIFF_BYTES`], or the whole object when shorter).
    fn content_type(&self, head: &[u8]) -> ServiceResult<String> {
        let sniffed = sniff::sniff(head);
        if self.image {
            let Some(actual) = sniffed else {
                return Err(ServiceError::invalid(
                    "chunk",
                    "image prefixes accept only JPEG, PNG, WebP or GIF data",
                ));
            };
            if !self.declared_type.is_empty()
                && sniff::ImageType::from_content_type(&self.declared_type) != Some(actual)
            {
                return Err(ServiceError::invalid(
                    "header.content_type",
                    format!(
                        "declares {} but the data is {}",
                        self.declared_type,
                        actual.content_type()
                    ),
                ));
            }
            Ok(actual.content_type().to_owned())
        } else if !self.declared_type.is_empty() {
            Ok(self.declared_type.clone())
        } else {
            Ok(sniffed
                .map_or(sniff::OCTET_STREAM, sniff::ImageType::content_type)
                .to_owned())
        }
    }
}

/// How far an upload got, so a failure undoes exactly what was done.
enum Stage {
    /// Bytes may be in a multipart upload; aborting it removes them.
    Receiving,
    /// The blob may exist in the backend but is not committed.
    Written,
    /// The commit's outcome is unknown (Redis did not answer): the lease decides. If the
    /// commit happened, the lease is gone and nothing may be removed; if not, the janitor
    /// collects the blob when the lease runs out.
    Unknown,
    Committed,
}

struct Session {
    blob: String,
    idempotency: Option<Idempotency>,
    writer: Option<BlobWriter>,
    stage: Stage,
}

fn stream_error(status: &Status) -> ServiceError {
    match status.code() {
        // tonic's decoder refuses messages over the size limit with OUT_OF_RANGE.
        tonic::Code::OutOfRange => ServiceError::ResourceExhausted {
            message: "a message exceeds the maximum size (chunks are at most 4 MiB)".into(),
            retry_after: None,
        },
        tonic::Code::InvalidArgument => ServiceError::invalid("chunk", status.message()),
        _ => ServiceError::Cancelled(
            "the upload stream ended abnormally (cancelled or disconnected); nothing was committed"
                .into(),
        ),
    }
}

impl StorageApi {
    async fn run_upload(
        self,
        identity: Identity,
        bearer: Option<String>,
        trace: TraceContext,
        mut stream: Streaming<pb::UploadRequest>,
    ) -> ServiceResult<pb::UploadResponse> {
        let idle = Duration::from_millis(self.config().upload_idle_timeout_ms);
        let first = match tokio::time::timeout(idle, stream.message()).await {
            Err(_) => return Err(idle_error(idle)),
            Ok(result) => result.map_err(|status| stream_error(&status))?,
        };
        let Some(first) = first else {
            return Err(ServiceError::invalid(
                "header",
                "the stream is empty: send the header first",
            ));
        };
        let Some(Payload::Header(header)) = first.payload else {
            return Err(ServiceError::invalid(
                "header",
                "the first message must carry the header",
            ));
        };
        let plan = Plan::from_header(header, self.config())?;
        authz::require_write(
            &identity,
            &plan.key,
            WriteKind::Upload,
            bearer.as_deref(),
            self.inner.owners.as_ref(),
        )
        .await?;
        if plan.expected_size.is_some_and(|size| size > plan.limit) {
            return Err(plan.too_large());
        }

        let etag = ulid::Ulid::new().to_string();
        let idempotency = (!plan.idempotency_key.is_empty()).then(|| {
            Idempotency::new(
                &identity.subject,
                &plan.idempotency_key,
                plan.target.clone(),
            )
        });
        let mut session = Session {
            blob: Backend::blob_path(&etag),
            idempotency,
            writer: None,
            stage: Stage::Receiving,
        };
        let lease = Duration::from_millis(self.config().upload_lease_ms);
        match self
            .inner
            .store
            .begin(&session.blob, lease, session.idempotency.as_ref())
            .await?
        {
            Begin::Started => {}
            Begin::Done(object) => {
                tracing::info!(key = %object.key, "idempotent upload repeated; first result returned");
                return Ok(pb::UploadResponse {
                    object: Some(object),
                    deduplicated: true,
                });
            }
            Begin::Conflict => {
                return Err(ServiceError::FailedPrecondition(
                    "idempotency_key was used before with a different key or key_prefix".into(),
                ));
            }
            Begin::Busy => {
                return Err(ServiceError::Aborted(
                    "an upload with this idempotency_key is still in progress".into(),
                ));
            }
        }

        let result = self
            .receive_and_commit(&identity, &trace, &plan, etag, &mut stream, &mut session)
            .await;
        if let Err(error) = &result {
            tracing::info!(key = %plan.key, code = ?error.code(), %error, "upload not committed");
            self.clean_up(session).await;
        }
        result
    }

    async fn receive_and_commit(
        &self,
        identity: &Identity,
        trace: &TraceContext,
        plan: &Plan,
        etag: String,
        stream: &mut Streaming<pb::UploadRequest>,
        session: &mut Session,
    ) -> ServiceResult<pb::UploadResponse> {
        let config = self.config();
        let store = &self.inner.store;
        let idle = Duration::from_millis(config.upload_idle_timeout_ms);
        let lease = Duration::from_millis(config.upload_lease_ms);
        let writer = session.writer.insert(
            self.inner
                .backend
                .writer(&session.blob)
                .await
                .map_err(backend_error)?,
        );

        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut head: Vec<u8> = Vec::with_capacity(sniff::SNIFF_BYTES);
        let mut content_type: Option<String> = None;
        let mut renew = tokio::time::interval(lease / 3);
        renew.tick().await;
        let mut idle_deadline = Instant::now() + idle;
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout_at(idle_deadline, stream.message()) => message,
                _ = renew.tick() => {
                    match store.renew(&session.blob, lease, session.idempotency.as_ref()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            return Err(ServiceError::Aborted(
                                "the upload's lease was lost; nothing was committed, retry".into(),
                            ));
                        }
                        // Redis unreachable: keep streaming, the commit decides.
                        Err(error) => tracing::warn!(%error, "cannot renew the upload lease"),
                    }
                    continue;
                }
            };
            let message = match message {
                Err(_) => return Err(idle_error(idle)),
                Ok(result) => result.map_err(|status| stream_error(&status))?,
            };
            idle_deadline = Instant::now() + idle;
            let chunk = match message {
                None => break,
                Some(pb::UploadRequest {
                    payload: Some(Payload::Chunk(chunk)),
                }) => chunk,
                Some(pb::UploadRequest {
                    payload: Some(Payload::Header(_)),
                }) => {
                    return Err(ServiceError::invalid(
                        "header",
                        "only the first message may carry a header",
                    ));
                }
                Some(pb::UploadRequest { payload: None }) => {
                    return Err(ServiceError::invalid(
                        "chunk",
                        "every message after the header must carry a chunk",
                    ));
                }
            };
            if chunk.len() > MAX_UPLOAD_CHUNK {
                return Err(ServiceError::ResourceExhausted {
                    message: "a chunk exceeds 4 MiB".into(),
                    retry_after: None,
                });
            }
            if chunk.is_empty() {
                continue;
            }
            size += chunk.len() as u64;
            if size > plan.limit {
                return Err(plan.too_large());
            }
            if plan.expected_size.is_some_and(|expected| size > expected) {
                return Err(ServiceError::invalid(
                    "header.expected_size_bytes",
                    "more bytes were received than expected_size_bytes",
                ));
            }
            hasher.update(&chunk);
            if head.len() < sniff::SNIFF_BYTES {
                let take = (sniff::SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() == sniff::SNIFF_BYTES {
                    // Refuse wrong content as soon as it is known, not after the last byte.
                    content_type = Some(plan.content_type(&head)?);
                }
            }
            writer
                .write(Bytes::from(chunk))
                .await
                .map_err(backend_error)?;
        }

        let content_type = match content_type {
            Some(content_type) => content_type,
            None => plan.content_type(&head)?,
        };
        if let Some(expected) = plan.expected_size
            && expected != size
        {
            return Err(ServiceError::invalid(
                "header.expected_size_bytes",
                format!("{expected} bytes were announced but {size} were received"),
            ));
        }
        let sha256 = validate::hex(&hasher.finalize());
        if !plan.expected_sha256.is_empty() && plan.expected_sha256 != sha256 {
            return Err(ServiceError::invalid(
                "header.expected_sha256",
                "does not match the SHA-256 of the received bytes",
            ));
        }

        session.stage = Stage::Written;
        if let Some(writer) = session.writer.take() {
            writer.finish().await.map_err(backend_error)?;
        }

        let info = pb::ObjectInfo {
            key: plan.key.clone(),
            size_bytes: size,
            content_type,
            sha256,
            metadata: plan.metadata.clone(),
            owner: identity.subject.clone(),
            create_time: Some(events::now_timestamp()),
            etag,
        };
        let event = events::created(&info, trace);
        let record = ObjectRecord {
            info,
            blob: session.blob.clone(),
        };
        let garbage_due =
            now_ms().saturating_add(i64::try_from(config.gc_grace_ms).unwrap_or(i64::MAX));
        session.stage = Stage::Unknown;
        match store
            .commit(&record, &event, garbage_due, session.idempotency.as_ref())
            .await?
        {
            Commit::Committed => session.stage = Stage::Committed,
            Commit::LeaseLost => {
                session.stage = Stage::Written;
                return Err(ServiceError::Aborted(
                    "the upload's lease was lost; nothing was committed, retry".into(),
                ));
            }
        }
        metrics::counter!("storage_uploads_committed_total").increment(1);
        metrics::counter!("storage_upload_bytes_total").increment(size);
        tracing::info!(
            key = %record.info.key,
            size,
            etag = %record.info.etag,
            actor = %identity.subject,
            event = %event.id,
            "object committed"
        );
        Ok(pb::UploadResponse {
            object: Some(record.info),
            deduplicated: false,
        })
    }

    /// Undoes a failed upload (see [`Stage`]).
    async fn clean_up(&self, mut session: Session) {
        let store = &self.inner.store;
        let backend = &self.inner.backend;
        match session.stage {
            Stage::Receiving => {
                if let Some(writer) = session.writer.take() {
                    writer.abort().await;
                }
            }
            Stage::Written => {
                if let Err(error) = backend.delete(&session.blob).await {
                    // The lease stays; the janitor removes the blob when it runs out.
                    tracing::warn!(%error, blob = %session.blob, "cannot remove an uncommitted blob");
                    return;
                }
            }
            Stage::Unknown | Stage::Committed => return,
        }
        if let Err(error) = store
            .abandon(&session.blob, session.idempotency.as_ref())
            .await
        {
            tracing::warn!(%error, "cannot end the lease of a failed upload; it will expire");
        }
    }

    /// Reads an object's record and opens its bytes, retrying when the version was replaced
    /// between the two.
    async fn open(
        &self,
        request: &pb::DownloadRequest,
    ) -> ServiceResult<(
        ObjectRecord,
        u64,
        Option<futures::stream::BoxStream<'static, object_store::Result<Bytes>>>,
    )> {
        for _ in 0..3 {
            let Some(record) = self.inner.store.get(&request.key).await? else {
                return Err(ServiceError::NotFound(format!("object {}", request.key)));
            };
            let Some(range) =
                range::resolve(request.offset, request.length, record.info.size_bytes)
            else {
                return Err(ServiceError::OutOfRange(format!(
                    "offset {} is past the end of the object ({} bytes)",
                    request.offset, record.info.size_bytes
                )));
            };
            let length = range.end - range.start;
            if length == 0 {
                return Ok((record, 0, None));
            }
            match self.inner.backend.read(&record.blob, range).await {
                Ok(body) => return Ok((record, length, Some(body))),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(error) => return Err(backend_error(error)),
            }
        }
        Err(ServiceError::Aborted(
            "the object changed repeatedly while opening it; retry".into(),
        ))
    }
}

fn idle_error(idle: Duration) -> ServiceError {
    ServiceError::DeadlineExceeded(format!(
        "nothing was received for {} ms; the upload was aborted and nothing was committed",
        idle.as_millis()
    ))
}

/// Sends a blob's bytes as `chunk` messages; the receiver going away stops it.
async fn pump(
    mut body: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    expected: u64,
    tx: mpsc::Sender<Result<pb::DownloadResponse, Status>>,
) {
    let mut sent: u64 = 0;
    while let Some(piece) = body.next().await {
        let bytes = match piece {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => {
                let _ = tx
                    .send(Err(ServiceError::Aborted(
                        "the object was replaced or deleted while streaming; retry".into(),
                    )
                    .into()))
                    .await;
                return;
            }
            Err(error) => {
                let _ = tx.send(Err(backend_error(error).into())).await;
                return;
            }
        };
        sent += bytes.len() as u64;
        let message = pb::DownloadResponse {
            payload: Some(pb::download_response::Payload::Chunk(bytes.to_vec())),
        };
        if tx.send(Ok(message)).await.is_err() {
            return; // client gone
        }
    }
    if sent != expected {
        tracing::error!(sent, expected, "blob shorter than its recorded size");
        let _ = tx
            .send(Err(ServiceError::DataLoss(
                "the object's content is shorter than recorded".into(),
            )
            .into()))
            .await;
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::storage_service_server::StorageService for StorageApi {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let identity = caller(&request)?.clone();
        let bearer = bearer(&request);
        let trace = TraceContext::current();
        let stream = request.into_inner();
        // Its own task: if the client goes away, the call's future is dropped, but the upload
        // still sees its stream fail and cleans up.
        let task = tokio::spawn(
            self.clone()
                .run_upload(identity, bearer, trace, stream)
                .instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(result) => Ok(Response::new(result?)),
            Err(error) => Err(ServiceError::internal(error).into()),
        }
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        authz::require_read(caller(&request)?)?;
        let request = request.into_inner();
        check_key("key", &request.key)?;
        let (record, length, body) = self.open(&request).await?;
        let (tx, rx) = mpsc::channel(2);
        let info = pb::DownloadResponse {
            payload: Some(pb::download_response::Payload::Info(record.info)),
        };
        // The channel is new and has room: the info always goes first.
        let _ = tx.try_send(Ok(info));
        if let Some(body) = body {
            tokio::spawn(pump(body, length, tx).instrument(tracing::Span::current()));
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        authz::require_read(caller(&request)?)?;
        let request = request.into_inner();
        check_key("key", &request.key)?;
        let Some(record) = self.inner.store.get(&request.key).await? else {
            return Err(ServiceError::NotFound(format!("object {}", request.key)).into());
        };
        Ok(Response::new(pb::StatResponse {
            object: Some(record.info),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        authz::require_read(caller(&request)?)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if let Some(problem) = keys::list_prefix_problem(&request.prefix) {
            violations.add("prefix", problem);
        }
        let page_size = match usize::try_from(request.page_size) {
            Err(_) => {
                violations.add("page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            match page_token::decode(&request.prefix, &request.page_token) {
                Ok(key) => Some(key),
                Err(problem) => {
                    violations.add("page_token", problem);
                    None
                }
            }
        };
        violations.into_result()?;
        let (objects, next) = self
            .inner
            .store
            .list(&request.prefix, after.as_deref(), page_size)
            .await?;
        Ok(Response::new(pb::ListResponse {
            objects,
            next_page_token: next
                .map(|last| page_token::encode(&request.prefix, &last))
                .unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let identity = caller(&request)?.clone();
        let bearer = bearer(&request);
        let request = request.into_inner();
        check_key("key", &request.key)?;
        authz::require_write(
            &identity,
            &request.key,
            WriteKind::Delete,
            bearer.as_deref(),
            self.inner.owners.as_ref(),
        )
        .await?;
        let event = events::deleted(&request.key, &identity.subject, &TraceContext::current());
        let garbage_due =
            now_ms().saturating_add(i64::try_from(self.config().gc_grace_ms).unwrap_or(i64::MAX));
        let existed = self
            .inner
            .store
            .delete(&request.key, &event, garbage_due)
            .await?;
        if existed {
            metrics::counter!("storage_deletes_committed_total").increment(1);
            tracing::info!(key = %request.key, actor = %identity.subject, event = %event.id, "object deleted");
        }
        Ok(Response::new(pb::DeleteResponse { existed }))
    }
}
