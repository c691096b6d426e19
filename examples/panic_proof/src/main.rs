//! The link-time proof that no panic is reachable from `gpusvm`'s public API (issue 14;
//! DESIGN invariant 8).
//!
//! `_start` calls every public entry point of the crate — the `Svm` (fault service, page
//! collection, binding, invalidation, migration, placement, attributes, prefetch, GC, close),
//! pagemaps, device-memory allocations, the owner registry, userptrs, the range tree, the
//! sequence counter, the policy functions, the locks and the heap containers — with inputs and
//! platform answers that pass through [`core::hint::black_box`], so the optimiser can assume
//! nothing about them. The crate is built core-only (no `alloc` crate) on a host facet whose
//! allocator is a static pool ([`platform::ProofAlloc`]).
//!
//! The panic handler calls `gpusvm_panic_is_reachable`, which exists nowhere: the release build
//! (LTO, one codegen unit) links only if the optimiser removed every call to the panic handler,
//! i.e. no panic path — explicit, from indexing, arithmetic overflow, `unwrap`, a dependency's
//! assertion, or `core`'s own checks — is reachable from `_start`.
//!
//! What this proves, and what not: it covers the code reachable from the calls below, for every
//! possible input and platform answer, for the `x86_64-unknown-none` build with this host facet
//! (spinning locks, a pool allocator). It does not cover the platform's own code (here trivial),
//! other host facets (a host's locks and allocator must not panic themselves: the `Host`
//! contract), or panics the optimiser could not remove although they are unreachable (those
//! would fail the link: the proof is conservative).
#![no_std]
#![no_main]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod calls;
mod platform;

/// The entry point: drive every public entry point once, then spin.
#[no_mangle]
pub extern "C" fn _start() -> ! {
    #[cfg(feature = "self-test")]
    {
        let table: [u8; 3] = core::hint::black_box([1, 2, 3]);
        #[allow(clippy::indexing_slicing)]
        core::hint::black_box(table[core::hint::black_box(5usize)]);
    }
    calls::all();
    loop {
        core::hint::spin_loop();
    }
}

extern "C" {
    /// Defined nowhere: referencing it fails the link.
    fn gpusvm_panic_is_reachable() -> !;
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: never executed in a binary that links (the symbol does not exist); the call only
    // makes a reachable panic a link error.
    unsafe { gpusvm_panic_is_reachable() }
}
