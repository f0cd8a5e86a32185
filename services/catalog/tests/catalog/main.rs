//! The catalog service over real gRPC, against a real redis-server and the real auth service
//! (tokens minted by Register/Login/IssueServiceToken, verified by the shared layer).
#![allow(clippy::unwrap_used)]

mod harness;

mod authorization;
mod cleanup;
mod image_urls;
mod images;
mod list_images;
mod products;
mod quotas;
mod storefront;
mod validation;
mod watch;
