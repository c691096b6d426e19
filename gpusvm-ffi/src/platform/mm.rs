//! [`FfiPlatform`]: the platform of one SVM over a [`gpusvm_platform_ops`] table — the
//! address space and device page table ([`FfiMm`]: VMA lookup, page collection, notifiers,
//! migration, zap) and the device's DMA.

use super::*;

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
