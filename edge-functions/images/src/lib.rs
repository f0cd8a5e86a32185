//! `images`: `GET`/`HEAD /img/{image_id}/{variant}.{ext}` and `/img/{image_id}/original` —
//! image bytes for browsers and CDNs. Paths and signed URLs are those of
//! `storemesh-image-urls` (the catalog puts them on `Image`/`ImageVariant`).
//!
//! 1. Method (`405`, `Allow: GET, HEAD`) and path (`404`) first; nothing else is read before.
//! 2. A signed URL (`?expires=…&signature=…`) is verified right away against the
//!    `image_url_signing_keys` variable and the current time: forged, malformed or expired
//!    signatures, or none accepted (empty variable), are `403` without any mesh call.
//! 3. A service token (auth `IssueServiceToken`, account `images_client_id` /
//!    `images_client_secret`, scopes `catalog.read` `storage.read`); at the same time, a bearer
//!    token sent by the caller is verified (EdDSA, `storemesh_mesh_client::tokens`; only asked
//!    for when the answer turns out to need it, so a stale token does not break public images).
//! 4. catalog `GetImage` (`404` when unknown or deleted), then `GetProduct` for the visibility
//!    and the seller (`404` when the product was deleted), with storage `Stat` alongside when
//!    the catalog has no SHA-256 for the asset (records made before it did).
//! 5. Access: the variants of a `READY` image of a published product are public
//!    (`Cache-Control: public, max-age=31536000, immutable`: an image id's bytes never change).
//!    Anything else needs the product's seller's or an admin's token or a valid signed URL
//!    (`Cache-Control: private, no-store`); no credentials `401` (`WWW-Authenticate: Bearer`),
//!    someone else's token `403`. A variant that does not exist is `404` (after the access
//!    check, so a draft's variants are not listed to strangers).
//! 6. Conditionals on the strong `ETag` (the SHA-256) and `Last-Modified`: `If-None-Match`
//!    (weak comparison, `*`), else `If-Modified-Since` → `304` without touching the bytes;
//!    `HEAD` → the headers only. Neither calls storage `Download`.
//! 7. `Range` (one `bytes=` range, honoured when `If-Range` matches) → `206` with
//!    `Content-Range`, unsatisfiable → `416` (`Content-Range: bytes */size`), several ranges →
//!    the whole `200`.
//! 8. storage `Download` (server-streaming, `offset`/`length` of the range): the headers go out
//!    once its first message (the object's info) agrees with the catalog, then each chunk is
//!    written to the response body as it arrives (never the whole object in memory). A failure
//!    mid-body aborts the response (the client sees a truncated body, not a short success).
//!
//! Errors are JSON (`storemesh_mesh_client::api`) with `Cache-Control: no-store`; an unavailable
//! mesh is `503` with `Retry-After`. Every answer carries `X-Content-Type-Options: nosniff`.

mod rules;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::SinkExt;
use futures::future::{OptionFuture, join};
use spin_sdk::http::{
    Fields, IncomingRequest, Method, OutgoingResponse, Response, ResponseOutparam,
};
use spin_sdk::http_component;
use storemesh_image_urls::{Asset, ImagePath, SignatureError, SigningKeys};
use storemesh_mesh_client::api::{ApiError, respond};
use storemesh_mesh_client::catalog::v1::{
    GetImageRequest, GetProductRequest, Image, ImageFormat, ImageState, ProductVisibility,
};
use storemesh_mesh_client::storage::v1::download_response::Payload;
use storemesh_mesh_client::storage::v1::{DownloadRequest, StatRequest};
use storemesh_mesh_client::tokens::{self, TokenSettings};
use storemesh_mesh_client::{Code, Headers, Mesh, MeshConfig, Status};
use storemesh_tokens::{Identity, scopes};

use crate::rules::RangeAnswer;

const COMPONENT: &str = "images";
/// The scopes the function's token needs.
const SCOPES: [&str; 2] = [scopes::CATALOG_READ, scopes::STORAGE_READ];
/// Public variants: an image id's bytes never change, so caches may keep them for a year.
const PUBLIC_CACHE: &str = "public, max-age=31536000, immutable";
/// Drafts, originals and signed URLs: for the caller only, and not stored.
const PRIVATE_CACHE: &str = "private, no-store";
/// Deadline of the `Download` call. It spans the whole body, which goes out at the client's
/// pace, so it is longer than `mesh_timeout_ms` (the host's own request limit still applies).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// `Retry-After` seconds of a `503` when the mesh did not say.
const RETRY_AFTER_SECS: &str = "1";

