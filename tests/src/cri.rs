//! A minimal CRI image client (what kubelet calls), so tests exercise containerd's daemon-side
//! resolver, which reads `config_path` hosts.toml and does its HTTP inside the node namespace.
//! The unix socket works from any namespace. The API is sync: each call runs a current-thread
//! tokio runtime on its own OS thread, which is safe even when the caller is inside a runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, ListImagesRequest, PullImageRequest, RemoveImageRequest};

/// One image as the CRI `ListImages` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriImage {
    /// The image id (config digest).
    pub id: String,
    /// `docker.io/library/x:v1`, …
    pub repo_tags: Vec<String>,
    /// `docker.io/library/x@sha256:…`, …
    pub repo_digests: Vec<String>,
}

/// Run `fut_fn` to completion on a fresh current-thread runtime on a separate thread.
fn block_on<T: Send>(
    what: &str,
    timeout: Duration,
    fut_fn: impl AsyncFnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            rt.block_on(async {
                match tokio::time::timeout(timeout, fut_fn()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("{what} timed out after {timeout:?}")),
                }
            })
        })
        .join()
        .unwrap_or_else(|_| Err(format!("{what}: client thread panicked")))
    })
}

async fn client(socket: &Path) -> Result<ImageServiceClient<tonic::transport::Channel>, String> {
    let ch = containerd_client::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    Ok(ImageServiceClient::new(ch))
}

/// CRI `PullImage`; returns the image ref (config digest) and how long the call took.
pub(crate) fn pull(
    socket: &Path,
    image: &str,
    timeout: Duration,
) -> Result<(String, Duration), String> {
    block_on("CRI PullImage", timeout, async || {
        let mut c = client(socket).await?;
        let spec = ImageSpec {
            image: image.to_string(),
            ..Default::default()
        };
        let started = Instant::now();
        let r = c
            .pull_image(PullImageRequest {
                image: Some(spec),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map_err(|s| format!("CRI PullImage {image}: {} {}", s.code(), s.message()))?;
        Ok((r.into_inner().image_ref, started.elapsed()))
    })
}

/// CRI `ListImages`: every (id, repo tags, repo digests).
pub(crate) fn list(socket: &Path) -> Result<Vec<CriImage>, String> {
    block_on("CRI ListImages", Duration::from_secs(30), async || {
        let mut c = client(socket).await?;
        let r = c
            .list_images(ListImagesRequest { filter: None })
            .await
            .map_err(|s| format!("CRI ListImages: {} {}", s.code(), s.message()))?;
        Ok(r.into_inner()
            .images
            .into_iter()
            .map(|i| CriImage {
                id: i.id,
                repo_tags: i.repo_tags,
                repo_digests: i.repo_digests,
            })
            .collect())
    })
}

/// CRI `RemoveImage`.
pub(crate) fn remove(socket: &Path, image: &str) -> Result<(), String> {
    block_on("CRI RemoveImage", Duration::from_secs(30), async || {
        let mut c = client(socket).await?;
        let spec = ImageSpec {
            image: image.to_string(),
            ..Default::default()
        };
        c.remove_image(RemoveImageRequest { image: Some(spec) })
            .await
            .map_err(|s| format!("CRI RemoveImage {image}: {} {}", s.code(), s.message()))?;
        Ok(())
    })
}
