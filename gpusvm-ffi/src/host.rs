//! The host facet from C: the allocator and the locks, one table per process (or kernel
//! module), registered with [`gpusvm_host_init`].
//!
//! A kernel lock must not move once initialised, and the crate moves its locks by value, so a
//! lock here is a handle: `mutex_create`/`rwlock_create` allocate a lock object on the C side,
//! initialise it in place and return a pointer to it; [`FfiMutex`]/[`FfiRwLock`] hold that
//! pointer and call `*_destroy` when dropped. Creating a lock may fail (a NULL handle): the
//! crate then returns `-ENOMEM` from the constructor that needed the lock.

use crate::errno;
use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_void};
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};
use gpusvm::heap::{AllocCtx, Allocator};
use gpusvm::sync::{class, LockClass, RawMutex, RawRwLock};
use gpusvm::{Error, Host, Result};

/// Number of lock classes of the crate (`gpusvm_lock_class::index` is below it): a host
/// keeps one lock-checker key per class in an array of this size.
pub const GPUSVM_LOCK_CLASSES: u32 = 11;

/// The static description of one of the crate's locks, passed to `mutex_create` and
/// `rwlock_create`. Lives as long as the program (or module).
#[repr(C)]
#[derive(Debug)]
pub struct gpusvm_lock_class {
    /// A stable, NUL-terminated name, `"gpusvm.<lock>"` (a Linux host names its lockdep class
    /// after it).
    pub name: *const c_char,
    /// Position of the class in the crate's class list, below [`GPUSVM_LOCK_CLASSES`]: an index
    /// into the host's array of lock-checker keys.
    pub index: u32,
    /// Rank in the lock order: a lock is taken (blocking) only while every lock held has a
    /// smaller rank.
    pub rank: u32,
    /// Whether the host may implement the lock with a sleeping lock (Linux: `struct mutex`,
    /// `struct rw_semaphore`). `false`: it must spin (`spinlock_t`, `rwlock_t`).
    pub may_sleep: bool,
    /// Whether the invalidation path takes the lock.
    pub invalidation: bool,
}

/// The host's allocator and lock operations, registered once with [`gpusvm_host_init`]. Every
/// member must be set. The functions may be called from any thread, concurrently; none may
/// call back into the library.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gpusvm_host_ops {
    /// Passed as the first argument of every function.
    pub ctx: *mut c_void,
    /// Allocate `size` bytes (never 0) aligned to `align` (a power of two). `may_sleep` false:
    /// the caller holds a spinning lock, do not sleep (Linux `GFP_NOWAIT`; true: `GFP_KERNEL`).
    /// Returns NULL when no memory is available.
    pub alloc: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            size: usize,
            align: usize,
            may_sleep: bool,
        ) -> *mut c_void,
    >,
    /// Free memory from `alloc`, with the size and alignment it was allocated with. Must not
    /// sleep.
    pub free:
        Option<unsafe extern "C" fn(ctx: *mut c_void, ptr: *mut c_void, size: usize, align: usize)>,
    /// Create an unlocked mutex of class `class` (allocated and initialised in place; it will
    /// not move). Returns NULL when it cannot. May sleep.
    pub mutex_create: Option<
        unsafe extern "C" fn(ctx: *mut c_void, class: *const gpusvm_lock_class) -> *mut c_void,
    >,
    /// Destroy an unlocked mutex from `mutex_create` and free it. Must not sleep.
    pub mutex_destroy: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
    /// Lock, waiting until the mutex is free (sleeping only if the class may sleep).
    pub mutex_lock: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
    /// Lock if free right now; whether it was locked. Never waits.
    pub mutex_try_lock: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void) -> bool>,
    /// Unlock a mutex the calling thread holds.
    pub mutex_unlock: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
    /// Create an unlocked reader-writer lock of class `class`. Returns NULL when it cannot.
    pub rwlock_create: Option<
        unsafe extern "C" fn(ctx: *mut c_void, class: *const gpusvm_lock_class) -> *mut c_void,
    >,
    /// Destroy an unlocked reader-writer lock and free it. Must not sleep.
    pub rwlock_destroy: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
    /// Take the lock shared, waiting while a writer holds it.
    pub rwlock_read: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
    /// Take the lock shared if possible right now; whether it was taken.
    pub rwlock_try_read: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void) -> bool>,
    /// Release a shared hold.
    pub rwlock_read_unlock: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
    /// Take the lock exclusively, waiting for every holder to leave.
    pub rwlock_write: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
    /// Take the lock exclusively if it is free right now; whether it was taken.
    pub rwlock_try_write: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void) -> bool>,
    /// Release the exclusive hold.
    pub rwlock_write_unlock: Option<unsafe extern "C" fn(ctx: *mut c_void, lock: *mut c_void)>,
}

