//! Endpoints with `override_path = true` (a Harbor proxy-cache project, `https://harbor/v2/docker-hub`)
//! probed as containerd uses them: the URL is the API root, so containerd asks
//! `<url>/<repository>/manifests/<reference>` and never `<url>/v2/`. `/v2/` under such a URL is
//! a 404 for the right and the mistyped project alike; a manifest this node already pulled from
//! the registry is not, so doctor HEADs one of those.

use reqwest::StatusCode;
use shoal_oci::normalize_registry;

use super::{Check, Level};

/// What the manifest probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Serves,
    WrongPath,
    Hangs,
    Unreachable,
    NotProbed,
}

/// `docker.io/library/app:v1` → (`docker.io`, `library/app`).
pub(super) fn split_name(name: &str) -> Option<(String, String)> {
    let (registry, rest) = name.split_once('/')?;
    let repo = rest.split_once('@').map(|(r, _)| r).unwrap_or(rest);
    let repo = repo.rsplit_once(':').map(|(r, _)| r).unwrap_or(repo);
    Some((normalize_registry(registry), repo.to_owned()))
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// HEADs `<url>/<repo>/manifests/<digest>` for an image of `registry` this node holds.
pub(super) async fn probe(
    c: &mut Check,
    http: &reqwest::Client,
    url: &str,
    registry: &str,
    images: &Result<Vec<(String, String)>, String>,
    timeout: std::time::Duration,
) -> Outcome {
    let registry = normalize_registry(registry);
    let held = match images {
        Ok(list) => list.iter().find_map(|(name, digest)| {
            split_name(name)
                .filter(|(r, _)| *r == registry)
                .map(|(_, repo)| (repo, digest.clone()))
        }),
        Err(e) => {
            c.note(format!(
                "{url} (override_path): containerd's images unknown ({e}); not probed"
            ));
            return Outcome::NotProbed;
        }
    };
    let Some((repo, digest)) = held else {
        c.note(format!(
            "{url} (override_path): no image of {registry} on this node to probe a manifest \
             with; containerd never asks such an endpoint for /v2/"
        ));
        return Outcome::NotProbed;
    };
    let target = format!("{}/{repo}/manifests/{digest}", url.trim_end_matches('/'));
    match http
        .head(&target)
        .header(reqwest::header::ACCEPT, ACCEPT)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            c.note(format!(
                "HEAD {target} -> {} (override_path: the path is the API root containerd uses)",
                r.status()
            ));
            Outcome::Serves
        }
        Ok(r) if r.status() == StatusCode::NOT_FOUND => {
            c.raise(
                Level::Fail,
                format!(
                    "HEAD {target} -> 404: with override_path, {url} does not serve {repo}, which \
                     this node pulled from {registry}: the path (proxy-cache project) is wrong, so \
                     every pull skips this endpoint"
                ),
            );
            Outcome::WrongPath
        }
        Ok(r) => {
            c.note(format!(
                "HEAD {target} -> {} (override_path; authentication not followed here)",
                r.status()
            ));
            Outcome::NotProbed
        }
        Err(e) if e.is_timeout() => {
            c.raise(
                Level::Fail,
                format!("HEAD {target}: no answer within {timeout:?}: a pull through it hangs"),
            );
            Outcome::Hangs
        }
        Err(e) => {
            c.raise(
                Level::Warn,
                format!("HEAD {target}: {}", super::probe::error_chain(&e)),
            );
            Outcome::Unreachable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_registry_and_repository() {
        assert_eq!(
            split_name("docker.io/library/app:v1"),
            Some(("docker.io".into(), "library/app".into()))
        );
        assert_eq!(
            split_name("10.0.0.1:5000/team/app@sha256:abc"),
            Some(("10.0.0.1:5000".into(), "team/app".into()))
        );
        assert_eq!(split_name("app"), None);
    }
}
