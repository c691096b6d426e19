//! Pagemaps (SPEC §6): the device memory of one device or tile, its allocations, and the CPU
//! fault path out of it.
//!
//! ```text
//!  Pagemap (id, owner) ── DeviceMemory (platform: alloc / release / copy / DMA)
//!     └── run index: device frame → HostArc<DevmemAlloc>  (one allocation per migrated range)
//!            page_free(dpfn) ──► DevmemAlloc::put_page ──► last page? ──► DeviceMemory::release
//! ```
//!
//! Locking: the run index (a sorted array of runs, binary-searched by frame) has its own spin
//! lock ([`PAGEMAP_RUNS`](crate::sync::class::PAGEMAP_RUNS)), never held across a call into the
//! platform and never held while allocating: the index grows by replacement (a bigger array is
//! allocated without the lock and swapped in under it). `page_free` may be called from the
//! platform's page-table code with its locks held: it takes only the run index lock, never
//! allocates, and calls only [`DeviceMemory::release`].

mod devmem;
mod owner;

pub use devmem::{DevmemAlloc, DevmemRun, PutPage};
pub use owner::{Interconnect, OwnerRegistry, PeerId};

use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::platform::{DeviceMemory, OwnerId, PagemapId};
use crate::sync::{class, AtomicUsize, Mutex, Ordering};
use crate::{DefaultHost, Host, HostArc, HostVec};

/// One entry of a pagemap's run index: a run of device frames of a live allocation.
struct RunEntry<L: Host> {
    /// First frame of the run.
    start: u64,
    /// Number of frames.
    len: u64,
    alloc: HostArc<L, DevmemAlloc<L>>,
}

impl<L: Host> Clone for RunEntry<L> {
    fn clone(&self) -> Self {
        RunEntry {
            start: self.start,
            len: self.len,
            alloc: self.alloc.clone(),
        }
    }
}

/// A pagemap's run index: the runs of every live allocation, sorted by first frame and
/// non-overlapping. Lookups by frame are binary searches (O(log n)); inserting and removing
/// never allocate (the caller makes room first, see [`Pagemap::track`]).
struct RunIndex<L: Host> {
    runs: HostVec<L, RunEntry<L>>,
}

impl<L: Host> RunIndex<L> {
    const fn new() -> Self {
        RunIndex {
            runs: HostVec::<L, RunEntry<L>>::new(),
        }
    }

    /// Number of runs.
    fn len(&self) -> usize {
        self.runs.len()
    }

    /// Runs that fit without allocating.
    fn room(&self) -> usize {
        self.runs.capacity().saturating_sub(self.runs.len())
    }

    /// Position of the first run starting at or after `dpfn`.
    fn position(&self, dpfn: u64) -> usize {
        self.runs.partition_point(|e| e.start < dpfn)
    }

    /// The allocation whose run holds `dpfn`.
    fn lookup(&self, dpfn: u64) -> Option<&HostArc<L, DevmemAlloc<L>>> {
        let k = self.runs.partition_point(|e| e.start <= dpfn);
        let e = self.runs.get(k.checked_sub(1)?)?;
        (dpfn.wrapping_sub(e.start) < e.len).then_some(&e.alloc)
    }

    /// Insert a run without allocating (a run starting at the same frame is replaced). Gives
    /// the entry back when there is no room.
    fn insert_within_capacity(&mut self, e: RunEntry<L>) -> core::result::Result<(), RunEntry<L>> {
        let k = self.position(e.start);
        if let Some(old) = self.runs.get_mut(k).filter(|o| o.start == e.start) {
            *old = e;
            return Ok(());
        }
        self.runs.insert_within_capacity(k, e)
    }

    /// Remove the run starting at `start` if it belongs to `a`; whether it did.
    fn remove(&mut self, start: u64, a: &HostArc<L, DevmemAlloc<L>>) -> bool {
        let k = self.position(start);
        let mine = self
            .runs
            .get(k)
            .is_some_and(|e| e.start == start && HostArc::<L, DevmemAlloc<L>>::ptr_eq(&e.alloc, a));
        mine && self.runs.remove(k).is_some()
    }

