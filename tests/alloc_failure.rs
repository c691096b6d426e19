//! DESIGN invariant 9 (issue 14, item 6): any allocation may fail. Each API scenario — first-touch
//! fault (system memory and device memory), migration to device memory and back (eviction and a
//! CPU fault), device to device (linked, and through system memory), prefetch both ways,
//! attribute updates, invalidation during a fault, GC, teardown and close, plus a userptr
//! collection and attaching a pagemap — is run with its k-th allocation through the host
//! allocator ([`SimAlloc`], the allocator of the simulator's host) failing, for every k from 1
//! to the number n of allocations the scenario's step makes (counted by a dry run first).
//! `GPUSVM_ALLOC_VERBOSE=1` prints each k's outcome and where the failing allocation was made.
//!
//! A scenario is a set-up (not counted: machine, devices, mappings, CPU writes, and the state the
//! step needs) and a step (the API call(s) under test). For every k, on a fresh set-up:
//!
//! - the step fails with [`Error::NoMem`] — or the library absorbs the failure where its
//!   contract says so (each such case is documented at its scenario; the step then returns the
//!   dry run's result);
//! - the simulator's invariants hold ([`check_invariants`]), no page is left isolated, the data
//!   the CPU wrote reads back unchanged (read without side effects: a device page straight from
//!   device memory), and, for the all-or-nothing calls, no page moved;
//! - with the failure schedule stopped, the step is retried and succeeds with the dry run's
//!   result (and placement, unless the scenario documents why a failure may change where pages
//!   end up);
//! - then every device is closed and everything dropped: [`SimAlloc::stats`] shows as many
//!   frees as allocations and no live bytes (per thread: each scenario runs on its test's
//!   thread), and no allocation broke the lock rules ([`SimAlloc`] checks each against the
//!   locks held: none under a lock the invalidation path takes, `NoSleep` under a spinning one).
//!
//! Also here: the invalidation path (`invalidate_begin`/`_nonblock`/`invalidate_end`, through
//! the simulated CPU or called directly) makes no allocation attempt through [`SimAlloc`], even
//! with every allocation failing, complementing `tests/no_alloc_invalidate.rs` (which counts the
//! global allocator); and the `api` fuzz harness runs with failing allocations
//! (`ApiOp::FailAllocs` before every call).
//!
//! | module (`tests/alloc_failure/`) | holds |
//! | --- | --- |
//! | `fixture` | the set-up: [`Fx`](fixture::Fx) |
//! | `harness` | running a scenario for every k, the checks, the leak check |
//! | `faults_migrations` | first-touch faults, migrations, prefetch |
//! | `attrs_userptr` | attribute updates, userptr, attaching a pagemap |
//! | `lifecycle` | invalidation during a fault, GC, teardown, close |
//! | `invalidation_path` | the invalidation path allocates nothing |
//! | `sim_alloc` | the failure schedule and the lock rules of `SimAlloc` |
//! | `api_harness` | the `api` fuzz harness with failing allocations |
#![cfg(feature = "sim")]

// The modules live in tests/alloc_failure/ (not tests/: cargo would take them for test targets).
#[path = "alloc_failure/api_harness.rs"]
mod api_harness;
#[path = "alloc_failure/attrs_userptr.rs"]
mod attrs_userptr;
#[path = "alloc_failure/faults_migrations.rs"]
mod faults_migrations;
#[path = "alloc_failure/fixture.rs"]
mod fixture;
#[path = "alloc_failure/harness.rs"]
mod harness;
#[path = "alloc_failure/invalidation_path.rs"]
mod invalidation_path;
#[path = "alloc_failure/lifecycle.rs"]
mod lifecycle;
#[path = "alloc_failure/sim_alloc.rs"]
mod sim_alloc;
