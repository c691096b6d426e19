//! The attribute store: policy attributes over address intervals, like `madvise`.
//!
//! Only intervals whose attributes differ from the defaults are stored, as a sorted array of
//! non-overlapping segments on the host's allocator; equal neighbours are merged, so the store
//! stays as small as the policy is varied. Lookup by address is a binary search (O(log n)).
//! Setting an interval builds the new segment list in a second array (O(n)) and swaps it in,
//! so a failed allocation changes nothing; under the [`ATTRS`](crate::sync::class::ATTRS)
//! spinning lock only the build and the swap run, with the array allocated before the lock is
//! taken ([`set_locked`]).

use super::{AtomicPolicy, Attrs, MigrationPolicy, PreferredLoc};
use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::sync::RwLock;
use crate::{DefaultHost, Host, HostVec};

/// A change to some attributes (`None` fields stay as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttrUpdate {
    /// New preferred location.
    pub preferred: Option<PreferredLoc>,
    /// New migration policy.
    pub migration: Option<MigrationPolicy>,
    /// New atomic-access policy.
    pub atomic: Option<AtomicPolicy>,
}

impl AttrUpdate {
    /// Whether the update changes nothing.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn is_empty(&self) -> bool {
        self.preferred.is_none() && self.migration.is_none() && self.atomic.is_none()
    }

    /// `a` with the update applied.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn apply(&self, a: Attrs) -> Attrs {
        Attrs {
            preferred: self.preferred.unwrap_or(a.preferred),
            migration: self.migration.unwrap_or(a.migration),
            atomic: self.atomic.unwrap_or(a.atomic),
        }
    }
}

/// One stored segment: `[start, end)` with attributes other than the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    start: u64,
    end: u64,
    attrs: Attrs,
}

/// Builds a canonical segment list from pieces in address order: drops empty and default
/// pieces, merges a piece into the previous one when they touch with equal attributes.
struct Merge {
    last: Option<Seg>,
}

impl Merge {
    fn push(&mut self, s: Seg, sink: &mut impl FnMut(Seg)) {
        if s.start >= s.end || s.attrs == Attrs::default() {
            return;
        }
        match self.last.as_mut() {
            Some(l) if l.end == s.start && l.attrs == s.attrs => l.end = s.end,
            _ => {
                if let Some(l) = self.last.replace(s) {
                    sink(l);
                }
            }
        }
    }

    fn finish(self, sink: &mut impl FnMut(Seg)) {
        if let Some(l) = self.last {
            sink(l);
        }
    }
}

/// Attributes over address intervals (see the module docs), on the allocator of the host `L`.
///
/// ```
/// use gpusvm::policy::{AttrStore, AttrUpdate, Attrs, PreferredLoc};
/// use gpusvm::heap::AllocCtx;
/// let mut s: AttrStore = AttrStore::new();
/// let sys = AttrUpdate { preferred: Some(PreferredLoc::System), ..AttrUpdate::default() };
/// s.set(0x1000, 0x5000, &sys, AllocCtx::MaySleep)?;
/// s.set(0x5000, 0x9000, &sys, AllocCtx::MaySleep)?; // merges with the first
/// assert_eq!(s.segments(), 1);
/// assert_eq!(s.get(0x8fff).preferred, PreferredLoc::System);
/// assert_eq!(s.get(0x9000), Attrs::default());
/// # Ok::<(), gpusvm::Error>(())
/// ```
pub struct AttrStore<L: Host = DefaultHost> {
    /// Sorted by start, non-overlapping, never default, never equal-adjacent.
    segs: HostVec<L, Seg>,
}

impl<L: Host> Default for AttrStore<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: Host> core::fmt::Debug for AttrStore<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<L: Host> PartialEq for AttrStore<L> {
    fn eq(&self, other: &Self) -> bool {
        self.segs == other.segs
    }
}
impl<L: Host> Eq for AttrStore<L> {}

impl<L: Host> AttrStore<L> {
    /// An empty store (defaults everywhere).
    ///
    /// Context: any; never allocates.
    pub const fn new() -> Self {
        AttrStore {
            segs: HostVec::<L, Seg>::new(),
        }
    }

