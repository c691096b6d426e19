//! The platform facets from C: one [`gpusvm_platform_ops`] table per SVM (address space, DMA,
//! device page table, clock) and one [`gpusvm_devmem_ops`] table per pagemap (device memory,
//! copy engine, its DMA), with `#[repr(C)]` mirrors of the crate's platform types.
//!
//! The contracts are those of `gpusvm::platform` (which methods run under which lock, which
//! must not sleep or allocate); each function's docs repeat the essentials. Unless stated
//! otherwise a function returns 0 or a negative errno.
//!
//! This file holds the C tables and types; the crate's platform traits implemented over them
//! are in `src/platform/`: `dma.rs` ([`FfiDma`]), `mm.rs` ([`FfiPlatform`], [`FfiMm`]) and
//! `devmem.rs` ([`FfiDevmem`]).

use crate::host::FfiHost;
use core::ffi::{c_int, c_void};
use gpusvm::heap::{AllocCtx, Vec as HeapVec};
use gpusvm::pages::Protocol;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyKind, CopyRun, CpuPage, DeviceMemory,
    DevicePageTable, DmaDirection, DmaMapper, MigrateDst, MigrateRequest, MigrateSelect,
    MigrateSrc, NotifierId, OwnerId, PagemapId, Platform, Vma, VmaFlags, MAX_ORDER,
};
use gpusvm::{Error, Result};

type Buf<T> = HeapVec<T, crate::host::FfiAlloc>;

/// `gpusvm_vma::flags`: readable.
pub const GPUSVM_VMA_READ: u32 = 1;
/// `gpusvm_vma::flags`: writable.
pub const GPUSVM_VMA_WRITE: u32 = 2;

/// A CPU virtual memory area `[start, end)` (page aligned).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_vma {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `GPUSVM_VMA_READ` | `GPUSVM_VMA_WRITE`.
    pub flags: u32,
}

/// `gpusvm_cpu_page::kind`: not present (only when not faulting).
pub const GPUSVM_PAGE_ABSENT: u32 = 0;
/// `gpusvm_cpu_page::kind`: a system page (`pfn`, `order`, `writable`).
pub const GPUSVM_PAGE_SYSTEM: u32 = 1;
/// `gpusvm_cpu_page::kind`: a device-private page (`pagemap`, `owner`, `pfn` is the device
/// frame, `order`).
pub const GPUSVM_PAGE_DEVICE: u32 = 2;

/// What the CPU page tables hold for one base page.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_cpu_page {
    /// `GPUSVM_PAGE_*`.
    pub kind: u32,
    /// Order of the CPU mapping the page belongs to (0: 4 KiB, 9: 2 MiB).
    pub order: u8,
    /// System page: whether the CPU mapping is writable.
    pub writable: bool,
    /// Device page: its pagemap.
    pub pagemap: u32,
    /// Device page: that pagemap's owner.
    pub owner: u32,
    /// Frame number of this base page (device frame for a device page).
    pub pfn: u64,
}

impl gpusvm_cpu_page {
    fn to_rust(self) -> Result<CpuPage> {
        if self.order > MAX_ORDER {
            return Err(Error::Invalid);
        }
        Ok(match self.kind {
            GPUSVM_PAGE_ABSENT => CpuPage::Absent,
            GPUSVM_PAGE_SYSTEM => CpuPage::System {
                pfn: self.pfn,
                order: self.order,
                writable: self.writable,
            },
            GPUSVM_PAGE_DEVICE => CpuPage::Device {
                pagemap: PagemapId(self.pagemap),
                owner: OwnerId(self.owner),
                dpfn: self.pfn,
                order: self.order,
            },
            _ => return Err(Error::Invalid),
        })
    }
}

/// A request to collect the CPU pages of `[start, end)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_collect_request {
    /// First byte (page aligned).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Fault absent pages in (else report them absent, with no side effect).
    pub fault: bool,
    /// Require write access (fault in writable; a read-only VMA fails with `-EPERM`).
    pub write: bool,
    /// Whether `owner` is set: device-private pages of that owner are reported as device
    /// pages, others are migrated to system memory first.
    pub has_owner: bool,
    /// The owner, if `has_owner`.
    pub owner: u32,
}

