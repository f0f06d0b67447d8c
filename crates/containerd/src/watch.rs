//! Following the content store: a task that keeps the advertised key set in step with
//! containerd and reports each difference as a [`Change`] on a bounded channel.
//!
//! Two triggers cause a re-list (a full [`ContentSource::inventory`]), and each re-list emits
//! the difference from the last emitted set:
//! - containerd events (`/images/create|update|delete`, `/content/delete`, and `/content/create`
//!   which only containerd ≥ 2.1 sends), debounced so that a pull's burst of events costs one
//!   re-list. `Events.Subscribe` does not return before the first event, so the subscription
//!   runs in its own task and only pokes the main loop.
//! - a timer (`relist_interval`), because containerd 1.6 sends no event for new content or for
//!   garbage collection.
//!
//! When containerd is unreachable the set is kept (keys are not withdrawn because the daemon
//! restarts) and re-lists are retried with capped exponential backoff. The first successful
//! re-list after an outage re-emits the whole set as [`Change::Added`], so that a consumer that
//! missed nothing still re-asserts, and one that lost state recovers: consumers must treat
//! `Added` of a key they already hold as a no-op. The task ends when the receiver is dropped or
//! the cancellation token fires, never because containerd went away.

use std::collections::BTreeSet;
use std::time::Duration;

use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate, SubscribeRequest};
use containerd_client::types::Envelope;
use prost::Message;
use shoal_oci::{Allowlist, Key};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::client::ContentSource;

/// A difference in the advertised key set. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(Vec<Key>),
    Removed(Vec<Key>),
}

/// Timing of the watcher.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Re-list this often even without events (containerd 1.6 sends none for GC).
    pub relist_interval: Duration,
    /// Wait this long after an event for more before re-listing.
    pub debounce: Duration,
    /// First retry delay after containerd could not be reached; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Capacity of the change channel.
    pub capacity: usize,
    /// Subscribe to containerd events (on by default). Off, changes are found by re-lists
    /// alone, as for containerd 1.6's garbage collection.
    pub follow_events: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            relist_interval: Duration::from_secs(30),
            debounce: Duration::from_millis(150),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            capacity: 64,
            follow_events: true,
        }
    }
}

/// Topics after which the inventory may have changed.
const TOPICS: &[&str] = &[
    "/images/create",
    "/images/update",
    "/images/delete",
    "/content/create",
    "/content/delete",
];

impl ContentSource {
    /// Starts following this source. The first message is `Added` with the whole initial set
    /// (unless it is empty). The returned task ends when `changes` is dropped or `shutdown`
    /// is cancelled.
    pub fn watch(
        &self,
        allowlist: Allowlist,
        config: WatchConfig,
        shutdown: CancellationToken,
    ) -> (mpsc::Receiver<Change>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let task = tokio::spawn(run(self.clone(), allowlist, config, shutdown, tx));
        (rx, task)
    }
}

async fn run(
    source: ContentSource,
    allowlist: Allowlist,
    config: WatchConfig,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Change>,
) {
    // Capacity 1: a pending poke already means "re-list soon"; more would add nothing.
    let (poke_tx, mut poke_rx) = mpsc::channel::<()>(1);
    let events = config
        .follow_events
        .then(|| tokio::spawn(follow_events(source.clone(), poke_tx, config.clone())));
    let mut last: BTreeSet<Key> = BTreeSet::new();
    let mut failing = false;
    let mut backoff = config.backoff_initial;
    let mut next_relist = Instant::now();

    'outer: loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            Some(()) = poke_rx.recv() => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = sleep(config.debounce) => {}
                }
                while poke_rx.try_recv().is_ok() {}
                next_relist = Instant::now();
            }
            _ = sleep_until(next_relist) => {}
        }
        if Instant::now() < next_relist {
            continue;
        }
        match source.inventory(&allowlist).await {
            Ok(inventory) => {
                let keys = inventory.keys();
                let removed: Vec<Key> = last.difference(&keys).cloned().collect();
                let added: Vec<Key> = if failing {
                    tracing::info!(socket = %source.socket().display(), keys = keys.len(),
                        "containerd reachable again; re-asserting every key");
                    keys.iter().cloned().collect()
                } else {
                    keys.difference(&last).cloned().collect()
                };
                tracing::debug!(
                    keys = keys.len(),
                    added = added.len(),
                    removed = removed.len(),
                    "re-listed containerd content"
                );
                let changes = [
                    (!removed.is_empty()).then_some(Change::Removed(removed)),
                    (!added.is_empty()).then_some(Change::Added(added)),
                ];
                for change in changes.into_iter().flatten() {
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        sent = tx.send(change) => if sent.is_err() { break 'outer },
                    }
                }
                last = keys;
                failing = false;
                backoff = config.backoff_initial;
                next_relist = Instant::now() + config.relist_interval;
            }
            Err(e) => {
                tracing::warn!(socket = %source.socket().display(), error = %e,
                    retry_in = ?backoff, "cannot list containerd content; keeping the last set");
                failing = true;
                next_relist = Instant::now() + backoff;
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
    if let Some(events) = events {
        events.abort();
    }
    tracing::debug!("content watcher stopped");
}

/// Subscribes to containerd's events for ever (until `poke` closes), poking the main loop for
/// every relevant one and re-subscribing with backoff when the stream breaks.
async fn follow_events(source: ContentSource, poke: mpsc::Sender<()>, config: WatchConfig) {
    let namespace = source.namespace().to_owned();
    let mut backoff = config.backoff_initial;
    loop {
        let req = SubscribeRequest {
            filters: vec![format!("namespace=={namespace:?}")],
        };
        // Returns only once the first event arrives; that is why this is its own task.
        match source.events().subscribe(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(envelope)) => {
                            backoff = config.backoff_initial;
                            if relevant(&envelope, &namespace)
                                && poke.try_send(()).is_err()
                                && poke.is_closed()
                            {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::info!("containerd event stream ended; re-subscribing");
                            break;
                        }
                        Err(s) => {
                            tracing::info!(error = %s.message(), "containerd event stream broke; re-subscribing");
                            break;
                        }
                    }
                }
                // Whatever happened while we were not subscribed is caught by a re-list.
                let _ = poke.try_send(());
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), retry_in = ?backoff, "cannot subscribe to containerd events");
            }
        }
        if poke.is_closed() {
            return;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Is this an event after which the inventory may differ? Logs what it can decode. Event type
/// URLs carry no `type.googleapis.com/` prefix, so payloads are decoded by matching the URL.
fn relevant(envelope: &Envelope, namespace: &str) -> bool {
    if envelope.namespace != namespace || !TOPICS.contains(&envelope.topic.as_str()) {
        return false;
    }
    let image = envelope.event.as_ref().and_then(|any| {
        let v = any.value.as_slice();
        match any.type_url.trim_start_matches("type.googleapis.com/") {
            "containerd.services.images.v1.ImageCreate" => {
                ImageCreate::decode(v).ok().map(|e| e.name)
            }
            "containerd.services.images.v1.ImageUpdate" => {
                ImageUpdate::decode(v).ok().map(|e| e.name)
            }
            "containerd.services.images.v1.ImageDelete" => {
                ImageDelete::decode(v).ok().map(|e| e.name)
            }
            _ => None,
        }
    });
    tracing::debug!(topic = %envelope.topic, image = image.as_deref().unwrap_or(""), "containerd event");
    true
}
