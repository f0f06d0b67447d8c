//! Finding a working peer for one request: the provider pool, hedged opens and the buffered
//! (small blob / manifest) path.
//!
//! One [`Fetch`] serves one client request. It owns the provider stream from the DHT, never asks
//! the same peer twice, skips peers marked bad for the digest, and counts every peer request
//! against `max_attempts`, so a request makes a bounded amount of work whatever the peers do.
//! Opening is hedged: if the first peer has not sent its headers after `hedge_after`, the next
//! provider is asked too and whichever answers first wins.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use http::Method;
use shoal_oci::Digest;
use tokio::time::Instant;

use crate::client::{OpenError, Opened, PeerPath};
use crate::events::FetchEventKind;
use crate::metrics::Source;
use crate::source::Provider;
use crate::state::Shared;

/// The providers of one key, deduplicated, as they arrive.
pub(crate) struct Pool {
    stream: Option<BoxStream<'static, Provider>>,
    queue: VecDeque<Provider>,
    seen: HashSet<String>,
}

impl Pool {
    pub(crate) fn new(stream: BoxStream<'static, Provider>) -> Self {
        Pool {
            stream: Some(stream),
            queue: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Make `providers` available again (a later pass may ask them a second time); returns
    /// how many were.
    pub(crate) fn requeue(&mut self, providers: impl IntoIterator<Item = Provider>) -> usize {
        let before = self.queue.len();
        for p in providers {
            if self.seen.remove(&p.peer) {
                self.queue.push_back(p);
            }
        }
        self.queue.len() - before
    }

    /// Has the DHT stream ended (no provider can arrive any more)?
    pub(crate) fn exhausted(&self) -> bool {
        self.stream.is_none() && self.queue.is_empty()
    }

    /// The next provider not yet used and not bad for `digest`, waiting at most `wait` for the
    /// DHT to produce one. The wait polls the stream at least once, even when `wait` is zero.
    pub(crate) async fn next(
        &mut self,
        shared: &Shared,
        digest: Option<&Digest>,
        wait: Duration,
    ) -> Option<Provider> {
        let usable = |seen: &HashSet<String>, p: &Provider| {
            !seen.contains(&p.peer) && !digest.is_some_and(|d| shared.bad.is_bad(&p.peer, d))
        };
        while let Some(p) = self.queue.pop_front() {
            if usable(&self.seen, &p) {
                self.seen.insert(p.peer.clone());
                return Some(p);
            }
        }
        let stream = self.stream.as_mut()?;
        let deadline = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(p)) if usable(&self.seen, &p) => {
                    self.seen.insert(p.peer.clone());
                    return Some(p);
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    self.stream = None;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }
}

/// Why no peer could serve a request.
#[derive(Debug, Clone)]
pub(crate) struct GaveUp(pub String);

/// The peer side of one client request.
pub(crate) struct Fetch {
    pub shared: Arc<Shared>,
    pub registry: String,
    pub path: PeerPath,
    /// Key for events and logs (digest or tag key).
    pub key: String,
    pub pool: Pool,
    pub attempts: usize,
    /// Touched on every byte from a peer, for the client connection's idle timeout.
    pub activity: Option<crate::server::Activity>,
}

impl Fetch {
    /// Record peer-side progress for the client connection.
    pub(crate) fn touch(&self) {
        if let Some(a) = &self.activity {
            a.touch();
        }
    }
}

impl Fetch {
    /// Open the next working peer (hedged), from `offset` of a blob of known `size`.
    pub(crate) async fn open(
        &mut self,
        method: Method,
        first: Option<Provider>,
        offset: u64,
        size: Option<u64>,
    ) -> Result<Opened, GaveUp> {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let digest = self.path.digest().cloned();
        let mut inflight = FuturesUnordered::new();
        let mut last = String::from("no provider left");
        let mut first = first;
        loop {
            if inflight.is_empty() {
                if self.attempts >= cfg.max_attempts {
                    return Err(GaveUp(format!(
                        "{} attempts used; last: {last}",
                        self.attempts
                    )));
                }
                let next = match first.take() {
                    Some(p) => Some(p),
                    None => {
                        self.pool
                            .next(&shared, digest.as_ref(), cfg.resolve_timeout)
                            .await
                    }
                };
                let Some(p) = next else {
                    return Err(GaveUp(last));
                };
                inflight.push(self.start(method.clone(), p, offset, size));
                continue;
            }
            let may_hedge = self.attempts < cfg.max_attempts;
            tokio::select! {
                Some((p, res)) = inflight.next() => match res {
                    Ok(opened) => {
                        shared.event(&self.key, Some(&p.peer), FetchEventKind::PeerOpened { offset });
                        return Ok(opened);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %p.peer, key = %self.key, offset, error = %e, "peer request failed");
                        last = format!("{}: {e}", p.peer);
                        shared.event(&self.key, Some(&p.peer), FetchEventKind::PeerFailed { offset, reason: e.to_string() });
                    }
                },
                _ = tokio::time::sleep(cfg.hedge_after), if may_hedge => {
                    if let Some(p) = self.pool.next(&shared, digest.as_ref(), Duration::ZERO).await {
                        tracing::debug!(peer = %p.peer, key = %self.key, "hedging with another provider");
                        inflight.push(self.start(method.clone(), p, offset, size));
                    }
                }
            }
        }
    }

    fn start(
        &mut self,
        method: Method,
        p: Provider,
        offset: u64,
        size: Option<u64>,
    ) -> BoxFuture<'static, (Provider, Result<Opened, OpenError>)> {
        self.attempts += 1;
        let shared = self.shared.clone();
        let registry = self.registry.clone();
        let path = self.path.clone();
        async move {
            let res = shared
                .client
                .open(method, p.clone(), &registry, &path, offset, size)
                .await;
            (p, res)
        }
        .boxed()
    }

