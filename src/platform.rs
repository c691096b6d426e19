//! The platform traits: what a driver (or the simulator) implements so that the crate can mirror
//! a CPU address space on a device.
//!
//! One trait per hardware facet, each small, with associated types and no `dyn` requirement:
//!
//! | trait | Linux facility it wraps | called from |
//! | --- | --- | --- |
//! | [`AddressSpace`] | VMA lookup, `hmm_range_fault`, `mmu_interval_notifier_insert/remove` | process context, no crate lock held |
//! | [`DmaMapper`] | `dma_map_page` / `dma_unmap_page` (IOMMU) | map: process context, under the notifier lock held shared; unmap: also from invalidation, under the notifier lock |
//! | [`DevicePageTable`] | the driver's GPU page-table zap + TLB invalidation | invalidation, under the notifier lock |
//! | [`DeviceMemory`] | device-private pages (`memremap_pages`), the copy engine, `migrate_vma_*` on the device side | process context (copies), `device_map` under the notifier lock held shared |
//! | [`Platform`] | bundles the facets, the host's lock facet ([`Platform::Host`], see [`sync`](crate::sync)) and a monotonic clock | — |
//!
//! **Context rules.** Methods marked *invalidation context* run inside
//! [`Svm::invalidate_begin`](crate::Svm::invalidate_begin) with the notifier lock held for write:
//! they must not allocate, must not sleep, and must not call back into the crate or into the
//! address space. [`DmaMapper::map_page`]/[`map_peer`](DmaMapper::map_peer) and
//! [`DeviceMemory::device_map`] run while `get_pages` holds the notifier lock shared (so that no
//! invalidation can free the collected pages while they are being mapped, as in Linux): they
//! must not call back into the crate, and an invalidation waits for them. Every other method
//! runs with no crate lock held and may sleep.
//!
//! **Invalidation flows in.** The platform's MMU notifier calls
//! [`Svm::invalidate_begin`](crate::Svm::invalidate_begin) *before* it changes CPU page tables of
//! a registered interval and [`Svm::invalidate_end`](crate::Svm::invalidate_end) *after*.

pub use crate::collect::PageSink;
use crate::error::Result;
pub use crate::types::{
    DmaDirection, NotifierId, OwnerId, PageEntry, PagemapId, Protocol, HUGE_ORDER, MAX_ORDER,
    PAGE_SHIFT, PAGE_SIZE,
};
use crate::Host;
use bitflags::bitflags;

bitflags! {
    /// Access rights of a VMA.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct VmaFlags: u32 {
        /// Readable.
        const READ = 1;
        /// Writable.
        const WRITE = 2;
    }
}

/// A CPU virtual memory area: `[start, end)`, page aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vma {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Access rights.
    pub flags: VmaFlags,
}

impl Vma {
    /// Whether `addr` lies in the VMA.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    /// Whether the VMA is writable.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub const fn writable(&self) -> bool {
        self.flags.contains(VmaFlags::WRITE)
    }
}

/// What the CPU page tables hold for one base page, as reported by
/// [`AddressSpace::collect_pages`].
///
/// `order` is the order of the CPU mapping the page is part of (0 for a 4 KiB page, 9 for a
/// 2 MiB huge page). The mapping is naturally aligned both in virtual address and in frame number,
/// and `pfn`/`dpfn` is the frame of *this* base page (HMM reports huge pages the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CpuPage {
    /// Not present (only reported when the request does not fault pages in).
    #[default]
    Absent,
    /// A system-memory page.
    System {
        /// Page frame number of this base page.
        pfn: u64,
        /// Order of the CPU mapping it belongs to.
        order: u8,
        /// Whether the CPU mapping is writable.
        writable: bool,
    },
    /// A device-private page of some pagemap.
    Device {
        /// The pagemap whose memory holds the page.
        pagemap: PagemapId,
        /// That pagemap's owner.
        owner: OwnerId,
        /// Device frame number of this base page.
        dpfn: u64,
        /// Order of the mapping it belongs to.
        order: u8,
    },
}

