//! The [`Svm`] instance: one device mirroring one CPU address space (SPEC §1, §2, §3, §4).

mod attrs;
mod fault;
mod gc;
mod placement;

use crate::error::{Error, Result};
pub(crate) use crate::types::{Event, Window};
use crate::heap::AllocCtx;
use crate::pages::{get_pages_loop, Commit, PageEntry, PagesCtx, RetryPolicy};
use crate::placement::PagemapSet;
use crate::platform::{
    AddressSpace, CollectRequest, CpuPage, DevicePageTable, NotifierId, OwnerId, Platform,
    PAGE_SIZE,
};
use crate::policy::{AttrStore, PolicyConfig};
use crate::range::{
    check_chunk_sizes, gc_push, gc_queue, select_chunk, ChunkQuery, GcQueue, Notifier,
    NotifierTree, Range, RangeArc, RangeFlags,
};
use crate::stats::{Stats, StatsSnapshot};
use crate::sync::{class, AtomicBool, Mutex, Ordering, RwLock};
use crate::HostVec;

/// Largest number of chunk sizes an [`SvmConfig`] holds.
pub const MAX_CHUNK_SIZES: usize = 8;

/// Configuration of an [`Svm`] (SPEC §1). Build it with [`SvmConfig::new`] and adjust fields;
/// [`Svm::new`] validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvmConfig {
    /// Start of the mirrored interval (page aligned).
    pub mm_start: u64,
    /// Length of the mirrored interval (page aligned, non-zero, not overflowing).
    pub mm_range: u64,
    /// Size of one notifier: a power of two, at least the largest chunk size [512 MiB].
    pub notifier_size: u64,
    /// Chunk sizes for new ranges, strictly descending powers of two, the last one `PAGE_SIZE`
    /// [2 MiB, 64 KiB, 4 KiB].
    pub chunk_sizes: heapless::Vec<u64, MAX_CHUNK_SIZES>,
    /// Candidate chunks larger than a page and at most this size need all their CPU pages
    /// present [64 KiB].
    pub check_pages_threshold: u64,
    /// Retry budget of page collections raced by invalidations.
    pub retry: RetryPolicy,
    /// The owner (interconnect group) of this device: device-private pages of this owner are
    /// used in place. `None` until the device joins an owner.
    pub owner: Option<OwnerId>,
    /// Place faulting ranges in this device's memory when it has a pagemap (the plain
    /// "prefer device memory" switch; the policy engine refines it) [false].
    pub prefer_devmem: bool,
    /// Minimum residency in device memory after a migration caused by an atomic fault, before
    /// a CPU fault may pull the pages back [5 ms].
    pub atomic_timeslice_ns: u64,
    /// In device → device migrations, the source's copy engine copies (else the target's)
    /// [false].
    pub source_peer_migrates: bool,
    /// Pages already in the target pagemap may be migrated again instead of making a
    /// partly-resident range fail with `Busy` [false].
    pub can_migrate_same_pagemap: bool,
    /// Thresholds and budgets of the policy engine.
    pub policy: PolicyConfig,
}

/// 2 MiB.
const SZ_2M: u64 = 2 << 20;
/// 64 KiB.
const SZ_64K: u64 = 64 << 10;

impl SvmConfig {
    /// A configuration with the SPEC defaults for the interval `[mm_start, mm_start+mm_range)`.
    ///
    /// ```
    /// let c = gpusvm::SvmConfig::new(0, 1 << 47);
    /// assert_eq!(c.notifier_size, 512 << 20);
    /// assert_eq!(&c.chunk_sizes[..], &[2 << 20, 64 << 10, 4096]);
    /// ```
    ///
    /// Context: any; allocates nothing.
    pub fn new(mm_start: u64, mm_range: u64) -> Self {
        let mut chunk_sizes = heapless::Vec::new();
        for s in [SZ_2M, SZ_64K, PAGE_SIZE] {
            // Capacity 8 > 3: cannot fail.
            let _ = chunk_sizes.push(s);
        }
        SvmConfig {
            mm_start,
            mm_range,
            notifier_size: 512 << 20,
            chunk_sizes,
            check_pages_threshold: SZ_64K,
            retry: RetryPolicy::default(),
            owner: None,
            prefer_devmem: false,
            atomic_timeslice_ns: 5_000_000,
            source_peer_migrates: false,
            can_migrate_same_pagemap: false,
            policy: PolicyConfig::default(),
        }
    }

    /// Replace the chunk sizes. Errors: [`Error::Invalid`] if more than [`MAX_CHUNK_SIZES`].
    ///
    /// Context: any; allocates nothing (the list is inline).
    pub fn with_chunk_sizes(mut self, sizes: &[u64]) -> Result<Self> {
        self.chunk_sizes = heapless::Vec::from_slice(sizes).map_err(|_| Error::Invalid)?;
        Ok(self)
    }

    /// End of the mirrored interval (exclusive).
    ///
    /// Context: any; allocates nothing.
    pub fn mm_end(&self) -> u64 {
        self.mm_start.saturating_add(self.mm_range)
    }

