//! Pure request rules of the upload hook: header parsing, limits and identifiers.

use sha2::{Digest, Sha256};
use storemesh_mesh_client::api::ApiError;

/// Default byte limit of an upload (the imaging pipeline's input limit).
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;
/// Default pixel limit (width × height) of an original.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The media types accepted for originals.
pub const ACCEPTED_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/webp", "image/gif"];

/// Catalog ids: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The declared media type without parameters, lowercased, if it is an accepted image type.
pub fn declared_image_type(content_type: Option<&str>) -> Result<&'static str, ApiError> {
    let Some(content_type) = content_type else {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!(
                "Content-Type is required: one of {}",
                ACCEPTED_TYPES.join(", ")
            ),
        ));
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    ACCEPTED_TYPES
        .iter()
        .find(|accepted| **accepted == essence)
        .copied()
        .ok_or_else(|| {
            ApiError::new(
                415,
                "unsupported_media_type",
                format!(
                    "Content-Type {essence:?} is not accepted: one of {}",
                    ACCEPTED_TYPES.join(", ")
                ),
            )
        })
}

/// The declared body size: required (411), a decimal number (400), not zero (400), at most
/// `max_bytes` (413).
pub fn declared_length(content_length: Option<&str>, max_bytes: u64) -> Result<u64, ApiError> {
    let Some(value) = content_length else {
        return Err(ApiError::new(
            411,
            "length_required",
            "Content-Length is required (chunked uploads are not accepted)",
        ));
    };
    let value = value.trim();
    let length: u64 = value
        .parse()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request(format!("Content-Length {value:?} is not a number"))
        })?;
    if length == 0 {
        return Err(ApiError::bad_request("the body is empty"));
    }
    if length > max_bytes {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!("the upload is {length} bytes; the limit is {max_bytes} bytes"),
        ));
    }
    Ok(length)
}

/// An `Idempotency-Key`: 1 to 128 printable ASCII characters.
pub fn idempotency_key(value: Option<&str>) -> Result<Option<&str>, ApiError> {
    match value {
        None => Ok(None),
        Some(key)
            if !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && key.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Ok(Some(key))
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
        ))),
    }
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, ApiError> {
    let value = authorization.ok_or_else(|| {
        ApiError::unauthorized("Authorization: Bearer <access token> is required")
    })?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized(
            "Authorization must use the Bearer scheme",
        ));
    }
    Ok(token)
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// 16 bytes as 26 Crockford base32 characters (the ULID text form).
fn crockford(bytes: [u8; 16]) -> String {
    let value = u128::from_be_bytes(bytes);
    (0..26)
        .rev()
        .map(|index| CROCKFORD[((value >> (index * 5)) & 31) as usize] as char)
        .collect()
}

/// A ULID from a Unix time in milliseconds and 10 random bytes.
pub fn ulid(unix_millis: u64, random: &[u8]) -> String {
    let mut bytes = [0_u8; 16];
    bytes[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..]);
    for (slot, byte) in bytes[6..].iter_mut().zip(random) {
        *slot = *byte;
    }
    crockford(bytes)
}

/// The image id of an upload with an `Idempotency-Key`: the same caller, product and key always
/// give the same id (so a retried upload names the same image), different ones never collide in
/// practice (128 bits of SHA-256).
pub fn idempotent_image_id(subject: &str, product_id: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [subject, product_id, key] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    crockford(bytes)
}

/// Storage key of an original.
pub fn original_key(product_id: &str, image_id: &str) -> String {
    format!("products/{product_id}/originals/{image_id}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn content_type_is_checked_without_parameters() {
        assert_eq!(
            declared_image_type(Some("image/PNG; q=1")).unwrap(),
            "image/png"
        );
        assert_eq!(
            declared_image_type(Some("text/plain")).unwrap_err().status,
            415
        );
        assert_eq!(declared_image_type(None).unwrap_err().status, 415);
    }

    #[test]
    fn lengths() {
        assert_eq!(declared_length(None, 10).unwrap_err().status, 411);
        assert_eq!(declared_length(Some("x"), 10).unwrap_err().status, 400);
        assert_eq!(declared_length(Some("+5"), 10).unwrap_err().status, 400);
        assert_eq!(declared_length(Some("0"), 10).unwrap_err().status, 400);
        assert_eq!(declared_length(Some("11"), 10).unwrap_err().status, 413);
        assert_eq!(declared_length(Some("10"), 10).unwrap(), 10);
    }

    #[test]
    fn ids() {
        let id = idempotent_image_id("user", "product", "key");
        assert_eq!(id.len(), 26);
        assert!(is_valid_id(&id));
        assert_eq!(id, idempotent_image_id("user", "product", "key"));
        assert_ne!(id, idempotent_image_id("other", "product", "key"));
        assert_ne!(
            idempotent_image_id("ab", "c", "k"),
            idempotent_image_id("a", "bc", "k")
        );
        assert_eq!(ulid(0, &[0; 10]), "00000000000000000000000000");
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(""));
    }

    #[test]
    fn bearer() {
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer  abc ")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("Basic abc")).unwrap_err().status, 401);
        assert_eq!(bearer_token(None).unwrap_err().status, 401);
    }
}
