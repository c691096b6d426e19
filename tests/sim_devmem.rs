//! Device memory on the simulator, scenario by scenario (issue 4, SPEC §6–§7).
//!
//! Every scenario drives one [`Env`]: a simulated machine with one device that has device memory
//! and prefers it for faulting ranges, plus a data model (`BTreeMap<addr, value>` of every 8-byte
//! word written by the CPU or the device). After **every** step the invariant checker runs
//! (docs/DESIGN.md invariants 1, 2, 3, 5, 6 incl. device-memory accounting), and every CPU or
//! device read is compared with the model (invariant 4, "nothing is lost"). On top of that each
//! scenario asserts what it is about:
//!
//! | test | proves |
//! | --- | --- |
//! | `migrate_then_cpu_read` | a device fault migrates the range into device memory; CPU reads bring the data back to RAM |
//! | `cpu_write_while_on_device` | a CPU write to a device-resident page pulls it back, the device then sees the new value |
//! | `device_write_then_cpu_read` | device writes land in device memory and reach the CPU |
//! | `partial_munmap_of_device_range` | the GC evicts the surviving part, its data is intact, the allocation is released exactly once |
//! | `devmem_exhausted_evicts_other_ranges` | with room for two ranges, faulting many evicts others (`evictions`), nothing lost |
//! | `devmem_too_small_falls_back_to_ram` | a range larger than device memory stays in RAM (`migrate_failures`, `MIGRATE_FAILED`) |
//! | `copy_failure_half_way` | a copy failing after k runs: the fault succeeds from RAM, no device memory or DMA mapping leaks, no PTE stays isolated |
//! | `alloc_failure_*` | a failed device-memory allocation falls back to RAM, or evicts another range and retries |
//! | `dma_map_failure_during_migration` | a failing DMA map half way through the sources unmaps what it mapped; the fault succeeds from RAM |
//! | `ping_pong_cpu_device` | 24 rounds of device write / CPU read / CPU write / device read: every value survives every move |
//! | `huge_page_source_is_one_copy_run` | a 2 MiB huge-page source moves with one copy command into a 2 MiB device mapping |
//! | `atomic_timeslice_*` | a CPU access inside an atomic fault's timeslice waits for it (the clock advances) and reads the right data |
//! | `close_with_device_resident_ranges` | close leaves nothing of the Svm; device pages still mapped by the CPU keep their allocation until munmap |
#![cfg(feature = "sim")]

use gpusvm::migrate::MigrateDetails;
use gpusvm::platform::VmaFlags;
use gpusvm::range::RangeFlags;
use gpusvm::sim::{check_closed, SimGpu, SimMm, SimWorld};
use gpusvm::{Error, SvmConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const PAGE: u64 = 4096;
const SZ_64K: u64 = 64 << 10;
const SZ_2M: u64 = 2 << 20;

/// A machine with one devmem-capable device and the data model.
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

    fn with_config(vram_pages: u64, cfg: SvmConfig) -> Env {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::new(&mm, 0, cfg).unwrap();
        gpu.add_devmem(vram_pages, 1).unwrap();
        Env {
            world,
            mm,
            gpu,
            model: BTreeMap::new(),
        }
    }

    #[track_caller]
    fn check(&self) {
        if let Err(e) = self.gpu.check() {
            panic!("invariant violated: {e}\n{}", self.gpu.describe());
        }
        let pm = self.gpu.svm.pagemap().unwrap();
        let (allocs, releases) = self.gpu.dev.vram_counts();
        assert_eq!(
            allocs - releases,
            pm.live_allocations() as u64,
            "every device allocation is live or released once"
        );
        assert_eq!(pm.stray_frees(), 0, "no page freed twice or unknown");
    }

    fn expect(&self, addr: u64) -> u64 {
        self.model.get(&addr).copied().unwrap_or(0)
    }

    #[track_caller]
    fn cpu_write(&mut self, addr: u64, v: u64) {
        self.mm.write_u64(addr, v).unwrap();
        self.model.insert(addr, v);
        self.check();
    }

    #[track_caller]
    fn cpu_read(&self, addr: u64) -> u64 {
        let got = self.mm.read_u64(addr).unwrap();
        assert_eq!(got, self.expect(addr), "CPU read at {addr:#x}");
        self.check();
        got
    }

    #[track_caller]
    fn dev_write(&mut self, addr: u64, v: u64) {
        self.gpu.write_u64(addr, v).unwrap();
        self.model.insert(addr, v);
        self.check();
    }

    #[track_caller]
    fn dev_read(&self, addr: u64) -> u64 {
        let got = self.gpu.read_u64(addr).unwrap();
        assert_eq!(got, self.expect(addr), "device read at {addr:#x}");
        self.check();
        got
    }

    #[track_caller]
    fn dev_atomic_add(&mut self, addr: u64, v: u64) {
        let old = self.gpu.atomic_add(addr, v).unwrap();
        assert_eq!(old, self.expect(addr), "device atomic at {addr:#x}");
        self.model.insert(addr, old.wrapping_add(v));
        self.check();
    }

    #[track_caller]
    fn munmap(&mut self, addr: u64, len: u64) {
        self.mm.munmap(addr, len).unwrap();
        self.model.retain(|a, _| !(addr <= *a && *a < addr + len));
        self.check();
    }

    /// CPU-read every word of the model.
    #[track_caller]
    fn verify_all(&self) {
        for (&a, &v) in &self.model {
            assert_eq!(self.mm.read_u64(a).unwrap(), v, "CPU read at {a:#x}");
            self.check();
        }
    }

    fn on_device(&self, addr: u64) -> bool {
        self.mm.pte(addr).is_some_and(|p| p.dev.is_some())
    }

    fn no_pte_isolated(&self) {
        for (vpn, p) in self.mm.ptes() {
            assert!(
                !p.migrating && !p.placeholder,
                "PTE {:#x} left isolated: {p:?}",
                vpn * PAGE
            );
        }
    }

    fn flags_at(&self, addr: u64) -> RangeFlags {
        self.gpu.svm.find(addr).unwrap().flags()
    }
}

