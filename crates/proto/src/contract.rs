//! What the contracts say about each RPC, read from the compiled descriptors: which methods
//! are safe to send twice (`option idempotency_level = NO_SIDE_EFFECTS | IDEMPOTENT;`) and
//! which may be called without an access token (`option (storemesh.options.v1.public_method) =
//! true;`, defined in `proto/storemesh/options/v1/options.proto`).
//!
//! The mesh's retry rule and the gateway's default `public_methods` come from here, so a new or
//! changed RPC cannot leave a hand-kept list behind. Methods are named by their gRPC request
//! path, `/{package}.{Service}/{Method}`.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use prost_reflect::{DescriptorError, DescriptorPool};
use prost_types::method_options::IdempotencyLevel;

/// Full name of the method option that marks an RPC callable without an access token.
pub const PUBLIC_METHOD_OPTION: &str = "storemesh.options.v1.public_method";

/// The methods of a descriptor set that carry each mark, as gRPC request paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkedMethods {
    /// `idempotency_level` is `NO_SIDE_EFFECTS` or `IDEMPOTENT`.
    pub idempotent: BTreeSet<String>,
    /// `(storemesh.options.v1.public_method)` is true.
    pub public: BTreeSet<String>,
}

impl MarkedMethods {
    /// Reads the marks of every method of every service in an encoded `FileDescriptorSet`.
    /// The set must keep custom options (e.g. one made by `protox::Compiler::
    /// encode_file_descriptor_set` or `buf build`); without `options.proto` in it no method is
    /// public.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, DescriptorError> {
        let pool = DescriptorPool::decode(bytes)?;
        let public_option = pool.get_extension_by_name(PUBLIC_METHOD_OPTION);
        let mut marked = Self::default();
        for service in pool.services() {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let level = method
                    .method_descriptor_proto()
                    .options
                    .as_ref()
                    .map(|options| options.idempotency_level());
                if matches!(
                    level,
                    Some(IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent)
                ) {
                    marked.idempotent.insert(path.clone());
                }
                if let Some(option) = &public_option
                    && method.options().get_extension(option).as_bool() == Some(true)
                {
                    marked.public.insert(path);
                }
            }
        }
        Ok(marked)
    }
}

static MARKED: LazyLock<MarkedMethods> = LazyLock::new(|| {
    MarkedMethods::from_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled by build.rs decodes")
});

/// Storemesh methods that may be retried: reads (`NO_SIDE_EFFECTS`) and writes that are
/// idempotent by contract (`IDEMPOTENT`).
pub fn idempotent_methods() -> &'static BTreeSet<String> {
    &MARKED.idempotent
}

/// Storemesh methods callable without an access token.
pub fn public_methods() -> &'static BTreeSet<String> {
    &MARKED.public
}

/// Whether the contract marks the method at this request path safe to send twice.
pub fn is_idempotent(path: &str) -> bool {
    MARKED.idempotent.contains(path)
}

