//! DESIGN invariant 9 (issue 14, item 6): any allocation may fail. Each API scenario — first-touch
//! fault (system memory and device memory), migration to device memory and back (eviction and a
//! CPU fault), device to device (linked, and through system memory), prefetch both ways,
//! attribute updates, invalidation during a fault, GC, teardown and close, plus a userptr
//! collection and attaching a pagemap — is run with its k-th allocation through the host
//! allocator ([`SimAlloc`], the allocator of the simulator's host) failing, for every k from 1
//! to the number n of allocations the scenario's step makes (counted by a dry run first).
//! `GPUSVM_ALLOC_VERBOSE=1` prints each k's outcome and where the failing allocation was made.
//!
//! A scenario is a set-up (not counted: machine, devices, mappings, CPU writes, and the state the
//! step needs) and a step (the API call(s) under test). For every k, on a fresh set-up:
//!
//! - the step fails with [`Error::NoMem`] — or the library absorbs the failure where its
//!   contract says so (each such case is documented at its scenario; the step then returns the
//!   dry run's result);
//! - the simulator's invariants hold ([`check_invariants`]), no page is left isolated, the data
//!   the CPU wrote reads back unchanged (read without side effects: a device page straight from
//!   device memory), and, for the all-or-nothing calls, no page moved;
//! - with the failure schedule stopped, the step is retried and succeeds with the dry run's
//!   result (and placement, unless the scenario documents why a failure may change where pages
//!   end up);
//! - then every device is closed and everything dropped: [`SimAlloc::stats`] shows as many
//!   frees as allocations and no live bytes (per thread: each scenario runs on its test's
//!   thread), and no allocation broke the lock rules ([`SimAlloc`] checks each against the
//!   locks held: none under a lock the invalidation path takes, `NoSleep` under a spinning one).
//!
//! Also here: the invalidation path (`invalidate_begin`/`_nonblock`/`invalidate_end`, through
//! the simulated CPU or called directly) makes no allocation attempt through [`SimAlloc`], even
//! with every allocation failing, complementing `tests/no_alloc_invalidate.rs` (which counts the
//! global allocator); and the `api` fuzz harness runs with failing allocations
//! (`ApiOp::FailAllocs` before every call).
#![cfg(feature = "sim")]

use gpusvm::migrate::MigrateDetails;
use gpusvm::pagemap::Pagemap;
use gpusvm::pages::{PagesCtx, RetryPolicy};
use gpusvm::platform::{OwnerId, PagemapId, Platform};
use gpusvm::platform::{VmaFlags, PAGE_SIZE};
use gpusvm::policy::{AttrUpdate, PreferredLoc, PrefetchLoc, RawAttr};
use gpusvm::sim::{check_closed, check_invariants, AllocStats, SimAlloc, SimGpu, SimMm, SimWorld};
use gpusvm::sim::{SimDevice, SimDevmem, SimHost, SimPagemapArc};
use gpusvm::{Access, Error, Event, Result, SvmConfig, Userptr, Window};
use std::sync::{Arc, Mutex};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const P: u64 = PAGE_SIZE;
const K64: u64 = 64 << 10;
/// Where the scenarios map their memory (2 MiB aligned).
const BUF: u64 = 0x40_0000_0000;
/// Device memory of each device, in pages.
const VRAM: u64 = 64;

/// A set-up machine: the state a step starts from.
struct Fx {
    world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    gpus: Vec<SimGpu>,
    /// The interval the scenario works on (placement is reported over it).
    buf: u64,
    len: u64,
    /// What the CPU wrote: (address, value). Must read back unchanged after every step.
    data: Vec<(u64, u64)>,
    /// A userptr over the interval and the device it maps pages for (not among `gpus`: the
    /// invariant checker knows only `Svm` ranges), for the userptr scenario.
    userptr: Option<(Userptr<SimHost>, SimGpu)>,
    /// A pagemap no device knows, for the attach scenario.
    pagemap: Option<SimPagemapArc>,
}

fn tag(addr: u64) -> u64 {
    addr ^ 0x5EED_0000_0000_0000
}

/// A device configuration: the default one, with device memory preferred or not.
fn cfg(prefer_devmem: bool) -> SvmConfig {
    let mut c = SvmConfig::new(0, 1 << 47);
    c.prefer_devmem = prefer_devmem;
    c
}

impl Fx {
    /// A machine with devices `gpus(mm)`, a `len`-byte RW mapping, and a CPU write of a tag to
    /// the first word of each of its pages.
    fn new(len: u64, gpus: impl FnOnce(&Arc<SimWorld>, &Arc<SimMm>) -> Vec<SimGpu>) -> Fx {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpus = gpus(&world, &mm);
        let buf = mm.mmap_fixed(BUF, len, RW, false).expect("mmap");
        let mut data = Vec::new();
        for a in (buf..buf + len).step_by(P as usize) {
            mm.write_u64(a, tag(a)).expect("cpu write");
            data.push((a, tag(a)));
        }
        Fx {
            world,
            mm,
            gpus,
            buf,
            len,
            data,
            userptr: None,
            pagemap: None,
        }
    }

    /// One device without device memory.
    fn ram(len: u64) -> Fx {
        Fx::new(len, |_, mm| {
            vec![SimGpu::new(mm, 0, cfg(false)).expect("device")]
        })
    }

