//! The README demo: a simulated GPU mirrors a process's address space.
//!
//! The CPU initialises two arrays; the device faults them in on first touch (2 MiB ranges over
//! huge pages, 64 KiB/4 KiB ranges at the edges of a small buffer), computes `c = a + b`, and
//! the CPU reads the result back. Then the CPU unmaps part of an array while the device keeps
//! working (the garbage collector removes the stale range), and finally everything is closed
//! with nothing leaked. The invariant checker runs after every phase.
//!
//! Run: `cargo run --example sim_gpu --features sim`

use gpusvm::platform::VmaFlags;
use gpusvm::sim::{check_closed, SimGpu, SimMm, SimWorld};
use gpusvm::Error;

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0)?;
    let check = |phase: &str| -> Result<(), String> {
        gpu.check()?;
        let s = gpu.svm.stats();
        let (notifiers, ranges) = gpu.svm.counts();
        println!(
            "[{phase:>10}] faults {:>4}  ranges {:>3} in {} notifier(s)  retries {}  gc runs {}  live DMA maps {}",
            s.faults,
            ranges,
            notifiers,
            s.retries,
            s.gc_runs,
            gpu.dev.dma_mappings().len()
        );
        Ok(())
    };

    // Phase 1: the CPU initialises a and b (4 MiB each, huge-page backed) and a small buffer.
    const N: u64 = 4 << 20;
    let a = mm.mmap(N, RW, true)?;
    let b = mm.mmap(N, RW, true)?;
    let c = mm.mmap(N, RW, false)?;
    let small = mm.mmap(24 << 10, RW, false)?;
    let stride = 4096u64;
    for i in 0..N / stride {
        mm.write_u64(a + i * stride, i)?;
        mm.write_u64(b + i * stride, 1000 * i)?;
    }
    mm.write_u64(small, 0x5eed)?;
    check("cpu init")?;

    // Phase 2: the device computes c = a + b, faulting everything in on first touch.
    for i in 0..N / stride {
        let x = gpu.read_u64(a + i * stride)?;
        let y = gpu.read_u64(b + i * stride)?;
        gpu.write_u64(c + i * stride, x + y)?;
    }
    gpu.atomic_add(small, 1)?;
    check("device")?;

    // Phase 3: the CPU reads the results back.
    for i in 0..N / stride {
        let v = mm.read_u64(c + i * stride)?;
        if v != 1001 * i {
            return Err(format!("c[{i}] = {v}, expected {}", 1001 * i).into());
        }
    }
    assert_eq!(mm.read_u64(small)?, 0x5eed + 1);
    check("cpu verify")?;

    // Phase 4: the CPU unmaps the second MiB of `a` and writes into `b`; the device goes on.
    mm.munmap(a + (1 << 20), 1 << 20)?;
    mm.write_u64(b, 77)?;
    println!("             {} range(s) queued for the garbage collector", gpu.svm.gc_pending());
    assert_eq!(gpu.read_u64(b)?, 77, "the device sees the CPU's new value");
    assert_eq!(gpu.read_u64(a + (1 << 20)), Err(Error::Fault), "unmapped memory faults");
    assert_eq!(gpu.read_u64(a + (3 << 20))?, (3 << 20) / stride, "surviving data intact");
    check("munmap")?;

    println!("\nwhere each range lives:\n{}", gpu.describe());

    // Phase 5: close; nothing may leak.
    gpu.svm.close();
    check_closed(&gpu)?;
    let (maps, unmaps) = gpu.dev.dma_counts();
    println!("closed: {maps} DMA maps, {unmaps} unmaps, 0 live; stats {:?}", gpu.svm.stats());
    Ok(())
}