/// `gpusvm_migrate_request::select`: system pages (and absent anonymous pages).
pub const GPUSVM_MIGRATE_SYSTEM: u32 = 1;
/// `gpusvm_migrate_request::select`: device-private pages.
pub const GPUSVM_MIGRATE_DEVICE_PRIVATE: u32 = 2;

/// A request to isolate the pages of `[start, end)` for a migration (Linux `struct
/// migrate_vma`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_migrate_request {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `GPUSVM_MIGRATE_*` flags.
    pub select: u32,
    /// Whether only device pages of `pagemap` are selected.
    pub has_pagemap: bool,
    /// The pagemap, if `has_pagemap`.
    pub pagemap: u32,
    /// Whether `owner` is set (the owner performing the migration).
    pub has_owner: bool,
    /// The owner, if `has_owner`.
    pub owner: u32,
}

/// `gpusvm_migrate_src::kind`: not migrating.
pub const GPUSVM_SRC_SKIP: u32 = 0;
/// `gpusvm_migrate_src::kind`: selected but could not be isolated.
pub const GPUSVM_SRC_BUSY: u32 = 1;
/// `gpusvm_migrate_src::kind`: absent anonymous page, migrates as zeroes.
pub const GPUSVM_SRC_ABSENT: u32 = 2;
/// `gpusvm_migrate_src::kind`: an isolated system page (`pfn`).
pub const GPUSVM_SRC_SYSTEM: u32 = 3;
/// `gpusvm_migrate_src::kind`: an isolated device page (`pagemap`, `pfn` = device frame).
pub const GPUSVM_SRC_DEVICE: u32 = 4;

/// One page as isolated by `migrate_isolate`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_migrate_src {
    /// `GPUSVM_SRC_*`.
    pub kind: u32,
    /// Device page: its pagemap.
    pub pagemap: u32,
    /// Frame number (system or device).
    pub pfn: u64,
}

/// `gpusvm_migrate_dst::kind`: restore the source.
pub const GPUSVM_DST_KEEP: u32 = 0;
/// `gpusvm_migrate_dst::kind`: a system page from `alloc_system_pages` (`pfn`).
pub const GPUSVM_DST_SYSTEM: u32 = 1;
/// `gpusvm_migrate_dst::kind`: a device page (`pagemap`, `owner`, `pfn`, `order`).
pub const GPUSVM_DST_DEVICE: u32 = 2;

/// Where an isolated page goes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_migrate_dst {
    /// `GPUSVM_DST_*`.
    pub kind: u32,
    /// Device page: the order of the mapping to install.
    pub order: u8,
    /// Device page: its pagemap.
    pub pagemap: u32,
    /// Device page: that pagemap's owner.
    pub owner: u32,
    /// Frame number (system or device).
    pub pfn: u64,
}

/// `gpusvm_copy_run::kind`: system memory (bus address) to device memory.
pub const GPUSVM_COPY_RAM_TO_DEVICE: u32 = 0;
/// `gpusvm_copy_run::kind`: device memory to system memory (bus address).
pub const GPUSVM_COPY_DEVICE_TO_RAM: u32 = 1;
/// `gpusvm_copy_run::kind`: device to device over the interconnect.
pub const GPUSVM_COPY_DEVICE_TO_DEVICE: u32 = 2;
/// `gpusvm_copy_run::kind`: zero-fill device memory (`src` unused).
pub const GPUSVM_COPY_ZERO_DEVICE: u32 = 3;

/// One copy-engine command: `npages` contiguous pages.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_copy_run {
    /// `GPUSVM_COPY_*`.
    pub kind: u32,
    /// Source address.
    pub src: u64,
    /// Destination address.
    pub dst: u64,
    /// Number of base pages.
    pub npages: u64,
}

/// DMA direction: the device only reads.
pub const GPUSVM_DMA_TO_DEVICE: u32 = 0;
/// DMA direction: the device only writes.
pub const GPUSVM_DMA_FROM_DEVICE: u32 = 1;
/// DMA direction: both.
pub const GPUSVM_DMA_BIDIRECTIONAL: u32 = 2;

