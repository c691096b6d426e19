//! Notifiers: fixed-size aligned intervals of the mirrored address space, each registered with
//! the platform and each holding the ranges that lie inside it.

use super::{RangeIndex, SeqCounter};
use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::sync::{class, RwLock};
use crate::{Host, HostVec};

/// One notifier `[start, end)`.
pub(crate) struct Notifier<H, L: Host> {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) seq: SeqCounter,
    /// The notifier lock ([`class::NOTIFIER`]) and the ranges it protects; the ranges' page
    /// state is changed only under it.
    pub(crate) ranges: RwLock<L, RangeIndex<L>>,
    /// `None` while registration is in flight or after it was undone (under the notifier-array
    /// lock).
    pub(crate) handle: Option<H>,
}

impl<H, L: Host> Notifier<H, L> {
    /// A notifier without ranges or handle, with its range index (slots of `slot_size` bytes)
    /// and its lock.
    ///
    /// Errors: [`Error::Invalid`] for a bad geometry; [`Error::NoMem`] if the index or the lock
    /// cannot be allocated (nothing is left behind).
    ///
    /// Context: may sleep: allocates with [`AllocCtx::MaySleep`] and creates a lock, so no lock
    /// of the invalidation path may be held.
    pub(crate) fn new(start: u64, end: u64, slot_size: u64) -> Result<Self> {
        // A notifier clipped to the mirrored interval may start or end inside a slot: the index
        // covers the whole slots around it (its ranges stay inside the notifier anyway). A
        // last slot that would end at 2^64 is left out (the index cannot name its end).
        let mask = slot_size.wrapping_sub(1);
        let lo = start & !mask;
        let hi = end
            .checked_add(mask)
            .map_or(end & !mask, |e| e & !mask)
            .max(lo.saturating_add(slot_size));
        let index = RangeIndex::new(lo, hi, slot_size, AllocCtx::MaySleep)?;
        Ok(Notifier {
            start,
            end,
            seq: SeqCounter::new(),
            ranges: RwLock::new(&class::NOTIFIER, index)?,
            handle: None,
        })
    }
}

/// The notifiers of one `Svm`, sorted by start address (they never overlap), in a vector on
/// the host's allocator, with their starts in a parallel key array: lookup by address is a
/// binary search over the dense keys (8 bytes a notifier, so it stays in cache at thousands of
/// notifiers) and one access to the notifier found; an insertion moves the notifiers after it
/// (there are few: one per `notifier_size` bytes of the address space in use).
///
/// Kept under the notifier-array lock ([`class::NOTIFIERS`]), which the invalidation path
/// takes: nothing here allocates.
/// An insertion gets its capacity beforehand (see [`spare_for_insert`](Self::spare_for_insert)
/// and [`insert_within_capacity`](Self::insert_within_capacity)).
pub(crate) struct NotifierTree<H, L: Host> {
    v: HostVec<L, Notifier<H, L>>,
    /// `keys[i] == v[i].start`, always the same length as `v`.
    keys: HostVec<L, u64>,
}

/// Room for more notifiers, allocated before the notifier-array lock is taken (see
/// [`NotifierTree::spare_for_insert`]).
pub(crate) struct NotifierSpare<H, L: Host> {
    v: HostVec<L, Notifier<H, L>>,
    keys: HostVec<L, u64>,
}

impl<H, L: Host> Default for NotifierTree<H, L> {
    fn default() -> Self {
        NotifierTree {
            v: HostVec::<L, Notifier<H, L>>::default(),
            keys: HostVec::<L, u64>::default(),
        }
    }
}

impl<H, L: Host> NotifierTree<H, L> {
    /// The index of the notifier containing `addr`.
    #[inline]
    fn index_of(&self, addr: u64) -> Option<usize> {
        let i = self.keys.partition_point(|&k| k <= addr).checked_sub(1)?;
        self.v.get(i).filter(|n| addr < n.end).map(|_| i)
    }

    /// The notifier containing `addr`.
    #[inline]
    pub(crate) fn find(&self, addr: u64) -> Option<&Notifier<H, L>> {
        self.v.get(self.index_of(addr)?)
    }

    /// The notifier containing `addr`, mutably.
    pub(crate) fn find_mut(&mut self, addr: u64) -> Option<&mut Notifier<H, L>> {
        let i = self.index_of(addr)?;
        self.v.get_mut(i)
    }

    /// The index of the notifier that starts exactly at `start`.
    fn index_exact(&self, start: u64) -> Option<usize> {
        self.keys.binary_search(&start).ok()
    }

    /// The notifier that starts exactly at `start`.
    pub(crate) fn get(&self, start: u64) -> Option<&Notifier<H, L>> {
        self.v.get(self.index_exact(start)?)
    }

