//! Check `mirror-speed`: a mirror exists for speed (the seeds: 69 MB/s in-cluster against
//! 200 KB/s over the tailnet), so each registry endpoint of hosts.toml is timed as a pull uses
//! it: `GET /v2/`, then a small ranged read (`Range: bytes=0-262143`) of the largest layer of an
//! image this node already pulled from that registry, past authentication with the credentials
//! containerd would send. containerd tries the `[host]` tables in order and `server` last, and
//! keeps to the first that answers; so a much faster endpoint after a slower one that answers is
//! one containerd rarely uses, and the fix is the order.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};

use super::config::ContainerdConfig;
use super::hosts::HostsFile;
use super::override_path::split_name;
use super::probe::{MAX_PROBES, client, error_chain, read_bounded, v2};
use super::token::{self, Challenge};
use super::{Check, Inputs, Level};
use crate::admin::render::age;

type Files = Result<Vec<HostsFile>, String>;

/// Bytes asked of a layer.
pub const READ_BYTES: usize = 256 * 1024;
/// A later endpoint this many times faster than the one containerd uses is reported unused...
const UNUSED_RATIO: u32 = 3;
/// ...when it also saves at least this much per request (loopback jitter is not a finding).
const UNUSED_FLOOR: Duration = Duration::from_millis(50);
/// Largest manifest read.
const MAX_MANIFEST: usize = 4 * 1024 * 1024;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// What one endpoint measured.
#[derive(Debug, Clone, Default)]
struct Timing {
    /// `/v2/` answered (any status) in this time.
    v2: Option<Duration>,
    /// The ranged read: bytes and time.
    read: Option<(usize, Duration)>,
    hangs: bool,
}

impl Timing {
    fn answers(&self) -> bool {
        self.v2.is_some() || self.read.is_some()
    }

