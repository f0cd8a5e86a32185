//! `thumbnail`: `POST /internal/thumbnail` — the event dispatcher delivers each storage event
//! here (the delivery contract of `storemesh-delivery`: a protobuf
//! `storemesh.events.v1.Delivery` body, HMAC-SHA256 signed headers).
//!
//! 1. The signature headers are checked before the body is read (`401` when the timestamp is
//!    missing, malformed or outside the replay window, or the signature header is missing,
//!    malformed or carries more than `storemesh_delivery::MAX_SIGNATURES` `v1=` values); then
//!    the body (at most 64 KiB) and its signature, one HMAC per configured secret (`401` when
//!    forged); nothing else is read from an unauthentic delivery.
//! 2. Events that are not a created original (`products/{product_id}/originals/{image_id}`) are
//!    acknowledged with `200 {"result":"ignored"}`: the dispatcher may send every storage event
//!    (thumbnails, deletions) and none of them is an error; a 4xx would dead-letter them.
//! 3. A service token (auth `IssueServiceToken` with the account in `thumbnail_client_id` /
//!    `thumbnail_client_secret`): a Spin instance lives for one request, so there is one token
//!    per delivery (see auth's `rate_limit.service_token_per_client`).
//! 4. catalog `GetImage`: a failed image is skipped (`200 {"result":"skipped"}`); an image the
//!    catalog does not know is skipped when its original is gone (deleted), and retried (`503`)
//!    when the original exists (the upload hook attaches right after uploading).
//! 5. storage `Download` (server-streaming) of the original, `storemesh_imaging::make_thumbnails`,
//!    and one storage `Upload` per variant to the deterministic key
//!    `products/{product_id}/thumbnails/{image_id}/w{N}.{ext}` with metadata `variant`, `width`,
//!    `height`, and the idempotency key `thumbnail:{event_id}:w{N}` (a redelivery stores
//!    nothing new and produces no new event). The catalog records the variants from the storage
//!    events (the dispatcher calls `RecordVariant`), not this function.
//! 6. An undecodable image or one over the limits (pixels, bytes, memory, or an animation of
//!    more than `Limits::DEFAULT_MAX_FRAMES` frames; animations otherwise use their first
//!    frame only): catalog `MarkImageFailed` (with the event id)
//!    and `422` (final: the dispatcher does not retry). Mesh unavailable: `503` (retried).
//!
//! Answers are JSON: `{"result":"created","variants":[...]}`, `{"result":"skipped"|"ignored",
//! "reason":...}`, `{"result":"failed","reason":...}` (422), or an error body
//! (`storemesh_mesh_client::api`).

mod delivery;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use spin_sdk::http::{IncomingRequest, Method, Response};
use spin_sdk::http_component;
use storemesh_imaging::{ImagingError, Limits, Thumbnail, ThumbnailSpec};
use storemesh_mesh_client::api::{ApiError, json_response, respond};
use storemesh_mesh_client::catalog::v1::{GetImageRequest, ImageState, MarkImageFailedRequest};
use storemesh_mesh_client::storage::v1::download_response::Payload as DownloadPayload;
use storemesh_mesh_client::storage::v1::upload_header::Target;
use storemesh_mesh_client::storage::v1::upload_request::Payload as UploadPayload;
use storemesh_mesh_client::storage::v1::{
    DownloadRequest, StatRequest, UploadHeader, UploadRequest,
};
use storemesh_mesh_client::{Code, Mesh, MeshConfig, Status};
use storemesh_tokens::scopes;

/// The scopes the function's token needs.
const SCOPES: [&str; 4] = [
    scopes::STORAGE_READ,
    scopes::STORAGE_WRITE_THUMBNAILS,
    scopes::CATALOG_READ,
    scopes::CATALOG_WRITE_VARIANTS,
];
/// Chunk size of thumbnail uploads (storage recommends 1 MiB).
const CHUNK_BYTES: usize = 1024 * 1024;
/// Longest accepted delivery body (a `Delivery` is a few hundred bytes).
const MAX_DELIVERY_BYTES: usize = 64 * 1024;
/// Longest failure reason the catalog accepts is limited; keep ours well below.
const MAX_REASON_CHARS: usize = 500;
/// Pauses (ms) between re-checks for an image the catalog does not know yet: 750 ms in all,
/// well past the few milliseconds the upload hook normally takes to attach it.
const ATTACH_WAITS: [u64; 5] = [25, 50, 100, 200, 375];

