//! Products and images as stored, their protobuf form, and the pure rules that change them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use storemesh_proto::catalog::v1 as pb;
use storemesh_runtime::{ServiceError, ServiceResult};

pub use storemesh_runtime::time::{now_ms, timestamp_from_ms as timestamp};

/// A fresh opaque etag.
pub fn new_etag() -> String {
    ulid::Ulid::new().to_string()
}

fn corrupt(kind: &str, id: &str, field: &str) -> ServiceError {
    ServiceError::internal(format!(
        "stored {kind} {id} has a missing or bad field {field}"
    ))
}

fn take(
    fields: &mut HashMap<String, String>,
    kind: &str,
    id: &str,
    name: &str,
) -> ServiceResult<String> {
    fields.remove(name).ok_or_else(|| corrupt(kind, id, name))
}

fn parse<T: std::str::FromStr>(value: &str, kind: &str, id: &str, name: &str) -> ServiceResult<T> {
    value.parse().map_err(|_| corrupt(kind, id, name))
}

/// Who can see a product.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Signed-in readers only; new products, and products stored before visibility existed.
    #[default]
    Draft,
    /// Also anonymous shoppers.
    Published,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Draft => "draft",
            Visibility::Published => "published",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "draft" => Some(Visibility::Draft),
            "published" => Some(Visibility::Published),
            _ => None,
        }
    }

    /// `None` for `UNSPECIFIED` and unknown numbers.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::ProductVisibility::try_from(value).ok()? {
            pb::ProductVisibility::Draft => Some(Visibility::Draft),
            pb::ProductVisibility::Published => Some(Visibility::Published),
            pb::ProductVisibility::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> pb::ProductVisibility {
        match self {
            Visibility::Draft => pb::ProductVisibility::Draft,
            Visibility::Published => pb::ProductVisibility::Published,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    pub id: String,
    pub seller_id: String,
    pub title: String,
    pub description: String,
    pub amount_minor: i64,
    pub currency_code: String,
    pub tags: Vec<String>,
    pub primary_image_id: String,
    pub visibility: Visibility,
    pub etag: String,
    pub version: i64,
    pub create_ms: i64,
    pub update_ms: i64,
}

impl ProductRecord {
    /// The hash fields (see `store` for the key schema). Tags are `[a-z0-9-]`, so a space
    /// separates them unambiguously.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("seller_id", self.seller_id.clone()),
            ("title", self.title.clone()),
            ("description", self.description.clone()),
            ("amount_minor", self.amount_minor.to_string()),
            ("currency_code", self.currency_code.clone()),
            ("tags", self.tags.join(" ")),
            ("primary_image_id", self.primary_image_id.clone()),
            ("visibility", self.visibility.as_str().to_owned()),
            ("etag", self.etag.clone()),
            ("version", self.version.to_string()),
            ("create_ms", self.create_ms.to_string()),
            ("update_ms", self.update_ms.to_string()),
        ]
    }

    /// `None` for an empty hash (no such product).
    pub fn from_fields(
        id: &str,
        mut fields: HashMap<String, String>,
    ) -> ServiceResult<Option<Self>> {
        if fields.is_empty() {
            return Ok(None);
        }
        let kind = "product";
        // Products stored before visibility existed have no such field: drafts.
        let visibility = match fields.remove("visibility") {
            None => Visibility::Draft,
            Some(value) => {
                Visibility::parse(&value).ok_or_else(|| corrupt(kind, id, "visibility"))?
            }
        };
        let mut get = |name: &str| take(&mut fields, kind, id, name);
        let amount_minor = get("amount_minor")?;
        let version = get("version")?;
        let create_ms = get("create_ms")?;
        let update_ms = get("update_ms")?;
        let tags = get("tags")?;
        Ok(Some(Self {
            id: id.to_owned(),
            seller_id: get("seller_id")?,
            title: get("title")?,
            description: get("description")?,
            currency_code: get("currency_code")?,
            primary_image_id: get("primary_image_id")?,
            visibility,
            etag: get("etag")?,
            amount_minor: parse(&amount_minor, kind, id, "amount_minor")?,
            version: parse(&version, kind, id, "version")?,
            create_ms: parse(&create_ms, kind, id, "create_ms")?,
            update_ms: parse(&update_ms, kind, id, "update_ms")?,
            tags: tags.split_whitespace().map(str::to_owned).collect(),
        }))
    }

    pub fn to_proto(&self) -> pb::Product {
        pb::Product {
            id: self.id.clone(),
            seller_id: self.seller_id.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            price: Some(pb::Money {
                amount_minor: self.amount_minor,
                currency_code: self.currency_code.clone(),
            }),
            tags: self.tags.clone(),
            primary_image_id: self.primary_image_id.clone(),
            etag: self.etag.clone(),
            version: self.version,
            create_time: Some(timestamp(self.create_ms)),
            update_time: Some(timestamp(self.update_ms)),
            visibility: self.visibility.to_proto().into(),
        }
    }

    pub fn is_published(&self) -> bool {
        self.visibility == Visibility::Published
    }

    /// The product after `changes`, as a new version.
    pub fn updated(&self, changes: &ProductChanges, now_ms: i64, etag: String) -> Self {
        let mut next = self.clone();
        if let Some(title) = &changes.title {
            next.title.clone_from(title);
        }
        if let Some(description) = &changes.description {
            next.description.clone_from(description);
        }
        if let Some((amount, currency)) = &changes.price {
            next.amount_minor = *amount;
            next.currency_code.clone_from(currency);
        }
        if let Some(tags) = &changes.tags {
            next.tags.clone_from(tags);
        }
        if let Some(primary) = &changes.primary_image_id {
            next.primary_image_id.clone_from(primary);
        }
        if let Some(visibility) = changes.visibility {
            next.visibility = visibility;
        }
        next.version = self.version.saturating_add(1);
        next.etag = etag;
        next.update_ms = now_ms.max(self.update_ms);
        next
    }
}