#[http_component]
async fn handle(request: IncomingRequest, out: ResponseOutparam) {
    match prepare(request).await {
        Ok(Answer::Head(head)) => send_head(out, head),
        Ok(Answer::Body(transfer)) => transfer.run(out).await,
        Err(error) => send_error(out, error).await,
    }
}

// ---- settings -------------------------------------------------------------------------------

fn misconfigured(message: impl Into<String>) -> ApiError {
    ApiError::new(500, "misconfigured", message)
}

struct Settings {
    mesh: MeshConfig,
    tokens: TokenSettings,
    client_id: String,
    client_secret: String,
}

impl Settings {
    fn load() -> Result<Self, ApiError> {
        let client_id = spin_sdk::variables::get("images_client_id").unwrap_or_default();
        let client_id = match client_id.trim() {
            "" => "images".to_owned(),
            id => id.to_owned(),
        };
        Ok(Self {
            mesh: MeshConfig::from_variables().map_err(misconfigured)?,
            tokens: TokenSettings::from_variables(),
            client_id,
            client_secret: spin_sdk::variables::get("images_client_secret").unwrap_or_default(),
        })
    }
}

/// Seconds since the Unix epoch (the `wasi:clocks/wall-clock` time).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

// ---- the request ----------------------------------------------------------------------------

/// The status line and headers of an answer.
struct Head {
    status: u16,
    headers: Vec<(&'static str, String)>,
}

enum Answer {
    /// Everything but a body (`304`, `HEAD`).
    Head(Head),
    /// Headers after the download started, then the streamed bytes.
    Body(Transfer),
}

/// What is served: the original or one variant, as the catalog describes it.
struct Served {
    key: String,
    content_type: String,
    size: u64,
    /// SHA-256 hex; empty when the catalog has none (then storage's is used).
    sha256: String,
    /// Unix seconds of `Last-Modified`.
    modified: Option<u64>,
}

fn seconds(time: Option<&prost_types::Timestamp>) -> Option<u64> {
    time.and_then(|time| u64::try_from(time.seconds).ok())
}

fn format_type(format: ImageFormat) -> Option<(&'static str, &'static str)> {
    match format {
        ImageFormat::Jpeg => Some(("jpg", "image/jpeg")),
        ImageFormat::Png => Some(("png", "image/png")),
        ImageFormat::Webp => Some(("webp", "image/webp")),
        ImageFormat::Gif => Some(("gif", "image/gif")),
        ImageFormat::Unspecified => None,
    }
}

/// The asset of `path` in `image`, or `None` for a variant that does not exist (or has another
/// extension than asked for).
fn served(image: &Image, asset: &Asset) -> Option<Served> {
    match asset {
        Asset::Original => Some(Served {
            key: image.storage_key.clone(),
            content_type: image.content_type.clone(),
            size: image.size_bytes,
            sha256: image.sha256.clone(),
            modified: seconds(image.create_time.as_ref()),
        }),
        Asset::Variant { name, extension } => {
            let variant = image
                .variants
                .iter()
                .find(|variant| &variant.name == name)?;
            let (format_extension, content_type) = format_type(variant.format())?;
            (format_extension == extension).then(|| Served {
                key: variant.storage_key.clone(),
                content_type: content_type.to_owned(),
                size: variant.size_bytes,
                sha256: variant.sha256.clone(),
                // Variants are made after the image is attached; `update_time` is when the
                // last one was recorded, and stays put once the image is READY.
                modified: seconds(image.update_time.as_ref().or(image.create_time.as_ref())),
            })
        }
    }
}

/// A mesh failure as the caller's answer. Our own service token being refused is the
/// deployment's fault (`500`), not the caller's; `503`s always say when to retry.
fn mesh_error(call: &str, status: &Status) -> ApiError {
    let error = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => misconfigured(format!(
            "{call} refused the function's service token: {}",
            status.message()
        )),
        _ => ApiError::from_status(call, status),
    };
    with_retry_after(error)
}

