//! Delivery targets: an edge function's HTTP route (signed per `storemesh_delivery`) and catalog
//! `RecordVariant` through the mesh (`storemesh_mesh::MeshChannel`: discovery, balancing,
//! ejection, deadlines).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use storemesh_delivery as delivery;
use storemesh_mesh::MeshChannel;
use storemesh_mesh::client::ServiceTokens;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::events::v1 as events_pb;
use storemesh_proto::events::v1::event::Data;
use tokio::sync::Semaphore;

use crate::config::TargetKind;
use crate::retry::{Attempt, Policy, classify_grpc, classify_http};

/// How much of an error answer's body is kept for the dead letter.
const ERROR_BODY_BYTES: usize = 512;

/// One configured target with its concurrency limit and retry policy.
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub timeout: Duration,
    pub policy: Policy,
    /// Deliveries in flight to this target (per instance).
    pub permits: Arc<Semaphore>,
    pub concurrency: usize,
    deliver: Deliver,
}

enum Deliver {
    Http(Box<HttpTarget>),
    RecordVariant(RecordVariantTarget),
    /// Reconcilers are run by the scheduler, never with an event.
    None,
}

impl Target {
    pub fn http(name: &str, settings: TargetSettings, http: HttpTarget) -> Self {
        Self::new(
            name,
            TargetKind::Http,
            settings,
            Deliver::Http(Box::new(http)),
        )
    }

    pub fn record_variant(name: &str, settings: TargetSettings, grpc: RecordVariantTarget) -> Self {
        Self::new(
            name,
            TargetKind::RecordVariant,
            settings,
            Deliver::RecordVariant(grpc),
        )
    }

    pub fn reconciler(name: &str, settings: TargetSettings) -> Self {
        Self::new(name, TargetKind::Reconciler, settings, Deliver::None)
    }

