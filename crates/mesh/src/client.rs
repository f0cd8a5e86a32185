//! Service-to-service clients: the one way a Storemesh process builds a client of another
//! ([`channel`]), and the one service-token cache ([`ServiceTokens`]).
//!
//! Every call one process makes to another goes through a [`MeshChannel`] over an
//! [`Upstream`], so it gets what the gateway's proxying gets: discovery (re-resolved for
//! `dns`), power-of-two-choices, outlier ejection, deadlines, budgeted retries of idempotent
//! calls, and the per-endpoint metrics `mesh_upstream_*{upstream="<name>"}`:
//!
//! | caller | calls | upstream | configured by |
//! |---|---|---|---|
//! | storage, catalog, gateway: token verification | auth `GetPublicKeys` | `auth` | `tokens.auth_endpoint` ([`auth_channel`]) |
//! | catalog clean-up worker, dispatcher: [`ServiceTokens`] | auth `IssueServiceToken` | `auth` | `tokens.auth_endpoint` ([`auth_channel`]) |
//! | storage: product ownership | catalog `GetProduct` | `catalog` | `storage.catalog_endpoint` |
//! | catalog clean-up worker | storage `Delete` | `storage` | `catalog.storage_endpoint` |
//! | dispatcher: `record_variant` targets, reconciler | catalog, storage | `catalog`, `storage` | the upstream sections `dispatcher.catalog`, `dispatcher.storage` |
//!
//! An endpoint key becomes an upstream by [`upstream`] (the forms are in
//! `storemesh_runtime::endpoint`): `http(s)://host:port` is one static address whose name is
//! resolved when a connection opens, as before; `dns:///name:port` makes every address of the
//! name an endpoint, re-resolved every 2 s (a Kubernetes headless Service).
//! A process makes one channel per service it calls and shares it between its clients.

use std::time::Duration;

use storemesh_proto::auth::v1::IssueServiceTokenRequest;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_runtime::Secret;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::endpoint::{EndpointError, ServiceEndpoint};
use tokio::time::Instant;

use crate::config::{UpstreamConfig, UpstreamTls};
use crate::tls::TlsError;
use crate::{MeshChannel, Upstream};

/// Connect timeout of the clients configured by an endpoint key (what they always had).
const ENDPOINT_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// How often a `dns:///` endpoint key is resolved again: as the gateway's upstreams in the
/// deployments, within the 5 s a terminating pod keeps serving (`preStop`).
const ENDPOINT_DNS_REFRESH_MS: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid configuration key {key}: {source}")]
    Endpoint {
        key: String,
        #[source]
        source: EndpointError,
    },
    #[error("cannot set up the {upstream} client: {source}")]
    Tls {
        upstream: String,
        #[source]
        source: TlsError,
    },
}

/// The upstream an endpoint key names (`key` = `endpoint`, e.g. `storage.catalog_endpoint`),
/// its other settings at their defaults except a 2 s connect timeout and, for `dns:///`, a
/// 2 s refresh interval.
pub fn upstream(key: &str, endpoint: &str) -> Result<UpstreamConfig, ClientError> {
    let parsed = ServiceEndpoint::parse(endpoint).map_err(|source| ClientError::Endpoint {
        key: key.to_owned(),
        source,
    })?;
    Ok(UpstreamConfig::from(&parsed))
}

impl From<&ServiceEndpoint> for UpstreamConfig {
    fn from(endpoint: &ServiceEndpoint) -> Self {
        let config = Self {
            connect_timeout_ms: ENDPOINT_CONNECT_TIMEOUT_MS,
            ..Self::default()
        };
        match endpoint {
            ServiceEndpoint::Address { authority, tls } => Self {
                addresses: vec![authority.clone()],
                tls: tls.then(UpstreamTls::default),
                ..config
            },
            ServiceEndpoint::Dns { name } => Self {
                dns: Some(name.clone()),
                refresh_interval_ms: ENDPOINT_DNS_REFRESH_MS,
                ..config
            },
        }
    }
}

/// A client channel to the upstream `name` (the service called; it labels the metrics):
/// discovery starts now and, for `dns` and `addresses_file`, keeps running while the channel
/// (or a clone) lives.
pub async fn channel(name: &str, config: &UpstreamConfig) -> Result<MeshChannel, ClientError> {
    let upstream = Upstream::start(name, config.clone())
        .await
        .map_err(|source| ClientError::Tls {
            upstream: name.to_owned(),
            source,
        })?;
    Ok(MeshChannel::new(upstream))
}

/// The channel to the auth service at `tokens.auth_endpoint` (upstream `auth`): token
/// verification keys (`storemesh_runtime::auth::GrpcKeySource::with_channel`) and
/// [`ServiceTokens`].
pub async fn auth_channel(tokens: &TokensConfig) -> Result<MeshChannel, ClientError> {
    channel(
        "auth",
        &upstream("tokens.auth_endpoint", &tokens.auth_endpoint)?,
    )
    .await
}

/// A service account's access token for calls to other services: issued by
/// `AuthService.IssueServiceToken` with the account's client credentials, cached, and renewed
/// when 80 % of its lifetime has passed (at least 5 s before it expires), so a call never
/// leaves with a token that expires on the way.
///
/// Renewal is single-flight: one caller asks auth while the others wait for its answer, and
/// when that fails they all get its error (instead of asking again one after another). A call
/// refused with `UNAUTHENTICATED` (token revoked, signing key rotated) hands its token to
/// [`ServiceTokens::invalidate`], and the next [`ServiceTokens::get`] fetches a new one.
pub struct ServiceTokens {
    auth: AuthServiceClient<MeshChannel>,
    client_id: String,
    client_secret: Secret,
    scopes: Vec<String>,
    timeout: Duration,
    state: tokio::sync::Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    cached: Option<Cached>,
    /// When the last fetch failed, and how: callers that were waiting for it get its error.
    failed: Option<(Instant, tonic::Status)>,
}

