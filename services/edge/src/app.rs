//! A loaded application: the engine, the compiled and pre-instantiated components, the router,
//! and per-request execution (a fresh store per request, limits, outcome classification).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Semaphore, oneshot};
use wasmtime::component::Component;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::body::{MinRate, RatePolicy, TooSlow};
use crate::config::EdgeConfig;
use crate::error::EdgeError;
use crate::files::{self, PreparedFiles, Staging};
use crate::host::{self, ExecutionTimeout, HostState, Limits, MemoryLimitExceeded};
use crate::manifest::Manifest;
use crate::metrics as names;
use crate::outbound::{AllowedHosts, H2cPriorKnowledge};
use crate::routing::{RouteMatch, Router};
use crate::send::OutboundClient;
use crate::stdio::{GuestLog, Stream};
use crate::variables::{self, AppVariables, ComponentVariables};

/// The response body type of every answer (component-produced or runtime-produced).
pub type ResponseBody = HyperOutgoingBody;

/// Table elements one instance may grow its tables to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Core instances a single component may create (wasip2 components use a handful).
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 50;

/// One component ready to serve.
struct LoadedComponent {
    id: Arc<str>,
    pre: ProxyPre<HostState>,
    variables: Arc<ComponentVariables>,
    allowed: Arc<AllowedHosts>,
    environment: Vec<(String, String)>,
    /// Its `files`, preopened read-only once at load.
    files: PreparedFiles,
    /// Its own instance slots (`edge.components.<id>.max_concurrent_requests`), reserved out
    /// of the pool: another component's load cannot take them.
    slots: Arc<Semaphore>,
}

/// A loaded Spin application.
pub struct App {
    name: String,
    version: Option<String>,
    engine: Engine,
    router: Router,
    components: HashMap<String, Arc<LoadedComponent>>,
    client: Arc<OutboundClient>,
    max_memory_bytes: usize,
    execution_timeout: Duration,
    epoch_tick: Duration,
    body_rate: RatePolicy,
    /// The copies of components' `files` (removed with the application).
    _staging: Staging,
}

/// How a component invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Instantiate,
    Overloaded,
    MemoryLimit,
    Timeout,
    Trap,
    NoResponse,
    /// The request body arrived too slowly (or stopped): the client's fault.
    BodyTooSlow,
}

/// Seconds a client is asked to wait (`retry-after`) when a component's slots are full.
const OVERLOADED_RETRY_AFTER_SECS: u32 = 1;

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Instantiate => "instantiate",
            Failure::Overloaded => "overloaded",
            Failure::MemoryLimit => "memory_limit",
            Failure::Timeout => "timeout",
            Failure::Trap => "trap",
            Failure::NoResponse => "no_response",
            Failure::BodyTooSlow => "body_too_slow",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Failure::Overloaded | Failure::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Failure::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `code` of the JSON error body (the edge functions' vocabulary).
    fn code(self) -> &'static str {
        match self {
            Failure::Overloaded => "overloaded",
            Failure::Timeout => "execution_timeout",
            Failure::BodyTooSlow => "request_timeout",
            Failure::MemoryLimit => "memory_limit",
            Failure::Instantiate | Failure::Trap | Failure::NoResponse => "component_failed",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::Instantiate => "the component could not be started",
            Failure::Overloaded => "too many concurrent requests for this component; retry later",
            Failure::MemoryLimit => "the component exceeded its memory limit",
            Failure::Timeout => "the component exceeded its execution time limit",
            Failure::Trap => "the component failed",
            Failure::NoResponse => "the component did not respond",
            Failure::BodyTooSlow => "the request body arrived too slowly",
        }
    }
}

/// The outcome of the task running one instance.
enum Outcome {
    Completed,
    Failed(Failure, String),
}

fn classify(error: &wasmtime::Error) -> Failure {
    if error.is::<MemoryLimitExceeded>() || error.chain().any(|e| e.is::<MemoryLimitExceeded>()) {
        Failure::MemoryLimit
    } else if error.is::<ExecutionTimeout>() || error.chain().any(|e| e.is::<ExecutionTimeout>()) {
        Failure::Timeout
    } else {
        Failure::Trap
    }
}

/// A one-line description of a guest failure: the root cause (the wasm backtrace, which wasmtime
/// attaches as context, goes to the debug log instead).
fn summarize(component: &str, error: &wasmtime::Error) -> String {
    tracing::debug!(component = %component, "guest failure detail: {error:?}");
    error
        .root_cause()
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The runtime's own error answers, in the edge functions' JSON shape
/// (`{"error":{"status","code","message"}}`, `storemesh_mesh_client::api`).
fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": { "status": status.as_u16(), "code": code, "message": message }
    });
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// Decrements the active-instances gauge when the instance is gone.
struct ActiveGuard(Arc<str>);

