//! Unit tests of [`RangeIndex`]: a model-based random walk, the refusals, link exclusivity
//! with [`RangeTree`], the spare protocol, reference counts, and allocation failure (a small
//! failing allocator of its own, so that the tests do not need the simulator).

use super::*;
use crate::heap::{self, Allocator, Global};
use crate::range::RangeTree;
use crate::sync::SpinHost;
use core::cell::Cell;
use core::ptr::NonNull;
use std::format;
use std::vec::Vec;

type Arc<T> = HostArc<DefaultHost, T>;

const P: u64 = PAGE_SIZE;
const CTX: AllocCtx = AllocCtx::MaySleep;

std::thread_local! {
    static FAIL: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}

/// The global allocator, counted per thread, failing every allocation while `FAIL` is set.
struct FailAlloc;

// SAFETY: forwards to `Global`; a refused allocation returns an error, never a pointer.
unsafe impl Allocator for FailAlloc {
    fn allocate(layout: core::alloc::Layout, ctx: AllocCtx) -> Result<NonNull<u8>> {
        ALLOCS.with(|c| c.set(c.get() + 1));
        if FAIL.with(Cell::get) {
            return Err(Error::NoMem);
        }
        Global::allocate(layout, ctx)
    }
    unsafe fn deallocate(ptr: NonNull<u8>, layout: core::alloc::Layout) {
        FREES.with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` came from `Global::allocate` with `layout` (caller's contract).
        unsafe { Global::deallocate(ptr, layout) }
    }
}

type FH = SpinHost<FailAlloc>;

/// (allocations attempted, frees) of this thread so far.
fn counts() -> (u64, u64) {
    (ALLOCS.with(Cell::get), FREES.with(Cell::get))
}

fn rng(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The index's content: (start, end, object address).
fn snapshot<L: Host>(ix: &RangeIndex<L>) -> Vec<(u64, u64, usize)> {
    ix.iter()
        .map(|r| (r.start(), r.end(), r as *const Range<L> as usize))
        .collect()
}

/// The model: the live ranges, sorted by start.
#[derive(Default)]
struct Model(Vec<Arc<Range>>);

impl Model {
    fn find(&self, a: u64) -> Option<&Arc<Range>> {
        let i = self.0.partition_point(|r| r.start() <= a);
        i.checked_sub(1).map(|i| &self.0[i]).filter(|r| a < r.end())
    }
    fn overlapping(&self, s: u64, e: u64) -> Vec<*const Range> {
        self.0
            .iter()
            .filter(|r| s < e && r.start() < e && s < r.end())
            .map(Arc::as_ptr)
            .collect()
    }
    fn insert(&mut self, r: Arc<Range>) {
        let i = self.0.partition_point(|x| x.start() < r.start());
        self.0.insert(i, r);
    }
    fn remove(&mut self, r: &Range) -> Option<Arc<Range>> {
        let i = self.0.iter().position(|x| core::ptr::eq(&**x, r))?;
        Some(self.0.remove(i))
    }
}

/// What the index must answer for an insertion of `[s, e)`.
fn fits(ix: &RangeIndex, m: &Model, s: u64, e: u64) -> bool {
    let slot = ix.slot_size();
    s >= ix.start() && e <= ix.end() && s / slot == (e - 1) / slot && m.overlapping(s, e).is_empty()
}

/// Lookups, overlap queries (with `peek`/`peek_arc` before every step), `last_overlapping`,
/// `any_overlap`, insertions (through `insert` and through the three-step spare protocol),
/// refusals (overlap, slot crossing, outside, already linked: the index unchanged), removals
/// (the very object, not a twin) and `pop_front` agree with a sorted-array model.
#[test]
fn agrees_with_model() {
    const SLOT: u64 = 8 * P;
    const BASE: u64 = 64 * SLOT;
    // More slots than an overlap walk reads ahead (`READ_AHEAD`).
    const SLOTS: u64 = 24;
    let mut ix: RangeIndex = RangeIndex::new(BASE, BASE + SLOTS * SLOT, SLOT, CTX).unwrap();
    let mut m = Model::default();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let steps = if cfg!(miri) { 1_200 } else { 30_000u32 };
    // Query addresses run from before the index to after it.
    let span = (SLOTS + 4) * SLOT;
    let lo = BASE - 2 * SLOT;
    // Accepted and refused insertions, spare growths, hits of removals and overlap queries.
    let (mut ok, mut refused, mut grown, mut removed, mut listed) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    for step in 0..steps {
        let op = rng(&mut x) % 12;
        let a = lo + rng(&mut x) % span;
        if step % 500 == 499 {
            // Start over (the buffers only grow): drain in order, or drop the index.
            if step % 1000 == 999 {
                for r in m.0.drain(..) {
                    let got = ix.pop_front().unwrap();
                    assert!(Arc::ptr_eq(&got, &r) && !r.is_linked());
                }
                assert!(ix.pop_front().is_none());
            } else {
                drop(ix);
                for r in m.0.drain(..) {
                    assert!(!r.is_linked());
                    assert_eq!(heap::Arc::strong_count(&r), 1);
                }
            }
            ix = RangeIndex::new(BASE, BASE + SLOTS * SLOT, SLOT, CTX).unwrap();
        }
        match op {
            0..=2 => {
                // Mostly chunk-aligned sizes (a power of two of pages, aligned to it), some
                // arbitrary page runs (which may cross a slot boundary).
                let (s, e) = if op < 2 {
                    let size = P << (rng(&mut x) % 4);
                    let s = a & !(size - 1);
                    (s, s + size)
                } else {
                    let s = a & !(P - 1);
                    (s, s + (1 + rng(&mut x) % 6) * P)
                };
                let r = Range::new(s, e).unwrap();
                let want = fits(&ix, &m, s, e);
                let before = snapshot(&ix);
                let got = if rng(&mut x) % 2 == 0 {
                    ix.insert(r.clone(), CTX)
                } else {
                    let need = ix.spare_needed(s);
                    let mut spare = None;
                    let first = ix.insert_within_capacity(r.clone(), &mut spare);
                    if let (true, Some(need)) = (want, need) {
                        grown += 1;
                        assert_eq!(first, Err(Error::NoMem), "step {step}");
                        assert_eq!(snapshot(&ix), before);
                        let mut spare = Some(RangeIndex::alloc_spare(need, CTX).unwrap());
                        let got = ix.insert_within_capacity(r.clone(), &mut spare);
                        let old = spare.unwrap();
                        assert!(old.is_empty() && old.capacity() < need);
                        got
                    } else {
                        first
                    }
                };
                if want {
                    assert_eq!(got, Ok(()), "step {step} [{s:#x},{e:#x})");
                    assert!(r.is_linked());
                    m.insert(r);
                    ok += 1;
                } else {
                    refused += 1;
                    assert_eq!(got, Err(Error::Invalid), "step {step} [{s:#x},{e:#x})");
                    assert!(!r.is_linked());
                    assert_eq!(heap::Arc::strong_count(&r), 1);
                    assert_eq!(snapshot(&ix), before, "step {step}");
                }
            }
            3 => {
                // Already linked (in this index): refused, unchanged.
                if let Some(r) = m.find(a).cloned() {
                    let before = snapshot(&ix);
                    assert_eq!(ix.insert(r.clone(), CTX), Err(Error::Invalid));
                    assert_eq!(
                        ix.insert_within_capacity(r.clone(), &mut None),
                        Err(Error::Invalid)
                    );
                    assert!(r.is_linked());
                    assert_eq!(snapshot(&ix), before);
                }
            }
            4 | 5 => {
                if let Some(r) = m.find(a).cloned() {
                    let twin = Range::new(r.start(), r.end()).unwrap();
                    assert!(ix.remove(&twin).is_none());
                    let out = ix.remove(&r).unwrap();
                    assert!(heap::Arc::ptr_eq(&out, &r));
                    assert!(!r.is_linked());
                    m.remove(&r);
                    removed += 1;
                    assert!(ix.remove(&r).is_none(), "removed twice");
                } else if op == 5 {
                    let got = ix.pop_front();
                    let want = m.0.first().cloned();
                    assert_eq!(
                        got.as_ref().map(Arc::as_ptr),
                        want.as_ref().map(Arc::as_ptr)
                    );
                    if let Some(r) = got {
                        assert!(!r.is_linked());
                        m.remove(&r);
                    }
                }
            }
            6 | 7 => {
                let e = if op == 6 {
                    a + rng(&mut x) % (3 * SLOT)
                } else {
                    lo + rng(&mut x) % span
                };
                let want = m.overlapping(a, e);
                let mut it = ix.overlapping(a, e);
                let mut got = Vec::new();
                loop {
                    let p = it.peek().map(|r| r as *const Range);
                    let pa = it.peek_arc();
                    assert_eq!(p, pa.as_ref().map(Arc::as_ptr));
                    let n = it.next().map(|r| r as *const Range);
                    assert_eq!(p, n, "step {step}");
                    match n {
                        Some(n) => got.push(n),
                        None => break,
                    }
                }
                assert_eq!(got, want, "step {step} overlapping({a:#x}, {e:#x})");
                listed += got.len();
                assert_eq!(ix.any_overlap(a, e), !want.is_empty());
                let last = ix.last_overlapping(a, e).map(|r| r as *const Range);
                assert_eq!(last, want.last().copied(), "step {step}");
            }
            _ => {
                let want = m.find(a).map(Arc::as_ptr);
                assert_eq!(ix.find(a).map(|r| r as *const Range), want, "step {step}");
                assert_eq!(ix.find_arc(a).as_ref().map(Arc::as_ptr), want);
            }
        }
        assert_eq!(ix.len(), m.0.len());
        assert_eq!(ix.is_empty(), m.0.is_empty());
    }
    let k = (steps / 100) as usize;
    assert!(ok > k && refused > k && grown > k / 4 && removed > k && listed > k);
    let all: Vec<*const Range> = ix.iter().map(|r| r as *const Range).collect();
    assert_eq!(all, m.0.iter().map(Arc::as_ptr).collect::<Vec<_>>());
    // Misses everywhere outside the index, at both ends of the address space.
    for a in [0, BASE - 1, BASE + SLOTS * SLOT, u64::MAX] {
        assert!(ix.find(a).is_none());
        assert!(ix.find_arc(a).is_none());
    }
    assert!(ix.overlapping(0, BASE).next().is_none());
    assert!(ix.last_overlapping(BASE + SLOTS * SLOT, u64::MAX).is_none());
    let n = m.0.len();
    assert_eq!(ix.overlapping(0, u64::MAX).count(), n);
    drop(ix);
    // Dropping the index released every link and reference.
    for r in &m.0 {
        assert!(!r.is_linked());
        assert_eq!(heap::Arc::strong_count(r), 1);
    }
}

#[test]
fn geometry_is_checked() {
    let new = |s, e, z| RangeIndex::<DefaultHost>::new(s, e, z, CTX).map(|_| ());
    const M: u64 = 1 << 20;
    assert_eq!(new(0, 2 * M, 3 * P), Err(Error::Invalid)); // not a power of two
    assert_eq!(new(0, 2 * M, P / 2), Err(Error::Invalid)); // below a page
    assert_eq!(new(0, 2 * M, 0), Err(Error::Invalid));
    assert_eq!(new(P, 2 * M, 2 * P), Err(Error::Invalid)); // start not aligned
    assert_eq!(new(0, 2 * M + P, 2 * P), Err(Error::Invalid)); // end not aligned
    assert_eq!(new(2 * M, 2 * M, P), Err(Error::Invalid)); // empty
    assert_eq!(new(4 * M, 2 * M, P), Err(Error::Invalid)); // reversed
    assert_eq!(new(0, 1 << 63, P), Err(Error::Invalid)); // 2^51 slots
    assert_eq!(new(0, 2 * M, 1 << 63), Err(Error::Invalid)); // end not aligned
                                                             // The top of the address space: the last aligned slots below 2^64.
    let top = 0u64.wrapping_sub(1 << 62);
    let mut ix: RangeIndex = RangeIndex::new(top - (1 << 62), top, 1 << 62, CTX).unwrap();
    assert_eq!(ix.slot_size(), 1 << 62);
    let r = Range::new(top - 2 * P, top).unwrap();
    ix.insert(r.clone(), CTX).unwrap();
    assert!(ix.find(top - 1).is_some());
    assert!(ix.find(top).is_none() && ix.find(u64::MAX).is_none());
    assert_eq!(ix.overlapping(top - P, u64::MAX).count(), 1);
    assert!(ix.last_overlapping(0, u64::MAX).is_some());
    // A range past the end is outside.
    let past = Range::new(top, top + P).unwrap();
    assert_eq!(ix.insert(past, CTX), Err(Error::Invalid));
    assert_eq!(slot_size_for(512 << 20, 2 << 20), 2 << 20);
    assert_eq!(slot_size_for(1 << 30, 64 << 10), 4 << 20);
    assert_eq!(slot_size_for(0, 4 << 10), 4 << 10);
    assert_eq!(slot_size_for(u64::MAX, 0), u64::MAX / 256);
}

/// A range in a tree is refused by the index and the other way round; removal from either
/// frees it for the other; dropping an index unlinks its ranges.
#[test]
fn link_is_exclusive_with_trees_and_other_indices() {
    let r = Range::new(4 * P, 6 * P).unwrap();
    let mut t = RangeTree::new();
    let mut a: RangeIndex = RangeIndex::new(0, 64 * P, 8 * P, CTX).unwrap();
    let mut b: RangeIndex = RangeIndex::new(0, 64 * P, 16 * P, CTX).unwrap();
    t.insert(r.clone()).unwrap();
    assert_eq!(a.insert(r.clone(), CTX), Err(Error::Invalid));
    assert!(a.is_empty() && r.is_linked());
    assert!(t.remove(&r).is_some());
    assert!(!r.is_linked());
    a.insert(r.clone(), CTX).unwrap();
    assert!(r.is_linked());
    assert_eq!(t.insert(r.clone()), Err(Error::Invalid));
    assert!(t.is_empty());
    assert_eq!(b.insert(r.clone(), CTX), Err(Error::Invalid));
    assert!(b.is_empty());
    assert_eq!(heap::Arc::strong_count(&r), 2);
    // A twin (same bounds, another object) is not this range.
    let twin = Range::new(4 * P, 6 * P).unwrap();
    assert!(a.remove(&twin).is_none());
    b.insert(twin.clone(), CTX).unwrap();
    drop(a);
    assert!(!r.is_linked());
    assert_eq!(heap::Arc::strong_count(&r), 1);
    t.insert(r.clone()).unwrap();
    assert_eq!(b.pop_front().map(|x| Arc::ptr_eq(&x, &twin)), Some(true));
    assert!(b.pop_front().is_none());
    b.insert(t.pop_front().unwrap(), CTX).unwrap();
    assert_eq!(b.find_arc(5 * P).map(|x| Arc::ptr_eq(&x, &r)), Some(true));
    drop(b);
    assert_eq!(heap::Arc::strong_count(&r), 1);
    assert_eq!(heap::Arc::strong_count(&twin), 1);
}

/// `insert_within_capacity` never allocates or frees: without a spare it refuses a full slot
/// (an empty slot has no buffer yet); a spare that is too small or not empty is refused; with
/// a good spare the entries move over and the old buffer comes back empty.
#[test]
fn spare_protocol_allocates_nothing_under_the_lock() {
    let slot = 16 * P;
    let mut ix = RangeIndex::<FH>::new(0, 4 * slot, slot, CTX).unwrap();
    let rs: Vec<_> = (0..16)
        .map(|k| Range::<FH>::with_host(k * P, (k + 1) * P).unwrap())
        .collect();
    let outside = Range::<FH>::with_host(4 * slot, 4 * slot + P).unwrap();
    let mut grows = 0;
    // Every range in slot 0, in a scrambled order: every position, and several growths.
    for k in [7usize, 0, 15, 3, 11, 1, 9, 5, 13, 2, 14, 6, 10, 4, 12, 8] {
        let r = &rs[k];
        let need = ix.spare_needed(r.start());
        let before = snapshot(&ix);
        FAIL.with(|f| f.set(true));
        let c0 = counts();
        let got = ix.insert_within_capacity(r.clone(), &mut None);
        // Refusals allocate nothing either.
        assert_eq!(
            ix.insert_within_capacity(outside.clone(), &mut None),
            Err(Error::Invalid)
        );
        assert_eq!(counts(), c0, "insert_within_capacity allocated or freed");
        FAIL.with(|f| f.set(false));
        let Some(cap) = need else {
            assert_eq!(got, Ok(()));
            continue;
        };
        grows += 1;
        assert_eq!(got, Err(Error::NoMem));
        assert_eq!(snapshot(&ix), before);
        assert!(!r.is_linked());
        // Too small, and not empty (the only way to get one is from the index: none), are
        // refused; the right one is taken.
        if cap > 1 {
            let mut small = Some(RangeIndex::<FH>::alloc_spare(cap / 2, CTX).unwrap());
            assert_eq!(
                ix.insert_within_capacity(r.clone(), &mut small),
                Err(Error::NoMem)
            );
            assert_eq!(small.as_ref().map(IndexSpare::capacity), Some(cap / 2));
        }
        let mut spare = Some(RangeIndex::<FH>::alloc_spare(cap, CTX).unwrap());
        assert_eq!(spare.as_ref().map(IndexSpare::capacity), Some(cap));
        FAIL.with(|f| f.set(true));
        let c0 = counts();
        ix.insert_within_capacity(r.clone(), &mut spare).unwrap();
        assert_eq!(counts(), c0, "insert_within_capacity allocated or freed");
        FAIL.with(|f| f.set(false));
        let old = spare.unwrap();
        assert!(old.is_empty());
        assert!(old.capacity() < cap);
    }
    assert_eq!(grows, 4, "inline, then arrays of 2, 4, 8, 16");
    assert_eq!(ix.len(), 16);
    // The slot is covered: no buffer helps, and every insertion is refused as overlapping.
    assert_eq!(ix.spare_needed(0), None);
    let got: Vec<u64> = ix.iter().map(|r| r.start()).collect();
    assert_eq!(got, (0..16).map(|k| k * P).collect::<Vec<_>>());
    // Removal frees nothing either (the slot keeps its buffer).
    let bytes = ix.heap_bytes();
    FAIL.with(|f| f.set(true));
    let c0 = counts();
    let a = ix.remove(&rs[5]).unwrap();
    let b = ix.pop_front().unwrap();
    assert_eq!(counts(), c0, "remove allocated or freed");
    FAIL.with(|f| f.set(false));
    assert_eq!(ix.heap_bytes(), bytes);
    assert!(ix.spare_needed(5 * P).is_none());
    ix.insert_within_capacity(a, &mut None).unwrap();
    ix.insert_within_capacity(b, &mut None).unwrap();
    // An empty slot needs no buffer: its first range is kept inline.
    let r = Range::<FH>::with_host(slot, slot + P).unwrap();
    let r2 = Range::<FH>::with_host(slot + P, 2 * slot).unwrap();
    let r3 = Range::<FH>::with_host(3 * slot, 4 * slot).unwrap();
    assert_eq!(ix.spare_needed(slot), None);
    FAIL.with(|f| f.set(true));
    ix.insert_within_capacity(r.clone(), &mut None).unwrap();
    // An unused spare stays with the caller.
    let mut unused = None;
    FAIL.with(|f| f.set(false));
    unused.replace(RangeIndex::<FH>::alloc_spare(8, CTX).unwrap());
    FAIL.with(|f| f.set(true));
    ix.insert_within_capacity(r3.clone(), &mut unused).unwrap();
    assert_eq!(unused.as_ref().map(IndexSpare::capacity), Some(8));
    FAIL.with(|f| f.set(false));
    // A second range needs an array of two; the old buffer (none) comes back.
    let need = ix.spare_needed(slot + P).unwrap();
    assert_eq!(need, 2);
    let mut spare = Some(RangeIndex::<FH>::alloc_spare(need, CTX).unwrap());
    ix.insert_within_capacity(r2.clone(), &mut spare).unwrap();
    assert_eq!(spare.map(|s| s.capacity()), Some(0));
    // Down to one range again: it moves inline, the array stays for the next one.
    let bytes = ix.heap_bytes();
    assert!(ix.remove(&r).is_some());
    assert_eq!(ix.spare_needed(slot), None);
    assert_eq!(ix.heap_bytes(), bytes);
    ix.insert_within_capacity(r.clone(), &mut None).unwrap();
    let got: Vec<u64> = ix.overlapping(slot, 4 * slot).map(|r| r.start()).collect();
    assert_eq!(got, [slot, slot + P, 3 * slot]);
    drop(ix);
    for r in rs.iter().chain([&r, &r2, &r3]) {
        assert_eq!(heap::Arc::strong_count(r), 1);
        assert!(!r.is_linked());
    }
}

/// A failing allocator: `new` and `insert` return `NoMem` and change nothing (the range stays
/// unlinked, its count unchanged); a retry succeeds.
#[test]
fn no_memory_leaves_the_index_unchanged() {
    FAIL.with(|f| f.set(true));
    assert!(matches!(
        RangeIndex::<FH>::new(0, 1 << 30, 1 << 21, CTX),
        Err(Error::NoMem)
    ));
    assert!(matches!(
        RangeIndex::<FH>::alloc_spare(4, CTX),
        Err(Error::NoMem)
    ));
    FAIL.with(|f| f.set(false));
    let mut ix = RangeIndex::<FH>::new(0, 1 << 30, 1 << 21, CTX).unwrap();
    let a = Range::<FH>::with_host(0, P).unwrap();
    let b = Range::<FH>::with_host(P, 2 * P).unwrap();
    let c = Range::<FH>::with_host(1 << 21, 1 << 22).unwrap();
    let overlapping = Range::<FH>::with_host(0, 2 * P).unwrap();
    ix.insert(a.clone(), CTX).unwrap();
    let before = snapshot(&ix);
    let bytes = ix.heap_bytes();
    FAIL.with(|f| f.set(true));
    // Slot 0 holds one range (inline): a second one needs an array.
    assert_eq!(ix.insert(b.clone(), CTX), Err(Error::NoMem));
    // A refusal for a reason other than memory says so, without allocating.
    assert_eq!(ix.insert(a.clone(), CTX), Err(Error::Invalid));
    assert_eq!(ix.insert(overlapping, CTX), Err(Error::Invalid));
    FAIL.with(|f| f.set(false));
    assert_eq!(snapshot(&ix), before);
    assert_eq!(ix.heap_bytes(), bytes);
    assert!(!b.is_linked());
    assert_eq!(heap::Arc::strong_count(&b), 1);
    // An empty slot takes its first range without allocating.
    FAIL.with(|f| f.set(true));
    ix.insert(c.clone(), CTX).unwrap();
    FAIL.with(|f| f.set(false));
    assert_eq!(ix.heap_bytes(), bytes);
    ix.insert(b.clone(), CTX).unwrap();
    assert_eq!(ix.len(), 3);
    assert!(ix.heap_bytes() > bytes);
    drop(ix);
    for r in [&a, &b, &c] {
        assert!(!r.is_linked());
        assert_eq!(heap::Arc::strong_count(r), 1);
    }
}

/// `heap_bytes` counts the table and the arrays' capacity; emptied slots keep their buffer.
#[test]
fn heap_bytes_and_drain() {
    let mut ix: RangeIndex = RangeIndex::new(0, 8 << 21, 1 << 21, CTX).unwrap();
    let table = 8 * size_of::<Slot<DefaultHost>>();
    assert_eq!(ix.heap_bytes(), table);
    let e = size_of::<Entry<DefaultHost>>();
    for k in 0..8u64 {
        ix.insert(Range::new(k << 21, (k << 21) + P).unwrap(), CTX)
            .unwrap();
    }
    // One range per slot: all inline.
    assert_eq!(ix.heap_bytes(), table);
    ix.insert(Range::new(P, 2 * P).unwrap(), CTX).unwrap();
    ix.insert(Range::new(2 * P, 3 * P).unwrap(), CTX).unwrap();
    assert_eq!(ix.heap_bytes(), table + 4 * e);
    // Pop from the back of the address space first: `first` stays a lower bound.
    let r = ix.find_arc(7 << 21).unwrap();
    assert!(ix.remove(&r).is_some());
    let mut popped = Vec::new();
    while let Some(r) = ix.pop_front() {
        assert!(!r.is_linked());
        popped.push(r.start());
    }
    let want: Vec<u64> = [0, P, 2 * P]
        .into_iter()
        .chain((1..7).map(|k| k << 21))
        .collect();
    assert_eq!(popped, want);
    assert!(ix.is_empty() && ix.iter().next().is_none());
    assert_eq!(ix.heap_bytes(), table + 4 * e);
    // Insert in front of the old `first` again.
    ix.insert(Range::new(0, P).unwrap(), CTX).unwrap();
    ix.insert(Range::new(3 << 21, 4 << 21).unwrap(), CTX)
        .unwrap();
    let got: Vec<u64> = ix.iter().map(|r| r.start()).collect();
    assert_eq!(got, [0, 3 << 21]);
    assert_eq!(format!("{ix:?}"), "[(0, 4096), (6291456, 8388608)]");
}
