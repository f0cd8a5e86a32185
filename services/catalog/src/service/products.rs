//! Products: `CreateProduct`, `GetProduct`, `ListProducts`, `UpdateProduct`, `DeleteProduct`
//! and `SetPrimaryImage` (a product field).

use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use storemesh_runtime::auth::caller;
use storemesh_runtime::error::Violations;
use storemesh_runtime::{ServiceError, ServiceResult};
use storemesh_tokens::Identity;
use tonic::{Request, Response, Status};

use super::optimistic::{Round, until_won};
use super::{CatalogApi, change, image_not_found, product_not_found, queue_cleanup, reindex};
use crate::authz;
use crate::model::{ImageState, ProductChanges, ProductRecord, Visibility, new_etag, now_ms};
use crate::paging::{self, Listing};
use crate::store::{Commit, Outcome, keys};
use crate::validate::{self, check_id, is_id};

/// How long a `CreateProduct` request id is remembered.
const REQUEST_ID_TTL_SECS: u64 = 24 * 3600;

fn stale_etag() -> ServiceError {
    ServiceError::Aborted(
        "etag is stale: the product changed since it was read; re-read it and retry".into(),
    )
}

/// The product a repeated `CreateProduct` request id created.
async fn replayed_create(
    api: &CatalogApi,
    subject: &str,
    request_id: &str,
) -> ServiceResult<Option<ProductRecord>> {
    let Some(id) = api.store.requested_product(subject, request_id).await? else {
        return Ok(None);
    };
    match api.store.product(&id).await? {
        Some(product) => Ok(Some(product)),
        None => Err(ServiceError::NotFound(format!(
            "product {id}, created by this request_id, which has since been deleted"
        ))),
    }
}

/// Applies `changes` to a product for `identity`; shared by UpdateProduct and
/// SetPrimaryImage.
async fn apply_changes(
    api: &CatalogApi,
    identity: &Identity,
    id: &str,
    etag: &str,
    changes: &ProductChanges,
) -> ServiceResult<ProductRecord> {
    until_won(|| async {
        let current = api
            .store
            .product(id)
            .await?
            .ok_or_else(|| product_not_found(id))?;
        authz::require_seller_or_admin(identity, &current.seller_id)?;
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
            let image = api
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
        if api.store.commit(commit).await? == Outcome::Committed {
            tracing::info!(product = %id, version = next.version, by = %identity.subject, "product updated");
            return Ok(Round::Done(next));
        }
        // Lost a race: the next round sees the newer state (and a stale etag, if any).
        Ok(Round::LostRace)
    })
    .await
}

pub(super) async fn create(
    api: &CatalogApi,
    request: Request<pb::CreateProductRequest>,
) -> Result<Response<pb::CreateProductResponse>, Status> {
    let identity = caller(&request)?.clone();
    authz::require_product_creator(&identity)?;
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
        && let Some(product) = replayed_create(api, &identity.subject, &request_id).await?
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
    // After the request-id guard, so a repeated request is answered as a repeat even when the
    // seller is at the limit. The seller's index is the count: deletes leave it at once.
    commit.expect_fewer_than(
        "quota",
        keys::seller_products(&product.seller_id),
        api.max_products_per_seller,
    );
    commit.put_hash(keys::product(&product.id), product.to_fields());
    commit.relist(None, Some(&product));
    match api.store.commit(commit).await? {
        Outcome::Committed => {}
        Outcome::Refused(tag) if tag == "request" => {
            // The same request id won a race with this call: answer as a repeat.
            let product = replayed_create(api, &identity.subject, &request_id)
                .await?
                .ok_or_else(|| ServiceError::internal("request id vanished"))?;
            return Ok(Response::new(pb::CreateProductResponse {
                product: Some(product.to_proto()),
            }));
        }
        Outcome::Refused(tag) if tag == "quota" => {
            tracing::info!(seller = %product.seller_id, limit = api.max_products_per_seller, "product quota reached");
            return Err(ServiceError::ResourceExhausted {
                message: format!(
                    "seller {} already has {} products, the most allowed (catalog.max_products_per_seller); delete some first",
                    product.seller_id, api.max_products_per_seller
                ),
                retry_after: None,
            }
            .into());
        }
        Outcome::Refused(tag) => {
            return Err(ServiceError::internal(format!("create refused by guard {tag}")).into());
        }
    }
    tracing::info!(product = %product.id, seller = %product.seller_id, "product created");
    Ok(Response::new(pb::CreateProductResponse {
        product: Some(product.to_proto()),
    }))
}

