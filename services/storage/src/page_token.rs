//! `List` page tokens (pure).
//!
//! A token is URL-safe base64 (no padding) of: one version byte (1), the first 8 bytes of
//! SHA-256 of the prefix it was issued for, then the last key of the page. The next page
//! starts strictly after that key, so paging is stable while other keys come and go. Tokens
//! are not secret (any reader may list everything); the fingerprint only catches a token reused
//! with another prefix.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::keys;

const VERSION: u8 = 1;
const FINGERPRINT_BYTES: usize = 8;

/// Longest token accepted, in characters (a 1024-byte last key encodes to 1378).
pub const MAX_TOKEN_CHARS: usize = 2048;

fn fingerprint(prefix: &str) -> [u8; FINGERPRINT_BYTES] {
    let digest = Sha256::digest(prefix.as_bytes());
    let mut out = [0_u8; FINGERPRINT_BYTES];
    out.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
    out
}

pub fn encode(prefix: &str, last_key: &str) -> String {
    let mut raw = Vec::with_capacity(1 + FINGERPRINT_BYTES + last_key.len());
    raw.push(VERSION);
    raw.extend_from_slice(&fingerprint(prefix));
    raw.extend_from_slice(last_key.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The key after which the next page starts, or why the token is not acceptable for `prefix`.
pub fn decode(prefix: &str, token: &str) -> Result<String, &'static str> {
    const NOT_OURS: &str = "is not a token returned by List";
    if token.len() > MAX_TOKEN_CHARS {
        return Err("must be at most 2048 characters");
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| NOT_OURS)?;
    let (&version, rest) = raw.split_first().ok_or(NOT_OURS)?;
    if version != VERSION || rest.len() <= FINGERPRINT_BYTES {
        return Err(NOT_OURS);
    }
    let (print, key) = rest.split_at(FINGERPRINT_BYTES);
    if print != fingerprint(prefix) {
        return Err("was issued for another prefix");
    }
    let key = String::from_utf8(key.to_vec()).map_err(|_| NOT_OURS)?;
    if !key.starts_with(prefix) || keys::key_problem(&key).is_some() {
        return Err(NOT_OURS);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let token = encode("products/", "products/p/originals/i");
        assert_eq!(
            decode("products/", &token).unwrap(),
            "products/p/originals/i"
        );
        let token = encode("", "a");
        assert_eq!(decode("", &token).unwrap(), "a");
    }

    #[test]
    fn longest_key_fits() {
        let key = "k".repeat(keys::MAX_KEY_BYTES);
        let token = encode("", &key);
        assert!(token.len() <= MAX_TOKEN_CHARS, "{}", token.len());
        assert_eq!(decode("", &token).unwrap(), key);
    }

    #[test]
    fn refuses_foreign_and_malformed_tokens() {
        let token = encode("products/", "products/x");
        assert_eq!(
            decode("misc/", &token).unwrap_err(),
            "was issued for another prefix"
        );
        for bad in ["", "!!!", "AQ", &URL_SAFE_NO_PAD.encode([2_u8; 20])] {
            assert!(decode("products/", bad).is_err(), "{bad:?}");
        }
        // A well-formed token whose key lies outside the prefix, or is not a valid key.
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&fingerprint("products/"));
        raw.extend_from_slice(b"misc/x");
        assert!(decode("products/", &URL_SAFE_NO_PAD.encode(&raw)).is_err());
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&fingerprint(""));
        raw.extend_from_slice(b"../x");
        assert!(decode("", &URL_SAFE_NO_PAD.encode(&raw)).is_err());
        assert!(decode("", &"A".repeat(3000)).is_err());
    }
}
