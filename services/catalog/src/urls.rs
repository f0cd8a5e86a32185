//! Image URLs on output.
//!
//! `Image.url_path`/`url`/`srcset` and `ImageVariant.url_path`/`url` are never stored: they are
//! derived from the image id, the variant's name and format, and this instance's configured
//! public base URL each time an image leaves the service (responses and `WatchProduct`
//! messages alike), so changing the base URL needs no migration. The path layout is
//! `storemesh-image-urls`', the one the `images` edge function parses.

use storemesh_image_urls as image_urls;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::watch_product_response::Change;

use crate::model::ImageRecord;
use crate::validate::format_extension;

/// Adds URLs to images; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ImageUrls {
    /// `catalog.public_image_base_url`; empty = paths only.
    base: String,
}

impl ImageUrls {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
        }
    }

    /// `path` made absolute with the base URL (the path alone without one).
    pub fn absolute(&self, path: &str) -> String {
        image_urls::absolute(&self.base, path)
    }

    /// The record's protobuf form with its URLs.
    pub fn image(&self, record: &ImageRecord) -> pb::Image {
        let mut image = record.to_proto();
        self.decorate(&mut image);
        image
    }

    /// Fills the URL fields of `image` and its variants.
    pub fn decorate(&self, image: &mut pb::Image) {
        image.url_path = image_urls::original_path(&image.id);
        image.url = self.absolute(&image.url_path);
        for variant in &mut image.variants {
            // Every recorded variant has a known format (RecordVariant checks it); an unknown
            // one would have no file name, so it keeps no URL rather than a wrong one.
            let Some(extension) = format_extension(variant.format) else {
                continue;
            };
            variant.url_path = image_urls::variant_path(&image.id, &variant.name, extension);
            variant.url = self.absolute(&variant.url_path);
        }
        image.srcset = image_urls::srcset(
            image
                .variants
                .iter()
                .filter(|variant| !variant.url.is_empty())
                .map(|variant| (variant.url.as_str(), variant.width)),
        );
    }

    /// Fills the URLs of the image a watch message carries, if any.
    pub fn decorate_change(&self, message: &mut pb::WatchProductResponse) {
        if let Some(Change::ImageUpdated(image)) = &mut message.change {
            self.decorate(image);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> pb::Image {
        let variant = |name: &str, width: u32, format: pb::ImageFormat| pb::ImageVariant {
            name: name.into(),
            width,
            height: width,
            format: format.into(),
            ..pb::ImageVariant::default()
        };
        pb::Image {
            id: "01IMG".into(),
            variants: vec![
                variant("w160", 160, pb::ImageFormat::Png),
                variant("w320", 320, pb::ImageFormat::Jpeg),
                variant("w640", 640, pb::ImageFormat::Webp),
            ],
            ..pb::Image::default()
        }
    }

    #[test]
    fn urls_follow_the_id_the_variant_format_and_the_base() {
        let mut with_base = image();
        ImageUrls::new("https://img.example.com/").decorate(&mut with_base);
        assert_eq!(with_base.url_path, "/img/01IMG/original");
        assert_eq!(with_base.url, "https://img.example.com/img/01IMG/original");
        let paths: Vec<_> = with_base
            .variants
            .iter()
            .map(|v| v.url_path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "/img/01IMG/w160.png",
                "/img/01IMG/w320.jpg",
                "/img/01IMG/w640.webp"
            ]
        );
        assert_eq!(
            with_base.variants[1].url,
            "https://img.example.com/img/01IMG/w320.jpg"
        );
        assert_eq!(
            with_base.srcset,
            "https://img.example.com/img/01IMG/w160.png 160w, \
             https://img.example.com/img/01IMG/w320.jpg 320w, \
             https://img.example.com/img/01IMG/w640.webp 640w"
        );

        let mut paths_only = image();
        ImageUrls::new("").decorate(&mut paths_only);
        assert_eq!(paths_only.url, paths_only.url_path);
        assert!(paths_only.srcset.starts_with("/img/01IMG/w160.png 160w, "));

        let mut bare = pb::Image {
            id: "x".into(),
            ..pb::Image::default()
        };
        ImageUrls::new("http://127.0.0.1:3000").decorate(&mut bare);
        assert_eq!(bare.url, "http://127.0.0.1:3000/img/x/original");
        assert_eq!(bare.srcset, "", "no variants yet");
    }
}
