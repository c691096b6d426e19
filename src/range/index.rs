//! The flat range index of one notifier: a slot table over a fixed, aligned interval; each slot
//! keeps a single range inline and several in a small sorted array.
//!
//! ```text
//!   RangeIndex [start, end), slot_size = 2^shift bytes, slot k = [start + k·slot_size, +slot_size)
//!
//!   slot table (HostVec<Slot>)  ┌─────────┬─────────┬─────────┬─────────┬─────┐
//!   Slot { one, more }          │ one: e0 │ (empty) │ more ─┐ │ one: e0 │ ... │
//!                               └─────────┴─────────┴───────┼─┴─────────┴─────┘
//!                                                           ▼
//!   more: HostVec<Entry>, sorted by start,          ┌────┬────┬────┬──────┐
//!   non-overlapping, grown by doubling              │ e0 │ e1 │ e2 │ room │
//!                                                   └────┴────┴────┴──────┘
//!   Entry { start, end, HostArc<Range> }: the bounds inline, so a lookup reads no range
//! ```
//!
//! The ranges an [`Svm`](crate::Svm) creates are chunk-aligned: a power-of-two size no larger
//! than the largest chunk, aligned to that size. With a slot size that is a power of two no
//! smaller than the largest chunk (see [`slot_size_for`]), every such range lies inside exactly
//! one slot; the index refuses a range that does not.
//!
//! - **Lookup** of an address: the slot is `(addr - start) >> shift`; a slot with one range
//!   answers from the table, else a binary search in its array: `O(log(slot_size / 4 KiB))`
//!   comparisons whatever the number of ranges.
//! - **Overlap iteration** walks the slots from the first to the last one the interval touches,
//!   reading the table in order and prefetching the arrays of the slots a few ahead.
//! - **Insertion and removal** move entries inside one slot's array only: at most
//!   `slot_size / 4 KiB - 1` entries of 24 bytes (511 for 2 MiB slots), plus, when the slot's
//!   array is full, one copy of its entries into a bigger buffer (see below).
//!
//! **Allocation.** Everything lives on the host's allocator. The constructor allocates the slot
//! table (48 bytes a slot on 64-bit targets). A slot's first range goes inline (no allocation);
//! its array is allocated when a second range joins, for 2, then grows by doubling up to
//! `slot_size / 4 KiB` entries. Removal never frees: an emptied array keeps its capacity until
//! the index is dropped (a slot left with one range moves it inline). Insertion under a lock
//! that the invalidation path takes neither allocates nor frees, in three steps (as the
//! notifier tree does): [`spare_needed`](RangeIndex::spare_needed) (under the lock, shared)
//! says whether the slot needs a bigger array, [`alloc_spare`](RangeIndex::alloc_spare)
//! allocates it (no lock held), and
//! [`insert_within_capacity`](RangeIndex::insert_within_capacity) (under the lock, exclusive)
//! moves the slot's entries into it and hands back the old, empty buffer, to be dropped after
//! the lock is released.
//!
//! **Links.** An inserted range's tree link is acquired (as [`RangeTree::insert`] does) and
//! released when the range leaves the index, so [`Range::is_linked`] stays truthful and a range
//! is never in two indices, or in an index and a tree, at once. The index does not thread the
//! link; it only uses its "linked" marker.
//!
//! [`RangeTree::insert`]: super::RangeTree::insert

use super::link::{acquire_tree_link, release_tree_link};
use super::Range;
use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::platform::{PAGE_SHIFT, PAGE_SIZE};
use crate::{DefaultHost, Host, HostArc, HostVec};
use core::alloc::Layout;
use core::mem::size_of;

/// One range of a slot: its bounds, inline so that a lookup reads no range, and the index's
/// reference to it.
struct Entry<L: Host> {
    start: u64,
    end: u64,
    range: HostArc<L, Range<L>>,
}

/// The ranges of one slot, sorted by start, non-overlapping: a single range inline in the slot
/// table (a lookup reads no array; inserting it allocates nothing), several in an array.
///
/// Invariant: `one` is `Some` only while `more` is empty (`more` may keep its capacity). A slot
/// holding exactly one range keeps it in `one` (not needed for correctness).
struct Slot<L: Host> {
    one: Option<Entry<L>>,
    more: HostVec<L, Entry<L>>,
}

