//! Hostile-argument harness for the public API: a sequence of [`ApiOp`]s calls public functions
//! with any `u64` address, size, order, pagemap id, notifier id and event on a simulated machine
//! with one or two devices (each with an arbitrary, possibly hostile, [`SvmConfig`]), and checks
//! after every step that:
//!
//! - nothing panicked (the fuzz build has overflow checks on: an overflow is a panic);
//! - every error is a typed [`Error`] whose errno maps back to it;
//! - the documented outcome holds where it is cheap to state (for example `Range::new`,
//!   `PageEntry::new`, `Error::from_errno`, `select_chunk` and the owner registry against small
//!   models; `find_or_insert`/`handle_fault` return a range containing the address; every call
//!   that needs an open instance returns [`Error::Closed`] after `close`; the attached pagemaps
//!   and the owner after `attach_pagemap`/`detach_pagemap`/`set_owner`; where the CPU pages
//!   are after the free functions `migrate::to_ram`/`to_devmem`);
//! - [`check_invariants`] holds for every device, and [`check_closed`] once it is closed; each
//!   device's own pagemap is the one attached under its id.
//! - with allocations failing ([`ApiOp::FailAllocs`]: the host allocator [`SimAlloc`] refuses
//!   some of the next allocations), a call may fail with [`Error::NoMem`]; where its contract
//!   says a failed call changes nothing, the harness checks that (the range at the address of
//!   `find_or_insert`, the attributes and ranges around a `set_attrs`, the CPU pages of a
//!   `migrate_to_devmem` or a direct migration, the owner registry, a refused attach); and once
//!   the run is over and the machine dropped, every allocation made through [`SimAlloc`] has
//!   been freed.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/api.rs` and the stable replay test
//! `tests/api_hostile.rs`.
//!
//! **Where the harness bounds its inputs** (each bound keeps a run finite or stays within the
//! simulator's or libFuzzer's limits; none hides a library check):
//! - retry budgets of hostile configurations are capped ([`MAX_RETRY_ATTEMPTS`],
//!   [`MAX_DEVMEM_RETRIES`]): with an unbalanced `invalidate_begin` (which the harness does
//!   issue) a budget of `u32::MAX` attempts is a legitimate "retry for hours";
//! - `Userptr::get_pages` allocates a page array proportional to the interval, like Linux; the
//!   harness calls it only for intervals of at most [`MAX_USERPTR_BYTES`] (libFuzzer reports a
//!   single large `malloc` as a crash). `Userptr::new`, `bind`, the invalidation calls and
//!   `free_pages` still get any bounds;
//! - likewise `migrate::to_ram`/`to_devmem` allocate a slot per page of the interval: the
//!   harness calls them directly with any empty or misaligned interval, but with a valid one only
//!   up to [`MAX_MIGRATE_BYTES`];
//! - simulator calls (`mmap`, `munmap`, `mprotect`, CPU accesses) only touch the arena: they
//!   set up state, they are not the API under test;
//! - `Pagemap::page_free` is a platform callback for a frame the CPU just stopped mapping; the
//!   harness calls it with any frame *except* a live frame of a live allocation (freeing one of
//!   those is a platform bug the crate cannot detect), and checks that it is counted as stray.
//!
//! ```
//! use gpusvm::sim::harness::api::{run, ApiInput, ApiOp, Num, Setup};
//! let input = ApiInput {
//!     setup: Setup::default(),
//!     ops: vec![
//!         ApiOp::HandleFault { dev: 0, addr: Num::Raw(u64::MAX), access: 0, window: None },
//!         ApiOp::RangeNew { start: Num::Raw(0), end: Num::Raw(u64::MAX) },
//!         ApiOp::GcRun { dev: 1 },
//!     ],
//! };
//! assert_eq!(run(&input), Ok(()));
//! ```
//!
//! [`SvmConfig`]: crate::SvmConfig
//! [`check_invariants`]: crate::sim::check_invariants
//! [`check_closed`]: crate::sim::check_closed

use crate::pagemap::PeerId;
use crate::platform::PAGE_SIZE;
use crate::sim::{SimAlloc, SimHost, SimPagemapArc};
use crate::stats::StatsSnapshot;
use crate::{Access, Error, Range, MAX_CHUNK_SIZES};
use machine::Harness;
use std::format;
use std::string::String;
use std::vec::Vec;

