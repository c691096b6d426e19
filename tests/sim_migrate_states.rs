//! The migration state machine (SPEC §7), driven directly on the simulator: every test calls
//! [`gpusvm::migrate::to_devmem_traced`] or [`gpusvm::migrate::to_ram_traced`] with the simulated
//! address space (`gpu.svm.platform().mm()`) and the device's pagemap (`gpu.svm.pagemap()`),
//! and asserts the exact sequence of states and the result.
//!
//! After every call, successful or not, the same cleanliness check runs ([`Env::after`]): the
//! invariant checker passes; no CPU PTE is left isolated (`migrating`) or as an absent-page
//! placeholder; device memory in use is exactly what the live allocations hold and, after a
//! failure, exactly what it was before; the DMA mappings are exactly the ones from before; no
//! system frame leaked; and every word of the data model reads back unchanged from wherever it
//! now lives (device memory or RAM) — docs/DESIGN.md invariants 4 and 5, and 8 ("a failed call
//! leaves the state as it was").
//!
//! Every edge of `to_devmem` is reached:
//!
//! | path | states | test |
//! | --- | --- | --- |
//! | success | Isolate → Allocate → MapSources → Copy → Install → Done | `success_and_back` |
//! | already there | Isolate → Restore → Done (`already_there`, no copy) | `already_there` |
//! | bad interval | (none: refused before Isolate, nothing isolated, no invalidation) | `bad_interval_is_invalid` |
//! | Isolate error from the platform | Isolate → Done | `isolate_error_isolates_nothing` |
//! | Busy: page outside any VMA | Isolate → Restore → Done | `busy_hole_outside_vma` |
//! | Busy: COW-shared page after fork | Isolate → Restore → Done | `busy_cow_after_fork` |
//! | Busy: partly in the target, no `can_migrate_same_pagemap` | Isolate → Restore → Done | `partial_residency` |
//! | partly in the target with `can_migrate_same_pagemap` | full success path | `partial_residency` |
//! | Allocate → NoMem (injected; and device memory full) | Isolate → Allocate → Restore → Done | `allocate_nomem` |
//! | MapSources → DMA error half way | Isolate → Allocate → MapSources → Restore → Done | `map_sources_dma_error` |
//! | Copy → copy error after k runs | Isolate → Allocate → MapSources → Copy → Restore → Done | `copy_error_partial` |
//! | Install → error (platform hands out a bad allocation) | … → Copy → Install → Restore → Done | `install_error_releases_the_allocation` |
//!
//! and of `to_ram` (through [`gpusvm::migrate::to_ram_traced`]; every call checks that the
//! states start at Isolate, end at Done, and reach Install exactly when pages moved):
//!
//! | path | states | test |
//! | --- | --- | --- |
//! | success | Isolate → Allocate → MapDests → Copy → Install → Done | `success_and_back` |
//! | nothing to do | Isolate → Restore → Done | `to_ram_nothing_to_do` |
//! | bad interval | (none) | `bad_interval_is_invalid` |
//! | Isolate error from the platform | Isolate → Done | `isolate_error_isolates_nothing` |
//! | Allocate → NoMem (system memory) | Isolate → Allocate → Restore → Done | `to_ram_system_memory_exhausted` |
//! | MapDests → DMA error | Isolate → Allocate → MapDests → Restore → Done | `to_ram_dma_error` |
//! | Copy → copy error | Isolate → Allocate → MapDests → Copy → Restore → Done | `to_ram_copy_error` |
#![cfg(feature = "sim")]

use gpusvm::migrate::{
    to_devmem_traced, to_ram_traced, MigrateDetails, MigrateReport, ToDevmemState, ToRamState as R,
};
use gpusvm::pagemap::Pagemap;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyRun, CpuPage, DeviceMemory, MigrateDst,
    MigrateRequest, MigrateSrc, NotifierId, OwnerId, PagemapId, Platform, Vma, VmaFlags,
};
use gpusvm::sim::{check_invariants, DmaMapping, SimDevice, SimDevmem, SimGpu, SimMm, SimWorld};
use gpusvm::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ToDevmemState::{Allocate, Copy, Done, Install, Isolate, MapSources, Restore};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const PAGE: u64 = 4096;
const SZ_64K: u64 = 64 << 10;

