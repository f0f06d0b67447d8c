//! Unit tests of the multi-peer bookkeeping: interval merging and per-peer spans.

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
}
