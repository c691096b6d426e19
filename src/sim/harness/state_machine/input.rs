//! The input of a run: the machine it starts from ([`Setup`]) and its steps ([`Op`]), with
//! their arguments (arena words, VMA spans, protections, device-memory sizes).

use super::{ARENA, BLOCKS, BLOCK_SIZE, SLOTS, SLOT_SIZE, WORDS};
use crate::platform::VmaFlags;
use std::vec::Vec;

/// An 8-byte word of the arena.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Slot, modulo [`SLOTS`].
    pub slot: u8,
    /// 64 KiB block in the slot, modulo [`BLOCKS`].
    pub block: u8,
    /// Word in the block, modulo [`WORDS`] (word `w` is at offset `w * 0x1008`).
    pub word: u8,
}

impl Loc {
    /// The word's address.
    pub fn addr(self) -> u64 {
        ARENA
            + u64::from(self.slot % SLOTS) * SLOT_SIZE
            + u64::from(self.block % BLOCKS) * BLOCK_SIZE
            + u64::from(self.word % WORDS) * 0x1008
    }
}

/// A page-aligned interval of one slot for VMA operations.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The whole slot (2 MiB, so huge pages and 2 MiB ranges fit).
    Slot {
        /// Slot, modulo [`SLOTS`].
        slot: u8,
    },
    /// Blocks `first .. first + len` of a slot (`len` reduced to `1..=BLOCKS`, clamped to the
    /// slot).
    Blocks {
        /// Slot, modulo [`SLOTS`].
        slot: u8,
        /// First block, modulo [`BLOCKS`].
        first: u8,
        /// Number of blocks.
        len: u8,
    },
}

impl Span {
    /// `[start, end)`.
    pub fn bounds(self) -> (u64, u64) {
        match self {
            Span::Slot { slot } => {
                let s = ARENA + u64::from(slot % SLOTS) * SLOT_SIZE;
                (s, s + SLOT_SIZE)
            }
            Span::Blocks { slot, first, len } => {
                let base = ARENA + u64::from(slot % SLOTS) * SLOT_SIZE;
                let first = u64::from(first % BLOCKS);
                let len = u64::from(len % BLOCKS) + 1;
                let last = (first + len).min(u64::from(BLOCKS));
                (base + first * BLOCK_SIZE, base + last * BLOCK_SIZE)
            }
        }
    }
}

/// Protection for `mmap`/`mprotect`.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prot {
    /// Read and write.
    ReadWrite,
    /// Read only.
    ReadOnly,
}

impl Prot {
    pub(super) fn flags(self) -> VmaFlags {
        match self {
            Prot::ReadWrite => VmaFlags::READ | VmaFlags::WRITE,
            Prot::ReadOnly => VmaFlags::READ,
        }
    }
    pub(super) fn writable(self) -> bool {
        self == Prot::ReadWrite
    }
}

/// One step. `dev` is taken modulo the number of devices.
#[derive(arbitrary::Arbitrary, Debug, Clone)]
pub enum Op {
    /// CPU read (faults in, migrates device pages back).
    CpuRead {
        /// Where.
        loc: Loc,
    },
    /// CPU write (the value stored is made unique per step).
    CpuWrite {
        /// Where.
        loc: Loc,
        /// Low bits of the value.
        value: u16,
    },
    /// Device read (fault service on a miss: may migrate to device memory).
    DevRead {
        /// Which device.
        dev: u8,
        /// Where.
        loc: Loc,
    },
    /// Device write.
    DevWrite {
        /// Which device.
        dev: u8,
        /// Where.
        loc: Loc,
        /// Low bits of the value.
        value: u16,
    },
    /// Device atomic add (needs device memory).
    DevAtomic {
        /// Which device.
        dev: u8,
        /// Where.
        loc: Loc,
        /// Added value minus one.
        add: u8,
    },
    /// `mmap` at a fixed place: refused (`Invalid`) if it overlaps a mapping.
    Mmap {
        /// Where.
        span: Span,
        /// Protection.
        prot: Prot,
        /// Back with 2 MiB frames where possible.
        huge: bool,
    },
    /// `munmap`.
    Munmap {
        /// Where.
        span: Span,
    },
    /// `mprotect`: `NoMem` if part of the span is not mapped.
    Mprotect {
        /// Where.
        span: Span,
        /// New protection.
        prot: Prot,
    },
    /// `madvise(MADV_DONTNEED)`: the pages read as zero afterwards.
    MadviseDontneed {
        /// Where.
        span: Span,
    },
    /// Explicitly migrate the device's range at `loc` (if any) into its device memory.
    Migrate {
        /// Which device.
        dev: u8,
        /// Where.
        loc: Loc,
    },
    /// Evict the device's range at `loc` (if any) to system memory.
    Evict {
        /// Which device.
        dev: u8,
        /// Where.
        loc: Loc,
    },
    /// Run the device's garbage collector.
    GcRun {
        /// Which device.
        dev: u8,
    },
    /// Fail the `nth` (1..=4) copy from now of the device's copy engine after `after_runs`
    /// (0..=3) runs.
    InjectCopyFail {
        /// Which device.
        dev: u8,
        /// Which copy call.
        nth: u8,
        /// Runs completed before the failure.
        after_runs: u8,
    },
    /// Fail the `nth` (1..=8) DMA map from now of the device.
    InjectDmaFail {
        /// Which device.
        dev: u8,
        /// Which map call.
        nth: u8,
    },
    /// Fail the `nth` (1..=4) device-memory allocation from now of the device.
    InjectAllocFail {
        /// Which device.
        dev: u8,
        /// Which allocation.
        nth: u8,
    },
    /// Fork a child sharing every page copy-on-write (if there is none yet).
    Fork,
    /// The child exits (unmaps everything).
    ChildExit,
    /// Let `ms` milliseconds pass (timeslices run out).
    Advance {
        /// Milliseconds.
        ms: u8,
    },
    /// CPU-read every word of the model.
    CpuSweep,
    /// Set policy attributes on a span for one device (`madvise`).
    SetAttrs {
        /// Which device.
        dev: u8,
        /// Where.
        span: Span,
        /// Preferred location: 0 device default, 1 system, `2 + i` device `i`'s pagemap.
        preferred: u8,
        /// Atomic policy: 0 undefined, 1 device, 2 global, 3 cpu (modulo 4).
        atomic: u8,
        /// Migration policy: only system pages.
        system_pages_only: bool,
    },
    /// Prefetch a span for one device.
    Prefetch {
        /// Which device.
        dev: u8,
        /// Where.
        span: Span,
        /// 0 system, 1 the device's memory, `2 + i` device `i`'s pagemap.
        to: u8,
    },
}

