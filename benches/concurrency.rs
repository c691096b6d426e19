//! Throughput of concurrent first-touch faults on distinct ranges: 2 threads versus 1, same
//! total work (issue 8).
//!
//! Run with `cargo bench --bench concurrency`. At the end it prints the speed-ups (1-thread
//! time / 2-thread time for the same number of faults) from the criterion medians and from a
//! paired, interleaved measurement.
//!
//! One `Svm` over the fast bench platform of `benches/common` (flat CPU page table, identity
//! DMA, null zap, flat device page table written by the bind closure; all `Sync`) is shared by
//! the threads. One operation is the cycle of `benches/fault.rs`: `find_or_insert` +
//! `get_pages` + `bind` (512 PTEs) + `remove` of a 2 MiB range, so each one is a first touch.
//! Thread `t` cycles its own range; with 1 thread the same number of cycles runs on range 0.
//! Timing runs from a barrier that releases both threads to the last thread's end (spawning is
//! not timed).
//!
//! Configurations (a resident range keeps each notifier registered):
//! - `same_notifier`: the two ranges are neighbours in one 512 MiB notifier;
//! - `distinct_notifiers`: the ranges are 512 MiB apart, in two notifiers;
//! - `huge_distinct_notifiers`: as above over 2 MiB huge pages (one page entry per range), so
//!   the per-page work that runs in parallel is small and the locked parts weigh more;
//! - `separate_svms`, `huge_separate_svms` (the control): the same work, but each thread has
//!   its own `Svm` and platform, so nothing is shared: the speed-up the machine allows at the
//!   moment. The library's own serialisation is the gap between a shared configuration and its
//!   control.
//!
//! The machine has 2 cores shared with other jobs: a speed-up near 2 needs both cores idle,
//! and the figures move with the load (the paired measurement alternates 1- and 2-thread runs
//! to expose both to the same load).

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use common::{fast_svm, paired, print_paired, report, DevPt, FastPlatform, Ratio, BASE, MIB};
use criterion::{black_box, Criterion, Throughput};
use gpusvm::{PagesCtx, Range, Svm, Window};
use std::sync::Barrier;

/// A range reference on the default host.
type RangeArc = gpusvm::HostArc<gpusvm::DefaultHost, Range>;
use std::time::{Duration, Instant};

const RANGE: u64 = 2 * MIB;
const NOTIFIER: u64 = 512 * MIB;

struct Setup {
    /// One `Svm` shared by both threads, or (control) one each.
    svms: Vec<(Svm<FastPlatform>, DevPt)>,
    /// The range each thread cycles.
    addrs: [u64; 2],
    _resident: Vec<RangeArc>,
}

impl Setup {
    fn of(&self, thread: usize) -> (&Svm<FastPlatform>, &DevPt) {
        let (svm, pt) = &self.svms[thread % self.svms.len()];
        (svm, pt)
    }
}

#[inline]
fn fault(svm: &Svm<FastPlatform>, pt: &DevPt, addr: u64) -> RangeArc {
    let ctx = PagesCtx::default();
    let r = svm.find_or_insert(addr, Window::ALL, &ctx).expect("range");
    svm.get_pages(&r, &ctx).expect("pages");
    let n = svm.bind(&r, |r, e| pt.write(r, e)).expect("bind");
    debug_assert_eq!(n, 512);
    r
}