impl<L: Host> Slot<L> {
    fn new() -> Self {
        Slot {
            one: None,
            more: HostVec::<L, Entry<L>>::new(),
        }
    }

    /// The slot's entries, in order.
    #[inline]
    fn entries(&self) -> &[Entry<L>] {
        match &self.one {
            Some(e) => core::slice::from_ref(e),
            None => &self.more,
        }
    }

    fn len(&self) -> usize {
        if self.one.is_some() {
            1
        } else {
            self.more.len()
        }
    }

    /// Whether one more range needs a bigger array: the slot holds ranges and its array has
    /// no room for them and one more.
    fn full(&self) -> bool {
        let n = self.len();
        n >= 1 && self.more.capacity() <= n
    }

    /// Insert `entry` at position `i` (within capacity); gives it back when there is no room.
    fn insert(&mut self, i: usize, entry: Entry<L>) -> core::result::Result<(), Entry<L>> {
        if self.one.is_none() && self.more.is_empty() {
            self.one = Some(entry);
            return Ok(());
        }
        if self.full() {
            return Err(entry);
        }
        if let Some(o) = self.one.take() {
            // `more` is empty and has room for two (not full).
            if let Err(o) = self.more.push_within_capacity(o) {
                self.one = Some(o);
                return Err(entry);
            }
        }
        self.more.insert_within_capacity(i, entry)
    }

    /// Remove the entry at position `i`.
    fn remove(&mut self, i: usize) -> Option<Entry<L>> {
        if self.one.is_some() {
            return if i == 0 { self.one.take() } else { None };
        }
        let e = self.more.remove(i)?;
        if self.more.len() == 1 {
            self.one = self.more.pop();
        }
        Some(e)
    }

    /// Start reading the slot's array, if it has ranges there (see `IndexOverlapping`).
    #[inline(always)]
    fn prefetch(&self) {
        if !self.more.is_empty() {
            prefetch(self.more.as_ptr());
        }
    }

    /// Take any entry out (for dropping them all).
    fn pop(&mut self) -> Option<Entry<L>> {
        self.one.take().or_else(|| self.more.pop())
    }
}

/// Most slots an [`Svm`](crate::Svm)'s notifier index has (see [`slot_size_for`]).
const SVM_SLOTS: u64 = 256;

/// Most slots any index has (a larger table is refused with [`Error::Invalid`]).
const MAX_SLOTS: u64 = u32::MAX as u64;

/// The slot size of the index of a notifier of `notifier_size` bytes whose largest chunk is
/// `largest_chunk` bytes: `max(largest_chunk, notifier_size / 256)`, so that every
/// chunk-aligned range lies in one slot and the slot table has at most 256 entries (2 MiB slots
/// for 512 MiB notifiers and 2 MiB chunks).
///
/// With powers of two (as an [`Svm`](crate::Svm)'s configuration guarantees) the result is a
/// power of two; [`RangeIndex::new`] checks it.
///
/// ```
/// use gpusvm::range::slot_size_for;
/// assert_eq!(slot_size_for(512 << 20, 2 << 20), 2 << 20);
/// assert_eq!(slot_size_for(1 << 40, 2 << 20), 4 << 30);
/// assert_eq!(slot_size_for(4 << 20, 2 << 20), 2 << 20);
/// ```
///
/// Context: any; allocates nothing, never sleeps, takes no lock.
pub fn slot_size_for(notifier_size: u64, largest_chunk: u64) -> u64 {
    largest_chunk.max(notifier_size.checked_div(SVM_SLOTS).unwrap_or(0))
}

/// An empty array for one slot's ranges, allocated ahead of an insertion (see
/// [`RangeIndex::alloc_spare`]); after [`RangeIndex::insert_within_capacity`] replaced a full
/// slot's array with it, it holds the old array, empty (or no buffer at all, if the slot had
/// none), to be dropped once the caller's lock is released.
pub struct IndexSpare<L: Host = DefaultHost> {
    /// Always empty: the index only stores an emptied buffer here.
    buf: HostVec<L, Entry<L>>,
}

impl<L: Host> IndexSpare<L> {
    /// How many ranges the buffer holds.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether the buffer holds no range (always true: a spare is handed out empty).
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

impl<L: Host> core::fmt::Debug for IndexSpare<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IndexSpare")
            .field("capacity", &self.buf.capacity())
            .finish()
    }
}

