//! The [`Svm`] instance: one device mirroring one CPU address space (SPEC §1, §2, §3, §4).

mod attrs;
mod bind;
mod config;
mod fault;
mod gc;
mod invalidate;
mod placement;
mod ranges;

use crate::error::{Error, Result};
use crate::placement::PagemapSet;
use crate::platform::{AddressSpace, OwnerId, Platform};
use crate::policy::AttrStore;
use crate::range::{gc_queue, GcQueue, Notifier, NotifierTree, Range, RangeArc, RangeIndex};
use crate::stats::{Stats, StatsSnapshot};
use crate::sync::{class, AtomicBool, Mutex, Ordering, RwLock};

pub use config::{SvmConfig, MAX_CHUNK_SIZES};

pub(super) type Handle<P> = <<P as Platform>::Mm as AddressSpace>::NotifierHandle;

/// One device mirroring one CPU address space.
///
/// ```text
///  driver fault ──► handle_fault ──► gc_run ─► find_or_insert ─► get_pages ─► bind (driver)
///  CPU change  ──► invalidate_begin (zap, unmap DMA, queue GC) ... invalidate_end
/// ```
///
/// Locks, outermost first: the structure lock (range creation/removal), the notifier-array lock
/// (shared on the way to any notifier; exclusive to add or drop one), one notifier's lock
/// (shared: lookups, commit, bind; exclusive: invalidation, insertion, removal — faults and
/// invalidations on different notifiers do not meet), the GC queue lock, a range's page-state
/// lock. Their types come from the platform's lock facet
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
            notifiers: RwLock::new(&class::NOTIFIERS, NotifierTree::default())?,
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
        self.read_at(addr, |x| x.and_then(|(_, idx)| idx.find_arc(addr)))
    }

    /// Run `f` with the notifier holding `addr` and its range index, under the notifier-array
    /// lock and that notifier's lock (both shared); `None` if no notifier holds `addr`.
    #[inline]
    pub(crate) fn read_at<R>(
        &self,
        addr: u64,
        f: impl FnOnce(Option<(&Notifier<Handle<P>, P::Host>, &RangeIndex<P::Host>)>) -> R,
    ) -> R {
        let t = self.notifiers.read();
        match t.find(addr) {
            Some(n) => {
                let idx = n.ranges.read();
                f(Some((n, &idx)))
            }
            None => f(None),
        }
    }

    /// As [`read_at`](Self::read_at), with the notifier's lock exclusive (the notifier-array
    /// lock stays shared).
    #[inline]
    pub(crate) fn write_at<R>(
        &self,
        addr: u64,
        f: impl FnOnce(Option<(&Notifier<Handle<P>, P::Host>, &mut RangeIndex<P::Host>)>) -> R,
    ) -> R {
        let t = self.notifiers.read();
        match t.find(addr) {
            Some(n) => {
                let mut idx = n.ranges.write();
                f(Some((n, &mut idx)))
            }
            None => f(None),
        }
    }

    /// Call `f` for every notifier interval and every range in it, in address order, under the
    /// notifier locks (shared, one notifier at a time). For diagnostics and invariant checkers;
    /// `f` must not call back into this `Svm`.
    ///
    /// Context: takes the notifier-array lock and each notifier's lock shared (may sleep if the
    /// host's locks do) and calls `f` under them; allocates nothing.
    pub fn for_each_range(&self, mut f: impl FnMut((u64, u64), &Range<P::Host>)) {
        let t = self.notifiers.read();
        for n in t.iter() {
            let idx = n.ranges.read();
            for r in idx.iter() {
                f((n.start, n.end), r);
            }
        }
    }

    /// A new reference to the first range (in address order) overlapping `[from, end)`, found
    /// under one shared hold of the notifier locks. Callers walk an interval with it, moving
    /// `from` to the end of each range returned: no list is built, so nothing is allocated, and
    /// no lookup runs inside [`for_each_range`](Self::for_each_range) (which would take the
    /// locks recursively: with a writer waiting between the two, a writer-preferring lock
    /// deadlocks).
    ///
    /// Context: takes the notifier-array lock and notifier locks shared; allocates nothing.
    pub(crate) fn first_overlapping(&self, from: u64, end: u64) -> Option<RangeArc<P::Host>> {
        let t = self.notifiers.read();
        let first = t
            .iter()
            .filter(|n| n.start < end && from < n.end)
            .find_map(|n| n.ranges.read().overlapping(from, end).peek_arc());
        first
    }

    /// Number of notifiers and ranges.
    ///
    /// Context: takes the notifier-array lock and each notifier's lock shared; allocates
    /// nothing.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.notifiers.read();
        let ranges = t
            .iter()
            .map(|n| n.ranges.read().len())
            .fold(0usize, usize::saturating_add);
        (t.len(), ranges)
    }
}

impl<P: Platform> Drop for Svm<P> {
    fn drop(&mut self) {
        self.close();
    }
}
