//! `storemesh images url|download`: image URLs from the catalog, bytes from the edge's `images`
//! function (the same path a browser takes), streamed to a file with a progress bar.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;
use storemesh_proto::catalog::v1 as catalog;
use tokio::io::AsyncWriteExt;

use super::{ClientOpts, Session};

/// What `download` saved.
pub struct Saved {
    /// The file written, or `-` for standard output.
    pub path: String,
    pub bytes: u64,
    pub content_type: String,
}

/// The catalog's URL path of the original (`variant` `None`) or of a variant.
fn asset_path<'a>(image: &'a catalog::Image, variant: Option<&str>) -> anyhow::Result<&'a str> {
    let path = match variant {
        None => image.url_path.as_str(),
        Some(name) => {
            let Some(found) = image.variants.iter().find(|v| v.name == name) else {
                let names: Vec<&str> = image.variants.iter().map(|v| v.name.as_str()).collect();
                bail!(
                    "image {} has no variant {name:?} (it has: {})",
                    image.id,
                    if names.is_empty() {
                        "none yet".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
            };
            found.url_path.as_str()
        }
    };
    if path.is_empty() {
        bail!("the catalog gave no URL for image {}", image.id);
    }
    Ok(path)
}

/// The absolute URL the catalog gives for the asset (its configured public base URL).
pub fn asset_url(image: &catalog::Image, variant: Option<&str>) -> anyhow::Result<String> {
    let path = asset_path(image, variant)?;
    let absolute = match variant {
        None => image.url.as_str(),
        Some(name) => image
            .variants
            .iter()
            .find(|v| v.name == name)
            .map_or("", |v| v.url.as_str()),
    };
    Ok(if absolute.is_empty() {
        path.to_owned()
    } else {
        absolute.to_owned()
    })
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        _ => "bin",
    }
}

/// Fetches the asset from the edge (`--edge`) with the session's token and writes it to
/// `output`: into a temporary file next to it first, renamed when every byte arrived, so an
/// interrupted download leaves no half-written file behind.
pub async fn run(
    opts: &ClientOpts,
    session: &Session,
    image: &catalog::Image,
    variant: Option<&str>,
    output: Option<&Path>,
) -> anyhow::Result<Saved> {
    let url = format!(
        "{}{}",
        opts.edge.trim_end_matches('/'),
        asset_path(image, variant)?
    );
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;
    let response = client
        .get(&url)
        .bearer_auth(&session.access_token)
        .send()
        .await
        .with_context(|| format!("cannot reach the edge at {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or(text.as_str());
        bail!("{url}: {status}: {message}");
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let expected = response.content_length();
    let target = output.map_or_else(
        || {
            PathBuf::from(format!(
                "{}-{}.{}",
                image.id,
                variant.unwrap_or("original"),
                extension(&content_type)
            ))
        },
        Path::to_path_buf,
    );
    let to_stdout = target.as_os_str() == "-";
    let progress =
        super::upload::transfer_progress("downloading", expected, !(opts.json || to_stdout));

    let partial = if to_stdout {
        None
    } else {
        let name = target
            .file_name()
            .context("the output path names no file")?
            .to_string_lossy();
        Some(target.with_file_name(format!(".{name}.partial")))
    };
    let mut writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &partial {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut written = 0_u64;
    let mut body = response.bytes_stream();
    let copied: anyhow::Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download was interrupted")?;
            writer.write_all(&chunk).await.context("cannot write")?;
            written += chunk.len() as u64;
            progress.set_position(written);
        }
        writer.flush().await.context("cannot write")?;
        if let Some(expected) = expected
            && written != expected
        {
            bail!("the download ended after {written} of {expected} bytes");
        }
        Ok(())
    }
    .await;
    drop(writer);
    progress.finish_and_clear();
    if let Err(error) = copied {
        if let Some(path) = &partial {
            let _ = tokio::fs::remove_file(path).await;
        }
        return Err(error);
    }
    if let Some(path) = &partial {
        tokio::fs::rename(path, &target)
            .await
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(Saved {
        path: target.display().to_string(),
        bytes: written,
        content_type,
    })
}
