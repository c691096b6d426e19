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

use crate::error::Error;
use crate::fault::Access;
use crate::migrate::{self, MigrateDetails, ToDevmemState, ToRamState};
use crate::pagemap::{DevmemAlloc, OwnerRegistry, Pagemap, PeerId, PutPage};
use crate::pages::{PageEntry, PagesCtx, Protocol, RetryPolicy, Userptr};
use crate::platform::{
    DmaDirection, NotifierId, OwnerId, PagemapId, Platform, VmaFlags, MAX_ORDER, PAGE_SHIFT,
    PAGE_SIZE,
};
use crate::policy::{
    decide, AtomicPolicy, AttrStore, AttrUpdate, Attrs, DecisionInput, DeviceCaps, DeviceTarget,
    MigrationPolicy, PolicyConfig, PreferredLoc, PrefetchLoc, RangeHistory, RawAttr,
};
use crate::range::{select_chunk, ChunkQuery, Range, RangeTree};
use crate::sim::SimHost;
use crate::sim::{
    check_closed, check_invariants, lock, SimAlloc, SimDevice, SimDevmem, SimGpu, SimMm,
    SimPagemapArc, SimWorld,
};
use crate::stats::StatsSnapshot;
use crate::svm::{Event, SvmConfig, Window, MAX_CHUNK_SIZES};
use std::collections::BTreeSet;
use std::format;
use std::string::String;
use std::sync::Arc;

/// A reference to a range of the simulated host.
type RArc = crate::HostArc<SimHost, Range<SimHost>>;
use std::vec::Vec;

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

/// Interesting values for [`Num::Edge`].
const EDGES: [u64; 24] = [
    0,
    1,
    PAGE_SIZE - 1,
    PAGE_SIZE,
    PAGE_SIZE + 1,
    64 << 10,
    SLOT,
    512 << 20,
    1 << 32,
    ARENA,
    ARENA + SLOT,
    ARENA + 2 * SLOT,
    ARENA_END - PAGE_SIZE,
    ARENA_END,
    TOP47,
    (1 << 47) - PAGE_SIZE,
    1 << 47,
    1 << 63,
    (1 << 63) - PAGE_SIZE,
    TOP64,
    TOP64_END - PAGE_SIZE,
    TOP64_END,
    u64::MAX - 1,
    u64::MAX,
];

/// Any `u64`, drawn so that hostile but meaningful values are common.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    /// Exactly this value.
    Raw(u64),
    /// An interesting value (index modulo the table), plus a small signed delta.
    Edge {
        /// Index into the table of edges.
        index: u8,
        /// Added (wrapping).
        delta: i16,
    },
    /// `2^shift` (shift modulo 64) plus a small signed delta (wrapping).
    Pow2 {
        /// The exponent.
        shift: u8,
        /// Added (wrapping).
        delta: i8,
    },
    /// A byte of the arena: page `page` (modulo the arena's pages) plus `offset` bytes.
    Arena {
        /// Page index.
        page: u16,
        /// Byte offset (not reduced: may run past the page).
        offset: u16,
    },
    /// The start (or end) of a range the harness knows, plus a signed number of pages.
    Known {
        /// Which known range.
        index: u8,
        /// Its end instead of its start.
        end: bool,
        /// Pages added (wrapping).
        pages: i8,
    },
}

impl Num {
    fn value(self, h: &Harness) -> u64 {
        match self {
            Num::Raw(v) => v,
            Num::Edge { index, delta } => {
                EDGES[usize::from(index) % EDGES.len()].wrapping_add(i64::from(delta) as u64)
            }
            Num::Pow2 { shift, delta } => {
                (1u64 << (shift % 64)).wrapping_add(i64::from(delta) as u64)
            }
            Num::Arena { page, offset } => {
                let pages = (ARENA_END - ARENA) / PAGE_SIZE;
                ARENA + (u64::from(page) % pages) * PAGE_SIZE + u64::from(offset)
            }
            Num::Known { index, end, pages } => {
                let base = match h.known_range(index) {
                    Some(r) if end => r.end(),
                    Some(r) => r.start(),
                    None => ARENA,
                };
                base.wrapping_add((i64::from(pages) as u64).wrapping_mul(PAGE_SIZE))
            }
        }
    }
}

/// A `u32` identifier: one the machine uses (a device's id or owner), or any value.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    /// The id of device `dev` (modulo the number of devices): its pagemap id, or its owner.
    Device(u8),
    /// Any value.
    Raw(u32),
}

/// A notifier id for `invalidate_begin`/`invalidate_end`.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierSpec {
    /// One the platform registered (index modulo the registered ones), if any.
    Registered(u8),
    /// Any value.
    Raw(Num),
}

/// An [`Event`].
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSpec {
    /// [`Event::Unmap`].
    Unmap,
    /// [`Event::Clear`].
    Clear,
    /// [`Event::Protection`].
    Protection,
    /// [`Event::Migrate`] by an owner.
    Migrate(Option<Id>),
    /// [`Event::Release`].
    Release,
}

/// A [`PagesCtx`].
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtxSpec {
    /// `read_only`.
    pub read_only: bool,
    /// `devmem_only`.
    pub devmem_only: bool,
    /// `allow_mixed`.
    pub allow_mixed: bool,
    /// `owner`: none, or an id.
    pub owner: Option<Id>,
}

/// A chunk-size list: the default, a list of powers of two, or any values.
#[derive(arbitrary::Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum ChunksSpec {
    /// 2 MiB, 64 KiB, 4 KiB.
    Default,
    /// `2^(s % 64)` for each `s` (at most [`MAX_CHUNK_SIZES`]).
    Shifts(Vec<u8>),
    /// Any values (at most [`MAX_CHUNK_SIZES`]).
    Raw(Vec<Num>),
}

/// A possibly hostile [`SvmConfig`]: every field any value.
#[derive(arbitrary::Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpec {
    /// `mm_start`.
    pub mm_start: Num,
    /// `mm_range`.
    pub mm_range: Num,
    /// `notifier_size`.
    pub notifier_size: Num,
    /// `chunk_sizes`.
    pub chunks: ChunksSpec,
    /// `check_pages_threshold`.
    pub check_pages_threshold: Num,
    /// `retry.deadline_ns`.
    pub deadline_ns: Num,
    /// `retry.max_attempts` (capped, see the module docs).
    pub max_attempts: u32,
    /// `owner`.
    pub owner: Option<Id>,
    /// `prefer_devmem`.
    pub prefer_devmem: bool,
    /// `atomic_timeslice_ns`.
    pub atomic_timeslice_ns: Num,
    /// `source_peer_migrates`.
    pub source_peer_migrates: bool,
    /// `can_migrate_same_pagemap`.
    pub can_migrate_same_pagemap: bool,
    /// `policy.migrate_threshold`.
    pub migrate_threshold: Num,
    /// `policy.devmem_only_retries` (capped).
    pub devmem_only_retries: u32,
    /// `policy.atomics_on_sysmem`.
    pub atomics_on_sysmem: bool,
}

/// One device of the machine.
#[derive(arbitrary::Arbitrary, Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceSpec {
    /// Device memory in pages: none, 64, 512 or 2048 (`vram % 4`).
    pub vram: u8,
    /// A hostile configuration (used if [`Svm::new`](crate::Svm::new) accepts it, else the
    /// default configuration over `[0, 2^47)`).
    pub config: Option<ConfigSpec>,
}

/// The machine.
#[derive(arbitrary::Arbitrary, Debug, Clone, PartialEq, Eq, Default)]
pub struct Setup {
    /// Two devices instead of one.
    pub two_devices: bool,
    /// The devices.
    pub devices: [DeviceSpec; 2],
    /// Link the two devices (one owner, peer access).
    pub link: bool,
}

/// A range argument: one the harness has seen (from the devices, `Range::new`, or removed), or
/// a fresh one.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRef {
    /// A known range (index modulo their number; a fresh arena page if none).
    Known(u8),
    /// A fresh range with these bounds (an arena page if `Range::new` refuses them).
    Fresh {
        /// First byte.
        start: Num,
        /// One past the last byte.
        end: Num,
    },
    /// The range device `dev` holds at `addr`, if any (else as `Known(0)`).
    At {
        /// Which device.
        dev: u8,
        /// The address.
        addr: Num,
    },
}

/// An attribute update (each field `None` or any value).
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSpec {
    /// Preferred location: 0 device default, 1 system, else a pagemap.
    pub preferred: Option<(u8, Id)>,
    /// Migration policy.
    pub migration: Option<bool>,
    /// Atomic policy (modulo 4).
    pub atomic: Option<u8>,
}

/// A raw attribute (any bits).
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttrSpec {
    /// `kind` (small values are the valid ones).
    pub kind: u32,
    /// `value`.
    pub value: Num,
    /// `reserved`.
    pub reserved: u64,
}

/// A device frame number for the pagemap callbacks.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSpec {
    /// A frame of a live allocation of the pagemap (index, page; modulo), or the first frame
    /// of the device memory if there is none.
    Alloc {
        /// Which allocation.
        index: u8,
        /// Which page of it.
        page: u16,
    },
    /// The device memory's frame `n` (the simulator numbers device frames from
    /// `(id + 1) << 32`).
    Device(u16),
    /// Any value.
    Raw(Num),
}

/// A pagemap argument for [`ApiOp::AttachPagemap`].
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagemapSpec {
    /// The pagemap of device `dev` (modulo the number of devices), if it has device memory.
    Device(u8),
    /// A new pagemap object with any id and owner, over a device memory of its own with no
    /// pages (nothing can ever be migrated into it, so it never holds pages): attached under
    /// a free id it is a harmless peer; under an id in use it is an impostor.
    Fresh {
        /// Its id.
        id: Id,
        /// Its owner.
        owner: Id,
    },
}