/// A request to [`AddressSpace::collect_pages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectRequest {
    /// First byte (page aligned).
    pub start: u64,
    /// One past the last byte (page aligned, `> start`).
    pub end: u64,
    /// Fault absent pages in (like `HMM_PFN_REQ_FAULT`); when false, report them as
    /// [`CpuPage::Absent`] without side effects (a snapshot).
    pub fault: bool,
    /// Require write access: fault pages in writable (breaking copy-on-write); a read-only VMA
    /// then fails with [`Error::Perm`](crate::Error::Perm).
    pub write: bool,
    /// Device-private pages of this owner are reported as [`CpuPage::Device`]; device-private
    /// pages of any other owner are first migrated to system memory by the platform (Linux:
    /// `dev_private_owner`). `None`: every device page is migrated to system memory.
    pub owner: Option<OwnerId>,
}

/// The CPU address space being mirrored (Linux: `mm_struct` + HMM + interval notifiers).
///
/// All methods run in process context with no crate lock held, and may sleep.
pub trait AddressSpace {
    /// What [`register_notifier`](Self::register_notifier) hands back; given back to
    /// [`unregister_notifier`](Self::unregister_notifier).
    type NotifierHandle;

    /// The VMA containing `addr`, if any.
    fn find_vma(&self, addr: u64) -> Option<Vma>;

    /// Fill `out[i]` with the state of page `req.start + i * PAGE_SIZE`, for every page of
    /// `[req.start, req.end)` (`out.len()` is exactly the number of pages).
    ///
    /// Errors: [`Fault`](crate::Error::Fault) if part of the interval has no VMA (when
    /// faulting), [`Perm`](crate::Error::Perm) if `req.write` and the VMA is read-only,
    /// [`Busy`](crate::Error::Busy)/[`Again`](crate::Error::Again) if the platform wants a
    /// retry, [`NoMem`](crate::Error::NoMem). On error the content of `out` is unspecified.
    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()>;

    /// The packed collect contract (optional, faster): report the pages of
    /// `[req.start, req.end)` to `sink` in one walk, in address order. For the next base page
    /// that no earlier report covered (`sink.next_page()`, counted from `req.start`), call
    /// [`PageSink::push_system`] or [`PageSink::push_device`] with the frame of that base page
    /// and the order of the CPU mapping holding it (a 2 MiB huge page is one call), until
    /// [`PageSink::remaining`] is 0. The same rules as [`collect_pages`](Self::collect_pages)
    /// apply (`req.fault`, `req.write`, `req.owner`); the sink checks the pages itself, and the
    /// walk may stop early once [`PageSink::refused`] is true.
    ///
    /// The crate packs each report into 8 bytes and maps it in place, so the common fault
    /// reads each CPU page-table entry once (no [`CpuPage`] array, no second walk).
    ///
    /// Errors: as [`collect_pages`](Self::collect_pages);
    /// [`NotSupported`](crate::Error::NotSupported) if the platform does not implement the
    /// packed contract (the default): the crate then calls
    /// [`collect_pages`](Self::collect_pages) and feeds the sink itself.
    fn collect_packed(&self, req: &CollectRequest, sink: &mut PageSink<'_>) -> Result<()> {
        let _ = (req, sink);
        Err(crate::Error::NotSupported)
    }

    /// Register an interval notifier over `[start, end)`. From now until
    /// [`unregister_notifier`](Self::unregister_notifier) returns, the platform calls
    /// `invalidate_begin(id, ..)` before and `invalidate_end(id, ..)` after every change to the
    /// CPU page tables in the interval, on the [`Svm`](crate::Svm) this platform belongs to.
    ///
    /// If an invalidation overlapping `[start, end)` is already running when this is called,
    /// the platform must either wait for it to end before returning (what Linux's
    /// `mmu_interval_notifier_insert` + `mmu_interval_read_begin` achieve) or deliver
    /// `invalidate_begin(id, ..)` for it before returning and `invalidate_end(id, ..)` when it
    /// ends. The crate puts the notifier in its tree before calling this, so callbacks that
    /// arrive while it runs are not lost.
    ///
    /// Errors: [`NoMem`](crate::Error::NoMem), [`Invalid`](crate::Error::Invalid).
    fn register_notifier(
        &self,
        id: NotifierId,
        start: u64,
        end: u64,
    ) -> Result<Self::NotifierHandle>;

    /// Unregister a notifier. When it returns, no invalidation for it is running or will run.
    fn unregister_notifier(&self, handle: Self::NotifierHandle);

    // ---- Migration (Linux `migrate_vma_*`). The defaults describe an address space that
    // ---- cannot migrate: nothing is ever isolated, so every migration stops with `Busy`.

