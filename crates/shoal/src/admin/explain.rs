//! Turning the mirror's fetch event log into "what happened to each request" for `shoal explain`.
//!
//! The mirror logs events, not requests: a local hit, a miss, a peer opened or failed at an
//! offset, a digest mismatch, a verified blob, a HEAD answered, a give-up, and the request's end.
//! Every event carries the unique id of the request it belongs to, so events are grouped by
//! that id alone: two requests for the same blob (one cut, a later one served by another peer)
//! are two records, never one. Every request ends with one `Ended` event (completed, failed
//! with its reason, or cut when the client went away); a record without it is still running,
//! or its end fell out of the bounded log.

use std::collections::HashMap;
use std::time::SystemTime;

use shoal_mirror::{FetchEvent, FetchEventKind, RequestEnd};

use super::proto::{ByteSpan, Failover, PeerBytes, Request};
use super::{epoch_ms, ms};

/// Groups the events of one key (oldest first) into requests, in the order each started.
/// `size` fills in the byte count of local hits (the event does not carry it); `addrs` maps
/// peer ids to their mirror address. An event outside any request (id 0) is a record alone.
pub fn requests(events: &[FetchEvent], size: u64, addrs: &HashMap<String, String>) -> Vec<Request> {
    let mut groups: Vec<Vec<&FetchEvent>> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for ev in events {
        if ev.request == 0 {
            groups.push(vec![ev]);
            continue;
        }
        let i = *index.entry(ev.request).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(ev);
    }
    groups
        .iter()
        .map(|evs| one_request(evs, size, addrs))
        .collect()
}

