//! A fixture service on the shared runtime: it answers like any Storemesh service (validation
//! through `ServiceError`, spans, metrics), which lets the runtime be tested end to end.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

use storemesh_runtime::config::{ConfigError, Validate};
use storemesh_runtime::error::Violations;
use storemesh_runtime::server::ServiceHostBuilder;
use storemesh_runtime::{ServerConfig, ServiceHost};
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("storemesh.testing.v1");

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/testing_descriptor.bin"));
}

pub use pb::echo_service_client::EchoServiceClient;
use pb::echo_service_server::{EchoService, EchoServiceServer};
use pb::{EchoRequest, EchoResponse, EchoStreamRequest};

const MAX_MESSAGE_BYTES: usize = 1024;
const MAX_DELAY_MS: u32 = 30_000;
const MAX_STREAM_COUNT: u32 = 1000;
const MAX_STREAM_INTERVAL_MS: u32 = 1000;

/// The response stream of [`EchoService::echo_stream`].
pub type EchoResponseStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.message.len() > MAX_MESSAGE_BYTES {
            violations.add("message", "must be at most 1024 bytes");
        }
        if request.delay_ms > MAX_DELAY_MS {
            violations.add("delay_ms", "must be at most 30000");
        }
        violations.into_result()?;
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
        }
        Ok(Response::new(EchoResponse {
            message: request.message,
        }))
    }

    type EchoStreamStream = EchoResponseStream;

    async fn echo_stream(
        &self,
        request: Request<EchoStreamRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.message.len() > MAX_MESSAGE_BYTES {
            violations.add("message", "must be at most 1024 bytes");
        }
        if request.count > MAX_STREAM_COUNT {
            violations.add("count", "must be at most 1000");
        }
        if request.interval_ms > MAX_STREAM_INTERVAL_MS {
            violations.add("interval_ms", "must be at most 1000");
        }
        violations.into_result()?;
        let interval = Duration::from_millis(u64::from(request.interval_ms));
        let stream = futures::stream::unfold(0_u32, move |index| {
            let message = request.message.clone();
            async move {
                if index >= request.count {
                    return None;
                }
                if index > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                let response = EchoResponse {
                    message: format!("{message} #{index}"),
                };
                Some((Ok(response), index + 1))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A host builder serving [`Echo`] with the given server settings.
pub fn host(config: ServerConfig) -> ServiceHostBuilder {
    let builder = ServiceHost::builder("echo", config);
    let limit = builder.max_message_bytes();
    builder
        .add_service(
            EchoServiceServer::new(Echo)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .descriptor_set(pb::FILE_DESCRIPTOR_SET)
}

/// The fixture's configuration section (`[echo]`), read by the `storemesh-echo` binary.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoConfig {
    pub server: ServerConfig,
}

impl Validate for EchoConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        self.server.validate(&format!("{section}.server"))
    }
}

/// Loads `[echo]` from the standard configuration sources.
pub fn load_config() -> Result<EchoConfig, storemesh_runtime::ConfigError> {
    storemesh_runtime::ConfigLoader::load(None)?.section("echo")
}