mod args;
mod attrs;
mod events;
mod faults;
mod machine;
mod migration;
mod ops;
mod pagemaps;
mod pages;
mod values;

pub use args::{
    ChunksSpec, ConfigSpec, CtxSpec, DeviceSpec, EventSpec, FrameSpec, Id, NotifierSpec, Num,
    PagemapSpec, QuerySpec, RangeRef, RawAttrSpec, Setup, UpdateSpec,
};
pub use ops::{ApiInput, ApiOp};

/// A reference to a range of the simulated host.
type RArc = crate::HostArc<SimHost, Range<SimHost>>;

/// First byte of the arena: four 2 MiB slots (0: huge RW, 1: RW, 2: read-only, 3: a hole).
pub const ARENA: u64 = 0x40_0000_0000;
/// Size of one arena slot.
pub const SLOT: u64 = 2 << 20;
/// Number of arena slots.
pub const SLOTS: u64 = 4;
/// One past the last byte of the arena.
pub const ARENA_END: u64 = ARENA + SLOTS * SLOT;
/// A VMA at the top of the default mirrored interval (`1 << 47`).
pub const TOP47: u64 = (1 << 47) - SLOT;
/// A VMA near the top of the 64-bit address space, `[TOP64, TOP64_END)`; its last 2 MiB
/// block would end at 2^64.
pub const TOP64: u64 = 0u64.wrapping_sub(2 * SLOT);
/// End of the top VMA: the last page-aligned address.
pub const TOP64_END: u64 = 0u64.wrapping_sub(PAGE_SIZE);
/// Longest op sequence run (the rest of a longer input is ignored).
pub const MAX_OPS: usize = 256;
/// Cap on `RetryPolicy::max_attempts` of hostile configurations (see the module docs).
pub const MAX_RETRY_ATTEMPTS: u32 = 64;
/// Cap on `PolicyConfig::devmem_only_retries` of hostile configurations.
pub const MAX_DEVMEM_RETRIES: u32 = 8;
/// Largest userptr interval whose pages the harness collects.
pub const MAX_USERPTR_BYTES: u64 = 16 << 20;
/// Longest interval the harness hands to `migrate::to_ram`/`to_devmem` directly.
pub const MAX_MIGRATE_BYTES: u64 = 16 << 20;
/// How many range objects the harness remembers for later calls.
pub const MAX_KNOWN: usize = 48;
/// Most allocations one [`ApiOp::FailAllocs`] fails.
pub const MAX_FAIL_ALLOCS: u8 = 8;
/// Most allocations one [`ApiOp::FailAllocs`] lets succeed before failing.
pub const MAX_FAIL_SKIP: u8 = 63;

/// Check that an error is one of the crate's, with an errno that maps back to it.
fn typed(e: Error) -> Result<(), String> {
    if Error::from_errno(e.errno()) != Some(e) {
        return Err(format!("{e:?}: errno {} does not map back", e.errno()));
    }
    Ok(())
}

fn access_of(a: u8) -> Access {
    match a % 3 {
        0 => Access::Read,
        1 => Access::Write,
        _ => Access::Atomic,
    }
}

fn chunks_of(c: &ChunksSpec, h: &Harness) -> Vec<u64> {
    match c {
        ChunksSpec::Default => std::vec![2 << 20, 64 << 10, PAGE_SIZE],
        ChunksSpec::Shifts(s) => s
            .iter()
            .take(MAX_CHUNK_SIZES)
            .map(|&s| 1u64 << (s % 64))
            .collect(),
        ChunksSpec::Raw(v) => v.iter().take(MAX_CHUNK_SIZES).map(|n| n.value(h)).collect(),
    }
}

