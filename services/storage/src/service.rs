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
use storemesh_runtime::auth::{Identity, Role, caller};
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
use crate::store::{Begin, Charge, Commit, Idempotency, ObjectRecord, Slot, Store, now_ms};
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

    /// Whom an upload to `key` is charged to: keys under `products/{product_id}/` to the
    /// product's seller (the caller when a seller writes their own product's originals, else
    /// the seller remembered for the product, else the catalog's answer); a seller's own
    /// uploads are held to `max_stored_bytes_per_seller`.
    async fn charge_for(
        &self,
        identity: &Identity,
        key: &str,
        bearer: Option<&str>,
    ) -> ServiceResult<Charge> {
        let Some(product_id) = keys::product_of(key).filter(|id| keys::is_catalog_id(id)) else {
            return Ok(Charge::default());
        };
        let quota =
            (identity.role == Role::Seller).then_some(self.config().max_stored_bytes_per_seller);
        // Sellers write only their own products (checked before), so they pay themselves.
        let seller = if identity.role == Role::Seller {
            Some(identity.subject.clone())
        } else {
            match self.inner.store.product_seller(product_id).await? {
                Some(seller) => Some(seller),
                // Nothing of the product's seller stored yet (an admin writing first): ask the
                // catalog, but an unreachable catalog does not block a service's or an
                // admin's upload; it is only left uncharged.
                None => match self.inner.owners.seller_of(product_id, bearer).await {
                    Ok(seller) => seller,
                    Err(error) => {
                        tracing::warn!(%error, product_id, "cannot tell whom to charge; the upload is not charged");
                        None
                    }
                },
            }
        };
        Ok(Charge {
            seller,
            product_id: Some(product_id.to_owned()),
            quota,
        })
    }

    async fn require_read(
        &self,
        identity: &Identity,
        key: &str,
        bearer: Option<&str>,
    ) -> ServiceResult<()> {
        authz::require(
            authz::read_decision(identity, key),
            identity,
            bearer,
            self.inner.owners.as_ref(),
        )
        .await
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
    slot: Slot,
    charge: Charge,
    /// Bytes the seller may still add (their quota minus usage, plus what a replaced version
    /// of the same key gives back); checked while streaming, the commit decides.
    room: Option<u64>,
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
        let charge = self
            .charge_for(&identity, &plan.key, bearer.as_deref())
            .await?;
        let room = match (&charge.seller, charge.quota) {
            (Some(seller), Some(quota)) => {
                let store = &self.inner.store;
                let used = store.usage(seller).await?;
                let back = store.charged_size(&plan.key, seller).await?;
                let room = quota.saturating_add(back).saturating_sub(used);
                if room == 0 || plan.expected_size.is_some_and(|size| size > room) {
                    return Err(over_quota(quota));
                }
                Some(room)
            }
            _ => None,
        };
        let max_uploads = if identity.is_service() {
            self.config().max_concurrent_uploads_per_service
        } else {
            self.config().max_concurrent_uploads_per_identity
        };

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
            slot: Slot::new(&identity.subject, max_uploads),
            charge,
            room,
            writer: None,
            stage: Stage::Receiving,
        };
        let lease = Duration::from_millis(self.config().upload_lease_ms);
        match self
            .inner
            .store
            .begin(
                &session.blob,
                lease,
                session.idempotency.as_ref(),
                &session.slot,
            )
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
            Begin::TooManyUploads => {
                metrics::counter!("storage_uploads_refused_total", "reason" => "concurrency")
                    .increment(1);
                return Err(ServiceError::ResourceExhausted {
                    message: format!(
                        "at most {max_uploads} uploads per caller may be in progress at once; \
                         retry when one has finished"
                    ),
                    retry_after: Some(TOO_MANY_UPLOADS_RETRY),
                });
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
        let mut floor = RateFloor::new(config, Instant::now());
        let mut rate_check = tokio::time::interval_at(
            floor
                .as_ref()
                .map_or_else(Instant::now, RateFloor::first_check),
            floor
                .as_ref()
                .map_or(Duration::from_secs(1), RateFloor::period),
        );
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout_at(idle_deadline, stream.message()) => message,
                now = rate_check.tick(), if floor.is_some() => {
                    if let Some(floor) = &mut floor
                        && let Err(error) = floor.check(now, size)
                    {
                        metrics::counter!("storage_uploads_too_slow_total").increment(1);
                        return Err(error);
                    }
                    continue;
                }
                _ = renew.tick() => {
                    match store.renew(&session.blob, lease, session.idempotency.as_ref(), &session.slot).await {
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
            if let Some(floor) = &mut floor {
                floor.record(Instant::now(), size);
            }
            if size > plan.limit {
                return Err(plan.too_large());
            }
            if let (Some(room), Some(quota)) = (session.room, session.charge.quota)
                && size > room
            {
                return Err(over_quota(quota));
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
            .commit(
                &record,
                &event,
                garbage_due,
                session.idempotency.as_ref(),
                &session.slot,
                &session.charge,
            )
            .await?
        {
            Commit::Committed => session.stage = Stage::Committed,
            Commit::LeaseLost => {
                session.stage = Stage::Written;
                return Err(ServiceError::Aborted(
                    "the upload's lease was lost; nothing was committed, retry".into(),
                ));
            }
            Commit::OverQuota => {
                session.stage = Stage::Written;
                return Err(over_quota(session.charge.quota.unwrap_or_default()));
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
            .abandon(&session.blob, session.idempotency.as_ref(), &session.slot)
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

/// The minimum upload rate (`upload_min_bytes_per_sec`): after the grace period, the bytes
/// received over the last window (from the last chunk that arrived at or before its start, so a
/// window spans whole chunks) must average at least the minimum. The history is kept as at most
/// [`RateFloor::SAMPLES`] samples per window, whatever the number of chunks.
struct RateFloor {
    min_bytes_per_sec: u64,
    window: Duration,
    grace: Duration,
    started: Instant,
    /// (start of the sample's slot, arrival of its last chunk, bytes received up to that chunk),
    /// oldest first; chunks within one slot (`window / SAMPLES`) share a sample.
    samples: std::collections::VecDeque<(Instant, Instant, u64)>,
}

impl RateFloor {
    const SAMPLES: u32 = 32;

    fn new(config: &StorageConfig, started: Instant) -> Option<Self> {
        (config.upload_min_bytes_per_sec > 0).then(|| Self {
            min_bytes_per_sec: config.upload_min_bytes_per_sec,
            window: Duration::from_millis(config.upload_min_rate_window_ms),
            grace: Duration::from_millis(config.upload_min_rate_grace_ms),
            started,
            samples: std::collections::VecDeque::new(),
        })
    }

    fn first_check(&self) -> Instant {
        self.started + self.grace.max(self.period())
    }

    /// How often the rate is checked: a fraction of the window, at most every second.
    fn period(&self) -> Duration {
        (self.window / 8).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    fn record(&mut self, now: Instant, total: u64) {
        let spacing = self.window / Self::SAMPLES;
        match self.samples.back_mut() {
            Some((slot, at, bytes)) if now.duration_since(*slot) < spacing => {
                (*at, *bytes) = (now, total);
            }
            _ => self.samples.push_back((now, now, total)),
        }
    }

    fn check(&mut self, now: Instant, total: u64) -> ServiceResult<()> {
        if now.duration_since(self.started) < self.grace {
            return Ok(());
        }
        let window_start = now.checked_sub(self.window).unwrap_or(self.started);
        // Keep one sample at or before the window's start: the base the window counts from.
        while self
            .samples
            .get(1)
            .is_some_and(|(_, at, _)| *at <= window_start)
        {
            self.samples.pop_front();
        }
        let (since, base) = match self.samples.front() {
            Some(&(_, at, bytes)) if at <= window_start => (at, bytes),
            _ => (self.started, 0),
        };
        let elapsed_ms = now.duration_since(since).as_millis();
        let received = u128::from(total.saturating_sub(base));
        if received * 1000 >= u128::from(self.min_bytes_per_sec) * elapsed_ms {
            return Ok(());
        }
        Err(ServiceError::DeadlineExceeded(format!(
            "the upload was slower than the minimum of {} bytes/s over the last {} ms; it was \
             aborted and nothing was committed",
            self.min_bytes_per_sec,
            self.window.as_millis()
        )))
    }
}

/// `retry-after` of an upload refused for the caller's uploads in progress.
const TOO_MANY_UPLOADS_RETRY: Duration = Duration::from_secs(1);

fn over_quota(quota: u64) -> ServiceError {
    metrics::counter!("storage_uploads_refused_total", "reason" => "quota").increment(1);
    ServiceError::ResourceExhausted {
        message: format!(
            "the seller's storage quota of {quota} bytes would be exceeded; delete images to \
             make room"
        ),
        retry_after: None,
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
        let identity = caller(&request)?.clone();
        let bearer = bearer(&request);
        let request = request.into_inner();
        check_key("key", &request.key)?;
        self.require_read(&identity, &request.key, bearer.as_deref())
            .await?;
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
        let identity = caller(&request)?.clone();
        let bearer = bearer(&request);
        let request = request.into_inner();
        check_key("key", &request.key)?;
        self.require_read(&identity, &request.key, bearer.as_deref())
            .await?;
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
        let identity = caller(&request)?.clone();
        let bearer = bearer(&request);
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
        authz::require(
            authz::list_decision(&identity, &request.prefix),
            &identity,
            bearer.as_deref(),
            self.inner.owners.as_ref(),
        )
        .await?;
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
