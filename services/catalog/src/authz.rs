//! Who may do what in the catalog. Every rule is a pure function of the caller's identity and,
//! for a product and its images, the product's seller, so each is tested here on its own; the
//! handlers in [`crate::service`] apply them after reading the records they are about.
//!
//! | caller | may |
//! |---|---|
//! | anyone, without a token | the storefront reads (`GetProduct`, `ListProducts`, `ListProductImages`) of published products, and only their `READY` images |
//! | every user and admin; service accounts with `catalog.read` | every read, drafts included (`GetImage`, `WatchProduct`, the storefront reads) |
//! | sellers and admins | `CreateProduct` |
//! | the product's seller, or an admin | changing and deleting the product and its images, `SignImageUrl` |
//! | admins; service accounts with `catalog.write:variants` | `RecordVariant`, `MarkImageFailed` |
//! | admins; service accounts with `catalog.read` | `ListImages` |

use storemesh_runtime::auth::Authorize;
use storemesh_runtime::{ServiceError, ServiceResult};
use storemesh_tokens::{Identity, Role, scopes};
use tonic::Request;

use crate::model::{ImageRecord, ImageState, ProductRecord};

/// Reads are open to every user and admin, and to service accounts with `catalog.read`.
pub fn require_reader(identity: &Identity) -> ServiceResult<()> {
    if identity.is_service() {
        identity.require_scope(scopes::CATALOG_READ)
    } else {
        Ok(())
    }
}

/// The storefront reads (`GetProduct`, `ListProducts`, `ListProductImages`) also answer callers
/// without a token (the auth layer passes them on with no identity): whether this caller is
/// one. A caller with a token is a reader as for every other read.
pub fn storefront_caller_is_anonymous<T>(request: &Request<T>) -> ServiceResult<bool> {
    storefront_caller(request.extensions().get::<Identity>())
}

/// [`storefront_caller_is_anonymous`] for the identity the auth layer found, if any.
pub fn storefront_caller(identity: Option<&Identity>) -> ServiceResult<bool> {
    match identity {
        Some(identity) => require_reader(identity).map(|()| false),
        None => Ok(true),
    }
}

/// Anonymous callers list published products only: asking for drafts needs a token.
pub fn require_token_for_drafts(anonymous: bool, drafts_requested: bool) -> ServiceResult<()> {
    if anonymous && drafts_requested {
        Err(ServiceError::Unauthenticated(
            "listing draft products requires a bearer access token".into(),
        ))
    } else {
        Ok(())
    }
}

/// Whether a storefront caller sees `product`: anonymous callers see published products only
/// (and get the answer for a missing product otherwise, so a draft's existence stays hidden).
pub fn product_visible(anonymous: bool, product: &ProductRecord) -> bool {
    !anonymous || product.is_published()
}

/// Whether a storefront caller sees `image` of a visible product: anonymous callers see
/// `READY` images only (what the images function serves them).
pub fn image_visible(anonymous: bool, image: &ImageRecord) -> bool {
    !anonymous || image.state == ImageState::Ready
}

/// Products are created by sellers (for themselves) and admins.
pub fn require_product_creator(identity: &Identity) -> ServiceResult<()> {
    identity.require_role(&[Role::Seller, Role::Admin])
}

/// A product and its images are changed by the product's seller or an admin; a service
/// account never owns a product, even one whose client id equals the seller's id.
pub fn require_seller_or_admin(identity: &Identity, seller_id: &str) -> ServiceResult<()> {
    identity.require_owner_or_admin(seller_id)
}

/// Variants and failures are recorded by the thumbnail pipeline's service accounts or admins.
pub fn require_variant_writer(identity: &Identity) -> ServiceResult<()> {
    if identity.is_admin() {
        Ok(())
    } else {
        identity.require_scope(scopes::CATALOG_WRITE_VARIANTS)
    }
}

