//! Authentication and authorization for every service.
//!
//! [`AuthLayer`] authenticates: a request with `authorization: Bearer <jwt>` is verified
//! **locally** against the auth service's published keys (cached; refetched when a token names an
//! unknown `kid`, at most once per `jwks_min_refresh_interval_ms`, so a flood of bogus key ids
//! cannot hammer the auth service), it is checked for revocation in Redis (its `jti` on the
//! denylist, or issued before its user's "not before" time), and the verified [`Identity`] is
//! put into the request's extensions. A bad token is refused with
//! `UNAUTHENTICATED` before the handler runs; a request without a token reaches the handler with
//! no identity, and the handler decides (some methods are public).
//!
//! Handlers authorize with [`caller`] and the [`Authorize`] helpers: missing identity →
//! `UNAUTHENTICATED`; identity without the right role, ownership or scope → `PERMISSION_DENIED`.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
pub use storemesh_tokens::{Identity, Role, scopes};
use storemesh_tokens::{PublicJwk, TokenError, Verifier, VerifierSettings};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::config::{ConfigError, Validate};
use crate::error::{ServiceError, ServiceResult};

/// Redis key prefix of revoked access-token ids (`<prefix><jti>`, TTL = token's remaining life).
/// Written by the auth service on logout, read by every verifier.
pub const DENYLIST_PREFIX: &str = "auth:deny:";

/// Redis key prefix of a user's "not before" time (`<prefix><user id>`, seconds since the epoch):
/// user access tokens issued (`iat`) before it are revoked. Written by the auth service when it
/// ends all of a user's sessions (SetRole, ChangePassword, LogoutAll, an admin bootstrap that
/// resets the account), with a TTL of the access-token lifetime (older tokens have expired by
/// then); read by every verifier together with the denylist.
pub const NOT_BEFORE_PREFIX: &str = "auth:nbf:";

/// The `tokens` configuration section, shared by the issuer (auth) and every verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// `iss` of every access token.
    pub issuer: String,
    /// `aud` of every access token (the whole mesh).
    pub audience: String,
    /// Allowed clock skew when checking `exp`, in seconds.
    pub leeway_secs: u64,
    /// gRPC endpoint of the auth service, where verifiers fetch the public keys.
    pub auth_endpoint: String,
    /// Minimum time between two key fetches triggered by unknown key ids, in milliseconds.
    pub jwks_min_refresh_interval_ms: u64,
    /// Verified tokens remembered (per process), so a client reusing its token is not
    /// verified again on every call. 0 turns the cache off.
    pub verified_cache_entries: u64,
    /// How long a cached token may go without re-checking the denylist, in milliseconds: a
    /// logout takes effect at verifiers within this time. 0 checks on every call.
    pub revocation_check_interval_ms: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            issuer: "storemesh".into(),
            audience: "storemesh".into(),
            leeway_secs: 5,
            auth_endpoint: "http://127.0.0.1:50051".into(),
            jwks_min_refresh_interval_ms: 10_000,
            verified_cache_entries: 10_000,
            revocation_check_interval_ms: 1_000,
        }
    }
}

impl Validate for TokensConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message: message.to_owned(),
        };
        if self.issuer.trim().is_empty() {
            return Err(invalid("issuer", "must not be empty"));
        }
        if self.audience.trim().is_empty() {
            return Err(invalid("audience", "must not be empty"));
        }
        if self.leeway_secs > 300 {
            return Err(invalid("leeway_secs", "must be at most 300"));
        }
        if let Err(error) = crate::endpoint::ServiceEndpoint::parse(&self.auth_endpoint) {
            return Err(invalid("auth_endpoint", &error.to_string()));
        }
        Ok(())
    }
}

impl TokensConfig {
    pub fn verifier_settings(&self) -> VerifierSettings {
        VerifierSettings {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_secs: self.leeway_secs,
        }
    }
}

/// Where verifiers get the current public keys.
pub trait KeySource: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PublicJwk>, String>>;
}

/// Fetches keys from the auth service's `GetPublicKeys`, over any tonic channel: services
/// pass the mesh's (`storemesh_mesh::client::auth_channel`, with discovery, ejection, retries
/// and `mesh_upstream_*` metrics), which this crate cannot build itself (the mesh depends on
/// it). [`GrpcKeySource::new`] dials a plain tonic channel, for tests and tools.
pub struct GrpcKeySource<C = tonic::transport::Channel> {
    channel: C,
}

