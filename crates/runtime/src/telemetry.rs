//! Logging and tracing set-up, and W3C trace-context propagation through gRPC metadata.
//!
//! Every process installs one `tracing` subscriber: an env-filter (`RUST_LOG` wins over the
//! configured filter), human or JSON output, and an OpenTelemetry layer. The OpenTelemetry layer
//! is always present so spans get trace ids that are propagated to upstream calls; spans are
//! exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `telemetry.otlp_endpoint`)
//! is set.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ConfigError, Validate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// Colors when stdout is a terminal.
    Auto,
    Always,
    Never,
}

/// The `telemetry` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `human` (default) or `json` (one object per line, for log shippers).
    pub format: LogFormat,
    /// ANSI colors in human output: `auto` (default), `always` or `never`.
    pub color: ColorMode,
    /// `tracing` env-filter directives; `RUST_LOG` overrides it.
    pub filter: String,
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`. Defaults to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; traces are not exported when neither is set.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            color: ColorMode::Auto,
            filter: "info".into(),
            otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|value| !value.is_empty()),
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.filter).map_err(|error| ConfigError::Invalid {
            key: format!("{section}.filter"),
            message: error.to_string(),
        })?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Flushes exported spans when dropped at process end.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {error}");
        }
    }
}

/// Installs the process-wide subscriber for `service` (e.g. `auth`). Calling it again in the same
/// process (tests) keeps the first subscriber.
pub fn init(service: &str, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    // The metrics recorder too, before any service builds its clients: metrics recorded before
    // it exists (e.g. an upstream's first discovery) would be lost.
    crate::metrics::prometheus();
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(format!("storemesh-{service}"))
            .build(),
    );
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("storemesh");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // `try_init` fails only when a subscriber exists already (several hosts in one test process).
    let _ = match config.format {
        LogFormat::Human => {
            use std::io::IsTerminal;
            let ansi = match config.color {
                ColorMode::Auto => std::io::stdout().is_terminal(),
                ColorMode::Always => true,
                ColorMode::Never => false,
            };
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_ansi(ansi),
                )
                .try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value);
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

/// Whether a `traceparent` value is W3C trace context as this server accepts it: version
/// `00`, exactly `00-{32 hex}-{16 hex}-{2 hex}` in lowercase, trace and parent ids not all
/// zeros. The propagator alone accepts more (e.g. later versions with extra fields).
pub fn is_valid_traceparent(value: &str) -> bool {
    fn lower_hex(part: &str, len: usize) -> bool {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
    let mut parts = value.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    version == "00"
        && lower_hex(trace_id, 32)
        && lower_hex(parent_id, 16)
        && lower_hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0')
}

/// The caller's trace context from incoming request headers: only when there is exactly one
/// well-formed `traceparent` ([`is_valid_traceparent`]); otherwise none, and the call starts
/// its own trace.
pub fn remote_context(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    let mut values = headers.get_all("traceparent").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    if !value.to_str().is_ok_and(is_valid_traceparent) {
        return None;
    }
    Some(TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
}

/// Makes `span` a child of the W3C `traceparent` carried by incoming request headers, when it
/// is well-formed ([`remote_context`]).
pub fn adopt_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if let Some(parent) = remote_context(headers) {
        // Fails only when no OpenTelemetry layer is installed, which changes nothing for the
        // caller.
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's trace context into outgoing gRPC metadata (`traceparent`).
pub fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// A tonic client interceptor that propagates the caller's trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracePropagation;

impl tonic::service::Interceptor for TracePropagation {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_trace_context(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append(
                "traceparent",
                http::HeaderValue::from_str(value).expect("a header value"),
            );
        }
        headers
    }

    #[test]
    fn a_well_formed_traceparent_is_adopted() {
        let context = remote_context(&headers(&[VALID])).expect("adopted");
        let span = context.span();
        assert!(span.span_context().is_remote());
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            // Another version with extra fields, which the propagator alone accepts.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad:?}");
            assert!(remote_context(&headers(&[bad])).is_none(), "{bad:?}");
        }
        assert!(
            remote_context(&headers(&[VALID, VALID])).is_none(),
            "two traceparents: which one?"
        );
        assert!(remote_context(&http::HeaderMap::new()).is_none());
    }
}
