//! Focused tests of the unsafe paths of `RangeTree` (src/range/tree.rs) and of the intrusive
//! links of `Range`, sized for Miri (`cargo +nightly miri test --test miri_range_tree`) and
//! checked against a `BTreeMap` model. They also run in the normal `cargo test`.
//!
//! Every unsafe path of the tree is driven through the public API:
//! - the lookup hint: a hit in the hinted range, a miss in the gap after it, a step into its
//!   successor (raw link walk + `cursor_from_ptr`), a hinted last range (no successor), a far
//!   address (descent);
//! - successor walking (`Overlapping::next`): down a right subtree and up through parents;
//! - `Overlapping::peek` and `peek_arc` (`cursor_from_ptr` + `clone_pointer`, checked with
//!   `Arc` counts), and `last_overlapping`;
//! - removal (`remove`, `pop_front`) of the hinted range while nothing else holds it, so that a
//!   stale hint would be a use after free;
//! - insertion after removal (at the freed place, where the allocator may reuse the address),
//!   and insertion between the hinted range and its successor;
//! - moving a range between trees, and dropping a tree that still links ranges.
//!
//! With the `sim` feature, the intrusive garbage-collector queue (src/gc.rs) is exercised
//! through a small simulated machine as well.
//!
//! The flat `RangeIndex` (src/range/index.rs) shares the tree link (released by the index
//! through `link::release_tree_link`) and prefetches slot arrays ahead of an overlap walk: its
//! tests below move ranges between an index and a tree, drop an index holding the last
//! references, and walk more slots than the read-ahead distance.

use gpusvm::heap::AllocCtx;
use gpusvm::range::{Range, RangeIndex, RangeTree};
use gpusvm::Error;
use std::collections::BTreeMap;
/// A range reference on the default host.
type Arc<T> = gpusvm::HostArc<gpusvm::DefaultHost, T>;

const P: u64 = 4096;

/// The tree and its model: start → (end, the object inserted).
struct Checked {
    tree: RangeTree,
    model: BTreeMap<u64, (u64, Arc<Range>)>,
}

impl Checked {
    fn new() -> Self {
        Checked {
            tree: RangeTree::new(),
            model: BTreeMap::new(),
        }
    }

    fn model_find(&self, a: u64) -> Option<&Arc<Range>> {
        self.model
            .range(..=a)
            .next_back()
            .filter(|(_, (e, _))| a < *e)
            .map(|(_, (_, r))| r)
    }

    /// `find` and `find_arc` at `a` agree with the model (and return the very object).
    fn find(&self, a: u64) {
        let want = self.model_find(a).map(Arc::as_ptr);
        let got = self.tree.find(a).map(|r| r as *const Range);
        assert_eq!(got, want, "find({a:#x})");
        let got = self.tree.find_arc(a);
        assert_eq!(got.as_ref().map(Arc::as_ptr), want, "find_arc({a:#x})");
    }

    /// `overlapping`, `peek_arc` at every step, and `any_overlap` agree with the model.
    fn overlapping(&self, s: u64, e: u64) {
        let want: Vec<*const Range> = self
            .model
            .values()
            .filter(|(re, r)| s < e && r.start() < e && s < *re)
            .map(|(_, r)| Arc::as_ptr(r))
            .collect();
        let mut it = self.tree.overlapping(s, e);
        let mut got = Vec::new();
        loop {
            let peek_ref = it.peek().map(|r| r as *const Range);
            let peek = it.peek_arc();
            assert_eq!(peek_ref, peek.as_ref().map(Arc::as_ptr), "peek vs peek_arc");
            let next = it.next();
            assert_eq!(
                peek.as_ref().map(Arc::as_ptr),
                next.map(|r| r as *const Range),
                "peek_arc vs next in overlapping({s:#x}, {e:#x})"
            );
            if let Some(p) = &peek {
                // The tree's reference, the model's, and the one peek_arc just made.
                assert_eq!(Arc::strong_count(p), 3, "peek_arc must add one reference");
            }
            match next {
                Some(r) => got.push(r as *const Range),
                None => break,
            }
        }
        assert_eq!(got, want, "overlapping({s:#x}, {e:#x})");
        assert_eq!(
            self.tree.last_overlapping(s, e).map(|r| r as *const Range),
            want.last().copied(),
            "last_overlapping({s:#x}, {e:#x})"
        );
        assert_eq!(self.tree.any_overlap(s, e), !want.is_empty());
    }

