//! The unsafe code of the lock facet (`src/sync/lock.rs`: data behind an `UnsafeCell`, reached
//! only through guards; `src/sync/spin.rs`: the raw spin locks) under threads, sized for Miri
//! (`cargo +nightly miri test --test miri_sync`), which reports any data race on the guarded
//! data: a raw lock that let two holders in, or a release that does not publish the holder's
//! writes, would show up as a race (and as a lost update in the counts checked here). Runs in
//! the normal `cargo test` too.

use gpusvm::sync::{class, Mutex, RwLock, SpinHost};
use gpusvm::Host;
use std::sync::Arc;
use std::thread;

const THREADS: usize = 3;
const ROUNDS: usize = 20;

/// Every thread adds to a non-atomic counter behind the mutex (plain `u64` read-modify-write).
fn mutex_counts<L: Host>()
where
    L::Mutex: 'static,
{
    let m: Arc<Mutex<L, u64>> = Arc::new(Mutex::new(&class::GC_QUEUE, 0).unwrap());
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let mut g = m.lock();
                    let v = *g;
                    *g = v + 1;
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(*m.lock(), (THREADS * ROUNDS) as u64);
    assert!(m.try_lock().is_some());
}

/// Writers push to a `Vec` (reallocation under the lock), readers read it whole: a reader must
/// never see a torn vector, and no push is lost.
fn rwlock_readers_and_writers<L: Host>()
where
    L::RwLock: 'static,
{
    let l: Arc<RwLock<L, Vec<u64>>> = Arc::new(RwLock::new(&class::NOTIFIER, Vec::new()).unwrap());
    let hs: Vec<_> = (0..THREADS)
        .map(|t| {
            let l = l.clone();
            thread::spawn(move || {
                for i in 0..ROUNDS {
                    if (t + i) % 3 == 0 {
                        l.write().push(i as u64);
                    } else {
                        let g = l.read();
                        let sum: u64 = g.iter().sum();
                        assert!(sum <= (ROUNDS * ROUNDS * THREADS) as u64);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let writes = (0..THREADS)
        .flat_map(|t| (0..ROUNDS).filter(move |i| (t + i) % 3 == 0))
        .count();
    assert_eq!(l.read().len(), writes);
    assert!(l.try_write().is_some());
    let r = l.try_read();
    assert!(r.is_some());
    assert!(l.try_write().is_none(), "a reader excludes writers");
}

#[test]
fn spin_mutex_excludes() {
    mutex_counts::<SpinHost>();
}

#[test]
fn spin_rwlock_excludes() {
    rwlock_readers_and_writers::<SpinHost>();
}

#[cfg(feature = "std")]
#[test]
fn parking_locks_exclude() {
    mutex_counts::<gpusvm::sync::ParkingHost>();
    rwlock_readers_and_writers::<gpusvm::sync::ParkingHost>();
}

#[cfg(feature = "sim")]
#[test]
fn simulator_locks_exclude() {
    mutex_counts::<gpusvm::sim::SimHost>();
    rwlock_readers_and_writers::<gpusvm::sim::SimHost>();
}
