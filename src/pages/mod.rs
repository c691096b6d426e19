//! Page state of a range or of a userptr mapping (SPEC §3): collect the CPU pages, DMA-map them,
//! commit the result unless an invalidation raced, and unmap/free them again.
//!
//! The state is a list of [`PageEntry`]s, one per CPU mapping chunk (a 2 MiB huge page backing a
//! range is one entry), each packed into 8 bytes.

use crate::collect::{Found, PageSink, SinkRules, Word};
use crate::error::{Error, Result};
use crate::heap::AllocCtx;
use crate::platform::{
    AddressSpace, CollectRequest, CpuPage, DmaDirection, DmaMapper, OwnerId, PagemapId, Platform,
    PAGE_SHIFT, PAGE_SIZE,
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

/// Undo the DMA mappings behind `entries`, as one batch ([`DmaMapper::unmap_entries`]).
#[inline]
fn unmap_entries<D: DmaMapper>(dma: &D, entries: &[PageEntry]) {
    if !entries.is_empty() {
        dma.unmap_entries(entries);
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

/// Collect the CPU pages of `[start, end)` (faulting them in) into one word per future entry,
/// through the platform's packed collect contract
/// ([`AddressSpace::collect_packed`]), or, where the platform does not implement it, through
/// [`AddressSpace::collect_pages`] and a [`CpuPage`] array fed to the same sink. No crate lock
/// may be held: the platform may sleep. The words are only a snapshot: the pages may be freed
/// as soon as an invalidation starts, so they are mapped by [`map_words`] under the notifier
/// lock, once the sequence shows that none started.
///
/// Returns the words (exactly as many as the entries they become) and what the walk found; a
/// refused page (absent, read-only, foreign owner, mixed placement) is in the second part, to
/// be reported only once the sequence shows no invalidation raced the walk.
///
/// Errors: [`Error::Invalid`] for a bad interval; [`Error::NoMem`]; the platform's errors.
///
/// Context: may sleep; allocates the word array (and, with the fallback, the CPU page array)
/// with [`AllocCtx::MaySleep`]; no lock held.
pub(crate) fn collect_words<H: Host, M: AddressSpace>(
    mm: &M,
    start: u64,
    end: u64,
    ctx: &PagesCtx,
) -> Result<(HostVec<H, PageEntry>, Result<Found>)> {
    if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
        return Err(Error::Invalid);
    }
    let npages = end.wrapping_sub(start) / PAGE_SIZE;
    let n = usize::try_from(npages).map_err(|_| Error::Invalid)?;
    let mut words = HostVec::<H, PageEntry>::new();
    words.reserve_exact(n, AllocCtx::MaySleep)?;
    words.resize(n, PageEntry::from_raw(0), AllocCtx::MaySleep)?;
    let req = CollectRequest {
        start,
        end,
        fault: true,
        write: !ctx.read_only,
        owner: ctx.owner,
    };
    let rules = SinkRules {
        write: !ctx.read_only,
        owner: ctx.owner,
        allow_mixed: ctx.allow_mixed,
        devmem_only: ctx.devmem_only,
    };
    let first = start >> PAGE_SHIFT;
    let found = {
        let mut sink = PageSink::new(&mut words, first, npages, rules);
        match mm.collect_packed(&req, &mut sink) {
            Ok(()) => sink.finish(),
            Err(Error::NotSupported) => {
                let mut cpu = HostVec::<H, CpuPage>::new();
                cpu.reserve_exact(n, AllocCtx::MaySleep)?;
                cpu.resize(n, CpuPage::Absent, AllocCtx::MaySleep)?;
                mm.collect_pages(&req, &mut cpu)?;
                let mut sink = PageSink::new(&mut words, first, npages, rules);
                feed(&cpu, &mut sink);
                sink.finish()
            }
            Err(e) => return Err(e),
        }
    };
    if let Ok(f) = &found {
        if f.entries != words.len() {
            // Huge pages: fewer entries than pages. Keep exactly what the entries need (the
            // array becomes the range's page state).
            let mut exact = HostVec::<H, PageEntry>::new();
            exact.reserve_exact(f.entries, AllocCtx::MaySleep)?;
            exact.extend_from_slice(words.get(..f.entries).unwrap_or(&[]), AllocCtx::MaySleep)?;
            words = exact;
        }
    }
    Ok((words, found))
}

/// Feed a [`CpuPage`] array (one element per base page) to `sink`: the fallback of platforms
/// without the packed contract (and the simulator's packed contract). Each report covers the
/// rest of its CPU mapping, so only the first base page of each mapping is read.
///
/// Context: any; allocates nothing, takes no lock.
pub(crate) fn feed(cpu: &[CpuPage], sink: &mut PageSink<'_>) {
    while sink.remaining() > 0 {
        let Some(p) = usize::try_from(sink.next_page())
            .ok()
            .and_then(|i| cpu.get(i))
        else {
            return;
        };
        match *p {
            CpuPage::System {
                pfn,
                order,
                writable,
            } => sink.push_system(pfn, order, writable),
            CpuPage::Device {
                pagemap,
                owner,
                dpfn,
                order,
            } => sink.push_device(pagemap, owner, dpfn, order),
            CpuPage::Absent => sink.push_absent(),
        }
    }
}

/// Map the words [`collect_words`] filled for the device, in place: each becomes the
/// [`PageEntry`] of its DMA (or peer, or device-local) address. Nothing is committed and
/// nothing is allocated; on error every mapping made so far is undone.
///
/// Call with the notifier lock held (shared) and the collection's sequence checked under it, so
/// that no invalidation can start — and free the pages — while they are being mapped (Linux
/// maps under the notifier lock for the same reason).
///
/// Errors: [`Error::NotSupported`] (pages of two allocations where mixing is not allowed);
/// [`Error::Invalid`] (the DMA mapper returned a misaligned address); the DMA mapper's and the
/// resolver's errors.
pub(crate) fn map_words<D: DmaMapper, L: Host>(
    dma: &D,
    mut words: HostVec<L, PageEntry>,
    ctx: &PagesCtx,
    resolve: Resolver<'_>,
    found: &Found,
) -> Result<Mapped<L>> {
    let dir = if ctx.read_only {
        DmaDirection::ToDevice
    } else {
        DmaDirection::Bidirectional
    };
    let mut flags = if ctx.read_only {
        PageFlags::empty()
    } else {
        PageFlags::WRITABLE
    };
    if found.n_dev == 0 {
        // Every page in system memory (the common fault): one tight loop.
        let mut done = 0usize;
        let mut failed = None;
        for w in words.iter_mut() {
            let (pfn, order) = match found.word(*w) {
                Word::System { pfn, order } => (pfn, order),
                Word::Device { .. } => {
                    failed = Some(Error::Invalid);
                    break;
                }
            };
            match dma.map_page(pfn, order, dir) {
                Ok(addr) => match PageEntry::system(addr, order, dir) {
                    Some(e) => {
                        *w = e;
                        done = done.wrapping_add(1);
                    }
                    None => {
                        // A misaligned bus address breaks the DmaMapper contract; undo the
                        // mapping with exactly what map_page returned.
                        dma.unmap_page(addr, order, dir);
                        failed = Some(Error::Invalid);
                        break;
                    }
                },
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            unmap_entries(dma, words.get(..done).unwrap_or(&[]));
            return Err(e);
        }
        if done > 0 {
            flags |= PageFlags::HAS_DMA_MAPPING;
        }
        return Ok(Mapped {
            entries: words,
            flags,
            pagemap: None,
        });
    }
    let mut first_alloc: Option<usize> = None;
    let mut done = 0usize;
    let mut failed = None;
    for w in words.iter_mut() {
        let entry = match found.word(*w) {
            Word::System { pfn, order } => match dma.map_page(pfn, order, dir) {
                Ok(addr) => {
                    flags |= PageFlags::HAS_DMA_MAPPING;
                    match PageEntry::new(addr, order, dir, Protocol::SYSTEM) {
                        Ok(e) => Ok(e),
                        Err(err) => {
                            // A misaligned bus address breaks the DmaMapper contract; undo the
                            // mapping with exactly what map_page returned.
                            dma.unmap_page(addr, order, dir);
                            Err(err)
                        }
                    }
                }
                Err(e) => Err(e),
            },
            Word::Device {
                pagemap,
                dpfn,
                order,
            } => map_device_word(dma, resolve, (pagemap, dpfn, order), dir).and_then(
                |(e, alloc, peer)| {
                    flags |= PageFlags::HAS_DEVMEM_PAGES;
                    if peer {
                        flags |= PageFlags::HAS_DMA_MAPPING;
                    }
                    match (alloc, first_alloc) {
                        (Some(a), None) => first_alloc = Some(a),
                        (Some(a), Some(b)) if a != b && !ctx.allow_mixed => {
                            unmap_entry(dma, e);
                            return Err(Error::NotSupported);
                        }
                        _ => {}
                    }
                    Ok(e)
                },
            ),
        };
        match entry {
            Ok(e) => {
                *w = e;
                done = done.wrapping_add(1);
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        if flags.contains(PageFlags::HAS_DMA_MAPPING) {
            unmap_entries(dma, words.get(..done).unwrap_or(&[]));
        }
        return Err(e);
    }
    if found.n_sys == 0 && found.n_dev > 0 {
        flags |= PageFlags::ALL_DEVMEM;
    }
    Ok(Mapped {
        entries: words,
        flags,
        pagemap: found.pagemap,
    })
}

/// The entry of one device-page word: local (its device address) or a peer's (DMA-mapped
/// through the interconnect). Returns the entry, the allocation the page belongs to, and
/// whether a peer mapping was made (undone here if packing fails).
fn map_device_word<D: DmaMapper>(
    dma: &D,
    resolve: Resolver<'_>,
    (pm, dpfn, o): (PagemapId, u64, u8),
    dir: DmaDirection,
) -> Result<(PageEntry, Option<usize>, bool)> {
    let (place, alloc) = resolve(pm, dpfn, o)?;
    let (addr, proto, peer) = match place {
        DevicePlace::Local => (
            dpfn.checked_shl(PAGE_SHIFT).unwrap_or(u64::MAX),
            Protocol::DEVICE_LOCAL,
            false,
        ),
        DevicePlace::Peer { resource, proto } => (dma.map_peer(resource, o, dir)?, proto, true),
    };
    match PageEntry::new(addr, o, dir, proto) {
        Ok(e) => Ok((e, alloc, peer)),
        Err(err) => {
            if peer {
                dma.unmap_peer(addr, o, dir);
            }
            Err(err)
        }
    }
}

/// Outcome of one commit attempt.
pub(crate) enum Commit<H: Host> {
    /// Committed.
    Done,
    /// The sequence moved before the pages were mapped: nothing was mapped, collect again.
    Stale,
    /// The sequence moved after the pages were mapped (or the target went away and the caller
    /// wants a retry): here is the collection back, to unmap.
    Retry(Mapped<H>),
}

/// The mapping step handed to the `locked` closure of [`get_pages_loop`]: call it (once) with
/// the lock held and the sequence checked; it maps the collected pages, or reports the page the
/// walk refused.
pub(crate) type MapStep<'a, H> = &'a mut dyn FnMut() -> Result<Mapped<H>>;

#[allow(clippy::too_many_arguments)] // internal: the closures are the commit protocol
/// The retry loop shared by ranges and userptrs: `begin` returns the sequence to collect under
/// (`Ok(None)`: an invalidation is running); `locked` takes the lock that keeps invalidations
/// out (shared), checks the sequence (`Stale` if it moved), calls the mapping step under it (so
/// no invalidation can free the pages while they are mapped) and commits, under that lock or
/// one it takes after, or hands the collection back (`Retry`).
pub(crate) fn get_pages_loop<P: Platform, H: Host>(
    p: &P,
    policy: &RetryPolicy,
    (start, end): (u64, u64),
    ctx: &PagesCtx,
    resolve: Resolver<'_>,
    mut begin: impl FnMut() -> Result<Option<usize>>,
    mut locked: impl FnMut(usize, MapStep<'_, H>) -> Result<Commit<H>>,
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
        let (words, found) = match collect_words::<H, _>(p.mm(), start, end, ctx) {
            Ok(x) => x,
            // The platform asks for a retry (Linux: hmm_range_fault's -EBUSY): retry within
            // the same deadline and attempt budget, ending with `Busy` (SPEC §3).
            Err(Error::Again) => {
                on_retry();
                crate::sync::spin_hint();
                continue;
            }
            Err(e) => return Err(e),
        };
        // The words are the entry array (allocated before the lock: nothing is allocated under
        // a lock the invalidation path takes). A refusal is reported only once the sequence
        // shows no invalidation raced the walk (inside the mapping step).
        let mut words = Some(words);
        let mut map = || -> Result<Mapped<H>> {
            let found = found?;
            let words = words.take().ok_or(Error::Invalid)?;
            map_words(p.dma(), words, ctx, resolve, &found)
        };
        match locked(seq, &mut map)? {
            Commit::Done => return Ok(()),
            Commit::Stale => on_retry(),
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
    use crate::platform::MAX_ORDER;

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
