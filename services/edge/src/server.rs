//! The HTTP listener (HTTP/1.1 and h2c) serving the application, and the admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use storemesh_runtime::server::prometheus;
use storemesh_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::EdgeConfig;
use crate::error::EdgeError;

/// A bound, not yet running edge runtime.
pub struct EdgeServer {
    app: Arc<App>,
    listener: TcpListener,
    admin: TcpListener,
    shutdown_grace: Duration,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| EdgeError::Bind { addr, error })
}

impl EdgeServer {
    /// Binds both listeners, so an address in use fails here and `:0` ports become known.
    pub async fn bind(app: App, config: &EdgeConfig) -> Result<Self, EdgeError> {
        let listener = bind(config.listen).await?;
        let admin = bind(config.admin_listen).await?;
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
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Shutdown::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.trigger();
            }
        });

        let admin_stop = Shutdown::new();
        let admin = tokio::spawn(serve_admin(self.admin, ready.clone(), admin_stop.clone()));
        let upkeep = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => prometheus().run_upkeep(),
                        () = stop.wait() => break,
                    }
                }
            }
        });

        let addr = self.listener.local_addr().ok();
        tracing::info!(
            app = %self.app.name(),
            listen = %addr.map(|a| a.to_string()).unwrap_or_default(),
            "serving"
        );
        ready.store(true, Ordering::SeqCst);

        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, client) = match accepted {
                        Ok(pair) => pair,
                        Err(error) => {
                            // E.g. too many open files: keep serving what is open.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let app = self.app.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let app = app.clone();
                            // A rejected request makes hyper drop the connection (HTTP/1) or reset the
                            // stream (HTTP/2) without a response, as Spin's server does.
                            async move { app.handle(request, client).await }
                        });
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(error) = watcher.watch(connection).await {
                            tracing::debug!(%client, error = %error, "connection ended with an error");
                        }
                    });
                }
                () = stop.wait() => break,
            }
        }
        ready.store(false, Ordering::SeqCst);
        drop(self.listener);
        tracing::info!("shutting down: draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.shutdown_grace) => {
                tracing::warn!(grace_ms = self.shutdown_grace.as_millis() as u64, "drain timed out; closing remaining connections");
            }
        }
        admin_stop.trigger();
        let _ = tokio::join!(admin, upkeep);
        tracing::info!("stopped");
        Ok(())
    }
}

async fn serve_admin(listener: TcpListener, ready: Arc<AtomicBool>, stop: Shutdown) {
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(|| std::future::ready(prometheus().render())),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(if ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
                })
            }),
        );
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.wait())
        .await
    {
        tracing::error!(%error, "admin server failed");
    }
}
