//! A Bearer-token registry for tests, the way Harbor is put together: a real `docker-registry`
//! with `auth: token`, and a small token service (this module) that signs ES256 JWTs the
//! registry verifies against a certificate given as its `rootcertbundle`. The token service
//! answers what containerd asks: `GET <realm>?service=…&scope=…` (anonymous, or HTTP Basic) and
//! the OAuth2 `POST <realm>` form (`grant_type=password`). It counts its requests by kind, so a
//! test can assert what a client did.
//!
//! Both listen on 127.0.0.1 inside a node's network namespace: the service binds its socket from
//! a thread that entered the namespace, so it serves only clients of that namespace.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use crate::node::Node;
use crate::process::Process;

/// The `service` of the registry's challenge (the token's audience).
pub const TOKEN_SERVICE: &str = "shoal-test-registry";
const ISSUER: &str = "shoal-test-token";
/// Largest request the service reads.
const MAX_REQUEST: usize = 64 * 1024;

/// How a Bearer registry is set up.
#[derive(Debug, Clone)]
pub struct BearerConfig {
    /// Directory for the registry's config, storage and the token certificate.
    pub name: String,
    pub registry_port: u16,
    pub token_port: u16,
    /// The realm the registry announces; default `http://127.0.0.1:<token_port>/token`. Point it
    /// elsewhere to reproduce a realm the node cannot reach.
    pub realm: Option<String>,
    /// Accepted user name and password.
    pub user: (String, String),
    /// Whether tokens are given without credentials (Harbor's public projects).
    pub anonymous: bool,
}

/// What the token service was asked, by kind.
#[derive(Debug, Default)]
pub struct TokenCounts {
    pub anonymous: AtomicU32,
    pub basic: AtomicU32,
    pub oauth_post: AtomicU32,
    pub refused: AtomicU32,
}

