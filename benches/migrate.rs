//! Migration RAM → device memory and back (issue 8).
//!
//! Run with `cargo bench --bench migrate`. At the end it prints the ratios of the criterion
//! medians measured in this run, and the copy-engine command counts (asserted before timing).
//!
//! The migration state machine (`gpusvm::migrate::to_devmem` / `to_ram`) runs over a fast bench
//! platform defined here (the simulator keeps its pages in maps and records every DMA
//! mapping, which would be measured instead):
//! - system memory and device memory are two big `Vec<u8>` arenas (pre-touched); frame `f` of
//!   system memory is byte `(f - SYS_PFN0) * 4096` of the system arena, device frame `d` byte
//!   `(d - DEV_PFN0) * 4096` of the device arena;
//! - [`BenchMm`]: one VMA over a flat CPU page table (`Vec<u64>` of packed entries) with the
//!   three-phase migration (`migrate_isolate` marks entries migrating, `migrate_finalize`
//!   installs or restores them and frees the sources: system frames back to the allocator,
//!   device frames through `Pagemap::page_free`); no `Svm` is attached, so the `Migrate`
//!   invalidation a real platform sends first is not part of the figure;
//! - [`BenchMem`]: the device memory; its copy engine executes each `CopyRun` with one
//!   `copy_from_slice` (`fill(0)` for zero runs) and counts the commands; DMA is the identity;
//! - both frame allocators hand out naturally aligned blocks of 512 frames (LIFO), so the
//!   migrated range always moves between system block 0 and device block 0 — the same bytes
//!   the baseline copies.
//!
//! Rows of groups `migrate_2m` and `migrate_64k` (each iteration timed alone with `Instant`,
//! the same way for every row; the migration in the other direction runs untimed between
//! iterations):
//! - `memcpy`: `copy_from_slice` of the range's bytes, system block 0 → device block 0;
//! - `to_devmem`: `migrate::to_devmem` of the range (isolate, allocate, DMA-map, copy, install);
//! - `memcpy_back`: device block 0 → system block 0;
//! - `to_ram`: `migrate::to_ram` of the range.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use common::{paired, per_op, print_paired, report, Ratio, BASE, KIB, MIB};
use criterion::{black_box, Criterion};
use gpusvm::migrate::{self, MigrateDetails, MigrateReport};
use gpusvm::pagemap::Pagemap;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyKind, CopyRun, CpuPage, DeviceMemory,
    DmaDirection, DmaMapper, MigrateDst, MigrateRequest, MigrateSelect, MigrateSrc, NotifierId,
    OwnerId, PagemapId, Vma, VmaFlags, PAGE_SHIFT, PAGE_SIZE,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Frames per allocator block (2 MiB).
const BLOCK: u64 = 512;
/// Blocks of each memory.
const BLOCKS: u64 = 4;
const SYS_PFN0: u64 = 0x10_0000;
const DEV_PFN0: u64 = 0x80_0000;
const PM: PagemapId = PagemapId(1);

