//! The reconciler: finds images stuck in `IMAGE_STATE_PROCESSING` and makes the thumbnail
//! pipeline run for them again.
//!
//! Each run (a scheduled trigger; one instance at a time, see `engine`) lists images
//! `PROCESSING` since before `stuck_after_secs` with catalog `ListImages`, and for each:
//!
//! - re-emits its original's `ObjectCreated` event: the original is `Stat`ed in storage and an
//!   event is appended to the storage event stream in exactly the encoding
//!   `storemesh.events.v1` documents (fields `event`, `id`, `type`, `key`), with a new ULID id,
//!   source `storemesh.dispatcher.reconciler` and the current time (it reports the object
//!   again, now; the original commit time would make it look older than
//!   `max_event_age_secs`). The normal routes then deliver it, so the thumbnail function runs
//!   again with every guarantee an upload gets. Appending to the stream rather than calling
//!   the target directly keeps one delivery path;
//! - at most `max_reemits` times, at least `stuck_after_secs` apart (the count lives in
//!   `{prefix}reconciler:{image_id}`), so a slow pipeline is not flooded;
//! - after that, or when the original is gone from storage, marks the image `FAILED` with a
//!   reason (`MarkImageFailed`), so a seller sees a final state instead of waiting forever.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use redis::aio::ConnectionManager;
use storemesh_mesh::MeshChannel;
use storemesh_mesh::client::ServiceTokens;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::events::v1 as events_pb;
use storemesh_proto::storage::v1 as storage_pb;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_runtime::time::{now_ms, now_timestamp, timestamp_from_ms};

use crate::config::ReconcilerConfig;
use crate::metrics;

/// `Event.source` of re-emitted events.
pub const SOURCE: &str = "storemesh.dispatcher.reconciler";
/// How long the per-image re-emission count is kept.
const COUNT_TTL_SECS: i64 = 7 * 86_400;
const PAGE_SIZE: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot get a service token: {0}")]
    Token(tonic::Status),
    #[error("catalog ListImages failed: {0}")]
    List(tonic::Status),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("the run did not finish within reconciler.lock_ttl_ms")]
    TimedOut,
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Stuck images found.
    pub stuck: usize,
    /// Events re-emitted.
    pub reemitted: usize,
    /// Images marked `FAILED`.
    pub failed: usize,
}

pub struct Reconciler {
    catalog: CatalogServiceClient<MeshChannel>,
    storage: StorageServiceClient<MeshChannel>,
    tokens: Arc<ServiceTokens>,
    redis: ConnectionManager,
    config: ReconcilerConfig,
    stream: String,
    key_prefix: String,
}

/// What to do with one stuck image, given its re-emission record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Re-emitted recently: give the pipeline time.
    Wait,
    ReEmit,
    GiveUp,
}

/// The pure rule: re-emit at most `max` times, at least `spacing_ms` apart, then give up.
pub fn next_step(count: u32, last_ms: i64, now_ms: i64, max: u32, spacing_ms: i64) -> Step {
    if count > 0 && now_ms - last_ms < spacing_ms {
        Step::Wait
    } else if count >= max {
        Step::GiveUp
    } else {
        Step::ReEmit
    }
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(10));
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

impl Reconciler {
    pub fn new(
        catalog: CatalogServiceClient<MeshChannel>,
        storage: StorageServiceClient<MeshChannel>,
        tokens: Arc<ServiceTokens>,
        redis: ConnectionManager,
        config: ReconcilerConfig,
        stream: &str,
        key_prefix: &str,
    ) -> Self {
        Self {
            catalog,
            storage,
            tokens,
            redis,
            config,
            stream: stream.to_owned(),
            key_prefix: key_prefix.to_owned(),
        }
    }

