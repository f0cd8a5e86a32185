//! Image delivery URLs, one definition for everyone who builds or reads them: the catalog puts
//! them on `Image`/`ImageVariant` and mints signed ones, the `images` edge function parses and
//! verifies them, the CLI prints them. Pure logic (no I/O, no clock): builds for wasm32-wasip2.
//!
//! - An original: `/img/{image_id}/original`.
//! - A variant: `/img/{image_id}/{name}.{ext}`, e.g. `/img/01J…/w320.jpg`.
//! - A signed URL adds `?expires={unix seconds}&signature={hex}`: HMAC-SHA256 under one of the
//!   configured keys over `storemesh-image-url:v1\n{path}\n{expires}`. The domain prefix keeps
//!   these MACs apart from any other use of the same secret; every configured key is tried, so
//!   a new key can be added (signing with the first) before the old one is removed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every image URL starts with this path segment (the `images` function's route).
pub const PREFIX: &str = "/img";
/// The asset name of an original.
pub const ORIGINAL: &str = "original";
/// Signing keys accepted at once (rotation needs two; a few more allow overlap).
pub const MAX_KEYS: usize = 8;
/// Shortest accepted signing key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// Longest lifetime of a signed URL a caller can ask for (7 days).
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

const SIGNATURE_DOMAIN: &str = "storemesh-image-url:v1";

/// Which bytes of an image a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asset {
    Original,
    /// A thumbnail by its variant name (`w320`) and file extension (`jpg`).
    Variant {
        name: String,
        extension: String,
    },
}

/// A parsed image path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePath {
    pub image_id: String,
    pub asset: Asset,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "not an image URL: expected {PREFIX}/{{image id}}/original or {PREFIX}/{{image id}}/{{variant}}.{{ext}}"
    )]
    Shape,
    #[error("image id {0:?} is not valid (1 to 64 of A-Z a-z 0-9 _ -)")]
    ImageId(String),
    #[error(
        "{0:?} is not a variant file name ({{name}}.{{jpg|png|webp|gif}}, name 1 to 32 of a-z 0-9 -)"
    )]
    Variant(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the URL is not signed (expires and signature query parameters)")]
    Missing,
    #[error("the signed URL's expires or signature parameter is malformed")]
    Malformed,
    #[error("the signed URL expired")]
    Expired,
    #[error("the URL's signature is not valid")]
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no signing key configured")]
    None,
    #[error("at most {MAX_KEYS} signing keys")]
    TooMany,
    #[error("signing key {index} is shorter than {MIN_KEY_BYTES} bytes")]
    TooShort { index: usize },
}

/// Image ids are storage key segments: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn is_valid_image_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_valid_variant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The extensions variants are stored with (see the catalog's `ImageVariant.storage_key`).
pub const VARIANT_EXTENSIONS: [&str; 4] = ["jpg", "png", "webp", "gif"];

/// `/img/{image_id}/original`.
pub fn original_path(image_id: &str) -> String {
    format!("{PREFIX}/{image_id}/{ORIGINAL}")
}

/// `/img/{image_id}/{name}.{extension}`.
pub fn variant_path(image_id: &str, name: &str, extension: &str) -> String {
    format!("{PREFIX}/{image_id}/{name}.{extension}")
}

