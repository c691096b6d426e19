//! Whole-machine state-machine harness: a sequence of [`Op`]s (CPU and device accesses, VMA
//! changes, migrations, evictions, GC runs, injected failures, fork) is applied to a simulated
//! machine with one or more devices with device memory, next to a data model, and everything is
//! checked after every step. The machine is closed and torn down at the end.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/state_machine.rs` and the stable test
//! `tests/sim_state_machine.rs` (many seeds, proptest, the committed corpus).
//!
//! **The model.** `mapped`: every page of the arena that has a VMA, and whether it is writable;
//! `data`: every 8-byte word ever written (by the CPU or a device) with its last value (words
//! not in it read as zero). Values written are unique per step, so a stale copy cannot pass for
//! the current one.
//!
//! **Checked after every step:** the simulator's invariant checker on all devices (docs/DESIGN.md
//! invariants 1, 2, 3, 5, 6 with device-memory accounting); no CPU PTE left isolated or as a
//! migration placeholder; for every pagemap, allocations made = released + live, and no page
//! freed twice; the VMAs are exactly the model's. Every CPU and device read is compared with the
//! model (invariant 4). **At the end:** every device closes (`check_closed`), every word of the
//! model reads back by the CPU, and once the arena (and a forked child) are unmapped no device
//! memory, no allocation, no DMA mapping and no system frame is left.
//!
//! **Which errors are allowed.** A call fails exactly when the model says so — `Fault` on
//! unmapped memory, `Perm` for a write or atomic to read-only memory, `Invalid` for `mmap` over
//! a mapping, `NoMem` for `mprotect` over a hole — and otherwise must succeed, with these
//! exceptions, each a documented behaviour: any error when an injected failure fired during the
//! call (nothing may be lost even then); `Fault` for a device atomic (atomics need device
//! memory: SPEC §8) unless the device has room for the whole arena, no fork child shares
//! pages, and no injection fired; `Busy`/`NoMem`/`Again`/`NotSupported` for an explicit
//! migration. (A device write to a writable page whose range also covers pages an `mprotect`
//! made read-only must succeed: the fault service rebuilds the range; `Summary` counts them.)
//!
//! **Extending.** More devices: raise [`MAX_DEVICES`] (up to 4: [`Setup::vram`] has 4 entries
//! and every `dev` is taken modulo the device count). New operations (attribute changes,
//! prefetch, ...) are new [`Op`] variants with their expectation in `Machine::apply`; add them
//! at the end of the enum and regenerate the seed corpus (`write_seed_corpus` in
//! `tests/sim_state_machine.rs`), since `arbitrary` maps variant numbers by the variant count.
//!
//! ```
//! use gpusvm::sim::harness::state_machine::{run, Loc, Op, Setup};
//! let loc = Loc { slot: 0, block: 3, word: 1 };
//! let ops = [
//!     Op::CpuWrite { loc, value: 7 },
//!     Op::DevRead { dev: 0, loc },
//!     Op::DevWrite { dev: 1, loc, value: 9 },
//!     Op::CpuRead { loc },
//! ];
//! assert_eq!(run(Setup::default(), &ops), Ok(()));
//! ```

use crate::error::Error;
use crate::migrate::MigrateDetails;
use crate::platform::PagemapId;
use crate::platform::{VmaFlags, PAGE_SHIFT, PAGE_SIZE};
use crate::policy::{AtomicPolicy, AttrUpdate, MigrationPolicy, PreferredLoc, PrefetchLoc};
use crate::range::RangeFlags;
use crate::sim::{check_closed, check_invariants, SimGpu, SimMm, SimWorld};
use crate::svm::SvmConfig;
use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::sync::Arc;
use std::vec::Vec;

