//! Loom models: two first faults at the same address race to create its range
//! (`Svm::find_or_insert`, SPEC §2), on the real [`Svm`] over the tiny platform of
//! `loom_support`.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_insert`.
//!
//! Both calls must return the same range, whatever the interleaving. This model reproduces a
//! bug found by the C ABI's threaded test (gpusvm-ffi/tests/c/fault.c): when one fault's lookup
//! found nothing and the other fault inserted the range before the first chose its chunk, every
//! candidate chunk overlapped the new range and the first fault failed with `Invalid` instead of
//! returning the range.
#![cfg(loom)]

mod loom_support;

use gpusvm::{PagesCtx, Window};
use loom::sync::Arc;
use loom::thread;
use loom_support::*;

fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join()
        .unwrap_or_else(|_| panic!("a model thread panicked"))
}

#[test]
fn two_first_faults_meet_on_one_range() {
    loom::model(|| {
        let svm = Arc::new(new_svm(3));
        let spawn = |svm: Arc<gpusvm::Svm<LoomPlatform>>| {
            thread::spawn(move || svm.find_or_insert(BASE, Window::ALL, &PagesCtx::default()))
        };
        let a = spawn(svm.clone());
        let b = spawn(svm.clone());
        let ra = join(a).unwrap_or_else(|e| panic!("first fault: {e:?}"));
        let rb = join(b).unwrap_or_else(|e| panic!("second fault: {e:?}"));
        assert!(
            gpusvm::heap::Arc::ptr_eq(&ra, &rb),
            "two ranges for one address"
        );
        assert_eq!(svm.counts().1, 1);
    });
}

/// The range a first fault meets may go again before the fault looks it up: one fault's chunk
/// selection saw the other's new range overlap every candidate, then the other removed it (as
/// an munmap and the garbage collector do). The first fault must start over and create its
/// range, not fail with `Invalid` — a bug found by the C ABI's threaded test
/// (gpusvm-ffi/tests/abi/fault.rs `faults_race_invalidations_on_host_locks`, about one run
/// in ten).
///
/// The interleaving takes three preemptions (the first fault looks, the second inserts, the
/// first checks overlaps, the second removes): this model asks for 3 whatever
/// `LOOM_MAX_PREEMPTIONS` says (with 2 it passes even without the fix).
#[test]
fn a_first_fault_outlives_the_removal_of_the_range_it_met() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let svm = Arc::new(new_svm(3));
        let a = {
            let svm = svm.clone();
            thread::spawn(move || {
                svm.find_or_insert(BASE, Window::ALL, &PagesCtx::default())
                    .map(|r| r.start())
            })
        };
        let b = {
            let svm = svm.clone();
            thread::spawn(move || {
                let r = svm.find_or_insert(BASE, Window::ALL, &PagesCtx::default())?;
                svm.remove(&r)
            })
        };
        let ra = join(a);
        let rb = join(b);
        assert_eq!(rb, Ok(()), "the second fault's removal");
        assert!(
            matches!(ra, Ok(s) if s <= BASE) || ra == Err(gpusvm::Error::Busy),
            "first fault: {ra:?}"
        );
    });
}