    /// The capacity an insertion needs and does not have: `Ok(None)` if one more notifier
    /// fits, else new, empty arrays with room for the notifiers and a few more, for
    /// [`insert_within_capacity`](Self::insert_within_capacity).
    ///
    /// `len` and `capacity` (see [`capacity`](Self::capacity)) are read under the
    /// notifier-array lock (shared); the arrays are allocated after releasing it. The caller
    /// holds the structure lock from the read to the insertion, so no other insertion can use
    /// up the room meanwhile (removals only make more).
    ///
    /// Errors: [`Error::NoMem`] if the allocator fails (nothing is kept).
    ///
    /// Context: allocates with `ctx` (call it without the notifier-array lock).
    pub(crate) fn spare_for_insert(
        len: usize,
        capacity: usize,
        ctx: AllocCtx,
    ) -> Result<Option<NotifierSpare<H, L>>> {
        if len < capacity {
            return Ok(None);
        }
        let want = len
            .checked_add(1)
            .ok_or(Error::NoMem)?
            .max(len.saturating_mul(2))
            .max(4);
        Ok(Some(NotifierSpare {
            v: HostVec::<L, Notifier<H, L>>::with_capacity(want, ctx)?,
            keys: HostVec::<L, u64>::with_capacity(want, ctx)?,
        }))
    }

    /// Insert `n` at its place without allocating: into the arrays' spare capacity, or, when
    /// they are full, after moving the notifiers into `spare` (which must have room for one
    /// more); the arrays left behind, empty, are then in `spare`, for the caller to drop once
    /// the notifier-array lock is released (freeing is not done under the lock either).
    ///
    /// Errors: [`Error::Invalid`] if `n` overlaps a notifier; [`Error::NoMem`] if neither the
    /// arrays nor `spare` have room. Nothing changes then (`n` is dropped).
    ///
    /// Context: allocates and frees nothing; called under the notifier-array lock (exclusive).
    pub(crate) fn insert_within_capacity(
        &mut self,
        n: Notifier<H, L>,
        spare: &mut Option<NotifierSpare<H, L>>,
    ) -> Result<()> {
        let i = self.keys.partition_point(|&k| k < n.start);
        let after_ok = self.v.get(i).is_none_or(|x| n.end <= x.start);
        let before_ok = i
            .checked_sub(1)
            .and_then(|j| self.v.get(j))
            .is_none_or(|x| x.end <= n.start);
        if n.start >= n.end || !after_ok || !before_ok {
            return Err(Error::Invalid);
        }
        if self.len() >= self.capacity() {
            let Some(new) = spare.as_mut() else {
                return Err(Error::NoMem);
            };
            let len = self.v.len();
            if new.v.capacity() <= len
                || new.keys.capacity() <= len
                || !new.v.is_empty()
                || !new.keys.is_empty()
            {
                return Err(Error::NoMem);
            }
            core::mem::swap(&mut self.v, &mut new.v);
            core::mem::swap(&mut self.keys, &mut new.keys);
            // `new` now holds the old, full arrays: move their contents over, last first, each
            // to the front (growth is rare and notifiers are few), leaving them empty.
            while let Some(x) = new.v.pop() {
                if let Err(x) = self.v.insert_within_capacity(0, x) {
                    // Unreachable: the capacity was checked above.
                    drop(x);
                }
            }
            while let Some(k) = new.keys.pop() {
                // Unreachable failure: the capacity was checked above.
                let _ = self.keys.insert_within_capacity(0, k);
            }
        }
        let start = n.start;
        self.v
            .insert_within_capacity(i, n)
            .map_err(|_| Error::NoMem)?;
        if self.keys.insert_within_capacity(i, start).is_err() {
            // Unreachable (the capacity was checked): undo, so that the arrays stay parallel.
            let _ = self.v.remove(i);
            return Err(Error::NoMem);
        }
        Ok(())
    }

    /// Take out the notifier that starts at `start`.
    ///
    /// Context: allocates and frees nothing (the notifier is returned).
    pub(crate) fn remove(&mut self, start: u64) -> Option<Notifier<H, L>> {
        let i = self.index_exact(start)?;
        let _ = self.keys.remove(i);
        self.v.remove(i)
    }

