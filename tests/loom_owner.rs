//! Loom models of the owner registry ([`gpusvm::pagemap::OwnerRegistry`], SPEC §6 "Owners /
//! interconnect") under concurrent `join`/`leave`. The registry's lock is
//! [`gpusvm::sync::Mutex`], which is loom's mutex under `--cfg loom`, so loom explores every
//! interleaving of the threads' registry calls (up to the preemption bound).
//!
//! Run:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=/work/target-loomown cargo test --release --test loom_owner`
//!
//! What each model proves, for every interleaving explored (at most three threads including
//! main):
//! - [`linked_joiners_share_an_owner`]: two peers with a link joining at once end up in the same
//!   owner (id 0, the first ever), whichever joins first; the owner holds exactly both.
//! - [`unlinked_joiners_get_distinct_owners`]: two peers without a link joining at once get two
//!   different, fresh owners (no id handed out twice under contention).
//! - [`joiners_into_an_existing_group`]: two joiners linked to the one member of an existing
//!   owner but not to each other: exactly one of them joins that owner, the other gets a fresh
//!   one; both outcomes are reachable (checked across the whole exploration). Every owner's
//!   members are pairwise linked in every final state (the rule never builds a group whose
//!   members cannot share pages).
//! - [`join_racing_the_last_leave`]: a peer joins while the last member of the owner it
//!   qualifies for leaves. The joiner never joins a dead owner: either it joined the live group
//!   (which then survives the leave, with the joiner as its only member) or it got a fresh
//!   owner and the old one is dead and empty. A later joiner never receives the dead id. Both
//!   outcomes are reachable.
//! - [`leave_and_rejoin_racing`]: two members of one fully linked owner each leave and join
//!   again concurrently: they always end in one owner; if the first owner died on the way, the
//!   survivor is a fresh one and the dead id never comes back.
//! - [`device_peers_join_back_to_back_racing_a_leave`]: a device joins as two peers (its `Svm`
//!   and its pagemap) while a member it has no link to leaves an owner it otherwise qualifies
//!   for. Joined one by one, the two peers could end up in different owners (loom found that
//!   interleaving); joined as one unit with `OwnerRegistry::join_all` they always share one.
#![cfg(loom)]

use gpusvm::pagemap::{Interconnect, OwnerRegistry, PeerId};
use gpusvm::platform::OwnerId;
use loom::sync::Arc;
use loom::thread;
use std::collections::BTreeSet;
use std::sync::Mutex as Ghost;

fn all_linked(_: PeerId, _: PeerId) -> bool {
    true
}

fn none_linked(a: PeerId, b: PeerId) -> bool {
    a == b
}

/// Every owner of the peers `0..n` holds exactly the peers whose `owner_of` names it, and its
/// members are pairwise linked (both ways).
fn check_groups<F: Interconnect>(r: &OwnerRegistry<F>, n: u64, link: fn(PeerId, PeerId) -> bool) {
    let mut owners = BTreeSet::new();
    for p in 0..n {
        if let Some(o) = r.owner_of(PeerId(p)) {
            owners.insert(o);
        }
    }
    assert_eq!(r.owners(), owners.len());
    for o in owners {
        let members = r.members(o).unwrap();
        for &m in members.iter() {
            assert_eq!(r.owner_of(m), Some(o));
            for &k in members.iter() {
                assert!(
                    link(m, k) && link(k, m),
                    "{m:?} and {k:?} share {o:?} without a link"
                );
            }
        }
        let named = (0..n).filter(|&p| r.owner_of(PeerId(p)) == Some(o)).count();
        assert_eq!(members.len(), named);
    }
}

#[test]
fn linked_joiners_share_an_owner() {
    loom::model(|| {
        let r = Arc::new(OwnerRegistry::new(all_linked).unwrap());
        let r1 = r.clone();
        let t = thread::spawn(move || r1.join(PeerId(1)).unwrap());
        let o0 = r.join(PeerId(0)).unwrap();
        let o1 = t.join().unwrap();
        assert_eq!(o0, o1);
        assert_eq!(o0, OwnerId(0));
        assert_eq!(r.owners(), 1);
        let mut m = r.members(o0).unwrap();
        m.sort();
        assert_eq!(&m[..], [PeerId(0), PeerId(1)]);
        check_groups(&r, 2, all_linked);
    });
}

#[test]
fn unlinked_joiners_get_distinct_owners() {
    loom::model(|| {
        let r = Arc::new(OwnerRegistry::new(none_linked).unwrap());
        let r1 = r.clone();
        let t = thread::spawn(move || r1.join(PeerId(1)).unwrap());
        let o0 = r.join(PeerId(0)).unwrap();
        let o1 = t.join().unwrap();
        assert_ne!(o0, o1);
        let ids: BTreeSet<u32> = [o0.0, o1.0].into();
        assert_eq!(ids, [0, 1].into());
        assert_eq!(r.owners(), 2);
        check_groups(&r, 2, none_linked);
    });
}

/// 0 is linked to 1 and 2; 1 and 2 are not linked.
fn star(a: PeerId, b: PeerId) -> bool {
    a == b || a.0 == 0 || b.0 == 0
}

