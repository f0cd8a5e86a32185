//! An upstream: discovered endpoints, power-of-two-choices over the selectable ones, outlier
//! ejection, deadlines and budgeted retries. Calls stream in both directions; only idempotent
//! calls with small bodies are buffered so they can be replayed.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use storemesh_runtime::backoff::Backoff;
use storemesh_runtime::observe::{StatusBody, StatusSink, status_code};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::{UpstreamConfig, split_authority};
use crate::endpoint::{EjectionPolicy, Endpoint, FailureOutcome, Outcome, pick_two};
use crate::timeout;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies as they pass through.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Headers that belong to one hop and must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

pub struct Upstream {
    name: Arc<str>,
    config: UpstreamConfig,
    policy: EjectionPolicy,
    /// `None`: retries go at once (`retry_backoff_ms = 0`).
    retry_backoff: Option<Backoff>,
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    scheme: &'static str,
    budget: TpsBudget,
}

/// A trailers-only gRPC error response.
pub fn status_response(status: tonic::Status) -> http::Response<ProxyBody> {
    status.into_http()
}

enum RequestBody {
    /// Buffered: can be sent again.
    Replayable(Bytes),
    /// Streamed: can be sent once.
    Once(Option<ProxyBody>),
}

impl RequestBody {
    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Replayable(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            RequestBody::Once(body) => body.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }
}

/// Reads up to `cap` bytes of `body`. If the body is larger, what was read is put back in front
/// of the rest and the body can only be streamed once.
async fn buffer<B>(body: B, cap: usize) -> Result<RequestBody, BoxError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = body;
    let mut buffered = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            buffered.extend_from_slice(&data);
            if buffered.len() > cap {
                let head =
                    futures::stream::once(std::future::ready(Ok::<_, BoxError>(buffered.freeze())));
                let rest = body.map_err(Into::into).into_data_stream();
                let frames = head
                    .chain(rest)
                    .map(|item| item.map(http_body::Frame::data));
                return Ok(RequestBody::Once(Some(
                    StreamBody::new(frames).boxed_unsync(),
                )));
            }
        }
        // Request trailers are not used by gRPC; dropping them keeps the body replayable.
    }
    Ok(RequestBody::Replayable(buffered.freeze()))
}

impl Upstream {
    /// Resolves the endpoints once and keeps them fresh in the background (the refresh task
    /// ends when the upstream is dropped).
    pub async fn start(
        name: impl Into<String>,
        config: UpstreamConfig,
    ) -> Result<Arc<Self>, crate::tls::TlsError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.enforce_http(false);
        let tls =
            crate::tls::client_config(config.tls.as_ref().and_then(|tls| tls.ca_file.as_deref()))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(connector);
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .build(connector);
        let upstream = Arc::new(Self {
            name: Arc::from(name.into()),
            policy: EjectionPolicy::new(
                config.eject_after_failures,
                Duration::from_millis(config.base_ejection_ms),
                Duration::from_millis(config.max_ejection_ms),
            ),
            retry_backoff: config.retry_backoff(),
            budget: TpsBudget::new(
                Duration::from_secs(10),
                config.retry_budget_min_per_sec,
                config.retry_budget_percent / 100.0,
            ),
            endpoints: RwLock::new(Vec::new()),
            client,
            scheme,
            config,
        });
        upstream.refresh().await;
        if upstream.config.dns.is_some() || upstream.config.addresses_file.is_some() {
            tokio::spawn(refresh_loop(Arc::downgrade(&upstream)));
        }
        Ok(upstream)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a call to `path` may be buffered and sent again: the contract marks the method
    /// idempotent ([`crate::is_idempotent`]) or this upstream's `idempotent_methods` lists it.
    pub fn is_idempotent(&self, path: &str) -> bool {
        crate::is_idempotent(path) || self.config.idempotent_methods.iter().any(|m| m == path)
    }

    /// The authorities currently in rotation (ejected ones included).
    pub fn endpoints(&self) -> Vec<String> {
        self.read_endpoints()
            .iter()
            .map(|endpoint| endpoint.authority.clone())
            .collect()
    }