    /// Fetch a small document whole and verify it, moving on to the next provider when a peer
    /// fails or sends bytes that do not match. `max` bounds what is buffered.
    pub(crate) async fn buffered(
        &mut self,
        mut opened: Opened,
        max: u64,
    ) -> Result<(Bytes, Opened), GaveUp> {
        loop {
            match self.read_verified(&mut opened, max).await {
                Ok(bytes) => {
                    self.shared
                        .metrics
                        .add_bytes(Source::Peer, bytes.len() as u64);
                    self.shared.event(
                        &self.key,
                        Some(&opened.provider.peer),
                        FetchEventKind::Verified {
                            bytes: bytes.len() as u64,
                        },
                    );
                    return Ok((bytes, opened));
                }
                Err(reason) => {
                    tracing::warn!(peer = %opened.provider.peer, key = %self.key, %reason, "peer answer refused");
                    self.shared.event(
                        &self.key,
                        Some(&opened.provider.peer),
                        FetchEventKind::PeerFailed {
                            offset: 0,
                            reason: reason.clone(),
                        },
                    );
                }
            }
            opened = self.open(Method::GET, None, 0, None).await?;
        }
    }

    async fn read_verified(&mut self, opened: &mut Opened, max: u64) -> Result<Bytes, String> {
        if opened.size > max {
            return Err(format!("size {} above the {max} byte limit", opened.size));
        }
        let digest = opened
            .digest
            .clone()
            .or_else(|| self.path.digest().cloned())
            .ok_or("no digest to verify against")?;
        let mut buf = BytesMut::with_capacity(opened.size as usize);
        let idle = self.shared.cfg.idle_timeout;
        loop {
            match tokio::time::timeout(idle, opened.body.next()).await {
                Err(_) => return Err(format!("no data for {idle:?}")),
                Ok(Some(Err(e))) => return Err(format!("transfer broke: {e}")),
                Ok(Some(Ok(chunk))) => {
                    if buf.len() as u64 + chunk.len() as u64 > opened.size {
                        return Err("peer sent more than its Content-Length".into());
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
            }
        }
        if (buf.len() as u64) < opened.size {
            return Err(format!(
                "body ended at {} of {} bytes",
                buf.len(),
                opened.size
            ));
        }
        let got = Digest::compute(digest.algorithm(), &buf);
        if got != digest {
            self.shared.bad.mark(&opened.provider.peer, &digest);
            self.shared.event(
                &self.key,
                Some(&opened.provider.peer),
                FetchEventKind::DigestMismatch {
                    peers: vec![opened.provider.peer.clone()],
                },
            );
            return Err(format!("digest mismatch: expected {digest}, got {got}"));
        }
        // A tag answer is trusted to name its digest; remember it for the response headers.
        opened.digest = Some(digest);
        Ok(buf.freeze())
    }
}
