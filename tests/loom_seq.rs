//! Loom models of the notifier sequence counter ([`gpusvm::range::SeqCounter`]) together with
//! the notifier lock ([`gpusvm::sync::RwLock`]), the protocol of DESIGN "Concurrency model"
//! and invariant 6: *a page collection is never committed if an invalidation overlapped it.*
//!
//! Run (a separate target dir keeps the normal build cache intact):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_seq`
//!
//! The actors, exactly as `Svm::get_pages` / `Svm::invalidate_begin` / `Svm::invalidate_end`
//! use the counter:
//! - a **collector** (the fault path): `read_begin` (retrying, yielding, while an invalidation
//!   runs), reads the shared "page" (the CPU page table) *without any lock*, then takes the
//!   notifier lock for write and commits its copy to the "device" only if `!read_retry(seq)`;
//!   otherwise drops the copy and starts again;
//! - an **invalidator** (the MMU notifier): takes the lock, `begin` (counter odd) and zaps the
//!   device copy, releases the lock, changes the page with no lock held (the CPU page-table
//!   change), then takes the lock and calls `end`.
//!
//! What each model proves, for every interleaving loom explores (all of them up to the
//! preemption bound, under the C11 memory model loom simulates for the atomics):
//! - [`collection_racing_one_invalidation`]: when the collector commits, the value it collected
//!   equals the page's current value and no invalidation is in progress; after both threads
//!   finish, the device holds either nothing (zapped) or the final page value — never a stale
//!   one. The collector always terminates (retry is bounded by the invalidation finishing).
//! - [`collection_racing_two_concurrent_invalidations`]: the same with two invalidators on two
//!   threads whose `begin`/`end` interleave in every order (nested or overlapping). `end` is
//!   called under the *read* lock, as `Svm::invalidate_end` does, so two `end`s may run at
//!   once: the counter still only turns even after the last one.
//! - [`collection_racing_nested_invalidation_one_thread`]: one invalidator nests two
//!   invalidations (`begin, change, begin, change, end, change, end`), changing the page also
//!   between the inner `end` and the outer `end`: the collector must not commit in that window.
//! - [`read_begin_sees_completed_invalidation`]: a collection that *starts* after an
//!   invalidation completed (its `read_begin` saw the even counter the `end` published) reads
//!   the page value written during the invalidation (acquire/release pairing of `end` and
//!   `read_begin`), so it may commit without retry.
#![cfg(loom)]

use gpusvm::range::SeqCounter;
use gpusvm::sync::{class, AtomicUsize, DefaultLocks, Ordering, RwLock};
use loom::sync::Arc;
use loom::thread;

/// The device's view of the page: what was committed (bound), if anything.
#[derive(Debug, Default)]
struct Device {
    committed: Option<usize>,
    commits: usize,
}

/// One notifier: its lock (guarding the device state), its counter, and the CPU page it covers.
struct Notifier {
    lock: RwLock<DefaultLocks, Device>,
    seq: SeqCounter,
    /// The CPU page table entry: changed only while an invalidation is in progress.
    page: AtomicUsize,
}

impl Notifier {
    fn new() -> Arc<Self> {
        Arc::new(Notifier {
            lock: RwLock::new(&class::NOTIFIER, Device::default()),
            seq: SeqCounter::new(),
            page: AtomicUsize::new(0),
        })
    }

    /// The fault path: collect without locks, commit under the lock unless the counter moved.
    fn collect_and_commit(&self) {
        loop {
            let seq = loop {
                match self.seq.read_begin() {
                    Some(s) => break s,
                    None => thread::yield_now(),
                }
            };
            // Collection: no lock held. Relaxed on purpose: correctness must come from the
            // counter and the lock, not from this load.
            let collected = self.page.load(Ordering::Relaxed);
            let mut dev = self.lock.write();
            if self.seq.read_retry(seq) {
                drop(dev);
                thread::yield_now();
                continue;
            }
            assert!(
                !self.seq.in_progress(),
                "committed while an invalidation is in progress"
            );
            assert_eq!(
                collected,
                self.page.load(Ordering::Relaxed),
                "committed a page collected before an overlapping invalidation"
            );
            dev.committed = Some(collected);
            dev.commits += 1;
            return;
        }
    }