pub(crate) fn dir_to_c(d: DmaDirection) -> u32 {
    match d {
        DmaDirection::ToDevice => GPUSVM_DMA_TO_DEVICE,
        DmaDirection::FromDevice => GPUSVM_DMA_FROM_DEVICE,
        DmaDirection::Bidirectional => GPUSVM_DMA_BIDIRECTIONAL,
    }
}

/// 0 → `Ok`, a negative errno the crate knows → that error, anything else → `Fault`.
pub(crate) fn from_c(rc: c_int) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else if rc < 0 {
        Err(Error::from_errno(rc).unwrap_or(Error::Fault))
    } else {
        Err(Error::Fault)
    }
}

fn owner_to_c(o: Option<OwnerId>) -> (bool, u32) {
    o.map_or((false, 0), |o| (true, o.0))
}

/// The DMA functions of a table (the SVM's device, or a pagemap's copy engine).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gpusvm_dma_ops {
    /// Map `2^order` pages from frame `pfn` for the device; the bus address goes to `*addr`.
    /// Called with the notifier lock held shared: must not call into the library. Required.
    pub map_page: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            pfn: u64,
            order: u8,
            dir: u32,
            addr: *mut u64,
        ) -> c_int,
    >,
    /// Unmap a mapping of `map_page` (same order and direction). Invalidation context: must
    /// not sleep or allocate. Required.
    pub unmap_page: Option<unsafe extern "C" fn(ctx: *mut c_void, addr: u64, order: u8, dir: u32)>,
    /// Map a peer device's memory resource; NULL: peer mappings fail with `-EOPNOTSUPP`.
    pub map_peer: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            resource: u64,
            order: u8,
            dir: u32,
            addr: *mut u64,
        ) -> c_int,
    >,
    /// Unmap a mapping of `map_peer`. Invalidation context. May be NULL with `map_peer`.
    pub unmap_peer: Option<unsafe extern "C" fn(ctx: *mut c_void, addr: u64, order: u8, dir: u32)>,
}

/// The platform of one SVM: the CPU address space, the device's DMA and page tables, a clock.
/// Copied by `gpusvm_create` (it need not outlive the call; `ctx` must outlive the SVM). The
/// functions may be called from any thread; unless a member says so, they run with no library
/// lock held and may sleep, but must not call into the library for the same SVM.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gpusvm_platform_ops {
    /// Passed as the first argument of every function.
    pub ctx: *mut c_void,
    /// The VMA containing `addr`: fill `*out` and return true, or return false. Required.
    pub find_vma:
        Option<unsafe extern "C" fn(ctx: *mut c_void, addr: u64, out: *mut gpusvm_vma) -> bool>,
    /// Fill `out[i]` (`n` entries, exactly the pages of the request) with the state of page
    /// `req->start + i * 4096`, faulting pages in if `req->fault`. Returns 0, `-EFAULT` (no VMA),
    /// `-EPERM` (write to a read-only VMA), `-EBUSY`/`-EAGAIN` (retry), `-ENOMEM`. Required.
    pub collect_pages: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            req: *const gpusvm_collect_request,
            out: *mut gpusvm_cpu_page,
            n: usize,
        ) -> c_int,
    >,
    /// Register an interval notifier over `[start, end)`: from now until `unregister_notifier`
    /// returns, call `gpusvm_invalidate_begin(svm, id, ...)` before and
    /// `gpusvm_invalidate_end(svm, id, ...)` after every change to the CPU page tables of the
    /// interval. Store an opaque handle in `*handle`. Required.
    pub register_notifier: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            id: u64,
            start: u64,
            end: u64,
            handle: *mut *mut c_void,
        ) -> c_int,
    >,
    /// Unregister a notifier; when it returns no invalidation for it runs. Required.
    pub unregister_notifier: Option<unsafe extern "C" fn(ctx: *mut c_void, handle: *mut c_void)>,
    /// Isolate the selected pages of `[req->start, req->end)` (`n` entries in `src`), after
    /// invalidating the interval with a migrate event. NULL: nothing is ever isolated
    /// (migrations stop with `-EBUSY`).
    pub migrate_isolate: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            req: *const gpusvm_migrate_request,
            src: *mut gpusvm_migrate_src,
            n: usize,
        ) -> c_int,
    >,
    /// Finish a migration: install every destination other than KEEP, restore the others.
    /// Called one or more times for consecutive slices `[offset, offset + n)` of the `total`
    /// pages; the migration is complete with the call where `offset + n == total`. Never fails.
    pub migrate_finalize: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            req: *const gpusvm_migrate_request,
            src: *const gpusvm_migrate_src,
            dst: *const gpusvm_migrate_dst,
            n: usize,
            offset: usize,
            total: usize,
        ),
    >,
    /// Allocate `n` system pages into `out` (all or nothing). NULL: `-ENOMEM`.
    pub alloc_system_pages:
        Option<unsafe extern "C" fn(ctx: *mut c_void, out: *mut u64, n: usize) -> c_int>,
    /// Free system pages from `alloc_system_pages` that were not installed.
    pub free_system_pages:
        Option<unsafe extern "C" fn(ctx: *mut c_void, pfns: *const u64, n: usize)>,
    /// The device's DMA mapper (`map_page`, `unmap_page` required).
    pub dma: gpusvm_dma_ops,
    /// Remove every device page-table entry in `[start, end)` and invalidate the device TLB.
    /// Invalidation context (notifier lock held): must not sleep, allocate or call into the
    /// library. Required.
    pub zap: Option<unsafe extern "C" fn(ctx: *mut c_void, start: u64, end: u64)>,
    /// A monotonic clock in nanoseconds. Required.
    pub now_ns: Option<unsafe extern "C" fn(ctx: *mut c_void) -> u64>,
}

