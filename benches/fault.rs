//! First-touch fault of a 2 MiB range in system memory (issue 8).
//!
//! Run with `cargo bench --bench fault` (add `--features sim` for the simulator row). At the end
//! it prints the ratios of the criterion medians measured in this run.
//!
//! Platform: the fast bench platform of `benches/common` — one VMA over a flat `Vec` of frame
//! numbers (4 KiB pages, present and writable), identity DMA mapping, null zap, and a flat
//! device page-table array that the bind closure writes (one `AtomicU64` per 4 KiB page,
//! relaxed stores). Default `SvmConfig` (2 MiB / 64 KiB / 4 KiB chunks, 512 MiB notifiers).
//!
//! Rows of group `fault_2m` (each a 2 MiB range = 512 pages):
//! - `baseline_loop`: the physical limit — read the same 512 CPU page-table entries and write
//!   512 device addresses into the same device page-table array;
//! - `cycle`: `find_or_insert` + `get_pages` + `bind` (writing the 512 PTEs) + `remove`, so
//!   every iteration is a first touch. Another range stays in the same notifier, so the
//!   notifier stays registered (the common case: the 512 MiB block was touched before);
//! - `fault`: the fault part of `cycle` alone (`find_or_insert` + `get_pages` + `bind`), each
//!   iteration timed with `Instant` around it (adds ~40 ns of timer reads), `remove` untimed;
//! - `remove`: the other part (`remove` of a bound range; the fault untimed);
//! - `refault`: `get_pages` + `bind` of an existing range whose pages an invalidation
//!   (`Event::Clear`, untimed) unmapped: no range creation;
//! - `handle_fault_cycle`: the full fault service `handle_fault_and_bind` (GC run, policy,
//!   placement in system memory) + `remove`;
//! - `cycle_new_notifier`: `cycle` where the range is alone in its notifier, so the notifier is
//!   created, registered, unregistered and dropped every iteration;
//! - `cycle_huge`: `cycle` over a VMA backed by 2 MiB huge pages (one page entry; `bind` still
//!   writes 512 PTEs);
//! - `invalidate`, `invalidate_huge`: `invalidate_begin` + `invalidate_end` (`Event::Clear`,
//!   null zap, no-op DMA unmap) of one bound 2 MiB range with 512 entries / 1 entry (the range is
//!   faulted again, untimed, between iterations): the cost per page entry of invalidation;
//! - `sim_cycle` (feature `sim`): `cycle` on the simulator (`SimGpu::with_defaults`), to show
//!   what the simulator's IOMMU and page tables cost.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use common::{
    fast_svm, paired, per_op, print_paired, report, DevPt, FastPlatform, Ratio, BASE, MIB,
};
use criterion::{black_box, Criterion};
use gpusvm::platform::NotifierId;
use gpusvm::{Access, Event, PagesCtx, Range, Svm, Window};

/// A range reference on the default host.
type RangeArc = gpusvm::HostArc<gpusvm::DefaultHost, Range>;
use std::time::{Duration, Instant};

const RANGE: u64 = 2 * MIB;
/// The VMA: the range cycled at `BASE` and a resident range after it.
const VMA: u64 = 4 * MIB;

/// find_or_insert + get_pages + bind: a first-touch fault serviced by a driver.
#[inline]
fn fault(svm: &Svm<FastPlatform>, pt: &DevPt, addr: u64) -> RangeArc {
    let ctx = PagesCtx::default();
    let r = svm.find_or_insert(addr, Window::ALL, &ctx).expect("range");
    svm.get_pages(&r, &ctx).expect("pages");
    let n = svm.bind(&r, |r, e| pt.write(r, e)).expect("bind");
    debug_assert_eq!(n, 512);
    r
}

/// A resident range in the second half of the VMA keeps the notifier registered.
fn with_resident(svm: &Svm<FastPlatform>, pt: &DevPt) -> RangeArc {
    fault(svm, pt, BASE + RANGE)
}

fn check_cycle(svm: &Svm<FastPlatform>, pt: &DevPt) {
    let r = fault(svm, pt, BASE);
    assert_eq!((r.start(), r.size()), (BASE, RANGE), "one 2 MiB range");
    assert_eq!(pt.valid(BASE, BASE + RANGE), 512);
    let entries = svm.bind(&r, |_, e| e.len()).expect("bind");
    let order = svm.platform().mm.order;
    assert_eq!(entries, if order == 9 { 1 } else { 512 });
    svm.remove(&r).expect("remove");
    assert!(svm.find(BASE).is_none());
}

