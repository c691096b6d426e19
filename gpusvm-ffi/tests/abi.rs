//! The C ABI driven from Rust as a C host would drive it, so that miri runs the crate's unsafe
//! code (the C test `tests/c/fault.c` cannot run under miri). The host facet is a counting
//! allocator over `std::alloc` with failure injection and locks over `std::sync` allocated in
//! place and handed out as pointers; the platform is a small fake address space (an array of
//! page frames, identity DMA with counters, a device page table written by the bind callback)
//! and a device-memory table. Every call goes through the exported `extern "C"` functions with
//! raw pointers, as C would make it.
//!
//! One host table is registered per process, so the tests share it and run one at a time
//! (`serial`). Under miri the ranges are 512 KiB (128 pages: still two bind batches and four
//! `migrate_finalize` slices) instead of 2 MiB.

use core::ffi::{c_int, c_void};
use core::ptr::{null, null_mut};
use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::Instant;

use gpusvm_ffi::host::*;
use gpusvm_ffi::pagemap::*;
use gpusvm_ffi::platform::*;
use gpusvm_ffi::policy::*;
use gpusvm_ffi::svm::*;
use gpusvm_ffi::userptr::*;

const EINVAL: c_int = -22;
const ENOMEM: c_int = -12;
const EAGAIN: c_int = -11;

const PAGE: u64 = 4096;
const BASE: u64 = 0x4000_0000;
/// The chunk (range) size: 2 MiB hosted, 512 KiB under miri.
const CHUNK: u64 = if cfg!(miri) { 512 << 10 } else { 2 << 20 };
/// Pages of one chunk.
const CPAGES: usize = (CHUNK / PAGE) as usize;
/// The address space: one VMA of two chunks.
const NPAGES: usize = 2 * CPAGES;
const END: u64 = BASE + NPAGES as u64 * PAGE;
/// The range sizes of the SVMs: one chunk, then base pages.
static CHUNK_SIZES: [u64; 2] = [CHUNK, PAGE];
/// The chunk of the tests that fault many times (allocation failures, threads): 2 MiB hosted,
/// 64 KiB under miri, to keep the miri run short.
const SMALL: u64 = if cfg!(miri) { 64 << 10 } else { CHUNK };
static SMALL_SIZES: [u64; 2] = [SMALL, PAGE];

// ---- host: a counting allocator with failure injection, locks over std::sync ----

static ALLOCS: AtomicI64 = AtomicI64::new(0);
static FREES: AtomicI64 = AtomicI64::new(0);
static LOCKS_CREATED: AtomicI64 = AtomicI64::new(0);
static LOCKS_DESTROYED: AtomicI64 = AtomicI64::new(0);
/// Allocation and lock-creation attempts.
static ATTEMPTS: AtomicI64 = AtomicI64::new(0);
/// The attempt with this number fails (-1: none).
static FAIL_AT: AtomicI64 = AtomicI64::new(-1);

fn should_fail() -> bool {
    ATTEMPTS.fetch_add(1, SeqCst) == FAIL_AT.load(SeqCst)
}

unsafe extern "C" fn h_alloc(_: *mut c_void, size: usize, align: usize, _: bool) -> *mut c_void {
    if should_fail() {
        return null_mut();
    }
    let Ok(l) = Layout::from_size_align(size, align) else {
        return null_mut();
    };
    assert!(size != 0, "the library never asks for 0 bytes");
    // SAFETY: `l` has a non-zero size.
    let p = unsafe { std::alloc::alloc(l) };
    if !p.is_null() {
        ALLOCS.fetch_add(1, SeqCst);
    }
    p.cast()
}

unsafe extern "C" fn h_free(_: *mut c_void, p: *mut c_void, size: usize, align: usize) {
    let l = Layout::from_size_align(size, align).unwrap();
    // SAFETY: `p` came from `h_alloc` with this size and alignment (the `free` contract).
    unsafe { std::alloc::dealloc(p.cast(), l) };
    FREES.fetch_add(1, SeqCst);
}

/// A mutex allocated in place: `locked` under a std mutex, waiters on the condvar.
#[derive(Default)]
struct HMutex {
    locked: Mutex<bool>,
    cv: Condvar,
}

/// A reader-writer lock: the number of readers, or -1 for a writer.
#[derive(Default)]
struct HRwLock {
    state: Mutex<i64>,
    cv: Condvar,
}

fn created(class: *const gpusvm_lock_class) {
    // SAFETY: the library passes one of its static class descriptions.
    let c = unsafe { &*class };
    assert!(c.index < GPUSVM_LOCK_CLASSES);
    // SAFETY: the name is a static NUL-terminated string.
    let name = unsafe { core::ffi::CStr::from_ptr(c.name) };
    assert!(name.to_bytes().starts_with(b"gpusvm."));
    LOCKS_CREATED.fetch_add(1, SeqCst);
}

/// A new lock handle of type `T` for `class` (NULL when this attempt is to fail).
fn new_lock<T: Default>(class: *const gpusvm_lock_class) -> *mut c_void {
    if should_fail() {
        return null_mut();
    }
    created(class);
    Box::into_raw(Box::<T>::default()).cast()
}

unsafe extern "C" fn h_mutex_create(
    _: *mut c_void,
    class: *const gpusvm_lock_class,
) -> *mut c_void {
    new_lock::<HMutex>(class)
}

/// The mutex behind a handle.
///
/// # Safety
/// `l` is a live handle from `h_mutex_create`.
unsafe fn hm<'a>(l: *mut c_void) -> &'a HMutex {
    // SAFETY: by the caller.
    unsafe { &*l.cast::<HMutex>() }
}

unsafe extern "C" fn h_mutex_destroy(_: *mut c_void, l: *mut c_void) {
    // SAFETY: `l` came from `h_mutex_create` and is destroyed once.
    let m = unsafe { Box::from_raw(l.cast::<HMutex>()) };
    assert!(!*m.locked.lock().unwrap(), "a mutex destroyed locked");
    LOCKS_DESTROYED.fetch_add(1, SeqCst);
}

unsafe extern "C" fn h_mutex_lock(_: *mut c_void, l: *mut c_void) {
    // SAFETY: a live handle (the contract).
    let m = unsafe { hm(l) };
    let mut g = m.locked.lock().unwrap();
    while *g {
        g = m.cv.wait(g).unwrap();
    }
    *g = true;
}