fn with_retry_after(error: ApiError) -> ApiError {
    if error.status == 503 && !error.headers.iter().any(|(name, _)| *name == "retry-after") {
        error.with_header("retry-after", RETRY_AFTER_SECS)
    } else {
        error
    }
}

/// Checks a signed URL's parameters (step 2).
fn check_signature(path: &str, query: &str) -> Result<(), ApiError> {
    let keys = spin_sdk::variables::get("image_url_signing_keys").unwrap_or_default();
    if keys.trim().is_empty() {
        return Err(ApiError::new(
            403,
            "forbidden",
            "signed image URLs are not accepted here",
        ));
    }
    let keys = SigningKeys::from_list(&keys)
        .map_err(|error| misconfigured(format!("variable image_url_signing_keys: {error}")))?;
    keys.verify(path, query, unix_now()).map_err(|error| {
        let message = match error {
            SignatureError::Expired => "the signed URL expired",
            SignatureError::Missing | SignatureError::Malformed | SignatureError::Invalid => {
                "the URL's signature is not valid"
            }
        };
        ApiError::new(403, "forbidden", message)
    })
}

/// Whether the caller may see a non-public asset of a product sold by `seller_id` (step 5).
fn check_caller(
    caller: Option<Result<Identity, ApiError>>,
    seller_id: &str,
) -> Result<(), ApiError> {
    match caller {
        None => Err(ApiError::new(
            401,
            "unauthenticated",
            "this image needs the seller's or an admin's access token, or a signed URL",
        )
        .with_header("www-authenticate", "Bearer")),
        Some(Err(error)) => Err(with_retry_after(error)),
        Some(Ok(identity)) if identity.subject == seller_id || identity.is_admin() => Ok(()),
        Some(Ok(_)) => Err(ApiError::new(
            403,
            "forbidden",
            "only the product's seller or an admin may see this image",
        )),
    }
}

