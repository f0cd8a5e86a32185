//! `upload-hook`: `POST /v1/products/:product_id/images` — a seller uploads an original image.
//!
//! 1. The bearer token is verified here (EdDSA JWT against the auth service's public keys).
//! 2. `Content-Type` (one of JPEG, PNG, WebP, GIF) and `Content-Length` (required, at most
//!    `upload_max_bytes`) are checked before anything else is read.
//! 3. catalog `GetProduct` (with the caller's token): the product exists and the caller is its
//!    seller or an admin.
//! 4. The first bytes are read and checked: the magic bytes must match the declared type and the
//!    header's dimensions must be within `max_pixels` (header only, no decoding).
//! 5. The body is **streamed** into storage `Upload` (client-streaming, the caller's token,
//!    chunks of at most 256 KiB, `expected_size_bytes` = `Content-Length` so a body that ends
//!    early commits nothing), under `products/{product_id}/originals/{image_id}`.
//! 6. catalog `AttachImage` (the caller's token) registers the image (`PROCESSING`). If that
//!    fails, the original is deleted again (best effort; a leftover is reported in the log) so
//!    no object is left without its catalog record.
//!
//! Answers `201 Created` with `Location: /v1/images/{image_id}` and the image as JSON, or a JSON
//! error (`storemesh_mesh_client::api`). With `Idempotency-Key`, the image id is derived from
//! the caller, the product and the key, and a repeated upload whose image already exists
//! answers with that image without storing anything again.

mod rules;
mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use serde_json::json;
use spin_sdk::http::{IncomingRequest, Method, Response};
use spin_sdk::http_component;
use storemesh_mesh_client::api::{ApiError, json_response, respond};
use storemesh_mesh_client::catalog::v1::{
    AttachImageRequest, GetImageRequest, GetProductRequest, Image, ImageState,
};
use storemesh_mesh_client::storage::v1::upload_header::Target;
use storemesh_mesh_client::storage::v1::upload_request::Payload;
use storemesh_mesh_client::storage::v1::{DeleteRequest, UploadHeader, UploadRequest};
// Token verification, shared with the `images` function.
use storemesh_mesh_client::tokens as auth;
use storemesh_mesh_client::{Code, Headers, Mesh, MeshConfig};
use storemesh_tokens::Identity;

/// Size of the chunks sent to storage (its recommendation is 1 MiB, its maximum 4 MiB; smaller
/// chunks keep the component's memory flat).
const CHUNK_BYTES: usize = 256 * 1024;

#[http_component]
async fn handle(request: IncomingRequest) -> Response {
    respond("upload-hook", upload(request).await)
}

struct Settings {
    mesh: MeshConfig,
    tokens: auth::TokenSettings,
    max_bytes: u64,
    max_pixels: u64,
}

fn misconfigured(message: String) -> ApiError {
    ApiError::new(500, "misconfigured", message)
}