/// The non-overlapping [`Range`]s of a fixed interval `[start, end)`, each inside one slot of
/// `slot_size` bytes, in a flat slot table: one small array per slot, sorted by start.
///
/// ```text
///   slots    │ s0 │ s1 │ s2 │ ... │      slot k = [start + k·slot_size, start + (k+1)·slot_size)
///              │         │
///   arrays   [e0 e1 ..] [e0 ..]          entry = (start, end, HostArc<Range>), sorted by start
/// ```
///
/// Lookup by address costs one slot-table read and a binary search among the ranges of one slot
/// (`O(log(slot_size / 4 KiB))`), independent of the number of ranges; iteration over an
/// interval reads the slots it touches in order. Insertion and removal move at most
/// `slot_size / 4 KiB - 1` entries (one slot's array).
///
/// Addresses outside `[start, end)` are misses. The index has no lock: the caller serialises
/// changes (`&mut self`) against lookups (`&self`).
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpusvm::heap::AllocCtx;
/// use gpusvm::range::{Range, RangeIndex};
/// let mut ix: RangeIndex = RangeIndex::new(0, 16 << 20, 2 << 20, AllocCtx::MaySleep)?;
/// ix.insert(Range::new(0x1000, 0x2000)?, AllocCtx::MaySleep)?;
/// ix.insert(Range::new(2 << 20, 4 << 20)?, AllocCtx::MaySleep)?;
/// assert_eq!(ix.find(0x1fff).map(|r| r.start()), Some(0x1000));
/// assert!(ix.find(0x2000).is_none());
/// let hits: Vec<u64> = ix.overlapping(0x1800, 3 << 20).map(|r| r.start()).collect();
/// assert_eq!(hits, [0x1000, 2 << 20]);
/// // Overlapping ranges, and ranges crossing a slot boundary, are refused.
/// assert!(ix.insert(Range::new(0x1000, 0x3000)?, AllocCtx::MaySleep).is_err());
/// assert!(ix.insert(Range::new(1 << 20, 3 << 20)?, AllocCtx::MaySleep).is_err());
/// # }
/// # Ok::<(), gpusvm::Error>(())
/// ```
pub struct RangeIndex<L: Host = DefaultHost> {
    start: u64,
    end: u64,
    /// `log2(slot_size)`, below 64.
    shift: u32,
    /// Most ranges a slot can hold: `slot_size / PAGE_SIZE` (ranges are page aligned).
    max_per_slot: usize,
    /// One array per slot; `(end - start) >> shift` of them.
    slots: HostVec<L, Slot<L>>,
    len: usize,
    /// Every slot before this one is empty (a lower bound; the number of slots when all are).
    first: usize,
}

impl<L: Host> core::fmt::Debug for RangeIndex<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|r| (r.start(), r.end())))
            .finish()
    }
}

/// Reverse `s` in place by swapping from both ends (`<[T]>::reverse` keeps a panic path the
/// optimiser does not always remove; this has none).
fn reverse<T>(s: &mut [T]) {
    let mut it = s.iter_mut();
    while let (Some(a), Some(b)) = (it.next(), it.next_back()) {
        core::mem::swap(a, b);
    }
}

/// The capacity a slot's array grows to from `cap`: double (at least two: a single range is
/// kept inline), at most `max`.
fn grown(cap: usize, max: usize) -> usize {
    cap.saturating_mul(2).max(2).min(max)
}

