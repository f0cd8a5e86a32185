//! Storemesh access tokens, shared by the auth service (which signs them), every other service
//! (which verifies them locally) and the edge functions (which verify them inside wasm).
//!
//! Tokens are compact JWS (RFC 7519) signed with Ed25519 (`alg: EdDSA`, RFC 8037), with a `kid`
//! header naming the key. See `proto/storemesh/auth/v1/auth.proto` for the claims contract.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a principal is allowed to do by kind. Users are `customer`, `seller` or `admin`;
/// non-human callers are `service` and are authorized by scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Seller,
    Admin,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Seller => "seller",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "customer" => Some(Role::Customer),
            "seller" => Some(Role::Seller),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// The scopes service accounts can hold.
pub mod scopes {
    pub const STORAGE_READ: &str = "storage.read";
    pub const STORAGE_WRITE_THUMBNAILS: &str = "storage.write:thumbnails";
    pub const STORAGE_DELETE_PRODUCTS: &str = "storage.delete:products";
    pub const CATALOG_READ: &str = "catalog.read";
    pub const CATALOG_WRITE_VARIANTS: &str = "catalog.write:variants";
    pub const EVENTS_DELIVER: &str = "events.deliver";

    pub const ALL: &[&str] = &[
        STORAGE_READ,
        STORAGE_WRITE_THUMBNAILS,
        STORAGE_DELETE_PRODUCTS,
        CATALOG_READ,
        CATALOG_WRITE_VARIANTS,
        EVENTS_DELIVER,
    ];

    pub fn is_known(scope: &str) -> bool {
        ALL.contains(&scope)
    }
}

/// The JWT claims of a Storemesh access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// User id or service account client id.
    pub sub: String,
    pub role: Role,
    /// Space-separated scopes; empty for users.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Unique token id (denylisted on logout).
    pub jti: String,
}