/// `ListImages` is for operators and background jobs: admins and service accounts with
/// `catalog.read`.
pub fn require_image_lister(identity: &Identity) -> ServiceResult<()> {
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

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::model::Visibility;

    fn identity(role: Role, subject: &str, granted: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            role,
            scopes: granted.iter().map(|s| (*s).to_owned()).collect(),
            token_id: "t".into(),
            expires_at: 0,
        }
    }

    fn seller(subject: &str) -> Identity {
        identity(Role::Seller, subject, &[])
    }

    fn customer() -> Identity {
        identity(Role::Customer, "c", &[])
    }

    fn admin() -> Identity {
        identity(Role::Admin, "a", &[])
    }

    fn service(granted: &[&str]) -> Identity {
        identity(Role::Service, "svc", granted)
    }

    fn product(visibility: Visibility) -> ProductRecord {
        ProductRecord {
            id: "p".into(),
            seller_id: "s".into(),
            title: "t".into(),
            description: String::new(),
            amount_minor: 100,
            currency_code: "EUR".into(),
            tags: Vec::new(),
            primary_image_id: String::new(),
            visibility,
            etag: "e".into(),
            version: 1,
            create_ms: 0,
            update_ms: 0,
        }
    }

    fn image(state: ImageState) -> ImageRecord {
        ImageRecord {
            id: "i".into(),
            product_id: "p".into(),
            storage_key: "products/p/originals/i".into(),
            content_type: "image/jpeg".into(),
            size_bytes: 1,
            sha256: String::new(),
            width: 1,
            height: 1,
            state,
            failure_reason: String::new(),
            variants: Vec::new(),
            rev: 1,
            create_ms: 0,
            update_ms: 0,
        }
    }

    fn denied(result: ServiceResult<()>) -> String {
        let error = result.unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied, "{error}");
        error.to_string()
    }

    #[test]
    fn readers_are_users_admins_and_services_with_catalog_read() {
        for reader in [
            customer(),
            seller("s"),
            admin(),
            service(&[scopes::CATALOG_READ]),
        ] {
            assert!(require_reader(&reader).is_ok(), "{reader:?}");
        }
        let message = denied(require_reader(&service(&[scopes::CATALOG_WRITE_VARIANTS])));
        assert!(message.contains("requires scope catalog.read"), "{message}");
    }

    #[test]
    fn storefront_callers_without_a_token_are_anonymous() {
        assert!(storefront_caller(None).unwrap());
        assert!(!storefront_caller(Some(&customer())).unwrap());
        assert!(!storefront_caller(Some(&service(&[scopes::CATALOG_READ]))).unwrap());
        // A token that is not a reader's is refused, not treated as anonymous.
        denied(storefront_caller(Some(&service(&[]))).map(drop));

        let mut request = Request::new(());
        assert!(storefront_caller_is_anonymous(&request).unwrap());
        request.extensions_mut().insert(seller("s"));
        assert!(!storefront_caller_is_anonymous(&request).unwrap());
    }

    #[test]
    fn anonymous_callers_see_published_products_and_ready_images_only() {
        let draft = product(Visibility::Draft);
        assert!(!product_visible(true, &draft));
        assert!(product_visible(false, &draft));
        assert!(product_visible(true, &product(Visibility::Published)));

        for (state, anonymous_sees) in [
            (ImageState::Processing, false),
            (ImageState::Failed, false),
            (ImageState::Ready, true),
        ] {
            let image = image(state);
            assert_eq!(image_visible(true, &image), anonymous_sees, "{state:?}");
            assert!(image_visible(false, &image), "{state:?}");
        }

        let error = require_token_for_drafts(true, true).unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
        assert!(error.to_string().contains("requires a bearer access token"));
        assert!(require_token_for_drafts(true, false).is_ok());
        assert!(require_token_for_drafts(false, true).is_ok());
    }

    #[test]
    fn sellers_and_admins_create_products() {
        assert!(require_product_creator(&seller("s")).is_ok());
        assert!(require_product_creator(&admin()).is_ok());
        for other in [customer(), service(&[scopes::CATALOG_READ])] {
            let message = denied(require_product_creator(&other));
            assert!(
                message.contains("requires role seller or admin"),
                "{message}"
            );
        }
    }

    #[test]
    fn products_are_changed_by_their_seller_or_an_admin() {
        assert!(require_seller_or_admin(&seller("s"), "s").is_ok());
        assert!(require_seller_or_admin(&admin(), "s").is_ok());
        denied(require_seller_or_admin(&seller("t"), "s"));
        denied(require_seller_or_admin(&customer(), "s"));
        // A service account whose client id equals a seller's id owns nothing.
        let impostor = identity(Role::Service, "s", &[scopes::CATALOG_WRITE_VARIANTS]);
        let message = denied(require_seller_or_admin(&impostor, "s"));
        assert!(message.contains("only the owner or an admin"), "{message}");
    }

    #[test]
    fn variants_are_written_by_admins_and_the_thumbnail_pipeline() {
        assert!(require_variant_writer(&admin()).is_ok());
        assert!(require_variant_writer(&service(&[scopes::CATALOG_WRITE_VARIANTS])).is_ok());
        for other in [seller("s"), customer(), service(&[scopes::CATALOG_READ])] {
            let message = denied(require_variant_writer(&other));
            assert!(
                message.contains("requires scope catalog.write:variants"),
                "{message}"
            );
        }
    }

    #[test]
    fn images_are_listed_by_admins_and_reading_services() {
        assert!(require_image_lister(&admin()).is_ok());
        assert!(require_image_lister(&service(&[scopes::CATALOG_READ])).is_ok());
        let message = denied(require_image_lister(&service(&[
            scopes::CATALOG_WRITE_VARIANTS,
        ])));
        assert!(message.contains("requires scope catalog.read"), "{message}");
        for user in [seller("s"), customer()] {
            let message = denied(require_image_lister(&user));
            assert!(message.contains("ListImages is for admins"), "{message}");
        }
    }
}
