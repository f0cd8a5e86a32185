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
//! The receiver checks the headers before it reads the body ([`SignedHeaders::parse`]): the
//! timestamp must be a decimal number of seconds within its replay window, and the signature
//! header must hold 1 to [`MAX_SIGNATURES`] `v1=` values of exactly 64 hex digits (values of other
//! schemes are ignored). A delivery that fails these checks cannot be authentic and is refused
//! without reading its body. Then it computes the MAC of `"{timestamp}.{body}"` once per secret
//! it accepts and compares each in constant time with every offered value
//! ([`SignedHeaders::verify`]): at most `secrets × MAX_SIGNATURES` comparisons of 32 bytes, and one
//! pass over the body per secret, however the header is crafted. The signature covers the
//! timestamp, so an old delivery cannot be replayed with a fresh timestamp. Answers: `2xx` done;
//! `408`, `429` and `5xx` retry later; any other `4xx` is final (the dispatcher dead-letters the
//! event).

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

/// Most `v1=` values a signature header may carry (as many secrets as may be active at once
/// while rotating); a header with more is refused before any MAC is computed.
pub const MAX_SIGNATURES: usize = 4;
/// Length of a MAC (HMAC-SHA256), in bytes; a `v1=` value is twice as many hex digits.
pub const MAC_LEN: usize = 32;

/// A delivery MAC: HMAC-SHA256 of `"{timestamp}.{body}"`.
pub type DeliveryMac = [u8; MAC_LEN];

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
    /// The signature header is absent, has no `v1=` value, or a `v1=` value is not 64 hex
    /// digits.
    #[error("missing or malformed {SIGNATURE_HEADER} header")]
    BadSignatureHeader,
    /// The signature header carries more than [`MAX_SIGNATURES`] `v1=` values (or more than
    /// that many secrets were given to [`sign_all`]).
    #[error("{SIGNATURE_HEADER} carries more than {MAX_SIGNATURES} v1= values")]
    TooManySignatures,
    /// No signature matches any accepted secret.
    #[error("signature does not match")]
    Mismatch,
    /// A configured secret is shorter than [`MIN_SECRET_LEN`].
    #[error("delivery signing secret is shorter than {MIN_SECRET_LEN} bytes")]
    WeakSecret,
}

/// `v1=<hex>` signature of `body` signed at `timestamp` (Unix seconds) with `secret`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> Result<String, SignatureError> {
    Ok(format!(
        "{SCHEME}{}",
        hex::encode(mac(secret, timestamp, body)?)
    ))
}

/// Signatures for every secret in `secrets` (at most [`MAX_SIGNATURES`]), comma-separated (for
/// rotation: receivers accept the delivery as long as they know one of them).
pub fn sign_all<S: AsRef<[u8]>>(
    secrets: &[S],
    timestamp: u64,
    body: &[u8],
) -> Result<String, SignatureError> {
    if secrets.len() > MAX_SIGNATURES {
        return Err(SignatureError::TooManySignatures);
    }
    let signatures: Result<Vec<String>, SignatureError> = secrets
        .iter()
        .map(|secret| sign(secret.as_ref(), timestamp, body))
        .collect();
    Ok(signatures?.join(","))
}

/// Refuses secrets shorter than [`MIN_SECRET_LEN`] (a receiver can check its configuration
/// before it reads anything of a delivery).
pub fn check_secrets<S: AsRef<[u8]>>(secrets: &[S]) -> Result<(), SignatureError> {
    if secrets
        .iter()
        .any(|secret| secret.as_ref().len() < MIN_SECRET_LEN)
    {
        return Err(SignatureError::WeakSecret);
    }
    Ok(())
}

/// The signature headers of a delivery, checked without its body: a timestamp within the
/// replay window and 1 to [`MAX_SIGNATURES`] well-formed `v1=` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    timestamp: u64,
    signatures: Vec<DeliveryMac>,
}

