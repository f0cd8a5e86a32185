//! Helpers shared by the runtime host tests: start the echo fixture in-process on `:0` ports.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use storemesh_runtime::server::ServiceHostBuilder;
use storemesh_testkit::echo::EchoServiceClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct RunningHost {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHost {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn echo_client(&self) -> EchoServiceClient<Channel> {
        EchoServiceClient::new(self.channel().await)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("host stops")
            .unwrap();
    }
}

/// The hosts' configuration: the shared test fixture.
pub use storemesh_runtime::testing::test_server as test_config;

pub async fn start(builder: ServiceHostBuilder) -> RunningHost {
    let host = builder.bind().await.unwrap();
    let addr = host.local_addr().unwrap();
    let admin = host.admin_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        host.run(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    RunningHost {
        addr,
        admin,
        stop: Some(stop),
        task,
    }
}

/// GET on the admin port; returns (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = client
        .get(format!("http://{admin}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Polls `condition` every 50 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