    /// One device with device memory, preferring it (or not) for faulting ranges.
    fn devmem(len: u64, prefer: bool) -> Fx {
        Fx::new(len, |_, mm| {
            let g = SimGpu::new(mm, 0, cfg(prefer)).expect("device");
            g.add_devmem(VRAM, 0).expect("device memory");
            vec![g]
        })
    }

    /// Two devices with device memory preferring it, linked (one owner, peer access) or not.
    fn two(len: u64, link: bool) -> Fx {
        Fx::two_with(len, link, cfg(true))
    }

    /// [`Fx::two`] with a device configuration.
    fn two_with(len: u64, link: bool, config: SvmConfig) -> Fx {
        Fx::new(len, |world, mm| {
            if link {
                world.link(0, 1);
            }
            (0..2)
                .map(|id| SimGpu::join_with(mm, id, VRAM, config.clone()).expect("device"))
                .collect()
        })
    }

    fn g(&self, i: usize) -> &SimGpu {
        &self.gpus[i]
    }

    /// Device `i` faults `addr` in (`access`) and binds it, as a driver's fault handler does.
    /// Returns what an API user sees: the range (relative to `buf`) and the bytes bound.
    fn fault(&self, i: usize, addr: u64, access: Access) -> Result<String> {
        let g = self.g(i);
        let (r, bytes) = g
            .svm
            .handle_fault_and_bind(addr, access, Window::ALL, |r, e| g.write_ptes(r, e))?;
        Ok(format!(
            "range [{:#x}, {:#x}) bound {bytes:#x}",
            r.start() - self.buf,
            r.end() - self.buf
        ))
    }

    /// Fault every 64 KiB of the interval in on device `i` (set-up).
    fn fault_all(&self, i: usize) {
        for a in (self.buf..self.buf + self.len).step_by(K64 as usize) {
            self.fault(i, a, Access::Read).expect("set-up fault");
        }
    }

    /// The range of device `i` at `addr`.
    fn range(&self, i: usize, addr: u64) -> gpusvm::range::RangeArc<gpusvm::sim::SimHost> {
        self.g(i).svm.find(addr).expect("a range")
    }

    /// Where each page of the interval is — `R` system memory, a digit the device whose memory
    /// holds it, `-` absent, `M` isolated for migration — and the device frames in use.
    fn placement(&self) -> String {
        let mut s = String::new();
        for a in (self.buf..self.buf + self.len).step_by(P as usize) {
            s.push(match self.mm.pte(a) {
                None => '-',
                Some(p) if p.migrating => 'M',
                Some(p) => match p.dev {
                    Some((pm, _)) => char::from_digit(pm.0 % 10, 10).unwrap_or('?'),
                    None => 'R',
                },
            });
        }
        for g in &self.gpus {
            s.push_str(&format!(" vram{}={}", g.dev.id(), g.dev.vram_used().len()));
        }
        s
    }

    /// The word at `addr`, read without side effects: a present system page through the CPU
    /// (no fault), a device page straight from its device memory.
    fn peek(&self, addr: u64) -> std::result::Result<u64, String> {
        let p = self
            .mm
            .pte(addr)
            .ok_or_else(|| format!("page of {addr:#x} is gone"))?;
        if p.migrating || p.placeholder {
            return Err(format!("page of {addr:#x} left isolated for migration"));
        }
        match p.dev {
            Some((pm, _)) => {
                let dev = self
                    .world
                    .device(pm.0)
                    .ok_or_else(|| format!("no device {} for {addr:#x}", pm.0))?;
                dev.vram_read_u64(p.pfn, (addr % P) as usize)
                    .map_err(|e| format!("device frame of {addr:#x}: {e:?}"))
            }
            None => self
                .mm
                .read_u64(addr)
                .map_err(|e| format!("CPU read of {addr:#x}: {e:?}")),
        }
    }

    /// The invariants, and the data the CPU wrote.
    fn check(&self) -> std::result::Result<(), String> {
        let gpus: Vec<&SimGpu> = self.gpus.iter().collect();
        check_invariants(&self.mm, &gpus)?;
        if let Some((u, g)) = &self.userptr {
            // Without valid pages nothing is mapped (a failed collection leaks no mapping).
            let maps = g.dev.dma_mappings().len();
            if !u.pages_valid() && maps != 0 {
                return Err(format!("userptr: {maps} DMA mappings without valid pages"));
            }
            if let Some(v) = g.dev.dma_violations().first() {
                return Err(format!("userptr: IOMMU violation: {v}"));
            }
        }
        for &(a, v) in &self.data {
            let got = self.peek(a)?;
            if got != v {
                return Err(format!(
                    "{addr:#x} reads {got:#x}, written {v:#x}",
                    addr = a
                ));
            }
        }
        Ok(())
    }

    /// Every device reads every written word (faulting and binding as needed), then the CPU.
    fn read_back(&self) -> std::result::Result<(), String> {
        for g in &self.gpus {
            if g.svm.is_closed() {
                continue;
            }
            for &(a, v) in &self.data {
                let got = g
                    .read_u64(a)
                    .map_err(|e| format!("dev {} read of {a:#x}: {e:?}", g.dev.id()))?;
                if got != v {
                    return Err(format!(
                        "dev {} reads {got:#x} at {a:#x}, not {v:#x}",
                        g.dev.id()
                    ));
                }
            }
        }
        for &(a, v) in &self.data {
            let got = self
                .mm
                .read_u64(a)
                .map_err(|e| format!("CPU read of {a:#x}: {e:?}"))?;
            if got != v {
                return Err(format!("CPU reads {got:#x} at {a:#x}, not {v:#x}"));
            }
        }
        self.check()
    }