    /// A copy of the store.
    ///
    /// Errors: [`Error::NoMem`].
    ///
    /// Context: allocates one array with `ctx`.
    pub fn try_clone(&self, ctx: AllocCtx) -> Result<Self> {
        Ok(AttrStore {
            segs: self.segs.try_clone(ctx)?,
        })
    }

    /// Number of stored segments.
    ///
    /// Context: any; never allocates.
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// The segments `(start, end, attrs)` in address order.
    ///
    /// Context: any; never allocates.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, Attrs)> + '_ {
        self.segs.iter().map(|s| (s.start, s.end, s.attrs))
    }

    /// Index of the first segment ending after `addr` (the one containing it, or the next).
    fn first_after(&self, addr: u64) -> usize {
        self.segs.partition_point(|s| s.end <= addr)
    }

    /// The attributes at `addr` (a binary search).
    ///
    /// Context: any; never allocates.
    pub fn get(&self, addr: u64) -> Attrs {
        match self.segs.get(self.first_after(addr)) {
            Some(s) if s.start <= addr => s.attrs,
            _ => Attrs::default(),
        }
    }

    /// The largest interval `[lo, hi)` around `addr` over which the attributes equal
    /// `get(addr)`: the stored segment containing `addr` (segments are maximal), or the gap of
    /// defaults between its neighbouring segments (`0` and `u64::MAX` at the ends). New SVM
    /// ranges are kept inside it.
    ///
    /// Context: any; never allocates.
    ///
    /// ```
    /// use gpusvm::policy::{AttrStore, AttrUpdate, PreferredLoc};
    /// use gpusvm::heap::AllocCtx;
    /// let mut s: AttrStore = AttrStore::new();
    /// let sys = AttrUpdate { preferred: Some(PreferredLoc::System), ..AttrUpdate::default() };
    /// s.set(0x4000, 0x8000, &sys, AllocCtx::MaySleep)?;
    /// assert_eq!(s.extent(0x5000), (0x4000, 0x8000));
    /// assert_eq!(s.extent(0x1000), (0, 0x4000));
    /// assert_eq!(s.extent(0x8000), (0x8000, u64::MAX));
    /// # Ok::<(), gpusvm::Error>(())
    /// ```
    pub fn extent(&self, addr: u64) -> (u64, u64) {
        let k = self.first_after(addr);
        let next = self.segs.get(k);
        if let Some(s) = next.filter(|s| s.start <= addr) {
            return (s.start, s.end);
        }
        let lo = k
            .checked_sub(1)
            .and_then(|p| self.segs.get(p))
            .map_or(0, |s| s.end);
        (lo, next.map_or(u64::MAX, |s| s.start))
    }

    /// Whether applying `u` to `[start, end)` would change any attribute there.
    ///
    /// Context: any; never allocates.
    pub fn would_change(&self, start: u64, end: u64, u: &AttrUpdate) -> bool {
        let mut at = start;
        for s in self.overlapping(start, end) {
            if at < s.start && u.apply(Attrs::default()) != Attrs::default() {
                return true;
            }
            if u.apply(s.attrs) != s.attrs {
                return true;
            }
            at = s.end;
        }
        at < end && u.apply(Attrs::default()) != Attrs::default()
    }

    /// The segments overlapping `[start, end)`, in address order.
    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Seg> + '_ {
        self.segs
            .iter()
            .skip(self.first_after(start))
            .take_while(move |s| s.start < end)
    }

    /// The pieces of the store with `u` applied to `[start, end)` (`start < end`), in address
    /// order, before merging: the segments before, the parts of `[start, end)` (segments
    /// clipped to it and the gaps between them, updated), the remainders of a segment that
    /// straddles an edge, and the segments after.
    fn pieces(&self, start: u64, end: u64, u: &AttrUpdate, mut emit: impl FnMut(Seg)) {
        let first = self.first_after(start);
        for s in self.segs.iter().take(first) {
            emit(*s);
        }
        let gap = u.apply(Attrs::default());
        let mut at = start;
        let mut i = first;
        while let Some(s) = self.segs.get(i).filter(|s| s.start < end) {
            if s.start < start {
                emit(Seg { end: start, ..*s });
            }
            let lo = s.start.max(start);
            emit(Seg {
                start: at,
                end: lo,
                attrs: gap,
            });
            let hi = s.end.min(end);
            emit(Seg {
                start: lo,
                end: hi,
                attrs: u.apply(s.attrs),
            });
            if s.end > end {
                emit(Seg { start: end, ..*s });
            }
            at = hi;
            i = i.saturating_add(1);
        }
        emit(Seg {
            start: at,
            end,
            attrs: gap,
        });
        for s in self.segs.iter().skip(i) {
            emit(*s);
        }
    }

    /// Number of segments after applying `u` to `[start, end)` (`start < end`).
    pub(crate) fn updated_len(&self, start: u64, end: u64, u: &AttrUpdate) -> usize {
        let mut n = 0usize;
        let mut count = |_: Seg| n = n.saturating_add(1);
        let mut m = Merge { last: None };
        self.pieces(start, end, u, |p| m.push(p, &mut count));
        m.finish(&mut count);
        n
    }

    /// Apply `u` to `[start, end)` (`start < end`) by building the new segment list in
    /// `spare` (empty) and swapping it in; the old list is left in `spare`, to be freed by the
    /// caller (after unlocking). Never allocates.
    ///
    /// Errors: the number of segments needed when `spare` has less room (nothing changed).
    fn replace_within(
        &mut self,
        start: u64,
        end: u64,
        u: &AttrUpdate,
        spare: &mut HostVec<L, Seg>,
    ) -> core::result::Result<(), usize> {
        let need = self.updated_len(start, end, u);
        if need > spare.capacity() || !spare.is_empty() {
            return Err(need);
        }
        let mut fits = true;
        let mut put = |s: Seg| fits &= spare.push_within_capacity(s).is_ok();
        let mut m = Merge { last: None };
        self.pieces(start, end, u, |p| m.push(p, &mut put));
        m.finish(&mut put);
        if !fits {
            // Cannot happen (the room was counted); leave the store as it was.
            spare.clear();
            return Err(need);
        }
        core::mem::swap(&mut self.segs, spare);
        Ok(())
    }

    /// Apply `u` to `[start, end)`: split at the edges, update, merge equal neighbours. All or
    /// nothing: the new segment list is built in a new array, then swapped in.
    ///
    /// Errors: [`Error::Invalid`] if `start >= end`; [`Error::NoMem`] when the new array
    /// cannot be allocated. The store is then unchanged.
    ///
    /// Context: allocates one array with `ctx` (nothing when the update changes nothing).
    pub fn set(&mut self, start: u64, end: u64, u: &AttrUpdate, ctx: AllocCtx) -> Result<()> {
        if start >= end {
            return Err(Error::Invalid);
        }
        if u.is_empty() || !self.would_change(start, end, u) {
            return Ok(());
        }
        let mut spare = HostVec::<L, Seg>::with_capacity(self.updated_len(start, end, u), ctx)?;
        // Cannot fail: the room was just counted on this same store.
        self.replace_within(start, end, u, &mut spare)
            .map_err(|_| Error::NoMem)
    }

    /// Forget every attribute (back to defaults); frees the array.
    ///
    /// Context: any; never allocates.
    pub fn clear(&mut self) {
        self.segs = HostVec::<L, Seg>::new();
    }
}

