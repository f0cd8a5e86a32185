//! The routing service behind the gateway's listener.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use storemesh_mesh::Upstream;
use storemesh_runtime::ServiceError;
use storemesh_runtime::auth::{Authenticator, bearer_token};
use storemesh_runtime::server::ClientAddr;
use tonic::body::Body;

use crate::config::GatewayConfig;
use crate::limits::{KeyedLimiter, Prune};

/// Services the gateway answers itself.
const LOCAL_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Gateway {
    routes: HashMap<String, Arc<Upstream>>,
    authenticator: Arc<Authenticator>,
    public_methods: HashSet<String>,
    streaming_methods: HashSet<String>,
    max_request_bytes: u64,
    max_streaming_request_bytes: u64,
    by_identity: KeyedLimiter<String>,
    by_service: KeyedLimiter<String>,
    by_address: KeyedLimiter<IpAddr>,
}

fn status(error: ServiceError) -> http::Response<Body> {
    tonic::Status::from(error).into_http()
}

fn rate_limited(retry_after: Duration) -> http::Response<Body> {
    status(ServiceError::ResourceExhausted {
        message: "rate limit exceeded; retry later".into(),
        retry_after: Some(retry_after),
    })
}

impl Gateway {
    pub fn new(
        config: &GatewayConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
        authenticator: Arc<Authenticator>,
    ) -> Self {
        let routes = config
            .routes
            .iter()
            .filter_map(|(service, upstream)| {
                upstreams
                    .get(upstream)
                    .map(|upstream| (service.clone(), upstream.clone()))
            })
            .collect();
        let limits = config.rate_limit;
        Self {
            routes,
            authenticator,
            public_methods: config.public_methods.iter().cloned().collect(),
            streaming_methods: config.streaming_methods.iter().cloned().collect(),
            max_request_bytes: u64::try_from(config.max_request_bytes).unwrap_or(u64::MAX),
            max_streaming_request_bytes: config.max_streaming_request_bytes,
            by_identity: KeyedLimiter::new(
                "identity",
                limits.per_identity_per_sec,
                limits.per_identity_burst,
                limits.max_keys,
            ),
            by_service: KeyedLimiter::new(
                "service",
                limits.per_service_per_sec,
                limits.per_service_burst,
                limits.max_keys,
            ),
            by_address: KeyedLimiter::new(
                "address",
                limits.per_address_per_sec,
                limits.per_address_burst,
                limits.max_keys,
            ),
        }
    }

    /// Keys tracked by the per-address buckets (for tests and diagnostics).
    pub fn tracked_addresses(&self) -> usize {
        self.by_address.len()
    }

    /// The end client of `request`, as the server layers resolved it (`GrpcLayer`: the TCP
    /// peer, or what `server.trusted_proxies` forwarded).
    fn client(&self, request: &http::Request<Body>) -> Option<ClientAddr> {
        request.extensions().get::<ClientAddr>().copied()
    }

    async fn handle(
        &self,
        mut request: http::Request<Body>,
        mut local: tonic::service::Routes,
    ) -> http::Response<Body> {
        let path = request.uri().path().to_owned();
        let service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if LOCAL_SERVICES.contains(&service.as_str()) {
            use tower::Service as _;
            return match local.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        }

        let client = self.client(&request);
        // Charged to the end client's address: every call except those of service identities.
        let by_address = || match client {
            Some(client) => self.by_address.check(&client.limit_key()),
            None => Ok(()),
        };
        let Some(upstream) = self.routes.get(&service) else {
            if let Err(wait) = by_address() {
                return rate_limited(wait);
            }
            return tonic::Status::unimplemented(format!("unknown service {service}")).into_http();
        };
        let public = self.public_methods.contains(&path);
        let token = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(bearer_token);
        // A token is verified whenever one is sent (cached by the authenticator), so service
        // identities are recognised on public methods too. On a public method a token that
        // fails is left to the service, as before: the call counts as anonymous here.
        let identity = match token {
            Some(token) => match self.authenticator.authenticate(token).await {
                Ok(identity) => Some(identity),
                Err(error) if !public => {
                    if let Err(wait) = by_address() {
                        return rate_limited(wait);
                    }
                    return status(error);
                }
                Err(_) => None,
            },
            None if !public => {
                if let Err(wait) = by_address() {
                    return rate_limited(wait);
                }
                return status(ServiceError::Unauthenticated(
                    "this method requires a bearer access token".into(),
                ));
            }
            None => None,
        };
        let limited = match &identity {
            Some(identity) if identity.is_service() => self.by_service.check(&identity.subject),
            Some(identity) => by_address().and_then(|()| self.by_identity.check(&identity.subject)),
            None => by_address(),
        };
        if let Err(wait) = limited {
            return rate_limited(wait);
        }
        if let Some(client) = client {
            forward_client(request.headers_mut(), client);
        }

        let cap = if self.streaming_methods.contains(&path) {
            self.max_streaming_request_bytes
        } else {
            self.max_request_bytes
        };
        let (parts, body) = request.into_parts();
        let (body, exceeded) = match capped(body, cap).await {
            Ok(capped) => capped,
            Err(CapError::TooLarge) => return too_large(cap),
            Err(CapError::Body(error)) => {
                return tonic::Status::cancelled(format!("request body failed: {error}"))
                    .into_http();
            }
        };
        let request = http::Request::from_parts(parts, body);
        // Only the method decides whether the body is buffered for replay, never a header.
        let retryable = upstream.is_idempotent(&path);
        let response = upstream.call(request, retryable).await;
        if exceeded.load(Ordering::Relaxed) {
            return too_large(cap);
        }
        response.map(Body::new)
    }
}