/// Device memory of one device, in base pages.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VramSize {
    /// No device memory.
    None,
    /// 64 pages: only ranges up to 256 KiB fit.
    Tiny,
    /// 512 pages: one 2 MiB range.
    Small,
    /// 1024 pages: two 2 MiB ranges.
    Medium,
    /// 4096 pages: the whole arena and more.
    Large,
}

impl VramSize {
    /// The number of pages.
    pub fn pages(self) -> u64 {
        match self {
            VramSize::None => 0,
            VramSize::Tiny => 64,
            VramSize::Small => 512,
            VramSize::Medium => 1024,
            VramSize::Large => 4096,
        }
    }
}

/// What an arena slot holds at the start.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Premap {
    /// Nothing.
    None,
    /// A read-write mapping of the whole slot.
    ReadWrite,
    /// The same, backed by 2 MiB frames.
    Huge,
    /// A read-only mapping of the whole slot.
    ReadOnly,
}

/// The atomic-fault timeslice of every device.
#[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeslice {
    /// None.
    Zero,
    /// 1 ms.
    Short,
    /// The default 5 ms.
    Default,
}

/// The machine a run starts from.
#[derive(arbitrary::Arbitrary, Debug, Clone)]
pub struct Setup {
    /// Number of devices minus one, modulo [`MAX_DEVICES`](super::MAX_DEVICES).
    pub devices: u8,
    /// Device memory of device `i` (entries beyond the device count are ignored).
    pub vram: [VramSize; 4],
    /// Devices 0 and 1 share a fast interconnect (hence an owner: peer-to-peer access and
    /// device-to-device migration).
    pub linked: bool,
    /// The initial mappings of the slots.
    pub premap: [Premap; SLOTS as usize],
    /// The atomic timeslice.
    pub timeslice: Timeslice,
    /// `SvmConfig::can_migrate_same_pagemap` of every device.
    pub can_migrate_same_pagemap: bool,
    /// `SvmConfig::source_peer_migrates` of every device.
    pub source_peer_migrates: bool,
    /// More links, one bit per pair: 0-1, 0-2, 0-3, 1-2, 1-3, 2-3 (bit 0 adds to `linked`);
    /// bit 6 ([`ATOMICS_ON_SYSMEM`]) sets `PolicyConfig::atomics_on_sysmem` on every device (a
    /// bit here rather than a field of its own, so that the committed fuzz corpus keeps its
    /// meaning).
    pub links: u8,
}

/// The bit of [`Setup::links`] that gives every device atomics on system memory.
pub const ATOMICS_ON_SYSMEM: u8 = 1 << 6;

impl Default for Setup {
    /// Two unlinked devices with plenty of device memory, every slot mapped read-write.
    fn default() -> Self {
        Setup {
            devices: 1,
            vram: [VramSize::Large; 4],
            linked: false,
            premap: [Premap::ReadWrite; SLOTS as usize],
            timeslice: Timeslice::Default,
            can_migrate_same_pagemap: false,
            source_peer_migrates: false,
            links: 0,
        }
    }
}

/// A whole fuzz input.
#[derive(arbitrary::Arbitrary, Debug, Clone)]
pub struct Input {
    /// The machine.
    pub setup: Setup,
    /// The steps (at most [`MAX_OPS`](super::MAX_OPS) are run).
    pub ops: Vec<Op>,
}