unsafe extern "C" fn h_mutex_try_lock(_: *mut c_void, l: *mut c_void) -> bool {
    // SAFETY: a live handle.
    let mut g = unsafe { hm(l) }.locked.lock().unwrap();
    !std::mem::replace(&mut *g, true)
}

unsafe extern "C" fn h_mutex_unlock(_: *mut c_void, l: *mut c_void) {
    // SAFETY: a live handle.
    let m = unsafe { hm(l) };
    let mut g = m.locked.lock().unwrap();
    assert!(*g, "unlock of a free mutex");
    *g = false;
    m.cv.notify_one();
}

unsafe extern "C" fn h_rwlock_create(
    _: *mut c_void,
    class: *const gpusvm_lock_class,
) -> *mut c_void {
    new_lock::<HRwLock>(class)
}

/// The reader-writer lock behind a handle.
///
/// # Safety
/// `l` is a live handle from `h_rwlock_create`.
unsafe fn hr<'a>(l: *mut c_void) -> &'a HRwLock {
    // SAFETY: by the caller.
    unsafe { &*l.cast::<HRwLock>() }
}

unsafe extern "C" fn h_rwlock_destroy(_: *mut c_void, l: *mut c_void) {
    // SAFETY: `l` came from `h_rwlock_create` and is destroyed once.
    let r = unsafe { Box::from_raw(l.cast::<HRwLock>()) };
    assert_eq!(
        *r.state.lock().unwrap(),
        0,
        "a reader-writer lock destroyed held"
    );
    LOCKS_DESTROYED.fetch_add(1, SeqCst);
}

unsafe extern "C" fn h_read(_: *mut c_void, l: *mut c_void) {
    // SAFETY: a live handle.
    let r = unsafe { hr(l) };
    let mut g = r.state.lock().unwrap();
    while *g < 0 {
        g = r.cv.wait(g).unwrap();
    }
    *g += 1;
}

unsafe extern "C" fn h_try_read(_: *mut c_void, l: *mut c_void) -> bool {
    // SAFETY: a live handle.
    let mut g = unsafe { hr(l) }.state.lock().unwrap();
    if *g < 0 {
        return false;
    }
    *g += 1;
    true
}

unsafe extern "C" fn h_read_unlock(_: *mut c_void, l: *mut c_void) {
    // SAFETY: a live handle.
    let r = unsafe { hr(l) };
    let mut g = r.state.lock().unwrap();
    assert!(*g > 0, "read unlock without a reader");
    *g -= 1;
    r.cv.notify_all();
}

unsafe extern "C" fn h_write(_: *mut c_void, l: *mut c_void) {
    // SAFETY: a live handle.
    let r = unsafe { hr(l) };
    let mut g = r.state.lock().unwrap();
    while *g != 0 {
        g = r.cv.wait(g).unwrap();
    }
    *g = -1;
}

unsafe extern "C" fn h_try_write(_: *mut c_void, l: *mut c_void) -> bool {
    // SAFETY: a live handle.
    let mut g = unsafe { hr(l) }.state.lock().unwrap();
    if *g != 0 {
        return false;
    }
    *g = -1;
    true
}

unsafe extern "C" fn h_write_unlock(_: *mut c_void, l: *mut c_void) {
    // SAFETY: a live handle.
    let r = unsafe { hr(l) };
    let mut g = r.state.lock().unwrap();
    assert_eq!(*g, -1, "write unlock without the writer");
    *g = 0;
    r.cv.notify_all();
}

fn host_ops() -> gpusvm_host_ops {
    gpusvm_host_ops {
        ctx: null_mut(),
        alloc: Some(h_alloc),
        free: Some(h_free),
        mutex_create: Some(h_mutex_create),
        mutex_destroy: Some(h_mutex_destroy),
        mutex_lock: Some(h_mutex_lock),
        mutex_try_lock: Some(h_mutex_try_lock),
        mutex_unlock: Some(h_mutex_unlock),
        rwlock_create: Some(h_rwlock_create),
        rwlock_destroy: Some(h_rwlock_destroy),
        rwlock_read: Some(h_read),
        rwlock_try_read: Some(h_try_read),
        rwlock_read_unlock: Some(h_read_unlock),
        rwlock_write: Some(h_write),
        rwlock_try_write: Some(h_try_write),
        rwlock_write_unlock: Some(h_write_unlock),
    }
}

static INIT: Once = Once::new();
static SERIAL: Mutex<()> = Mutex::new(());

/// Register the host (once; before it, creating an SVM fails with -ENOMEM) and run one test at
/// a time: the host, its counters and the failure injection are process-wide.
fn serial() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    INIT.call_once(|| {
        let f = Fake::new();
        let o = f.ops();
        let c = config();
        let sentinel = std::ptr::dangling_mut::<gpusvm>();
        let mut svm = sentinel;
        if !gpusvm_host_ready() {
            // SAFETY: valid pointers to live values.
            assert_eq!(unsafe { gpusvm_create(&o, &c, &mut svm) }, ENOMEM);
            assert_eq!(svm, sentinel);
        }
        let mut h = host_ops();
        // SAFETY: NULL, or a readable table of functions honouring the contract.
        unsafe {
            assert_eq!(gpusvm_host_init(null()), EINVAL);
            h.free = None;
            assert_eq!(gpusvm_host_init(&h), EINVAL);
            assert!(!gpusvm_host_ready());
            h = host_ops();
            assert_eq!(gpusvm_host_init(&h), 0);
            assert_eq!(gpusvm_host_init(&h), -16 /* EBUSY */);
        }
        assert!(gpusvm_host_ready());
    });
    FAIL_AT.store(-1, SeqCst);
    g
}

fn assert_no_leak() {
    assert_eq!(
        ALLOCS.load(SeqCst),
        FREES.load(SeqCst),
        "allocations == frees"
    );
    assert_eq!(
        LOCKS_CREATED.load(SeqCst),
        LOCKS_DESTROYED.load(SeqCst),
        "locks created == destroyed"
    );
}

// ---- platform: one VMA, frames in an array, identity DMA, a device page table ----

/// A `Cell` that may be shared between threads (a value behind a std mutex).
#[derive(Default)]
struct Cell<T>(Mutex<T>);