    /// Close every device, check that nothing is left, drop everything.
    fn teardown(self) -> std::result::Result<(), String> {
        if let Some((u, g)) = &self.userptr {
            u.free_pages(g.svm.platform().dma());
            if !g.dev.dma_mappings().is_empty() {
                return Err(String::from("userptr: DMA mappings left after free_pages"));
            }
            g.svm.close();
        }
        for g in &self.gpus {
            g.svm.close();
            check_closed(g).map_err(|e| format!("dev {} after close: {e}", g.dev.id()))?;
        }
        drop(self);
        Ok(())
    }
}

/// One scenario.
struct Scenario {
    name: &'static str,
    setup: fn() -> Fx,
    step: fn(&Fx) -> Result<String>,
    /// The call is all-or-nothing: on error no page moved.
    atomic: bool,
    /// Where the library absorbs an allocation failure (the step returns `Ok` with the dry
    /// run's result): why. `None`: every failure must surface as `NoMem`.
    absorbs: Option<&'static str>,
    /// Why a failure (absorbed, or followed by the retry) may leave pages elsewhere than the
    /// dry run did (the data is still checked). `None`: the retry ends exactly where the dry
    /// run did.
    placement_may_differ: Option<&'static str>,
}

/// Absorbed by `Svm::evict`: the page snapshot that tells which pagemaps hold pages of the
/// range is an optimisation; without memory for it the eviction tries every attached pagemap,
/// with the same outcome.
const SNAPSHOT_FALLBACK: &str = "evict: a failed page snapshot tries every attached pagemap";

/// What a run of one scenario found.
#[derive(Debug, Default)]
struct Report {
    n: u64,
    /// The k whose failure the library absorbed.
    absorbed: Vec<u64>,
    /// The k after which the pages ended elsewhere than in the dry run.
    placed_elsewhere: Vec<u64>,
}

fn allocs_since(before: AllocStats) -> (u64, u64) {
    let now = SimAlloc::stats();
    (now.allocs - before.allocs, now.failed - before.failed)
}

/// Everything the set-up, the step and the retry allocated is freed once the machine is gone,
/// and no allocation was made under a lock the invalidation path takes (or in the wrong
/// context under a spinning lock).
fn no_leak(what: &str) -> std::result::Result<(), String> {
    let s = SimAlloc::stats();
    if s.allocs != s.frees || s.live_bytes != 0 {
        return Err(format!("{what}: leak: {s:?}"));
    }
    if let Some(v) = SimAlloc::first_lock_violation() {
        return Err(format!(
            "{what}: {} lock-rule violations, first: {v}",
            s.lock_violations
        ));
    }
    Ok(())
}

/// Where the failing allocation was made: the crate's frames of its backtrace.
fn where_failed() -> String {
    let Some(bt) = SimAlloc::last_failure() else {
        return String::from("(no trace)");
    };
    let text = format!("{bt}");
    let frames: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            // "  12: path::to::function" (the "at file:line" lines are skipped).
            let (_, f) = l.trim().split_once(": ")?;
            let f = f.trim_start_matches('<');
            let crate_frame = f.starts_with("gpusvm::")
                && !f.starts_with("gpusvm::heap::")
                && !f.starts_with("gpusvm::sim::alloc::");
            crate_frame.then_some(f)
        })
        .take(6)
        .collect();
    format!("failing allocation made in:\n    {}", frames.join("\n    "))
}

fn run(sc: &Scenario) -> Report {
    let name = sc.name;
    SimAlloc::trace_failures(true);
    // The dry run: how many allocations the step makes, and what it returns.
    SimAlloc::reset();
    let fx = (sc.setup)();
    fx.check()
        .unwrap_or_else(|e| panic!("{name}: after set-up: {e}"));
    let before = SimAlloc::stats();
    let want = (sc.step)(&fx).unwrap_or_else(|e| panic!("{name}: dry run: {e:?}"));
    let (n, failed) = allocs_since(before);
    assert_eq!(failed, 0);
    let no_sleep = SimAlloc::stats().no_sleep - before.no_sleep;
    let want_place = fx.placement();
    fx.check()
        .unwrap_or_else(|e| panic!("{name}: after the dry run: {e}"));
    // What the step returns when it is repeated after succeeding (compared with the repeat
    // after an absorbed failure).
    let want_again = (sc.step)(&fx).unwrap_or_else(|e| panic!("{name}: dry run repeated: {e:?}"));
    fx.read_back()
        .unwrap_or_else(|e| panic!("{name}: dry run read-back: {e}"));
    fx.teardown()
        .unwrap_or_else(|e| panic!("{name}: dry run: {e}"));
    no_leak(name).unwrap_or_else(|e| panic!("{e} (dry run)"));

    let mut report = Report {
        n,
        ..Report::default()
    };
    let mut violations = Vec::new();
    for k in 1..=n {
        let want = Want {
            result: &want,
            again: &want_again,
            place: &want_place,
        };
        if let Err(e) = run_k(sc, k, n, &want, &mut report) {
            violations.push(e);
        }
    }
    eprintln!(
        "{name}: n = {n} ({no_sleep} NoSleep); absorbed at k = {:?}; placed elsewhere after k = \
         {:?}; {} violations",
        report.absorbed,
        report.placed_elsewhere,
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{name}: {} of {n} injected failures violate the contract:\n\n{}",
        violations.len(),
        violations.join("\n\n")
    );
    report
}

