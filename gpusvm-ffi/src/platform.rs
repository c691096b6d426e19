//! The platform facets from C: one [`gpusvm_platform_ops`] table per SVM (address space, DMA,
//! device page table, clock) and one [`gpusvm_devmem_ops`] table per pagemap (device memory,
//! copy engine, its DMA), with `#[repr(C)]` mirrors of the crate's platform types.
//!
//! The contracts are those of `gpusvm::platform` (which methods run under which lock, which
//! must not sleep or allocate); each function's docs repeat the essentials. Unless stated
//! otherwise a function returns 0 or a negative errno.

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

/// A DMA mapper over C functions and their context.
#[derive(Debug, Clone, Copy)]
pub struct FfiDma {
    ctx: *mut c_void,
    ops: gpusvm_dma_ops,
}

impl FfiDma {
    fn new(ctx: *mut c_void, ops: gpusvm_dma_ops) -> Option<FfiDma> {
        ops.map_page?;
        ops.unmap_page?;
        Some(FfiDma { ctx, ops })
    }
}

impl DmaMapper for FfiDma {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        let f = self.ops.map_page.ok_or(Error::NotSupported)?;
        let mut addr = 0u64;
        // SAFETY: the C function honours `map_page`; `addr` is a valid out-pointer.
        from_c(unsafe { f(self.ctx, pfn, order, dir_to_c(dir), &mut addr) })?;
        Ok(addr)
    }
    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        if let Some(f) = self.ops.unmap_page {
            // SAFETY: the C function honours `unmap_page`.
            unsafe { f(self.ctx, addr, order, dir_to_c(dir)) }
        }
    }
    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        let f = self.ops.map_peer.ok_or(Error::NotSupported)?;
        let mut addr = 0u64;
        // SAFETY: the C function honours `map_peer`; `addr` is a valid out-pointer.
        from_c(unsafe { f(self.ctx, resource, order, dir_to_c(dir), &mut addr) })?;
        Ok(addr)
    }
    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        if let Some(f) = self.ops.unmap_peer {
            // SAFETY: the C function honours `unmap_peer`.
            unsafe { f(self.ctx, addr, order, dir_to_c(dir)) }
        }
    }
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

type FindVma = unsafe extern "C" fn(*mut c_void, u64, *mut gpusvm_vma) -> bool;
type Collect = unsafe extern "C" fn(
    *mut c_void,
    *const gpusvm_collect_request,
    *mut gpusvm_cpu_page,
    usize,
) -> c_int;
type Register = unsafe extern "C" fn(*mut c_void, u64, u64, u64, *mut *mut c_void) -> c_int;

/// The address space and device page table of a [`gpusvm_platform_ops`], checked.
#[derive(Debug, Clone, Copy)]
pub struct FfiMm {
    ctx: *mut c_void,
    find_vma: FindVma,
    collect_pages: Collect,
    register_notifier: Register,
    unregister_notifier: unsafe extern "C" fn(*mut c_void, *mut c_void),
    ops: gpusvm_platform_ops,
    zap: unsafe extern "C" fn(*mut c_void, u64, u64),
    now_ns: unsafe extern "C" fn(*mut c_void) -> u64,
}

/// A notifier handle from C.
#[derive(Debug)]
pub struct FfiNotifier(*mut c_void);

/// The platform of one SVM.
#[derive(Debug)]
pub struct FfiPlatform {
    mm: FfiMm,
    dma: FfiDma,
}

// SAFETY: the C contract of `gpusvm_platform_ops` is that its functions may be called from any
// thread, concurrently, with its `ctx`.
unsafe impl Send for FfiPlatform {}
// SAFETY: as above.
unsafe impl Sync for FfiPlatform {}

impl FfiPlatform {
    /// Check a C table: `None` if a required function is missing.
    pub(crate) fn new(o: &gpusvm_platform_ops) -> Option<FfiPlatform> {
        Some(FfiPlatform {
            mm: FfiMm {
                ctx: o.ctx,
                find_vma: o.find_vma?,
                collect_pages: o.collect_pages?,
                register_notifier: o.register_notifier?,
                unregister_notifier: o.unregister_notifier?,
                ops: *o,
                zap: o.zap?,
                now_ns: o.now_ns?,
            },
            dma: FfiDma::new(o.ctx, o.dma)?,
        })
    }
}