impl SignedHeaders {
    /// Checks `timestamp_header` (within `window_secs` of `now`, Unix seconds), then the syntax
    /// of `signature_header`: comma-separated values, at most [`MAX_SIGNATURES`] of them `v1=`
    /// ones (counted first: a header with thousands of values costs no more than reading it),
    /// each exactly 64 hex digits; values of other schemes are ignored.
    pub fn parse(
        timestamp_header: Option<&str>,
        signature_header: Option<&str>,
        now: u64,
        window_secs: u64,
    ) -> Result<Self, SignatureError> {
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
        let header = signature_header.ok_or(SignatureError::BadSignatureHeader)?;
        let values = || {
            header
                .split(',')
                .filter_map(|part| part.trim().strip_prefix(SCHEME))
        };
        // Counted first (stopping at the first value too many), so that a flood of values is
        // refused as such, whatever they look like.
        if values().nth(MAX_SIGNATURES).is_some() {
            return Err(SignatureError::TooManySignatures);
        }
        let mut signatures = Vec::with_capacity(MAX_SIGNATURES);
        for digest in values() {
            let mut signature = [0; MAC_LEN];
            hex::decode_to_slice(digest, &mut signature)
                .map_err(|_| SignatureError::BadSignatureHeader)?;
            signatures.push(signature);
        }
        if signatures.is_empty() {
            return Err(SignatureError::BadSignatureHeader);
        }
        Ok(Self {
            timestamp,
            signatures,
        })
    }

    /// The delivery's timestamp (Unix seconds).
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// The offered signatures (1 to [`MAX_SIGNATURES`]).
    pub fn signatures(&self) -> &[DeliveryMac] {
        &self.signatures
    }

    /// The MAC of `body` at this timestamp for each of `secrets`: one pass over the body per
    /// secret.
    pub fn macs<S: AsRef<[u8]>>(
        &self,
        secrets: &[S],
        body: &[u8],
    ) -> Result<Vec<DeliveryMac>, SignatureError> {
        secrets
            .iter()
            .map(|secret| mac(secret.as_ref(), self.timestamp, body))
            .collect()
    }

