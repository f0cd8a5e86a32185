//! Images: `AttachImage`, `RecordVariant`, `MarkImageFailed`, `GetImage`,
//! `ListProductImages`, `ListImages`, `DeleteImage` and `SignImageUrl`.

use storemesh_image_urls as image_urls;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use storemesh_runtime::ServiceError;
use storemesh_runtime::auth::caller;
use storemesh_runtime::error::Violations;
use tonic::{Request, Response, Status};

use super::optimistic::{Round, until_won, until_won_or};
use super::{CatalogApi, change, image_not_found, product_not_found, queue_cleanup, reindex};
use crate::authz;
use crate::model::{
    ImageRecord, ImageState, ProductChanges, ProductRecord, Variant, new_etag, now_ms,
};
use crate::paging::{self, Listing};
use crate::store::{Commit, Outcome, keys};
use crate::validate::{self, check_id};

/// Lifetime of a signed image URL when the request leaves it at 0.
const DEFAULT_SIGNED_URL_TTL_SECS: u64 = 3600;

pub(super) async fn attach(
    api: &CatalogApi,
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
    let image = until_won(|| async {
        let (product, existing) = api.store.product_and_image(product_id, image_id).await?;
        let product = product.ok_or_else(|| product_not_found(product_id))?;
        authz::require_seller_or_admin(&identity, &product.seller_id)?;
        if let Some(existing) = existing {
            if existing.product_id == *product_id && existing.storage_key == request.storage_key {
                return Ok(Round::Done(existing));
            }
            return Err(ServiceError::AlreadyExists(format!(
                "image {image_id} (attached to another product)"
            )));
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
        match api.store.commit(commit).await? {
            Outcome::Committed => {
                tracing::info!(product = %product_id, image = %image_id, "image attached");
                Ok(Round::Done(image))
            }
            Outcome::Refused(tag) if tag == "full" => Err(ServiceError::FailedPrecondition(
                "the product already has 100 images".into(),
            )),
            // Re-read: the product is gone or the image exists now.
            Outcome::Refused(_) => Ok(Round::LostRace),
        }
    })
    .await?;
    Ok(Response::new(pb::AttachImageResponse {
        image: Some(api.urls.image(&image)),
    }))
}

pub(super) async fn record_variant(
    api: &CatalogApi,
    request: Request<pb::RecordVariantRequest>,
) -> Result<Response<pb::RecordVariantResponse>, Status> {
    let identity = caller(&request)?.clone();
    authz::require_variant_writer(&identity)?;
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
    let image = until_won(|| async {
        let (image, seen) = api.store.image_and_event(image_id, event_id).await?;
        let image = image.ok_or_else(|| image_not_found(image_id))?;
        if seen {
            // A redelivered event: already applied.
            return Ok(Round::Done(image));
        }
        if image.state == ImageState::Failed {
            return Err(ServiceError::FailedPrecondition(format!(
                "image {image_id} failed processing; variants can no longer be recorded"
            )));
        }
        let extension = validate::format_extension(variant.format).unwrap_or_default();
        let expected_key =
            validate::thumbnail_key(&image.product_id, image_id, &variant.name, extension);
        if variant.storage_key != expected_key {
            return Err(ServiceError::invalid(
                "variant.storage_key",
                format!("must be {expected_key} for this image, name and format"),
            ));
        }
        let next = image.with_variant(
            Variant::from_proto(&variant),
            &api.required_variants,
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
        if api.store.commit(commit).await? == Outcome::Committed {
            let result = next.unwrap_or(image);
            tracing::info!(
                image = %image_id,
                variant = %variant.name,
                state = result.state.as_str(),
                event = %event_id,
                "variant recorded"
            );
            return Ok(Round::Done(result));
        }
        Ok(Round::LostRace)
    })
    .await?;
    Ok(Response::new(pb::RecordVariantResponse {
        image: Some(api.urls.image(&image)),
    }))
}

pub(super) async fn mark_failed(
    api: &CatalogApi,
    request: Request<pb::MarkImageFailedRequest>,
) -> Result<Response<pb::MarkImageFailedResponse>, Status> {
    let identity = caller(&request)?.clone();
    authz::require_variant_writer(&identity)?;
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
    let image = until_won(|| async {
        let image = api
            .store
            .image(image_id)
            .await?
            .ok_or_else(|| image_not_found(image_id))?;
        match image.state {
            ImageState::Failed => return Ok(Round::Done(image)),
            ImageState::Ready => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "image {image_id} is already READY"
                )));
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
        if let Some(product) = api.store.product(&image.product_id).await?
            && product.primary_image_id == *image_id
        {
            clear_primary_image(&mut commit, &product, now);
        }
        if api.store.commit(commit).await? == Outcome::Committed {
            tracing::info!(image = %image_id, event = %request.event_id, "image marked failed");
            return Ok(Round::Done(failed));
        }
        Ok(Round::LostRace)
    })
    .await?;
    Ok(Response::new(pb::MarkImageFailedResponse {
        image: Some(api.urls.image(&image)),
    }))
}