#[test]
fn migrate_then_cpu_read() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(4 << 20, RW, false).unwrap();
    for i in 0..32u64 {
        env.cpu_write(a + i * SZ_64K + (i % 7) * 8, 0x1000 + i);
    }
    env.dev_read(a);
    assert!(env.on_device(a), "{}", env.gpu.describe());
    let s = env.gpu.svm.stats();
    assert_eq!(s.migrations_to_devmem, 1, "{s:?}");
    assert_eq!(s.bytes_to_devmem as u64, SZ_2M);
    // Every word of the migrated range is in device memory, with its value.
    for i in 0..32u64 {
        let addr = a + i * SZ_64K + (i % 7) * 8;
        if addr < a + SZ_2M {
            let p = env.mm.pte(addr).unwrap();
            assert!(p.dev.is_some());
            let v = env
                .gpu
                .dev
                .vram_read_u64(p.pfn, (addr % PAGE) as usize)
                .unwrap();
            assert_eq!(v, 0x1000 + i);
        }
    }
    // CPU reads bring everything back, with the data.
    for i in 0..32u64 {
        env.cpu_read(a + i * SZ_64K + (i % 7) * 8);
    }
    assert!(!env.on_device(a));
    let pm = env.gpu.svm.pagemap().unwrap();
    assert_eq!(pm.live_allocations(), 0);
    assert!(env.gpu.dev.vram_used().is_empty());
    env.verify_all();
}

#[test]
fn cpu_write_while_on_device() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.cpu_write(a + 8, 1);
    env.dev_read(a + 8);
    assert!(env.on_device(a + 8));
    env.cpu_write(a + 8, 2);
    assert!(!env.on_device(a + 8), "the CPU write pulled the page back");
    env.cpu_write(a + 5 * PAGE, 3);
    env.dev_read(a + 8);
    env.dev_read(a + 5 * PAGE);
    assert!(env.on_device(a + 8), "the range migrated again");
    assert_eq!(env.gpu.svm.stats().migrations_to_devmem, 2);
    env.verify_all();
}

#[test]
fn device_write_then_cpu_read() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    for i in 0..16u64 {
        env.dev_write(a + i * 3 * PAGE + 16, 0xd00 + i);
    }
    assert!(env.on_device(a));
    assert_eq!(env.gpu.svm.stats().migrations_to_devmem, 1);
    for i in 0..16u64 {
        env.cpu_read(a + i * 3 * PAGE + 16);
    }
    // Untouched words read as zero (the never-touched pages were zero-filled, not poisoned).
    env.cpu_read(a + PAGE);
    env.cpu_read(a + SZ_2M - 8);
    env.verify_all();
}

