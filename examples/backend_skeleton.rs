//! A template of a platform backend, the way a Rust-for-Linux GPU driver would fill it in.
//!
//! Every trait method of [`gpusvm::platform`] is here, stubbed so the program runs: stubs return
//! [`Error::NotSupported`] (or report "nothing there") instead of panicking. Each method says
//!
//! - **wraps**: the kernel facility (or driver facility) a real implementation calls,
//! - **context**: where the crate calls it from. *Process context* = a driver worker or ioctl,
//!   no crate lock held, may sleep and allocate. *Invalidation context* = inside
//!   [`Svm::invalidate_begin`], under the crate's notifier spin lock: **no allocation, no
//!   sleeping, no call back into the crate or the mm**,
//! - **errors**: what it may return, and how kernel errnos translate.
//!
//! At the bottom, [`kernel_glue`] shows how the kernel callbacks are wired to the crate:
//!
//! | kernel callback | crate call |
//! | --- | --- |
//! | `mmu_interval_notifier_ops.invalidate` | [`Svm::invalidate_begin`] + [`Svm::invalidate_end`] |
//! | GPU page-fault interrupt → fault worker | [`Svm::handle_fault_and_bind`] |
//! | `dev_pagemap_ops.page_free` | [`Pagemap::page_free`] |
//! | `dev_pagemap_ops.migrate_to_ram` | [`Pagemap::migrate_to_ram`] |
//! | garbage-collector worker | [`Svm::gc_run`] |
//! | VM destruction / `mm` release | [`Svm::close`] |
//!
//! Run it: `cargo run --example backend_skeleton --features testkit`. For a complete, working
//! backend to compare with, read the simulator (`src/sim/`, feature `sim`); to test a backend
//! against the crate's contract, run the conformance kit on it (`kit_glue`, `gpusvm::testkit`).

// The docs of this example link to its own (private) items.
#![allow(rustdoc::private_intra_doc_links)]

