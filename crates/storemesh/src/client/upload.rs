//! `storemesh upload`: streams a file to the upload hook (`POST /v1/products/{id}/images`)
//! with a progress bar, never reading the whole file into memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::{ClientOpts, Session};

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// The image file (JPEG, PNG, WebP or GIF).
    pub file: PathBuf,
    /// Id of the product to add the image to.
    #[arg(long)]
    pub product: String,
    /// Media type; guessed from the file extension when absent.
    #[arg(long)]
    pub content_type: Option<String>,
    /// Makes retries safe: the same key never creates a second image. A fresh one is made per
    /// command when absent.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Attempts after the first on 429/502/503/504 or a broken connection.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

/// The media type for a file name, for the formats the upload hook accepts.
pub fn guess_content_type(path: &Path) -> Option<&'static str> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match extension.as_str() {
        "jpg" | "jpeg" | "jpe" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => return None,
    })
}

fn upload_url(edge: &str, product_id: &str) -> anyhow::Result<String> {
    let valid_id = !product_id.is_empty()
        && product_id.len() <= 64
        && product_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_id {
        bail!("product id {product_id:?} is not a valid id");
    }
    Ok(format!(
        "{}/v1/products/{product_id}/images",
        edge.trim_end_matches('/')
    ))
}

enum Attempt {
    Done(Value),
    Retry { reason: String, after: Duration },
}

pub async fn run(opts: &ClientOpts, session: &Session, args: &UploadArgs) -> anyhow::Result<Value> {
    let content_type = match &args.content_type {
        Some(content_type) => content_type.clone(),
        None => guess_content_type(&args.file)
            .with_context(|| {
                format!(
                    "cannot tell the type of {} from its extension: pass --content-type",
                    args.file.display()
                )
            })?
            .to_owned(),
    };
    let url = upload_url(&opts.edge, &args.product)?;
    let idempotency_key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let size = tokio::fs::metadata(&args.file)
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;
    let progress = transfer_progress("uploading", Some(size), !opts.json);
    let mut attempt = 0;
    loop {
        progress.set_position(0);
        let outcome = send_once(
            &client,
            &url,
            session,
            &content_type,
            &idempotency_key,
            &args.file,
            size,
            opts.timeout_secs,
            &progress,
        )
        .await?;
        match outcome {
            Attempt::Done(created) => {
                progress.finish_and_clear();
                return Ok(created);
            }
            Attempt::Retry { reason, after } if attempt < args.retries => {
                attempt += 1;
                progress.set_message(format!("retrying ({reason})"));
                tokio::time::sleep(after).await;
            }
            Attempt::Retry { reason, .. } => {
                progress.abandon();
                bail!("upload failed after {} attempts: {reason}", attempt + 1);
            }
        }
    }
}

/// A byte-transfer progress bar on stderr (hidden for `--json` or piped output).
pub fn transfer_progress(message: &'static str, total: Option<u64>, visible: bool) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(
        total,
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    progress.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_message(message);
    progress
}

#[allow(clippy::too_many_arguments)]
async fn send_once(
    client: &reqwest::Client,
    url: &str,
    session: &Session,
    content_type: &str,
    idempotency_key: &str,
    file: &Path,
    size: u64,
    timeout_secs: u64,
    progress: &ProgressBar,
) -> anyhow::Result<Attempt> {
    let opened = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let counted = progress.clone();
    let body =
        tokio_util::io::ReaderStream::with_capacity(opened, 256 * 1024).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                counted.inc(chunk.len() as u64);
            }
        });
    // The deadline grows with the size: a large file on a slow link is not a timeout.
    let deadline = Duration::from_secs(timeout_secs) + Duration::from_millis(size / 1024);
    let result = client
        .post(url)
        .bearer_auth(&session.access_token)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header("idempotency-key", idempotency_key)
        .timeout(deadline)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    let response = match result {
        Ok(response) => response,
        Err(error) if error.is_connect() || error.is_timeout() || error.is_request() => {
            return Ok(Attempt::Retry {
                reason: format!("{error}"),
                after: Duration::from_secs(1),
            });
        }
        Err(error) => return Err(error).context("upload request failed"),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        if body.get("image_id").and_then(Value::as_str).is_none() {
            bail!("the upload hook answered {status} without an image id: {text}");
        }
        return Ok(Attempt::Done(body));
    }
    let error = &body["error"];
    let reason = format!(
        "{} {}: {}",
        status.as_u16(),
        error["code"].as_str().unwrap_or("error"),
        error["message"]
            .as_str()
            .map_or_else(|| text.trim().to_owned(), str::to_owned)
    );
    if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
        return Ok(Attempt::Retry {
            reason,
            after: retry_after.unwrap_or(Duration::from_secs(1)),
        });
    }
    bail!("upload refused ({reason})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_from_extensions() {
        assert_eq!(guess_content_type(Path::new("a/b.JPG")), Some("image/jpeg"));
        assert_eq!(guess_content_type(Path::new("x.webp")), Some("image/webp"));
        assert_eq!(guess_content_type(Path::new("x.tiff")), None);
        assert_eq!(guess_content_type(Path::new("noext")), None);
    }

    #[test]
    fn upload_url_refuses_ids_that_would_change_the_path() {
        assert_eq!(
            upload_url("http://h:3000/", "01ABC").unwrap(),
            "http://h:3000/v1/products/01ABC/images"
        );
        for bad in ["", "../x", "a/b", "a?b", &"x".repeat(65)] {
            assert!(upload_url("http://h:3000", bad).is_err(), "{bad}");
        }
    }
}