#[test]
fn partial_munmap_of_device_range() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(4 << 20, RW, false).unwrap();
    for i in 0..64u64 {
        env.cpu_write(a + i * SZ_64K, i + 1);
    }
    env.dev_read(a);
    env.dev_read(a + SZ_2M);
    let pm = env.gpu.svm.pagemap().unwrap();
    assert_eq!(pm.live_allocations(), 2);
    assert!(env.on_device(a + SZ_2M + SZ_64K));
    let released = pm.released_allocations();
    let (_, releases) = env.gpu.dev.vram_counts();
    // Unmap the first half of the second range: its device pages are freed by munmap, the
    // range is queued for the GC.
    env.munmap(a + SZ_2M, 1 << 20);
    assert_eq!(
        pm.released_allocations(),
        released,
        "half of it is still mapped"
    );
    assert_eq!(env.gpu.svm.gc_pending(), 1);
    assert!(env.flags_at(a + SZ_2M).contains(RangeFlags::PARTIAL_UNMAP));
    assert_eq!(env.gpu.svm.gc_run(), 1);
    env.check();
    // The GC evicted the surviving half (the CPU did not have to fault it back).
    for off in (SZ_2M + (1 << 20)..4 << 20).step_by(SZ_64K as usize) {
        assert!(
            !env.on_device(a + off),
            "{:#x} still on the device",
            a + off
        );
    }
    assert_eq!(
        pm.released_allocations(),
        released + 1,
        "released exactly once"
    );
    assert_eq!(env.gpu.dev.vram_counts().1, releases + 1);
    assert_eq!(pm.live_allocations(), 1, "the first range is untouched");
    assert!(env.on_device(a));
    assert!(env.gpu.svm.find(a + SZ_2M + (1 << 20)).is_none());
    assert_eq!(env.gpu.svm.stats().gc_ranges, 1);
    // Data of the surviving part is intact; the unmapped part faults. (The CPU reads also
    // bring the first range back: its allocation goes too, once.)
    env.verify_all();
    assert_eq!(pm.released_allocations(), released + 2);
    assert_eq!(pm.live_allocations(), 0);
    assert_eq!(env.mm.read_u64(a + SZ_2M), Err(Error::Fault));
    assert_eq!(env.gpu.read_u64(a + SZ_2M), Err(Error::Fault));
    env.check();
    // A later device fault in the surviving part creates a new, smaller range.
    env.dev_read(a + SZ_2M + (1 << 20) + 8);
    let r = env.gpu.svm.find(a + SZ_2M + (1 << 20)).unwrap();
    assert!(r.size() <= 1 << 20);
    env.verify_all();
}

#[test]
fn devmem_exhausted_evicts_other_ranges() {
    // Room for two 2 MiB ranges; eight are faulted in turn.
    let mut env = Env::new(1024);
    let a = env.mm.mmap(16 << 20, RW, false).unwrap();
    for b in 0..8u64 {
        env.cpu_write(a + b * SZ_2M + b * 8, 100 + b);
    }
    for round in 0..2u64 {
        for b in 0..8u64 {
            env.dev_read(a + b * SZ_2M + b * 8);
            assert!(
                env.on_device(a + b * SZ_2M),
                "range {b} should be in devmem"
            );
            assert!(env.gpu.dev.vram_used().len() <= 1024);
            env.dev_write(a + b * SZ_2M + 4096, round * 10 + b);
        }
    }
    // Victims are picked in address order, so the last range of round 0 stays resident and
    // its first read of round 1 does not even fault; every other read migrated.
    let s = env.gpu.svm.stats();
    assert_eq!(
        s.migrations_to_devmem, s.faults,
        "every fault migrated: {s:?}"
    );
    assert!(s.faults >= 15, "{s:?}");
    assert!(s.evictions >= 12, "{s:?}");
    assert_eq!(
        s.migrate_failures, s.evictions,
        "each NoMem evicted one range and the retry succeeded: {s:?}"
    );
    env.verify_all();
    assert_eq!(env.gpu.svm.pagemap().unwrap().live_allocations(), 0);
}