use core::alloc::Layout;
use core::ptr::NonNull;
use gpusvm::heap::{AllocCtx, Allocator, Global};
use gpusvm::pagemap::Pagemap;
use gpusvm::pages::Protocol;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyRun, CpuPage, DeviceMemory, DevicePageTable,
    DmaDirection, DmaMapper, MigrateDst, MigrateRequest, MigrateSrc, NotifierId, OwnerId,
    PagemapId, Platform, Vma,
};
use gpusvm::sync::{LockClass, RawMutex, RawRwLock};
use gpusvm::Host;
use gpusvm::{Access, Error, Result, Svm, SvmConfig};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Log a stub call (process context only: a real backend must not log from invalidation
/// context).
macro_rules! trace {
    ($($fmt:tt)*) => {
        println!("    [stub] {}", format_args!($($fmt)*))
    };
}

// =============================================================================================
// AddressSpace: the CPU process address space (`struct mm_struct` + HMM + migrate_vma + MMU
// interval notifiers).
// =============================================================================================

/// The mirrored CPU address space.
///
/// A real backend holds: the `mm_struct` (`mmgrab`bed at VM creation, `mmget_not_zero` around
/// each use so a dying process is refused with `Error::Fault`), a back pointer to the driver's
/// VM object (to reach its `Svm` from the notifier callback), and the `void *` that stands for
/// this device's [`OwnerId`] in `hmm_range.dev_private_owner` / `migrate_vma.pgmap_owner`.
#[derive(Debug, Default)]
struct SkelMm;

/// What [`SkelMm::register_notifier`] hands back: in a real backend a pinned heap object
/// (`Pin<KBox<..>>`) embedding the `struct mmu_interval_notifier` plus the [`NotifierId`] to pass
/// to the `Svm` and the back pointer to the VM.
#[derive(Debug)]
struct SkelNotifier {
    id: NotifierId,
}

impl AddressSpace for SkelMm {
    type NotifierHandle = SkelNotifier;

    /// The VMA containing `addr`.
    ///
    /// - wraps: `mmap_read_lock(mm)`; `vma_lookup(mm, addr)`; report `vm_start`, `vm_end` and
    ///   `VM_READ`/`VM_WRITE` of `vm_flags`; `mmap_read_unlock(mm)`. Refuse VMAs HMM cannot
    ///   mirror (`VM_IO`, `VM_PFNMAP`, ...) with `None`.
    /// - context: process context (fault worker, prefetch ioctl); no notifier lock held, but
    ///   when a range is being created the crate's structure lock is (see the note at
    ///   [`SkelMm::register_notifier`]).
    /// - errors: none; `None` makes the crate fail the fault with `Error::Fault` (`-EFAULT`).
    fn find_vma(&self, addr: u64) -> Option<Vma> {
        trace!("find_vma({addr:#x}) -> None: no mm behind this skeleton");
        None
    }

    /// Report the CPU pages of `[req.start, req.end)`, faulting them in if `req.fault`.
    ///
    /// - wraps: HMM. Fill a `struct hmm_range` with `notifier` = the interval notifier covering
    ///   the interval, `start`/`end`, an `hmm_pfns` array (allocate it here, process context),
    ///   `default_flags = HMM_PFN_REQ_FAULT (| HMM_PFN_REQ_WRITE if req.write)` when `req.fault`
    ///   else 0, `dev_private_owner` = the pointer for `req.owner` (NULL for `None`). Then loop:
    ///   `range.notifier_seq = mmu_interval_read_begin(notifier)` (this sleeps while a CPU
    ///   page-table change is in progress — it is what makes the back-to-back
    ///   begin/end wiring in [`kernel_glue::mmu_invalidate`] safe); `mmap_read_lock`;
    ///   `hmm_range_fault(&range)`; `mmap_read_unlock`; retry on `-EBUSY` until
    ///   `HMM_RANGE_DEFAULT_TIMEOUT`. Translate each `hmm_pfns[i]`: no `HMM_PFN_VALID` →
    ///   [`CpuPage::Absent`]; a device-private page (`is_device_private_page`) →
    ///   [`CpuPage::Device`] with the pagemap and frame from its `dev_pagemap` (`zone_device_data`);
    ///   otherwise [`CpuPage::System`] with `pfn`, `order = hmm_pfn_to_map_order()` and
    ///   `writable = HMM_PFN_WRITE`. No need to `mmu_interval_read_retry` afterwards: the crate
    ///   commits against its own sequence counter, which every invalidation bumps.
    /// - context: process context, no notifier lock held. Snapshots (`req.fault == false`,
    ///   used to size a new range) run under the structure lock, like `find_vma`.
    /// - errors: `-EFAULT` → `Error::Fault`, `-EPERM` → `Error::Perm`, `-EBUSY` after the
    ///   timeout → `Error::Busy` (or `Error::Again` to have the crate retry), `-ENOMEM` →
    ///   `Error::NoMem`; a malformed request → `Error::Invalid`.
    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        trace!(
            "collect_pages({:#x}..{:#x}, {} pages) -> NotSupported",
            req.start,
            req.end,
            out.len()
        );
        Err(Error::NotSupported)
    }

    /// Start receiving invalidations of `[start, end)` for notifier `id`.
    ///
    /// - wraps: allocate the notifier object (process context, `GFP_KERNEL`), then
    ///   `mmu_interval_notifier_insert(&obj.mni, mm, start, end - start, &OPS)` where `OPS.invalidate`
    ///   is [`kernel_glue::mmu_invalidate`]. The callback may run as soon as insert returns (the
    ///   crate already has the notifier in its tree by then).
    /// - context: process context, no lock of the crate held (the crate registers before it
    ///   takes the structure lock), so it may sleep; never call back into the `Svm`.
    /// - errors: `-ENOMEM` → `Error::NoMem`, `-EINVAL`/overflow → `Error::Invalid`. On error
    ///   nothing stays registered.
    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<SkelNotifier> {
        trace!(
            "register_notifier({:#x}, {start:#x}..{end:#x}) -> NotSupported",
            id.0
        );
        Err(Error::NotSupported)
    }

    /// Stop receiving invalidations for a notifier.
    ///
    /// - wraps: `mmu_interval_notifier_remove(&obj.mni)` (waits for a running `invalidate`
    ///   callback to finish), then free the object.
    /// - context: process context, no notifier lock held (may sleep); the structure lock is
    ///   held when a range removal or `close` drops the last range of the notifier. When it
    ///   returns no callback for this notifier may run any more.
    /// - errors: none.
    fn unregister_notifier(&self, handle: SkelNotifier) {
        trace!("unregister_notifier({:#x})", handle.id.0);
    }

    /// Isolate the pages of a migration (phase 1 of 3).
    ///
    /// - wraps: `migrate_vma_setup()`. Per VMA of the interval (under `mmap_read_lock`), fill a
    ///   `struct migrate_vma` with `vma`, `start`/`end`, `src`/`dst` pfn arrays,
    ///   `pgmap_owner` = the pointer for `req.owner`, and `flags` from `req.select`
    ///   (`MIGRATE_VMA_SELECT_SYSTEM`, `MIGRATE_VMA_SELECT_DEVICE_PRIVATE`; for a CPU fault on a
    ///   device page also `fault_page`). The kernel sends `MMU_NOTIFY_MIGRATE` with
    ///   `owner = pgmap_owner` through the notifiers itself. Translate `src[i]`: with
    ///   `MIGRATE_PFN_MIGRATE` and no page → [`MigrateSrc::Absent`], a device-private page →
    ///   [`MigrateSrc::Device`], else [`MigrateSrc::System`]; selected but not
    ///   `MIGRATE_PFN_MIGRATE` → [`MigrateSrc::Busy`]; the rest and holes between VMAs →
    ///   [`MigrateSrc::Skip`]. Keep the `struct migrate_vma` (keyed by `req.start`) for
    ///   [`migrate_finalize`](AddressSpace::migrate_finalize). Device memory that has no VMA any
    ///   more (device removal) is evicted by the driver with `migrate_device_range()` /
    ///   `migrate_device_pages()` / `migrate_device_finalize()` instead.
    /// - context: process context, no crate lock held.
    /// - errors: `Error::Invalid` for a bad interval or slice length; `-ENOMEM` →
    ///   `Error::NoMem`. After an error nothing may stay isolated.
    ///
    /// The default implementation (used when these four methods are omitted) isolates nothing,
    /// so every migration stops with `Busy` and ranges stay in system memory.
    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        trace!(
            "migrate_isolate({:#x}..{:#x}) -> nothing isolated",
            req.start,
            req.end
        );
        src.fill(MigrateSrc::Skip);
        Ok(())
    }

    /// Install the destinations and release the sources (phases 2 and 3).
    ///
    /// - wraps: for each isolated page with a destination, set `dst[i] = migrate_pfn(pfn)`
    ///   (a system page from [`alloc_system_pages`](AddressSpace::alloc_system_pages), already
    ///   locked; or a device page after `zone_device_page_init()`), leave 0 for
    ///   [`MigrateDst::Keep`]; then `migrate_vma_pages()` and `migrate_vma_finalize()`. Released
    ///   device-private sources come back through `dev_pagemap_ops.page_free`
    ///   ([`kernel_glue::page_free`]).
    /// - context: process context, no crate lock held.
    /// - errors: none (pages that cannot be installed are restored by the kernel).
    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        let _ = (src, dst);
        trace!("migrate_finalize({:#x}..{:#x})", req.start, req.end);
    }

    /// Allocate destination system pages for a migration to RAM.
    ///
    /// - wraps: `alloc_page(GFP_HIGHUSER)` (or `alloc_page_vma()`) + `lock_page()` per page
    ///   (`migrate_vma_pages` wants locked destinations); report `page_to_pfn()`.
    /// - context: process context, no crate lock held (may sleep, may reclaim).
    /// - errors: `Error::NoMem`, after freeing what was allocated.
    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        trace!("alloc_system_pages({} pages) -> NoMem", out.len());
        Err(Error::NoMem)
    }

    /// Free system pages that were allocated but not installed.
    ///
    /// - wraps: `unlock_page()` + `put_page()` per page.
    /// - context: process context.
    fn free_system_pages(&self, pfns: &[u64]) {
        trace!("free_system_pages({} pages)", pfns.len());
    }
}