/// A [`ChunkQuery`] with any values.
#[derive(arbitrary::Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct QuerySpec {
    /// `addr`.
    pub addr: Num,
    /// `vma`.
    pub vma: (Num, Num),
    /// `notifier`.
    pub notifier: (Num, Num),
    /// `window`.
    pub window: (Num, Num),
    /// `chunk_sizes`.
    pub chunks: ChunksSpec,
    /// `check_pages_threshold`.
    pub threshold: Num,
    /// Answers of the `overlaps` callback, one bit per call (then `false`).
    pub overlaps: u16,
    /// Answers of the `all_present` callback, one bit per call (then `true`).
    pub present: u16,
}

/// One call. `dev` is taken modulo the number of devices.
#[derive(arbitrary::Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum ApiOp {
    /// `Range::new(start, end)`: `Ok` iff `start < end` and both page aligned.
    RangeNew {
        /// First byte.
        start: Num,
        /// One past the last byte.
        end: Num,
    },
    /// Insert a range into the harness's own [`RangeTree`]: refused iff it is linked or
    /// overlaps.
    TreeInsert {
        /// Which range.
        range: RangeRef,
    },
    /// Remove a range from the harness's tree.
    TreeRemove {
        /// Which range.
        range: RangeRef,
    },
    /// `find`, `find_arc`, `overlapping`, `any_overlap` and `pop_front` on the harness's tree.
    TreeQuery {
        /// Lookup address / start of the interval.
        start: Num,
        /// End of the interval.
        end: Num,
        /// Also pop the first range.
        pop: bool,
    },
    /// `PageEntry::new` with any bits: `Ok` iff aligned, order and protocol in range; then the
    /// fields round-trip.
    PageEntryNew {
        /// Address.
        addr: Num,
        /// Order.
        order: u8,
        /// Direction (modulo 3).
        dir: u8,
        /// Protocol.
        proto: u8,
    },
    /// A userptr over any interval on device `dev`: `new`, `get_pages`, `bind`, an
    /// invalidation over any interval, `pages_valid`, `unmap_pages`, `free_pages`.
    Userptr {
        /// Which device's platform.
        dev: u8,
        /// First byte.
        start: Num,
        /// One past the last byte.
        end: Num,
        /// The collection context.
        ctx: CtxSpec,
        /// Retry budget.
        attempts: u8,
        /// An invalidation `[start, end)` after the collection.
        inval: Option<(Num, Num)>,
    },
    /// `Svm::new` with any configuration (on the simulated platform), then a fault through
    /// it, then `close`.
    SvmNew {
        /// The configuration.
        config: ConfigSpec,
        /// Where to fault.
        addr: Num,
    },
    /// `Svm::find_or_insert` with any address, window and context.
    FindOrInsert {
        /// Which device.
        dev: u8,
        /// The address.
        addr: Num,
        /// The window (`None`: everything).
        window: Option<(Num, Num)>,
        /// The context.
        ctx: CtxSpec,
    },
    /// `Svm::find`.
    Find {
        /// Which device.
        dev: u8,
        /// The address.
        addr: Num,
    },
    /// `Svm::remove` of any range.
    Remove {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
    },
    /// `Svm::get_pages` of any range with any context.
    GetPages {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
        /// The context.
        ctx: CtxSpec,
    },
    /// `Svm::bind` of any range; the entries are written into the device page table (as a
    /// driver does) when the range belongs to the device.
    Bind {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
    },
    /// `Svm::unmap_pages` (after zapping the device mappings, as the contract says).
    UnmapPages {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
    },
    /// `Svm::free_pages` (after zapping the device mappings).
    FreePages {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
    },
    /// `Svm::pages_valid` (`false` for a range not in the instance).
    PagesValid {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
    },
    /// `Svm::handle_fault` with any address, access and window.
    HandleFault {
        /// Which device.
        dev: u8,
        /// The address.
        addr: Num,
        /// 0 read, 1 write, else atomic.
        access: u8,
        /// The window (`None`: everything).
        window: Option<(Num, Num)>,
    },
    /// A device access of the simulated GPU (fault, bind, access) at any address.
    DevAccess {
        /// Which device.
        dev: u8,
        /// The address.
        addr: Num,
        /// 0 read, 1 write, else atomic.
        access: u8,
    },
    /// `Svm::invalidate_begin` with any notifier id, interval and event (not necessarily
    /// followed by an end).
    InvalidateBegin {
        /// Which device.
        dev: u8,
        /// Notifier id.
        id: NotifierSpec,
        /// First byte.
        start: Num,
        /// One past the last byte.
        end: Num,
        /// The event.
        event: EventSpec,
    },
    /// `Svm::invalidate_end` with any notifier id and interval (not necessarily after a begin).
    InvalidateEnd {
        /// Which device.
        dev: u8,
        /// Notifier id.
        id: NotifierSpec,
        /// First byte.
        start: Num,
        /// One past the last byte.
        end: Num,
    },
    /// `Svm::gc_run`.
    GcRun {
        /// Which device.
        dev: u8,
    },
    /// `Svm::close` (then every call that needs an open instance returns `Closed`).
    Close {
        /// Which device.
        dev: u8,
    },
    /// `Svm::set_attrs` with any interval and update.
    SetAttrs {
        /// Which device.
        dev: u8,
        /// Start.
        start: Num,
        /// Length.
        len: Num,
        /// The update.
        update: UpdateSpec,
    },
    /// `Svm::set_attrs_raw` with any raw attributes.
    SetAttrsRaw {
        /// Which device.
        dev: u8,
        /// Start.
        start: Num,
        /// Length.
        len: Num,
        /// The raw attributes (at most 4 used).
        raw: Vec<RawAttrSpec>,
    },
    /// `Svm::prefetch` with any interval and location.
    Prefetch {
        /// Which device.
        dev: u8,
        /// Start.
        start: Num,
        /// Length.
        len: Num,
        /// 0 system, 1 device, else the pagemap `id`.
        loc: u8,
        /// The pagemap for `loc >= 2`.
        id: Id,
    },
    /// `Svm::migrate_to_devmem` of any range with any details.
    MigrateToDevmem {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
        /// `timeslice_ns`.
        timeslice_ns: Num,
        /// `can_migrate_same_pagemap`.
        same_pagemap: bool,
        /// `source_peer_migrates`.
        source_peer: bool,
    },
    /// `Svm::evict` of any range.
    Evict {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
    },
    /// `Svm::place_in` of any range into any target.
    PlaceIn {
        /// Which device.
        dev: u8,
        /// Which range.
        range: RangeRef,
        /// The target pagemap (`None`: the local one).
        target: Option<Id>,
        /// The timeslice.
        timeslice_ns: Num,
    },
    /// `Pagemap::page_free` of device `dev`'s pagemap with any frame (see the module docs).
    PageFree {
        /// Which device.
        dev: u8,
        /// The frame.
        frame: FrameSpec,
    },
    /// `Pagemap::migrate_to_ram` of device `dev`'s pagemap with any address and frame.
    MigrateToRam {
        /// Which device.
        dev: u8,
        /// The faulting address.
        addr: Num,
        /// The frame.
        frame: FrameSpec,
    },
    /// `OwnerRegistry::join` on a registry of the harness (peers `a`, `b` are linked iff
    /// `(a ^ b) & 3 == 0`).
    OwnerJoin {
        /// The peer.
        peer: u64,
    },
    /// `OwnerRegistry::leave`.
    OwnerLeave {
        /// The peer.
        peer: u64,
    },
    /// `select_chunk` with any query; an `Ok` must satisfy the documented rules.
    SelectChunk(QuerySpec),
    /// `Error::from_errno` with any value.
    FromErrno(i32),
    /// `policy::decide` with any input and configuration.
    Decide {
        /// `range_size`.
        range_size: Num,
        /// 0 read, 1 write, else atomic.
        access: u8,
        /// The attributes.
        attrs: UpdateSpec,
        /// `caps.has_devmem`.
        has_devmem: bool,
        /// `caps.default_to_devmem`.
        default_to_devmem: bool,
        /// `history.migrate_failed`.
        migrate_failed: bool,
        /// `migrate_threshold`.
        threshold: Num,
        /// `devmem_only_retries`.
        retries: u32,
        /// `atomics_on_sysmem`.
        atomics_on_sysmem: bool,
    },
    /// `DevmemAlloc::new` with any interval and frames (`Ok` iff the interval is non-empty and
    /// the frames are non-empty and distinct), then `index_of`/`contains`/`page_live` and a
    /// sequence of `put_page` calls checked against a model.
    DevmemAlloc {
        /// `va_start`.
        va_start: Num,
        /// `va_end`.
        va_end: Num,
        /// The frames (the first `n % 7` are used).
        frames: [Num; 6],
        /// How many frames.
        n: u8,
        /// `put_page` calls: a frame of the allocation (index modulo its size), or any frame.
        puts: [Option<u8>; 8],
    },
    /// `AttrStore::set` with any interval and update on a store of the harness, then `get`,
    /// `extent` and the segment invariants.
    AttrStore {
        /// Start.
        start: Num,
        /// End.
        end: Num,
        /// The update.
        update: UpdateSpec,
        /// An address to look up.
        probe: Num,
    },
    /// CPU write of a word of the arena (the simulator; sets up pages).
    CpuWrite {
        /// Page of the arena.
        page: u16,
        /// Value.
        value: u64,
    },
    /// `munmap` of arena pages `[page, page + npages)` (the simulator).
    Munmap {
        /// First page of the arena.
        page: u16,
        /// Number of pages (1..=512).
        npages: u16,
    },
    /// `mmap` (fixed) of arena pages (the simulator); refused over a mapping.
    Mmap {
        /// First page of the arena.
        page: u16,
        /// Number of pages (1..=512).
        npages: u16,
        /// Read-only instead of read-write.
        read_only: bool,
    },
    /// `mprotect` of arena pages (the simulator).
    Mprotect {
        /// First page of the arena.
        page: u16,
        /// Number of pages (1..=512).
        npages: u16,
        /// Read-only instead of read-write.
        read_only: bool,
    },
    /// Let time pass (timeslices expire).
    Advance {
        /// Milliseconds.
        ms: u8,
    },
    /// `Svm::set_owner` with any owner or none: afterwards `owner()` is that owner, or (with
    /// `None`) the local pagemap's, else `config.owner`; the pagemaps are untouched.
    SetOwner {
        /// Which device.
        dev: u8,
        /// The owner.
        owner: Option<Id>,
    },
    /// `Svm::attach_pagemap`: `Ok` iff no other pagemap object is attached under its id (then
    /// `pagemap_by_id` returns it), else `Invalid` and nothing changes; the local pagemap and
    /// the owner are untouched.
    AttachPagemap {
        /// Which device.
        dev: u8,
        /// The pagemap.
        pagemap: PagemapSpec,
    },
    /// `Svm::detach_pagemap` of any id: `None` for the local pagemap (which stays attached),
    /// else exactly the pagemap attached under that id (if any), which is then gone.
    DetachPagemap {
        /// Which device.
        dev: u8,
        /// The pagemap id.
        id: Id,
    },
    /// The free functions of the migration state machine on device `dev`'s pagemap with any
    /// interval: `migrate::to_ram`, or `migrate::to_devmem` (or `to_devmem_traced` with the
    /// device's attached pagemaps as peers). `Invalid` iff the interval is empty or misaligned;
    /// on any error no CPU page of the interval changed; on success the pages are where the
    /// report says (to device memory: all of them in the pagemap, or nothing changed with
    /// `already_there`; to RAM: at most the `busy` ones left in the pagemap, `pages` moved).
    /// Traced, the states run from `Isolate` to `Done` through `Install` iff pages moved.
    /// Intervals longer than [`MAX_MIGRATE_BYTES`] are not migrated (see the module docs).
    MigrateDirect {
        /// Which device's pagemap.
        dev: u8,
        /// First byte.
        start: Num,
        /// One past the last byte.
        end: Num,
        /// To device memory instead of RAM.
        to_devmem: bool,
        /// Use `to_devmem_traced` with peers (to device memory only).
        traced: bool,
        /// `timeslice_ns`.
        timeslice_ns: Num,
        /// `can_migrate_same_pagemap`.
        same_pagemap: bool,
        /// `source_peer_migrates`.
        source_peer: bool,
    },
    /// Fail the next `n % (MAX_FAIL_ALLOCS + 1)` allocations through the host allocator
    /// ([`SimAlloc`]) after letting `skip % (MAX_FAIL_SKIP + 1)` succeed, whichever calls make
    /// them (the harness's own checks run with the schedule paused; a new `FailAllocs`
    /// replaces what is left of the previous one). The skip reaches allocations deep inside a
    /// call (a migration makes dozens), not only its first. A call that fails with
    /// [`Error::NoMem`] must leave the state as it was where its contract says so (checked as
    /// for other errors), the invariants hold after every call, and at the end of the run
    /// every allocation has been freed.
    FailAllocs {
        /// Allocations that succeed first (modulo `MAX_FAIL_SKIP + 1`).
        skip: u8,
        /// How many then fail (modulo `MAX_FAIL_ALLOCS + 1`).
        n: u8,
    },
}

