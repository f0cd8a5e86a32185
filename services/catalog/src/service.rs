//! `storemesh.catalog.v1.CatalogService`.
//!
//! Every write follows the same shape: validate the request (all field violations at once),
//! read the records, authorize against them, compute the new records with the pure rules in
//! [`crate::model`], and commit them with guards (see [`crate::store`]). A refused guard means a
//! concurrent change: the handler re-reads and tries again, so conditional requests (with an
//! etag) see `ABORTED` and unconditional ones simply apply on top of the newer state.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use storemesh_image_urls::{self as image_urls, SigningKeys};
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use storemesh_runtime::auth::{Authorize, caller};
use storemesh_runtime::error::Violations;
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::{ServiceError, ServiceResult};
use storemesh_tokens::{Identity, Role, scopes};
use tonic::{Request, Response, Status};

use crate::model::{
    ImageRecord, ImageState, ProductChanges, ProductRecord, Variant, Visibility, new_etag, now_ms,
    timestamp,
};
use crate::paging::{self, Listing};
use crate::store::{Commit, Outcome, Store, keys};
use crate::urls::ImageUrls;
use crate::validate::{self, check_id, is_id};
use crate::watch::{EndReason, Hub, Subscription};

/// How often a write re-reads and retries after losing a race before giving up with
/// `ABORTED`. Each round has a winner, so this bounds the contention a write survives.
const MAX_ATTEMPTS: u32 = 64;
/// How long a `CreateProduct` request id is remembered.
const REQUEST_ID_TTL_SECS: u64 = 24 * 3600;
/// Lifetime of a signed image URL when the request leaves it at 0.
const DEFAULT_SIGNED_URL_TTL_SECS: u64 = 3600;

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
    /// Adds URLs to every image on its way out.
    pub(crate) urls: ImageUrls,
    /// `SignImageUrl`'s keys; `None` when none are configured.
    pub(crate) signing_keys: Option<SigningKeys>,
    pub(crate) _background: Arc<BackgroundGuard>,
}

/// Reads are open to every user and admin, and to service accounts with `catalog.read`.
fn require_reader(identity: &Identity) -> ServiceResult<()> {
    if identity.is_service() {
        identity.require_scope(scopes::CATALOG_READ)
    } else {
        Ok(())
    }
}

/// The storefront reads (`GetProduct`, `ListProducts`, `ListProductImages`) also answer callers
/// without a token
/// (the auth layer passes them on with no identity): whether this caller is one. A caller with
/// a token is a reader as for every other read.
fn storefront_caller_is_anonymous<T>(request: &Request<T>) -> ServiceResult<bool> {
    match request.extensions().get::<Identity>() {
        Some(identity) => require_reader(identity).map(|()| false),
        None => Ok(true),
    }
}

/// Variants and failures are recorded by the thumbnail pipeline's service accounts or admins.
fn require_variant_writer(identity: &Identity) -> ServiceResult<()> {
    if identity.is_admin() {
        Ok(())
    } else {
        identity.require_scope(scopes::CATALOG_WRITE_VARIANTS)
    }
}

fn product_not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("product {id}"))
}

fn image_not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("image {id}"))
}

fn stale_etag() -> ServiceError {
    ServiceError::Aborted(
        "etag is stale: the product changed since it was read; re-read it and retry".into(),
    )
}

fn contended() -> ServiceError {
    ServiceError::Aborted("the record kept changing concurrently; retry".into())
}

