//! The shared runtime's gRPC host, exercised over real sockets with real clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{admin_get, eventually, start, test_config};
use prost::Message;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::redis::{RedisConfig, RedisReadiness};
use storemesh_testkit::RedisServer;
use storemesh_testkit::echo::{self, pb::EchoRequest, pb::EchoResponse};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ECHO: &str = "storemesh.testing.v1.EchoService";

async fn health_status(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn health_follows_redis_readiness() {
    let mut redis = RedisServer::start().unwrap();
    let connection = storemesh_runtime::redis::connect(&RedisConfig {
        url: redis.url(),
        connect_timeout_ms: 500,
        response_timeout_ms: 500,
    })
    .await
    .unwrap();
    let host = start(echo::host(test_config()).readiness(RedisReadiness(connection))).await;
    let mut health = HealthClient::new(host.channel().await);

    for service in ["", ECHO] {
        assert!(
            eventually(Duration::from_secs(5), || {
                let mut health = health.clone();
                async move {
                    health_status(&mut health, service).await.ok() == Some(ServingStatus::Serving)
                }
            })
            .await,
            "{service:?} becomes SERVING"
        );
    }
    assert_eq!(admin_get(host.admin, "/readyz").await.0, 200);
    assert_eq!(admin_get(host.admin, "/healthz").await.0, 200);
    let unknown = health_status(&mut health, "no.such.Service")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    redis.kill();
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut health = health.clone();
            async move { health_status(&mut health, ECHO).await.ok() == Some(ServingStatus::NotServing) }
        })
        .await,
        "NOT_SERVING once Redis is gone"
    );
    let (status, body) = admin_get(host.admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("redis"), "{body}");
    // Liveness is not readiness: the process is alive.
    assert_eq!(admin_get(host.admin, "/healthz").await.0, 200);

    redis.restart().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut health = health.clone();
            async move { health_status(&mut health, ECHO).await.ok() == Some(ServingStatus::Serving) }
        })
        .await,
        "SERVING again after Redis is back"
    );
    host.stop().await;
}

#[tokio::test]
async fn reflection_lists_exactly_the_hosted_services_v1_and_v1alpha() {
    let host = start(echo::host(test_config())).await;
    let expected: BTreeSet<String> = [
        ECHO,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .into_iter()
    .map(String::from)
    .collect();

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(host.channel().await);
        let requests = tokio_stream::iter([
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(ECHO.into())),
            },
        ]);
        let mut responses = client
            .server_reflection_info(requests)
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
        assert_eq!(names, expected, "v1");
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a file descriptor");
        };
        let file =
            prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                .unwrap();
        assert_eq!(file.package(), "storemesh.testing.v1");
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(host.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
        assert_eq!(names, expected, "v1alpha");
    }
    host.stop().await;
}

fn grpc_web_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(encoded.len()).unwrap());
    frame.put_slice(&encoded);
    frame.freeze()
}

#[tokio::test]
async fn grpc_web_over_http1_works() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let host = start(echo::host(test_config())).await;
    // An HTTP/1.1-only client, as a browser or a Spin component without HTTP/2 would be.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("http://{}/{ECHO}/Echo", host.addr))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Full::new(grpc_web_frame(&EchoRequest {
            message: "over grpc-web".into(),
            delay_ms: 0,
        })))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web")
    );
    let mut body = response.into_body().collect().await.unwrap().to_bytes();

    // Data frame, then the trailers frame (flag 0x80) carrying grpc-status.
    assert_eq!(body.get_u8(), 0);
    let length = body.get_u32() as usize;
    let reply = EchoResponse::decode(body.split_to(length)).unwrap();
    assert_eq!(reply.message, "over grpc-web");
    assert_eq!(body.get_u8(), 0x80);
    let length = body.get_u32() as usize;
    let trailers = String::from_utf8(body.split_to(length).to_vec()).unwrap();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    host.stop().await;
}

#[tokio::test]
async fn overload_is_shed_with_resource_exhausted_but_health_still_answers() {
    let config = ServerConfig {
        concurrency_limit: 1,
        ..test_config()
    };
    let host = start(echo::host(config)).await;
    let mut client = host.echo_client().await;
    let slow = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .echo(EchoRequest {
                    message: "slow".into(),
                    delay_ms: 1_000,
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    let refused = client
        .echo(EchoRequest {
            message: "one too many".into(),
            delay_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not queued"
    );

    let mut health = HealthClient::new(host.channel().await);
    assert!(
        health_status(&mut health, "").await.is_ok(),
        "health is never shed"
    );

    assert_eq!(slow.await.unwrap().unwrap().into_inner().message, "slow");
    let after = client
        .echo(EchoRequest {
            message: "after".into(),
            delay_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(after.into_inner().message, "after");
    host.stop().await;
}

#[tokio::test]
async fn request_ids_are_assigned_or_echoed() {
    let host = start(echo::host(test_config())).await;
    let mut client = host.echo_client().await;
    let response = client
        .echo(EchoRequest {
            message: "id".into(),
            delay_ms: 0,
        })
        .await
        .unwrap();
    let assigned = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(assigned.len(), 36, "a UUID: {assigned}");

    let mut request = tonic::Request::new(EchoRequest {
        message: "id".into(),
        delay_ms: 0,
    });
    request
        .metadata_mut()
        .insert("x-request-id", "caller-chosen-id".parse().unwrap());
    let response = client.echo(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "caller-chosen-id"
    );
    host.stop().await;
}

#[tokio::test]
async fn validation_errors_carry_field_violations() {
    use tonic_types::StatusExt;
    let host = start(echo::host(test_config())).await;
    let mut client = host.echo_client().await;
    let status = client
        .echo(EchoRequest {
            message: "x".repeat(2048),
            delay_ms: 60_000,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["message", "delay_ms"]);
    host.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let config = ServerConfig {
        max_message_bytes: 4096,
        ..test_config()
    };
    let host = start(echo::host(config)).await;
    let mut client = host.echo_client().await;
    let status = client
        .echo(EchoRequest {
            message: "x".repeat(8192),
            delay_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    host.stop().await;
}

/// grpcurl 1.8 (a real third-party client; speaks reflection v1alpha only) lists and calls the
/// host. `scripts/setup` installs it; `$GRPCURL` names it.
#[tokio::test]
async fn grpcurl_lists_describes_and_calls() {
    let grpcurl = std::env::var("GRPCURL")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "grpcurl".into());
    let host = start(echo::host(test_config())).await;
    let addr = host.addr.to_string();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            let output = tokio::process::Command::new(&grpcurl)
                .args(&args)
                .output()
                .await
                .unwrap_or_else(|error| {
                    panic!("cannot run {grpcurl} ({error}); run scripts/setup or set GRPCURL")
                });
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "grpcurl {args:?}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
        }
    };
    let list = run(vec!["-plaintext".into(), addr.clone(), "list".into()]).await;
    assert!(list.lines().any(|line| line == ECHO), "{list}");
    assert!(
        list.lines().any(|line| line == "grpc.health.v1.Health"),
        "{list}"
    );

    let described = run(vec![
        "-plaintext".into(),
        addr.clone(),
        "describe".into(),
        "storemesh.testing.v1.EchoRequest".into(),
    ])
    .await;
    assert!(described.contains("delay_ms"), "{described}");

    let reply = run(vec![
        "-plaintext".into(),
        "-d".into(),
        r#"{"message":"hello from grpcurl"}"#.into(),
        addr.clone(),
        format!("{ECHO}/Echo"),
    ])
    .await;
    assert!(reply.contains("hello from grpcurl"), "{reply}");
    host.stop().await;
}
