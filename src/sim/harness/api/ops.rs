//! The calls: [`ApiOp`] (one public function with hostile arguments, and what the harness
//! checks of it) and [`ApiInput`] (the machine and a sequence of calls).

use super::{
    ConfigSpec, CtxSpec, EventSpec, FrameSpec, Id, NotifierSpec, Num, PagemapSpec, QuerySpec,
    RangeRef, RawAttrSpec, Setup, UpdateSpec,
};
use std::vec::Vec;

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
    /// Insert a range into the harness's own [`RangeTree`](crate::range::RangeTree): refused
    /// iff it is linked or overlaps.
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
    /// Intervals longer than [`MAX_MIGRATE_BYTES`](super::MAX_MIGRATE_BYTES) are not migrated
    /// (see the module docs).
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
    /// ([`SimAlloc`](crate::sim::SimAlloc)) after letting `skip % (MAX_FAIL_SKIP + 1)`
    /// succeed, whichever calls make them (the harness's own checks run with the schedule
    /// paused; a new `FailAllocs` replaces what is left of the previous one). The skip reaches
    /// allocations deep inside a call (a migration makes dozens), not only its first. A call
    /// that fails with [`Error::NoMem`](crate::Error::NoMem) must leave the state as it was
    /// where its contract says so (checked as for other errors), the invariants hold after
    /// every call, and at the end of the run every allocation has been freed.
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
    /// The calls (at most [`MAX_OPS`](super::MAX_OPS) are run).
    pub ops: Vec<ApiOp>,
}