const SUCCESS: [ToDevmemState; 6] = [Isolate, Allocate, MapSources, Copy, Install, Done];
const RAM_SUCCESS: [R; 6] = [
    R::Isolate,
    R::Allocate,
    R::MapDests,
    R::Copy,
    R::Install,
    R::Done,
];

/// What must not change across a failed migration.
#[derive(Debug, PartialEq)]
struct Snap {
    dma: Vec<(u64, DmaMapping)>,
    vram: Vec<u64>,
    frames: usize,
    live_allocs: usize,
}

struct Env {
    world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    gpu: SimGpu,
    model: BTreeMap<u64, u64>,
}

impl Env {
    fn new(vram_pages: u64) -> Env {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::with_devmem(&mm, 0, vram_pages, 1).unwrap();
        Env {
            world,
            mm,
            gpu,
            model: BTreeMap::new(),
        }
    }

    fn pm(&self) -> gpusvm::sim::SimPagemapArc {
        self.gpu.svm.pagemap().unwrap()
    }

    fn write(&mut self, addr: u64, v: u64) {
        self.mm.write_u64(addr, v).unwrap();
        self.model.insert(addr, v);
    }

    fn snap(&self) -> Snap {
        Snap {
            dma: self.gpu.dev.dma_mappings(),
            vram: self.gpu.dev.vram_used(),
            frames: self.world.live_frames(),
            live_allocs: self.pm().live_allocations(),
        }
    }

    /// Migrate `[start, end)` into the device's pagemap, recording the states.
    fn to_devmem(
        &self,
        start: u64,
        end: u64,
        details: &MigrateDetails,
    ) -> (Result<MigrateReport>, Vec<ToDevmemState>) {
        let pm = self.pm();
        to_devmem_with(self.gpu.svm.platform().mm(), &pm, start, end, details)
    }

    fn to_ram(&self, start: u64, end: u64) -> Result<MigrateReport> {
        let (r, states) = self.to_ram_states(start, end);
        // Whatever the outcome, the machine starts at Isolate and ends at Done; Install is
        // reached exactly when pages moved.
        if !states.is_empty() {
            assert_eq!(states.first(), Some(&R::Isolate), "{states:?}");
            assert_eq!(states.last(), Some(&R::Done), "{states:?}");
            let moved = r.as_ref().is_ok_and(|rep| rep.pages > 0);
            assert_eq!(states.contains(&R::Install), moved, "{states:?}");
        }
        r
    }

    /// Migrate `[start, end)` of the device's pagemap back to RAM, recording the states.
    fn to_ram_states(&self, start: u64, end: u64) -> (Result<MigrateReport>, Vec<R>) {
        to_ram_with(self.gpu.svm.platform().mm(), &self.pm(), start, end)
    }

    /// The value of the word at `addr` wherever it lives, without moving it.
    fn peek(&self, addr: u64) -> u64 {
        let Some(p) = self.mm.pte(addr) else {
            return 0;
        };
        assert!(!p.migrating, "{addr:#x} left isolated");
        if p.dev.is_some() {
            self.gpu
                .dev
                .vram_read_u64(p.pfn, (addr % PAGE) as usize)
                .unwrap()
        } else {
            let mut b = [0u8; 8];
            // Reading a system page through the CPU does not move it.
            self.mm.cpu_read(addr, &mut b).unwrap();
            u64::from_le_bytes(b)
        }
    }

    fn on_device(&self, addr: u64) -> bool {
        self.mm.pte(addr).is_some_and(|p| p.dev.is_some())
    }