impl<T: Copy> Cell<T> {
    fn new(v: T) -> Cell<T> {
        Cell(Mutex::new(v))
    }
    fn get(&self) -> T {
        *self.0.lock().unwrap()
    }
    fn set(&self, v: T) {
        *self.0.lock().unwrap() = v;
    }
    /// Replace the value by `f` of it, atomically; the old value.
    fn update(&self, f: impl FnOnce(T) -> T) -> T {
        let mut g = self.0.lock().unwrap();
        let old = *g;
        *g = f(old);
        old
    }
}

/// The fake platform. Callbacks get `&Fake` from the `ctx` pointer, re-enter one another
/// (`migrate_isolate` invalidates, which zaps) and run on several threads (`threads`), so
/// everything is behind shared references with interior mutability.
struct Fake {
    pfn: Vec<Cell<u64>>,
    /// Device page table: bus address | 1, or 0.
    pte: Vec<Cell<u64>>,
    on_dev: Vec<Cell<bool>>,
    dev: Vec<Cell<u64>>,
    migrating: Vec<Cell<bool>>,
    maps: Cell<i64>,
    unmaps: Cell<i64>,
    zaps: Cell<i64>,
    notifiers_live: Cell<i64>,
    notifier_id: Cell<u64>,
    notifier_handle: u8,
    svm: AtomicPtr<gpusvm>,
    pm: AtomicPtr<gpusvm_pagemap>,
    next_pfn: Cell<u64>,
    next_dpfn: Cell<u64>,
    dev_allocs: Cell<i64>,
    dev_releases: Cell<i64>,
    copied_pages: Cell<u64>,
    sys_frees: Cell<i64>,
    finalized: Cell<i64>,
    start: Instant,
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
unsafe fn fake<'a>(ctx: *mut c_void) -> &'a Fake {
    // SAFETY: by the caller; only shared references are made (interior mutability).
    unsafe { &*ctx.cast_const().cast::<Fake>() }
}

fn page_of(va: u64) -> usize {
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
    fn new() -> Box<Fake> {
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

    fn ctx(&self) -> *mut c_void {
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

    fn ops(&self) -> gpusvm_platform_ops {
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

    fn devmem_ops(&self) -> gpusvm_devmem_ops {
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

    fn mapped_ptes(&self) -> usize {
        self.pte.iter().filter(|p| p.get() != 0).count()
    }
}

fn config() -> gpusvm_config {
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
fn config_small() -> gpusvm_config {
    gpusvm_config {
        chunk_sizes: SMALL_SIZES.as_ptr(),
        ..config()
    }
}

fn create(f: &Fake, c: &gpusvm_config) -> *mut gpusvm {
    let o = f.ops();
    let mut svm = null_mut();
    // SAFETY: valid pointers to live values; `f` outlives the SVM (each test destroys it).
    assert_eq!(unsafe { gpusvm_create(&o, c, &mut svm) }, 0);
    assert!(!svm.is_null());
    f.svm.store(svm, SeqCst);
    svm
}

// ---- bind: writes the page table, checks and counts entries ----

struct Seen<'a> {
    f: &'a Fake,
    entries: usize,
    calls: usize,
    next_first: usize,
    next_va: u64,
    devmem: usize,
    /// Call `gpusvm_invalidate_begin_nonblock` from inside (the notifier lock is held).
    try_nonblock: bool,
    nonblock_rc: c_int,
}

impl<'a> Seen<'a> {
    fn new(f: &'a Fake) -> Seen<'a> {
        Seen {
            f,
            entries: 0,
            calls: 0,
            next_first: 0,
            next_va: 0,
            devmem: 0,
            try_nonblock: false,
            nonblock_rc: 1,
        }
    }
    fn ctx(&mut self) -> *mut c_void {
        core::ptr::from_mut(self).cast()
    }
}

unsafe extern "C" fn bind_cb(
    ctx: *mut c_void,
    _: *const gpusvm_range,
    e: *const gpusvm_page_entry,
    n: usize,
    first: usize,
) -> c_int {
    // SAFETY: `ctx` is the `Seen` the caller passed (exclusively ours during the call); `e`
    // readable for `n` entries (the bind contract).
    let (s, e) = unsafe { (&mut *ctx.cast::<Seen>(), std::slice::from_raw_parts(e, n)) };
    s.calls += 1;
    assert_eq!(first, s.next_first);
    for e in e {
        assert!(s.next_va == 0 || e.va == s.next_va);
        let p = page_of(e.va);
        if s.f.on_dev[p].get() {
            assert_eq!(e.protocol, 1); // the device's own memory
            assert_eq!(e.addr, s.f.dev[p].get() * PAGE);
            s.devmem += 1;
        } else {
            assert_eq!(e.protocol, 0);
            assert_eq!(e.addr, s.f.pfn[p].get() * PAGE);
            assert!(e.writable);
        }
        assert_eq!(e.size, PAGE);
        s.f.pte[p].set(e.addr | 1);
        s.next_va = e.va + e.size;
    }
    s.entries += n;
    s.next_first = first + n;
    if s.try_nonblock {
        // The notifier lock is held shared: a non-blockable invalidation refuses, changing
        // nothing.
        // SAFETY: the SVM is live.
        s.nonblock_rc = unsafe {
            gpusvm_invalidate_begin_nonblock(
                s.f.svm.load(SeqCst),
                s.f.notifier_id.get(),
                BASE,
                BASE + PAGE,
                GPUSVM_EVENT_CLEAR,
                false,
                0,
            )
        };
        s.try_nonblock = false;
    }
    0
}

fn stats(svm: *mut gpusvm) -> gpusvm_stats {
    let mut st = gpusvm_stats::default();
    // SAFETY: a live SVM, a writable out.
    assert_eq!(unsafe { gpusvm_stats(svm, &mut st) }, 0);
    st
}

// ---- the scenarios ----

#[test]
fn bad_input_is_einval_and_changes_nothing() {
    let _g = serial();
    let f = Fake::new();
    let mut o = f.ops();
    let mut c = config();
    let mut svm: *mut gpusvm = null_mut();
    let mut r: *mut gpusvm_range = null_mut();
    let mut st = gpusvm_stats::default();
    let nine = [0u64; 9];
    // SAFETY: every pointer is NULL, misaligned or valid; the callbacks honour the contracts.
    unsafe {
        assert_eq!(gpusvm_create(null(), &c, &mut svm), EINVAL);
        assert_eq!(gpusvm_create(&o, null(), &mut svm), EINVAL);
        assert_eq!(gpusvm_create(&o, &c, null_mut()), EINVAL);
        let misaligned = core::ptr::from_ref(&o).cast::<u8>().add(1).cast();
        assert_eq!(gpusvm_create(misaligned, &c, &mut svm), EINVAL);
        c.mm_start = 123; // not page aligned
        assert_eq!(gpusvm_create(&o, &c, &mut svm), EINVAL);
        c = config();
        c.chunk_sizes = nine.as_ptr();
        c.n_chunk_sizes = 9; // more than 8
        assert_eq!(gpusvm_create(&o, &c, &mut svm), EINVAL);
        c = config();
        o.zap = None; // required
        assert_eq!(gpusvm_create(&o, &c, &mut svm), EINVAL);
        assert!(svm.is_null());

        svm = create(&f, &c);
        let fault =
            |svm, addr, access, ws, we, out| gpusvm_handle_fault(svm, addr, access, ws, we, out);
        assert_eq!(
            fault(null_mut(), BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, &mut r),
            EINVAL
        );
        assert_eq!(fault(svm, BASE, 7, 0, u64::MAX, &mut r), EINVAL); // no such access
        assert_eq!(fault(svm, BASE, GPUSVM_ACCESS_READ, 5, 5, &mut r), EINVAL); // empty window
        assert_eq!(
            fault(svm, BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, null_mut()),
            EINVAL
        );
        let mis_out = core::ptr::from_mut(&mut st).cast::<u8>().add(1).cast();
        assert_eq!(
            fault(svm, BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, mis_out),
            EINVAL
        );
        assert_eq!(
            fault(svm, 1 << 48, GPUSVM_ACCESS_READ, 0, u64::MAX, &mut r),
            EINVAL
        ); // outside
        assert!(r.is_null());
        assert_eq!(
            gpusvm_invalidate_begin(svm, 0, BASE, BASE + PAGE, 99, false, 0),
            EINVAL
        );
        assert_eq!(gpusvm_bind(svm, null(), Some(bind_cb), null_mut()), EINVAL);
        assert_eq!(gpusvm_get_pages(svm, null(), null()), EINVAL);
        assert_eq!(gpusvm_range_put(null_mut()), EINVAL);
        assert_eq!(gpusvm_stats(svm, null_mut()), EINVAL);
        assert_eq!(gpusvm_stats(svm, mis_out.cast()), EINVAL);
        let mis_svm = svm.cast::<u8>().add(1).cast::<gpusvm>();
        assert_eq!(gpusvm_stats(mis_svm, &mut st), EINVAL);
        assert_eq!(gpusvm_destroy(mis_svm), EINVAL);
        // A handle that is not an SVM: zeroed memory of an SVM's size (no magic).
        let mut not_svm = vec![0u64; core::mem::size_of::<gpusvm>().div_ceil(8) + 1];
        let bad = not_svm.as_mut_ptr().cast::<gpusvm>();
        assert_eq!(gpusvm_stats(bad, &mut st), EINVAL);
        assert_eq!(gpusvm_destroy(bad), EINVAL);
        assert_eq!(gpusvm_gc_run(bad, null_mut()), EINVAL);
        assert!(not_svm.iter().all(|w| *w == 0));
        assert_eq!(gpusvm_pagemap_put(null_mut()), EINVAL);
        assert_eq!(
            gpusvm_pagemap_counts(null(), null_mut(), null_mut()),
            EINVAL
        );
        // Nothing of the above reached the platform.
        st = stats(svm);
        assert_eq!(st.faults, 0);
        assert_eq!((f.maps.get(), f.notifiers_live.get()), (0, 0));
        assert_eq!(gpusvm_destroy(svm), 0);
        assert_eq!(gpusvm_destroy(null_mut()), EINVAL);
    }
    assert_no_leak();
}

#[test]
fn fault_bind_invalidate_gc() {
    let _g = serial();
    let f = Fake::new();
    let svm = create(&f, &config());
    let mut r: *mut gpusvm_range = null_mut();
    let mut r2: *mut gpusvm_range = null_mut();
    let (mut start, mut end) = (0u64, 0u64);
    let mut valid = false;
    let mut removed = 99usize;
    let id = || f.notifier_id.get();
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        // A write fault inside the first chunk: one range of a chunk, every page mapped.
        let mut seen = Seen::new(&f);
        let rc = gpusvm_handle_fault_and_bind(
            svm,
            BASE + 0x5000,
            GPUSVM_ACCESS_WRITE,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            &mut r,
        );
        assert_eq!(rc, 0);
        assert!(!r.is_null());
        assert_eq!(gpusvm_range_bounds(r, &mut start, &mut end), 0);
        assert_eq!((start, end), (BASE, BASE + CHUNK));
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(seen.calls, CPAGES.div_ceil(64));
        assert_eq!(f.maps.get(), CPAGES as i64);
        assert_eq!(f.mapped_ptes(), CPAGES);
        assert_eq!(f.notifiers_live.get(), 1);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(valid);

        // Bind again, with a non-blocking invalidation from inside bind: -EAGAIN, nothing
        // changes.
        let mut seen = Seen::new(&f);
        seen.try_nonblock = true;
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(seen.nonblock_rc, EAGAIN);
        assert_eq!((f.zaps.get(), f.unmaps.get()), (0, 0));
        assert_eq!(f.mapped_ptes(), CPAGES);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(valid);

        // The same range is found again; past its end, nothing.
        assert_eq!(gpusvm_find(svm, BASE + CHUNK - 1, &mut r2), 0);
        assert_eq!(r2, r);
        assert_eq!(gpusvm_range_put(r2), 0);
        assert_eq!(gpusvm_find(svm, BASE + CHUNK, &mut r2), 0);
        assert!(r2.is_null());

        // Invalidate one page: the device mappings are zapped, the range's DMA unmapped.
        let ev = GPUSVM_EVENT_CLEAR;
        assert_eq!(
            gpusvm_invalidate_begin(svm, id(), BASE, BASE + PAGE, ev, false, 0),
            0
        );
        assert_eq!(gpusvm_invalidate_end(svm, id(), BASE, BASE + PAGE), 0);
        assert!(f.zaps.get() >= 1);
        assert_eq!(f.unmaps.get(), CPAGES as i64);
        assert_eq!(f.mapped_ptes(), 0);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(!valid);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), EAGAIN);
        assert_eq!(seen.entries, 0);

        // The non-blocking form with the lock free succeeds.
        assert_eq!(
            gpusvm_invalidate_begin_nonblock(svm, id(), BASE, BASE + PAGE, ev, false, 0),
            0
        );
        assert_eq!(gpusvm_invalidate_end(svm, id(), BASE, BASE + PAGE), 0);

        // Collected again and bound again.
        assert_eq!(gpusvm_get_pages(svm, r, null()), 0);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(f.maps.get(), 2 * CPAGES as i64);
        assert_eq!(f.mapped_ptes(), CPAGES);

        // munmap: the range goes to the GC, which removes it and its notifier.
        let ev = GPUSVM_EVENT_UNMAP;
        assert_eq!(
            gpusvm_invalidate_begin(svm, id(), BASE, BASE + CHUNK, ev, false, 0),
            0
        );
        assert_eq!(gpusvm_invalidate_end(svm, id(), BASE, BASE + CHUNK), 0);
        assert_eq!(f.unmaps.get(), 2 * CPAGES as i64);
        assert_eq!(f.mapped_ptes(), 0);
        assert_eq!(gpusvm_gc_run(svm, &mut removed), 0);
        assert_eq!(removed, 1);
        assert_eq!(f.notifiers_live.get(), 0);
        assert_eq!(gpusvm_get_pages(svm, r, null()), EAGAIN); // removed: fault again
        assert_eq!(gpusvm_find(svm, BASE, &mut r2), 0);
        assert!(r2.is_null());

        let st = stats(svm);
        assert_eq!((st.faults, st.faults_write), (1, 1));
        assert_eq!((st.ranges_created, st.ranges_removed), (1, 1));
        assert!(st.invalidations >= 3);

        // A counted reference outlives the removal; the SVM goes with its last one.
        assert_eq!(gpusvm_range_get(r), 0);
        assert_eq!(gpusvm_range_put(r), 0);
        assert_eq!(gpusvm_range_put(r), 0);
        assert_eq!(gpusvm_destroy(svm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_no_leak();
}

struct Walk {
    n: usize,
    start: u64,
    end: u64,
    live: u64,
}

unsafe extern "C" fn alloc_cb(ctx: *mut c_void, start: u64, end: u64, live: u64, _: u64) -> c_int {
    // SAFETY: `ctx` is the caller's `Walk`.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    w.n += 1;
    (w.start, w.end, w.live) = (start, end, live);
    0
}

#[test]
fn migrate_to_devmem_and_evict() {
    let _g = serial();
    let f = Fake::new();
    let mut c = config();
    c.has_owner = true;
    c.owner = 1;
    let svm = create(&f, &c);
    let mut d = f.devmem_ops();
    let mut pm = null_mut();
    let mut r = null_mut();
    let mut rep = gpusvm_migrate_report::default();
    let (mut live, mut released) = (9u64, 9u64);
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        assert_eq!(gpusvm_migrate_to_devmem(svm, null(), null_mut()), EINVAL);
        d.copy = None; // required
        assert_eq!(gpusvm_pagemap_create(&d, 1, 1, &mut pm), EINVAL);
        assert!(pm.is_null());
        d = f.devmem_ops();
        assert_eq!(gpusvm_pagemap_create(&d, 1, 1, &mut pm), 0);
        f.pm.store(pm, SeqCst);
        assert_eq!(gpusvm_set_pagemap(svm, pm), 0);

        // A read fault in system memory, then the range moves to device memory.
        let mut seen = Seen::new(&f);
        let rc = gpusvm_handle_fault_and_bind(
            svm,
            BASE,
            GPUSVM_ACCESS_READ,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            &mut r,
        );
        assert_eq!(rc, 0);
        assert_eq!((seen.entries, seen.devmem), (CPAGES, 0));
        assert_eq!(gpusvm_migrate_to_devmem(svm, r, &mut rep), 0);
        assert_eq!(rep.pages, CPAGES as u64);
        assert!(rep.copy_runs >= 1);
        assert_eq!(rep.bytes, CHUNK);
        assert_eq!(f.copied_pages.get(), CPAGES as u64);
        assert_eq!(f.dev_allocs.get(), 1);
        assert_eq!(f.sys_frees.get(), CPAGES as i64);
        assert!(f.finalized.get() >= 1);
        assert!(f.on_dev[0].get() && f.on_dev[CPAGES - 1].get() && !f.on_dev[CPAGES].get());

        // Collected again: device-local entries.
        let pctx = gpusvm_pages_ctx {
            has_owner: true,
            owner: 1,
            ..Default::default()
        };
        assert_eq!(gpusvm_get_pages(svm, r, &pctx), 0);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.devmem, CPAGES);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(gpusvm_pagemap_counts(pm, &mut live, &mut released), 0);
        assert_eq!((live, released), (1, 0));
        let mut w = Walk {
            n: 0,
            start: 0,
            end: 0,
            live: 0,
        };
        let wp = core::ptr::from_mut(&mut w).cast();
        assert_eq!(gpusvm_pagemap_allocations(pm, Some(alloc_cb), wp), 0);
        assert_eq!(
            (w.n, w.start, w.end, w.live),
            (1, BASE, BASE + CHUNK, CPAGES as u64)
        );
        assert_eq!(gpusvm_pagemap_allocations(pm, None, null_mut()), EINVAL);

        // Evict: back to system memory; the device allocation is released once.
        rep = gpusvm_migrate_report::default();
        assert_eq!(gpusvm_evict(svm, r, &mut rep), 0);
        assert_eq!(rep.pages, CPAGES as u64);
        assert!(!f.on_dev[0].get() && !f.on_dev[CPAGES - 1].get());
        assert_eq!(f.dev_releases.get(), 1);
        assert_eq!(f.copied_pages.get(), 2 * CPAGES as u64);
        assert_eq!(gpusvm_pagemap_counts(pm, &mut live, &mut released), 0);
        assert_eq!((live, released), (0, 1));

        // Into device memory again, then a CPU fault on one of its pages (migrate_to_ram).
        assert_eq!(gpusvm_migrate_to_devmem(svm, r, null_mut()), 0);
        assert!(f.on_dev[7].get());
        rep = gpusvm_migrate_report::default();
        let va = BASE + 7 * PAGE;
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram(pm, svm, va, f.dev[7].get(), &mut rep),
            0
        );
        assert!(rep.pages >= 1);
        assert!(!f.on_dev[7].get());
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram(null(), svm, BASE, 0, null_mut()),
            EINVAL
        );
        // The same in an address space given by a platform table.
        assert_eq!(gpusvm_migrate_to_devmem(svm, r, null_mut()), 0);
        assert!(f.on_dev[9].get());
        let mut o = f.ops();
        let va = BASE + 9 * PAGE;
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram_in(pm, &o, va, f.dev[9].get(), null_mut()),
            0
        );
        assert!(!f.on_dev[9].get());
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram_in(pm, null(), BASE, 0, null_mut()),
            EINVAL
        );
        o.find_vma = None; // required
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram_in(pm, &o, BASE, 0, null_mut()),
            EINVAL
        );
        assert_eq!(gpusvm_pagemap_page_free(null(), 0), EINVAL);
        // Whatever is left in device memory goes back before teardown.
        assert_eq!(gpusvm_evict(svm, r, null_mut()), 0);
        assert!(f.on_dev.iter().all(|d| !d.get()));

