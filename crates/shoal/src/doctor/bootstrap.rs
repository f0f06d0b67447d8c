//! Check `bootstrap-loop`: an image of the service that provides a mirror (Shoal's own image, or
//! Harbor's components) pulled only through that mirror. While the service is down (a restart,
//! an upgrade, a new node) its image cannot be pulled, so it never comes back. containerd tries
//! the `[host]` entries in order, then `server` (or the registry itself when `server` is
//! unset); the loop is closed when every one of them is the service's own.

use shoal_oci::normalize_registry;

use super::hosts::HostsFile;
use super::override_path::split_name;
use super::{Check, Inputs, Level};

type Files = Result<Vec<HostsFile>, String>;

/// Which service an image is, if it provides a mirror: Shoal, or Harbor (goharbor/harbor-*).
fn service_of(repo: &str) -> Option<&'static str> {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if last == "shoal" {
        Some("Shoal")
    } else if repo.contains("goharbor/") && last.starts_with("harbor-") {
        Some("Harbor")
    } else {
        None
    }
}

/// Whether endpoint `url` is provided by `service`.
fn provided_by(service: &str, url: &str, shoal_urls: &[String]) -> bool {
    let same = |a: &str, b: &str| {
        a.trim_end_matches('/')
            .eq_ignore_ascii_case(b.trim_end_matches('/'))
    };
    match service {
        "Shoal" => shoal_urls.iter().any(|s| same(s, url)),
        _ => super::hosts::host_of(url).is_some_and(|h| h.contains("harbor")),
    }
}

/// The check.
pub fn bootstrap_loop(
    inputs: &Inputs,
    files: &Files,
    images: &Result<Vec<(String, String)>, String>,
) -> Check {
    let mut c = Check::new(
        "bootstrap-loop",
        "the mirror's own images can be pulled while the mirror is down",
    );
    let (Ok(files), Ok(images)) = (files, images) else {
        c.raise(
            Level::Skip,
            "hosts directory or containerd's images unknown (see default-catch-all, transfer-service)",
        );
        return c.fix("pass --hosts-dir and --containerd-socket");
    };
    let mut shoal_urls: Vec<String> = inputs.mirrors.clone();
    for f in files {
        shoal_urls.extend(f.hosts.iter().filter(|(_, s)| *s).map(|(u, _)| u.clone()));
    }
    let mut seen = 0;
    for (name, _) in images {
        let Some((registry, repo)) = split_name(name) else {
            continue;
        };
        let Some(service) = service_of(&repo) else {
            continue;
        };
        seen += 1;
        let file = files
            .iter()
            .find(|f| normalize_registry(&f.registry) == registry)
            .or_else(|| files.iter().find(|f| f.registry == "_default"));
        let Some(f) = file else {
            c.note(format!(
                "{name} ({service}): no hosts.toml, pulled from {registry} directly"
            ));
            continue;
        };
        let mut chain: Vec<String> = f.hosts.iter().map(|(u, _)| u.clone()).collect();
        chain.push(
            f.server
                .clone()
                .unwrap_or_else(|| format!("https://{registry} (containerd's default)")),
        );
        let own: Vec<bool> = chain
            .iter()
            .map(|u| provided_by(service, u, &shoal_urls))
            .collect();
        if own.iter().all(|o| *o) {
            c.raise(
                Level::Fail,
                format!(
                    "{name} ({service}'s own image): every endpoint of {} is {service}'s ({}): \
                     while {service} is down this image cannot be pulled, so it never comes back",
                    f.path.display(),
                    chain.join(", ")
                ),
            );
        } else if let Some(i) = own.iter().position(|o| !o) {
            c.note(format!(
                "{name} ({service}'s own image): falls back to {} when {service} is down",
                chain[i]
            ));
        }
    }
    if seen == 0 {
        c.note("no image of Shoal or Harbor on this node");
    }
    c.fix(
        "keep an endpoint that does not depend on the service in that registry's hosts.toml: the \
         registry's upstream as `server` (what `shoal configure` writes), or pull the service's \
         image from a registry it does not mirror",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_services_images_and_endpoints() {
        assert_eq!(service_of("shoal-org/shoal"), Some("Shoal"));
        assert_eq!(service_of("goharbor/harbor-core"), Some("Harbor"));
        assert_eq!(service_of("library/nginx"), None);
        let shoal = ["http://127.0.0.1:5000".to_owned()];
        assert!(provided_by("Shoal", "http://127.0.0.1:5000/", &shoal));
        assert!(!provided_by("Shoal", "https://ghcr.io", &shoal));
        assert!(provided_by(
            "Harbor",
            "http://harbor.harbor.svc.cluster.local",
            &shoal
        ));
    }
}
