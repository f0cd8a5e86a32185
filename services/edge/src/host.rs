//! What a component instance sees: WASI 0.2 (cli, clocks, random, io, filesystem), `wasi:http`
//! (incoming and outgoing) and Spin's `fermyon:spin/variables@2.0.0` — and nothing else.
//! `wasi:filesystem` is linked for every component, as Spin does; only a component with `files`
//! has preopened directories, read-only ([`crate::files`]).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::cli::WasiCli;
use wasmtime_wasi::clocks::WasiClocks;
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::outbound::AllowedHosts;
use crate::send::OutboundClient;
use crate::variables::ComponentVariables;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "spin-imports",
    });
}

pub use bindings::fermyon::spin::variables;

/// The interfaces this runtime provides, as `namespace:package/interface` and the version range
/// accepted (any `major.minor.*` of the given prefix). Kept in step with [`linker`].
const PROVIDED: &[(&str, &str)] = &[
    ("wasi:cli/environment", "0.2."),
    ("wasi:cli/exit", "0.2."),
    ("wasi:cli/stdin", "0.2."),
    ("wasi:cli/stdout", "0.2."),
    ("wasi:cli/stderr", "0.2."),
    ("wasi:cli/terminal-input", "0.2."),
    ("wasi:cli/terminal-output", "0.2."),
    ("wasi:cli/terminal-stdin", "0.2."),
    ("wasi:cli/terminal-stdout", "0.2."),
    ("wasi:cli/terminal-stderr", "0.2."),
    ("wasi:clocks/monotonic-clock", "0.2."),
    ("wasi:clocks/wall-clock", "0.2."),
    ("wasi:random/random", "0.2."),
    ("wasi:random/insecure", "0.2."),
    ("wasi:random/insecure-seed", "0.2."),
    ("wasi:io/error", "0.2."),
    ("wasi:io/poll", "0.2."),
    ("wasi:io/streams", "0.2."),
    ("wasi:filesystem/types", "0.2."),
    ("wasi:filesystem/preopens", "0.2."),
    ("wasi:http/types", "0.2."),
    ("wasi:http/outgoing-handler", "0.2."),
    ("fermyon:spin/variables", "2.0."),
];

/// Whether an import name (`wasi:io/poll@0.2.0`) is one this runtime provides.
pub fn is_provided(import: &str) -> bool {
    let (name, version) = import.split_once('@').unwrap_or((import, ""));
    PROVIDED
        .iter()
        .any(|(provided, prefix)| *provided == name && version.starts_with(prefix))
}

/// The linker every component is instantiated with.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random};

    let mut linker = Linker::<HostState>::new(engine);
    let l = &mut linker;
    io::error::add_to_linker::<HostState, HasTable>(l, |s| &mut s.table)?;
    io::poll::add_to_linker::<HostState, HasTable>(l, |s| &mut s.table)?;
    io::streams::add_to_linker::<HostState, HasTable>(l, |s| &mut s.table)?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, |s| {
        wasmtime_wasi::clocks::WasiClocksView::clocks(s)
    })?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, |s| {
        wasmtime_wasi::clocks::WasiClocksView::clocks(s)
    })?;
    filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, |s| s.filesystem())?;
    filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(l, |s| s.filesystem())?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, |s| s.wasi.random())?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, |s| s.wasi.random())?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |s| s.wasi.random())?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, cli_view)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)?;
    variables::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
    Ok(linker)
}

fn cli_view(state: &mut HostState) -> wasmtime_wasi::cli::WasiCliCtxView<'_> {
    wasmtime_wasi::cli::WasiCliView::cli(state)
}

struct HasTable;

impl HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// Raised (as a trap) when an instance runs past its wall-clock limit.
#[derive(Debug, thiserror::Error)]
#[error("execution time limit exceeded")]
pub struct ExecutionTimeout;

/// Raised (as a trap) when an instance tries to grow a memory past its limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: tried to grow a linear memory to {desired} bytes (limit {limit})")]
pub struct MemoryLimitExceeded {
    pub desired: usize,
    pub limit: usize,
}

