//! Page state of a range or of a userptr mapping (SPEC §3): collect the CPU pages, DMA-map them,
//! commit the result unless an invalidation raced, and unmap/free them again.
//!
//! The state is a list of [`PageEntry`]s, one per CPU mapping chunk (a 2 MiB huge page backing a
//! range is one entry), each packed into 8 bytes.

use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::platform::{
    AddressSpace, CollectRequest, CpuPage, DmaDirection, DmaMapper, OwnerId, PagemapId, Platform,
    MAX_ORDER, PAGE_SHIFT, PAGE_SIZE,
};
pub use crate::types::{PageEntry, Protocol};

mod userptr;
use crate::{DefaultHost, Host, HostVec};
use bitflags::bitflags;
pub use userptr::Userptr;

bitflags! {
    /// Flags of a [`PageState`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PageFlags: u32 {
        /// Some entries are live DMA mappings of system pages.
        const HAS_DMA_MAPPING = 1;
        /// Some entries are device-memory pages.
        const HAS_DEVMEM_PAGES = 2;
        /// The pages were collected writable.
        const WRITABLE = 4;
        /// Every entry is a device-memory page.
        const ALL_DEVMEM = 8;
    }
}

/// What a page collection wants (SPEC §3, Linux `drm_gpusvm_ctx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagesCtx {
    /// Collect read-only (the device will not write).
    pub read_only: bool,
    /// Fail with [`Error::Fault`] unless every page is in device memory.
    pub devmem_only: bool,
    /// Accept system and device pages mixed in one range.
    pub allow_mixed: bool,
    /// Device-private pages of this owner are used in place; others are migrated to RAM.
    pub owner: Option<OwnerId>,
}

/// How long a collection may keep retrying after invalidation races.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up with [`Error::Busy`] once this much platform time has passed [1 s].
    pub deadline_ns: u64,
    /// Give up with [`Error::Busy`] after this many attempts \[1000\] (guards a frozen clock).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline_ns: 1_000_000_000,
            max_attempts: 1000,
        }
    }
}

/// The page state of one range or userptr; the entry array is on the allocator of the host
/// `L`.
pub struct PageState<L: Host = DefaultHost> {
    entries: HostVec<L, PageEntry>,
    flags: PageFlags,
    pagemap: Option<PagemapId>,
}

impl<L: Host> core::fmt::Debug for PageState<L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageState")
            .field("entries", &self.entries)
            .field("flags", &self.flags)
            .field("pagemap", &self.pagemap)
            .finish()
    }
}

impl<L: Host> Default for PageState<L> {
    fn default() -> Self {
        Self::new()
    }
}

/// A freshly collected and mapped set of pages, not yet committed.
#[derive(Debug)]
pub(crate) struct Mapped<L: Host> {
    entries: HostVec<L, PageEntry>,
    flags: PageFlags,
    pagemap: Option<PagemapId>,
}

impl<L: Host> PageState<L> {
    /// An empty state (nothing collected).
    ///
    /// Context: any; allocates nothing.
    pub const fn new() -> Self {
        PageState {
            entries: HostVec::<L, PageEntry>::new(),
            flags: PageFlags::empty(),
            pagemap: None,
        }
    }