/// Deadline of one `GetPublicKeys` call.
const KEY_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl GrpcKeySource {
    /// A plain tonic channel to `endpoint` (`http://host:port`), without the mesh's governance.
    pub fn new(endpoint: &str) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(KEY_FETCH_TIMEOUT)
            .connect_lazy();
        Ok(Self { channel })
    }
}

impl<C> GrpcKeySource<C> {
    /// Keys fetched through `channel`, e.g. a `storemesh_mesh::MeshChannel` to auth.
    pub fn with_channel(channel: C) -> Self {
        Self { channel }
    }
}

impl<C> KeySource for GrpcKeySource<C>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PublicJwk>, String>> {
        use storemesh_proto::auth::v1::GetPublicKeysRequest;
        use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
        let mut client = AuthServiceClient::new(self.channel.clone());
        let mut request = tonic::Request::new(GetPublicKeysRequest {});
        request.set_timeout(KEY_FETCH_TIMEOUT);
        crate::telemetry::inject_trace_context(request.metadata_mut());
        Box::pin(async move {
            let response = client
                .get_public_keys(request)
                .await
                .map_err(|status| format!("GetPublicKeys: {}", status.message()))?;
            storemesh_tokens::parse_jwks(&response.into_inner().jwks_json)
                .map_err(|error| error.to_string())
        })
    }
}

/// Verifies bearer tokens; see the module docs.
pub struct Authenticator {
    settings: VerifierSettings,
    source: Arc<dyn KeySource>,
    verifier: RwLock<Arc<Verifier>>,
    /// Earliest time of the next key fetch, and whether the last fetch failed; the mutex also
    /// makes fetches single-flight.
    fetch_state: tokio::sync::Mutex<FetchState>,
    min_refresh: Duration,
    denylist: Option<ConnectionManager>,
    /// Token text → identity verified from it, its `iat`, and when revocation was last checked.
    verified: Option<quick_cache::sync::Cache<String, (Identity, u64, Instant)>>,
    revocation_check: Duration,
    leeway_secs: u64,
}

/// After a failed fetch (auth not up yet), try again much sooner than after a successful one:
/// callers are being refused meanwhile. Still bounded, so an outage of auth plus a flood of
/// tokens cannot turn into a flood of fetches.
const RETRY_AFTER_FAILED_FETCH: Duration = Duration::from_millis(250);

struct FetchState {
    next_fetch: Instant,
    last_failed: bool,
}

impl Authenticator {
    pub fn new(
        config: &TokensConfig,
        source: Arc<dyn KeySource>,
        denylist: Option<ConnectionManager>,
    ) -> Result<Self, TokenError> {
        let settings = config.verifier_settings();
        Ok(Self {
            verifier: RwLock::new(Arc::new(Verifier::new(settings.clone(), &[])?)),
            settings,
            source,
            fetch_state: tokio::sync::Mutex::new(FetchState {
                next_fetch: Instant::now(),
                last_failed: false,
            }),
            min_refresh: Duration::from_millis(config.jwks_min_refresh_interval_ms),
            denylist,
            verified: usize::try_from(config.verified_cache_entries)
                .ok()
                .filter(|entries| *entries > 0)
                .map(quick_cache::sync::Cache::new),
            revocation_check: Duration::from_millis(config.revocation_check_interval_ms),
            leeway_secs: config.leeway_secs,
        })
    }

    /// An authenticator fetching keys from `config.auth_endpoint` over a plain tonic channel
    /// ([`GrpcKeySource::new`]), for tests and tools. Services fetch through the mesh:
    /// `Authenticator::new(config, Arc::new(GrpcKeySource::with_channel(auth)), denylist)` with
    /// `auth` from `storemesh_mesh::client::auth_channel`.
    pub fn from_config(
        config: &TokensConfig,
        denylist: Option<ConnectionManager>,
    ) -> Result<Self, ServiceError> {
        let source = GrpcKeySource::new(&config.auth_endpoint).map_err(ServiceError::internal)?;
        Self::new(config, Arc::new(source), denylist).map_err(ServiceError::internal)
    }

