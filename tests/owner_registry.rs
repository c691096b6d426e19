//! The owner registry ([`gpusvm::pagemap::OwnerRegistry`]) against SPEC §6 "Owners /
//! interconnect":
//!
//! > A joining peer adopts the owner of the first group all of whose members have a fast
//! > interconnect with it; otherwise it gets a new owner. Leaving drops the reference; an owner
//! > dies with its last peer.
//!
//! - hand-written cases: "first" is the oldest live group; a link to *every* member is needed;
//!   the rule looks at the current members (after some left); an asymmetric predicate counts
//!   only where it holds both ways; ids are never reused; a failed join or leave changes
//!   nothing;
//! - an exhaustive comparison with a model of the rule written from the SPEC: every symmetric
//!   link graph on four peers, every join order, then leaves and re-joins;
//! - a seeded random walk of joins and leaves on six peers against the same model.
//!
//! (The concurrent side is `tests/loom_owner.rs`.)
#![cfg(not(loom))]

use gpusvm::pagemap::{OwnerRegistry, PeerId};
use gpusvm::platform::OwnerId;
use gpusvm::Error;
use std::collections::BTreeSet;

/// A symmetric link predicate over the undirected `edges` (a peer always reaches itself).
fn graph(edges: &[(u64, u64)]) -> impl Fn(PeerId, PeerId) -> bool {
    let set: BTreeSet<(u64, u64)> = edges.iter().map(|&(a, b)| (a.min(b), a.max(b))).collect();
    move |a: PeerId, b: PeerId| a == b || set.contains(&(a.0.min(b.0), a.0.max(b.0)))
}

/// The SPEC rule, written independently: groups oldest first, owner ids from a counter.
#[derive(Debug, Default, Clone)]
struct Model {
    groups: Vec<(u32, Vec<u64>)>,
    next: u32,
}

impl Model {
    fn join(&mut self, p: u64, linked: &dyn Fn(u64, u64) -> bool) -> Result<u32, Error> {
        if self.owner_of(p).is_some() {
            return Err(Error::Invalid);
        }
        for (o, members) in &mut self.groups {
            if members.iter().all(|&m| linked(m, p) && linked(p, m)) {
                members.push(p);
                return Ok(*o);
            }
        }
        let o = self.next;
        self.next += 1;
        self.groups.push((o, vec![p]));
        Ok(o)
    }

    fn leave(&mut self, p: u64) -> Result<u32, Error> {
        let i = self
            .groups
            .iter()
            .position(|(_, m)| m.contains(&p))
            .ok_or(Error::Invalid)?;
        let o = self.groups[i].0;
        self.groups[i].1.retain(|&m| m != p);
        if self.groups[i].1.is_empty() {
            self.groups.remove(i);
        }
        Ok(o)
    }

    fn owner_of(&self, p: u64) -> Option<u32> {
        self.groups
            .iter()
            .find(|(_, m)| m.contains(&p))
            .map(|(o, _)| *o)
    }
}

/// The registry agrees with the model on every peer's owner, every owner's members, and the
/// number of live owners.
fn same<F: gpusvm::pagemap::Interconnect>(r: &OwnerRegistry<F>, m: &Model, peers: u64, ctx: &str) {
    assert_eq!(r.owners(), m.groups.len(), "{ctx}: live owners");
    for p in 0..peers {
        assert_eq!(
            r.owner_of(PeerId(p)).map(|o| o.0),
            m.owner_of(p),
            "{ctx}: owner of {p}"
        );
    }
    for (o, members) in &m.groups {
        let mut got: Vec<u64> = r
            .members(OwnerId(*o))
            .unwrap()
            .iter()
            .map(|p| p.0)
            .collect();
        let mut want = members.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{ctx}: members of {o}");
    }
}