#[test]
fn devmem_too_small_falls_back_to_ram() {
    // 1 MiB of device memory cannot hold a 2 MiB range, and there is nothing to evict.
    let mut env = Env::new(256);
    let a = env.mm.mmap(4 << 20, RW, false).unwrap();
    env.cpu_write(a + 24, 7);
    env.dev_read(a + 24);
    assert!(!env.on_device(a + 24));
    assert!(env.flags_at(a).contains(RangeFlags::MIGRATE_FAILED));
    let s = env.gpu.svm.stats();
    assert_eq!(s.migrate_failures, 1, "{s:?}");
    assert_eq!(s.migrations_to_devmem, 0);
    // "Migrate once": the range is not tried again.
    env.dev_write(a + 32, 8);
    assert_eq!(env.gpu.svm.stats().migrate_failures, 1);
    assert!(env.gpu.dev.vram_used().is_empty());
    env.verify_all();
}

/// Write every other page of the first 64 pages of `a`, so a migration of the range issues
/// alternating RAM→device and zero-fill runs (many copy runs).
fn write_alternate_pages(env: &mut Env, a: u64) {
    for i in (0..64u64).step_by(2) {
        env.cpu_write(a + i * PAGE + 40, 0xc0de + i);
    }
}

#[test]
fn copy_failure_half_way() {
    for after_runs in [0usize, 1, 5, 33] {
        let mut env = Env::new(4096);
        let a = env.mm.mmap(2 << 20, RW, false).unwrap();
        write_alternate_pages(&mut env, a);
        let dma_before = env.gpu.dev.dma_mappings();
        assert!(dma_before.is_empty());
        let (calls0, runs0) = env.gpu.dev.copy_counts();
        env.gpu.dev.inject_copy_fail_at(1, after_runs);
        // The fault still succeeds, from system memory.
        env.dev_read(a + 40);
        let (calls1, runs1) = env.gpu.dev.copy_counts();
        assert_eq!(calls1 - calls0, 1, "one copy call, and it failed");
        assert_eq!(
            runs1 - runs0,
            after_runs as u64,
            "{after_runs} runs completed"
        );
        assert!(!env.on_device(a + 40));
        assert!(env.flags_at(a).contains(RangeFlags::MIGRATE_FAILED));
        assert_eq!(env.gpu.svm.stats().migrate_failures, 1);
        assert!(
            env.gpu.dev.vram_used().is_empty(),
            "no device memory leaked"
        );
        let (allocs, releases) = env.gpu.dev.vram_counts();
        assert_eq!((allocs, releases), (1, 1));
        env.no_pte_isolated();
        // The only DMA mappings left are the range's own (the checker proves each is owned).
        let r = env.gpu.svm.find(a).unwrap();
        assert!(env.gpu.svm.pages_valid(&r));
        let (maps, unmaps) = env.gpu.dev.dma_counts();
        assert!(maps - unmaps >= 1);
        env.verify_all();
        for i in (1..64u64).step_by(2) {
            env.cpu_read(a + i * PAGE + 40);
        }
    }
}

#[test]
fn alloc_failure_falls_back_to_ram() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(4 << 20, RW, false).unwrap();
    env.cpu_write(a, 1);
    env.cpu_write(a + SZ_2M, 2);
    env.gpu.dev.inject_alloc_fail_at(1);
    env.dev_read(a);
    assert!(!env.on_device(a));
    assert!(env.flags_at(a).contains(RangeFlags::MIGRATE_FAILED));
    assert_eq!(env.gpu.svm.stats().migrate_failures, 1);
    assert_eq!(env.gpu.dev.vram_counts(), (0, 0));
    env.no_pte_isolated();
    // The injection is spent: the next range migrates.
    env.dev_read(a + SZ_2M);
    assert!(env.on_device(a + SZ_2M));
    env.verify_all();
}

#[test]
fn alloc_failure_evicts_another_range_and_retries() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(4 << 20, RW, false).unwrap();
    env.cpu_write(a, 1);
    env.cpu_write(a + SZ_2M, 2);
    env.dev_read(a);
    assert!(env.on_device(a));
    env.gpu.dev.inject_alloc_fail_at(1);
    env.dev_read(a + SZ_2M);
    let s = env.gpu.svm.stats();
    assert_eq!(s.migrate_failures, 1, "{s:?}");
    assert_eq!(s.evictions, 1, "{s:?}");
    assert!(!env.on_device(a), "the other range made room");
    assert!(env.on_device(a + SZ_2M), "the retry succeeded");
    assert!(!env.flags_at(a + SZ_2M).contains(RangeFlags::MIGRATE_FAILED));
    env.verify_all();
}

