//! The process-wide Prometheus recorder, and the names of the runtime's own server metrics.
//!
//! One recorder per process, installed on first use (by [`crate::telemetry::init`] at start,
//! before any client or upstream records anything) and rendered by every process's admin port
//! ([`crate::server::admin`]). Crates record with the `metrics` macros as usual; this module only
//! decides where the samples go and how latency histograms are bucketed.
//!
//! This module depends on nothing else in the crate, so everything that records or renders
//! metrics (`telemetry`, `observe`, `shed`, `auth`, `server`) can use it without importing each
//! other.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `grpc_server_started_total{service,method}`: gRPC calls started on the server.
pub const STARTED_TOTAL: &str = "grpc_server_started_total";
/// `grpc_server_handled_total{service,method,code}`: gRPC calls completed, by status code.
pub const HANDLED_TOTAL: &str = "grpc_server_handled_total";
/// `grpc_server_handling_seconds{service,method}`: time to the end of the response stream.
pub const HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

/// Histogram buckets of every metric whose name ends in `_seconds`.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the latency bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be incomplete");
        }
        describe();
        handle
    })
}

/// Registers the descriptions of the runtime's own metrics so `/metrics` documents them.
fn describe() {
    metrics::describe_counter!(STARTED_TOTAL, "gRPC calls started on the server");
    metrics::describe_counter!(
        HANDLED_TOTAL,
        "gRPC calls completed on the server, by status code"
    );
    metrics::describe_histogram!(
        HANDLING_SECONDS,
        metrics::Unit::Seconds,
        "time from request to the end of the response stream"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_recorder_per_process_with_latency_buckets() {
        assert!(std::ptr::eq(prometheus(), prometheus()));
        metrics::histogram!("storemesh_runtime_test_latency_seconds").record(0.003);
        let text = prometheus().render();
        assert!(
            text.contains("storemesh_runtime_test_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
    }
}