    pub async fn run_once(&self) -> Result<ReconcileReport, ReconcileError> {
        let token = self.tokens.get().await.map_err(ReconcileError::Token)?;
        let stuck_before = now_ms()
            - i64::try_from(self.config.stuck_after_secs.saturating_mul(1_000))
                .unwrap_or(i64::MAX / 2);
        let mut report = ReconcileReport::default();
        let mut page_token = String::new();
        loop {
            let page = self
                .catalog
                .clone()
                .list_images(bearer(
                    catalog_pb::ListImagesRequest {
                        state: catalog_pb::ImageState::Processing.into(),
                        updated_before: Some(timestamp_from_ms(stuck_before)),
                        page_size: PAGE_SIZE,
                        page_token: page_token.clone(),
                    },
                    &token,
                ))
                .await
                .map_err(|status| {
                    if status.code() == tonic::Code::Unauthenticated {
                        let (tokens, refused) = (self.tokens.clone(), token.clone());
                        tokio::spawn(async move { tokens.invalidate(&refused).await });
                    }
                    ReconcileError::List(status)
                })?
                .into_inner();
            for image in &page.images {
                report.stuck += 1;
                match self.reconcile(image, &token).await {
                    Ok(Some(Step::ReEmit)) => report.reemitted += 1,
                    Ok(Some(Step::GiveUp)) => report.failed += 1,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(image = %image.id, %error, "cannot reconcile a stuck image; next run tries again");
                    }
                }
                if report.stuck >= self.config.max_images_per_run {
                    return Ok(report);
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(report);
            }
            page_token = page.next_page_token;
        }
    }

