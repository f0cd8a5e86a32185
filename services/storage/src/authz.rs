//! Who may do what (the rules are listed in the crate docs and the contract's header).
//!
//! The decision is pure ([`write_decision`]); only "does this seller own the product" needs
//! the catalog, behind the [`ProductOwners`] trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use storemesh_mesh::MeshChannel;
use storemesh_proto::catalog::v1::GetProductRequest;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_runtime::auth::{Identity, Role, scopes};
use storemesh_runtime::{ServiceError, ServiceResult};

use crate::keys::{self, KeyClass};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Upload,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow,
    Deny(&'static str),
    /// Allowed if the caller is the seller of this product.
    IfOwner(&'a str),
}

const SERVICE_READ: &str = "service accounts need scope storage.read";
const SHOPPER_READ: &str = "storage reads are for the product's seller, admins and services; \
     shoppers get images through the images function";

/// Read access (`Download`, `Stat`) to `key`, before any ownership lookup: admins; service
/// accounts with `storage.read` (the thumbnail and images functions, the dispatcher); a seller
/// for keys under `products/{product_id}/` of a product they own. Storage cannot tell whether
/// a product is published, so everyone else (shoppers, other sellers) is refused: published
/// variants reach them through the `images` function, which reads with its service identity.
pub fn read_decision<'a>(identity: &Identity, key: &'a str) -> Decision<'a> {
    if identity.is_admin() {
        return Decision::Allow;
    }
    if identity.is_service() {
        return if identity.has_scope(scopes::STORAGE_READ) {
            Decision::Allow
        } else {
            Decision::Deny(SERVICE_READ)
        };
    }
    match keys::product_of(key) {
        Some(product_id) if identity.role == Role::Seller && keys::is_catalog_id(product_id) => {
            Decision::IfOwner(product_id)
        }
        _ => Decision::Deny(SHOPPER_READ),
    }
}

/// Read access for `List` under `prefix` (a plain byte prefix): as [`read_decision`], where a
/// seller must name one product, `products/{product_id}/…`, so no listing spans another
/// seller's keys.
pub fn list_decision<'a>(identity: &Identity, prefix: &'a str) -> Decision<'a> {
    if identity.is_admin() || identity.is_service() {
        return read_decision(identity, "");
    }
    let product = prefix
        .strip_prefix("products/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(product_id, _)| product_id);
    match product {
        Some(product_id) if identity.role == Role::Seller && keys::is_catalog_id(product_id) => {
            Decision::IfOwner(product_id)
        }
        _ if identity.role == Role::Seller => {
            Decision::Deny("sellers list under products/{product_id}/ of their own products only")
        }
        _ => Decision::Deny(SHOPPER_READ),
    }
}

/// Resolves a [`Decision`], asking `owners` when it depends on product ownership.
pub async fn require(
    decision: Decision<'_>,
    identity: &Identity,
    bearer: Option<&str>,
    owners: &dyn ProductOwners,
) -> ServiceResult<()> {
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny(why) => Err(ServiceError::PermissionDenied(why.into())),
        Decision::IfOwner(product_id) => match owners.seller_of(product_id, bearer).await? {
            Some(seller) if seller == identity.subject => Ok(()),
            Some(_) => Err(ServiceError::PermissionDenied(
                "the product belongs to another seller".into(),
            )),
            None => Err(ServiceError::PermissionDenied(
                "no such product in the catalog".into(),
            )),
        },
    }
}

/// The write rule for `key`, before any ownership lookup.
pub fn write_decision<'a>(identity: &Identity, key: &'a str, kind: WriteKind) -> Decision<'a> {
    if identity.is_admin() {
        return Decision::Allow;
    }
    let service_may = |scope: &str| identity.is_service() && identity.has_scope(scope);
    let products_cleanup =
        kind == WriteKind::Delete && service_may(scopes::STORAGE_DELETE_PRODUCTS);
    match keys::classify(key) {
        KeyClass::Original { product_id } => {
            if products_cleanup {
                Decision::Allow
            } else if identity.role == Role::Seller && keys::is_catalog_id(product_id) {
                Decision::IfOwner(product_id)
            } else {
                Decision::Deny("only the product's seller or an admin may write its originals")
            }
        }
        KeyClass::Thumbnail { .. } => {
            if products_cleanup || service_may(scopes::STORAGE_WRITE_THUMBNAILS) {
                Decision::Allow
            } else {
                Decision::Deny(
                    "thumbnails are written by service accounts with scope storage.write:thumbnails",
                )
            }
        }
        KeyClass::OtherProduct if products_cleanup => Decision::Allow,
        KeyClass::OtherProduct | KeyClass::Other => {
            Decision::Deny("only admins may write this key")
        }
    }
}

/// Who sells a product, according to the catalog.
pub trait ProductOwners: Send + Sync + 'static {
    /// The product's `seller_id`, or `None` when there is no such product. `bearer` is the
    /// caller's access token, forwarded so the catalog applies its own read rules.
    fn seller_of<'a>(
        &'a self,
        product_id: &'a str,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, ServiceResult<Option<String>>>;
}