type LockFn = unsafe extern "C" fn(*mut c_void, *mut c_void);
type TryFn = unsafe extern "C" fn(*mut c_void, *mut c_void) -> bool;
type CreateFn = unsafe extern "C" fn(*mut c_void, *const gpusvm_lock_class) -> *mut c_void;

/// [`gpusvm_host_ops`] checked: every function present.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostTable {
    ctx: *mut c_void,
    alloc: unsafe extern "C" fn(*mut c_void, usize, usize, bool) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize, usize),
    mutex_create: CreateFn,
    mutex_destroy: LockFn,
    mutex_lock: LockFn,
    mutex_try_lock: TryFn,
    mutex_unlock: LockFn,
    rwlock_create: CreateFn,
    rwlock_destroy: LockFn,
    rwlock_read: LockFn,
    rwlock_try_read: TryFn,
    rwlock_read_unlock: LockFn,
    rwlock_write: LockFn,
    rwlock_try_write: TryFn,
    rwlock_write_unlock: LockFn,
}

// SAFETY: the table is immutable once registered and the C contract of `gpusvm_host_ops` is
// that its functions may be called from any thread, concurrently, with its `ctx`.
unsafe impl Send for HostTable {}
// SAFETY: as above.
unsafe impl Sync for HostTable {}

impl HostTable {
    fn from_ops(o: &gpusvm_host_ops) -> Option<HostTable> {
        Some(HostTable {
            ctx: o.ctx,
            alloc: o.alloc?,
            free: o.free?,
            mutex_create: o.mutex_create?,
            mutex_destroy: o.mutex_destroy?,
            mutex_lock: o.mutex_lock?,
            mutex_try_lock: o.mutex_try_lock?,
            mutex_unlock: o.mutex_unlock?,
            rwlock_create: o.rwlock_create?,
            rwlock_destroy: o.rwlock_destroy?,
            rwlock_read: o.rwlock_read?,
            rwlock_try_read: o.rwlock_try_read?,
            rwlock_read_unlock: o.rwlock_read_unlock?,
            rwlock_write: o.rwlock_write?,
            rwlock_try_write: o.rwlock_try_write?,
            rwlock_write_unlock: o.rwlock_write_unlock?,
        })
    }
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

/// The registered table: written once (state `EMPTY` → `WRITING` → `READY`), then only read.
struct Slot {
    state: AtomicU8,
    table: UnsafeCell<MaybeUninit<HostTable>>,
}

// SAFETY: `table` is written only by the one thread that moved `state` from EMPTY to WRITING,
// and read only after `state` is READY (Release store / Acquire load), never written again.
unsafe impl Sync for Slot {}

static HOST: Slot = Slot {
    state: AtomicU8::new(EMPTY),
    table: UnsafeCell::new(MaybeUninit::uninit()),
};

/// The registered host table, if [`gpusvm_host_init`] succeeded.
pub(crate) fn table() -> Option<&'static HostTable> {
    if HOST.state.load(Ordering::Acquire) == READY {
        // SAFETY: READY is stored (Release) only after the table was written, and the table is
        // never written again.
        Some(unsafe { (*HOST.table.get()).assume_init_ref() })
    } else {
        None
    }
}

/// Register the host facet: the allocator and the locks every later call uses. Call it once,
/// before anything else; the table is copied (it need not outlive the call).
///
/// Returns 0, `-EINVAL` if `ops` is NULL, misaligned or has a NULL function (nothing is
/// registered), or `-EBUSY` if a table is already registered (it stays).
///
/// Context: any; never sleeps, allocates nothing, takes no lock.
///
/// # Safety
/// `ops` is NULL or points to a readable `struct gpusvm_host_ops` whose functions honour the
/// contract documented on it.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_host_init(ops: *const gpusvm_host_ops) -> c_int {
    if ops.is_null() || !ops.is_aligned() {
        return errno(Error::Invalid);
    }
    // SAFETY: non-null and aligned (checked); readable by the caller's contract.
    let Some(t) = HostTable::from_ops(unsafe { &*ops }) else {
        return errno(Error::Invalid);
    };
    if HOST
        .state
        .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Acquire)
        .is_err()
    {
        return errno(Error::Busy);
    }
    // SAFETY: this thread won the EMPTY → WRITING transition: no one else writes the table,
    // and no one reads it before READY.
    unsafe { (*HOST.table.get()).write(t) };
    HOST.state.store(READY, Ordering::Release);
    0
}

/// Whether a host table is registered.
///
/// Context: any; never sleeps, allocates nothing, takes no lock.
#[no_mangle]
pub extern "C" fn gpusvm_host_ready() -> bool {
    table().is_some()
}

