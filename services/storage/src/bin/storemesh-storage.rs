//! The storage service on its own (what `storemesh serve storage` runs), configured from
//! `$STOREMESH_CONFIG` and `STOREMESH_*` variables. Prints `LISTENING grpc=<addr> admin=<addr>`
//! once bound, so tests that run it as a separate process (to kill it) can use `:0` ports.

use storemesh_runtime::ConfigLoader;
use storemesh_runtime::telemetry::{self, TelemetryConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let loader = ConfigLoader::load(None)?;
    let telemetry_config: TelemetryConfig = loader.section("telemetry")?;
    let _telemetry = telemetry::init("storage", &telemetry_config)?;
    let settings = storemesh_storage::StorageSettings::load(&loader)?;
    let host = storemesh_storage::build(settings).await?;
    println!(
        "LISTENING grpc={} admin={}",
        host.local_addr()?,
        host.admin_addr()?
    );
    host.run(storemesh_runtime::shutdown::signal()).await?;
    Ok(())
}
