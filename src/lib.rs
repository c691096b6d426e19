//! # gpusvm — shared virtual memory for device drivers
//!
//! `gpusvm` gives kernel, firmware and hypervisor drivers the algorithms a device (GPU, NPU,
//! any accelerator with its own page tables and memory) needs to mirror a CPU process's address
//! space: the range index, the fault path, invalidation, page migration between system RAM and
//! device memory (and between devices over a fast interconnect), the owner/interconnect
//! registry, a policy engine and the garbage collector. It follows the design of Linux's DRM GPU
//! SVM core (`drm_gpusvm`, `drm_pagemap`) and its use in the Intel Xe driver, as a `no_std`
//! Rust library that needs only `core` and takes its locks, atomics and memory from the host
//! ([`Host`]): it allocates only through the host's allocator, only fallibly, never in the
//! invalidation path, and no panic is reachable from its public API.
//!
//! ## The model
//!
//! ```text
//!             CPU process address space (platform: AddressSpace + MMU notifier)
//!    ┌────────────────────────────────────────────────────────────────────┐
//!    │ VMA         VMA                VMA                                 │
//!    └──┬───────────┬───────────────────┬─────────────────────────────────┘
//!       │ notifier (fixed-size aligned interval, e.g. 512 MiB)
//!       ▼
//!    Svm ── notifier array ── Notifier ── range index ── Range [start,end) + page state
//!       │                        │ seq counter + its own notifier lock
//!       │                        └─ invalidate(start,end,event) → zap device PTEs, unmap DMA,
//!       │                                                         mark unmapped → GC queue
//!       ├─ fault path: find_or_insert range → policy decides placement →
//!       │              migrate (populate) → collect pages (retry on seq change) → driver binds
//!       ├─ Pagemap (device memory of one device/tile) ── Owner (interconnect group)
//!       ├─ migration state machine: RAM → devmem, devmem → RAM, devmem → devmem (same owner)
//!       ├─ policy: attributes per address interval (madvise), decisions, retries
//!       └─ garbage collector: ranges queued by UNMAP, destroyed outside the notifier
//! ```
//!
//! One [`Svm`] mirrors one CPU address space for one device. Its address range is cut into
//! fixed-size, aligned **notifiers** (registered with the platform's MMU-notifier facility on
//! first use); each notifier holds a flat index of non-overlapping **ranges** under its own
//! lock (faults and invalidations on different notifiers do not meet), the unit of
//! faulting, mapping and migration (2 MiB, 64 KiB or 4 KiB, chosen by
//! [`range::select_chunk`]). A range's **page state** is a packed list of
//! [`PageEntry`]s — DMA addresses of system pages, device addresses of the device's own
//! memory, or peer addresses of another device's memory — that the driver writes into its page
//! tables. Device memory is a [`Pagemap`](pagemap::Pagemap); pagemaps and `Svm`s are grouped
//! into **owners** by an [`OwnerRegistry`](pagemap::OwnerRegistry): device pages are used in
//! place by every device of their owner.
//!
//! ## The life of a range
//!
//! 1. The device faults at an address; the driver calls [`Svm::handle_fault`].
//! 2. The garbage collector runs; the range containing the address is found or created
//!    ([`Svm::find_or_insert`]).
//! 3. The [`policy`] engine decides where the range should live ([`policy::decide`]): it may be
//!    migrated into device memory ([`migrate`]), evicted, or left in system memory.
//! 4. Its pages are collected and DMA-mapped without any lock held, then committed under the
//!    notifier lock unless an invalidation raced ([`Svm::get_pages`]; retried).
//! 5. The driver writes its page tables inside [`Svm::bind`], under the notifier lock, with
//!    device atomics enabled only where [`Svm::device_atomics`] allows them (an atomic through
//!    any other entry faults, and the atomic policy decides).
//! 6. When the CPU side changes, the platform calls [`Svm::invalidate_begin`] (the device
//!    mappings are zapped and the DMA mappings undone) and [`Svm::invalidate_end`]; the next
//!    device access faults again. A CPU access to a device page comes back through
//!    [`Pagemap::migrate_to_ram`](pagemap::Pagemap::migrate_to_ram).
//! 7. On munmap the range is marked unmapped and queued; the garbage collector evicts what
//!    survives of it and removes it ([`Svm::gc_run`]). [`Svm::close`] tears everything down.
//!
//! ## Layers
//!
//! The modules form layers; each uses only its own layer and those below, and the module graph
//! has no cycle (`tests/house.rs` checks it). [`layers`] has a page per layer: what it owns,
//! what it may call, its locking and its allocation.
//!
//! ```text
//!   6  consumers        sim (feature sim) · testkit (feature testkit)
//!   5  Svm              svm/: the Svm, range index, bind, invalidation, fault service, GC
//!   4  decisions        policy (attributes, decide) · placement (the pagemap set)
//!   3  device memory    pagemap (Pagemap, owners) · migrate (state machines)
//!   2  per-range state  pages (collect, map, commit; Userptr) · range (Range, trees, chunks) · stats
//!   1  facets           heap (Allocator, Vec, Arc) · sync (locks, Host, SeqCounter) · platform
//!   0  vocabulary       error · types (ids, Access, Window, Event, PageEntry) · atomic
//! ```
//!
//! ## Writing a backend
//!
//! Implement the small traits of [`platform`] — [`AddressSpace`](platform::AddressSpace)
//! (VMA lookup, page collection, notifier registration, and optionally the three-phase CPU-side
//! migration), [`DmaMapper`](platform::DmaMapper), [`DevicePageTable`](platform::DevicePageTable)
//! and, for devices with memory, [`DeviceMemory`](platform::DeviceMemory) — and bundle them in a
//! [`Platform`](platform::Platform). Then wire the kernel callbacks:
//!
//! | kernel callback | call |
//! | --- | --- |
//! | `mmu_interval_notifier_ops.invalidate` | [`Svm::invalidate_begin`] before, [`Svm::invalidate_end`] after the change |
//! | device page fault (interrupt → worker) | [`Svm::handle_fault`], then [`Svm::bind`] (or [`Svm::handle_fault_and_bind`]) |
//! | `dev_pagemap_ops.page_free` | [`Pagemap::page_free`](pagemap::Pagemap::page_free) |
//! | `dev_pagemap_ops.migrate_to_ram` | [`Pagemap::migrate_to_ram`](pagemap::Pagemap::migrate_to_ram) |
//! | a GC worker (optional) | [`Svm::gc_run`] |
//! | `madvise`-like ioctl | [`Svm::set_attrs`] / [`Svm::prefetch`] |
//! | process exit / device removal | [`Svm::close`] |
//!
//! `examples/backend_skeleton.rs` is a commented template; the `sim` module (feature `sim`)
//! is a complete simulated backend to test an integration against.
//!
//! ## Design documents
//!
//! The repository's `docs/` holds the behaviour contract, `docs/SPEC.md`, and the design,
//! `docs/DESIGN.md` (architecture, host contract, concurrency model, numbered invariants).
//! Comments cite them in short: **`SPEC §N`** is section §N of `docs/SPEC.md`; **`DESIGN
//! invariant N`** is invariant N of `docs/DESIGN.md`, and `DESIGN` followed by a quoted heading
//! (`DESIGN "Concurrency model"`) is that section of it. CI (`.ci/check-refs`) fails on a
//! citation that does not resolve.
//!
//! ## Locking and context rules
//!
//! The host supplies the locks: [`Platform::Host`](platform::Platform::Host) names a host
//! facet ([`Host`]: a raw mutex, a raw reader-writer lock and an allocator), and every lock the crate
//! takes is created with a static [`LockClass`](sync::LockClass) — a name the host maps to its
//! lock checker's class, a rank in the lock order, and whether it may sleep. [`sync`] holds the
//! table of every lock: what it protects, who takes it in which mode, whether the invalidation
//! path takes it, whether it may sleep. In short, outermost first: the structure lock (range
//! creation and removal), the `Svm`'s owner, the notifier lock (shared: [`Svm::find`], commit,
//! [`Svm::bind`], [`Svm::invalidate_end`]; exclusive: [`Svm::invalidate_begin`], insertion,
//! removal), a userptr's lock, the pagemap set, the GC queue, a range's page-state lock, the
//! attribute store, a pagemap's allocation index, the owner registry. The simulator's locks
//! (`sim::SimHost`, feature `sim`) check that order on every acquisition.
//! No lock is held across a call into the platform's
//! [`AddressSpace`](platform::AddressSpace) methods, so the platform may sleep there.
//! [`Svm::invalidate_begin`] runs in *invalidation context*: it allocates nothing, and calls
//! only [`DevicePageTable::zap`](platform::DevicePageTable::zap) and the DMA unmap methods,
//! which must obey the same rules; a caller that must not sleep at all uses
//! [`Svm::invalidate_begin_nonblock`], which returns [`Error::Again`] instead of waiting for
//! the notifier lock. The closure given to [`Svm::bind`] runs under the notifier lock and a
//! range lock (spinning): it must not sleep and must call back into the `Svm` only through
//! [`Svm::device_atomics`].
//!
//! ## Memory
//!
//! Every allocation goes through the host's allocator ([`Host::Alloc`], a
//! [`heap::Allocator`]) into the crate's fallible containers ([`heap::Vec`], [`heap::Arc`];
//! [`HostVec`]/[`HostArc`] name them on a host). Each call that may allocate says so in its
//! "Context:" line, with the [`AllocCtx`](heap::AllocCtx) it uses: `MaySleep` where no spinning
//! lock is held, `NoSleep` under one. Nothing is allocated while a lock the invalidation path
//! takes is held (capacity is reserved before taking it), and the invalidation path allocates
//! nothing. A failed allocation returns [`Error::NoMem`] and leaves the state as it was.
//!
//! Atomics come from [`sync::atomic`] only (`core`'s; `portable-atomic`'s `AtomicU64` on
//! 32-bit targets without 64-bit atomics; a kernel build replaces that one file).
//!
//! ## Errors
//!
//! Every fallible call returns [`Error`], which maps onto a negative Linux errno with
//! [`Error::errno`]: `Busy` (evict and retry), `Again` (raced, retry), `Fault` (no VMA, or device
//! memory required but unavailable), `NoMem`, `Invalid` (bad argument), `NotSupported`,
//! `Perm` (write to read-only memory), `Access` (atomic policy), `NoLink` (no interconnect),
//! `Closed`. Bad input is refused with a typed error and leaves the state as it was; a failed
//! migration restores every page, with its data.
//!
//! ## Panics
//!
//! None is reachable from the public API. This is proven at link time, in CI, by
//! `examples/panic_proof`: a core-only `x86_64-unknown-none` binary, built in release with LTO,
//! calls every public entry point with inputs and platform answers hidden from the optimiser
//! (`core::hint::black_box`), and its panic handler calls a symbol that exists nowhere — it
//! links only if no panic path is left. The proof covers this crate's code (and what it uses of
//! `core`, `heapless`, `bitflags` and `intrusive-collections`) on that target with spinning locks
//! and a pool allocator; a host's own facets (its locks, allocator and platform methods) must not
//! panic either, which the facet traits require.
//!
//! ## Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | (none) | the core, `core` only (no `alloc` crate); memory from the host's allocator; builds for `x86_64-unknown-none`, `aarch64-unknown-none`, `riscv64gc-unknown-none-elf`, `thumbv7em-none-eabihf` and `riscv32imac-unknown-none-elf` |
//! | `alloc` (default) | [`heap::Global`], the global allocator as an allocation facet and the allocator of [`DefaultHost`] (without it `DefaultHost` cannot allocate) |
//! | `std` | implies `alloc`; `std::error::Error` for [`Error`]; the parking lock facet `sync::ParkingHost` |
//! | `single-core` | on targets without 64-bit atomics: `portable-atomic` masks interrupts instead of taking its global spin lock (single-core parts only; see [`sync::atomic`]) |
//! | `sim` | the simulated platform (`gpusvm::sim`) and the fuzz/replay harnesses; implies `std` |
//!
//! ## Example
//!
//! A device faults on memory the CPU wrote, on the simulated platform:
//!
//! ```
//! # #[cfg(feature = "sim")]
//! # fn main() -> Result<(), gpusvm::Error> {
//! use gpusvm::platform::VmaFlags;
//! use gpusvm::sim::{SimGpu, SimMm, SimWorld};
//! use gpusvm::{Access, Window};
//!
//! let world = SimWorld::new();
//! let mm = SimMm::new(&world);
//! let gpu = SimGpu::with_devmem(&mm, 0, 1024, 0)?; // 4 MiB of device memory
//! let buf = mm.mmap(2 << 20, VmaFlags::READ | VmaFlags::WRITE, false)?;
//! mm.write_u64(buf, 7)?;
//!
//! // What a driver's fault handler does:
//! let (range, mapped) = gpu.svm.handle_fault_and_bind(buf, Access::Read, Window::ALL, |range, entries| {
//!     // Write `entries` into the device page tables here; they cover `range` in order.
//!     entries.iter().map(|e| e.size()).sum::<u64>() == range.size()
//! })?;
//! assert!(mapped);
//! assert_eq!(range.size(), 2 << 20);
//! assert_eq!(gpu.svm.stats().migrations_to_devmem, 1); // it moved to device memory
//! assert_eq!(mm.read_u64(buf)?, 7); // and comes back when the CPU touches it
//! gpu.check().map_err(|_| gpusvm::Error::Fault)?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sim"))]
//! # fn main() {}
//! ```
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

#[cfg(feature = "alloc")]
extern crate alloc;
// The unit tests use std's containers for their models and fixtures.
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod atomic;
pub mod collect;
pub mod error;
pub mod heap;
pub mod layers;
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
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod types;

pub use error::{Error, Result};
pub use pages::{PagesCtx, Userptr};
pub use range::Range;
pub use svm::{Svm, SvmConfig, MAX_CHUNK_SIZES};
pub use sync::{DefaultHost, Host, HostArc, HostVec};
pub use types::{Access, Event, PageEntry, Window};

/// The README's code examples as doctests. Its one `rust` block (no `no_run`/`ignore`) is
/// compiled, linked and run; it only defines functions and calls none of them, so the run
/// executes rustdoc's empty `main`: the doctest checks that the example builds against the
/// current API, not what it does at run time. The `text` and `sh` blocks are not tested.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
