//! How client results are printed: short text for people, one JSON document for scripts.

use std::path::Path;

use serde_json::{Value, json};
use storemesh_proto::auth::v1 as auth;
use storemesh_proto::catalog::v1 as catalog;

use super::Session;
use super::money;

pub fn role_name(role: i32) -> &'static str {
    match auth::Role::try_from(role) {
        Ok(auth::Role::Customer) => "customer",
        Ok(auth::Role::Seller) => "seller",
        Ok(auth::Role::Admin) => "admin",
        Ok(auth::Role::Service) => "service",
        _ => "unspecified",
    }
}

fn state_name(state: i32) -> &'static str {
    match catalog::ImageState::try_from(state) {
        Ok(catalog::ImageState::Processing) => "PROCESSING",
        Ok(catalog::ImageState::Ready) => "READY",
        Ok(catalog::ImageState::Failed) => "FAILED",
        _ => "UNSPECIFIED",
    }
}

fn format_name(format: i32) -> &'static str {
    match catalog::ImageFormat::try_from(format) {
        Ok(catalog::ImageFormat::Jpeg) => "jpeg",
        Ok(catalog::ImageFormat::Png) => "png",
        Ok(catalog::ImageFormat::Webp) => "webp",
        Ok(catalog::ImageFormat::Gif) => "gif",
        _ => "unspecified",
    }
}

fn timestamp(time: Option<&prost_types::Timestamp>) -> Value {
    time.map_or(Value::Null, |time| Value::String(time.to_string()))
}

pub fn user(user: &auth::User, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({"id": user.id, "email": user.email, "display_name": user.display_name,
                   "role": role_name(user.role)})
        );
    } else {
        println!(
            "registered {} as {} (user id {})",
            user.email,
            role_name(user.role),
            user.id
        );
    }
}

pub fn signed_in(session: &Session, path: &Path, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({"user_id": session.user_id, "email": session.email, "role": session.role,
                   "gateway": session.gateway, "session_file": path.display().to_string()})
        );
    } else {
        println!(
            "signed in as {} ({}, user id {}); session saved in {}",
            session.email,
            session.role,
            session.user_id,
            path.display()
        );
    }
}

fn product_json(product: &catalog::Product) -> Value {
    let price = product.price.as_ref();
    json!({
        "id": product.id,
        "seller_id": product.seller_id,
        "title": product.title,
        "description": product.description,
        "price": price.map(|price| json!({
            "amount_minor": price.amount_minor,
            "currency_code": price.currency_code,
            "display": money::format_minor(price.amount_minor, &price.currency_code),
        })),
        "tags": product.tags,
        "visibility": visibility_name(product.visibility),
        "primary_image_id": product.primary_image_id,
        "etag": product.etag,
        "create_time": timestamp(product.create_time.as_ref()),
        "update_time": timestamp(product.update_time.as_ref()),
    })
}

fn image_json(image: &catalog::Image) -> Value {
    json!({
        "id": image.id,
        "product_id": image.product_id,
        "storage_key": image.storage_key,
        "content_type": image.content_type,
        "size_bytes": image.size_bytes,
        "width": image.width,
        "height": image.height,
        "state": state_name(image.state),
        "failure_reason": image.failure_reason,
        "sha256": image.sha256,
        "url": image.url,
        "srcset": image.srcset,
        "variants": image.variants.iter().map(|variant| json!({
            "name": variant.name,
            "width": variant.width,
            "height": variant.height,
            "format": format_name(variant.format),
            "storage_key": variant.storage_key,
            "size_bytes": variant.size_bytes,
            "url": variant.url,
        })).collect::<Vec<_>>(),
        "create_time": timestamp(image.create_time.as_ref()),
        "update_time": timestamp(image.update_time.as_ref()),
    })
}

fn price_text(product: &catalog::Product) -> String {
    product.price.as_ref().map_or_else(String::new, |price| {
        format!(
            "{} {}",
            money::format_minor(price.amount_minor, &price.currency_code),
            price.currency_code
        )
    })
}

fn image_text(image: &catalog::Image) {
    println!(
        "image {}  {}  {}x{}  {} bytes  {}",
        image.id,
        state_name(image.state),
        image.width,
        image.height,
        image.size_bytes,
        image.content_type
    );
    if !image.failure_reason.is_empty() {
        println!("  failed: {}", image.failure_reason);
    }
    if !image.url.is_empty() {
        println!("  original {}", image.url);
    }
    for variant in &image.variants {
        println!(
            "  {:<6} {}x{}  {}  {} bytes  {}",
            variant.name,
            variant.width,
            variant.height,
            format_name(variant.format),
            variant.size_bytes,
            if variant.url.is_empty() {
                &variant.storage_key
            } else {
                &variant.url
            }
        );
    }
}

pub fn product(product: &catalog::Product, images: &[catalog::Image], as_json: bool) {
    if as_json {
        let mut value = product_json(product);
        value["images"] = images.iter().map(image_json).collect();
        println!("{value}");
        return;
    }
    println!(
        "product {}  {}  {}",
        product.id,
        product.title,
        price_text(product)
    );
    println!(
        "  seller {}  tags [{}]  {}",
        product.seller_id,
        product.tags.join(", "),
        visibility_name(product.visibility)
    );
    if !product.description.is_empty() {
        println!("  {}", product.description);
    }
    for image in images {
        image_text(image);
    }
}

pub fn products(products: &[catalog::Product], as_json: bool) {
    if as_json {
        println!(
            "{}",
            Value::Array(products.iter().map(product_json).collect())
        );
        return;
    }
    if products.is_empty() {
        println!("no products");
    }
    for product in products {
        println!("{}  {}  {}", product.id, product.title, price_text(product));
    }
}

pub fn image(image: &catalog::Image, as_json: bool) {
    if as_json {
        println!("{}", image_json(image));
    } else {
        image_text(image);
    }
}

/// `DRAFT` or `PUBLISHED` (older records without a visibility read as drafts).
fn visibility_name(visibility: i32) -> &'static str {
    match catalog::ProductVisibility::try_from(visibility) {
        Ok(catalog::ProductVisibility::Published) => "PUBLISHED",
        _ => "DRAFT",
    }
}

pub fn image_url(url: &str, expires: Option<&prost_types::Timestamp>, as_json: bool) {
    if as_json {
        println!("{}", json!({"url": url, "expire_time": timestamp(expires)}));
    } else {
        println!("{url}");
    }
}

pub fn downloaded(saved: &super::download::Saved, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({"path": saved.path, "bytes": saved.bytes, "content_type": saved.content_type})
        );
    } else if saved.path != "-" {
        eprintln!(
            "saved {} ({} bytes, {})",
            saved.path, saved.bytes, saved.content_type
        );
    }
}

pub fn uploaded(created: &Value, as_json: bool) {
    if as_json {
        println!("{created}");
        return;
    }
    let field = |name: &str| {
        created
            .get(name)
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    println!(
        "uploaded image {} to product {} ({} bytes, {}x{}), state {}",
        created
            .get("image_id")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        created
            .get("product_id")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        field("size_bytes"),
        field("width"),
        field("height"),
        created
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
}