    /// What to compare two endpoints by: the read when both have one, else `/v2/`.
    fn cost(&self, other: &Timing) -> Option<(Duration, Duration, &'static str)> {
        match (self.read, other.read, self.v2, other.v2) {
            (Some((_, a)), Some((_, b)), _, _) => Some((a, b, "ranged read")),
            (_, _, Some(a), Some(b)) => Some((a, b, "GET /v2/")),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let mut s = Vec::new();
        if let Some(t) = self.v2 {
            s.push(format!("/v2/ in {}", age(t)));
        }
        if let Some((n, t)) = self.read {
            s.push(format!("{} in {} ({})", kib(n), age(t), rate(n, t)));
        }
        s.join(", ")
    }
}

fn kib(n: usize) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

/// Throughput in KB/s or MB/s (decimal, as the seeds quote them).
pub fn rate(bytes: usize, took: Duration) -> String {
    let per_s = bytes as f64 / took.as_secs_f64().max(1e-6);
    if per_s >= 1e6 {
        format!("{:.1} MB/s", per_s / 1e6)
    } else {
        format!("{:.0} KB/s", per_s / 1e3)
    }
}

/// The check.
pub async fn mirror_speed(
    inputs: &Inputs,
    files: &Files,
    cfg: &Result<ContainerdConfig, String>,
    images: &Result<Vec<(String, String)>, String>,
) -> Check {
    let mut c = Check::new(
        "mirror-speed",
        "registry endpoints in hosts.toml are fast, answer, and the fastest is the one containerd uses",
    );
    let Ok(files) = files else {
        c.raise(
            Level::Skip,
            "hosts directory unreadable (see default-catch-all)",
        );
        return c;
    };
    if let Err(e) = images {
        c.note(format!(
            "containerd's images unknown ({e}): /v2/ timed only"
        ));
    }
    let cfg = cfg.as_ref().ok();
    let mut budget = MAX_PROBES;
    let mut fixes = Vec::new();
    let mut slow_seen = false;
    for f in files {
        // containerd's order: the [host] tables as written, then `server`.
        let order: Vec<String> = f
            .hosts
            .iter()
            .map(|(u, _)| u.clone())
            .chain(f.server.clone())
            .filter(|u| super::foreign::foreign_tool(u).is_none())
            .fold(Vec::new(), |mut seen, u| {
                if !seen.contains(&u) {
                    seen.push(u);
                }
                seen
            });
        let shoal: Vec<&String> = f.hosts.iter().filter(|(_, s)| *s).map(|(u, _)| u).collect();
        let measured: Vec<&String> = order
            .iter()
            .filter(|u| !shoal.contains(u))
            .take(budget)
            .collect();
        budget -= measured.len();
        if measured.is_empty() {
            continue;
        }
        let held = held_image(&f.registry, images);
        let jobs = measured
            .iter()
            .map(|u| measure(inputs, f, u, cfg, held.as_ref()));
        let timings = futures::future::join_all(jobs).await;
        let mut first: Option<(&String, &Timing)> = None;
        for (url, (t, notes)) in measured.iter().zip(&timings) {
            for n in notes {
                c.note(format!("{url}: {n}"));
            }
            if t.hangs {
                c.raise(
                    Level::Fail,
                    format!(
                        "{url} ({}): no answer within {:?}: a pull through it hangs",
                        f.registry, inputs.timeout
                    ),
                );
                fixes.push(
                    "fix or restart the service behind the hanging endpoint, or remove it from hosts.toml"
                        .to_owned(),
                );
                continue;
            }
            if !t.answers() {
                continue;
            }
            let slow = t.v2.is_some_and(|d| d > inputs.slow_after)
                || t.read.is_some_and(|(_, d)| d > inputs.slow_after);
            let line = format!("{url} ({}): {}", f.registry, t.describe());
            if slow {
                slow_seen = true;
                c.raise(
                    Level::Warn,
                    format!(
                        "{line}: slower than --slow-after {:?}, every pull through it pays this",
                        inputs.slow_after
                    ),
                );
            } else {
                c.note(line);
            }
            match first {
                None => first = Some((url, t)),
                Some((used, ut)) => {
                    let Some((theirs, ours, what)) = ut.cost(t) else {
                        continue;
                    };
                    if theirs >= ours * UNUSED_RATIO && theirs - ours >= UNUSED_FLOOR {
                        c.raise(
                            Level::Warn,
                            format!(
                                "{url} is unused: its {what} takes {} against {} at {used}, \
                                 which containerd tries first in {} and keeps to while it \
                                 answers ({url}: {}; {used}: {})",
                                age(ours),
                                age(theirs),
                                f.path.display(),
                                t.describe(),
                                ut.describe()
                            ),
                        );
                        fixes.push(format!(
                            "put the faster endpoint first in {}: move [host.\"{url}\"] above \
                             [host.\"{used}\"] (containerd tries [host] tables in order and \
                             `server` last; Talos: the order of \
                             machine.registries.mirrors.{}.endpoints)",
                            f.path.display(),
                            f.registry
                        ));
                    }
                }
            }
        }
    }
    if slow_seen {
        fixes.push(
            "find why the slow endpoint is slow (its link, its storage, a proxy between), or put \
             a faster endpoint of the same registry first"
                .to_owned(),
        );
    }
    if c.evidence.is_empty() {
        c.note("no registry endpoint named in hosts.toml");
    }
    c.fix(fixes.join("; also: "))
}

/// (repository, manifest digest) of an image of `registry` on this node.
fn held_image(
    registry: &str,
    images: &Result<Vec<(String, String)>, String>,
) -> Option<(String, String)> {
    let registry = shoal_oci::normalize_registry(registry);
    images.as_ref().ok()?.iter().find_map(|(name, digest)| {
        split_name(name)
            .filter(|(r, _)| *r == registry)
            .map(|(_, repo)| (repo, digest.clone()))
    })
}

/// Times `/v2/` and the ranged read at `url`; returns the timing and notes on what was not read.
async fn measure(
    inputs: &Inputs,
    f: &HostsFile,
    url: &str,
    cfg: Option<&ContainerdConfig>,
    held: Option<&(String, String)>,
) -> (Timing, Vec<String>) {
    let mut t = Timing::default();
    let mut notes = Vec::new();
    let http = match client(inputs.timeout, &f.tls_for(url)) {
        Ok(h) => h,
        Err(e) => {
            notes.push(format!("not timed: {e}"));
            return (t, notes);
        }
    };
    // With override_path the URL is the API root and containerd never asks it for /v2/.
    let root = if f.override_path.contains(url) {
        url.trim_end_matches('/').to_owned()
    } else {
        let v2 = v2(url);
        let started = Instant::now();
        match http.get(&v2).send().await {
            Ok(_) => t.v2 = Some(started.elapsed()),
            Err(e) if e.is_timeout() => {
                t.hangs = true;
                return (t, notes);
            }
            Err(e) => {
                notes.push(format!("GET {v2}: {} (see registry-auth)", error_chain(&e)));
                return (t, notes);
            }
        }
        v2.trim_end_matches('/').to_owned()
    };
    let Some((repo, digest)) = held else {
        notes.push(format!(
            "no image of {} on this node: no layer to read",
            f.registry
        ));
        return (t, notes);
    };
    let creds = cfg.and_then(|c| c.credentials_for(&super::auth::endpoint_host(url)));
    let mut auth = Auth {
        http: &http,
        creds: creds.map(|f| f.value),
        header: None,
    };
    match read_layer(&mut auth, &root, repo, digest).await {
        Ok(read) => t.read = Some(read),
        Err(Failure::Timeout(what)) => {
            notes.push(format!("{what}: no answer within {:?}", inputs.timeout));
            t.hangs = true;
        }
        Err(Failure::Other(e)) => notes.push(format!("no layer read: {e}")),
    }
    (t, notes)
}

enum Failure {
    Timeout(String),
    Other(String),
}

/// Requests with the Authorization containerd would get to after a 401.
struct Auth<'a> {
    http: &'a reqwest::Client,
    creds: Option<super::config::Credentials>,
    header: Option<String>,
}