    /// The checks after every state-machine call (see the module docs).
    #[track_caller]
    fn after(&self, before: Option<&Snap>) {
        check_invariants(&self.mm, &[&self.gpu]).unwrap();
        for (vpn, p) in self.mm.ptes() {
            assert!(
                !p.migrating && !p.placeholder,
                "PTE {:#x} left isolated: {p:?}",
                vpn * PAGE
            );
        }
        let pm = self.pm();
        let mut held: Vec<u64> = pm
            .allocations()
            .unwrap()
            .iter()
            .flat_map(|a| a.dpfns().to_vec())
            .collect();
        held.sort_unstable();
        assert_eq!(
            self.gpu.dev.vram_used(),
            held,
            "device memory = live allocations"
        );
        let (allocs, releases) = self.gpu.dev.vram_counts();
        assert_eq!(allocs - releases, pm.live_allocations() as u64);
        assert_eq!(pm.stray_frees(), 0);
        assert!(self.gpu.dev.vram_violations().is_empty());
        assert!(self.gpu.dev.dma_violations().is_empty());
        if let Some(b) = before {
            assert_eq!(&self.snap(), b, "a failed migration changed the state");
        }
        for (&a, &v) in &self.model {
            assert_eq!(self.peek(a), v, "word at {a:#x}");
        }
    }
}

fn to_devmem_with<A: AddressSpace, M: DeviceMemory>(
    mm: &A,
    pm: &Pagemap<M, gpusvm::sim::SimHost>,
    start: u64,
    end: u64,
    details: &MigrateDetails,
) -> (Result<MigrateReport>, Vec<ToDevmemState>) {
    let mut states = Vec::new();
    let mut rec = |s: ToDevmemState| states.push(s);
    let r = to_devmem_traced(mm, pm, &|_| None, start, end, details, Some(&mut rec));
    (r, states)
}

fn to_ram_with<A: AddressSpace, M: DeviceMemory>(
    mm: &A,
    pm: &Pagemap<M, gpusvm::sim::SimHost>,
    start: u64,
    end: u64,
) -> (Result<MigrateReport>, Vec<R>) {
    let mut states = Vec::new();
    let mut rec = |s: R| states.push(s);
    let r = to_ram_traced(mm, pm, start, end, Some(&mut rec));
    (r, states)
}

#[test]
fn success_and_back() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    for i in 0..8u64 {
        env.write(a + i * 2 * PAGE + 8, 0x100 + i);
    }
    let before = env.snap();
    let (r, states) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    let rep = r.unwrap();
    assert_eq!(states, SUCCESS);
    assert_eq!(rep.pages, 16);
    assert!(!rep.already_there);
    assert_eq!(rep.bytes, SZ_64K);
    assert!(rep.copy_runs >= 2, "RAM and zero-fill runs: {rep:?}");
    assert!(env.on_device(a) && env.on_device(a + SZ_64K - PAGE));
    assert!(!env.on_device(a + SZ_64K));
    assert_eq!(env.pm().live_allocations(), 1);
    assert_eq!(env.gpu.dev.dma_mappings(), before.dma, "sources unmapped");
    env.after(None);
    // Untouched pages were zero-filled.
    assert_eq!(env.peek(a + PAGE), 0);

    let (r, states) = env.to_ram_states(a, a + SZ_64K);
    let rep = r.unwrap();
    assert_eq!(states, RAM_SUCCESS);
    assert_eq!(rep.pages, 16);
    assert_eq!(rep.busy, 0);
    assert!(!env.on_device(a));
    assert_eq!(env.pm().live_allocations(), 0);
    assert_eq!(env.pm().released_allocations(), 1);
    assert!(env.gpu.dev.vram_used().is_empty());
    assert_eq!(
        env.gpu.dev.dma_mappings(),
        before.dma,
        "destinations unmapped"
    );
    env.after(None);
}