#[http_component]
async fn handle(request: IncomingRequest) -> Response {
    respond("thumbnail", process(request).await)
}

fn misconfigured(message: impl Into<String>) -> ApiError {
    ApiError::new(500, "misconfigured", message)
}

fn variable(name: &str) -> String {
    spin_sdk::variables::get(name)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn number(name: &str, default: u64) -> Result<u64, ApiError> {
    match variable(name).as_str() {
        "" => Ok(default),
        value => value
            .parse()
            .ok()
            .filter(|number| *number > 0)
            .ok_or_else(|| {
                misconfigured(format!(
                    "variable {name} must be a positive number, not {value:?}"
                ))
            }),
    }
}

struct Settings {
    mesh: MeshConfig,
    client_id: String,
    client_secret: String,
    spec: ThumbnailSpec,
    limits: Limits,
}

impl Settings {
    fn load() -> Result<Self, ApiError> {
        let sizes = match variable("thumbnail_sizes").as_str() {
            "" => ThumbnailSpec::DEFAULT_SIZES.to_vec(),
            list => ThumbnailSpec::parse_sizes(list)
                .map_err(|error| misconfigured(format!("variable thumbnail_sizes: {error}")))?,
        };
        let quality = number(
            "thumbnail_jpeg_quality",
            u64::from(ThumbnailSpec::DEFAULT_JPEG_QUALITY),
        )?;
        let spec = ThumbnailSpec {
            sizes,
            jpeg_quality: u8::try_from(quality.min(100))
                .unwrap_or(ThumbnailSpec::DEFAULT_JPEG_QUALITY),
        };
        spec.validate()
            .map_err(|error| misconfigured(format!("thumbnail settings: {error}")))?;
        Ok(Self {
            mesh: MeshConfig::from_variables().map_err(misconfigured)?,
            client_id: variable("thumbnail_client_id"),
            client_secret: spin_sdk::variables::get("thumbnail_client_secret").unwrap_or_default(),
            spec,
            limits: Limits {
                max_pixels: number("max_pixels", Limits::DEFAULT_MAX_PIXELS)?,
                max_input_bytes: number("upload_max_bytes", Limits::DEFAULT_MAX_INPUT_BYTES)?,
                max_alloc_bytes: Limits::DEFAULT_MAX_ALLOC_BYTES,
                max_frames: Limits::DEFAULT_MAX_FRAMES,
            },
        })
    }
}

fn outcome(result: &str, reason: &str, event_id: &str) -> Response {
    json_response(
        200,
        &json!({ "result": result, "reason": reason, "event_id": event_id }),
        &[],
    )
}

async fn process(request: IncomingRequest) -> Result<Response, ApiError> {
    if request.method() != Method::Post {
        return Err(
            ApiError::new(405, "method_not_allowed", "use POST").with_header("allow", "POST")
        );
    }
    let headers = request.headers().entries();
    // Whatever can be refused from the headers alone is, before the body is read.
    let signed = delivery::check_headers(&headers)?;
    let body = read_body(request).await?;
    let delivery = delivery::authenticate(&signed, &headers, &body)?;
    let Some(target) = delivery::original_of(&delivery) else {
        return Ok(outcome(
            "ignored",
            "not a new original image",
            &delivery.event_id,
        ));
    };
    let event_id = delivery.event_id.clone();

    let settings = Settings::load()?;
    // No `x-forwarded-for`: the caller is the event dispatcher, not an end client; the calls
    // count under the edge's own address and the thumbnail service account.
    let mesh = Mesh::new(&settings.mesh).map_err(misconfigured)?;
    let token = mesh
        .service_token(
            "thumbnail",
            &settings.client_id,
            &settings.client_secret,
            &SCOPES,
        )
        .await?;
    let token = token.as_str();

    // Is there still something to do? Storage emits the event when the original commits, and
    // the upload hook attaches the image to the catalog just after, so a quick delivery can
    // find no image yet: re-check for a moment before asking for a redelivery, which the
    // dispatcher would only make a second or more later.
    let mut waits = ATTACH_WAITS.iter();
    let image = loop {
        let image = mesh
            .catalog()
            .get_image(mesh.request(
                GetImageRequest {
                    image_id: target.image_id.clone(),
                },
                Some(token),
            ))
            .await;
        match (&image, waits.next()) {
            (Err(status), Some(wait)) if status.code() == Code::NotFound => {
                storemesh_mesh_client::pause(Duration::from_millis(*wait));
            }
            _ => break image,
        }
    };
    match image {
        Ok(answer) => {
            let image = answer.into_inner().image.unwrap_or_default();
            if image.state() == ImageState::Failed {
                return Ok(outcome("skipped", "the image already failed", &event_id));
            }
            if image.storage_key != target.key {
                return Ok(outcome(
                    "skipped",
                    "the catalog's image has another original",
                    &event_id,
                ));
            }
        }
        Err(status) if status.code() == Code::NotFound => {
            let stat = mesh
                .storage()
                .stat(mesh.request(
                    StatRequest {
                        key: target.key.clone(),
                    },
                    Some(token),
                ))
                .await;
            return match stat {
                Err(status) if status.code() == Code::NotFound => Ok(outcome(
                    "skipped",
                    "the image and its original were deleted",
                    &event_id,
                )),
                Err(status) => Err(ApiError::from_status("storage Stat", &status)),
                Ok(_) => Err(ApiError::new(
                    503,
                    "not_attached_yet",
                    "the original exists but the catalog does not know the image yet; retry",
                )
                .with_header("retry-after", "2")),
            };
        }
        Err(status) => return Err(ApiError::from_status("catalog GetImage", &status)),
    }

    let original = match download(&mesh, token, &target.key, settings.limits.max_input_bytes).await
    {
        Ok(bytes) => bytes,
        Err(Fetch::Gone) => return Ok(outcome("skipped", "the original was deleted", &event_id)),
        Err(Fetch::Image(error)) => return fail(&mesh, token, &target, &event_id, &error).await,
        Err(Fetch::Mesh(error)) => return Err(error),
    };
    let thumbnails =
        match storemesh_imaging::make_thumbnails(&original, &settings.spec, &settings.limits) {
            Ok(thumbnails) => thumbnails,
            Err(error) if error.is_input_error() => {
                return fail(&mesh, token, &target, &event_id, &error).await;
            }
            Err(error) => return Err(misconfigured(format!("making thumbnails: {error}"))),
        };
    drop(original);

    let mut variants = Vec::new();
    for thumbnail in &thumbnails {
        let key = format!(
            "products/{}/thumbnails/{}/{}.{}",
            target.product_id,
            target.image_id,
            thumbnail.name,
            thumbnail.format.extension()
        );
        store(&mesh, token, &key, thumbnail, &event_id).await?;
        variants.push(json!({
            "name": thumbnail.name,
            "storage_key": key,
            "width": thumbnail.width,
            "height": thumbnail.height,
            "content_type": thumbnail.format.mime(),
            "size_bytes": thumbnail.bytes.len(),
        }));
    }
    Ok(json_response(
        200,
        &json!({
            "result": "created",
            "event_id": event_id,
            "image_id": target.image_id,
            "product_id": target.product_id,
            "variants": variants,
        }),
        &[],
    ))
}

/// The delivery body, at most [`MAX_DELIVERY_BYTES`].
async fn read_body(request: IncomingRequest) -> Result<Vec<u8>, ApiError> {
    let mut stream = request.into_body_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::bad_request(format!(
                "reading the delivery: {}",
                storemesh_mesh_client::io_error_text(&error)
            ))
        })?;
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DELIVERY_BYTES {
            return Err(ApiError::new(
                413,
                "payload_too_large",
                "a delivery is at most 64 KiB",
            ));
        }
    }
    Ok(body)
}

