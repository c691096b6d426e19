//! [`SimAlloc`] itself: the failure schedule fails exactly the k-th allocation, and its lock
//! rules catch allocations under the wrong locks.

use crate::harness::*;
use gpusvm::sim::SimAlloc;
use gpusvm::sim::SimHost;
use gpusvm::Error;

/// The counts themselves: a failure fires once, at the k-th allocation, and is counted.
#[test]
fn the_schedule_fails_the_kth_allocation() {
    use gpusvm::heap::AllocCtx;
    SimAlloc::reset();
    let mut v = gpusvm::heap::Vec::<u64, SimAlloc>::new();
    SimAlloc::fail_after(2, 1);
    assert!(v.reserve(1, AllocCtx::MaySleep).is_ok());
    let a = gpusvm::heap::Arc::<u64, SimAlloc>::try_new(1, AllocCtx::MaySleep).unwrap();
    assert_eq!(
        gpusvm::heap::Arc::<u64, SimAlloc>::try_new(2, AllocCtx::MaySleep).err(),
        Some(Error::NoMem)
    );
    assert!(!SimAlloc::failing());
    let b = gpusvm::heap::Arc::<u64, SimAlloc>::try_new(3, AllocCtx::MaySleep).unwrap();
    let s = SimAlloc::stats();
    assert_eq!((s.allocs, s.failed), (3, 1));
    drop((v, a, b));
    no_leak("schedule").unwrap();
}

/// The lock rules of [`SimAlloc`] fire: an allocation under a lock the invalidation path takes,
/// and a `MaySleep` allocation under a spinning lock, are counted and described; `NoSleep`
/// under a spinning lock that invalidation does not take is fine.
#[test]
fn allocations_under_locks_are_caught() {
    use gpusvm::heap::AllocCtx;
    use gpusvm::sync::{class, Mutex, RwLock};
    SimAlloc::reset();
    let alloc = |ctx| drop(gpusvm::heap::Arc::<u64, SimAlloc>::try_new(1, ctx).unwrap());
    {
        let attrs = Mutex::<SimHost, ()>::new(&class::ATTRS, ()).unwrap();
        let _g = attrs.lock();
        alloc(AllocCtx::NoSleep);
    }
    assert_eq!(SimAlloc::stats().lock_violations, 0);
    assert!(SimAlloc::first_lock_violation().is_none());
    {
        let attrs = Mutex::<SimHost, ()>::new(&class::ATTRS, ()).unwrap();
        let _g = attrs.lock();
        alloc(AllocCtx::MaySleep);
    }
    assert_eq!(SimAlloc::stats().lock_violations, 1);
    let v = SimAlloc::first_lock_violation().unwrap();
    assert!(
        v.contains("MaySleep") && v.contains(class::ATTRS.name),
        "{v}"
    );
    {
        let notifier = RwLock::<SimHost, ()>::new(&class::NOTIFIER, ()).unwrap();
        let _g = notifier.read();
        alloc(AllocCtx::MaySleep);
    }
    assert_eq!(SimAlloc::stats().lock_violations, 2);
    SimAlloc::reset();
    {
        let notifier = RwLock::<SimHost, ()>::new(&class::NOTIFIER, ()).unwrap();
        let _g = notifier.write();
        alloc(AllocCtx::NoSleep);
    }
    let v = SimAlloc::first_lock_violation().unwrap();
    assert!(
        v.contains("invalidation") && v.contains(class::NOTIFIER.name),
        "{v}"
    );
}
