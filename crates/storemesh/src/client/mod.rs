//! The command-line client: what a seller (or a script, with `--json`) uses against a running
//! Storemesh. gRPC calls go through the gateway with the shared mesh client (deadlines,
//! retries of idempotent calls, TLS); uploads stream over HTTP to the upload hook.

mod download;
mod money;
mod output;
mod session;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use storemesh_mesh::config::UpstreamTls;
use storemesh_mesh::{MeshChannel, Upstream, UpstreamConfig};
use storemesh_proto::auth::v1 as auth;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as catalog;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_runtime::backoff::{Backoff, Jitter};

pub use session::Session;
pub use upload::UploadArgs;

/// Options shared by every client command.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientOpts {
    /// The gateway: `http://host:port` (h2c) or `https://host:port` (TLS).
    #[arg(
        long,
        global = true,
        env = "STOREMESH_GATEWAY",
        default_value = "http://127.0.0.1:50050"
    )]
    pub gateway: String,
    /// The edge runtime serving the upload hook.
    #[arg(
        long,
        global = true,
        env = "STOREMESH_EDGE_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub edge: String,
    /// CA certificate (PEM) to trust for an `https://` gateway, e.g. from `gateway dev-cert`.
    #[arg(long, global = true, env = "STOREMESH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where `login` keeps the session [default: ~/.config/storemesh/session.json].
    #[arg(long, global = true, env = "STOREMESH_SESSION")]
    pub session_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of each call, in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout_secs: u64,
}

