use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{ProviderRecord, RecordKey};
use libp2p::{Multiaddr, PeerId};
use proptest::prelude::*;

use super::{MAX_PROVIDERS_PER_KEY, Store};

fn key(n: u32) -> RecordKey {
    RecordKey::new(&n.to_be_bytes())
}

fn addr(n: u32) -> Multiaddr {
    format!("/ip4/10.0.{}.{}/tcp/5001", n / 256, n % 256)
        .parse()
        .unwrap()
}

fn rec(k: u32, p: PeerId, expires: Option<Instant>, addrs: Vec<Multiaddr>) -> ProviderRecord {
    ProviderRecord {
        key: key(k),
        provider: p,
        expires,
        addresses: addrs,
    }
}

fn ids(s: &Store, k: u32) -> Vec<PeerId> {
    s.providers(&key(k)).iter().map(|r| r.provider).collect()
}

#[test]
fn a_listed_provider_is_updated_in_place_and_removal_frees_its_peer() {
    let mut s = Store::new(PeerId::random(), 10);
    let (a, b) = (PeerId::random(), PeerId::random());
    let later = Instant::now() + Duration::from_secs(100);
    s.add_provider(rec(1, a, None, vec![addr(1)])).unwrap();
    s.add_provider(rec(1, b, None, vec![addr(2)])).unwrap();
    s.add_provider(rec(1, a, Some(later), vec![])).unwrap();
    let got = s.providers(&key(1));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].provider, a);
    assert_eq!(
        got[0].addresses,
        vec![addr(1)],
        "empty addresses keep the known ones"
    );
    let e = got[0].expires.expect("expiry kept");
    assert!(
        e >= later && e < later + Duration::from_secs(1),
        "rounded up to the second"
    );

    s.remove_provider(&key(1), &a);
    assert_eq!(ids(&s, 1), vec![b]);
    assert!(
        !s.index.contains_key(&a),
        "a peer with no record left is forgotten"
    );
    s.remove_provider(&key(1), &b);
    assert_eq!(s.keys(), 0);
    assert!(s.index.is_empty());
    s.add_provider(rec(2, b, None, vec![])).unwrap();
    assert_eq!(
        s.peers.len(),
        2,
        "a freed peer entry is reused, not a new one added"
    );
}

#[test]
fn a_full_list_ignores_newcomers_but_updates_its_members() {
    let mut s = Store::new(PeerId::random(), 10);
    let members: Vec<PeerId> = (0..MAX_PROVIDERS_PER_KEY)
        .map(|_| PeerId::random())
        .collect();
    for &p in &members {
        s.add_provider(rec(1, p, None, vec![])).unwrap();
    }
    let newcomer = PeerId::random();
    s.add_provider(rec(1, newcomer, None, vec![addr(9)]))
        .unwrap();
    assert_eq!(ids(&s, 1), members);
    assert!(
        !s.index.contains_key(&newcomer),
        "an ignored record leaves no peer entry"
    );
    s.add_provider(rec(1, members[3], None, vec![addr(3)]))
        .unwrap();
    assert_eq!(s.providers(&key(1))[3].addresses, vec![addr(3)]);
}

#[test]
fn addresses_are_the_peers_latest_for_every_key() {
    let mut s = Store::new(PeerId::random(), 10);
    let p = PeerId::random();
    s.add_provider(rec(1, p, None, vec![addr(1)])).unwrap();
    s.add_provider(rec(2, p, None, vec![addr(2), addr(3)]))
        .unwrap();
    assert_eq!(s.providers(&key(1))[0].addresses, vec![addr(2), addr(3)]);
    assert_eq!(s.peers.len(), 1);
}