#[test]
fn first_group_is_the_oldest_live_one() {
    // 0 and 1 unlinked; 2 linked to both; 3 linked to 1 only.
    let r = OwnerRegistry::new(graph(&[(0, 2), (1, 2), (1, 3)])).unwrap();
    let o0 = r.join(PeerId(0)).unwrap();
    let o1 = r.join(PeerId(1)).unwrap();
    assert_ne!(o0, o1);
    assert_eq!(
        r.join(PeerId(2)).unwrap(),
        o0,
        "both groups qualify: the older wins"
    );
    assert_eq!(
        r.join(PeerId(3)).unwrap(),
        o1,
        "the first group fails (no link to 0), the second qualifies"
    );
    // The oldest group dies; a later one created after it is now first.
    r.leave(PeerId(0)).unwrap();
    r.leave(PeerId(2)).unwrap();
    assert!(r.members(o0).unwrap().is_empty());
    let r2 = OwnerRegistry::new(graph(&[(0, 2), (1, 2)])).unwrap();
    let a = r2.join(PeerId(0)).unwrap();
    let b = r2.join(PeerId(1)).unwrap();
    r2.leave(PeerId(0)).unwrap();
    let c = r2.join(PeerId(0)).unwrap();
    assert!(c != a && c != b, "a fresh owner, after {b:?}");
    assert_eq!(
        r2.join(PeerId(2)).unwrap(),
        b,
        "{b:?} is now older than {c:?}"
    );
}

#[test]
fn a_link_to_every_member_is_needed() {
    // A chain 0-1-2-3: each joiner is linked to the previous one only.
    let r = OwnerRegistry::new(graph(&[(0, 1), (1, 2), (2, 3)])).unwrap();
    let o0 = r.join(PeerId(0)).unwrap();
    assert_eq!(r.join(PeerId(1)).unwrap(), o0);
    let o2 = r.join(PeerId(2)).unwrap();
    assert_ne!(o2, o0, "2 is not linked to 0");
    assert_eq!(
        r.join(PeerId(3)).unwrap(),
        o2,
        "3 is linked to every member of 2's group"
    );
    assert_eq!(r.owners(), 2);
}

#[test]
fn the_rule_looks_at_current_members() {
    // 2 is linked to 0 but not to 1.
    let r = OwnerRegistry::new(graph(&[(0, 1), (0, 2)])).unwrap();
    let o = r.join(PeerId(0)).unwrap();
    assert_eq!(r.join(PeerId(1)).unwrap(), o);
    let o2 = r.join(PeerId(2)).unwrap();
    assert_ne!(o2, o);
    r.leave(PeerId(2)).unwrap();
    r.leave(PeerId(1)).unwrap();
    assert_eq!(
        r.join(PeerId(2)).unwrap(),
        o,
        "1 left: 2 now qualifies for 0's owner"
    );
    assert_eq!(r.owners(), 1, "2's old owner died with it");
}

#[test]
fn asymmetric_predicate_counts_only_both_ways() {
    // SPEC §6 calls the predicate symmetric; a broken one that holds in one direction only
    // must not merge peers (the registry asks both ways).
    for (from_member, from_joiner) in [(true, false), (false, true), (true, true)] {
        let pred = move |a: PeerId, b: PeerId| {
            a == b || (a.0 == 0 && b.0 == 1 && from_member) || (a.0 == 1 && b.0 == 0 && from_joiner)
        };
        let r = OwnerRegistry::new(pred).unwrap();
        let o0 = r.join(PeerId(0)).unwrap();
        let o1 = r.join(PeerId(1)).unwrap();
        assert_eq!(
            o0 == o1,
            from_member && from_joiner,
            "member->joiner {from_member}, joiner->member {from_joiner}"
        );
    }
}

#[test]
fn owner_ids_are_never_reused() {
    let r = OwnerRegistry::new(graph(&[])).unwrap();
    let mut seen = BTreeSet::new();
    for round in 0..50u64 {
        let p = PeerId(round % 3);
        let o = r.join(p).unwrap();
        assert!(seen.insert(o), "owner {o:?} handed out twice");
        assert_eq!(r.leave(p), Ok(o));
        assert_eq!(r.owners(), 0);
        assert!(r.members(o).unwrap().is_empty());
    }
}

