//! The platform of the `abi` tests: a small fake address space ([`Fake`]: one VMA of two chunks,
//! an array of page frames, identity DMA with counters, a device page table, notifiers) and its
//! device memory, as the `extern "C"` tables a C driver would fill in (`gpusvm_platform_ops`,
//! `gpusvm_devmem_ops`); the geometry of the tests (a chunk is 2 MiB hosted, 512 KiB under
//! miri), the SVM configurations and [`create`].

use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Instant;

use gpusvm_ffi::pagemap::*;
use gpusvm_ffi::platform::*;
use gpusvm_ffi::svm::*;

pub(crate) const PAGE: u64 = 4096;
pub(crate) const BASE: u64 = 0x4000_0000;
/// The chunk (range) size: 2 MiB hosted, 512 KiB under miri.
pub(crate) const CHUNK: u64 = if cfg!(miri) { 512 << 10 } else { 2 << 20 };
/// Pages of one chunk.
pub(crate) const CPAGES: usize = (CHUNK / PAGE) as usize;
/// The address space: one VMA of two chunks.
pub(crate) const NPAGES: usize = 2 * CPAGES;
pub(crate) const END: u64 = BASE + NPAGES as u64 * PAGE;
/// The range sizes of the SVMs: one chunk, then base pages.
static CHUNK_SIZES: [u64; 2] = [CHUNK, PAGE];
/// The chunk of the tests that fault many times (allocation failures, threads): 2 MiB hosted,
/// 64 KiB under miri, to keep the miri run short.
pub(crate) const SMALL: u64 = if cfg!(miri) { 64 << 10 } else { CHUNK };
static SMALL_SIZES: [u64; 2] = [SMALL, PAGE];

// ---- platform: one VMA, frames in an array, identity DMA, a device page table ----

/// A `Cell` that may be shared between threads (a value behind a std mutex).
#[derive(Default)]
pub(crate) struct Cell<T>(Mutex<T>);

impl<T: Copy> Cell<T> {
    pub(crate) fn new(v: T) -> Cell<T> {
        Cell(Mutex::new(v))
    }
    pub(crate) fn get(&self) -> T {
        *self.0.lock().unwrap()
    }
    pub(crate) fn set(&self, v: T) {
        *self.0.lock().unwrap() = v;
    }
    /// Replace the value by `f` of it, atomically; the old value.
    pub(crate) fn update(&self, f: impl FnOnce(T) -> T) -> T {
        let mut g = self.0.lock().unwrap();
        let old = *g;
        *g = f(old);
        old
    }
}

/// The fake platform. Callbacks get `&Fake` from the `ctx` pointer, re-enter one another
/// (`migrate_isolate` invalidates, which zaps) and run on several threads (`threads`), so
/// everything is behind shared references with interior mutability.
pub(crate) struct Fake {
    pub(crate) pfn: Vec<Cell<u64>>,
    /// Device page table: bus address | 1, or 0.
    pub(crate) pte: Vec<Cell<u64>>,
    pub(crate) on_dev: Vec<Cell<bool>>,
    pub(crate) dev: Vec<Cell<u64>>,
    pub(crate) migrating: Vec<Cell<bool>>,
    pub(crate) maps: Cell<i64>,
    pub(crate) unmaps: Cell<i64>,
    pub(crate) zaps: Cell<i64>,
    pub(crate) notifiers_live: Cell<i64>,
    pub(crate) notifier_id: Cell<u64>,
    pub(crate) notifier_handle: u8,
    pub(crate) svm: AtomicPtr<gpusvm>,
    pub(crate) pm: AtomicPtr<gpusvm_pagemap>,
    pub(crate) next_pfn: Cell<u64>,
    pub(crate) next_dpfn: Cell<u64>,
    pub(crate) dev_allocs: Cell<i64>,
    pub(crate) dev_releases: Cell<i64>,
    pub(crate) copied_pages: Cell<u64>,
    pub(crate) sys_frees: Cell<i64>,
    pub(crate) finalized: Cell<i64>,
    pub(crate) start: Instant,
}

fn cells<T: Copy>(n: usize, f: impl Fn(usize) -> T) -> Vec<Cell<T>> {
    (0..n).map(|i| Cell::new(f(i))).collect()
}

fn inc(c: &Cell<i64>) {
    c.update(|v| v + 1);
}

/// The fake behind a `ctx`.
///
/// # Safety
/// `ctx` is the `&Fake` the table was made from, alive.
pub(crate) unsafe fn fake<'a>(ctx: *mut c_void) -> &'a Fake {
    // SAFETY: by the caller; only shared references are made (interior mutability).
    unsafe { &*ctx.cast_const().cast::<Fake>() }
}