/// The bench's pagemap, shared on the default host's allocator.
type BenchPagemap = gpusvm::HostArc<gpusvm::DefaultHost, Pagemap<BenchMem>>;
const OWNER: OwnerId = OwnerId(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Both memories.
struct Arenas {
    sys: Vec<u8>,
    dev: Vec<u8>,
}

fn arena(bytes: u64) -> Vec<u8> {
    // Pre-touched (not calloc'ed zero pages).
    vec![0xa5; bytes as usize]
}

/// A block allocator: blocks of 512 frames from `pfn0`, LIFO, freed when their last frame is.
struct Blocks {
    pfn0: u64,
    free: Vec<u64>,
    live: Vec<u64>,
}

impl Blocks {
    fn new(pfn0: u64) -> Blocks {
        Blocks {
            pfn0,
            free: (0..BLOCKS).rev().collect(),
            live: vec![0; BLOCKS as usize],
        }
    }
    /// `out.len()` (≤ 512) contiguous frames at the start of a free block.
    fn alloc(&mut self, out: &mut [u64]) -> gpusvm::Result<()> {
        if out.len() as u64 > BLOCK {
            return Err(gpusvm::Error::NoMem);
        }
        let b = self.free.pop().ok_or(gpusvm::Error::NoMem)?;
        self.live[b as usize] = out.len() as u64;
        for (i, f) in out.iter_mut().enumerate() {
            *f = self.pfn0 + b * BLOCK + i as u64;
        }
        Ok(())
    }
    fn put(&mut self, pfn: u64) {
        let b = (pfn - self.pfn0) / BLOCK;
        let live = &mut self.live[b as usize];
        *live -= 1;
        if *live == 0 {
            self.free.push(b);
        }
    }
}

/// CPU page-table entry bits (0 = absent).
const PRESENT: u64 = 1 << 63;
const DEVICE: u64 = 1 << 62;
const MIGRATING: u64 = 1 << 61;
const FRAME: u64 = (1 << 48) - 1;

/// The CPU address space: one VMA `[BASE, BASE + len)`.
struct BenchMm {
    start: u64,
    end: u64,
    ptes: Mutex<Vec<u64>>,
    sys: Mutex<Blocks>,
    pagemap: OnceLock<BenchPagemap>,
}

impl BenchMm {
    fn slots(&self, start: u64, end: u64, n: usize) -> gpusvm::Result<std::ops::Range<usize>> {
        if start < self.start || end > self.end || start >= end {
            return Err(gpusvm::Error::Invalid);
        }
        let a = ((start - self.start) >> PAGE_SHIFT) as usize;
        let b = ((end - self.start) >> PAGE_SHIFT) as usize;
        if b - a != n {
            return Err(gpusvm::Error::Invalid);
        }
        Ok(a..b)
    }
}

impl AddressSpace for BenchMm {
    type NotifierHandle = ();

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        (self.start <= addr && addr < self.end).then_some(Vma {
            start: self.start,
            end: self.end,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        })
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> gpusvm::Result<()> {
        let slots = self.slots(req.start, req.end, out.len())?;
        let ptes = lock(&self.ptes);
        for (o, &p) in out.iter_mut().zip(&ptes[slots]) {
            *o = match p {
                0 => CpuPage::Absent,
                p if p & DEVICE != 0 => CpuPage::Device {
                    pagemap: PM,
                    owner: OWNER,
                    dpfn: p & FRAME,
                    order: 0,
                },
                p => CpuPage::System {
                    pfn: p & FRAME,
                    order: 0,
                    writable: true,
                },
            };
        }
        Ok(())
    }

    fn register_notifier(&self, _: NotifierId, _: u64, _: u64) -> gpusvm::Result<()> {
        Ok(())
    }
    fn unregister_notifier(&self, _: ()) {}

    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> gpusvm::Result<()> {
        let slots = self.slots(req.start, req.end, src.len())?;
        let mut ptes = lock(&self.ptes);
        for (s, p) in src.iter_mut().zip(&mut ptes[slots]) {
            *s = match *p {
                p if p & MIGRATING != 0 => MigrateSrc::Busy,
                0 if req.select.contains(MigrateSelect::SYSTEM) => MigrateSrc::Absent,
                0 => MigrateSrc::Skip,
                v if v & DEVICE != 0 => {
                    let selected = req.select.contains(MigrateSelect::DEVICE_PRIVATE)
                        && match req.pagemap {
                            Some(want) => want == PM,
                            None => req.owner == Some(OWNER),
                        };
                    if selected {
                        MigrateSrc::Device {
                            pagemap: PM,
                            dpfn: v & FRAME,
                        }
                    } else {
                        MigrateSrc::Skip
                    }
                }
                v if req.select.contains(MigrateSelect::SYSTEM) => {
                    MigrateSrc::System { pfn: v & FRAME }
                }
                _ => MigrateSrc::Skip,
            };
            if s.isolated() {
                *p |= MIGRATING;
            }
        }
        Ok(())
    }

    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        let Ok(slots) = self.slots(req.start, req.end, src.len()) else {
            return;
        };
        let mut ptes = lock(&self.ptes);
        let mut sys = lock(&self.sys);
        // Device sources are freed in one batch (`Pagemap::pages_free`) after the walk.
        let mut dev_freed: Vec<u64> = Vec::with_capacity(src.len());
        for ((s, d), p) in src.iter().zip(dst).zip(&mut ptes[slots]) {
            if !s.isolated() {
                continue;
            }
            match *d {
                MigrateDst::Keep => {
                    *p = if *s == MigrateSrc::Absent {
                        0
                    } else {
                        *p & !MIGRATING
                    };
                    continue;
                }
                MigrateDst::System { pfn } => *p = PRESENT | pfn,
                MigrateDst::Device { dpfn, .. } => *p = PRESENT | DEVICE | dpfn,
            }
            match *s {
                MigrateSrc::System { pfn } => sys.put(pfn),
                MigrateSrc::Device { dpfn, .. } => dev_freed.push(dpfn),
                _ => {}
            }
        }
        if let Some(pm) = self.pagemap.get() {
            pm.pages_free(&dev_freed);
        }
    }

    fn alloc_system_pages(&self, out: &mut [u64]) -> gpusvm::Result<()> {
        lock(&self.sys).alloc(out)
    }

    fn free_system_pages(&self, pfns: &[u64]) {
        let mut sys = lock(&self.sys);
        for &p in pfns {
            sys.put(p);
        }
    }
}

