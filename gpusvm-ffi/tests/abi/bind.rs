//! The bind callback of the `abi` tests: [`bind_cb`] writes the fake device page table and checks
//! and counts the entries into a [`Seen`] (optionally calling a non-blocking invalidation from
//! inside, where the notifier lock is held); [`stats`] reads an SVM's counters.

use core::ffi::{c_int, c_void};
use std::sync::atomic::Ordering::SeqCst;

use gpusvm_ffi::svm::*;

use crate::platform::*;

// ---- bind: writes the page table, checks and counts entries ----

pub(crate) struct Seen<'a> {
    pub(crate) f: &'a Fake,
    pub(crate) entries: usize,
    pub(crate) calls: usize,
    pub(crate) next_first: usize,
    pub(crate) next_va: u64,
    pub(crate) devmem: usize,
    /// Call `gpusvm_invalidate_begin_nonblock` from inside (the notifier lock is held).
    pub(crate) try_nonblock: bool,
    pub(crate) nonblock_rc: c_int,
}

impl<'a> Seen<'a> {
    pub(crate) fn new(f: &'a Fake) -> Seen<'a> {
        Seen {
            f,
            entries: 0,
            calls: 0,
            next_first: 0,
            next_va: 0,
            devmem: 0,
            try_nonblock: false,
            nonblock_rc: 1,
        }
    }
    pub(crate) fn ctx(&mut self) -> *mut c_void {
        core::ptr::from_mut(self).cast()
    }
}

pub(crate) unsafe extern "C" fn bind_cb(
    ctx: *mut c_void,
    _: *const gpusvm_range,
    e: *const gpusvm_page_entry,
    n: usize,
    first: usize,
) -> c_int {
    // SAFETY: `ctx` is the `Seen` the caller passed (exclusively ours during the call); `e`
    // readable for `n` entries (the bind contract).
    let (s, e) = unsafe { (&mut *ctx.cast::<Seen>(), std::slice::from_raw_parts(e, n)) };
    s.calls += 1;
    assert_eq!(first, s.next_first);
    for e in e {
        assert!(s.next_va == 0 || e.va == s.next_va);
        let p = page_of(e.va);
        if s.f.on_dev[p].get() {
            assert_eq!(e.protocol, 1); // the device's own memory
            assert_eq!(e.addr, s.f.dev[p].get() * PAGE);
            s.devmem += 1;
        } else {
            assert_eq!(e.protocol, 0);
            assert_eq!(e.addr, s.f.pfn[p].get() * PAGE);
            assert!(e.writable);
        }
        assert_eq!(e.size, PAGE);
        s.f.pte[p].set(e.addr | 1);
        s.next_va = e.va + e.size;
    }
    s.entries += n;
    s.next_first = first + n;
    if s.try_nonblock {
        // The notifier lock is held shared: a non-blockable invalidation refuses, changing
        // nothing.
        // SAFETY: the SVM is live.
        s.nonblock_rc = unsafe {
            gpusvm_invalidate_begin_nonblock(
                s.f.svm.load(SeqCst),
                s.f.notifier_id.get(),
                BASE,
                BASE + PAGE,
                GPUSVM_EVENT_CLEAR,
                false,
                0,
            )
        };
        s.try_nonblock = false;
    }
    0
}

pub(crate) fn stats(svm: *mut gpusvm) -> gpusvm_stats {
    let mut st = gpusvm_stats::default();
    // SAFETY: a live SVM, a writable out.
    assert_eq!(unsafe { gpusvm_stats(svm, &mut st) }, 0);
    st
}
