//! The contract of an HTTP event delivery from the dispatcher to an edge function.
//!
//! A delivery is `POST <route>` with:
//! - body: a `storemesh.events.v1.Delivery` in protobuf binary encoding
//!   ([`CONTENT_TYPE`]);
//! - [`EVENT_ID_HEADER`] and [`IDEMPOTENCY_KEY_HEADER`]: the event id (redeliveries repeat it);
//! - [`ATTEMPT_HEADER`]: the attempt number, from 1;
//! - [`TIMESTAMP_HEADER`]: when the delivery was signed, Unix seconds;
//! - [`SIGNATURE_HEADER`]: `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`, possibly several
//!   comma-separated `v1=` values (one per active secret while a secret is being rotated).
//!
//! The receiver recomputes the MAC with each secret it accepts, compares in constant time, and
//! refuses timestamps outside its replay window. The signature covers the timestamp, so an old
//! delivery cannot be replayed with a fresh timestamp. Answers: `2xx` done; `408`, `429` and
//! `5xx` retry later; any other `4xx` is final (the dispatcher dead-letters the event).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Media type of a delivery body (a protobuf-encoded `storemesh.events.v1.Delivery`).
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// The event id being delivered.
pub const EVENT_ID_HEADER: &str = "x-storemesh-event-id";
/// Attempt number for this target, starting at 1.
pub const ATTEMPT_HEADER: &str = "x-storemesh-delivery-attempt";
/// Unix seconds when the delivery was signed.
pub const TIMESTAMP_HEADER: &str = "x-storemesh-delivery-timestamp";
/// `v1=<hex>` signatures, comma-separated.
pub const SIGNATURE_HEADER: &str = "x-storemesh-signature";
/// The event id again, under the header name the mesh uses for idempotent calls.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Default replay window: a delivery signed longer ago (or further in the future) is refused.
pub const DEFAULT_REPLAY_WINDOW_SECS: u64 = 300;
/// Shortest accepted secret, in bytes: a shorter shared secret is guessable.
pub const MIN_SECRET_LEN: usize = 16;

const SCHEME: &str = "v1=";

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The timestamp header is absent or not a decimal number of seconds.
    #[error("missing or malformed {TIMESTAMP_HEADER} header")]
    BadTimestamp,
    /// The timestamp lies outside the replay window.
    #[error("delivery timestamp {timestamp} is outside the replay window of {window_secs} s")]
    Stale {
        /// The delivery's timestamp.
        timestamp: u64,
        /// The receiver's replay window.
        window_secs: u64,
    },
    /// The signature header is absent or has no `v1=` value.
    #[error("missing or malformed {SIGNATURE_HEADER} header")]
    BadSignatureHeader,
    /// No signature matches any accepted secret.
    #[error("signature does not match")]
    Mismatch,
    /// A configured secret is shorter than [`MIN_SECRET_LEN`].
    #[error("delivery signing secret is shorter than {MIN_SECRET_LEN} bytes")]
    WeakSecret,
}