    /// The flags.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn flags(&self) -> PageFlags {
        self.flags
    }

    /// SPEC `pages_valid`: the pages are usable by the device (DMA-mapped or in device memory).
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn valid(&self) -> bool {
        self.flags
            .intersects(PageFlags::HAS_DMA_MAPPING | PageFlags::HAS_DEVMEM_PAGES)
    }

    /// Whether the committed state satisfies `ctx` (valid, writable if needed, all in device
    /// memory if required).
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn satisfies(&self, ctx: &PagesCtx) -> bool {
        self.valid()
            && (ctx.read_only || self.flags.contains(PageFlags::WRITABLE))
            && (!ctx.devmem_only || self.flags.contains(PageFlags::ALL_DEVMEM))
            // Without an owner every device page must come back to system memory.
            && (ctx.owner.is_some() || !self.flags.contains(PageFlags::HAS_DEVMEM_PAGES))
    }

    /// The committed entries (meaningful only while [`valid`](Self::valid)).
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn entries(&self) -> &[PageEntry] {
        if self.valid() {
            &self.entries
        } else {
            &[]
        }
    }

    /// The pagemap of the device pages, if any.
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn pagemap(&self) -> Option<PagemapId> {
        self.pagemap
    }

    /// Number of entries allocated (also after unmap, until [`free`](Self::free)).
    ///
    /// Context: any; takes no lock, allocates nothing, never sleeps.
    pub fn capacity_entries(&self) -> usize {
        self.entries.len()
    }

    /// DMA-unmap every entry and clear the flags; idempotent. Allocates nothing (invalidation
    /// context).
    ///
    /// Context: allocates nothing and takes no lock (the caller holds the page-state or userptr
    /// lock); calls the DMA mapper's unmap functions, which must not sleep.
    pub fn unmap<D: DmaMapper>(&mut self, dma: &D) {
        if self.flags.contains(PageFlags::HAS_DMA_MAPPING) {
            unmap_entries(dma, &self.entries);
        }
        self.flags = PageFlags::empty();
        self.pagemap = None;
    }

    /// Unmap, then release the entry array (SPEC `free_pages`).
    ///
    /// Context: allocates nothing; frees the array (the host's `deallocate` never sleeps, so
    /// this may run under the range's page-state lock).
    pub fn free<D: DmaMapper>(&mut self, dma: &D) {
        self.unmap(dma);
        self.entries = HostVec::<L, PageEntry>::new();
    }

    /// Replace the state by a committed collection, unmapping the old one (its array is
    /// freed; nothing is allocated).
    pub(crate) fn commit<D: DmaMapper>(&mut self, dma: &D, m: Mapped<L>) {
        self.unmap(dma);
        self.entries = m.entries;
        self.flags = m.flags;
        self.pagemap = m.pagemap;
    }
}

fn unmap_entries<D: DmaMapper>(dma: &D, entries: &[PageEntry]) {
    for e in entries {
        unmap_entry(dma, *e);
    }
}

/// Undo the DMA mapping behind one entry (system page or peer resource; device-local pages
/// have none).
fn unmap_entry<D: DmaMapper>(dma: &D, e: PageEntry) {
    match e.protocol() {
        Protocol::SYSTEM => dma.unmap_page(e.addr(), e.order(), e.dir()),
        Protocol::DEVICE_LOCAL => {}
        _ => dma.unmap_peer(e.addr(), e.order(), e.dir()),
    }
}

/// Where a device page found during collection is, from the collecting device's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DevicePlace {
    /// In the collecting device's own memory: used at its device address.
    Local,
    /// In a peer's memory of the same owner, reachable at `resource` with `proto`.
    Peer {
        /// Interconnect address (from the peer pagemap's `device_map`).
        resource: u64,
        /// Protocol.
        proto: Protocol,
    },
}

/// Resolves a device page `(pagemap, dpfn, order)` to its place and the identity of its
/// allocation (pages of different allocations in one range are "mixed").
pub(crate) type Resolver<'a> =
    &'a dyn Fn(PagemapId, u64, u8) -> Result<(DevicePlace, Option<usize>)>;

/// A resolver for callers without pagemaps (userptr): every device page is taken as local.
pub(crate) fn local_resolver(_: PagemapId, _: u64, _: u8) -> Result<(DevicePlace, Option<usize>)> {
    Ok((DevicePlace::Local, None))
}

impl<L: Host> Mapped<L> {
    /// Undo the DMA mappings of an uncommitted collection.
    pub(crate) fn unmap<D: DmaMapper>(self, dma: &D) {
        if self.flags.contains(PageFlags::HAS_DMA_MAPPING) {
            unmap_entries(dma, &self.entries);
        }
    }
}

