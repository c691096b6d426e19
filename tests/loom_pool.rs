//! Loom model of `heap::Pool`'s lock (the spin flag around its used-block table): two threads
//! allocate, write and free concurrently; every allocation succeeds or fails cleanly, no two
//! live allocations overlap (each thread's bytes survive the other's activity), and the pool
//! ends empty.
#![cfg(loom)]

use core::alloc::Layout;
use gpusvm::heap::Pool;
use loom::sync::Arc;
use loom::thread;

#[test]
fn concurrent_allocate_and_free_never_overlap() {
    loom::model(|| {
        let pool: Arc<Pool<3>> = Arc::new(Pool::new());
        let layout = Layout::from_size_align(64, 8).unwrap();
        let worker = |pool: Arc<Pool<3>>, tag: u8| {
            move || {
                let p = pool.allocate(layout).expect("3 blocks, at most 2 taken");
                // SAFETY: `p` is a live 64-byte allocation of this thread.
                unsafe { p.as_ptr().write_bytes(tag, 64) };
                loom::thread::yield_now();
                // SAFETY: as above; nobody else may have written into it.
                let seen = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
                assert!(seen.iter().all(|&b| b == tag), "allocations overlapped");
                // SAFETY: allocated from this pool with `layout`, freed once.
                unsafe { pool.deallocate(p, layout) };
            }
        };
        let t = thread::spawn(worker(pool.clone(), 0xA5));
        worker(pool.clone(), 0x5A)();
        t.join().unwrap();
        assert_eq!(pool.used_blocks(), 0);
    });
}

#[test]
fn exhaustion_fails_cleanly_under_contention() {
    loom::model(|| {
        let pool: Arc<Pool<2>> = Arc::new(Pool::new());
        let two = Layout::from_size_align(128, 64).unwrap();
        let p2 = pool.clone();
        let t = thread::spawn(move || p2.allocate(two).map(|p| p.as_ptr() as usize));
        let mine = pool.allocate(two).map(|p| p.as_ptr() as usize);
        let theirs = t.join().unwrap();
        // Both want the whole pool: exactly one gets it.
        assert!(mine.is_some() != theirs.is_some());
        assert_eq!(pool.used_blocks(), 2);
    });
}