    /// Check the configuration. Errors: [`Error::Invalid`] for a misaligned, empty or
    /// overflowing interval, a malformed chunk list (empty, unsorted, not powers of two, not
    /// ending with `PAGE_SIZE`), or a notifier size that is not a power of two or is smaller
    /// than the largest chunk.
    ///
    /// Context: any; allocates nothing.
    pub fn validate(&self) -> Result<()> {
        let bad = self.mm_range == 0
            || self.mm_start % PAGE_SIZE != 0
            || self.mm_range % PAGE_SIZE != 0
            || self.mm_start.checked_add(self.mm_range).is_none();
        if bad {
            return Err(Error::Invalid);
        }
        check_chunk_sizes(&self.chunk_sizes)?;
        let Some(&first) = self.chunk_sizes.first() else {
            return Err(Error::Invalid);
        };
        if !self.notifier_size.is_power_of_two() || self.notifier_size < first {
            return Err(Error::Invalid);
        }
        Ok(())
    }
}

type Handle<P> = <<P as Platform>::Mm as AddressSpace>::NotifierHandle;

/// One device mirroring one CPU address space.
///
/// ```text
///  driver fault ──► handle_fault ──► gc_run ─► find_or_insert ─► get_pages ─► bind (driver)
///  CPU change  ──► invalidate_begin (zap, unmap DMA, queue GC) ... invalidate_end
/// ```
///
/// Host, outermost first: the structure lock (range creation/removal), the notifier lock
/// (shared: lookups, commit, bind; exclusive: invalidation, insertion, removal), the GC queue
/// lock, a range's page-state lock. Their types come from the platform's lock facet
/// ([`Platform::Host`]); [`sync`](crate::sync) has the full table. None is held across a call
/// into the platform's [`AddressSpace`] methods.
pub struct Svm<P: Platform> {
    platform: P,
    config: SvmConfig,
    structure: Mutex<P::Host, ()>,
    notifiers: RwLock<P::Host, NotifierTree<Handle<P>, P::Host>>,
    pub(crate) gc: Mutex<P::Host, GcQueue<P::Host>>,
    closed: AtomicBool,
    pub(crate) stats: Stats,
    /// This device's own device memory and the peers' it may meet.
    pub(crate) pagemaps: RwLock<P::Host, PagemapSet<P::Mem, P::Host>>,
    /// The owner set explicitly (after joining an owner registry).
    pub(crate) owner: RwLock<P::Host, Option<OwnerId>>,
    /// Policy attributes per address interval.
    pub(crate) attrs: RwLock<P::Host, AttrStore<P::Host>>,
}