/// Whether the contract marks the method at this request path callable without a token.
pub fn is_public(path: &str) -> bool {
    MARKED.public.contains(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn paths(service: &str, methods: &[&str]) -> Vec<String> {
        methods
            .iter()
            .map(|method| format!("/storemesh.{service}/{method}"))
            .collect()
    }

    /// The lists that were hand-kept before the contract said it (mesh `IDEMPOTENT_METHODS`,
    /// gateway `public_methods`): marking an RPC differently is a decision, made here too.
    #[test]
    fn the_contract_marks_exactly_the_expected_methods() {
        let idempotent: BTreeSet<String> = [
            paths(
                "auth.v1.AuthService",
                &["WhoAmI", "GetPublicKeys", "ListUsers"],
            ),
            paths(
                "catalog.v1.CatalogService",
                &[
                    "GetProduct",
                    "ListProducts",
                    "GetImage",
                    "ListProductImages",
                    "ListImages",
                    "AttachImage",
                    "RecordVariant",
                    "MarkImageFailed",
                ],
            ),
            paths(
                "storage.v1.StorageService",
                &["Stat", "List", "Download", "Delete"],
            ),
        ]
        .concat()
        .into_iter()
        .collect();
        assert_eq!(idempotent_methods(), &idempotent);

        let public: BTreeSet<String> = [
            paths(
                "auth.v1.AuthService",
                &[
                    "Register",
                    "Login",
                    "Refresh",
                    "Logout",
                    "GetPublicKeys",
                    "IssueServiceToken",
                ],
            ),
            paths(
                "catalog.v1.CatalogService",
                &["GetProduct", "ListProducts", "ListProductImages"],
            ),
        ]
        .concat()
        .into_iter()
        .collect();
        assert_eq!(public_methods(), &public);

        assert!(is_idempotent("/storemesh.storage.v1.StorageService/Delete"));
        assert!(!is_idempotent(
            "/storemesh.storage.v1.StorageService/Upload"
        ));
        assert!(is_public("/storemesh.auth.v1.AuthService/Login"));
        assert!(!is_public("/storemesh.catalog.v1.CatalogService/GetImage"));
    }

    /// Compiles `proto/` with `catalog.proto` replaced by `catalog` (as build.rs compiles it).
    fn marks_with_catalog(catalog: &str) -> MarkedMethods {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("storemesh/catalog/v1/catalog.proto");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, catalog).unwrap();
        // The first include that has a file wins: the edited catalog, then the real rest.
        let mut compiler = protox::Compiler::new([dir.path(), root.as_path()]).unwrap();
        compiler
            .include_imports(true)
            .open_files(["storemesh/catalog/v1/catalog.proto"])
            .unwrap();
        MarkedMethods::from_descriptor_set(&compiler.encode_file_descriptor_set()).unwrap()
    }

    #[test]
    fn adding_or_removing_an_option_changes_the_sets() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
        let catalog =
            std::fs::read_to_string(root.join("storemesh/catalog/v1/catalog.proto")).unwrap();
        let path = |method: &str| format!("/storemesh.catalog.v1.CatalogService/{method}");
        let unchanged = marks_with_catalog(&catalog);
        assert!(unchanged.public.contains(&path("GetProduct")));
        assert!(unchanged.idempotent.contains(&path("GetProduct")));
        assert!(!unchanged.public.contains(&path("GetImage")));
        assert!(!unchanged.idempotent.contains(&path("DeleteImage")));

        // GetProduct loses both marks; GetImage becomes public; DeleteImage idempotent.
        let get_product = "  rpc GetProduct(GetProductRequest) returns (GetProductResponse) {\n    \
             option idempotency_level = NO_SIDE_EFFECTS;\n    \
             option (storemesh.options.v1.public_method) = true;\n  }";
        let get_image = "  rpc GetImage(GetImageRequest) returns (GetImageResponse) {\n";
        let delete_image = "  rpc DeleteImage(DeleteImageRequest) returns (DeleteImageResponse);";
        for needle in [get_product, get_image, delete_image] {
            assert!(catalog.contains(needle), "catalog.proto changed: {needle}");
        }
        let edited = catalog
            .replace(
                get_product,
                "  rpc GetProduct(GetProductRequest) returns (GetProductResponse);",
            )
            .replace(
                get_image,
                &format!("{get_image}    option (storemesh.options.v1.public_method) = true;\n"),
            )
            .replace(
                delete_image,
                "  rpc DeleteImage(DeleteImageRequest) returns (DeleteImageResponse) {\n    \
                 option idempotency_level = IDEMPOTENT;\n  }",
            );
        let changed = marks_with_catalog(&edited);
        assert!(!changed.public.contains(&path("GetProduct")));
        assert!(!changed.idempotent.contains(&path("GetProduct")));
        assert!(changed.public.contains(&path("GetImage")));
        assert!(changed.idempotent.contains(&path("GetImage")));
        assert!(changed.idempotent.contains(&path("DeleteImage")));

        let mut expected = unchanged.clone();
        expected.public.remove(&path("GetProduct"));
        expected.idempotent.remove(&path("GetProduct"));
        expected.public.insert(path("GetImage"));
        expected.idempotent.insert(path("DeleteImage"));
        assert_eq!(changed, expected);

        // A new RPC is in the sets its options put it in, and in no other.
        let added = catalog.replacen(
            get_image,
            &format!(
                "  rpc Browse(ListProductsRequest) returns (ListProductsResponse) {{\n    \
                 option (storemesh.options.v1.public_method) = true;\n  }}\n\n{get_image}"
            ),
            1,
        );
        let with_browse = marks_with_catalog(&added);
        assert!(with_browse.public.contains(&path("Browse")));
        assert!(!with_browse.idempotent.contains(&path("Browse")));
        assert_eq!(with_browse.public.len(), unchanged.public.len() + 1);
        assert_eq!(with_browse.idempotent, unchanged.idempotent);
    }

    #[test]
    fn a_descriptor_set_without_the_options_file_has_no_public_methods() {
        let set = prost_types::FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some("plain.proto".into()),
                package: Some("plain.v1".into()),
                message_type: vec![prost_types::DescriptorProto {
                    name: Some("Empty".into()),
                    ..Default::default()
                }],
                service: vec![prost_types::ServiceDescriptorProto {
                    name: Some("Plain".into()),
                    method: vec![prost_types::MethodDescriptorProto {
                        name: Some("Get".into()),
                        input_type: Some(".plain.v1.Empty".into()),
                        output_type: Some(".plain.v1.Empty".into()),
                        options: Some(prost_types::MethodOptions {
                            idempotency_level: Some(IdempotencyLevel::NoSideEffects as i32),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                syntax: Some("proto3".into()),
                ..Default::default()
            }],
        };
        let marked =
            MarkedMethods::from_descriptor_set(&prost::Message::encode_to_vec(&set)).unwrap();
        assert_eq!(
            marked.idempotent,
            BTreeSet::from(["/plain.v1.Plain/Get".to_owned()])
        );
        assert!(marked.public.is_empty());
    }
}
