//! Calls on standalone values, checked against small models: `Range::new`, the harness's own
//! `RangeTree`, `PageEntry::new`, `select_chunk` and `Error::from_errno`.

use super::machine::Harness;
use super::{chunks_of, typed, ApiOp, Num, QuerySpec, RArc};
use crate::pages::Protocol;
use crate::platform::{DmaDirection, MAX_ORDER, PAGE_SIZE};
use crate::range::{select_chunk, ChunkQuery};
use crate::sim::SimHost;
use crate::{Error, PageEntry, Range};
use std::format;
use std::string::String;
use std::vec::Vec;

impl Harness {
    /// The value calls: [`ApiOp::RangeNew`], the tree calls, [`ApiOp::PageEntryNew`],
    /// [`ApiOp::SelectChunk`] and [`ApiOp::FromErrno`].
    #[allow(clippy::too_many_lines)]
    pub(super) fn step_values(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::RangeNew { start, end } => {
                let (s, e) = (start.value(self), end.value(self));
                let valid = s < e && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0;
                match Range::with_host(s, e) {
                    Ok(r) if valid => {
                        if r.start() != s || r.end() != e || r.is_linked() {
                            return Err(format!("Range::with_host({s:#x}, {e:#x}) = {r:?}"));
                        }
                        if r.size() != e - s || r.npages() != (e - s) / PAGE_SIZE {
                            return Err(format!("{r:?}: size {:#x}", r.size()));
                        }
                        self.remember(&r);
                    }
                    Err(Error::Invalid) if !valid => {}
                    // An injected allocation failure: nothing was created.
                    Err(Error::NoMem) if valid => {}
                    other => return Err(format!("Range::with_host({s:#x}, {e:#x}) = {other:?}")),
                }
            }
            ApiOp::TreeInsert { range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let linked = r.is_linked();
                let overlaps = self
                    .tree_model
                    .iter()
                    .any(|m| m.overlaps(r.start(), r.end()));
                match self.tree.insert(r.clone()) {
                    Ok(()) if !linked && !overlaps => {
                        self.tree_model.push(r);
                        self.tree_model.sort_by_key(|m| m.start());
                    }
                    Err(Error::Invalid) if linked || overlaps => {
                        if r.is_linked() != linked {
                            return Err(format!("refused insert changed the link of {r:?}"));
                        }
                    }
                    other => {
                        return Err(format!(
                            "tree insert {r:?} (linked {linked}, overlaps {overlaps}): {other:?}"
                        ))
                    }
                }
            }
            ApiOp::TreeRemove { range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let pos = self.tree_model.iter().position(|m| RArc::ptr_eq(m, &r));
                match (self.tree.remove(&r), pos) {
                    (Some(out), Some(i)) if RArc::ptr_eq(&out, &r) && !out.is_linked() => {
                        self.tree_model.remove(i);
                    }
                    (None, None) => {}
                    (got, pos) => {
                        return Err(format!("tree remove {r:?} (model {pos:?}): {got:?}"));
                    }
                }
            }
            ApiOp::TreeQuery { start, end, pop } => {
                let (s, e) = (start.value(self), end.value(self));
                let want = self.tree_model.iter().find(|m| m.contains(s));
                let got = self.tree.find(s);
                if got.map(|r| r as *const Range<SimHost>) != want.map(RArc::as_ptr) {
                    return Err(format!("tree find({s:#x}) = {got:?}, model {want:?}"));
                }
                let got_arc = self.tree.find_arc(s);
                if got_arc.as_ref().map(RArc::as_ptr) != want.map(RArc::as_ptr) {
                    return Err(format!("tree find_arc({s:#x}) = {got_arc:?}"));
                }
                let want: Vec<*const Range<SimHost>> = self
                    .tree_model
                    .iter()
                    .filter(|m| s < e && m.overlaps(s, e))
                    .map(RArc::as_ptr)
                    .collect();
                let got: Vec<*const Range<SimHost>> = self
                    .tree
                    .overlapping(s, e)
                    .take(want.len() + 1)
                    .map(|r| r as *const Range<SimHost>)
                    .collect();
                if got != want {
                    return Err(format!("tree overlapping({s:#x}, {e:#x}) differs"));
                }
                let peek = self.tree.overlapping(s, e).peek_arc();
                if peek.as_ref().map(RArc::as_ptr) != want.first().copied() {
                    return Err(format!("tree peek_arc({s:#x}, {e:#x}) = {peek:?}"));
                }
                if self.tree.any_overlap(s, e) == want.is_empty() {
                    return Err(format!("tree any_overlap({s:#x}, {e:#x})"));
                }
                if *pop {
                    let got = self.tree.pop_front();
                    let want = if self.tree_model.is_empty() {
                        None
                    } else {
                        Some(self.tree_model.remove(0))
                    };
                    if got.as_ref().map(RArc::as_ptr) != want.as_ref().map(RArc::as_ptr) {
                        return Err(format!("tree pop_front = {got:?}, model {want:?}"));
                    }
                }
                if self.tree.len() != self.tree_model.len() {
                    return Err(format!(
                        "tree len {} model {}",
                        self.tree.len(),
                        self.tree_model.len()
                    ));
                }
            }
            ApiOp::PageEntryNew {
                addr,
                order,
                dir,
                proto,
            } => {
                let a = addr.value(self);
                let d = match dir % 3 {
                    0 => DmaDirection::ToDevice,
                    1 => DmaDirection::FromDevice,
                    _ => DmaDirection::Bidirectional,
                };
                let valid = a % PAGE_SIZE == 0 && *order <= MAX_ORDER && *proto <= Protocol::MAX;
                match PageEntry::new(a, *order, d, Protocol(*proto)) {
                    Ok(e) if valid => {
                        let ok = e.addr() == a
                            && e.order() == *order
                            && e.dir() == d
                            && e.protocol() == Protocol(*proto)
                            && e.npages() == 1u64 << order
                            && e.size() == PAGE_SIZE << order
                            && e.writable() == (d != DmaDirection::ToDevice);
                        if !ok {
                            return Err(format!("PageEntry does not round-trip: {e:?}"));
                        }
                    }
                    Err(Error::Invalid) if !valid => {}
                    other => {
                        return Err(format!(
                            "PageEntry::new({a:#x}, {order}, {d:?}, {proto}) = {other:?}"
                        ))
                    }
                }
            }
            ApiOp::SelectChunk(q) => self.select_chunk(q)?,
            ApiOp::FromErrno(n) => match Error::from_errno(*n) {
                Some(e) => {
                    let a = n.unsigned_abs();
                    let expect = if a == 108 {
                        Error::Closed.errno()
                    } else {
                        -(a as i32)
                    };
                    if e.errno() != expect {
                        return Err(format!("from_errno({n}) = {e:?}"));
                    }
                }
                None => {
                    if [16u32, 11, 14, 12, 22, 95, 1, 13, 67, 19, 108].contains(&n.unsigned_abs()) {
                        return Err(format!("from_errno({n}) = None"));
                    }
                }
            },
            _ => return Err(format!("{op:?} is not a value call")),
        }
        Ok(())
    }

    fn select_chunk(&self, q: &QuerySpec) -> Result<(), String> {
        let chunks = chunks_of(&q.chunks, self);
        let pair = |p: &(Num, Num)| (p.0.value(self), p.1.value(self));
        let query = ChunkQuery {
            addr: q.addr.value(self),
            vma: pair(&q.vma),
            notifier: pair(&q.notifier),
            window: pair(&q.window),
            chunk_sizes: &chunks,
            check_pages_threshold: q.threshold.value(self),
        };
        let (mut ov, mut pr) = (q.overlaps, q.present);
        let mut overlap_calls: Vec<(u64, u64)> = Vec::new();
        let got = select_chunk(
            &query,
            |s, e| {
                overlap_calls.push((s, e));
                let b = ov & 1 == 1;
                ov >>= 1;
                b
            },
            |_, _| {
                let b = pr & 1 == 0;
                pr >>= 1;
                b
            },
        );
        let inside = |o: (u64, u64), s: u64, e: u64| o.0 <= s && e <= o.1;
        match got {
            Ok((s, e)) => {
                let size = e.wrapping_sub(s);
                let ok = s < e
                    && s <= query.addr
                    && query.addr < e
                    && chunks.contains(&size)
                    && s % size == 0
                    && inside(query.vma, s, e)
                    && inside(query.notifier, s, e)
                    && inside(query.window, s, e)
                    && overlap_calls.last() == Some(&(s, e));
                if !ok {
                    return Err(format!("select_chunk({query:?}) = [{s:#x}, {e:#x})"));
                }
            }
            Err(e) => {
                typed(e)?;
                if !matches!(e, Error::Invalid | Error::Fault) {
                    return Err(format!("select_chunk({query:?}) = {e:?}"));
                }
            }
        }
        for (s, e) in overlap_calls {
            if !(s < e
                && inside(query.vma, s, e)
                && inside(query.notifier, s, e)
                && inside(query.window, s, e))
            {
                return Err(format!(
                    "select_chunk asked overlaps({s:#x}, {e:#x}) outside"
                ));
            }
        }
        Ok(())
    }
}
