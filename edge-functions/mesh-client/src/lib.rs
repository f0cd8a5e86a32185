//! Calling the Storemesh mesh from a Spin component.
//!
//! tonic's generated clients (from `storemesh-proto`, built without tonic's transport) run over
//! [`MeshChannel`], a tower `Service` on WASI 0.2 outgoing HTTP ([`channel`]). Every call goes
//! to the gateway, with a deadline (`grpc-timeout`, also enforced here). Unary, client-streaming
//! and server-streaming calls work, and `grpc-status` is read from the trailers.
//!
//! The transport is chosen per application ([`Transport`], Spin variable `grpc_transport`):
//! - `grpc-web` (default): gRPC-Web over HTTP/1.1 through `tonic_web::GrpcWebClientLayer`; works
//!   on every Spin host with no special settings (Fermyon Cloud included);
//! - `grpc`: native gRPC over HTTP/2. Cleartext (h2c) needs the host to speak HTTP/2 with prior
//!   knowledge to the gateway (`SPIN_OUTBOUND_H2C_PRIOR_KNOWLEDGE=<authority>` for Spin, exactly
//!   the authority of `gateway_url`); over TLS the host negotiates `h2` by ALPN.
//!
//! [`tokens`] verifies callers' access tokens inside a component (EdDSA, keys from the
//! `auth_jwks` variable or auth `GetPublicKeys`).

pub mod api;
pub mod channel;
pub mod tokens;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

pub use channel::{BoxError, WasiHttpChannel};
use storemesh_proto::auth::v1::IssueServiceTokenRequest;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
pub use storemesh_proto::{auth, catalog, events, storage};
pub use tonic::{Code, Request, Status};

use crate::api::ApiError;

/// How gRPC travels to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// gRPC-Web over HTTP/1.1 (the default).
    GrpcWeb,
    /// Native gRPC over HTTP/2 (h2c with prior knowledge, or TLS with ALPN `h2`).
    Grpc,
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim() {
            "" | "grpc-web" => Ok(Self::GrpcWeb),
            "grpc" => Ok(Self::Grpc),
            other => Err(format!(
                "grpc_transport must be `grpc-web` or `grpc`, not {other:?}"
            )),
        }
    }
}

/// A cloneable gRPC channel to the gateway in the chosen [`Transport`].
#[derive(Debug, Clone)]
pub struct MeshChannel {
    inner: WasiHttpChannel,
    transport: Transport,
}

/// The response future of [`MeshChannel`].
pub type MeshFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for MeshChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = MeshFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        match self.transport {
            Transport::Grpc => {
                let future = self.inner.call(request);
                Box::pin(async move { Ok(future.await?.map(tonic::body::Body::new)) })
            }
            Transport::GrpcWeb => {
                let mut web = tonic_web::GrpcWebClientService::new(self.inner.clone());
                let future = web.call(request);
                Box::pin(async move { Ok(future.await?.map(tonic::body::Body::new)) })
            }
        }
    }
}

/// Where the mesh is and how to reach it.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The gateway, `http://host:port` (or `https://`).
    pub gateway_url: String,
    pub transport: Transport,
    /// Deadline of a call that does not set its own.
    pub default_timeout: Duration,
    pub connect_timeout: Duration,
}

impl MeshConfig {
    /// From the Spin variables `gateway_url`, `grpc_transport` (optional, `grpc-web`) and
    /// `mesh_timeout_ms` (optional, 10000).
    pub fn from_variables() -> Result<Self, String> {
        let get = |name: &str| {
            spin_sdk::variables::get(name).map_err(|error| format!("variable {name}: {error}"))
        };
        let optional = |name: &str| spin_sdk::variables::get(name).unwrap_or_default();
        let timeout_ms = match optional("mesh_timeout_ms").trim() {
            "" => 10_000,
            value => value.parse::<u64>().map_err(|_| {
                format!("mesh_timeout_ms must be a number of milliseconds, not {value:?}")
            })?,
        };
        Ok(Self {
            gateway_url: get("gateway_url")?,
            transport: optional("grpc_transport").parse()?,
            default_timeout: Duration::from_millis(timeout_ms),
            connect_timeout: Duration::from_secs(5),
        })
    }
}

