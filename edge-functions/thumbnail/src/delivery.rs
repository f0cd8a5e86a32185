//! Authenticating a delivery (`storemesh-delivery`) and reading the event it carries.

use prost::Message;
use storemesh_delivery::{SignatureError, SignedHeaders};
use storemesh_mesh_client::api::ApiError;
use storemesh_mesh_client::events::v1::{Delivery, EventType, event};

/// An authentic delivery.
pub struct Authentic {
    pub event_id: String,
    pub delivery: Delivery,
}

/// The original a `created` event is about.
pub struct Original {
    pub key: String,
    pub product_id: String,
    pub image_id: String,
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

fn refused(error: &SignatureError) -> ApiError {
    match error {
        SignatureError::WeakSecret => ApiError::new(
            500,
            "misconfigured",
            "delivery_signing_secret is shorter than 16 bytes",
        ),
        error => ApiError::new(
            401,
            "invalid_signature",
            format!("delivery refused: {error}"),
        )
        .with_header("www-authenticate", "Signature"),
    }
}

/// The signature headers of a delivery, checked before its body is read, and the secrets
/// that may have signed it.
pub struct Signed {
    headers: SignedHeaders,
    secrets: Vec<String>,
}

/// Checks everything that does not need the body: the secrets (`500` when missing or weak), the
/// timestamp (present, a number, within the replay window) and the signature header's syntax
/// (1 to `MAX_SIGNATURES` `v1=` values of 64 hex digits); `401` otherwise, before the body.
pub fn check_headers(headers: &[(String, Vec<u8>)]) -> Result<Signed, ApiError> {
    let secrets: Vec<String> = spin_sdk::variables::get("delivery_signing_secret")
        .unwrap_or_default()
        .split(',')
        .map(|secret| secret.trim().to_owned())
        .filter(|secret| !secret.is_empty())
        .collect();
    if secrets.is_empty() {
        return Err(ApiError::new(
            500,
            "misconfigured",
            "delivery_signing_secret is not set",
        ));
    }
    storemesh_delivery::check_secrets(&secrets).map_err(|error| refused(&error))?;
    let window = spin_sdk::variables::get("delivery_replay_window_secs")
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(storemesh_delivery::DEFAULT_REPLAY_WINDOW_SECS);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let signed = SignedHeaders::parse(
        header(headers, storemesh_delivery::TIMESTAMP_HEADER),
        header(headers, storemesh_delivery::SIGNATURE_HEADER),
        now,
        window,
    )
    .map_err(|error| refused(&error))?;
    Ok(Signed {
        headers: signed,
        secrets,
    })
}

/// Checks the signature over the raw body (one MAC per secret, before decoding anything), then
/// decodes it.
pub fn authenticate(
    signed: &Signed,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Result<Authentic, ApiError> {
    signed
        .headers
        .verify(&signed.secrets, body)
        .map_err(|error| refused(&error))?;
    let delivery = Delivery::decode(body)
        .map_err(|error| ApiError::bad_request(format!("the body is not a Delivery: {error}")))?;
    let event_id = delivery
        .event
        .as_ref()
        .map(|event| event.id.clone())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::bad_request("the delivery carries no event"))?;
    if let Some(announced) = header(headers, storemesh_delivery::EVENT_ID_HEADER)
        && announced != event_id
    {
        return Err(ApiError::bad_request(format!(
            "{} {announced:?} differs from the event id {event_id:?}",
            storemesh_delivery::EVENT_ID_HEADER
        )));
    }
    Ok(Authentic { event_id, delivery })
}

fn is_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The original of an `OBJECT_CREATED` event under `products/{product_id}/originals/{image_id}`;
/// `None` for every other event.
pub fn original_of(authentic: &Authentic) -> Option<Original> {
    let event = authentic.delivery.event.as_ref()?;
    if event.r#type() != EventType::ObjectCreated {
        return None;
    }
    let key = match &event.data {
        Some(event::Data::ObjectCreated(created)) => created.key.clone(),
        _ => return None,
    };
    let mut parts = key.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("products"), Some(product_id), Some("originals"), Some(image_id), None)
            if is_id(product_id) && is_id(image_id) =>
        {
            Some(Original {
                product_id: product_id.to_owned(),
                image_id: image_id.to_owned(),
                key,
            })
        }
        _ => None,
    }
}