pub(super) async fn get(
    api: &CatalogApi,
    request: Request<pb::GetProductRequest>,
) -> Result<Response<pb::GetProductResponse>, Status> {
    // A storefront read: callers without a token see published products only.
    let anonymous = authz::storefront_caller_is_anonymous(&request)?;
    let id = request.into_inner().id;
    let mut violations = Violations::new();
    check_id(&mut violations, "id", &id);
    violations.into_result()?;
    let product = api
        .store
        .product(&id)
        .await?
        // The same answer as for a missing product, so a draft's existence stays hidden.
        .filter(|product| authz::product_visible(anonymous, product))
        .ok_or_else(|| product_not_found(&id))?;
    Ok(Response::new(pb::GetProductResponse {
        product: Some(product.to_proto()),
    }))
}

pub(super) async fn list(
    api: &CatalogApi,
    request: Request<pb::ListProductsRequest>,
) -> Result<Response<pb::ListProductsResponse>, Status> {
    // A storefront read: callers without a token list published products only.
    let anonymous = authz::storefront_caller_is_anonymous(&request)?;
    let request = request.into_inner();
    let requested = pb::ProductVisibility::try_from(request.visibility);
    authz::require_token_for_drafts(anonymous, requested == Ok(pb::ProductVisibility::Draft))?;
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
            let (members, more) = api.store.range(&index, after.as_deref(), page_size).await?;
            let next = members.last().filter(|_| more).cloned();
            (members, next)
        }
        // Read from the published indexes alone: drafts are never stepped over.
        Some(Visibility::Published) => {
            let (members, more) = api
                .store
                .range(&keys::published(&index), after.as_deref(), page_size)
                .await?;
            let next = members.last().filter(|_| more).cloned();
            (members, next)
        }
        Some(Visibility::Draft) => {
            api.store
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
    let products: Vec<pb::Product> = api
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

pub(super) async fn update(
    api: &CatalogApi,
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
    let updated = apply_changes(api, &identity, &product.id, &request.etag, &changes).await?;
    Ok(Response::new(pb::UpdateProductResponse {
        product: Some(updated.to_proto()),
    }))
}

pub(super) async fn delete(
    api: &CatalogApi,
    request: Request<pb::DeleteProductRequest>,
) -> Result<Response<pb::DeleteProductResponse>, Status> {
    let identity = caller(&request)?.clone();
    let request = request.into_inner();
    let mut violations = Violations::new();
    check_id(&mut violations, "id", &request.id);
    violations.into_result()?;
    let id = &request.id;
    until_won(|| async {
        let snapshot = api
            .store
            .snapshot(id, true)
            .await?
            .ok_or_else(|| product_not_found(id))?;
        let product = &snapshot.product;
        authz::require_seller_or_admin(&identity, &product.seller_id)?;
        if !request.etag.is_empty() && request.etag != product.etag {
            return Err(stale_etag());
        }
        let mut commit = Commit::new();
        // Every change to the product or its images bumps the counter: nothing changed
        // since the snapshot, so every image and storage key is accounted for.
        commit.expect_counter("changes", keys::product_changes(id), snapshot.changes);
        commit.expect_field(
            "product",
            keys::product(id),
            "version",
            &product.version.to_string(),
        );
        commit.delete(keys::product(id));
        commit.delete(keys::product_images(id));
        commit.relist(Some(product), None);
        for image in &snapshot.images {
            reindex(&mut commit, Some(image), None);
            commit.delete(keys::image(&image.id));
            commit.delete(keys::image_events(&image.id));
            queue_cleanup(&mut commit, image, "product deleted");
        }
        commit.publish(id, change(Change::ProductDeletedId(id.clone()), now_ms()));
        commit.delete(keys::product_changes(id));
        if api.store.commit(commit).await? == Outcome::Committed {
            tracing::info!(product = %id, images = snapshot.images.len(), by = %identity.subject, "product deleted");
            return Ok(Round::Done(()));
        }
        Ok(Round::LostRace)
    })
    .await?;
    Ok(Response::new(pb::DeleteProductResponse {}))
}

pub(super) async fn set_primary_image(
    api: &CatalogApi,
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
    let product =
        apply_changes(api, &identity, &request.product_id, &request.etag, &changes).await?;
    Ok(Response::new(pb::SetPrimaryImageResponse {
        product: Some(product.to_proto()),
    }))
}
