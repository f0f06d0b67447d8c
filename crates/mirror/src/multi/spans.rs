//! Byte-span bookkeeping of a multi-peer download: which ranges of the blob are finished
//! (merged, so the hasher knows how far the contiguous prefix reaches) and which spans each
//! peer wrote (for `shoal explain`).

use std::collections::BTreeMap;

/// Finished byte ranges, merged.
#[derive(Default)]
pub(super) struct Intervals(BTreeMap<u64, u64>);

impl Intervals {
    pub(super) fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.0.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.0.range(start..).next() {
            if s > end {
                break;
            }
            end = end.max(e);
            self.0.remove(&s);
        }
        self.0.insert(start, end);
    }

    /// Forget `[start, end)` (to be fetched again).
    pub(super) fn remove(&mut self, start: u64, end: u64) {
        let mut kept = Vec::new();
        self.0.retain(|&s, &mut e| {
            if s < end && start < e {
                kept.extend([(s, start), (end, e)]);
                false
            } else {
                true
            }
        });
        for (s, e) in kept {
            if s < e {
                self.0.insert(s, e);
            }
        }
    }

    /// End of the contiguous prefix from byte 0.
    pub(super) fn frontier(&self) -> u64 {
        self.0.get(&0).copied().unwrap_or(0)
    }
}

/// Append `[s, e)` to a peer's spans, merging with its neighbour when they touch.
pub(super) fn add_span(spans: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    spans.push((s, e));
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for &(s, e) in spans.iter() {
        match merged.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *spans = merged;
}

/// Take `[s, e)` out of a peer's spans (the bytes are to be fetched again).
pub(super) fn remove_span(spans: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    *spans = spans
        .iter()
        .flat_map(|&(a, b)| {
            if a < e && s < b {
                vec![(a, s.max(a).min(b)), (e.min(b).max(a), b)]
            } else {
                vec![(a, b)]
            }
        })
        .filter(|(a, b)| a < b)
        .collect();
}

/// Bytes covered by `spans`.
pub(super) fn total(spans: &[(u64, u64)]) -> u64 {
    spans.iter().map(|(s, e)| e - s).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_merge_and_report_the_prefix() {
        let mut i = Intervals::default();
        i.insert(10, 20);
        assert_eq!(i.frontier(), 0);
        i.insert(30, 40);
        i.insert(0, 10);
        assert_eq!(i.frontier(), 20);
        i.insert(20, 30);
        assert_eq!(i.frontier(), 40);
        i.insert(5, 35);
        assert_eq!(i.0.len(), 1);
        i.insert(50, 50);
        assert_eq!(i.0.len(), 1, "empty intervals are ignored");
        i.remove(10, 15);
        assert_eq!(i.frontier(), 10);
        i.remove(0, 3);
        assert_eq!(i.frontier(), 0);
        i.insert(0, 3);
        i.insert(10, 15);
        assert_eq!(i.frontier(), 40);
    }

    #[test]
    fn spans_merge_per_peer() {
        let mut s = vec![];
        add_span(&mut s, 32, 48);
        add_span(&mut s, 0, 16);
        add_span(&mut s, 16, 32);
        add_span(&mut s, 64, 80);
        assert_eq!(s, [(0, 48), (64, 80)]);
        assert_eq!(total(&s), 64);
        remove_span(&mut s, 8, 16);
        remove_span(&mut s, 60, 70);
        remove_span(&mut s, 100, 110);
        assert_eq!(s, [(0, 8), (16, 48), (70, 80)]);
    }
}