/// Validated new values of an update; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductChanges {
    pub title: Option<String>,
    pub description: Option<String>,
    pub price: Option<(i64, String)>,
    pub tags: Option<Vec<String>>,
    pub primary_image_id: Option<String>,
    pub visibility: Option<Visibility>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageState {
    Processing,
    Ready,
    Failed,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Processing => "processing",
            ImageState::Ready => "ready",
            ImageState::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "processing" => Some(ImageState::Processing),
            "ready" => Some(ImageState::Ready),
            "failed" => Some(ImageState::Failed),
            _ => None,
        }
    }

    pub fn to_proto(self) -> pb::ImageState {
        match self {
            ImageState::Processing => pb::ImageState::Processing,
            ImageState::Ready => pb::ImageState::Ready,
            ImageState::Failed => pb::ImageState::Failed,
        }
    }
}

/// One thumbnail, stored as JSON inside its image's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// `pb::ImageFormat` as its number.
    pub format: i32,
    pub storage_key: String,
    pub size_bytes: u64,
    /// Lowercase hex; empty when recorded without it (and in variants stored before it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

impl Variant {
    pub fn from_proto(variant: &pb::ImageVariant) -> Self {
        Self {
            name: variant.name.clone(),
            width: variant.width,
            height: variant.height,
            format: variant.format,
            storage_key: variant.storage_key.clone(),
            size_bytes: variant.size_bytes,
            sha256: variant.sha256.clone(),
        }
    }