fn bench_fault(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault_2m");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let svm = fast_svm(VMA, 0);
    let pt = DevPt::new(VMA);
    let _resident = with_resident(&svm, &pt);
    check_cycle(&svm, &pt);
    let registrations = svm
        .platform()
        .mm
        .registrations
        .load(std::sync::atomic::Ordering::Relaxed);

    let pfns = &svm.platform().mm.pfns;
    g.bench_function("baseline_loop", |b| {
        b.iter(|| black_box(pt.baseline(pfns, 0, 512)))
    });

    g.bench_function("cycle", |b| {
        b.iter(|| {
            let r = fault(&svm, &pt, black_box(BASE));
            svm.remove(&r).expect("remove");
        })
    });

    g.bench_function("fault", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let r = fault(&svm, &pt, black_box(BASE));
                t += t0.elapsed();
                svm.remove(&r).expect("remove");
            }
            t
        })
    });

    g.bench_function("remove", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let r = fault(&svm, &pt, black_box(BASE));
                let t0 = Instant::now();
                svm.remove(&r).expect("remove");
                t += t0.elapsed();
            }
            t
        })
    });

    let r = fault(&svm, &pt, BASE);
    let ctx = PagesCtx::default();
    g.bench_function("refault", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                svm.invalidate_begin(NotifierId(BASE), BASE, BASE + RANGE, Event::Clear);
                svm.invalidate_end(NotifierId(BASE), BASE, BASE + RANGE);
                let t0 = Instant::now();
                svm.get_pages(&r, &ctx).expect("pages");
                let n = svm.bind(&r, |r, e| pt.write(r, e)).expect("bind");
                t += t0.elapsed();
                black_box(n);
            }
            t
        })
    });
    bench_invalidate(&mut g, "invalidate", &svm, &pt, &r);
    svm.remove(&r).expect("remove");
    drop(r);

    g.bench_function("handle_fault_cycle", |b| {
        b.iter(|| {
            let (r, n) = svm
                .handle_fault_and_bind(black_box(BASE), Access::Write, Window::ALL, |r, e| {
                    pt.write(r, e)
                })
                .expect("fault");
            black_box(n);
            svm.remove(&r).expect("remove");
        })
    });
    assert_eq!(
        svm.platform()
            .mm
            .registrations
            .load(std::sync::atomic::Ordering::Relaxed),
        registrations,
        "the resident range kept the notifier registered"
    );

    // The range alone in its notifier: registered and unregistered every iteration.
    let lone = fast_svm(RANGE, 0);
    let lone_pt = DevPt::new(RANGE);
    check_cycle(&lone, &lone_pt);
    g.bench_function("cycle_new_notifier", |b| {
        b.iter(|| {
            let r = fault(&lone, &lone_pt, black_box(BASE));
            lone.remove(&r).expect("remove");
        })
    });
    assert_eq!(
        lone.platform()
            .mm
            .notifiers
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Huge pages: one entry per 2 MiB range.
    let huge = fast_svm(VMA, 9);
    let huge_pt = DevPt::new(VMA);
    let _resident_huge = with_resident(&huge, &huge_pt);
    check_cycle(&huge, &huge_pt);
    g.bench_function("cycle_huge", |b| {
        b.iter(|| {
            let r = fault(&huge, &huge_pt, black_box(BASE));
            huge.remove(&r).expect("remove");
        })
    });
    let r = fault(&huge, &huge_pt, BASE);
    bench_invalidate(&mut g, "invalidate_huge", &huge, &huge_pt, &r);
    huge.remove(&r).expect("remove");
    drop(r);

    #[cfg(feature = "sim")]
    sim_cycle(&mut g);

    g.finish();
}

/// `invalidate_begin` + `invalidate_end` (`Event::Clear`, null zap, no-op DMA unmap) of the
/// bound range `r`, which is faulted again (untimed) after each.
fn bench_invalidate(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svm: &Svm<FastPlatform>,
    pt: &DevPt,
    r: &Range,
) {
    let ctx = PagesCtx::default();
    svm.get_pages(r, &ctx).expect("pages");
    svm.invalidate_begin(NotifierId(BASE), BASE, BASE + RANGE, Event::Clear);
    svm.invalidate_end(NotifierId(BASE), BASE, BASE + RANGE);
    assert!(!svm.pages_valid(r), "the invalidation unmapped the range");
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                svm.get_pages(r, &ctx).expect("pages");
                svm.bind(r, |r, e| pt.write(r, e)).expect("bind");
                let t0 = Instant::now();
                svm.invalidate_begin(NotifierId(BASE), BASE, BASE + RANGE, Event::Clear);
                svm.invalidate_end(NotifierId(BASE), BASE, BASE + RANGE);
                t += t0.elapsed();
            }
            t
        })
    });
}