/// One request's record from its events (at least one, oldest first).
fn one_request(events: &[&FetchEvent], size: u64, addrs: &HashMap<String, String>) -> Request {
    let started = events[0].at;
    let addr = |p: &str| addrs.get(p).cloned().unwrap_or_default();
    let mut req = Request {
        id: events[0].request,
        started_at_ms: epoch_ms(started),
        ..Request::default()
    };
    let mut last = started;
    let mut end: Option<&RequestEnd> = None;
    // Set when the bytes came from a node that was still fetching the blob upstream.
    let mut herd_wait: Option<u64> = None;
    for ev in events {
        last = ev.at;
        let peer = ev.peer.clone().unwrap_or_default();
        match &ev.kind {
            FetchEventKind::Local => {
                req.source = "local".into();
                req.bytes = size;
                req.summary = "served from this node's containerd".into();
            }
            FetchEventKind::Miss => {
                req.source = "miss".into();
                req.failovers.push(Failover {
                    reason_kind: "no-provider".into(),
                    reason: "no peer announced it within the resolve timeout".into(),
                    ..Failover::default()
                });
                req.summary = "no peer had it: answered 404, containerd fetched it upstream".into();
            }
            FetchEventKind::PeerOpened { .. } => {
                if req.source.is_empty() {
                    req.source = "peer".into();
                }
                req.peer_id = peer.clone();
                req.peer_addr = addr(&peer);
            }
            FetchEventKind::PeerFailed { offset, reason } => {
                req.failovers.push(Failover {
                    peer_id: peer.clone(),
                    reason_kind: reason_kind(reason).into(),
                    reason: reason.clone(),
                    offset: *offset,
                });
            }
            FetchEventKind::DigestMismatch { peers } => {
                let reason = if peers.len() > 1 {
                    "the bytes from several peers did not hash to the digest; fetched again one \
                     peer at a time"
                } else {
                    "the bytes did not hash to the digest; the peer was marked bad"
                };
                req.failovers.push(Failover {
                    peer_id: peers.join(","),
                    reason_kind: "digest-mismatch".into(),
                    reason: reason.into(),
                    offset: 0,
                });
                // Bytes served before the mismatch were thrown away.
                req.served_by.clear();
            }
            FetchEventKind::Served { bytes, spans } => {
                req.served_by.push(PeerBytes {
                    peer_id: peer.clone(),
                    peer_addr: addr(&peer),
                    bytes: *bytes,
                    spans: spans
                        .iter()
                        .map(|&(start, end)| ByteSpan { start, end })
                        .collect(),
                });
            }
            FetchEventKind::HeadAnswered { size } => {
                req.source = "head".into();
                req.peer_id = peer.clone();
                req.peer_addr = addr(&peer);
                req.duration_ms = ms(ev.at.duration_since(started).unwrap_or_default());
                req.summary =
                    format!("HEAD answered by peer {peer} ({size} bytes); no bytes fetched");
            }
            FetchEventKind::Verified { bytes } => {
                req.source = "peer".into();
                req.peer_id = peer.clone();
                req.peer_addr = addr(&peer);
                req.bytes = *bytes;
                req.duration_ms = ms(ev.at.duration_since(started).unwrap_or_default());
                let by = match req.served_by.len() {
                    0 | 1 => format!("served by peer {peer}"),
                    n => format!("served by {n} peers (most by {peer})"),
                };
                req.summary = match req.failovers.len() {
                    0 => by,
                    1 => format!("{by} after 1 failover"),
                    n => format!("{by} after {n} failovers"),
                };
                if let Some(w) = herd_wait {
                    req.summary = format!(
                        "{}; peer {peer} was still receiving it (from upstream, or from the \
                         node fetching it) and passed it on as it arrived (waited {w} ms for it \
                         to start)",
                        req.summary
                    );
                }
            }
            FetchEventKind::GaveUp { reason } => {
                req.source = "failed".into();
                req.duration_ms = ms(ev.at.duration_since(started).unwrap_or_default());
                req.summary = format!(
                    "every peer failed ({reason}); containerd fell back upstream or retried"
                );
            }
            FetchEventKind::HerdFetch { arbiter } => {
                req.source = "upstream".into();
                req.summary = format!(
                    "no peer had it; this node was elected (arbiter {arbiter}) to fetch it \
                     upstream: answered 404, containerd fetched it from the registry, and peers \
                     missing it too stream it from here as it arrives"
                );
            }
            FetchEventKind::HerdWait { waited_ms } => {
                req.source = "peer".into();
                req.peer_id = peer.clone();
                req.peer_addr = addr(&peer);
                herd_wait = Some(*waited_ms);
            }
            FetchEventKind::HerdGaveUp { reason } => {
                req.source = "miss".into();
                req.failovers.push(Failover {
                    peer_id: peer.clone(),
                    reason_kind: "herd-timeout".into(),
                    reason: reason.clone(),
                    offset: 0,
                });
                req.summary = format!(
                    "peer {peer} was elected to fetch it upstream but did not serve it in time: \
                     answered 404, containerd fetched it upstream"
                );
            }
            FetchEventKind::InFlight { total } => {
                req.source = "in-flight".into();
                req.bytes = *total;
                req.summary = "passed on to a peer as this node's containerd downloaded it".into();
            }
            FetchEventKind::Ended(e) => end = Some(e),
        }
    }
    if req.source.is_empty() {
        req.source = "none".into();
    }
    finish(&mut req, end, last, started);
    req
}

/// Sets the end state, and for a request that did not run to completion says so in the summary.
fn finish(req: &mut Request, end: Option<&RequestEnd>, last: SystemTime, started: SystemTime) {
    let total = ms(last.duration_since(started).unwrap_or_default());
    let with = |summary: &str, what: String| {
        if summary.is_empty() {
            what
        } else {
            format!("{summary}; {what}")
        }
    };
    match end {
        Some(RequestEnd::Completed { .. }) => {
            req.end = "completed".into();
        }
        Some(RequestEnd::Failed { status, reason }) => {
            req.end = "failed".into();
            req.end_reason = format!("{status}: {reason}");
            if req.summary.is_empty() {
                req.summary = format!("answered {status}: {reason}");
            }
        }
        Some(RequestEnd::Cut { sent }) => {
            req.end = "cut".into();
            req.end_reason = format!("the client went away after {sent} bytes of the answer");
            let what = match req.source.as_str() {
                "peer" if req.bytes == 0 => format!(
                    "cut while fetching from peer {}: the client went away before the blob \
                     verified",
                    req.peer_id
                ),
                _ => format!("cut: the client went away after {sent} bytes"),
            };
            req.summary = with(&req.summary, what);
            req.duration_ms = total;
        }
        None => {
            req.end = "in-progress".into();
            req.summary = with(
                &req.summary,
                "no end recorded yet (still running, or its end fell out of the log)".into(),
            );
        }
    }
    if req.duration_ms == 0 {
        req.duration_ms = total;
    }
}