    fn insert(&mut self, s: u64, e: u64) -> bool {
        let r = Range::new(s, e).unwrap();
        let overlaps = self.model.values().any(|(re, m)| m.start() < e && s < *re);
        let ok = self.tree.insert(r.clone()).is_ok();
        assert_eq!(ok, !overlaps, "insert [{s:#x}, {e:#x})");
        assert_eq!(r.is_linked(), ok);
        if ok {
            self.model.insert(s, (e, r));
        }
        self.check();
        ok
    }

    /// Remove the range starting at `s` (dropping the model's reference too, so that the tree's
    /// is the last one and the range is freed when the returned `Arc` goes).
    fn remove(&mut self, s: u64) {
        let (_, r) = self.model.remove(&s).expect("a range starts there");
        let twin = Range::new(r.start(), r.end()).unwrap();
        assert!(self.tree.remove(&twin).is_none(), "only the very object");
        let out = self.tree.remove(&r).expect("removed");
        assert!(Arc::ptr_eq(&out, &r) && !out.is_linked());
        drop(r);
        assert_eq!(Arc::strong_count(&out), 1);
        drop(out);
        self.check();
    }

    fn pop_front(&mut self) {
        let want = self.model.keys().next().copied();
        let got = self.tree.pop_front();
        assert_eq!(got.as_ref().map(|r| r.start()), want);
        if let Some(s) = want {
            self.model.remove(&s);
        }
        if let Some(r) = got {
            assert!(!r.is_linked());
            assert_eq!(Arc::strong_count(&r), 1);
        }
        self.check();
    }

    fn check(&self) {
        assert_eq!(self.tree.len(), self.model.len());
        assert_eq!(self.tree.is_empty(), self.model.is_empty());
        let got: Vec<*const Range> = self.tree.iter().map(|r| r as *const Range).collect();
        let want: Vec<*const Range> = self.model.values().map(|(_, r)| Arc::as_ptr(r)).collect();
        assert_eq!(got, want);
        for (_, r) in self.model.values() {
            // The tree's reference and the model's.
            assert_eq!(Arc::strong_count(r), 2, "{r:?}");
        }
    }
}

/// Ranges `[2k, 2k+1)` pages for k in 0..n: a gap after each.
fn spaced(n: u64) -> Checked {
    let mut c = Checked::new();
    for k in 0..n {
        c.insert(2 * k * P, (2 * k + 1) * P);
    }
    c
}

#[test]
fn hint_hit_gap_successor_last_and_far() {
    let c = spaced(8);
    for k in 0..8u64 {
        let s = 2 * k * P;
        c.find(s); // sets the hint (or descends)
        c.find(s + P - 1); // hit: in the hinted range
        c.find(s + P); // gap after the hinted range: walks to the successor, answers None
        c.find(s + 2 * P); // in the successor: hint + successor walk
        c.find(s + 2 * P + 7);
    }
    // The last range hinted: no successor.
    c.find(14 * P);
    c.find(15 * P);
    c.find(15 * P + 1);
    // Far addresses (and below the hinted range): descents.
    c.find(0);
    c.find(u64::MAX);
    c.find(9 * P);
    c.find(3 * P);
    c.find(1);
}

#[test]
fn successor_walks_every_shape() {
    // Enough ranges for a tree several levels deep, inserted in an order that produces both
    // right subtrees to descend and parent chains to climb.
    let mut c = Checked::new();
    let order = [7u64, 3, 11, 1, 5, 9, 13, 0, 2, 4, 6, 8, 10, 12, 14, 15];
    for k in order {
        c.insert(2 * k * P, (2 * k + 1) * P);
    }
    c.overlapping(0, u64::MAX);
    for s in 0..32u64 {
        c.overlapping(s * P, (s + 5) * P);
        c.overlapping(s * P + 1, s * P + 2);
    }
    c.overlapping(5 * P, 5 * P); // empty
    c.overlapping(9 * P, 3 * P); // reversed
}