async fn prepare(request: IncomingRequest) -> Result<Answer, ApiError> {
    let method = request.method();
    let head_only = match method {
        Method::Get => false,
        Method::Head => true,
        _ => {
            return Err(ApiError::new(405, "method_not_allowed", "use GET or HEAD")
                .with_header("allow", "GET, HEAD"));
        }
    };
    let target = request.path_with_query().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let image_path = ImagePath::parse(path)
        .map_err(|error| ApiError::new(404, "not_found", error.to_string()))?;
    let headers = Headers::of(&request);
    drop(request);

    let signed = storemesh_image_urls::is_signed(query);
    if signed {
        check_signature(&image_path.path(), query)?;
    }
    let settings = Settings::load()?;
    // The mesh counts these calls under the shopper's address (Spin's `spin-client-addr`), not
    // the edge's, which every shopper shares.
    let mesh = Mesh::new(&settings.mesh)
        .map_err(misconfigured)?
        .on_behalf_of(headers.get("spin-client-addr"));
    // A signed URL is all the credentials needed; otherwise the caller's token is verified
    // alongside the service token, and only consulted if the asset is not public.
    let bearer = if signed {
        Ok(None)
    } else {
        tokens::bearer(headers.get("authorization"))
    };
    let caller_future: OptionFuture<_> = match &bearer {
        Ok(Some(token)) => Some(tokens::verify(&mesh, &settings.tokens, token)),
        _ => None,
    }
    .into();
    let service_token = mesh.service_token(
        "images",
        &settings.client_id,
        &settings.client_secret,
        &SCOPES,
    );
    let (service, caller) = join(service_token, caller_future).await;
    let service = service.map_err(with_retry_after);
    let caller = match bearer {
        Err(error) => Some(Err(error)),
        Ok(_) => caller,
    };
    let token = service?;
    let token = token.as_str();

    let image = mesh
        .catalog()
        .get_image(mesh.request(
            GetImageRequest {
                image_id: image_path.image_id.clone(),
            },
            Some(token),
        ))
        .await
        .map_err(|status| mesh_error("catalog GetImage", &status))?
        .into_inner()
        .image
        .unwrap_or_default();
    let asset = served(&image, &image_path.asset);

    let product = async {
        mesh.catalog()
            .get_product(mesh.request(
                GetProductRequest {
                    id: image.product_id.clone(),
                },
                Some(token),
            ))
            .await
    };
    // Records made before the catalog kept SHA-256s: the ETag comes from storage.
    let stat: OptionFuture<_> = asset
        .as_ref()
        .filter(|asset| asset.sha256.is_empty())
        .map(|asset| async {
            mesh.storage()
                .stat(mesh.request(
                    StatRequest {
                        key: asset.key.clone(),
                    },
                    Some(token),
                ))
                .await
        })
        .into();
    let (product, stat) = join(product, stat).await;
    let product = product
        .map_err(|status| mesh_error("catalog GetProduct", &status))?
        .into_inner()
        .product
        .unwrap_or_default();

    let public = matches!(image_path.asset, Asset::Variant { .. })
        && image.state() == ImageState::Ready
        && product.visibility() == ProductVisibility::Published;
    if !public && !signed {
        check_caller(caller, &product.seller_id)?;
    }
    let Some(mut asset) = asset else {
        return Err(ApiError::new(
            404,
            "not_found",
            format!("image {} has no such variant", image_path.image_id),
        ));
    };
    if let Some(stat) = stat {
        asset.sha256 = stat
            .map_err(|status| mesh_error("storage Stat", &status))?
            .into_inner()
            .object
            .map(|object| object.sha256)
            .unwrap_or_default();
    }

    let etag = (!asset.sha256.is_empty()).then(|| format!("\"{}\"", asset.sha256));
    let mut common: Vec<(&'static str, String)> = vec![(
        "cache-control",
        if public && !signed {
            PUBLIC_CACHE
        } else {
            PRIVATE_CACHE
        }
        .to_owned(),
    )];
    if let Some(etag) = &etag {
        common.push(("etag", etag.clone()));
    }
    if let Some(modified) = asset.modified {
        common.push(("last-modified", rules::http_date(modified)));
    }
    common.push(("accept-ranges", "bytes".to_owned()));
    common.push(("x-content-type-options", "nosniff".to_owned()));

    if rules::not_modified(
        headers.list("if-none-match").as_deref(),
        headers.get("if-modified-since"),
        etag.as_deref(),
        asset.modified,
    ) {
        return Ok(Answer::Head(Head {
            status: 304,
            headers: common,
        }));
    }
    common.push(("content-type", asset.content_type.clone()));
    // Range requests are defined for GET only (RFC 9110 14.2): HEAD describes the whole.
    let range = if head_only
        || !rules::if_range_holds(headers.get("if-range"), etag.as_deref(), asset.modified)
    {
        RangeAnswer::Full
    } else {
        rules::range(headers.get("range"), asset.size)
    };
    let (status, offset, length) = match range {
        RangeAnswer::Full => (200, 0, asset.size),
        RangeAnswer::Partial { start, end } => {
            common.push((
                "content-range",
                format!("bytes {start}-{end}/{}", asset.size),
            ));
            (206, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            let mut error = ApiError::new(
                416,
                "range_not_satisfiable",
                format!("the image is {} bytes", asset.size),
            )
            .with_header("content-range", format!("bytes */{}", asset.size));
            error.headers.push(("accept-ranges", "bytes".to_owned()));
            return Err(error);
        }
    };
    common.push(("content-length", length.to_string()));
    let head = Head {
        status,
        headers: common,
    };
    if head_only {
        return Ok(Answer::Head(head));
    }
    Ok(Answer::Body(Transfer {
        mesh,
        token: token.to_owned(),
        head,
        request: DownloadRequest {
            key: asset.key,
            offset,
            // 0 asks for everything to the end; a full answer of an empty object reads nothing.
            length: if status == 206 { length } else { 0 },
        },
        size: asset.size,
        sha256: asset.sha256,
        length,
    }))
}

// ---- answers --------------------------------------------------------------------------------

fn outgoing(head: Head) -> Option<OutgoingResponse> {
    let entries: Vec<(String, Vec<u8>)> = head
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.into_bytes()))
        .collect();
    let fields = Fields::from_list(&entries).ok()?;
    let response = OutgoingResponse::new(fields);
    response.set_status_code(head.status).ok()?;
    Some(response)
}