/// Classifies a peer failure message: `timeout`, `peer-died`, `digest-mismatch`, `refused`,
/// `not-found` or `error`.
pub fn reason_kind(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("digest mismatch") || r.contains("failed verification") {
        "digest-mismatch"
    } else if r.contains("timed out")
        || r.contains("timeout")
        || r.contains("no data for")
        || r.contains("no response headers")
    {
        "timeout"
    } else if r.contains("refused")
        || r.contains("unreachable")
        || r.contains("trying to connect")
        || r.contains("connect error")
    {
        "refused"
    } else if r.contains("404") || r.contains("not found") {
        "not-found"
    } else if r.contains("broke")
        || r.contains("ended at")
        || r.contains("reset")
        || r.contains("closed")
        || r.contains("eof")
    {
        "peer-died"
    } else {
        "error"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An event of request 1.
    fn ev(ms: u64, peer: Option<&str>, kind: FetchEventKind) -> FetchEvent {
        evr(1, ms, peer, kind)
    }

    fn evr(request: u64, secs: u64, peer: Option<&str>, kind: FetchEventKind) -> FetchEvent {
        FetchEvent {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000) + Duration::from_millis(secs),
            key: "sha256:x".into(),
            peer: peer.map(str::to_owned),
            request,
            kind,
        }
    }

    #[test]
    fn a_rollout_says_who_fetched_upstream_and_who_streamed_from_it() {
        let fetcher = vec![
            ev(0, None, FetchEventKind::Miss),
            ev(
                1,
                None,
                FetchEventKind::HerdFetch {
                    arbiter: "C".into(),
                },
            ),
            ev(
                2,
                None,
                FetchEventKind::Ended(RequestEnd::Failed {
                    status: 404,
                    reason: "blob unknown".into(),
                }),
            ),
        ];
        let r = &requests(&fetcher, 0, &HashMap::new())[0];
        assert_eq!(r.source, "upstream");
        assert!(
            r.summary
                .contains("elected (arbiter C) to fetch it upstream"),
            "{}",
            r.summary
        );
        let waiter = vec![
            ev(0, None, FetchEventKind::Miss),
            ev(5, Some("A"), FetchEventKind::HerdWait { waited_ms: 40 }),
            ev(900, Some("A"), FetchEventKind::Verified { bytes: 9 }),
            ev(
                901,
                None,
                FetchEventKind::Ended(RequestEnd::Completed { sent: 9 }),
            ),
        ];
        let r = &requests(&waiter, 0, &HashMap::new())[0];
        assert_eq!((r.source.as_str(), r.peer_id.as_str()), ("peer", "A"));
        assert!(
            r.summary.contains("peer A was still receiving it"),
            "{}",
            r.summary
        );
        let gave_up = vec![
            ev(0, None, FetchEventKind::Miss),
            ev(
                5000,
                Some("A"),
                FetchEventKind::HerdGaveUp {
                    reason: "slow".into(),
                },
            ),
        ];
        let r = &requests(&gave_up, 0, &HashMap::new())[0];
        assert_eq!(
            r.failovers.last().map(|f| f.reason_kind.as_str()),
            Some("herd-timeout")
        );
        let holder = vec![ev(0, None, FetchEventKind::InFlight { total: 7 })];
        let r = &requests(&holder, 0, &HashMap::new())[0];
        assert_eq!((r.source.as_str(), r.bytes), ("in-flight", 7));
    }

    #[test]
    fn groups_failover_then_success_into_one_request() {
        let events = vec![
            ev(0, Some("A"), FetchEventKind::PeerOpened { offset: 0 }),
            ev(
                100,
                Some("A"),
                FetchEventKind::PeerFailed {
                    offset: 4096,
                    reason: "transfer broke: connection reset".into(),
                },
            ),
            ev(150, Some("B"), FetchEventKind::PeerOpened { offset: 4096 }),
            ev(400, Some("B"), FetchEventKind::Verified { bytes: 9000 }),
        ];
        let addrs = HashMap::from([("B".to_string(), "10.0.0.3:5000".to_string())]);
        let reqs = requests(&events, 9000, &addrs);
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.source, "peer");
        assert_eq!(r.peer_id, "B");
        assert_eq!(r.peer_addr, "10.0.0.3:5000");
        assert_eq!(r.bytes, 9000);
        assert_eq!(r.duration_ms, 400);
        assert_eq!(r.failovers.len(), 1);
        assert_eq!(r.failovers[0].peer_id, "A");
        assert_eq!(r.failovers[0].reason_kind, "peer-died");
        assert_eq!(r.failovers[0].offset, 4096);
        assert!(r.summary.contains("after 1 failover"), "{}", r.summary);
    }

    #[test]
    fn head_then_get_are_two_requests_each_timed_from_its_own_start() {
        let events = vec![
            evr(1, 0, Some("A"), FetchEventKind::PeerOpened { offset: 0 }),
            evr(1, 5, Some("A"), FetchEventKind::HeadAnswered { size: 9000 }),
            evr(
                2,
                2_000,
                Some("B"),
                FetchEventKind::PeerOpened { offset: 0 },
            ),
            evr(
                2,
                2_300,
                Some("B"),
                FetchEventKind::Verified { bytes: 9000 },
            ),
        ];
        let reqs = requests(&events, 9000, &HashMap::new());
        let got: Vec<(&str, &str, u64, u64)> = reqs
            .iter()
            .map(|r| {
                (
                    r.source.as_str(),
                    r.peer_id.as_str(),
                    r.bytes,
                    r.duration_ms,
                )
            })
            .collect();
        assert_eq!(got, [("head", "A", 0, 5), ("peer", "B", 9000, 300)]);
        assert!(
            reqs[0].summary.contains("9000 bytes"),
            "{}",
            reqs[0].summary
        );
    }

    #[test]
    fn multi_peer_request_lists_bytes_per_peer() {
        let served = |p: &str, spans: Vec<(u64, u64)>| {
            let bytes = spans.iter().map(|(s, e)| e - s).sum();
            ev(300, Some(p), FetchEventKind::Served { bytes, spans })
        };
        let events = vec![
            ev(0, Some("A"), FetchEventKind::PeerOpened { offset: 0 }),
            ev(
                100,
                Some("C"),
                FetchEventKind::PeerFailed {
                    offset: 70,
                    reason: "transfer broke: connection reset".into(),
                },
            ),
            served("A", vec![(0, 50), (80, 100)]),
            served("B", vec![(50, 64)]),
            served("C", vec![(64, 80)]),
            ev(310, Some("A"), FetchEventKind::Verified { bytes: 100 }),
        ];
        let addrs = HashMap::from([("B".to_string(), "10.0.0.3:5000".to_string())]);
        let reqs = requests(&events, 100, &addrs);
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.source, "peer");
        assert_eq!(r.peer_id, "A");
        let by: Vec<(&str, u64)> = r
            .served_by
            .iter()
            .map(|p| (p.peer_id.as_str(), p.bytes))
            .collect();
        assert_eq!(by, [("A", 70), ("B", 14), ("C", 16)]);
        assert_eq!(r.served_by[1].peer_addr, "10.0.0.3:5000");
        assert_eq!(r.served_by[0].spans[1].start, 80);
        assert_eq!(r.served_by[0].spans[1].end, 100);
        assert!(
            r.summary
                .starts_with("served by 3 peers (most by A) after 1 failover"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn local_miss_mismatch_giveup_and_unfinished() {
        let events = vec![
            evr(1, 0, None, FetchEventKind::Local),
            evr(2, 10, None, FetchEventKind::Miss),
            evr(3, 20, Some("C"), FetchEventKind::PeerOpened { offset: 0 }),
            evr(
                3,
                30,
                Some("C"),
                FetchEventKind::DigestMismatch {
                    peers: vec!["C".into()],
                },
            ),
            evr(
                3,
                40,
                None,
                FetchEventKind::GaveUp {
                    reason: "no more providers".into(),
                },
            ),
            evr(4, 50, Some("D"), FetchEventKind::PeerOpened { offset: 0 }),
        ];
        let reqs = requests(&events, 123, &HashMap::new());
        let sources: Vec<&str> = reqs.iter().map(|r| r.source.as_str()).collect();
        assert_eq!(sources, ["local", "miss", "failed", "peer"]);
        assert_eq!(reqs[3].end, "in-progress");
        assert_eq!(reqs[0].bytes, 123);
        assert_eq!(reqs[1].failovers[0].reason_kind, "no-provider");
        assert_eq!(reqs[2].failovers[0].reason_kind, "digest-mismatch");
        assert_eq!(reqs[2].duration_ms, 20);
        assert_eq!(reqs[3].peer_id, "D");
    }

    #[test]
    fn a_cut_request_and_a_later_one_are_never_merged() {
        use shoal_mirror::RequestEnd;
        // Request 7 opens peer A and is cut; request 9 starts while 7's events are still
        // arriving, and is served by B. Interleaved events stay with their own request.
        let events = vec![
            evr(7, 0, Some("A"), FetchEventKind::PeerOpened { offset: 0 }),
            evr(9, 100, Some("B"), FetchEventKind::PeerOpened { offset: 0 }),
            evr(
                7,
                150,
                None,
                FetchEventKind::Ended(RequestEnd::Cut { sent: 0 }),
            ),
            evr(9, 300, Some("B"), FetchEventKind::Verified { bytes: 10 }),
            evr(
                9,
                310,
                None,
                FetchEventKind::Ended(RequestEnd::Completed { sent: 10 }),
            ),
            evr(
                11,
                400,
                None,
                FetchEventKind::Ended(RequestEnd::Failed {
                    status: 404,
                    reason: "blob unknown".into(),
                }),
            ),
        ];
        let reqs = requests(&events, 10, &HashMap::new());
        let got: Vec<(u64, &str, &str, &str, u64)> = reqs
            .iter()
            .map(|r| {
                (
                    r.id,
                    r.source.as_str(),
                    r.peer_id.as_str(),
                    r.end.as_str(),
                    r.bytes,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (7, "peer", "A", "cut", 0),
                (9, "peer", "B", "completed", 10),
                (11, "none", "", "failed", 0),
            ]
        );
        assert_eq!(reqs[0].duration_ms, 150);
        assert!(
            reqs[0].summary.contains("cut while fetching from peer A"),
            "{}",
            reqs[0].summary
        );
        assert_eq!(reqs[2].end_reason, "404: blob unknown");
    }

    #[test]
    fn classifies_failure_reasons() {
        assert_eq!(reason_kind("no data for 5s"), "timeout");
        assert_eq!(reason_kind("operation timed out"), "timeout");
        assert_eq!(reason_kind("no response headers within 2s"), "timeout");
        assert_eq!(reason_kind("peer answered 404 Not Found"), "not-found");
        assert_eq!(
            reason_kind("error sending request: Connection refused"),
            "refused"
        );
        assert_eq!(reason_kind("body ended at 10 of 20 bytes"), "peer-died");
        assert_eq!(
            reason_kind("digest mismatch: expected a, got b"),
            "digest-mismatch"
        );
        assert_eq!(reason_kind("HTTP 404"), "not-found");
        assert_eq!(reason_kind("weird"), "error");
    }
}