    /// Without URLs: those are added on output (see [`crate::urls`]).
    pub fn to_proto(&self) -> pb::ImageVariant {
        pb::ImageVariant {
            name: self.name.clone(),
            width: self.width,
            height: self.height,
            format: self.format,
            storage_key: self.storage_key.clone(),
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
            ..pb::ImageVariant::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: String,
    pub product_id: String,
    pub storage_key: String,
    pub content_type: String,
    pub size_bytes: u64,
    /// SHA-256 of the original, lowercase hex; empty when attached without it.
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub state: ImageState,
    pub failure_reason: String,
    /// Ordered by width, then name; at most one per name.
    pub variants: Vec<Variant>,
    /// Internal change counter, the compare-and-set guard of image writes.
    pub rev: u64,
    pub create_ms: i64,
    pub update_ms: i64,
}

impl ImageRecord {
    pub fn to_fields(&self) -> ServiceResult<Vec<(&'static str, String)>> {
        let variants = serde_json::to_string(&self.variants).map_err(ServiceError::internal)?;
        Ok(vec![
            ("product_id", self.product_id.clone()),
            ("storage_key", self.storage_key.clone()),
            ("content_type", self.content_type.clone()),
            ("size_bytes", self.size_bytes.to_string()),
            ("sha256", self.sha256.clone()),
            ("width", self.width.to_string()),
            ("height", self.height.to_string()),
            ("state", self.state.as_str().to_owned()),
            ("failure_reason", self.failure_reason.clone()),
            ("variants", variants),
            ("rev", self.rev.to_string()),
            ("create_ms", self.create_ms.to_string()),
            ("update_ms", self.update_ms.to_string()),
        ])
    }

    pub fn from_fields(
        id: &str,
        mut fields: HashMap<String, String>,
    ) -> ServiceResult<Option<Self>> {
        if fields.is_empty() {
            return Ok(None);
        }
        let kind = "image";
        // Images stored before sha256 existed have no such field.
        let sha256 = fields.remove("sha256").unwrap_or_default();
        let mut get = |name: &str| take(&mut fields, kind, id, name);
        let size_bytes = get("size_bytes")?;
        let width = get("width")?;
        let height = get("height")?;
        let state = get("state")?;
        let variants = get("variants")?;
        let rev = get("rev")?;
        let create_ms = get("create_ms")?;
        let update_ms = get("update_ms")?;
        Ok(Some(Self {
            id: id.to_owned(),
            sha256,
            product_id: get("product_id")?,
            storage_key: get("storage_key")?,
            content_type: get("content_type")?,
            failure_reason: get("failure_reason")?,
            size_bytes: parse(&size_bytes, kind, id, "size_bytes")?,
            width: parse(&width, kind, id, "width")?,
            height: parse(&height, kind, id, "height")?,
            state: ImageState::parse(&state).ok_or_else(|| corrupt(kind, id, "state"))?,
            variants: serde_json::from_str(&variants).map_err(|_| corrupt(kind, id, "variants"))?,
            rev: parse(&rev, kind, id, "rev")?,
            create_ms: parse(&create_ms, kind, id, "create_ms")?,
            update_ms: parse(&update_ms, kind, id, "update_ms")?,
        }))
    }

    /// Without URLs: those are added on output (see [`crate::urls`]).
    pub fn to_proto(&self) -> pb::Image {
        pb::Image {
            id: self.id.clone(),
            product_id: self.product_id.clone(),
            storage_key: self.storage_key.clone(),
            content_type: self.content_type.clone(),
            size_bytes: self.size_bytes,
            width: self.width,
            height: self.height,
            state: self.state.to_proto().into(),
            failure_reason: self.failure_reason.clone(),
            variants: self.variants.iter().map(Variant::to_proto).collect(),
            create_time: Some(timestamp(self.create_ms)),
            update_time: Some(timestamp(self.update_ms)),
            sha256: self.sha256.clone(),
            ..pb::Image::default()
        }
    }

    /// Every storage key the image owns: its original and its recorded thumbnails.
    pub fn storage_keys(&self) -> Vec<String> {
        std::iter::once(self.storage_key.clone())
            .chain(self.variants.iter().map(|v| v.storage_key.clone()))
            .collect()
    }

    /// The image with `variant` recorded (replacing a variant of the same name), `READY` once
    /// every name in `required` is present. `None` when nothing would change.
    pub fn with_variant(&self, variant: Variant, required: &[String], now_ms: i64) -> Option<Self> {
        let mut variants: Vec<Variant> = self
            .variants
            .iter()
            .filter(|existing| existing.name != variant.name)
            .cloned()
            .collect();
        variants.push(variant);
        variants.sort_by(|a, b| a.width.cmp(&b.width).then_with(|| a.name.cmp(&b.name)));
        let complete = required
            .iter()
            .all(|name| variants.iter().any(|v| &v.name == name));
        let state = match self.state {
            ImageState::Processing if complete => ImageState::Ready,
            other => other,
        };
        if variants == self.variants && state == self.state {
            return None;
        }
        Some(Self {
            variants,
            state,
            rev: self.rev + 1,
            update_ms: now_ms.max(self.update_ms),
            ..self.clone()
        })
    }

    /// The image marked failed with `reason`.
    pub fn failed(&self, reason: &str, now_ms: i64) -> Self {
        Self {
            state: ImageState::Failed,
            failure_reason: reason.to_owned(),
            rev: self.rev + 1,
            update_ms: now_ms.max(self.update_ms),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> ProductRecord {
        ProductRecord {
            id: "p1".into(),
            seller_id: "s1".into(),
            title: "Mug".into(),
            description: "A mug.\nWith a handle.".into(),
            amount_minor: 1299,
            currency_code: "EUR".into(),
            tags: vec!["kitchen".into(), "blue".into()],
            primary_image_id: String::new(),
            visibility: Visibility::Draft,
            etag: "e1".into(),
            version: 1,
            create_ms: 1_000,
            update_ms: 1_000,
        }
    }

    fn image() -> ImageRecord {
        ImageRecord {
            id: "i1".into(),
            product_id: "p1".into(),
            storage_key: "products/p1/originals/i1".into(),
            content_type: "image/jpeg".into(),
            size_bytes: 12345,
            sha256: "0f".repeat(32),
            width: 4000,
            height: 3000,
            state: ImageState::Processing,
            failure_reason: String::new(),
            variants: Vec::new(),
            rev: 1,
            create_ms: 2_000,
            update_ms: 2_000,
        }
    }

    fn variant(name: &str, width: u32) -> Variant {
        Variant {
            name: name.into(),
            width,
            height: width * 3 / 4,
            format: pb::ImageFormat::Jpeg.into(),
            storage_key: format!("products/p1/thumbnails/i1/{name}.jpg"),
            size_bytes: 100,
            sha256: String::new(),
        }
    }

    fn stored(fields: Vec<(&'static str, String)>) -> HashMap<String, String> {
        fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn records_round_trip_through_hash_fields() {
        let product = product();
        let back = ProductRecord::from_fields("p1", stored(product.to_fields())).unwrap();
        assert_eq!(back, Some(product));
        let mut image = image();
        image.variants.push(variant("w160", 160));
        let back = ImageRecord::from_fields("i1", stored(image.to_fields().unwrap())).unwrap();
        assert_eq!(back, Some(image));
        assert_eq!(
            ProductRecord::from_fields("p", HashMap::new()).unwrap(),
            None
        );
        let mut broken = stored(product_fields_without("version"));
        broken.insert("amount_minor".into(), "x".into());
        assert!(ProductRecord::from_fields("p1", broken).is_err());
    }

    #[test]
    fn records_stored_before_visibility_and_sha256_still_read() {
        let mut published = product();
        published.visibility = Visibility::Published;
        let back = ProductRecord::from_fields("p1", stored(published.to_fields())).unwrap();
        assert_eq!(back.unwrap().visibility, Visibility::Published);
        let old = ProductRecord::from_fields("p1", stored(product_fields_without("visibility")))
            .unwrap()
            .unwrap();
        assert_eq!(old.visibility, Visibility::Draft);
        assert_eq!(old.to_proto().visibility(), pb::ProductVisibility::Draft);
        let mut bad = stored(product().to_fields());
        bad.insert("visibility".into(), "secret".into());
        assert!(ProductRecord::from_fields("p1", bad).is_err());

        let mut fields = stored(image().to_fields().unwrap());
        fields.remove("sha256");
        // A variant as stored before sha256 existed.
        fields.insert(
            "variants".into(),
            r#"[{"name":"w160","width":160,"height":120,"format":1,"storage_key":"k","size_bytes":9}]"#
                .into(),
        );
        let old = ImageRecord::from_fields("i1", fields).unwrap().unwrap();
        assert_eq!(old.sha256, "");
        assert_eq!(old.variants[0].sha256, "");
        assert_eq!(old.variants[0].size_bytes, 9);
    }

    fn product_fields_without(name: &str) -> Vec<(&'static str, String)> {
        product()
            .to_fields()
            .into_iter()
            .filter(|(k, _)| *k != name)
            .collect()
    }

    #[test]
    fn updates_touch_only_given_fields_and_bump_version() {
        let before = product();
        let changes = ProductChanges {
            title: Some("Big mug".into()),
            tags: Some(vec![]),
            ..ProductChanges::default()
        };
        let after = before.updated(&changes, 5_000, "e2".into());
        assert_eq!(after.title, "Big mug");
        assert!(after.tags.is_empty());
        assert_eq!(after.description, before.description);
        assert_eq!(after.amount_minor, before.amount_minor);
        assert_eq!(after.version, 2);
        assert_eq!(after.etag, "e2");
        assert_eq!(after.update_ms, 5_000);
        assert_eq!(after.create_ms, before.create_ms);
    }

    #[test]
    fn ready_only_when_every_required_variant_is_present() {
        let required = vec!["w160".to_owned(), "w320".to_owned(), "w640".to_owned()];
        let one = image()
            .with_variant(variant("w320", 320), &required, 3_000)
            .unwrap();
        assert_eq!(one.state, ImageState::Processing);
        let two = one
            .with_variant(variant("w160", 160), &required, 3_001)
            .unwrap();
        assert_eq!(two.state, ImageState::Processing);
        let names: Vec<_> = two.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["w160", "w320"], "ordered by width");
        // An extra, unrequired variant does not complete the image.
        let extra = two
            .with_variant(variant("square", 100), &required, 3_002)
            .unwrap();
        assert_eq!(extra.state, ImageState::Processing);
        let three = extra
            .with_variant(variant("w640", 640), &required, 3_003)
            .unwrap();
        assert_eq!(three.state, ImageState::Ready);
        assert_eq!(three.rev, image().rev + 4);

        // The same variant again changes nothing; a new one of the same name replaces it.
        assert_eq!(
            three.with_variant(variant("w640", 640), &required, 4_000),
            None
        );
        let mut bigger = variant("w640", 640);
        bigger.size_bytes = 999;
        let replaced = three.with_variant(bigger, &required, 4_000).unwrap();
        assert_eq!(replaced.variants.len(), 4);
        assert_eq!(replaced.state, ImageState::Ready);
        assert_eq!(
            replaced
                .variants
                .iter()
                .find(|v| v.name == "w640")
                .unwrap()
                .size_bytes,
            999
        );
        assert_eq!(replaced.storage_keys().len(), 5);
    }

    #[test]
    fn failing_keeps_the_variants_and_sets_the_reason() {
        let failed = image().failed("cannot decode", 9_000);
        assert_eq!(failed.state, ImageState::Failed);
        assert_eq!(failed.failure_reason, "cannot decode");
        assert_eq!(failed.to_proto().state(), pb::ImageState::Failed);
        // A failed image never becomes READY by recording variants.
        let required = vec!["w160".to_owned()];
        let after = failed
            .with_variant(variant("w160", 160), &required, 9_001)
            .unwrap();
        assert_eq!(after.state, ImageState::Failed);
    }

    #[test]
    fn timestamps_split_milliseconds() {
        let ts = timestamp(1_700_000_000_123);
        assert_eq!(ts.seconds, 1_700_000_000);
        assert_eq!(ts.nanos, 123_000_000);
    }
}
