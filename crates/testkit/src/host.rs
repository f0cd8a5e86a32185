//! Running a bound [`ServiceHost`] inside a test, on its `:0` ports.

use std::net::SocketAddr;
use std::time::Duration;

use storemesh_runtime::ServiceHost;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A host serving in a background task until [`RunningHost::stop`] (or drop).
pub struct RunningHost {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningHost {
    /// Starts serving `host`.
    pub fn spawn(host: ServiceHost) -> std::io::Result<Self> {
        let addr = host.local_addr()?;
        let admin = host.admin_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(error) = host.run(shutdown).await {
                tracing::error!(%error, "test host failed");
            }
        });
        Ok(Self {
            addr,
            admin,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel to the host.
    pub async fn channel(&self) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Channel::from_shared(self.endpoint())?.connect().await?)
    }

    /// Kills the host abruptly, like a crashed process: open connections are reset and
    /// in-flight calls fail; nothing drains.
    pub fn abort(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Stops the host and waits (up to 15 s) for its drain to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
