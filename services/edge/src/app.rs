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

use crate::config::EdgeConfig;
use crate::error::EdgeError;
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
}

/// A loaded Spin application.
pub struct App {
    name: String,
    version: Option<String>,
    engine: Engine,
    router: Router,
    components: HashMap<String, Arc<LoadedComponent>>,
    client: Arc<OutboundClient>,
    permits: Arc<Semaphore>,
    max_memory_bytes: usize,
    execution_timeout: Duration,
    epoch_tick: Duration,
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
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Instantiate => "instantiate",
            Failure::Overloaded => "overloaded",
            Failure::MemoryLimit => "memory_limit",
            Failure::Timeout => "timeout",
            Failure::Trap => "trap",
            Failure::NoResponse => "no_response",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Failure::Overloaded | Failure::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::Instantiate => "the component could not be started\n",
            Failure::Overloaded => "too many concurrent requests\n",
            Failure::MemoryLimit => "the component exceeded its memory limit\n",
            Failure::Timeout => "the component exceeded its execution time limit\n",
            Failure::Trap => "the component failed\n",
            Failure::NoResponse => "the component did not respond\n",
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

fn text_response(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
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
        storemesh_runtime::server::prometheus();
        let manifest = Manifest::load(&config.manifest)?;
        let app_variables = AppVariables::resolve(&manifest, &config.variables, |name| {
            std::env::var(name).ok()
        })?;
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

        // Compile each distinct source once (several components may share one `.wasm`).
        let mut compiled: BTreeMap<PathBuf, ProxyPre<HostState>> = BTreeMap::new();
        let mut components = HashMap::new();
        for decl in manifest.triggered_components() {
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
            tracing::info!(
                component = %decl.id,
                source = %decl.source.display(),
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
            permits: Arc::new(Semaphore::new(config.max_instances as usize)),
            max_memory_bytes: usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX),
            execution_timeout: Duration::from_millis(config.execution_timeout_ms),
            epoch_tick: Duration::from_millis(config.epoch_tick_ms),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Handles one HTTP request: the runtime's own `/.well-known/spin/` endpoints, routing, and
    /// the component invocation. Never fails: errors become 4xx/5xx responses.
    pub async fn handle<B>(&self, request: Request<B>, client: SocketAddr) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let path = request.uri().path().to_owned();
        if let Some(endpoint) = path.strip_prefix(crate::routing::RESERVED_PREFIX) {
            return self.well_known(endpoint);
        }
        let Some(matched) = self.router.route(&path) else {
            metrics::counter!(names::UNROUTED).increment(1);
            tracing::debug!(%path, "no route");
            return empty_response(StatusCode::NOT_FOUND);
        };
        let Some(component) = self.components.get(matched.component).cloned() else {
            return text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route without component\n",
            );
        };
        let request = with_spin_headers(request, &matched, client);
        self.invoke(component, request).await
    }

    fn well_known(&self, endpoint: &str) -> Response<ResponseBody> {
        match endpoint {
            "health" => text_response(StatusCode::OK, "OK"),
            "info" => {
                let body = serde_json::json!({
                    "name": self.name,
                    "version": self.version,
                    "runtime": "storemesh-edge",
                    "runtime_version": env!("CARGO_PKG_VERSION"),
                })
                .to_string();
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
        let state = HostState::new(
            component.id.clone(),
            wasi.build(),
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

        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return self.fail(
                &id,
                Failure::Overloaded,
                "all instance slots are busy",
                started,
            );
        };
        let active = ActiveGuard::new(id.clone());

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
        // the headers are sent. The task holds the instance slot until the instance is gone.
        let limit = self.execution_timeout + self.epoch_tick * 2;
        let pre = component.pre.clone();
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            let outcome = run_instance(&pre, &mut store, incoming, outparam, limit, &task_id).await;
            // Free the pool slot before the permit, so the next request always finds one.
            drop(store);
            drop(active);
            drop(permit);
            outcome
        });
        let watcher_id = id.clone();
        let (outcome_tx, outcome_rx) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = match task.await {
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
        text_response(status, failure.message())
    }
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
        Failure::Overloaded => tracing::warn!(
            component = %component,
            kind = failure.label(),
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

/// Adds Spin's request headers (`spin-full-url`, `spin-path-info`, ...), replacing any the
/// client sent under the same names.
fn with_spin_headers<B>(
    request: Request<B>,
    matched: &RouteMatch<'_>,
    client: SocketAddr,
) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_owned());
    if !parts.headers.contains_key(http::header::HOST)
        && parts.uri.authority().is_none()
        && let Ok(value) = HeaderValue::from_str(&host)
    {
        parts.headers.insert(http::header::HOST, value);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let full_url = format!("{scheme}://{host}{path_and_query}");
    let mut set = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            parts.headers.insert(name, value);
        }
    };
    set("spin-path-info", &matched.path_info);
    set("spin-full-url", &full_url);
    set("spin-matched-route", matched.based_route);
    set("spin-base-path", "/");
    set("spin-raw-component-route", matched.raw_route);
    set("spin-component-route", matched.component_route());
    set("spin-client-addr", &client.to_string());
    for (name, value) in &matched.captures {
        set(
            &format!("spin-path-match-{}", name.to_ascii_lowercase()),
            value,
        );
    }
    Request::from_parts(parts, body)
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
