//! The [`RangeIndex`] side of the range-tree harness: the same [`RangeTreeOp`] stream drives two
//! indices in lockstep with the tree, against a model of their own.
//!
//! - `low` covers `[0, 64 pages)` in slots of 8 pages, `high` covers pages `4..76` of the high
//!   base in slots of 4 pages (so its end lies 16 KiB below the top of the address space):
//!   queries run past both ends of both indices;
//! - every range the tree is given has a twin (a fresh object with the same bounds) offered to
//!   the index covering its start; the model predicts the answer: accepted iff the range lies
//!   inside one slot of an index and overlaps none of the index's ranges, else
//!   [`Error::Invalid`];
//! - insertions go through the spare protocol: first [`RangeIndex::insert_within_capacity`]
//!   without a spare, which must refuse with [`Error::NoMem`] exactly when
//!   [`RangeIndex::spare_needed`] asks for one (the index unchanged), then with the spare;
//! - links are exclusive: a range in the tree is refused by the index, a range in an index is
//!   refused by the tree and by the index again;
//! - removal takes the very object (twins, stale and foreign objects are refused), `pop_front`
//!   pops in address order across both indices, lookups and overlap walks (`peek`, `peek_arc`,
//!   `any_overlap`, `last_overlapping`) answer as the model;
//! - after every step each index lists exactly its part of the model, in order, each range
//!   linked, the very object inserted, inside one slot; `heap_bytes` never shrinks (removal
//!   frees nothing).

use super::{
    npages_any, npages_nonzero, page_addr, pick, Addr, Arc, RangeTreeOp, MAX_STALE, PAGE_SIZE,
};
use crate::error::Error;
use crate::heap::AllocCtx;
use crate::range::{Range, RangeIndex, RangeTree};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Slot sizes of the two indices.
const LOW_SLOT: u64 = 8 * PAGE_SIZE;
const HIGH_SLOT: u64 = 4 * PAGE_SIZE;

/// The index side: two indices, their model, the objects handed to them.
pub(super) struct IndexSide {
    low: RangeIndex,
    high: RangeIndex,
    /// start → end of every range in either index.
    model: BTreeMap<u64, u64>,
    /// The object inserted for each start.
    handles: BTreeMap<u64, Arc<Range>>,
    /// Objects removed (or popped), oldest first.
    stale: VecDeque<Arc<Range>>,
    /// Heap bytes of both indices after the last step.
    bytes: usize,
}

type Snapshot = Vec<(u64, u64, usize)>;

impl IndexSide {
    pub(super) fn new() -> Result<Self, String> {
        let low_end = page_addr(false, 64);
        let (hs, he) = (page_addr(true, 4), page_addr(true, 76));
        let ctx = AllocCtx::MaySleep;
        let low = RangeIndex::new(0, low_end, LOW_SLOT, ctx);
        let high = RangeIndex::new(hs, he, HIGH_SLOT, ctx);
        match (low, high) {
            (Ok(low), Ok(high)) => Ok(IndexSide {
                low,
                high,
                model: BTreeMap::new(),
                handles: BTreeMap::new(),
                stale: VecDeque::new(),
                bytes: 0,
            }),
            (l, h) => Err(format!("RangeIndex::new: {:?} {:?}", l.err(), h.err())),
        }
    }

    /// The index whose interval holds `addr`, if any.
    fn index_of(&mut self, addr: u64) -> Option<&mut RangeIndex> {
        [&mut self.low, &mut self.high]
            .into_iter()
            .find(|ix| ix.start() <= addr && addr < ix.end())
    }

    /// Whether the model accepts `[s, e)`: inside one slot of an index, overlapping nothing.
    fn fits(&self, s: u64, e: u64) -> bool {
        let Some(last) = e.checked_sub(1) else {
            return false;
        };
        let inside = [&self.low, &self.high].into_iter().any(|ix| {
            let slot = ix.slot_size();
            ix.start() <= s
                && s < e
                && e <= ix.end()
                && s.checked_div(slot) == last.checked_div(slot)
        });
        inside && !self.model.iter().any(|(&rs, &re)| rs < e && s < re)
    }

    fn snapshot(&self) -> Snapshot {
        self.low
            .iter()
            .chain(self.high.iter())
            .map(|r| (r.start(), r.end(), r as *const Range as usize))
            .collect()
    }