fn request_to_c(req: &MigrateRequest) -> gpusvm_migrate_request {
    let (has_owner, owner) = owner_to_c(req.owner);
    gpusvm_migrate_request {
        start: req.start,
        end: req.end,
        select: req.select.bits(),
        has_pagemap: req.pagemap.is_some(),
        pagemap: req.pagemap.map_or(0, |p| p.0),
        has_owner,
        owner,
    }
}

fn src_to_c(s: MigrateSrc) -> gpusvm_migrate_src {
    let (kind, pagemap, pfn) = match s {
        MigrateSrc::Skip => (GPUSVM_SRC_SKIP, 0, 0),
        MigrateSrc::Busy => (GPUSVM_SRC_BUSY, 0, 0),
        MigrateSrc::Absent => (GPUSVM_SRC_ABSENT, 0, 0),
        MigrateSrc::System { pfn } => (GPUSVM_SRC_SYSTEM, 0, pfn),
        MigrateSrc::Device { pagemap, dpfn } => (GPUSVM_SRC_DEVICE, pagemap.0, dpfn),
    };
    gpusvm_migrate_src { kind, pagemap, pfn }
}

fn src_from_c(s: gpusvm_migrate_src) -> Result<MigrateSrc> {
    Ok(match s.kind {
        GPUSVM_SRC_SKIP => MigrateSrc::Skip,
        GPUSVM_SRC_BUSY => MigrateSrc::Busy,
        GPUSVM_SRC_ABSENT => MigrateSrc::Absent,
        GPUSVM_SRC_SYSTEM => MigrateSrc::System { pfn: s.pfn },
        GPUSVM_SRC_DEVICE => MigrateSrc::Device {
            pagemap: PagemapId(s.pagemap),
            dpfn: s.pfn,
        },
        _ => return Err(Error::Invalid),
    })
}

fn dst_to_c(d: MigrateDst) -> gpusvm_migrate_dst {
    match d {
        MigrateDst::Keep => gpusvm_migrate_dst::default(),
        MigrateDst::System { pfn } => gpusvm_migrate_dst {
            kind: GPUSVM_DST_SYSTEM,
            pfn,
            ..Default::default()
        },
        MigrateDst::Device {
            pagemap,
            owner,
            dpfn,
            order,
        } => gpusvm_migrate_dst {
            kind: GPUSVM_DST_DEVICE,
            order,
            pagemap: pagemap.0,
            owner: owner.0,
            pfn: dpfn,
        },
    }
}

/// Pages converted per `migrate_finalize` call (a stack buffer: finalize must not fail, so it
/// must not allocate).
const FINALIZE_BATCH: usize = 32;