pub(crate) fn page_of(va: u64) -> usize {
    assert!((BASE..END).contains(&va), "{va:#x} outside the VMA");
    ((va - BASE) / PAGE) as usize
}

unsafe extern "C" fn p_find_vma(_: *mut c_void, addr: u64, out: *mut gpusvm_vma) -> bool {
    if !(BASE..END).contains(&addr) {
        return false;
    }
    // SAFETY: `out` is writable (the contract).
    unsafe {
        out.write(gpusvm_vma {
            start: BASE,
            end: END,
            flags: GPUSVM_VMA_READ | GPUSVM_VMA_WRITE,
        })
    };
    true
}

unsafe extern "C" fn p_collect(
    ctx: *mut c_void,
    req: *const gpusvm_collect_request,
    out: *mut gpusvm_cpu_page,
    n: usize,
) -> c_int {
    // SAFETY: the table's ctx; `req` readable, `out` writable for `n` entries (the contract).
    let (f, req) = unsafe { (fake(ctx), &*req) };
    // SAFETY: as above.
    let out = unsafe { std::slice::from_raw_parts_mut(out, n) };
    assert!(req.start >= BASE && req.end <= END);
    assert_eq!((req.end - req.start) / PAGE, n as u64);
    for (i, o) in out.iter_mut().enumerate() {
        let p = page_of(req.start) + i;
        *o = if f.on_dev[p].get() {
            if !req.has_owner || req.owner != 1 {
                return -16; // EBUSY: would have to migrate to RAM first
            }
            gpusvm_cpu_page {
                kind: GPUSVM_PAGE_DEVICE,
                pagemap: 1,
                owner: 1,
                pfn: f.dev[p].get(),
                ..Default::default()
            }
        } else {
            gpusvm_cpu_page {
                kind: GPUSVM_PAGE_SYSTEM,
                writable: true,
                pfn: f.pfn[p].get(),
                ..Default::default()
            }
        };
    }
    0
}

unsafe extern "C" fn p_register(
    ctx: *mut c_void,
    id: u64,
    _: u64,
    _: u64,
    handle: *mut *mut c_void,
) -> c_int {
    // SAFETY: the table's ctx; `handle` writable.
    let f = unsafe { fake(ctx) };
    inc(&f.notifiers_live);
    f.notifier_id.set(id);
    // SAFETY: as above.
    unsafe { handle.write(core::ptr::from_ref(&f.notifier_handle).cast_mut().cast()) };
    0
}

unsafe extern "C" fn p_unregister(ctx: *mut c_void, handle: *mut c_void) {
    // SAFETY: the table's ctx.
    let f = unsafe { fake(ctx) };
    assert!(core::ptr::eq(
        handle.cast_const().cast(),
        &f.notifier_handle
    ));
    f.notifiers_live.update(|v| v - 1);
}

unsafe extern "C" fn p_map(ctx: *mut c_void, pfn: u64, _: u8, _: u32, addr: *mut u64) -> c_int {
    // SAFETY: the table's ctx; `addr` writable.
    unsafe {
        inc(&fake(ctx).maps);
        addr.write(pfn * PAGE); // identity IOMMU
    }
    0
}

unsafe extern "C" fn p_unmap(ctx: *mut c_void, _: u64, _: u8, _: u32) {
    // SAFETY: the table's ctx.
    inc(&unsafe { fake(ctx) }.unmaps);
}

unsafe extern "C" fn p_zap(ctx: *mut c_void, start: u64, end: u64) {
    // SAFETY: the table's ctx.
    let f = unsafe { fake(ctx) };
    inc(&f.zaps);
    let mut a = start.max(BASE);
    while a < end.min(END) {
        f.pte[page_of(a)].set(0);
        a += PAGE;
    }
}

unsafe extern "C" fn p_now(ctx: *mut c_void) -> u64 {
    // SAFETY: the table's ctx.
    unsafe { fake(ctx) }.start.elapsed().as_nanos() as u64
}