impl<P: Platform> core::fmt::Debug for Svm<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Svm")
            .field("config", &self.config)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<P: Platform> Svm<P> {
    /// Create an instance. Errors: [`Error::Invalid`] if the configuration is bad
    /// (see [`SvmConfig::validate`]); [`Error::NoMem`] if the host cannot create one of the
    /// instance's locks (nothing is left behind).
    ///
    /// Context: may sleep if the host allocates its lock objects (see
    /// [`RawMutex::new`](crate::sync::RawMutex::new)); takes no lock; allocates nothing else
    /// (every container starts empty and grows on first use).
    pub fn new(platform: P, config: SvmConfig) -> Result<Self> {
        config.validate()?;
        Ok(Svm {
            platform,
            config,
            structure: Mutex::new(&class::STRUCTURE, ())?,
            notifiers: RwLock::new(&class::NOTIFIER, NotifierTree::default())?,
            gc: Mutex::new(&class::GC_QUEUE, gc_queue())?,
            closed: AtomicBool::new(false),
            stats: Stats::default(),
            pagemaps: RwLock::new(&class::PAGEMAPS, PagemapSet::default())?,
            owner: RwLock::new(&class::OWNER, None)?,
            attrs: RwLock::new(&class::ATTRS, AttrStore::new())?,
        })
    }

    /// The platform.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The configuration.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn config(&self) -> &SvmConfig {
        &self.config
    }

    /// A snapshot of the counters.
    ///
    /// Context: any; takes no lock (atomic loads), allocates nothing.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Whether [`close`](Self::close) was called.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn in_mm(&self, addr: u64) -> bool {
        self.config.mm_start <= addr && addr < self.config.mm_end()
    }

    /// The range containing `addr`, if any, as a new reference.
    ///
    /// Context: may sleep if the host's notifier lock does (takes it shared); allocates
    /// nothing.
    pub fn find(&self, addr: u64) -> Option<RangeArc<P::Host>> {
        let t = self.notifiers.read();
        t.find(addr).and_then(|n| n.ranges.find_arc(addr))
    }

    /// Call `f` for every notifier interval and every range in it, in address order, under the
    /// notifier lock (shared). For diagnostics and invariant checkers; `f` must not call back
    /// into this `Svm`.
    ///
    /// Context: takes the notifier lock shared (may sleep if the host's lock does) and calls
    /// `f` under it; allocates nothing.
    pub fn for_each_range(&self, mut f: impl FnMut((u64, u64), &Range<P::Host>)) {
        let t = self.notifiers.read();
        for n in t.iter() {
            for r in n.ranges.iter() {
                f((n.start, n.end), r);
            }
        }
    }

    /// A new reference to the first range (in address order) overlapping `[from, end)`, found
    /// under one shared hold of the notifier lock. Callers walk an interval with it, moving
    /// `from` to the end of each range returned: no list is built, so nothing is allocated, and
    /// no lookup runs inside [`for_each_range`](Self::for_each_range) (which would take the
    /// lock recursively: with a writer waiting between the two, a writer-preferring lock
    /// deadlocks).
    ///
    /// Context: takes the notifier lock shared; allocates nothing.
    pub(crate) fn first_overlapping(&self, from: u64, end: u64) -> Option<RangeArc<P::Host>> {
        let t = self.notifiers.read();
        let first = t
            .iter()
            .filter(|n| n.start < end && from < n.end)
            .find_map(|n| n.ranges.overlapping(from, end).peek_arc());
        first
    }

    /// Number of notifiers and ranges.
    ///
    /// Context: takes the notifier lock shared; allocates nothing.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.notifiers.read();
        let ranges = t
            .iter()
            .map(|n| n.ranges.len())
            .fold(0usize, usize::saturating_add);
        (t.len(), ranges)
    }

    /// The notifier interval for `addr`: the notifier-size-aligned block, clipped to the
    /// mirrored interval.
    fn notifier_interval(&self, addr: u64) -> (u64, u64) {
        let size = self.config.notifier_size;
        let start = addr & !size.wrapping_sub(1);
        let end = start.saturating_add(size);
        (
            start.max(self.config.mm_start),
            end.min(self.config.mm_end()),
        )
    }

    /// A snapshot of the CPU pages of `[start, end)`: nothing is faulted in or invalidated
    /// (Linux: `hmm_range_fault` without `HMM_PFN_REQ_FAULT`). `None` if the interval is empty
    /// or too large, memory runs out, or the platform fails.
    ///
    /// Context: may sleep (the platform's `collect_pages`); allocates the page array with
    /// [`AllocCtx::MaySleep`]: call it without any crate lock held.
    pub(crate) fn snapshot(
        &self,
        start: u64,
        end: u64,
        owner: Option<OwnerId>,
    ) -> Option<HostVec<P::Host, CpuPage>> {
        self.try_snapshot(start, end, owner).ok().flatten()
    }

    /// [`snapshot`](Self::snapshot), telling a failed allocation apart: `Err(NoMem)` when the
    /// page array cannot be allocated, `Ok(None)` when the interval is empty or too large or
    /// the platform fails.
    ///
    /// Context: as [`snapshot`](Self::snapshot).
    fn try_snapshot(
        &self,
        start: u64,
        end: u64,
        owner: Option<OwnerId>,
    ) -> Result<Option<HostVec<P::Host, CpuPage>>> {
        let Some(n) = usize::try_from(end.saturating_sub(start) / PAGE_SIZE)
            .ok()
            .filter(|&n| n > 0)
        else {
            return Ok(None);
        };
        let mut pages = HostVec::<P::Host, CpuPage>::new();
        pages.reserve_exact(n, AllocCtx::MaySleep)?;
        pages.resize(n, CpuPage::Absent, AllocCtx::MaySleep)?;
        let req = CollectRequest {
            start,
            end,
            fault: false,
            write: false,
            owner,
        };
        Ok(self
            .platform
            .mm()
            .collect_pages(&req, &mut pages)
            .ok()
            .map(|()| pages))
    }

    /// Whether every CPU page of `[start, end)` is present (snapshot, no faulting); device pages
    /// count only if they belong to `owner`. `Ok(false)` if the platform cannot tell.
    ///
    /// Errors: [`Error::NoMem`] (the snapshot's page array).
    ///
    /// Context: as [`snapshot`](Self::snapshot).
    fn all_present(&self, start: u64, end: u64, owner: Option<OwnerId>) -> Result<bool> {
        let Some(pages) = self.try_snapshot(start, end, owner)? else {
            return Ok(false);
        };
        Ok(pages.iter().all(|p| match *p {
            CpuPage::Absent => false,
            CpuPage::System { .. } => true,
            CpuPage::Device { owner: o, .. } => Some(o) == owner,
        }))
    }

    /// Return the range containing `addr`, or create one (SPEC §2).
    ///
    /// The new range is chosen by [`select_chunk`](crate::range::select_chunk) from the VMA at
    /// `addr`, its notifier (registered with the platform on first use), `window` narrowed to
    /// the interval of equal policy attributes around `addr`
    /// ([`AttrStore::extent`](crate::policy::AttrStore::extent)), and the existing ranges.
    /// Takes the structure lock, then the notifier lock briefly.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] if `addr` is outside the mirrored interval
    /// or the window, or the window is empty, or no chunk fits; [`Error::Fault`] if no VMA
    /// contains `addr`; [`Error::Busy`] if invalidations of the notifier keep racing the
    /// insertion (`config.retry.max_attempts` times); [`Error::NoMem`] if the host's allocator
    /// fails (the range, a page snapshot, or the notifier array); errors of
    /// `register_notifier`. On error nothing is created.
    ///
    /// Context: may sleep (platform calls: VMA lookup, page snapshot, notifier registration,
    /// each with no crate lock held). Allocates with [`AllocCtx::MaySleep`] only, never under a
    /// lock the invalidation path takes: the range and the page snapshot with no lock held,
    /// the notifier array's growth under the structure lock alone. Locks, in order: the
    /// notifier lock (shared, lookups), the attribute lock (shared, alone), the structure lock,
    /// then under it the notifier lock (exclusive) and the attribute lock (shared).
    pub fn find_or_insert(
        &self,
        addr: u64,
        window: Window,
        ctx: &PagesCtx,
    ) -> Result<RangeArc<P::Host>> {
        self.check_open()?;
        if !self.in_mm(addr) || window.start >= window.end || !window.contains(addr) {
            return Err(Error::Invalid);
        }
        if let Some(r) = self.find(addr) {
            return Ok(r);
        }
        // No crate lock is held across the platform calls below (VMA lookup, page snapshot,
        // notifier registration): the structure lock is taken only around the final insert.
        //
        // An munmap may run between the VMA lookup and the insertion: its invalidation would
        // miss the new range and leave a live range over unmapped memory. Linux holds the mmap
        // lock here; we instead insert only if no invalidation of the notifier started since a
        // second VMA lookup, and start over otherwise.
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            if attempts > self.config.retry.max_attempts {
                return Err(Error::Busy);
            }
            if let Some(range) = self.try_insert(addr, window, ctx)? {
                Stats::inc(&self.stats.ranges_created);
                return Ok(range);
            }
            crate::sync::spin_hint();
        }
    }

    /// One attempt of [`find_or_insert`](Self::find_or_insert): `Ok(None)` if an invalidation
    /// or a concurrent insert raced it (nothing was created).
    fn try_insert(
        &self,
        addr: u64,
        window: Window,
        ctx: &PagesCtx,
    ) -> Result<Option<RangeArc<P::Host>>> {
        let vma = self.platform.mm().find_vma(addr).ok_or(Error::Fault)?;
        let notifier = self.notifier_interval(addr);
        // A new range never spans an attribute boundary (SPEC §8): it is placed by the
        // attributes at `addr`, and `set_attrs` removes ranges straddling its edges so that
        // they refault inside them. Boundaries are page aligned: a page always fits.
        let (attr_lo, attr_hi) = self.attrs.read().extent(addr);
        let q = ChunkQuery {
            addr,
            vma: (vma.start, vma.end),
            notifier,
            window: (window.start.max(attr_lo), window.end.min(attr_hi)),
            chunk_sizes: &self.config.chunk_sizes,
            check_pages_threshold: self.config.check_pages_threshold,
        };
        let no_mem = core::cell::Cell::new(None);
        let chosen = select_chunk(
            &q,
            |s, e| {
                let t = self.notifiers.read();
                t.find(addr).is_some_and(|n| n.ranges.any_overlap(s, e))
            },
            |s, e| match self.all_present(s, e, ctx.owner) {
                Ok(all) => all,
                Err(e) => {
                    // Out of memory for the snapshot: fail the whole insertion with NoMem
                    // (below) instead of settling for a smaller chunk.
                    no_mem.set(Some(e));
                    false
                }
            },
        );
        if let Some(e) = no_mem.get() {
            return Err(e);
        }
        let (start, end) = match chosen {
            Ok(c) => c,
            // Every candidate overlaps a range: the one at `addr`, inserted by a concurrent
            // fault since `find_or_insert` looked (addr lies in the window and the VMA, so even
            // the page at `addr` fits unless a range holds it). Return that range.
            Err(Error::Invalid) => {
                return match self.find(addr) {
                    Some(r) => Ok(Some(r)),
                    None => Err(Error::Invalid),
                };
            }
            Err(e) => return Err(e),
        };
        let range = Range::with_host(start, end)?;

        let created = self.ensure_notifier(notifier)?;
        // The notifier is registered: from now on every change of the interval bumps its
        // sequence before it happens. Check that the VMA still holds the range.
        let seq = self
            .notifiers
            .read()
            .get(notifier.0)
            .and_then(|n| n.seq.read_begin());
        let still_mapped = seq.is_some()
            && self
                .platform
                .mm()
                .find_vma(addr)
                .is_some_and(|v| v.start <= start && end <= v.end);
        let inserted = if still_mapped {
            let _s = self.structure.lock();
            let mut t = self.notifiers.write();
            if self.is_closed() {
                Err(Error::Closed)
            } else if let Some(r) = t.find(addr).and_then(|n| n.ranges.find_arc(addr)) {
                // Another fault created it meanwhile.
                return Ok(Some(r));
            } else {
                // The attributes may have changed since the chunk was chosen: `set_attrs`
                // updates them, then removes the ranges straddling the new edges under this
                // lock. A range inserted after that removal must not straddle them either, so
                // the extent is read again here (lock order: notifier, then attributes);
                // a range that no longer fits is not inserted and the fault starts over
                // (tests/loom_attrs.rs `straddling_update_vs_fault`).
                let (lo, hi) = self.attrs.read().extent(addr);
                match (t.find_mut(addr), seq) {
                    (Some(n), Some(seq))
                        if n.handle.is_some()
                            && !n.seq.read_retry(seq)
                            && lo <= start
                            && end <= hi =>
                    {
                        // An overlap means a concurrent insert won: start over.
                        Ok(n.ranges.insert(range.clone()).is_ok())
                    }
                    _ => Ok(false),
                }
            }
        } else {
            Ok(false)
        };
        match inserted {
            Ok(true) => Ok(Some(range)),
            Ok(false) | Err(_) => {
                if created {
                    self.drop_notifier_if_empty(notifier.0);
                }
                inserted.map(|_| None)
            }
        }
    }

    /// Make sure the notifier `[start, end)` exists and is registered with the platform;
    /// returns whether this call created it. No crate lock is held while the platform
    /// registers it: meanwhile the notifier sits in the tree without a handle ("registering"),
    /// so that invalidations the platform delivers for it are not lost, no range is inserted
    /// into it, and it is not removed; other callers wait for the registration to finish.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Busy`] if another registration does not finish
    /// within the retry budget; [`Error::NoMem`] if the notifier array cannot grow (nothing
    /// changed); errors of `register_notifier` (the notifier is then removed).
    ///
    /// Context: may sleep (registration); allocates with [`AllocCtx::MaySleep`] under the
    /// structure lock only.
    fn ensure_notifier(&self, (start, end): (u64, u64)) -> Result<bool> {
        let mut waited = 0u32;
        loop {
            self.check_open()?;
            let state = self.notifiers.read().get(start).map(|n| n.handle.is_some());
            match state {
                Some(true) => return Ok(false),
                Some(false) => {
                    waited = waited.saturating_add(1);
                    if waited > self.config.retry.max_attempts {
                        return Err(Error::Busy);
                    }
                    crate::sync::spin_hint();
                    continue;
                }
                None => {}
            }
            {
                // Notifiers are inserted under the structure lock only, so the room read here
                // is still there when the notifier lock is taken for the insertion; the array
                // grows (allocating) before that lock, and the old one is freed after it.
                let _s = self.structure.lock();
                let (len, cap) = {
                    let t = self.notifiers.read();
                    (t.len(), t.capacity())
                };
                let mut spare = NotifierTree::<Handle<P>, P::Host>::spare_for_insert(
                    len,
                    cap,
                    AllocCtx::MaySleep,
                )?;
                let mut t = self.notifiers.write();
                if t.get(start).is_some() {
                    continue;
                }
                // The notifier goes into the tree before the platform learns about it: from
                // the moment `register_notifier` makes it visible, the platform may call
                // `invalidate_begin` for it, and that call must find it (a dropped `begin`
                // would let a collection commit across the invalidation:
                // tests/loom_invalidate.rs `first_fault_vs_invalidate`).
                t.insert_within_capacity(Notifier::new(start, end), &mut spare)?;
                drop(t);
                drop(spare);
            }
            let registered = self
                .platform
                .mm()
                .register_notifier(NotifierId(start), start, end);
            let mut t = self.notifiers.write();
            let closed = self.is_closed();
            return match (registered, t.find_mut(start)) {
                (Ok(h), Some(n)) if n.start == start && !closed => {
                    n.handle = Some(h);
                    Ok(true)
                }
                (Ok(h), _) => {
                    // Closed meanwhile (close took the notifier out, or will find it without a
                    // handle): undo the registration ourselves.
                    if t.get(start).is_some_and(|n| n.handle.is_none()) {
                        t.remove(start);
                    }
                    drop(t);
                    self.platform.mm().unregister_notifier(h);
                    Err(Error::Closed)
                }
                (Err(e), _) => {
                    if t.get(start).is_some_and(|n| n.handle.is_none()) {
                        t.remove(start);
                    }
                    Err(e)
                }
            };
        }
    }

    fn drop_notifier_if_empty(&self, start: u64) {
        let handle = {
            let mut t = self.notifiers.write();
            match t.get(start) {
                // A notifier without a handle is still being registered by another caller.
                Some(n) if n.ranges.is_empty() && n.handle.is_some() => {
                    t.remove(start).and_then(|mut n| n.handle.take())
                }
                _ => None,
            }
        };
        if let Some(h) = handle {
            self.platform.mm().unregister_notifier(h);
        }
    }

    /// Whether `range` (the very object) is linked into a notifier of this instance. Call
    /// with the notifier lock held.
    fn owns(t: &NotifierTree<Handle<P>, P::Host>, range: &Range<P::Host>) -> bool {
        t.find(range.start())
            .and_then(|n| n.ranges.find(range.start()))
            .is_some_and(|r| core::ptr::eq(r, range))
    }

    /// Check that `range` is live in this instance (under the notifier lock).
    fn check_range(
        &self,
        t: &NotifierTree<Handle<P>, P::Host>,
        range: &Range<P::Host>,
    ) -> Result<()> {
        let f = range.flags();
        if f.contains(RangeFlags::REMOVED) {
            return Err(Error::Again);
        }
        if !Self::owns(t, range) {
            return Err(Error::Invalid);
        }
        if f.contains(RangeFlags::UNMAPPED) {
            return Err(Error::Again);
        }
        Ok(())
    }

    /// Whether `range` (the very object) is linked into a notifier of this instance, unmapped
    /// or not (takes the notifier lock shared).
    pub(crate) fn owns_range(&self, range: &Range<P::Host>) -> bool {
        Self::owns(&self.notifiers.read(), range)
    }

    /// Check that `range` is live in this instance (takes the notifier lock shared).
    pub(crate) fn check_live(&self, range: &Range<P::Host>) -> Result<()> {
        let t = self.notifiers.read();
        self.check_range(&t, range)
    }

    /// Remove a range (SPEC §2 `remove`): zap its device mappings, unmap and free its pages,
    /// unlink it, and drop its notifier if it was the last range. Takes the structure lock.
    ///
    /// Errors: [`Error::Closed`] after [`close`](Self::close); [`Error::Invalid`] if the range
    /// is not in this instance (already removed, or another instance's). On error nothing
    /// changes.
    ///
    /// Context: may sleep. Takes the structure lock, then the notifier lock (exclusive) and the
    /// range's page-state lock, and zaps and DMA-unmaps under them; frees the page array (no
    /// allocation); unregisters an emptied notifier with the platform after releasing every lock.
    pub fn remove(&self, range: &Range<P::Host>) -> Result<()> {
        self.check_open()?;
        let handle = {
            let _s = self.structure.lock();
            self.remove_locked(range)?
        };
        if let Some(h) = handle {
            self.platform.mm().unregister_notifier(h);
        }
        Ok(())
    }

    /// Unlink `range` (structure lock held); returns the handle of its notifier if that went
    /// with it, for the caller to unregister once no crate lock is held.
    fn remove_locked(&self, range: &Range<P::Host>) -> Result<Option<Handle<P>>> {
        let (handle, _unlinked) = {
            let mut t = self.notifiers.write();
            let n = t.find_mut(range.start()).ok_or(Error::Invalid)?;
            let unlinked = n.ranges.remove(range).ok_or(Error::Invalid)?;
            self.platform.page_table().zap(range.start(), range.end());
            range.pages.lock().free(self.platform.dma());
            range.set_flags(RangeFlags::REMOVED);
            let handle = if n.ranges.is_empty() && n.handle.is_some() {
                let start = n.start;
                t.remove(start).and_then(|mut n| n.handle.take())
            } else {
                None
            };
            (handle, unlinked)
        };
        Stats::inc(&self.stats.ranges_removed);
        Ok(handle)
    }

    /// Collect and map the pages of `range` for the device (SPEC §3).
    ///
    /// Reuses a still-valid page state that satisfies `ctx`. Otherwise reads the notifier
    /// sequence, collects the CPU pages (faulting them in), DMA-maps them, and commits under the
    /// notifier lock unless an invalidation raced (then it unmaps and retries within
    /// `config.retry`). No lock is held while collecting.
    ///
    /// Errors: [`Error::Closed`]; [`Error::Invalid`] if the range is not in this instance;
    /// [`Error::Again`] if the range was removed or unmapped meanwhile (find it again);
    /// [`Error::Busy`] when the retry budget runs out; [`Error::NotSupported`] for mixed pages
    /// without `ctx.allow_mixed`; [`Error::Fault`] (no VMA, or `ctx.devmem_only` with system
    /// pages); [`Error::Perm`]; [`Error::NoMem`] if the host's allocator fails; and the
    /// platform's errors. On error nothing stays mapped that was not mapped before.
    ///
    /// Context: may sleep: collects the CPU pages through the platform with no crate lock held.
    /// Allocates with [`AllocCtx::MaySleep`] and no lock held: the CPU page array and the entry
    /// array (counted from the collection before the notifier lock is taken; [`Error::NoMem`]
    /// leaves the state as it was). Takes the notifier lock shared (to check the range, to map the
    /// pages, to commit) and the range's page-state lock under it.
    pub fn get_pages(&self, range: &Range<P::Host>, ctx: &PagesCtx) -> Result<()> {
        self.check_open()?;
        {
            let t = self.notifiers.read();
            self.check_range(&t, range)?;
            if range.pages.lock().satisfies(ctx) {
                return Ok(());
            }
        }
        get_pages_loop(
            &self.platform,
            &self.config.retry,
            (range.start(), range.end()),
            ctx,
            &|pm, dpfn, order| self.resolve_device_page(pm, dpfn, order),
            || {
                let t = self.notifiers.read();
                self.check_range(&t, range)?;
                Ok(t.find(range.start()).and_then(|n| n.seq.read_begin()))
            },
            move |seq| {
                let t = self.notifiers.read();
                let unchanged = t
                    .find(range.start())
                    .is_some_and(|n| !n.seq.read_retry(seq));
                unchanged.then_some(t)
            },
            |seq, m| {
                // Shared is enough: invalidations (the only writers of page state besides
                // commits) take the lock exclusively, and commits of one range serialise on
                // its page-state lock, so faults on different ranges commit in parallel.
                let t = self.notifiers.read();
                if let Err(e) = self.check_open().and_then(|()| self.check_range(&t, range)) {
                    m.unmap(self.platform.dma());
                    return Err(e);
                }
                match t.find(range.start()) {
                    Some(n) if !n.seq.read_retry(seq) => {
                        range.pages.lock().commit(self.platform.dma(), m);
                        Stats::inc(&self.stats.pages_committed);
                        Ok(Commit::Done)
                    }
                    _ => Ok(Commit::Retry(m)),
                }
            },
            || Stats::inc(&self.stats.retries),
        )
    }

    /// SPEC `pages_valid`: whether the range's pages are usable by the device right now.
    /// `false` for a range that is not in this instance (removed, or another instance's).
    ///
    /// Context: takes the notifier lock shared, then the range's page-state lock; allocates
    /// nothing.
    pub fn pages_valid(&self, range: &Range<P::Host>) -> bool {
        let t = self.notifiers.read();
        Self::owns(&t, range) && range.pages.lock().valid()
    }

    /// Run `f` with the committed page entries of `range` while holding the notifier lock
    /// (shared), so no invalidation can complete meanwhile: this is where the driver writes its
    /// device page-table entries. `f` gets the range and its entries in address order, each
    /// covering `entry.size()` bytes from where the previous one ended; it must not sleep or
    /// call back into this `Svm` other than through [`device_atomics`](Self::device_atomics)
    /// (which says whether each entry may be bound with device atomics enabled).
    ///
    /// Errors: [`Error::Closed`]; [`Error::Again`] if the pages are no longer valid (an
    /// invalidation ran: fault again); [`Error::Invalid`] if the range is not in this instance.
    ///
    /// Context: takes the notifier lock shared, then the range's page-state lock, and calls `f`
    /// with both held (so `f` must not sleep); allocates nothing.
    pub fn bind<R>(
        &self,
        range: &Range<P::Host>,
        f: impl FnOnce(&Range<P::Host>, &[PageEntry]) -> R,
    ) -> Result<R> {
        self.check_open()?;
        let t = self.notifiers.read();
        self.check_range(&t, range)?;
        let st = range.pages.lock();
        if !st.valid() {
            return Err(Error::Again);
        }
        Ok(f(range, st.entries()))
    }

    /// SPEC `unmap_pages`: DMA-unmap the range's pages and clear its flags (idempotent). The
    /// caller zaps the device mappings first if it bound them.
    ///
    /// Errors: [`Error::Closed`] after [`close`](Self::close) (which freed every page);
    /// [`Error::Invalid`] if the range is not in this instance (removed — its pages are already
    /// freed — or another instance's, whose mappings this instance's DMA mapper must not
    /// touch); nothing is unmapped then.
    ///
    /// Context: takes the notifier lock exclusive, then the range's page-state lock; DMA-unmaps
    /// under them; allocates nothing.
    pub fn unmap_pages(&self, range: &Range<P::Host>) -> Result<()> {
        self.check_open()?;
        let t = self.notifiers.write();
        if !Self::owns(&t, range) {
            return Err(Error::Invalid);
        }
        range.pages.lock().unmap(self.platform.dma());
        Ok(())
    }

    /// Zap the device mappings of `range` and unmap its pages, so that the next device access
    /// faults and re-decides placement (used when attributes change). No-op for a range that is
    /// not in this instance.
    /// Change the pagemap set with `change` (under the pagemap-set lock only: it may allocate),
    /// then, if `change` reports that a pagemap went away, take the notifier lock exclusively,
    /// make every collection in flight retry (each notifier's sequence moves) and zap and
    /// DMA-unmap every range whose committed pages are in device memory. A collection that
    /// resolved a page of the gone pagemap before the change either committed before the
    /// notifier lock was taken here (and is unmapped here) or commits after (and retries,
    /// and the retry no longer resolves it): once the call returns, no committed entry points
    /// into the gone pagemap (`tests/loom_pagemap.rs` `detach_vs_fault_strict`).
    ///
    /// Context: takes the pagemap-set lock, releases it, then the notifier lock (exclusive)
    /// and range page-state locks; allocates only inside `change`.
    pub(crate) fn change_pagemaps<R>(
        &self,
        change: impl FnOnce(&mut PagemapSet<P::Mem, P::Host>) -> (R, bool),
    ) -> R {
        let (out, gone) = change(&mut self.pagemaps.write());
        if gone {
            let t = self.notifiers.write();
            for n in t.iter() {
                n.seq.begin();
                for r in n.ranges.iter() {
                    let mut st = r.pages.lock();
                    if st
                        .flags()
                        .contains(crate::pages::PageFlags::HAS_DEVMEM_PAGES)
                    {
                        self.platform.page_table().zap(r.start(), r.end());
                        st.unmap(self.platform.dma());
                    }
                }
                n.seq.end();
            }
        }
        out
    }

    pub(crate) fn clear_mappings(&self, range: &Range<P::Host>) {
        let t = self.notifiers.write();
        if Self::owns(&t, range) {
            self.platform.page_table().zap(range.start(), range.end());
            range.pages.lock().unmap(self.platform.dma());
        }
    }

    /// SPEC `free_pages`: unmap, then release the range's page array.
    ///
    /// Errors: as [`unmap_pages`](Self::unmap_pages).
    ///
    /// Context: as [`unmap_pages`](Self::unmap_pages); also frees the page array.
    pub fn free_pages(&self, range: &Range<P::Host>) -> Result<()> {
        self.check_open()?;
        let t = self.notifiers.write();
        if !Self::owns(&t, range) {
            return Err(Error::Invalid);
        }
        range.pages.lock().free(self.platform.dma());
        Ok(())
    }

    /// The platform calls this before it changes CPU page tables in `[start, end)` of the
    /// notifier `id` (SPEC §4).
    ///
    /// Takes the notifier lock for write, makes the sequence odd, zaps the device page tables
    /// over the ranges overlapping the interval, DMA-unmaps their pages, and on
    /// [`Event::Unmap`]/[`Event::Release`] marks them unmapped (and partially unmapped when the
    /// event covers only part) and queues them for the garbage collector. Calls only
    /// [`DevicePageTable::zap`] and
    /// [`DmaMapper::unmap_page`](crate::platform::DmaMapper::unmap_page). An unknown `id` is
    /// ignored.
    ///
    /// Context: allocates nothing. Takes the notifier lock (exclusive; waits for it, so it may
    /// sleep if the host's notifier lock does), then range page-state locks and the GC-queue
    /// lock (spinning classes). For a caller that must not sleep, use
    /// [`invalidate_begin_nonblock`](Self::invalidate_begin_nonblock).
    pub fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event) {
        let t = self.notifiers.write();
        self.invalidate_locked(&t, id, start, end, event);
    }

    /// [`invalidate_begin`](Self::invalidate_begin) for a caller that must not sleep (Linux:
    /// an interval notifier called with `mmu_notifier_range_blockable() == false`, as the OOM
    /// reaper does): the notifier lock is only try-locked.
    ///
    /// Errors: [`Error::Again`] if the notifier lock is held by someone else right now; then
    /// nothing changed (the sequence did not move, no mapping was touched) and the platform
    /// reports "try again" to its caller (Linux: the callback returns `false`). An unknown `id`
    /// is `Ok` and ignored, as in the blocking form.
    ///
    /// Context: never sleeps; allocates nothing. Try-locks the notifier lock; takes range
    /// page-state locks and the GC-queue lock, which are spinning classes (see
    /// [`sync`](crate::sync)), waiting for them only as a spin lock does.
    pub fn invalidate_begin_nonblock(
        &self,
        id: NotifierId,
        start: u64,
        end: u64,
        event: Event,
    ) -> Result<()> {
        let t = self.notifiers.try_write().ok_or(Error::Again)?;
        self.invalidate_locked(&t, id, start, end, event);
        Ok(())
    }

    /// The body of [`invalidate_begin`](Self::invalidate_begin), with the notifier lock held
    /// exclusively.
    fn invalidate_locked(
        &self,
        t: &NotifierTree<Handle<P>, P::Host>,
        id: NotifierId,
        start: u64,
        end: u64,
        event: Event,
    ) {
        let Some(n) = t.get(id.0) else {
            return;
        };
        n.seq.begin();
        Stats::inc(&self.stats.invalidations);
        let s = start.max(n.start);
        let e = end.min(n.end);
        if s >= e {
            return;
        }
        // Zap once over the span of the ranges hit, before any DMA mapping goes away: the span
        // runs from the first to the last overlapping range (two descents, no walk).
        let mut it = n.ranges.overlapping(s, e);
        let (Some(first), Some(last)) = (it.peek(), n.ranges.last_overlapping(s, e)) else {
            return;
        };
        self.platform.page_table().zap(first.start(), last.end());
        let unmap = matches!(event, Event::Unmap | Event::Release);
        let closed = self.is_closed();
        // One GC-queue lock per invalidation (lock order: notifier, then GC queue), taken only
        // if a range is queued.
        let mut gc = None;
        loop {
            // Flags in one atomic operation; the `HostArc` is cloned only for a range that joins
            // the queue now.
            let queue_it = if unmap {
                it.peek().is_some_and(|r| {
                    let mut f = RangeFlags::UNMAPPED;
                    if s > r.start() || e < r.end() {
                        f |= RangeFlags::PARTIAL_UNMAP;
                    }
                    if !closed {
                        f |= RangeFlags::IN_GC;
                    }
                    !closed && !r.set_flags(f).contains(RangeFlags::IN_GC)
                })
            } else {
                false
            };
            let queued = if queue_it { it.peek_arc() } else { None };
            let Some(r) = it.next() else {
                break;
            };
            r.pages.lock().unmap(self.platform.dma());
            if let Some(a) = queued {
                // Allocates nothing (the link is in the range); `IN_GC` was set by this call,
                // so the range is in no queue and the push cannot be refused.
                gc_push(gc.get_or_insert_with(|| self.gc.lock()), a);
            }
        }
    }

    /// The platform calls this after it changed the CPU page tables (SPEC §4): the sequence
    /// becomes even again once the last nested invalidation ends. An unknown `id` is ignored.
    ///
    /// Context: allocates nothing. Takes the notifier lock shared, waiting only while a writer
    /// holds it (an invalidation's begin, a range insertion or removal: short sections that
    /// call nothing that sleeps except `zap`/DMA unmap); it may sleep if the host's notifier
    /// lock does.
    pub fn invalidate_end(&self, id: NotifierId, _start: u64, _end: u64) {
        let t = self.notifiers.read();
        if let Some(n) = t.get(id.0) {
            n.seq.end();
        }
    }

    /// Close the instance (SPEC §1): zap and unmap every range, drop them, drain the garbage
    /// collector, and unregister every notifier. Idempotent; later calls that need the
    /// instance return [`Error::Closed`]. Also run on drop.
    ///
    /// Context: may sleep. Takes the structure lock, then the notifier lock (exclusive) and each
    /// range's page-state lock (zap, DMA unmap, free), then the GC-queue lock alone; drops the
    /// ranges and unregisters the notifiers with no lock held. Allocates nothing.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let all = {
            let _s = self.structure.lock();
            let mut t = self.notifiers.write();
            for n in t.iter() {
                for r in n.ranges.iter() {
                    self.platform.page_table().zap(r.start(), r.end());
                    r.pages.lock().free(self.platform.dma());
                    r.set_flags(RangeFlags::REMOVED);
                }
            }
            t.take_all()
        };
        {
            let mut q = self.gc.lock();
            while let Some(r) = q.pop_front() {
                r.clear_flags(RangeFlags::IN_GC);
            }
        }
        for mut n in all {
            while let Some(r) = n.ranges.pop_front() {
                drop(r);
                Stats::inc(&self.stats.ranges_removed);
            }
            if let Some(h) = n.handle.take() {
                self.platform.mm().unregister_notifier(h);
            }
        }
    }
}

impl<P: Platform> Drop for Svm<P> {
    fn drop(&mut self) {
        self.close();
    }
}
