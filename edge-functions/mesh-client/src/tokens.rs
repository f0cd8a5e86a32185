//! Verifying a caller's access token inside a component (EdDSA JWT, `storemesh-tokens`),
//! shared by the functions that accept user tokens (`upload-hook`, `images`).
//!
//! Keys come from the `auth_jwks` variable when it is set (no call at all), and from auth
//! `GetPublicKeys` through the gateway when the token's `kid` is not among them. A Spin instance
//! lives for one request, so there is nothing to cache across requests: set `auth_jwks` to
//! avoid the extra call (and refresh it when the auth service rotates its key; until then, tokens
//! signed with the new key still verify through the fetch).

use crate::Mesh;
use crate::api::ApiError;
use crate::auth::v1::GetPublicKeysRequest;
use storemesh_tokens::{Identity, PublicJwk, TokenError, Verifier, VerifierSettings};

/// Clock-skew allowance on `exp`, seconds (the services use the same).
const LEEWAY_SECS: u64 = 30;

/// Which tokens are accepted.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    /// JWKS JSON from the `auth_jwks` variable; empty when not configured.
    pub jwks: String,
}

impl TokenSettings {
    /// From the Spin variables `token_issuer`, `token_audience` (both default `storemesh`) and
    /// `auth_jwks` (optional).
    pub fn from_variables() -> Self {
        let text = |name: &str, default: &str| {
            let value = spin_sdk::variables::get(name).unwrap_or_default();
            if value.trim().is_empty() {
                default.to_owned()
            } else {
                value
            }
        };
        Self {
            issuer: text("token_issuer", "storemesh"),
            audience: text("token_audience", "storemesh"),
            jwks: text("auth_jwks", ""),
        }
    }
}

/// The token of an `Authorization` header: `None` without the header, `401` when it is not
/// `Bearer <token>`.
pub fn bearer(authorization: Option<&str>) -> Result<Option<&str>, ApiError> {
    let Some(value) = authorization else {
        return Ok(None);
    };
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized(
            "Authorization must use the Bearer scheme",
        ));
    }
    Ok(Some(token))
}

fn refused(error: &TokenError) -> ApiError {
    ApiError::unauthorized(format!("access token refused: {error}"))
}

/// The verified identity behind `token`.
pub async fn verify(
    mesh: &Mesh,
    settings: &TokenSettings,
    token: &str,
) -> Result<Identity, ApiError> {
    let kid = Verifier::token_key_id(token).map_err(|error| refused(&error))?;
    let mut keys: Vec<PublicJwk> = if settings.jwks.trim().is_empty() {
        Vec::new()
    } else {
        storemesh_tokens::parse_jwks(&settings.jwks).map_err(|error| {
            ApiError::new(500, "misconfigured", format!("variable auth_jwks: {error}"))
        })?
    };
    if !keys.iter().any(|key| key.kid == kid) {
        let answer = mesh
            .auth()
            .get_public_keys(mesh.request(GetPublicKeysRequest {}, None))
            .await
            .map_err(|status| ApiError::from_status("auth GetPublicKeys", &status))?
            .into_inner();
        keys = storemesh_tokens::parse_jwks(&answer.jwks_json).map_err(|error| {
            ApiError::new(502, "bad_gateway", format!("auth GetPublicKeys: {error}"))
        })?;
    }
    let verifier = Verifier::new(
        VerifierSettings {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway_secs: LEEWAY_SECS,
        },
        &keys,
    )
    .map_err(|error| ApiError::new(502, "bad_gateway", format!("auth public keys: {error}")))?;
    verifier.verify(token).map_err(|error| refused(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer(None), Ok(None));
        assert_eq!(bearer(Some("Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(Some(" bearer  abc ")), Ok(Some("abc")));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            assert_eq!(
                bearer(Some(bad)).map_err(|error| error.status),
                Err(401),
                "{bad}"
            );
        }
    }
}
