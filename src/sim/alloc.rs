//! [`SimAlloc`]: the simulator's allocator — the global allocator, counted, with failure
//! injection (DESIGN invariant 9).
//!
//! Counts and the failure schedule are per thread, so tests running in parallel do not see each
//! other's allocations. A scenario that allocates on one thread and frees on another sees the
//! free on the other thread's counters.
//!
//! Every allocation is also checked against the locks the thread holds ([`SimHost`]'s lock
//! checker knows them): none may be made while a lock the invalidation path takes is held
//! (`LockClass::invalidation`), and one made under a spinning lock must say
//! [`AllocCtx::NoSleep`]. Violations are counted ([`AllocStats::lock_violations`]) and the
//! first is described by [`SimAlloc::first_lock_violation`].
//!
//! [`SimHost`]: super::SimHost

use crate::heap::{AllocCtx, Allocator};
use crate::sync::{class, LockClass};
use crate::{Error, Result};
use core::alloc::Layout;
use core::ptr::NonNull;
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::format;
use std::string::String;
use std::vec::Vec;

/// The simulator's allocator (the `Alloc` of [`SimHost`](super::SimHost)).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimAlloc;

/// What this thread's [`SimAlloc`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Successful allocations.
    pub allocs: u64,
    /// Frees.
    pub frees: u64,
    /// Allocations refused by the failure schedule.
    pub failed: u64,
    /// Allocations made in [`AllocCtx::NoSleep`] context (successful or not).
    pub no_sleep: u64,
    /// Bytes allocated and not freed (by this thread).
    pub live_bytes: i64,
    /// Allocations attempted while holding a lock the invalidation path takes, or with
    /// [`AllocCtx::MaySleep`] while holding a spinning lock.
    pub lock_violations: u64,
}

struct State {
    stats: Cell<AllocStats>,
    /// Allocations to let through before failing; `None`: never fail.
    fail_in: Cell<Option<u64>>,
    /// How many allocations fail once the schedule triggers.
    fail_count: Cell<u64>,
    /// Record where injected failures happen.
    trace: Cell<bool>,
    /// Where the last injected failure happened (if tracing).
    last_failure: RefCell<Option<Backtrace>>,
    /// The first allocation that broke the lock rules: what and where.
    first_violation: RefCell<Option<String>>,
}

std::thread_local! {
    static STATE: State = const {
        State {
            stats: Cell::new(AllocStats {
                allocs: 0,
                frees: 0,
                failed: 0,
                no_sleep: 0,
                live_bytes: 0,
                lock_violations: 0,
            }),
            fail_in: Cell::new(None),
            fail_count: Cell::new(0),
            trace: Cell::new(false),
            last_failure: RefCell::new(None),
            first_violation: RefCell::new(None),
        }
    };
}

impl SimAlloc {
    /// This thread's counts.
    pub fn stats() -> AllocStats {
        STATE.with(|s| s.stats.get())
    }

    /// Reset this thread's counts and cancel its failure schedule (tracing stays as set).
    pub fn reset() {
        STATE.with(|s| {
            s.stats.set(AllocStats::default());
            s.fail_in.set(None);
            s.fail_count.set(0);
            s.last_failure.replace(None);
            s.first_violation.replace(None);
        })
    }

    /// The first allocation of this thread (since [`reset`](Self::reset)) that broke the lock
    /// rules (see the module docs): the locks held, the context, and where it was made.
    pub fn first_lock_violation() -> Option<String> {
        STATE.with(|s| s.first_violation.borrow().clone())
    }

    /// Check the creation of a [`SimHost`](super::SimHost) lock against the locks this thread
    /// holds, as a [`AllocCtx::MaySleep`] allocation (a kernel host allocates its lock objects).
    pub(crate) fn check_lock_creation() {
        Self::check_locks(AllocCtx::MaySleep);
    }

    /// Check an allocation in `ctx` against the locks this thread holds.
    fn check_locks(ctx: AllocCtx) {
        let held = super::lockdep::held_classes();
        if held.is_empty() {
            return;
        }
        let classes: Vec<&'static LockClass> = held
            .iter()
            .filter_map(|n| class::ALL.iter().copied().find(|c| c.name == *n))
            .collect();
        let what = if let Some(c) = classes.iter().find(|c| c.invalidation) {
            format!(
                "allocation while holding {} (taken by the invalidation path)",
                c.name
            )
        } else if let Some(c) = classes
            .iter()
            .find(|c| !c.may_sleep && ctx == AllocCtx::MaySleep)
        {
            format!(
                "MaySleep allocation while holding the spinning lock {}",
                c.name
            )
        } else {
            return;
        };
        Self::update(|s| s.lock_violations += 1);
        STATE.with(|s| {
            let mut first = s.first_violation.borrow_mut();
            if first.is_none() {
                *first = Some(format!(
                    "{what}; held: {held:?}\n{}",
                    Backtrace::force_capture()
                ));
            }
        });
    }

