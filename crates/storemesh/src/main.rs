//! `storemesh`: one binary for every Storemesh process.
//!
//! - `storemesh serve <service>` runs one service in the foreground (what Kubernetes runs).
//! - `storemesh up` runs the whole system on this machine as child processes.
//! - `storemesh auth rotate-key` rotates the token signing key.
//! - `storemesh register|login|logout|change-password|products|upload|images` are the client: what a seller or
//!   a script (`--json`) uses against a running system.

mod client;
mod serve;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "storemesh",
    version,
    about = "Storemesh: product-media backend"
)]
struct Cli {
    /// TOML configuration file (defaults < file < STOREMESH_* environment variables).
    #[arg(long, global = true, env = "STOREMESH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one service in the foreground until SIGINT/SIGTERM.
    Serve {
        #[arg(value_enum)]
        service: serve::Service,
    },
    /// Run the whole system on this machine (a local redis-server unless REDIS_URL is set).
    Up(up::UpArgs),
    /// Auth administration.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Storage events: the dispatcher's dead-letter stream, and `tail`.
    Events {
        #[command(subcommand)]
        command: storemesh_dispatcher::cli::EventsCommand,
    },
    /// Gateway administration.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Create a user account (seller or customer).
    Register {
        #[arg(long)]
        email: String,
        /// The password; read from stdin when absent.
        #[arg(long, env = "STOREMESH_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Shown name [default: the part of the email before `@`].
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long, value_enum, default_value = "seller")]
        role: client::RegisterRole,
        #[command(flatten)]
        opts: client::ClientOpts,
    },
    /// Sign in and save the session for the other client commands.
    Login {
        #[arg(long)]
        email: String,
        /// The password; read from stdin when absent.
        #[arg(long, env = "STOREMESH_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        opts: client::ClientOpts,
    },
    /// Revoke the saved session and forget it.
    Logout {
        /// End every session of the account (every device), not only this one.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        opts: client::ClientOpts,
    },
    /// Change the signed-in account's password: every other session ends, this one continues
    /// with fresh tokens.
    ChangePassword {
        /// The current password; read from stdin (first line) when absent.
        #[arg(long, env = "STOREMESH_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// The new password; read from stdin (next line) when absent.
        #[arg(long, env = "STOREMESH_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<String>,
        #[command(flatten)]
        opts: client::ClientOpts,
    },
    /// Create, list and show products.
    Products {
        #[command(subcommand)]
        command: client::ProductsCommand,
        #[command(flatten)]
        opts: client::ClientOpts,
    },
    /// Upload a product image through the upload hook (streamed, with a progress bar).
    Upload {
        #[command(flatten)]
        args: client::UploadArgs,
        #[command(flatten)]
        opts: client::ClientOpts,
    },
    /// Show images, or wait until one is READY or FAILED.
    Images {
        #[command(subcommand)]
        command: client::ImagesCommand,
        #[command(flatten)]
        opts: client::ClientOpts,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Create a local development CA and a server certificate for TLS (`ca.pem`, `cert.pem`,
    /// `key.pem`). Point `gateway.tls.cert_file`/`key_file` at the server pair and make clients
    /// (and TLS upstream configs) trust `ca.pem`.
    DevCert {
        /// Directory to write the files to.
        #[arg(long, default_value = "data/tls")]
        out: PathBuf,
        /// DNS names or IP addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Retire the current token signing key and create a new one (restart auth afterwards).
    /// The old key stays published until every token it signed has expired.
    RotateKey,
}

fn dev_cert(out: &std::path::Path, hosts: &[String]) -> anyhow::Result<()> {
    let files = storemesh_mesh::tls::write_dev_certificates(out, hosts)?;
    println!("CA (trust this):     {}", files.ca_file.display());
    println!("server certificate:  {}", files.cert_file.display());
    println!("server key:          {}", files.key_file.display());
    println!("valid for: {}", hosts.join(", "));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest is built with `rustls-no-provider` (shared with storage's S3 client), so every
    // reqwest client (`up`'s HTTP readiness checks of the edge runtime, uploads) needs a process
    // provider: ring, as the rest of the mesh uses. Without this `storemesh up` panics when it
    // checks the edge runtime (tests hide it: their dev-dependencies bring a provider). An
    // error only means a provider was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { service } => serve::run(service, cli.config.as_deref()).await,
            Command::Up(args) => up::run(args, cli.config.as_deref()).await,
            Command::Auth {
                command: AuthCommand::RotateKey,
            } => serve::rotate_key(cli.config.as_deref()),
            Command::Gateway {
                command: GatewayCommand::DevCert { out, hosts },
            } => dev_cert(&out, &hosts),
            Command::Register {
                email,
                password,
                display_name,
                role,
                opts,
            } => {
                let password = client::password(password)?;
                let display_name = display_name
                    .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned());
                client::Client::connect(&opts)
                    .await?
                    .register(email, password, display_name, role)
                    .await
            }
            Command::Login {
                email,
                password,
                opts,
            } => {
                let password = client::password(password)?;
                client::Client::connect(&opts)
                    .await?
                    .login(email, password)
                    .await
            }
            Command::Logout { all, opts } => {
                let client = client::Client::connect(&opts).await?;
                if all {
                    client.logout_all().await
                } else {
                    client.logout().await
                }
            }
            Command::ChangePassword {
                password,
                new_password,
                opts,
            } => {
                let old = client::password(password)?;
                let new = client::password(new_password)?;
                client::Client::connect(&opts)
                    .await?
                    .change_password(old, new)
                    .await
            }
            Command::Products { command, opts } => {
                client::Client::connect(&opts)
                    .await?
                    .products(command)
                    .await
            }
            Command::Upload { args, opts } => {
                client::Client::connect(&opts).await?.upload(args).await
            }
            Command::Images { command, opts } => {
                client::Client::connect(&opts).await?.images(command).await
            }
            Command::Events { command } => {
                let loader = storemesh_runtime::ConfigLoader::load(cli.config.as_deref())?;
                Ok(storemesh_dispatcher::cli::run(command, &loader).await?)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