    /// The notifiers in address order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Notifier<H, L>> {
        self.v.iter()
    }

    /// Number of notifiers.
    pub(crate) fn len(&self) -> usize {
        self.v.len()
    }

    /// Room for notifiers without growing (the smaller of the two arrays').
    pub(crate) fn capacity(&self) -> usize {
        self.v.capacity().min(self.keys.capacity())
    }

    /// Take every notifier out (the vector with them; the key array keeps its capacity, so
    /// nothing is freed here).
    ///
    /// Context: allocates and frees nothing.
    pub(crate) fn take_all(&mut self) -> HostVec<L, Notifier<H, L>> {
        self.keys.clear();
        core::mem::take(&mut self.v)
    }
}

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use super::*;
    use crate::heap::AllocCtx;
    use crate::DefaultHost;

    type T = NotifierTree<u32, DefaultHost>;
    const S: u64 = 0x1000;

    /// A notifier with the given bounds (its index geometry does not matter here).
    fn n(start: u64, end: u64) -> Notifier<u32, DefaultHost> {
        let mut x = Notifier::new(0, S, S).unwrap();
        x.start = start;
        x.end = end;
        x
    }

    fn insert(t: &mut T, start: u64, end: u64) -> Result<()> {
        let mut spare = T::spare_for_insert(t.len(), t.capacity(), AllocCtx::MaySleep)?;
        t.insert_within_capacity(n(start, end), &mut spare)
    }

    #[test]
    fn find_insert_remove() {
        let mut t = T::default();
        assert!(t.find(0).is_none());
        // Out of order, so inserts land at the front, middle and back and the vector grows.
        for k in [5u64, 1, 9, 3, 7, 0, 2, 8, 6, 4] {
            insert(&mut t, k * S, (k + 1) * S).unwrap();
        }
        assert_eq!(t.len(), 10);
        let starts: std::vec::Vec<u64> = t.iter().map(|n| n.start).collect();
        assert_eq!(starts, (0..10).map(|k| k * S).collect::<std::vec::Vec<_>>());
        for k in 0..10u64 {
            assert_eq!(t.find(k * S + 7).map(|n| n.start), Some(k * S));
            assert_eq!(t.get(k * S).map(|n| n.end), Some((k + 1) * S));
            assert!(t.get(k * S + 1).is_none());
        }
        assert!(t.find(10 * S).is_none());
        // Overlaps and empty intervals are refused.
        assert_eq!(insert(&mut t, 3 * S, 4 * S), Err(Error::Invalid));
        assert_eq!(insert(&mut t, 9 * S + 1, 11 * S), Err(Error::Invalid));
        assert_eq!(insert(&mut t, 20 * S, 20 * S), Err(Error::Invalid));
        assert_eq!(t.remove(3 * S).map(|n| n.start), Some(3 * S));
        assert!(t.remove(3 * S).is_none());
        assert!(t.find(3 * S).is_none());
        assert_eq!(t.find(4 * S).map(|n| n.start), Some(4 * S));
        assert!(t.find_mut(3 * S + 5).is_none());
        t.find_mut(4 * S).unwrap().handle = Some(4);
        assert_eq!(t.get(4 * S).and_then(|n| n.handle), Some(4));
        let all = t.take_all();
        assert_eq!(all.len(), 9);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn insert_within_capacity_allocates_nothing_and_needs_room() {
        let mut t = T::default();
        // No capacity and no spare: refused, nothing changes.
        assert_eq!(
            t.insert_within_capacity(n(0, S), &mut None),
            Err(Error::NoMem)
        );
        assert_eq!(t.len(), 0);
        // A spare that is too small is refused too.
        let mut small = Some(NotifierSpare {
            v: HostVec::<DefaultHost, _>::default(),
            keys: HostVec::<DefaultHost, _>::default(),
        });
        assert_eq!(
            t.insert_within_capacity(n(0, S), &mut small),
            Err(Error::NoMem)
        );
        insert(&mut t, 0, S).unwrap();
        // Room left: no spare is prepared, and the insertion uses the spare capacity.
        let cap = t.capacity();
        assert!(cap > 1);
        assert!(T::spare_for_insert(t.len(), cap, AllocCtx::MaySleep)
            .unwrap()
            .is_none());
        t.insert_within_capacity(n(S, 2 * S), &mut None).unwrap();
        assert_eq!(t.capacity(), cap);
        // Full: the spare takes the notifiers over, the old buffer comes back empty.
        while t.len() < t.capacity() {
            let k = t.len() as u64;
            insert(&mut t, k * S, (k + 1) * S).unwrap();
        }
        let mut spare = T::spare_for_insert(t.len(), t.capacity(), AllocCtx::MaySleep).unwrap();
        let k = t.len() as u64;
        t.insert_within_capacity(n(k * S, (k + 1) * S), &mut spare)
            .unwrap();
        let old = spare.unwrap();
        assert!(old.v.is_empty() && old.v.capacity() == cap && old.keys.is_empty());
        assert!(t.capacity() > cap);
        let starts: std::vec::Vec<u64> = t.iter().map(|n| n.start).collect();
        assert_eq!(starts, (0..=k).map(|k| k * S).collect::<std::vec::Vec<_>>());
    }
}