    /// Swap in `bigger` (empty, with room for every run plus `need` more) as the index's
    /// array. The entries are copied (their counts cloned); the old array, entries and all,
    /// is left in `bigger` for the caller to free after unlocking. Never allocates. Whether it
    /// swapped.
    fn replace_with(&mut self, bigger: &mut HostVec<L, RunEntry<L>>, need: usize) -> bool {
        let fits = self
            .runs
            .len()
            .checked_add(need)
            .is_some_and(|n| n <= bigger.capacity());
        if !fits || !bigger.is_empty() {
            return false;
        }
        // Never allocates: the capacity was checked just above (NoSleep: we hold a spinning
        // lock, should it ever have to).
        if bigger
            .extend_from_slice(&self.runs, AllocCtx::NoSleep)
            .is_err()
        {
            return false;
        }
        core::mem::swap(&mut self.runs, bigger);
        true
    }

    /// Every allocation once (the entry of its first run), appended to `out` without
    /// allocating. `false` (and `out` cleared) if `out` lacks room.
    fn collect_within_capacity(&self, out: &mut HostVec<L, HostArc<L, DevmemAlloc<L>>>) -> bool {
        out.clear();
        for e in self.runs.iter() {
            if e.alloc.runs().first().is_some_and(|r| r.dpfn == e.start)
                && out.push_within_capacity(e.alloc.clone()).is_err()
            {
                out.clear();
                return false;
            }
        }
        true
    }
}

/// The device memory of one device (or tile): allocations, their lifetime, and migration out
/// of it on CPU faults. Shared as `HostArc<L, Pagemap<M, L>>` (on the host's allocator); the
/// count is the pagemap's refcount.
pub struct Pagemap<M: DeviceMemory, L: Host = DefaultHost> {
    id: PagemapId,
    owner: OwnerId,
    pub(crate) mem: M,
    /// Every run of every live allocation, sorted by first frame.
    runs: Mutex<L, RunIndex<L>>,
    live_allocs: AtomicUsize,
    released: AtomicUsize,
    stray_frees: AtomicUsize,
    pub(crate) cpu_migrations: AtomicUsize,
    pub(crate) cpu_bytes: AtomicUsize,
}

impl<M: DeviceMemory, L: Host> core::fmt::Debug for Pagemap<M, L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pagemap")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("live_allocs", &self.live_allocations())
            .finish_non_exhaustive()
    }
}

impl<M: DeviceMemory, L: Host> Pagemap<M, L> {
    /// A pagemap `id` of owner `owner` over the device memory `mem`, in a new shared
    /// allocation on the host's allocator.
    ///
    /// Errors: [`Error::NoMem`] when the allocator fails or the host cannot create the
    /// run-index lock (`mem` is dropped).
    ///
    /// Context: may sleep; creates the run-index lock and allocates the pagemap with
    /// [`AllocCtx::MaySleep`] (its run index is allocated later, when migrations track
    /// allocations); takes no lock.
    pub fn new(id: PagemapId, owner: OwnerId, mem: M) -> Result<HostArc<L, Self>> {
        HostArc::<L, Self>::try_new(
            Pagemap {
                id,
                owner,
                mem,
                runs: Mutex::new(&class::PAGEMAP_RUNS, RunIndex::new())?,
                live_allocs: AtomicUsize::new(0),
                released: AtomicUsize::new(0),
                stray_frees: AtomicUsize::new(0),
                cpu_migrations: AtomicUsize::new(0),
                cpu_bytes: AtomicUsize::new(0),
            },
            AllocCtx::MaySleep,
        )
    }

