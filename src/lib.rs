//! # gpusvm — shared virtual memory for device drivers
//!
//! `gpusvm` gives kernel and firmware drivers the algorithms a device (GPU, NPU, any
//! accelerator with its own page tables) needs to mirror a CPU process's address space: the
//! range tree, the fault path, invalidation, and the garbage collector — the design of Linux's
//! DRM GPU SVM core, as a `no_std` + `alloc` Rust library.
//!
//! ```text
//!             CPU process address space (platform: AddressSpace + MMU notifier)
//!    ┌────────────────────────────────────────────────────────────────────┐
//!    │ VMA         VMA                VMA                                 │
//!    └──┬───────────┬───────────────────┬─────────────────────────────────┘
//!       │ notifier (fixed-size aligned interval, e.g. 512 MiB)
//!       ▼
//!    Svm ── notifier tree ── Notifier ── range tree ── Range [start,end) + page state
//!       │                        │ seq counter + notifier lock
//!       │                        └─ invalidate(start,end,event) → zap device PTEs, unmap DMA,
//!       │                                                         mark unmapped → GC queue
//!       ├─ fault path: find_or_insert range → collect pages (retry on seq change) → driver binds
//!       └─ garbage collector: ranges queued by UNMAP, destroyed outside the notifier
//! ```
//!
//! A driver implements the [`platform`] traits, creates one [`Svm`] per device and address
//! space, forwards MMU-notifier callbacks to [`Svm::invalidate_begin`]/[`Svm::invalidate_end`],
//! and calls [`Svm::handle_fault`] + [`Svm::bind`] from its fault handler.
//!
//! Every fallible call returns [`Error`], which maps onto a Linux errno with [`Error::errno`].
//! No call panics on any input.
#![no_std]
#![deny(missing_docs)]
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

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod error;
pub mod fault;
mod gc;
pub mod migrate;
pub mod pagemap;
pub mod pages;
mod placement;
pub mod platform;
pub mod policy;
pub mod range;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stats;
mod svm;
pub mod sync;

pub use error::{Error, Result};
pub use fault::Access;
pub use pages::{PageEntry, PagesCtx, Userptr};
pub use range::Range;
pub use svm::{Event, Svm, SvmConfig, Window, MAX_CHUNK_SIZES};

/// The README's code examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