/// Devices a run uses at most (`Setup::devices` is reduced modulo this). The op encoding
/// (`dev: u8`, taken modulo the device count) and [`Setup::vram`] already allow 4.
pub const MAX_DEVICES: usize = 4;
/// Slots of the arena (each 2 MiB, 2 MiB aligned, adjacent).
pub const SLOTS: u8 = 4;
/// Size of one slot.
pub const SLOT_SIZE: u64 = 2 << 20;
/// Blocks (64 KiB) per slot: the granularity of VMA operations.
pub const BLOCKS: u8 = 32;
/// Size of one block.
pub const BLOCK_SIZE: u64 = 64 << 10;
/// Words per block that accesses name (each in a different 4 KiB page of the block).
pub const WORDS: u8 = 4;
/// First byte of the arena.
pub const ARENA: u64 = 0x40_0000_0000;
/// One past the last byte of the arena.
pub const ARENA_END: u64 = ARENA + SLOTS as u64 * SLOT_SIZE;
/// Longest op sequence run (the rest of a longer input is ignored).
pub const MAX_OPS: usize = 400;

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
    fn flags(self) -> VmaFlags {
        match self {
            Prot::ReadWrite => VmaFlags::READ | VmaFlags::WRITE,
            Prot::ReadOnly => VmaFlags::READ,
        }
    }
    fn writable(self) -> bool {
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
    /// Number of devices minus one, modulo [`MAX_DEVICES`].
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
    /// The steps (at most [`MAX_OPS`] are run).
    pub ops: Vec<Op>,
}

/// What a run did (for tests that want to see that the interesting paths were reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Steps run.
    pub steps: usize,
    /// Calls that failed as the model said they must (`Fault`, `Perm`, ...).
    pub expected_errors: usize,
    /// Calls that failed and were allowed to because an injected failure fired.
    pub injected_errors: usize,
    /// Injected failures that fired.
    pub injections_fired: usize,
    /// Device atomics that succeeded / failed with `Fault` (no device memory to be had).
    pub atomics_ok: usize,
    /// See `atomics_ok`.
    pub atomics_refused: usize,
    /// Device writes and atomics that succeeded although their existing range also covered
    /// read-only pages (the fault service rebuilt the range inside the writable VMA).
    pub straddles_rebuilt: usize,
    /// Explicit migrations refused with `Busy`/`NoMem`/`Again`/`NotSupported`.
    pub migrations_refused: usize,
    /// Summed over devices at the end: migrations to device memory, to RAM, evictions,
    /// failed migrations, GC'd ranges.
    pub migrations_to_devmem: usize,
    /// See `migrations_to_devmem`.
    pub migrations_to_ram: usize,
    /// See `migrations_to_devmem`.
    pub evictions: usize,
    /// See `migrations_to_devmem`.
    pub migrate_failures: usize,
    /// See `migrations_to_devmem`.
    pub gc_ranges: usize,
    /// Attribute changes applied / refused (`NoLink`, `Invalid`, as the model predicts).
    pub attrs_set: usize,
    /// See `attrs_set`.
    pub attrs_refused: usize,
    /// Device atomics refused with `Access` (atomic policy `cpu`).
    pub atomics_forbidden: usize,
    /// Prefetches that completed / failed (a hole, no room, ...).
    pub prefetches_ok: usize,
    /// See `prefetches_ok`.
    pub prefetches_failed: usize,
}

type Pending = Vec<(u64, u64, u64)>;

struct Machine {
    world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    gpus: Vec<SimGpu>,
    vram: Vec<u64>,
    details: MigrateDetails,
    child: Option<Arc<SimMm>>,
    /// Virtual page number → writable, for every mapped page of the arena.
    mapped: BTreeMap<u64, bool>,
    /// Word address → value.
    data: BTreeMap<u64, u64>,
    step: usize,
    sum: Summary,
    /// Some attribute was set (a preferred pagemap may lack room for an atomic's range).
    attrs_touched: bool,
}

fn err<T>(what: String) -> Result<T, String> {
    Err(what)
}