#[derive(clap::Subcommand)]
pub enum ProductsCommand {
    /// Create a product owned by the signed-in seller.
    Create {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Price as a decimal in the currency's unit, e.g. 19.99.
        #[arg(long, default_value = "0")]
        price: String,
        /// ISO 4217 currency code.
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// List products (all, or one seller's; `--seller me` for your own).
    List {
        #[arg(long)]
        seller: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Stop after this many products.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one product with its images.
    Get { id: String },
    /// Make a product visible to anonymous shoppers (storefront listing, public image URLs).
    Publish { id: String },
    /// Make a product a draft again (visible to signed-in readers only).
    Unpublish { id: String },
}

#[derive(clap::Subcommand)]
pub enum ImagesCommand {
    /// Show one image with its variants.
    Get { id: String },
    /// Follow the image's product until the image is READY or FAILED (exit status 1 on FAILED).
    Wait {
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Print the URL of the image's original or of one of its variants.
    Url {
        id: String,
        /// A variant name such as `w320` [default: the original].
        #[arg(long)]
        variant: Option<String>,
        /// A signed URL anyone can fetch until it expires (drafts and originals included; the
        /// product's seller or an admin only).
        #[arg(long)]
        sign: bool,
        /// Lifetime of a signed URL, seconds (at most 7 days).
        #[arg(long, default_value_t = 3600, requires = "sign")]
        ttl: u32,
    },
    /// Save the bytes of the image's original or of one of its variants (through the edge's
    /// `images` function, with a progress bar).
    Download {
        id: String,
        /// A variant name such as `w320` [default: the original].
        #[arg(long)]
        variant: Option<String>,
        /// Where to write [default: `<image id>-<variant or original>.<ext>` here]; `-` for
        /// standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Role to register with.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RegisterRole {
    Seller,
    Customer,
}

/// A connection to the mesh through the gateway, plus the saved session.
pub struct Client {
    opts: ClientOpts,
    channel: MeshChannel,
    session_path: PathBuf,
}

impl Client {
    pub async fn connect(opts: &ClientOpts) -> anyhow::Result<Self> {
        let (tls, authority) = split_gateway_url(&opts.gateway)?;
        let mut config = UpstreamConfig::addresses([authority]);
        config.default_deadline_ms = opts.timeout_secs.saturating_mul(1000);
        if tls {
            config.tls = Some(UpstreamTls {
                ca_file: opts.ca_file.clone(),
            });
        }
        let upstream = Upstream::start("gateway", config)
            .await
            .context("cannot set up the gateway connection")?;
        Ok(Self {
            session_path: opts
                .session_file
                .clone()
                .unwrap_or_else(session::default_path),
            channel: MeshChannel::new(upstream),
            opts: opts.clone(),
        })
    }

    fn auth(&self) -> AuthServiceClient<MeshChannel> {
        AuthServiceClient::new(self.channel.clone())
    }

    fn catalog(&self) -> CatalogServiceClient<MeshChannel> {
        CatalogServiceClient::new(self.channel.clone())
    }

    fn request<T>(&self, message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_secs(self.opts.timeout_secs));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .context("the saved access token is not a valid header value")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// The saved session with a fresh access token (refreshed and saved again when it is about
    /// to expire).
    pub async fn session(&self) -> anyhow::Result<Session> {
        let Some(mut session) = session::load(&self.session_path)? else {
            bail!("not signed in: run `storemesh login` first");
        };
        if session.gateway != self.opts.gateway {
            bail!(
                "the saved session belongs to {}, not {}: run `storemesh login` again",
                session.gateway,
                self.opts.gateway
            );
        }
        let now = now_unix();
        if session.access_is_fresh(now) {
            return Ok(session);
        }
        if !session.refresh_is_valid(now) {
            bail!("the session has expired: run `storemesh login` again");
        }
        let response = self
            .auth()
            .refresh(self.request(
                auth::RefreshRequest {
                    refresh_token: session.refresh_token.clone(),
                },
                None,
            )?)
            .await
            .map_err(|status| call_error("refreshing the session", &status))?
            .into_inner();
        let tokens = response
            .tokens
            .context("the auth service answered Refresh without tokens")?;
        apply_tokens(&mut session, &tokens);
        session::save(&self.session_path, &session)?;
        Ok(session)
    }

    pub async fn register(
        &self,
        email: String,
        password: String,
        display_name: String,
        role: RegisterRole,
    ) -> anyhow::Result<()> {
        let role = match role {
            RegisterRole::Seller => auth::Role::Seller,
            RegisterRole::Customer => auth::Role::Customer,
        };
        let user = self
            .auth()
            .register(self.request(
                auth::RegisterRequest {
                    email,
                    password,
                    display_name,
                    role: role as i32,
                },
                None,
            )?)
            .await
            .map_err(|status| call_error("registering", &status))?
            .into_inner()
            .user
            .context("the auth service answered Register without a user")?;
        output::user(&user, self.opts.json);
        Ok(())
    }

    pub async fn login(&self, email: String, password: String) -> anyhow::Result<()> {
        let response = self
            .auth()
            .login(self.request(auth::LoginRequest { email, password }, None)?)
            .await
            .map_err(|status| call_error("signing in", &status))?
            .into_inner();
        let (Some(tokens), Some(user)) = (response.tokens, response.user) else {
            bail!("the auth service answered Login without tokens or user");
        };
        let mut session = Session {
            gateway: self.opts.gateway.clone(),
            user_id: user.id.clone(),
            email: user.email.clone(),
            role: output::role_name(user.role).to_owned(),
            access_token: String::new(),
            access_expires_unix: 0,
            refresh_token: String::new(),
            refresh_expires_unix: 0,
        };
        apply_tokens(&mut session, &tokens);
        session::save(&self.session_path, &session)?;
        output::signed_in(&session, &self.session_path, self.opts.json);
        Ok(())
    }

    /// Revokes the refresh token family on the server, then forgets the session.
    pub async fn logout(&self) -> anyhow::Result<()> {
        if let Some(session) = session::load(&self.session_path)? {
            let result = self
                .auth()
                .logout(self.request(
                    auth::LogoutRequest {
                        refresh_token: session.refresh_token.clone(),
                    },
                    Some(&session.access_token),
                )?)
                .await;
            // An expired session is already useless; forget it either way.
            if let Err(status) = result
                && status.code() != tonic::Code::Unauthenticated
            {
                return Err(call_error("signing out", &status));
            }
        }
        session::remove(&self.session_path)?;
        if !self.opts.json {
            println!("signed out");
        } else {
            println!("{}", serde_json::json!({"signed_out": true}));
        }
        Ok(())
    }

    /// Ends every session of the account on the server (all devices), then forgets this one.
    pub async fn logout_all(&self) -> anyhow::Result<()> {
        let session = self.session().await?;
        self.auth()
            .logout_all(self.request(auth::LogoutAllRequest {}, Some(&session.access_token))?)
            .await
            .map_err(|status| call_error("signing out everywhere", &status))?;
        session::remove(&self.session_path)?;
        if !self.opts.json {
            println!("signed out everywhere");
        } else {
            println!("{}", serde_json::json!({"signed_out": true, "all": true}));
        }
        Ok(())
    }

    /// Changes the password; the server ends the other sessions and this one continues with the
    /// fresh tokens it returns.
    pub async fn change_password(&self, old: String, new: String) -> anyhow::Result<()> {
        let mut session = self.session().await?;
        let tokens = self
            .auth()
            .change_password(self.request(
                auth::ChangePasswordRequest {
                    old_password: old,
                    new_password: new,
                },
                Some(&session.access_token),
            )?)
            .await
            .map_err(|status| call_error("changing the password", &status))?
            .into_inner()
            .tokens
            .context("the auth service answered ChangePassword without tokens")?;
        apply_tokens(&mut session, &tokens);
        session::save(&self.session_path, &session)?;
        if !self.opts.json {
            println!("password changed; other sessions signed out");
        } else {
            println!("{}", serde_json::json!({"password_changed": true}));
        }
        Ok(())
    }

    pub async fn products(&self, command: ProductsCommand) -> anyhow::Result<()> {
        let session = self.session().await?;
        let token = Some(session.access_token.as_str());
        match command {
            ProductsCommand::Create {
                title,
                description,
                price,
                currency,
                tags,
            } => {
                let amount_minor = money::parse_minor(&price, &currency)?;
                let product = self
                    .catalog()
                    .create_product(self.request(
                        catalog::CreateProductRequest {
                            title,
                            description,
                            price: Some(catalog::Money {
                                amount_minor,
                                currency_code: currency.to_ascii_uppercase(),
                            }),
                            tags,
                            // Lets the mesh retry the call safely.
                            request_id: uuid::Uuid::new_v4().to_string(),
                        },
                        token,
                    )?)
                    .await
                    .map_err(|status| call_error("creating the product", &status))?
                    .into_inner()
                    .product
                    .context("CreateProduct answered without a product")?;
                output::product(&product, &[], self.opts.json);
            }
            ProductsCommand::List { seller, tag, limit } => {
                let seller_id = match seller.as_deref() {
                    Some("me") => session.user_id.clone(),
                    Some(other) => other.to_owned(),
                    None => String::new(),
                };
                let mut products = Vec::new();
                let mut page_token = String::new();
                loop {
                    let page = self
                        .catalog()
                        .list_products(self.request(
                            catalog::ListProductsRequest {
                                page_size: i32::try_from(limit.min(500)).unwrap_or(500),
                                page_token: page_token.clone(),
                                seller_id: seller_id.clone(),
                                tag: tag.clone().unwrap_or_default(),
                                ..catalog::ListProductsRequest::default()
                            },
                            token,
                        )?)
                        .await
                        .map_err(|status| call_error("listing products", &status))?
                        .into_inner();
                    products.extend(page.products);
                    page_token = page.next_page_token;
                    if page_token.is_empty() || products.len() >= limit {
                        break;
                    }
                }
                products.truncate(limit);
                output::products(&products, self.opts.json);
            }
            ProductsCommand::Get { id } => {
                let product = self
                    .catalog()
                    .get_product(
                        self.request(catalog::GetProductRequest { id: id.clone() }, token)?,
                    )
                    .await
                    .map_err(|status| call_error("reading the product", &status))?
                    .into_inner()
                    .product
                    .context("GetProduct answered without a product")?;
                let images = self
                    .catalog()
                    .list_product_images(self.request(
                        catalog::ListProductImagesRequest {
                            product_id: id,
                            page_size: 500,
                            page_token: String::new(),
                        },
                        token,
                    )?)
                    .await
                    .map_err(|status| call_error("listing the product's images", &status))?
                    .into_inner()
                    .images;
                output::product(&product, &images, self.opts.json);
            }
            ProductsCommand::Publish { id } => {
                let product = self
                    .set_visibility(&id, catalog::ProductVisibility::Published, token)
                    .await?;
                output::product(&product, &[], self.opts.json);
            }
            ProductsCommand::Unpublish { id } => {
                let product = self
                    .set_visibility(&id, catalog::ProductVisibility::Draft, token)
                    .await?;
                output::product(&product, &[], self.opts.json);
            }
        }
        Ok(())
    }

    async fn set_visibility(
        &self,
        id: &str,
        visibility: catalog::ProductVisibility,
        token: Option<&str>,
    ) -> anyhow::Result<catalog::Product> {
        self.catalog()
            .update_product(self.request(
                catalog::UpdateProductRequest {
                    product: Some(catalog::Product {
                        id: id.to_owned(),
                        visibility: visibility.into(),
                        ..catalog::Product::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["visibility".to_owned()],
                    }),
                    ..catalog::UpdateProductRequest::default()
                },
                token,
            )?)
            .await
            .map_err(|status| call_error("changing the product's visibility", &status))?
            .into_inner()
            .product
            .context("UpdateProduct answered without a product")
    }

    pub async fn images(&self, command: ImagesCommand) -> anyhow::Result<()> {
        let session = self.session().await?;
        match command {
            ImagesCommand::Get { id } => {
                let image = self.get_image(&session, &id).await?;
                output::image(&image, self.opts.json);
                Ok(())
            }
            ImagesCommand::Wait { id, timeout } => {
                let image = tokio::time::timeout(
                    Duration::from_secs(timeout),
                    self.wait_for_image(&session, &id),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!("image {id} was not READY or FAILED within {timeout} s")
                })??;
                output::image(&image, self.opts.json);
                if image.state == catalog::ImageState::Failed as i32 {
                    bail!("image {id} FAILED: {}", image.failure_reason);
                }
                Ok(())
            }
            ImagesCommand::Url {
                id,
                variant,
                sign,
                ttl,
            } => {
                if sign {
                    let signed = self
                        .catalog()
                        .sign_image_url(self.request(
                            catalog::SignImageUrlRequest {
                                image_id: id,
                                variant: variant.unwrap_or_default(),
                                ttl_seconds: ttl,
                            },
                            Some(&session.access_token),
                        )?)
                        .await
                        .map_err(|status| call_error("signing the image URL", &status))?
                        .into_inner();
                    output::image_url(&signed.url, signed.expire_time.as_ref(), self.opts.json);
                } else {
                    let image = self.get_image(&session, &id).await?;
                    let url = download::asset_url(&image, variant.as_deref())?;
                    output::image_url(&url, None, self.opts.json);
                }
                Ok(())
            }
            ImagesCommand::Download {
                id,
                variant,
                output,
            } => {
                let image = self.get_image(&session, &id).await?;
                let saved = download::run(
                    &self.opts,
                    &session,
                    &image,
                    variant.as_deref(),
                    output.as_deref(),
                )
                .await?;
                output::downloaded(&saved, self.opts.json);
                Ok(())
            }
        }
    }

    async fn get_image(&self, session: &Session, id: &str) -> anyhow::Result<catalog::Image> {
        self.catalog()
            .get_image(self.request(
                catalog::GetImageRequest {
                    image_id: id.to_owned(),
                },
                Some(&session.access_token),
            )?)
            .await
            .map_err(|status| call_error("reading the image", &status))?
            .into_inner()
            .image
            .context("GetImage answered without an image")
    }

    /// Follows `WatchProduct` (with the initial snapshot, so a change between reading and
    /// subscribing is not missed) until the image settles; resubscribes when the stream ends
    /// with a retryable status (the server restarting, or this watcher falling behind).
    async fn wait_for_image(&self, session: &Session, id: &str) -> anyhow::Result<catalog::Image> {
        let image = self.get_image(session, id).await?;
        if settled(&image) {
            return Ok(image);
        }
        let product_id = image.product_id;
        // 200 ms after the first ended watch, doubling, at most 5 s.
        const RESUBSCRIBE: Backoff = match Backoff::exponential(
            Duration::from_millis(200),
            Duration::from_secs(5),
            Jitter::None,
        ) {
            Ok(backoff) => backoff,
            Err(_) => panic!("a valid backoff"),
        };
        let mut ended: u32 = 0;
        loop {
            let mut request = self.request(
                catalog::WatchProductRequest {
                    product_id: product_id.clone(),
                    send_initial: true,
                },
                Some(&session.access_token),
            )?;
            // A watch lives as long as it takes; the outer timeout bounds it.
            request.set_timeout(Duration::from_secs(24 * 3600));
            let outcome = match self.catalog().watch_product(request).await {
                Ok(response) => follow(response.into_inner(), id).await,
                Err(status) => Err(status),
            };
            match outcome {
                Ok(Some(image)) => return Ok(image),
                Ok(None) => bail!("image {id} was deleted"),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::Unknown
                    ) =>
                {
                    tracing::debug!(%status, "watch ended; resubscribing");
                    ended = ended.saturating_add(1);
                    tokio::time::sleep(RESUBSCRIBE.ceiling(ended)).await;
                }
                Err(status) => return Err(call_error("watching the product", &status)),
            }
        }
    }

    pub async fn upload(&self, args: UploadArgs) -> anyhow::Result<()> {
        let session = self.session().await?;
        let created = upload::run(&self.opts, &session, &args).await?;
        output::uploaded(&created, self.opts.json);
        Ok(())
    }
}

/// Reads watch messages until the image settles (`Some`), is deleted or the product goes
/// (`None`), or the stream fails.
async fn follow(
    mut stream: tonic::Streaming<catalog::WatchProductResponse>,
    image_id: &str,
) -> Result<Option<catalog::Image>, tonic::Status> {
    use catalog::watch_product_response::Change;
    while let Some(message) = stream.message().await? {
        match message.change {
            Some(Change::ImageUpdated(image)) if image.id == image_id && settled(&image) => {
                return Ok(Some(image));
            }
            Some(Change::ImageDeletedId(deleted)) if deleted == image_id => return Ok(None),
            Some(Change::ProductDeletedId(_)) => return Ok(None),
            _ => {}
        }
    }
    Err(tonic::Status::unavailable("the watch stream ended"))
}

fn settled(image: &catalog::Image) -> bool {
    image.state == catalog::ImageState::Ready as i32
        || image.state == catalog::ImageState::Failed as i32
}

fn apply_tokens(session: &mut Session, tokens: &auth::TokenPair) {
    session.access_token.clone_from(&tokens.access_token);
    session.access_expires_unix = tokens
        .access_token_expire_time
        .as_ref()
        .map_or(0, |time| time.seconds);
    session.refresh_token.clone_from(&tokens.refresh_token);
    session.refresh_expires_unix = tokens
        .refresh_token_expire_time
        .as_ref()
        .map_or(0, |time| time.seconds);
}

/// A failed call as the user should read it: what we were doing, the server's message and the
/// gRPC code.
fn call_error(doing: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{doing}: {} ({})",
        status.message(),
        storemesh_runtime::error::code_name(status.code())
    )
}

/// `http://host:port` → (false, `host:port`); `https://…` → (true, …).
fn split_gateway_url(url: &str) -> anyhow::Result<(bool, String)> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("gateway {url:?} must start with http:// or https://");
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("gateway {url:?} must be scheme://host:port with no path");
    }
    if storemesh_mesh::config::split_authority(authority).is_none() {
        bail!("gateway {url:?} needs an explicit port, e.g. http://127.0.0.1:50050");
    }
    Ok((tls, authority.to_owned()))
}

fn now_unix() -> i64 {
    i64::try_from(storemesh_runtime::time::since_epoch().as_secs()).unwrap_or(i64::MAX)
}

/// A password from `--password`/`STOREMESH_PASSWORD`, or else the first line of stdin (so it
/// need not appear in the shell history).
pub fn password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(password) = given {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password: pass --password, set STOREMESH_PASSWORD or write it to stdin");
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls() {
        assert_eq!(
            split_gateway_url("http://127.0.0.1:50050").unwrap(),
            (false, "127.0.0.1:50050".to_owned())
        );
        assert_eq!(
            split_gateway_url("https://mesh.example.com:443/").unwrap(),
            (true, "mesh.example.com:443".to_owned())
        );
        for bad in [
            "127.0.0.1:50050",
            "http://",
            "http://host",
            "http://h:1/path",
        ] {
            assert!(split_gateway_url(bad).is_err(), "{bad}");
        }
    }
}
