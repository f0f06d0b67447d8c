//! Counts what the node exchanges with other nodes: bytes on its TCP connections (everything:
//! handshakes, Kademlia, identify, ping) and Kademlia requests it answered. They are how the
//! background cost of re-publication and routing upkeep is measured (see `docs/benchmarks.md`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

/// Totals since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Kademlia requests from other nodes (find-node, get-providers, add-provider, ...).
    pub kad_requests_received: u64,
    /// Of those, `ADD_PROVIDER`s: what publication costs beyond its closest-peers walk.
    pub add_providers_received: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    kad_requests: AtomicU64,
    add_providers: AtomicU64,
}

impl Counters {
    pub fn kad_request(&self, add_provider: bool) {
        self.kad_requests.fetch_add(1, Ordering::Relaxed);
        if add_provider {
            self.add_providers.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Traffic {
        Traffic {
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            kad_requests_received: self.kad_requests.load(Ordering::Relaxed),
            add_providers_received: self.add_providers.load(Ordering::Relaxed),
        }
    }
}

/// A byte stream that adds what passes through it to [`Counters`].
pub(crate) struct Counted<S> {
    pub inner: S,
    pub counters: Arc<Counters>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counters
                .received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions() {
        let counters = Arc::new(Counters::default());
        let mut w = Counted {
            inner: futures::io::Cursor::new(Vec::new()),
            counters: counters.clone(),
        };
        w.write_all(b"hello").await.unwrap();
        let mut r = Counted {
            inner: futures::io::Cursor::new(b"abc".to_vec()),
            counters: counters.clone(),
        };
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await.unwrap();
        counters.kad_request(false);
        counters.kad_request(true);
        assert_eq!(
            counters.snapshot(),
            Traffic {
                bytes_received: 3,
                bytes_sent: 5,
                kad_requests_received: 2,
                add_providers_received: 1,
            }
        );
    }
}
