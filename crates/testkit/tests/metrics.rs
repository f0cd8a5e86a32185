//! `/metrics` counts calls by method and status code. Its own test binary, so no other test in
//! the process touches the global recorder while it counts.
#![allow(clippy::unwrap_used)]

mod common;

use common::{admin_get, start, test_config};
use storemesh_testkit::echo::{self, pb::EchoRequest};

/// The value of the sample `name` whose labels are exactly `labels` (in any order).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if series_name != name {
                return None;
            }
            let mut found: Vec<String> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(str::to_owned)
                .collect();
            found.sort();
            (found == wanted).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_calls_by_code_and_time_them() {
    let host = start(echo::host(test_config())).await;
    let mut client = host.echo_client().await;
    for _ in 0..3 {
        client
            .echo(EchoRequest {
                message: "counted".into(),
                delay_ms: 0,
            })
            .await
            .unwrap();
    }
    client
        .echo(EchoRequest {
            message: "x".repeat(4096),
            delay_ms: 0,
        })
        .await
        .unwrap_err();

    let (status, body) = admin_get(host.admin, "/metrics").await;
    assert_eq!(status, 200);
    let rpc = [
        ("service", "storemesh.testing.v1.EchoService"),
        ("method", "Echo"),
    ];
    let with_code = |code| [rpc[0], rpc[1], ("code", code)];
    assert_eq!(
        sample(&body, "grpc_server_started_total", &rpc),
        4.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, "grpc_server_handled_total", &with_code("OK")),
        3.0,
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "grpc_server_handled_total",
            &with_code("INVALID_ARGUMENT")
        ),
        1.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, "grpc_server_handling_seconds_count", &rpc),
        4.0,
        "{body}"
    );
    host.stop().await;
}
