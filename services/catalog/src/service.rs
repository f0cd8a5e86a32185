//! `storemesh.catalog.v1.CatalogService`.
//!
//! Every write follows the same shape: validate the request (all field violations at once),
//! read the records, authorize against them ([`crate::authz`]), compute the new records with
//! the pure rules in [`crate::model`], and commit them with guards (see [`crate::store`]). A
//! refused guard means a concurrent change: the handler re-reads and tries again
//! ([`optimistic`]), so conditional requests (with an etag) see `ABORTED` and unconditional
//! ones simply apply on top of the newer state.
//!
//! The handlers are grouped by resource: [`products`], [`images`] (with `SignImageUrl`) and
//! [`watch`] (`WatchProduct`); the trait implementation here only hands each call to them.

mod images;
mod optimistic;
mod products;
mod watch;

use std::sync::Arc;

use prost::Message;
use storemesh_image_urls::SigningKeys;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use storemesh_runtime::ServiceError;
use storemesh_runtime::shutdown::Shutdown;
use tonic::{Request, Response, Status};

use crate::model::{ImageRecord, timestamp};
use crate::paging;
use crate::store::{Commit, Store, keys};
use crate::urls::ImageUrls;
use crate::watch::Hub;

/// Stops the background tasks (change feed, clean-up worker) when the service is dropped,
/// i.e. when its host has stopped.
pub(crate) struct BackgroundGuard(pub(crate) Shutdown);

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

pub struct CatalogApi {
    pub(crate) store: Store,
    pub(crate) hub: Arc<Hub>,
    /// Variant names an image needs to be `READY`.
    pub(crate) required_variants: Arc<Vec<String>>,
    pub(crate) watch_buffer: usize,
    /// `WatchProduct` streams one identity may hold open on this process.
    pub(crate) max_watch_streams_per_identity: usize,
    /// `CreateProduct` refuses a seller who owns this many products.
    pub(crate) max_products_per_seller: usize,
    /// Adds URLs to every image on its way out.
    pub(crate) urls: ImageUrls,
    /// `SignImageUrl`'s keys; `None` when none are configured.
    pub(crate) signing_keys: Option<SigningKeys>,
    pub(crate) _background: Arc<BackgroundGuard>,
}

fn product_not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("product {id}"))
}

fn image_not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("image {id}"))
}

/// An encoded change for watchers (they set `sequence` per stream).
fn change(change: Change, time_ms: i64) -> Vec<u8> {
    pb::WatchProductResponse {
        change: Some(change),
        sequence: 0,
        time: Some(timestamp(time_ms)),
    }
    .encode_to_vec()
}

/// Moves an image between the per-state indexes `ListImages` reads: out of the old record's
/// state and update time, into the new one's (either may be absent: attach, delete).
fn reindex(commit: &mut Commit, old: Option<&ImageRecord>, new: Option<&ImageRecord>) {
    if let Some(old) = old {
        commit.index_remove(
            keys::images_in_state(old.state.as_str()),
            &paging::member(old.update_ms, &old.id),
        );
    }
    if let Some(new) = new {
        commit.index_add(
            keys::images_in_state(new.state.as_str()),
            &paging::member(new.update_ms, &new.id),
        );
    }
}

/// Queues the deletion of every stored object of `image` in the clean-up outbox.
fn queue_cleanup(commit: &mut Commit, image: &ImageRecord, reason: &str) {
    for key in image.storage_keys() {
        commit.stream_add(
            keys::CLEANUP_STREAM.to_owned(),
            &[
                ("key", &key),
                ("product_id", &image.product_id),
                ("image_id", &image.id),
                ("reason", reason),
            ],
        );
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for CatalogApi {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        products::create(self, request).await
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        products::get(self, request).await
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        products::list(self, request).await
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        products::update(self, request).await
    }

    async fn delete_product(
        &self,
        request: Request<pb::DeleteProductRequest>,
    ) -> Result<Response<pb::DeleteProductResponse>, Status> {
        products::delete(self, request).await
    }

    async fn attach_image(
        &self,
        request: Request<pb::AttachImageRequest>,
    ) -> Result<Response<pb::AttachImageResponse>, Status> {
        images::attach(self, request).await
    }

    async fn record_variant(
        &self,
        request: Request<pb::RecordVariantRequest>,
    ) -> Result<Response<pb::RecordVariantResponse>, Status> {
        images::record_variant(self, request).await
    }

    async fn mark_image_failed(
        &self,
        request: Request<pb::MarkImageFailedRequest>,
    ) -> Result<Response<pb::MarkImageFailedResponse>, Status> {
        images::mark_failed(self, request).await
    }

    async fn get_image(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        images::get(self, request).await
    }

    async fn list_product_images(
        &self,
        request: Request<pb::ListProductImagesRequest>,
    ) -> Result<Response<pb::ListProductImagesResponse>, Status> {
        images::list_of_product(self, request).await
    }

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        images::list_by_state(self, request).await
    }

    async fn delete_image(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        images::delete(self, request).await
    }

    async fn set_primary_image(
        &self,
        request: Request<pb::SetPrimaryImageRequest>,
    ) -> Result<Response<pb::SetPrimaryImageResponse>, Status> {
        products::set_primary_image(self, request).await
    }

    type WatchProductStream = watch::WatchStream;

    async fn watch_product(
        &self,
        request: Request<pb::WatchProductRequest>,
    ) -> Result<Response<Self::WatchProductStream>, Status> {
        watch::watch_product(self, request).await
    }

    async fn sign_image_url(
        &self,
        request: Request<pb::SignImageUrlRequest>,
    ) -> Result<Response<pb::SignImageUrlResponse>, Status> {
        images::sign_url(self, request).await
    }
}