#[test]
fn removing_the_hinted_range() {
    let mut c = spaced(6);
    for k in [2u64, 0, 5, 3] {
        let s = 2 * k * P;
        c.find(s + 1); // hint on it
        c.remove(s); // freed: a stale hint would now dangle
        c.find(s + 1);
        c.find(s + 2 * P);
        c.find(s.wrapping_sub(2 * P));
        c.overlapping(s, s + 4 * P);
    }
    // pop_front of the hinted first range.
    let first = *c.model.keys().next().unwrap();
    c.find(first);
    c.pop_front();
    c.find(first);
    c.find(first + 2 * P);
    while !c.model.is_empty() {
        let s = *c.model.keys().next().unwrap();
        c.find(s);
        c.pop_front();
    }
    c.find(0);
    c.overlapping(0, u64::MAX);
}

#[test]
fn insertion_after_removal_and_next_to_the_hint() {
    let mut c = spaced(4);
    // Remove the hinted range and insert a new one at the same place (the allocator may hand
    // out the same address): the hint must not confuse the two.
    for round in 0..3u64 {
        c.find(2 * P);
        c.remove(2 * P);
        c.find(2 * P);
        assert!(c.insert(2 * P, (3 + round % 2) * P));
        c.find(2 * P);
        c.find(3 * P);
        c.find(4 * P);
        c.find(2 * P);
        c.remove(2 * P);
        assert!(c.insert(2 * P, 3 * P));
    }
    // Insert between the hinted range and its successor: a streaming lookup must see it.
    c.find(0);
    assert!(c.insert(P, 2 * P));
    c.find(P);
    c.find(P + 5);
    c.find(0);
    assert!(!c.insert(P, 2 * P), "overlap refused");
    c.overlapping(0, 8 * P);
}

#[test]
fn arcs_outlive_removal_and_move_between_trees() {
    let mut a = spaced(4);
    let mut b = Checked::new();
    let kept = a.tree.find_arc(2 * P).unwrap();
    a.find(2 * P);
    let (_, r) = a.model.remove(&(2 * P)).unwrap();
    let out = a.tree.remove(&r).unwrap();
    drop(out);
    a.check();
    assert!(!kept.is_linked());
    // Into another tree, then looked up in both.
    assert!(b.tree.insert(r.clone()).is_ok());
    b.model.insert(r.start(), (r.end(), r));
    drop(kept);
    b.check();
    a.find(2 * P);
    b.find(2 * P);
    b.overlapping(0, u64::MAX);
    // A linked range cannot go into a second tree.
    let linked = b.tree.find_arc(2 * P).unwrap();
    assert_eq!(a.tree.insert(linked.clone()), Err(Error::Invalid));
    assert!(linked.is_linked());
    drop(linked);
    // Dropping a tree that still links ranges unlinks them; they can be inserted again.
    let survivors: Vec<Arc<Range>> = b.model.values().map(|(_, r)| r.clone()).collect();
    drop(b);
    let mut c = RangeTree::new();
    for r in &survivors {
        assert!(!r.is_linked());
        assert!(c.insert(r.clone()).is_ok());
    }
    assert_eq!(c.find(2 * P).map(|r| r.start()), Some(2 * P));
    while c.pop_front().is_some() {}
    for r in &survivors {
        assert_eq!(Arc::strong_count(r), 1);
    }
}

/// A small random walk over everything above (a few hundred steps under Miri).
#[test]
fn random_walk_against_the_model() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rng = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let steps = if cfg!(miri) { 300 } else { 20_000 };
    let mut c = Checked::new();
    let mut cursor = 0u64;
    for _ in 0..steps {
        let a = (rng() % 64) * P + rng() % P;
        match rng() % 8 {
            0 | 1 => {
                let s = a & !(P - 1);
                c.insert(s, s + (1 + rng() % 4) * P);
            }
            2 => {
                if let Some(&s) = c.model.range(a..).next().map(|(s, _)| s) {
                    c.find(s); // hint on the range about to go
                    c.remove(s);
                } else {
                    c.pop_front();
                }
            }
            3 => c.overlapping(a, a + (rng() % 12) * P),
            4 | 5 => {
                cursor = (cursor + P / 2) % (70 * P);
                c.find(cursor);
            }
            _ => c.find(a),
        }
    }
    while !c.model.is_empty() {
        c.pop_front();
    }
}