impl Machine {
    fn new(setup: &Setup) -> Result<Machine, String> {
        let world = SimWorld::new();
        let n = 1 + usize::from(setup.devices) % MAX_DEVICES;
        if setup.linked && n >= 2 {
            world.link(0, 1);
        }
        const PAIRS: [(u32, u32); 6] = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];
        for (bit, (a, b)) in PAIRS.iter().enumerate() {
            if setup.links & (1 << bit) != 0 && (*b as usize) < n {
                world.link(*a, *b);
            }
        }
        let mm = SimMm::new(&world);
        let mut gpus = Vec::new();
        let mut vram = Vec::new();
        for (id, size) in setup.vram.iter().enumerate().take(n) {
            let pages = size.pages();
            let mut cfg = SvmConfig::new(0, 1 << 47);
            cfg.prefer_devmem = pages > 0;
            cfg.atomic_timeslice_ns = match setup.timeslice {
                Timeslice::Zero => 0,
                Timeslice::Short => 1_000_000,
                Timeslice::Default => 5_000_000,
            };
            cfg.can_migrate_same_pagemap = setup.can_migrate_same_pagemap;
            cfg.source_peer_migrates = setup.source_peer_migrates;
            cfg.policy.atomics_on_sysmem = setup.links & ATOMICS_ON_SYSMEM != 0;
            let g = SimGpu::join_with(&mm, id as u32, pages, cfg)
                .map_err(|e| format!("setup: device {id}: {e}"))?;
            gpus.push(g);
            vram.push(pages);
        }
        let mut m = Machine {
            world,
            mm,
            gpus,
            vram,
            details: MigrateDetails {
                timeslice_ns: 0,
                can_migrate_same_pagemap: setup.can_migrate_same_pagemap,
                source_peer_migrates: setup.source_peer_migrates,
            },
            child: None,
            mapped: BTreeMap::new(),
            data: BTreeMap::new(),
            step: 0,
            sum: Summary::default(),
            attrs_touched: false,
        };
        for (slot, p) in setup.premap.iter().enumerate() {
            let (prot, huge) = match p {
                Premap::None => continue,
                Premap::ReadWrite => (Prot::ReadWrite, false),
                Premap::Huge => (Prot::ReadWrite, true),
                Premap::ReadOnly => (Prot::ReadOnly, false),
            };
            m.apply(&Op::Mmap {
                span: Span::Slot { slot: slot as u8 },
                prot,
                huge,
            })?;
        }
        m.check()?;
        Ok(m)
    }

    fn gpu(&self, dev: u8) -> &SimGpu {
        &self.gpus[usize::from(dev) % self.gpus.len()]
    }

    fn prot(&self, addr: u64) -> Option<bool> {
        self.mapped.get(&(addr >> PAGE_SHIFT)).copied()
    }

    fn expect(&self, addr: u64) -> u64 {
        self.data.get(&addr).copied().unwrap_or(0)
    }

    fn value(&self, low: u16) -> u64 {
        ((self.step as u64 + 1) << 16) | u64::from(low)
    }

    fn pending(&self) -> Pending {
        self.gpus
            .iter()
            .map(|g| g.dev.pending_injections())
            .collect()
    }

    /// How many armed injections fired since `before`.
    fn fired(&self, before: &Pending) -> usize {
        let fired = |b: u64, a: u64| usize::from(b > 0 && a == 0);
        before
            .iter()
            .zip(self.pending())
            .map(|(b, a)| fired(b.0, a.0) + fired(b.1, a.1) + fired(b.2, a.2))
            .sum()
    }

    /// Whether the device's existing range at `addr` also covers read-only pages.
    fn straddles_read_only(&self, g: &SimGpu, addr: u64) -> bool {
        match g.svm.find(addr) {
            Some(r) if !r.flags().contains(RangeFlags::UNMAPPED) => (r.start() >> PAGE_SHIFT
                ..r.end() >> PAGE_SHIFT)
                .any(|v| self.mapped.get(&v) == Some(&false)),
            _ => false,
        }
    }

    /// Whether a device atomic on `g` must get device memory.
    fn atomic_must_succeed(&self, dev: u8, fired: usize) -> bool {
        let i = usize::from(dev) % self.gpus.len();
        fired == 0
            && !self.attrs_touched
            && self.child.is_none()
            && self.vram.get(i).copied().unwrap_or(0) >= u64::from(SLOTS) * SLOT_SIZE / PAGE_SIZE
    }

    fn check(&self) -> Result<(), String> {
        let refs: Vec<&SimGpu> = self.gpus.iter().collect();
        check_invariants(&self.mm, &refs)?;
        for (vpn, p) in self.mm.ptes() {
            if p.migrating || p.placeholder {
                return err(format!(
                    "CPU PTE {:#x} left isolated: {p:?}",
                    vpn << PAGE_SHIFT
                ));
            }
        }
        for g in &self.gpus {
            if let Some(pm) = g.svm.pagemap() {
                let (allocs, releases) = g.dev.vram_counts();
                if allocs != releases + pm.live_allocations() as u64 {
                    return err(format!(
                        "dev {}: {allocs} allocations, {releases} released, {} live",
                        g.dev.id(),
                        pm.live_allocations()
                    ));
                }
                if pm.stray_frees() != 0 {
                    return err(format!(
                        "dev {}: {} stray page frees",
                        g.dev.id(),
                        pm.stray_frees()
                    ));
                }
            }
        }
        // The VMAs, as runs of pages with the same protection, against the model's pages.
        let mut model = self.mapped.iter();
        let mut count = 0usize;
        for v in self.mm.vmas() {
            let w = v.flags.contains(VmaFlags::WRITE);
            for vpn in v.start >> PAGE_SHIFT..v.end >> PAGE_SHIFT {
                count += 1;
                if model.next() != Some((&vpn, &w)) {
                    return err(format!(
                        "the VMAs differ from the model at {:#x}",
                        vpn << PAGE_SHIFT
                    ));
                }
            }
        }
        if count != self.mapped.len() {
            return err(String::from("the model maps pages no VMA covers"));
        }
        Ok(())
    }

    /// Judge a read: `Ok(v)` must match the model; errors as the model allows.
    fn judge_read(
        &mut self,
        what: &str,
        addr: u64,
        got: Result<u64, Error>,
        fired: usize,
    ) -> Result<(), String> {
        let want = self.expect(addr);
        match (self.prot(addr), got) {
            (Some(_), Ok(v)) if v == want => Ok(()),
            (Some(_), Ok(v)) => err(format!(
                "{what} at {addr:#x} read {v:#x}, the model says {want:#x} (data lost)"
            )),
            (None, Err(Error::Fault)) => {
                self.sum.expected_errors += 1;
                Ok(())
            }
            (_, Err(_)) if fired > 0 => {
                self.sum.injected_errors += 1;
                Ok(())
            }
            (p, r) => err(format!(
                "{what} at {addr:#x} (mapped: {p:?}) returned {r:?}"
            )),
        }
    }

    /// Judge a write-like call: `Ok` iff writable; `Perm` on read-only, `Fault` on unmapped.
    /// Returns whether the write happened.
    fn judge_write(
        &mut self,
        what: &str,
        addr: u64,
        got: Result<(), Error>,
        fired: usize,
        also_allowed: &[Error],
    ) -> Result<bool, String> {
        match (self.prot(addr), got) {
            (Some(true), Ok(())) => Ok(true),
            (Some(false), Err(Error::Perm)) | (None, Err(Error::Fault)) => {
                self.sum.expected_errors += 1;
                Ok(false)
            }
            (Some(true), Err(e)) if also_allowed.contains(&e) => {
                self.sum.expected_errors += 1;
                Ok(false)
            }
            (_, Err(_)) if fired > 0 => {
                self.sum.injected_errors += 1;
                Ok(false)
            }
            (p, r) => err(format!(
                "{what} at {addr:#x} (mapped: {p:?}) returned {r:?}"
            )),
        }
    }

    fn cpu_read(&mut self, addr: u64) -> Result<(), String> {
        let before = self.pending();
        let got = self.mm.read_u64(addr);
        let fired = self.fired(&before);
        self.judge_read("CPU read", addr, got, fired)
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let before = self.pending();
        match *op {
            Op::CpuRead { loc } => self.cpu_read(loc.addr())?,
            Op::CpuWrite { loc, value } => {
                let (addr, v) = (loc.addr(), self.value(value));
                let got = self.mm.write_u64(addr, v);
                let fired = self.fired(&before);
                if self.judge_write("CPU write", addr, got, fired, &[])? {
                    self.data.insert(addr, v);
                }
            }
            Op::DevRead { dev, loc } => {
                let addr = loc.addr();
                let got = self.gpu(dev).read_u64(addr);
                let fired = self.fired(&before);
                self.judge_read("device read", addr, got, fired)?;
            }
            Op::DevWrite { dev, loc, value } => {
                let (addr, v) = (loc.addr(), self.value(value));
                let straddle = self.straddles_read_only(self.gpu(dev), addr);
                let got = self.gpu(dev).write_u64(addr, v);
                let fired = self.fired(&before);
                if straddle && got.is_ok() {
                    self.sum.straddles_rebuilt += 1;
                }
                if self.judge_write("device write", addr, got, fired, &[])? {
                    self.data.insert(addr, v);
                }
            }
            Op::DevAtomic { dev, loc, add } => {
                let addr = loc.addr();
                let add = u64::from(add) + 1;
                let straddle = self.straddles_read_only(self.gpu(dev), addr);
                let got = self.gpu(dev).atomic_add(addr, add);
                let fired = self.fired(&before);
                let want = self.expect(addr);
                let forbidden = self.gpu(dev).svm.attrs_at(addr).atomic == AtomicPolicy::Cpu;
                let must = !forbidden && self.atomic_must_succeed(dev, fired);
                let mut allowed = Vec::new();
                if forbidden {
                    // The policy refuses device atomics: nothing else may happen.
                    allowed.push(Error::Access);
                    if got.is_ok() {
                        return err(format!(
                            "device atomic at {addr:#x} succeeded under the cpu atomic policy"
                        ));
                    }
                    if got == Err(Error::Access) {
                        self.sum.atomics_forbidden += 1;
                    }
                } else if !must {
                    allowed.push(Error::Fault);
                }
                match got {
                    Ok(old) if old != want => {
                        return err(format!(
                            "device atomic at {addr:#x} saw {old:#x}, the model says {want:#x}"
                        ))
                    }
                    Ok(_) => {
                        self.sum.atomics_ok += 1;
                        self.sum.straddles_rebuilt += usize::from(straddle);
                    }
                    Err(Error::Fault) if self.prot(addr) == Some(true) && !must => {
                        self.sum.atomics_refused += 1;
                    }
                    Err(_) => {}
                }
                let wrote =
                    self.judge_write("device atomic", addr, got.map(|_| ()), fired, &allowed)?;
                if wrote {
                    self.data.insert(addr, want.wrapping_add(add));
                }
            }
            Op::Mmap { span, prot, huge } => {
                let (s, e) = span.bounds();
                let overlap = self
                    .mapped
                    .range(s >> PAGE_SHIFT..e >> PAGE_SHIFT)
                    .next()
                    .is_some();
                let got = self.mm.mmap_fixed(s, e - s, prot.flags(), huge);
                match (overlap, got) {
                    (false, Ok(a)) if a == s => {
                        for vpn in s >> PAGE_SHIFT..e >> PAGE_SHIFT {
                            self.mapped.insert(vpn, prot.writable());
                        }
                    }
                    (true, Err(Error::Invalid)) => self.sum.expected_errors += 1,
                    (o, r) => {
                        return err(format!(
                            "mmap [{s:#x}, {e:#x}) (overlap: {o}) returned {r:?}"
                        ))
                    }
                }
            }
            Op::Munmap { span } => {
                let (s, e) = span.bounds();
                self.mm
                    .munmap(s, e - s)
                    .map_err(|e2| format!("munmap [{s:#x}, {e:#x}): {e2:?}"))?;
                self.forget(s, e, true);
            }
            Op::Mprotect { span, prot } => {
                let (s, e) = span.bounds();
                let all = (s >> PAGE_SHIFT..e >> PAGE_SHIFT).all(|v| self.mapped.contains_key(&v));
                match (all, self.mm.mprotect(s, e - s, prot.flags())) {
                    (true, Ok(())) => {
                        for vpn in s >> PAGE_SHIFT..e >> PAGE_SHIFT {
                            self.mapped.insert(vpn, prot.writable());
                        }
                    }
                    (false, Err(Error::NoMem)) => self.sum.expected_errors += 1,
                    (a, r) => {
                        return err(format!(
                            "mprotect [{s:#x}, {e:#x}) (all mapped: {a}) returned {r:?}"
                        ))
                    }
                }
            }
            Op::MadviseDontneed { span } => {
                let (s, e) = span.bounds();
                self.mm
                    .madvise_dontneed(s, e - s)
                    .map_err(|e2| format!("madvise [{s:#x}, {e:#x}): {e2:?}"))?;
                self.forget(s, e, false);
            }
            Op::Migrate { dev, loc } => {
                let g = self.gpu(dev);
                if let Some(r) = g.svm.find(loc.addr()) {
                    let got = g.svm.migrate_to_devmem(&r, &self.details);
                    let fired = self.fired(&before);
                    match got {
                        Ok(_) => {}
                        Err(Error::Busy | Error::NoMem | Error::Again | Error::NotSupported) => {
                            self.sum.migrations_refused += 1
                        }
                        Err(_) if fired > 0 => self.sum.injected_errors += 1,
                        Err(e) => {
                            return err(format!(
                                "migrate [{:#x}, {:#x}) to device {}: {e:?}",
                                r.start(),
                                r.end(),
                                g.dev.id()
                            ))
                        }
                    }
                }
            }
            Op::Evict { dev, loc } => {
                let g = self.gpu(dev);
                if let Some(r) = g.svm.find(loc.addr()) {
                    let got = g.svm.evict(&r);
                    let fired = self.fired(&before);
                    match got {
                        Ok(_) => {}
                        Err(_) if fired > 0 => self.sum.injected_errors += 1,
                        Err(e) => {
                            return err(format!(
                                "evict [{:#x}, {:#x}) of device {}: {e:?}",
                                r.start(),
                                r.end(),
                                g.dev.id()
                            ))
                        }
                    }
                }
            }
            Op::GcRun { dev } => {
                self.gpu(dev).svm.gc_run();
            }
            Op::InjectCopyFail {
                dev,
                nth,
                after_runs,
            } => {
                self.gpu(dev)
                    .dev
                    .inject_copy_fail_at(u64::from(nth % 4) + 1, usize::from(after_runs % 4));
            }
            Op::InjectDmaFail { dev, nth } => {
                self.gpu(dev).dev.inject_dma_fail_at(u64::from(nth % 8) + 1);
            }
            Op::InjectAllocFail { dev, nth } => {
                self.gpu(dev)
                    .dev
                    .inject_alloc_fail_at(u64::from(nth % 4) + 1);
            }
            Op::Fork => {
                if self.child.is_none() {
                    self.child = Some(self.mm.fork());
                }
            }
            Op::ChildExit => {
                if let Some(c) = self.child.take() {
                    c.munmap(ARENA, ARENA_END - ARENA)
                        .map_err(|e| format!("child munmap: {e:?}"))?;
                }
            }
            Op::Advance { ms } => self.world.advance(u64::from(ms) * 1_000_000),
            Op::CpuSweep => {
                let words: Vec<u64> = self.data.keys().copied().collect();
                for a in words {
                    self.cpu_read(a)?;
                }
            }
            Op::SetAttrs {
                dev,
                span,
                preferred,
                atomic,
                system_pages_only,
            } => {
                let (s, e) = span.bounds();
                let g = self.gpu(dev);
                let (pref, expect) = match preferred % (2 + MAX_DEVICES as u8) {
                    0 => (PreferredLoc::DeviceDefault, Ok(())),
                    1 => (PreferredLoc::System, Ok(())),
                    i => {
                        let id = PagemapId(u32::from(i - 2));
                        // The model: an attached pagemap of the device's owner is accepted;
                        // another owner's is NoLink; one that does not exist is Invalid.
                        let expect = match g.svm.pagemap_by_id(id) {
                            None => Err(Error::Invalid),
                            Some(pm) if Some(pm.owner()) == g.svm.owner() => Ok(()),
                            Some(_) => Err(Error::NoLink),
                        };
                        (PreferredLoc::Pagemap(id), expect)
                    }
                };
                let update = AttrUpdate {
                    preferred: Some(pref),
                    migration: Some(if system_pages_only {
                        MigrationPolicy::SystemPagesOnly
                    } else {
                        MigrationPolicy::AllPages
                    }),
                    atomic: Some(match atomic % 4 {
                        0 => AtomicPolicy::Undefined,
                        1 => AtomicPolicy::Device,
                        2 => AtomicPolicy::Global,
                        _ => AtomicPolicy::Cpu,
                    }),
                };
                let got = g.svm.set_attrs(s, e - s, &update);
                let fired = self.fired(&before);
                match (expect, got) {
                    (Ok(()), Ok(())) => {
                        self.sum.attrs_set += 1;
                        self.attrs_touched = true;
                    }
                    (Err(x), Err(y)) if x == y => self.sum.attrs_refused += 1,
                    (_, Err(_)) if fired > 0 => self.sum.injected_errors += 1,
                    (x, y) => {
                        return err(format!(
                            "set_attrs [{s:#x}, {e:#x}) {update:?} on device {}: expected {x:?}, got {y:?}",
                            g.dev.id()
                        ))
                    }
                }
            }
            Op::Prefetch { dev, span, to } => {
                let (s, e) = span.bounds();
                let g = self.gpu(dev);
                let loc = match to % (2 + MAX_DEVICES as u8) {
                    0 => PrefetchLoc::System,
                    1 => PrefetchLoc::Device,
                    i => PrefetchLoc::Pagemap(PagemapId(u32::from(i - 2))),
                };
                // Any outcome is allowed (a hole is `Fault`, no room is `NoMem`/`Busy`, a
                // foreign or missing pagemap `NoLink`/`Invalid`); what must hold is checked
                // after the step: the invariants and every word of the model.
                match g.svm.prefetch(s, e - s, loc) {
                    Ok(()) => self.sum.prefetches_ok += 1,
                    Err(_) => self.sum.prefetches_failed += 1,
                }
            }
        }
        self.sum.injections_fired += self.fired(&before);
        Ok(())
    }

    /// The model after `[s, e)` lost its pages (`unmap`: and its VMAs).
    fn forget(&mut self, s: u64, e: u64, unmap: bool) {
        self.data.retain(|a, _| !(s <= *a && *a < e));
        if unmap {
            let vpns: Vec<u64> = self
                .mapped
                .range(s >> PAGE_SHIFT..e >> PAGE_SHIFT)
                .map(|(v, _)| *v)
                .collect();
            for v in vpns {
                self.mapped.remove(&v);
            }
        }
    }

    /// Close every device, read everything back, unmap the arena, and check nothing is left.
    fn finish(&mut self) -> Result<(), String> {
        for g in &self.gpus {
            g.dev.inject_copy_fail_at(0, 0);
            g.dev.inject_dma_fail_at(0);
            g.dev.inject_alloc_fail_at(0);
        }
        for g in &self.gpus {
            g.svm.close();
            check_closed(g).map_err(|e| format!("dev {} after close: {e}", g.dev.id()))?;
        }
        self.check()?;
        for (&a, &v) in &self.data {
            let got = self.mm.read_u64(a);
            if got != Ok(v) {
                return err(format!(
                    "after close: CPU read at {a:#x} returned {got:?}, the model says {v:#x}"
                ));
            }
        }
        self.check()?;
        if let Some(c) = self.child.take() {
            c.munmap(ARENA, ARENA_END - ARENA)
                .map_err(|e| format!("child munmap: {e:?}"))?;
        }
        self.mm
            .munmap(ARENA, ARENA_END - ARENA)
            .map_err(|e| format!("final munmap: {e:?}"))?;
        self.forget(ARENA, ARENA_END, true);
        self.check()?;
        for g in &self.gpus {
            let id = g.dev.id();
            if let Some(pm) = g.svm.pagemap() {
                if pm.live_allocations() != 0 {
                    return err(format!(
                        "dev {id}: {} allocations live after munmap",
                        pm.live_allocations()
                    ));
                }
            }
            if !g.dev.vram_used().is_empty() {
                return err(format!("dev {id}: device memory in use after munmap"));
            }
            let (allocs, releases) = g.dev.vram_counts();
            if allocs != releases {
                return err(format!(
                    "dev {id}: {allocs} allocations, {releases} released"
                ));
            }
            check_closed(g).map_err(|e| format!("dev {id} at the end: {e}"))?;
            let s = g.svm.stats();
            self.sum.migrations_to_devmem += s.migrations_to_devmem;
            self.sum.migrations_to_ram += s.migrations_to_ram;
            self.sum.evictions += s.evictions;
            self.sum.migrate_failures += s.migrate_failures;
            self.sum.gc_ranges += s.gc_ranges;
        }
        if self.world.live_frames() != 0 {
            return err(format!(
                "{} system frames left after everything was unmapped",
                self.world.live_frames()
            ));
        }
        Ok(())
    }
}

/// Run `ops` (at most [`MAX_OPS`]) on a machine built from `setup`, checking after every step,
/// then close and tear down. Returns the first divergence.
pub fn run(setup: Setup, ops: &[Op]) -> Result<(), String> {
    run_summary(setup, ops).map(|_| ())
}

/// [`run`], returning what the run did.
pub fn run_summary(setup: Setup, ops: &[Op]) -> Result<Summary, String> {
    let mut m = Machine::new(&setup)?;
    for (i, op) in ops.iter().take(MAX_OPS).enumerate() {
        m.step = i;
        m.apply(op)
            .and_then(|()| m.check())
            .map_err(|e| format!("step {i} {op:?}: {e}"))?;
        m.sum.steps += 1;
    }
    m.finish().map_err(|e| format!("at the end: {e}"))?;
    Ok(m.sum)
}