    /// Isolate the pages of `[req.start, req.end)` selected by `req` (`src.len()` is the number
    /// of pages): each isolated page's CPU mapping is replaced by a migration entry, so neither
    /// the CPU nor a device can reach it until [`migrate_finalize`](Self::migrate_finalize).
    /// Before touching the page tables the platform invalidates the interval with
    /// [`Event::Migrate`](crate::Event::Migrate)`{ owner: req.owner }`.
    ///
    /// Errors: [`Invalid`](crate::Error::Invalid) (bad interval or slice length). Pages outside
    /// any VMA are reported as [`MigrateSrc::Skip`], not as an error. After an error nothing is
    /// isolated.
    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        let _ = req;
        src.fill(MigrateSrc::Skip);
        Ok(())
    }

    /// Finish a migration: every isolated page with a destination other than
    /// [`MigrateDst::Keep`] gets it installed and its source released (a system frame is
    /// freed; a device page is handed to its pagemap's [`page_free`](crate::pagemap::Pagemap::page_free));
    /// every other isolated page is restored. Never fails.
    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        let _ = (req, src, dst);
    }

    /// Allocate `out.len()` system pages for a migration to RAM. Errors:
    /// [`NoMem`](crate::Error::NoMem) (then nothing is allocated).
    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        let _ = out;
        Err(crate::Error::NoMem)
    }

    /// Free system pages from [`alloc_system_pages`](Self::alloc_system_pages) that were not
    /// installed.
    fn free_system_pages(&self, pfns: &[u64]) {
        let _ = pfns;
    }
}

/// Maps system pages for the device (Linux: `dma_map_page` through the IOMMU).
pub trait DmaMapper {
    /// Map `2^order` pages starting at frame `pfn` (naturally aligned) for the device; returns
    /// the page-aligned bus address. Process context; called by `get_pages` with the notifier
    /// lock held shared (an invalidation waits): must not call back into the crate.
    ///
    /// Errors: [`NoMem`](crate::Error::NoMem) (no IOVA space), [`Fault`](crate::Error::Fault)
    /// (mapping error).
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64>;

    /// Unmap a mapping made by [`map_page`](Self::map_page), with the same order and direction.
    /// The crate unmaps every mapping exactly once. *Invalidation context*: must not allocate
    /// or sleep.
    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection);

    /// Map `2^order` pages of a peer device's memory, reachable at `resource` over the
    /// interconnect (as [`DeviceMemory::device_map`] of the page's pagemap reported), for this
    /// device (Linux: `dma_map_resource`); returns the address this device uses. The default
    /// refuses with [`NotSupported`](crate::Error::NotSupported) (no peer-to-peer).
    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        let _ = (resource, order, dir);
        Err(crate::Error::NotSupported)
    }

    /// Unmap a mapping made by [`map_peer`](Self::map_peer). *Invalidation context*.
    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        let _ = (addr, order, dir);
    }

    /// Unmap every mapping behind `entries` at once (the page state of one range or userptr,
    /// on invalidation, unmap and free): system pages as by [`unmap_page`](Self::unmap_page),
    /// peer pages as by [`unmap_peer`](Self::unmap_peer), device-local entries skipped. A
    /// platform that can batch the work (one IOTLB flush for the batch) overrides it; the
    /// default unmaps one entry at a time. *Invalidation context*: must not allocate or sleep.
    fn unmap_entries(&self, entries: &[PageEntry]) {
        for e in entries {
            match e.protocol() {
                Protocol::SYSTEM => self.unmap_page(e.addr(), e.order(), e.dir()),
                Protocol::DEVICE_LOCAL => {}
                _ => self.unmap_peer(e.addr(), e.order(), e.dir()),
            }
        }
    }
}

/// The device's page tables (the driver's GPU page-table code).
pub trait DevicePageTable {
    /// Remove every device page-table entry in `[start, end)` and invalidate the device TLBs,
    /// so that when it returns the device can no longer reach pages of the interval.
    /// *Invalidation context*: must not allocate or sleep.
    fn zap(&self, start: u64, end: u64);
}

