//! The C ABI of [`gpusvm`]: what a C driver (a Linux kernel module, a firmware in C) links to
//! use the crate's shared-virtual-memory algorithms.
//!
//! ```text
//!   C host (once)    gpusvm_host_init(&host_ops)        allocator + locks (handles to in-place locks)
//!   C driver         gpusvm_create(&platform_ops, &config, &svm)
//!                    notifier callback → gpusvm_invalidate_begin[_nonblock] / gpusvm_invalidate_end
//!                    device fault      → gpusvm_handle_fault_and_bind(svm, addr, access, ..., bind_cb, ctx, &range)
//!                    munmap'd ranges   → gpusvm_gc_run(svm, &n)
//!                    teardown          → gpusvm_range_put(range) ...; gpusvm_destroy(svm)
//! ```
//!
//! Design (README.md has the long form):
//!
//! - **The host facet** is one table of C functions per process or kernel module,
//!   [`gpusvm_host_ops`](host::gpusvm_host_ops), registered with
//!   [`gpusvm_host_init`](host::gpusvm_host_init): `alloc`/`free` with a may-sleep flag (every
//!   allocation of the library goes through it; there is no `alloc` crate), and locks created
//!   by the host — allocated and initialised in place, because a kernel lock must not move —
//!   and handled through an opaque pointer, each created with its
//!   [`gpusvm_lock_class`](host::gpusvm_lock_class) (name, index, rank, may-sleep). Before
//!   the host is registered every allocation and lock creation fails with `-ENOMEM`.
//! - **The platform facets** are tables per SVM ([`gpusvm_platform_ops`](platform::gpusvm_platform_ops):
//!   address space, DMA, device page table, clock) and per pagemap
//!   ([`gpusvm_devmem_ops`](platform::gpusvm_devmem_ops)), with `#[repr(C)]` mirrors of the
//!   crate's platform types. Their contracts are `gpusvm::platform`'s.
//! - **Handles** are opaque: `struct gpusvm` (an `Svm` in host memory), `struct gpusvm_range`
//!   (a counted reference: [`gpusvm_range_put`](svm::gpusvm_range_put)), `struct
//!   gpusvm_pagemap`.
//! - **Errors**: every function returns 0 or a negative errno (`gpusvm::Error::errno`), values
//!   through out-parameters. A NULL or misaligned pointer, an unknown enum value or a bad handle
//!   is `-EINVAL` with nothing changed.
//! - **No panic crosses the boundary**: the crate has no reachable panic and this crate adds
//!   none (no `unwrap`, no indexing, no unchecked arithmetic: the lints below). A final binary
//!   still needs a `#[panic_handler]`: feature `panic-abort` (hosted C programs: `abort()`) or
//!   `panic-kernel` (Linux: the kernel's `panic()`). Feature `panic-proof` (a handler that
//!   calls an undefined symbol) is the link-time proof: `run-c-test` links the LTO-built
//!   library with every exported function as a root.
#![no_std]
#![deny(missing_docs)]
#![allow(non_camel_case_types)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

#[cfg(test)]
extern crate std;

pub mod host;
pub mod pagemap;
pub mod platform;
pub mod policy;
pub mod svm;
pub mod userptr;

use core::ffi::c_int;
use gpusvm::{Error, Result};

/// The negative errno of `e`.
pub(crate) fn errno(e: Error) -> c_int {
    e.errno()
}

/// 0 or the negative errno.
pub(crate) fn ret(r: Result<()>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => errno(e),
    }
}

#[cfg(any(
    all(feature = "panic-abort", feature = "panic-kernel"),
    all(feature = "panic-abort", feature = "panic-proof"),
    all(feature = "panic-kernel", feature = "panic-proof"),
))]
compile_error!("features `panic-abort`, `panic-kernel` and `panic-proof` are exclusive");

#[cfg(all(feature = "panic-abort", not(feature = "panic-kernel"), not(test)))]
#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo) -> ! {
    extern "C" {
        fn abort() -> !;
    }
    // SAFETY: the C library's `abort` takes no arguments and does not return.
    unsafe { abort() }
}

#[cfg(all(feature = "panic-kernel", not(feature = "panic-abort"), not(test)))]
#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo) -> ! {
    extern "C" {
        fn panic(fmt: *const core::ffi::c_char, ...) -> !;
    }
    // SAFETY: the kernel's `panic` takes a printf format (no conversions here) and does not
    // return.
    unsafe { panic(c"gpusvm: Rust panic\n".as_ptr()) }
}

#[cfg(all(feature = "panic-proof", not(test)))]
#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo) -> ! {
    extern "C" {
        /// Defined nowhere: a reachable panic makes the final link fail with its name.
        fn gpusvm_ffi_panic_is_reachable() -> !;
    }
    // SAFETY: never called in a program that links; see the feature `panic-proof`.
    unsafe { gpusvm_ffi_panic_is_reachable() }
}

/// The self-test of the link-time proof: a panic reachable from a C entry point.
///
/// Returns never normally for `n > 3` (indexes out of bounds).
///
/// Context: any.
#[cfg(feature = "panic-proof-self-test")]
#[no_mangle]
#[allow(clippy::indexing_slicing)]
pub extern "C" fn gpusvm_ffi_panic_self_test(n: usize) -> u8 {
    let a = [1u8, 2, 3, 4];
    a[n]
}