impl Auth<'_> {
    async fn get(
        &mut self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, Failure> {
        let send = |auth: Option<&String>| {
            let mut req = self.http.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            req.send()
        };
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                Failure::Timeout(format!("GET {url}"))
            } else {
                Failure::Other(format!("GET {url}: {}", error_chain(&e)))
            }
        };
        let resp = send(self.header.as_ref()).await.map_err(failed)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .ok_or_else(|| Failure::Other(format!("GET {url} -> 401 without a challenge")))?;
        let header = match challenge.scheme.as_str() {
            "bearer" => token::fetch(self.http, &challenge, self.creds.as_ref())
                .await
                .map_err(|e| Failure::Other(format!("token for {url}: {e} (see registry-auth)")))?
                .bearer(),
            "basic" => match &self.creds {
                Some(c) => super::auth::basic(&c.username, &c.secret),
                None => {
                    return Err(Failure::Other(format!(
                        "GET {url} -> 401: no credentials (see registry-auth)"
                    )));
                }
            },
            other => return Err(Failure::Other(format!("GET {url} -> 401 {other}"))),
        };
        self.header = Some(header);
        send(self.header.as_ref()).await.map_err(failed)
    }
}

/// Reads the first [`READ_BYTES`] of the largest layer of `repo@digest` under `root`
/// (`…/v2`); returns the bytes read and the time of the read alone.
async fn read_layer(
    auth: &mut Auth<'_>,
    root: &str,
    repo: &str,
    digest: &str,
) -> Result<(usize, Duration), Failure> {
    let mut manifest = fetch_json(auth, &format!("{root}/{repo}/manifests/{digest}")).await?;
    if let Some(child) = manifest["manifests"][0]["digest"]
        .as_str()
        .map(str::to_owned)
    {
        manifest = fetch_json(auth, &format!("{root}/{repo}/manifests/{child}")).await?;
    }
    let layer = manifest["layers"]
        .as_array()
        .and_then(|l| l.iter().max_by_key(|d| d["size"].as_u64().unwrap_or(0)))
        .and_then(|d| d["digest"].as_str())
        .ok_or_else(|| Failure::Other("the manifest lists no layer".into()))?
        .to_owned();
    let url = format!("{root}/{repo}/blobs/{layer}");
    let range = format!("bytes=0-{}", READ_BYTES - 1);
    let started = Instant::now();
    let resp = auth.get(&url, &[(RANGE.as_str(), range.as_str())]).await?;
    let status = resp.status();
    if !(status == StatusCode::PARTIAL_CONTENT || status == StatusCode::OK) {
        return Err(Failure::Other(format!("GET {url} ({range}) -> {status}")));
    }
    // A registry ignoring Range answers the whole blob: read no more than asked either way.
    let mut resp = resp;
    let mut n = 0;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                n += chunk.len();
                if n >= READ_BYTES {
                    n = READ_BYTES;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err(Failure::Timeout(format!("GET {url}"))),
            Err(e) => return Err(Failure::Other(format!("GET {url}: {}", error_chain(&e)))),
        }
    }
    Ok((n, started.elapsed()))
}

async fn fetch_json(auth: &mut Auth<'_>, url: &str) -> Result<serde_json::Value, Failure> {
    let resp = auth.get(url, &[(ACCEPT.as_str(), MANIFEST_TYPES)]).await?;
    if !resp.status().is_success() {
        return Err(Failure::Other(format!("GET {url} -> {}", resp.status())));
    }
    let body = read_bounded(resp, MAX_MANIFEST)
        .await
        .map_err(|e| Failure::Other(format!("GET {url}: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| Failure::Other(format!("GET {url}: not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_the_seeds_quote_them() {
        assert_eq!(rate(262_144, Duration::from_millis(1310)), "200 KB/s");
        assert_eq!(rate(262_144, Duration::from_millis(4)), "65.5 MB/s");
    }

    #[test]
    fn endpoints_compare_by_the_read_when_both_have_one() {
        let slow = Timing {
            v2: Some(Duration::from_millis(5)),
            read: Some((1000, Duration::from_millis(900))),
            hangs: false,
        };
        let fast = Timing {
            v2: Some(Duration::from_millis(6)),
            read: Some((1000, Duration::from_millis(10))),
            hangs: false,
        };
        assert_eq!(
            slow.cost(&fast)
                .map(|(a, b, w)| (a.as_millis(), b.as_millis(), w)),
            Some((900, 10, "ranged read"))
        );
        let no_read = Timing {
            read: None,
            ..fast.clone()
        };
        assert_eq!(slow.cost(&no_read).map(|x| x.2), Some("GET /v2/"));
        assert!(Timing::default().cost(&fast).is_none());
        assert!(!Timing::default().answers());
    }
}