    fn new(name: &str, kind: TargetKind, settings: TargetSettings, deliver: Deliver) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            timeout: settings.timeout,
            policy: settings.policy,
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            concurrency: settings.concurrency,
            deliver,
        }
    }

    /// One attempt, bounded by the target's timeout.
    pub async fn deliver(
        &self,
        event: &events_pb::Event,
        attempt: u32,
        first_attempt_ms: i64,
    ) -> Attempt {
        let work = async {
            match &self.deliver {
                Deliver::Http(http) => http.deliver(event, attempt, first_attempt_ms).await,
                Deliver::RecordVariant(grpc) => grpc.deliver(event, self.timeout).await,
                Deliver::None => Attempt::Permanent {
                    error: format!("target {} cannot take events", self.name),
                },
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Attempt::Transient {
                error: format!("no answer within {} ms", self.timeout.as_millis()),
                retry_after: None,
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TargetSettings {
    pub timeout: Duration,
    pub concurrency: usize,
    pub policy: Policy,
}

/// `POST` of a signed `Delivery` to an edge function route.
pub struct HttpTarget {
    url: http::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    secrets: Arc<Vec<Vec<u8>>>,
}

impl HttpTarget {
    pub fn new(url: http::Uri, secrets: Arc<Vec<Vec<u8>>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            secrets,
        }
    }

    async fn deliver(
        &self,
        event: &events_pb::Event,
        attempt: u32,
        first_attempt_ms: i64,
    ) -> Attempt {
        let body = events_pb::Delivery {
            event: Some(event.clone()),
            attempt,
            first_attempt_time: Some(storemesh_runtime::time::timestamp_from_ms(first_attempt_ms)),
        }
        .encode_to_vec();
        let timestamp = storemesh_runtime::time::since_epoch().as_secs();
        let signature = match delivery::sign_all(&self.secrets, timestamp, &body) {
            Ok(signature) => signature,
            Err(error) => {
                return Attempt::Transient {
                    error: format!("cannot sign the delivery: {error}"),
                    retry_after: None,
                };
            }
        };
        let mut builder = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, delivery::CONTENT_TYPE)
            .header(delivery::EVENT_ID_HEADER, &event.id)
            .header(delivery::IDEMPOTENCY_KEY_HEADER, &event.id)
            .header(delivery::ATTEMPT_HEADER, attempt.to_string())
            .header(delivery::TIMESTAMP_HEADER, timestamp.to_string())
            .header(delivery::SIGNATURE_HEADER, signature);
        // Continue the trace of the request that made the change.
        if !event.trace_parent.is_empty() {
            builder = builder.header("traceparent", &event.trace_parent);
            if !event.trace_state.is_empty() {
                builder = builder.header("tracestate", &event.trace_state);
            }
        }
        let request = match builder.body(Full::new(Bytes::from(body))) {
            Ok(request) => request,
            Err(error) => {
                // Only a header value can be bad here: an event id with control characters.
                return Attempt::Permanent {
                    error: format!("cannot build the request: {error}"),
                };
            }
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(error) => {
                return Attempt::Transient {
                    error: format!("request failed: {error}"),
                    retry_after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let detail = if response.status().is_success() {
            String::new()
        } else {
            // Only the start of the body is kept; a failed read just loses the detail.
            match Limited::new(response.into_body(), ERROR_BODY_BYTES)
                .collect()
                .await
            {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    String::from_utf8_lossy(&bytes).trim().to_owned()
                }
                Err(_) => String::new(),
            }
        };
        classify_http(status, &detail, retry_after)
    }
}

/// `CatalogService.RecordVariant` for a thumbnail's `ObjectCreated` event.
pub struct RecordVariantTarget {
    catalog: CatalogServiceClient<MeshChannel>,
    tokens: Arc<ServiceTokens>,
}

impl RecordVariantTarget {
    pub fn new(catalog: CatalogServiceClient<MeshChannel>, tokens: Arc<ServiceTokens>) -> Self {
        Self { catalog, tokens }
    }

    async fn deliver(&self, event: &events_pb::Event, timeout: Duration) -> Attempt {
        let request = match record_variant_request(event) {
            Ok(request) => request,
            Err(problem) => {
                return Attempt::Permanent {
                    error: format!("not a recordable thumbnail event: {problem}"),
                };
            }
        };
        let token = match self.tokens.get().await {
            Ok(token) => token,
            Err(status) => {
                return Attempt::Transient {
                    error: format!(
                        "cannot get a service token: {}: {}",
                        storemesh_runtime::error::code_name(status.code()),
                        status.message()
                    ),
                    retry_after: None,
                };
            }
        };
        let mut call = tonic::Request::new(request);
        call.set_timeout(timeout);
        let metadata = call.metadata_mut();
        match (format!("Bearer {token}").parse(), event.id.parse()) {
            (Ok(authorization), Ok(key)) => {
                metadata.insert("authorization", authorization);
                metadata.insert(delivery::IDEMPOTENCY_KEY_HEADER, key);
            }
            _ => {
                return Attempt::Permanent {
                    error: "the event id or token is not a valid header value".into(),
                };
            }
        }
        if !event.trace_parent.is_empty()
            && let Ok(value) = event.trace_parent.parse()
        {
            metadata.insert("traceparent", value);
        }
        match self.catalog.clone().record_variant(call).await {
            Ok(_) => Attempt::Delivered,
            Err(status) => {
                if status.code() == tonic::Code::Unauthenticated {
                    self.tokens.invalidate(&token).await;
                }
                classify_grpc(status.code(), status.message(), true)
            }
        }
    }
}

/// The `RecordVariant` call a thumbnail's `ObjectCreated` event stands for: the key
/// `products/{product_id}/thumbnails/{image_id}/{name}.{ext}`, the metadata `variant`, `width`
/// and `height` written by the thumbnail function, size, SHA-256 and content type from the event.
pub fn record_variant_request(
    event: &events_pb::Event,
) -> Result<catalog_pb::RecordVariantRequest, String> {
    let Some(Data::ObjectCreated(created)) = &event.data else {
        return Err("not an ObjectCreated event".into());
    };
    let segments: Vec<&str> = created.key.split('/').collect();
    let ["products", _product_id, "thumbnails", image_id, file] = segments.as_slice() else {
        return Err(format!(
            "key {} is not products/{{product_id}}/thumbnails/{{image_id}}/{{file}}",
            created.key
        ));
    };
    let metadata = |name: &str| {
        created
            .metadata
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("metadata `{name}` is missing"))
    };
    let name = match created.metadata.get("variant") {
        Some(name) => name.clone(),
        // The file name without its extension is the variant name by the key layout.
        None => file
            .rsplit_once('.')
            .map(|(stem, _)| stem.to_owned())
            .ok_or_else(|| "metadata `variant` is missing".to_owned())?,
    };
    let pixels = |name: &str| -> Result<u32, String> {
        metadata(name)?
            .trim()
            .parse()
            .map_err(|_| format!("metadata `{name}` is not a number of pixels"))
    };
    let format = match created.content_type.as_str() {
        "image/jpeg" => catalog_pb::ImageFormat::Jpeg,
        "image/png" => catalog_pb::ImageFormat::Png,
        "image/webp" => catalog_pb::ImageFormat::Webp,
        "image/gif" => catalog_pb::ImageFormat::Gif,
        other => return Err(format!("content type `{other}` is not a thumbnail format")),
    };
    Ok(catalog_pb::RecordVariantRequest {
        image_id: (*image_id).to_owned(),
        variant: Some(catalog_pb::ImageVariant {
            name,
            width: pixels("width")?,
            height: pixels("height")?,
            format: format.into(),
            storage_key: created.key.clone(),
            size_bytes: created.size_bytes,
            sha256: created.sha256.clone(),
            ..Default::default()
        }),
        event_id: event.id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thumbnail_event(
        key: &str,
        metadata: &[(&str, &str)],
        content_type: &str,
    ) -> events_pb::Event {
        events_pb::Event {
            id: "01HEVENT".into(),
            r#type: events_pb::EventType::ObjectCreated.into(),
            subject: key.into(),
            data: Some(Data::ObjectCreated(events_pb::ObjectCreated {
                key: key.into(),
                size_bytes: 1234,
                sha256: "ab".repeat(32),
                content_type: content_type.into(),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn thumbnail_events_become_record_variant_calls() {
        let event = thumbnail_event(
            "products/p1/thumbnails/img1/w320.webp",
            &[("variant", "w320"), ("width", "320"), ("height", "240")],
            "image/webp",
        );
        let request = record_variant_request(&event).unwrap();
        assert_eq!(request.image_id, "img1");
        assert_eq!(request.event_id, "01HEVENT");
        let variant = request.variant.unwrap();
        assert_eq!(variant.name, "w320");
        assert_eq!((variant.width, variant.height), (320, 240));
        assert_eq!(variant.format(), catalog_pb::ImageFormat::Webp);
        assert_eq!(variant.storage_key, "products/p1/thumbnails/img1/w320.webp");
        assert_eq!(variant.size_bytes, 1234);
        assert_eq!(
            variant.sha256,
            "ab".repeat(32),
            "the thumbnail's ETag travels along"
        );
    }

    #[test]
    fn unrecordable_events_say_why() {
        let good = [("variant", "w160"), ("width", "160"), ("height", "120")];
        let cases = [
            thumbnail_event("products/p1/originals/img1", &good, "image/jpeg"),
            thumbnail_event(
                "products/p1/thumbnails/img1/w160.jpg",
                &[("variant", "w160")],
                "image/jpeg",
            ),
            thumbnail_event(
                "products/p1/thumbnails/img1/w160.jpg",
                &[("variant", "w160"), ("width", "wide"), ("height", "1")],
                "image/jpeg",
            ),
            thumbnail_event("products/p1/thumbnails/img1/w160.jpg", &good, "text/plain"),
        ];
        for event in cases {
            assert!(record_variant_request(&event).is_err(), "{event:?}");
        }
        let deleted = events_pb::Event {
            data: Some(Data::ObjectDeleted(events_pb::ObjectDeleted::default())),
            ..Default::default()
        };
        assert!(record_variant_request(&deleted).is_err());
    }
}