impl<L: Host> RangeIndex<L> {
    /// An empty index over `[start, end)` in slots of `slot_size` bytes; allocates the slot
    /// table only (a slot's first range is kept in the table; its array is allocated when a
    /// second one joins).
    ///
    /// Errors: [`Error::Invalid`] unless `slot_size` is a power of two no smaller than the page
    /// size, `start` and `end` are multiples of it, `start < end`, and the number of slots is
    /// at most `u32::MAX` (and its table fits the address space); [`Error::NoMem`] if the
    /// allocator fails (nothing is allocated then).
    ///
    /// Context: allocates the slot table (`(end - start) / slot_size` slots of 48 bytes on
    /// 64-bit targets) with `ctx`; may sleep only if `ctx` allows it; takes no lock.
    pub fn new(start: u64, end: u64, slot_size: u64, ctx: AllocCtx) -> Result<Self> {
        let aligned = |x: u64| x.checked_rem(slot_size) == Some(0);
        if !slot_size.is_power_of_two()
            || slot_size < PAGE_SIZE
            || start >= end
            || !aligned(start)
            || !aligned(end)
        {
            return Err(Error::Invalid);
        }
        let shift = slot_size.trailing_zeros();
        let count = end.wrapping_sub(start).wrapping_shr(shift);
        if count > MAX_SLOTS {
            return Err(Error::Invalid);
        }
        let n = usize::try_from(count).map_err(|_| Error::Invalid)?;
        if Layout::array::<Slot<L>>(n).is_err() {
            return Err(Error::Invalid);
        }
        let mut slots = HostVec::<L, Slot<L>>::new();
        slots.reserve_exact(n, ctx)?;
        while slots.len() < n {
            if slots.push_within_capacity(Slot::<L>::new()).is_err() {
                // Unreachable: the capacity was reserved above.
                return Err(Error::NoMem);
            }
        }
        Ok(RangeIndex {
            start,
            end,
            shift,
            max_per_slot: usize::try_from(slot_size.wrapping_shr(PAGE_SHIFT)).unwrap_or(usize::MAX),
            slots,
            len: 0,
            first: n,
        })
    }