    fn read_endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .map(|guard| guard.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Re-reads the endpoint source. Known endpoints keep their state; removed ones stay
    /// alive for the calls still using them.
    pub async fn refresh(&self) {
        let discovered = match self.discover().await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(upstream = %self.name, %error, "endpoint discovery failed; keeping the current endpoints");
                return;
            }
        };
        let mut endpoints = match self.endpoints.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Set on every successful discovery, not only on change: an upstream that starts (and
        // stays) empty must report 0, or the "no endpoints" alert could never fire.
        metrics::gauge!("mesh_upstream_endpoints", "upstream" => self.name.clone())
            .set(discovered.len() as f64);
        let current: Vec<String> = endpoints.iter().map(|e| e.authority.clone()).collect();
        if current == discovered {
            return;
        }
        let next: Vec<Arc<Endpoint>> = discovered
            .iter()
            .map(|authority| {
                endpoints
                    .iter()
                    .find(|e| &e.authority == authority)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(authority.clone())))
            })
            .collect();
        tracing::info!(upstream = %self.name, endpoints = ?discovered, "endpoints changed");
        *endpoints = next;
    }

    async fn discover(&self) -> Result<Vec<String>, String> {
        let mut found: Vec<String> = if let Some(dns) = &self.config.dns {
            let (host, port) = split_authority(dns).ok_or("dns is not name:port")?;
            tokio::net::lookup_host((host, port))
                .await
                .map_err(|error| format!("resolving {dns}: {error}"))?
                .map(|addr| addr.to_string())
                .collect()
        } else if let Some(path) = &self.config.addresses_file {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|error| format!("reading {}: {error}", path.display()))?
                .lines()
                .map(|line| line.split('#').next().unwrap_or_default().trim())
                .filter(|line| !line.is_empty())
                .filter(|line| split_authority(line).is_some())
                .map(str::to_owned)
                .collect()
        } else {
            self.config.addresses.clone()
        };
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Power of two choices among selectable endpoints, avoiding the ones this call already
    /// tried when any other is left (a retry goes to another replica).
    ///
    /// Panic mode (Envoy's panic threshold, at 0 %): when every endpoint is ejected, all of
    /// them are candidates again rather than none. Failing every call until an ejection ends
    /// would turn a late start or a quick restart of the only replica (a service fetching
    /// keys before auth is up) into seconds of refusals; an upstream that is really down
    /// still fails as fast (connection refused) and keeps being ejected.
    fn pick(&self, now: Instant, tried: &[String]) -> Option<Arc<Endpoint>> {
        let endpoints = self.read_endpoints();
        let mut selectable: Vec<&Endpoint> = endpoints
            .iter()
            .map(Arc::as_ref)
            .filter(|endpoint| endpoint.selectable(now))
            .collect();
        if selectable.is_empty() && !endpoints.is_empty() {
            metrics::counter!("mesh_upstream_panic_total", "upstream" => self.name.clone())
                .increment(1);
            selectable = endpoints.iter().map(Arc::as_ref).collect();
        }
        let untried: Vec<&Endpoint> = selectable
            .iter()
            .copied()
            .filter(|endpoint| !tried.contains(&endpoint.authority))
            .collect();
        let candidates = if untried.is_empty() {
            selectable
        } else {
            untried
        };
        let chosen = pick_two(&candidates, &mut rand::thread_rng())?;
        endpoints
            .iter()
            .find(|endpoint| std::ptr::eq(endpoint.as_ref(), chosen))
            .cloned()
    }

    /// The wait before retry `attempt` (1-based), see [`UpstreamConfig::retry_backoff`].
    fn backoff(&self, attempt: u32) -> Duration {
        self.retry_backoff.map_or(Duration::ZERO, |backoff| {
            backoff.delay(attempt, rand::random::<f64>())
        })
    }

    fn failure(&self, endpoint: &Endpoint, now: Instant) {
        if let FailureOutcome::Ejected { for_duration } = endpoint.record_failure(now, &self.policy)
        {
            tracing::warn!(upstream = %self.name, endpoint = %endpoint.authority, ejected_ms = for_duration.as_millis() as u64, "endpoint ejected");
            metrics::counter!("mesh_upstream_ejections_total", "upstream" => self.name.clone(), "endpoint" => endpoint.authority.clone()).increment(1);
        }
    }

    fn record(&self, endpoint: &Arc<Endpoint>, started: Instant) -> EndpointCall {
        EndpointCall {
            upstream: self.name.clone(),
            endpoint: endpoint.clone(),
            started,
            done: false,
        }
    }

    /// Sends a gRPC request to one endpoint and returns its response (streamed). `retryable`
    /// says whether the call may be sent again (an idempotent method, see
    /// [`Upstream::is_idempotent`]): only then is its body buffered, for at most
    /// `retry_buffer_timeout_ms` and the call's deadline. Errors become gRPC
    /// statuses: `UNAVAILABLE` when no endpoint could answer, `DEADLINE_EXCEEDED` when the
    /// deadline (the caller's `grpc-timeout`, or the default) passes first.
    pub async fn call<B>(
        &self,
        request: http::Request<B>,
        retryable: bool,
    ) -> http::Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let budget = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(timeout::parse)
            .unwrap_or(Duration::from_millis(self.config.default_deadline_ms));
        let deadline = started + budget;
        self.budget.deposit();

        let (parts, body) = request.into_parts();
        let mut body = if retryable {
            // Buffering waits on the caller's bytes: bounded, so a trickled body cannot hold
            // the call (and its slot under the concurrency limit) open for ever.
            let limit = Duration::from_millis(self.config.retry_buffer_timeout_ms);
            let until = deadline.min(started + limit);
            match tokio::time::timeout_at(until, buffer(body, self.config.max_retry_buffer_bytes))
                .await
            {
                Ok(Ok(body)) => body,
                Ok(Err(error)) => {
                    return status_response(tonic::Status::cancelled(format!(
                        "request body failed: {error}"
                    )));
                }
                Err(_) => {
                    metrics::counter!("mesh_upstream_body_timeouts_total", "upstream" => self.name.clone())
                        .increment(1);
                    return status_response(tonic::Status::deadline_exceeded(format!(
                        "the request body did not arrive within {} ms",
                        (until - started).as_millis()
                    )));
                }
            }
        } else {
            RequestBody::Once(Some(body.map_err(Into::into).boxed_unsync()))
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());

        let replayable = body.replayable();
        let mut attempt = 0_u32;
        let mut tried: Vec<String> = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return status_response(tonic::Status::deadline_exceeded(
                    "deadline exceeded before an upstream answered",
                ));
            }
            let Some(endpoint) = self.pick(now, &tried) else {
                return status_response(tonic::Status::unavailable(format!(
                    "no available endpoint for {}",
                    self.name
                )));
            };
            let Some(attempt_body) = body.take() else {
                return status_response(tonic::Status::unavailable(format!(
                    "{} failed and the call cannot be replayed",
                    self.name
                )));
            };
            let mut upstream_request = http::Request::new(attempt_body);
            *upstream_request.method_mut() = parts.method.clone();
            *upstream_request.version_mut() = http::Version::HTTP_2;
            for (name, value) in &parts.headers {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    upstream_request.headers_mut().append(name, value.clone());
                }
            }
            if let Ok(value) = http::HeaderValue::from_str(&timeout::format(deadline - now)) {
                upstream_request.headers_mut().insert("grpc-timeout", value);
            }
            match format!("{}://{}{path}", self.scheme, endpoint.authority).parse() {
                Ok(uri) => *upstream_request.uri_mut() = uri,
                Err(_) => {
                    return status_response(tonic::Status::internal("bad upstream address"));
                }
            }

            tried.push(endpoint.authority.clone());
            let in_flight = endpoint.begin(now);
            let mut record = self.record(&endpoint, now);
            let result =
                tokio::time::timeout_at(deadline, self.client.request(upstream_request)).await;
            drop(in_flight);
            let may_retry = |this: &Self| {
                replayable && attempt < this.config.max_retries && this.budget.withdraw()
            };
            match result {
                Err(_) => {
                    record.finish(tonic::Code::DeadlineExceeded);
                    return status_response(tonic::Status::deadline_exceeded(format!(
                        "{} did not answer within the deadline",
                        self.name
                    )));
                }
                Ok(Err(error)) => {
                    record.finish_with(Outcome::TransportError);
                    self.failure(&endpoint, Instant::now());
                    tracing::debug!(upstream = %self.name, endpoint = %endpoint.authority, %error, attempt, "upstream transport error");
                    if may_retry(self) {
                        attempt += 1;
                        metrics::counter!("mesh_upstream_retries_total", "upstream" => self.name.clone()).increment(1);
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return status_response(tonic::Status::unavailable(format!(
                        "{} is unavailable",
                        self.name
                    )));
                }
                Ok(Ok(response)) => {
                    let code = status_code(response.headers());
                    let unavailable = code == Some(tonic::Code::Unavailable);
                    if let Some(code) = code {
                        record.finish(code);
                    }
                    if unavailable {
                        self.failure(&endpoint, Instant::now());
                        if may_retry(self) {
                            attempt += 1;
                            metrics::counter!("mesh_upstream_retries_total", "upstream" => self.name.clone()).increment(1);
                            tokio::time::sleep(self.backoff(attempt)).await;
                            continue;
                        }
                    } else {
                        endpoint.record_success();
                    }
                    return response.map(|body| {
                        StatusBody::new(body.map_err(BoxError::from), record).boxed_unsync()
                    });
                }
            }
        }
    }
}

/// Counts one attempt on one endpoint once its outcome is known: the status in the response
/// headers or trailers, a transport error, or `CANCELLED` when the caller went away.
struct EndpointCall {
    upstream: Arc<str>,
    endpoint: Arc<Endpoint>,
    started: Instant,
    done: bool,
}

impl EndpointCall {
    fn finish_with(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let metrics = self.endpoint.metrics(&self.upstream);
        if let Some(counter) = metrics.requests(outcome) {
            counter.increment(1);
        }
        metrics.seconds.record(self.started.elapsed().as_secs_f64());
    }
}

impl StatusSink for EndpointCall {
    fn finish(&mut self, code: tonic::Code) {
        self.finish_with(Outcome::Status(code));
    }
}

impl Drop for EndpointCall {
    fn drop(&mut self) {
        self.finish_with(Outcome::Status(tonic::Code::Cancelled));
    }
}

async fn refresh_loop(upstream: Weak<Upstream>) {
    loop {
        let interval = match upstream.upgrade() {
            Some(upstream) => Duration::from_millis(upstream.config.refresh_interval_ms),
            None => return,
        };
        tokio::time::sleep(interval).await;
        match upstream.upgrade() {
            Some(upstream) => upstream.refresh().await,
            None => return,
        }
    }
}