#[test]
fn already_there() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.write(a + 8, 5);
    let (r, _) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    r.unwrap();
    let before = env.snap();
    let copies = env.gpu.dev.copy_counts();
    let frame = env.mm.pte(a).unwrap().pfn;
    let (r, states) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    let rep = r.unwrap();
    assert_eq!(states, [Isolate, Restore, Done]);
    assert!(rep.already_there);
    assert_eq!((rep.pages, rep.copy_runs, rep.bytes), (0, 0, 0));
    assert_eq!(env.gpu.dev.copy_counts(), copies, "nothing copied");
    assert_eq!(env.mm.pte(a).unwrap().pfn, frame, "same frames");
    env.after(Some(&before));
    // A sub-interval too.
    let (r, states) = env.to_devmem(a + PAGE, a + 3 * PAGE, &MigrateDetails::default());
    assert!(r.unwrap().already_there);
    assert_eq!(states, [Isolate, Restore, Done]);
    env.after(Some(&before));
}

#[test]
fn bad_interval_is_invalid() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.write(a, 1);
    // Register the notifier so that an isolation would show as an invalidation.
    env.gpu.read_u64(a).unwrap();
    let before = env.snap();
    let inval = env.gpu.svm.stats().invalidations;
    for (s, e) in [
        (a, a),
        (a + PAGE, a),
        (a + 1, a + PAGE),
        (a, a + PAGE + 8),
        (!(PAGE - 1), 0),
    ] {
        let (r, states) = env.to_devmem(s, e, &MigrateDetails::default());
        assert_eq!(r, Err(Error::Invalid), "[{s:#x}, {e:#x})");
        assert!(states.is_empty(), "refused before Isolate: {states:?}");
        assert_eq!(env.to_ram(s, e), Err(Error::Invalid));
        env.after(Some(&before));
    }
    assert_eq!(
        env.gpu.svm.stats().invalidations,
        inval,
        "nothing was isolated"
    );
}

/// An address space whose `migrate_isolate` fails (a platform refusing the request).
struct FailIsolate<'a, A>(&'a A, Error);

impl<A: AddressSpace> AddressSpace for FailIsolate<'_, A> {
    type NotifierHandle = A::NotifierHandle;
    fn find_vma(&self, addr: u64) -> Option<Vma> {
        self.0.find_vma(addr)
    }
    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        self.0.collect_pages(req, out)
    }
    fn register_notifier(&self, id: NotifierId, s: u64, e: u64) -> Result<A::NotifierHandle> {
        self.0.register_notifier(id, s, e)
    }
    fn unregister_notifier(&self, h: A::NotifierHandle) {
        self.0.unregister_notifier(h)
    }
    fn migrate_isolate(&self, _req: &MigrateRequest, _src: &mut [MigrateSrc]) -> Result<()> {
        Err(self.1)
    }
    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        // Nothing was isolated: the machine must not finalize anything.
        assert!(
            src.iter().all(|s| !s.isolated()),
            "finalize after a failed isolate"
        );
        self.0.migrate_finalize(req, src, dst)
    }
    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        self.0.alloc_system_pages(out)
    }
    fn free_system_pages(&self, pfns: &[u64]) {
        self.0.free_system_pages(pfns)
    }
}

#[test]
fn isolate_error_isolates_nothing() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.write(a + 16, 3);
    let before = env.snap();
    let copies = env.gpu.dev.copy_counts();
    for e in [Error::Invalid, Error::NoMem, Error::Again] {
        let mm = FailIsolate(env.gpu.svm.platform().mm(), e);
        let (r, states) = to_devmem_with(&mm, &env.pm(), a, a + SZ_64K, &MigrateDetails::default());
        assert_eq!(r, Err(e));
        assert_eq!(states, [Isolate, Done]);
        env.after(Some(&before));
        assert_eq!(env.gpu.dev.copy_counts(), copies);
        assert_eq!(env.gpu.dev.vram_counts(), (0, 0), "nothing allocated");
    }
    // to_ram through the same platform: the error comes back, nothing moves.
    let (r, _) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    r.unwrap();
    let before = env.snap();
    let mm = FailIsolate(env.gpu.svm.platform().mm(), Error::Invalid);
    let (r, states) = to_ram_with(&mm, &env.pm(), a, a + SZ_64K);
    assert_eq!(r, Err(Error::Invalid));
    assert_eq!(states, [R::Isolate, R::Done]);
    env.after(Some(&before));
    assert!(env.on_device(a));
}