// =============================================================================================
// DmaMapper: system pages (and peers' device memory) as seen by this device.
// =============================================================================================

/// This device's DMA mapper. A real backend holds the `struct device` (`ARef<Device>`).
#[derive(Debug, Default)]
struct SkelDma;

impl DmaMapper for SkelDma {
    /// Map `2^order` system pages from `pfn` for the device.
    ///
    /// - wraps: `dma_map_page(dev, pfn_to_page(pfn), 0, PAGE_SIZE << order, dir)` then
    ///   `dma_mapping_error()`; `dir` maps to `DMA_TO_DEVICE`/`DMA_FROM_DEVICE`/
    ///   `DMA_BIDIRECTIONAL`.
    /// - context: process context, no crate lock held.
    /// - errors: a mapping error → `Error::Fault` (or `Error::NoMem` when the IOVA space is
    ///   exhausted).
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        trace!("map_page(pfn {pfn:#x}, order {order}, {dir:?}) -> NotSupported");
        Err(Error::NotSupported)
    }

    /// Undo [`map_page`](DmaMapper::map_page) (same size and direction).
    ///
    /// - wraps: `dma_unmap_page(dev, addr, PAGE_SIZE << order, dir)` (atomic-safe).
    /// - context: **invalidation context** (also process context): no allocation, no sleeping,
    ///   no logging. The crate calls it exactly once per successful map.
    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        let _ = (addr, order, dir);
    }

    /// Map `2^order` pages of a peer device's memory, reachable at `resource`.
    ///
    /// - wraps: `dma_map_resource(dev, resource, PAGE_SIZE << order, dir, 0)` +
    ///   `dma_mapping_error()` (PCIe P2P through the peer's BAR; check the path with
    ///   `pci_p2pdma_distance()` once at set-up), or the interconnect's own mapping.
    /// - context: process context, no crate lock held.
    /// - errors: `Error::NotSupported` (no peer-to-peer: the crate migrates instead),
    ///   `Error::NoLink` (no path to that peer), `Error::Fault`/`Error::NoMem`.
    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        trace!("map_peer({resource:#x}, order {order}, {dir:?}) -> NotSupported");
        Err(Error::NotSupported)
    }

    /// Undo [`map_peer`](DmaMapper::map_peer).
    ///
    /// - wraps: `dma_unmap_resource(dev, addr, PAGE_SIZE << order, dir, 0)`.
    /// - context: **invalidation context**.
    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        let _ = (addr, order, dir);
    }
}