/// An answer without a body: the body resource is never taken, so the host sends none even
/// though `Content-Length` (of a `HEAD`) says what a `GET` would carry.
fn send_head(out: ResponseOutparam, head: Head) {
    let status = head.status;
    match outgoing(head) {
        Some(response) => out.set(response),
        None => {
            eprintln!("{COMPONENT}: a {status} answer's headers were refused by the host");
            if let Some(response) = outgoing(Head {
                status: 500,
                headers: Vec::new(),
            }) {
                out.set(response);
            }
        }
    }
}

async fn send_error(out: ResponseOutparam, error: ApiError) {
    let mut response: Response = respond(COMPONENT, Err(error));
    // A transient 404 (a variant not recorded yet) or 503 must not stick in a cache.
    response.set_header("cache-control", "no-store");
    response.set_header("x-content-type-options", "nosniff");
    let body = std::mem::take(response.body_mut());
    match OutgoingResponse::try_from(response) {
        Ok(response) => {
            if let Err(error) = out.set_with_body(response, body).await {
                eprintln!("{COMPONENT}: writing an error answer: {error}");
            }
        }
        Err(error) => eprintln!("{COMPONENT}: an error answer was refused by the host: {error}"),
    }
}

/// A `200`/`206` whose body is streamed from storage `Download`.
struct Transfer {
    mesh: Mesh,
    token: String,
    head: Head,
    request: DownloadRequest,
    /// What the catalog says of the whole object, checked against storage's info.
    size: u64,
    sha256: String,
    /// Bytes the body carries (`Content-Length`).
    length: u64,
}

impl Transfer {
    async fn run(self, out: ResponseOutparam) {
        let Self {
            mesh,
            token,
            head,
            request,
            size,
            sha256,
            length,
        } = self;
        let key = request.key.clone();
        let download_error = |status: &Status| match status.code() {
            Code::NotFound => ApiError::new(404, "not_found", "the image's bytes were deleted"),
            // The object is shorter than the catalog says: it is being replaced.
            Code::OutOfRange | Code::Aborted => with_retry_after(ApiError::new(
                503,
                "changing",
                format!("{key} is changing; retry"),
            )),
            _ => mesh_error("storage Download", status),
        };
        let started = mesh
            .storage()
            .download(mesh.request_with_timeout(request, Some(&token), DOWNLOAD_TIMEOUT))
            .await;
        let mut stream = match started {
            Ok(answer) => answer.into_inner(),
            Err(status) => return send_error(out, download_error(&status)).await,
        };
        // The first message describes the object: the headers promise what the catalog says,
        // so they are sent only when storage agrees.
        let first = match stream.message().await {
            Ok(first) => first,
            Err(status) => return send_error(out, download_error(&status)).await,
        };
        let info = match first.and_then(|message| message.payload) {
            Some(Payload::Info(info)) => info,
            _ => {
                let error = ApiError::new(502, "bad_gateway", "storage Download sent no info");
                return send_error(out, error).await;
            }
        };
        if info.size_bytes != size || (!sha256.is_empty() && info.sha256 != sha256) {
            let error = with_retry_after(ApiError::new(
                503,
                "changing",
                format!("{key} differs from the catalog's record; retry"),
            ));
            return send_error(out, error).await;
        }
        let Some(response) = outgoing(head) else {
            let error = ApiError::new(500, "internal", "the answer's headers were refused");
            return send_error(out, error).await;
        };
        let mut body = response.take_body();
        out.set(response);
        let mut written = 0_u64;
        loop {
            let chunk = match stream.message().await {
                Ok(Some(message)) => match message.payload {
                    Some(Payload::Chunk(chunk)) => chunk,
                    _ => continue,
                },
                Ok(None) => break,
                Err(status) => {
                    // Headers are out. The body is finished short of its Content-Length, which
                    // the host refuses and turns into an aborted response: the client cannot
                    // take the truncated bytes for the image.
                    eprintln!(
                        "{COMPONENT}: storage Download of {key} failed after {written} of \
                         {length} bytes: {}",
                        status.message()
                    );
                    return;
                }
            };
            written += chunk.len() as u64;
            if let Err(error) = body.send(chunk).await {
                // The client went away: nothing more to do.
                eprintln!("{COMPONENT}: the client stopped reading {key}: {error}");
                return;
            }
        }
        if written != length {
            eprintln!("{COMPONENT}: storage sent {written} of {length} bytes of {key}");
        }
        // Dropping the sink finishes the body (the host checks it against Content-Length).
        drop(body);
    }
}
