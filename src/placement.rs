//! Where a device may place memory: the set of pagemaps an [`Svm`](crate::Svm) knows (its own
//! and its peers'), sorted by id, grown without its lock held.
//!
//! The placement *steps* (migrate a range in, evict it, make room, the fault service's
//! placement) are methods of [`Svm`](crate::Svm) and live in the top layer, `src/svm/placement.rs`.

use crate::heap::AllocCtx;
use crate::pagemap::Pagemap;
use crate::platform::{DeviceMemory, PagemapId};
use crate::{Host, HostArc, HostVec};

/// A shared pagemap on its host's allocator.
pub(crate) type PagemapArc<M, L> = HostArc<L, Pagemap<M, L>>;
/// An array of shared pagemaps on their host's allocator.
pub(crate) type PagemapVec<M, L> = HostVec<L, PagemapArc<M, L>>;

/// The pagemaps an [`Svm`] knows: its own and its peers', under the
/// [`PAGEMAPS`](crate::sync::class::PAGEMAPS) lock.
///
/// `all` is sorted by id (ids unique), looked up by binary search. That lock is taken (shared)
/// under the notifier lock, so nothing is allocated while it is held: the array grows by
/// replacement ([`Svm::grow_pagemaps`]: a bigger one is allocated without the lock and swapped
/// in under it), and inserting never allocates.
pub(crate) struct PagemapSet<M: DeviceMemory, L: Host> {
    pub(crate) local: Option<PagemapArc<M, L>>,
    all: PagemapVec<M, L>,
}

impl<M: DeviceMemory, L: Host> Default for PagemapSet<M, L> {
    fn default() -> Self {
        PagemapSet {
            local: None,
            all: HostVec::<L, PagemapArc<M, L>>::new(),
        }
    }
}

impl<M: DeviceMemory, L: Host> PagemapSet<M, L> {
    /// Where `id` is (`Ok`) or would go (`Err`).
    fn search(&self, id: PagemapId) -> core::result::Result<usize, usize> {
        self.all.binary_search_by(|p| p.id().cmp(&id))
    }

    /// The attached pagemap `id` (O(log n)).
    pub(crate) fn get(&self, id: PagemapId) -> Option<&PagemapArc<M, L>> {
        self.search(id).ok().and_then(|k| self.all.get(k))
    }

    /// Number of attached pagemaps.
    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    /// The attached pagemaps, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &PagemapArc<M, L>> {
        self.all.iter()
    }

    /// Pagemaps that can be inserted without allocating.
    pub(crate) fn room(&self) -> usize {
        self.all.capacity().saturating_sub(self.all.len())
    }

    /// Insert `pm` without allocating, replacing a pagemap of the same id (returned, for the
    /// caller to drop after unlocking); gives `pm` back when there is no room.
    pub(crate) fn insert_within_capacity(
        &mut self,
        pm: PagemapArc<M, L>,
    ) -> core::result::Result<Option<PagemapArc<M, L>>, PagemapArc<M, L>> {
        match self.search(pm.id()) {
            Ok(k) => match self.all.get_mut(k) {
                Some(slot) => Ok(Some(core::mem::replace(slot, pm))),
                None => Err(pm),
            },
            Err(k) => self.all.insert_within_capacity(k, pm).map(|()| None),
        }
    }

    /// Remove the pagemap `id`.
    pub(crate) fn remove(&mut self, id: PagemapId) -> Option<PagemapArc<M, L>> {
        let k = self.search(id).ok()?;
        self.all.remove(k)
    }

    /// Swap in `bigger` (empty, with room for every pagemap plus `need` more); the old array
    /// is left in `bigger`, to be freed after unlocking. Never allocates. Whether it swapped.
    pub(crate) fn replace_with(&mut self, bigger: &mut PagemapVec<M, L>, need: usize) -> bool {
        let fits = self
            .all
            .len()
            .checked_add(need)
            .is_some_and(|n| n <= bigger.capacity());
        // `extend_from_slice` cannot allocate here (room checked); NoSleep should it ever.
        if !fits
            || !bigger.is_empty()
            || bigger
                .extend_from_slice(&self.all, AllocCtx::NoSleep)
                .is_err()
        {
            return false;
        }
        core::mem::swap(&mut self.all, bigger);
        true
    }
}
