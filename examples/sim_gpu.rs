//! The README demo: two simulated GPUs share one process's address space.
//!
//! A vector add `c = a + b`: the CPU initialises `a` and `b`; GPU 0 computes the first half of
//! `c` and GPU 1 the second half, faulting the pages in on first touch and migrating them into
//! their own device memory; both GPUs bump a shared counter with atomics (the GPUs are linked,
//! so they share pages peer-to-peer); the CPU reads the results back (pages migrate back to
//! RAM) and checks them. Then part of `a` is unmapped while the GPUs keep working, a policy
//! pins `b` to system memory, and everything is torn down with nothing leaked. The invariant
//! checker runs after every phase.
//!
//! Run: `cargo run --example sim_gpu --features sim`

use gpusvm::platform::{VmaFlags, PAGE_SIZE};
use gpusvm::policy::{AttrUpdate, PreferredLoc};
use gpusvm::sim::{check_closed, check_invariants, SimGpu, SimMm, SimWorld};
use gpusvm::stats::StatsSnapshot;
use gpusvm::Error;

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
/// Bytes per array.
const N: u64 = 8 << 20;
/// One element per 512 bytes keeps the demo quick while touching every page.
const STRIDE: u64 = 512;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let world = SimWorld::new();
    world.link(0, 1);
    let mm = SimMm::new(&world);
    // 64 MiB of device memory each; both join the owner registry and, being linked, share
    // one owner.
    let g0 = SimGpu::join(&mm, 0, 16384)?;
    let g1 = SimGpu::join(&mm, 1, 16384)?;
    let check = |phase: &str| -> Result<(), String> {
        check_invariants(&mm, &[&g0, &g1])?;
        let (s0, s1) = (g0.svm.stats(), g1.svm.stats());
        println!(
            "[{phase:<12}] faults gpu0/gpu1 {:>3}/{:<3} migrations to devmem {:>2}/{:<2} \
             resident: {:>5} KiB on gpu0, {:>5} KiB on gpu1",
            s0.faults,
            s1.faults,
            s0.migrations_to_devmem,
            s1.migrations_to_devmem,
            g0.dev.vram_used().len() as u64 * PAGE_SIZE / 1024,
            g1.dev.vram_used().len() as u64 * PAGE_SIZE / 1024,
        );
        Ok(())
    };
    println!(
        "two GPUs, linked: owner {:?} and {:?}",
        g0.svm.owner(),
        g1.svm.owner()
    );

    // Phase 1: the CPU initialises a and b (huge pages) and allocates c and a counter.
    let a = mm.mmap(N, RW, true)?;
    let b = mm.mmap(N, RW, true)?;
    let c = mm.mmap(N, RW, false)?;
    let counter = mm.mmap(PAGE_SIZE, RW, false)?;
    let n = N / STRIDE;
    for i in 0..n {
        mm.write_u64(a + i * STRIDE, i)?;
        mm.write_u64(b + i * STRIDE, 1000 * i)?;
    }
    check("cpu init")?;

    // Phase 2: each GPU computes half of c = a + b and bumps the shared counter.
    for (gpu, half) in [(&g0, 0..n / 2), (&g1, n / 2..n)] {
        for i in half {
            let x = gpu.read_u64(a + i * STRIDE)?;
            let y = gpu.read_u64(b + i * STRIDE)?;
            gpu.write_u64(c + i * STRIDE, x + y)?;
        }
        gpu.atomic_add(counter, 1)?;
    }
    check("gpu compute")?;

    // Phase 3: GPU 1 reads what GPU 0 wrote, peer-to-peer (same owner: no migration).
    let before = g1.svm.stats().migrations_to_devmem;
    for i in (0..n / 2).step_by(997) {
        assert_eq!(g1.read_u64(c + i * STRIDE)?, 1001 * i);
    }
    assert_eq!(
        g1.svm.stats().migrations_to_devmem,
        before,
        "shared, not migrated"
    );
    check("peer read")?;

    // Phase 4: the CPU reads everything back (device pages migrate back to RAM).
    for i in 0..n {
        let v = mm.read_u64(c + i * STRIDE)?;
        if v != 1001 * i {
            return Err(format!("c[{i}] = {v}, expected {}", 1001 * i).into());
        }
    }
    assert_eq!(mm.read_u64(counter)?, 2);
    check("cpu verify")?;

    // Phase 5: the CPU unmaps 2 MiB of a while GPU 0 keeps reading the rest.
    mm.munmap(a + (2 << 20), 2 << 20)?;
    assert_eq!(g0.read_u64(a + (2 << 20)), Err(Error::Fault));
    assert_eq!(g0.read_u64(a + (6 << 20))?, (6 << 20) / STRIDE);
    check("munmap")?;

    // Phase 6: policy: b prefers system memory; GPU 0's next access pulls it back to RAM.
    let sys = AttrUpdate {
        preferred: Some(PreferredLoc::System),
        ..AttrUpdate::default()
    };
    g0.svm.set_attrs(b, N, &sys)?;
    assert_eq!(g0.read_u64(b + STRIDE)?, 1000);
    assert!(mm.pte(b).is_some_and(|p| p.dev.is_none()), "b is in RAM");
    check("madvise")?;

    println!("\nstats:");
    print_stats(&g0.svm.stats(), &g1.svm.stats());
    for g in [&g0, &g1] {
        if let Some(pm) = g.svm.pagemap() {
            let (n, bytes) = pm.cpu_fault_migrations();
            println!(
                "  gpu{} memory: {} CPU-fault migrations back to RAM ({} KiB), {} allocations live, {} released",
                g.dev.id(),
                n,
                bytes / 1024,
                pm.live_allocations(),
                pm.released_allocations()
            );
        }
    }
    println!(
        "\nwhere each range of gpu0 lives (pages per place):\n{}",
        g0.describe()
    );
    println!(
        "where each range of gpu1 lives (pages per place):\n{}",
        g1.describe()
    );

    // Phase 7: tear both GPUs down; nothing may leak.
    g1.teardown()?;
    g0.teardown()?;
    check_closed(&g0)?;
    check_closed(&g1)?;
    mm.munmap(a, N)?;
    println!(
        "torn down: 0 live DMA mappings, device memory empty ({} / {} frames in use)",
        g0.dev.vram_used().len(),
        g1.dev.vram_used().len()
    );
    Ok(())
}

