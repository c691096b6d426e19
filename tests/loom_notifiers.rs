//! Loom model: per-notifier locking (issue 16). Two notifiers of one [`Svm`], one range each; an
//! invalidation of the first races a fault (page collection, mapping, commit, bind) on the
//! second, on the real `Svm` over the tiny platform of `loom_support`.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_notifiers`.
//!
//! In every execution:
//! - the non-blockable invalidation of notifier 1 never returns `Again`: the fault on notifier
//!   2 holds only notifier 2's lock and the notifier array's shared side, so nothing the
//!   invalidation try-locks is taken exclusively (with one lock per `Svm`, as before issue 16,
//!   the commit's shared hold made it fail);
//! - the fault on notifier 2 commits on its first attempt: its sequence never moves (no retry
//!   is counted), and its pages map the frames the CPU maps;
//! - the invalidation zaps exactly notifier 1's range and DMA-unmaps its pages; notifier 2's
//!   range stays valid; afterwards a new collection of range 1 maps the frame the CPU changed
//!   to.
#![cfg(loom)]

mod loom_support;

use gpusvm::platform::NotifierId;
use gpusvm::{Event, PagesCtx, Window};
use loom::thread;
use loom_support::*;
use std::sync::Arc;

/// Frame page 0 gets from the invalidating thread.
const NEW_FRAME: u64 = 0x200;

#[test]
fn an_invalidation_never_waits_for_a_fault_on_another_notifier() {
    loom::model(|| {
        let svm = Arc::new(new_svm_two_notifiers(4));
        let ctx = PagesCtx::default();
        let r1 = svm
            .find_or_insert(BASE, Window::ALL, &ctx)
            .expect("range 1");
        let r2 = svm.find_or_insert(END, Window::ALL, &ctx).expect("range 2");
        assert_eq!(
            (r1.start(), r1.end(), r2.start(), r2.end()),
            (BASE, END, END, VMA_END)
        );
        assert_eq!(svm.counts(), (2, 2), "two notifiers, one range each");
        svm.get_pages(&r1, &ctx).expect("pages of range 1");
        let retries0 = svm.stats().retries;

        let inv = {
            let svm = svm.clone();
            thread::spawn(move || {
                svm.invalidate_begin_nonblock(NotifierId(BASE), BASE, END, Event::Clear)
                    .expect("notifier 2's fault holds nothing notifier 1's invalidation needs");
                svm.platform().mm.set_frame(0, NEW_FRAME);
                svm.invalidate_end(NotifierId(BASE), BASE, END);
            })
        };
        let fault = {
            let svm = svm.clone();
            let r2 = r2.clone();
            thread::spawn(move || {
                svm.get_pages(&r2, &PagesCtx::default())
                    .expect("pages of range 2");
                committed(&svm, &r2).expect("range 2 valid")
            })
        };
        inv.join().expect("invalidator");
        let got = fault.join().expect("fault");
        let want: Vec<(u64, u8)> = (2..4u64).map(|i| ((FRAME0 + i) << 12, 0)).collect();
        assert_eq!(got, want, "range 2 maps its CPU frames");
        assert_eq!(
            svm.stats().retries,
            retries0,
            "the fault on notifier 2 never retried"
        );
        assert!(!svm.pages_valid(&r1), "the invalidation unmapped range 1");
        assert!(svm.pages_valid(&r2), "and left range 2 alone");
        assert_eq!(
            svm.platform().pt.zaps(),
            vec![(BASE, END)],
            "one zap, over range 1 only"
        );
        svm.get_pages(&r1, &ctx).expect("range 1 again");
        assert_eq!(
            committed(&svm, &r1).expect("range 1 valid"),
            vec![((FRAME0 + 1) << 12, 0), (NEW_FRAME << 12, 0)],
            "sorted: page 1's old frame, page 0's new one"
        );
    });
}