#[test]
fn busy_hole_outside_vma() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(SZ_64K, RW, false).unwrap();
    let b = env.mm.mmap(SZ_64K, RW, false).unwrap();
    assert!(b > a + SZ_64K, "a hole between the VMAs");
    env.write(a + SZ_64K - 8, 11);
    env.write(b, 12);
    let before = env.snap();
    // Half of the interval lies in the VMA, the rest in the hole.
    let (r, states) = env.to_devmem(
        a + SZ_64K / 2,
        a + SZ_64K + 4 * PAGE,
        &MigrateDetails::default(),
    );
    assert_eq!(r, Err(Error::Busy));
    assert_eq!(states, [Isolate, Restore, Done]);
    env.after(Some(&before));
    // Entirely in the hole: nothing to migrate is still not "already there".
    let (r, states) = env.to_devmem(
        a + SZ_64K,
        a + SZ_64K + 4 * PAGE,
        &MigrateDetails::default(),
    );
    assert_eq!(r, Err(Error::Busy));
    assert_eq!(states, [Isolate, Restore, Done]);
    env.after(Some(&before));
    assert_eq!(env.gpu.dev.vram_counts(), (0, 0));
}

#[test]
fn busy_cow_after_fork() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    for i in 0..4u64 {
        env.write(a + i * PAGE, 20 + i);
    }
    let child = env.mm.fork();
    let before = env.snap();
    let (r, states) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    assert_eq!(r, Err(Error::Busy));
    assert_eq!(states, [Isolate, Restore, Done]);
    env.after(Some(&before));
    assert!(env.mm.pte(a).unwrap().cow, "still shared copy-on-write");
    assert_eq!(child.read_u64(a + PAGE).unwrap(), 21);
    // Once the parent broke the sharing, the page migrates.
    env.write(a, 99);
    env.write(a + PAGE, 98);
    env.write(a + 2 * PAGE, 97);
    env.write(a + 3 * PAGE, 96);
    let (r, states) = env.to_devmem(a, a + 4 * PAGE, &MigrateDetails::default());
    r.unwrap();
    assert_eq!(states, SUCCESS);
    env.after(None);
    assert_eq!(child.read_u64(a).unwrap(), 20, "the child kept its copy");
}

#[test]
fn partial_residency() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    for i in 0..32u64 {
        env.write(a + i * PAGE + 24, 0x500 + i);
    }
    let (r, _) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    r.unwrap();
    let before = env.snap();
    let (r, states) = env.to_devmem(a, a + 2 * SZ_64K, &MigrateDetails::default());
    assert_eq!(r, Err(Error::Busy));
    assert_eq!(states, [Isolate, Restore, Done]);
    env.after(Some(&before));
    assert!(env.on_device(a) && !env.on_device(a + SZ_64K));

    let details = MigrateDetails {
        can_migrate_same_pagemap: true,
        ..MigrateDetails::default()
    };
    let released = env.pm().released_allocations();
    let (r, states) = env.to_devmem(a, a + 2 * SZ_64K, &details);
    let rep = r.unwrap();
    assert_eq!(states, SUCCESS);
    assert_eq!(rep.pages, 32);
    assert!(env.on_device(a) && env.on_device(a + SZ_64K));
    assert_eq!(env.pm().live_allocations(), 1, "one new allocation");
    assert_eq!(
        env.pm().released_allocations(),
        released + 1,
        "the old one was released once"
    );
    env.after(None);
}

#[test]
fn allocate_nomem() {
    // Injected allocation failure.
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.write(a + 8, 1);
    env.write(a + 3 * PAGE, 2);
    let before = env.snap();
    env.gpu.dev.inject_alloc_fail_at(1);
    let (r, states) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    assert_eq!(r, Err(Error::NoMem));
    assert_eq!(states, [Isolate, Allocate, Restore, Done]);
    env.after(Some(&before));
    // Device memory too small.
    let mut env = Env::new(8);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.write(a + 8, 1);
    let before = env.snap();
    let (r, states) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    assert_eq!(r, Err(Error::NoMem));
    assert_eq!(states, [Isolate, Allocate, Restore, Done]);
    env.after(Some(&before));
    let (r, states) = env.to_devmem(a, a + 8 * PAGE, &MigrateDetails::default());
    r.unwrap();
    assert_eq!(states, SUCCESS, "exactly full");
    env.after(None);
}