// =============================================================================================
// DevicePageTable: the driver's GPU page tables of this VM.
// =============================================================================================

/// The GPU page tables of one VM. A real backend holds the VM's page-table root, the lock that
/// serialises PTE updates with binds, and the TLB-invalidation interface.
#[derive(Debug, Default)]
struct SkelPageTable {
    zaps: AtomicUsize,
}

impl DevicePageTable for SkelPageTable {
    /// Remove every GPU PTE of `[start, end)` and invalidate the GPU TLBs; when this returns,
    /// the device can no longer reach the old pages.
    ///
    /// - wraps: the driver's page-table walker (clear the leaf entries, or mark them invalid,
    ///   over the range) and its TLB invalidation (e.g. a GuC/MMIO TLB-invalidation request per
    ///   GT or engine), then wait for its completion.
    /// - context: **invalidation context**, under the crate's notifier spin lock: the page
    ///   tables must be preallocated (never allocate here), the PTE lock must be a spin lock,
    ///   and the TLB-invalidation wait must poll (e.g. `read_poll_timeout_atomic`) rather than
    ///   sleep on a fence.
    /// - errors: none may be reported: on a hung device, fence it off (wedge) rather than
    ///   leave stale translations.
    fn zap(&self, start: u64, end: u64) {
        let _ = (start, end);
        self.zaps.fetch_add(1, Ordering::Relaxed);
    }
}

impl SkelPageTable {
    /// Driver code, not a trait method: write the PTEs of one range from its page entries.
    /// Runs inside [`Svm::bind`] under the crate's notifier lock (shared), so an invalidation
    /// cannot complete meanwhile: same rules as invalidation context (no allocation, no
    /// sleeping). Each entry covers `entry.size()` bytes from where the previous one ended;
    /// `entry.protocol()` tells system memory ([`Protocol::SYSTEM`], a DMA address), the
    /// device's own memory ([`Protocol::DEVICE_LOCAL`], a VRAM address) or a peer's.
    /// `atomics` (from [`Svm::device_atomics`]) sets the PTE's atomic-enable bit: an atomic
    /// through a PTE without it must raise a fault with [`Access::Atomic`].
    fn write_ptes(
        &self,
        start: u64,
        entries: &[gpusvm::PageEntry],
        atomics: gpusvm::policy::DeviceAtomics,
    ) -> usize {
        let mut va = start;
        for e in entries {
            let _pte = (
                va,
                e.addr(),
                e.order(),
                e.writable(),
                e.protocol(),
                atomics.allows(*e),
            );
            va = va.saturating_add(e.size());
        }
        entries.len()
    }
}

// =============================================================================================
// DeviceMemory: this device's VRAM as one pagemap (`struct dev_pagemap` of type
// MEMORY_DEVICE_PRIVATE + the driver's allocator and copy engine).
// =============================================================================================

/// The device memory of one device (or tile). A real backend holds: the `dev_pagemap`
/// registered with `devm_memremap_pages()` (type `MEMORY_DEVICE_PRIVATE`, `ops` =
/// [`kernel_glue`]'s `page_free`/`migrate_to_ram`, `owner` = the owner pointer), the VRAM
/// buddy allocator (`drm_buddy`), the copy engine, and the device's DMA mapper for it.
#[derive(Debug, Default)]
struct SkelVram {
    dma: SkelDma,
}

impl DeviceMemory for SkelVram {
    type Dma = SkelDma;

    /// The DMA mapper the copy engine uses to reach system memory (this device's).
    fn dma(&self) -> &SkelDma {
        &self.dma
    }