unsafe extern "C" fn p_isolate(
    ctx: *mut c_void,
    req: *const gpusvm_migrate_request,
    src: *mut gpusvm_migrate_src,
    n: usize,
) -> c_int {
    // SAFETY: the table's ctx; `req` readable, `src` writable for `n` entries.
    let (f, req) = unsafe { (fake(ctx), &*req) };
    // SAFETY: as above.
    let src = unsafe { std::slice::from_raw_parts_mut(src, n) };
    assert_eq!((req.end - req.start) / PAGE, n as u64);
    let svm = f.svm.load(SeqCst);
    // As migrate_vma_setup: invalidate the interval (a migrate event) before unmapping.
    // SAFETY: the SVM is live; no library lock is held here (the `migrate_isolate` contract).
    let rc = unsafe {
        gpusvm_invalidate_begin(
            svm,
            f.notifier_id.get(),
            req.start,
            req.end,
            GPUSVM_EVENT_MIGRATE,
            req.has_owner,
            req.owner,
        )
    };
    assert_eq!(rc, 0);
    for (i, s) in src.iter_mut().enumerate() {
        let p = page_of(req.start) + i;
        *s = gpusvm_migrate_src::default();
        let owned = if req.has_pagemap {
            req.pagemap == 1
        } else {
            req.has_owner && req.owner == 1
        };
        if f.migrating[p].get() {
            s.kind = GPUSVM_SRC_BUSY;
        } else if !f.on_dev[p].get() && req.select & GPUSVM_MIGRATE_SYSTEM != 0 {
            s.kind = GPUSVM_SRC_SYSTEM;
            s.pfn = f.pfn[p].get();
            f.migrating[p].set(true);
        } else if f.on_dev[p].get() && req.select & GPUSVM_MIGRATE_DEVICE_PRIVATE != 0 && owned {
            s.kind = GPUSVM_SRC_DEVICE;
            s.pagemap = 1;
            s.pfn = f.dev[p].get();
            f.migrating[p].set(true);
        }
    }
    // SAFETY: as above.
    let rc = unsafe { gpusvm_invalidate_end(svm, f.notifier_id.get(), req.start, req.end) };
    assert_eq!(rc, 0);
    0
}

unsafe extern "C" fn p_finalize(
    ctx: *mut c_void,
    req: *const gpusvm_migrate_request,
    src: *const gpusvm_migrate_src,
    dst: *const gpusvm_migrate_dst,
    n: usize,
    offset: usize,
    total: usize,
) {
    // SAFETY: the table's ctx; `req` readable, `src` and `dst` readable for `n` entries.
    let (f, req, src, dst) = unsafe {
        (
            fake(ctx),
            &*req,
            std::slice::from_raw_parts(src, n),
            std::slice::from_raw_parts(dst, n),
        )
    };
    assert!(offset + n <= total);
    assert_eq!(total as u64, (req.end - req.start) / PAGE);
    for (i, (s, d)) in src.iter().zip(dst).enumerate() {
        let p = page_of(req.start) + offset + i;
        if ![GPUSVM_SRC_SYSTEM, GPUSVM_SRC_DEVICE, GPUSVM_SRC_ABSENT].contains(&s.kind) {
            continue;
        }
        f.migrating[p].set(false);
        if d.kind == GPUSVM_DST_KEEP {
            continue;
        }
        if s.kind == GPUSVM_SRC_SYSTEM {
            inc(&f.sys_frees);
        } else if s.kind == GPUSVM_SRC_DEVICE {
            // The source device page is freed (Linux page_free).
            // SAFETY: the pagemap is live.
            assert_eq!(
                unsafe { gpusvm_pagemap_page_free(f.pm.load(SeqCst), s.pfn) },
                0
            );
        }
        if d.kind == GPUSVM_DST_DEVICE {
            assert_eq!((d.pagemap, d.owner), (1, 1));
            f.on_dev[p].set(true);
            f.dev[p].set(d.pfn);
        } else if d.kind == GPUSVM_DST_SYSTEM {
            f.on_dev[p].set(false);
            f.pfn[p].set(d.pfn);
        }
    }
    if offset + n == total {
        inc(&f.finalized);
    }
}

unsafe extern "C" fn p_alloc_sys(ctx: *mut c_void, out: *mut u64, n: usize) -> c_int {
    // SAFETY: the table's ctx; `out` writable for `n` entries.
    let (f, out) = unsafe { (fake(ctx), std::slice::from_raw_parts_mut(out, n)) };
    for o in out {
        *o = f.next_pfn.update(|v| v + 1);
    }
    0
}

unsafe extern "C" fn p_free_sys(ctx: *mut c_void, _: *const u64, n: usize) {
    // SAFETY: the table's ctx.
    let f = unsafe { fake(ctx) };
    f.sys_frees.update(|v| v + n as i64);
}

unsafe extern "C" fn d_alloc(ctx: *mut c_void, out: *mut u64, n: usize) -> c_int {
    // SAFETY: the table's ctx; `out` writable for `n` entries.
    let (f, out) = unsafe { (fake(ctx), std::slice::from_raw_parts_mut(out, n)) };
    inc(&f.dev_allocs);
    for o in out {
        *o = f.next_dpfn.update(|v| v + 1);
    }
    0
}

unsafe extern "C" fn d_release(ctx: *mut c_void, dpfns: *const u64, n: usize) {
    // SAFETY: the table's ctx; `dpfns` readable for `n` entries.
    let (f, d) = unsafe { (fake(ctx), std::slice::from_raw_parts(dpfns, n)) };
    assert!(!d.is_empty());
    inc(&f.dev_releases);
}