#[cfg(feature = "sim")]
fn sim_cycle(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use gpusvm::platform::VmaFlags;
    use gpusvm::sim::{SimGpu, SimMm, SimWorld};
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).expect("gpu");
    let buf = mm
        .mmap(VMA, VmaFlags::READ | VmaFlags::WRITE, false)
        .expect("mmap");
    assert_eq!(buf % RANGE, 0);
    for p in (0..VMA).step_by(4096) {
        mm.write_u64(buf + p, p).expect("cpu write");
    }
    let ctx = PagesCtx::default();
    let resident = gpu
        .svm
        .find_or_insert(buf + RANGE, Window::ALL, &ctx)
        .expect("range");
    g.bench_function("sim_cycle", |b| {
        b.iter(|| {
            let r = gpu
                .svm
                .find_or_insert(black_box(buf), Window::ALL, &ctx)
                .expect("range");
            gpu.svm.get_pages(&r, &ctx).expect("pages");
            let n = gpu.svm.bind(&r, |_, e| e.len()).expect("bind");
            assert_eq!(n, 512);
            gpu.svm.remove(&r).expect("remove");
        })
    });
    gpu.svm.remove(&resident).expect("remove");
}

/// The ratios again, measured interleaved (robust to load changes on the shared machine).
fn paired_fault() {
    let svm = fast_svm(VMA, 0);
    let pt = DevPt::new(VMA);
    let _resident = with_resident(&svm, &pt);
    let huge = fast_svm(VMA, 9);
    let huge_pt = DevPt::new(VMA);
    let _resident_huge = with_resident(&huge, &huge_pt);
    let pfns = &svm.platform().mm.pfns;
    let baseline = || {
        per_op(64, || {
            black_box(pt.baseline(pfns, 0, 512));
        })
    };
    let cycle = |svm: &Svm<FastPlatform>, pt: &DevPt| {
        per_op(8, || {
            let r = fault(svm, pt, black_box(BASE));
            svm.remove(&r).expect("remove");
        })
    };
    let fault_only = || {
        let mut t = Duration::ZERO;
        for _ in 0..8 {
            let t0 = Instant::now();
            let r = fault(&svm, &pt, black_box(BASE));
            t += t0.elapsed();
            svm.remove(&r).expect("remove");
        }
        t.as_nanos() as f64 / 8.0
    };
    println!("\n=== fault: paired measurements (baseline_loop = 512 PTE reads + 512 writes)");
    let p = paired(2000, || cycle(&svm, &pt), baseline);
    print_paired("fault_2m", "cycle", "baseline_loop", &p, Some(2.0));
    let p = paired(2000, fault_only, baseline);
    print_paired("fault_2m", "fault", "baseline_loop", &p, Some(2.0));
    let p = paired(2000, || cycle(&huge, &huge_pt), baseline);
    print_paired("fault_2m", "cycle_huge", "baseline_loop", &p, None);
}

fn main() {
    common::start();
    let mut c = Criterion::default().configure_from_args();
    bench_fault(&mut c);
    c.final_summary();
    if !common::test_mode() {
        paired_fault();
    }
    let r = |num, den, target| Ratio {
        group: "fault_2m",
        num,
        den,
        target,
    };
    report(
        "fault: first touch of a 2 MiB range in system memory",
        &[
            r("cycle", "baseline_loop", Some(2.0)),
            r("fault", "baseline_loop", Some(2.0)),
            r("remove", "baseline_loop", None),
            r("refault", "baseline_loop", None),
            r("handle_fault_cycle", "baseline_loop", None),
            r("cycle_new_notifier", "baseline_loop", None),
            r("cycle_huge", "baseline_loop", None),
            r("sim_cycle", "baseline_loop", None),
            r("invalidate", "invalidate_huge", None),
        ],
    );
    if let (Some(a), Some(b)) = (
        common::median_ns("fault_2m", "invalidate"),
        common::median_ns("fault_2m", "invalidate_huge"),
    ) {
        println!(
            "  invalidation of one bound 2 MiB range: {} with 1 entry, {} with 512 entries: \
             {:.2} ns per extra page entry",
            common::fmt_ns(b),
            common::fmt_ns(a),
            (a - b) / 511.0
        );
    }
}