/// Per-instance resource limits.
pub struct Limits {
    pub max_memory_bytes: usize,
    pub max_table_elements: usize,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            return Err(MemoryLimitExceeded {
                desired,
                limit: self.max_memory_bytes,
            }
            .into());
        }
        Ok(maximum.is_none_or(|maximum| desired <= maximum))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements && maximum.is_none_or(|maximum| desired <= maximum))
    }
}

/// Outbound HTTP policy of one component: `allowed_outbound_hosts`, then [`OutboundClient`].
pub struct OutboundHooks {
    component: Arc<str>,
    allowed: Arc<AllowedHosts>,
    client: Arc<OutboundClient>,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        if !self.allowed.allows_uri(request.uri()) {
            // Like Spin: a warning naming the destination, and `HttpRequestDenied` to the guest.
            tracing::warn!(
                component = %self.component,
                destination = %redact_uri(request.uri()),
                "outbound request denied: the destination is not in the component's allowed_outbound_hosts"
            );
            metrics::counter!(
                crate::metrics::OUTBOUND_DENIED,
                "component" => self.component.to_string()
            )
            .increment(1);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        metrics::counter!(
            crate::metrics::OUTBOUND_REQUESTS,
            "component" => self.component.to_string()
        )
        .increment(1);
        Box::new(self.client.clone().send(request, options))
    }
}

/// Scheme, authority and path of a URI, without the query (which may carry secrets).
fn redact_uri(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("?"),
        uri.authority().map(|a| a.as_str()).unwrap_or("?"),
        uri.path()
    )
}

/// Everything one request's store holds.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: OutboundHooks,
    pub(crate) variables: Arc<ComponentVariables>,
    pub(crate) limits: Limits,
    /// When the execution limit is reached.
    pub(crate) deadline: Instant,
}

impl HostState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        component: Arc<str>,
        wasi: WasiCtx,
        allowed: Arc<AllowedHosts>,
        client: Arc<OutboundClient>,
        variables: Arc<ComponentVariables>,
        limits: Limits,
        deadline: Instant,
    ) -> Self {
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks {
                component,
                allowed,
                client,
            },
            variables,
            limits,
            deadline,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl variables::Host for HostState {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        // Spin's rules: a malformed name is `invalid-name`, an undeclared one `undefined`.
        if !crate::template::is_variable_name(&name) {
            return Err(variables::Error::InvalidName(format!(
                "{name:?}: variable names are lowercase letters, digits and `_`, starting with a letter"
            )));
        }
        match self.variables.get(&name) {
            Some(value) => Ok(value.expose().to_owned()),
            None => Err(variables::Error::Undefined(format!(
                "no variable for {:?}.{name:?}",
                &*self.hooks.component
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provided_interfaces_match_by_major_minor() {
        assert!(is_provided("wasi:io/poll@0.2.0"));
        assert!(is_provided("wasi:io/poll@0.2.6"));
        assert!(is_provided("wasi:random/insecure-seed@0.2.4"));
        assert!(is_provided("fermyon:spin/variables@2.0.0"));
        assert!(!is_provided("wasi:io/poll@0.3.0-rc-2026-01-06"));
        assert!(!is_provided("wasi:sockets/tcp@0.2.0"));
        assert!(is_provided("wasi:filesystem/types@0.2.0"));
        assert!(is_provided("wasi:filesystem/preopens@0.2.3"));
        assert!(!is_provided("wasi:filesystem/types@0.3.0-rc-2026-01-06"));
        assert!(!is_provided("fermyon:spin/key-value@2.0.0"));
        assert!(!is_provided("storemesh:made-up/greeter@0.1.0"));
    }

    #[test]
    fn redaction_drops_the_query() {
        let uri: http::Uri = "http://example.com:8080/a/b?token=secret"
            .parse()
            .unwrap_or_default();
        assert_eq!(redact_uri(&uri), "http://example.com:8080/a/b");
    }
}