    /// First byte covered.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last byte covered.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes per slot.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn slot_size(&self) -> u64 {
        1u64.wrapping_shl(self.shift)
    }

    /// Number of ranges.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no range.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of heap the index holds: the slot table and the capacity of every slot's array
    /// (not the ranges themselves, nor the allocator's own overhead). Walks the slot table.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn heap_bytes(&self) -> usize {
        let table = self.slots.capacity().saturating_mul(size_of::<Slot<L>>());
        self.slots.iter().fold(table, |acc, s| {
            acc.saturating_add(s.more.capacity().saturating_mul(size_of::<Entry<L>>()))
        })
    }

    /// The slot holding `addr`, if `addr` is inside the index.
    #[inline]
    fn slot_index(&self, addr: u64) -> Option<usize> {
        if addr >= self.end {
            return None;
        }
        let off = addr.checked_sub(self.start)?;
        usize::try_from(off.wrapping_shr(self.shift)).ok()
    }

    /// The entry whose range contains `addr`.
    #[inline]
    fn entry(&self, addr: u64) -> Option<&Entry<L>> {
        let slot = self.slots.get(self.slot_index(addr)?)?.entries();
        let i = slot.partition_point(|e| e.start <= addr).checked_sub(1)?;
        slot.get(i).filter(|e| addr < e.end)
    }

    /// The range containing `addr`.
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock (the caller serialises
    /// access to the index).
    #[inline]
    pub fn find(&self, addr: u64) -> Option<&Range<L>> {
        self.entry(addr).map(|e| &*e.range)
    }

    /// The range containing `addr`, as a new reference.
    ///
    /// Context: as [`find`](Self::find); the new reference only bumps the count.
    #[inline]
    pub fn find_arc(&self, addr: u64) -> Option<HostArc<L, Range<L>>> {
        self.entry(addr).map(|e| e.range.clone())
    }

    /// The slots `[start, end)` touches, clamped to the index, skipping the leading empty
    /// slots; `None` if it touches none.
    fn touched(&self, start: u64, end: u64) -> Option<&[Slot<L>]> {
        let lo = start.max(self.start);
        let hi = end.min(self.end);
        if lo >= hi {
            return None;
        }
        let a = self.slot_index(lo)?.max(self.first);
        // `hi > lo >= self.start`: `hi - 1` is inside the index.
        let b = self.slot_index(hi.wrapping_sub(1))?;
        self.slots.get(a..=b)
    }

    /// The ranges overlapping `[start, end)`, in address order. Empty if `start >= end`.
    ///
    /// Context: as [`find`](Self::find); the iterator walks the slots the interval touches.
    pub fn overlapping(&self, start: u64, end: u64) -> IndexOverlapping<'_, L> {
        let Some(slots) = self.touched(start, end) else {
            return IndexOverlapping {
                slots: &[],
                pos: 0,
                end,
            };
        };
        // Ranges never cross a slot boundary: only the first slot can hold ranges that end at
        // or before `start`, and they come first in it (ends are sorted too).
        let pos = slots
            .first()
            .map_or(0, |s| s.entries().partition_point(|e| e.end <= start));
        // Start reading the arrays of the first slots (see `IndexOverlapping::settle`).
        for s in slots.iter().skip(1).take(READ_AHEAD) {
            s.prefetch();
        }
        let mut it = IndexOverlapping { slots, pos, end };
        it.settle();
        it
    }

    /// The last range overlapping `[start, end)`, if any.
    ///
    /// Context: as [`find`](Self::find); walks the touched slots backwards to the first one
    /// holding a range that starts before `end`.
    pub fn last_overlapping(&self, start: u64, end: u64) -> Option<&Range<L>> {
        for slot in self.touched(start, end)?.iter().rev() {
            let slot = slot.entries();
            let i = slot.partition_point(|e| e.start < end);
            if let Some(e) = i.checked_sub(1).and_then(|j| slot.get(j)) {
                return (e.end > start).then_some(&*e.range);
            }
        }
        None
    }

    /// Whether any range overlaps `[start, end)`.
    ///
    /// Context: as [`overlapping`](Self::overlapping).
    pub fn any_overlap(&self, start: u64, end: u64) -> bool {
        self.overlapping(start, end).peek().is_some()
    }

    /// All ranges in address order.
    ///
    /// Context: as [`find`](Self::find); the iterator walks the slot table.
    pub fn iter(&self) -> impl Iterator<Item = &Range<L>> + '_ {
        self.overlapping(self.start, self.end)
    }

    /// Where `range` goes: its slot and its position there.
    fn place(&self, range: &Range<L>) -> Result<(usize, usize)> {
        let (s, e) = (range.start(), range.end());
        let last = e.checked_sub(1).ok_or(Error::Invalid)?;
        let si = self.slot_index(s).ok_or(Error::Invalid)?;
        if s > last || self.slot_index(last) != Some(si) {
            return Err(Error::Invalid);
        }
        let slot = self.slots.get(si).ok_or(Error::Invalid)?.entries();
        let i = slot.partition_point(|x| x.start < s);
        let before_ok = i
            .checked_sub(1)
            .and_then(|j| slot.get(j))
            .is_none_or(|x| x.end <= s);
        let after_ok = slot.get(i).is_none_or(|x| e <= x.start);
        if !before_ok || !after_ok {
            return Err(Error::Invalid);
        }
        Ok((si, i))
    }

    /// The capacity of the buffer an insertion of a range starting at `addr` needs and its
    /// slot does not have: `None` if the slot has room (an empty slot always has: its first
    /// range is kept inline), or if no buffer would help (`addr` is outside the index, or its
    /// slot is covered by ranges already); else the capacity to give
    /// [`alloc_spare`](Self::alloc_spare): 2 for a slot holding one range, else the array's
    /// capacity doubled, at most `slot_size / 4 KiB`.
    ///
    /// Read under the caller's lock (shared); the buffer is then allocated without it. The
    /// caller keeps insertions out between this call and
    /// [`insert_within_capacity`](Self::insert_within_capacity) (removals only make room).
    ///
    /// Context: any; allocates nothing, never sleeps, takes no lock.
    pub fn spare_needed(&self, addr: u64) -> Option<usize> {
        let slot = self.slots.get(self.slot_index(addr)?)?;
        let n = slot.len();
        if !slot.full() || n >= self.max_per_slot {
            return None;
        }
        Some(grown(slot.more.capacity(), self.max_per_slot).max(n.saturating_add(1)))
    }

    /// An empty buffer for `capacity` ranges, for
    /// [`insert_within_capacity`](Self::insert_within_capacity).
    ///
    /// Errors: [`Error::NoMem`] if the allocator fails or the size overflows.
    ///
    /// Context: allocates with `ctx` (call it without the locks the invalidation path takes);
    /// may sleep only if `ctx` allows it.
    pub fn alloc_spare(capacity: usize, ctx: AllocCtx) -> Result<IndexSpare<L>> {
        let mut buf = HostVec::<L, Entry<L>>::new();
        buf.reserve_exact(capacity, ctx)?;
        Ok(IndexSpare { buf })
    }

    /// Insert `range` without allocating or freeing: inline into an empty slot, into its
    /// slot's array when there is room, or else after moving the slot's entries into `spare`
    /// (which must be empty and have room for them and one more); `spare` then holds the
    /// slot's old buffer, empty, for the caller to drop once its lock is released (it is left
    /// alone when not needed). The range's tree link is acquired.
    ///
    /// Cost: moves at most `slot_size / 4 KiB - 1` entries (twice when the buffer is
    /// replaced).
    ///
    /// Errors (the index, `spare` and the range's link unchanged; the reference passed in is
    /// dropped, so keep one to be sure nothing is freed): [`Error::Invalid`] if the range is
    /// linked already (into an index or a [`RangeTree`](super::RangeTree)), lies outside the
    /// index, crosses a slot boundary or overlaps a range of the index; [`Error::NoMem`] if
    /// the slot is full and `spare` is `None`, not empty or too small.
    ///
    /// Context: allocates and frees nothing; never sleeps; takes no lock (the caller
    /// serialises access, e.g. under the notifier lock held exclusively).
    pub fn insert_within_capacity(
        &mut self,
        range: HostArc<L, Range<L>>,
        spare: &mut Option<IndexSpare<L>>,
    ) -> Result<()> {
        if range.is_linked() {
            return Err(Error::Invalid);
        }
        let (si, i) = self.place(&range)?;
        let slot = self.slots.get_mut(si).ok_or(Error::Invalid)?;
        let full = slot.full();
        if full
            && !spare
                .as_ref()
                .is_some_and(|sp| sp.buf.is_empty() && sp.buf.capacity() > slot.len())
        {
            return Err(Error::NoMem);
        }
        // Acquire the link last among the checks (atomically: another index or tree may race
        // for the same range); nothing below can fail.
        if !acquire_tree_link(&range) {
            return Err(Error::Invalid);
        }
        let mut lost = 0usize;
        let mut pos = i;
        if let (true, Some(sp)) = (full, spare.as_mut()) {
            core::mem::swap(&mut slot.more, &mut sp.buf);
            // `sp.buf` is the old, full array (empty if the slot's range is inline): move its
            // entries over (last first, then put them back in order), leaving it empty.
            while let Some(x) = sp.buf.pop() {
                if let Err(x) = slot.more.push_within_capacity(x) {
                    // Unreachable: the spare's capacity was checked above.
                    release_tree_link(&x.range);
                    lost = lost.saturating_add(1);
                }
            }
            reverse(&mut slot.more);
            if lost > 0 {
                pos = slot.entries().partition_point(|x| x.start < range.start());
            }
        }
        let entry = Entry {
            start: range.start(),
            end: range.end(),
            range,
        };
        let done = match slot.insert(pos, entry) {
            Ok(()) => true,
            Err(x) => {
                // Unreachable: room was checked (or made) above.
                release_tree_link(&x.range);
                false
            }
        };
        self.len = self.len.saturating_sub(lost);
        if !done {
            return Err(Error::NoMem);
        }
        self.len = self.len.saturating_add(1);
        self.first = self.first.min(si);
        Ok(())
    }

    /// Insert `range`, allocating a bigger buffer for its slot if needed (the three steps of
    /// [`spare_needed`](Self::spare_needed), [`alloc_spare`](Self::alloc_spare) and
    /// [`insert_within_capacity`](Self::insert_within_capacity) in one call, for callers
    /// without a lock to respect).
    ///
    /// Errors (the index and the range's link unchanged, the reference passed in dropped):
    /// [`Error::Invalid`] as [`insert_within_capacity`](Self::insert_within_capacity);
    /// [`Error::NoMem`] if the allocator fails.
    ///
    /// Context: may allocate with `ctx` and free the slot's old buffer; may sleep only if
    /// `ctx` allows it; takes no lock.
    pub fn insert(&mut self, range: HostArc<L, Range<L>>, ctx: AllocCtx) -> Result<()> {
        if range.is_linked() {
            return Err(Error::Invalid);
        }
        self.place(&range)?;
        let mut spare = match self.spare_needed(range.start()) {
            Some(n) => Some(Self::alloc_spare(n, ctx)?),
            None => None,
        };
        self.insert_within_capacity(range, &mut spare)
    }

    /// Remove `range` (the very object, not just one with the same bounds) and release its
    /// link; returns the index's reference, or `None` if the range is not in this index.
    ///
    /// Cost: moves at most `slot_size / 4 KiB - 1` entries.
    ///
    /// Context: allocates and frees nothing (the slot keeps its buffer; the reference is
    /// returned), never sleeps, takes no lock.
    pub fn remove(&mut self, range: &Range<L>) -> Option<HostArc<L, Range<L>>> {
        let si = self.slot_index(range.start())?;
        let slot = self.slots.get_mut(si)?;
        let es = slot.entries();
        let i = es.binary_search_by_key(&range.start(), |e| e.start).ok()?;
        if !es
            .get(i)
            .is_some_and(|e| core::ptr::eq::<Range<L>>(&*e.range, range))
        {
            return None;
        }
        let e = slot.remove(i)?;
        release_tree_link(&e.range);
        self.len = self.len.saturating_sub(1);
        Some(e.range)
    }

    /// Remove the first range and release its link; returns the index's reference.
    ///
    /// Context: as [`remove`](Self::remove); skips the empty slots at the front.
    pub fn pop_front(&mut self) -> Option<HostArc<L, Range<L>>> {
        while let Some(slot) = self.slots.get_mut(self.first) {
            if let Some(e) = slot.remove(0) {
                release_tree_link(&e.range);
                self.len = self.len.saturating_sub(1);
                return Some(e.range);
            }
            self.first = self.first.saturating_add(1);
        }
        None
    }
}

