//! Loom models of the notifier sequence counter ([`gpusvm::range::SeqCounter`]) together with
//! the notifier lock and the per-range page lock ([`gpusvm::sync::RwLock`],
//! [`gpusvm::sync::Mutex`] on `DefaultHost`, i.e. loom's mutex + condvar under `--cfg loom`),
//! the protocol of DESIGN "Concurrency model" and invariant 6: *a page collection is never
//! committed if an invalidation overlapped it.*
//!
//! Run (a separate target dir keeps the normal build cache intact):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_seq -- --nocapture`
//!
//! These models isolate the protocol (no platform, no range tree); `tests/loom_invalidate.rs`
//! runs the same races through the real `Svm`. The actors, exactly as `Svm::get_pages` /
//! `Svm::invalidate_begin` / `Svm::invalidate_end` (`src/svm/invalidate.rs`) take the locks:
//! - a **collector** (the fault path): `read_begin` (retrying, yielding, while an invalidation
//!   runs), reads its range's "page" (the CPU page table) *without any lock*; then, with the
//!   notifier lock held **shared**, checks `!read_retry(seq)` and "maps" what it collected
//!   (the pages cannot be freed meanwhile: no invalidation can begin while the shared lock is
//!   held); then takes the notifier lock **shared** again plus the range's **page lock** and
//!   commits its copy to the "device" only if `!read_retry(seq)`, otherwise drops it and starts
//!   again. The shared lock lets faults on different ranges commit in parallel; commits of
//!   one range serialise on its page lock;
//! - an **invalidator** (the MMU notifier): takes the notifier lock **exclusively**, `begin`
//!   (counter odd), and under each range's page lock zaps/unmaps the device copy; releases the
//!   lock, changes the pages with no lock held (the CPU page-table change), then `end` with the
//!   notifier lock held **shared** (as `Svm::invalidate_end` does, so two `end`s may run at
//!   once: the counter still only turns even after the last one).
//!
//! What each model proves, for every interleaving loom explores (all of them up to the
//! preemption bound, under the C11 memory model loom simulates for the atomics):
//! - In every commit: no invalidation is in progress, the value committed equals the page's
//!   current value, and no other commit of the same range is inside its page lock. At every
//!   "map": the page is still the one collected.
//! - [`collection_racing_one_invalidation`]: after both threads finish, the device holds
//!   either nothing (zapped) or the final page value — never a stale one. The collector always
//!   terminates (retry is bounded by the invalidation finishing).
//! - [`collection_racing_two_concurrent_invalidations`]: the same with two invalidators on two
//!   threads whose `begin`/`end` interleave in every order (nested or overlapping).
//! - [`collection_racing_nested_invalidation_one_thread`]: one invalidator nests two
//!   invalidations (`begin, change, begin, change, end, change, end`), changing the page also
//!   between the inner `end` and the outer `end`: the collector must not commit in that window.
//! - [`two_collectors_one_range_racing_an_invalidation`]: two collectors of one range commit
//!   under the shared lock, serialised by the page lock; neither commits a stale value. Coverage:
//!   both were seen holding the notifier lock shared at once (so the page lock, not the
//!   notifier lock, is what serialises them).
//! - [`collectors_of_two_ranges_commit_in_parallel`]: collectors of two ranges racing one
//!   invalidation of both: each commits its own current page. Coverage: both were seen inside
//!   their commit (page lock held) at the same time — the commit really is shared.
//! - [`read_begin_sees_completed_invalidation`]: a collection that *starts* after an
//!   invalidation completed (its `read_begin` saw the even counter the `end` published) reads
//!   the page value written during the invalidation (acquire/release pairing of `end` and
//!   `read_begin`), so it may commit without retry.
#![cfg(loom)]

use gpusvm::range::SeqCounter;
use gpusvm::sync::{class, AtomicUsize, Mutex, Ordering, RwLock};
use gpusvm::DefaultHost;
use loom::sync::Arc;
use loom::thread;
use std::collections::BTreeSet;
use std::sync::Mutex as Ghost;