/// `distinct`: the two ranges in two notifiers (else neighbours in one); `separate`: each
/// thread gets its own `Svm` (no shared state: the control).
fn setup(distinct: bool, order: u8, separate: bool) -> Setup {
    let len = if distinct {
        NOTIFIER + 8 * MIB
    } else {
        8 * MIB
    };
    let addrs = if distinct {
        [BASE, BASE + NOTIFIER]
    } else {
        [BASE, BASE + RANGE]
    };
    let n = if separate { 2 } else { 1 };
    let svms: Vec<_> = (0..n)
        .map(|_| (fast_svm(len, order), DevPt::new(len)))
        .collect();
    let mut resident = Vec::new();
    for (svm, pt) in &svms {
        resident.push(fault(svm, pt, BASE + 4 * MIB));
        if distinct {
            resident.push(fault(svm, pt, BASE + NOTIFIER + 4 * MIB));
        }
    }
    let s = Setup {
        svms,
        addrs,
        _resident: resident,
    };
    // Both ranges: 2 MiB, where expected.
    for t in 0..2 {
        let (svm, pt) = s.of(t);
        let a = s.addrs[t];
        let r = fault(svm, pt, a);
        assert_eq!((r.start(), r.size()), (a, RANGE));
        assert_eq!(pt.valid(a, a + RANGE), 512);
        svm.remove(&r).expect("remove");
    }
    let notifiers = if distinct { 2 } else { 1 };
    for (svm, _) in &s.svms {
        assert_eq!(svm.counts(), (notifiers, notifiers));
    }
    s
}

fn work(s: &Setup, thread: usize, n: u64) {
    let (svm, pt) = s.of(thread);
    let addr = s.addrs[thread];
    for _ in 0..n {
        let r = fault(svm, pt, black_box(addr));
        svm.remove(&r).expect("remove");
    }
}

/// Wall time of `total` cycles split over `threads` (1 or 2) threads.
fn run(s: &Setup, threads: usize, total: u64) -> Duration {
    if threads == 1 {
        let t0 = Instant::now();
        work(s, 0, total);
        return t0.elapsed();
    }
    let barrier = Barrier::new(2);
    let half = total / 2;
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            barrier.wait();
            let t0 = Instant::now();
            work(s, 1, half);
            (t0, Instant::now())
        });
        barrier.wait();
        let t0 = Instant::now();
        work(s, 0, total - half);
        let e0 = Instant::now();
        let (t1, e1) = h.join().expect("worker");
        e0.max(e1) - t0.min(t1)
    })
}

/// (name, distinct notifiers, CPU page order, one `Svm` per thread).
const CONFIGS: [(&str, bool, u8, bool); 5] = [
    ("same_notifier", false, 0, false),
    ("distinct_notifiers", true, 0, false),
    ("separate_svms", true, 0, true),
    ("huge_distinct_notifiers", true, 9, false),
    ("huge_separate_svms", true, 9, true),
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("concurrency");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for (name, distinct, order, separate) in CONFIGS {
        let s = setup(distinct, order, separate);
        for threads in [1usize, 2] {
            g.bench_function(format!("{name}_{threads}t"), |b| {
                b.iter_custom(|iters| run(&s, threads, iters))
            });
        }
        let left: usize = s.svms.iter().map(|(svm, _)| svm.counts().1).sum();
        assert_eq!(left, s._resident.len(), "every cycled range went");
    }
    g.finish();
}

fn main() {
    common::start();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if !common::test_mode() {
        println!(
            "\n=== concurrency: paired measurements, ratio = 1-thread time / 2-thread time for \
             the same 2000 faults (the speed-up)"
        );
        for (name, distinct, order, separate) in CONFIGS {
            let s = setup(distinct, order, separate);
            let ns = |threads| run(&s, threads, 2000).as_nanos() as f64 / 2000.0;
            let p = paired(40, || ns(1), || ns(2));
            print_paired(name, "1 thread", "2 threads", &p, None);
        }
    }
    let ratios: Vec<(String, String)> = CONFIGS
        .iter()
        .map(|(n, _, _, _)| (format!("{n}_1t"), format!("{n}_2t")))
        .collect();
    let ratios: Vec<Ratio<'_>> = ratios
        .iter()
        .map(|(a, b)| Ratio {
            group: "concurrency",
            num: a,
            den: b,
            target: None,
        })
        .collect();
    report(
        "concurrency: speed-up = 1-thread time / 2-thread time per fault",
        &ratios,
    );
}