#[test]
fn map_sources_dma_error() {
    for fail_at in [1u64, 2, 9, 16] {
        let mut env = Env::new(4096);
        let a = env.mm.mmap(2 << 20, RW, false).unwrap();
        // Written in reverse: no two source frames are contiguous, one mapping per page.
        for i in (0..16u64).rev() {
            env.write(a + i * PAGE, 0x700 + i);
        }
        let before = env.snap();
        let counts = env.gpu.dev.dma_counts();
        env.gpu.dev.inject_dma_fail_at(fail_at);
        let (r, states) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
        assert_eq!(r, Err(Error::NoMem), "fail at {fail_at}");
        assert_eq!(states, [Isolate, Allocate, MapSources, Restore, Done]);
        env.after(Some(&before));
        let (m, u) = env.gpu.dev.dma_counts();
        assert_eq!(m - counts.0, fail_at - 1, "mapped before the failure");
        assert_eq!(u - counts.1, fail_at - 1, "... and unmapped again");
    }
}

#[test]
fn copy_error_partial() {
    for after_runs in [0usize, 1, 3, 100] {
        let mut env = Env::new(4096);
        let a = env.mm.mmap(2 << 20, RW, false).unwrap();
        // Alternating written and untouched pages: RAM and zero-fill runs alternate.
        for i in (0..16u64).step_by(2) {
            env.write(a + i * PAGE + 8, 0x900 + i);
        }
        let before = env.snap();
        let (_, runs0) = env.gpu.dev.copy_counts();
        env.gpu.dev.inject_copy_fail_at(1, after_runs);
        let (r, states) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
        assert_eq!(r, Err(Error::Fault), "after {after_runs} runs");
        assert_eq!(states, [Isolate, Allocate, MapSources, Copy, Restore, Done]);
        let (_, runs1) = env.gpu.dev.copy_counts();
        assert_eq!(
            runs1 - runs0,
            after_runs.min(16) as u64,
            "partial completion"
        );
        env.after(Some(&before));
    }
}

/// A device memory that hands out an allocation with a duplicated frame (a platform bug the
/// state machine must survive: `DevmemAlloc::new` refuses it at Install). It remembers the real
/// frames, so that releasing the allocation it handed out releases them.
struct DupFrames {
    inner: SimDevmem,
    handed: Mutex<Vec<(Vec<u64>, Vec<u64>)>>,
    bad_releases: Mutex<Vec<Vec<u64>>>,
}

impl DeviceMemory for DupFrames {
    type Dma = SimDevice;
    fn dma(&self) -> &SimDevice {
        self.inner.dma()
    }
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        self.inner.alloc(out)?;
        let real = out.to_vec();
        if out.len() >= 2 {
            out[1] = out[0];
        }
        self.handed.lock().unwrap().push((out.to_vec(), real));
        Ok(())
    }
    fn release(&self, dpfns: &[u64]) {
        let mut h = self.handed.lock().unwrap();
        match h.iter().position(|(fake, _)| fake == dpfns) {
            Some(k) => {
                let (_, real) = h.remove(k);
                self.inner.release(&real);
            }
            None => self.bad_releases.lock().unwrap().push(dpfns.to_vec()),
        }
    }
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        self.inner.copy(runs)
    }
    fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }
}