/// The device's view of one range's page: what was committed (bound), if anything.
#[derive(Debug, Default)]
struct Device {
    committed: Option<usize>,
    commits: usize,
}

/// One range: its page lock (guarding the device state) and the CPU page it covers.
struct RangeM {
    pages: Mutex<DefaultHost, Device>,
    /// The CPU page table entry: changed only while an invalidation is in progress.
    page: AtomicUsize,
    /// Ghost: commits of this range inside its page lock right now.
    committing: std::sync::atomic::AtomicUsize,
}

/// Ghost state shared by all executions of one model: which outcomes were reached.
#[derive(Clone, Default)]
struct Coverage(std::sync::Arc<Ghost<(BTreeSet<&'static str>, usize)>>);

impl Coverage {
    fn hit(&self, what: &'static str) {
        self.0.lock().unwrap().0.insert(what);
    }
    fn execution(&self) {
        self.0.lock().unwrap().1 += 1;
    }
    fn expect(&self, expected: &[&'static str]) -> usize {
        let g = self.0.lock().unwrap();
        for e in expected {
            assert!(
                g.0.contains(e),
                "no execution reached {e:?}; reached {:?}",
                g.0
            );
        }
        g.1
    }
}

/// One notifier: its lock (guarding the notifier tree in the crate; nothing here), its counter,
/// and its ranges.
struct Notifier {
    lock: RwLock<DefaultHost, ()>,
    seq: SeqCounter,
    ranges: Vec<RangeM>,
    /// Ghost: collectors holding the notifier lock shared in their commit right now.
    shared_commits: std::sync::atomic::AtomicUsize,
    /// Ghost: collectors inside their commit's page lock right now (any range).
    in_commit: std::sync::atomic::AtomicUsize,
    cov: Coverage,
}

const SHARED_TOGETHER: &str = "two commits held the notifier lock shared at once";
const PARALLEL: &str = "two commits inside their page locks at once";

impl Notifier {
    fn new(nranges: usize, cov: &Coverage) -> Arc<Self> {
        Arc::new(Notifier {
            lock: RwLock::new(&class::NOTIFIER, ()).unwrap(),
            seq: SeqCounter::new(),
            ranges: (0..nranges)
                .map(|_| RangeM {
                    pages: Mutex::new(&class::RANGE_PAGES, Device::default()).unwrap(),
                    page: AtomicUsize::new(0),
                    committing: std::sync::atomic::AtomicUsize::new(0),
                })
                .collect(),
            shared_commits: std::sync::atomic::AtomicUsize::new(0),
            in_commit: std::sync::atomic::AtomicUsize::new(0),
            cov: cov.clone(),
        })
    }

    /// The fault path of range `i`: collect without locks, map under the shared lock if the
    /// counter did not move, commit under the shared lock + the page lock unless it moved.
    /// Gives up (returns `false`, as `get_pages` returns `Busy`) after `max_attempts` tries
    /// (`usize::MAX`: never; with several spinning collectors loom needs the bound, as the
    /// crate's own `RetryPolicy::max_attempts`); returns whether it committed.
    fn collect_and_commit(&self, i: usize, max_attempts: usize) -> bool {
        use std::sync::atomic::Ordering::SeqCst as G;
        let r = &self.ranges[i];
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            if attempts > max_attempts {
                return false;
            }
            let Some(seq) = self.seq.read_begin() else {
                thread::yield_now();
                continue;
            };
            // Collection: no lock held. Relaxed on purpose: correctness must come from the
            // counter and the locks, not from this load.
            let collected = r.page.load(Ordering::Relaxed);
            {
                // The guard of `get_pages_loop`: map only if no invalidation began since.
                let _t = self.lock.read();
                if self.seq.read_retry(seq) {
                    drop(_t);
                    thread::yield_now();
                    continue;
                }
                assert_eq!(
                    collected,
                    r.page.load(Ordering::Relaxed),
                    "mapping a page an invalidation may have freed"
                );
            }
            // The commit of `Svm::get_pages`: notifier lock shared, then the page lock.
            let _t = self.lock.read();
            if self.shared_commits.fetch_add(1, G) > 0 {
                self.cov.hit(SHARED_TOGETHER);
            }
            let mut dev = r.pages.lock();
            if self.seq.read_retry(seq) {
                drop(dev);
                self.shared_commits.fetch_sub(1, G);
                drop(_t);
                thread::yield_now();
                continue;
            }
            assert_eq!(
                r.committing.fetch_add(1, G),
                0,
                "two commits of one range inside its page lock"
            );
            if self.in_commit.fetch_add(1, G) > 0 {
                self.cov.hit(PARALLEL);
            }
            // Give a parallel commit the chance to enter (a loom scheduling point).
            thread::yield_now();
            assert!(
                !self.seq.in_progress(),
                "committed while an invalidation is in progress"
            );
            assert_eq!(
                collected,
                r.page.load(Ordering::Relaxed),
                "committed a page collected before an overlapping invalidation"
            );
            dev.committed = Some(collected);
            dev.commits += 1;
            self.in_commit.fetch_sub(1, G);
            r.committing.fetch_sub(1, G);
            drop(dev);
            self.shared_commits.fetch_sub(1, G);
            return true;
        }
    }

    /// `invalidate_begin`: the notifier lock exclusively, counter odd, zap/unmap every range
    /// under its page lock.
    fn invalidate_begin(&self) {
        let _t = self.lock.write();
        self.seq.begin();
        for r in &self.ranges {
            r.pages.lock().committed = None;
        }
    }

    /// The CPU page-table change of every range, outside the notifier lock.
    fn change_pages(&self) {
        for r in &self.ranges {
            r.page.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `invalidate_end` under the shared lock (what `Svm::invalidate_end` does).
    fn invalidate_end(&self) {
        let _t = self.lock.read();
        self.seq.end();
    }

    /// One whole invalidation.
    fn invalidate(&self) {
        self.invalidate_begin();
        self.change_pages();
        self.invalidate_end();
    }

    /// After all threads joined: each range's device holds nothing or its current page, and
    /// was committed `commits[i]` times.
    fn check_final(&self, commits: &[usize]) {
        let _t = self.lock.read();
        for (r, &want) in self.ranges.iter().zip(commits) {
            let dev = r.pages.lock();
            assert_eq!(dev.commits, want, "commits of a range");
            if let Some(v) = dev.committed {
                assert_eq!(
                    v,
                    r.page.load(Ordering::Relaxed),
                    "device holds a stale page"
                );
            }
        }
        assert!(!self.seq.in_progress());
        assert!(self.seq.read_begin().is_some(), "counter left odd");
    }

    fn page(&self, i: usize) -> usize {
        self.ranges[i].page.load(Ordering::Relaxed)
    }
}

fn spawn<R: Send + 'static, F: FnOnce(&Notifier) -> R + Send + 'static>(
    n: &Arc<Notifier>,
    f: F,
) -> thread::JoinHandle<R> {
    let n = n.clone();
    thread::spawn(move || f(&n))
}

#[test]
fn collection_racing_one_invalidation() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let n = Notifier::new(1, &c);
        let a = spawn(&n, |n| assert!(n.collect_and_commit(0, usize::MAX)));
        let b = spawn(&n, |n| n.invalidate());
        a.join().unwrap();
        b.join().unwrap();
        n.check_final(&[1]);
        assert_eq!(n.page(0), 1);
        let dev = n.ranges[0].pages.lock().committed;
        c.hit(if dev.is_some() {
            "committed after"
        } else {
            "committed, then zapped"
        });
        c.execution();
    });
    let e = cov.expect(&["committed after", "committed, then zapped"]);
    println!("collection_racing_one_invalidation: {e} executions");
}

#[test]
fn collection_racing_two_concurrent_invalidations() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let n = Notifier::new(1, &c);
        let a = spawn(&n, |n| assert!(n.collect_and_commit(0, usize::MAX)));
        let inv: Vec<_> = (0..2).map(|_| spawn(&n, |n| n.invalidate())).collect();
        a.join().unwrap();
        for t in inv {
            t.join().unwrap();
        }
        n.check_final(&[1]);
        assert_eq!(n.page(0), 2);
        let dev = n.ranges[0].pages.lock().committed;
        c.hit(if dev.is_some() {
            "committed after both"
        } else {
            "committed, then zapped"
        });
        c.execution();
    });
    let e = cov.expect(&["committed after both", "committed, then zapped"]);
    println!("collection_racing_two_concurrent_invalidations: {e} executions");
}