    /// Allocate `out.len()` device pages.
    ///
    /// - wraps: the driver's VRAM buddy allocator (`drm_buddy_alloc_blocks()` under its mutex),
    ///   preferring large contiguous, naturally aligned blocks (they become 2 MiB mappings and
    ///   single copy runs); report each page's device-private pfn (the `struct page` pfn in the
    ///   `dev_pagemap`'s range for that VRAM offset). Evicting other buffers to make room is
    ///   allowed here.
    /// - context: process context, no crate lock held (may sleep).
    /// - errors: `Error::NoMem` with nothing allocated (the range then stays in system memory,
    ///   or the crate evicts and retries).
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        trace!("DeviceMemory::alloc({} pages) -> NoMem", out.len());
        Err(Error::NoMem)
    }

    /// Release an allocation (all its pages at once), when its last page was freed.
    ///
    /// - wraps: `drm_buddy_free_list()`.
    /// - context: may run from `dev_pagemap_ops.page_free` with the kernel's page-table locks
    ///   held: must not sleep. If the buddy allocator takes a mutex, queue the blocks on a
    ///   lock-free list and free them from a worker.
    fn release(&self, dpfns: &[u64]) {
        let _ = dpfns;
    }

    /// Execute copy runs in order: RAM → VRAM, VRAM → RAM, VRAM → VRAM (peer), zero-fill.
    ///
    /// - wraps: the driver's copy engine: encode one blit/copy command per run into a batch or
    ///   ring (e.g. a blitter `MEM_COPY`/`MEM_SET`, or a DMA engine's descriptors), submit, and
    ///   wait for the job's fence. System addresses are DMA addresses from
    ///   [`DeviceMemory::dma`]; device addresses are VRAM addresses of this (or, with
    ///   `DeviceToDevice`, the peer's) memory.
    /// - context: process context, no crate lock held (may sleep on the fence).
    /// - errors: `CopyError { completed, error }` with the number of runs that finished
    ///   (`-EIO`/GPU hang → `Error::Fault`, `-ETIME` → `Error::Busy`); the crate restores every
    ///   page that did not move.
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        trace!("DeviceMemory::copy({} runs) -> NotSupported", runs.len());
        Err(CopyError {
            completed: 0,
            error: Error::NotSupported,
        })
    }

    /// A monotonic clock in nanoseconds (migration timeslices).
    ///
    /// - wraps: `ktime_get_ns()`.
    fn now_ns(&self) -> u64 {
        0
    }

    /// Where peers of the same owner reach `2^order` pages from `dpfn`, and with which protocol.
    ///
    /// - wraps: `drm_pagemap_ops.device_map` (`drm_pagemap_device_map()`): the page's address
    ///   through the BAR or the interconnect, and the interconnect protocol (a [`Protocol`]
    ///   above `DEVICE_LOCAL`). The importing device then maps it with
    ///   [`DmaMapper::map_peer`].
    /// - context: process context, no crate lock held.
    /// - errors: `Error::NotSupported` (no peer access: the crate migrates instead).
    fn device_map(&self, dpfn: u64, order: u8) -> Result<(u64, Protocol)> {
        trace!("device_map({dpfn:#x}, order {order}) -> NotSupported");
        Err(Error::NotSupported)
    }
}

// =============================================================================================
// Platform: one device mirroring one process (one per `Svm`, i.e. per GPU VM).
// =============================================================================================

/// The lock facet (`Platform::Host`). A kernel driver maps each raw lock onto a kernel lock,
/// keyed by the crate's static lock class so that lockdep sees the crate's locks by name:
///
/// - `RawRwLock` → `struct rw_semaphore` for classes that may sleep (`class.may_sleep`: the
///   notifier lock, like drm_gpusvm's `notifier_lock`), `rwlock_t` for the others;
///   `read`/`write` → `down_read`/`down_write`, `try_*` → `down_*_trylock`, unlock →
///   `up_read`/`up_write`.
/// - `RawMutex` → `struct mutex` where `class.may_sleep`, else `spinlock_t`.
/// - `new(class)` → `__init_rwsem(&sem, class.name, &KEYS[rank])` / `__mutex_init` /
///   `__spin_lock_init` with one static `lock_class_key` per class. A kernel lock must not move
///   after init: `new` allocates it (`kmalloc`, failing with `Error::NoMem`), initialises it
///   in place and keeps a pointer here; `Drop` destroys and frees it.
///
/// This skeleton runs in user space, so it forwards to the crate's spin locks and only shows
/// where each kernel call goes.
struct SkelHost;

struct SkelMutex(<gpusvm::sync::SpinHost as Host>::Mutex);
struct SkelRwLock(<gpusvm::sync::SpinHost as Host>::RwLock);

// SAFETY: every method forwards to `SpinMutex`, which upholds the `RawMutex` contract.
unsafe impl RawMutex for SkelMutex {
    fn new(class: &'static LockClass) -> gpusvm::Result<Self> {
        // kernel: p = kmalloc(..) (NULL: Err(NoMem)), then
        // if class.may_sleep { __mutex_init(p, ..) } else { __spin_lock_init(p, ..) }
        Ok(SkelMutex(RawMutex::new(class)?))
    }
    fn lock(&self) {
        self.0.lock() // kernel: mutex_lock / spin_lock
    }
    fn try_lock(&self) -> bool {
        self.0.try_lock() // kernel: mutex_trylock / spin_trylock
    }
    unsafe fn unlock(&self) {
        // SAFETY: forwarded from the caller, who holds the lock.
        unsafe { self.0.unlock() } // kernel: mutex_unlock / spin_unlock
    }
}