#[test]
fn failed_calls_change_nothing() {
    let r = OwnerRegistry::new(graph(&[(0, 1)])).unwrap();
    let o = r.join(PeerId(0)).unwrap();
    r.join(PeerId(1)).unwrap();
    assert_eq!(r.join(PeerId(0)), Err(Error::Invalid), "joined twice");
    assert_eq!(r.join(PeerId(1)), Err(Error::Invalid));
    assert_eq!(&r.members(o).unwrap()[..], [PeerId(0), PeerId(1)]);
    assert_eq!(r.owners(), 1);
    assert_eq!(r.leave(PeerId(7)), Err(Error::Invalid), "never joined");
    assert_eq!(&r.members(o).unwrap()[..], [PeerId(0), PeerId(1)]);
    assert_eq!(r.leave(PeerId(0)), Ok(o));
    assert_eq!(r.leave(PeerId(0)), Err(Error::Invalid), "left twice");
    assert_eq!(&r.members(o).unwrap()[..], [PeerId(1)]);
    // The next new owner is still fresh (the failed calls consumed no id).
    let r2 = OwnerRegistry::new(graph(&[])).unwrap();
    let a = r2.join(PeerId(0)).unwrap();
    let _ = r2.join(PeerId(0));
    let _ = r2.leave(PeerId(9));
    let b = r2.join(PeerId(1)).unwrap();
    assert_eq!(b.0, a.0 + 1);
}

/// Every symmetric link graph on 4 peers (64) × every join order (24), then each peer leaves
/// and joins again in turn: the registry matches the model after every call.
#[test]
fn exhaustive_four_peers_against_the_model() {
    let pairs: Vec<(u64, u64)> = (0..4)
        .flat_map(|a| (a + 1..4).map(move |b| (a, b)))
        .collect();
    let mut orders: Vec<Vec<u64>> = Vec::new();
    permutations(&mut vec![0, 1, 2, 3], 0, &mut orders);
    assert_eq!(orders.len(), 24);
    for mask in 0u32..1 << pairs.len() {
        let edges: Vec<(u64, u64)> = pairs
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, e)| *e)
            .collect();
        let link = graph(&edges);
        let linked = |a: u64, b: u64| link(PeerId(a), PeerId(b));
        for order in &orders {
            let r = OwnerRegistry::new(graph(&edges)).unwrap();
            let mut m = Model::default();
            for &p in order {
                let got = r.join(PeerId(p)).map(|o| o.0);
                assert_eq!(
                    got,
                    m.join(p, &linked),
                    "mask {mask:#b} order {order:?} join {p}"
                );
                same(&r, &m, 4, &format!("mask {mask:#b} order {order:?}"));
            }
            for &p in order.iter().rev() {
                assert_eq!(r.leave(PeerId(p)).map(|o| o.0), m.leave(p));
                same(&r, &m, 4, "leave");
                assert_eq!(r.join(PeerId(p)).map(|o| o.0), m.join(p, &linked));
                same(&r, &m, 4, "re-join");
            }
        }
    }
}

fn permutations(v: &mut Vec<u64>, k: usize, out: &mut Vec<Vec<u64>>) {
    if k == v.len() {
        out.push(v.clone());
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permutations(v, k + 1, out);
        v.swap(k, i);
    }
}

/// Seeded random joins and leaves (including invalid ones) on 6 peers and random graphs.
#[test]
fn random_walk_against_the_model() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: u64| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    };
    for _ in 0..200 {
        let mut edges = Vec::new();
        for a in 0..6u64 {
            for b in a + 1..6 {
                if next(3) != 0 {
                    edges.push((a, b));
                }
            }
        }
        let link = graph(&edges);
        let linked = |a: u64, b: u64| link(PeerId(a), PeerId(b));
        let r = OwnerRegistry::new(graph(&edges)).unwrap();
        let mut m = Model::default();
        for _ in 0..60 {
            let p = next(6);
            if next(2) == 0 {
                assert_eq!(r.join(PeerId(p)).map(|o| o.0), m.join(p, &linked));
            } else {
                assert_eq!(r.leave(PeerId(p)).map(|o| o.0), m.leave(p));
            }
            same(&r, &m, 6, &format!("edges {edges:?}"));
        }
    }
}