/// Largest order `<= max` such that the chunk starting at page index `va_page` (and frame
/// `frame`) is aligned to it and does not run past `remaining` pages.
///
/// Inlined: it runs once per entry on the fault path (benches/fault.rs).
#[inline]
fn clamp_order(max: u8, va_page: u64, frame: u64, remaining: u64) -> u8 {
    if max == 0 {
        return 0;
    }
    let mut o = max.min(MAX_ORDER);
    loop {
        let n = 1u64 << o;
        let mask = n.wrapping_sub(1);
        if o == 0 || (va_page & mask == 0 && frame & mask == 0 && n <= remaining) {
            return o;
        }
        o = o.saturating_sub(1);
    }
}

/// The order of the entry that maps the CPU page `p` at page index `va_page` with
/// `remaining` pages left in the collection (0 for an absent page, which is refused anyway).
#[inline]
fn entry_order(p: &CpuPage, va_page: u64, remaining: u64) -> u8 {
    match *p {
        CpuPage::System { pfn, order, .. } => clamp_order(order, va_page, pfn, remaining),
        CpuPage::Device { dpfn, order, .. } => clamp_order(order, va_page, dpfn, remaining),
        CpuPage::Absent => 0,
    }
}

/// Number of entries [`map_collected`] makes of the pages `cpu` collected from `start` on: its
/// walk from entry to entry, without mapping anything (one step per entry, so a range of huge
/// pages costs one step per huge page).
///
/// Context: any; allocates nothing, takes no lock.
fn count_entries(cpu: &[CpuPage], start: u64) -> usize {
    let npages = cpu.len();
    let first_page = start >> PAGE_SHIFT;
    let mut entries = 0usize;
    let mut i = 0usize;
    while let Some(p) = cpu.get(i) {
        // `i < npages`: no wrap.
        let remaining = npages.wrapping_sub(i) as u64;
        let o = entry_order(p, first_page.wrapping_add(i as u64), remaining);
        // At most one entry per page: cannot wrap.
        entries = entries.wrapping_add(1);
        i = i.saturating_add(1usize << o);
    }
    entries
}

/// What [`classify`] found in a collection: where its pages are and how many entries
/// [`map_collected`] will make of them.
pub(crate) struct Classified {
    /// The pagemap of the device pages (the first one met).
    pagemap: Option<PagemapId>,
    /// Number of system pages.
    n_sys: usize,
    /// Number of device pages.
    n_dev: usize,
    /// Number of entries the mapping makes (its walk, without mapping anything).
    entries: usize,
}

/// Check the pages `cpu` collected from `start` on against `ctx`, and count the entries
/// [`map_collected`] will make (without a second walk when every page is a base page). Done before the notifier lock is taken, so that
/// the entry array can be allocated exactly (nothing is allocated under the lock); the caller
/// reports an error only after checking, under the lock, that no invalidation raced the
/// collection.
///
/// Errors: [`Error::Fault`] (an absent page, or system pages with `devmem_only`),
/// [`Error::Perm`] (a read-only page for a writable collection), [`Error::Busy`] (a device
/// page of another owner), [`Error::NotSupported`] (mixed placement not allowed).
///
/// Context: any; allocates nothing, takes no lock.
pub(crate) fn classify(cpu: &[CpuPage], start: u64, ctx: &PagesCtx) -> Result<Classified> {
    let npages = cpu.len();
    let mut n_sys = 0usize;
    let mut pagemap: Option<PagemapId> = None;
    // The orders of all pages, or-ed: zero when every page is a base page, which is the common
    // case and then gives one entry per page without a counting walk.
    let mut orders = 0u8;
    for p in cpu {
        match *p {
            CpuPage::Absent => return Err(Error::Fault),
            CpuPage::System {
                writable, order, ..
            } => {
                if !ctx.read_only && !writable {
                    return Err(Error::Perm);
                }
                // At most `cpu.len()`: cannot wrap (and no saturation dependency chain).
                n_sys = n_sys.wrapping_add(1);
                orders |= order;
            }
            CpuPage::Device {
                pagemap: pm,
                owner,
                order,
                ..
            } => {
                if Some(owner) != ctx.owner {
                    // The platform should have migrated foreign pages to RAM.
                    return Err(Error::Busy);
                }
                match pagemap {
                    None => pagemap = Some(pm),
                    Some(q) if q == pm => {}
                    Some(_) if ctx.allow_mixed => {}
                    Some(_) => return Err(Error::NotSupported),
                }
                orders |= order;
            }
        }
    }
    let entries = if orders == 0 {
        npages
    } else {
        count_entries(cpu, start)
    };
    let n_dev = npages.saturating_sub(n_sys);
    if n_dev > 0 && n_sys > 0 && !ctx.allow_mixed {
        return Err(Error::NotSupported);
    }
    if ctx.devmem_only && n_sys > 0 {
        return Err(Error::Fault);
    }
    Ok(Classified {
        pagemap,
        n_sys,
        n_dev,
        entries,
    })
}