unsafe extern "C" fn d_copy(
    ctx: *mut c_void,
    runs: *const gpusvm_copy_run,
    n: usize,
    completed: *mut usize,
) -> c_int {
    // SAFETY: the table's ctx; `runs` readable for `n` entries, `completed` writable.
    let (f, runs) = unsafe { (fake(ctx), std::slice::from_raw_parts(runs, n)) };
    for r in runs {
        assert!(r.kind <= GPUSVM_COPY_ZERO_DEVICE);
        f.copied_pages.update(|v| v + r.npages);
    }
    // SAFETY: as above.
    unsafe { completed.write(n) };
    0
}

impl Fake {
    pub(crate) fn new() -> Box<Fake> {
        Box::new(Fake {
            pfn: cells(NPAGES, |i| 0x80000 + i as u64 * 3), // scattered frames
            pte: cells(NPAGES, |_| 0),
            on_dev: cells(NPAGES, |_| false),
            dev: cells(NPAGES, |_| 0),
            migrating: cells(NPAGES, |_| false),
            maps: Cell::new(0),
            unmaps: Cell::new(0),
            zaps: Cell::new(0),
            notifiers_live: Cell::new(0),
            notifier_id: Cell::new(0),
            notifier_handle: 0,
            svm: AtomicPtr::new(null_mut()),
            pm: AtomicPtr::new(null_mut()),
            next_pfn: Cell::new(0x20_0000),
            next_dpfn: Cell::new(0x90_0000),
            dev_allocs: Cell::new(0),
            dev_releases: Cell::new(0),
            copied_pages: Cell::new(0),
            sys_frees: Cell::new(0),
            finalized: Cell::new(0),
            start: Instant::now(),
        })
    }

    pub(crate) fn ctx(&self) -> *mut c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }

    fn dma() -> gpusvm_dma_ops {
        gpusvm_dma_ops {
            map_page: Some(p_map),
            unmap_page: Some(p_unmap),
            map_peer: None,
            unmap_peer: None,
        }
    }

    pub(crate) fn ops(&self) -> gpusvm_platform_ops {
        gpusvm_platform_ops {
            ctx: self.ctx(),
            find_vma: Some(p_find_vma),
            collect_pages: Some(p_collect),
            register_notifier: Some(p_register),
            unregister_notifier: Some(p_unregister),
            migrate_isolate: Some(p_isolate),
            migrate_finalize: Some(p_finalize),
            alloc_system_pages: Some(p_alloc_sys),
            free_system_pages: Some(p_free_sys),
            dma: Fake::dma(),
            zap: Some(p_zap),
            now_ns: Some(p_now),
        }
    }

    pub(crate) fn devmem_ops(&self) -> gpusvm_devmem_ops {
        gpusvm_devmem_ops {
            ctx: self.ctx(),
            alloc: Some(d_alloc),
            release: Some(d_release),
            copy: Some(d_copy),
            now_ns: Some(p_now),
            device_map: None,
            dma: Fake::dma(),
        }
    }

    pub(crate) fn mapped_ptes(&self) -> usize {
        self.pte.iter().filter(|p| p.get() != 0).count()
    }
}

pub(crate) fn config() -> gpusvm_config {
    gpusvm_config {
        mm_start: 0,
        mm_range: 1 << 47,
        notifier_size: 0,
        chunk_sizes: CHUNK_SIZES.as_ptr(),
        n_chunk_sizes: CHUNK_SIZES.len(),
        // Only base-page chunks check that every CPU page is present first (an allocation
        // failure in that check falls back to a smaller chunk instead of -ENOMEM), so chunks of
        // any size here take the path of the 2 MiB ones.
        check_pages_threshold: PAGE,
        retry_deadline_ns: 0,
        retry_max_attempts: 0,
        prefer_devmem: false,
        has_owner: false,
        owner: 0,
        atomic_timeslice_ns: 0,
        source_peer_migrates: false,
        can_migrate_same_pagemap: false,
    }
}

/// [`config`] with the chunk of [`SMALL_SIZES`].
pub(crate) fn config_small() -> gpusvm_config {
    gpusvm_config {
        chunk_sizes: SMALL_SIZES.as_ptr(),
        ..config()
    }
}

pub(crate) fn create(f: &Fake, c: &gpusvm_config) -> *mut gpusvm {
    let o = f.ops();
    let mut svm = null_mut();
    // SAFETY: valid pointers to live values; `f` outlives the SVM (each test destroys it).
    assert_eq!(unsafe { gpusvm_create(&o, c, &mut svm) }, 0);
    assert!(!svm.is_null());
    f.svm.store(svm, SeqCst);
    svm
}
