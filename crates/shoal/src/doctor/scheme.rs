//! Whether an endpoint speaks the scheme its hosts.toml gives it. containerd does not fall back
//! from `https://` to plain HTTP (nor the reverse) for a configured endpoint: an HTTP-only
//! Harbor named `https://…` (what a hosts.toml written without the scheme gets) fails every
//! pull with a TLS error, and a TLS registry named `http://…` answers 400. When the request with
//! the configured scheme fails that way, the other scheme is tried once, bounded like every
//! probe, so the finding can say which scheme works.

use std::time::Duration;

use super::probe::error_chain;

/// The URL with the other scheme, if it is http(s).
pub(super) fn other_scheme(url: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    let other = match u.scheme() {
        "https" => "http",
        "http" => "https",
        _ => return None,
    };
    u.set_scheme(other).ok()?;
    Some(u.as_str().trim_end_matches('/').to_owned())
}

/// Whether a failed `https://` request looks like the peer speaking plain HTTP (rustls sees an
/// HTTP response where a TLS record should be).
pub(super) fn looks_like_plain_http(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    c.contains("invalidcontenttype")
        || c.contains("corrupt message")
        || c.contains("wrong version number")
        || c.contains("http request to an https server")
}

/// Whether a plain-HTTP answer is a TLS server's refusal of plain HTTP (Go's servers answer 400
/// "Client sent an HTTP request to an HTTPS server.").
pub(super) fn is_tls_refusal(status: u16, body: &str) -> bool {
    status == 400 && body.to_ascii_lowercase().contains("https server")
}

/// `GET <url>/v2/` with the other scheme and no certificate check (only whether it speaks it):
/// the status, or why not.
pub(super) async fn try_other(
    url: &str,
    timeout: Duration,
) -> Option<(String, Result<u16, String>)> {
    let other = other_scheme(url)?;
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(true)
        .build()
        .ok()?;
    let v2 = super::probe::v2(&other);
    let res = http
        .get(&v2)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| error_chain(&e));
    Some((other, res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_schemes_and_keeps_ports() {
        assert_eq!(
            other_scheme("https://harbor.local").as_deref(),
            Some("http://harbor.local")
        );
        assert_eq!(
            other_scheme("http://127.0.0.1:5010").as_deref(),
            Some("https://127.0.0.1:5010")
        );
        assert_eq!(
            other_scheme("https://h:80/v2").as_deref(),
            Some("http://h/v2")
        );
        assert_eq!(other_scheme("unix:///x"), None);
    }

    #[test]
    fn recognises_both_mismatches() {
        assert!(looks_like_plain_http(
            "error sending request: client error (Connect): received corrupt message of type InvalidContentType"
        ));
        assert!(!looks_like_plain_http("Connection refused (os error 111)"));
        assert!(is_tls_refusal(
            400,
            "Client sent an HTTP request to an HTTPS server.\n"
        ));
        assert!(!is_tls_refusal(400, "bad request"));
    }
}