    /// Whether one of the offered signatures equals one of `macs` (each comparison in constant
    /// time).
    pub fn verify_macs(&self, macs: &[DeliveryMac]) -> Result<(), SignatureError> {
        type Tag = hmac::digest::CtOutput<Hmac<Sha256>>;
        let offered: Vec<Tag> = self
            .signatures
            .iter()
            .map(|signature| Tag::new((*signature).into()))
            .collect();
        for mac in macs {
            let expected = Tag::new((*mac).into());
            // `CtOutput`'s equality is constant-time (`subtle`).
            if offered.contains(&expected) {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }

    /// Checks `body` against the offered signatures: [`Self::macs`] (once per secret), then
    /// [`Self::verify_macs`].
    pub fn verify<S: AsRef<[u8]>>(&self, secrets: &[S], body: &[u8]) -> Result<(), SignatureError> {
        self.verify_macs(&self.macs(secrets, body)?)
    }
}

/// Checks a delivery: [`SignedHeaders::parse`] then [`SignedHeaders::verify`]. A receiver that
/// streams the body should parse the headers before reading it.
pub fn verify<S: AsRef<[u8]>>(
    secrets: &[S],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now: u64,
    window_secs: u64,
) -> Result<(), SignatureError> {
    SignedHeaders::parse(timestamp_header, signature_header, now, window_secs)?
        .verify(secrets, body)
}

#[cfg(test)]
thread_local! {
    /// How many MACs this thread computed (a test hook).
    static MACS_COMPUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// HMAC-SHA256(secret, `"{timestamp}.{body}"`).
fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Result<DeliveryMac, SignatureError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(SignatureError::WeakSecret);
    }
    #[cfg(test)]
    MACS_COMPUTED.with(|count| count.set(count.get() + 1));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::WeakSecret)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac.finalize().into_bytes().into())
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
        assert_eq!(
            check_secrets(&[SECRET, b"short"]),
            Err(SignatureError::WeakSecret)
        );
        check_secrets(&[SECRET, OTHER]).unwrap();
    }

    fn macs_computed() -> usize {
        MACS_COMPUTED.with(std::cell::Cell::get)
    }

    #[test]
    fn malformed_headers_are_refused_without_touching_the_body() {
        let signature = sign(SECRET, 1, b"b").unwrap();
        let digits = &signature[3..];
        let before = macs_computed();
        for (timestamp, header, error) in [
            (None, Some(signature.as_str()), SignatureError::BadTimestamp),
            (Some("x"), Some(&signature), SignatureError::BadTimestamp),
            (Some("1"), Some("v1="), SignatureError::BadSignatureHeader),
            (
                Some("1"),
                Some("v1=,v1="),
                SignatureError::BadSignatureHeader,
            ),
            (
                Some("1"),
                Some(&signature[..signature.len() - 1]),
                SignatureError::BadSignatureHeader,
            ),
            (
                Some("1"),
                Some(&format!("{signature}0")),
                SignatureError::BadSignatureHeader,
            ),
            (
                Some("1"),
                Some(&format!("{signature},v1=zz{}", &digits[2..])),
                SignatureError::BadSignatureHeader,
            ),
        ] {
            assert_eq!(
                SignedHeaders::parse(timestamp, header, 1, 60),
                Err(error.clone()),
                "{timestamp:?} {header:?}"
            );
            assert_eq!(
                verify(&[SECRET], timestamp, header, b"b", 1, 60),
                Err(error)
            );
        }
        assert!(matches!(
            SignedHeaders::parse(Some("1"), Some(&signature), 1_000, 60),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(macs_computed(), before, "no MAC for a malformed header");
        // Values of other schemes are ignored; spaces around values are fine.
        let headers =
            SignedHeaders::parse(Some(" 1 "), Some(&format!("v2=zz, {signature} ,")), 1, 60)
                .unwrap();
        assert_eq!(headers.timestamp(), 1);
        assert_eq!(headers.signatures().len(), 1);
        headers.verify(&[SECRET], b"b").unwrap();
    }

    #[test]
    fn too_many_values_are_refused_before_any_mac() {
        let secrets: Vec<String> = (0..5).map(|n| format!("secret-number-{n:04}")).collect();
        let five: Vec<String> = secrets
            .iter()
            .map(|secret| sign(secret.as_bytes(), 7, b"b").unwrap())
            .collect();
        let before = macs_computed();
        let too_many = five.join(",");
        assert_eq!(
            SignedHeaders::parse(Some("7"), Some(&too_many), 7, 60),
            Err(SignatureError::TooManySignatures)
        );
        // The hostile header of issue 20: thousands of empty values.
        let hostile = vec!["v1="; 20_000].join(",");
        assert_eq!(
            verify(&[SECRET], Some("7"), Some(&hostile), &[0; 60_000], 7, 60),
            Err(SignatureError::TooManySignatures)
        );
        assert_eq!(macs_computed(), before);
        assert_eq!(
            sign_all(&secrets, 7, b"b"),
            Err(SignatureError::TooManySignatures)
        );
        // Exactly MAX_SIGNATURES is fine.
        let four = sign_all(&secrets[..MAX_SIGNATURES], 7, b"b").unwrap();
        verify(
            &[secrets[3].as_bytes()],
            Some("7"),
            Some(&four),
            b"b",
            7,
            60,
        )
        .unwrap();
    }

    #[test]
    fn each_secret_is_hashed_once_whatever_the_number_of_signatures() {
        let offered = sign_all(
            &[
                b"offered-secret-0001",
                b"offered-secret-0002",
                b"offered-secret-0003",
                b"offered-secret-0004",
            ],
            9,
            b"body",
        )
        .unwrap();
        let headers = SignedHeaders::parse(Some("9"), Some(&offered), 9, 60).unwrap();
        assert_eq!(headers.signatures().len(), MAX_SIGNATURES);
        let accepted: [&[u8]; 3] = [SECRET, OTHER, b"third-secret-0123456"];
        let before = macs_computed();
        assert_eq!(
            headers.verify(&accepted, b"body"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(macs_computed() - before, accepted.len());
        // The MACs can also be computed by the caller and compared.
        let macs = headers.macs(&accepted, b"body").unwrap();
        assert_eq!(macs.len(), accepted.len());
        assert_eq!(headers.verify_macs(&macs), Err(SignatureError::Mismatch));
        let matching = headers.macs(&[b"offered-secret-0003"], b"body").unwrap();
        headers.verify_macs(&matching).unwrap();
        assert_eq!(headers.verify_macs(&[]), Err(SignatureError::Mismatch));
    }
}