/// Everything the crate needs from one device mirroring one CPU address space.
///
/// ```
/// # use gpusvm::platform::*;
/// # use gpusvm::Result;
/// struct Mm; struct Iommu; struct Pt;
/// impl AddressSpace for Mm {
///     type NotifierHandle = ();
///     fn find_vma(&self, _: u64) -> Option<Vma> { None }
///     fn collect_pages(&self, _: &CollectRequest, _: &mut [CpuPage]) -> Result<()> {
///         Err(gpusvm::Error::Fault)
///     }
///     fn register_notifier(&self, _: NotifierId, _: u64, _: u64) -> Result<()> { Ok(()) }
///     fn unregister_notifier(&self, _: ()) {}
/// }
/// impl DmaMapper for Iommu {
///     fn map_page(&self, pfn: u64, _: u8, _: DmaDirection) -> Result<u64> { Ok(pfn << PAGE_SHIFT) }
///     fn unmap_page(&self, _: u64, _: u8, _: DmaDirection) {}
/// }
/// impl DevicePageTable for Pt { fn zap(&self, _: u64, _: u64) {} }
/// struct MyGpu { mm: Mm, iommu: Iommu, pt: Pt }
/// impl Platform for MyGpu {
///     type Mm = Mm; type Dma = Iommu; type Pt = Pt; type Mem = NoDeviceMemory;
///     type Host = gpusvm::DefaultHost;
///     fn mm(&self) -> &Mm { &self.mm }
///     fn dma(&self) -> &Iommu { &self.iommu }
///     fn page_table(&self) -> &Pt { &self.pt }
///     fn now_ns(&self) -> u64 { 0 }
/// }
/// ```
pub trait Platform {
    /// The CPU address space.
    type Mm: AddressSpace;
    /// The device's DMA mapper.
    type Dma: DmaMapper;
    /// The device's page tables.
    type Pt: DevicePageTable;
    /// The device memory of this device's pagemap ([`NoDeviceMemory`] if it has none).
    type Mem: DeviceMemory;
    /// The lock facet: the mutex and reader-writer lock types of every lock the crate takes
    /// for this platform ([`DefaultHost`](crate::DefaultHost) on bare metal; see
    /// [`sync`](crate::sync) for the lock table and what a kernel host supplies).
    type Host: Host;
    /// The CPU address space.
    fn mm(&self) -> &Self::Mm;
    /// The device's DMA mapper.
    fn dma(&self) -> &Self::Dma;
    /// The device's page tables.
    fn page_table(&self) -> &Self::Pt;
    /// A monotonic clock in nanoseconds (used for retry deadlines and timeslices).
    fn now_ns(&self) -> u64;
}

bitflags! {
    /// Which pages [`AddressSpace::migrate_isolate`] selects.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MigrateSelect: u32 {
        /// System pages (and absent pages of anonymous memory).
        const SYSTEM = 1;
        /// Device-private pages (of `MigrateRequest::pagemap` if set, else of
        /// `MigrateRequest::owner`).
        const DEVICE_PRIVATE = 2;
    }
}

/// A request to isolate pages for migration (Linux `struct migrate_vma`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateRequest {
    /// First byte (page aligned).
    pub start: u64,
    /// One past the last byte (page aligned, `> start`).
    pub end: u64,
    /// Which pages to select.
    pub select: MigrateSelect,
    /// Select device-private pages of this pagemap only.
    pub pagemap: Option<PagemapId>,
    /// The owner performing the migration; device-private pages of this owner are selected when
    /// `pagemap` is `None`. Passed on in the [`Event::Migrate`](crate::Event::Migrate)
    /// invalidation.
    pub owner: Option<OwnerId>,
}

/// One page as isolated by [`AddressSpace::migrate_isolate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MigrateSrc {
    /// Not migrating: not selected, outside any VMA, or (if `busy`) selected but could not be
    /// isolated (pinned, shared, under migration already).
    #[default]
    Skip,
    /// Selected but could not be isolated.
    Busy,
    /// Not present in anonymous memory: migrates as a zero-filled page.
    Absent,
    /// A system page, isolated.
    System {
        /// Frame number.
        pfn: u64,
    },
    /// A device-private page, isolated.
    Device {
        /// Its pagemap.
        pagemap: PagemapId,
        /// Device frame number.
        dpfn: u64,
    },
}

impl MigrateSrc {
    /// Whether the page was isolated (it must then get a destination or be restored).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn isolated(self) -> bool {
        matches!(
            self,
            MigrateSrc::Absent | MigrateSrc::System { .. } | MigrateSrc::Device { .. }
        )
    }
}