/// The intrusive garbage-collector queue: ranges queued by an unmap (once, even if invalidated
/// twice), collected by `gc_run`, or dropped by `close` while still queued.
#[cfg(feature = "sim")]
#[test]
fn gc_queue_links() {
    use gpusvm::platform::VmaFlags;
    use gpusvm::sim::{SimGpu, SimMm, SimWorld};
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
    let rw = VmaFlags::READ | VmaFlags::WRITE;
    let buf = mm.mmap(16 * P, rw, false).unwrap();
    for i in 0..4 {
        gpu.write_u64(buf + i * 4 * P, i).unwrap();
    }
    let (_, before) = gpu.svm.counts();
    assert!(before >= 1);
    // Unmap part of it: the ranges hit are queued once each.
    mm.munmap(buf, 4 * P).unwrap();
    mm.munmap(buf + 2 * P, 4 * P).unwrap();
    assert!(gpu.svm.gc_pending() >= 1);
    assert!(gpu.svm.gc_run() >= 1);
    assert_eq!(gpu.svm.gc_pending(), 0);
    gpu.check().unwrap();
    // Queue some more and close with the queue non-empty.
    gpu.write_u64(buf + 12 * P, 9).unwrap();
    mm.munmap(buf + 8 * P, 8 * P).unwrap();
    assert!(gpu.svm.gc_pending() >= 1);
    gpu.svm.close();
    assert_eq!(gpu.svm.gc_pending(), 0);
    gpusvm::sim::check_closed(&gpu).unwrap();
}

/// Ranges move between a `RangeIndex` and a `RangeTree` (the link is shared and exclusive);
/// removal and `pop_front` hand back the index's reference with the link released; dropping an
/// index that holds the last references releases the links before freeing the ranges.
#[test]
fn index_shares_the_tree_link_and_releases_it() {
    const CTX: AllocCtx = AllocCtx::MaySleep;
    let slot = 4 * P;
    let mut ix: RangeIndex = RangeIndex::new(0, 40 * slot, slot, CTX).unwrap();
    let mut tree = RangeTree::new();
    // Slots 0..40: one, two or no ranges each (inline, arrays, empty slots).
    let mut kept = Vec::new();
    for k in 0..40u64 {
        let base = k * slot;
        let n = k % 3;
        for j in 0..n {
            let r = Range::new(base + j * P, base + (j + 1) * P).unwrap();
            ix.insert(r.clone(), CTX).unwrap();
            kept.push(r);
        }
    }
    // Walks longer than the read-ahead distance, from every few slots.
    for k in (0..40u64).step_by(7) {
        let want: Vec<u64> = kept
            .iter()
            .map(|r| r.start())
            .filter(|&s| s >= k * slot)
            .collect();
        let mut it = ix.overlapping(k * slot, u64::MAX);
        let mut got = Vec::new();
        while let Some(a) = it.peek_arc() {
            let r = it.next().unwrap();
            assert!(std::ptr::eq(Arc::as_ptr(&a), r));
            got.push(r.start());
        }
        assert_eq!(got, want);
    }
    // Linked in the index: the tree refuses it; removed, the tree takes it; back again.
    let r = kept[3].clone();
    assert_eq!(tree.insert(r.clone()), Err(Error::Invalid));
    let out = ix.remove(&r).unwrap();
    assert!(!out.is_linked());
    tree.insert(out).unwrap();
    assert_eq!(ix.insert(r.clone(), CTX), Err(Error::Invalid));
    let back = tree.remove(&r).unwrap();
    ix.insert(back, CTX).unwrap();
    // Here, in `kept` and in the index.
    assert_eq!(Arc::strong_count(&r), 3);
    drop(r);
    // The index holds the last references of the first slots' ranges.
    let first: Vec<u64> = kept.drain(..6).map(|r| r.start()).collect();
    assert_eq!(ix.pop_front().map(|r| r.start()), Some(first[0]));
    assert_eq!(ix.find_arc(first[1]).map(|r| r.start()), Some(first[1]));
    let n = ix.len();
    drop(ix);
    assert_eq!(n, kept.len() + 5);
    for r in &kept {
        assert!(!r.is_linked());
        assert_eq!(Arc::strong_count(r), 1);
    }
}