/// `base` (e.g. `https://img.example.com`, a trailing `/` allowed) joined with `path`; the path
/// alone when there is no base.
pub fn absolute(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// A `srcset` attribute value from `(url, width in pixels)` candidates, narrowest first.
pub fn srcset<'a>(candidates: impl IntoIterator<Item = (&'a str, u32)>) -> String {
    let mut candidates: Vec<(&str, u32)> = candidates
        .into_iter()
        .filter(|(_, width)| *width > 0)
        .collect();
    candidates.sort_by_key(|(_, width)| *width);
    candidates.dedup_by_key(|(_, width)| *width);
    candidates
        .iter()
        .map(|(url, width)| format!("{url} {width}w"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ImagePath {
    /// Parses the path of a request (without query).
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let rest = path
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or(PathError::Shape)?;
        let (image_id, file) = rest.split_once('/').ok_or(PathError::Shape)?;
        if file.is_empty() || file.contains('/') {
            return Err(PathError::Shape);
        }
        if !is_valid_image_id(image_id) {
            return Err(PathError::ImageId(image_id.to_owned()));
        }
        let asset = if file == ORIGINAL {
            Asset::Original
        } else {
            let (name, extension) = file
                .rsplit_once('.')
                .ok_or_else(|| PathError::Variant(file.to_owned()))?;
            if !is_valid_variant_name(name) || !VARIANT_EXTENSIONS.contains(&extension) {
                return Err(PathError::Variant(file.to_owned()));
            }
            Asset::Variant {
                name: name.to_owned(),
                extension: extension.to_owned(),
            }
        };
        Ok(Self {
            image_id: image_id.to_owned(),
            asset,
        })
    }

    /// The path this was parsed from (normalized).
    pub fn path(&self) -> String {
        match &self.asset {
            Asset::Original => original_path(&self.image_id),
            Asset::Variant { name, extension } => variant_path(&self.image_id, name, extension),
        }
    }
}

/// The accepted signing keys; the first one signs.
#[derive(Clone)]
pub struct SigningKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for SigningKeys {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeys({} keys, redacted)", self.0.len())
    }
}

impl SigningKeys {
    pub fn new<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Result<Self, KeyError> {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        if keys.is_empty() {
            return Err(KeyError::None);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany);
        }
        if let Some(index) = keys.iter().position(|k| k.len() < MIN_KEY_BYTES) {
            return Err(KeyError::TooShort { index });
        }
        Ok(Self(keys))
    }

    /// Keys from a comma-separated list (a Spin variable), blanks ignored.
    pub fn from_list(list: &str) -> Result<Self, KeyError> {
        Self::new(list.split(',').map(str::trim).filter(|k| !k.is_empty()))
    }

    fn mac(key: &[u8], path: &str, expires: u64) -> Hmac<Sha256> {
        // `new_from_slice` accepts keys of any length for HMAC.
        let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        };
        mac.update(SIGNATURE_DOMAIN.as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// `path?expires={expires}&signature={hex}`, signed with the first key.
    pub fn sign(&self, path: &str, expires: u64) -> String {
        let signature = hex::encode(Self::mac(&self.0[0], path, expires).finalize().into_bytes());
        format!("{path}?expires={expires}&signature={signature}")
    }

    /// Checks the `expires` and `signature` parameters of `query` (the raw query string, without
    /// `?`) for `path` at `now` (unix seconds): any configured key may have signed it.
    pub fn verify(&self, path: &str, query: &str, now: u64) -> Result<(), SignatureError> {
        let (expires, signature) = signed_parameters(query)?;
        let expires: u64 = expires.parse().map_err(|_| SignatureError::Malformed)?;
        let signature = hex::decode(signature).map_err(|_| SignatureError::Malformed)?;
        if signature.len() != 32 {
            return Err(SignatureError::Malformed);
        }
        // Checked before the expiry so a forged URL never learns whether its time was right.
        let authentic = self.0.iter().any(|key| {
            Self::mac(key, path, expires)
                .verify_slice(&signature)
                .is_ok()
        });
        if !authentic {
            return Err(SignatureError::Invalid);
        }
        if now > expires {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

/// HMAC-SHA256 takes keys of every length, so this cannot happen; kept out of line so request
/// paths hold no `expect`.
#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 accepts keys of any length")
}

/// Whether `query` carries signature parameters at all.
pub fn is_signed(query: &str) -> bool {
    query_pairs(query).any(|(name, _)| name == "signature" || name == "expires")
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// `(expires, signature)`, each exactly once.
fn signed_parameters(query: &str) -> Result<(&str, &str), SignatureError> {
    let mut expires = None;
    let mut signature = None;
    for (name, value) in query_pairs(query) {
        let slot = match name {
            "expires" => &mut expires,
            "signature" => &mut signature,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(SignatureError::Malformed);
        }
    }
    match (expires, signature) {
        (None, None) => Err(SignatureError::Missing),
        (Some(expires), Some(signature)) => Ok((expires, signature)),
        _ => Err(SignatureError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD_KEY: &[u8] = b"an older key rotated out soon"; // no comma: lists split on them

    #[test]
    fn paths_round_trip() {
        let original = original_path("01ABC");
        assert_eq!(original, "/img/01ABC/original");
        assert_eq!(
            ImagePath::parse(&original).unwrap(),
            ImagePath {
                image_id: "01ABC".into(),
                asset: Asset::Original
            }
        );
        let variant = variant_path("01ABC", "w320", "jpg");
        assert_eq!(variant, "/img/01ABC/w320.jpg");
        let parsed = ImagePath::parse(&variant).unwrap();
        assert_eq!(
            parsed.asset,
            Asset::Variant {
                name: "w320".into(),
                extension: "jpg".into()
            }
        );
        assert_eq!(parsed.path(), variant);
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "/img",
            "/img/",
            "/img/abc",
            "/img/abc/",
            "/images/abc/original",
            "/img/abc/w320.jpg/x",
            "/img/abc/w320",
            "/img/abc/w320.exe",
            "/img/abc/W320.jpg",
            "/img/abc/.jpg",
            "/img/a.b/original",
            "/img//original",
        ] {
            assert!(ImagePath::parse(bad).is_err(), "{bad}");
        }
        let long = format!("/img/{}/original", "a".repeat(65));
        assert!(matches!(
            ImagePath::parse(&long),
            Err(PathError::ImageId(_))
        ));
    }

    #[test]
    fn srcset_lists_candidates_by_width() {
        assert_eq!(
            srcset([
                ("https://x/w640.jpg", 640),
                ("https://x/w160.jpg", 160),
                ("https://x/zero", 0)
            ]),
            "https://x/w160.jpg 160w, https://x/w640.jpg 640w"
        );
        assert_eq!(srcset(std::iter::empty()), "");
        assert_eq!(
            absolute("https://img.example.com/", "/img/a/original"),
            "https://img.example.com/img/a/original"
        );
        assert_eq!(absolute("", "/img/a/original"), "/img/a/original");
    }

    #[test]
    fn signed_urls_verify_until_they_expire() {
        let keys = SigningKeys::new([KEY]).unwrap();
        let signed = keys.sign("/img/a/original", 1_000);
        let (path, query) = signed.split_once('?').unwrap();
        assert_eq!(path, "/img/a/original");
        assert!(is_signed(query));
        assert_eq!(keys.verify(path, query, 999), Ok(()));
        assert_eq!(keys.verify(path, query, 1_000), Ok(()));
        assert_eq!(
            keys.verify(path, query, 1_001),
            Err(SignatureError::Expired)
        );
        // Another path, another expiry, another key: not valid.
        assert_eq!(
            keys.verify("/img/b/original", query, 999),
            Err(SignatureError::Invalid)
        );
        let later = query.replace("expires=1000", "expires=9999");
        assert_eq!(keys.verify(path, &later, 999), Err(SignatureError::Invalid));
        let other = SigningKeys::new([OLD_KEY]).unwrap();
        assert_eq!(other.verify(path, query, 999), Err(SignatureError::Invalid));
    }

    #[test]
    fn rotation_accepts_every_configured_key_and_signs_with_the_first() {
        let old = SigningKeys::new([OLD_KEY]).unwrap();
        let rotating = SigningKeys::from_list(&format!(
            "{}, {}",
            std::str::from_utf8(KEY).unwrap(),
            std::str::from_utf8(OLD_KEY).unwrap()
        ))
        .unwrap();
        let minted_before = old.sign("/img/a/w160.jpg", 50);
        let (path, query) = minted_before.split_once('?').unwrap();
        assert_eq!(rotating.verify(path, query, 10), Ok(()));
        let minted_now = rotating.sign(path, 50);
        let (_, query) = minted_now.split_once('?').unwrap();
        assert_eq!(
            SigningKeys::new([KEY]).unwrap().verify(path, query, 10),
            Ok(())
        );
        assert_eq!(old.verify(path, query, 10), Err(SignatureError::Invalid));
    }

    #[test]
    fn malformed_signatures_and_keys_are_refused() {
        let keys = SigningKeys::new([KEY]).unwrap();
        assert_eq!(keys.verify("/p", "", 0), Err(SignatureError::Missing));
        assert_eq!(keys.verify("/p", "w=1", 0), Err(SignatureError::Missing));
        for query in [
            "expires=1",
            "signature=00",
            "expires=x&signature=00",
            "expires=1&signature=zz",
            "expires=1&signature=00",
            "expires=1&expires=2&signature=00",
        ] {
            assert_eq!(
                keys.verify("/p", query, 0),
                Err(SignatureError::Malformed),
                "{query}"
            );
        }
        assert_eq!(SigningKeys::from_list(" , ").unwrap_err(), KeyError::None);
        assert_eq!(
            SigningKeys::new([b"short"]).unwrap_err(),
            KeyError::TooShort { index: 0 }
        );
        assert_eq!(
            SigningKeys::new(vec![KEY; 9]).unwrap_err(),
            KeyError::TooMany
        );
        assert!(!format!("{keys:?}").contains("0123"), "redacted");
    }
}
