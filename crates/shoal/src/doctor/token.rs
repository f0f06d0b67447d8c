//! The registry side of a pull's authentication, done the way containerd's resolver does it, so
//! doctor finds what the pull would: read the `WWW-Authenticate` challenge of `/v2/`, fetch a
//! token from a Bearer realm (OAuth2 POST with credentials, falling back to GET with HTTP Basic
//! on the statuses containerd falls back on; GET without credentials for an anonymous token),
//! then call `/v2/` with the token. No secret or token ever leaves this module in a message.

use std::collections::BTreeMap;

use super::config::Credentials;

/// containerd's OAuth2 client id.
const CLIENT_ID: &str = "containerd-client";

/// Largest token response read (a JWT is a few kB).
const MAX_TOKEN_RESPONSE: usize = 256 * 1024;

/// One `WWW-Authenticate` challenge: the scheme (lowercased) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parses `Scheme k="v", k2=v2`; the first challenge of the header only (registries send
    /// one).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r.trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = BTreeMap::new();
        while !rest.is_empty() {
            let Some((key, after)) = rest.split_once('=') else {
                break;
            };
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, ch)) = chars.next() {
                    match ch {
                        '\\' => {
                            if let Some((_, esc)) = chars.next() {
                                value.push(esc);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            if !key.is_empty() {
                params.insert(key, value);
            }
            rest = next.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// For a report: the scheme and its parameters (a challenge holds no secret).
    pub fn describe(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{} {}", self.scheme, params.join(" "))
    }
}

/// Why no token came from a realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The challenge has no usable realm URL.
    NoRealm(String),
    /// The realm did not answer (connection refused, no route, TLS, timeout).
    Unreachable(String),
    /// The realm answered with this status.
    Refused(u16),
    /// The realm answered 200 without a token.
    Malformed(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::NoRealm(why) => write!(f, "no usable realm in the challenge: {why}"),
            TokenError::Unreachable(e) => write!(f, "the realm does not answer: {e}"),
            TokenError::Refused(s) => write!(f, "the realm answers {s}"),
            TokenError::Malformed(e) => write!(f, "the realm's answer holds no token: {e}"),
        }
    }
}

/// A token, kept out of `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// The realm URL of a Bearer challenge, with `service` and `scope` as query parameters.
fn realm_url(ch: &Challenge) -> Result<url::Url, TokenError> {
    let realm = ch
        .param("realm")
        .ok_or_else(|| TokenError::NoRealm("no realm parameter".into()))?;
    let mut u = url::Url::parse(realm).map_err(|e| TokenError::NoRealm(format!("{realm}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(TokenError::NoRealm(format!("{realm}: not http(s)")));
    }
    {
        let mut q = u.query_pairs_mut();
        if let Some(s) = ch.param("service") {
            q.append_pair("service", s);
        }
        if let Some(s) = ch.param("scope") {
            q.append_pair("scope", s);
        }
    }
    Ok(u)
}

/// Fetches a token as containerd does: with a secret, the OAuth2 POST first and on 400, 401, 404
/// (or 405 with a user name) a GET with HTTP Basic; without, an anonymous GET.
pub async fn fetch(
    http: &reqwest::Client,
    ch: &Challenge,
    creds: Option<&Credentials>,
) -> Result<Token, TokenError> {
    let url = realm_url(ch)?;
    let creds = creds.filter(|c| !c.secret.is_empty());
    if let Some(c) = creds {
        let mut base = url.clone();
        base.set_query(None);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("client_id", CLIENT_ID);
        if c.username.is_empty() {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", &c.secret);
        } else {
            form.append_pair("grant_type", "password");
            form.append_pair("username", &c.username);
            form.append_pair("password", &c.secret);
        }
        if let Some(s) = ch.param("service") {
            form.append_pair("service", s);
        }
        if let Some(s) = ch.param("scope") {
            form.append_pair("scope", s);
        }
        let post = http
            .post(base)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form.finish())
            .send()
            .await;
        match read_token(post).await {
            Err(TokenError::Refused(s))
                if s == 400 || s == 401 || s == 404 || (s == 405 && !c.username.is_empty()) => {}
            other => return other,
        }
    }
    let mut get = http.get(url);
    if let Some(c) = creds {
        get = get.basic_auth(&c.username, Some(&c.secret));
    }
    read_token(get.send().await).await
}

async fn read_token(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Token, TokenError> {
    let resp = resp.map_err(|e| TokenError::Unreachable(super::probe::error_chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(TokenError::Refused(status.as_u16()));
    }
    let body = super::probe::read_bounded(resp, MAX_TOKEN_RESPONSE)
        .await
        .map_err(TokenError::Malformed)?;
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let a: Answer =
        serde_json::from_slice(&body).map_err(|e| TokenError::Malformed(e.to_string()))?;
    a.token
        .or(a.access_token)
        .filter(|t| !t.is_empty())
        .map(Token)
        .ok_or_else(|| TokenError::Malformed("neither token nor access_token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_harbor_and_basic_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="http://harbor.example/service/token",service="harbor-registry",scope="repository:library/x:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(
            c.param("realm"),
            Some("http://harbor.example/service/token")
        );
        assert_eq!(c.param("service"), Some("harbor-registry"));
        assert_eq!(c.param("scope"), Some("repository:library/x:pull"));
        let b = Challenge::parse(r#"Basic realm="a \"q\", b""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.param("realm"), Some(r#"a "q", b"#));
        let t = Challenge::parse("Bearer realm=http://x/t, service=s").unwrap();
        assert_eq!(t.param("realm"), Some("http://x/t"));
        assert_eq!(t.param("service"), Some("s"));
        assert!(Challenge::parse("").is_none());
        assert_eq!(Challenge::parse("Negotiate").unwrap().params.len(), 0);
    }

    #[test]
    fn realm_url_carries_service_and_scope_and_refuses_bad_realms() {
        let c =
            Challenge::parse(r#"Bearer realm="https://r.example/token",service="reg""#).unwrap();
        assert_eq!(
            realm_url(&c).unwrap().as_str(),
            "https://r.example/token?service=reg"
        );
        for bad in [
            r#"Bearer service="x""#,
            r#"Bearer realm="/relative""#,
            r#"Bearer realm="ftp://x""#,
        ] {
            let c = Challenge::parse(bad).unwrap();
            assert!(
                matches!(realm_url(&c), Err(TokenError::NoRealm(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_debug_is_redacted() {
        assert_eq!(format!("{:?}", Token("abc".into())), "Token(<redacted>)");
    }
}
