//! Check `registry-auth`: would containerd's pull from each registry endpoint in hosts.toml get
//! past TLS and authentication? It does what containerd's resolver does: `GET /v2/` with the
//! endpoint's TLS settings; on a 401 it follows the challenge: HTTP Basic with the credentials
//! containerd would send, or a token from the Bearer realm (anonymously and with the
//! credentials) and `/v2/` again with it. Credentials are the ones containerd's CRI looks up by
//! the endpoint's host (`registry.configs."<host>".auth`); credentials keyed under the registry's
//! name instead are found and reported, since containerd never sends them.

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};

use super::config::{ContainerdConfig, Credentials, Found};
use super::hosts::HostsFile;
use super::probe::{MAX_PROBES, client, error_chain, is_certificate_error, v2};
use super::scheme;
use super::token::{self, Challenge, TokenError};
use super::{Check, Inputs, Level};

type Files = Result<Vec<HostsFile>, String>;

/// What went wrong at one endpoint; each kind has its own fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Problem {
    PlainHttp,
    NeedsTls,
    KeyedElsewhere,
    RealmUnreachable,
    Rejected,
    NeedsCredentials,
    Untrusted,
    WrongPath,
    Hangs,
    Unreachable,
}

fn fix_for(p: Problem) -> &'static str {
    match p {
        Problem::PlainHttp => {
            "the endpoint speaks plain HTTP but hosts.toml names it https://, and containerd does \
             not fall back: write `server = \"http://<host>\"` (and the same in its [host] table); \
             with `shoal configure`, list the registry as `http://<host>` in --registries \
             (SHOAL_REGISTRIES) so every file written keeps the scheme (Talos: \
             machine.registries.mirrors.<host>.endpoints: [http://<host>])"
        }
        Problem::NeedsTls => {
            "the endpoint speaks TLS only but hosts.toml names it http://: write https:// in that \
             hosts.toml (with `ca = \"/path/ca.pem\"` for a private CA), or list the registry \
             without the http:// scheme in --registries"
        }
        Problem::KeyedElsewhere => {
            "containerd looks credentials up by the host of the endpoint it talks to, not by the \
             registry's name: key them under the endpoint (registry.configs.\"<endpoint host>\".auth; \
             Talos: machine.registries.config.<endpoint host>.auth, e.g. the internal \
             harbor.harbor.svc.cluster.local rather than the LoadBalancer IP)"
        }
        Problem::RealmUnreachable => {
            "the registry's token service (the realm of its Bearer challenge) does not answer from \
             this node, so containerd fails with \"failed to fetch anonymous token\" or \"failed to \
             fetch oauth token\": make the realm reachable from the host network (Harbor: set \
             externalURL to an address and scheme the nodes reach, e.g. the LoadBalancer IP; the \
             realm is <externalURL>/service/token)"
        }
        Problem::Rejected => {
            "the registry refuses the credentials containerd would send (the pull gets the same \
             401): check that the robot account exists, is enabled and not expired, and that its \
             secret is the one configured (Talos: machine.registries.config.<endpoint host>.auth); \
             test with `curl -u '<robot>:<secret>' <endpoint>/v2/` (Basic) or against the realm \
             (Bearer)"
        }
        Problem::NeedsCredentials => {
            "create a robot (pull-only) account on that registry and give containerd its \
             credentials under the endpoint's host (Talos: machine.registries.config.<endpoint \
             host>.auth; otherwise imagePullSecrets on the pods' service account); test with \
             `curl -u '<robot>:<secret>' <endpoint>/v2/`"
        }
        Problem::Untrusted => {
            "an endpoint's TLS certificate is not trusted from this node, so containerd fails the \
             same way: give containerd the registry's CA with `ca = \"/path/ca.pem\"` in that \
             hosts.toml (Talos: machine.registries.config.<host>.tls.ca), or fix the certificate \
             (expired, wrong name); `skip_verify = true` only on a lab cluster"
        }
        Problem::WrongPath => {
            "with override_path = true the endpoint's URL is the API root containerd uses \
             (`<url>/<repository>/manifests/…`): for a Harbor proxy cache it is \
             https://<harbor>/v2/<proxy-cache project>; check the project's name in Harbor and in \
             the endpoint (k3s registries.yaml: mirrors.<registry>.endpoint)"
        }
        Problem::Hangs => {
            "an endpoint accepts connections but does not answer, and containerd waits on it: fix \
             or restart the service behind it, or remove it from hosts.toml until it answers"
        }
        Problem::Unreachable => {
            "an endpoint containerd is told to use did not answer from this node: check its \
             address in hosts.toml, the node's firewall and routes (see also hosts-resolve)"
        }
    }
}