fn number_variable(name: &str, default: u64) -> Result<u64, ApiError> {
    match spin_sdk::variables::get(name).unwrap_or_default().trim() {
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

impl Settings {
    fn load() -> Result<Self, ApiError> {
        let text = |name: &str, default: &str| {
            let value = spin_sdk::variables::get(name).unwrap_or_default();
            if value.trim().is_empty() {
                default.to_owned()
            } else {
                value
            }
        };
        Ok(Self {
            mesh: MeshConfig::from_variables().map_err(misconfigured)?,
            tokens: auth::TokenSettings {
                issuer: text("token_issuer", "storemesh"),
                audience: text("token_audience", "storemesh"),
                jwks: text("auth_jwks", ""),
            },
            max_bytes: number_variable("upload_max_bytes", rules::DEFAULT_MAX_BYTES)?,
            max_pixels: number_variable("max_pixels", rules::DEFAULT_MAX_PIXELS)?,
        })
    }
}

async fn upload(request: IncomingRequest) -> Result<Response, ApiError> {
    if request.method() != Method::Post {
        return Err(
            ApiError::new(405, "method_not_allowed", "use POST").with_header("allow", "POST")
        );
    }
    let headers = Headers::of(&request);
    let settings = Settings::load()?;
    // The mesh counts these calls under the seller's address (Spin's `spin-client-addr`), not
    // the edge's, which every client shares: one client's load cannot use up another's limits.
    let mesh = Mesh::new(&settings.mesh)
        .map_err(misconfigured)?
        .on_behalf_of(headers.get("spin-client-addr"));

    let token = rules::bearer_token(headers.get("authorization"))?.to_owned();
    let product_id = headers
        // Spin passes the route's `:product_id` as `spin-path-match-product-id`: it upper-cases
        // the name and turns `_` into `-` (Spin's `crates/trigger-http/src/headers.rs`).
        .get("spin-path-match-product-id")
        .unwrap_or_default()
        .to_owned();
    if !rules::is_valid_id(&product_id) {
        return Err(ApiError::bad_request(format!(
            "product id {product_id:?} is not valid (1 to 64 of A-Z a-z 0-9 _ -)"
        )));
    }
    let content_type = rules::declared_image_type(headers.get("content-type"))?;
    let length = rules::declared_length(headers.get("content-length"), settings.max_bytes)?;
    let idempotency_key =
        rules::idempotency_key(headers.get("idempotency-key"))?.map(str::to_owned);

    let identity = auth::verify(&mesh, &settings.tokens, &token).await?;
    let product = mesh
        .catalog()
        .get_product(mesh.request(
            GetProductRequest {
                id: product_id.clone(),
            },
            Some(&token),
        ))
        .await
        .map_err(|status| ApiError::from_status("catalog GetProduct", &status))?
        .into_inner()
        .product
        .ok_or_else(|| {
            ApiError::new(
                502,
                "bad_gateway",
                "catalog GetProduct: no product in the answer",
            )
        })?;
    if product.seller_id != identity.subject && !identity.is_admin() {
        return Err(ApiError::new(
            403,
            "forbidden",
            "only the product's seller or an admin may add images to it",
        ));
    }

    let image_id = match &idempotency_key {
        Some(key) => {
            let image_id = rules::idempotent_image_id(&identity.subject, &product_id, key);
            if let Some(existing) = existing_image(&mesh, &token, &image_id).await? {
                // A retry of an upload that already completed: the same image, nothing stored.
                return Ok(created(&existing, true));
            }
            image_id
        }
        None => new_image_id(),
    };

    let mut body = request.into_body_stream();
    let (prefix, probe) =
        validate::read_header(&mut body, content_type, length, settings.max_pixels).await?;
    let storage_key = rules::original_key(&product_id, &image_id);
    // The catalog records what a shopper sees: the size after the EXIF orientation, as the
    // thumbnails are made.
    let (width, height) = probe.displayed();
    let sha256 = upload_original(
        &mesh,
        &token,
        &storage_key,
        content_type,
        length,
        prefix,
        body,
    )
    .await?;

    let attached = mesh
        .catalog()
        .attach_image(mesh.request(
            AttachImageRequest {
                product_id: product_id.clone(),
                image_id: image_id.clone(),
                storage_key: storage_key.clone(),
                content_type: content_type.to_owned(),
                size_bytes: length,
                width,
                height,
                sha256: sha256.clone(),
            },
            Some(&token),
        ))
        .await;
    let image = match attached {
        Ok(answer) => answer.into_inner().image,
        Err(status) => {
            remove_original(&mesh, &token, &storage_key, &identity).await;
            return Err(ApiError::from_status("catalog AttachImage", &status));
        }
    };
    let image = image.unwrap_or_else(|| Image {
        id: image_id,
        product_id,
        storage_key,
        content_type: content_type.to_owned(),
        size_bytes: length,
        width,
        height,
        sha256,
        state: ImageState::Processing.into(),
        ..Image::default()
    });
    Ok(created(&image, false))
}

/// The image, if an earlier upload with the same idempotency key created it.
async fn existing_image(
    mesh: &Mesh,
    token: &str,
    image_id: &str,
) -> Result<Option<Image>, ApiError> {
    match mesh
        .catalog()
        .get_image(mesh.request(
            GetImageRequest {
                image_id: image_id.to_owned(),
            },
            Some(token),
        ))
        .await
    {
        Ok(answer) => Ok(answer.into_inner().image),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(ApiError::from_status("catalog GetImage", &status)),
    }
}

fn new_image_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        });
    rules::ulid(millis, &wasi::random::random::get_random_bytes(10))
}