/// A short random pause after losing a race, so retrying writers spread out instead of
/// colliding again in lockstep.
async fn after_lost_race(attempt: u32) {
    let ceiling = u64::from(attempt.min(8)) * 2;
    let pause = rand::random::<u64>() % (ceiling + 1);
    if pause > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
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

/// `ListImages` is for operators and background jobs: admins and service accounts with
/// `catalog.read`.
fn require_image_lister(identity: &Identity) -> ServiceResult<()> {
    if identity.is_admin() {
        Ok(())
    } else if identity.is_service() {
        identity.require_scope(scopes::CATALOG_READ)
    } else {
        Err(ServiceError::PermissionDenied(
            "ListImages is for admins and service accounts with scope catalog.read".into(),
        ))
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

impl CatalogApi {
    /// The product a repeated `CreateProduct` request id created.
    async fn replayed_create(
        &self,
        subject: &str,
        request_id: &str,
    ) -> ServiceResult<Option<ProductRecord>> {
        let Some(id) = self.store.requested_product(subject, request_id).await? else {
            return Ok(None);
        };
        match self.store.product(&id).await? {
            Some(product) => Ok(Some(product)),
            None => Err(ServiceError::NotFound(format!(
                "product {id}, created by this request_id, which has since been deleted"
            ))),
        }
    }

    /// Applies `changes` to a product for `identity`; shared by UpdateProduct and
    /// SetPrimaryImage.
    async fn update_product(
        &self,
        identity: &Identity,
        id: &str,
        etag: &str,
        changes: &ProductChanges,
    ) -> ServiceResult<ProductRecord> {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                after_lost_race(attempt).await;
            }
            let current = self
                .store
                .product(id)
                .await?
                .ok_or_else(|| product_not_found(id))?;
            identity.require_owner_or_admin(&current.seller_id)?;
            if !etag.is_empty() && etag != current.etag {
                return Err(stale_etag());
            }
            let mut commit = Commit::new();
            commit.expect_field(
                "product",
                keys::product(id),
                "version",
                &current.version.to_string(),
            );
            if let Some(primary) = changes
                .primary_image_id
                .as_deref()
                .filter(|p| !p.is_empty())
            {
                let image = self
                    .store
                    .image(primary)
                    .await?
                    .ok_or_else(|| image_not_found(primary))?;
                if image.product_id != id {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "image {primary} belongs to another product"
                    )));
                }
                if image.state == ImageState::Failed {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "image {primary} failed processing and cannot be the primary image"
                    )));
                }
                // The image must still be in that state when the change commits.
                commit.expect_field("image", keys::image(primary), "rev", &image.rev.to_string());
            }
            let next = current.updated(changes, now_ms(), new_etag());
            commit.put_hash(keys::product(id), next.to_fields());
            commit.relist(Some(&current), Some(&next));
            commit.publish(
                id,
                change(Change::ProductUpdated(next.to_proto()), next.update_ms),
            );
            if self.store.commit(commit).await? == Outcome::Committed {
                tracing::info!(product = %id, version = next.version, by = %identity.subject, "product updated");
                return Ok(next);
            }
            // Lost a race: the next round sees the newer state (and a stale etag, if any).
        }
        Err(contended())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchProductResponse, Status>> + Send>>;

/// One `WatchProduct` stream: the snapshot, then live changes; see [`crate::watch`].
struct WatchState {
    snapshot: VecDeque<pb::WatchProductResponse>,
    subscription: Subscription,
    /// The product change number already reflected in what was sent.
    last_change: u64,
    sequence: u64,
    finished: bool,
    urls: ImageUrls,
}

impl WatchState {
    /// Numbers `message` for this stream and adds image URLs (changes are published without
    /// them: they are output-only, see [`crate::urls`]).
    fn numbered(&mut self, mut message: pb::WatchProductResponse) -> pb::WatchProductResponse {
        self.sequence += 1;
        message.sequence = self.sequence;
        self.urls.decorate_change(&mut message);
        message
    }

