//! The crate's atomics: the one place that names an atomic type.
//!
//! Every atomic the crate uses (sequence counters, refcount-like counters, the range tree's
//! lookup hint, range flags and timestamps, statistics) comes from here. By default they are
//! `core::sync::atomic`'s; under `--cfg loom` they are loom's, so the models explore them.
//!
//! **Targets without 64-bit atomics** (`thumbv7em-none-eabihf`, `riscv32imac-unknown-none-elf`:
//! 32-bit compare-and-swap, no `AtomicU64`): [`AtomicU64`] comes from `portable-atomic`, whose
//! default `fallback` implementation guards each 64-bit atomic with a global spin lock. That is
//! correct between threads, but an interrupt handler that touches a 64-bit atomic of the crate
//! while the interrupted code holds that spin lock deadlocks. The crate's 64-bit atomics are
//! timestamps (a range's last migration time, a device allocation's timeslice end), touched only
//! by fault servicing and migration, never by [`Svm::invalidate_begin`](crate::Svm) or
//! `page_free`. Firmware that calls those from interrupt handlers anyway, on a single-core part,
//! enables the crate feature `single-core` (portable-atomic's `unsafe-assume-single-core`: the
//! fallback masks interrupts instead of taking a lock). Everything else (sequence counters,
//! flags, counts) is `usize`/`u32` and lock-free on every supported target.
//!
//! Targets without any compare-and-swap (`thumbv6m-none-eabi`, `riscv32imc-unknown-none-elf`)
//! are not supported: the locks and counters need CAS.
//!
//! **Width of the sequence counter.** [`SeqCounter`](crate::sync::SeqCounter) is a `usize`:
//! 32 bits on these targets. A collection is wrongly committed only if exactly a multiple of
//! 2^31 invalidations (two increments each) of one notifier run while it collects — over two
//! billion invalidations inside one page collection, which no host produces; the wrap itself is
//! harmless (atomic adds wrap, the compare is for equality), which the unit test
//! `sync::seq::tests::wraps_around_without_panicking` checks.
//!
//! **Replacing them (a kernel build).** Rust code in Linux is asked to use the kernel's atomics
//! (LKMM) rather than `core`'s. The crate uses only `new`, `load`, `store`, `swap`,
//! `fetch_add`, `fetch_sub`, `fetch_or`, `fetch_and`, `compare_exchange`, `into_inner`/`get_mut`
//! on `AtomicBool`, `AtomicU32`, `AtomicU64` and `AtomicUsize`, with the orderings `Relaxed`,
//! `Acquire`, `Release` and `AcqRel`. A kernel build that vendors the crate replaces this one
//! file with re-exports of types offering that surface over `kernel::sync::atomic`
//! (`Relaxed` → `*_relaxed`, `Acquire` → `*_acquire`, `Release` → `*_release`, `AcqRel` → the
//! fully ordered form); nothing else in the crate names an atomic.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

#[cfg(all(not(loom), target_has_atomic = "64"))]
pub use core::sync::atomic::AtomicU64;

#[cfg(all(not(loom), not(target_has_atomic = "64")))]
pub use portable_atomic::AtomicU64;

/// A relaxed cache cell: an `AtomicUsize` that is *not* a synchronisation device and that loom
/// does not explore (it is `core`'s even under `--cfg loom`). The range tree keeps its lookup
/// hint in one: every value it holds was published by the lock that guards the tree, so its
/// own loads and stores need no ordering, and letting loom explore them would only multiply the
/// schedules of every model.
pub type HintCell = core::sync::atomic::AtomicUsize;

/// Hint that the caller is busy-waiting (a retry loop): the CPU's spin hint, or a yield to
/// loom's scheduler under `--cfg loom`.
///
/// Context: any; a CPU hint (or a yield to loom's scheduler), never sleeps.
pub fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
