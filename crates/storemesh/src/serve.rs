//! `storemesh serve <service>`.

use std::path::Path;

use anyhow::Context;
use storemesh_runtime::telemetry::{self, TelemetryConfig};
use storemesh_runtime::{ConfigLoader, ServerConfig, shutdown};

/// The services this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Auth,
    Catalog,
    Storage,
    Gateway,
    /// The embedded Spin-compatible edge runtime (HTTP, not gRPC).
    Edge,
    /// The event dispatcher (storage events → edge functions and mesh services).
    Dispatcher,
}

impl Service {
    /// In start order: the gateway once what it routes to is up, then the edge functions,
    /// which call the mesh through the gateway, then the dispatcher, which delivers to them.
    pub const ALL: &[Service] = &[
        Service::Auth,
        Service::Catalog,
        Service::Storage,
        Service::Gateway,
        Service::Edge,
        Service::Dispatcher,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Auth => "auth",
            Service::Catalog => "catalog",
            Service::Storage => "storage",
            Service::Gateway => "gateway",
            Service::Edge => "edge",
            Service::Dispatcher => "dispatcher",
        }
    }

    /// The service's listener settings, as the service itself will read them. For the edge
    /// runtime, `listen` is its HTTP listener (not gRPC) and only the two addresses are set.
    pub fn server_config(self, loader: &ConfigLoader) -> anyhow::Result<ServerConfig> {
        Ok(match self {
            Service::Auth => loader.section::<storemesh_auth::AuthConfig>("auth")?.server,
            Service::Catalog => {
                loader
                    .section::<storemesh_catalog::CatalogConfig>("catalog")?
                    .server
            }
            Service::Storage => {
                loader
                    .section::<storemesh_storage::StorageConfig>("storage")?
                    .server
            }
            Service::Gateway => {
                loader
                    .section::<storemesh_gateway::GatewayConfig>("gateway")?
                    .server
            }
            Service::Dispatcher => {
                loader
                    .section::<storemesh_dispatcher::DispatcherConfig>("dispatcher")?
                    .server
            }
            Service::Edge => {
                let edge = storemesh_edge::EdgeSettings::load(loader)?.edge;
                ServerConfig {
                    listen: edge.listen,
                    admin_listen: edge.admin_listen,
                    ..ServerConfig::default()
                }
            }
        })
    }
}

pub async fn run(service: Service, config: Option<&Path>) -> anyhow::Result<()> {
    let loader = ConfigLoader::load(config)?;
    let telemetry_config: TelemetryConfig = loader.section("telemetry")?;
    let _telemetry = telemetry::init(service.name(), &telemetry_config)?;
    let host = match service {
        Service::Auth => {
            let settings = storemesh_auth::AuthSettings::load(&loader)?;
            storemesh_auth::build(settings)
                .await
                .context("auth service failed to start")?
        }
        Service::Catalog => {
            let settings = storemesh_catalog::CatalogSettings::load(&loader)?;
            storemesh_catalog::build(settings)
                .await
                .context("catalog service failed to start")?
        }
        Service::Storage => {
            let settings = storemesh_storage::StorageSettings::load(&loader)?;
            storemesh_storage::build(settings)
                .await
                .context("storage service failed to start")?
        }
        Service::Gateway => {
            let settings = storemesh_gateway::GatewaySettings::load(&loader)?;
            let gateway = storemesh_gateway::build(settings, &[])
                .await
                .context("gateway failed to start")?;
            gateway.run(shutdown::signal()).await;
            return Ok(());
        }
        Service::Dispatcher => {
            let settings = storemesh_dispatcher::DispatcherSettings::load(&loader)?;
            let dispatcher = storemesh_dispatcher::build(settings)
                .await
                .context("dispatcher failed to start")?;
            dispatcher.run(shutdown::signal()).await?;
            return Ok(());
        }
        Service::Edge => {
            let settings = storemesh_edge::EdgeSettings::load(&loader)?;
            let edge = storemesh_edge::build(&settings.edge)
                .await
                .context("edge runtime failed to start")?;
            edge.run(shutdown::signal()).await?;
            return Ok(());
        }
    };
    host.run(shutdown::signal()).await?;
    Ok(())
}

pub fn rotate_key(config: Option<&Path>) -> anyhow::Result<()> {
    let loader = ConfigLoader::load(config)?;
    let auth: storemesh_auth::AuthConfig = loader.section("auth")?;
    let kid = storemesh_auth::keys::rotate(&auth.keys_dir)?;
    println!(
        "new signing key {kid} in {}; restart the auth service to use it",
        auth.keys_dir.display()
    );
    Ok(())
}