// SAFETY: every method forwards to `SpinRwLock`, which upholds the `RawRwLock` contract.
unsafe impl RawRwLock for SkelRwLock {
    fn new(class: &'static LockClass) -> gpusvm::Result<Self> {
        // kernel: p = kmalloc(..) (NULL: Err(NoMem)), then
        // if class.may_sleep { __init_rwsem(p, ..) } else { __rwlock_init(p, ..) }
        Ok(SkelRwLock(RawRwLock::new(class)?))
    }
    fn read(&self) {
        self.0.read() // kernel: down_read / read_lock
    }
    fn try_read(&self) -> bool {
        self.0.try_read() // kernel: down_read_trylock / read_trylock
    }
    unsafe fn unlock_read(&self) {
        // SAFETY: forwarded from the caller, who holds the lock shared.
        unsafe { self.0.unlock_read() } // kernel: up_read / read_unlock
    }
    fn write(&self) {
        self.0.write() // kernel: down_write / write_lock
    }
    fn try_write(&self) -> bool {
        self.0.try_write() // kernel: down_write_trylock / write_trylock
    }
    unsafe fn unlock_write(&self) {
        // SAFETY: forwarded from the caller, who holds the lock exclusively.
        unsafe { self.0.unlock_write() } // kernel: up_write / write_unlock
    }
}

/// The allocator: a kernel backend calls `kmalloc`/`kfree`; this skeleton forwards to the
/// global allocator.
#[derive(Debug, Default, Clone, Copy)]
struct SkelAlloc;

// SAFETY: forwards to `Global`, which upholds the allocator contract.
unsafe impl Allocator for SkelAlloc {
    fn allocate(layout: Layout, ctx: AllocCtx) -> Result<NonNull<u8>> {
        // kernel: kmalloc(layout.size(), ctx == MaySleep ? GFP_KERNEL : GFP_NOWAIT), NULL → NoMem
        // (kmalloc aligns to the size's power of two up to PAGE_SIZE; check layout.align()).
        Global::allocate(layout, ctx)
    }
    unsafe fn deallocate(ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller. kernel: kfree(ptr)
        unsafe { Global::deallocate(ptr, layout) }
    }
}

impl Host for SkelHost {
    type Mutex = SkelMutex;
    type RwLock = SkelRwLock;
    type Alloc = SkelAlloc;
}

/// The backend of one GPU VM.
#[derive(Debug, Default)]
struct SkelGpu {
    mm: SkelMm,
    dma: SkelDma,
    pt: SkelPageTable,
}

impl Platform for SkelGpu {
    type Mm = SkelMm;
    type Dma = SkelDma;
    type Pt = SkelPageTable;
    type Mem = SkelVram;
    type Host = SkelHost;

    fn mm(&self) -> &SkelMm {
        &self.mm
    }
    fn dma(&self) -> &SkelDma {
        &self.dma
    }
    fn page_table(&self) -> &SkelPageTable {
        &self.pt
    }
    /// Retry deadlines of page collection. Wraps `ktime_get_ns()`.
    fn now_ns(&self) -> u64 {
        0
    }
}

// =============================================================================================
// Wiring the kernel callbacks to the crate.
// =============================================================================================

/// What the C callbacks of the driver do, written as plain functions. In a real driver each is
/// the body of an `extern "C"` callback (or of the Rust-for-Linux abstraction's trait method)
/// that first recovers the driver object from the C pointer (`container_of!` on the embedded
/// `mmu_interval_notifier`, `page->pgmap` for device pages).
mod kernel_glue {
    use super::*;
    use gpusvm::Event;

    /// `enum mmu_notifier_event`, as the callback receives it in `range->event`.
    #[derive(Debug, Clone, Copy)]
    #[allow(dead_code)] // every variant a callback can see; main uses a few
    pub enum MmuNotifyEvent {
        Unmap,
        Clear,
        ProtectionVma,
        ProtectionPage,
        SoftDirty,
        Release,
        Exclusive,
        /// `MMU_NOTIFY_MIGRATE`, with `range->owner` translated to an [`OwnerId`] (`None` for a
        /// migration by the core mm or by a driver outside any owner).
        Migrate(Option<OwnerId>),
    }

    /// The crate's view of an event.
    pub fn event(e: MmuNotifyEvent) -> Event {
        match e {
            MmuNotifyEvent::Unmap => Event::Unmap,
            MmuNotifyEvent::Release => Event::Release,
            MmuNotifyEvent::Clear | MmuNotifyEvent::Exclusive => Event::Clear,
            MmuNotifyEvent::ProtectionVma
            | MmuNotifyEvent::ProtectionPage
            | MmuNotifyEvent::SoftDirty => Event::Protection,
            MmuNotifyEvent::Migrate(owner) => Event::Migrate { owner },
        }
    }