/// The device memory of one pagemap: allocation, copy engine and the DMA mapper the copy
/// engine uses. Copied by `gpusvm_pagemap_create`; `ctx` must outlive the pagemap. Process
/// context, no library lock held, may sleep (except `release`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gpusvm_devmem_ops {
    /// Passed as the first argument of every function.
    pub ctx: *mut c_void,
    /// Allocate `n` device pages into `out` (device frame numbers; all or nothing). Required.
    pub alloc: Option<unsafe extern "C" fn(ctx: *mut c_void, out: *mut u64, n: usize) -> c_int>,
    /// Release an allocation of `alloc` (all its pages at once, exactly once). May be called
    /// with the platform's page-table lock held: must not sleep or call into the library.
    /// Required.
    pub release: Option<unsafe extern "C" fn(ctx: *mut c_void, dpfns: *const u64, n: usize)>,
    /// Run `n` copy commands in order; on failure store how many completed in `*completed` and
    /// return a negative errno. Required.
    pub copy: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            runs: *const gpusvm_copy_run,
            n: usize,
            completed: *mut usize,
        ) -> c_int,
    >,
    /// A monotonic clock in nanoseconds. Required.
    pub now_ns: Option<unsafe extern "C" fn(ctx: *mut c_void) -> u64>,
    /// Where peers reach `2^order` pages from device frame `dpfn` (`*resource`) and with which
    /// protocol (`*protocol`, 2..=7). NULL: `-EOPNOTSUPP` (no peer access).
    pub device_map: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            dpfn: u64,
            order: u8,
            resource: *mut u64,
            protocol: *mut u8,
        ) -> c_int,
    >,
    /// The DMA mapper of the device owning this memory (`map_page`, `unmap_page` required).
    pub dma: gpusvm_dma_ops,
}

// The Rust side of the tables: the crate's platform traits implemented over the C functions.
mod devmem;
mod dma;
mod mm;

pub use devmem::FfiDevmem;
pub use dma::FfiDma;
pub use mm::{FfiMm, FfiNotifier, FfiPlatform};

// `MigrateSelect` is passed through as its bits; keep the C constants equal to them.
const _: () = assert!(MigrateSelect::SYSTEM.bits() == GPUSVM_MIGRATE_SYSTEM);
const _: () = assert!(MigrateSelect::DEVICE_PRIVATE.bits() == GPUSVM_MIGRATE_DEVICE_PRIVATE);
const _: () = assert!(VmaFlags::READ.bits() == GPUSVM_VMA_READ);
const _: () = assert!(VmaFlags::WRITE.bits() == GPUSVM_VMA_WRITE);