/// Collect the CPU pages of `[start, end)` (faulting them in). No crate lock may be held: the
/// platform may sleep. The result is only a snapshot: the pages may be freed as soon as an
/// invalidation starts, so they are mapped by [`map_collected`] under the notifier lock.
///
/// Errors: [`Error::Invalid`] for a bad interval; [`Error::NoMem`]; the platform's errors.
///
/// Context: may sleep; allocates the page array with [`AllocCtx::MaySleep`]; no lock held.
pub(crate) fn collect<H: Host, M: AddressSpace>(
    mm: &M,
    start: u64,
    end: u64,
    ctx: &PagesCtx,
) -> Result<HostVec<H, CpuPage>> {
    if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
        return Err(Error::Invalid);
    }
    let npages =
        usize::try_from(end.wrapping_sub(start) / PAGE_SIZE).map_err(|_| Error::Invalid)?;
    let mut cpu = HostVec::<H, CpuPage>::new();
    cpu.reserve_exact(npages, AllocCtx::MaySleep)?;
    cpu.resize(npages, CpuPage::Absent, AllocCtx::MaySleep)?;
    let req = CollectRequest {
        start,
        end,
        fault: true,
        write: !ctx.read_only,
        owner: ctx.owner,
    };
    mm.collect_pages(&req, &mut cpu)?;
    Ok(cpu)
}