    fn unchanged(&self, before: &Snapshot, what: &str) -> Result<(), String> {
        let after = self.snapshot();
        if &after != before {
            return Err(format!(
                "index: {what} changed it: {before:x?} -> {after:x?}"
            ));
        }
        Ok(())
    }

    fn remember_stale(&mut self, r: Arc<Range>) {
        if self.stale.len() >= MAX_STALE {
            self.stale.pop_front();
        }
        self.stale.push_back(r);
    }

    /// Offer `r` (unlinked) to the index covering its start, through the spare protocol.
    fn insert(&mut self, r: Arc<Range>) -> Result<(), String> {
        let (s, e) = (r.start(), r.end());
        let want = self.fits(s, e);
        let before = self.snapshot();
        let Some(ix) = self.index_of(s) else {
            if want {
                return Err(format!("index: [{s:#x},{e:#x}) fits but no index holds it"));
            }
            return Ok(());
        };
        let need = ix.spare_needed(s);
        let mut got = ix.insert_within_capacity(r.clone(), &mut None);
        if let (true, Some(n)) = (want, need) {
            if got != Err(Error::NoMem) {
                return Err(format!(
                    "index: insert [{s:#x},{e:#x}) without the spare of {n} it needs: {got:?}"
                ));
            }
            if r.is_linked() {
                return Err(format!("index: [{s:#x},{e:#x}) refused but linked"));
            }
            let Some(ix) = self.index_of(s) else {
                return Err(String::from("index vanished"));
            };
            let mut spare = match RangeIndex::alloc_spare(n, AllocCtx::MaySleep) {
                Ok(sp) => Some(sp),
                Err(e) => return Err(format!("alloc_spare({n}): {e:?}")),
            };
            got = ix.insert_within_capacity(r.clone(), &mut spare);
            if !spare.is_some_and(|sp| sp.is_empty() && sp.capacity() < n) {
                return Err(String::from(
                    "index: the old buffer did not come back empty",
                ));
            }
        }
        match (got, want) {
            (Ok(()), true) => {
                if !r.is_linked() {
                    return Err(format!("index: inserted [{s:#x},{e:#x}) is not linked"));
                }
                self.model.insert(s, e);
                self.handles.insert(s, r);
                Ok(())
            }
            (Err(Error::Invalid), false) => {
                if r.is_linked() {
                    return Err(format!("index: refused [{s:#x},{e:#x}) is linked"));
                }
                self.unchanged(&before, "a refused insert")
            }
            (got, _) => Err(format!(
                "index: insert [{s:#x},{e:#x}): got {got:?}, model says {}",
                if want { "Ok" } else { "Err(Invalid)" }
            )),
        }
    }

    /// An already linked `r` (in the tree or an index) must be refused, nothing changed.
    fn refuse_linked(&mut self, r: &Arc<Range>) -> Result<(), String> {
        let before = self.snapshot();
        let s = r.start();
        if let Some(ix) = self.index_of(s) {
            let got = ix.insert_within_capacity(r.clone(), &mut None);
            if got != Err(Error::Invalid) {
                return Err(format!("index: insert of linked {r:?}: {got:?}"));
            }
        }
        if !r.is_linked() {
            return Err(format!("index: refused linked {r:?} came back unlinked"));
        }
        self.unchanged(&before, "refusing a linked range")
    }

    /// Remove `r`; `inside` says whether it is an index's object.
    fn remove(&mut self, r: &Arc<Range>, inside: bool) -> Result<(), String> {
        let before = self.snapshot();
        let got = self.index_of(r.start()).and_then(|ix| ix.remove(r));
        match got {
            Some(out) if inside => {
                if !Arc::ptr_eq(&out, r) || out.is_linked() {
                    return Err(format!(
                        "index: remove returned {out:?} (linked or another)"
                    ));
                }
                self.model.remove(&out.start());
                self.handles.remove(&out.start());
                self.remember_stale(out);
                Ok(())
            }
            None if !inside => self.unchanged(&before, "a refused remove"),
            Some(out) => Err(format!("index: removed an object not in it: {out:?}")),
            None => Err(format!("index: remove of {r:?} (in it) refused")),
        }
    }