#[test]
fn dma_map_failure_during_migration() {
    for fail_at in [1u64, 2, 7] {
        let mut env = Env::new(4096);
        let a = env.mm.mmap(2 << 20, RW, false).unwrap();
        // Written in reverse: the source frames are not contiguous, so every page is its own
        // DMA mapping and the failure hits half way through the sources.
        for i in (0..16u64).rev() {
            env.cpu_write(a + i * PAGE + 8, 0xaa00 + i);
        }
        env.gpu.dev.inject_dma_fail_at(fail_at);
        env.dev_read(a + 8);
        assert!(!env.on_device(a + 8));
        assert!(env.flags_at(a).contains(RangeFlags::MIGRATE_FAILED));
        assert_eq!(env.gpu.svm.stats().migrate_failures, 1);
        assert!(env.gpu.dev.vram_used().is_empty());
        assert_eq!(env.gpu.dev.vram_counts(), (1, 1));
        env.no_pte_isolated();
        // Everything mapped for the failed migration was unmapped again; what is live now
        // is exactly the range's own mappings (checked by the invariant checker).
        let (maps, unmaps) = env.gpu.dev.dma_counts();
        assert_eq!(maps - unmaps, env.gpu.dev.dma_mappings().len() as u64);
        assert!(env.gpu.dev.dma_violations().is_empty());
        env.verify_all();
    }
}

#[test]
fn ping_pong_cpu_device() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    for i in 0..8u64 {
        env.cpu_write(a + i * SZ_64K, i);
    }
    for round in 0..24u64 {
        env.dev_write(a + 8, round);
        assert!(env.on_device(a + 8), "round {round}: on the device");
        env.cpu_read(a + 8);
        assert!(!env.on_device(a + 8), "round {round}: back in RAM");
        env.cpu_write(a + 16, round * 3);
        env.dev_read(a + 16);
        env.dev_atomic_add(a + 24, round);
        for i in 0..8u64 {
            env.cpu_read(a + i * SZ_64K);
        }
        env.check();
    }
    let s = env.gpu.svm.stats();
    assert!(s.migrations_to_devmem >= 24, "{s:?}");
    env.verify_all();
    let pm = env.gpu.svm.pagemap().unwrap();
    assert_eq!(pm.live_allocations(), 0);
    assert_eq!(
        pm.released_allocations() as u64,
        env.gpu.dev.vram_counts().0,
        "every allocation released exactly once"
    );
}

#[test]
fn huge_page_source_is_one_copy_run() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(4 << 20, RW, true).unwrap();
    assert_eq!(a % SZ_2M, 0);
    env.cpu_write(a + 8, 0x4242);
    env.cpu_write(a + SZ_2M - 8, 0x4343);
    assert_eq!(
        env.mm.pte(a).unwrap().order,
        9,
        "the CPU maps a 2 MiB frame"
    );
    let (calls0, runs0) = env.gpu.dev.copy_counts();
    let (maps0, _) = env.gpu.dev.dma_counts();
    env.dev_read(a + 8);
    let (calls1, runs1) = env.gpu.dev.copy_counts();
    assert_eq!(
        (calls1 - calls0, runs1 - runs0),
        (1, 1),
        "one copy command for the whole 2 MiB"
    );
    let (maps1, _) = env.gpu.dev.dma_counts();
    assert!(maps1 - maps0 >= 1);
    let s = env.gpu.svm.stats();
    assert_eq!(
        (s.migrations_to_devmem, s.bytes_to_devmem as u64),
        (1, SZ_2M)
    );
    for off in (0..SZ_2M).step_by(PAGE as usize) {
        let p = env.mm.pte(a + off).unwrap();
        assert!(p.dev.is_some());
        assert_eq!(
            p.order,
            9,
            "device page at {:#x} installed as 2 MiB",
            a + off
        );
    }
    let vram = env.gpu.dev.vram_used();
    assert_eq!(vram.len(), 512);
    assert!(vram.windows(2).all(|w| w[1] == w[0] + 1), "contiguous vram");
    assert_eq!(vram[0] % 512, 0, "2 MiB aligned vram");
    env.dev_write(a + SZ_64K, 5);
    env.verify_all();
    env.dev_read(a + SZ_2M + 8);
    env.verify_all();
}

fn timeslice_env(timeslice_ns: u64) -> Env {
    let mut cfg = SvmConfig::new(0, 1 << 47);
    cfg.prefer_devmem = true;
    cfg.atomic_timeslice_ns = timeslice_ns;
    Env::with_config(4096, cfg)
}