/// Map the pages collected (by [`collect`]) from `start` on for the device, into `entries`
/// (empty, with the capacity [`classify`] counted for `cpu`: nothing is allocated here),
/// once [`classify`] accepted the pages.
/// Nothing is committed; on error every mapping made so far is undone.
///
/// Call with the notifier lock held (shared) and the collection's sequence checked under it, so
/// that no invalidation can start — and free the pages — while they are being mapped (Linux
/// maps under the notifier lock for the same reason).
///
/// Errors: [`Error::Fault`], [`Error::Perm`], [`Error::Busy`], [`Error::NotSupported`] as
/// classified; [`Error::NoMem`] if `entries` is too small; the DMA mapper's and the resolver's
/// errors.
pub(crate) fn map_collected<D: DmaMapper, L: Host>(
    dma: &D,
    cpu: &[CpuPage],
    start: u64,
    ctx: &PagesCtx,
    resolve: Resolver<'_>,
    mut entries: HostVec<L, PageEntry>,
    class: &Classified,
) -> Result<Mapped<L>> {
    entries.clear();
    let npages = cpu.len();
    let (n_sys, n_dev, pagemap) = (class.n_sys, class.n_dev, class.pagemap);

    let dir = if ctx.read_only {
        DmaDirection::ToDevice
    } else {
        DmaDirection::Bidirectional
    };
    let mut m = Mapped {
        entries,
        flags: PageFlags::empty(),
        pagemap,
    };
    if !ctx.read_only {
        m.flags |= PageFlags::WRITABLE;
    }
    let first_page = start >> PAGE_SHIFT;
    let mut first_alloc: Option<usize> = None;
    let mut i = 0usize;
    while let Some(p) = cpu.get(i) {
        let remaining = npages.saturating_sub(i) as u64;
        let va_page = first_page.wrapping_add(i as u64);
        let (entry, step) = match *p {
            CpuPage::System { pfn, order, .. } => {
                let o = clamp_order(order, va_page, pfn, remaining);
                let addr = match dma.map_page(pfn, o, dir) {
                    Ok(a) => a,
                    Err(e) => {
                        m.unmap(dma);
                        return Err(e);
                    }
                };
                // Count it as mapped before anything else can fail, so it gets unmapped.
                m.flags |= PageFlags::HAS_DMA_MAPPING;
                match PageEntry::new(addr, o, dir, Protocol::SYSTEM) {
                    Ok(e) => (e, o),
                    Err(err) => {
                        // A misaligned bus address breaks the DmaMapper contract; undo the
                        // mapping with exactly what map_page returned.
                        dma.unmap_page(addr, o, dir);
                        m.unmap(dma);
                        return Err(err);
                    }
                }
            }
            CpuPage::Device {
                pagemap: pm,
                dpfn,
                order,
                ..
            } => {
                let o = clamp_order(order, va_page, dpfn, remaining);
                let (place, alloc) = match resolve(pm, dpfn, o) {
                    Ok(x) => x,
                    Err(e) => {
                        m.unmap(dma);
                        return Err(e);
                    }
                };
                if let Some(a) = alloc {
                    match first_alloc {
                        None => first_alloc = Some(a),
                        Some(b) if b == a || ctx.allow_mixed => {}
                        Some(_) => {
                            m.unmap(dma);
                            return Err(Error::NotSupported);
                        }
                    }
                }
                m.flags |= PageFlags::HAS_DEVMEM_PAGES;
                let (addr, proto) = match place {
                    DevicePlace::Local => (
                        dpfn.checked_shl(PAGE_SHIFT).unwrap_or(u64::MAX),
                        Protocol::DEVICE_LOCAL,
                    ),
                    DevicePlace::Peer { resource, proto } => match dma.map_peer(resource, o, dir) {
                        Ok(a) => {
                            m.flags |= PageFlags::HAS_DMA_MAPPING;
                            (a, proto)
                        }
                        Err(e) => {
                            m.unmap(dma);
                            return Err(e);
                        }
                    },
                };
                match PageEntry::new(addr, o, dir, proto) {
                    Ok(e) => (e, o),
                    Err(err) => {
                        if proto != Protocol::DEVICE_LOCAL {
                            dma.unmap_peer(addr, o, dir);
                        }
                        m.unmap(dma);
                        return Err(err);
                    }
                }
            }
            CpuPage::Absent => {
                m.unmap(dma);
                return Err(Error::Fault);
            }
        };
        // The capacity was counted before the lock (`classify`): no reallocation.
        if let Err(entry) = m.entries.push_within_capacity(entry) {
            unmap_entry(dma, entry);
            m.unmap(dma);
            return Err(Error::NoMem);
        }
        i = i.saturating_add(1usize << step);
    }
    if n_sys == 0 && n_dev > 0 {
        m.flags |= PageFlags::ALL_DEVMEM;
    }
    Ok(m)
}

/// Outcome of one commit attempt.
pub(crate) enum Commit<H: Host> {
    /// Committed.
    Done,
    /// The sequence moved (or the target went away and the caller wants a retry): here is the
    /// collection back.
    Retry(Mapped<H>),
}