    /// `mmu_interval_notifier_ops.invalidate(mni, range, cur_seq) -> bool`.
    ///
    /// The interval notifier has a single callback, called before the CPU page tables change.
    /// Call `mmu_interval_set_seq(mni, cur_seq)`, then [`Svm::invalidate_begin`] (zaps the GPU
    /// PTEs, unmaps the DMA mappings, queues unmapped ranges for the GC) and
    /// [`Svm::invalidate_end`] right after it. That is safe because every collection brackets
    /// `hmm_range_fault` with `mmu_interval_read_begin`, which waits until the CPU change has
    /// completed (see `SkelMm::collect_pages`). A driver using a full `mmu_notifier` instead
    /// calls `invalidate_begin` from `invalidate_range_start` and `invalidate_end` from
    /// `invalidate_range_end`.
    ///
    /// `blockable` is `mmu_notifier_range_blockable(range)`: the crate itself never sleeps
    /// here, so a non-blockable invalidation can be served as long as the backend's `zap` and
    /// DMA unmaps do not sleep either; otherwise return `false` when `!blockable`.
    pub fn mmu_invalidate<P: Platform>(
        svm: &Svm<P>,
        id: NotifierId,
        start: u64,
        end: u64,
        e: MmuNotifyEvent,
        blockable: bool,
    ) -> bool {
        let _ = blockable;
        // mmu_interval_set_seq(mni, cur_seq);
        svm.invalidate_begin(id, start, end, event(e));
        svm.invalidate_end(id, start, end);
        true
    }

    /// The GPU fault worker (the interrupt handler only queues the fault): service it and write
    /// the PTEs under the notifier lock; return 0 or a negative errno for the fault reply.
    /// `Again`/`Busy` mean "replay the fault later"; `Fault`/`Perm`/`Access` are real faults
    /// (kill the context or report to user space).
    pub fn gpu_fault(svm: &Svm<SkelGpu>, addr: u64, access: Access) -> i32 {
        let window = gpusvm::Window::ALL; // or the GPU VMA (`drm_gpuva`) containing `addr`
        let pt = &svm.platform().pt;
        match svm.handle_fault_and_bind(addr, access, window, |range, entries| {
            pt.write_ptes(range.start(), entries, svm.device_atomics(range))
        }) {
            Ok((_range, _entries)) => 0,
            Err(e) => e.errno(),
        }
    }

    /// `VM_FAULT_OOM` and `VM_FAULT_SIGBUS` of `enum vm_fault_reason`.
    pub const VM_FAULT_OOM: u32 = 0x1;
    pub const VM_FAULT_SIGBUS: u32 = 0x2;

    /// `dev_pagemap_ops.migrate_to_ram(vmf) -> vm_fault_t`: the CPU touched a device page.
    /// `dpfn` is `page_to_pfn(vmf->page)`, `mm` the faulting process's address space (built
    /// from `vmf->vma->vm_mm`). `Again` (timeslice running, pages busy) returns 0: the CPU
    /// retries the access.
    pub fn migrate_to_ram<A: AddressSpace>(
        pagemap: &Pagemap<SkelVram, SkelHost>,
        mm: &A,
        fault_addr: u64,
        dpfn: u64,
    ) -> u32 {
        match pagemap.migrate_to_ram(mm, fault_addr, dpfn) {
            Ok(_) | Err(Error::Again) => 0,
            Err(Error::NoMem) => VM_FAULT_OOM,
            Err(_) => VM_FAULT_SIGBUS,
        }
    }

    /// `dev_pagemap_ops.page_free(page)`: a device page's last reference went away. Called with
    /// kernel locks held: [`Pagemap::page_free`] takes only a spin lock and, for the last page
    /// of an allocation, calls [`DeviceMemory::release`].
    pub fn page_free(pagemap: &Pagemap<SkelVram, SkelHost>, dpfn: u64) {
        pagemap.page_free(dpfn);
    }
}

// =============================================================================================
// Testing the backend: the conformance kit (`gpusvm::testkit`, feature `testkit`).
// =============================================================================================

/// The skeleton as a kit [`Backend`](gpusvm::testkit::Backend) (one call per scenario group,
/// each scenario on a fresh backend). A real driver backs the CPU side with a test process (a
/// kernel self-test: `vm_mmap`, `copy_{to,from}_user`), device reads/writes with GPU loads and
/// stores, the inspection methods with its page tables, DMA and VRAM bookkeeping. The stubs
/// have no memory: the kit skips what needs it.
mod kit_glue {
    use super::*;
    use gpusvm::platform::VmaFlags;
    use gpusvm::testkit::{Backend, MappedPage};

    pub(super) struct SkelBackend(Svm<SkelGpu>);

    pub(super) fn make() -> Result<SkelBackend> {
        Svm::new(SkelGpu::default(), SvmConfig::new(0, 1 << 47)).map(SkelBackend)
    }