/// [`AttrStore::set`] on a store behind its [`ATTRS`](crate::sync::class::ATTRS) lock
/// (`Svm::set_attrs`): whether an attribute changed.
///
/// The new segment array is allocated with the lock released ([`AllocCtx::MaySleep`]): the
/// size is counted under a shared hold, the array allocated unlocked, then the list rebuilt
/// and swapped under the exclusive hold, and the old array freed after unlocking. If the store
/// changed meanwhile so that the array is too small, it is allocated again. An update that
/// changes nothing allocates nothing.
///
/// Errors: [`Error::Invalid`] if `start >= end`; [`Error::NoMem`]. The store is then unchanged.
///
/// Context: may sleep (allocates without the lock held); takes the attribute lock shared, then
/// exclusive, never allocating under it.
pub(crate) fn set_locked<L: Host>(
    store: &RwLock<L, AttrStore<L>>,
    start: u64,
    end: u64,
    u: &AttrUpdate,
) -> Result<bool> {
    if start >= end {
        return Err(Error::Invalid);
    }
    if u.is_empty() {
        return Ok(false);
    }
    let mut want = {
        let s = store.read();
        if !s.would_change(start, end, u) {
            return Ok(false);
        }
        s.updated_len(start, end, u)
    };
    let mut spare = HostVec::<L, Seg>::new();
    loop {
        if spare.capacity() < want {
            // Unlocked: drop the too-small array (it holds nothing) and allocate a new one.
            spare = HostVec::<L, Seg>::new();
            spare.reserve_exact(want, AllocCtx::MaySleep)?;
        }
        let mut s = store.write();
        if !s.would_change(start, end, u) {
            return Ok(false);
        }
        match s.replace_within(start, end, u, &mut spare) {
            Ok(()) => {
                drop(s);
                // The old array is freed here, unlocked.
                drop(spare);
                return Ok(true);
            }
            Err(need) => want = need,
        }
    }
}

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use super::*;
    use crate::platform::PagemapId;
    use std::vec::Vec;

    const C: AllocCtx = AllocCtx::MaySleep;

    fn upd(p: PreferredLoc) -> AttrUpdate {
        AttrUpdate {
            preferred: Some(p),
            ..AttrUpdate::default()
        }
    }

    #[test]
    fn split_and_merge() {
        let mut s: AttrStore = AttrStore::new();
        s.set(0, 100, &upd(PreferredLoc::System), C).unwrap();
        s.set(40, 60, &upd(PreferredLoc::Pagemap(PagemapId(1))), C)
            .unwrap();
        assert_eq!(s.segments(), 3);
        assert_eq!(s.get(39).preferred, PreferredLoc::System);
        assert_eq!(s.get(40).preferred, PreferredLoc::Pagemap(PagemapId(1)));
        assert_eq!(s.get(60).preferred, PreferredLoc::System);
        // Back to System in the middle: one segment again.
        s.set(40, 60, &upd(PreferredLoc::System), C).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>().len(), 1);
        // Back to the default: the store empties.
        s.set(0, 100, &upd(PreferredLoc::DeviceDefault), C).unwrap();
        assert_eq!(s.segments(), 0);
        assert!(s.set(5, 5, &upd(PreferredLoc::System), C).is_err());
    }

    #[test]
    fn gaps_and_would_change() {
        let mut s: AttrStore = AttrStore::new();
        s.set(10, 20, &upd(PreferredLoc::System), C).unwrap();
        s.set(30, 40, &upd(PreferredLoc::System), C).unwrap();
        assert!(!s.would_change(10, 20, &upd(PreferredLoc::System)));
        assert!(
            s.would_change(10, 30, &upd(PreferredLoc::System)),
            "gap 20..30 changes"
        );
        assert!(!s.would_change(20, 30, &upd(PreferredLoc::DeviceDefault)));
        s.set(0, 50, &upd(PreferredLoc::System), C).unwrap();
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [(
                0,
                50,
                Attrs {
                    preferred: PreferredLoc::System,
                    ..Attrs::default()
                }
            )]
        );
    }

    fn sys() -> Attrs {
        Attrs {
            preferred: PreferredLoc::System,
            ..Attrs::default()
        }
    }

    /// Per-unit model of `[0, 64)`: the store must agree everywhere and stay canonical.
    fn agrees(s: &AttrStore, model: &[Attrs; 64]) {
        for (a, want) in model.iter().enumerate() {
            assert_eq!(s.get(a as u64), *want, "at {a}");
        }
        let mut prev: Option<(u64, u64, Attrs)> = None;
        for (st, en, at) in s.iter() {
            assert!(st < en && at != Attrs::default(), "{s:?}");
            if let Some((_, pe, pa)) = prev {
                assert!(pe <= st && !(pe == st && pa == at), "not canonical: {s:?}");
            }
            prev = Some((st, en, at));
        }
    }

    #[test]
    fn sorted_segments_match_a_model() {
        let mut s: AttrStore = AttrStore::new();
        let mut model = [Attrs::default(); 64];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        // Fewer rounds under miri (slow, and the model is the same).
        let rounds = if cfg!(miri) { 60 } else { 2000 };
        for _ in 0..rounds {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = (seed >> 33) % 64;
            let b = (seed >> 45) % 64;
            let (lo, hi) = (a.min(b), a.max(b) + 1);
            let u = match (seed >> 20) % 4 {
                0 => upd(PreferredLoc::System),
                1 => upd(PreferredLoc::DeviceDefault),
                2 => upd(PreferredLoc::Pagemap(PagemapId(3))),
                _ => AttrUpdate {
                    atomic: Some(AtomicPolicy::Cpu),
                    ..AttrUpdate::default()
                },
            };
            let changes = (lo..hi).any(|x| u.apply(model[x as usize]) != model[x as usize]);
            assert_eq!(s.would_change(lo, hi, &u), changes);
            s.set(lo, hi, &u, C).unwrap();
            for x in lo..hi {
                model[x as usize] = u.apply(model[x as usize]);
            }
            agrees(&s, &model);
            let x = (seed >> 8) % 64;
            let (elo, ehi) = s.extent(x);
            assert!(elo <= x && x < ehi);
            let at = s.get(x);
            assert!((elo..ehi.min(64)).all(|y| model[y as usize] == at));
        }
        s.clear();
        assert_eq!(s.segments(), 0);
    }

    #[test]
    fn unchanged_update_allocates_nothing() {
        let mut s: AttrStore = AttrStore::new();
        s.set(0, 10, &upd(PreferredLoc::System), C).unwrap();
        let before = s.segs.as_ptr();
        s.set(2, 8, &upd(PreferredLoc::System), C).unwrap();
        s.set(20, 30, &upd(PreferredLoc::DeviceDefault), C).unwrap();
        assert_eq!(s.segs.as_ptr(), before, "no new array for a no-op");
        assert_eq!(s.iter().collect::<Vec<_>>(), [(0, 10, sys())]);
    }

    #[test]
    fn set_locked_counts_and_swaps() {
        use crate::sync::class;
        let lock: RwLock<DefaultHost, AttrStore> =
            RwLock::new(&class::ATTRS, AttrStore::new()).unwrap();
        let sys_u = upd(PreferredLoc::System);
        assert_eq!(set_locked(&lock, 0, 10, &sys_u), Ok(true));
        assert_eq!(set_locked(&lock, 0, 10, &sys_u), Ok(false));
        assert_eq!(set_locked(&lock, 4, 4, &sys_u), Err(Error::Invalid));
        assert_eq!(set_locked(&lock, 4, 6, &AttrUpdate::default()), Ok(false));
        let pm = upd(PreferredLoc::Pagemap(PagemapId(1)));
        assert_eq!(set_locked(&lock, 4, 6, &pm), Ok(true));
        assert_eq!(lock.read().segments(), 3);
    }

    /// A failed allocation leaves the store exactly as it was, through `set` and through
    /// `set_locked` (the simulator's allocator fails on request).
    #[cfg(feature = "sim")]
    #[test]
    fn nomem_leaves_the_store_as_it_was() {
        use crate::sim::{SimAlloc, SimHost};
        use crate::sync::class;
        let mut s: AttrStore<SimHost> = AttrStore::new();
        s.set(0, 10, &upd(PreferredLoc::System), C).unwrap();
        s.set(20, 30, &upd(PreferredLoc::System), C).unwrap();
        let before = s.try_clone(C).unwrap();
        SimAlloc::fail_next(1);
        assert_eq!(
            s.set(5, 25, &upd(PreferredLoc::Pagemap(PagemapId(2))), C),
            Err(Error::NoMem)
        );
        SimAlloc::stop_failing();
        assert_eq!(s, before);
        let lock: RwLock<SimHost, AttrStore<SimHost>> = RwLock::new(&class::ATTRS, s).unwrap();
        SimAlloc::fail_next(1);
        assert_eq!(
            set_locked(&lock, 5, 25, &upd(PreferredLoc::DeviceDefault)),
            Err(Error::NoMem)
        );
        SimAlloc::stop_failing();
        assert_eq!(*lock.read(), before);
        assert_eq!(
            set_locked(&lock, 5, 25, &upd(PreferredLoc::DeviceDefault)),
            Ok(true)
        );
        assert_eq!(
            lock.read().iter().collect::<Vec<_>>(),
            [(0, 5, sys()), (25, 30, sys())]
        );
    }
}