/// A running Bearer registry: the registry process and the token service thread.
#[derive(Debug)]
pub struct BearerRegistry {
    pub registry: Process,
    pub counts: Arc<TokenCounts>,
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BearerRegistry {
    /// Starts both in `node`'s namespace and waits until they listen.
    pub fn start(node: &Node, cfg: BearerConfig) -> BearerRegistry {
        let dir = node.dir().join(&cfg.name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate an ES256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("load the ES256 key");
        let rc_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen key");
        let cert = rcgen::CertificateParams::new(vec![ISSUER.to_owned()])
            .expect("certificate params")
            .self_signed(&rc_key)
            .expect("self-sign the token certificate");
        let bundle = dir.join("token-cert.pem");
        fs::write(&bundle, cert.pem()).expect("write the token certificate");
        let realm = cfg
            .realm
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}/token", cfg.token_port));
        let d = dir.display();
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n\
             http:\n  addr: 127.0.0.1:{}\n\
             auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
             issuer: {ISSUER}\n    rootcertbundle: {}\n",
            cfg.registry_port,
            bundle.display()
        );
        fs::write(dir.join("config.yml"), config).expect("write the registry config");
        let registry = node.spawn(
            "docker-registry",
            &["serve", &dir.join("config.yml").display().to_string()],
        );
        registry
            .wait_for_log("listening on", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("bearer registry: {e}"));

        let signer = Signer {
            key,
            rng,
            x5c: STANDARD.encode(cert.der()),
        };
        let counts = Arc::new(TokenCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let netns = format!("/run/netns/{}", node.netns());
        let (port, user, anonymous) = (cfg.token_port, cfg.user.clone(), cfg.anonymous);
        let (counts2, stop2) = (counts.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("token-service".into())
            .spawn(move || {
                let Some(listener) = listen_in(&netns, port, &ready_tx) else {
                    return;
                };
                let svc = Service {
                    signer,
                    user,
                    anonymous,
                    counts: counts2,
                };
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => svc.serve(conn),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("start the token service thread");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("token service start")
            .unwrap_or_else(|e| panic!("token service: {e}"));
        BearerRegistry {
            registry,
            counts,
            url: format!("http://127.0.0.1:{}", cfg.registry_port),
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<registry port>`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for BearerRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Enters `netns` (this thread only) and binds a non-blocking listener on its loopback `port`;
/// the outcome goes to `ready` too, so the starter knows when the port is open (or why not).
pub(crate) fn listen_in(
    netns: &str,
    port: u16,
    ready: &mpsc::SyncSender<Result<(), String>>,
) -> Option<TcpListener> {
    let bound = enter(netns).and_then(|()| {
        let l = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(l)
    });
    let _ = ready.send(bound.as_ref().map(|_| ()).map_err(Clone::clone));
    bound.ok()
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &str) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {path}: {e}"))
}

struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    x5c: String,
}

impl Signer {
    /// A JWT for `subject` granting pull on each `repository:<name>:…` scope.
    fn token(&self, subject: &str, service: &str, scopes: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name) = (parts.next()?, parts.next()?);
                Some(serde_json::json!({"type": kind, "name": name, "actions": ["pull"]}))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": service, "exp": now + 300, "nbf": now - 30,
            "iat": now - 30, "jti": format!("{now}-{subject}"), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign a token");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

struct Service {
    signer: Signer,
    user: (String, String),
    anonymous: bool,
    counts: Arc<TokenCounts>,
}

impl Service {
    fn serve(&self, mut conn: TcpStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let Some((method, target, headers, body)) = read_request(&mut conn) else {
            return;
        };
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        // Who is asking, and with what.
        let (who, ok) = if method == "POST" {
            self.counts.oauth_post.fetch_add(1, Ordering::Relaxed);
            params.extend(url::form_urlencoded::parse(&body).into_owned());
            let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let user = get("username").unwrap_or_default();
            let ok = get("grant_type").as_deref() == Some("password")
                && user == self.user.0
                && get("password").as_deref() == Some(self.user.1.as_str());
            (user, ok)
        } else if let Some(basic) = headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Basic "))
        {
            self.counts.basic.fetch_add(1, Ordering::Relaxed);
            let decoded = STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let (u, p) = decoded.split_once(':').unwrap_or(("", ""));
            (u.to_owned(), u == self.user.0 && p == self.user.1)
        } else {
            self.counts.anonymous.fetch_add(1, Ordering::Relaxed);
            (String::new(), self.anonymous)
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let response = if !ok {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            let body =
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            let scopes: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_owned))
                .collect();
            let service = get("service").unwrap_or_default();
            let token = self.signer.token(&who, &service, &scopes);
            let body = if method == "POST" {
                serde_json::json!({"access_token": token, "expires_in": 300}).to_string()
            } else {
                serde_json::json!({"token": token, "expires_in": 300}).to_string()
            };
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let _ = conn.write_all(response.as_bytes());
    }
}

type Request = (String, String, BTreeMap<String, String>, Vec<u8>);

/// One HTTP/1.1 request: method, target, lowercased headers, body (by Content-Length).
fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some((method, target, headers, body))
}

/// A listener in a node's namespace that accepts connections and never answers: a hanging
/// registry or mirror. Holds at most 64 connections (older ones are dropped).
#[derive(Debug)]
pub struct HangingListener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HangingListener {
    pub fn start(node: &Node, port: u16) -> HangingListener {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let netns = format!("/run/netns/{}", node.netns());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hanging-listener".into())
            .spawn(move || {
                let Some(listener) = listen_in(&netns, port, &ready_tx) else {
                    return;
                };
                let mut held = std::collections::VecDeque::new();
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            held.push_back(conn);
                            if held.len() > 64 {
                                held.pop_front();
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("start the hanging listener thread");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("hanging listener start")
            .unwrap_or_else(|e| panic!("hanging listener: {e}"));
        HangingListener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HangingListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