/// Whether two pagemap lookups name the same object (or both nothing).
fn same_pagemap(a: &Option<SimPagemapArc>, b: &Option<SimPagemapArc>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => SimPagemapArc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn linked_peers(a: PeerId, b: PeerId) -> bool {
    (a.0 ^ b.0) & 3 == 0
}

impl Harness {
    /// Run one call and check its documented outcome (each family of calls is in its own file).
    fn step(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::RangeNew { .. }
            | ApiOp::TreeInsert { .. }
            | ApiOp::TreeRemove { .. }
            | ApiOp::TreeQuery { .. }
            | ApiOp::PageEntryNew { .. }
            | ApiOp::SelectChunk(_)
            | ApiOp::FromErrno(_) => self.step_values(op),
            ApiOp::SvmNew { .. }
            | ApiOp::FindOrInsert { .. }
            | ApiOp::Find { .. }
            | ApiOp::Remove { .. }
            | ApiOp::HandleFault { .. }
            | ApiOp::DevAccess { .. } => self.step_faults(op),
            ApiOp::Userptr { .. }
            | ApiOp::GetPages { .. }
            | ApiOp::Bind { .. }
            | ApiOp::UnmapPages { .. }
            | ApiOp::FreePages { .. }
            | ApiOp::PagesValid { .. } => self.step_pages(op),
            ApiOp::InvalidateBegin { .. }
            | ApiOp::InvalidateEnd { .. }
            | ApiOp::GcRun { .. }
            | ApiOp::Close { .. }
            | ApiOp::CpuWrite { .. }
            | ApiOp::Munmap { .. }
            | ApiOp::Mmap { .. }
            | ApiOp::Mprotect { .. }
            | ApiOp::Advance { .. }
            | ApiOp::FailAllocs { .. } => self.step_events(op),
            ApiOp::SetAttrs { .. }
            | ApiOp::SetAttrsRaw { .. }
            | ApiOp::Prefetch { .. }
            | ApiOp::Decide { .. }
            | ApiOp::AttrStore { .. } => self.step_attrs(op),
            ApiOp::MigrateToDevmem { .. }
            | ApiOp::Evict { .. }
            | ApiOp::PlaceIn { .. }
            | ApiOp::MigrateDirect { .. } => self.step_migration(op),
            ApiOp::PageFree { .. }
            | ApiOp::MigrateToRam { .. }
            | ApiOp::OwnerJoin { .. }
            | ApiOp::OwnerLeave { .. }
            | ApiOp::SetOwner { .. }
            | ApiOp::AttachPagemap { .. }
            | ApiOp::DetachPagemap { .. }
            | ApiOp::DevmemAlloc { .. } => self.step_pagemaps(op),
        }
    }
}

/// Run `input`: build the machine, apply at most [`MAX_OPS`] calls, checking after each, then
/// close every device. Returns the first violation (step, call, what went wrong).
pub fn run(input: &ApiInput) -> Result<(), String> {
    run_stats(input).map(|_| ())
}

/// [`run`], returning the counters of each device at the end (to check that inputs reach deep
/// paths, not only argument checks).
///
/// The run counts this thread's [`SimAlloc`] allocations from zero ([`SimAlloc::reset`]); once
/// everything is closed and dropped, every allocation must have been freed, and none may have
/// broken the lock rules (none under a lock the invalidation path takes, `NoSleep` under a
/// spinning lock).
pub fn run_stats(input: &ApiInput) -> Result<Vec<StatsSnapshot>, String> {
    SimAlloc::reset();
    let stats = run_machine(input);
    SimAlloc::stop_failing();
    let stats = stats?;
    let s = SimAlloc::stats();
    if s.allocs != s.frees || s.live_bytes != 0 {
        return Err(format!(
            "after close, not every allocation was freed: {} allocations, {} frees, {} bytes live",
            s.allocs, s.frees, s.live_bytes
        ));
    }
    if let Some(v) = SimAlloc::first_lock_violation() {
        return Err(format!(
            "{} allocations broke the lock rules, first: {v}",
            s.lock_violations
        ));
    }
    Ok(stats)
}

/// Build the machine, run the calls, close everything; the machine is dropped on return.
fn run_machine(input: &ApiInput) -> Result<Vec<StatsSnapshot>, String> {
    let mut h = Harness::new(&input.setup)?;
    for (i, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        h.step(op)
            .and_then(|()| SimAlloc::paused(|| h.check()))
            .map_err(|e| format!("step {i} {op:?}: {e}"))?;
    }
    // The rest of a failure schedule does not reach the teardown checks.
    SimAlloc::stop_failing();
    h.finish().map_err(|e| format!("at the end: {e}"))?;
    Ok(h.gpus.iter().map(|g| g.svm.stats()).collect())
}
