//! The ordered, non-overlapping range tree of one notifier.

use super::{acquire_tree_link, Range, RangeAdapter};
use crate::error::{Error, Result};
use crate::HostArc;
use core::ptr::NonNull;
// The lookup hint is a cache, not a synchronisation device (see `RangeTree::hint`): a
// `HintCell`, which loom does not explore.
use crate::sync::atomic::{HintCell, Ordering};
use crate::{DefaultHost, Host};
use intrusive_collections::rbtree::{AtomicLink, AtomicLinkOps, Cursor, RBTree, RBTreeOps};
use intrusive_collections::{Adapter, Bound};

/// A node of the tree: the link embedded in a [`Range`].
type Link = NonNull<AtomicLink>;

/// The adapter (zero-sized): converts between links and ranges.
const fn adapter<L: Host>() -> RangeAdapter<L> {
    RangeAdapter::NEW
}

/// An ordered set of non-overlapping [`Range`]s keyed by start address, built on an intrusive
/// red-black tree: inserting a range allocates nothing.
///
/// Lookup by address is one predecessor search (O(log n)); iteration over the ranges
/// overlapping an interval is one predecessor search followed by in-order successors
/// (O(log n + k)).
///
/// Lookups remember the last range found (a hint): a lookup in that range or in the next one
/// (a streaming fault pattern) costs O(1) instead of a descent. Iteration prefetches the right
/// child of every node it descends through, so that walking ranges scattered in memory overlaps
/// their cache misses.
///
/// Locking: the tree has no lock of its own; [`Svm`](crate::Svm) keeps it under the notifier
/// lock.
///
/// ```
/// use gpusvm::range::{Range, RangeTree};
/// let mut t = RangeTree::new();
/// t.insert(Range::new(0x1000, 0x3000).unwrap()).unwrap();
/// t.insert(Range::new(0x8000, 0x9000).unwrap()).unwrap();
/// assert_eq!(t.find(0x2fff).map(|r| r.start()), Some(0x1000));
/// assert!(t.find(0x3000).is_none());
/// let hits: Vec<u64> = t.overlapping(0x2000, 0x8001).map(|r| r.start()).collect();
/// assert_eq!(hits, [0x1000, 0x8000]);
/// // Overlapping inserts are refused.
/// assert!(t.insert(Range::new(0x2000, 0x4000).unwrap()).is_err());
/// ```
pub struct RangeTree<L: Host = DefaultHost> {
    tree: RBTree<RangeAdapter<L>>,
    len: usize,
    /// The last range [`find`](Self::find) or [`find_arc`](Self::find_arc) returned, as an
    /// exposed address, or 0.
    ///
    /// Invariant: 0 or the address of a range linked in `tree`. Lookups (`&self`) only store
    /// ranges they found in `tree`; every removal (`&mut self`, so no lookup runs) resets it to 0.
    /// The tree holds a reference to each linked range, so the address stays valid. Relaxed
    /// ordering suffices: whatever a store publishes was already visible to the storing lookup,
    /// and a removal is ordered after every lookup by whatever gives it `&mut self`.
    hint: HintCell,
}

impl<L: Host> Default for RangeTree<L> {
    fn default() -> Self {
        Self::with_host()
    }
}

impl<L: Host> core::fmt::Debug for RangeTree<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|r| (r.start(), r.end())))
            .finish()
    }
}

/// The range whose link is `link`.
///
/// # Safety
/// `link` is the link of a range that stays alive for `'a`.
unsafe fn range_of<'a, L: Host>(link: Link) -> &'a Range<L> {
    // SAFETY: the caller guarantees the range lives for 'a; `get_value` undoes the link offset.
    unsafe { &*adapter::<L>().get_value(link) }
}