    fn current(&self) -> Arc<Verifier> {
        match self.verifier.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetches the keys at start-up, best effort: if the auth service is not up yet, the
    /// first request that needs a key fetches again at once instead of waiting out the retry
    /// interval.
    pub async fn prefetch_keys(&self) {
        if !self.refresh_keys().await {
            self.fetch_state.lock().await.next_fetch = Instant::now();
        }
    }

    /// Fetches the keys now unless a fetch happened too recently. Returns whether the keys
    /// are usable, i.e. the most recent fetch succeeded.
    pub async fn refresh_keys(&self) -> bool {
        let mut state = self.fetch_state.lock().await;
        if Instant::now() < state.next_fetch {
            return !state.last_failed;
        }
        let result = self.source.fetch().await;
        state.last_failed = result.is_err();
        let next_fetch = &mut state.next_fetch;
        match result {
            Ok(keys) => match Verifier::new(self.settings.clone(), &keys) {
                Ok(verifier) => {
                    tracing::info!(keys = keys.len(), "token verification keys refreshed");
                    match self.verifier.write() {
                        Ok(mut guard) => *guard = Arc::new(verifier),
                        Err(poisoned) => *poisoned.into_inner() = Arc::new(verifier),
                    }
                    *next_fetch = Instant::now() + self.min_refresh;
                }
                Err(error) => {
                    tracing::warn!(%error, "auth service published unusable keys");
                    *next_fetch = Instant::now() + self.min_refresh;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot fetch token verification keys");
                *next_fetch = Instant::now() + RETRY_AFTER_FAILED_FETCH;
            }
        }
        !state.last_failed
    }

    /// Verifies `token` and returns who it identifies. A token verified before is taken from
    /// the cache (still checked for expiry, and for revocation at least every
    /// `revocation_check_interval_ms`).
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Identity> {
        if let Some(cache) = &self.verified
            && let Some((identity, issued_at, checked)) = cache.get(token)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(u64::MAX);
            if now <= identity.expires_at.saturating_add(self.leeway_secs) {
                if checked.elapsed() < self.revocation_check {
                    return Ok(identity);
                }
                self.check_revoked(&identity, issued_at).await?;
                cache.insert(
                    token.to_owned(),
                    (identity.clone(), issued_at, Instant::now()),
                );
                return Ok(identity);
            }
            cache.remove(token);
        }
        let (identity, issued_at) = self.verify_fully(token).await?;
        if let Some(cache) = &self.verified {
            cache.insert(
                token.to_owned(),
                (identity.clone(), issued_at, Instant::now()),
            );
        }
        Ok(identity)
    }

    /// The revocation check, one round trip: the token's `jti` on the denylist (Logout), or,
    /// for users, issued before the user's "not before" time (every session ended at once).
    async fn check_revoked(&self, identity: &Identity, issued_at: u64) -> ServiceResult<()> {
        let Some(redis) = &self.denylist else {
            return Ok(());
        };
        let mut connection = redis.clone();
        let mut pipe = redis::pipe();
        pipe.exists(format!("{DENYLIST_PREFIX}{}", identity.token_id));
        // Service accounts have no sessions to end; their ids share no key space with users'.
        if !identity.is_service() {
            pipe.get(format!("{NOT_BEFORE_PREFIX}{}", identity.subject));
        }
        let (denied, not_before): (bool, Option<u64>) = if identity.is_service() {
            let (denied,): (bool,) = pipe.query_async(&mut connection).await?;
            (denied, None)
        } else {
            pipe.query_async(&mut connection).await?
        };
        if denied {
            return Err(ServiceError::Unauthenticated(
                "access token has been revoked".into(),
            ));
        }
        if not_before.is_some_and(|not_before| issued_at < not_before) {
            return Err(ServiceError::Unauthenticated(
                "access token has been revoked: the account's sessions were ended; sign in again"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn verify_fully(&self, token: &str) -> ServiceResult<(Identity, u64)> {
        let kid = Verifier::token_key_id(token).map_err(unauthenticated)?;
        if !self.current().knows_key(&kid) && !self.refresh_keys().await {
            // Not the caller's fault: the key may well be genuine; say so and let them retry.
            return Err(ServiceError::Unavailable(
                "cannot fetch token verification keys right now; retry".into(),
            ));
        }
        let claims = self
            .current()
            .verify_claims(token)
            .map_err(unauthenticated)?;
        let issued_at = claims.iat;
        let identity = Identity::from(claims);
        self.check_revoked(&identity, issued_at).await?;
        Ok((identity, issued_at))
    }
}

fn unauthenticated(error: TokenError) -> ServiceError {
    let message = match error {
        TokenError::UnknownKey { .. } => "access token signed by an unknown key".to_owned(),
        other => format!("invalid access token: {other}"),
    };
    ServiceError::Unauthenticated(message)
}

/// Extracts the token from an `authorization: Bearer <token>` value.
pub fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The identity of the caller, or `UNAUTHENTICATED`.
pub fn caller<T>(request: &tonic::Request<T>) -> ServiceResult<&Identity> {
    request.extensions().get::<Identity>().ok_or_else(|| {
        ServiceError::Unauthenticated("this method requires a bearer access token".into())
    })
}

/// Authorization rules, each `PERMISSION_DENIED` when not met.
pub trait Authorize {
    fn require_admin(&self) -> ServiceResult<()>;
    fn require_role(&self, allowed: &[Role]) -> ServiceResult<()>;
    fn require_scope(&self, scope: &str) -> ServiceResult<()>;
    /// The user owning a resource, or an admin.
    fn require_owner_or_admin(&self, owner: &str) -> ServiceResult<()>;
}

impl Authorize for Identity {
    fn require_admin(&self) -> ServiceResult<()> {
        self.require_role(&[Role::Admin])
    }

    fn require_role(&self, allowed: &[Role]) -> ServiceResult<()> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            let names: Vec<&str> = allowed.iter().map(|role| role.as_str()).collect();
            Err(ServiceError::PermissionDenied(format!(
                "requires role {}",
                names.join(" or ")
            )))
        }
    }

    fn require_scope(&self, scope: &str) -> ServiceResult<()> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(format!(
                "requires scope {scope}"
            )))
        }
    }