impl<L: Host> Drop for RangeIndex<L> {
    /// Release every range's link, then its reference (the arrays and the table are freed).
    fn drop(&mut self) {
        for slot in self.slots.iter_mut() {
            while let Some(e) = slot.pop() {
                // Before dropping the reference: it may be the last one.
                release_tree_link(&e.range);
                drop(e);
            }
        }
    }
}

/// Hint to the CPU that the memory at `p` will be read soon (no-op where unsupported).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no effect on program semantics, whatever the
    // address (the intrinsic is only `unsafe` on older compilers).
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How many slots ahead an overlap walk starts reading a slot's array.
const READ_AHEAD: usize = 16;

/// Iterator over the ranges overlapping an interval (see [`RangeIndex::overlapping`]).
pub struct IndexOverlapping<'a, L: Host = DefaultHost> {
    /// The slots left to walk. Settled (see `settle`): empty, or the first slot's entry at
    /// `pos` is the next range to yield.
    slots: &'a [Slot<L>],
    pos: usize,
    /// One past the last byte of the interval.
    end: u64,
}

impl<'a, L: Host> IndexOverlapping<'a, L> {
    /// Move to the next entry to yield: past the exhausted slots; nowhere (no slot left) if
    /// it starts at or after `end`.
    fn settle(&mut self) {
        while let Some((first, rest)) = self.slots.split_first() {
            match first.entries().get(self.pos) {
                Some(e) => {
                    if e.start >= self.end {
                        self.slots = &[];
                    }
                    return;
                }
                None => {
                    self.slots = rest;
                    self.pos = 0;
                    // Start reading the array of a slot a few ahead: the arrays are separate
                    // allocations whose cache misses then overlap instead of queuing.
                    if let Some(ahead) = rest.get(READ_AHEAD) {
                        ahead.prefetch();
                    }
                }
            }
        }
    }

    /// The next entry to yield.
    fn current(&self) -> Option<&'a Entry<L>> {
        let slots: &'a [Slot<L>] = self.slots;
        slots.first()?.entries().get(self.pos)
    }

    /// The range `next` would return, without advancing.
    ///
    /// Context: allocates nothing, never sleeps, takes no lock.
    pub fn peek(&self) -> Option<&'a Range<L>> {
        self.current().map(|e| &*e.range)
    }

    /// The range `next` would return, as a new reference.
    ///
    /// Context: allocates nothing, never sleeps, takes no lock; the new reference only bumps
    /// the count.
    pub fn peek_arc(&self) -> Option<HostArc<L, Range<L>>> {
        self.current().map(|e| e.range.clone())
    }
}

impl<'a, L: Host> Iterator for IndexOverlapping<'a, L> {
    type Item = &'a Range<L>;

    fn next(&mut self) -> Option<&'a Range<L>> {
        let e = self.current()?;
        // `pos` indexes an entry of a slot, so it is below `isize::MAX`.
        self.pos = self.pos.wrapping_add(1);
        self.settle();
        Some(&*e.range)
    }
}

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests;