/// Adds to `commit` the change of `product` that leaves it without a primary image (its
/// primary image failed or is deleted), guarded by the product's version.
fn clear_primary_image(commit: &mut Commit, product: &ProductRecord, now: i64) {
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

pub(super) async fn get(
    api: &CatalogApi,
    request: Request<pb::GetImageRequest>,
) -> Result<Response<pb::GetImageResponse>, Status> {
    authz::require_reader(caller(&request)?)?;
    let image_id = request.into_inner().image_id;
    let mut violations = Violations::new();
    check_id(&mut violations, "image_id", &image_id);
    violations.into_result()?;
    let image = api
        .store
        .image(&image_id)
        .await?
        .ok_or_else(|| image_not_found(&image_id))?;
    Ok(Response::new(pb::GetImageResponse {
        image: Some(api.urls.image(&image)),
    }))
}

pub(super) async fn list_of_product(
    api: &CatalogApi,
    request: Request<pb::ListProductImagesRequest>,
) -> Result<Response<pb::ListProductImagesResponse>, Status> {
    // A storefront read: callers without a token see the READY images of published
    // products only (what the images function serves them).
    let anonymous = authz::storefront_caller_is_anonymous(&request)?;
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
        api.store
            .product(&request.product_id)
            .await?
            .filter(|product| authz::product_visible(anonymous, product))
            .ok_or_else(|| product_not_found(&request.product_id))?;
    }
    let (members, more) = api
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
    let (exists, images) = api
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
            .filter(|image| authz::image_visible(anonymous, image))
            .map(|image| api.urls.image(image))
            .collect(),
        next_page_token,
    }))
}

pub(super) async fn list_by_state(
    api: &CatalogApi,
    request: Request<pb::ListImagesRequest>,
) -> Result<Response<pb::ListImagesResponse>, Status> {
    authz::require_image_lister(caller(&request)?)?;
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
    let (members, more) = api
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
    let images: Vec<pb::Image> = api
        .store
        .images(&ids)
        .await?
        .iter()
        .filter(|image| Some(image.state) == state)
        .map(|image| api.urls.image(image))
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

pub(super) async fn delete(
    api: &CatalogApi,
    request: Request<pb::DeleteImageRequest>,
) -> Result<Response<pb::DeleteImageResponse>, Status> {
    let identity = caller(&request)?.clone();
    let image_id = request.into_inner().image_id;
    let mut violations = Violations::new();
    check_id(&mut violations, "image_id", &image_id);
    violations.into_result()?;
    let image_id = &image_id;
    until_won_or(
        || async {
            let image = api
                .store
                .image(image_id)
                .await?
                .ok_or_else(|| image_not_found(image_id))?;
            let Some(product) = api.store.product(&image.product_id).await? else {
                // The product is being deleted with its images; re-read.
                return Ok(Round::LostRace);
            };
            authz::require_seller_or_admin(&identity, &product.seller_id)?;
            let now = now_ms();
            let mut commit = Commit::new();
            commit.expect_field(
                "image",
                keys::image(image_id),
                "rev",
                &image.rev.to_string(),
            );
            reindex(&mut commit, Some(&image), None);
            commit.delete(keys::image(image_id));
            commit.delete(keys::image_events(image_id));
            commit.index_remove(
                keys::product_images(&product.id),
                &paging::member(image.create_ms, image_id),
            );
            queue_cleanup(&mut commit, &image, "image deleted");
            commit.publish(
                &product.id,
                change(Change::ImageDeletedId(image_id.clone()), now),
            );
            if product.primary_image_id == *image_id {
                clear_primary_image(&mut commit, &product, now);
            }
            if api.store.commit(commit).await? == Outcome::Committed {
                tracing::info!(image = %image_id, product = %product.id, by = %identity.subject, "image deleted");
                return Ok(Round::Done(()));
            }
            Ok(Round::LostRace)
        },
        // Still contended after every round: the image is going away with its product.
        || image_not_found(image_id),
    )
    .await?;
    Ok(Response::new(pb::DeleteImageResponse {}))
}

pub(super) async fn sign_url(
    api: &CatalogApi,
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
    let image = api
        .store
        .image(image_id)
        .await?
        .ok_or_else(|| image_not_found(image_id))?;
    // An image whose product is gone is being deleted with it.
    let product = api
        .store
        .product(&image.product_id)
        .await?
        .ok_or_else(|| image_not_found(image_id))?;
    authz::require_seller_or_admin(&identity, &product.seller_id)?;
    let Some(keys) = &api.signing_keys else {
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
                ServiceError::NotFound(format!("variant {} of image {image_id}", request.variant))
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
        url: api.urls.absolute(&url_path),
        url_path,
        expire_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(expires).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }))
}