impl ActiveGuard {
    fn new(component: Arc<str>) -> Self {
        metrics::gauge!(names::ACTIVE_INSTANCES, "component" => component.to_string()).increment(1);
        Self(component)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        metrics::gauge!(names::ACTIVE_INSTANCES, "component" => self.0.to_string()).decrement(1);
    }
}

/// Linear memory kept resident (reset in place instead of returned to the kernel) per pool slot
/// when the kernel can report which pages were touched (`PAGEMAP_SCAN`, Linux 6.7+): a reused
/// slot then takes no page faults and needs no `madvise` for its first pages.
const KEEP_RESIDENT_BYTES: usize = 4 * 1024 * 1024;

fn engine(config: &EdgeConfig) -> Result<Engine, EdgeError> {
    // Prefer resetting touched pages in place (PAGEMAP_SCAN); fall back to plain `madvise`
    // where the kernel lacks it.
    match engine_with(config, true) {
        Ok(engine) => Ok(engine),
        Err(error) => {
            tracing::debug!(%error, "PAGEMAP_SCAN unavailable; linear memories are decommitted on reuse");
            engine_with(config, false)
        }
    }
}

fn engine_with(config: &EdgeConfig, pagemap_scan: bool) -> Result<Engine, EdgeError> {
    let engine_error = |error: wasmtime::Error| EdgeError::Engine(format!("{error:#}"));
    let instances = config.max_instances;
    let max_memory = usize::try_from(config.max_memory_bytes).map_err(|_| {
        EdgeError::Engine("edge.max_memory_bytes does not fit this platform".into())
    })?;

    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(16))
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances.saturating_mul(2))
        .max_memories_per_component(4)
        .total_tables(instances.saturating_mul(8))
        .max_tables_per_component(16)
        .table_elements(MAX_TABLE_ELEMENTS)
        .total_stacks(instances)
        .max_memory_size(max_memory);
    if pagemap_scan {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES.min(max_memory))
            .table_keep_resident(64 * 1024);
    }

    let mut wasm = wasmtime::Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    if !config.cache_dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&config.cache_dir).map_err(|error| {
            EdgeError::Engine(format!(
                "cannot create the compile cache directory {}: {error}",
                config.cache_dir.display()
            ))
        })?;
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(&config.cache_dir);
        wasm.cache(Some(wasmtime::Cache::new(cache).map_err(engine_error)?));
    }
    Engine::new(&wasm).map_err(engine_error)
}

/// Advances the engine's epoch every `tick` until the engine is dropped.
fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("edge-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the epoch ticker; execution limits will not apply");
    }
}