/// Identity DMA for the copy engine.
struct IdentityDma;
impl DmaMapper for IdentityDma {
    #[inline]
    fn map_page(&self, pfn: u64, _: u8, _: DmaDirection) -> gpusvm::Result<u64> {
        Ok(pfn << PAGE_SHIFT)
    }
    #[inline]
    fn unmap_page(&self, _: u64, _: u8, _: DmaDirection) {}
}

/// The device memory and its memcpy copy engine.
struct BenchMem {
    dma: IdentityDma,
    arenas: Arc<Mutex<Arenas>>,
    blocks: Mutex<Blocks>,
    /// Copy commands (runs) executed.
    commands: AtomicUsize,
    /// `copy` calls.
    calls: AtomicUsize,
}

fn sys_off(bus: u64) -> usize {
    (((bus >> PAGE_SHIFT) - SYS_PFN0) << PAGE_SHIFT) as usize
}
fn dev_off(addr: u64) -> usize {
    (((addr >> PAGE_SHIFT) - DEV_PFN0) << PAGE_SHIFT) as usize
}

impl DeviceMemory for BenchMem {
    type Dma = IdentityDma;
    fn dma(&self) -> &IdentityDma {
        &self.dma
    }
    fn alloc(&self, out: &mut [u64]) -> gpusvm::Result<()> {
        lock(&self.blocks).alloc(out)
    }
    fn release(&self, dpfns: &[u64]) {
        let mut b = lock(&self.blocks);
        for &d in dpfns {
            b.put(d);
        }
    }
    fn copy(&self, runs: &[CopyRun]) -> Result<(), CopyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut a = lock(&self.arenas);
        let Arenas { sys, dev } = &mut *a;
        for r in runs {
            self.commands.fetch_add(1, Ordering::Relaxed);
            let len = (r.npages * PAGE_SIZE) as usize;
            match r.kind {
                CopyKind::RamToDevice => {
                    let (s, d) = (sys_off(r.src), dev_off(r.dst));
                    dev[d..d + len].copy_from_slice(&sys[s..s + len]);
                }
                CopyKind::DeviceToRam => {
                    let (s, d) = (dev_off(r.src), sys_off(r.dst));
                    sys[d..d + len].copy_from_slice(&dev[s..s + len]);
                }
                CopyKind::ZeroDevice => {
                    let d = dev_off(r.dst);
                    dev[d..d + len].fill(0);
                }
                CopyKind::DeviceToDevice => {
                    let (s, d) = (dev_off(r.src), dev_off(r.dst));
                    dev.copy_within(s..s + len, d);
                }
            }
        }
        Ok(())
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

/// One VMA of `len` bytes at `BASE` whose pages are system frames `frames`, and a pagemap.
struct World {
    mm: BenchMm,
    pm: BenchPagemap,
    arenas: Arc<Mutex<Arenas>>,
    len: u64,
}

impl World {
    /// The VMA's pages get system frames `frames` (which the allocator then holds).
    fn new(len: u64, frames: &[u64]) -> World {
        let arenas = Arc::new(Mutex::new(Arenas {
            sys: arena(BLOCKS * BLOCK * PAGE_SIZE),
            dev: arena(BLOCKS * BLOCK * PAGE_SIZE),
        }));
        let mut sys = Blocks::new(SYS_PFN0);
        sys.free.clear();
        for &f in frames {
            let b = (f - SYS_PFN0) / BLOCK;
            sys.live[b as usize] += 1;
        }
        sys.free = (0..BLOCKS)
            .rev()
            .filter(|&b| sys.live[b as usize] == 0)
            .collect();
        let mm = BenchMm {
            start: BASE,
            end: BASE + len,
            ptes: Mutex::new(frames.iter().map(|&f| PRESENT | f).collect()),
            sys: Mutex::new(sys),
            pagemap: OnceLock::new(),
        };
        let pm = Pagemap::new(
            PM,
            OWNER,
            BenchMem {
                dma: IdentityDma,
                arenas: arenas.clone(),
                blocks: Mutex::new(Blocks::new(DEV_PFN0)),
                commands: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
            },
        )
        .unwrap();
        assert!(mm.pagemap.set(pm.clone()).is_ok());
        let w = World {
            mm,
            pm,
            arenas,
            len,
        };
        // A recognisable pattern in the range's system pages.
        {
            let mut a = lock(&w.arenas);
            for (i, &f) in frames.iter().enumerate() {
                let o = sys_off(f << PAGE_SHIFT);
                a.sys[o..o + PAGE_SIZE as usize].fill(i as u8 ^ 0x3c);
            }
        }
        w
    }