    /// Its id.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn id(&self) -> PagemapId {
        self.id
    }
    /// Its owner.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn owner(&self) -> OwnerId {
        self.owner
    }
    /// The device memory.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn mem(&self) -> &M {
        &self.mem
    }
    /// Number of live allocations.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn live_allocations(&self) -> usize {
        self.live_allocs.load(Ordering::Acquire)
    }
    /// Number of allocations released so far.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn released_allocations(&self) -> usize {
        self.released.load(Ordering::Acquire)
    }
    /// Migrations back to RAM caused by CPU faults, and the bytes they copied.
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn cpu_fault_migrations(&self) -> (usize, usize) {
        (
            self.cpu_migrations.load(Ordering::Relaxed),
            self.cpu_bytes.load(Ordering::Relaxed),
        )
    }

    /// `page_free` calls for frames of no live allocation (a platform bug; ignored).
    ///
    /// Context: any; never sleeps or allocates; takes no lock.
    pub fn stray_frees(&self) -> usize {
        self.stray_frees.load(Ordering::Acquire)
    }

    /// The allocation holding `dpfn`, if live (a binary search of the run index, O(log n)).
    ///
    /// Context: any (also atomic context); never sleeps or allocates; takes the run index
    /// lock (spinning).
    pub fn alloc_of(&self, dpfn: u64) -> Option<HostArc<L, DevmemAlloc<L>>> {
        self.runs.lock().lookup(dpfn).cloned()
    }

    /// Every live allocation (each once), in the order of their lowest frame.
    ///
    /// Errors: [`Error::NoMem`] when the array cannot be allocated.
    ///
    /// Context: may sleep; allocates the array with [`AllocCtx::MaySleep`] without holding
    /// any lock, then fills it under the run index lock (spinning); retries the allocation if
    /// allocations were tracked meanwhile.
    pub fn allocations(&self) -> Result<HostVec<L, HostArc<L, DevmemAlloc<L>>>> {
        let mut out = HostVec::<L, HostArc<L, DevmemAlloc<L>>>::new();
        let mut want = self.runs.lock().len();
        loop {
            out.reserve_exact(want, AllocCtx::MaySleep)?;
            let runs = self.runs.lock();
            if runs.collect_within_capacity(&mut out) {
                return Ok(out);
            }
            want = runs.len();
        }
    }

    /// Track a new allocation (its pages are all live): its runs enter the run index.
    ///
    /// The index grows by replacement, so that nothing is allocated under its spinning lock:
    /// when it lacks room, a bigger array is allocated without the lock
    /// ([`AllocCtx::MaySleep`]), swapped in under the lock if still needed, and the old one
    /// freed after unlocking. (Allocating under the lock with [`AllocCtx::NoSleep`] would
    /// make a migration fail whenever the allocator cannot serve an atomic request, although
    /// the caller may sleep.)
    ///
    /// Errors: [`Error::NoMem`] when the index cannot grow; nothing changed then.
    ///
    /// Context: may sleep (allocation without a lock held); takes the run index lock
    /// (spinning) one or more times.
    pub(crate) fn track(&self, a: &HostArc<L, DevmemAlloc<L>>) -> Result<()> {
        let need = a.runs().len();
        let mut spare = HostVec::<L, RunEntry<L>>::new();
        loop {
            let want = {
                let mut runs = self.runs.lock();
                if runs.room() < need {
                    runs.replace_with(&mut spare, need);
                }
                if runs.room() >= need {
                    for r in a.runs() {
                        // Cannot fail: the room was checked just above.
                        let _ = runs.insert_within_capacity(RunEntry {
                            start: r.dpfn,
                            len: r.len,
                            alloc: a.clone(),
                        });
                    }
                    self.live_allocs.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                let len = runs.len();
                len.checked_add(need)
                    .ok_or(Error::NoMem)?
                    .max(len.saturating_mul(2))
                    .max(8)
            };
            // Unlocked: free what the last round left over, allocate the bigger array.
            spare = HostVec::<L, RunEntry<L>>::new();
            spare.reserve_exact(want, AllocCtx::MaySleep)?;
        }
        // `spare` (the old array if it was replaced) is freed here, after unlocking.
        drop(spare);
        Ok(())
    }

    /// The platform calls this when the device page `dpfn` is freed (its CPU mapping went away:
    /// migrated to another place, unmapped, or the process exited). When the last page of an
    /// allocation goes, the allocation is released with [`DeviceMemory::release`] — exactly
    /// once. A frame of no live allocation, or a page freed twice, is ignored (and counted in
    /// [`stray_frees`](Self::stray_frees)).
    ///
    /// Errors: none (strays are counted).
    ///
    /// Context: any (Linux may call it in atomic context); never sleeps or allocates; takes
    /// the run index lock (spinning), released before [`DeviceMemory::release`] is called.
    pub fn page_free(&self, dpfn: u64) {
        self.pages_free(core::slice::from_ref(&dpfn));
    }

    /// [`page_free`](Self::page_free) for a batch of device pages (a migration's sources): the
    /// allocation of a run of pages is looked up once (one run-index lock, not one per page),
    /// its live count drops once per run, and an allocation whose last page goes is released
    /// once, as with single frees.
    ///
    /// Errors: none (strays are counted).
    ///
    /// Context: as [`page_free`](Self::page_free): any, never sleeps or allocates; takes the
    /// run index lock (spinning) once per allocation met, released before
    /// [`DeviceMemory::release`] is called.
    pub fn pages_free(&self, dpfns: &[u64]) {
        let mut cur: Option<HostArc<L, DevmemAlloc<L>>> = None;
        let mut pending = 0usize;
        for &dpfn in dpfns {
            let hit = cur.as_ref().is_some_and(|a| a.index_of(dpfn).is_some());
            if !hit {
                if let Some(a) = cur.take() {
                    self.drop_pages(&a, pending);
                }
                pending = 0;
                cur = self.alloc_of(dpfn);
            }
            let Some(a) = cur.as_ref() else {
                self.stray_frees.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match a.mark_gone(dpfn) {
                PutPage::Freed => pending = pending.saturating_add(1),
                _ => {
                    self.stray_frees.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(a) = cur {
            self.drop_pages(&a, pending);
        }
    }

    /// Drop `n` pages marked gone from `a`'s live count; release `a` if they were its last.
    fn drop_pages(&self, a: &HostArc<L, DevmemAlloc<L>>, n: usize) {
        if a.drop_live(n) != PutPage::Last {
            return;
        }
        {
            let mut runs = self.runs.lock();
            for r in a.runs() {
                // The entries' counts drop under the lock; `a` keeps the allocation.
                runs.remove(r.dpfn, a);
            }
        }
        self.live_allocs.fetch_sub(1, Ordering::AcqRel);
        self.released.fetch_add(1, Ordering::AcqRel);
        self.mem.release(a.dpfns());
    }
}

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use super::*;
    use crate::platform::NoDeviceMemory;

    fn alloc_on<L: Host>(frames: &[u64]) -> HostArc<L, DevmemAlloc<L>> {
        let mut v = HostVec::<L, u64>::new();
        v.extend_from_slice(frames, AllocCtx::MaySleep).unwrap();
        let a = DevmemAlloc::<L>::new(PagemapId(1), 0, 0x10_0000, v).unwrap();
        HostArc::<L, DevmemAlloc<L>>::try_new(a, AllocCtx::MaySleep).unwrap()
    }

    fn pagemap_on<L: Host>() -> HostArc<L, Pagemap<NoDeviceMemory, L>> {
        Pagemap::new(PagemapId(1), OwnerId(1), NoDeviceMemory).unwrap()
    }

    /// The index is sorted, non-overlapping, and every run points at an allocation holding it.
    fn check_index<L: Host>(pm: &Pagemap<NoDeviceMemory, L>) {
        let runs = pm.runs.lock();
        let mut prev_end = 0u64;
        for e in runs.runs.iter() {
            assert!(e.start >= prev_end, "runs overlap or are unsorted");
            prev_end = e.start + e.len;
            assert!(e.alloc.index_of(e.start).is_some());
        }
    }

    fn same<L: Host>(a: &HostArc<L, DevmemAlloc<L>>, b: &HostArc<L, DevmemAlloc<L>>) -> bool {
        HostArc::<L, DevmemAlloc<L>>::ptr_eq(a, b)
    }

    #[test]
    fn run_index_insert_lookup_remove() {
        let pm = pagemap_on::<DefaultHost>();
        let a = alloc_on::<DefaultHost>(&[10, 11, 12, 40, 41]);
        let b = alloc_on::<DefaultHost>(&[13, 14, 15, 100]);
        let c = alloc_on::<DefaultHost>(&[5]);
        for x in [&a, &b, &c] {
            pm.track(x).unwrap();
        }
        check_index(&pm);
        assert_eq!(pm.runs.lock().len(), 5);
        assert_eq!(pm.live_allocations(), 3);
        for (f, want) in [
            (10, &a),
            (12, &a),
            (41, &a),
            (13, &b),
            (15, &b),
            (100, &b),
            (5, &c),
        ] {
            assert!(same(&pm.alloc_of(f).unwrap(), want), "frame {f}");
        }
        for f in [0, 4, 6, 9, 16, 39, 42, 99, 101, u64::MAX] {
            assert!(pm.alloc_of(f).is_none(), "frame {f}");
        }
        let all = pm.allocations().unwrap();
        assert_eq!(all.len(), 3, "each allocation once");
        assert!(same(&all[0], &c) && same(&all[1], &a) && same(&all[2], &b));
        // The last page of `b` releases it: its runs leave the index, the others stay.
        for f in [13, 14, 15] {
            pm.page_free(f);
            assert!(pm.alloc_of(100).is_some());
        }
        pm.page_free(100);
        assert_eq!(pm.released_allocations(), 1);
        assert_eq!(pm.live_allocations(), 2);
        assert_eq!(pm.runs.lock().len(), 3);
        assert!(pm.alloc_of(14).is_none() && pm.alloc_of(100).is_none());
        assert!(same(&pm.alloc_of(11).unwrap(), &a));
        pm.page_free(14);
        assert_eq!(pm.stray_frees(), 1);
        check_index(&pm);
    }

    /// A batch of frees over several allocations, with strays and a double free inside,
    /// ends as the same frees one at a time: each allocation whose pages all went is released
    /// once, the others stay, strays are counted.
    #[test]
    fn pages_free_batches_like_single_frees() {
        let run = |batch: bool| {
            let pm = pagemap_on::<DefaultHost>();
            let a = alloc_on::<DefaultHost>(&[10, 11, 12, 40, 41]);
            let b = alloc_on::<DefaultHost>(&[13, 14, 15, 100]);
            let c = alloc_on::<DefaultHost>(&[5, 6]);
            for x in [&a, &b, &c] {
                pm.track(x).unwrap();
            }
            // All of b (out of order, with a repeat), part of a, a stray, one page of c.
            let frees = [13, 14, 999, 10, 11, 15, 14, 100, 5, 40];
            if batch {
                pm.pages_free(&frees);
            } else {
                for f in frees {
                    pm.page_free(f);
                }
            }
            check_index(&pm);
            let state = (
                pm.released_allocations(),
                pm.live_allocations(),
                pm.stray_frees(),
                pm.alloc_of(12).is_some(),
                pm.alloc_of(100).is_some(),
                pm.alloc_of(6).is_some(),
            );
            // The rest of a and c go in one batch: both released.
            pm.pages_free(&[12, 41, 6]);
            (state, pm.released_allocations(), pm.live_allocations())
        };
        let single = run(false);
        assert_eq!(single, ((1, 2, 2, true, false, true), 3, 0));
        assert_eq!(run(true), single);
    }

    #[test]
    fn run_index_grows_in_any_order() {
        let pm = pagemap_on::<DefaultHost>();
        let n: u64 = if cfg!(miri) { 40 } else { 200 };
        let mut frames: std::vec::Vec<u64> = (0..n).map(|i| i * 3).collect();
        // A fixed shuffle.
        let mut seed = 7u64;
        for i in (1..frames.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            frames.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let allocs: std::vec::Vec<_> = frames
            .iter()
            .map(|&f| {
                let a = alloc_on::<DefaultHost>(&[f, f + 1]);
                pm.track(&a).unwrap();
                a
            })
            .collect();
        check_index(&pm);
        for (f, a) in frames.iter().zip(&allocs) {
            assert!(same(&pm.alloc_of(*f + 1).unwrap(), a));
            assert!(pm.alloc_of(*f + 2).is_none());
        }
        assert_eq!(pm.allocations().unwrap().len() as u64, n);
    }

    /// A failed allocation while growing the index leaves it as it was (the simulator's
    /// allocator fails on request).
    #[cfg(feature = "sim")]
    #[test]
    fn run_index_nomem_changes_nothing() {
        use crate::sim::{SimAlloc, SimHost};
        let pm = pagemap_on::<SimHost>();
        let mut held = std::vec::Vec::new();
        let mut f = 0u64;
        // Fill the index to its capacity.
        loop {
            let a = alloc_on::<SimHost>(&[f]);
            pm.track(&a).unwrap();
            held.push(a);
            f += 2;
            if pm.runs.lock().room() == 0 {
                break;
            }
        }
        let n = pm.runs.lock().len();
        let extra = alloc_on::<SimHost>(&[f, f + 5]);
        SimAlloc::fail_next(1);
        assert_eq!(pm.track(&extra), Err(Error::NoMem));
        SimAlloc::stop_failing();
        assert_eq!(pm.runs.lock().len(), n);
        assert_eq!(pm.live_allocations(), n);
        assert!(pm.alloc_of(f).is_none() && pm.alloc_of(f + 5).is_none());
        assert!(same(&pm.alloc_of(0).unwrap(), &held[0]));
        SimAlloc::fail_next(1);
        assert_eq!(pm.allocations().err(), Some(Error::NoMem));
        SimAlloc::stop_failing();
        pm.track(&extra).unwrap();
        assert!(same(&pm.alloc_of(f + 5).unwrap(), &extra));
        check_index(&pm);
    }
}
