//! The connection to containerd: one tonic channel over the unix socket, the namespace header
//! every namespaced call carries, and the handful of small calls (version, namespaces, content
//! info and list) the rest of the crate builds on.
//!
//! tonic's channel reconnects by itself when containerd restarts (the next call dials the socket
//! again), so a [`ContentSource`] stays valid across restarts; calls made while containerd is
//! down fail with an [`Error::Rpc`] whose [`Error::is_connection`] is true.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{InfoRequest, ListContentRequest, ListNamespacesRequest};
use shoal_oci::Digest;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::error::{Error, parse_digest, root_cause};
use crate::inventory::Descriptor;

/// How long connecting and the first calls may take before the socket counts as unreachable
/// (a socket that accepts but never answers HTTP/2 would otherwise hang `connect` forever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// containerd's daemon version, as reported by its Version service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdVersion {
    pub version: String,
    pub revision: String,
}

/// A handle on one containerd namespace's images and content. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContentSource {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) socket: PathBuf,
    pub(crate) namespace: String,
    ns_header: AsciiMetadataValue,
    pub(crate) content_dir: Option<PathBuf>,
    channel: Channel,
    /// Children (config, layers, manifests) of manifests and indexes already parsed, by digest.
    /// Content is immutable, so an entry never goes stale; each inventory prunes it to what it
    /// visited.
    pub(crate) children: Mutex<HashMap<Digest, Arc<[Descriptor]>>>,
}

/// A failed call's message, or its transport cause when the message is empty.
fn status_reason(s: &tonic::Status) -> String {
    use std::error::Error as _;
    match s.source() {
        Some(cause) => root_cause(cause),
        None => format!("{} ({})", s.message(), s.code()),
    }
}

/// containerd's own rule for namespace names (`[A-Za-z0-9]` at both ends, `._-` inside, ≤ 76).
fn valid_namespace(ns: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let (Some(first), Some(last)) = (ns.chars().next(), ns.chars().last()) else {
        return false;
    };
    ns.len() <= 76
        && alnum(first)
        && alnum(last)
        && ns.chars().all(|c| alnum(c) || matches!(c, '.' | '_' | '-'))
}

impl ContentSource {
    /// Connects to containerd at `socket` and checks that `namespace` exists.
    ///
    /// `content_dir` is containerd's content store directory
    /// (`/var/lib/containerd/io.containerd.content.v1.content`); when given and readable, blobs
    /// are read from disk instead of through the Content API.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        content_dir: Option<PathBuf>,
    ) -> Result<ContentSource, Error> {
        if !valid_namespace(namespace) {
            return Err(Error::InvalidNamespace(namespace.to_owned()));
        }
        let ns_header: AsciiMetadataValue = MetadataValue::try_from(namespace)
            .map_err(|_| Error::InvalidNamespace(namespace.to_owned()))?;
        let unreachable = |reason: String| Error::Unreachable {
            socket: socket.to_owned(),
            reason,
        };

        let handshake = async {
            let channel = containerd_client::connect(socket)
                .await
                .map_err(|e| unreachable(root_cause(&e)))?;
            let namespaces = NamespacesClient::new(channel.clone())
                .list(ListNamespacesRequest::default())
                .await
                .map_err(|s| unreachable(status_reason(&s)))?
                .into_inner()
                .namespaces;
            Ok::<_, Error>((channel, namespaces))
        };
        let (channel, namespaces) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
            })??;

        let available: Vec<String> = namespaces.into_iter().map(|n| n.name).collect();
        if !available.iter().any(|n| n == namespace) {
            return Err(Error::NamespaceNotFound {
                socket: socket.to_owned(),
                namespace: namespace.to_owned(),
                available,
            });
        }
        tracing::debug!(socket = %socket.display(), namespace, "connected to containerd");
        Ok(ContentSource {
            inner: Arc::new(Inner {
                socket: socket.to_owned(),
                namespace: namespace.to_owned(),
                ns_header,
                content_dir,
                channel,
                children: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The socket this source talks to.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The containerd namespace whose images and content this source reads.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The content directory used for the fast read path, if one was given.
    pub fn content_dir(&self) -> Option<&Path> {
        self.inner.content_dir.as_deref()
    }

    /// containerd's version.
    pub async fn version(&self) -> Result<ContainerdVersion, Error> {
        let v = VersionClient::new(self.inner.channel.clone())
            .version(())
            .await
            .map_err(|s| Error::rpc("Version", s))?
            .into_inner();
        Ok(ContainerdVersion {
            version: v.version,
            revision: v.revision,
        })
    }

    /// Size of `digest` in the content store, or `None` when the store does not hold it.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        Ok(self
            .info(digest)
            .await?
            .map(|i| u64::try_from(i.size).unwrap_or(0)))
    }

    /// The registries `digest` was fetched from, from the labels containerd puts on content it
    /// pulled (`containerd.io/distribution.source.<registry>=<repositories>`, set just after the
    /// commit); empty when the blob is absent or carries none.
    pub async fn distribution_sources(&self, digest: &Digest) -> Result<Vec<String>, Error> {
        const PREFIX: &str = "containerd.io/distribution.source.";
        Ok(self
            .info(digest)
            .await?
            .map(|i| {
                i.labels
                    .keys()
                    .filter_map(|k| k.strip_prefix(PREFIX).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `Content.Info` of `digest` in this namespace; `None` when it is not held.
    async fn info(
        &self,
        digest: &Digest,
    ) -> Result<Option<containerd_client::services::v1::Info>, Error> {
        let req = self.request(InfoRequest {
            digest: digest.to_string(),
        });
        match self.content().info(req).await {
            Ok(resp) => Ok(resp.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(Error::rpc("Content.Info", s)),
        }
    }

    /// Every blob in the namespace's content store, with its size. Entries whose digest does
    /// not parse are logged and left out: they can never be requested by a valid digest.
    pub async fn present_blobs(&self) -> Result<HashMap<Digest, u64>, Error> {
        let mut stream = self
            .content()
            .list(self.request(ListContentRequest::default()))
            .await
            .map_err(|s| Error::rpc("Content.List", s))?
            .into_inner();
        let mut out = HashMap::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| Error::rpc("Content.List", s))?
        {
            for info in msg.info {
                match parse_digest(&info.digest) {
                    Ok(d) => {
                        out.insert(d, u64::try_from(info.size).unwrap_or(0));
                    }
                    Err(e) => tracing::warn!(error = %e, "content store lists a malformed digest"),
                }
            }
        }
        Ok(out)
    }

    /// Wraps `msg` in a request carrying this source's namespace.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, self.inner.ns_header.clone());
        req
    }

    pub(crate) fn content(&self) -> ContentClient<Channel> {
        // containerd streams 1 MiB messages; leave headroom over tonic's 4 MiB default anyway.
        ContentClient::new(self.inner.channel.clone()).max_decoding_message_size(16 << 20)
    }

    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.inner.channel.clone())
    }

    pub(crate) fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.inner.channel.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_namespace;

    #[test]
    fn namespace_rule() {
        assert!(valid_namespace("k8s.io"));
        assert!(valid_namespace("default"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("-x"));
        assert!(!valid_namespace("a b"));
        assert!(!valid_namespace("a\nb"));
        assert!(!valid_namespace("ns/../x"));
    }
}
