//! containerd's active ingests (writes in progress), and aborting the ones of a digest.
//!
//! The mirror streams peer bytes into containerd before the whole blob is verified (see
//! `shoal-mirror`'s `stream` module). When a blob turns out wrong after bytes were sent, its
//! ingest is aborted before the connection closes: containerd's running pull then fails, no
//! partial or complete-but-wrong ingest is left, and the next attempt starts from zero.
//! Measured on 1.6 and 2.2 (notes `containerd-ingest.md`): `Status.expected` is always empty, so
//! an ingest is found by its ref, which ends in `-<digest>` (`layer-sha256:<hex>`,
//! `config-sha256:…`, `manifest-sha256:…`).

use containerd_client::services::v1::{AbortRequest, ListStatusesRequest};
use shoal_oci::Digest;
use tonic::Code;

use crate::client::ContentSource;
use crate::error::Error;

/// One active ingest as containerd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingest {
    /// The ingest's ref (`layer-sha256:<hex>`).
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// Expected size, when the writer gave one.
    pub total: u64,
}

/// Does ingest `reference` write blob `digest`?
pub fn ref_is_for(reference: &str, digest: &Digest) -> bool {
    let d = digest.to_string();
    reference == d
        || reference
            .strip_suffix(d.as_str())
            .is_some_and(|head| head.ends_with('-') || head.ends_with(':'))
}

impl ContentSource {
    /// The active ingests of `digest` in this source's namespace.
    pub async fn ingests(&self, digest: &Digest) -> Result<Vec<Ingest>, Error> {
        let statuses = self
            .content()
            .list_statuses(self.request(ListStatusesRequest::default()))
            .await
            .map_err(|s| Error::rpc("Content.ListStatuses", s))?
            .into_inner()
            .statuses;
        Ok(statuses
            .into_iter()
            .filter(|s| ref_is_for(&s.r#ref, digest))
            .map(|s| Ingest {
                reference: s.r#ref,
                offset: u64::try_from(s.offset).unwrap_or(0),
                total: u64::try_from(s.total).unwrap_or(0),
            })
            .collect())
    }

    /// Abort every active ingest of `digest`; returns how many were aborted. An ingest that is
    /// gone by the time it is aborted (committed, or collected) is not an error.
    pub async fn abort_ingests(&self, digest: &Digest) -> Result<usize, Error> {
        let mut aborted = 0;
        for ingest in self.ingests(digest).await? {
            let req = self.request(AbortRequest {
                r#ref: ingest.reference.clone(),
            });
            match self.content().abort(req).await {
                Ok(_) => {
                    tracing::info!(digest = %digest, reference = %ingest.reference, offset = ingest.offset, "aborted ingest");
                    aborted += 1;
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(Error::rpc("Content.Abort", s)),
            }
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_match_by_digest_suffix() {
        let d = Digest::sha256_of(b"x");
        assert!(ref_is_for(&format!("layer-{d}"), &d));
        assert!(ref_is_for(&format!("config-{d}"), &d));
        assert!(ref_is_for(&d.to_string(), &d));
        assert!(!ref_is_for(
            &format!("layer-{}", Digest::sha256_of(b"y")),
            &d
        ));
        assert!(!ref_is_for(&format!("layerx{d}"), &d));
    }
}