        // Teardown: the range, the SVM, then the last pagemap reference.
        assert_eq!(gpusvm_range_put(r), 0);
        assert_eq!(gpusvm_destroy(svm), 0);
        assert_eq!(gpusvm_pagemap_counts(pm, &mut live, &mut released), 0);
        assert_eq!(live, 0);
        assert_eq!(released as i64, f.dev_releases.get());
        assert_eq!(f.dev_allocs.get(), f.dev_releases.get());
        assert_eq!(gpusvm_pagemap_put(pm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_eq!(f.notifiers_live.get(), 0);
    assert_no_leak();
}

/// One scenario: create, fault a range and bind it, drop it, destroy. 0 or the first error.
fn scenario(f: &Fake) -> c_int {
    let o = f.ops();
    let c = config_small();
    let mut svm = null_mut();
    let mut r = null_mut();
    // SAFETY: valid pointers; `f` outlives the SVM.
    unsafe {
        let rc = gpusvm_create(&o, &c, &mut svm);
        if rc != 0 {
            assert!(svm.is_null());
            return rc;
        }
        f.svm.store(svm, SeqCst);
        let mut seen = Seen::new(f);
        let rc = gpusvm_handle_fault_and_bind(
            svm,
            BASE + CHUNK + 0x3000,
            GPUSVM_ACCESS_READ,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            &mut r,
        );
        if rc == 0 {
            // One chunk around the fault, every page bound.
            let (mut start, mut end) = (0, 0);
            assert_eq!(gpusvm_range_bounds(r, &mut start, &mut end), 0);
            assert!(start <= BASE + CHUNK + 0x3000 && BASE + CHUNK + 0x3000 < end);
            assert_eq!(end - start, SMALL);
            assert_eq!(seen.entries as u64, SMALL / PAGE);
            assert_eq!(gpusvm_range_put(r), 0);
        } else {
            assert!(r.is_null());
            assert_eq!(seen.entries, 0);
        }
        assert_eq!(gpusvm_destroy(svm), 0);
        rc
    }
}

#[test]
fn every_allocation_failure_is_enomem_without_leaks() {
    let _g = serial();
    // The dry run: how many allocation and lock-creation attempts the scenario makes.
    ATTEMPTS.store(0, SeqCst);
    let f = Fake::new();
    assert_eq!(scenario(&f), 0);
    let attempts = ATTEMPTS.load(SeqCst);
    assert!(attempts > 5);
    assert_no_leak();

    // Fail the k-th attempt, for every k: -ENOMEM, nothing leaked, nothing left mapped.
    for k in 0..attempts {
        let f = Fake::new();
        ATTEMPTS.store(0, SeqCst);
        FAIL_AT.store(k, SeqCst);
        let rc = scenario(&f);
        FAIL_AT.store(-1, SeqCst);
        assert_eq!(rc, ENOMEM, "attempt {k}");
        assert_no_leak();
        assert_eq!(f.maps.get(), f.unmaps.get(), "attempt {k}");
        assert_eq!(f.notifiers_live.get(), 0, "attempt {k}");
    }
}

#[test]
fn ranges_by_hand_unmap_free_remove_close() {
    let _g = serial();
    let f = Fake::new();
    let svm = create(&f, &config());
    let mut r = null_mut();
    let mut r2 = null_mut();
    let mut valid = true;
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        // The fault path by hand: find or insert, collect, bind.
        let pctx = gpusvm_pages_ctx::default();
        let va = BASE + CHUNK + PAGE;
        assert_eq!(
            gpusvm_find_or_insert(svm, va, 0, u64::MAX, &pctx, &mut r),
            0
        );
        assert!(!r.is_null());
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(!valid); // nothing collected yet
        assert_eq!(f.maps.get(), 0);
        assert_eq!(gpusvm_get_pages(svm, r, &pctx), 0);
        assert_eq!(f.maps.get(), CPAGES as i64);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(
            gpusvm_find_or_insert(svm, va + PAGE, 0, u64::MAX, null(), &mut r2),
            0
        );
        assert_eq!(r2, r); // the same range
        assert_eq!(gpusvm_range_put(r2), 0);

        // unmap_pages drops the DMA mappings, free_pages the page state; both leave the range.
        assert_eq!(gpusvm_unmap_pages(svm, r), 0);
        assert_eq!(f.unmaps.get(), CPAGES as i64);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(!valid);
        assert_eq!(gpusvm_get_pages(svm, r, null()), 0);
        assert_eq!(f.maps.get(), 2 * CPAGES as i64);
        assert_eq!(gpusvm_free_pages(svm, r), 0);
        assert_eq!(f.unmaps.get(), 2 * CPAGES as i64);
        assert_eq!(gpusvm_find(svm, va, &mut r2), 0);
        assert_eq!(r2, r);
        assert_eq!(gpusvm_range_put(r2), 0);

        // remove takes it out of the SVM (and its notifier with it).
        assert_eq!(gpusvm_get_pages(svm, r, null()), 0);
        assert_eq!(f.notifiers_live.get(), 1);
        assert_eq!(gpusvm_remove(svm, r), 0);
        assert_eq!(f.maps.get(), f.unmaps.get());
        assert_eq!(f.notifiers_live.get(), 0);
        assert_eq!(gpusvm_find(svm, va, &mut r2), 0);
        assert!(r2.is_null());
        assert_eq!(gpusvm_unmap_pages(svm, null()), EINVAL);
        assert_eq!(gpusvm_free_pages(null_mut(), r), EINVAL);
        assert_eq!(gpusvm_range_put(r), 0);
        r = null_mut();

        // A closed SVM refuses faults; destroy still frees it.
        assert_eq!(gpusvm_close(svm), 0);
        let rc = gpusvm_handle_fault(svm, BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, &mut r);
        assert!(rc < 0);
        assert!(r.is_null());
        assert_eq!(f.maps.get(), 3 * CPAGES as i64);
        assert_eq!(gpusvm_destroy(svm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_no_leak();
}

struct UpBind<'a> {
    seen: Seen<'a>,
    up: *mut gpusvm_userptr,
    svm: *mut gpusvm,
    nonblock_rc: c_int,
}

unsafe extern "C" fn up_bind_cb(
    ctx: *mut c_void,
    range: *const gpusvm_range,
    e: *const gpusvm_page_entry,
    n: usize,
    first: usize,
) -> c_int {
    // SAFETY: `ctx` is the caller's `UpBind`.
    let b = unsafe { &mut *ctx.cast::<UpBind>() };
    assert!(range.is_null());
    if first == 0 {
        // The userptr's lock is held shared: a non-blocking invalidation refuses.
        // SAFETY: live handles.
        b.nonblock_rc = unsafe { gpusvm_userptr_invalidate_begin(b.up, b.svm, 0, u64::MAX, true) };
    }
    // SAFETY: forwarded, with the `Seen` inside.
    unsafe { bind_cb(b.seen.ctx(), range, e, n, first) }
}

#[test]
fn attrs_prefetch_userptr() {
    let _g = serial();
    let f = Fake::new();
    let mut c = config();
    c.has_owner = true;
    c.owner = 1;
    let svm = create(&f, &c);
    let d = f.devmem_ops();
    let mut pm = null_mut();
    let mut at = gpusvm_attrs {
        preferred_loc: 9,
        migration: 9,
        atomic: 9,
    };
    let mut up = null_mut();
    let mut valid = false;
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        assert_eq!(gpusvm_pagemap_create(&d, 1, 1, &mut pm), 0);
        f.pm.store(pm, SeqCst);
        assert_eq!(gpusvm_set_pagemap(svm, pm), 0);

        // The second chunk prefers system memory and global atomics.
        let mut a = [
            gpusvm_attr {
                kind: GPUSVM_ATTR_PREFERRED_LOC,
                value: 1,
                reserved: 0,
            },
            gpusvm_attr {
                kind: GPUSVM_ATTR_ATOMIC,
                value: 2,
                reserved: 0,
            },
        ];
        let (c1, ap) = (BASE + CHUNK, a.as_ptr());
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, ap, 2), 0);
        assert_eq!(gpusvm_attrs_at(svm, c1 + PAGE, &mut at), 0);
        assert_eq!((at.preferred_loc, at.migration, at.atomic), (1, 0, 2));
        assert_eq!(gpusvm_attrs_at(svm, BASE, &mut at), 0);
        assert_eq!(at.preferred_loc, 0);
        a[1].reserved = 1; // one bad entry: nothing changes
        a[0].value = 0;
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, a.as_ptr(), 2), EINVAL);
        assert_eq!(gpusvm_attrs_at(svm, c1, &mut at), 0);
        assert_eq!(at.preferred_loc, 1);
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, a.as_ptr(), 0), EINVAL);
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, null(), 1), EINVAL);
        assert_eq!(
            gpusvm_set_attrs(svm, BASE + 1, CHUNK, a.as_ptr(), 1),
            EINVAL
        );
        assert_eq!(gpusvm_attrs_at(svm, BASE, null_mut()), EINVAL);

        // Prefetch the first chunk into device memory and back.
        assert_eq!(
            gpusvm_prefetch(svm, BASE, CHUNK, GPUSVM_PREFETCH_DEVICE, 0),
            0
        );
        assert!(f.on_dev[0].get() && f.on_dev[CPAGES - 1].get());
        assert_eq!(
            gpusvm_prefetch(svm, BASE, CHUNK, GPUSVM_PREFETCH_SYSTEM, 0),
            0
        );
        assert!(!f.on_dev[0].get() && !f.on_dev[CPAGES - 1].get());
        assert_eq!(f.dev_allocs.get(), f.dev_releases.get());
        assert_eq!(gpusvm_prefetch(svm, BASE, CHUNK, 9, 0), EINVAL);
        assert_eq!(
            gpusvm_prefetch(svm, BASE, CHUNK, GPUSVM_PREFETCH_PAGEMAP, 77),
            EINVAL
        );

        // A userptr of a few pages in system memory.
        const UP_PAGES: usize = 4;
        let us = BASE + CHUNK + CHUNK / 2;
        let ue = us + UP_PAGES as u64 * PAGE;
        assert_eq!(gpusvm_userptr_create(us, us + 1, &mut up), EINVAL);
        assert!(up.is_null());
        assert_eq!(gpusvm_userptr_create(us, ue, &mut up), 0);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_userptr_bind(up, Some(bind_cb), seen.ctx()), EAGAIN); // not collected
        assert_eq!(seen.entries, 0);
        assert_eq!(gpusvm_userptr_get_pages(up, svm, null()), 0);
        let mut b = UpBind {
            seen: Seen::new(&f),
            up,
            svm,
            nonblock_rc: 1,
        };
        let bp = core::ptr::from_mut(&mut b).cast();
        assert_eq!(gpusvm_userptr_bind(up, Some(up_bind_cb), bp), 0);
        assert_eq!(b.seen.entries, UP_PAGES);
        assert_eq!(b.nonblock_rc, EAGAIN);
        assert_eq!(gpusvm_userptr_pages_valid(up, &mut valid), 0);
        assert!(valid); // the refused invalidation changed nothing
        let unmaps = f.unmaps.get();
        assert_eq!(
            gpusvm_userptr_invalidate_begin(up, svm, us, us + PAGE, false),
            0
        );
        assert_eq!(f.unmaps.get() - unmaps, UP_PAGES as i64);
        assert_eq!(gpusvm_userptr_invalidate_end(up), 0);
        assert_eq!(gpusvm_userptr_pages_valid(up, &mut valid), 0);
        assert!(!valid);
        assert_eq!(gpusvm_userptr_get_pages(up, svm, null()), 0);
        assert_eq!(gpusvm_userptr_pages_valid(up, &mut valid), 0);
        assert!(valid);
        assert_eq!(gpusvm_userptr_destroy(up, svm), 0);
        assert_eq!(gpusvm_userptr_destroy(null_mut(), svm), EINVAL);

        assert_eq!(gpusvm_destroy(svm), 0);
        assert_eq!(gpusvm_pagemap_put(pm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_no_leak();
}

/// Writes the page table under the notifier lock (shared), as a driver would.
unsafe extern "C" fn race_bind(
    ctx: *mut c_void,
    _: *const gpusvm_range,
    e: *const gpusvm_page_entry,
    n: usize,
    _: usize,
) -> c_int {
    // SAFETY: the `Fake` given as ctx; `e` readable for `n` entries.
    let (f, e) = unsafe { (fake(ctx), std::slice::from_raw_parts(e, n)) };
    for e in e {
        f.pte[page_of(e.va)].set(e.addr | 1);
    }
    0
}

/// A raw SVM handle shared by the racing threads (every call on it is thread-safe).
#[derive(Clone, Copy)]
struct Shared(*mut gpusvm);
// SAFETY: the library's calls may run concurrently on one SVM, and the fake's state is behind
// locks; the handles outlive the threads.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn get(self) -> *mut gpusvm {
        self.0
    }
}

