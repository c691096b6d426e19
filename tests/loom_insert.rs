//! Loom model: two first faults at the same address race to create its range
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
