//! The HTTP listener (HTTP/1.1 and h2c) serving the application, and the admin port: the
//! runtime's shared accept loop, drain and admin server (`storemesh_runtime::server`), with the
//! application as the service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use storemesh_runtime::server::{AdminServer, ReadyState, ServeOptions, bind, serve};
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::EdgeConfig;
use crate::error::EdgeError;

/// What `/readyz` says before the listener serves and once it drains.
const NOT_SERVING: &str = "not serving";

/// A bound, not yet running edge runtime.
pub struct EdgeServer {
    app: Arc<App>,
    listener: TcpListener,
    admin: TcpListener,
    shutdown_grace: Duration,
}

impl EdgeServer {
    /// Binds both listeners, so an address in use fails here and `:0` ports become known.
    pub async fn bind(app: App, config: &EdgeConfig) -> Result<Self, EdgeError> {
        let listen = |addr| async move {
            bind(addr).await.map_err(|error| EdgeError::Bind {
                addr,
                error: error.source,
            })
        };
        let listener = listen(config.listen).await?;
        let admin = listen(config.admin_listen).await?;
        Ok(Self {
            app: Arc::new(app),
            listener,
            admin,
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// for up to `shutdown_grace_ms`, and closes what is left.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EdgeError> {
        let ready = ReadyState::not_ready(NOT_SERVING);
        let admin = AdminServer::spawn(self.admin, ready.clone());

        let addr = self.listener.local_addr().ok();
        tracing::info!(
            app = %self.app.name(),
            listen = %addr.map(|a| a.to_string()).unwrap_or_default(),
            "serving"
        );
        ready.set(None);

        let drain_signal = async move {
            shutdown.await;
            ready.set(Some(NOT_SERVING.into()));
            tracing::info!("shutting down: draining in-flight requests");
        };
        let app = self.app;
        serve(
            self.listener,
            ServeOptions::new(self.shutdown_grace),
            move |connection| {
                let app = app.clone();
                let client = connection.remote;
                tower::service_fn(move |request| {
                    let app = app.clone();
                    // A rejected request makes hyper drop the connection (HTTP/1) or reset the
                    // stream (HTTP/2) without a response, as Spin's server does.
                    async move { app.handle(request, client).await }
                })
            },
            drain_signal,
        )
        .await;
        admin.stop().await;
        tracing::info!("stopped");
        Ok(())
    }
}