/// Hint to the CPU that the cache line at `link` will be read soon (no-op where unsupported).
#[inline(always)]
fn prefetch(link: Option<Link>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = link {
        // SAFETY: a prefetch never faults and has no effect on program semantics, whatever the
        // address (the intrinsic is only `unsafe` on older compilers).
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                l.as_ptr().cast::<i8>(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = link;
}

/// The in-order successor of `x`.
///
/// Descending into a right subtree, prefetch the right child of every node passed: those are
/// the nodes the iteration reaches next, so their misses overlap instead of queuing behind one
/// another.
///
/// # Safety
/// `x` is linked in a tree that is not modified while the call runs.
unsafe fn successor(x: Link) -> Option<Link> {
    let ops = AtomicLinkOps;
    // SAFETY (all link reads below): `x` and every node reached from it by its links are linked
    // in the same unmodified tree, hence alive.
    unsafe {
        if let Some(mut y) = ops.right(x) {
            loop {
                prefetch(ops.right(y));
                match ops.left(y) {
                    Some(l) => y = l,
                    None => return Some(y),
                }
            }
        }
        let mut x = x;
        loop {
            let p = ops.parent(x)?;
            if ops.left(p) == Some(x) {
                return Some(p);
            }
            x = p;
        }
    }
}

impl RangeTree {
    /// An empty tree of ranges on the default lock facet.
    ///
    /// Context: allocates nothing; does not sleep.
    pub fn new() -> Self {
        Self::with_host()
    }
}

impl<L: Host> RangeTree<L> {
    /// An empty tree of ranges whose locks come from the facet `L`.
    ///
    /// Context: allocates nothing; does not sleep.
    pub fn with_host() -> Self {
        RangeTree {
            tree: RBTree::new(RangeAdapter::NEW),
            len: 0,
            hint: HintCell::new(0),
        }
    }

    /// Number of ranges.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no range.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hinted range (see [`RangeTree::hint`]), if any, as a pointer carrying the tree's
    /// provenance over the whole allocation (so that it can be turned back into a `HostArc`).
    fn hint(&self) -> Option<*const Range<L>> {
        let a = self.hint.load(Ordering::Relaxed);
        (a != 0).then(|| core::ptr::with_exposed_provenance::<Range<L>>(a))
    }

    /// Remember the range `c` points to (a range of this tree that a lookup found).
    fn set_hint(&self, c: &Cursor<'_, RangeAdapter<L>>) {
        // `get_ptr` derives the pointer from the tree's own link (not from a `&Range`), so the
        // provenance exposed here covers the whole `HostArc` allocation.
        let Some(p) = c.get_ptr() else {
            return;
        };
        let a = p.as_ptr().cast_const().expose_provenance();
        if self.hint.load(Ordering::Relaxed) != a {
            self.hint.store(a, Ordering::Relaxed);
        }
    }

    /// A cursor on the range at `p`, which is linked in this tree.
    fn cursor_at(&self, p: *const Range<L>) -> Cursor<'_, RangeAdapter<L>> {
        // SAFETY: callers pass only ranges linked in `self.tree` (the hint or its successor).
        unsafe { self.tree.cursor_from_ptr(p) }
    }

    /// The last range whose start is `<= addr`, answered from the hint when `addr` lies in the
    /// hinted range, in the gap after it, or in its successor; `None` when a descent is needed.
    fn floor_hinted(&self, addr: u64) -> Option<Cursor<'_, RangeAdapter<L>>> {
        let hp = self.hint()?;
        // SAFETY: by the invariant of `hint`, `hp` points to a range linked in `self.tree`, which
        // holds a reference to it for as long as `&self` lives (no removal can run meanwhile).
        let h = unsafe { &*hp };
        // Only `addr` in the hinted range or within one range size after it (a streaming
        // pattern) is answered here; anything before the hinted range, or far after it (a random
        // pattern), takes the descent. (A wrapping offset would not do: for a range reaching
        // near the top of the address space the doubled size saturates, and an address below
        // the range would pass as "after" it.)
        let off = addr.checked_sub(h.start())?;
        if off >= h.size().saturating_mul(2) {
            return None;
        }
        if addr < h.end() {
            return Some(self.cursor_at(hp));
        }
        // SAFETY: `hp` is a live range; `get_link` only adds the link offset.
        let hl = unsafe { adapter::<L>().get_link(hp) };
        // SAFETY: `hl` is linked in `self.tree`, which cannot change while `&self` lives.
        let Some(sl) = (unsafe { successor(hl) }) else {
            return Some(self.cursor_at(hp));
        };
        // SAFETY: as above, `sl` is a node of `self.tree`.
        let s = unsafe { range_of::<L>(sl) };
        if addr < s.start() {
            return Some(self.cursor_at(hp));
        }
        if addr < s.end() {
            // The stream goes on: start fetching the node after `s` (its right subtree, or an
            // ancestor, which was walked recently and is likely cached).
            // SAFETY: as above.
            prefetch(unsafe { AtomicLinkOps.right(sl) });
            // SAFETY: `sl` is a live link; `get_value` only subtracts the link offset.
            return Some(self.cursor_at(unsafe { adapter::<L>().get_value(sl) }));
        }
        None
    }

    /// The last range whose start is `<= addr`.
    fn floor(&self, addr: u64) -> Cursor<'_, RangeAdapter<L>> {
        match self.floor_hinted(addr) {
            Some(c) => c,
            None => self.tree.upper_bound(Bound::Included(&addr)),
        }
    }

    /// The range containing `addr`.
    ///
    /// Context: allocates nothing, never sleeps, takes no lock (the caller serialises access to the
    /// tree).
    pub fn find(&self, addr: u64) -> Option<&Range<L>> {
        let c = self.floor(addr);
        let r = c.get().filter(|r| r.contains(addr))?;
        self.set_hint(&c);
        Some(r)
    }

    /// The range containing `addr`, as a new reference.
    ///
    /// Context: as [`find`](Self::find); the new reference only bumps the count.
    pub fn find_arc(&self, addr: u64) -> Option<HostArc<L, Range<L>>> {
        let c = self.floor(addr);
        match c.get() {
            Some(r) if r.contains(addr) => {
                self.set_hint(&c);
                c.clone_pointer()
            }
            _ => None,
        }
    }

    /// The last range overlapping `[start, end)` (one descent), if any.
    ///
    /// Context: as [`find`](Self::find).
    pub fn last_overlapping(&self, start: u64, end: u64) -> Option<&Range<L>> {
        if start >= end {
            return None;
        }
        self.tree
            .upper_bound(Bound::Excluded(&end))
            .get()
            .filter(|r| r.end() > start)
    }

    /// Whether any range overlaps `[start, end)`.
    ///
    /// Context: as [`find`](Self::find).
    pub fn any_overlap(&self, start: u64, end: u64) -> bool {
        self.overlapping(start, end).next().is_some()
    }

    /// The ranges overlapping `[start, end)`, in address order. Empty if `start >= end`.
    ///
    /// Context: as [`find`](Self::find).
    pub fn overlapping(&self, start: u64, end: u64) -> Overlapping<'_, L> {
        let mut cur = self.floor(start);
        match cur.get() {
            Some(r) if r.end() > start => {}
            Some(_) => cur.move_next(),
            // No range starts at or before `start`: begin at the first range.
            None => cur = self.tree.front(),
        }
        let cur = cur.get_ptr().map(|p| {
            // SAFETY: `p` is a live range; `get_link` only adds the link offset. (`get_ptr`, not
            // `get`: the pointer keeps the tree's provenance, which `peek_arc` needs.)
            unsafe { adapter::<L>().get_link(p.as_ptr()) }
        });
        Overlapping {
            tree: &self.tree,
            cur,
            end,
            start,
        }
    }

    /// All ranges in address order.
    ///
    /// Context: as [`find`](Self::find).
    pub fn iter(&self) -> impl Iterator<Item = &Range<L>> + '_ {
        self.tree.iter()
    }

    /// Insert a range.
    ///
    /// Errors: [`Error::Invalid`] if the range is already linked into a tree or overlaps a range
    /// of this tree; the tree is then unchanged (and the reference is dropped).
    ///
    /// Context: allocates nothing (the link is inside the range); never sleeps; takes no lock
    /// (the caller serialises access to the tree).
    pub fn insert(&mut self, range: HostArc<L, Range<L>>) -> Result<()> {
        if range.is_linked() || self.any_overlap(range.start(), range.end()) {
            return Err(Error::Invalid);
        }
        // Acquire the link here (atomically: another tree may race for the same range), so
        // that the tree's own acquisition cannot refuse it (`PreAcquired`).
        if !acquire_tree_link(&range) {
            return Err(Error::Invalid);
        }
        self.tree.insert(range);
        self.len = self.len.saturating_add(1);
        Ok(())
    }

    /// Remove `range` (the very object, not just one with the same bounds); returns the tree's
    /// reference, or `None` if the range is not in this tree.
    ///
    /// Context: allocates nothing, never sleeps, takes no lock; drops nothing (the tree's reference
    /// is returned).
    pub fn remove(&mut self, range: &Range<L>) -> Option<HostArc<L, Range<L>>> {
        let mut c = self.tree.find_mut(&range.start());
        match c.get() {
            Some(r) if core::ptr::eq(r, range) => {}
            _ => return None,
        }
        let out = c.remove();
        if out.is_some() {
            self.len = self.len.saturating_sub(1);
            *self.hint.get_mut() = 0;
        }
        out
    }

    /// Remove and return the first range.
    ///
    /// Context: as [`remove`](Self::remove).
    pub fn pop_front(&mut self) -> Option<HostArc<L, Range<L>>> {
        let out = self.tree.front_mut().remove();
        if out.is_some() {
            self.len = self.len.saturating_sub(1);
            *self.hint.get_mut() = 0;
        }
        out
    }
}

