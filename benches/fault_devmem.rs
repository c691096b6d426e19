//! First-touch fault of a 2 MiB range that migrates it to device memory (issue 16), against a
//! bare 2 MiB memcpy.
//!
//! Run with `cargo bench --bench fault_devmem`. At the end it prints the ratios of the criterion
//! medians measured in this run and a paired, interleaved measurement.
//!
//! Platform: the migration benchmarks' platform (`benches/common/devmem.rs`: system and device
//! memory as two pre-touched arenas, a flat CPU page table with the three-phase migration, a
//! memcpy copy engine, identity DMA) under an [`Svm`] that prefers device memory, with a flat
//! device page table that the bind closure writes (`benches/common`'s `DevPt`). The VMA is one
//! 2 MiB range of present system pages on contiguous frames.
//!
//! Rows of group `fault_devmem_2m`:
//! - `memcpy`: `copy_from_slice` of 2 MiB from the range's system block to the device block
//!   the migration uses (the floor: the bytes have to move);
//! - `fault`: `handle_fault_and_bind` (write access) of the range's first page: range created,
//!   policy decides device memory, the migration isolates, allocates, copies (one copy-engine
//!   command) and installs, the device pages are collected and bound (512 PTEs). Untimed
//!   between iterations: the range is evicted back to RAM and removed, so every fault is a
//!   first touch.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;
#[path = "common/devmem.rs"]
mod devmem;

use common::{paired, per_op, print_paired, report, DevPt, LeanPlatform, Ratio, MIB};
use criterion::{black_box, Criterion};
use devmem::{build, lock, Arenas, BenchMem, BenchMm, BASE, OWNER, SYS_PFN0};
use gpusvm::platform::{Protocol, PAGE_SIZE};
use gpusvm::{Access, HostArc, Range, Svm, SvmConfig, Window};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEN: u64 = 2 * MIB;

/// The lean platform over the migration benches' address space, with their device memory.
type DevmemPlatform = LeanPlatform<BenchMm, BenchMem>;

struct Rig {
    svm: Svm<DevmemPlatform>,
    arenas: Arc<Mutex<Arenas>>,
    pt: DevPt,
}

type RangeArc = HostArc<gpusvm::DefaultHost, Range>;

impl Rig {
    fn new() -> Rig {
        let frames: Vec<u64> = (0..LEN / PAGE_SIZE).map(|i| SYS_PFN0 + i).collect();
        let (mm, pm, arenas) = build(LEN, &frames);
        let mut cfg = SvmConfig::new(0, 1 << 47);
        cfg.prefer_devmem = true;
        cfg.owner = Some(OWNER);
        let svm = Svm::new(DevmemPlatform::new(mm), cfg).expect("svm");
        svm.set_pagemap(Some(pm)).expect("pagemap");
        Rig {
            svm,
            arenas,
            pt: DevPt::new(LEN),
        }
    }

    /// The measured operation: a device write fault on the range's first page, bound.
    fn fault(&self) -> (RangeArc, usize) {
        self.svm
            .handle_fault_and_bind(black_box(BASE), Access::Write, Window::ALL, |r, e| {
                self.pt.write(r, e)
            })
            .expect("fault")
    }

    /// Untimed: back to RAM and gone, so that the next fault is a first touch again.
    fn reset(&self, r: &RangeArc) {
        self.svm.evict(r).expect("evict");
        self.svm.remove(r).expect("remove");
    }

    /// One checked cycle: the fault migrates all 512 pages in one copy command and binds 512
    /// device-local entries; the reset brings them back.
    fn check(&self) {
        let commands = || {
            let pm = self.svm.platform().mm.pagemap.get().expect("pm");
            pm.mem().commands.load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = commands();
        let (r, n) = self.fault();
        assert_eq!((r.start(), r.size(), n), (BASE, LEN, 512));
        let local = self
            .svm
            .bind(&r, |_, e| {
                e.iter()
                    .filter(|e| e.protocol() == Protocol::DEVICE_LOCAL)
                    .count()
            })
            .expect("bind");
        assert_eq!(local, 512, "every page in device memory");
        assert_eq!(commands() - before, 1, "one copy-engine command for 2 MiB");
        self.reset(&r);
        assert!(self.svm.find(BASE).is_none());
    }

    /// The floor: 2 MiB from the system block to device block 0.
    fn memcpy(&self) {
        let mut a = lock(&self.arenas);
        let Arenas { sys, dev } = &mut *a;
        let bytes = LEN as usize;
        dev[..bytes].copy_from_slice(black_box(&sys[..bytes]));
        black_box(&dev[0]);
    }

    fn timed_faults(&self, n: u32) -> Duration {
        let mut t = Duration::ZERO;
        for _ in 0..n {
            let t0 = Instant::now();
            let (r, k) = self.fault();
            t += t0.elapsed();
            black_box(k);
            self.reset(&r);
        }
        t
    }
}

fn bench(c: &mut Criterion) {
    let rig = Rig::new();
    rig.check();
    rig.check();
    let mut g = c.benchmark_group("fault_devmem_2m");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("memcpy", |b| b.iter(|| rig.memcpy()));
    g.bench_function("fault", |b| {
        b.iter_custom(|iters| rig.timed_faults(iters as u32))
    });
    g.finish();
}

fn main() {
    common::start();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if !common::test_mode() {
        let rig = Rig::new();
        rig.check();
        println!("\n=== fault_devmem: paired measurements");
        let p = paired(
            400,
            || rig.timed_faults(1).as_nanos() as f64,
            || per_op(1, || rig.memcpy()),
        );
        // Issue 16: a 2 MiB first-touch fault with migration to device memory <= 1.10x memcpy.
        print_paired("fault_devmem_2m", "fault", "memcpy", &p, Some(1.10));
    }
    report(
        "fault_devmem: 2 MiB first-touch fault with migration to device memory",
        &[Ratio {
            group: "fault_devmem_2m",
            num: "fault",
            den: "memcpy",
            target: Some(1.10),
        }],
    );
}