    /// Record a backtrace of every injected failure of this thread (see
    /// [`last_failure`](Self::last_failure)): where the allocation that failed was made, to
    /// explain a failure a test did not expect. Off by default (capturing costs time).
    pub fn trace_failures(on: bool) {
        STATE.with(|s| s.trace.set(on))
    }

    /// Where this thread's last injected failure happened, if
    /// [`trace_failures`](Self::trace_failures) is on (taken: the next call returns `None`
    /// until another failure).
    pub fn last_failure() -> Option<Backtrace> {
        STATE.with(|s| s.last_failure.take())
    }

    /// Let `skip` allocations of this thread succeed, then fail the next `count`.
    /// `fail_after(k - 1, 1)` fails exactly the k-th allocation from now.
    pub fn fail_after(skip: u64, count: u64) {
        STATE.with(|s| {
            s.fail_in.set(Some(skip));
            s.fail_count.set(count);
        })
    }

    /// Fail the next `count` allocations of this thread.
    pub fn fail_next(count: u64) {
        Self::fail_after(0, count);
    }

    /// Cancel this thread's failure schedule.
    pub fn stop_failing() {
        STATE.with(|s| {
            s.fail_in.set(None);
            s.fail_count.set(0);
        })
    }

    /// Run `f` with every allocation of this thread failing (a path that must not allocate);
    /// returns what `f` returned and how many allocations it attempted. The failure schedule
    /// in force before (and how far it got) is restored afterwards, so this can run in the
    /// middle of a scenario whose k-th allocation is to fail.
    pub fn without_memory<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let (fail_in, fail_count) = STATE.with(|s| (s.fail_in.get(), s.fail_count.get()));
        let before = Self::stats();
        Self::fail_after(0, u64::MAX);
        let r = f();
        STATE.with(|s| {
            s.fail_in.set(fail_in);
            s.fail_count.set(fail_count);
        });
        let after = Self::stats();
        let attempts = (after.allocs - before.allocs) + (after.failed - before.failed);
        (r, attempts)
    }

    /// Run `f` with this thread's failure schedule suspended (nothing fails; allocations are
    /// counted as usual), then restore the schedule as it was: for checks in the middle of a
    /// scenario whose allocations are failing.
    pub fn paused<R>(f: impl FnOnce() -> R) -> R {
        let (fail_in, fail_count) = STATE.with(|s| (s.fail_in.get(), s.fail_count.get()));
        Self::stop_failing();
        let r = f();
        STATE.with(|s| {
            s.fail_in.set(fail_in);
            s.fail_count.set(fail_count);
        });
        r
    }

    /// Whether this thread's failure schedule has failures left to inject.
    pub fn failing() -> bool {
        STATE.with(|s| s.fail_in.get().is_some() && s.fail_count.get() > 0)
    }

    fn should_fail() -> bool {
        STATE.with(|s| match s.fail_in.get() {
            None => false,
            Some(0) => {
                let left = s.fail_count.get().saturating_sub(1);
                s.fail_count.set(left);
                if left == 0 {
                    s.fail_in.set(None);
                }
                true
            }
            Some(n) => {
                s.fail_in.set(Some(n - 1));
                false
            }
        })
    }

    fn update(f: impl FnOnce(&mut AllocStats)) {
        STATE.with(|s| {
            let mut st = s.stats.get();
            f(&mut st);
            s.stats.set(st);
        })
    }
}

// SAFETY: forwards to the global allocator (the system's, under `std`); a refused or failed
// allocation returns an error, never a pointer.
unsafe impl Allocator for SimAlloc {
    fn allocate(layout: Layout, ctx: AllocCtx) -> Result<NonNull<u8>> {
        if ctx == AllocCtx::NoSleep {
            Self::update(|s| s.no_sleep += 1);
        }
        Self::check_locks(ctx);
        if layout.size() == 0 {
            return Err(Error::Invalid);
        }
        if Self::should_fail() {
            Self::update(|s| s.failed += 1);
            STATE.with(|s| {
                if s.trace.get() {
                    // The backtrace allocates through the global allocator, not this one.
                    s.last_failure.replace(Some(Backtrace::force_capture()));
                }
            });
            return Err(Error::NoMem);
        }
        // SAFETY: the layout is not zero-sized (checked above).
        let p = NonNull::new(unsafe { std::alloc::alloc(layout) }).ok_or(Error::NoMem)?;
        Self::update(|s| {
            s.allocs += 1;
            s.live_bytes += layout.size() as i64;
        });
        Ok(p)
    }

    unsafe fn deallocate(ptr: NonNull<u8>, layout: Layout) {
        Self::update(|s| {
            s.frees += 1;
            s.live_bytes -= layout.size() as i64;
        });
        // SAFETY: the caller guarantees `ptr` came from `allocate` with `layout`, which got it
        // from the global allocator with that layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}