#[test]
fn collection_racing_nested_invalidation_one_thread() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let n = Notifier::new(1, &c);
        let a = spawn(&n, |n| assert!(n.collect_and_commit(0, usize::MAX)));
        let b = spawn(&n, |n| {
            n.invalidate_begin(); // outer
            n.change_pages();
            n.invalidate_begin(); // inner
            n.change_pages();
            n.invalidate_end(); // inner ends: still odd
            n.change_pages(); // the outer invalidation still changes the page
            n.invalidate_end(); // outer ends: even
        });
        a.join().unwrap();
        b.join().unwrap();
        n.check_final(&[1]);
        assert_eq!(n.page(0), 3);
        assert_eq!(
            n.seq.current(),
            2,
            "nested invalidations bump the counter once"
        );
        let dev = n.ranges[0].pages.lock().committed;
        c.hit(if dev.is_some() {
            "committed after"
        } else {
            "committed, then zapped"
        });
        c.execution();
    });
    let e = cov.expect(&["committed after", "committed, then zapped"]);
    println!("collection_racing_nested_invalidation_one_thread: {e} executions");
}

#[test]
fn two_collectors_one_range_racing_an_invalidation() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let n = Notifier::new(1, &c);
        let a1 = spawn(&n, |n| n.collect_and_commit(0, 3));
        let a2 = spawn(&n, |n| n.collect_and_commit(0, 3));
        let b = spawn(&n, |n| n.invalidate());
        let ok = usize::from(a1.join().unwrap()) + usize::from(a2.join().unwrap());
        b.join().unwrap();
        n.check_final(&[ok]);
        if ok == 2 {
            c.hit("both committed");
        }
        c.execution();
    });
    let e = cov.expect(&[SHARED_TOGETHER, "both committed"]);
    println!("two_collectors_one_range_racing_an_invalidation: {e} executions");
}