    impl Backend for SkelBackend {
        type P = SkelGpu;
        fn devices(&self) -> usize {
            1 // GPUs mirroring this address space
        }
        fn svm(&self, _dev: usize) -> &Svm<SkelGpu> {
            &self.0
        }
        fn mmap(&mut self, _len: u64, _flags: VmaFlags) -> Result<u64> {
            Err(Error::NotSupported) // vm_mmap(NULL, len, PROT_*, MAP_PRIVATE | MAP_ANONYMOUS)
        }
        fn munmap(&mut self, _addr: u64, _len: u64) -> Result<()> {
            Err(Error::NotSupported) // vm_munmap(): the notifier delivers the invalidation
        }
        fn cpu_read(&mut self, _addr: u64) -> Result<u64> {
            Err(Error::NotSupported) // copy_from_user(): faults device pages back (migrate_to_ram)
        }
        fn cpu_write(&mut self, _addr: u64, _val: u64) -> Result<()> {
            Err(Error::NotSupported) // copy_to_user()
        }
        fn device_fault(&mut self, _dev: usize, addr: u64, access: Access) -> Result<()> {
            match kernel_glue::gpu_fault(&self.0, addr, access) {
                0 => Ok(()),
                rc => Err(Error::from_errno(rc).unwrap_or(Error::Invalid)),
            }
        }
        fn device_read(&mut self, _dev: usize, _addr: u64) -> Result<u64> {
            Err(Error::Fault) // a GPU load; no PTE is ever written by the stubs
        }
        fn device_write(&mut self, _dev: usize, _addr: u64, _val: u64) -> Result<()> {
            Err(Error::Fault)
        }
        fn device_pte(&self, _dev: usize, _addr: u64) -> Option<MappedPage> {
            None // walk the GPU page tables: kind from the PTE's aperture bits
        }
        fn mapped_pages(&self, _dev: usize) -> u64 {
            0
        }
        fn live_dma_mappings(&self, _dev: usize) -> u64 {
            0 // count dma_map_page()s minus dma_unmap_page()s
        }
        fn device_pages_in_use(&self, _dev: usize) -> Option<u64> {
            None // the VRAM allocator's pages in use (None: no device memory)
        }
    }
}

fn main() {
    println!("backend_skeleton: a platform backend with every method stubbed");

    // Driver VM creation (e.g. a VM_CREATE ioctl with an SVM flag): one Svm per GPU VM,
    // mirroring the user half of the address space.
    let config = SvmConfig::new(0, 1 << 47);
    let svm = match Svm::new(SkelGpu::default(), config) {
        Ok(svm) => svm,
        Err(e) => {
            println!("Svm::new failed: {e}");
            return;
        }
    };
    let (c, (notifiers, ranges)) = (svm.config(), svm.counts());
    let (mib, chunks) = (c.notifier_size >> 20, &c.chunk_sizes);
    println!("1. Svm::new: {notifiers}/{ranges} notifiers/ranges, {mib} MiB, chunks {chunks:?}");

    // Device probe: the VRAM becomes a pagemap (owner from an OwnerRegistry in a multi-GPU
    // driver), and this VM places ranges there.
    let pagemap = Pagemap::new(PagemapId(0), OwnerId(0), SkelVram::default())
        .expect("out of memory for the pagemap");
    svm.set_pagemap(Some(pagemap.clone()))
        .expect("no peer pagemap uses this id, and memory for the pagemap set");
    println!(
        "2. set_pagemap: pagemap {:?}, owner {:?}",
        pagemap.id(),
        svm.owner()
    );

    // A GPU fault: the stub address space has no VMA, so the fault fails with -EFAULT.
    let addr = 0x7f00_0000_0000;
    println!("3. GPU write fault at {addr:#x}:");
    let rc = kernel_glue::gpu_fault(&svm, addr, Access::Write);
    println!(
        "   -> {rc} ({})",
        Error::from_errno(rc).map_or("ok", Error::name)
    );

    // An MMU-notifier callback for a notifier the Svm does not know: ignored.
    let (id, ev) = (NotifierId(addr), kernel_glue::MmuNotifyEvent::Unmap);
    let served = kernel_glue::mmu_invalidate(&svm, id, addr, addr + 4096, ev, true);
    println!(
        "4. mmu invalidate (Unmap) of an unknown notifier -> served {served}, {} GPU zaps",
        svm.platform().pt.zaps.load(Ordering::Relaxed)
    );

    // dev_pagemap_ops callbacks on a frame the pagemap never allocated.
    kernel_glue::page_free(&pagemap, 42);
    println!(
        "5. page_free(42) -> ignored, stray frees {}",
        pagemap.stray_frees()
    );
    println!("6. CPU fault on device page 42 at {addr:#x}:");
    let vmf = kernel_glue::migrate_to_ram(&pagemap, &svm.platform().mm, addr, 42);
    println!("   -> vm_fault_t {vmf:#x} (VM_FAULT_SIGBUS: no VMA)");

    // GC worker and VM destruction.
    println!("7. gc_run -> {} ranges removed", svm.gc_run());
    svm.close();
    let (closed, s) = (svm.is_closed(), svm.stats());
    println!(
        "8. close: closed {closed}, faults {}, ranges created {}",
        s.faults, s.ranges_created
    );

    // The conformance kit against this backend: the bad-input scenarios that need no memory
    // pass with the stubs; every scenario that needs an mmap is skipped.
    let bad = gpusvm::testkit::run_bad_input(kit_glue::make);
    let fault = gpusvm::testkit::run_fault(kit_glue::make);
    println!("9. conformance kit: bad_input: {bad}\n   fault: {fault}");
    std::process::exit(i32::from(!bad.ok()));
}