#[test]
fn install_error_releases_the_allocation() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    for i in 0..16u64 {
        env.write(a + i * PAGE, 0xe00 + i);
    }
    let before = env.snap();
    let bad = Pagemap::new(
        PagemapId(7),
        OwnerId(1),
        DupFrames {
            inner: SimDevmem(env.gpu.dev.clone()),
            handed: Mutex::new(Vec::new()),
            bad_releases: Mutex::new(Vec::new()),
        },
    )
    .unwrap();
    let (r, states) = to_devmem_with(
        env.gpu.svm.platform().mm(),
        &bad,
        a,
        a + SZ_64K,
        &MigrateDetails::default(),
    );
    assert_eq!(r, Err(Error::Invalid));
    assert_eq!(
        states,
        [Isolate, Allocate, MapSources, Copy, Install, Restore, Done]
    );
    assert!(
        bad.mem().bad_releases.lock().unwrap().is_empty(),
        "released something it was not given: {:?}",
        bad.mem().bad_releases.lock().unwrap()
    );
    assert!(
        bad.mem().handed.lock().unwrap().is_empty(),
        "the allocation was never released (device memory leaked)"
    );
    assert_eq!(bad.live_allocations(), 0);
    env.after(Some(&before));
}

#[test]
fn to_ram_nothing_to_do() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.write(a, 4);
    let before = env.snap();
    let (r, states) = env.to_ram_states(a, a + SZ_64K);
    assert_eq!(r.unwrap(), MigrateReport::default());
    assert_eq!(states, [R::Isolate, R::Restore, R::Done]);
    env.after(Some(&before));
    // Also over a hole and over never-touched pages.
    let rep = env.to_ram(a + (2 << 20), a + (2 << 20) + SZ_64K).unwrap();
    assert_eq!(rep.pages, 0);
    env.after(Some(&before));
}

/// A device-resident 64 KiB interval with data, for the `to_ram` failure tests.
fn resident(env: &mut Env) -> u64 {
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    for i in 0..16u64 {
        env.write(a + i * PAGE + 32, 0xf00 + i);
    }
    let (r, _) = env.to_devmem(a, a + SZ_64K, &MigrateDetails::default());
    r.unwrap();
    assert!(env.on_device(a));
    a
}

#[test]
fn to_ram_system_memory_exhausted() {
    let mut env = Env::new(4096);
    let a = resident(&mut env);
    let before = env.snap();
    env.world.set_ram_limit(Some(env.world.live_frames() + 3));
    let (r, states) = env.to_ram_states(a, a + SZ_64K);
    assert_eq!(r, Err(Error::NoMem));
    assert_eq!(states, [R::Isolate, R::Allocate, R::Restore, R::Done]);
    env.after(Some(&before));
    assert!(env.on_device(a) && env.on_device(a + SZ_64K - PAGE));
    env.world.set_ram_limit(None);
    assert_eq!(env.to_ram(a, a + SZ_64K).unwrap().pages, 16);
    env.after(None);
}

#[test]
fn to_ram_dma_error() {
    for fail_at in [1u64, 2] {
        let mut env = Env::new(4096);
        let a = resident(&mut env);
        let before = env.snap();
        env.gpu.dev.inject_dma_fail_at(fail_at);
        let (r, states) = env.to_ram_states(a, a + SZ_64K);
        assert_eq!(r, Err(Error::NoMem));
        assert_eq!(
            states,
            [R::Isolate, R::Allocate, R::MapDests, R::Restore, R::Done]
        );
        env.after(Some(&before));
        assert!(env.on_device(a));
        assert_eq!(env.to_ram(a, a + SZ_64K).unwrap().pages, 16);
        env.after(None);
    }
}

#[test]
fn to_ram_copy_error() {
    for after_runs in [0usize, 1] {
        let mut env = Env::new(4096);
        let a = resident(&mut env);
        let before = env.snap();
        env.gpu.dev.inject_copy_fail_at(1, after_runs);
        let (r, states) = env.to_ram_states(a, a + SZ_64K);
        assert_eq!(r, Err(Error::Fault));
        assert_eq!(
            states,
            [
                R::Isolate,
                R::Allocate,
                R::MapDests,
                R::Copy,
                R::Restore,
                R::Done
            ]
        );
        env.after(Some(&before));
        assert!(env.on_device(a));
        let rep = env.to_ram(a, a + SZ_64K).unwrap();
        assert_eq!(rep.pages, 16);
        env.after(None);
        assert_eq!(env.pm().released_allocations(), 1);
    }
}