impl App {
    /// Parses the manifest, resolves variables, compiles (or loads from the cache) and
    /// pre-instantiates every triggered component.
    pub async fn load(config: &EdgeConfig) -> Result<Self, EdgeError> {
        // Install the process-wide Prometheus recorder before the first metric is touched.
        storemesh_runtime::metrics::prometheus();
        let manifest = Manifest::load(&config.manifest)?;
        let app_variables =
            AppVariables::resolve(&manifest, &config.variables, |name| std::env::var(name))?;
        for (name, source, secret) in app_variables.sources() {
            tracing::debug!(
                variable = name,
                ?source,
                secret,
                "application variable resolved"
            );
        }

        let h2c = H2cPriorKnowledge::from_config_and_env(&config.h2c_prior_knowledge);
        let client = Arc::new(OutboundClient::new(
            h2c,
            Duration::from_millis(config.outbound_connect_timeout_ms),
        )?);

        let engine = engine(config)?;
        start_epoch_ticker(&engine, Duration::from_millis(config.epoch_tick_ms));
        let linker =
            host::linker(&engine).map_err(|error| EdgeError::Engine(format!("{error:#}")))?;

        // Each component's own instance slots, reserved out of the pool.
        let slots =
            config.component_slots(manifest.triggered_components().map(|decl| decl.id.as_str()))?;

        // Compile each distinct source once (several components may share one `.wasm`).
        let mut compiled: BTreeMap<PathBuf, ProxyPre<HostState>> = BTreeMap::new();
        let mut components = HashMap::new();
        let mut staging = Staging::default();
        for decl in manifest.triggered_components() {
            // Files first: a missing directory is reported before a long compilation.
            let (returned, prepared) = {
                let app_dir = manifest.app_dir().to_path_buf();
                let decl = decl.clone();
                tokio::task::spawn_blocking(move || {
                    let prepared = files::prepare(&app_dir, &decl, &mut staging);
                    (staging, prepared)
                })
                .await
                .map_err(|error| EdgeError::Engine(format!("preparing files: {error}")))?
            };
            staging = returned;
            let prepared_files = prepared?;
            let pre = match compiled.get(&decl.source) {
                Some(pre) => pre.clone(),
                None => {
                    let pre = compile(&engine, &linker, &decl.id, &decl.source).await?;
                    compiled.insert(decl.source.clone(), pre.clone());
                    pre
                }
            };
            let allowed = variables::allowed_hosts(decl, &app_variables)?;
            let component_variables = ComponentVariables::resolve(decl, &app_variables);
            let component_slots = slots.get(&decl.id).copied().unwrap_or(1);
            tracing::info!(
                component = %decl.id,
                source = %decl.source.display(),
                max_concurrent_requests = component_slots,
                files = %prepared_files.describe(),
                variables = component_variables.len(),
                allowed_outbound_hosts = %allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                "component ready"
            );
            components.insert(
                decl.id.clone(),
                Arc::new(LoadedComponent {
                    id: Arc::from(decl.id.as_str()),
                    pre,
                    variables: Arc::new(component_variables),
                    allowed: Arc::new(allowed),
                    environment: decl
                        .environment
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    files: prepared_files,
                    slots: Arc::new(Semaphore::new(component_slots as usize)),
                }),
            );
        }
        for unused in manifest
            .components
            .keys()
            .filter(|id| !components.contains_key(*id))
        {
            tracing::warn!(component = %unused, "component has no trigger; not loaded");
        }

        let (router, duplicates) = Router::build(
            manifest
                .triggers
                .iter()
                .filter_map(|t| t.route.clone().map(|route| (route, t.component.clone()))),
        );
        for duplicate in duplicates {
            tracing::warn!(
                route = %duplicate.route,
                replaced = %duplicate.replaced,
                effective = %duplicate.effective,
                "duplicate route: the later trigger wins"
            );
        }
        for (route, component) in router.reserved_routes() {
            // As Spin: the route is accepted but the runtime answers that prefix itself.
            tracing::error!(
                %route,
                %component,
                "routes under {} are handled by the runtime and will never be reached",
                crate::routing::RESERVED_PREFIX
            );
        }
        for (route, component) in router.routes() {
            tracing::info!(%route, %component, "route");
        }
        names::describe();

        Ok(Self {
            name: manifest.name,
            version: manifest.version,
            engine,
            router,
            components,
            client,
            max_memory_bytes: usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX),
            execution_timeout: Duration::from_millis(config.execution_timeout_ms),
            epoch_tick: Duration::from_millis(config.epoch_tick_ms),
            body_rate: RatePolicy {
                min_bytes_per_sec: config.min_body_bytes_per_sec,
                grace: Duration::from_millis(config.body_grace_ms),
                window: Duration::from_millis(config.body_rate_window_ms),
            },
            _staging: staging,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Handles one HTTP request as Spin's `HttpServer::handle` does: the runtime's own
    /// `/.well-known/spin/` endpoints, routing, the request's authority, Spin's headers, and the
    /// component invocation. Errors become 4xx/5xx responses, except a request whose authority
    /// cannot be determined: that one is rejected, and the server drops it without a response
    /// (Spin's handler returns an error to hyper there).
    pub async fn handle<B>(
        &self,
        mut request: Request<B>,
        client: SocketAddr,
    ) -> Result<Response<ResponseBody>, RequestRejected>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        strip_forbidden_headers(request.headers_mut());
        let path = request.uri().path().to_owned();
        if let Some(endpoint) = path.strip_prefix(crate::routing::RESERVED_PREFIX) {
            return Ok(self.well_known(endpoint));
        }
        let Some(matched) = self.router.route(&path) else {
            metrics::counter!(names::UNROUTED).increment(1);
            tracing::debug!(%path, "no route");
            return Ok(empty_response(StatusCode::NOT_FOUND));
        };
        set_request_uri(&mut request).inspect_err(|error| {
            tracing::warn!(%path, %error, "request rejected");
        })?;
        let Some(component) = self.components.get(matched.component).cloned() else {
            return Ok(empty_response(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let request = match with_spin_headers(request, &matched, client) {
            Ok(request) => request,
            Err(error) => {
                // Spin fails the execution (`prepare_request`) and answers an empty 500.
                tracing::warn!(component = %component.id, %error, "request refused");
                return Ok(empty_response(StatusCode::INTERNAL_SERVER_ERROR));
            }
        };
        Ok(self.invoke(component, request).await)
    }

    /// Spin's well-known endpoints (`crates/trigger-http/src/server.rs`, `HttpServer::handle`
    /// and `app_info`): `health` answers `OK`, `info` the pretty-printed `AppInfo` JSON.
    fn well_known(&self, endpoint: &str) -> Response<ResponseBody> {
        match endpoint {
            "health" => {
                let mut response = empty_response(StatusCode::OK);
                *response.body_mut() = Full::new(Bytes::from_static(b"OK"))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                response
            }
            "info" => {
                let mut info = serde_json::Map::new();
                info.insert("name".into(), self.name.clone().into());
                if let Some(version) = &self.version {
                    info.insert("version".into(), version.clone().into());
                }
                let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
                let mut response = Response::new(
                    Full::new(Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            _ => empty_response(StatusCode::NOT_FOUND),
        }
    }

    /// A fresh store for `component` (the per-request isolation unit).
    fn new_store(&self, component: &LoadedComponent) -> Store<HostState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestLog::new(component.id.clone(), Stream::Stdout))
            .stderr(GuestLog::new(component.id.clone(), Stream::Stderr))
            .envs(&component.environment);
        let mut wasi = wasi.build();
        // The preopens opened at load (none without `files`), shared read-only.
        *wasi.filesystem() = component.files.filesystem();
        let state = HostState::new(
            component.id.clone(),
            wasi,
            component.allowed.clone(),
            self.client.clone(),
            component.variables.clone(),
            Limits {
                max_memory_bytes: self.max_memory_bytes,
                max_table_elements: MAX_TABLE_ELEMENTS,
            },
            Instant::now() + self.execution_timeout,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // Yield to the executor on every epoch tick (so a busy instance never starves others)
        // and trap once the wall-clock deadline has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().deadline {
                Err(ExecutionTimeout.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Creates a store and instantiates `component` without invoking it: what every request
    /// pays before the handler runs (used by the benchmark).
    pub async fn instantiate(&self, component: &str) -> Result<(), EdgeError> {
        let loaded = self
            .components
            .get(component)
            .ok_or_else(|| EdgeError::UnknownComponent(component.to_owned()))?;
        let mut store = self.new_store(loaded);
        loaded
            .pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|error| EdgeError::Instantiate {
                component: component.to_owned(),
                message: format!("{error:#}"),
            })
    }

    async fn invoke<B>(
        &self,
        component: Arc<LoadedComponent>,
        request: Request<B>,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let id = component.id.clone();
        let label = id.to_string();

        // The component's own slots: a full component sheds its excess at once, and no other
        // component's requests are affected.
        let Ok(permit) = component.slots.clone().try_acquire_owned() else {
            return self.fail(
                &id,
                Failure::Overloaded,
                "all of the component's instance slots are busy",
                started,
            );
        };
        let active = ActiveGuard::new(id.clone());

        // The body arrives at a minimum rate, or the instance is stopped (below).
        let (request, too_slow) = {
            let (parts, body) = request.into_parts();
            let (body, too_slow) = MinRate::new(Box::pin(body), self.body_rate);
            (Request::from_parts(parts, body), too_slow)
        };
        let mut store = self.new_store(&component);
        let (sender, receiver) = oneshot::channel();
        let prepared = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|incoming| {
                let outparam = store.data_mut().http().new_response_outparam(sender)?;
                Ok((incoming, outparam))
            });
        let (incoming, outparam) = match prepared {
            Ok(pair) => pair,
            Err(error) => {
                return self.fail(&id, Failure::Instantiate, &format!("{error:#}"), started);
            }
        };

        // The instance runs in its own task: it may keep streaming the response body after
        // the headers are sent. The task holds the instance slot until the instance is gone
        // (also when it is aborted: the slot is dropped with the task's future).
        let limit = self.execution_timeout + self.epoch_tick * 2;
        let pre = component.pre.clone();
        let task_id = id.clone();
        let mut task = tokio::spawn(async move {
            let mut slot = InstanceSlot {
                store,
                _active: active,
                _permit: permit,
            };
            run_instance(&pre, &mut slot.store, incoming, outparam, limit, &task_id).await
        });
        let watcher_id = id.clone();
        let (outcome_tx, outcome_rx) = oneshot::channel();
        tokio::spawn(async move {
            let joined = tokio::select! {
                joined = &mut task => joined,
                Ok(too_slow) = too_slow => {
                    // The client's fault: stop the instance (its outbound calls are dropped
                    // with it) and wait until its slot is free before answering.
                    task.abort();
                    let _ = task.await;
                    Ok(body_too_slow(&too_slow))
                }
            };
            let outcome = match joined {
                Ok(outcome) => outcome,
                Err(error) => {
                    Outcome::Failed(Failure::Trap, format!("instance task failed: {error}"))
                }
            };
            // If nobody waits for the outcome any more (the response was already sent), a
            // failure while streaming the body is logged here.
            if let Err(Outcome::Failed(failure, message)) = outcome_tx.send(outcome) {
                log_failure(&watcher_id, failure, &message, true);
                metrics::counter!(names::ERRORS, "component" => watcher_id.to_string(), "kind" => failure.label())
                    .increment(1);
            }
        });

        match receiver.await {
            Ok(Ok(response)) => {
                let status = response.status();
                metrics::counter!(names::INVOCATIONS, "component" => label.clone(), "status" => status.as_u16().to_string())
                    .increment(1);
                metrics::histogram!(names::DURATION, "component" => label)
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(component = %id, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request handled");
                response
            }
            Ok(Err(code)) => {
                // The guest answered with an error code instead of a response.
                self.fail(
                    &id,
                    Failure::Trap,
                    &format!("the component set an error response: {code:?}"),
                    started,
                )
            }
            Err(_) => match outcome_rx.await {
                Ok(Outcome::Failed(failure, message)) => self.fail(&id, failure, &message, started),
                Ok(Outcome::Completed) | Err(_) => self.fail(
                    &id,
                    Failure::NoResponse,
                    "the component returned without setting a response",
                    started,
                ),
            },
        }
    }

    fn fail(
        &self,
        component: &Arc<str>,
        failure: Failure,
        message: &str,
        started: Instant,
    ) -> Response<ResponseBody> {
        log_failure(component, failure, message, false);
        let status = failure.status();
        metrics::counter!(names::ERRORS, "component" => component.to_string(), "kind" => failure.label())
            .increment(1);
        metrics::counter!(names::INVOCATIONS, "component" => component.to_string(), "status" => status.as_u16().to_string())
            .increment(1);
        metrics::histogram!(names::DURATION, "component" => component.to_string())
            .record(started.elapsed().as_secs_f64());
        let mut response = match failure {
            // The client should know exactly what was wrong with its body.
            Failure::BodyTooSlow => json_error(status, failure.code(), message),
            _ => json_error(status, failure.code(), failure.message()),
        };
        if failure == Failure::Overloaded {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(OVERLOADED_RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// What one running instance holds. Fields drop in declaration order: the store (the pool
/// slot) is freed before the component's permit, so a request that gets the permit always finds
/// a pool slot.
struct InstanceSlot {
    store: Store<HostState>,
    _active: ActiveGuard,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The outcome of an instance stopped because its request body was too slow.
fn body_too_slow(too_slow: &TooSlow) -> Outcome {
    Outcome::Failed(Failure::BodyTooSlow, too_slow.message())
}

/// Instantiates and runs one request's instance to completion (or failure).
async fn run_instance(
    pre: &ProxyPre<HostState>,
    store: &mut Store<HostState>,
    incoming: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
    outparam: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    limit: Duration,
    component: &Arc<str>,
) -> Outcome {
    let instantiating = Instant::now();
    let proxy = match pre.instantiate_async(&mut *store).await {
        Ok(proxy) => proxy,
        Err(error) => {
            let failure = if error.is::<wasmtime::PoolConcurrencyLimitError>() {
                Failure::Overloaded
            } else {
                match classify(&error) {
                    Failure::Trap => Failure::Instantiate,
                    other => other,
                }
            };
            return Outcome::Failed(failure, summarize(component, &error));
        }
    };
    metrics::histogram!(names::INSTANTIATION, "component" => component.to_string())
        .record(instantiating.elapsed().as_secs_f64());
    let call = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, incoming, outparam);
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(())) => Outcome::Completed,
        Ok(Err(error)) => Outcome::Failed(classify(&error), summarize(component, &error)),
        Err(_) => Outcome::Failed(
            Failure::Timeout,
            "execution time limit exceeded while waiting on I/O".into(),
        ),
    }
}

fn log_failure(component: &str, failure: Failure, message: &str, after_response: bool) {
    match failure {
        Failure::Overloaded | Failure::BodyTooSlow => tracing::warn!(
            component = %component,
            kind = failure.label(),
            after_response,
            "request refused: {message}"
        ),
        Failure::Timeout | Failure::MemoryLimit => tracing::warn!(
            component = %component,
            kind = failure.label(),
            after_response,
            "component stopped: {message}"
        ),
        _ => tracing::error!(
            component = %component,
            kind = failure.label(),
            after_response,
            "component failed: {message}"
        ),
    }
}

/// Why Spin's server drops a request before any component sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestRejected {
    #[error("no 'Host' header present in request")]
    NoHost,
    #[error("'Host' header is not valid UTF-8")]
    HostNotText,
    #[error("'Host' header contains an invalid authority")]
    InvalidHost,
    #[error("authority in 'Host' header does not match authority in URI")]
    AuthorityMismatch,
    #[error("the request URI cannot carry the authority")]
    InvalidUri,
}

/// A request header value that is not UTF-8 (Spin fails such a request with a 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the value of request header `{0}` is not UTF-8")]
pub struct NonUtf8Header(String);

/// Spin's `strip_forbidden_headers` (`crates/trigger-http/src/headers.rs`): a `Host` naming a
/// service-chaining host (`<component>.spin.internal[:port]`) is removed.
pub fn strip_forbidden_headers(headers: &mut http::HeaderMap) {
    if headers
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(is_service_chaining_host)
    {
        headers.remove(http::header::HOST);
    }
}

/// Spin's `is_service_chaining_host` (`crates/outbound-networking-config/src/allowed_hosts.rs`).
fn is_service_chaining_host(host: &str) -> bool {
    let (host, _) = host.rsplit_once(':').unwrap_or((host, ""));
    host.split_once('.')
        .is_some_and(|(_, rest)| rest == "spin.internal")
}

/// Spin's `set_req_uri` (`crates/trigger-http/src/server.rs`): the URI gets the server's scheme
/// (`http`: this listener has no TLS) and the authority of the `Host` header or of the URI
/// itself (HTTP/2 `:authority`, absolute-form); neither, or two that differ, is an error.
pub fn set_request_uri<B>(request: &mut Request<B>) -> Result<(), RequestRejected> {
    let header_authority = match request.headers().get(http::header::HOST) {
        None => None,
        Some(host) => {
            let host = host.to_str().map_err(|_| RequestRejected::HostNotText)?;
            Some(
                host.parse::<http::uri::Authority>()
                    .map_err(|_| RequestRejected::InvalidHost)?,
            )
        }
    };
    let mut parts = request.uri().clone().into_parts();
    let authority = match (header_authority, parts.authority.take()) {
        (None, None) => return Err(RequestRejected::NoHost),
        (None, Some(authority)) | (Some(authority), None) => authority,
        (Some(header), Some(uri)) if header == uri => header,
        (Some(_), Some(_)) => return Err(RequestRejected::AuthorityMismatch),
    };
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| RequestRejected::InvalidUri)?;
    Ok(())
}

/// Adds Spin's request headers as `prepare_request_headers` and `compute_default_headers`
/// (`crates/trigger-http/src/headers.rs`) and the WASI executor (`wasi.rs`, `prepare_request`)
/// do: every value must be UTF-8; the host of `spin-full-url` is the `Host` header, else
/// `localhost` (so an HTTP/2 request, which carries `:authority` instead, gets `localhost`).
/// Unlike Spin, which appends its headers after the client's (so a client-sent `spin-*` header
/// comes first and spin-sdk's `Request::header` sees Spin's, the last), a client-sent header of
/// any name set here is removed: a component that reads the first value (`HeaderMap::get`)
/// must not see a client's `spin-client-addr`, which the functions forward as the end client's
/// address.
pub fn with_spin_headers<B>(
    request: Request<B>,
    matched: &RouteMatch<'_>,
    client: SocketAddr,
) -> Result<Request<B>, NonUtf8Header> {
    let (mut parts, body) = request.into_parts();
    for (name, value) in &parts.headers {
        if std::str::from_utf8(value.as_bytes()).is_err() {
            return Err(NonUtf8Header(name.to_string()));
        }
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|host| std::str::from_utf8(host.as_bytes()).ok())
        .unwrap_or("localhost");
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let full_url = format!("{scheme}://{host}{path_and_query}");
    let mut spin_headers = vec![
        ("spin-path-info".to_owned(), matched.path_info.clone()),
        ("spin-full-url".to_owned(), full_url),
        (
            "spin-matched-route".to_owned(),
            matched.based_route.to_owned(),
        ),
        ("spin-base-path".to_owned(), "/".to_owned()),
        (
            "spin-raw-component-route".to_owned(),
            matched.raw_route.to_owned(),
        ),
        (
            "spin-component-route".to_owned(),
            matched.component_route().to_owned(),
        ),
        ("spin-client-addr".to_owned(), client.to_string()),
    ];
    for (name, value) in &matched.captures {
        spin_headers.push((path_match_header(name), value.clone()));
    }
    // Spin skips a name or value the `http` crate refuses.
    let spin_headers: Vec<(HeaderName, HeaderValue)> = spin_headers
        .into_iter()
        .filter_map(|(name, value)| {
            Some((
                name.parse::<HeaderName>().ok()?,
                HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
        .collect();
    for (name, _) in &spin_headers {
        parts.headers.remove(name);
    }
    for (name, value) in spin_headers {
        parts.headers.append(name, value);
    }
    Ok(Request::from_parts(parts, body))
}

/// The header carrying a named route segment, named as Spin names it: Spin builds
/// `SPIN_PATH_MATCH_{NAME}` (upper-cased) and turns every `_` into `-` and lower-cases the
/// whole key (`crates/trigger-http/src/headers.rs`, `compute_default_headers` and
/// `prepare_header_key`), so `:product_id` arrives as `spin-path-match-product-id`.
pub fn path_match_header(segment_name: &str) -> String {
    format!("SPIN_PATH_MATCH_{}", segment_name.to_ascii_uppercase())
        .replace('_', "-")
        .to_ascii_lowercase()
}

/// Compiles (or loads from the cache) and pre-instantiates one component, refusing it when it
/// imports anything this runtime does not provide.
async fn compile(
    engine: &Engine,
    linker: &wasmtime::component::Linker<HostState>,
    id: &str,
    path: &std::path::Path,
) -> Result<ProxyPre<HostState>, EdgeError> {
    if !path.is_file() {
        return Err(EdgeError::MissingSource {
            component: id.to_owned(),
            path: path.to_path_buf(),
        });
    }
    let started = Instant::now();
    let component = {
        let engine = engine.clone();
        let source = path.to_path_buf();
        tokio::task::spawn_blocking(move || Component::from_file(&engine, &source))
            .await
            .map_err(|error| EdgeError::Compile {
                component: id.to_owned(),
                path: path.to_path_buf(),
                message: error.to_string(),
            })?
            .map_err(|error| EdgeError::Compile {
                component: id.to_owned(),
                path: path.to_path_buf(),
                message: format!("{error:#}"),
            })?
    };
    tracing::info!(
        component = %id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compiled (or loaded from the cache)"
    );

    let unsupported: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| !host::is_provided(name))
        .collect();
    if !unsupported.is_empty() {
        return Err(EdgeError::UnsupportedImports {
            component: id.to_owned(),
            imports: unsupported,
        });
    }
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|error| EdgeError::Link {
            component: id.to_owned(),
            message: format!("{error:#}"),
        })?;
    ProxyPre::new(pre).map_err(|error| EdgeError::NotHttpComponent {
        component: id.to_owned(),
        message: format!("{error:#}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::routing::RoutePattern;

    fn router(route: &str) -> Router {
        Router::build([(RoutePattern::parse(route).unwrap(), "c".to_owned())]).0
    }

    fn client() -> SocketAddr {
        "127.0.0.1:8777".parse().unwrap()
    }

    /// Every value of `name`, in order.
    fn values(request: &Request<()>, name: &str) -> Vec<String> {
        request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    fn prepared(route: &str, request: Request<()>) -> Request<()> {
        let router = router(route);
        let mut request = request;
        strip_forbidden_headers(request.headers_mut());
        set_request_uri(&mut request).unwrap();
        let path = request.uri().path().to_owned();
        let matched = router.route(&path).unwrap();
        with_spin_headers(request, &matched, client()).unwrap()
    }

    // Spin: crates/trigger-http/src/headers.rs, tests::test_default_headers
    #[test]
    fn default_headers_follow_spin() {
        let request = Request::post("/foo/bar?key1=value1&key2=value2")
            .header("host", "fermyon.dev")
            .body(())
            .unwrap();
        let request = prepared("/foo/...", request);
        let one = |name: &str| values(&request, name).join("|");
        assert_eq!(
            one("spin-full-url"),
            "http://fermyon.dev/foo/bar?key1=value1&key2=value2"
        );
        assert_eq!(one("spin-path-info"), "/bar");
        assert_eq!(one("spin-matched-route"), "/foo/...");
        assert_eq!(one("spin-base-path"), "/");
        assert_eq!(one("spin-raw-component-route"), "/foo/...");
        assert_eq!(one("spin-component-route"), "/foo");
        assert_eq!(one("spin-client-addr"), "127.0.0.1:8777");
        // The guest sees the authority on the URI (set_req_uri), with the server's scheme.
        assert_eq!(
            request.uri().to_string(),
            "http://fermyon.dev/foo/bar?key1=value1&key2=value2"
        );
    }

    // Spin: crates/trigger-http/src/headers.rs, tests::test_default_headers_with_named_wildcards
    // and compute_default_headers + prepare_header_key (SPIN_PATH_MATCH_{NAME} upper-cased,
    // `_` → `-`, lower-cased).
    #[test]
    fn named_segments_become_path_match_headers() {
        let request = Request::get("/foo/42/bar")
            .header("host", "h")
            .body(())
            .unwrap();
        let request = prepared("/foo/:userid/...", request);
        assert_eq!(values(&request, "spin-path-match-userid"), ["42"]);
        assert_eq!(values(&request, "spin-component-route"), ["/foo/:userid"]);

        let request = Request::get("/p/7/Q").header("host", "h").body(()).unwrap();
        let request = prepared("/p/:product_id/:Big_Name", request);
        assert_eq!(values(&request, "spin-path-match-product-id"), ["7"]);
        assert_eq!(values(&request, "spin-path-match-big-name"), ["Q"]);
        assert_eq!(
            path_match_header("product_id"),
            "spin-path-match-product-id"
        );
        assert_eq!(path_match_header("Big_Name"), "spin-path-match-big-name");
    }

    // Spin: crates/trigger-http/src/headers.rs prepare_request_headers (`host` header, default
    // `localhost`) and server.rs set_req_uri (an HTTP/2 request carries `:authority` in the URI
    // and no `Host` header).
    #[test]
    fn full_url_host_comes_from_the_host_header_only() {
        let request = Request::get("http://example.test:3000/a?b")
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        let request = prepared("/...", request);
        assert_eq!(values(&request, "spin-full-url"), ["http://localhost/a?b"]);
        assert_eq!(
            request.uri().authority().unwrap().as_str(),
            "example.test:3000"
        );
        assert!(request.headers().get(http::header::HOST).is_none());
    }

    // Spin (crates/trigger-http/src/wasi.rs prepare_request) appends its headers after the
    // client's; here a client-sent header of a name the runtime sets is replaced, so no reading
    // of the headers (first or last value) sees a forged `spin-client-addr`.
    #[test]
    fn client_sent_spin_headers_are_replaced() {
        let request = Request::get("/x/y")
            .header("host", "h")
            .header("spin-path-info", "/forged")
            .header("spin-client-addr", "1.2.3.4:5")
            .body(())
            .unwrap();
        let request = prepared("/x/...", request);
        assert_eq!(values(&request, "spin-path-info"), ["/y"]);
        assert_eq!(values(&request, "spin-client-addr"), ["127.0.0.1:8777"]);
    }

    // Spin: crates/trigger-http/src/headers.rs prepare_request_headers (`value?` on
    // `str::from_utf8`): a header value that is not UTF-8 fails the request.
    #[test]
    fn a_non_utf8_header_value_is_an_error() {
        let request = Request::get("/x")
            .header("host", "h")
            .header("x-bin", HeaderValue::from_bytes(b"\xff").unwrap())
            .body(())
            .unwrap();
        let router = router("/x");
        let matched = router.route("/x").unwrap();
        assert_eq!(
            with_spin_headers(request, &matched, client()).unwrap_err(),
            NonUtf8Header("x-bin".into())
        );
    }

    // Spin: crates/trigger-http/src/server.rs, set_req_uri
    #[test]
    fn the_authority_must_be_known_and_consistent() {
        let mut request = Request::get("/").body(()).unwrap();
        assert_eq!(set_request_uri(&mut request), Err(RequestRejected::NoHost));
        let mut request = Request::get("http://a.test/")
            .header("host", "b.test")
            .body(())
            .unwrap();
        assert_eq!(
            set_request_uri(&mut request),
            Err(RequestRejected::AuthorityMismatch)
        );
        let mut request = Request::get("http://a.test/")
            .header("host", "A.test")
            .body(())
            .unwrap();
        assert_eq!(set_request_uri(&mut request), Ok(()));
        let mut request = Request::get("/").header("host", "a b").body(()).unwrap();
        assert_eq!(
            set_request_uri(&mut request),
            Err(RequestRejected::InvalidHost)
        );
    }

    // Spin: crates/trigger-http/src/headers.rs, tests::forbidden_headers_are_removed and
    // non_forbidden_headers_are_not_removed
    #[test]
    fn service_chaining_hosts_are_stripped() {
        for host in ["test.spin.internal", "test.spin.internal:1234"] {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, HeaderValue::from_static(host));
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("text/plain"));
            strip_forbidden_headers(&mut headers);
            assert_eq!(headers.len(), 1, "{host}");
            assert!(headers.get(http::header::HOST).is_none());
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_static("test.example.org"),
        );
        strip_forbidden_headers(&mut headers);
        assert!(headers.get(http::header::HOST).is_some());
    }
}