/// A verified caller, handed to request handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub role: Role,
    pub scopes: BTreeSet<String>,
    pub token_id: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn is_service(&self) -> bool {
        self.role == Role::Service
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

impl From<Claims> for Identity {
    fn from(claims: Claims) -> Self {
        Identity {
            subject: claims.sub,
            role: claims.role,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            token_id: claims.jti,
            expires_at: claims.exp,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm must be EdDSA")]
    WrongAlgorithm,
    #[error("token has no key id")]
    MissingKeyId,
    #[error("token signed by an unknown key")]
    UnknownKey { kid: String },
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token claims are invalid")]
    InvalidClaims,
    #[error("invalid key material: {0}")]
    InvalidKey(String),
    #[error("invalid JWKS document: {0}")]
    InvalidJwks(String),
}

/// The key id of an Ed25519 public key: the first 16 characters of the base64url SHA-256 of
/// its 32 bytes (stable, so restarts and other services agree on it).
pub fn key_id(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    URL_SAFE_NO_PAD.encode(digest)[..16].to_owned()
}

/// An Ed25519 private key that signs access tokens.
pub struct SigningKey {
    kid: String,
    public: PublicJwk,
    encoding: EncodingKey,
}

impl SigningKey {
    /// From the 32-byte Ed25519 secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, TokenError> {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let der = key
            .to_pkcs8_der()
            .map_err(|error| TokenError::InvalidKey(error.to_string()))?;
        let public_bytes = key.verifying_key().to_bytes();
        let kid = key_id(&public_bytes);
        Ok(Self {
            public: PublicJwk {
                kid: kid.clone(),
                x: URL_SAFE_NO_PAD.encode(public_bytes),
            },
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public(&self) -> &PublicJwk {
        &self.public
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|error| TokenError::InvalidKey(error.to_string()))
    }
}

/// A public key as published in the JWKS (`kty: OKP`, `crv: Ed25519`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub kid: String,
    /// base64url (no padding) of the 32-byte public key.
    pub x: String,
}

#[derive(Serialize, Deserialize)]
struct JwkDocument {
    kty: String,
    crv: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    key_use: Option<String>,
    kid: String,
    x: String,
}

#[derive(Serialize, Deserialize)]
struct JwksDocument {
    keys: Vec<JwkDocument>,
}

/// Renders an RFC 7517 JWKS document.
pub fn jwks_json(keys: &[PublicJwk]) -> String {
    let document = JwksDocument {
        keys: keys
            .iter()
            .map(|key| JwkDocument {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                alg: Some("EdDSA".into()),
                key_use: Some("sig".into()),
                kid: key.kid.clone(),
                x: key.x.clone(),
            })
            .collect(),
    };
    serde_json::to_string(&document).unwrap_or_else(|_| "{\"keys\":[]}".into())
}

/// Parses a JWKS document, keeping the Ed25519 signing keys and ignoring any other kind.
pub fn parse_jwks(json: &str) -> Result<Vec<PublicJwk>, TokenError> {
    let document: JwksDocument =
        serde_json::from_str(json).map_err(|error| TokenError::InvalidJwks(error.to_string()))?;
    Ok(document
        .keys
        .into_iter()
        .filter(|key| key.kty == "OKP" && key.crv == "Ed25519")
        .filter(|key| key.alg.as_deref().is_none_or(|alg| alg == "EdDSA"))
        .filter(|key| {
            key.key_use
                .as_deref()
                .is_none_or(|key_use| key_use == "sig")
        })
        .map(|key| PublicJwk {
            kid: key.kid,
            x: key.x,
        })
        .collect())
}

/// What a verifier accepts.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: String,
    /// Clock-skew allowance for `exp`, in seconds.
    pub leeway_secs: u64,
}

/// Verifies access tokens against a set of public keys.
pub struct Verifier {
    settings: VerifierSettings,
    keys: HashMap<String, DecodingKey>,
}

impl Verifier {
    pub fn new(settings: VerifierSettings, keys: &[PublicJwk]) -> Result<Self, TokenError> {
        let mut decoded = HashMap::new();
        for key in keys {
            let bytes = URL_SAFE_NO_PAD
                .decode(&key.x)
                .map_err(|_| TokenError::InvalidKey(format!("key {} is not base64url", key.kid)))?;
            if bytes.len() != 32 {
                return Err(TokenError::InvalidKey(format!(
                    "key {} is not an Ed25519 public key",
                    key.kid
                )));
            }
            let decoding = DecodingKey::from_ed_components(&key.x)
                .map_err(|error| TokenError::InvalidKey(error.to_string()))?;
            decoded.insert(key.kid.clone(), decoding);
        }
        Ok(Self {
            settings,
            keys: decoded,
        })
    }

    pub fn knows_key(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The `kid` a token claims, checking only that the header is an EdDSA JWS header.
    pub fn token_key_id(token: &str) -> Result<String, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            // An unknown `alg` (e.g. `none`) fails header parsing itself.
            if matches!(
                error.kind(),
                jsonwebtoken::errors::ErrorKind::Json(_)
                    | jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName
            ) && token.split('.').count() == 3
            {
                TokenError::WrongAlgorithm
            } else {
                TokenError::Malformed
            }
        })?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::WrongAlgorithm);
        }
        header.kid.ok_or(TokenError::MissingKeyId)
    }

    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_claims(token).map(Identity::from)
    }

    /// Like [`Verifier::verify`], but the whole claims (verifiers that check `iat` against a
    /// revocation time need it).
    pub fn verify_claims(&self, token: &str) -> Result<Claims, TokenError> {
        let kid = Self::token_key_id(token)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey { kid: kid.clone() })?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = self.settings.leeway_secs;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => {
                    TokenError::InvalidClaims
                }
                _ => TokenError::Malformed,
            }
        })?;
        if data.claims.jti.is_empty() || data.claims.sub.is_empty() {
            return Err(TokenError::InvalidClaims);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests;