#[test]
fn collectors_of_two_ranges_commit_in_parallel() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let n = Notifier::new(2, &c);
        let a1 = spawn(&n, |n| n.collect_and_commit(0, 3));
        let a2 = spawn(&n, |n| n.collect_and_commit(1, 3));
        let b = spawn(&n, |n| n.invalidate());
        let ok = [a1.join().unwrap(), a2.join().unwrap()].map(usize::from);
        b.join().unwrap();
        n.check_final(&ok);
        if ok == [1, 1] {
            c.hit("both committed");
        }
        assert_eq!((n.page(0), n.page(1)), (1, 1));
        c.execution();
    });
    let e = cov.expect(&[SHARED_TOGETHER, PARALLEL, "both committed"]);
    println!("collectors_of_two_ranges_commit_in_parallel: {e} executions");
}

#[test]
fn read_begin_sees_completed_invalidation() {
    let cov = Coverage::default();
    loom::model(move || {
        let n = Notifier::new(1, &cov);
        let i = spawn(&n, |n| n.invalidate());
        // Spin (yielding) until the invalidation is visibly complete, then collect: the page
        // written before `end` must be visible, with no lock taken on this path.
        let seq = loop {
            match n.seq.read_begin() {
                Some(s) if s != 0 => break s,
                _ => thread::yield_now(),
            }
        };
        assert_eq!(n.page(0), 1);
        assert!(!n.seq.read_retry(seq));
        i.join().unwrap();
    });
}