/// A NUL-terminated-name mirror of every crate lock class, in the order of [`class::ALL`].
#[repr(transparent)]
struct Classes([gpusvm_lock_class; GPUSVM_LOCK_CLASSES as usize]);

// SAFETY: the names point at static, immutable C string literals; nothing is ever written.
unsafe impl Sync for Classes {}

const fn mirror(name: &'static core::ffi::CStr, c: &LockClass, index: u32) -> gpusvm_lock_class {
    gpusvm_lock_class {
        name: name.as_ptr(),
        index,
        rank: c.rank as u32,
        may_sleep: c.may_sleep,
        invalidation: c.invalidation,
    }
}

static CLASSES: Classes = Classes([
    mirror(c"gpusvm.structure", &class::STRUCTURE, 0),
    mirror(c"gpusvm.owner", &class::OWNER, 1),
    mirror(c"gpusvm.notifiers", &class::NOTIFIERS, 2),
    mirror(c"gpusvm.notifier", &class::NOTIFIER, 3),
    mirror(c"gpusvm.userptr", &class::USERPTR, 4),
    mirror(c"gpusvm.pagemaps", &class::PAGEMAPS, 5),
    mirror(c"gpusvm.gc_queue", &class::GC_QUEUE, 6),
    mirror(c"gpusvm.range_pages", &class::RANGE_PAGES, 7),
    mirror(c"gpusvm.attrs", &class::ATTRS, 8),
    mirror(c"gpusvm.pagemap_runs", &class::PAGEMAP_RUNS, 9),
    mirror(c"gpusvm.owner_registry", &class::OWNER_REGISTRY, 10),
]);

const _: () = assert!(class::ALL.len() == GPUSVM_LOCK_CLASSES as usize);