#[test]
fn sweep_drops_expired_records_only() {
    let local = PeerId::random();
    let mut s = Store::new(local, 10);
    let (old, fresh) = (PeerId::random(), PeerId::random());
    let now = Instant::now();
    s.add_provider(rec(1, old, Some(now + Duration::from_secs(5)), vec![]))
        .unwrap();
    s.add_provider(rec(1, fresh, Some(now + Duration::from_secs(50)), vec![]))
        .unwrap();
    s.add_provider(rec(2, old, Some(now + Duration::from_secs(5)), vec![]))
        .unwrap();
    s.add_provider(rec(3, local, None, vec![])).unwrap();
    assert_eq!(s.sweep(now + Duration::from_secs(2)), 0);
    assert_eq!(s.sweep(now + Duration::from_secs(10)), 2);
    assert_eq!(ids(&s, 1), vec![fresh]);
    assert!(s.providers(&key(2)).is_empty());
    assert_eq!(ids(&s, 3), vec![local], "our own records never expire");
    assert_eq!(s.keys(), 2);
    assert!(!s.index.contains_key(&old));
}

#[test]
fn new_keys_beyond_the_bound_are_refused_known_ones_still_take_providers() {
    let mut s = Store::new(PeerId::random(), 2);
    s.add_provider(rec(1, PeerId::random(), None, vec![]))
        .unwrap();
    s.add_provider(rec(2, PeerId::random(), None, vec![]))
        .unwrap();
    assert!(matches!(
        s.add_provider(rec(3, PeerId::random(), None, vec![])),
        Err(Error::MaxProvidedKeys)
    ));
    s.add_provider(rec(2, PeerId::random(), None, vec![]))
        .unwrap();
    assert_eq!(s.providers(&key(2)).len(), 2);
}

#[test]
fn provided_lists_our_own_records() {
    let local = PeerId::random();
    let mut s = Store::new(local, 10);
    s.add_provider(rec(1, local, None, vec![])).unwrap();
    s.add_provider(rec(1, PeerId::random(), None, vec![]))
        .unwrap();
    s.add_provider(rec(2, PeerId::random(), None, vec![]))
        .unwrap();
    let mine: Vec<_> = s.provided().map(|r| r.into_owned()).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].key.clone(), mine[0].provider), (key(1), local));
}

#[derive(Debug, Clone)]
enum Op {
    Add(u32, usize),
    Remove(u32, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..6u32, 0..30usize).prop_map(|(k, p)| Op::Add(k, p)),
        1 => (0..6u32, 0..30usize).prop_map(|(k, p)| Op::Remove(k, p)),
    ]
}

proptest! {
    /// Same answers as kad's own store for any sequence of adds and removes.
    #[test]
    fn answers_like_kads_memory_store(ops in proptest::collection::vec(op(), 0..400)) {
        let local = PeerId::random();
        let peers: Vec<PeerId> = (0..30).map(|i| if i == 0 { local } else { PeerId::random() }).collect();
        let mut ours = Store::new(local, 4);
        let mut model = MemoryStore::with_config(local, MemoryStoreConfig {
            max_provided_keys: 4,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
            ..Default::default()
        });
        for op in ops {
            match op {
                Op::Add(k, p) => {
                    let r = rec(k, peers[p], None, vec![addr(p as u32)]);
                    prop_assert_eq!(ours.add_provider(r.clone()).is_ok(), model.add_provider(r).is_ok());
                }
                Op::Remove(k, p) => {
                    ours.remove_provider(&key(k), &peers[p]);
                    model.remove_provider(&key(k), &peers[p]);
                }
            }
            for k in 0..6 {
                prop_assert_eq!(ours.providers(&key(k)), model.providers(&key(k)));
            }
            let mut a: Vec<_> = ours.provided().map(|r| r.key.clone()).collect();
            let mut b: Vec<_> = model.provided().map(|r| r.key.clone()).collect();
            a.sort_by(|x, y| x.as_ref().cmp(y.as_ref()));
            b.sort_by(|x, y| x.as_ref().cmp(y.as_ref()));
            prop_assert_eq!(a, b);
        }
        let live: usize = (0..30).filter(|&p| (0..6).any(|k| ours.providers(&key(k)).iter().any(|r| r.provider == peers[p]))).count();
        prop_assert_eq!(ours.index.len(), live, "peer table holds exactly the peers with records");
    }
}