/// What the dry run found.
struct Want<'a> {
    /// The step's result.
    result: &'a str,
    /// The step's result when repeated after it succeeded.
    again: &'a str,
    /// Where the pages were after the step.
    place: &'a str,
}

/// One k: set up, fail the k-th allocation of the step, check, retry, tear down.
fn run_k(
    sc: &Scenario,
    k: u64,
    n: u64,
    want: &Want<'_>,
    report: &mut Report,
) -> std::result::Result<(), String> {
    let want_place = want.place;
    let ctx = format!("{}, allocation {k} of {n} failing", sc.name);
    SimAlloc::reset();
    let fx = (sc.setup)();
    let place0 = fx.placement();
    let before = SimAlloc::stats();
    SimAlloc::fail_after(k - 1, 1);
    let got = (sc.step)(&fx);
    SimAlloc::stop_failing();
    let (_, failed) = allocs_since(before);
    if failed != 1 {
        return Err(format!("{ctx}: the failure did not fire ({got:?})"));
    }
    let ctx = format!("{ctx}: {got:?}; {}", where_failed());
    if std::env::var_os("GPUSVM_ALLOC_VERBOSE").is_some() {
        eprintln!("{ctx}");
    }
    let place = fx.placement();
    let mut errs = Vec::new();
    match &got {
        Err(Error::NoMem) => {
            if sc.atomic && place != place0 {
                errs.push(format!("the failed call moved pages: {place0} -> {place}"));
            }
        }
        Ok(r) if sc.absorbs.is_some() => {
            if r != want.result {
                errs.push(format!(
                    "absorbed, but the result differs from the dry run's {:?}",
                    want.result
                ));
            }
            if place != want_place && sc.placement_may_differ.is_none() {
                errs.push(format!(
                    "absorbed, but pages are at {place}, dry run {want_place}"
                ));
            }
            report.absorbed.push(k);
        }
        _ => errs.push(String::from("expected Err(NoMem)")),
    }
    if let Err(e) = fx.check() {
        errs.push(format!("after the failure: {e}"));
    }
    // The retry (after an absorbed failure: the repeat), with nothing failing.
    let expect = if got.is_ok() { want.again } else { want.result };
    match (sc.step)(&fx) {
        Ok(again) if again == expect => {}
        other => errs.push(format!("retry returned {other:?}, dry run {expect:?}")),
    }
    let place = fx.placement();
    if place != want_place {
        if sc.placement_may_differ.is_none() {
            errs.push(format!(
                "after the retry pages are at {place}, dry run {want_place}"
            ));
        }
        report.placed_elsewhere.push(k);
    }
    if let Err(e) = fx.check() {
        errs.push(format!("after the retry: {e}"));
    }
    if let Err(e) = fx.read_back() {
        errs.push(format!("read-back: {e}"));
    }
    if let Err(e) = fx.teardown() {
        errs.push(e);
    }
    if let Err(e) = no_leak("teardown") {
        errs.push(e);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{ctx}\n  => {}", errs.join("\n  => ")))
    }
}

/// The step of the migration scenarios: device 0 migrates the whole buffer's range to its
/// device memory; the report is the step's result.
fn migrate_buf_to_devmem(fx: &Fx) -> Result<String> {
    let r = fx.range(0, fx.buf);
    let rep = fx
        .g(0)
        .svm
        .migrate_to_devmem(&r, &MigrateDetails::default())?;
    Ok(format!("{rep:?}"))
}

// ---- first-touch faults ---------------------------------------------------------------------

