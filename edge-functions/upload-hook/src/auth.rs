//! Verifying the caller's access token inside the component (EdDSA JWT, `storemesh-tokens`).
//!
//! Keys come from the `auth_jwks` variable when it is set (no call at all), and from auth
//! `GetPublicKeys` through the gateway when the token's `kid` is not among them. A Spin instance
//! lives for one request, so there is nothing to cache across requests: set `auth_jwks` to
//! avoid the extra call (and refresh it when the auth service rotates its key; until then, tokens
//! signed with the new key still verify through the fetch).

use storemesh_mesh_client::Mesh;
use storemesh_mesh_client::api::ApiError;
use storemesh_mesh_client::auth::v1::GetPublicKeysRequest;
use storemesh_tokens::{Identity, PublicJwk, TokenError, Verifier, VerifierSettings};

/// Clock-skew allowance on `exp`, seconds (the services use the same).
const LEEWAY_SECS: u64 = 30;

pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    /// JWKS JSON from the `auth_jwks` variable; empty when not configured.
    pub jwks: String,
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