#[test]
fn faults_race_invalidations_on_host_locks() {
    let _g = serial();
    let f = Fake::new();
    let svm = Shared(create(&f, &config_small()));
    let (faults, invalidations) = if cfg!(miri) { (12, 12) } else { (2000, 2000) };
    let mut seen = Seen::new(&f);
    // SAFETY: a live SVM; the first fault registers the notifier the invalidator targets.
    let rc = unsafe {
        gpusvm_handle_fault_and_bind(
            svm.get(),
            BASE,
            GPUSVM_ACCESS_WRITE,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            null_mut(),
        )
    };
    assert_eq!(rc, 0);
    let stop = AtomicBool::new(false);
    let ctx = Shared(f.ctx().cast());
    std::thread::scope(|s| {
        let faulter = |seed: u64| {
            let (svm, ctx) = (svm, ctx);
            move || {
                let (mut ok, mut again) = (0, 0);
                for i in 0..faults {
                    let page = (seed * 7 + i * 5) % NPAGES as u64;
                    // SAFETY: a live SVM; `race_bind` honours the bind contract.
                    let rc = unsafe {
                        gpusvm_handle_fault_and_bind(
                            svm.get(),
                            BASE + page * PAGE,
                            GPUSVM_ACCESS_WRITE,
                            0,
                            u64::MAX,
                            Some(race_bind),
                            ctx.get().cast(),
                            null_mut(),
                        )
                    };
                    match rc {
                        0 => ok += 1,
                        EAGAIN | -16 => again += 1,
                        rc => panic!("fault: {rc}"),
                    }
                }
                (ok, again)
            }
        };
        let a = s.spawn(faulter(1));
        let b = s.spawn(faulter(2));
        let inv = s.spawn(|| {
            let id = f.notifier_id.get();
            let mut n = 0u64;
            while n < invalidations || !stop.load(SeqCst) {
                let start = BASE + (n * 3 % NPAGES as u64) * PAGE;
                let end = (start + (1 + n % 8) * PAGE).min(END);
                // SAFETY: a live SVM.
                unsafe {
                    match n % 4 {
                        0 => {
                            let ev = GPUSVM_EVENT_UNMAP;
                            assert_eq!(
                                gpusvm_invalidate_begin(svm.get(), id, start, end, ev, false, 0),
                                0
                            );
                            assert_eq!(gpusvm_invalidate_end(svm.get(), id, start, end), 0);
                            let mut removed = 0;
                            assert_eq!(gpusvm_gc_run(svm.get(), &mut removed), 0);
                        }
                        1 => {
                            let ev = GPUSVM_EVENT_CLEAR;
                            match gpusvm_invalidate_begin_nonblock(
                                svm.get(),
                                id,
                                start,
                                end,
                                ev,
                                false,
                                0,
                            ) {
                                0 => {
                                    assert_eq!(gpusvm_invalidate_end(svm.get(), id, start, end), 0)
                                }
                                rc => assert_eq!(rc, EAGAIN),
                            }
                        }
                        _ => {
                            let ev = GPUSVM_EVENT_CLEAR;
                            assert_eq!(
                                gpusvm_invalidate_begin(svm.get(), id, start, end, ev, false, 0),
                                0
                            );
                            assert_eq!(gpusvm_invalidate_end(svm.get(), id, start, end), 0);
                        }
                    }
                }
                n += 1;
                if cfg!(miri) && n >= invalidations {
                    break;
                }
            }
        });
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        stop.store(true, SeqCst);
        inv.join().unwrap();
        assert!(a.0 + b.0 > 0, "no fault went through: {a:?} {b:?}");
    });
    // Everything invalidated: no device mapping is left, every DMA mapping is unmapped.
    let id = f.notifier_id.get();
    // SAFETY: a live SVM, then destroyed.
    unsafe {
        let ev = GPUSVM_EVENT_CLEAR;
        assert_eq!(
            gpusvm_invalidate_begin(svm.get(), id, BASE, END, ev, false, 0),
            0
        );
        assert_eq!(f.mapped_ptes(), 0);
        assert_eq!(f.maps.get(), f.unmaps.get());
        assert_eq!(gpusvm_invalidate_end(svm.get(), id, BASE, END), 0);
        assert_eq!(gpusvm_destroy(svm.get()), 0);
    }
    assert_eq!(f.notifiers_live.get(), 0);
    assert_no_leak();
}