    /// Apply `op` (the tree side already did); `tree` and `tree_handles` are the tree's.
    pub(super) fn step(
        &mut self,
        op: &RangeTreeOp,
        tree: &mut RangeTree,
        tree_handles: &BTreeMap<u64, Arc<Range>>,
    ) -> Result<(), String> {
        match *op {
            RangeTreeOp::Insert { at, npages } => {
                let start = at.addr();
                let end = start.saturating_add(npages_any(npages).saturating_mul(PAGE_SIZE));
                match Range::new(start, end) {
                    Ok(r) => self.insert(r),
                    Err(_) => Ok(()),
                }
            }
            RangeTreeOp::InsertRaw { start, end } => match Range::new(start, end) {
                Ok(r) => self.insert(r),
                Err(_) => Ok(()),
            },
            RangeTreeOp::InsertLinked { index } => {
                // A range of the tree, and a range of an index (to the tree and to the index).
                if let Some(r) = pick(index, tree_handles.len())
                    .and_then(|i| tree_handles.values().nth(i))
                    .cloned()
                {
                    self.refuse_linked(&r)?;
                }
                let Some(r) = pick(index, self.handles.len())
                    .and_then(|i| self.handles.values().nth(i))
                    .cloned()
                else {
                    return Ok(());
                };
                let before: Vec<u64> = tree.iter().map(|x| x.start()).collect();
                if tree.insert(r.clone()) != Err(Error::Invalid) {
                    return Err(format!("the tree took {r:?}, linked in an index"));
                }
                if tree.iter().map(|x| x.start()).ne(before) {
                    return Err(String::from("a refused tree insert changed the tree"));
                }
                self.refuse_linked(&r)
            }
            RangeTreeOp::Reinsert { index } => {
                let Some(r) = pick(index, self.stale.len()).and_then(|i| self.stale.get(i)) else {
                    return Ok(());
                };
                let r = r.clone();
                if r.is_linked() {
                    return self.refuse_linked(&r);
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
                let inside = self
                    .handles
                    .get(&r.start())
                    .is_some_and(|h| Arc::ptr_eq(h, &r));
                if inside != r.is_linked() {
                    return Err(format!(
                        "index: {r:?} linked={} inside={inside}",
                        r.is_linked()
                    ));
                }
                if inside {
                    self.stale.retain(|s| !Arc::ptr_eq(s, &r));
                }
                self.remove(&r, inside)
            }
            RangeTreeOp::Find { addr } => self.find(addr),
            RangeTreeOp::Overlapping { start, end } => self.overlapping(start, end),
            RangeTreeOp::PopFront => {
                let want = self.model.iter().next().map(|(&s, &e)| (s, e));
                let got = match self.low.pop_front() {
                    Some(r) => Some(r),
                    None => self.high.pop_front(),
                };
                match (got, want) {
                    (None, None) => Ok(()),
                    (Some(r), Some((s, e))) if r.start() == s && r.end() == e => {
                        if !self.handles.get(&s).is_some_and(|h| Arc::ptr_eq(h, &r)) {
                            return Err(format!("index: pop_front returned another {r:?}"));
                        }
                        if r.is_linked() {
                            return Err(format!("index: popped {r:?} is still linked"));
                        }
                        self.model.remove(&s);
                        self.handles.remove(&s);
                        self.remember_stale(r);
                        Ok(())
                    }
                    (got, want) => Err(format!("index: pop_front = {got:?}, model {want:x?}")),
                }
            }
            RangeTreeOp::Len => Ok(()),
        }
    }

    fn find(&mut self, addr: Addr) -> Result<(), String> {
        let a = addr.value();
        let want = self
            .model
            .range(..=a)
            .next_back()
            .filter(|(_, &e)| a < e)
            .map(|(&s, &e)| (s, e));
        for ix in [&self.low, &self.high] {
            let got = ix.find(a).map(|r| (r.start(), r.end()));
            let got_arc = ix.find_arc(a);
            let inside = ix.start() <= a && a < ix.end();
            let want = if inside { want } else { None };
            if got != want || got_arc.as_ref().map(|r| (r.start(), r.end())) != want {
                return Err(format!("index: find({a:#x}) = {got:x?}, model {want:x?}"));
            }
            if let (Some(r), Some((s, _))) = (got_arc, want) {
                if !self.handles.get(&s).is_some_and(|h| Arc::ptr_eq(h, &r)) {
                    return Err(format!("index: find_arc({a:#x}) returned another object"));
                }
            }
        }
        Ok(())
    }

    fn overlapping(&mut self, start: Addr, end: Addr) -> Result<(), String> {
        let (s, e) = (start.value(), end.value());
        let want: Vec<(u64, u64)> = self
            .model
            .iter()
            .filter(|(&rs, &re)| s < e && rs < e && s < re)
            .map(|(&rs, &re)| (rs, re))
            .collect();
        let mut got = Vec::new();
        for ix in [&self.low, &self.high] {
            let mut it = ix.overlapping(s, e);
            let mut mine = Vec::new();
            loop {
                let peek = it.peek().map(|r| r as *const Range);
                let peek_arc = it.peek_arc();
                let next = it.next();
                if peek != next.map(|r| r as *const Range)
                    || peek_arc.as_ref().map(Arc::as_ptr) != peek
                {
                    return Err(format!(
                        "index: overlapping({s:#x}, {e:#x}): peek {peek:?}, peek_arc {peek_arc:?}, \
                         next {next:?}"
                    ));
                }
                let Some(n) = next else {
                    break;
                };
                mine.push((n.start(), n.end()));
                if mine.len() > self.model.len() {
                    return Err(format!("index: overlapping({s:#x}, {e:#x}) runs on"));
                }
            }
            let last = ix.last_overlapping(s, e).map(|r| (r.start(), r.end()));
            if last != mine.last().copied() {
                return Err(format!(
                    "index: last_overlapping({s:#x}, {e:#x}) = {last:x?}, walk {mine:x?}"
                ));
            }
            if ix.any_overlap(s, e) == mine.is_empty() {
                return Err(format!("index: any_overlap({s:#x}, {e:#x}) wrong"));
            }
            got.extend(mine);
        }
        if got != want {
            return Err(format!(
                "index: overlapping({s:#x}, {e:#x}) = {got:x?}, model {want:x?}"
            ));
        }
        Ok(())
    }

    /// The invariants checked after every step.
    pub(super) fn check(&mut self) -> Result<(), String> {
        let len = self.low.len().saturating_add(self.high.len());
        if len != self.model.len() || (len == 0) != (self.low.is_empty() && self.high.is_empty()) {
            return Err(format!("index: len {len}, model {}", self.model.len()));
        }
        let mut model = self.model.iter();
        for ix in [&self.low, &self.high] {
            let mut count = 0usize;
            for r in ix.iter() {
                count = count.saturating_add(1);
                if count > ix.len() {
                    return Err(format!("index: iter yields more than len: {ix:?}"));
                }
                let slot = ix.slot_size();
                let in_slot = ix.start() <= r.start()
                    && r.end() <= ix.end()
                    && r.end()
                        .checked_sub(1)
                        .is_some_and(|l| l.checked_div(slot) == r.start().checked_div(slot));
                if !in_slot || !r.is_linked() {
                    return Err(format!("index: {r:?} outside a slot or unlinked in {ix:?}"));
                }
                match model.next() {
                    Some((&s, &e)) if s == r.start() && e == r.end() => {}
                    m => return Err(format!("index {ix:?} differs from model at {m:x?}")),
                }
                if !self
                    .handles
                    .get(&r.start())
                    .is_some_and(|h| core::ptr::eq(&**h, r))
                {
                    return Err(format!("index: {r:?} is not the object inserted"));
                }
            }
            if count != ix.len() {
                return Err(format!("index: iter yields {count}, len {}", ix.len()));
            }
        }
        let bytes = self.low.heap_bytes().saturating_add(self.high.heap_bytes());
        if bytes < self.bytes {
            return Err(format!(
                "index: heap bytes shrank {} -> {bytes}",
                self.bytes
            ));
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Pop everything (in address order), then check both indices are empty and every object
    /// handed to them unlinked.
    pub(super) fn drain(&mut self) -> Result<(), String> {
        let mut prev = None;
        while let Some(r) = self.low.pop_front().or_else(|| self.high.pop_front()) {
            if prev.is_some_and(|p| p >= r.start()) || r.is_linked() {
                return Err(format!("index: drain out of order or linked at {r:?}"));
            }
            prev = Some(r.start());
        }
        if !self.low.is_empty() || !self.high.is_empty() || self.low.iter().next().is_some() {
            return Err(String::from("index: not empty after draining"));
        }
        if let Some(r) = self.handles.values().find(|r| r.is_linked()) {
            return Err(format!("index: {r:?} still linked after draining"));
        }
        Ok(())
    }
}