    /// `invalidate_begin`: lock for write, counter odd, zap the device copy.
    fn invalidate_begin(&self) {
        let mut dev = self.lock.write();
        self.seq.begin();
        dev.committed = None;
    }

    /// The CPU page-table change, outside the notifier lock.
    fn change_page(&self) {
        self.page.fetch_add(1, Ordering::Relaxed);
    }

    /// `invalidate_end` under the write lock (what the SeqCounter docs ask for).
    fn invalidate_end_write(&self) {
        let _dev = self.lock.write();
        self.seq.end();
    }

    /// `invalidate_end` under the read lock (what `Svm::invalidate_end` does).
    fn invalidate_end_read(&self) {
        let _dev = self.lock.read();
        self.seq.end();
    }

    /// After all threads joined: the device holds nothing or the current page.
    fn check_final(&self) {
        let dev = self.lock.read();
        assert_eq!(dev.commits, 1, "the collector commits exactly once");
        if let Some(v) = dev.committed {
            assert_eq!(
                v,
                self.page.load(Ordering::Relaxed),
                "device holds a stale page"
            );
        }
        assert!(!self.seq.in_progress());
        assert!(self.seq.read_begin().is_some(), "counter left odd");
    }
}

#[test]
fn collection_racing_one_invalidation() {
    loom::model(|| {
        let n = Notifier::new();
        let c = {
            let n = n.clone();
            thread::spawn(move || n.collect_and_commit())
        };
        let i = {
            let n = n.clone();
            thread::spawn(move || {
                n.invalidate_begin();
                n.change_page();
                n.invalidate_end_write();
            })
        };
        c.join().unwrap();
        i.join().unwrap();
        n.check_final();
        assert_eq!(n.page.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn collection_racing_two_concurrent_invalidations() {
    loom::model(|| {
        let n = Notifier::new();
        let c = {
            let n = n.clone();
            thread::spawn(move || n.collect_and_commit())
        };
        let inv: Vec<_> = (0..2)
            .map(|_| {
                let n = n.clone();
                thread::spawn(move || {
                    n.invalidate_begin();
                    n.change_page();
                    n.invalidate_end_read();
                })
            })
            .collect();
        c.join().unwrap();
        for t in inv {
            t.join().unwrap();
        }
        n.check_final();
        assert_eq!(n.page.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn collection_racing_nested_invalidation_one_thread() {
    loom::model(|| {
        let n = Notifier::new();
        let c = {
            let n = n.clone();
            thread::spawn(move || n.collect_and_commit())
        };
        let i = {
            let n = n.clone();
            thread::spawn(move || {
                n.invalidate_begin(); // outer
                n.change_page();
                n.invalidate_begin(); // inner
                n.change_page();
                n.invalidate_end_write(); // inner ends: still odd
                n.change_page(); // the outer invalidation still changes the page
                n.invalidate_end_write(); // outer ends: even
            })
        };
        c.join().unwrap();
        i.join().unwrap();
        n.check_final();
        assert_eq!(n.page.load(Ordering::Relaxed), 3);
        assert_eq!(
            n.seq.current(),
            2,
            "nested invalidations bump the counter once"
        );
    });
}

#[test]
fn read_begin_sees_completed_invalidation() {
    loom::model(|| {
        let n = Notifier::new();
        let i = {
            let n = n.clone();
            thread::spawn(move || {
                n.invalidate_begin();
                n.change_page();
                n.invalidate_end_write();
            })
        };
        // Spin (yielding) until the invalidation is visibly complete, then collect: the page
        // written before `end` must be visible, with no lock taken on this path.
        let seq = loop {
            match n.seq.read_begin() {
                Some(s) if s != 0 => break s,
                _ => thread::yield_now(),
            }
        };
        assert_eq!(n.page.load(Ordering::Relaxed), 1);
        assert!(!n.seq.read_retry(seq));
        i.join().unwrap();
    });
}