enum Fetch {
    /// The original no longer exists.
    Gone,
    /// The original is not acceptable (too large).
    Image(ImagingError),
    Mesh(ApiError),
}

/// The whole original (the decoders need it in memory), refused from its size before reading
/// when over `max_bytes`.
async fn download(mesh: &Mesh, token: &str, key: &str, max_bytes: u64) -> Result<Vec<u8>, Fetch> {
    let mesh_error = |status: &Status| {
        if status.code() == Code::NotFound {
            Fetch::Gone
        } else {
            Fetch::Mesh(ApiError::from_status("storage Download", status))
        }
    };
    let mut stream = mesh
        .storage()
        .download(mesh.request(
            DownloadRequest {
                key: key.to_owned(),
                ..DownloadRequest::default()
            },
            Some(token),
        ))
        .await
        .map_err(|status| mesh_error(&status))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream
        .message()
        .await
        .map_err(|status| mesh_error(&status))?
    {
        match message.payload {
            Some(DownloadPayload::Info(info)) => {
                if info.size_bytes > max_bytes {
                    return Err(Fetch::Image(ImagingError::TooLarge {
                        bytes: info.size_bytes,
                        max: max_bytes,
                    }));
                }
                bytes.reserve_exact(usize::try_from(info.size_bytes).unwrap_or(0));
            }
            Some(DownloadPayload::Chunk(chunk)) => bytes.extend_from_slice(&chunk),
            None => {}
        }
    }
    Ok(bytes)
}

