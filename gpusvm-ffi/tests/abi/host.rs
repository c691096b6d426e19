//! The host facet of the `abi` tests: a counting allocator over `std::alloc` with failure
//! injection (`ATTEMPTS`, `FAIL_AT`) and locks over `std::sync` allocated in place and handed out
//! as pointers, registered once per process ([`serial`], which also runs the tests one at a
//! time), the leak check ([`assert_no_leak`]) and the errno values the tests expect.

use core::ffi::{c_int, c_void};
use core::ptr::{null, null_mut};
use std::alloc::Layout;
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard, Once};

use gpusvm_ffi::host::*;
use gpusvm_ffi::svm::*;

use crate::platform::{config, Fake};

pub(crate) const EINVAL: c_int = -22;
pub(crate) const ENOMEM: c_int = -12;
pub(crate) const EAGAIN: c_int = -11;

// ---- host: a counting allocator with failure injection, locks over std::sync ----

static ALLOCS: AtomicI64 = AtomicI64::new(0);
static FREES: AtomicI64 = AtomicI64::new(0);
static LOCKS_CREATED: AtomicI64 = AtomicI64::new(0);
static LOCKS_DESTROYED: AtomicI64 = AtomicI64::new(0);
/// Allocation and lock-creation attempts.
pub(crate) static ATTEMPTS: AtomicI64 = AtomicI64::new(0);
/// The attempt with this number fails (-1: none).
pub(crate) static FAIL_AT: AtomicI64 = AtomicI64::new(-1);

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
pub(crate) fn serial() -> MutexGuard<'static, ()> {
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

pub(crate) fn assert_no_leak() {
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
