//! Metric names (exported by the runtime's Prometheus recorder on the admin port).
//!
//! Every per-component metric carries a `component` label.

/// Requests handled by a component, by `status` (HTTP status code).
pub const INVOCATIONS: &str = "edge_invocations_total";
/// Time from routing to the response headers, in seconds.
pub const DURATION: &str = "edge_invocation_duration_seconds";
/// Failed invocations, by `kind` (`trap`, `memory_limit`, `timeout`, `no_response`,
/// `instantiate`, `overloaded`).
pub const ERRORS: &str = "edge_errors_total";
/// Time to create the store and instantiate the pre-instantiated component, in seconds.
pub const INSTANTIATION: &str = "edge_instantiation_seconds";
/// Instances alive right now (including ones still streaming a response body).
pub const ACTIVE_INSTANCES: &str = "edge_active_instances";
/// Requests no route matched.
pub const UNROUTED: &str = "edge_unrouted_requests_total";
/// Outbound HTTP requests let through `allowed_outbound_hosts`.
pub const OUTBOUND_REQUESTS: &str = "edge_outbound_requests_total";
/// Outbound HTTP requests refused by `allowed_outbound_hosts`.
pub const OUTBOUND_DENIED: &str = "edge_outbound_denied_total";

pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        INVOCATIONS,
        "Requests handled by a component, by HTTP status."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Time from routing to the response headers."
    );
    describe_counter!(ERRORS, "Failed invocations, by kind.");
    describe_histogram!(
        INSTANTIATION,
        Unit::Seconds,
        "Time to create a store and instantiate a component."
    );
    describe_gauge!(ACTIVE_INSTANCES, "Component instances alive right now.");
    describe_counter!(UNROUTED, "Requests no route matched.");
    describe_counter!(OUTBOUND_REQUESTS, "Outbound HTTP requests let through.");
    describe_counter!(
        OUTBOUND_DENIED,
        "Outbound HTTP requests refused by allowed_outbound_hosts."
    );
}