    fn require_owner_or_admin(&self, owner: &str) -> ServiceResult<()> {
        if self.is_admin() || (self.role != Role::Service && self.subject == owner) {
            Ok(())
        } else {
            Err(ServiceError::PermissionDenied(
                "only the owner or an admin may do this".into(),
            ))
        }
    }
}

/// The authentication layer; see the module docs.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
            return Box::pin(self.inner.call(request));
        };
        let Some(token) = bearer_token(header).map(str::to_owned) else {
            let status = tonic::Status::unauthenticated(
                "authorization metadata must be `Bearer <access token>`",
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            match authenticator.authenticate(&token).await {
                Ok(identity) => {
                    tracing::Span::current().record("subject", identity.subject.as_str());
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let value = |s: &'static str| http::HeaderValue::from_static(s);
        assert_eq!(
            bearer_token(&value("Bearer abc.def.ghi")),
            Some("abc.def.ghi")
        );
        assert_eq!(bearer_token(&value("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&value("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer_token(&value("Bearer ")), None);
        assert_eq!(bearer_token(&value("abc")), None);
    }

    fn identity(role: Role, subject: &str, scopes: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            role,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            token_id: "t".into(),
            expires_at: 0,
        }
    }

    #[test]
    fn authorization_rules() {
        let seller = identity(Role::Seller, "alice", &[]);
        let admin = identity(Role::Admin, "root", &[]);
        let service = identity(Role::Service, "alice", &[scopes::CATALOG_WRITE_VARIANTS]);
        assert!(seller.require_owner_or_admin("alice").is_ok());
        assert!(seller.require_owner_or_admin("bob").is_err());
        assert!(admin.require_owner_or_admin("bob").is_ok());
        // A service account whose client id happens to equal a user id owns nothing.
        assert!(service.require_owner_or_admin("alice").is_err());
        assert!(
            service
                .require_scope(scopes::CATALOG_WRITE_VARIANTS)
                .is_ok()
        );
        assert!(
            seller
                .require_scope(scopes::CATALOG_WRITE_VARIANTS)
                .is_err()
        );
        assert!(admin.require_admin().is_ok());
        let denied = seller.require_admin().unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }
}
