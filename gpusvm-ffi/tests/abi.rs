//! The C ABI driven from Rust as a C host would drive it, so that miri runs the crate's unsafe
//! code (the C test program of `tests/c/` cannot run under miri). The host facet is a counting
//! allocator over `std::alloc` with failure injection and locks over `std::sync` allocated in
//! place and handed out as pointers; the platform is a small fake address space (an array of
//! page frames, identity DMA with counters, a device page table written by the bind callback)
//! and a device-memory table. Every call goes through the exported `extern "C"` functions with
//! raw pointers, as C would make it.
//!
//! One host table is registered per process, so the tests share it and run one at a time
//! (`serial`). Under miri the ranges are 512 KiB (128 pages: still two bind batches and four
//! `migrate_finalize` slices) instead of 2 MiB.
//!
//! | module (`tests/abi/`) | holds |
//! | --- | --- |
//! | `host` | the host facet: allocator with failure injection, locks, `serial`, the leak check |
//! | `platform` | the fake address space and device memory (C tables), geometry, configurations |
//! | `bind` | the bind callback writing the fake device page table; the SVM's counters |
//! | `errors` | bad input is `-EINVAL`; every allocation failure is `-ENOMEM` without leaks |
//! | `fault` | fault, bind, invalidation, GC; the fault path by hand; faults racing invalidations |
//! | `migration` | migration to device memory, eviction, the CPU fault back to RAM |
//! | `attrs_prefetch_userptr` | attributes, prefetch, userptr |

// The modules live in tests/abi/ (not tests/: cargo would take them for test targets).
#[path = "abi/attrs_prefetch_userptr.rs"]
mod attrs_prefetch_userptr;
#[path = "abi/bind.rs"]
mod bind;
#[path = "abi/errors.rs"]
mod errors;
#[path = "abi/fault.rs"]
mod fault;
#[path = "abi/host.rs"]
mod host;
#[path = "abi/migration.rs"]
mod migration;
#[path = "abi/platform.rs"]
mod platform;