#[test]
fn joiners_into_an_existing_group() {
    let seen: std::sync::Arc<Ghost<BTreeSet<u64>>> = Default::default();
    let s = seen.clone();
    loom::model(move || {
        let r = Arc::new(OwnerRegistry::new(star).unwrap());
        let o = r.join(PeerId(0)).unwrap();
        let (r1, r2) = (r.clone(), r.clone());
        let t1 = thread::spawn(move || r1.join(PeerId(1)).unwrap());
        let t2 = thread::spawn(move || r2.join(PeerId(2)).unwrap());
        let (o1, o2) = (t1.join().unwrap(), t2.join().unwrap());
        // Exactly one joined 0's owner; the other got the next fresh id.
        assert!((o1 == o) != (o2 == o), "o={o:?} o1={o1:?} o2={o2:?}");
        let (winner, fresh) = if o1 == o { (1, o2) } else { (2, o1) };
        assert_eq!(fresh, OwnerId(1));
        assert_eq!(r.owners(), 2);
        check_groups(&r, 3, star);
        s.lock().unwrap().insert(winner);
    });
    assert_eq!(*seen.lock().unwrap(), [1, 2].into(), "both orders explored");
}

#[test]
fn join_racing_the_last_leave() {
    let seen: std::sync::Arc<Ghost<BTreeSet<bool>>> = Default::default();
    let s = seen.clone();
    // 0-1 and 0-2 linked; 1-2 not.
    loom::model(move || {
        let r = Arc::new(OwnerRegistry::new(star).unwrap());
        let o0 = r.join(PeerId(0)).unwrap();
        let (r1, r2) = (r.clone(), r.clone());
        let leaver = thread::spawn(move || r1.leave(PeerId(0)).unwrap());
        let joiner = thread::spawn(move || {
            let o = r2.join(PeerId(1)).unwrap();
            // Nobody else moves peer 1: what join returned is where it is.
            assert_eq!(r2.owner_of(PeerId(1)), Some(o));
            o
        });
        assert_eq!(leaver.join().unwrap(), o0);
        let o1 = joiner.join().unwrap();
        assert_eq!(r.owners(), 1);
        assert_eq!(&r.members(o1).unwrap()[..], [PeerId(1)]);
        let joined_live = o1 == o0;
        if !joined_live {
            assert_eq!(o1, OwnerId(1), "a fresh owner");
            assert!(r.members(o0).unwrap().is_empty(), "the old owner is dead");
        }
        // A later joiner (not linked to 1) gets an id never seen before, never the dead one.
        let o2 = r.join(PeerId(2)).unwrap();
        assert!(o2 != o0 && o2 != o1, "o0={o0:?} o1={o1:?} o2={o2:?}");
        check_groups(&r, 3, star);
        s.lock().unwrap().insert(joined_live);
    });
    assert_eq!(
        *seen.lock().unwrap(),
        [false, true].into(),
        "both the join-first and the leave-first outcomes explored"
    );
}

#[test]
fn leave_and_rejoin_racing() {
    let seen: std::sync::Arc<Ghost<BTreeSet<u32>>> = Default::default();
    let s = seen.clone();
    loom::model(move || {
        let r = Arc::new(OwnerRegistry::new(all_linked).unwrap());
        let o = r.join(PeerId(0)).unwrap();
        assert_eq!(r.join(PeerId(1)).unwrap(), o);
        let (r1, r2) = (r.clone(), r.clone());
        let t = thread::spawn(move || {
            r1.leave(PeerId(1)).unwrap();
            r1.join(PeerId(1)).unwrap()
        });
        r2.leave(PeerId(0)).unwrap();
        let a = r2.join(PeerId(0)).unwrap();
        let b = t.join().unwrap();
        assert_eq!(r.owner_of(PeerId(0)), r.owner_of(PeerId(1)));
        assert_eq!(r.owners(), 1);
        let fin = r.owner_of(PeerId(0)).unwrap();
        // All linked: a new owner exists only if the registry was empty, i.e. `o` died.
        if fin != o {
            assert_eq!(fin, OwnerId(1));
            assert!(
                r.members(o).unwrap().is_empty(),
                "the dead owner stays dead"
            );
            assert!(a == fin || b == fin);
        }
        assert!(a.0 <= 1 && b.0 <= 1);
        check_groups(&r, 2, all_linked);
        s.lock().unwrap().insert(fin.0);
    });
    assert_eq!(*seen.lock().unwrap(), [0, 1].into());
}

/// Peers: 0 = a device A; 1 = a device X linked to A only; 2 and 3 = the `Svm` and the
/// pagemap of a device D, linked to A (and to each other) but not to X.
fn device_graph(a: PeerId, b: PeerId) -> bool {
    let dev = |p: PeerId| if p.0 >= 2 { 2 } else { p.0 };
    let (x, y) = (dev(a), dev(b));
    x == y || matches!((x.min(y), x.max(y)), (0, 1) | (0, 2))
}

#[test]
fn device_peers_join_back_to_back_racing_a_leave() {
    loom::model(|| {
        let r = Arc::new(OwnerRegistry::new(device_graph).unwrap());
        let o = r.join(PeerId(0)).unwrap();
        assert_eq!(r.join(PeerId(1)).unwrap(), o, "X joins A's owner");
        let (r1, r2) = (r.clone(), r.clone());
        // The device's Svm and pagemap join as one unit (`join_all`, as
        // `SimGpu::join_with` does): they can never end in different owners.
        let dev = thread::spawn(move || r1.join_all(&[PeerId(2), PeerId(3)]).unwrap());
        let x = thread::spawn(move || r2.leave(PeerId(1)).unwrap());
        let s = dev.join().unwrap();
        x.join().unwrap();
        assert_eq!(r.owner_of(PeerId(2)), Some(s));
        assert_eq!(
            r.owner_of(PeerId(3)),
            Some(s),
            "the device's Svm and pagemap ended in different owners"
        );
    });
}