    /// Handles one stuck image; `None` when nothing could be done (storage or catalog down).
    async fn reconcile(
        &self,
        image: &catalog_pb::Image,
        token: &str,
    ) -> Result<Option<Step>, ReconcileError> {
        let key = format!("{}reconciler:{}", self.key_prefix, image.id);
        let mut redis = self.redis.clone();
        let (count, last_ms): (Option<u32>, Option<i64>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("count")
            .arg("last_ms")
            .query_async(&mut redis)
            .await?;
        let (count, last_ms) = (count.unwrap_or(0), last_ms.unwrap_or(0));
        let spacing = i64::try_from(self.config.stuck_after_secs.saturating_mul(1_000))
            .unwrap_or(i64::MAX / 2);
        let now = now_ms();
        match next_step(count, last_ms, now, self.config.max_reemits, spacing) {
            Step::Wait => Ok(Some(Step::Wait)),
            Step::GiveUp => {
                let reason = format!(
                    "thumbnails were not made after {count} retries of the processing (the image stayed PROCESSING)"
                );
                self.mark_failed(image, &reason, token).await?;
                let _: () = redis::cmd("DEL").arg(&key).query_async(&mut redis).await?;
                Ok(Some(Step::GiveUp))
            }
            Step::ReEmit => {
                let stat = self
                    .storage
                    .clone()
                    .stat(bearer(
                        storage_pb::StatRequest {
                            key: image.storage_key.clone(),
                        },
                        token,
                    ))
                    .await;
                let info = match stat {
                    Ok(response) => response.into_inner().object.unwrap_or_default(),
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        self.mark_failed(image, "the original is missing from storage", token)
                            .await?;
                        return Ok(Some(Step::GiveUp));
                    }
                    Err(status) => {
                        tracing::warn!(image = %image.id, code = ?status.code(), message = status.message(), "cannot stat the original");
                        return Ok(None);
                    }
                };
                let event = reemitted_event(&info);
                let encoded = event.encode_to_vec();
                let _: () = redis::pipe()
                    .atomic()
                    .cmd("XADD")
                    .arg(&self.stream)
                    .arg("*")
                    .arg("event")
                    .arg(encoded)
                    .arg("id")
                    .arg(&event.id)
                    .arg("type")
                    .arg(event.r#type().as_str_name())
                    .arg("key")
                    .arg(&event.subject)
                    .ignore()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("count")
                    .arg(count + 1)
                    .arg("last_ms")
                    .arg(now)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(COUNT_TTL_SECS)
                    .ignore()
                    .query_async(&mut redis)
                    .await?;
                ::metrics::counter!(metrics::RECONCILER_REEMITTED_TOTAL).increment(1);
                tracing::info!(image = %image.id, key = %event.subject, event = %event.id, reemit = count + 1, "event re-emitted for a stuck image");
                Ok(Some(Step::ReEmit))
            }
        }
    }

    async fn mark_failed(
        &self,
        image: &catalog_pb::Image,
        reason: &str,
        token: &str,
    ) -> Result<(), ReconcileError> {
        let result = self
            .catalog
            .clone()
            .mark_image_failed(bearer(
                catalog_pb::MarkImageFailedRequest {
                    image_id: image.id.clone(),
                    reason: reason.to_owned(),
                    event_id: String::new(),
                },
                token,
            ))
            .await;
        match result {
            Ok(_) => {
                ::metrics::counter!(metrics::RECONCILER_FAILED_TOTAL).increment(1);
                tracing::warn!(image = %image.id, reason, "stuck image marked FAILED");
            }
            // It became READY (or was deleted) meanwhile: nothing left to do.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ) => {}
            Err(status) => {
                tracing::warn!(image = %image.id, code = ?status.code(), message = status.message(), "cannot mark a stuck image FAILED");
            }
        }
        Ok(())
    }
}

/// The `ObjectCreated` event of an existing object, as the reconciler re-emits it.
pub fn reemitted_event(info: &storage_pb::ObjectInfo) -> events_pb::Event {
    events_pb::Event {
        id: ulid::Ulid::new().to_string(),
        r#type: events_pb::EventType::ObjectCreated.into(),
        source: SOURCE.into(),
        subject: info.key.clone(),
        time: Some(now_timestamp()),
        trace_parent: String::new(),
        trace_state: String::new(),
        data: Some(events_pb::event::Data::ObjectCreated(
            events_pb::ObjectCreated {
                key: info.key.clone(),
                size_bytes: info.size_bytes,
                sha256: info.sha256.clone(),
                content_type: info.content_type.clone(),
                metadata: info.metadata.clone(),
                actor: info.owner.clone(),
                etag: info.etag.clone(),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_emissions_are_spaced_and_bounded() {
        assert_eq!(next_step(0, 0, 1_000_000, 3, 600_000), Step::ReEmit);
        assert_eq!(next_step(1, 900_000, 1_000_000, 3, 600_000), Step::Wait);
        assert_eq!(next_step(1, 300_000, 1_000_000, 3, 600_000), Step::ReEmit);
        assert_eq!(next_step(3, 300_000, 1_000_000, 3, 600_000), Step::GiveUp);
        assert_eq!(next_step(3, 900_000, 1_000_000, 3, 600_000), Step::Wait);
        assert_eq!(
            next_step(0, 0, 5, 0, 600_000),
            Step::GiveUp,
            "max 0 never re-emits"
        );
    }

    #[test]
    fn re_emitted_events_describe_the_object_now() {
        let info = storage_pb::ObjectInfo {
            key: "products/p/originals/i".into(),
            size_bytes: 10,
            content_type: "image/jpeg".into(),
            sha256: "ab".repeat(32),
            owner: "seller-1".into(),
            etag: "e1".into(),
            ..Default::default()
        };
        let event = reemitted_event(&info);
        assert_eq!(event.source, SOURCE);
        assert_eq!(event.r#type(), events_pb::EventType::ObjectCreated);
        assert_eq!(event.subject, info.key);
        assert!(ulid::Ulid::from_string(&event.id).is_ok());
        let Some(events_pb::event::Data::ObjectCreated(created)) = event.data else {
            panic!("no data")
        };
        assert_eq!(created.actor, "seller-1");
        assert_eq!(created.size_bytes, 10);
    }
}
