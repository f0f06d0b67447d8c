//! One record per mirror request, from its first event to its end, for `shoal explain`.
//!
//! Events are emitted deep inside fetches (a peer opened, failed, a blob verified) by code that
//! knows the key but not the request. A task-local [`RequestTrace`] set around the handler gives
//! every event the request's unique id, so events of two requests for the same blob are never
//! merged. Every request that emitted an event also ends with exactly one
//! [`FetchEventKind::Ended`]: completed when the last byte of its body was handed to the
//! connection, failed with the error answered, or cut when the client went away first (the
//! handler future or the response body was dropped before its end).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use crate::events::{EventSink, FetchEvent, FetchEventKind, RequestEnd};

tokio::task_local! {
    static CURRENT: Arc<RequestTrace>;
    /// The request id of a task spawned by a request (see [`spawn`]).
    static DETACHED: u64;
}

/// Spawn a task that works for the current request (a stream feeding its body): its events
/// carry the request's id. It holds the id only, not the record, so a client going away still
/// ends the record at once.
pub(crate) fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let id = CURRENT
        .try_with(|t| t.id)
        .or_else(|_| DETACHED.try_with(|id| *id))
        .unwrap_or(0);
    tokio::spawn(DETACHED.scope(id, f))
}

/// Unique within the process (the admin API and the event log live as long as it does).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The record of one request in flight.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    id: u64,
    events: Arc<dyn EventSink>,
    /// The first key an event was about; the end is reported under it.
    key: OnceLock<String>,
    sent: AtomicU64,
    ended: AtomicBool,
}

impl RequestTrace {
    pub(crate) fn new(events: Arc<dyn EventSink>) -> Arc<Self> {
        Arc::new(RequestTrace {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            events,
            key: OnceLock::new(),
            sent: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        })
    }

    /// Runs `f` with this trace as the current one.
    pub(crate) async fn scope<F: Future>(self: Arc<Self>, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// The id of the request being handled by this task, after noting `key` as its subject
    /// (0 outside a request).
    pub(crate) fn current_id(key: &str) -> u64 {
        CURRENT
            .try_with(|t| {
                let _ = t.key.set(key.to_owned());
                t.id
            })
            .or_else(|_| DETACHED.try_with(|id| *id))
            .unwrap_or(0)
    }

    /// Ends the record (only the first end counts). A request that never emitted an event has
    /// nothing to explain and reports nothing.
    pub(crate) fn end(&self, end: RequestEnd) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(key) = self.key.get() {
            self.events.on_fetch_event(FetchEvent {
                at: SystemTime::now(),
                key: key.clone(),
                peer: None,
                request: self.id,
                kind: FetchEventKind::Ended(end),
            });
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Dropped without an end: the handler or the body was dropped, i.e. the client went away.
impl Drop for RequestTrace {
    fn drop(&mut self) {
        let sent = self.sent();
        self.end(RequestEnd::Cut { sent });
    }
}

/// A response body that ends its request's record when its last frame is handed on, and holds
/// `guard` (the request-limit permit) until then. Keeps the inner size hint, so a body of known
/// length is still sent with `Content-Length`.
pub(crate) struct TracedBody<G> {
    inner: Body,
    trace: Arc<RequestTrace>,
    /// The answer's `Content-Length`: a streamed body whose last byte went out is complete
    /// even when the server stops polling it before it reports its end.
    length: Option<u64>,
    _guard: G,
}

impl<G: Send + Unpin + 'static> TracedBody<G> {
    pub(crate) fn wrap(
        inner: Body,
        trace: Arc<RequestTrace>,
        length: Option<u64>,
        guard: G,
    ) -> Body {
        if inner.is_end_stream() {
            trace.end(RequestEnd::Completed { sent: 0 });
        }
        Body::new(TracedBody {
            inner,
            trace,
            length,
            _guard: guard,
        })
    }
}

impl<G: Unpin> http_body::Body for TracedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let mut sent = None;
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    sent = Some(this.trace.sent.fetch_add(n, Ordering::Relaxed) + n);
                }
                if this.inner.is_end_stream() || (sent.is_some() && sent == this.length) {
                    let sent = this.trace.sent();
                    this.trace.end(RequestEnd::Completed { sent });
                }
            }
            Poll::Ready(None) => {
                let sent = this.trace.sent();
                this.trace.end(RequestEnd::Completed { sent });
            }
            Poll::Ready(Some(Err(e))) => this.trace.end(RequestEnd::Failed {
                status: 200,
                reason: format!("the body failed after {} bytes: {e}", this.trace.sent()),
            }),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<G> std::fmt::Debug for TracedBody<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBody")
            .field("request", &self.trace.id)
            .finish_non_exhaustive()
    }
}

/// A body that holds `guard` until it is dropped, and is otherwise the inner body (frames, end
/// and size hint, so a known length is still sent as `Content-Length`).
pub(crate) struct HoldBody<G> {
    inner: Body,
    _guard: G,
}

impl<G: Send + Unpin + 'static> HoldBody<G> {
    pub(crate) fn wrap(inner: Body, guard: G) -> Body {
        Body::new(HoldBody {
            inner,
            _guard: guard,
        })
    }
}

impl<G: Unpin> http_body::Body for HoldBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<G> std::fmt::Debug for HoldBody<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldBody").finish_non_exhaustive()
    }
}