/// A whole input: the machine and the calls.
#[derive(arbitrary::Arbitrary, Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiInput {
    /// The machine.
    pub setup: Setup,
    /// The calls (at most [`MAX_OPS`] are run).
    pub ops: Vec<ApiOp>,
}

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

/// The machine the ops run on.
struct Harness {
    world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    gpus: Vec<SimGpu>,
    /// Whether each device was closed.
    closed: Vec<bool>,
    /// Range objects seen (from the devices, `Range::new`, removals), oldest first.
    known: Vec<RArc>,
    /// The harness's own range tree and its model (start, end, object).
    tree: RangeTree<SimHost>,
    tree_model: Vec<RArc>,
    /// The harness's owner registry and its members.
    owners: OwnerRegistry<fn(PeerId, PeerId) -> bool>,
    members: BTreeSet<u64>,
    /// The harness's attribute store.
    attrs: AttrStore,
    /// Device ids handed to `SvmNew` devices.
    next_id: u32,
}

/// Which free migration function [`ApiOp::MigrateDirect`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direct {
    ToRam,
    ToDevmem,
    Traced,
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
    fn new(setup: &Setup) -> Result<Harness, String> {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let rw = VmaFlags::READ | VmaFlags::WRITE;
        let maps = [
            (0, SLOT, rw, false),
            (ARENA, SLOT, rw, true),
            (ARENA + SLOT, SLOT, rw, false),
            (ARENA + 2 * SLOT, SLOT, VmaFlags::READ, false),
            (TOP47, SLOT, rw, true),
            (TOP64, TOP64_END - TOP64, rw, false),
        ];
        for (addr, len, flags, huge) in maps {
            mm.mmap_fixed(addr, len, flags, huge)
                .map_err(|e| format!("setup mmap_fixed({addr:#x}, {len:#x}): {e:?}"))?;
        }
        let n = if setup.two_devices { 2 } else { 1 };
        if setup.link && n == 2 {
            world.link(0, 1);
        }
        let mut h = Harness {
            world,
            mm,
            gpus: Vec::new(),
            closed: Vec::new(),
            known: Vec::new(),
            tree: RangeTree::with_host(),
            tree_model: Vec::new(),
            // The default facet's spinning lock: its creation cannot fail.
            #[allow(clippy::expect_used)]
            owners: OwnerRegistry::new(linked_peers as fn(PeerId, PeerId) -> bool)
                .expect("SpinHost creates its locks infallibly"),
            members: BTreeSet::new(),
            attrs: AttrStore::new(),
            next_id: 8,
        };
        for (i, spec) in setup.devices.iter().take(n).enumerate() {
            let id = i as u32;
            let pages = match spec.vram % 4 {
                0 => 0,
                1 => 64,
                2 => 512,
                _ => 2048,
            };
            let default = || {
                let mut c = SvmConfig::new(0, 1 << 47);
                c.prefer_devmem = pages > 0;
                c
            };
            let cfg = match &spec.config {
                Some(c) => {
                    let cfg = h.config(c);
                    match cfg.validate() {
                        Ok(()) => cfg,
                        Err(e) => {
                            typed(e)?;
                            if e != Error::Invalid {
                                return Err(format!("validate: {e:?} for {cfg:?}"));
                            }
                            default()
                        }
                    }
                }
                None => default(),
            };
            let g = SimGpu::join_with(&h.mm, id, pages, cfg)
                .map_err(|e| format!("setup device {id}: {e:?}"))?;
            h.gpus.push(g);
            h.closed.push(false);
        }
        Ok(h)
    }

    /// The configuration a spec names (retry budgets capped, see the module docs).
    fn config(&self, c: &ConfigSpec) -> SvmConfig {
        let mut cfg = SvmConfig::new(c.mm_start.value(self), c.mm_range.value(self));
        cfg.notifier_size = c.notifier_size.value(self);
        cfg.chunk_sizes = heapless::Vec::new();
        for s in chunks_of(&c.chunks, self) {
            let _ = cfg.chunk_sizes.push(s);
        }
        cfg.check_pages_threshold = c.check_pages_threshold.value(self);
        cfg.retry = RetryPolicy {
            deadline_ns: c.deadline_ns.value(self),
            max_attempts: c.max_attempts % (MAX_RETRY_ATTEMPTS + 1),
        };
        cfg.owner = c.owner.map(|o| self.owner_id(o));
        cfg.prefer_devmem = c.prefer_devmem;
        cfg.atomic_timeslice_ns = c.atomic_timeslice_ns.value(self);
        cfg.source_peer_migrates = c.source_peer_migrates;
        cfg.can_migrate_same_pagemap = c.can_migrate_same_pagemap;
        cfg.policy = PolicyConfig {
            migrate_threshold: c.migrate_threshold.value(self),
            devmem_only_retries: c.devmem_only_retries % (MAX_DEVMEM_RETRIES + 1),
            atomics_on_sysmem: c.atomics_on_sysmem,
        };
        cfg
    }

    fn dev(&self, d: u8) -> usize {
        usize::from(d) % self.gpus.len().max(1)
    }

    fn gpu(&self, d: u8) -> &SimGpu {
        &self.gpus[self.dev(d)]
    }

    fn owner_id(&self, id: Id) -> OwnerId {
        match id {
            Id::Device(d) => self
                .gpus
                .get(self.dev(d))
                .and_then(|g| g.svm.owner())
                .unwrap_or(OwnerId(u32::from(d))),
            Id::Raw(v) => OwnerId(v),
        }
    }

    fn pagemap_id(&self, id: Id) -> PagemapId {
        match id {
            Id::Device(d) => PagemapId(self.dev(d) as u32),
            Id::Raw(v) => PagemapId(v),
        }
    }

    fn ctx(&self, c: CtxSpec) -> PagesCtx {
        PagesCtx {
            read_only: c.read_only,
            devmem_only: c.devmem_only,
            allow_mixed: c.allow_mixed,
            owner: c.owner.map(|o| self.owner_id(o)),
        }
    }

    fn window(&self, w: Option<(Num, Num)>) -> Window {
        match w {
            None => Window::ALL,
            Some((s, e)) => Window {
                start: s.value(self),
                end: e.value(self),
            },
        }
    }

    fn known_range(&self, index: u8) -> Option<&RArc> {
        let n = self.known.len();
        if n == 0 {
            return None;
        }
        self.known.get(usize::from(index) % n)
    }

    fn remember(&mut self, r: &RArc) {
        if self.known.iter().any(|k| RArc::ptr_eq(k, r)) {
            return;
        }
        if self.known.len() >= MAX_KNOWN {
            self.known.remove(0);
        }
        self.known.push(r.clone());
    }

    /// The range a reference names; `None` if a fresh range object cannot be allocated (an
    /// injected allocation failure: the op is skipped).
    fn range(&mut self, r: RangeRef) -> Result<Option<RArc>, String> {
        // A fresh range of the arena, or `None` without memory for it.
        let fallback = || match Range::with_host(ARENA, ARENA + PAGE_SIZE) {
            Ok(r) => Ok(Some(r)),
            Err(Error::NoMem) => Ok(None),
            Err(e) => Err(format!("Range::with_host(arena page) = {e:?}")),
        };
        let out = match r {
            RangeRef::Known(i) => match self.known_range(i) {
                Some(r) => Some(r.clone()),
                None => fallback()?,
            },
            RangeRef::Fresh { start, end } => {
                match Range::with_host(start.value(self), end.value(self)) {
                    Ok(r) => Some(r),
                    Err(Error::NoMem) => None,
                    Err(e) => {
                        typed(e)?;
                        fallback()?
                    }
                }
            }
            RangeRef::At { dev, addr } => {
                let a = addr.value(self);
                match self.gpu(dev).svm.find(a) {
                    Some(r) => Some(r),
                    None => match self.known_range(0) {
                        Some(r) => Some(r.clone()),
                        None => fallback()?,
                    },
                }
            }
        };
        if let Some(r) = &out {
            self.remember(r);
        }
        Ok(out)
    }

    fn frame(&self, d: u8, f: FrameSpec) -> u64 {
        let base = (u64::from(self.dev(d) as u32) + 1) << 32;
        match f {
            FrameSpec::Alloc { index, page } => {
                let allocs = self
                    .gpu(d)
                    .svm
                    .pagemap()
                    .and_then(|pm| pm.allocations().ok())
                    .unwrap_or_default();
                if allocs.is_empty() {
                    return base;
                }
                let a = &allocs[usize::from(index) % allocs.len()];
                let frames = a.dpfns();
                if frames.is_empty() {
                    return base;
                }
                frames[usize::from(page) % frames.len()]
            }
            FrameSpec::Device(n) => base + u64::from(n),
            FrameSpec::Raw(n) => n.value(self),
        }
    }

    fn notifier(&self, n: NotifierSpec) -> NotifierId {
        match n {
            NotifierSpec::Registered(i) => {
                let regs = self.mm.notifiers();
                if regs.is_empty() {
                    return NotifierId(0);
                }
                regs[usize::from(i) % regs.len()].1
            }
            NotifierSpec::Raw(v) => NotifierId(v.value(self)),
        }
    }

    fn update(&self, u: UpdateSpec) -> AttrUpdate {
        AttrUpdate {
            preferred: u.preferred.map(|(k, id)| match k % 3 {
                0 => PreferredLoc::DeviceDefault,
                1 => PreferredLoc::System,
                _ => PreferredLoc::Pagemap(self.pagemap_id(id)),
            }),
            migration: u.migration.map(|s| {
                if s {
                    MigrationPolicy::SystemPagesOnly
                } else {
                    MigrationPolicy::AllPages
                }
            }),
            atomic: u.atomic.map(|a| match a % 4 {
                0 => AtomicPolicy::Undefined,
                1 => AtomicPolicy::Device,
                2 => AtomicPolicy::Global,
                _ => AtomicPolicy::Cpu,
            }),
        }
    }

    /// Arena pages `[page, page + npages)` clamped to the arena.
    fn arena_span(page: u16, npages: u16) -> (u64, u64) {
        let pages = (ARENA_END - ARENA) / PAGE_SIZE;
        let first = u64::from(page) % pages;
        let n = u64::from(npages) % 512 + 1;
        let last = (first + n).min(pages);
        (ARENA + first * PAGE_SIZE, ARENA + last * PAGE_SIZE)
    }

    /// Zap device `d`'s page table over `[start, end)` (what a driver does before unmapping
    /// pages it bound).
    fn zap(&self, d: u8, start: u64, end: u64) {
        let mut pt = lock(&self.gpu(d).dev.pt);
        let (s, e) = (start >> PAGE_SHIFT, end >> PAGE_SHIFT);
        let keys: Vec<u64> = pt.range(s..e).map(|(k, _)| *k).collect();
        for k in keys {
            pt.remove(&k);
        }
    }

    /// Whether `r` (the very object) is a range of device `d`.
    fn owns(&self, d: u8, r: &RArc) -> bool {
        self.gpu(d)
            .svm
            .find(r.start())
            .is_some_and(|f| RArc::ptr_eq(&f, r))
    }

    /// After a call that failed without memory: the range at `addr` is still `before` (the
    /// very object, or none): nothing was created or removed.
    fn unchanged_at(
        &self,
        d: u8,
        addr: u64,
        before: Option<&RArc>,
        what: &str,
    ) -> Result<(), String> {
        let after = self.gpu(d).svm.find(addr);
        let same = match (before, after.as_ref()) {
            (Some(b), Some(a)) => RArc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Err(format!(
                "{what}({addr:#x}) = NoMem changed the range there: {before:?} -> {after:?}"
            ));
        }
        Ok(())
    }

    /// The attributes at the edges of `[start, start + len)` and around them, and the number
    /// of ranges (what an attribute update changes).
    fn attrs_around(&self, d: u8, start: u64, len: u64) -> (Vec<Attrs>, (usize, usize)) {
        let svm = &self.gpu(d).svm;
        let end = start.wrapping_add(len);
        let points = [
            start.wrapping_sub(1),
            start,
            start.wrapping_add(len / 2),
            end.wrapping_sub(1),
            end,
        ];
        (
            points.iter().map(|&a| svm.attrs_at(a)).collect(),
            svm.counts(),
        )
    }

    /// After a call that needs an open instance: on a closed device it must say `Closed`.
    fn expect_closed_if<T: core::fmt::Debug>(
        &self,
        d: u8,
        what: &str,
        got: &Result<T, Error>,
    ) -> Result<(), String> {
        if self.closed[self.dev(d)] && !matches!(got, Err(Error::Closed)) {
            return Err(format!("{what} on a closed device: {got:?}"));
        }
        if let Err(e) = got {
            typed(*e)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_lines)]
    fn step(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::RangeNew { start, end } => {
                let (s, e) = (start.value(self), end.value(self));
                let valid = s < e && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0;
                match Range::with_host(s, e) {
                    Ok(r) if valid => {
                        if r.start() != s || r.end() != e || r.is_linked() {
                            return Err(format!("Range::with_host({s:#x}, {e:#x}) = {r:?}"));
                        }
                        if r.size() != e - s || r.npages() != (e - s) / PAGE_SIZE {
                            return Err(format!("{r:?}: size {:#x}", r.size()));
                        }
                        self.remember(&r);
                    }
                    Err(Error::Invalid) if !valid => {}
                    // An injected allocation failure: nothing was created.
                    Err(Error::NoMem) if valid => {}
                    other => return Err(format!("Range::with_host({s:#x}, {e:#x}) = {other:?}")),
                }
            }
            ApiOp::TreeInsert { range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let linked = r.is_linked();
                let overlaps = self
                    .tree_model
                    .iter()
                    .any(|m| m.overlaps(r.start(), r.end()));
                match self.tree.insert(r.clone()) {
                    Ok(()) if !linked && !overlaps => {
                        self.tree_model.push(r);
                        self.tree_model.sort_by_key(|m| m.start());
                    }
                    Err(Error::Invalid) if linked || overlaps => {
                        if r.is_linked() != linked {
                            return Err(format!("refused insert changed the link of {r:?}"));
                        }
                    }
                    other => {
                        return Err(format!(
                            "tree insert {r:?} (linked {linked}, overlaps {overlaps}): {other:?}"
                        ))
                    }
                }
            }
            ApiOp::TreeRemove { range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let pos = self.tree_model.iter().position(|m| RArc::ptr_eq(m, &r));
                match (self.tree.remove(&r), pos) {
                    (Some(out), Some(i)) if RArc::ptr_eq(&out, &r) && !out.is_linked() => {
                        self.tree_model.remove(i);
                    }
                    (None, None) => {}
                    (got, pos) => {
                        return Err(format!("tree remove {r:?} (model {pos:?}): {got:?}"));
                    }
                }
            }
            ApiOp::TreeQuery { start, end, pop } => {
                let (s, e) = (start.value(self), end.value(self));
                let want = self.tree_model.iter().find(|m| m.contains(s));
                let got = self.tree.find(s);
                if got.map(|r| r as *const Range<SimHost>) != want.map(RArc::as_ptr) {
                    return Err(format!("tree find({s:#x}) = {got:?}, model {want:?}"));
                }
                let got_arc = self.tree.find_arc(s);
                if got_arc.as_ref().map(RArc::as_ptr) != want.map(RArc::as_ptr) {
                    return Err(format!("tree find_arc({s:#x}) = {got_arc:?}"));
                }
                let want: Vec<*const Range<SimHost>> = self
                    .tree_model
                    .iter()
                    .filter(|m| s < e && m.overlaps(s, e))
                    .map(RArc::as_ptr)
                    .collect();
                let got: Vec<*const Range<SimHost>> = self
                    .tree
                    .overlapping(s, e)
                    .take(want.len() + 1)
                    .map(|r| r as *const Range<SimHost>)
                    .collect();
                if got != want {
                    return Err(format!("tree overlapping({s:#x}, {e:#x}) differs"));
                }
                let peek = self.tree.overlapping(s, e).peek_arc();
                if peek.as_ref().map(RArc::as_ptr) != want.first().copied() {
                    return Err(format!("tree peek_arc({s:#x}, {e:#x}) = {peek:?}"));
                }
                if self.tree.any_overlap(s, e) == want.is_empty() {
                    return Err(format!("tree any_overlap({s:#x}, {e:#x})"));
                }
                if *pop {
                    let got = self.tree.pop_front();
                    let want = if self.tree_model.is_empty() {
                        None
                    } else {
                        Some(self.tree_model.remove(0))
                    };
                    if got.as_ref().map(RArc::as_ptr) != want.as_ref().map(RArc::as_ptr) {
                        return Err(format!("tree pop_front = {got:?}, model {want:?}"));
                    }
                }
                if self.tree.len() != self.tree_model.len() {
                    return Err(format!(
                        "tree len {} model {}",
                        self.tree.len(),
                        self.tree_model.len()
                    ));
                }
            }
            ApiOp::PageEntryNew {
                addr,
                order,
                dir,
                proto,
            } => {
                let a = addr.value(self);
                let d = match dir % 3 {
                    0 => DmaDirection::ToDevice,
                    1 => DmaDirection::FromDevice,
                    _ => DmaDirection::Bidirectional,
                };
                let valid = a % PAGE_SIZE == 0 && *order <= MAX_ORDER && *proto <= Protocol::MAX;
                match PageEntry::new(a, *order, d, Protocol(*proto)) {
                    Ok(e) if valid => {
                        let ok = e.addr() == a
                            && e.order() == *order
                            && e.dir() == d
                            && e.protocol() == Protocol(*proto)
                            && e.npages() == 1u64 << order
                            && e.size() == PAGE_SIZE << order
                            && e.writable() == (d != DmaDirection::ToDevice);
                        if !ok {
                            return Err(format!("PageEntry does not round-trip: {e:?}"));
                        }
                    }
                    Err(Error::Invalid) if !valid => {}
                    other => {
                        return Err(format!(
                            "PageEntry::new({a:#x}, {order}, {d:?}, {proto}) = {other:?}"
                        ))
                    }
                }
            }
            ApiOp::Userptr {
                dev,
                start,
                end,
                ctx,
                attempts,
                inval,
            } => {
                let (s, e) = (start.value(self), end.value(self));
                let valid = s < e && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0;
                let u = match Userptr::new(s, e) {
                    Ok(u) if valid => u,
                    Err(Error::Invalid) if !valid => return Ok(()),
                    other => return Err(format!("Userptr::new({s:#x}, {e:#x}) = {other:?}")),
                };
                let g = self.gpu(*dev);
                let p = g.svm.platform();
                let dma = p.dma();
                if e - s <= MAX_USERPTR_BYTES {
                    let policy = RetryPolicy {
                        deadline_ns: 1_000_000_000,
                        max_attempts: u32::from(*attempts % 8),
                    };
                    let got = u.get_pages(p, &self.ctx(*ctx), &policy);
                    if let Err(err) = got {
                        typed(err)?;
                    }
                    if got.is_ok() != u.pages_valid() {
                        return Err(format!(
                            "userptr get_pages {got:?}, valid {}",
                            u.pages_valid()
                        ));
                    }
                }
                let covered = u.bind(|at, entries| {
                    (
                        at,
                        entries
                            .iter()
                            .map(|x| x.size())
                            .fold(0u64, u64::saturating_add),
                    )
                });
                match covered {
                    Ok((at, bytes)) if at == s && bytes == e - s => {}
                    Err(Error::Again) if !u.pages_valid() => {}
                    other => return Err(format!("userptr bind: {other:?}")),
                }
                if let Some((is, ie)) = inval {
                    let (is, ie) = (is.value(self), ie.value(self));
                    u.invalidate_begin(dma, is, ie);
                    if is < e && s < ie && u.pages_valid() {
                        return Err(format!(
                            "userptr valid inside invalidation [{is:#x},{ie:#x})"
                        ));
                    }
                    u.invalidate_end();
                }
                u.unmap_pages(dma);
                if u.pages_valid() {
                    return Err("userptr valid after unmap_pages".into());
                }
                u.free_pages(dma);
            }
            ApiOp::SvmNew { config, addr } => {
                let cfg = self.config(config);
                let valid = cfg.validate();
                if let Err(e) = valid {
                    typed(e)?;
                }
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(8);
                match SimGpu::new(&self.mm, id, cfg.clone()) {
                    Ok(g) => {
                        if valid.is_err() {
                            return Err(format!("Svm::new accepted {cfg:?} ({valid:?})"));
                        }
                        let a = addr.value(self);
                        let got = g.svm.handle_fault(a, Access::Read, Window::ALL);
                        match &got {
                            Ok(r) if !r.contains(a) => {
                                return Err(format!("handle_fault({a:#x}) = {r:?}"))
                            }
                            Ok(_) => {}
                            Err(e) => typed(*e)?,
                        }
                        let gpus: Vec<&SimGpu> =
                            self.gpus.iter().chain(core::iter::once(&g)).collect();
                        SimAlloc::paused(|| check_invariants(&self.mm, &gpus))
                            .map_err(|e| format!("with the new Svm: {e}"))?;
                        g.svm.close();
                        SimAlloc::paused(|| check_closed(&g))
                            .map_err(|e| format!("new Svm after close: {e}"))?;
                    }
                    Err(e) => {
                        typed(e)?;
                        // A valid configuration fails only without memory; an invalid one is
                        // refused before anything is allocated.
                        let expected = if valid.is_ok() {
                            Error::NoMem
                        } else {
                            Error::Invalid
                        };
                        if e != expected {
                            return Err(format!("Svm::new({cfg:?}) = {e:?} (validate {valid:?})"));
                        }
                    }
                }
            }
            ApiOp::FindOrInsert {
                dev,
                addr,
                window,
                ctx,
            } => {
                let a = addr.value(self);
                let w = self.window(*window);
                let before = self.gpu(*dev).svm.find(a);
                let got = self.gpu(*dev).svm.find_or_insert(a, w, &self.ctx(*ctx));
                self.expect_closed_if(*dev, "find_or_insert", &got)?;
                if got.as_ref().err() == Some(&Error::NoMem) {
                    self.unchanged_at(*dev, a, before.as_ref(), "find_or_insert")?;
                }
                if let Ok(r) = &got {
                    // The window bounds new ranges only: an existing range is returned as is.
                    let new = !before.is_some_and(|b| RArc::ptr_eq(&b, r));
                    if !r.contains(a) || (new && (r.start() < w.start || r.end() > w.end)) {
                        return Err(format!("find_or_insert({a:#x}, {w:?}) = {r:?}"));
                    }
                    self.remember(r);
                }
            }
            ApiOp::Find { dev, addr } => {
                let a = addr.value(self);
                if let Some(r) = self.gpu(*dev).svm.find(a) {
                    if !r.contains(a) {
                        return Err(format!("find({a:#x}) = {r:?}"));
                    }
                    self.remember(&r);
                }
            }
            ApiOp::Remove { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let got = self.gpu(*dev).svm.remove(&r);
                self.expect_closed_if(*dev, "remove", &got)?;
                if got.is_ok()
                    && self
                        .gpu(*dev)
                        .svm
                        .find(r.start())
                        .is_some_and(|f| RArc::ptr_eq(&f, &r))
                {
                    return Err(format!("removed {r:?} is still found"));
                }
            }
            ApiOp::GetPages { dev, range, ctx } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let got = self.gpu(*dev).svm.get_pages(&r, &self.ctx(*ctx));
                self.expect_closed_if(*dev, "get_pages", &got)?;
                if got.is_ok() && !self.gpu(*dev).svm.pages_valid(&r) {
                    return Err(format!("get_pages({r:?}) Ok but pages not valid"));
                }
            }
            ApiOp::Bind { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let g = self.gpu(*dev);
                let got = g
                    .svm
                    .bind(&r, |range, entries| g.write_ptes(range, entries));
                self.expect_closed_if(*dev, "bind", &got)?;
                if let Ok(bytes) = got {
                    if bytes != r.size() {
                        return Err(format!("bind of {r:?}: entries cover {bytes:#x} bytes"));
                    }
                }
            }
            ApiOp::UnmapPages { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                if self
                    .gpu(*dev)
                    .svm
                    .find(r.start())
                    .is_some_and(|f| RArc::ptr_eq(&f, &r))
                {
                    self.zap(*dev, r.start(), r.end());
                }
                let got = self.gpu(*dev).svm.unmap_pages(&r);
                self.expect_closed_if(*dev, "unmap_pages", &got)?;
                if got.is_ok() && self.gpu(*dev).svm.pages_valid(&r) {
                    return Err(format!("{r:?} valid after unmap_pages"));
                }
            }
            ApiOp::FreePages { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                if self
                    .gpu(*dev)
                    .svm
                    .find(r.start())
                    .is_some_and(|f| RArc::ptr_eq(&f, &r))
                {
                    self.zap(*dev, r.start(), r.end());
                }
                let got = self.gpu(*dev).svm.free_pages(&r);
                self.expect_closed_if(*dev, "free_pages", &got)?;
                if got.is_ok() && self.gpu(*dev).svm.pages_valid(&r) {
                    return Err(format!("{r:?} valid after free_pages"));
                }
            }
            ApiOp::PagesValid { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let mine = self
                    .gpu(*dev)
                    .svm
                    .find(r.start())
                    .is_some_and(|f| RArc::ptr_eq(&f, &r));
                if self.gpu(*dev).svm.pages_valid(&r) && !mine {
                    return Err(format!("pages_valid of a foreign range {r:?}"));
                }
            }
            ApiOp::HandleFault {
                dev,
                addr,
                access,
                window,
            } => {
                let a = addr.value(self);
                let w = self.window(*window);
                let before = self.gpu(*dev).svm.find(a);
                let got = self.gpu(*dev).svm.handle_fault(a, access_of(*access), w);
                self.expect_closed_if(*dev, "handle_fault", &got)?;
                if let Ok(r) = &got {
                    // The window bounds new ranges only: an existing range is returned as is.
                    let new = !before.is_some_and(|b| RArc::ptr_eq(&b, r));
                    if !r.contains(a) || (new && (r.start() < w.start || r.end() > w.end)) {
                        return Err(format!("handle_fault({a:#x}, {w:?}) = {r:?}"));
                    }
                    self.remember(r);
                }
            }
            ApiOp::DevAccess { dev, addr, access } => {
                let a = addr.value(self);
                let g = self.gpu(*dev);
                let got = match access_of(*access) {
                    Access::Read => g.read_u64(a),
                    Access::Write => g.write_u64(a, a).map(|()| 0),
                    Access::Atomic => g.atomic_add(a, 1),
                };
                if let Err(e) = got {
                    typed(e)?;
                }
            }
            ApiOp::InvalidateBegin {
                dev,
                id,
                start,
                end,
                event,
            } => {
                let event = match event {
                    EventSpec::Unmap => Event::Unmap,
                    EventSpec::Clear => Event::Clear,
                    EventSpec::Protection => Event::Protection,
                    EventSpec::Migrate(o) => Event::Migrate {
                        owner: o.map(|o| self.owner_id(o)),
                    },
                    EventSpec::Release => Event::Release,
                };
                let (s, e) = (start.value(self), end.value(self));
                // A driver zaps its own bindings inside the callback: the crate does it through
                // `DevicePageTable::zap`.
                self.gpu(*dev)
                    .svm
                    .invalidate_begin(self.notifier(*id), s, e, event);
            }
            ApiOp::InvalidateEnd {
                dev,
                id,
                start,
                end,
            } => {
                let (s, e) = (start.value(self), end.value(self));
                self.gpu(*dev).svm.invalidate_end(self.notifier(*id), s, e);
            }
            ApiOp::GcRun { dev } => {
                self.gpu(*dev).svm.gc_run();
            }
            ApiOp::Close { dev } => {
                let i = self.dev(*dev);
                self.gpus[i].svm.close();
                self.closed[i] = true;
                SimAlloc::paused(|| check_closed(&self.gpus[i]))
                    .map_err(|e| format!("after close: {e}"))?;
            }
            ApiOp::SetAttrs {
                dev,
                start,
                len,
                update,
            } => {
                let (s, l) = (start.value(self), len.value(self));
                let u = self.update(*update);
                let before = self.attrs_around(*dev, s, l);
                let got = self.gpu(*dev).svm.set_attrs(s, l, &u);
                self.expect_closed_if(*dev, "set_attrs", &got)?;
                if got == Err(Error::NoMem) && self.attrs_around(*dev, s, l) != before {
                    return Err(format!(
                        "set_attrs({s:#x}, {l:#x}) = NoMem changed the state"
                    ));
                }
            }
            ApiOp::SetAttrsRaw {
                dev,
                start,
                len,
                raw,
            } => {
                let (s, l) = (start.value(self), len.value(self));
                let raw: Vec<RawAttr> = raw
                    .iter()
                    .take(4)
                    .map(|r| RawAttr {
                        kind: r.kind % 5,
                        value: r.value.value(self),
                        reserved: if r.reserved % 4 == 0 { 0 } else { r.reserved },
                    })
                    .collect();
                let before = self.attrs_around(*dev, s, l);
                let got = self.gpu(*dev).svm.set_attrs_raw(s, l, &raw);
                if let Err(e) = got {
                    typed(e)?;
                }
                if got == Err(Error::NoMem) && self.attrs_around(*dev, s, l) != before {
                    return Err(format!(
                        "set_attrs_raw({s:#x}, {l:#x}) = NoMem changed the state"
                    ));
                }
            }
            ApiOp::Prefetch {
                dev,
                start,
                len,
                loc,
                id,
            } => {
                let (s, l) = (start.value(self), len.value(self));
                let loc = match loc % 3 {
                    0 => PrefetchLoc::System,
                    1 => PrefetchLoc::Device,
                    _ => PrefetchLoc::Pagemap(self.pagemap_id(*id)),
                };
                let got = self.gpu(*dev).svm.prefetch(s, l, loc);
                self.expect_closed_if(*dev, "prefetch", &got)?;
            }
            ApiOp::MigrateToDevmem {
                dev,
                range,
                timeslice_ns,
                same_pagemap,
                source_peer,
            } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let details = MigrateDetails {
                    timeslice_ns: timeslice_ns.value(self),
                    can_migrate_same_pagemap: *same_pagemap,
                    source_peer_migrates: *source_peer,
                };
                let before = self.cpu_pages(r.start(), r.end());
                let got = self.gpu(*dev).svm.migrate_to_devmem(&r, &details);
                if let Err(e) = got {
                    typed(e)?;
                }
                // All or nothing: without memory, no CPU page of the range moved.
                if got.as_ref().err() == Some(&Error::NoMem)
                    && self.cpu_pages(r.start(), r.end()) != before
                {
                    return Err(format!("migrate_to_devmem({r:?}) = NoMem moved pages"));
                }
            }
            ApiOp::Evict { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let mine = self.owns(*dev, &r);
                let got = self.gpu(*dev).svm.evict(&r);
                self.expect_closed_if(*dev, "evict", &got)?;
                if !mine && !self.closed[self.dev(*dev)] && got.is_ok() {
                    return Err(format!("evict of {r:?}, not in the instance: {got:?}"));
                }
            }
            ApiOp::PlaceIn {
                dev,
                range,
                target,
                timeslice_ns,
            } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let t = match target {
                    None => DeviceTarget::Local,
                    Some(id) => DeviceTarget::Pagemap(self.pagemap_id(*id)),
                };
                let got = self.gpu(*dev).svm.place_in(&r, t, timeslice_ns.value(self));
                if let Err(e) = got {
                    typed(e)?;
                }
            }
            ApiOp::PageFree { dev, frame } => {
                let f = self.frame(*dev, *frame);
                let Some(pm) = self.gpu(*dev).svm.pagemap() else {
                    return Ok(());
                };
                if pm.alloc_of(f).is_some_and(|a| a.page_live(f)) {
                    // Freeing a page the CPU still maps: a platform bug (see the module docs).
                    return Ok(());
                }
                let before = pm.stray_frees();
                pm.page_free(f);
                if pm.stray_frees() != before + 1 {
                    return Err(format!(
                        "page_free({f:#x}) of a free frame not counted stray"
                    ));
                }
            }
            ApiOp::MigrateToRam { dev, addr, frame } => {
                let a = addr.value(self);
                let f = self.frame(*dev, *frame);
                let Some(pm) = self.gpu(*dev).svm.pagemap() else {
                    return Ok(());
                };
                let view = self.mm.view(usize::MAX);
                if let Err(e) = pm.migrate_to_ram(&view, a, f) {
                    typed(e)?;
                }
            }
            ApiOp::OwnerJoin { peer } => {
                let was = self.members.contains(peer);
                match self.owners.join(PeerId(*peer)) {
                    Ok(o) if !was => {
                        self.members.insert(*peer);
                        if self.owners.owner_of(PeerId(*peer)) != Some(o) {
                            return Err(format!("join({peer}) = {o:?} but not a member"));
                        }
                        let members = match self.owners.members(o) {
                            Ok(m) => m,
                            // An injected allocation failure: the list cannot be checked.
                            Err(Error::NoMem) => return Ok(()),
                            Err(e) => return Err(format!("members({o:?}) = {e:?}")),
                        };
                        if !members.contains(&PeerId(*peer)) {
                            return Err(format!("join({peer}) = {o:?} but not in members()"));
                        }
                        for &m in members.iter() {
                            if !linked_peers(m, PeerId(*peer)) {
                                return Err(format!("join({peer}) grouped it with {m:?}"));
                            }
                        }
                    }
                    Err(Error::Invalid) if was => {}
                    // Without memory nothing changes: still not a member.
                    Err(Error::NoMem) if !was => {
                        if self.owners.owner_of(PeerId(*peer)).is_some() {
                            return Err(format!("join({peer}) = NoMem but it is a member"));
                        }
                    }
                    other => return Err(format!("join({peer}) (member {was}) = {other:?}")),
                }
            }
            ApiOp::OwnerLeave { peer } => {
                let was = self.members.remove(peer);
                match self.owners.leave(PeerId(*peer)) {
                    Ok(_) if was => {
                        if self.owners.owner_of(PeerId(*peer)).is_some() {
                            return Err(format!("leave({peer}) but still a member"));
                        }
                    }
                    Err(Error::Invalid) if !was => {}
                    // Without memory nothing changes: still a member.
                    Err(Error::NoMem) if was => {
                        self.members.insert(*peer);
                        if self.owners.owner_of(PeerId(*peer)).is_none() {
                            return Err(format!("leave({peer}) = NoMem but it left"));
                        }
                    }
                    other => return Err(format!("leave({peer}) (member {was}) = {other:?}")),
                }
            }
            ApiOp::SelectChunk(q) => self.select_chunk(q)?,
            ApiOp::FromErrno(n) => match Error::from_errno(*n) {
                Some(e) => {
                    let a = n.unsigned_abs();
                    let expect = if a == 108 {
                        Error::Closed.errno()
                    } else {
                        -(a as i32)
                    };
                    if e.errno() != expect {
                        return Err(format!("from_errno({n}) = {e:?}"));
                    }
                }
                None => {
                    if [16u32, 11, 14, 12, 22, 95, 1, 13, 67, 19, 108].contains(&n.unsigned_abs()) {
                        return Err(format!("from_errno({n}) = None"));
                    }
                }
            },
            ApiOp::Decide {
                range_size,
                access,
                attrs,
                has_devmem,
                default_to_devmem,
                migrate_failed,
                threshold,
                retries,
                atomics_on_sysmem,
            } => {
                let a = self.update(*attrs).apply(Attrs::default());
                let input = DecisionInput {
                    range_size: range_size.value(self),
                    access: access_of(*access),
                    attrs: a,
                    caps: DeviceCaps {
                        has_devmem: *has_devmem,
                        default_to_devmem: *default_to_devmem,
                    },
                    history: RangeHistory {
                        migrate_failed: *migrate_failed,
                    },
                };
                let cfg = PolicyConfig {
                    migrate_threshold: threshold.value(self),
                    devmem_only_retries: *retries,
                    atomics_on_sysmem: *atomics_on_sysmem,
                };
                match decide(&input, &cfg) {
                    Ok(d) => {
                        if d.devmem_only && (d.migrate_to.is_none() || !has_devmem) {
                            return Err(format!("decide: {d:?} for {input:?}"));
                        }
                    }
                    Err(e) => {
                        typed(e)?;
                        if input.access != Access::Atomic {
                            return Err(format!("decide refused a non-atomic access: {e:?}"));
                        }
                    }
                }
            }
            ApiOp::DevmemAlloc {
                va_start,
                va_end,
                frames,
                n,
                puts,
            } => {
                let (vs, ve) = (va_start.value(self), va_end.value(self));
                let frames: Vec<u64> = frames
                    .iter()
                    .take(usize::from(n % 7))
                    .map(|f| f.value(self))
                    .collect();
                let distinct: BTreeSet<u64> = frames.iter().copied().collect();
                let valid = vs < ve && !frames.is_empty() && distinct.len() == frames.len();
                let mut owned = crate::HostVec::<SimHost, u64>::new();
                if owned
                    .extend_from_slice(&frames, crate::heap::AllocCtx::MaySleep)
                    .is_err()
                {
                    return Ok(());
                }
                let a = match DevmemAlloc::<SimHost>::new(PagemapId(0), vs, ve, owned) {
                    Ok(a) if valid => a,
                    Err(Error::Invalid) if !valid => return Ok(()),
                    // Duplicates are found in the run array: with no memory for it, `NoMem`
                    // (documented); the cheap checks come first.
                    Err(Error::NoMem) if vs < ve && !frames.is_empty() => return Ok(()),
                    other => {
                        return Err(format!(
                            "DevmemAlloc::new({vs:#x}, {ve:#x}, {frames:x?}) = {other:?}"
                        ))
                    }
                };
                for (i, &f) in frames.iter().enumerate() {
                    if a.index_of(f) != Some(i as u64) || !a.contains(f) || !a.page_live(f) {
                        return Err(format!("{a:?}: frame {f:#x} is not page {i}"));
                    }
                }
                let mut live = distinct;
                for p in puts {
                    let f = match p {
                        Some(i) => frames[usize::from(*i) % frames.len()],
                        None => frames[0].wrapping_add(frames.len() as u64),
                    };
                    let got = a.put_page(f);
                    let want = if !frames.contains(&f) {
                        PutPage::NotMine
                    } else if !live.remove(&f) {
                        PutPage::AlreadyFree
                    } else if live.is_empty() {
                        PutPage::Last
                    } else {
                        PutPage::Freed
                    };
                    if got != want || a.live_pages() != live.len() || a.page_live(f) {
                        return Err(format!("{a:?}: put_page({f:#x}) = {got:?}, model {want:?}"));
                    }
                }
            }
            ApiOp::AttrStore {
                start,
                end,
                update,
                probe,
            } => {
                let (s, e, p) = (start.value(self), end.value(self), probe.value(self));
                let u = self.update(*update);
                let Ok(before) = self.attrs.try_clone(crate::heap::AllocCtx::MaySleep) else {
                    return Ok(());
                };
                let want_at = |a: u64| {
                    let old = before.get(a);
                    if s <= a && a < e {
                        u.apply(old)
                    } else {
                        old
                    }
                };
                match self.attrs.set(s, e, &u, crate::heap::AllocCtx::MaySleep) {
                    Ok(()) if s < e => {}
                    Err(Error::NoMem) if s < e => {
                        if self.attrs != before {
                            return Err("AttrStore::set without memory changed the store".into());
                        }
                        return Ok(());
                    }
                    Err(Error::Invalid) if s >= e => {
                        if self.attrs != before {
                            return Err("refused AttrStore::set changed the store".into());
                        }
                    }
                    other => return Err(format!("AttrStore::set({s:#x}, {e:#x}) = {other:?}")),
                }
                let points = [p, s, e, s.wrapping_sub(1), e.wrapping_sub(1), 0, u64::MAX];
                for a in points {
                    let got = self.attrs.get(a);
                    let want = if s < e { want_at(a) } else { before.get(a) };
                    if got != want {
                        return Err(format!("AttrStore::get({a:#x}) = {got:?}, want {want:?}"));
                    }
                    let (lo, hi) = self.attrs.extent(a);
                    if !(lo <= a && (a < hi || hi == u64::MAX)) {
                        return Err(format!("AttrStore::extent({a:#x}) = [{lo:#x}, {hi:#x})"));
                    }
                }
                let mut prev: Option<(u64, Attrs)> = None;
                for (ss, se, at) in self.attrs.iter() {
                    let bad = ss >= se
                        || at == Attrs::default()
                        || prev.is_some_and(|(pe, pa)| pe > ss || (pe == ss && pa == at));
                    if bad {
                        return Err(format!("AttrStore segments malformed: {:?}", self.attrs));
                    }
                    prev = Some((se, at));
                }
            }
            ApiOp::CpuWrite { page, value } => {
                let (a, _) = Self::arena_span(*page, 0);
                if let Err(e) = self.mm.write_u64(a + 8, *value) {
                    typed(e)?;
                }
            }
            ApiOp::Munmap { page, npages } => {
                let (s, e) = Self::arena_span(*page, *npages);
                self.mm
                    .munmap(s, e - s)
                    .map_err(|err| format!("munmap({s:#x}, {:#x}): {err:?}", e - s))?;
            }
            ApiOp::Mmap {
                page,
                npages,
                read_only,
            } => {
                let (s, e) = Self::arena_span(*page, *npages);
                let flags = if *read_only {
                    VmaFlags::READ
                } else {
                    VmaFlags::READ | VmaFlags::WRITE
                };
                if let Err(err) = self.mm.mmap_fixed(s, e - s, flags, false) {
                    typed(err)?;
                }
            }
            ApiOp::Mprotect {
                page,
                npages,
                read_only,
            } => {
                let (s, e) = Self::arena_span(*page, *npages);
                let flags = if *read_only {
                    VmaFlags::READ
                } else {
                    VmaFlags::READ | VmaFlags::WRITE
                };
                if let Err(err) = self.mm.mprotect(s, e - s, flags) {
                    typed(err)?;
                }
            }
            ApiOp::Advance { ms } => self.world.advance(u64::from(*ms) * 1_000_000),
            ApiOp::SetOwner { dev, owner } => {
                let o = owner.map(|o| self.owner_id(o));
                let svm = &self.gpu(*dev).svm;
                let local = svm.pagemap();
                svm.set_owner(o);
                let want = o.or(local.as_ref().map(|p| p.owner()).or(svm.config().owner));
                if svm.owner() != want {
                    return Err(format!("set_owner({o:?}): owner() = {:?}", svm.owner()));
                }
                if !same_pagemap(&svm.pagemap(), &local) {
                    return Err(format!("set_owner({o:?}) changed the local pagemap"));
                }
            }
            ApiOp::AttachPagemap { dev, pagemap } => {
                let Some(pm) = self.pagemap_of(*pagemap) else {
                    return Ok(());
                };
                let svm = &self.gpu(*dev).svm;
                let (local, owner) = (svm.pagemap(), svm.owner());
                let before = svm.pagemap_by_id(pm.id());
                let free = before
                    .as_ref()
                    .is_none_or(|b| SimPagemapArc::ptr_eq(b, &pm));
                let got = svm.attach_pagemap(pm.clone());
                let after = svm.pagemap_by_id(pm.id());
                match got {
                    Ok(()) if free => {
                        if !after.is_some_and(|a| SimPagemapArc::ptr_eq(&a, &pm)) {
                            return Err(format!(
                                "attach_pagemap({:?}) Ok but not attached",
                                pm.id()
                            ));
                        }
                    }
                    Err(Error::Invalid) if !free => {
                        if !same_pagemap(&after, &before) {
                            return Err(format!("refused attach_pagemap({:?}) replaced", pm.id()));
                        }
                    }
                    // The pagemap set could not grow: nothing changed.
                    Err(Error::NoMem) if same_pagemap(&after, &before) => {}
                    other => {
                        return Err(format!(
                            "attach_pagemap({:?}) (id free {free}) = {other:?}",
                            pm.id()
                        ))
                    }
                }
                if !same_pagemap(&svm.pagemap(), &local) || svm.owner() != owner {
                    return Err(format!("attach_pagemap({:?}) changed the device", pm.id()));
                }
            }
            ApiOp::DetachPagemap { dev, id } => {
                let id = self.pagemap_id(*id);
                let svm = &self.gpu(*dev).svm;
                let (local, owner) = (svm.pagemap(), svm.owner());
                let before = svm.pagemap_by_id(id);
                let got = svm.detach_pagemap(id);
                let after = svm.pagemap_by_id(id);
                let is_local = local.as_ref().is_some_and(|l| l.id() == id);
                let ok = if is_local {
                    got.is_none() && same_pagemap(&after, &local)
                } else {
                    same_pagemap(&got, &before) && after.is_none()
                };
                if !ok {
                    return Err(format!(
                        "detach_pagemap({id:?}) (local {is_local}, attached {}) = {:?}",
                        before.is_some(),
                        got.map(|p| p.id())
                    ));
                }
                if !same_pagemap(&svm.pagemap(), &local) || svm.owner() != owner {
                    return Err(format!("detach_pagemap({id:?}) changed the device"));
                }
            }
            ApiOp::FailAllocs { skip, n } => SimAlloc::fail_after(
                u64::from(skip % (MAX_FAIL_SKIP + 1)),
                u64::from(n % (MAX_FAIL_ALLOCS + 1)),
            ),
            ApiOp::MigrateDirect {
                dev,
                start,
                end,
                to_devmem,
                traced,
                timeslice_ns,
                same_pagemap,
                source_peer,
            } => {
                let details = MigrateDetails {
                    timeslice_ns: timeslice_ns.value(self),
                    can_migrate_same_pagemap: *same_pagemap,
                    source_peer_migrates: *source_peer,
                };
                let how = match (to_devmem, traced) {
                    (false, _) => Direct::ToRam,
                    (true, false) => Direct::ToDevmem,
                    (true, true) => Direct::Traced,
                };
                self.migrate_direct(*dev, start.value(self), end.value(self), how, &details)?;
            }
        }
        Ok(())
    }

    /// The pagemap object a spec names (`None`: the device has no device memory).
    /// `None` too when a fresh pagemap cannot be allocated.
    fn pagemap_of(&mut self, spec: PagemapSpec) -> Option<SimPagemapArc> {
        match spec {
            PagemapSpec::Device(d) => self.gpu(d).svm.pagemap(),
            PagemapSpec::Fresh { id, owner } => {
                let dev_id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(8);
                let dev = SimDevice::new(&self.world, dev_id);
                Pagemap::new(self.pagemap_id(id), self.owner_id(owner), SimDevmem(dev)).ok()
            }
        }
    }

    /// The CPU pages of `[start, end)`: page number → (frame, device pagemap, isolated).
    fn cpu_pages(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<PagemapId>, bool)> {
        let st = lock(&self.mm.st);
        st.ptes
            .range(start >> PAGE_SHIFT..end >> PAGE_SHIFT)
            .map(|(vpn, p)| (*vpn, p.pfn, p.dev.map(|(pm, _)| pm), p.migrating))
            .collect()
    }

    /// [`ApiOp::MigrateDirect`]: `migrate::to_ram`/`to_devmem` on device `d`'s pagemap.
    ///
    /// - an empty or misaligned interval is `Invalid` (and nothing changes);
    /// - on any error, no CPU page of the interval changed (all-or-nothing; to RAM: pages that
    ///   moved are only reported on success);
    /// - `to_devmem` `Ok`: with `already_there`, nothing changed and every page was already in
    ///   the pagemap; else every page of the interval is now a device page of the pagemap and
    ///   `pages` counts them all;
    /// - `to_ram` `Ok`: `pages` of the pagemap's pages in the interval moved to system memory,
    ///   only the `busy` ones (at most) are left;
    /// - traced (`to_ram` always, `to_devmem` in the `Traced` variant): the states start with
    ///   `Isolate` and end with `Done`, `Install` is reached iff pages moved, and a failure after
    ///   isolation goes through `Restore`.
    fn migrate_direct(
        &self,
        d: u8,
        s: u64,
        e: u64,
        how: Direct,
        details: &MigrateDetails,
    ) -> Result<(), String> {
        let Some(pm) = self.gpu(d).svm.pagemap() else {
            return Ok(());
        };
        let valid = s < e && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0;
        if valid && e - s > MAX_MIGRATE_BYTES {
            return Ok(());
        }
        let before = if valid {
            self.cpu_pages(s, e)
        } else {
            Vec::new()
        };
        let view = self.mm.view(usize::MAX);
        let mut states: Vec<ToDevmemState> = Vec::new();
        let mut ram_states: Vec<ToRamState> = Vec::new();
        let got = match how {
            Direct::ToRam => {
                migrate::to_ram_traced(&view, &pm, s, e, Some(&mut |st| ram_states.push(st)))
            }
            Direct::ToDevmem => migrate::to_devmem(&view, &pm, s, e, details),
            Direct::Traced => {
                let svm = &self.gpu(d).svm;
                migrate::to_devmem_traced(
                    &view,
                    &pm,
                    &|id| svm.pagemap_by_id(id),
                    s,
                    e,
                    details,
                    Some(&mut |st| states.push(st)),
                )
            }
        };
        let what = format!("{how:?}({:?}, {s:#x}, {e:#x})", pm.id());
        if !valid {
            return match got {
                Err(Error::Invalid) if states.is_empty() && ram_states.is_empty() => Ok(()),
                other => Err(format!(
                    "{what}: {other:?} (states {states:?} {ram_states:?})"
                )),
            };
        }
        let after = self.cpu_pages(s, e);
        let npages = ((e - s) / PAGE_SIZE) as usize;
        let mine = |v: &[(u64, u64, Option<PagemapId>, bool)]| {
            v.iter().filter(|p| p.2 == Some(pm.id()) && !p.3).count()
        };
        match got {
            Err(err) => {
                typed(err)?;
                if after != before {
                    return Err(format!("{what} = {err:?} but CPU pages changed"));
                }
            }
            Ok(rep) if how == Direct::ToRam => {
                let (was, left) = (mine(&before), mine(&after));
                if left > rep.busy || rep.pages.saturating_add(left) != was {
                    return Err(format!(
                        "{what} = {rep:?}: {was} pages before, {left} after"
                    ));
                }
            }
            Ok(rep) if rep.already_there => {
                if after != before || mine(&before) != npages || rep.pages != 0 {
                    return Err(format!("{what} = {rep:?} but the pages were not all there"));
                }
            }
            Ok(rep) => {
                if mine(&after) != npages || after.len() != npages || rep.pages != npages {
                    return Err(format!(
                        "{what} = {rep:?}: {} of {npages} pages in the pagemap",
                        mine(&after)
                    ));
                }
            }
        }
        // Without memory before the state machine started (its arrays), nothing was traced.
        let untraced = got == Err(Error::NoMem) && states.is_empty() && ram_states.is_empty();
        if how == Direct::ToRam && !untraced {
            // Install iff pages moved; an error after a successful isolation restores. (An
            // isolation error goes straight to Done: nothing was isolated.)
            let moved = got.as_ref().is_ok_and(|r| r.pages > 0);
            let ok = ram_states.first() == Some(&ToRamState::Isolate)
                && ram_states.last() == Some(&ToRamState::Done)
                && ram_states.contains(&ToRamState::Install) == moved
                && (got.is_ok()
                    || ram_states.len() == 2
                    || ram_states.contains(&ToRamState::Restore));
            if !ok {
                return Err(format!("{what} = {got:?}: states {ram_states:?}"));
            }
        }
        if how == Direct::Traced && !untraced {
            let moved = got.as_ref().is_ok_and(|r| !r.already_there);
            let ok = states.first() == Some(&ToDevmemState::Isolate)
                && states.last() == Some(&ToDevmemState::Done)
                && states.contains(&ToDevmemState::Install) == moved
                && (moved || states.len() == 2 || states.contains(&ToDevmemState::Restore));
            if !ok {
                return Err(format!("{what} = {got:?}: states {states:?}"));
            }
        }
        Ok(())
    }

    fn select_chunk(&self, q: &QuerySpec) -> Result<(), String> {
        let chunks = chunks_of(&q.chunks, self);
        let pair = |p: &(Num, Num)| (p.0.value(self), p.1.value(self));
        let query = ChunkQuery {
            addr: q.addr.value(self),
            vma: pair(&q.vma),
            notifier: pair(&q.notifier),
            window: pair(&q.window),
            chunk_sizes: &chunks,
            check_pages_threshold: q.threshold.value(self),
        };
        let (mut ov, mut pr) = (q.overlaps, q.present);
        let mut overlap_calls: Vec<(u64, u64)> = Vec::new();
        let got = select_chunk(
            &query,
            |s, e| {
                overlap_calls.push((s, e));
                let b = ov & 1 == 1;
                ov >>= 1;
                b
            },
            |_, _| {
                let b = pr & 1 == 0;
                pr >>= 1;
                b
            },
        );
        let inside = |o: (u64, u64), s: u64, e: u64| o.0 <= s && e <= o.1;
        match got {
            Ok((s, e)) => {
                let size = e.wrapping_sub(s);
                let ok = s < e
                    && s <= query.addr
                    && query.addr < e
                    && chunks.contains(&size)
                    && s % size == 0
                    && inside(query.vma, s, e)
                    && inside(query.notifier, s, e)
                    && inside(query.window, s, e)
                    && overlap_calls.last() == Some(&(s, e));
                if !ok {
                    return Err(format!("select_chunk({query:?}) = [{s:#x}, {e:#x})"));
                }
            }
            Err(e) => {
                typed(e)?;
                if !matches!(e, Error::Invalid | Error::Fault) {
                    return Err(format!("select_chunk({query:?}) = {e:?}"));
                }
            }
        }
        for (s, e) in overlap_calls {
            if !(s < e
                && inside(query.vma, s, e)
                && inside(query.notifier, s, e)
                && inside(query.window, s, e))
            {
                return Err(format!(
                    "select_chunk asked overlaps({s:#x}, {e:#x}) outside"
                ));
            }
        }
        Ok(())
    }

    /// The invariants after every step.
    fn check(&self) -> Result<(), String> {
        let gpus: Vec<&SimGpu> = self.gpus.iter().collect();
        check_invariants(&self.mm, &gpus)?;
        for g in &self.gpus {
            // `set_pagemap`: the local pagemap is also attached, under its id.
            if let Some(l) = g.svm.pagemap() {
                if !same_pagemap(&g.svm.pagemap_by_id(l.id()), &Some(l.clone())) {
                    return Err(format!(
                        "dev {}: the local pagemap {:?} is not the one attached under its id",
                        g.dev.id(),
                        l.id()
                    ));
                }
            }
        }
        for (g, &closed) in self.gpus.iter().zip(&self.closed) {
            if closed {
                check_closed(g).map_err(|e| format!("dev {} closed: {e}", g.dev.id()))?;
            }
        }
        Ok(())
    }

    /// Close everything and check that nothing is left behind.
    fn finish(&mut self) -> Result<(), String> {
        for i in 0..self.gpus.len() {
            self.gpus[i].svm.close();
            self.closed[i] = true;
        }
        self.check()?;
        while self.tree.pop_front().is_some() {}
        Ok(())
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
