//! The daemon's last warnings and errors, kept in memory for `shoal status` ("last errors").
//!
//! A `tracing` layer copies every WARN and ERROR event into a small ring, so what an operator
//! would otherwise dig out of `kubectl logs` is one command away. Bounded: the oldest entry is
//! dropped when the ring is full.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::proto::LogEntry;

/// How many entries are kept.
pub const CAPACITY: usize = 32;

static RING: Mutex<VecDeque<LogEntry>> = Mutex::new(VecDeque::new());

/// Records a warning or error (also used directly by tests).
pub fn record(level: &str, target: &str, message: String) {
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() >= CAPACITY {
        ring.pop_front();
    }
    ring.push_back(LogEntry {
        at_ms: super::epoch_ms(SystemTime::now()),
        level: level.to_owned(),
        target: target.to_owned(),
        message,
    });
}

/// The retained entries, oldest first.
pub fn snapshot() -> Vec<LogEntry> {
    let ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    ring.iter().cloned().collect()
}

/// The `tracing` layer feeding the ring.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecentErrors;

impl<S: Subscriber> Layer<S> for RecentErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut v = Fields::default();
        event.record(&mut v);
        record(level.as_str(), event.metadata().target(), v.finish());
    }
}

/// `message key=value …`, like the fmt layer prints it.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn finish(self) -> String {
        match (self.message.is_empty(), self.rest.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.rest,
            (false, false) => format!("{} {}", self.message, self.rest),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.push(field, format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.push(field, format_args!("{value:?}"));
        }
    }
}

impl Fields {
    fn push(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if !self.rest.is_empty() {
            self.rest.push(' ');
        }
        let _ = write!(self.rest, "{}={}", field.name(), value);
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn keeps_warnings_and_errors_only_and_is_bounded() {
        let subscriber = tracing_subscriber::registry().with(RecentErrors);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(peer = "p1", "recent-test warning");
            for i in 0..CAPACITY {
                tracing::error!(i, "recent-test error");
            }
        });
        let got = snapshot();
        assert_eq!(got.len(), CAPACITY);
        assert!(got.iter().all(|e| e.message != "not kept"));
        // The warning was pushed out by the CAPACITY errors after it.
        assert!(
            !got.iter()
                .any(|e| e.message.contains("recent-test warning"))
        );
        let last = got.last().unwrap();
        assert_eq!(last.level, "ERROR");
        assert_eq!(
            last.message,
            format!("recent-test error i={}", CAPACITY - 1)
        );
    }
}