/// A device without device memory faults a fresh 64 KiB range in: the range, its notifier, the
/// page arrays.
#[test]
fn first_touch_fault() {
    let r = run(&Scenario {
        name: "first-touch fault (system memory)",
        setup: || Fx::ram(K64),
        step: |fx| fx.fault(0, fx.buf + P, Access::Read),
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
    assert!(r.n > 0, "a first-touch fault allocates");
}

/// A device preferring its memory faults a fresh range in: created, migrated in, collected.
///
/// Absorbed: a failure inside the migration. The fault service places the range "best effort"
/// (SPEC §7 populate): a failed migration marks the range `MIGRATE_FAILED` and the fault
/// continues in system memory ("migrate once", so the retry leaves it there too).
#[test]
fn first_touch_fault_devmem() {
    run(&Scenario {
        name: "first-touch fault (device memory)",
        setup: || Fx::devmem(K64, true),
        step: |fx| fx.fault(0, fx.buf + P, Access::Write),
        atomic: false,
        absorbs: Some("a failed migration falls back to system memory"),
        placement_may_differ: Some("migrate once: a range whose migration failed stays in RAM"),
    });
}

// ---- migrations -----------------------------------------------------------------------------

/// `Svm::migrate_to_devmem` of a range in system memory (all-or-nothing).
#[test]
fn migrate_to_devmem() {
    run(&Scenario {
        name: "migrate to device memory",
        setup: || {
            let fx = Fx::devmem(K64, false);
            fx.fault_all(0);
            fx
        },
        step: migrate_buf_to_devmem,
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// `Svm::evict` of a range in device memory back to system memory.
///
/// Absorbed: [`SNAPSHOT_FALLBACK`].
#[test]
fn evict_to_ram() {
    run(&Scenario {
        name: "evict to system memory",
        setup: || {
            let fx = Fx::devmem(K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            let r = fx.range(0, fx.buf);
            let rep = fx.g(0).svm.evict(&r)?;
            Ok(format!("{rep:?}"))
        },
        atomic: true,
        absorbs: Some(SNAPSHOT_FALLBACK),
        placement_may_differ: None,
    });
}

/// A CPU read of a page in device memory: the pagemap's `migrate_to_ram` (the kernel's
/// `dev_pagemap_ops.migrate_to_ram`) brings the allocation back.
#[test]
fn cpu_fault_to_ram() {
    run(&Scenario {
        name: "CPU fault on a device page",
        setup: || {
            let fx = Fx::devmem(K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            let a = fx.buf + 3 * P;
            let v = fx.mm.read_u64(a)?;
            Ok(format!("{v:#x}"))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// Device to device over a link: device 0 maps device 1's pages peer-to-peer, then
/// `migrate_to_devmem` moves them into its own memory (copied device to device).
#[test]
fn device_to_device() {
    run(&Scenario {
        name: "device to device (linked)",
        setup: || {
            let fx = Fx::two(K64, true);
            fx.fault_all(1);
            fx.fault_all(0);
            fx
        },
        step: migrate_buf_to_devmem,
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// Without a link: device 0 faults on pages in device 1's memory; the fault migrates them into
/// device 0's memory through system memory (device 1's engine evicts them, device 0's brings
/// them in). The devices check no pages before choosing a 64 KiB range
/// (`check_pages_threshold` 4 KiB): pages of another owner do not count as present, which
/// would make the range a single page.
///
/// Absorbed: as for the first-touch fault in device memory, a failed migration (either leg)
/// leaves the range where the data is (device 1's memory or system memory) and the fault is
/// served from system memory.
#[test]
fn device_to_device_through_ram() {
    run(&Scenario {
        name: "device to device (not linked, fault)",
        setup: || {
            let mut c = cfg(true);
            c.check_pages_threshold = P;
            let fx = Fx::two_with(K64, false, c);
            fx.fault_all(1);
            fx
        },
        step: |fx| fx.fault(0, fx.buf, Access::Read),
        atomic: false,
        absorbs: Some("a failed migration falls back to system memory"),
        placement_may_differ: Some("migrate once: a range whose migration failed stays in RAM"),
    });
}

// ---- prefetch -------------------------------------------------------------------------------

/// `Svm::prefetch` of 128 KiB (two ranges, created by the prefetch) into device memory.
///
/// Absorbed: (1) the residency check before migrating is a page snapshot; without memory for
/// it the range is migrated (the migration finds out itself what is already there); (2) the
/// populate rule (SPEC §7): a migration failing with `NoMem` evicts the other range holding
/// device memory (the first one) and is tried once more, which succeeds — the first range then
/// ends in system memory.
#[test]
fn prefetch_to_device() {
    run(&Scenario {
        name: "prefetch to device memory",
        setup: || Fx::devmem(2 * K64, false),
        step: |fx| {
            fx.g(0).svm.prefetch(fx.buf, fx.len, PrefetchLoc::Device)?;
            Ok(String::from("ok"))
        },
        atomic: false,
        absorbs: Some("populate: NoMem evicts another range in device memory and retries"),
        placement_may_differ: Some("the range evicted to make room stays in system memory"),
    });
}

/// `Svm::prefetch` of 128 KiB in device memory to system memory.
///
/// Absorbed: [`SNAPSHOT_FALLBACK`].
#[test]
fn prefetch_to_system() {
    run(&Scenario {
        name: "prefetch to system memory",
        setup: || {
            let fx = Fx::devmem(2 * K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            fx.g(0).svm.prefetch(fx.buf, fx.len, PrefetchLoc::System)?;
            Ok(String::from("ok"))
        },
        atomic: false,
        absorbs: Some(SNAPSHOT_FALLBACK),
        placement_may_differ: None,
    });
}

// ---- attributes -----------------------------------------------------------------------------

/// `Svm::set_attrs` over an interval that straddles two ranges in device memory: they are
/// evicted and removed.
///
/// Absorbed: after the attribute store is updated (the call's only failure point, which
/// leaves the store unchanged), the straddling ranges are evicted "where possible" — pages
/// that cannot be evicted stay in device memory, still mapped by the CPU (nothing is lost), and
/// the ranges are removed anyway, so a failure there is not an error of the call.
#[test]
fn set_attrs_straddling() {
    run(&Scenario {
        name: "set_attrs straddling ranges in device memory",
        setup: || {
            let fx = Fx::devmem(2 * K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            let u = AttrUpdate {
                preferred: Some(PreferredLoc::System),
                ..AttrUpdate::default()
            };
            fx.g(0).svm.set_attrs(fx.buf + K64 / 2, K64, &u)?;
            Ok(format!("{:?}", fx.g(0).svm.attrs_at(fx.buf + K64)))
        },
        atomic: false,
        absorbs: Some("a failed eviction of a straddling range leaves its pages in device memory"),
        placement_may_differ: Some("pages a failed eviction left stay in device memory"),
    });
}

/// `Svm::set_attrs_raw` inside one range in system memory (it loses its device mappings).
#[test]
fn set_attrs_inner() {
    let r = run(&Scenario {
        name: "set_attrs_raw inside a range",
        setup: || {
            let fx = Fx::ram(K64);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            // kind 2: the atomic policy, value 2: global.
            let raw = [RawAttr {
                kind: 2,
                value: 2,
                reserved: 0,
            }];
            fx.g(0).svm.set_attrs_raw(fx.buf, fx.len, &raw)?;
            Ok(format!("{:?}", fx.g(0).svm.attrs_at(fx.buf)))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
    assert!(r.n > 0, "an attribute update allocates its segment array");
}

// ---- userptr and pagemaps ------------------------------------------------------------------

/// `Userptr::get_pages` (a driver's userptr, outside any `Svm`): the page array, the entries.
#[test]
fn userptr_get_pages() {
    let r = run(&Scenario {
        name: "userptr get_pages",
        setup: || {
            let mut fx = Fx::ram(K64);
            let u = Userptr::with_host(fx.buf, fx.buf + fx.len).expect("userptr");
            let g = SimGpu::new(&fx.mm, 1, cfg(false)).expect("device");
            fx.userptr = Some((u, g));
            fx
        },
        step: |fx| {
            let (u, g) = fx.userptr.as_ref().expect("userptr");
            u.get_pages(
                g.svm.platform(),
                &PagesCtx::default(),
                &RetryPolicy::default(),
            )?;
            let bytes = u.bind(|at, entries| {
                assert_eq!(at, fx.buf);
                entries.iter().map(|e| e.size()).sum::<u64>()
            })?;
            Ok(format!("bound {bytes:#x}"))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
    assert!(r.n > 0);
}

/// `Svm::attach_pagemap` of another device's pagemap (the pagemap set grows).
#[test]
fn attach_pagemap() {
    run(&Scenario {
        name: "attach_pagemap",
        setup: || {
            let mut fx = Fx::ram(K64);
            // A pagemap the device does not know (not registered with the machine).
            let dev = SimDevice::new(&fx.world, 1);
            dev.set_vram_pages(VRAM);
            let pm = Pagemap::new(PagemapId(1), OwnerId(0), SimDevmem(dev)).expect("pagemap");
            fx.pagemap = Some(pm);
            fx
        },
        step: |fx| {
            let pm = fx.pagemap.clone().expect("pagemap");
            fx.g(0).svm.attach_pagemap(pm)?;
            let attached = fx.g(0).svm.pagemap_by_id(PagemapId(1)).is_some();
            Ok(format!("attached {attached}"))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

// ---- invalidation during a fault ------------------------------------------------------------

/// A fault whose page collection is overlapped by an invalidation (`Clear`, issued by the
/// simulator's collection hook straight after the collection of the inserted range, before the
/// commit): the commit is refused and the fault collects again. The invalidation itself makes
/// no allocation attempt ([`SimAlloc::without_memory`]).
#[test]
fn invalidation_during_fault() {
    run(&Scenario {
        name: "invalidation during a fault",
        setup: || Fx::ram(K64),
        step: |fx| {
            let svm = Arc::downgrade(&fx.g(0).svm);
            let (s, e) = (fx.buf, fx.buf + fx.len);
            // Invalidations issued, and allocation attempts they made.
            let seen = Arc::new(Mutex::new((0u64, 0u64)));
            let hook_seen = seen.clone();
            fx.mm
                .set_collect_hook(Some(Box::new(move |mm: &Arc<SimMm>| {
                    let Some(svm) = svm.upgrade() else {
                        return;
                    };
                    // Once, and only for the collection of the range's pages (the chunk selection
                    // snapshots pages before the range exists).
                    let mut seen = hook_seen.lock().unwrap();
                    if seen.0 > 0 || svm.find(s).is_none() {
                        return;
                    }
                    let ((), attempts) = SimAlloc::without_memory(|| {
                        for (_, id, ns, ne) in mm.notifiers() {
                            if ns < e && s < ne {
                                svm.invalidate_begin(id, s, e, Event::Clear);
                                svm.invalidate_end(id, s, e);
                            }
                        }
                    });
                    seen.0 += 1;
                    seen.1 += attempts;
                })));
            let retries = fx.g(0).svm.stats().retries;
            let fresh = fx.g(0).svm.find(s).is_none();
            let got = fx.fault(0, s, Access::Read);
            fx.mm.set_collect_hook(None);
            let (fired, attempts) = *seen.lock().unwrap();
            assert_eq!(attempts, 0, "the invalidation path tried to allocate");
            let got = got?;
            if fresh {
                assert_eq!(fired, 1, "the invalidation was not issued");
                assert!(
                    fx.g(0).svm.stats().retries > retries,
                    "the fault collected again after the invalidation"
                );
            }
            Ok(got)
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

// ---- GC -------------------------------------------------------------------------------------

/// The CPU unmaps the second half of a 128 KiB range in device memory... (set-up); `gc_run`
/// evicts the surviving part to system memory and removes the range.
///
/// Absorbed: `gc_run` cannot fail; when the eviction fails, the surviving pages stay in device
/// memory, still mapped by the CPU (a CPU fault brings them back), and the range is removed
/// anyway. The step's result is the number of ranges left (0).
#[test]
fn gc_partial_unmap() {
    run(&Scenario {
        name: "GC of a partly unmapped range in device memory",
        setup: || {
            let mut fx = Fx::new(2 * K64, |_, mm| {
                let g = SimGpu::new(mm, 0, cfg(true).with_chunk_sizes(&[2 * K64, P]).unwrap())
                    .expect("device");
                g.add_devmem(VRAM, 0).expect("device memory");
                vec![g]
            });
            fx.fault(0, fx.buf, Access::Read).expect("set-up fault");
            assert_eq!(fx.range(0, fx.buf).size(), 2 * K64);
            fx.mm.munmap(fx.buf + K64, K64).expect("munmap");
            fx.len = K64;
            fx.data.retain(|&(a, _)| a < fx.buf + K64);
            assert_eq!(fx.g(0).svm.gc_pending(), 1);
            fx
        },
        step: |fx| {
            fx.g(0).svm.gc_run();
            Ok(format!("{} ranges left", fx.g(0).svm.counts().1))
        },
        atomic: false,
        absorbs: Some("gc_run cannot fail: a failed eviction leaves the pages in device memory"),
        placement_may_differ: Some("pages a failed eviction left stay in device memory"),
    });
}

// ---- teardown -------------------------------------------------------------------------------

/// `SimGpu::teardown` of a device whose memory holds a range: its pages go back to system
/// memory (`Pagemap::allocations`, `migrate::to_ram`), the pagemap is detached, the `Svm`
/// closed.
#[test]
fn teardown() {
    run(&Scenario {
        name: "teardown of a device holding pages",
        setup: || {
            let fx = Fx::devmem(2 * K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            fx.g(0).teardown()?;
            Ok(format!("closed {}", fx.g(0).svm.is_closed()))
        },
        atomic: false,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// `Svm::close` of a device with bound ranges allocates nothing.
#[test]
fn close_allocates_nothing() {
    SimAlloc::reset();
    let fx = Fx::ram(2 * K64);
    fx.fault_all(0);
    let before = SimAlloc::stats();
    SimAlloc::fail_next(u64::MAX);
    fx.g(0).svm.close();
    SimAlloc::stop_failing();
    let (n, failed) = allocs_since(before);
    assert_eq!((n, failed), (0, 0), "close allocated");
    check_closed(fx.g(0)).unwrap();
    fx.teardown().unwrap();
    no_leak("close").unwrap();
}

// ---- the invalidation path ------------------------------------------------------------------

/// `invalidate_begin`/`invalidate_begin_nonblock`/`invalidate_end` for every event, over ranges
/// in system memory and in device memory, whole and partial, allocate nothing through the host
/// allocator — even with every allocation failing — and `Unmap` queues ranges for the GC
/// without allocating.
#[test]
fn invalidation_allocates_nothing() {
    SimAlloc::reset();
    let fx = Fx::new(4 * K64, |_, mm| {
        let g = SimGpu::new(mm, 0, cfg(false)).expect("device");
        g.add_devmem(VRAM, 0).expect("device memory");
        vec![g]
    });
    let svm = &fx.g(0).svm;
    let events = [
        Event::Clear,
        Event::Protection,
        Event::Migrate { owner: None },
        Event::Unmap,
        Event::Release,
    ];
    for event in events {
        // Two ranges in system memory, two in device memory, all bound.
        svm.gc_run();
        fx.fault_all(0);
        for a in [fx.buf + 2 * K64, fx.buf + 3 * K64] {
            let r = fx.range(0, a);
            svm.migrate_to_devmem(&r, &MigrateDetails::default())
                .expect("set-up migration");
        }
        fx.read_back().unwrap();
        let notifiers = fx.mm.notifiers();
        assert!(!notifiers.is_empty());
        let intervals = [
            (fx.buf, fx.buf + fx.len),
            (fx.buf + P, fx.buf + 2 * P),
            (fx.buf + K64 - P, fx.buf + 3 * K64 + P),
            (fx.buf + 3 * K64, fx.buf + 4 * K64),
        ];
        let before = SimAlloc::stats();
        SimAlloc::fail_next(u64::MAX);
        for (i, (s, e)) in intervals.into_iter().enumerate() {
            for &(_, id, ns, ne) in &notifiers {
                if ns < e && s < ne {
                    // Every other interval through the non-blocking entry (nothing holds the
                    // notifier lock here: it succeeds).
                    if i % 2 == 0 {
                        svm.invalidate_begin(id, s, e, event);
                    } else {
                        svm.invalidate_begin_nonblock(id, s, e, event)
                            .expect("uncontended");
                    }
                    svm.invalidate_end(id, s, e);
                }
            }
        }
        SimAlloc::stop_failing();
        let after = SimAlloc::stats();
        assert_eq!(
            (after.allocs, after.failed),
            (before.allocs, before.failed),
            "{event:?}: the invalidation path allocated ({before:?} -> {after:?})"
        );
        if matches!(event, Event::Unmap | Event::Release) {
            assert_eq!(svm.gc_pending(), 4, "{event:?} queued every range");
        }
        fx.check().unwrap();
    }
    // Through the simulated CPU: mprotect and munmap notify the same way.
    svm.gc_run();
    fx.fault_all(0);
    let before = SimAlloc::stats();
    SimAlloc::fail_next(u64::MAX);
    fx.mm.mprotect(fx.buf, K64, VmaFlags::READ).unwrap();
    fx.mm.munmap(fx.buf + 3 * K64, K64).unwrap();
    SimAlloc::stop_failing();
    let after = SimAlloc::stats();
    assert_eq!(
        (after.allocs, after.failed),
        (before.allocs, before.failed),
        "CPU-side invalidation allocated"
    );
    fx.teardown().unwrap();
    no_leak("invalidation").unwrap();
}

/// The counts themselves: a failure fires once, at the k-th allocation, and is counted.
#[test]
fn the_schedule_fails_the_kth_allocation() {
    use gpusvm::heap::AllocCtx;
    SimAlloc::reset();
    let mut v = gpusvm::heap::Vec::<u64, SimAlloc>::new();
    SimAlloc::fail_after(2, 1);
    assert!(v.reserve(1, AllocCtx::MaySleep).is_ok());
    let a = gpusvm::heap::Arc::<u64, SimAlloc>::try_new(1, AllocCtx::MaySleep).unwrap();
    assert_eq!(
        gpusvm::heap::Arc::<u64, SimAlloc>::try_new(2, AllocCtx::MaySleep).err(),
        Some(Error::NoMem)
    );
    assert!(!SimAlloc::failing());
    let b = gpusvm::heap::Arc::<u64, SimAlloc>::try_new(3, AllocCtx::MaySleep).unwrap();
    let s = SimAlloc::stats();
    assert_eq!((s.allocs, s.failed), (3, 1));
    drop((v, a, b));
    no_leak("schedule").unwrap();
}

// ---- the api harness with failing allocations -------------------------------------------------

/// The hostile-argument harness of the `api` fuzz target (`gpusvm::sim::harness::api`) with an
/// `ApiOp::FailAllocs` before every call: seeded random machines and calls, each call running
/// with up to 8 allocations failing, from its first allocation or after a few (up to 63)
/// succeeded. The harness checks after every call that a call failing with `NoMem` left the
/// state as it was where its contract says so, that the invariants hold, and after the run
/// that every allocation was freed.
#[test]
fn api_harness_with_failing_allocations() {
    use arbitrary::{Arbitrary, Unstructured};
    use gpusvm::sim::harness::api::{run_stats, ApiInput, ApiOp, Setup};
    use gpusvm::sim::Rng;

    let (seeds, ops) = if cfg!(miri) { (2u64, 8) } else { (500, 40) };
    let (mut failed, mut calls) = (0u64, 0usize);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed << 1 | 0x10_0000);
        let bytes: Vec<u8> = (0..ops * 48 + 256).map(|_| rng.next_u64() as u8).collect();
        let mut u = Unstructured::new(&bytes);
        let setup = Setup::arbitrary(&mut u).unwrap_or_default();
        let mut input = ApiInput {
            setup,
            ops: Vec::new(),
        };
        while input.ops.len() < 2 * ops {
            let Ok(op) = ApiOp::arbitrary(&mut u) else {
                break;
            };
            // Half the time from the call's first allocation, a quarter a few allocations into
            // it, a quarter anywhere up to 63 (the harness takes `skip` modulo 64).
            let r = rng.next_u64();
            let skip = match (r >> 8) % 4 {
                0 | 1 => 0,
                2 => (r >> 16) % 8,
                _ => r >> 16,
            };
            input.ops.push(ApiOp::FailAllocs {
                skip: skip as u8,
                n: r as u8,
            });
            input.ops.push(op);
        }
        calls += input.ops.len() / 2;
        if let Err(e) = run_stats(&input) {
            panic!("seed {seed}: {e}\ninput: {input:?}");
        }
        failed += SimAlloc::stats().failed;
    }
    eprintln!("{calls} calls, {failed} allocations failed");
    if !cfg!(miri) {
        assert!(
            failed >= 200,
            "the failures must reach the library: {failed}"
        );
    }
}

/// The lock rules of [`SimAlloc`] fire: an allocation under a lock the invalidation path takes,
/// and a `MaySleep` allocation under a spinning lock, are counted and described; `NoSleep`
/// under a spinning lock that invalidation does not take is fine.
#[test]
fn allocations_under_locks_are_caught() {
    use gpusvm::heap::AllocCtx;
    use gpusvm::sync::{class, Mutex, RwLock};
    SimAlloc::reset();
    let alloc = |ctx| drop(gpusvm::heap::Arc::<u64, SimAlloc>::try_new(1, ctx).unwrap());
    {
        let attrs = Mutex::<SimHost, ()>::new(&class::ATTRS, ()).unwrap();
        let _g = attrs.lock();
        alloc(AllocCtx::NoSleep);
    }
    assert_eq!(SimAlloc::stats().lock_violations, 0);
    assert!(SimAlloc::first_lock_violation().is_none());
    {
        let attrs = Mutex::<SimHost, ()>::new(&class::ATTRS, ()).unwrap();
        let _g = attrs.lock();
        alloc(AllocCtx::MaySleep);
    }
    assert_eq!(SimAlloc::stats().lock_violations, 1);
    let v = SimAlloc::first_lock_violation().unwrap();
    assert!(
        v.contains("MaySleep") && v.contains(class::ATTRS.name),
        "{v}"
    );
    {
        let notifier = RwLock::<SimHost, ()>::new(&class::NOTIFIER, ()).unwrap();
        let _g = notifier.read();
        alloc(AllocCtx::MaySleep);
    }
    assert_eq!(SimAlloc::stats().lock_violations, 2);
    SimAlloc::reset();
    {
        let notifier = RwLock::<SimHost, ()>::new(&class::NOTIFIER, ()).unwrap();
        let _g = notifier.write();
        alloc(AllocCtx::NoSleep);
    }
    let v = SimAlloc::first_lock_violation().unwrap();
    assert!(
        v.contains("invalidation") && v.contains(class::NOTIFIER.name),
        "{v}"
    );
}