/// `v1=<hex>` signature of `body` signed at `timestamp` (Unix seconds) with `secret`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> Result<String, SignatureError> {
    let mac = mac(secret, timestamp, body)?;
    Ok(format!(
        "{SCHEME}{}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// Signatures for every secret in `secrets`, comma-separated (for rotation: receivers accept
/// the delivery as long as they know one of them).
pub fn sign_all<S: AsRef<[u8]>>(
    secrets: &[S],
    timestamp: u64,
    body: &[u8],
) -> Result<String, SignatureError> {
    let signatures: Result<Vec<String>, SignatureError> = secrets
        .iter()
        .map(|secret| sign(secret.as_ref(), timestamp, body))
        .collect();
    Ok(signatures?.join(","))
}

/// Checks a delivery: `timestamp_header` within `window_secs` of `now` (Unix seconds) and one of
/// the `v1=` values in `signature_header` made with one of `secrets`.
pub fn verify<S: AsRef<[u8]>>(
    secrets: &[S],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now: u64,
    window_secs: u64,
) -> Result<(), SignatureError> {
    let timestamp: u64 = timestamp_header
        .map(str::trim)
        .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|value| value.parse().ok())
        .ok_or(SignatureError::BadTimestamp)?;
    if timestamp.abs_diff(now) > window_secs {
        return Err(SignatureError::Stale {
            timestamp,
            window_secs,
        });
    }
    let candidates: Vec<Vec<u8>> = signature_header
        .ok_or(SignatureError::BadSignatureHeader)?
        .split(',')
        .filter_map(|part| part.trim().strip_prefix(SCHEME))
        .filter_map(|digest| hex::decode(digest).ok())
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::BadSignatureHeader);
    }
    for secret in secrets {
        for candidate in &candidates {
            // `verify_slice` compares in constant time.
            if mac(secret.as_ref(), timestamp, body)?
                .verify_slice(candidate)
                .is_ok()
            {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Result<Hmac<Sha256>, SignatureError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(SignatureError::WeakSecret);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::WeakSecret)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-secret";
    const OTHER: &[u8] = b"fedcba9876543210-other";

    #[test]
    fn signed_delivery_verifies() {
        let signature = sign(SECRET, 1_700_000_000, b"body").unwrap();
        assert!(signature.starts_with("v1="));
        verify(
            &[SECRET],
            Some("1700000000"),
            Some(&signature),
            b"body",
            1_700_000_010,
            300,
        )
        .unwrap();
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256(key, "1.x"), computed independently with `openssl dgst -sha256 -hmac`.
        assert_eq!(
            sign(b"0123456789abcdef", 1, b"x").unwrap(),
            "v1=fd8cad50b6953efad15ba0fbbbdeaf3d76e8949cf002bfb1d3a956fc259a4c57"
        );
    }

    #[test]
    fn tampered_body_timestamp_or_secret_is_refused() {
        let signature = sign(SECRET, 1_000, b"body").unwrap();
        assert_eq!(
            verify(
                &[SECRET],
                Some("1000"),
                Some(&signature),
                b"bodY",
                1_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                &[SECRET],
                Some("1001"),
                Some(&signature),
                b"body",
                1_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                &[OTHER],
                Some("1000"),
                Some(&signature),
                b"body",
                1_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn replay_window_is_enforced_both_ways() {
        let signature = sign(SECRET, 1_000, b"body").unwrap();
        assert!(matches!(
            verify(
                &[SECRET],
                Some("1000"),
                Some(&signature),
                b"body",
                1_301,
                300
            ),
            Err(SignatureError::Stale { .. })
        ));
        assert!(matches!(
            verify(&[SECRET], Some("1000"), Some(&signature), b"body", 699, 300),
            Err(SignatureError::Stale { .. })
        ));
        verify(
            &[SECRET],
            Some("1000"),
            Some(&signature),
            b"body",
            1_300,
            300,
        )
        .unwrap();
    }

    #[test]
    fn rotation_accepts_any_known_secret() {
        let header = sign_all(&[OTHER, SECRET], 5_000, b"b").unwrap();
        assert_eq!(header.matches("v1=").count(), 2);
        verify(&[SECRET], Some("5000"), Some(&header), b"b", 5_000, 60).unwrap();
        verify(&[OTHER], Some("5000"), Some(&header), b"b", 5_000, 60).unwrap();
    }

    #[test]
    fn malformed_headers_and_weak_secrets_are_refused() {
        let signature = sign(SECRET, 1, b"b").unwrap();
        for timestamp in [
            None,
            Some(""),
            Some("-1"),
            Some("1e3"),
            Some("99999999999999999999999"),
        ] {
            assert_eq!(
                verify(&[SECRET], timestamp, Some(&signature), b"b", 1, 60),
                Err(SignatureError::BadTimestamp)
            );
        }
        for header in [None, Some(""), Some("v2=abcd"), Some("v1=zz")] {
            assert_eq!(
                verify(&[SECRET], Some("1"), header, b"b", 1, 60),
                Err(SignatureError::BadSignatureHeader)
            );
        }
        assert_eq!(sign(b"short", 1, b"b"), Err(SignatureError::WeakSecret));
    }
}