/// Where an isolated page goes, for [`AddressSpace::migrate_finalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MigrateDst {
    /// Restore the source (the migration of this page failed or was not wanted).
    #[default]
    Keep,
    /// A system page from [`AddressSpace::alloc_system_pages`].
    System {
        /// Frame number.
        pfn: u64,
    },
    /// A device page.
    Device {
        /// Its pagemap.
        pagemap: PagemapId,
        /// That pagemap's owner.
        owner: OwnerId,
        /// Device frame number.
        dpfn: u64,
        /// Order of the mapping to install (naturally aligned in VA and frame).
        order: u8,
    },
}

/// What one copy-engine run moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyKind {
    /// From system memory (bus address) to device memory (device physical address).
    RamToDevice,
    /// From device memory to system memory (bus address).
    DeviceToRam,
    /// From one device's memory to another's over the interconnect.
    DeviceToDevice,
    /// Zero-fill device memory (no source).
    ZeroDevice,
}

/// One command for the copy engine: `npages` contiguous pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CopyRun {
    /// What is copied.
    pub kind: CopyKind,
    /// Source address (bus address for system memory, device physical address for device
    /// memory; unused for [`CopyKind::ZeroDevice`]).
    pub src: u64,
    /// Destination address (same conventions).
    pub dst: u64,
    /// Number of base pages.
    pub npages: u64,
}

/// A copy that stopped part way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyError {
    /// How many runs completed before the failure.
    pub completed: usize,
    /// The error.
    pub error: crate::Error,
}

/// The device memory of one pagemap: allocation, copies, and the DMA mapper its copy engine
/// uses for system memory. Process context, no crate lock held (except
/// [`release`](Self::release), see there).
pub trait DeviceMemory {
    /// The DMA mapper of the device owning this memory (maps system pages for its copy engine).
    type Dma: DmaMapper;
    /// That DMA mapper.
    fn dma(&self) -> &Self::Dma;
    /// Allocate `out.len()` device pages (fill `out` with device frame numbers; contiguous,
    /// naturally aligned runs make larger copies and mappings possible). Errors:
    /// [`NoMem`](crate::Error::NoMem), and then nothing is allocated.
    fn alloc(&self, out: &mut [u64]) -> Result<()>;
    /// Release an allocation made by [`alloc`](Self::alloc) (all of its pages at once). Called
    /// exactly once per allocation, possibly from the platform's page-free path with its page
    /// table lock held: must not sleep or call back into the crate.
    fn release(&self, dpfns: &[u64]);
    /// Execute copy runs in order. On failure, report how many completed.
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError>;
    /// A monotonic clock in nanoseconds (timeslices).
    fn now_ns(&self) -> u64;
    /// Where `2^order` pages from device frame `dpfn` are reachable by peer devices of the same
    /// owner, and with which protocol (a value above
    /// [`Protocol::DEVICE_LOCAL`](crate::types::Protocol::DEVICE_LOCAL)). The importing device
    /// then maps that resource with [`DmaMapper::map_peer`]. The default refuses with
    /// [`NotSupported`](crate::Error::NotSupported).
    fn device_map(&self, dpfn: u64, order: u8) -> Result<(u64, crate::types::Protocol)> {
        let _ = (dpfn, order);
        Err(crate::Error::NotSupported)
    }
}

/// A DMA mapper that maps nothing (every map fails with [`NoMem`](crate::Error::NoMem)).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullDma;

impl DmaMapper for NullDma {
    fn map_page(&self, _pfn: u64, _order: u8, _dir: DmaDirection) -> Result<u64> {
        Err(crate::Error::NoMem)
    }
    fn unmap_page(&self, _addr: u64, _order: u8, _dir: DmaDirection) {}
}

/// Device memory for devices that have none (`type Mem = NoDeviceMemory` in
/// [`Platform`]): every allocation fails with [`NoMem`](crate::Error::NoMem).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeviceMemory;

impl DeviceMemory for NoDeviceMemory {
    type Dma = NullDma;
    fn dma(&self) -> &NullDma {
        &NullDma
    }
    fn alloc(&self, _out: &mut [u64]) -> Result<()> {
        Err(crate::Error::NoMem)
    }
    fn release(&self, _dpfns: &[u64]) {}
    fn copy(&self, _runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        Err(CopyError {
            completed: 0,
            error: crate::Error::NotSupported,
        })
    }
    fn now_ns(&self) -> u64 {
        0
    }
}