impl AddressSpace for FfiMm {
    type NotifierHandle = FfiNotifier;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        let mut v = gpusvm_vma::default();
        // SAFETY: the C function honours `find_vma`; `v` is a valid out-pointer.
        if !unsafe { (self.find_vma)(self.ctx, addr, &mut v) } {
            return None;
        }
        Some(Vma {
            start: v.start,
            end: v.end,
            flags: VmaFlags::from_bits_truncate(v.flags),
        })
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        let mut buf: Buf<gpusvm_cpu_page> = HeapVec::with_capacity(out.len(), AllocCtx::MaySleep)?;
        buf.resize(out.len(), gpusvm_cpu_page::default(), AllocCtx::MaySleep)?;
        let (has_owner, owner) = owner_to_c(req.owner);
        let r = gpusvm_collect_request {
            start: req.start,
            end: req.end,
            fault: req.fault,
            write: req.write,
            has_owner,
            owner,
        };
        // SAFETY: `buf` holds `out.len()` initialised entries for the C function to overwrite.
        from_c(unsafe {
            (self.collect_pages)(self.ctx, &r, buf.as_mut_slice().as_mut_ptr(), out.len())
        })?;
        for (o, c) in out.iter_mut().zip(buf.as_slice()) {
            *o = c.to_rust()?;
        }
        Ok(())
    }

    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<FfiNotifier> {
        let mut h: *mut c_void = core::ptr::null_mut();
        // SAFETY: the C function honours `register_notifier`; `h` is a valid out-pointer.
        from_c(unsafe { (self.register_notifier)(self.ctx, id.0, start, end, &mut h) })?;
        Ok(FfiNotifier(h))
    }

    fn unregister_notifier(&self, handle: FfiNotifier) {
        // SAFETY: `handle` came from `register_notifier` and is given back once.
        unsafe { (self.unregister_notifier)(self.ctx, handle.0) }
    }

    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        let Some(f) = self.ops.migrate_isolate else {
            src.fill(MigrateSrc::Skip);
            return Ok(());
        };
        let mut buf: Buf<gpusvm_migrate_src> =
            HeapVec::with_capacity(src.len(), AllocCtx::MaySleep)?;
        buf.resize(src.len(), gpusvm_migrate_src::default(), AllocCtx::MaySleep)?;
        let r = request_to_c(req);
        // SAFETY: `buf` holds `src.len()` initialised entries for the C function to overwrite.
        from_c(unsafe { f(self.ctx, &r, buf.as_mut_slice().as_mut_ptr(), src.len()) })?;
        let mut bad = false;
        for (s, c) in src.iter_mut().zip(buf.as_slice()) {
            *s = src_from_c(*c).unwrap_or_else(|_| {
                bad = true;
                MigrateSrc::Skip
            });
        }
        if bad {
            // An unknown kind from C: restore whatever was isolated and report bad input.
            self.migrate_finalize(req, src, &[]);
            src.fill(MigrateSrc::Skip);
            return Err(Error::Invalid);
        }
        Ok(())
    }

    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        let Some(f) = self.ops.migrate_finalize else {
            return;
        };
        let r = request_to_c(req);
        let total = src.len();
        let mut s_buf = [gpusvm_migrate_src::default(); FINALIZE_BATCH];
        let mut d_buf = [gpusvm_migrate_dst::default(); FINALIZE_BATCH];
        let mut offset = 0usize;
        for chunk in src.chunks(FINALIZE_BATCH) {
            let n = chunk.len();
            for (i, (s, d)) in s_buf.iter_mut().zip(d_buf.iter_mut()).enumerate().take(n) {
                let at = offset.saturating_add(i);
                *s = chunk
                    .get(i)
                    .map_or_else(gpusvm_migrate_src::default, |s| src_to_c(*s));
                *d = dst
                    .get(at)
                    .map_or_else(gpusvm_migrate_dst::default, |d| dst_to_c(*d));
            }
            // SAFETY: the buffers hold `n` initialised entries; the C function only reads them.
            unsafe {
                f(
                    self.ctx,
                    &r,
                    s_buf.as_ptr(),
                    d_buf.as_ptr(),
                    n,
                    offset,
                    total,
                )
            };
            offset = offset.saturating_add(n);
        }
    }

    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        let f = self.ops.alloc_system_pages.ok_or(Error::NoMem)?;
        // SAFETY: `out` is a valid buffer of `out.len()` frames for the C function to fill.
        from_c(unsafe { f(self.ctx, out.as_mut_ptr(), out.len()) })
    }

    fn free_system_pages(&self, pfns: &[u64]) {
        if let Some(f) = self.ops.free_system_pages {
            // SAFETY: `pfns` is a valid buffer of `pfns.len()` frames; the C function reads it.
            unsafe { f(self.ctx, pfns.as_ptr(), pfns.len()) }
        }
    }
}

impl DevicePageTable for FfiMm {
    fn zap(&self, start: u64, end: u64) {
        // SAFETY: the C function honours `zap`.
        unsafe { (self.zap)(self.ctx, start, end) }
    }
}

