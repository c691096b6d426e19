//! Differential harness for [`RangeTree`]: a sequence of [`RangeTreeOp`]s is applied both to a
//! real tree and to a `BTreeMap<u64, u64>` model (start → end, checked by linear scans so the
//! model is obviously right), and every result and the whole tree are compared after each step.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/range_tree.rs` and the stable property
//! test `tests/prop_range_tree.rs`.
//!
//! Checked after every step:
//! - the tree lists exactly the model's ranges, in strictly increasing order, without overlap,
//!   each linked, each the very object that was inserted;
//! - `len` and `is_empty` agree with the model;
//! - a refused insert (overlap, already linked) or a refused remove (foreign, stale or unknown
//!   object) left the tree exactly as it was;
//! - `find`, `find_arc`, `overlapping` (also with empty, reversed and unaligned intervals),
//!   `peek_arc`, `any_overlap` and `pop_front` return what the model says.
//!
//! Page numbers are small so that inserts collide often; ranges live either near 0 or near the
//! top of the 64-bit address space, to exercise arithmetic at both ends.
//!
//! The same operations drive two [`RangeIndex`](crate::range::RangeIndex)es in lockstep (one
//! near 0, one ending 16 KiB below the top), each range's twin offered to them, against a
//! model of their own that also predicts the refusals (outside an index, across a slot, linked
//! in the tree): see `range_tree/index.rs`.
//!
//! ```
//! use gpusvm::sim::harness::range_tree::{run, Addr, Page, RangeTreeOp};
//! let p = |page| Page { high: false, page };
//! let ops = [
//!     RangeTreeOp::Insert { at: p(1), npages: 2 },
//!     RangeTreeOp::Insert { at: p(2), npages: 1 }, // overlaps: refused
//!     RangeTreeOp::Find { addr: Addr::At { high: false, page: 2, offset: 17 } },
//!     RangeTreeOp::PopFront,
//! ];
//! assert_eq!(run(&ops), Ok(()));
//! ```

use crate::error::Error;
use crate::platform::PAGE_SIZE;
use crate::range::{Range, RangeTree};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

mod index;

/// A reference to a range on the default host.
type Arc<T> = crate::HostArc<crate::DefaultHost, T>;

/// Number of distinct start pages of a range (per base).
pub const START_PAGES: u8 = 64;
/// Largest number of pages of a range built from [`RangeTreeOp::Insert`] (0 is also drawn, and
/// must be refused by [`Range::new`]).
pub const MAX_NPAGES: u8 = 8;
/// Number of distinct pages a query address can name (per base); larger than
/// `START_PAGES + MAX_NPAGES` so that queries also run past the last range.
pub const QUERY_PAGES: u8 = 80;
/// How many removed ranges the harness keeps around for [`RangeTreeOp::Reinsert`] and
/// [`RangeTreeOp::RemoveStale`].
pub const MAX_STALE: usize = 32;

/// The highest page-aligned address.
const TOP: u64 = !(PAGE_SIZE - 1);
/// Base address of the "high" pages: page `QUERY_PAGES - 1` is the last page-aligned page.
const HIGH_BASE: u64 = TOP - (QUERY_PAGES as u64 - 1) * PAGE_SIZE;

/// A page number near the bottom (`high == false`) or near the top of the address space.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Near `u64::MAX` instead of near 0.
    pub high: bool,
    /// Page index, reduced modulo [`START_PAGES`].
    pub page: u8,
}

impl Page {
    /// The page-aligned address this page names.
    pub fn addr(self) -> u64 {
        page_addr(self.high, self.page.checked_rem(START_PAGES).unwrap_or(0))
    }
}

/// A byte address for queries.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// Address 0.
    Zero,
    /// `u64::MAX`.
    Max,
    /// A page (reduced modulo [`QUERY_PAGES`]) plus a byte offset (reduced modulo the page
    /// size), near 0 or near the top.
    At {
        /// Near `u64::MAX` instead of near 0.
        high: bool,
        /// Page index, reduced modulo [`QUERY_PAGES`].
        page: u8,
        /// Byte offset inside the page, reduced modulo `PAGE_SIZE`.
        offset: u16,
    },
}