fn created(image: &Image, replayed: bool) -> Response {
    let state = ImageState::try_from(image.state)
        .map(|state| {
            state
                .as_str_name()
                .trim_start_matches("IMAGE_STATE_")
                .to_owned()
        })
        .unwrap_or_else(|_| "UNSPECIFIED".to_owned());
    let body = json!({
        "image_id": image.id,
        "product_id": image.product_id,
        "storage_key": image.storage_key,
        "content_type": image.content_type,
        "size_bytes": image.size_bytes,
        "width": image.width,
        "height": image.height,
        "state": state,
    });
    let mut headers = vec![("location", format!("/v1/images/{}", image.id))];
    if replayed {
        headers.push(("idempotent-replayed", "true".to_owned()));
    }
    json_response(201, &body, &headers)
}

/// Streams `prefix` and then the rest of `body` into storage under `key`; returns the stored
/// object's SHA-256 (hex, empty if storage did not say).
async fn upload_original(
    mesh: &Mesh,
    token: &str,
    key: &str,
    content_type: &str,
    length: u64,
    prefix: Vec<u8>,
    body: impl Stream<Item = Result<Vec<u8>, wasi::io::streams::Error>> + Send + Unpin + 'static,
) -> Result<String, ApiError> {
    let header = UploadRequest {
        payload: Some(Payload::Header(UploadHeader {
            target: Some(Target::Key(key.to_owned())),
            content_type: content_type.to_owned(),
            expected_size_bytes: Some(length),
            ..UploadHeader::default()
        })),
    };
    let body_failed = Arc::new(AtomicBool::new(false));
    let messages = futures::stream::iter([header, chunk(prefix)])
        .chain(coalesce(body, body_failed.clone()).map(chunk));
    let result = mesh
        .storage()
        .upload(mesh.request(messages, Some(token)))
        .await;
    match result {
        Ok(answer) => Ok(answer
            .into_inner()
            .object
            .map(|object| object.sha256)
            .unwrap_or_default()),
        Err(_) if body_failed.load(Ordering::Relaxed) => Err(ApiError::bad_request(
            "the request body could not be read to its end; nothing was stored",
        )),
        // Storage's own size limit for originals (lower than `upload_max_bytes`): the only
        // RESOURCE_EXHAUSTED that says "size limit" (rate and concurrency limits say otherwise).
        Err(status)
            if status.code() == Code::ResourceExhausted
                && status.message().contains("size limit") =>
        {
            Err(ApiError::new(
                413,
                "payload_too_large",
                format!("storage Upload: {}", status.message()),
            ))
        }
        Err(status) => Err(ApiError::from_status("storage Upload", &status)),
    }
}

fn chunk(bytes: Vec<u8>) -> UploadRequest {
    UploadRequest {
        payload: Some(Payload::Chunk(bytes)),
    }
}

/// The body's reads (16 KiB each from spin-sdk) gathered into chunks of about [`CHUNK_BYTES`].
/// A read error ends the stream and sets `failed` (storage then sees fewer bytes than
/// announced and commits nothing).
fn coalesce(
    body: impl Stream<Item = Result<Vec<u8>, wasi::io::streams::Error>> + Send + Unpin + 'static,
    failed: Arc<AtomicBool>,
) -> impl Stream<Item = Vec<u8>> + Send + 'static {
    futures::stream::unfold(Some(body), move |state| {
        let failed = failed.clone();
        async move {
            let mut body = state?;
            let mut buffer = Vec::with_capacity(CHUNK_BYTES);
            loop {
                match body.next().await {
                    Some(Ok(bytes)) => {
                        buffer.extend_from_slice(&bytes);
                        if buffer.len() >= CHUNK_BYTES {
                            return Some((buffer, Some(body)));
                        }
                    }
                    Some(Err(error)) => {
                        eprintln!(
                            "upload-hook: reading the request body: {}",
                            storemesh_mesh_client::io_error_text(&error)
                        );
                        failed.store(true, Ordering::Relaxed);
                        return None;
                    }
                    None if buffer.is_empty() => return None,
                    None => return Some((buffer, None)),
                }
            }
        }
    })
}

/// Deletes an original whose catalog registration failed. Best effort: a failure is logged
/// (the object then has no catalog record; storage's key names the product, so an operator can
/// find it).
async fn remove_original(mesh: &Mesh, token: &str, key: &str, identity: &Identity) {
    let result = mesh
        .storage()
        .delete(mesh.request(
            DeleteRequest {
                key: key.to_owned(),
            },
            Some(token),
        ))
        .await;
    if let Err(status) = result {
        eprintln!(
            "upload-hook: AttachImage failed and deleting the original {key} (uploaded by {}) failed too: {status:?}",
            identity.subject
        );
    }
}