    /// A contiguous range backed by the first frames of system block 0.
    fn contiguous(len: u64) -> World {
        let frames: Vec<u64> = (0..len / PAGE_SIZE).map(|i| SYS_PFN0 + i).collect();
        World::new(len, &frames)
    }

    fn to_devmem(&self) -> MigrateReport {
        migrate::to_devmem(
            &self.mm,
            &self.pm,
            BASE,
            BASE + self.len,
            &MigrateDetails::default(),
        )
        .expect("to_devmem")
    }

    fn to_ram(&self) -> MigrateReport {
        migrate::to_ram(&self.mm, &self.pm, BASE, BASE + self.len).expect("to_ram")
    }

    /// (copy calls, copy commands) so far.
    fn counts(&self) -> (usize, usize) {
        let m = self.pm.mem();
        (
            m.calls.load(Ordering::Relaxed),
            m.commands.load(Ordering::Relaxed),
        )
    }

    /// Whether every page is in device memory (`true`) or system memory (`false`), with the
    /// pattern intact.
    fn check(&self, in_devmem: bool) {
        let ptes = lock(&self.mm.ptes).clone();
        let a = lock(&self.arenas);
        for (i, &p) in ptes.iter().enumerate() {
            assert_eq!(p & PRESENT, PRESENT);
            assert_eq!(p & MIGRATING, 0);
            assert_eq!(p & DEVICE != 0, in_devmem, "page {i}");
            let f = p & FRAME;
            let o = if in_devmem {
                dev_off(f << PAGE_SHIFT)
            } else {
                sys_off(f << PAGE_SHIFT)
            };
            let mem = if in_devmem { &a.dev } else { &a.sys };
            assert!(mem[o..o + PAGE_SIZE as usize]
                .iter()
                .all(|&b| b == i as u8 ^ 0x3c));
        }
    }
}

/// Check one round trip of a contiguous range: one copy command each way. Returns the
/// command counts (to device memory, to RAM).
fn round_trip(w: &World) -> (usize, usize) {
    let n = (w.len / PAGE_SIZE) as usize;
    let c0 = w.counts();
    let r = w.to_devmem();
    let c1 = w.counts();
    assert_eq!(r.pages, n);
    assert_eq!(r.bytes, w.len);
    assert_eq!(r.copy_runs, 1, "a contiguous range is one copy run");
    assert_eq!(
        (c1.0 - c0.0, c1.1 - c0.1),
        (1, 1),
        "one copy call, one command"
    );
    w.check(true);
    let r = w.to_ram();
    let c2 = w.counts();
    assert_eq!(r.pages, n);
    assert_eq!(r.copy_runs, 1, "a contiguous range is one copy run");
    assert_eq!((c2.0 - c1.0, c2.1 - c1.1), (1, 1));
    w.check(false);
    (c1.1 - c0.1, c2.1 - c1.1)
}

fn bench_size(c: &mut Criterion, group: &str, len: u64) {
    let w = World::contiguous(len);
    let counts = round_trip(&w);
    println!(
        "{group}: copy-engine commands per migration: to_devmem {}, to_ram {}",
        counts.0, counts.1
    );
    // The same bytes the migrations copy: system block 0 <-> device block 0.
    let bytes = len as usize;
    let (s0, d0) = (0usize, 0usize);

    let mut g = c.benchmark_group(group);
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    g.bench_function("memcpy", |b| {
        let mut a = lock(&w.arenas);
        let Arenas { sys, dev } = &mut *a;
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                dev[d0..d0 + bytes].copy_from_slice(black_box(&sys[s0..s0 + bytes]));
                t += t0.elapsed();
                black_box(&dev[d0]);
            }
            t
        })
    });
    g.bench_function("memcpy_pingpong", |b| {
        let mut a = lock(&w.arenas);
        let Arenas { sys, dev } = &mut *a;
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                dev[d0..d0 + bytes].copy_from_slice(black_box(&sys[s0..s0 + bytes]));
                t += t0.elapsed();
                black_box(&dev[d0]);
                sys[s0..s0 + bytes].copy_from_slice(black_box(&dev[d0..d0 + bytes]));
            }
            t
        })
    });
    g.bench_function("to_devmem", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let r = w.to_devmem();
                t += t0.elapsed();
                black_box(r);
                w.to_ram();
            }
            t
        })
    });
    g.bench_function("memcpy_back", |b| {
        let mut a = lock(&w.arenas);
        let Arenas { sys, dev } = &mut *a;
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                sys[s0..s0 + bytes].copy_from_slice(black_box(&dev[d0..d0 + bytes]));
                t += t0.elapsed();
                black_box(&sys[s0]);
            }
            t
        })
    });
    w.to_devmem();
    g.bench_function("to_ram", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let r = w.to_ram();
                t += t0.elapsed();
                black_box(r);
                w.to_devmem();
            }
            t
        })
    });
    g.finish();
    w.to_ram();
    assert_eq!(w.pm.live_allocations(), 0);
    assert_eq!(lock(&w.mm.sys).free.len() as u64, BLOCKS - 1);
    assert_eq!(lock(&w.pm.mem().blocks).free.len() as u64, BLOCKS);
}