/// `host[:port]` of an endpoint URL, as containerd keys credentials.
pub(super) fn endpoint_host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_default()
}

/// The check.
pub async fn registry_auth(
    inputs: &Inputs,
    files: &Files,
    cfg: &Result<ContainerdConfig, String>,
    images: &Result<Vec<(String, String)>, String>,
) -> Check {
    let mut c = Check::new(
        "registry-auth",
        "registry endpoints in hosts.toml accept this node's pulls (trusted TLS, credentials and tokens as containerd uses them)",
    );
    let Ok(files) = files else {
        c.raise(
            Level::Skip,
            "hosts directory unreadable (see default-catch-all)",
        );
        return c;
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut targets = Vec::new();
    for f in files {
        for (url, shoal) in f.endpoints() {
            // Another P2P mirror's entries are the foreign-mirrors check's.
            if shoal
                || super::foreign::foreign_tool(&url).is_some()
                || !seen.insert((f.registry.clone(), url.clone(), f.tls_for(&url)))
            {
                continue;
            }
            targets.push((f, url));
        }
    }
    if targets.len() > MAX_PROBES {
        c.note(format!(
            "more than {MAX_PROBES} endpoints: the rest not probed"
        ));
        targets.truncate(MAX_PROBES);
    }
    if targets.is_empty() {
        c.note("no registry endpoint named in hosts.toml");
    }
    // Endpoints are probed at once, so the check takes the time of the slowest one.
    let cfg = cfg.as_ref().ok();
    let jobs = targets.into_iter().map(|(f, url)| async move {
        let mut one = Check::new("registry-auth", "");
        let problem = probe(&mut one, inputs, f, &url, cfg, images).await;
        (one, problem)
    });
    let mut problems = std::collections::BTreeSet::new();
    for (one, problem) in futures::future::join_all(jobs).await {
        c.status = c.status.max(one.status);
        c.evidence.extend(one.evidence);
        problems.extend(problem);
    }
    let fixes: Vec<&str> = problems.into_iter().map(fix_for).collect();
    c.fix(fixes.join("; also: "))
}

/// Probes one endpoint, recording what it finds in `c`; returns the problem found, if any.
async fn probe(
    c: &mut Check,
    inputs: &Inputs,
    f: &HostsFile,
    url: &str,
    cfg: Option<&ContainerdConfig>,
    images: &Result<Vec<(String, String)>, String>,
) -> Option<Problem> {
    let v2 = v2(url);
    let http = match client(inputs.timeout, &f.tls_for(url)) {
        Ok(h) => h,
        Err(e) => {
            c.raise(Level::Fail, format!("{url}: {e}"));
            return Some(Problem::Untrusted);
        }
    };
    if f.override_path.contains(url) {
        use super::override_path::{Outcome, probe as manifest};
        return match manifest(c, &http, url, &f.registry, images, inputs.timeout).await {
            Outcome::WrongPath => Some(Problem::WrongPath),
            Outcome::Hangs => Some(Problem::Hangs),
            Outcome::Unreachable => Some(Problem::Unreachable),
            Outcome::Serves | Outcome::NotProbed => None,
        };
    }
    let started = std::time::Instant::now();
    let resp = match http.get(&v2).send().await {
        Ok(r) => r,
        Err(e) => {
            let chain = error_chain(&e);
            if let Some(p) = scheme_mismatch(c, inputs, url, &v2, &chain, e.is_timeout()).await {
                return Some(p);
            }
            if is_certificate_error(&chain) {
                c.raise(Level::Fail, format!("GET {v2}: {chain}"));
                return Some(Problem::Untrusted);
            }
            if e.is_timeout() {
                c.raise(
                    Level::Fail,
                    format!(
                        "GET {v2}: no answer within {:?}: a pull through it hangs",
                        inputs.timeout
                    ),
                );
                return Some(Problem::Hangs);
            }
            c.raise(Level::Warn, format!("GET {v2}: {chain}"));
            return Some(Problem::Unreachable);
        }
    };
    let took = started.elapsed();
    if took > inputs.slow_after {
        c.raise(
            Level::Warn,
            format!(
                "GET {v2} took {} (slower than --slow-after {:?}): every pull through it pays this",
                crate::admin::render::age(took),
                inputs.slow_after
            ),
        );
    }
    let status = resp.status();
    if status == StatusCode::BAD_REQUEST && url.starts_with("http://") {
        let body = super::probe::read_bounded(resp, 4096)
            .await
            .unwrap_or_default();
        if scheme::is_tls_refusal(400, &String::from_utf8_lossy(&body)) {
            c.raise(
                Level::Fail,
                format!(
                    "GET {v2} -> 400 \"{}\": the endpoint speaks TLS, hosts.toml says http://",
                    String::from_utf8_lossy(&body).trim()
                ),
            );
            return Some(Problem::NeedsTls);
        }
        c.note(format!(
            "GET {v2} -> {status} in {}",
            crate::admin::render::age(took)
        ));
        return None;
    }
    if status != StatusCode::UNAUTHORIZED {
        c.note(format!(
            "GET {v2} -> {status} in {}",
            crate::admin::render::age(took)
        ));
        return None;
    }
    let header = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer"))
        .or_else(|| {
            resp.headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("")
        .to_owned();
    let host = endpoint_host(url);
    let creds = cfg.and_then(|cfg| cfg.credentials_for(&host));
    let elsewhere = creds
        .is_none()
        .then(|| keyed_elsewhere(cfg, &f.registry, &host))
        .flatten();
    let Some(ch) = Challenge::parse(&header) else {
        c.raise(
            Level::Fail,
            format!("GET {v2} -> 401 without a WWW-Authenticate challenge"),
        );
        return Some(Problem::NeedsCredentials);
    };
    c.note(format!(
        "GET {v2} -> 401, challenge: {} (in {})",
        ch.describe(),
        crate::admin::render::age(took)
    ));
    let authorization = match ch.scheme.as_str() {
        "basic" => match &creds {
            Some(found) => {
                let Credentials { username, secret } = &found.value;
                Some(basic(username, secret))
            }
            None => None,
        },
        "bearer" => {
            let anonymous = token::fetch(&http, &ch, None).await;
            let realm = ch.param("realm").unwrap_or("");
            match &anonymous {
                Ok(_) => c.note(format!("anonymous token from {realm}: granted")),
                Err(e @ TokenError::Unreachable(_)) | Err(e @ TokenError::NoRealm(_)) => {
                    c.raise(
                        Level::Fail,
                        format!("failed to fetch anonymous token from {realm}: {e}"),
                    );
                    return Some(Problem::RealmUnreachable);
                }
                Err(e) => c.note(format!("anonymous token from {realm}: {e}")),
            }
            match &creds {
                Some(found) => {
                    let fetched = token::fetch(&http, &ch, Some(&found.value)).await;
                    match fetched {
                        Ok(t) => {
                            c.note(format!(
                                "token from {realm} with the credentials of {} ({} in {}): granted",
                                found.value.who(),
                                found.key,
                                found.file.display()
                            ));
                            Some(t.bearer())
                        }
                        Err(e) => {
                            c.raise(
                                Level::Fail,
                                format!(
                                    "token from {realm} with the credentials of {} ({} in {}): {e}",
                                    found.value.who(),
                                    found.key,
                                    found.file.display()
                                ),
                            );
                            return Some(match e {
                                TokenError::Unreachable(_) => Problem::RealmUnreachable,
                                _ => Problem::Rejected,
                            });
                        }
                    }
                }
                None => anonymous.ok().map(|t| t.bearer()),
            }
        }
        other => {
            c.raise(
                Level::Fail,
                format!("GET {v2} -> 401 with a {other} challenge, which containerd cannot answer"),
            );
            return Some(Problem::NeedsCredentials);
        }
    };
    let Some(authorization) = authorization else {
        return Some(missing(c, &v2, &host, elsewhere));
    };
    let how = if creds.is_some() {
        "with the configured credentials"
    } else {
        "anonymously"
    };
    match http
        .get(&v2)
        .header(AUTHORIZATION, authorization)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            c.note(format!("GET {v2} {how} -> {}", r.status()));
            if let Some(e) = elsewhere {
                c.raise(
                    Level::Warn,
                    format!(
                        "credentials for {} ({} in {}) are never sent to {host}: containerd pulls \
                         anonymously (private projects fail)",
                        e.value,
                        e.key,
                        e.file.display()
                    ),
                );
                return Some(Problem::KeyedElsewhere);
            }
            None
        }
        Ok(r) if creds.is_some() => {
            c.raise(Level::Fail, format!("GET {v2} {how} -> {}", r.status()));
            Some(Problem::Rejected)
        }
        Ok(r) => {
            c.note(format!("GET {v2} {how} -> {}", r.status()));
            Some(missing(c, &v2, &host, elsewhere))
        }
        Err(e) => {
            c.raise(Level::Warn, format!("GET {v2} {how}: {}", error_chain(&e)));
            Some(Problem::Unreachable)
        }
    }
}

/// After `GET <v2>` failed with `chain`: whether the endpoint speaks the other scheme.
async fn scheme_mismatch(
    c: &mut Check,
    inputs: &Inputs,
    url: &str,
    v2: &str,
    chain: &str,
    timed_out: bool,
) -> Option<Problem> {
    let https = url.starts_with("https://");
    // Plain HTTP read as TLS fails the handshake at once; TLS sent plain HTTP closes or hangs.
    let suspect = if https {
        scheme::looks_like_plain_http(chain)
    } else {
        !timed_out && !chain.to_ascii_lowercase().contains("refused")
    };
    if !suspect {
        return None;
    }
    let (other, res) = scheme::try_other(url, inputs.timeout).await?;
    let status = res.ok()?;
    c.raise(
        Level::Fail,
        format!(
            "GET {v2}: {chain}; {} answers {status}: the endpoint speaks {}, hosts.toml says {}",
            super::probe::v2(&other),
            if https { "plain HTTP" } else { "TLS" },
            if https { "https://" } else { "http://" }
        ),
    );
    Some(if https {
        Problem::PlainHttp
    } else {
        Problem::NeedsTls
    })
}

/// No credentials reach `host` and it wants some.
fn missing(c: &mut Check, v2: &str, host: &str, elsewhere: Option<Found<String>>) -> Problem {
    match elsewhere {
        Some(e) => {
            c.raise(
                Level::Fail,
                format!(
                    "{v2} needs credentials; containerd has some for {} ({} in {}) but looks them \
                     up by the endpoint's host {host}, so it never sends them",
                    e.value,
                    e.key,
                    e.file.display()
                ),
            );
            Problem::KeyedElsewhere
        }
        None => {
            c.raise(
                Level::Fail,
                format!(
                    "{v2} needs credentials and containerd has none configured for {host}; pulls \
                     fail unless every pod brings an imagePullSecret"
                ),
            );
            Problem::NeedsCredentials
        }
    }
}

/// Credentials keyed under the registry's name (the hosts.toml directory) or its host without
/// the port, which containerd would not send to `host`.
fn keyed_elsewhere(
    cfg: Option<&ContainerdConfig>,
    registry: &str,
    host: &str,
) -> Option<Found<String>> {
    let cfg = cfg?;
    let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let key = cfg
        .hosts_with_credentials()
        .into_iter()
        .find(|k| k != host && (k == registry || k == bare))?;
    cfg.credentials_for(&key).map(|f| Found {
        value: key,
        file: f.file,
        key: f.key,
    })
}

pub(super) fn basic(user: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts_keep_explicit_ports() {
        assert_eq!(endpoint_host("http://127.0.0.1:5010"), "127.0.0.1:5010");
        assert_eq!(
            endpoint_host("https://harbor.internal/v2"),
            "harbor.internal"
        );
    }

    #[test]
    fn credentials_under_the_registry_name_are_found() {
        let text = "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"192.168.1.105\".auth]\nusername = \"robot$pull\"\npassword = \"x\"\n";
        let cfg = ContainerdConfig::from_text(std::path::Path::new("c.toml"), text).unwrap();
        let e = keyed_elsewhere(Some(&cfg), "192.168.1.105", "harbor.internal").unwrap();
        assert_eq!(e.value, "192.168.1.105");
        assert!(keyed_elsewhere(Some(&cfg), "other", "harbor.internal").is_none());
        assert!(keyed_elsewhere(Some(&cfg), "192.168.1.105", "192.168.1.105").is_none());
    }

    #[test]
    fn every_problem_has_a_fix() {
        for p in [
            Problem::PlainHttp,
            Problem::NeedsTls,
            Problem::KeyedElsewhere,
            Problem::RealmUnreachable,
            Problem::Rejected,
            Problem::NeedsCredentials,
            Problem::Untrusted,
            Problem::WrongPath,
            Problem::Hangs,
            Problem::Unreachable,
        ] {
            assert!(fix_for(p).len() > 40);
        }
    }
}