/// Iterator over the ranges overlapping an interval (see [`RangeTree::overlapping`]).
pub struct Overlapping<'a, L: Host = DefaultHost> {
    tree: &'a RBTree<RangeAdapter<L>>,
    /// The next range to yield (a node of `tree`), if any.
    cur: Option<Link>,
    start: u64,
    end: u64,
}

impl<'a, L: Host> Iterator for Overlapping<'a, L> {
    type Item = &'a Range<L>;
    fn next(&mut self) -> Option<&'a Range<L>> {
        let link = self.cur?;
        // SAFETY: `cur` is a node of `self.tree`, borrowed shared for 'a.
        let r: &'a Range<L> = unsafe { range_of(link) };
        if r.start() >= self.end || self.start >= self.end {
            return None;
        }
        // SAFETY: `link` is linked in `self.tree`, which cannot change while borrowed.
        self.cur = unsafe { successor(link) };
        Some(r)
    }
}

impl<'a, L: Host> Overlapping<'a, L> {
    /// The range `next` would return, without advancing.
    ///
    /// Context: allocates nothing, never sleeps, takes no lock.
    pub fn peek(&self) -> Option<&'a Range<L>> {
        let link = self.cur?;
        // SAFETY: `cur` is a node of `self.tree`, borrowed shared for 'a.
        let r: &'a Range<L> = unsafe { range_of(link) };
        (r.start() < self.end && self.start < self.end).then_some(r)
    }

    /// The current range as a new reference (the one `next` would return).
    ///
    /// Context: allocates nothing, never sleeps, takes no lock; the new reference only bumps the
    /// count.
    pub fn peek_arc(&self) -> Option<HostArc<L, Range<L>>> {
        // SAFETY: `cur` is a live link; `get_value` only subtracts the link offset.
        let p = unsafe { adapter::<L>().get_value(self.cur?) };
        // SAFETY: `cur` is a node of `self.tree`, borrowed shared for the iterator's lifetime.
        let r = unsafe { &*p };
        if r.start() >= self.end || self.start >= self.end {
            return None;
        }
        // SAFETY: `p` is linked in `self.tree`.
        unsafe { self.tree.cursor_from_ptr(p) }.clone_pointer()
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use crate::DefaultHost;
    use std::vec::Vec;

    type Arc<T> = HostArc<DefaultHost, T>;

    const P: u64 = crate::platform::PAGE_SIZE;

    /// The model: the live ranges as `(start, end, range)`, sorted by start.
    #[derive(Default)]
    struct Model(Vec<(u64, u64, Arc<Range>)>);

    impl Model {
        /// The start of the range holding `a`.
        fn find(&self, a: u64) -> Option<u64> {
            let i = self.0.partition_point(|&(s, _, _)| s <= a);
            i.checked_sub(1)
                .map(|i| &self.0[i])
                .filter(|&&(_, e, _)| a < e)
                .map(|&(s, _, _)| s)
        }
        /// The starts of the ranges overlapping `[s, e)`, in order.
        fn overlapping(&self, s: u64, e: u64) -> Vec<u64> {
            self.0
                .iter()
                .filter(|&&(rs, re, _)| rs < e && s < re && s < e)
                .map(|&(rs, _, _)| rs)
                .collect()
        }
        fn insert(&mut self, r: Arc<Range>) {
            let i = self.0.partition_point(|&(s, _, _)| s < r.start());
            self.0.insert(i, (r.start(), r.end(), r));
        }
        /// Remove the range starting at `s`.
        fn remove(&mut self, s: u64) -> Option<Arc<Range>> {
            let i = self.0.iter().position(|&(rs, _, _)| rs == s)?;
            Some(self.0.remove(i).2)
        }
        /// The first range starting at or after `a`.
        fn first_from(&self, a: u64) -> Option<u64> {
            self.0.iter().map(|&(s, _, _)| s).find(|&s| s >= a)
        }
        fn starts(&self) -> Vec<u64> {
            self.0.iter().map(|&(s, _, _)| s).collect()
        }
    }

    fn rng(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Lookups (random, sequential and repeated, so the hint is hit, stepped and missed),
    /// overlap queries, inserts and removals agree with a sorted-array model.
    #[test]
    fn agrees_with_model() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut t = RangeTree::new();
        let mut m = Model::default();
        let mut cursor = 0u64;
        let steps = if cfg!(miri) { 1_500 } else { 20_000u32 };
        for step in 0..steps {
            let op = rng(&mut x) % 10;
            let a = (rng(&mut x) % 512) * P + rng(&mut x) % P;
            match op {
                0 | 1 => {
                    let len = (1 + rng(&mut x) % 8) * P;
                    let s = a & !(P - 1);
                    let r = Range::new(s, s + len).unwrap();
                    let overlaps = !m.overlapping(s, s + len).is_empty();
                    assert_eq!(t.insert(r.clone()).is_ok(), !overlaps, "step {step}");
                    if !overlaps {
                        m.insert(r);
                    }
                }
                2 => {
                    if let Some(s) = m.first_from(a) {
                        let r = m.remove(s).unwrap();
                        // A range with the same bounds but another object is not removed.
                        let twin = Range::new(r.start(), r.end()).unwrap();
                        assert!(t.remove(&twin).is_none());
                        assert!(t.remove(&r).is_some());
                        assert!(!r.is_linked());
                    } else if let Some(r) = t.pop_front() {
                        m.remove(r.start());
                    }
                }
                3 => {
                    let e = a + rng(&mut x) % (16 * P);
                    let got: Vec<u64> = t.overlapping(a, e).map(|r| r.start()).collect();
                    assert_eq!(got, m.overlapping(a, e), "step {step}");
                    assert_eq!(t.any_overlap(a, e), !got.is_empty());
                    let it = t.overlapping(a, e);
                    assert_eq!(it.peek_arc().map(|r| r.start()), got.first().copied());
                }
                4..=6 => {
                    // Streaming: step through the address space page by page.
                    cursor = (cursor + P) % (520 * P);
                    assert_eq!(t.find(cursor).map(|r| r.start()), m.find(cursor));
                    let arc = t.find_arc(cursor + 1).map(|r| r.start());
                    assert_eq!(arc, m.find(cursor + 1));
                }
                _ => {
                    assert_eq!(t.find(a).map(|r| r.start()), m.find(a), "step {step}");
                    assert_eq!(t.find_arc(a).map(|r| r.start()), m.find(a));
                }
            }
            assert_eq!(t.len(), m.0.len());
        }
        let all: Vec<u64> = t.iter().map(|r| r.start()).collect();
        assert_eq!(all, m.starts());
        while t.pop_front().is_some() {}
        assert!(t.is_empty());
        assert!(t.find(0).is_none());
    }

    /// A hint on a range that reaches near the top of the address space does not answer for
    /// an address below it (the doubled size saturates): found by the range-tree fuzz target.
    #[test]
    fn hint_on_a_huge_range_does_not_answer_below_it() {
        let mut t = RangeTree::new();
        let low = Range::new(0, 3 * P).unwrap();
        let huge = Range::new(0x2a_0000_0000_0000, u64::MAX - 0xcfff).unwrap();
        t.insert(low.clone()).unwrap();
        t.insert(huge.clone()).unwrap();
        // The hint goes to the huge range.
        assert_eq!(
            t.find(u64::MAX - 0x10000).map(|r| r.start()),
            Some(huge.start())
        );
        assert_eq!(t.find(0).map(|r| r.start()), Some(0));
        assert_eq!(t.find(2 * P + 5).map(|r| r.start()), Some(0));
        assert!(t.find(3 * P).is_none());
        assert_eq!(
            t.find_arc(huge.start()).map(|r| r.start()),
            Some(huge.start())
        );
        assert_eq!(t.find_arc(P).map(|r| r.start()), Some(0));
        let got: Vec<u64> = t.overlapping(0, u64::MAX).map(|r| r.start()).collect();
        assert_eq!(got, [0, huge.start()]);
        while t.pop_front().is_some() {}
    }

    /// The hint never outlives its range: after a removal, lookups fall back to the descent.
    #[test]
    fn hint_cleared_on_remove() {
        let mut t = RangeTree::new();
        let a = Range::new(0, 2 * P).unwrap();
        let b = Range::new(2 * P, 4 * P).unwrap();
        t.insert(a.clone()).unwrap();
        t.insert(b.clone()).unwrap();
        assert!(t.find(P).is_some());
        assert!(t.remove(&a).is_some());
        drop(a);
        assert!(t.find(P).is_none());
        assert_eq!(t.find(3 * P).map(|r| r.start()), Some(2 * P));
        assert!(t.pop_front().is_some());
        drop(b);
        assert!(t.find(3 * P).is_none());
        assert!(t.overlapping(0, 8 * P).next().is_none());
    }
}
