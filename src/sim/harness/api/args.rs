//! The arguments of the calls: hostile numbers and ids ([`Num`], [`Id`]), specifications of
//! configurations, contexts, ranges, frames and pagemaps, and the machine's [`Setup`].

use super::machine::Harness;
use super::{ARENA, ARENA_END, SLOT, TOP47, TOP64, TOP64_END};
use crate::platform::PAGE_SIZE;
use std::vec::Vec;

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
    pub(super) fn value(self, h: &Harness) -> u64 {
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

/// An [`Event`](crate::Event).
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSpec {
    /// [`Event::Unmap`](crate::Event::Unmap).
    Unmap,
    /// [`Event::Clear`](crate::Event::Clear).
    Clear,
    /// [`Event::Protection`](crate::Event::Protection).
    Protection,
    /// [`Event::Migrate`](crate::Event::Migrate) by an owner.
    Migrate(Option<Id>),
    /// [`Event::Release`](crate::Event::Release).
    Release,
}

/// A [`PagesCtx`](crate::PagesCtx).
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
    /// `2^(s % 64)` for each `s` (at most [`MAX_CHUNK_SIZES`](crate::MAX_CHUNK_SIZES)).
    Shifts(Vec<u8>),
    /// Any values (at most [`MAX_CHUNK_SIZES`](crate::MAX_CHUNK_SIZES)).
    Raw(Vec<Num>),
}

/// A possibly hostile [`SvmConfig`](crate::SvmConfig): every field any value.
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

/// A pagemap argument for [`ApiOp::AttachPagemap`](super::ApiOp::AttachPagemap).
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

/// A [`ChunkQuery`](crate::range::ChunkQuery) with any values.
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