#[allow(clippy::too_many_arguments)] // internal: the closures are the commit protocol
/// The retry loop shared by ranges and userptrs: `begin` returns the sequence to collect under
/// (`Ok(None)`: an invalidation is running); `guard` takes the notifier lock shared and returns
/// its guard if the sequence did not move (the pages are mapped while it is held, so no
/// invalidation can free them meanwhile); `commit` takes the notifier lock and either commits
/// or hands the collection back.
pub(crate) fn get_pages_loop<P: Platform, H: Host, G>(
    p: &P,
    policy: &RetryPolicy,
    (start, end): (u64, u64),
    ctx: &PagesCtx,
    resolve: Resolver<'_>,
    mut begin: impl FnMut() -> Result<Option<usize>>,
    mut guard: impl FnMut(usize) -> Option<G>,
    mut commit: impl FnMut(usize, Mapped<H>) -> Result<Commit<H>>,
    mut on_retry: impl FnMut(),
) -> Result<()> {
    let deadline = p.now_ns().saturating_add(policy.deadline_ns);
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        if attempts > policy.max_attempts || p.now_ns() > deadline {
            return Err(Error::Busy);
        }
        let Some(seq) = begin()? else {
            on_retry();
            crate::sync::spin_hint();
            continue;
        };
        let cpu = match collect::<H, _>(p.mm(), start, end, ctx) {
            Ok(cpu) => cpu,
            // The platform asks for a retry (Linux: hmm_range_fault's -EBUSY): retry within
            // the same deadline and attempt budget, ending with `Busy` (SPEC §3).
            Err(Error::Again) => {
                on_retry();
                crate::sync::spin_hint();
                continue;
            }
            Err(e) => return Err(e),
        };
        // The entry array, allocated before the notifier lock (nothing is allocated under a
        // lock the invalidation path takes), exactly as large as the mapping below needs.
        // The pages are classified (and their entries counted) in the same walk, before the
        // lock; a refusal is reported only once the sequence shows no invalidation raced.
        let class = classify(&cpu, start, ctx);
        let mut entries = HostVec::<H, PageEntry>::new();
        if let Ok(c) = &class {
            entries.reserve_exact(c.entries, AllocCtx::MaySleep)?;
        }
        let m = {
            // An invalidation started since the collection: its pages may be gone.
            let Some(_g) = guard(seq) else {
                on_retry();
                continue;
            };
            let class = class?;
            map_collected(p.dma(), &cpu, start, ctx, resolve, entries, &class)?
        };
        match commit(seq, m)? {
            Commit::Done => return Ok(()),
            Commit::Retry(m) => {
                m.unmap(p.dma());
                on_retry();
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn clamp_order_respects_alignment_and_range_end() {
        assert_eq!(clamp_order(9, 512, 1024, 512), 9);
        assert_eq!(clamp_order(9, 512, 1024, 16), 4);
        assert_eq!(clamp_order(9, 16, 1024 + 16, 600), 4);
        assert_eq!(clamp_order(9, 513, 1025, 600), 0);
        assert_eq!(clamp_order(0, 0, 0, 1), 0);
        assert_eq!(
            clamp_order(9, 0, 8, 512),
            3,
            "frame alignment limits the order"
        );
        assert_eq!(clamp_order(40, 0, 0, u64::MAX), MAX_ORDER);
    }

    #[test]
    fn entry_packing_roundtrips() {
        for order in [0u8, 4, 9, MAX_ORDER] {
            for dir in [
                DmaDirection::ToDevice,
                DmaDirection::FromDevice,
                DmaDirection::Bidirectional,
            ] {
                for proto in 0..=Protocol::MAX {
                    let a = 0xdead_b000u64 << 8;
                    let e = PageEntry::new(a, order, dir, Protocol(proto)).unwrap();
                    assert_eq!(e.addr(), a);
                    assert_eq!(e.order(), order);
                    assert_eq!(e.dir(), dir);
                    assert_eq!(e.protocol(), Protocol(proto));
                }
            }
        }
        assert!(
            PageEntry::new(0, MAX_ORDER + 1, DmaDirection::ToDevice, Protocol::SYSTEM).is_err()
        );
        assert!(PageEntry::new(0, 0, DmaDirection::ToDevice, Protocol(8)).is_err());
    }
}
