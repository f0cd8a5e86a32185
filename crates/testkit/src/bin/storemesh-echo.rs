//! Serves the fixture echo service until SIGTERM/SIGINT; prints its bound addresses as
//! `LISTENING grpc=<addr> admin=<addr>` so tests can use `:0` ports.

use storemesh_runtime::telemetry::{self, TelemetryConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = storemesh_testkit::echo::load_config()?;
    let _telemetry = telemetry::init("echo", &TelemetryConfig::default())?;
    let host = storemesh_testkit::echo::host(config.server).bind().await?;
    println!(
        "LISTENING grpc={} admin={}",
        host.local_addr()?,
        host.admin_addr()?
    );
    host.run(storemesh_runtime::shutdown::signal()).await?;
    Ok(())
}