impl Addr {
    /// The address.
    pub fn value(self) -> u64 {
        match self {
            Addr::Zero => 0,
            Addr::Max => u64::MAX,
            Addr::At { high, page, offset } => {
                let base = page_addr(high, page.checked_rem(QUERY_PAGES).unwrap_or(0));
                base.saturating_add(u64::from(offset).checked_rem(PAGE_SIZE).unwrap_or(0))
            }
        }
    }
}

fn page_addr(high: bool, page: u8) -> u64 {
    let base = if high { HIGH_BASE } else { 0 };
    base.saturating_add(u64::from(page).saturating_mul(PAGE_SIZE))
}

/// One operation on the tree.
#[derive(arbitrary::Arbitrary, Debug, Clone)]
pub enum RangeTreeOp {
    /// Create `[at, at + npages pages)` (`npages` reduced modulo `MAX_NPAGES + 1`; 0 must be
    /// refused by [`Range::new`]) and insert it: refused iff it overlaps a range of the tree.
    Insert {
        /// First page.
        at: Page,
        /// Length in pages.
        npages: u8,
    },
    /// [`Range::new`] with raw bounds: must succeed iff `start < end` and both are page
    /// aligned; the range is then inserted like [`RangeTreeOp::Insert`].
    InsertRaw {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Insert again a range that is already in the tree (chosen by index modulo the number of
    /// ranges): must be refused with [`Error::Invalid`], the tree unchanged.
    InsertLinked {
        /// Which range of the tree.
        index: u8,
    },
    /// Insert again a range object that was removed earlier (chosen by index among the kept
    /// removed ranges): accepted iff it overlaps nothing.
    Reinsert {
        /// Which removed range.
        index: u8,
    },
    /// Remove the range starting at `at` (the very object inserted); if there is none, try to
    /// remove a fresh one-page range starting there, which must be refused.
    Remove {
        /// Start page.
        at: Page,
    },
    /// Try to remove a fresh range object that was never inserted (possibly with the same
    /// bounds as one in the tree): must be refused, the tree unchanged.
    RemoveForeign {
        /// First page.
        at: Page,
        /// Length in pages, reduced to `1..=MAX_NPAGES`.
        npages: u8,
    },
    /// Try to remove again a range object that was removed earlier (unless it was reinserted,
    /// in which case it is removed normally).
    RemoveStale {
        /// Which removed range.
        index: u8,
    },
    /// Look up the range containing `addr` with `find` and `find_arc`.
    Find {
        /// The address.
        addr: Addr,
    },
    /// List the ranges overlapping `[start, end)` (empty if `start >= end`), checking
    /// `peek_arc` before every step and `any_overlap`.
    Overlapping {
        /// First byte.
        start: Addr,
        /// One past the last byte.
        end: Addr,
    },
    /// Remove the first range.
    PopFront,
    /// Check `len` and `is_empty`.
    Len,
}

/// Reduce `npages` to `0..=MAX_NPAGES`.
fn npages_any(n: u8) -> u64 {
    u64::from(n.checked_rem(MAX_NPAGES.saturating_add(1)).unwrap_or(0))
}

/// Reduce `npages` to `1..=MAX_NPAGES`.
fn npages_nonzero(n: u8) -> u64 {
    u64::from(n.checked_rem(MAX_NPAGES).unwrap_or(0)).saturating_add(1)
}

/// Pick element `index` modulo `len`.
fn pick(index: u8, len: usize) -> Option<usize> {
    usize::from(index).checked_rem(len)
}

/// The state the harness drives: the tree, the model, and the objects it handed out.
struct Harness {
    tree: RangeTree,
    /// The model: start → end of every range in the tree.
    model: BTreeMap<u64, u64>,
    /// The object inserted for each start (to check identity and to remove by object).
    handles: BTreeMap<u64, Arc<Range>>,
    /// Range objects that were removed (or popped), oldest first.
    stale: VecDeque<Arc<Range>>,
}

type Snapshot = Vec<(u64, u64, usize)>;

impl Harness {
    fn new() -> Self {
        Harness {
            tree: RangeTree::new(),
            model: BTreeMap::new(),
            handles: BTreeMap::new(),
            stale: VecDeque::new(),
        }
    }

    /// The tree's content: (start, end, object address).
    fn snapshot(&self) -> Snapshot {
        self.tree
            .iter()
            .map(|r| (r.start(), r.end(), r as *const Range as usize))
            .collect()
    }

    fn model_overlaps(&self, start: u64, end: u64) -> bool {
        self.model.iter().any(|(&s, &e)| s < end && start < e)
    }

    fn model_find(&self, addr: u64) -> Option<(u64, u64)> {
        self.model
            .iter()
            .find(|(&s, &e)| s <= addr && addr < e)
            .map(|(&s, &e)| (s, e))
    }

    fn remember_stale(&mut self, r: Arc<Range>) {
        if self.stale.len() >= MAX_STALE {
            self.stale.pop_front();
        }
        self.stale.push_back(r);
    }

    /// Insert `r` (not linked) into tree and model, checking the outcome against the model.
    fn insert(&mut self, r: Arc<Range>) -> Result<(), String> {
        let (start, end) = (r.start(), r.end());
        let want_ok = !self.model_overlaps(start, end);
        let before = self.snapshot();
        let got = self.tree.insert(r.clone());
        match (got, want_ok) {
            (Ok(()), true) => {
                if !r.is_linked() {
                    return Err(format!("inserted [{start:#x},{end:#x}) is not linked"));
                }
                self.model.insert(start, end);
                self.handles.insert(start, r);
                Ok(())
            }
            (Err(Error::Invalid), false) => {
                if r.is_linked() {
                    return Err(format!("refused [{start:#x},{end:#x}) is linked"));
                }
                self.check_unchanged(&before, "refused insert")
            }
            (got, _) => Err(format!(
                "insert [{start:#x},{end:#x}): got {got:?}, model says {}",
                if want_ok { "Ok" } else { "Err(Invalid)" }
            )),
        }
    }

    fn check_unchanged(&self, before: &Snapshot, what: &str) -> Result<(), String> {
        let after = self.snapshot();
        if &after != before {
            return Err(format!(
                "{what} changed the tree: {before:x?} -> {after:x?}"
            ));
        }
        Ok(())
    }

    /// Remove `r` from the tree; `in_tree` says whether it is the tree's object.
    fn remove(&mut self, r: &Arc<Range>, in_tree: bool) -> Result<(), String> {
        let before = self.snapshot();
        let got = self.tree.remove(r);
        match got {
            Some(out) if in_tree => {
                if !Arc::ptr_eq(&out, r) {
                    return Err(format!("remove returned another object: {out:?}"));
                }
                if out.is_linked() {
                    return Err(format!("removed {out:?} is still linked"));
                }
                self.model.remove(&out.start());
                self.handles.remove(&out.start());
                self.remember_stale(out);
                Ok(())
            }
            None if !in_tree => self.check_unchanged(&before, "refused remove"),
            Some(out) => Err(format!("removed an object not in the tree: {out:?}")),
            None => Err(format!(
                "remove of [{:#x},{:#x}) (in the tree) refused",
                r.start(),
                r.end()
            )),
        }
    }

    fn step(&mut self, op: &RangeTreeOp) -> Result<(), String> {
        match *op {
            RangeTreeOp::Insert { at, npages } => {
                let start = at.addr();
                let end = start.saturating_add(npages_any(npages).saturating_mul(PAGE_SIZE));
                match Range::new(start, end) {
                    Ok(r) if end > start => self.insert(r),
                    Err(Error::Invalid) if end == start => Ok(()),
                    other => Err(format!("Range::new({start:#x}, {end:#x}) = {other:?}")),
                }
            }
            RangeTreeOp::InsertRaw { start, end } => {
                let valid = start < end
                    && start.checked_rem(PAGE_SIZE) == Some(0)
                    && end.checked_rem(PAGE_SIZE) == Some(0);
                match Range::new(start, end) {
                    Ok(r) if valid => {
                        if r.start() != start || r.end() != end {
                            return Err(format!("Range::new({start:#x}, {end:#x}) = {r:?}"));
                        }
                        self.insert(r)
                    }
                    Err(Error::Invalid) if !valid => Ok(()),
                    other => Err(format!("Range::new({start:#x}, {end:#x}) = {other:?}")),
                }
            }
            RangeTreeOp::InsertLinked { index } => {
                let Some(r) = pick(index, self.handles.len())
                    .and_then(|i| self.handles.values().nth(i))
                    .cloned()
                else {
                    return Ok(());
                };
                let before = self.snapshot();
                match self.tree.insert(r.clone()) {
                    Err(Error::Invalid) => {}
                    other => return Err(format!("re-insert of linked {r:?}: {other:?}")),
                }
                if !r.is_linked() {
                    return Err(format!("refused re-insert unlinked {r:?}"));
                }
                self.check_unchanged(&before, "refused re-insert")
            }
            RangeTreeOp::Reinsert { index } => {
                let Some(r) = pick(index, self.stale.len()).and_then(|i| self.stale.get(i)) else {
                    return Ok(());
                };
                let r = r.clone();
                if r.is_linked() {
                    // Reinserted already: inserting it again must be refused.
                    let before = self.snapshot();
                    return match self.tree.insert(r.clone()) {
                        Err(Error::Invalid) => self.check_unchanged(&before, "refused re-insert"),
                        other => Err(format!("re-insert of linked {r:?}: {other:?}")),
                    };
                }
                self.insert(r)
            }
            RangeTreeOp::Remove { at } => {
                let start = at.addr();
                match self.handles.get(&start).cloned() {
                    Some(r) => self.remove(&r, true),
                    None => match Range::new(start, start.saturating_add(PAGE_SIZE)) {
                        Ok(r) => self.remove(&r, false),
                        Err(e) => Err(format!("Range::new one page at {start:#x}: {e:?}")),
                    },
                }
            }
            RangeTreeOp::RemoveForeign { at, npages } => {
                let start = at.addr();
                let end = start.saturating_add(npages_nonzero(npages).saturating_mul(PAGE_SIZE));
                match Range::new(start, end) {
                    Ok(r) => self.remove(&r, false),
                    Err(e) => Err(format!("Range::new({start:#x}, {end:#x}): {e:?}")),
                }
            }
            RangeTreeOp::RemoveStale { index } => {
                let Some(r) = pick(index, self.stale.len()).and_then(|i| self.stale.get(i)) else {
                    return Ok(());
                };
                let r = r.clone();
                let in_tree = self
                    .handles
                    .get(&r.start())
                    .is_some_and(|h| Arc::ptr_eq(h, &r));
                if in_tree != r.is_linked() {
                    return Err(format!(
                        "{r:?}: linked={} in model={in_tree}",
                        r.is_linked()
                    ));
                }
                if in_tree {
                    // Drop the old stale entry; `remove` records it again.
                    self.stale.retain(|s| !Arc::ptr_eq(s, &r));
                }
                self.remove(&r, in_tree)
            }
            RangeTreeOp::Find { addr } => {
                let a = addr.value();
                let want = self.model_find(a);
                let got = self.tree.find(a).map(|r| (r.start(), r.end()));
                if got != want {
                    return Err(format!("find({a:#x}) = {got:x?}, model {want:x?}"));
                }
                let got_arc = self.tree.find_arc(a);
                let got_arc_b = got_arc.as_ref().map(|r| (r.start(), r.end()));
                if got_arc_b != want {
                    return Err(format!(
                        "find_arc({a:#x}) = {got_arc_b:x?}, model {want:x?}"
                    ));
                }
                if let (Some(r), Some((s, _))) = (got_arc, want) {
                    if !self.handles.get(&s).is_some_and(|h| Arc::ptr_eq(h, &r)) {
                        return Err(format!("find_arc({a:#x}) returned a different object"));
                    }
                }
                Ok(())
            }
            RangeTreeOp::Overlapping { start, end } => {
                let (s, e) = (start.value(), end.value());
                let want: Vec<(u64, u64)> = self
                    .model
                    .iter()
                    .filter(|(&rs, &re)| s < e && rs < e && s < re)
                    .map(|(&rs, &re)| (rs, re))
                    .collect();
                let mut it = self.tree.overlapping(s, e);
                let mut got = Vec::new();
                loop {
                    let peek = it.peek_arc();
                    let next = it.next();
                    match (&peek, next) {
                        (None, None) => break,
                        (Some(p), Some(n)) if core::ptr::eq(&**p, n) => {
                            got.push((n.start(), n.end()));
                        }
                        (p, n) => {
                            return Err(format!(
                                "overlapping({s:#x}, {e:#x}): peek_arc {p:?} but next {n:?}"
                            ))
                        }
                    }
                    if got.len() > self.model.len() {
                        return Err(format!(
                            "overlapping({s:#x}, {e:#x}) yields more ranges than the tree has"
                        ));
                    }
                }
                if got != want {
                    return Err(format!(
                        "overlapping({s:#x}, {e:#x}) = {got:x?}, model {want:x?}"
                    ));
                }
                let any = self.tree.any_overlap(s, e);
                if any == want.is_empty() {
                    return Err(format!("any_overlap({s:#x}, {e:#x}) = {any}"));
                }
                Ok(())
            }
            RangeTreeOp::PopFront => {
                let want = self.model.iter().next().map(|(&s, &e)| (s, e));
                let got = self.tree.pop_front();
                match (got, want) {
                    (None, None) => Ok(()),
                    (Some(r), Some((s, e))) if r.start() == s && r.end() == e => {
                        if !self.handles.get(&s).is_some_and(|h| Arc::ptr_eq(h, &r)) {
                            return Err(format!("pop_front returned a different object {r:?}"));
                        }
                        if r.is_linked() {
                            return Err(format!("popped {r:?} is still linked"));
                        }
                        self.model.remove(&s);
                        self.handles.remove(&s);
                        self.remember_stale(r);
                        Ok(())
                    }
                    (got, want) => Err(format!("pop_front = {got:?}, model {want:x?}")),
                }
            }
            // Checked after every step anyway.
            RangeTreeOp::Len => Ok(()),
        }
    }

    /// The invariants checked after every step.
    fn check(&self) -> Result<(), String> {
        if self.tree.len() != self.model.len() {
            return Err(format!(
                "len {} but model has {}",
                self.tree.len(),
                self.model.len()
            ));
        }
        if self.tree.is_empty() != self.model.is_empty() {
            return Err(format!("is_empty {}", self.tree.is_empty()));
        }
        let mut prev_end: Option<u64> = None;
        let mut count = 0usize;
        let mut model = self.model.iter();
        for r in self.tree.iter() {
            count = count.saturating_add(1);
            if count > self.model.len() {
                return Err(format!("iter yields more than len ranges: {:?}", self.tree));
            }
            if r.start() >= r.end() {
                return Err(format!("empty or reversed range {r:?}"));
            }
            if prev_end.is_some_and(|p| p > r.start()) {
                return Err(format!("out of order or overlapping: {:?}", self.tree));
            }
            prev_end = Some(r.end());
            if !r.is_linked() {
                return Err(format!("{r:?} in the tree but not linked"));
            }
            match model.next() {
                Some((&s, &e)) if s == r.start() && e == r.end() => {}
                m => {
                    return Err(format!(
                        "tree {:?} differs from model {:x?} (at {m:x?})",
                        self.tree, self.model
                    ))
                }
            }
            if !self
                .handles
                .get(&r.start())
                .is_some_and(|h| core::ptr::eq(&**h, r))
            {
                return Err(format!("{r:?} is not the object inserted at its start"));
            }
        }
        if count != self.model.len() {
            return Err(format!(
                "iter yields {count} ranges, model has {}",
                self.model.len()
            ));
        }
        Ok(())
    }
}

/// Apply `ops` to a fresh [`RangeTree`] and to the model, and to two fresh
/// [`RangeIndex`](crate::range::RangeIndex)es and their model; return a description of the
/// first divergence (step number, operation, what differed) or `Ok(())`.
pub fn run(ops: &[RangeTreeOp]) -> Result<(), String> {
    let mut h = Harness::new();
    let mut ix = index::IndexSide::new()?;
    for (i, op) in ops.iter().enumerate() {
        h.step(op)
            .and_then(|()| ix.step(op, &mut h.tree, &h.handles))
            .and_then(|()| h.check())
            .and_then(|()| ix.check())
            .map_err(|e| format!("step {i} {op:?}: {e}"))?;
    }
    // Drain: popping everything must empty the tree (and the indices) in order.
    while h.tree.pop_front().is_some() {}
    if !h.tree.is_empty() || h.tree.iter().next().is_some() {
        return Err(format!("tree not empty after draining: {:?}", h.tree));
    }
    ix.drain()
}