/// The C description of the crate class `c`.
fn c_class(c: &'static LockClass) -> Option<&'static gpusvm_lock_class> {
    let i = class::ALL.iter().position(|k| core::ptr::eq(*k, c))?;
    CLASSES.0.get(i)
}

/// The host facet over the registered C table.
#[derive(Debug, Clone, Copy, Default)]
pub struct FfiHost;

impl Host for FfiHost {
    type Mutex = FfiMutex;
    type RwLock = FfiRwLock;
    type Alloc = FfiAlloc;
}

/// The allocator over the registered table's `alloc`/`free`. Before [`gpusvm_host_init`] every
/// allocation fails with `NoMem`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FfiAlloc;

// SAFETY: memory comes from the C allocator, which by its contract returns `size` bytes at
// `align` that stay valid until freed; a pointer that is not aligned is freed and refused.
unsafe impl Allocator for FfiAlloc {
    fn allocate(layout: Layout, ctx: AllocCtx) -> Result<NonNull<u8>> {
        let t = table().ok_or(Error::NoMem)?;
        // SAFETY: the table's function honours the `alloc` contract; arguments are plain values.
        let p = unsafe {
            (t.alloc)(
                t.ctx,
                layout.size(),
                layout.align(),
                ctx == AllocCtx::MaySleep,
            )
        };
        let p = NonNull::new(p.cast::<u8>()).ok_or(Error::NoMem)?;
        if p.as_ptr().addr() & layout.align().wrapping_sub(1) != 0 {
            // SAFETY: `p` came from this `alloc` with this size and alignment.
            unsafe { (t.free)(t.ctx, p.as_ptr().cast(), layout.size(), layout.align()) };
            return Err(Error::NoMem);
        }
        Ok(p)
    }

    unsafe fn deallocate(ptr: NonNull<u8>, layout: Layout) {
        // Memory exists only if a table was registered, and it is never unregistered.
        if let Some(t) = table() {
            // SAFETY: the caller passes memory from `allocate` with its layout.
            unsafe { (t.free)(t.ctx, ptr.as_ptr().cast(), layout.size(), layout.align()) };
        }
    }
}

/// A mutex of the C host: a handle to a lock object the host allocated and initialised in
/// place. Dropping it destroys the lock.
#[derive(Debug)]
pub struct FfiMutex {
    t: &'static HostTable,
    h: NonNull<c_void>,
}

// SAFETY: the handle is used only through the host's lock functions, which by the C contract
// may be called from any thread.
unsafe impl Send for FfiMutex {}
// SAFETY: as above.
unsafe impl Sync for FfiMutex {}

// SAFETY: exclusion and ordering are the C lock's, which the `gpusvm_host_ops` contract makes a
// mutex (lock, try-lock, unlock with acquire/release semantics).
unsafe impl RawMutex for FfiMutex {
    fn new(class: &'static LockClass) -> Result<Self> {
        let t = table().ok_or(Error::NoMem)?;
        let c = c_class(class).ok_or(Error::NoMem)?;
        // SAFETY: `c` is a static class description; the function honours `mutex_create`.
        let h = unsafe { (t.mutex_create)(t.ctx, c) };
        Ok(FfiMutex {
            t,
            h: NonNull::new(h).ok_or(Error::NoMem)?,
        })
    }
    fn lock(&self) {
        // SAFETY: `h` is a live mutex of this table.
        unsafe { (self.t.mutex_lock)(self.t.ctx, self.h.as_ptr()) }
    }
    fn try_lock(&self) -> bool {
        // SAFETY: as in `lock`.
        unsafe { (self.t.mutex_try_lock)(self.t.ctx, self.h.as_ptr()) }
    }
    unsafe fn unlock(&self) {
        // SAFETY: as in `lock`; the caller holds the lock.
        unsafe { (self.t.mutex_unlock)(self.t.ctx, self.h.as_ptr()) }
    }
}

impl Drop for FfiMutex {
    fn drop(&mut self) {
        // SAFETY: `h` came from `mutex_create` of this table and is destroyed once, unlocked
        // (no guard can outlive the lock).
        unsafe { (self.t.mutex_destroy)(self.t.ctx, self.h.as_ptr()) }
    }
}

/// A reader-writer lock of the C host: a handle to a lock object the host allocated and
/// initialised in place. Dropping it destroys the lock.
#[derive(Debug)]
pub struct FfiRwLock {
    t: &'static HostTable,
    h: NonNull<c_void>,
}

// SAFETY: as for `FfiMutex`.
unsafe impl Send for FfiRwLock {}
// SAFETY: as for `FfiMutex`.
unsafe impl Sync for FfiRwLock {}

// SAFETY: exclusion and ordering are the C lock's, which the `gpusvm_host_ops` contract makes
// a reader-writer lock.
unsafe impl RawRwLock for FfiRwLock {
    fn new(class: &'static LockClass) -> Result<Self> {
        let t = table().ok_or(Error::NoMem)?;
        let c = c_class(class).ok_or(Error::NoMem)?;
        // SAFETY: `c` is a static class description; the function honours `rwlock_create`.
        let h = unsafe { (t.rwlock_create)(t.ctx, c) };
        Ok(FfiRwLock {
            t,
            h: NonNull::new(h).ok_or(Error::NoMem)?,
        })
    }
    fn read(&self) {
        // SAFETY: `h` is a live reader-writer lock of this table.
        unsafe { (self.t.rwlock_read)(self.t.ctx, self.h.as_ptr()) }
    }
    fn try_read(&self) -> bool {
        // SAFETY: as in `read`.
        unsafe { (self.t.rwlock_try_read)(self.t.ctx, self.h.as_ptr()) }
    }
    unsafe fn unlock_read(&self) {
        // SAFETY: as in `read`; the caller holds the lock shared.
        unsafe { (self.t.rwlock_read_unlock)(self.t.ctx, self.h.as_ptr()) }
    }
    fn write(&self) {
        // SAFETY: as in `read`.
        unsafe { (self.t.rwlock_write)(self.t.ctx, self.h.as_ptr()) }
    }
    fn try_write(&self) -> bool {
        // SAFETY: as in `read`.
        unsafe { (self.t.rwlock_try_write)(self.t.ctx, self.h.as_ptr()) }
    }
    unsafe fn unlock_write(&self) {
        // SAFETY: as in `read`; the caller holds the lock exclusively.
        unsafe { (self.t.rwlock_write_unlock)(self.t.ctx, self.h.as_ptr()) }
    }
}

impl Drop for FfiRwLock {
    fn drop(&mut self) {
        // SAFETY: `h` came from `rwlock_create` of this table and is destroyed once, unlocked.
        unsafe { (self.t.rwlock_destroy)(self.t.ctx, self.h.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_mirror_the_crate() {
        for (i, (c, m)) in class::ALL.iter().zip(CLASSES.0.iter()).enumerate() {
            // SAFETY: the names are static C string literals.
            let name = unsafe { core::ffi::CStr::from_ptr(m.name) };
            assert_eq!(name.to_str().unwrap(), c.name);
            assert_eq!(m.index as usize, i);
            assert_eq!(m.rank, u32::from(c.rank));
            assert_eq!((m.may_sleep, m.invalidation), (c.may_sleep, c.invalidation));
            assert!(core::ptr::eq(c_class(c).unwrap(), m));
        }
    }

    #[test]
    fn without_a_host_nothing_is_created() {
        if table().is_none() {
            assert_eq!(FfiMutex::new(&class::STRUCTURE).unwrap_err(), Error::NoMem);
            assert_eq!(FfiRwLock::new(&class::NOTIFIER).unwrap_err(), Error::NoMem);
            assert_eq!(
                FfiAlloc::allocate(Layout::new::<u64>(), AllocCtx::MaySleep).unwrap_err(),
                Error::NoMem
            );
        }
    }
}