/// A 64 KiB range whose source frames come from two blocks: two copy commands to device
/// memory (one per contiguous run), then one back (the new system frames are contiguous).
fn fragmented_counts() -> (usize, usize) {
    let frames: Vec<u64> = (0..16)
        .map(|i| {
            if i < 8 {
                SYS_PFN0 + i
            } else {
                SYS_PFN0 + BLOCK + i
            }
        })
        .collect();
    let w = World::new(64 * KIB, &frames);
    let c0 = w.counts();
    let r = w.to_devmem();
    let c1 = w.counts();
    assert_eq!(r.copy_runs, 2);
    assert_eq!(c1.1 - c0.1, 2);
    w.check(true);
    let r = w.to_ram();
    assert_eq!(r.copy_runs, 1);
    w.check(false);
    (c1.1 - c0.1, w.counts().1 - c1.1)
}

/// The ratios again, measured interleaved (robust to load changes on the shared machine).
fn paired_migrate(group: &str, len: u64, rounds: usize, target: f64) {
    let w = World::contiguous(len);
    round_trip(&w);
    let bytes = len as usize;
    let n = if len >= MIB { 1 } else { 8 };
    let memcpy = || {
        let mut a = lock(&w.arenas);
        let Arenas { sys, dev } = &mut *a;
        per_op(n, || {
            dev[..bytes].copy_from_slice(black_box(&sys[..bytes]));
            black_box(&dev[0]);
        })
    };
    let to_devmem = || {
        let mut t = Duration::ZERO;
        for _ in 0..n {
            let t0 = Instant::now();
            black_box(w.to_devmem());
            t += t0.elapsed();
            w.to_ram();
        }
        t.as_nanos() as f64 / f64::from(n)
    };
    let memcpy_back = || {
        let mut a = lock(&w.arenas);
        let Arenas { sys, dev } = &mut *a;
        per_op(n, || {
            sys[..bytes].copy_from_slice(black_box(&dev[..bytes]));
            black_box(&sys[0]);
        })
    };
    let to_ram = || {
        let mut t = Duration::ZERO;
        for _ in 0..n {
            w.to_devmem();
            let t0 = Instant::now();
            black_box(w.to_ram());
            t += t0.elapsed();
        }
        t.as_nanos() as f64 / f64::from(n)
    };
    let p = paired(rounds, to_devmem, memcpy);
    print_paired(group, "to_devmem", "memcpy", &p, Some(target));
    let p = paired(rounds, to_ram, memcpy_back);
    print_paired(group, "to_ram", "memcpy_back", &p, None);
}