/// Uploads one variant (header, then chunks of at most 1 MiB).
async fn store(
    mesh: &Mesh,
    token: &str,
    key: &str,
    thumbnail: &Thumbnail,
    event_id: &str,
) -> Result<(), ApiError> {
    let header = UploadRequest {
        payload: Some(UploadPayload::Header(UploadHeader {
            target: Some(Target::Key(key.to_owned())),
            content_type: thumbnail.format.mime().to_owned(),
            expected_size_bytes: Some(thumbnail.bytes.len() as u64),
            metadata: [
                ("variant".to_owned(), thumbnail.name.clone()),
                ("width".to_owned(), thumbnail.width.to_string()),
                ("height".to_owned(), thumbnail.height.to_string()),
            ]
            .into_iter()
            .collect(),
            idempotency_key: format!("thumbnail:{event_id}:{}", thumbnail.name),
            ..UploadHeader::default()
        })),
    };
    let mut messages = vec![header];
    messages.extend(
        thumbnail
            .bytes
            .chunks(CHUNK_BYTES)
            .map(|chunk| UploadRequest {
                payload: Some(UploadPayload::Chunk(chunk.to_vec())),
            }),
    );
    mesh.storage()
        .upload(mesh.request(futures::stream::iter(messages), Some(token)))
        .await
        .map(drop)
        .map_err(|status| ApiError::from_status("storage Upload", &status))
}

/// Marks the image failed and answers `422` (final), or `200 skipped` when the image is gone.
async fn fail(
    mesh: &Mesh,
    token: &str,
    target: &delivery::Original,
    event_id: &str,
    error: &ImagingError,
) -> Result<Response, ApiError> {
    let mut reason = error.to_string();
    if reason.chars().count() > MAX_REASON_CHARS {
        reason = reason.chars().take(MAX_REASON_CHARS).collect();
    }
    let marked = mesh
        .catalog()
        .mark_image_failed(mesh.request(
            MarkImageFailedRequest {
                image_id: target.image_id.clone(),
                reason: reason.clone(),
                event_id: event_id.to_owned(),
            },
            Some(token),
        ))
        .await;
    match marked {
        Ok(_) => {}
        Err(status) if status.code() == Code::NotFound => {
            return Ok(outcome("skipped", "the image was deleted", event_id));
        }
        // Already READY (e.g. the original was replaced after success): nothing to mark.
        Err(status) if status.code() == Code::FailedPrecondition => {}
        Err(status) => return Err(ApiError::from_status("catalog MarkImageFailed", &status)),
    }
    Ok(json_response(
        422,
        &json!({
            "result": "failed",
            "event_id": event_id,
            "image_id": target.image_id,
            "kind": error.kind(),
            "reason": reason,
        }),
        &[],
    ))
}