/// Write access to `key`, asking `owners` when the rule depends on product ownership.
pub async fn require_write(
    identity: &Identity,
    key: &str,
    kind: WriteKind,
    bearer: Option<&str>,
    owners: &dyn ProductOwners,
) -> ServiceResult<()> {
    require(
        write_decision(identity, key, kind),
        identity,
        bearer,
        owners,
    )
    .await
}

/// [`ProductOwners`] backed by `CatalogService.GetProduct` through the mesh (upstream
/// `catalog`, see `storemesh_mesh::client`), remembering sellers briefly.
/// A product's seller never changes, so the cache can only be stale about a product deleted
/// within the last `ttl`; unknown products are not cached (they may be created any moment).
pub struct CatalogOwners {
    channel: MeshChannel,
    ttl: Duration,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

const MAX_CACHED_PRODUCTS: usize = 10_000;

impl CatalogOwners {
    /// Asks the catalog behind `channel`; its upstream's `default_deadline_ms` bounds a call.
    pub fn new(channel: MeshChannel, ttl: Duration) -> Self {
        Self {
            channel,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, product_id: &str) -> Option<String> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(product_id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(seller, _)| seller.clone())
    }

    fn remember(&self, product_id: &str, seller: &str) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED_PRODUCTS {
                let now = Instant::now();
                cache.retain(|_, (_, expires)| *expires > now);
                if cache.len() >= MAX_CACHED_PRODUCTS {
                    cache.clear();
                }
            }
            cache.insert(
                product_id.to_owned(),
                (seller.to_owned(), Instant::now() + self.ttl),
            );
        }
    }

    async fn ask(&self, product_id: &str, bearer: Option<&str>) -> ServiceResult<Option<String>> {
        let mut client = CatalogServiceClient::with_interceptor(
            self.channel.clone(),
            storemesh_runtime::telemetry::TracePropagation,
        );
        let mut request = tonic::Request::new(GetProductRequest {
            id: product_id.to_owned(),
        });
        if let Some(token) = bearer
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        match client.get_product(request).await {
            Ok(response) => Ok(response.into_inner().product.map(|p| p.seller_id)),
            Err(status) => match status.code() {
                tonic::Code::NotFound | tonic::Code::InvalidArgument => Ok(None),
                tonic::Code::PermissionDenied => Err(ServiceError::PermissionDenied(
                    "the catalog refused to show the product to the caller".into(),
                )),
                tonic::Code::Unauthenticated => {
                    Err(ServiceError::Unauthenticated(status.message().to_owned()))
                }
                code => {
                    tracing::warn!(
                        ?code,
                        message = status.message(),
                        "catalog GetProduct failed"
                    );
                    Err(ServiceError::Unavailable(
                        "cannot check product ownership with the catalog; retry later".into(),
                    ))
                }
            },
        }
    }
}

impl ProductOwners for CatalogOwners {
    fn seller_of<'a>(
        &'a self,
        product_id: &'a str,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, ServiceResult<Option<String>>> {
        Box::pin(async move {
            if let Some(seller) = self.cached(product_id) {
                return Ok(Some(seller));
            }
            let seller = self.ask(product_id, bearer).await?;
            if let Some(seller) = &seller {
                self.remember(product_id, seller);
            }
            Ok(seller)
        })
    }
}

/// Fixed answers, for embedding and tests.
impl ProductOwners for HashMap<String, String> {
    fn seller_of<'a>(
        &'a self,
        product_id: &'a str,
        _bearer: Option<&'a str>,
    ) -> BoxFuture<'a, ServiceResult<Option<String>>> {
        Box::pin(std::future::ready(Ok(self.get(product_id).cloned())))
    }
}

impl<T: ProductOwners + ?Sized> ProductOwners for Arc<T> {
    fn seller_of<'a>(
        &'a self,
        product_id: &'a str,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, ServiceResult<Option<String>>> {
        (**self).seller_of(product_id, bearer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(role: Role, subject: &str, granted: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            role,
            scopes: granted.iter().map(|s| (*s).to_owned()).collect(),
            token_id: "t".into(),
            expires_at: 0,
        }
    }

    const ORIGINAL: &str = "products/p1/originals/i1";
    const THUMBNAIL: &str = "products/p1/thumbnails/i1/w320.jpg";
    const OTHER_PRODUCT: &str = "products/p1/notes.txt";
    const ELSEWHERE: &str = "misc/file";