struct Cached {
    token: String,
    renew_at: Instant,
}

/// Deadline of one `IssueServiceToken` call unless [`ServiceTokens::timeout`] says otherwise.
const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Used when auth's answer names no expiry.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(60);

/// How long a token of `lifetime` is used before it is renewed: until 80 % of it has passed,
/// and at least 5 s before it expires.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub((lifetime / 5).max(Duration::from_secs(5)))
}

impl ServiceTokens {
    /// Tokens of the account `client_id` through `auth` (see [`auth_channel`]), with every
    /// scope granted to the account unless [`ServiceTokens::scopes`] narrows them.
    pub fn new(auth: MeshChannel, client_id: impl Into<String>, client_secret: Secret) -> Self {
        Self {
            auth: AuthServiceClient::new(auth),
            client_id: client_id.into(),
            client_secret,
            scopes: Vec::new(),
            timeout: DEFAULT_TOKEN_TIMEOUT,
            state: tokio::sync::Mutex::new(TokenState::default()),
        }
    }

    /// Asks for these scopes only (a subset of the account's).
    #[must_use]
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Deadline of one `IssueServiceToken` call (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A token that is valid for a while yet: the cached one, or a new one.
    pub async fn get(&self) -> Result<String, tonic::Status> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.cached
            && Instant::now() < cached.renew_at
        {
            return Ok(cached.token.clone());
        }
        if let Some((failed_at, status)) = &state.failed
            && *failed_at >= asked
        {
            // The fetch this caller waited for failed just now: its answer is this one's too.
            return Err(status.clone());
        }
        match self.issue().await {
            Ok(cached) => {
                let token = cached.token.clone();
                state.cached = Some(cached);
                state.failed = None;
                Ok(token)
            }
            Err(status) => {
                state.failed = Some((Instant::now(), status.clone()));
                Err(status)
            }
        }
    }

    /// Forgets `refused` if it is still the cached token (a call with it was answered
    /// `UNAUTHENTICATED`), so the next [`ServiceTokens::get`] fetches a new one. A token renewed
    /// meanwhile is kept.
    pub async fn invalidate(&self, refused: &str) {
        let mut state = self.state.lock().await;
        if state
            .cached
            .as_ref()
            .is_some_and(|cached| cached.token == refused)
        {
            state.cached = None;
        }
    }

    async fn issue(&self) -> Result<Cached, tonic::Status> {
        let mut request = tonic::Request::new(IssueServiceTokenRequest {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.expose().clone(),
            // Empty: every scope granted to the account.
            requested_scopes: self.scopes.clone(),
        });
        request.set_timeout(self.timeout);
        storemesh_runtime::telemetry::inject_trace_context(request.metadata_mut());
        let issued = self
            .auth
            .clone()
            .issue_service_token(request)
            .await?
            .into_inner();
        let now = storemesh_runtime::time::since_epoch();
        let lifetime = issued
            .expire_time
            .and_then(|time| u64::try_from(time.seconds).ok())
            .map_or(ASSUMED_LIFETIME, |expires| {
                Duration::from_secs(expires).saturating_sub(now)
            });
        tracing::debug!(client_id = %self.client_id, lifetime_secs = lifetime.as_secs(), "service token issued");
        Ok(Cached {
            token: issued.access_token,
            renew_at: Instant::now() + renew_after(lifetime),
        })
    }
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens")
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_leaves_a_fifth_of_the_lifetime_and_at_least_five_seconds() {
        let secs = |s| Duration::from_secs(s);
        assert_eq!(renew_after(secs(900)), secs(720));
        assert_eq!(renew_after(secs(60)), secs(48));
        assert_eq!(renew_after(secs(20)), secs(15));
        assert_eq!(renew_after(secs(5)), Duration::ZERO);
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn endpoint_keys_become_upstreams() {
        let plain = upstream("k", "http://catalog:50052").unwrap();
        assert_eq!(plain.addresses, ["catalog:50052"]);
        assert_eq!((plain.dns.as_deref(), plain.tls.as_ref()), (None, None));
        assert_eq!(plain.connect_timeout_ms, 2_000);
        let defaults = UpstreamConfig::default();
        assert_eq!(
            (plain.max_retries, plain.eject_after_failures),
            (defaults.max_retries, defaults.eject_after_failures)
        );

        let tls = upstream("k", "https://auth.example.com").unwrap();
        assert_eq!(tls.addresses, ["auth.example.com:443"]);
        assert_eq!(tls.tls, Some(UpstreamTls::default()));

        let dns = upstream("k", "dns:///catalog-headless:50052").unwrap();
        assert!(dns.addresses.is_empty());
        assert_eq!(dns.dns.as_deref(), Some("catalog-headless:50052"));
        assert_eq!(dns.refresh_interval_ms, 2_000);

        for config in [plain, tls, dns] {
            storemesh_runtime::config::Validate::validate(&config, "k").unwrap();
        }
        let error = upstream("storage.catalog_endpoint", "catalog:50052")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("invalid configuration key storage.catalog_endpoint: must be"),
            "{error}"
        );
    }
}
