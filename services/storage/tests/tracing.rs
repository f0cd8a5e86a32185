//! Events continue the trace of the request that made the change (W3C trace context).
//! Its own test binary: it installs the process-wide tracing subscriber.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[tokio::test]
async fn events_carry_the_callers_trace_context() {
    let _guard = storemesh_runtime::telemetry::init(
        "storage-test",
        &storemesh_runtime::telemetry::TelemetryConfig::default(),
    )
    .unwrap();
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = bearer(
        futures::stream::iter(messages(header("traced/x", ""), b"x", 1)),
        &mesh.admin,
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.upload(request).await.unwrap();
    let events = mesh.events();
    let parent = &events.last().unwrap().trace_parent;
    assert!(
        parent.starts_with(&format!("00-{trace_id}-")),
        "continues the caller's trace: {parent:?}"
    );
}