#[test]
fn atomic_timeslice_makes_the_cpu_wait() {
    let mut env = timeslice_env(5_000_000);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.cpu_write(a, 40);
    env.dev_atomic_add(a, 2);
    assert!(env.on_device(a));
    let alloc = env.gpu.svm.pagemap().unwrap().allocations().unwrap();
    assert_eq!(alloc.len(), 1);
    let t0 = env.world.now_ns();
    assert!(alloc[0].timeslice_end() > t0, "inside the timeslice");
    env.cpu_read(a);
    let t1 = env.world.now_ns();
    assert!(
        t1 >= alloc[0].timeslice_end(),
        "the CPU access waited until the timeslice ended ({t0} → {t1})"
    );
    assert!(!env.on_device(a));
    // Again, with a CPU write inside the timeslice.
    env.dev_atomic_add(a, 1);
    let end = env.gpu.svm.pagemap().unwrap().allocations().unwrap()[0].timeslice_end();
    env.cpu_write(a + 8, 9);
    assert!(env.world.now_ns() >= end);
    env.verify_all();
}

#[test]
fn atomic_timeslice_only_for_atomics() {
    let mut env = timeslice_env(5_000_000);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.dev_write(a, 3);
    assert!(env.on_device(a));
    let t0 = env.world.now_ns();
    env.cpu_read(a);
    assert!(
        env.world.now_ns() - t0 < 1_000_000,
        "a plain write leaves no timeslice: the CPU did not wait"
    );
    // And with a zero timeslice atomics do not hold the CPU either.
    let mut env = timeslice_env(0);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.dev_atomic_add(a, 3);
    let t0 = env.world.now_ns();
    env.cpu_read(a);
    assert!(env.world.now_ns() - t0 < 1_000_000);
}

#[test]
fn close_with_device_resident_ranges() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(6 << 20, RW, false).unwrap();
    for b in 0..3u64 {
        env.dev_write(a + b * SZ_2M + 8, 10 + b);
    }
    let pm = env.gpu.svm.pagemap().unwrap();
    assert_eq!(pm.live_allocations(), 3);
    env.gpu.svm.close();
    check_closed(&env.gpu).unwrap();
    env.check();
    // The pages are still device-private in the CPU page table: their allocations live on.
    assert_eq!(pm.live_allocations(), 3);
    assert!(env.on_device(a + 8));
    assert_eq!(env.gpu.read_u64(a), Err(Error::Closed));
    let r = env.gpu.svm.find(a);
    assert!(r.is_none());
    // A CPU access still brings a page back through the pagemap (its allocation goes).
    env.cpu_read(a + 8);
    assert_eq!(pm.live_allocations(), 2);
    // munmap frees the rest.
    env.munmap(a + SZ_2M, 4 << 20);
    assert_eq!(pm.live_allocations(), 0);
    assert!(env.gpu.dev.vram_used().is_empty());
    let (allocs, releases) = env.gpu.dev.vram_counts();
    assert_eq!((allocs, releases), (3, 3));
    assert_eq!(pm.released_allocations(), 3);
    env.verify_all();
    check_closed(&env.gpu).unwrap();
}

#[test]
fn explicit_migrate_and_evict() {
    let mut env = Env::new(4096);
    let a = env.mm.mmap(2 << 20, RW, false).unwrap();
    env.cpu_write(a + 8, 77);
    // Fault it in from RAM first (no devmem preference for this range: migrate it by hand).
    let r = {
        env.dev_read(a + 8);
        env.gpu.svm.find(a).unwrap()
    };
    assert!(env.on_device(a + 8));
    let again = env
        .gpu
        .svm
        .migrate_to_devmem(&r, &MigrateDetails::default())
        .unwrap();
    assert!(again.already_there);
    env.check();
    let rep = env.gpu.svm.evict(&r).unwrap();
    assert_eq!(rep.pages, 512);
    assert!(!env.on_device(a + 8));
    assert!(!r.flags().contains(RangeFlags::DEVMEM));
    env.check();
    let rep = env.gpu.svm.evict(&r).unwrap();
    assert_eq!(rep.pages, 0, "nothing left to evict");
    env.check();
    let rep = env
        .gpu
        .svm
        .migrate_to_devmem(&r, &MigrateDetails::default())
        .unwrap();
    assert_eq!(rep.pages, 512);
    assert!(env.on_device(a + 8));
    env.check();
    env.dev_read(a + 8);
    env.verify_all();
}