    async fn next(&mut self) -> Option<Result<pb::WatchProductResponse, Status>> {
        if self.finished {
            return None;
        }
        if let Some(message) = self.snapshot.pop_front() {
            return Some(Ok(self.numbered(message)));
        }
        loop {
            let delivery = match self.subscription.next().await {
                Ok(delivery) => delivery,
                Err(reason) => {
                    self.finished = true;
                    return Some(Err(match reason {
                        EndReason::Overflow => Status::aborted(
                            "the watcher fell too far behind and changes were dropped; watch again with send_initial",
                        ),
                        EndReason::FeedLost => Status::unavailable(
                            "the change feed was lost; watch again with send_initial",
                        ),
                        EndReason::ShuttingDown => Status::unavailable(
                            "the server is shutting down; watch again with send_initial",
                        ),
                    }));
                }
            };
            if delivery.change <= self.last_change {
                continue; // already part of the snapshot
            }
            if delivery.change != self.last_change + 1 {
                self.finished = true;
                tracing::warn!(
                    expected = self.last_change + 1,
                    got = delivery.change,
                    "gap in the change feed"
                );
                return Some(Err(Status::unavailable(
                    "the change feed lost changes; watch again with send_initial",
                )));
            }
            self.last_change = delivery.change;
            let message = match pb::WatchProductResponse::decode(delivery.payload.as_slice()) {
                Ok(message) => message,
                Err(error) => {
                    self.finished = true;
                    return Some(Err(ServiceError::internal(error).into()));
                }
            };
            if matches!(message.change, Some(Change::ProductDeletedId(_))) {
                // The last message; the stream then ends with OK.
                self.finished = true;
            }
            return Some(Ok(self.numbered(message)));
        }
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for CatalogApi {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let identity = caller(&request)?.clone();
        identity.require_role(&[Role::Seller, Role::Admin])?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if let Some(problem) = validate::title_problem(&request.title) {
            violations.add("title", problem);
        }
        if let Some(problem) = validate::description_problem(&request.description) {
            violations.add("description", problem);
        }
        validate::price(&mut violations, "price", request.price.as_ref());
        let tags = validate::tags(&mut violations, "tags", &request.tags);
        if !request.request_id.is_empty() && !is_id(&request.request_id) {
            violations.add(
                "request_id",
                "must be at most 64 characters of [A-Za-z0-9_-]",
            );
        }
        violations.into_result()?;
        let request_id = request.request_id;
        if !request_id.is_empty()
            && let Some(product) = self.replayed_create(&identity.subject, &request_id).await?
        {
            return Ok(Response::new(pb::CreateProductResponse {
                product: Some(product.to_proto()),
            }));
        }

        let price = request.price.unwrap_or_default();
        let now = now_ms();
        let product = ProductRecord {
            id: ulid::Ulid::new().to_string(),
            seller_id: identity.subject.clone(),
            title: request.title,
            description: request.description,
            amount_minor: price.amount_minor,
            currency_code: price.currency_code,
            tags,
            primary_image_id: String::new(),
            visibility: Visibility::Draft,
            etag: new_etag(),
            version: 1,
            create_ms: now,
            update_ms: now,
        };
        let mut commit = Commit::new();
        commit.expect_absent("product", keys::product(&product.id));
        if !request_id.is_empty() {
            let key = keys::request(&identity.subject, &request_id);
            commit.expect_absent("request", key.clone());
            commit.set_with_ttl(key, REQUEST_ID_TTL_SECS, &product.id);
        }
        commit.put_hash(keys::product(&product.id), product.to_fields());
        commit.relist(None, Some(&product));
        match self.store.commit(commit).await? {
            Outcome::Committed => {}
            Outcome::Refused(tag) if tag == "request" => {
                // The same request id won a race with this call: answer as a repeat.
                let product = self
                    .replayed_create(&identity.subject, &request_id)
                    .await?
                    .ok_or_else(|| ServiceError::internal("request id vanished"))?;
                return Ok(Response::new(pb::CreateProductResponse {
                    product: Some(product.to_proto()),
                }));
            }
            Outcome::Refused(tag) => {
                return Err(
                    ServiceError::internal(format!("create refused by guard {tag}")).into(),
                );
            }
        }
        tracing::info!(product = %product.id, seller = %product.seller_id, "product created");
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product.to_proto()),
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        // A storefront read: callers without a token see published products only.
        let anonymous = storefront_caller_is_anonymous(&request)?;
        let id = request.into_inner().id;
        let mut violations = Violations::new();
        check_id(&mut violations, "id", &id);
        violations.into_result()?;
        let product = self
            .store
            .product(&id)
            .await?
            // The same answer as for a missing product, so a draft's existence stays hidden.
            .filter(|product| !anonymous || product.is_published())
            .ok_or_else(|| product_not_found(&id))?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(product.to_proto()),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        // A storefront read: callers without a token list published products only.
        let anonymous = storefront_caller_is_anonymous(&request)?;
        let request = request.into_inner();
        let requested = pb::ProductVisibility::try_from(request.visibility);
        if anonymous && requested == Ok(pb::ProductVisibility::Draft) {
            return Err(ServiceError::Unauthenticated(
                "listing draft products requires a bearer access token".into(),
            )
            .into());
        }
        let mut violations = Violations::new();
        let page_size = validate::page_size(&mut violations, request.page_size);
        if !request.seller_id.is_empty() && !is_id(&request.seller_id) {
            violations.add("seller_id", validate::ID_RULE);
        }
        if !request.tag.is_empty() && !validate::is_slug(&request.tag, validate::MAX_TAG_CHARS) {
            violations.add("tag", "must be 1 to 32 characters of [a-z0-9-]");
        }
        if requested.is_err() {
            violations.add(
                "visibility",
                "must be PRODUCT_VISIBILITY_DRAFT, PRODUCT_VISIBILITY_PUBLISHED or unset",
            );
        }
        let visibility = match Visibility::from_proto(request.visibility) {
            None if anonymous => Some(Visibility::Published),
            filter => filter,
        };
        // Tokens are bound to the effective filter: an anonymous listing's token does not
        // continue a signed-in one, which lists more.
        let listing = Listing::Products {
            seller_id: &request.seller_id,
            tag: &request.tag,
            visibility: visibility.map_or("", Visibility::as_str),
        };
        let after = match paging::decode(&listing, &request.page_token) {
            Ok(after) => after,
            Err(error) => {
                violations.add("page_token", error.to_string());
                None
            }
        };
        violations.into_result()?;
        let index = keys::product_index(&request.seller_id, &request.tag);
        let (members, next) = match visibility {
            None => {
                let (members, more) = self
                    .store
                    .range(&index, after.as_deref(), page_size)
                    .await?;
                let next = members.last().filter(|_| more).cloned();
                (members, next)
            }
            // Read from the published indexes alone: drafts are never stepped over.
            Some(Visibility::Published) => {
                let (members, more) = self
                    .store
                    .range(&keys::published(&index), after.as_deref(), page_size)
                    .await?;
                let next = members.last().filter(|_| more).cloned();
                (members, next)
            }
            Some(Visibility::Draft) => {
                self.store
                    .range_drafts(&index, after.as_deref(), page_size)
                    .await?
            }
        };
        let ids: Vec<&str> = members
            .iter()
            .filter_map(|m| paging::member_id(m))
            .collect();
        // A product whose visibility changed between the index read and now is left out, so
        // an anonymous caller never sees a product just turned back into a draft.
        let products: Vec<pb::Product> = self
            .store
            .products(&ids)
            .await?
            .iter()
            .filter(|product| visibility.is_none_or(|wanted| product.visibility == wanted))
            .map(ProductRecord::to_proto)
            .collect();
        let next_page_token = next
            .map(|last| paging::encode(&listing, &last))
            .unwrap_or_default();
        Ok(Response::new(pb::ListProductsResponse {
            products,
            next_page_token,
        }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        let identity = caller(&request)?.clone();
        let request = request.into_inner();
        let mut violations = Violations::new();
        let product = request.product.unwrap_or_default();
        check_id(&mut violations, "product.id", &product.id);
        let mut paths: Vec<String> = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        if paths.is_empty() {
            violations.add(
                "update_mask",
                "must name at least one of: title, description, price, tags, primary_image_id, visibility",
            );
        }
        let mut seen: Vec<String> = Vec::with_capacity(paths.len());
        paths.retain(|path| {
            let first = !seen.contains(path);
            if first {
                seen.push(path.clone());
            }
            first
        });
        let mut changes = ProductChanges::default();
        for path in &paths {
            match path.as_str() {
                "title" => {
                    if let Some(problem) = validate::title_problem(&product.title) {
                        violations.add("product.title", problem);
                    }
                    changes.title = Some(product.title.clone());
                }
                "description" => {
                    if let Some(problem) = validate::description_problem(&product.description) {
                        violations.add("product.description", problem);
                    }
                    changes.description = Some(product.description.clone());
                }
                "price" => {
                    validate::price(&mut violations, "product.price", product.price.as_ref());
                    let price = product.price.clone().unwrap_or_default();
                    changes.price = Some((price.amount_minor, price.currency_code));
                }
                "tags" => {
                    changes.tags = Some(validate::tags(
                        &mut violations,
                        "product.tags",
                        &product.tags,
                    ));
                }
                "primary_image_id" => {
                    if !product.primary_image_id.is_empty() && !is_id(&product.primary_image_id) {
                        violations.add("product.primary_image_id", validate::ID_RULE);
                    }
                    changes.primary_image_id = Some(product.primary_image_id.clone());
                }
                "visibility" => match Visibility::from_proto(product.visibility) {
                    Some(visibility) => changes.visibility = Some(visibility),
                    None => violations.add(
                        "product.visibility",
                        "must be PRODUCT_VISIBILITY_DRAFT or PRODUCT_VISIBILITY_PUBLISHED",
                    ),
                },
                other => violations.add(
                    "update_mask",
                    format!(
                        "`{other}` cannot be updated; allowed paths: {}",
                        validate::UPDATABLE_PATHS.join(", ")
                    ),
                ),
            }
        }
        violations.into_result()?;
        let updated = self
            .update_product(&identity, &product.id, &request.etag, &changes)
            .await?;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(updated.to_proto()),
        }))
    }

    async fn delete_product(
        &self,
        request: Request<pb::DeleteProductRequest>,
    ) -> Result<Response<pb::DeleteProductResponse>, Status> {
        let identity = caller(&request)?.clone();
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "id", &request.id);
        violations.into_result()?;
        let id = request.id;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                after_lost_race(attempt).await;
            }
            let snapshot = self
                .store
                .snapshot(&id, true)
                .await?
                .ok_or_else(|| product_not_found(&id))?;
            let product = &snapshot.product;
            identity.require_owner_or_admin(&product.seller_id)?;
            if !request.etag.is_empty() && request.etag != product.etag {
                return Err(stale_etag().into());
            }
            let mut commit = Commit::new();
            // Every change to the product or its images bumps the counter: nothing changed
            // since the snapshot, so every image and storage key is accounted for.
            commit.expect_counter("changes", keys::product_changes(&id), snapshot.changes);
            commit.expect_field(
                "product",
                keys::product(&id),
                "version",
                &product.version.to_string(),
            );
            commit.delete(keys::product(&id));
            commit.delete(keys::product_images(&id));
            commit.relist(Some(product), None);
            for image in &snapshot.images {
                reindex(&mut commit, Some(image), None);
                commit.delete(keys::image(&image.id));
                commit.delete(keys::image_events(&image.id));
                queue_cleanup(&mut commit, image, "product deleted");
            }
            commit.publish(&id, change(Change::ProductDeletedId(id.clone()), now_ms()));
            commit.delete(keys::product_changes(&id));
            if self.store.commit(commit).await? == Outcome::Committed {
                tracing::info!(product = %id, images = snapshot.images.len(), by = %identity.subject, "product deleted");
                return Ok(Response::new(pb::DeleteProductResponse {}));
            }
        }
        Err(contended().into())
    }

    async fn attach_image(
        &self,
        request: Request<pb::AttachImageRequest>,
    ) -> Result<Response<pb::AttachImageResponse>, Status> {
        let identity = caller(&request)?.clone();
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "product_id", &request.product_id);
        check_id(&mut violations, "image_id", &request.image_id);
        let expected_key = validate::original_key(&request.product_id, &request.image_id);
        if request.storage_key != expected_key {
            violations.add(
                "storage_key",
                "must be products/{product_id}/originals/{image_id}",
            );
        }
        if !validate::CONTENT_TYPES.contains(&request.content_type.as_str()) {
            violations.add(
                "content_type",
                "must be image/jpeg, image/png, image/webp or image/gif",
            );
        }
        if request.size_bytes == 0 {
            violations.add("size_bytes", "must be 1 or more");
        }
        if let Some(problem) = validate::sha256_problem(&request.sha256) {
            violations.add("sha256", problem);
        }
        violations.into_result()?;
        let (product_id, image_id) = (&request.product_id, &request.image_id);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                after_lost_race(attempt).await;
            }
            let (product, existing) = self.store.product_and_image(product_id, image_id).await?;
            let product = product.ok_or_else(|| product_not_found(product_id))?;
            identity.require_owner_or_admin(&product.seller_id)?;
            if let Some(existing) = existing {
                if existing.product_id == *product_id && existing.storage_key == request.storage_key
                {
                    return Ok(Response::new(pb::AttachImageResponse {
                        image: Some(self.urls.image(&existing)),
                    }));
                }
                return Err(ServiceError::AlreadyExists(format!(
                    "image {image_id} (attached to another product)"
                ))
                .into());
            }
            let now = now_ms();
            let image = ImageRecord {
                id: image_id.clone(),
                product_id: product_id.clone(),
                storage_key: request.storage_key.clone(),
                content_type: request.content_type.clone(),
                size_bytes: request.size_bytes,
                sha256: request.sha256.clone(),
                width: request.width,
                height: request.height,
                state: ImageState::Processing,
                failure_reason: String::new(),
                variants: Vec::new(),
                rev: 1,
                create_ms: now,
                update_ms: now,
            };
            let mut commit = Commit::new();
            commit.expect_present("product", keys::product(product_id));
            commit.expect_absent("image", keys::image(image_id));
            commit.expect_fewer_than(
                "full",
                keys::product_images(product_id),
                validate::MAX_IMAGES_PER_PRODUCT,
            );
            commit.put_hash(keys::image(image_id), image.to_fields()?);
            reindex(&mut commit, None, Some(&image));
            commit.index_add(
                keys::product_images(product_id),
                &paging::member(now, image_id),
            );
            commit.publish(
                product_id,
                change(Change::ImageUpdated(image.to_proto()), now),
            );
            match self.store.commit(commit).await? {
                Outcome::Committed => {
                    tracing::info!(product = %product_id, image = %image_id, "image attached");
                    return Ok(Response::new(pb::AttachImageResponse {
                        image: Some(self.urls.image(&image)),
                    }));
                }
                Outcome::Refused(tag) if tag == "full" => {
                    return Err(ServiceError::FailedPrecondition(
                        "the product already has 100 images".into(),
                    )
                    .into());
                }
                Outcome::Refused(_) => {} // re-read: the product is gone or the image exists now
            }
        }
        Err(contended().into())
    }

    async fn record_variant(
        &self,
        request: Request<pb::RecordVariantRequest>,
    ) -> Result<Response<pb::RecordVariantResponse>, Status> {
        let identity = caller(&request)?.clone();
        require_variant_writer(&identity)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "image_id", &request.image_id);
        validate::variant(&mut violations, request.variant.as_ref());
        if let Some(problem) = validate::event_id_problem(&request.event_id, true) {
            violations.add("event_id", problem);
        }
        violations.into_result()?;
        let variant = request.variant.unwrap_or_default();
        let (image_id, event_id) = (&request.image_id, &request.event_id);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                after_lost_race(attempt).await;
            }
            let (image, seen) = self.store.image_and_event(image_id, event_id).await?;
            let image = image.ok_or_else(|| image_not_found(image_id))?;
            if seen {
                // A redelivered event: already applied.
                return Ok(Response::new(pb::RecordVariantResponse {
                    image: Some(self.urls.image(&image)),
                }));
            }
            if image.state == ImageState::Failed {
                return Err(ServiceError::FailedPrecondition(format!(
                    "image {image_id} failed processing; variants can no longer be recorded"
                ))
                .into());
            }
            let extension = validate::format_extension(variant.format).unwrap_or_default();
            let expected_key =
                validate::thumbnail_key(&image.product_id, image_id, &variant.name, extension);
            if variant.storage_key != expected_key {
                return Err(ServiceError::invalid(
                    "variant.storage_key",
                    format!("must be {expected_key} for this image, name and format"),
                )
                .into());
            }
            let next = image.with_variant(
                Variant::from_proto(&variant),
                &self.required_variants,
                now_ms(),
            );
            let mut commit = Commit::new();
            commit.expect_field(
                "image",
                keys::image(image_id),
                "rev",
                &image.rev.to_string(),
            );
            commit.expect_not_member("event", keys::image_events(image_id), event_id);
            if let Some(next) = &next {
                commit.put_hash(keys::image(image_id), next.to_fields()?);
                reindex(&mut commit, Some(&image), Some(next));
                commit.publish(
                    &image.product_id,
                    change(Change::ImageUpdated(next.to_proto()), next.update_ms),
                );
            }
            commit.set_add(keys::image_events(image_id), event_id);
            if self.store.commit(commit).await? == Outcome::Committed {
                let result = next.unwrap_or(image);
                tracing::info!(
                    image = %image_id,
                    variant = %variant.name,
                    state = result.state.as_str(),
                    event = %event_id,
                    "variant recorded"
                );
                return Ok(Response::new(pb::RecordVariantResponse {
                    image: Some(self.urls.image(&result)),
                }));
            }
        }
        Err(contended().into())
    }

    async fn mark_image_failed(
        &self,
        request: Request<pb::MarkImageFailedRequest>,
    ) -> Result<Response<pb::MarkImageFailedResponse>, Status> {
        let identity = caller(&request)?.clone();
        require_variant_writer(&identity)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "image_id", &request.image_id);
        if let Some(problem) = validate::reason_problem(&request.reason) {
            violations.add("reason", problem);
        }
        if let Some(problem) = validate::event_id_problem(&request.event_id, false) {
            violations.add("event_id", problem);
        }
        violations.into_result()?;
        let image_id = &request.image_id;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                after_lost_race(attempt).await;
            }
            let image = self
                .store
                .image(image_id)
                .await?
                .ok_or_else(|| image_not_found(image_id))?;
            match image.state {
                ImageState::Failed => {
                    return Ok(Response::new(pb::MarkImageFailedResponse {
                        image: Some(self.urls.image(&image)),
                    }));
                }
                ImageState::Ready => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "image {image_id} is already READY"
                    ))
                    .into());
                }
                ImageState::Processing => {}
            }
            let now = now_ms();
            let failed = image.failed(&request.reason, now);
            let mut commit = Commit::new();
            commit.expect_field(
                "image",
                keys::image(image_id),
                "rev",
                &image.rev.to_string(),
            );
            commit.put_hash(keys::image(image_id), failed.to_fields()?);
            reindex(&mut commit, Some(&image), Some(&failed));
            commit.publish(
                &image.product_id,
                change(Change::ImageUpdated(failed.to_proto()), now),
            );
            // A failed image cannot stay the primary one.
            if let Some(product) = self.store.product(&image.product_id).await?
                && product.primary_image_id == *image_id
            {
                let cleared = product.updated(
                    &ProductChanges {
                        primary_image_id: Some(String::new()),
                        ..ProductChanges::default()
                    },
                    now,
                    new_etag(),
                );
                commit.expect_field(
                    "product",
                    keys::product(&product.id),
                    "version",
                    &product.version.to_string(),
                );
                commit.put_hash(keys::product(&product.id), cleared.to_fields());
                commit.publish(
                    &product.id,
                    change(Change::ProductUpdated(cleared.to_proto()), now),
                );
            }
            if self.store.commit(commit).await? == Outcome::Committed {
                tracing::info!(image = %image_id, event = %request.event_id, "image marked failed");
                return Ok(Response::new(pb::MarkImageFailedResponse {
                    image: Some(self.urls.image(&failed)),
                }));
            }
        }
        Err(contended().into())
    }

    async fn get_image(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        require_reader(caller(&request)?)?;
        let image_id = request.into_inner().image_id;
        let mut violations = Violations::new();
        check_id(&mut violations, "image_id", &image_id);
        violations.into_result()?;
        let image = self
            .store
            .image(&image_id)
            .await?
            .ok_or_else(|| image_not_found(&image_id))?;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(self.urls.image(&image)),
        }))
    }

    async fn list_product_images(
        &self,
        request: Request<pb::ListProductImagesRequest>,
    ) -> Result<Response<pb::ListProductImagesResponse>, Status> {
        // A storefront read: callers without a token see the READY images of published
        // products only (what the images function serves them).
        let anonymous = storefront_caller_is_anonymous(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "product_id", &request.product_id);
        let page_size = validate::page_size(&mut violations, request.page_size);
        let listing = Listing::Images {
            product_id: &request.product_id,
        };
        let after = match paging::decode(&listing, &request.page_token) {
            Ok(after) => after,
            Err(error) => {
                violations.add("page_token", error.to_string());
                None
            }
        };
        violations.into_result()?;
        if anonymous {
            // The same answer as for a missing product, so a draft's existence stays hidden.
            self.store
                .product(&request.product_id)
                .await?
                .filter(ProductRecord::is_published)
                .ok_or_else(|| product_not_found(&request.product_id))?;
        }
        let (members, more) = self
            .store
            .range(
                &keys::product_images(&request.product_id),
                after.as_deref(),
                page_size,
            )
            .await?;
        let ids: Vec<&str> = members
            .iter()
            .filter_map(|m| paging::member_id(m))
            .collect();
        let (exists, images) = self
            .store
            .product_exists_and_images(&request.product_id, &ids)
            .await?;
        if !exists {
            return Err(product_not_found(&request.product_id).into());
        }
        let next_page_token = match (more, members.last()) {
            (true, Some(last)) => paging::encode(&listing, last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListProductImagesResponse {
            images: images
                .iter()
                .filter(|image| !anonymous || image.state == ImageState::Ready)
                .map(|image| self.urls.image(image))
                .collect(),
            next_page_token,
        }))
    }

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        require_image_lister(caller(&request)?)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let state = match pb::ImageState::try_from(request.state) {
            Ok(pb::ImageState::Processing) => Some(ImageState::Processing),
            Ok(pb::ImageState::Ready) => Some(ImageState::Ready),
            Ok(pb::ImageState::Failed) => Some(ImageState::Failed),
            Ok(pb::ImageState::Unspecified) | Err(_) => {
                violations.add(
                    "state",
                    "must be IMAGE_STATE_PROCESSING, IMAGE_STATE_READY or IMAGE_STATE_FAILED",
                );
                None
            }
        };
        let before_ms = match &request.updated_before {
            None => None,
            Some(time) if time.seconds >= 0 && (0..1_000_000_000).contains(&time.nanos) => {
                Some(time.seconds.saturating_mul(1000) + i64::from(time.nanos / 1_000_000))
            }
            Some(_) => {
                violations.add(
                    "updated_before",
                    "must be a valid timestamp not before 1970 (nanos 0 to 999999999)",
                );
                None
            }
        };
        let page_size = validate::page_size(&mut violations, request.page_size);
        let state_name = state.map_or("", ImageState::as_str);
        let listing = Listing::ImagesByState {
            state: state_name,
            before_ms: before_ms.unwrap_or(-1),
        };
        let after = match paging::decode(&listing, &request.page_token) {
            Ok(after) => after,
            Err(error) => {
                violations.add("page_token", error.to_string());
                None
            }
        };
        violations.into_result()?;
        // Members are `{update_ms:016}:{id}`: everything strictly below `{before_ms:016}:` was
        // updated before the bound.
        let before = before_ms.map(|ms| format!("{:016}:", ms.max(0)));
        let (members, more) = self
            .store
            .range_before(
                &keys::images_in_state(state_name),
                after.as_deref(),
                before.as_deref(),
                page_size,
            )
            .await?;
        let ids: Vec<&str> = members
            .iter()
            .filter_map(|m| paging::member_id(m))
            .collect();
        // An image that changed between the index read and now is skipped if it left the state.
        let images: Vec<pb::Image> = self
            .store
            .images(&ids)
            .await?
            .iter()
            .filter(|image| Some(image.state) == state)
            .map(|image| self.urls.image(image))
            .collect();
        let next_page_token = match (more, members.last()) {
            (true, Some(last)) => paging::encode(&listing, last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListImagesResponse {
            images,
            next_page_token,
        }))
    }

    async fn delete_image(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let identity = caller(&request)?.clone();
        let image_id = request.into_inner().image_id;
        let mut violations = Violations::new();
        check_id(&mut violations, "image_id", &image_id);
        violations.into_result()?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                after_lost_race(attempt).await;
            }
            let image = self
                .store
                .image(&image_id)
                .await?
                .ok_or_else(|| image_not_found(&image_id))?;
            let Some(product) = self.store.product(&image.product_id).await? else {
                continue; // the product is being deleted with its images; re-read
            };
            identity.require_owner_or_admin(&product.seller_id)?;
            let now = now_ms();
            let mut commit = Commit::new();
            commit.expect_field(
                "image",
                keys::image(&image_id),
                "rev",
                &image.rev.to_string(),
            );
            reindex(&mut commit, Some(&image), None);
            commit.delete(keys::image(&image_id));
            commit.delete(keys::image_events(&image_id));
            commit.index_remove(
                keys::product_images(&product.id),
                &paging::member(image.create_ms, &image_id),
            );
            queue_cleanup(&mut commit, &image, "image deleted");
            commit.publish(
                &product.id,
                change(Change::ImageDeletedId(image_id.clone()), now),
            );
            if product.primary_image_id == image_id {
                let cleared = product.updated(
                    &ProductChanges {
                        primary_image_id: Some(String::new()),
                        ..ProductChanges::default()
                    },
                    now,
                    new_etag(),
                );
                commit.expect_field(
                    "product",
                    keys::product(&product.id),
                    "version",
                    &product.version.to_string(),
                );
                commit.put_hash(keys::product(&product.id), cleared.to_fields());
                commit.publish(
                    &product.id,
                    change(Change::ProductUpdated(cleared.to_proto()), now),
                );
            }
            if self.store.commit(commit).await? == Outcome::Committed {
                tracing::info!(image = %image_id, product = %product.id, by = %identity.subject, "image deleted");
                return Ok(Response::new(pb::DeleteImageResponse {}));
            }
        }
        Err(image_not_found(&image_id).into())
    }

    async fn set_primary_image(
        &self,
        request: Request<pb::SetPrimaryImageRequest>,
    ) -> Result<Response<pb::SetPrimaryImageResponse>, Status> {
        let identity = caller(&request)?.clone();
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "product_id", &request.product_id);
        if !request.image_id.is_empty() && !is_id(&request.image_id) {
            violations.add("image_id", validate::ID_RULE);
        }
        violations.into_result()?;
        let changes = ProductChanges {
            primary_image_id: Some(request.image_id),
            ..ProductChanges::default()
        };
        let product = self
            .update_product(&identity, &request.product_id, &request.etag, &changes)
            .await?;
        Ok(Response::new(pb::SetPrimaryImageResponse {
            product: Some(product.to_proto()),
        }))
    }

    type WatchProductStream = WatchStream;

    async fn watch_product(
        &self,
        request: Request<pb::WatchProductRequest>,
    ) -> Result<Response<Self::WatchProductStream>, Status> {
        require_reader(caller(&request)?)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "product_id", &request.product_id);
        violations.into_result()?;
        // Register first, then read: see `crate::watch` for why nothing falls in between.
        let subscription = self.hub.subscribe(&request.product_id, self.watch_buffer)?;
        let snapshot = self
            .store
            .snapshot(&request.product_id, request.send_initial)
            .await?
            .ok_or_else(|| product_not_found(&request.product_id))?;
        let mut messages = VecDeque::new();
        if request.send_initial {
            let now = now_ms();
            let snapshot_message = |change: Change| pb::WatchProductResponse {
                change: Some(change),
                sequence: 0,
                time: Some(timestamp(now)),
            };
            messages.push_back(snapshot_message(Change::ProductUpdated(
                snapshot.product.to_proto(),
            )));
            for image in &snapshot.images {
                messages.push_back(snapshot_message(Change::ImageUpdated(image.to_proto())));
            }
        }
        tracing::debug!(product = %request.product_id, send_initial = request.send_initial, "watch started");
        let state = WatchState {
            snapshot: messages,
            subscription,
            last_change: snapshot.changes,
            sequence: 0,
            finished: false,
            urls: self.urls.clone(),
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn sign_image_url(
        &self,
        request: Request<pb::SignImageUrlRequest>,
    ) -> Result<Response<pb::SignImageUrlResponse>, Status> {
        let identity = caller(&request)?.clone();
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_id(&mut violations, "image_id", &request.image_id);
        if !request.variant.is_empty()
            && !validate::is_slug(&request.variant, validate::MAX_VARIANT_NAME_CHARS)
        {
            violations.add(
                "variant",
                "must be empty (the original) or 1 to 32 characters of [a-z0-9-]",
            );
        }
        let ttl = match u64::from(request.ttl_seconds) {
            0 => DEFAULT_SIGNED_URL_TTL_SECS,
            ttl if ttl > image_urls::MAX_TTL_SECS => {
                violations.add("ttl_seconds", "must be at most 604800 (7 days)");
                ttl
            }
            ttl => ttl,
        };
        violations.into_result()?;
        let image_id = &request.image_id;
        let image = self
            .store
            .image(image_id)
            .await?
            .ok_or_else(|| image_not_found(image_id))?;
        // An image whose product is gone is being deleted with it.
        let product = self
            .store
            .product(&image.product_id)
            .await?
            .ok_or_else(|| image_not_found(image_id))?;
        identity.require_owner_or_admin(&product.seller_id)?;
        let Some(keys) = &self.signing_keys else {
            return Err(ServiceError::FailedPrecondition(
                "no image URL signing key is configured".into(),
            )
            .into());
        };
        let path = if request.variant.is_empty() {
            image_urls::original_path(image_id)
        } else {
            let variant = image
                .variants
                .iter()
                .find(|variant| variant.name == request.variant)
                .ok_or_else(|| {
                    ServiceError::NotFound(format!(
                        "variant {} of image {image_id}",
                        request.variant
                    ))
                })?;
            let extension = validate::format_extension(variant.format).ok_or_else(|| {
                ServiceError::internal(format!(
                    "stored variant {} of image {image_id} has an unknown format",
                    variant.name
                ))
            })?;
            image_urls::variant_path(image_id, &variant.name, extension)
        };
        let now_secs = u64::try_from(now_ms() / 1000).unwrap_or_default();
        let expires = now_secs.saturating_add(ttl);
        let url_path = keys.sign(&path, expires);
        // The URL itself is a credential: logged without its signature.
        tracing::info!(image = %image_id, path = %path, expires, by = %identity.subject, "image URL signed");
        Ok(Response::new(pb::SignImageUrlResponse {
            url: self.urls.absolute(&url_path),
            url_path,
            expire_time: Some(prost_types::Timestamp {
                seconds: i64::try_from(expires).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        }))
    }
}