impl Platform for FfiPlatform {
    type Mm = FfiMm;
    type Dma = FfiDma;
    type Pt = FfiMm;
    type Mem = FfiDevmem;
    type Host = FfiHost;
    fn mm(&self) -> &FfiMm {
        &self.mm
    }
    fn dma(&self) -> &FfiDma {
        &self.dma
    }
    fn page_table(&self) -> &FfiMm {
        &self.mm
    }
    fn now_ns(&self) -> u64 {
        // SAFETY: the C function honours `now_ns`.
        unsafe { (self.mm.now_ns)(self.mm.ctx) }
    }
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

/// A pagemap's device memory over a [`gpusvm_devmem_ops`] table, checked.
#[derive(Debug)]
pub struct FfiDevmem {
    ctx: *mut c_void,
    alloc: unsafe extern "C" fn(*mut c_void, *mut u64, usize) -> c_int,
    release: unsafe extern "C" fn(*mut c_void, *const u64, usize),
    copy: unsafe extern "C" fn(*mut c_void, *const gpusvm_copy_run, usize, *mut usize) -> c_int,
    now_ns: unsafe extern "C" fn(*mut c_void) -> u64,
    device_map: Option<unsafe extern "C" fn(*mut c_void, u64, u8, *mut u64, *mut u8) -> c_int>,
    dma: FfiDma,
}

// SAFETY: the C contract of `gpusvm_devmem_ops`: callable from any thread with its `ctx`.
unsafe impl Send for FfiDevmem {}
// SAFETY: as above.
unsafe impl Sync for FfiDevmem {}

impl FfiDevmem {
    /// Check a C table: `None` if a required function is missing.
    pub(crate) fn new(o: &gpusvm_devmem_ops) -> Option<FfiDevmem> {
        Some(FfiDevmem {
            ctx: o.ctx,
            alloc: o.alloc?,
            release: o.release?,
            copy: o.copy?,
            now_ns: o.now_ns?,
            device_map: o.device_map,
            dma: FfiDma::new(o.ctx, o.dma)?,
        })
    }
}

fn run_to_c(r: &CopyRun) -> gpusvm_copy_run {
    gpusvm_copy_run {
        kind: match r.kind {
            CopyKind::RamToDevice => GPUSVM_COPY_RAM_TO_DEVICE,
            CopyKind::DeviceToRam => GPUSVM_COPY_DEVICE_TO_RAM,
            CopyKind::DeviceToDevice => GPUSVM_COPY_DEVICE_TO_DEVICE,
            CopyKind::ZeroDevice => GPUSVM_COPY_ZERO_DEVICE,
        },
        src: r.src,
        dst: r.dst,
        npages: r.npages,
    }
}

impl DeviceMemory for FfiDevmem {
    type Dma = FfiDma;
    fn dma(&self) -> &FfiDma {
        &self.dma
    }
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        // SAFETY: `out` is a valid buffer of `out.len()` frames for the C function to fill.
        from_c(unsafe { (self.alloc)(self.ctx, out.as_mut_ptr(), out.len()) })
    }
    fn release(&self, dpfns: &[u64]) {
        // SAFETY: `dpfns` is a valid buffer; the C function reads it.
        unsafe { (self.release)(self.ctx, dpfns.as_ptr(), dpfns.len()) }
    }
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        let fail = |error| CopyError {
            completed: 0,
            error,
        };
        let mut buf: Buf<gpusvm_copy_run> =
            HeapVec::with_capacity(runs.len(), AllocCtx::MaySleep).map_err(fail)?;
        for r in runs {
            buf.push_within_capacity(run_to_c(r))
                .map_err(|_| fail(Error::NoMem))?;
        }
        let mut completed = 0usize;
        // SAFETY: `buf` holds `runs.len()` entries the C function reads; `completed` is a valid
        // out-pointer.
        let rc = unsafe {
            (self.copy)(
                self.ctx,
                buf.as_slice().as_ptr(),
                runs.len(),
                &mut completed,
            )
        };
        from_c(rc).map_err(|error| CopyError {
            completed: completed.min(runs.len()),
            error,
        })
    }
    fn now_ns(&self) -> u64 {
        // SAFETY: the C function honours `now_ns`.
        unsafe { (self.now_ns)(self.ctx) }
    }
    fn device_map(&self, dpfn: u64, order: u8) -> Result<(u64, Protocol)> {
        let f = self.device_map.ok_or(Error::NotSupported)?;
        let (mut res, mut proto) = (0u64, 0u8);
        // SAFETY: the C function honours `device_map`; both are valid out-pointers.
        from_c(unsafe { f(self.ctx, dpfn, order, &mut res, &mut proto) })?;
        if proto <= Protocol::DEVICE_LOCAL.0 || proto > Protocol::MAX {
            return Err(Error::Invalid);
        }
        Ok((res, Protocol(proto)))
    }
}

// `MigrateSelect` is passed through as its bits; keep the C constants equal to them.
const _: () = assert!(MigrateSelect::SYSTEM.bits() == GPUSVM_MIGRATE_SYSTEM);
const _: () = assert!(MigrateSelect::DEVICE_PRIVATE.bits() == GPUSVM_MIGRATE_DEVICE_PRIVATE);
const _: () = assert!(VmaFlags::READ.bits() == GPUSVM_VMA_READ);
const _: () = assert!(VmaFlags::WRITE.bits() == GPUSVM_VMA_WRITE);
