//! Where each blob's bytes came from: a bounded in-memory log of fetch events.
//!
//! `shoal explain` (the debugging CLI) reads this to show, per digest, whether it was served
//! locally or by which peer, every failover and why, and digest mismatches. The mirror reports
//! through [`EventSink`]; [`EventLog`] is the bounded ring buffer the daemon installs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEventKind {
    /// Served from the local content store.
    Local,
    /// No provider answered within the resolve timeout (fast miss).
    Miss,
    /// A peer request opened; bytes start arriving from `offset`.
    PeerOpened { offset: u64 },
    /// A peer request failed (connect, status, timeout, broken stream) at `offset`.
    PeerFailed { offset: u64, reason: String },
    /// The bytes did not hash to the digest; the listed peers were marked bad for it and the
    /// bytes discarded (never sent).
    DigestMismatch { peers: Vec<String> },
    /// Multi-peer download: the event's peer wrote these byte spans (`[start, end)`, merged,
    /// in order; `bytes` is their total) of the blob that then verified. One event per
    /// contributing peer, just before `Verified`.
    Served { bytes: u64, spans: Vec<(u64, u64)> },
    /// A HEAD was answered from a peer's response headers (the blob is `size` bytes long);
    /// nothing was fetched or sent. Ends the request, so a later GET is explained on its own.
    HeadAnswered { size: u64 },
    /// The whole blob (`bytes` long) passed verification; only now may it be sent.
    Verified { bytes: u64 },
    /// Every attempt failed (or the blob could not be spooled); the request was answered 404
    /// with nothing sent.
    GaveUp { reason: String },
    /// A miss that peers were missing too: this node was elected (by `arbiter`) to let its
    /// containerd fetch the blob upstream, and answered 404. When the election could not run
    /// (the arbiter did not answer), `arbiter` says why.
    HerdFetch { arbiter: String },
    /// A miss that another node (the event's peer) was elected to fetch upstream: after
    /// `waited_ms` it served the blob as it arrived, and this node streamed it from there.
    HerdWait { waited_ms: u64 },
    /// The node elected to fetch the blob (the event's peer) did not serve it in time: this
    /// node answered 404 and its containerd fetched the blob upstream.
    HerdGaveUp { reason: String },
    /// Served to a peer from the local containerd's download still in progress (`total` bytes
    /// expected): the bytes were passed on as they arrived.
    InFlight { total: u64 },
    /// The request ended; the last event of every request that emitted any.
    Ended(RequestEnd),
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEnd {
    /// The whole answer was handed to the connection (`sent` body bytes).
    Completed { sent: u64 },
    /// Answered with an error (`status`), or the body failed midway.
    Failed { status: u16, reason: String },
    /// The client went away before the answer was complete (`sent` body bytes by then).
    Cut { sent: u64 },
}

/// One fetch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchEvent {
    pub at: SystemTime,
    /// The digest or tag key concerned.
    pub key: String,
    /// The peer concerned, if any.
    pub peer: Option<String>,
    /// The request this event belongs to: unique per request within the process (0 for an
    /// event emitted outside any request). Events are grouped into requests by this id only.
    pub request: u64,
    pub kind: FetchEventKind,
}

/// Receives fetch events. Must not block: it is called on the request path.
pub trait EventSink: Send + Sync + std::fmt::Debug + 'static {
    fn on_fetch_event(&self, event: FetchEvent);
}

/// Drops every event.
#[derive(Debug, Default, Clone)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn on_fetch_event(&self, _: FetchEvent) {}
}

/// A bounded ring buffer of the most recent events.
#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    events: Mutex<VecDeque<FetchEvent>>,
}

impl EventLog {
    /// Keep at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        EventLog {
            capacity,
            events: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    /// All retained events, oldest first.
    pub fn snapshot(&self) -> Vec<FetchEvent> {
        let ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        ev.iter().cloned().collect()
    }

    /// Retained events about `key`, oldest first.
    pub fn for_key(&self, key: &str) -> Vec<FetchEvent> {
        let ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        ev.iter().filter(|e| e.key == key).cloned().collect()
    }
}

impl EventSink for EventLog {
    fn on_fetch_event(&self, event: FetchEvent) {
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if ev.len() == self.capacity {
            ev.pop_front();
        }
        ev.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_keeps_newest() {
        let log = EventLog::new(2);
        for i in 0..3 {
            log.on_fetch_event(FetchEvent {
                at: SystemTime::now(),
                key: format!("k{i}"),
                peer: None,
                request: i,
                kind: FetchEventKind::Miss,
            });
        }
        let keys: Vec<_> = log.snapshot().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert_eq!(log.for_key("k2").len(), 1);
    }
}