impl Prune for Gateway {
    fn prune(&self) {
        self.by_address.prune();
        self.by_identity.prune();
        self.by_service.prune();
    }
}

fn too_large(cap: u64) -> http::Response<Body> {
    status(ServiceError::ResourceExhausted {
        message: format!("request body exceeds the gateway's limit of {cap} bytes"),
        retry_after: None,
    })
}

/// Tells the services behind the gateway who the end client is: `x-forwarded-for` becomes the
/// one address the gateway resolved. Whatever the caller sent is dropped: from an untrusted peer
/// it is unverified, and from trusted proxies it was already walked to find the client. The
/// services trust the gateway alone (`server.trusted_proxies`), so they read exactly this.
fn forward_client(headers: &mut http::HeaderMap, client: ClientAddr) {
    headers.remove("x-forwarded-for");
    if let Ok(value) = http::HeaderValue::from_str(&client.0.to_string()) {
        headers.insert("x-forwarded-for", value);
    }
}

enum CapError {
    TooLarge,
    Body(BoxError),
}

/// Reads the first gRPC message prefix to refuse an oversized message before anything is sent
/// upstream, then streams the body on with a running total that stops at `cap` (setting the
/// returned flag, so the caller can answer `RESOURCE_EXHAUSTED` rather than a transport error).
async fn capped(mut body: Body, cap: u64) -> Result<(CappedBody, Arc<AtomicBool>), CapError> {
    let mut head = BytesMut::new();
    while head.len() < 5 {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            Some(Err(error)) => return Err(CapError::Body(error.into())),
            None => break,
        }
    }
    if head.len() >= 5 {
        let mut prefix = &head[1..5];
        let declared = u64::from(prefix.get_u32());
        if declared + 5 > cap {
            return Err(CapError::TooLarge);
        }
    }
    if head.len() as u64 > cap {
        return Err(CapError::TooLarge);
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let head = futures::stream::once(std::future::ready(Ok::<Bytes, BoxError>(head.freeze())));
    let rest = body.map_err(BoxError::from).into_data_stream();
    let flag = exceeded.clone();
    let frames = head.chain(rest).map(move |chunk| {
        let chunk = chunk?;
        let total = seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if total > cap {
            flag.store(true, Ordering::Relaxed);
            return Err(BoxError::from("request body over the gateway's limit"));
        }
        Ok(http_body::Frame::data(chunk))
    });
    Ok((CappedBody::new(StreamBody::new(frames)), exceeded))
}

/// The request body as forwarded upstream.
pub struct CappedBody(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>);

impl CappedBody {
    fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        Self(body.boxed_unsync())
    }
}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// The tower service: local health/reflection, or a governed upstream.
#[derive(Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
    local: tonic::service::Routes,
}

impl GatewayService {
    pub fn new(gateway: Arc<Gateway>, local: tonic::service::Routes) -> Self {
        Self { gateway, local }
    }
}

impl tower::Service<http::Request<Body>> for GatewayService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let gateway = self.gateway.clone();
        let local = self.local.clone();
        Box::pin(async move { Ok(gateway.handle(request, local).await) })
    }
}