fn main() {
    common::start();
    let mut c = Criterion::default().configure_from_args();
    bench_size(&mut c, "migrate_2m", 2 * MIB);
    bench_size(&mut c, "migrate_64k", 64 * KIB);
    let frag = fragmented_counts();
    c.final_summary();
    if !common::test_mode() {
        println!("\n=== migrate: paired measurements");
        paired_migrate("migrate_2m", 2 * MIB, 400, 1.15);
        paired_migrate("migrate_64k", 64 * KIB, 2000, 1.5);
    }
    let r = |group, num, den, target| Ratio {
        group,
        num,
        den,
        target,
    };
    report(
        "migrate: RAM <-> device memory with a memcpy copy engine",
        &[
            r("migrate_2m", "to_devmem", "memcpy", Some(1.15)),
            r("migrate_2m", "to_devmem", "memcpy_pingpong", None),
            r("migrate_2m", "to_ram", "memcpy_back", None),
            r("migrate_64k", "to_devmem", "memcpy", Some(1.5)),
            r("migrate_64k", "to_devmem", "memcpy_pingpong", None),
            r("migrate_64k", "to_ram", "memcpy_back", None),
        ],
    );
    println!(
        "  copy-engine commands (asserted): 2 MiB contiguous 1 + 1 back; 64 KiB contiguous \
         1 + 1 back; 64 KiB from two frame runs {} + {} back",
        frag.0, frag.1
    );
}
