//! The ordered, non-overlapping range tree of one notifier.

use super::{Range, RangeAdapter};
use crate::error::{Error, Result};
use alloc::sync::Arc;
use intrusive_collections::rbtree::{Cursor, RBTree};
use intrusive_collections::Bound;

/// An ordered set of non-overlapping [`Range`]s keyed by start address, built on an intrusive
/// red-black tree: inserting a range allocates nothing.
///
/// Lookup by address is one predecessor search (O(log n)); iteration over the ranges
/// overlapping an interval is one predecessor search followed by in-order successors
/// (O(log n + k)).
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
#[derive(Default)]
pub struct RangeTree {
    tree: RBTree<RangeAdapter>,
    len: usize,
}

impl core::fmt::Debug for RangeTree {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|r| (r.start(), r.end())))
            .finish()
    }
}

impl RangeTree {
    /// An empty tree.
    pub fn new() -> Self {
        RangeTree {
            tree: RBTree::new(RangeAdapter::new()),
            len: 0,
        }
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last range whose start is `<= addr`.
    fn floor(&self, addr: u64) -> Cursor<'_, RangeAdapter> {
        self.tree.upper_bound(Bound::Included(&addr))
    }

    /// The range containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Range> {
        self.floor(addr).get().filter(|r| r.contains(addr))
    }

    /// The range containing `addr`, as a new reference.
    pub fn find_arc(&self, addr: u64) -> Option<Arc<Range>> {
        let c = self.floor(addr);
        match c.get() {
            Some(r) if r.contains(addr) => c.clone_pointer(),
            _ => None,
        }
    }

    /// Whether any range overlaps `[start, end)`.
    pub fn any_overlap(&self, start: u64, end: u64) -> bool {
        self.overlapping(start, end).next().is_some()
    }

    /// The ranges overlapping `[start, end)`, in address order. Empty if `start >= end`.
    pub fn overlapping(&self, start: u64, end: u64) -> Overlapping<'_> {
        let mut cur = self.floor(start);
        match cur.get() {
            Some(r) if r.end() > start => {}
            Some(_) => cur.move_next(),
            // No range starts at or before `start`: begin at the first range.
            None => cur = self.tree.front(),
        }
        Overlapping { cur, end, start }
    }

    /// All ranges in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Range> + '_ {
        self.tree.iter()
    }

    /// Insert a range.
    ///
    /// Errors: [`Error::Invalid`] if the range is already linked into a tree or overlaps a range
    /// of this tree; the tree is then unchanged (and the reference is dropped).
    pub fn insert(&mut self, range: Arc<Range>) -> Result<()> {
        if range.is_linked() || self.any_overlap(range.start(), range.end()) {
            return Err(Error::Invalid);
        }
        self.tree.insert(range);
        self.len = self.len.saturating_add(1);
        Ok(())
    }

    /// Remove `range` (the very object, not just one with the same bounds); returns the tree's
    /// reference, or `None` if the range is not in this tree.
    pub fn remove(&mut self, range: &Range) -> Option<Arc<Range>> {
        let mut c = self.tree.find_mut(&range.start());
        match c.get() {
            Some(r) if core::ptr::eq(r, range) => {}
            _ => return None,
        }
        let out = c.remove();
        if out.is_some() {
            self.len = self.len.saturating_sub(1);
        }
        out
    }

    /// Remove and return the first range.
    pub fn pop_front(&mut self) -> Option<Arc<Range>> {
        let out = self.tree.front_mut().remove();
        if out.is_some() {
            self.len = self.len.saturating_sub(1);
        }
        out
    }
}

/// Iterator over the ranges overlapping an interval (see [`RangeTree::overlapping`]).
pub struct Overlapping<'a> {
    cur: Cursor<'a, RangeAdapter>,
    start: u64,
    end: u64,
}

impl<'a> Iterator for Overlapping<'a> {
    type Item = &'a Range;
    fn next(&mut self) -> Option<&'a Range> {
        let r = self.cur.get()?;
        if r.start() >= self.end || self.start >= self.end {
            return None;
        }
        self.cur.move_next();
        Some(r)
    }
}

impl Overlapping<'_> {
    /// The current range as a new reference (the one `next` would return).
    pub fn peek_arc(&self) -> Option<Arc<Range>> {
        match self.cur.get() {
            Some(r) if r.start() < self.end && self.start < self.end => self.cur.clone_pointer(),
            _ => None,
        }
    }
}