    #[test]
    fn reads() {
        for key in [ORIGINAL, THUMBNAIL, OTHER_PRODUCT, ELSEWHERE] {
            let admin = identity(Role::Admin, "a", &[]);
            assert_eq!(read_decision(&admin, key), Decision::Allow);
            let reader = identity(Role::Service, "svc", &[scopes::STORAGE_READ]);
            assert_eq!(read_decision(&reader, key), Decision::Allow);
            let blind = identity(Role::Service, "svc", &[scopes::STORAGE_WRITE_THUMBNAILS]);
            assert!(matches!(read_decision(&blind, key), Decision::Deny(_)));
            let customer = identity(Role::Customer, "c", &[]);
            assert!(matches!(read_decision(&customer, key), Decision::Deny(_)));
        }
        let seller = identity(Role::Seller, "s", &[]);
        for key in [ORIGINAL, THUMBNAIL, OTHER_PRODUCT] {
            assert_eq!(read_decision(&seller, key), Decision::IfOwner("p1"));
        }
        assert!(matches!(
            read_decision(&seller, ELSEWHERE),
            Decision::Deny(_)
        ));
        assert!(matches!(
            read_decision(&seller, "products/a b/originals/i"),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn lists() {
        let seller = identity(Role::Seller, "s", &[]);
        assert_eq!(
            list_decision(&seller, "products/p1/"),
            Decision::IfOwner("p1")
        );
        assert_eq!(
            list_decision(&seller, "products/p1/originals/"),
            Decision::IfOwner("p1")
        );
        // A prefix that could span several products names none.
        for prefix in ["", "products/", "products/p1", "misc/"] {
            assert!(
                matches!(list_decision(&seller, prefix), Decision::Deny(_)),
                "{prefix}"
            );
        }
        let customer = identity(Role::Customer, "c", &[]);
        assert!(matches!(
            list_decision(&customer, "products/p1/"),
            Decision::Deny(_)
        ));
        let reader = identity(Role::Service, "svc", &[scopes::STORAGE_READ]);
        assert_eq!(list_decision(&reader, ""), Decision::Allow);
        assert_eq!(
            list_decision(&identity(Role::Admin, "a", &[]), ""),
            Decision::Allow
        );
    }

    #[test]
    fn admins_write_everything() {
        let admin = identity(Role::Admin, "a", &[]);
        for key in [ORIGINAL, THUMBNAIL, OTHER_PRODUCT, ELSEWHERE] {
            for kind in [WriteKind::Upload, WriteKind::Delete] {
                assert_eq!(write_decision(&admin, key, kind), Decision::Allow);
            }
        }
    }

    #[test]
    fn sellers_write_originals_of_their_products_only() {
        let seller = identity(Role::Seller, "s", &[]);
        for kind in [WriteKind::Upload, WriteKind::Delete] {
            assert_eq!(
                write_decision(&seller, ORIGINAL, kind),
                Decision::IfOwner("p1")
            );
            for key in [THUMBNAIL, OTHER_PRODUCT, ELSEWHERE] {
                assert!(matches!(
                    write_decision(&seller, key, kind),
                    Decision::Deny(_)
                ));
            }
        }
        // A segment that cannot be a catalog id is owned by nobody.
        assert!(matches!(
            write_decision(&seller, "products/a b/originals/i", WriteKind::Upload),
            Decision::Deny(_)
        ));
        let customer = identity(Role::Customer, "c", &[]);
        assert!(matches!(
            write_decision(&customer, ORIGINAL, WriteKind::Upload),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn service_scopes() {
        let thumbnailer = identity(Role::Service, "thumb", &[scopes::STORAGE_WRITE_THUMBNAILS]);
        for kind in [WriteKind::Upload, WriteKind::Delete] {
            assert_eq!(
                write_decision(&thumbnailer, THUMBNAIL, kind),
                Decision::Allow
            );
            for key in [ORIGINAL, OTHER_PRODUCT, ELSEWHERE] {
                assert!(matches!(
                    write_decision(&thumbnailer, key, kind),
                    Decision::Deny(_)
                ));
            }
        }
        let cleaner = identity(Role::Service, "catalog", &[scopes::STORAGE_DELETE_PRODUCTS]);
        for key in [ORIGINAL, THUMBNAIL, OTHER_PRODUCT] {
            assert_eq!(
                write_decision(&cleaner, key, WriteKind::Delete),
                Decision::Allow
            );
            assert!(matches!(
                write_decision(&cleaner, key, WriteKind::Upload),
                Decision::Deny(_)
            ));
        }
        assert!(matches!(
            write_decision(&cleaner, ELSEWHERE, WriteKind::Delete),
            Decision::Deny(_)
        ));
        // A service account whose client id equals a seller's id owns nothing.
        let impostor = identity(Role::Service, "s", &[]);
        assert!(matches!(
            write_decision(&impostor, ORIGINAL, WriteKind::Upload),
            Decision::Deny(_)
        ));
    }

    #[tokio::test]
    async fn ownership_is_checked() {
        let owners: HashMap<String, String> = [("p1".to_owned(), "s".to_owned())].into();
        let seller = identity(Role::Seller, "s", &[]);
        let other = identity(Role::Seller, "t", &[]);
        assert!(
            require_write(&seller, ORIGINAL, WriteKind::Upload, None, &owners)
                .await
                .is_ok()
        );
        let denied = require_write(&other, ORIGINAL, WriteKind::Upload, None, &owners)
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let missing = require_write(
            &seller,
            "products/p2/originals/i",
            WriteKind::Upload,
            None,
            &owners,
        )
        .await
        .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::PermissionDenied);
    }
}