fn print_stats(s0: &StatsSnapshot, s1: &StatsSnapshot) {
    let rows: [(&str, usize, usize); 14] = [
        ("faults (read)", s0.faults_read, s1.faults_read),
        ("faults (write)", s0.faults_write, s1.faults_write),
        ("faults (atomic)", s0.faults_atomic, s1.faults_atomic),
        ("retries", s0.retries, s1.retries),
        ("ranges created", s0.ranges_created, s1.ranges_created),
        ("ranges removed", s0.ranges_removed, s1.ranges_removed),
        ("invalidations", s0.invalidations, s1.invalidations),
        (
            "migrations to devmem",
            s0.migrations_to_devmem,
            s1.migrations_to_devmem,
        ),
        (
            "KiB to devmem",
            s0.bytes_to_devmem / 1024,
            s1.bytes_to_devmem / 1024,
        ),
        (
            "migrations to RAM",
            s0.migrations_to_ram,
            s1.migrations_to_ram,
        ),
        ("evictions", s0.evictions, s1.evictions),
        ("copy commands", s0.copy_runs, s1.copy_runs),
        ("gc runs", s0.gc_runs, s1.gc_runs),
        ("attribute changes", s0.attr_changes, s1.attr_changes),
    ];
    println!("  {:<22} {:>8} {:>8}", "counter", "gpu0", "gpu1");
    for (name, a, b) in rows {
        println!("  {name:<22} {a:>8} {b:>8}");
    }
}
