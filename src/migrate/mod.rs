//! The migration state machine (SPEC §7): RAM → device memory, device memory → RAM, and
//! eviction, each written as explicit states with a restore on every failure path.
//!
//! ```text
//!   to device memory:  Isolate → Allocate → MapSources → Copy → Install → Done
//!                          │          │           │         │
//!                          └──────────┴───────────┴─────────┴──► Restore → Done (error)
//!   to RAM:            Isolate → Allocate → MapDests → Copy → Install → Done
//!                          (same restore edges)
//! ```
//!
//! Migration is all-or-nothing for a range going to device memory: if any page cannot be
//! isolated, allocated, mapped or copied, every page stays where it was, with its data. Pages
//! move in the largest order that alignment and contiguity allow (2 MiB, 64 KiB, else 4 KiB),
//! and the copy engine gets maximal runs of contiguous pages, one command per run.
//!
//! Memory: every array of a migration (source slots, frames, DMA chunks, copy runs,
//! destinations, the allocation object) comes from the host's allocator with
//! [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep); no crate lock is held while a
//! migration runs except the pagemap's run index lock, briefly, when the new allocation is
//! tracked (and never while allocating). A failed allocation is a failure like any other: the
//! Restore state puts every page back and frees what was taken, and the call returns
//! [`Error::NoMem`](crate::Error::NoMem).

mod cpu_fault;
mod plan;
mod to_devmem;
mod to_ram;

pub use to_devmem::{to_devmem, to_devmem_traced, ToDevmemState};
pub use to_ram::{to_ram, to_ram_traced, ToRamState};

/// Resolves a peer pagemap by id (for device → device migration).
pub type Peers<'a, M, L> = &'a dyn Fn(
    crate::platform::PagemapId,
) -> Option<crate::HostArc<L, crate::pagemap::Pagemap<M, L>>>;

/// Knobs of a migration to device memory (Linux `drm_pagemap_migrate_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigrateDetails {
    /// Minimum residency in device memory before a CPU fault may pull the pages back
    /// (nanoseconds of platform time; 0 = none).
    pub timeslice_ns: u64,
    /// Pages already in the target pagemap may be migrated again (to new frames) instead of
    /// making a partly-resident range fail with `Busy`.
    pub can_migrate_same_pagemap: bool,
    /// For device → device copies: the source pagemap's copy engine copies (else the
    /// target's).
    pub source_peer_migrates: bool,
}

/// What a migration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigrateReport {
    /// Pages moved.
    pub pages: usize,
    /// Copy-engine commands issued (one per contiguous run).
    pub copy_runs: usize,
    /// Bytes copied or cleared.
    pub bytes: u64,
    /// Pages that were selected but could not be isolated (to RAM only; to device memory fails
    /// with `Busy` instead).
    pub busy: usize,
    /// Every page already lived in the target: nothing was done.
    pub already_there: bool,
}