/// Message size limit for decoding answers (storage sends chunks of at most 1 MiB).
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Clients of every mesh service, all through the gateway.
#[derive(Debug, Clone)]
pub struct Mesh {
    channel: MeshChannel,
    default_timeout: Duration,
    /// The end client's address, sent as `x-forwarded-for` on every call (see
    /// [`Mesh::on_behalf_of`]).
    forwarded_for: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Mesh {
    pub fn new(config: &MeshConfig) -> Result<Self, String> {
        let uri: http::Uri = config
            .gateway_url
            .trim_end_matches('/')
            .parse()
            .map_err(|error| format!("gateway_url {:?}: {error}", config.gateway_url))?;
        let inner = WasiHttpChannel::new(&uri, config.connect_timeout, config.default_timeout)?;
        Ok(Self {
            channel: MeshChannel {
                inner,
                transport: config.transport,
            },
            default_timeout: config.default_timeout,
            forwarded_for: None,
        })
    }

    /// Every call made for the end client at `client_addr` (Spin's `spin-client-addr` header,
    /// `ip:port`) carries `x-forwarded-for: <ip>`, so the gateway, which believes it from the
    /// edge, counts the calls under the client's address rather than the edge's one (where
    /// every client's calls would share a bucket). A missing or unparsable address forwards
    /// nothing. Only the address Spin reports is forwarded, never a client-sent
    /// `x-forwarded-for`.
    #[must_use]
    pub fn on_behalf_of(mut self, client_addr: Option<&str>) -> Self {
        self.forwarded_for = client_addr
            .and_then(client_ip)
            .and_then(|ip| ip.to_string().parse().ok());
        self
    }

    pub fn transport(&self) -> Transport {
        self.channel.transport
    }

    pub fn auth(&self) -> AuthServiceClient<MeshChannel> {
        AuthServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn catalog(&self) -> CatalogServiceClient<MeshChannel> {
        CatalogServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn storage(&self) -> StorageServiceClient<MeshChannel> {
        StorageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// A token of the function's own service account (`account` = the client id and secret from
    /// its Spin variables, named `{account}_client_id` / `{account}_client_secret` in errors).
    /// A Spin instance lives for one request, so each request asks again. Credentials or scopes
    /// auth refuses are the deployment's fault (`500 misconfigured`: retrying after a fix
    /// helps); other failures map as every mesh status does.
    pub async fn service_token(
        &self,
        account: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> Result<String, ApiError> {
        if client_id.is_empty() || client_secret.is_empty() {
            return Err(ApiError::new(
                500,
                "misconfigured",
                format!("{account}_client_id and {account}_client_secret must be set"),
            ));
        }
        let answer = self
            .auth()
            .issue_service_token(self.request(
                IssueServiceTokenRequest {
                    client_id: client_id.to_owned(),
                    client_secret: client_secret.to_owned(),
                    requested_scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
                },
                None,
            ))
            .await;
        match answer {
            Ok(answer) => Ok(answer.into_inner().access_token),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument
                ) =>
            {
                Err(ApiError::new(
                    500,
                    "misconfigured",
                    format!("auth IssueServiceToken: {}", status.message()),
                ))
            }
            Err(status) => Err(ApiError::from_status("auth IssueServiceToken", &status)),
        }
    }

    /// A request with the default deadline and, when given, `authorization: Bearer <token>`.
    pub fn request<T>(&self, message: T, token: Option<&str>) -> Request<T> {
        self.request_with_timeout(message, token, self.default_timeout)
    }

    /// A request with `timeout` as its deadline.
    pub fn request_with_timeout<T>(
        &self,
        message: T,
        token: Option<&str>,
        timeout: Duration,
    ) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        if let Some(client) = &self.forwarded_for {
            request
                .metadata_mut()
                .insert("x-forwarded-for", client.clone());
        }
        if let Some(token) = token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// The IP address of Spin's `spin-client-addr` (`ip:port`, `[v6]:port`; a bare address is
/// accepted too), IPv4-mapped IPv6 addresses as IPv4.
pub fn client_ip(client_addr: &str) -> Option<std::net::IpAddr> {
    let client_addr = client_addr.trim();
    let ip = client_addr
        .parse::<std::net::SocketAddr>()
        .map(|addr| addr.ip())
        .or_else(|_| client_addr.parse::<std::net::IpAddr>())
        .ok()?;
    Some(ip.to_canonical())
}

/// The headers of an incoming request, for the few a component reads.
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn of(request: &spin_sdk::http::IncomingRequest) -> Self {
        Self(request.headers().entries())
    }

    /// The last value of `name` (case-insensitive). Spin appends its own `spin-*` headers after
    /// whatever the client sent under the same name (`crates/trigger-http/src/wasi.rs`,
    /// `prepare_request`), so the last value is Spin's and a client cannot choose the route
    /// parameters.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rfind(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Every value of the list-valued header `name` (e.g. `If-None-Match` sent on several
    /// lines) joined with `, `, as RFC 9110 makes them equivalent; `None` when absent.
    pub fn list(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// `retry-after` seconds of a status (sent by rate limiters), if any.
pub fn retry_after(status: &Status) -> Option<String> {
    status
        .metadata()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Blocks for `duration` on the WASI monotonic clock. A component instance serves one request,
/// so blocking it holds up nothing else.
pub fn pause(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wasi::clocks::monotonic_clock::subscribe_duration(nanos).block();
}

/// A WASI I/O error in one line: hosts (wasmtime) put a backtrace after the first line of
/// `to_debug_string`, which belongs in no answer or log line of ours.
pub fn io_error_text(error: &wasi::io::error::Error) -> String {
    let text = error.to_debug_string();
    text.lines().next().unwrap_or_default().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_ip_comes_from_spins_client_address() {
        let ip = |text: &str| client_ip(text).map(|ip| ip.to_string());
        assert_eq!(ip("127.0.0.2:50123").as_deref(), Some("127.0.0.2"));
        assert_eq!(ip("[2001:db8::7]:443").as_deref(), Some("2001:db8::7"));
        assert_eq!(ip("[::ffff:10.1.2.3]:80").as_deref(), Some("10.1.2.3"));
        assert_eq!(ip("192.0.2.9").as_deref(), Some("192.0.2.9"));
        for bad in ["", "localhost:80", "1.2.3.4, 5.6.7.8", "1.2.3.4:99999"] {
            assert_eq!(ip(bad), None, "{bad}");
        }
    }

    // Spin: crates/trigger-http/src/wasi.rs, `prepare_request`, appends its `spin-*` headers
    // after the client's, so on `spin up` a forged `spin-client-addr` comes first and Spin's
    // last: the functions forward the last one.
    #[test]
    fn spins_appended_client_address_wins_over_a_forged_one() {
        let headers = Headers(vec![
            ("Spin-Client-Addr".into(), b"6.6.6.6:1".to_vec()),
            ("x-other".into(), b"v".to_vec()),
            ("spin-client-addr".into(), b"203.0.113.5:40000".to_vec()),
        ]);
        let forwarded = headers.get("spin-client-addr").and_then(client_ip);
        assert_eq!(
            forwarded.map(|ip| ip.to_string()).as_deref(),
            Some("203.0.113.5")
        );
    }
}
