//! Many ranges: thousands of 4 KiB ranges in one notifier, many small separate buffers, many
//! devices on one buffer. Here a "step" may be a batch of accesses (one `dev_fill` or one
//! `munmap_batch`), so that the checker — which walks every range, mapping and model word —
//! still runs after every step without making the suite slow.

use crate::harness::*;
use gpusvm::sim::Rng;
use gpusvm::Error;

/// xe_exec_system_allocator `many` / `many-large` with the smallest chunk size only: an 8 MiB
/// buffer is mirrored as 2048 ranges of 4 KiB, each faulted once and DMA-mapped once. Lookups
/// find the right range; unmapping every other page queues 1024 ranges that the next fault
/// collects; unmapping the rest removes the last range and with it the notifier.
#[test]
fn many_4k_ranges() {
    let mut m = Machine::new(&[]);
    let c = cfg(0).with_chunk_sizes(&[P]).unwrap();
    m.join_with(0, 0, c);
    let len = 4 * M2;
    let buf = m.mmap(len);
    for mb in 0..8 {
        let s = buf + mb * M;
        m.dev_fill(0, s, s + M, P, 1);
    }
    let n = (len / P) as usize;
    assert_eq!(m.g(0).svm.counts(), (1, n));
    let s = m.stats(0);
    assert_eq!((s.faults, s.ranges_created), (n, n));
    assert_eq!(m.dma_live(0).len(), n);
    let mut rng = Rng::new(3);
    for _ in 0..64 {
        let a = buf + rng.below(len);
        let r = m.g(0).svm.find(a).expect("range");
        assert_eq!(r.start(), a & !(P - 1));
        assert_eq!(r.size(), P);
    }

    let odd: Vec<(u64, u64)> = (0..n as u64)
        .filter(|i| i % 2 == 1)
        .map(|i| (buf + i * P, P))
        .collect();
    m.munmap_batch(&odd);
    assert_eq!(
        m.dma_live(0).len(),
        n / 2,
        "unmapped pages' DMA mappings went at once"
    );
    assert_eq!(m.g(0).svm.gc_pending(), n / 2);
    // The survivors are still bound: reading them does not fault, so nothing collects yet.
    m.dev_read(0, buf);
    assert_eq!(m.g(0).svm.gc_pending(), n / 2);
    // A fault anywhere collects the queue first.
    let other = m.mmap(P);
    m.dev_write(0, other, 5);
    let s1 = m.stats(0);
    assert_eq!(s1.gc_ranges, n / 2);
    assert_eq!(m.g(0).svm.gc_pending(), 0);
    assert_eq!(m.g(0).svm.counts(), (1, n / 2 + 1));
    m.dev_verify(0, buf, buf + len);
    assert_eq!(
        m.stats(0).faults,
        s1.faults,
        "the survivors are still bound"
    );
    assert_eq!(m.try_dev_read(0, buf + P), Err(Error::Fault));

    m.munmap(buf, len);
    m.munmap(other, P);
    assert_eq!(m.g(0).svm.gc_run(), n / 2 + 1);
    m.check("gc");
    assert_eq!(
        m.g(0).svm.counts(),
        (0, 0),
        "the notifier went with its last range"
    );
    assert!(m.dma_live(0).is_empty());
}

/// xe_exec_system_allocator `many-stride`: 64 separate small buffers, each its own VMA, are
/// written by the GPU. Each gets its own 64 KiB range and device-memory allocation; freeing every
/// other buffer releases exactly those allocations at once, and the garbage collector removes
/// exactly those ranges.
#[test]
fn many_stride() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let bufs: Vec<u64> = (0..64).map(|_| m.mmap(K64)).collect();
    for (i, &b) in bufs.iter().enumerate() {
        m.cpu_fill(b, b + K64, P, i as u64);
    }
    for (i, &b) in bufs.iter().enumerate() {
        m.dev_write(0, b + 8 * (i as u64 % 16), tag(b, 100));
    }
    assert_eq!(m.ranges(0).len(), 64);
    assert_eq!(m.live_allocs(0), 64);
    assert_eq!(m.vram_used(0), 64 * 16);
    let freed: Vec<(u64, u64)> = bufs.iter().step_by(2).map(|&b| (b, K64)).collect();
    m.munmap_batch(&freed);
    assert_eq!(
        m.live_allocs(0),
        32,
        "freed buffers' device memory released at once"
    );
    assert_eq!(m.vram_used(0), 32 * 16);
    assert_eq!(m.g(0).svm.gc_run(), 32);
    m.check("gc");
    let left: Vec<u64> = bufs.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(
        m.ranges(0),
        left.iter().map(|&b| (b, b + K64)).collect::<Vec<_>>()
    );
    for &b in &left {
        m.dev_verify(0, b, b + K64);
    }
    for &b in &left {
        m.cpu_verify(b, b + K64);
    }
    assert_eq!(m.live_allocs(0), 0);
}

/// xe_exec_system_allocator `many-execqueues` (many GPU contexts on one address space), here as
/// four devices without device memory on one 4 MiB buffer: each writes its own interleaved
/// words and reads everyone's. Each device holds its own DMA mapping of every page (the frames
/// are shared, never copied), and one munmap zaps all four devices.
#[test]
fn many_devices_one_buffer() {
    let mut m = Machine::new(&[]);
    for id in 0..4 {
        m.join(id, 0);
    }
    let len = 2 * M2;
    let buf = m.mmap(len);
    m.cpu_fill(buf, buf + len, P, 1);
    for id in 0..4u32 {
        m.dev_fill(
            id,
            buf + 8 * u64::from(id + 1),
            buf + len,
            4 * P,
            10 + u64::from(id),
        );
    }
    for id in 0..4 {
        m.dev_verify(id, buf, buf + len);
        assert_eq!(
            m.dma_live(id).len() as u64,
            len / P,
            "its own mapping of every page"
        );
        assert_eq!(m.ranges(id).len(), 2);
    }
    assert_eq!(
        m.world.live_frames() as u64,
        len / P,
        "one frame per page, shared"
    );
    m.cpu_verify(buf, buf + len);
    m.munmap(buf + M, M2);
    for id in 0..4 {
        assert_eq!(
            m.dev_ptes(id, buf, buf + len),
            0,
            "device {id}: both ranges zapped"
        );
        assert!(m.dma_live(id).is_empty(), "device {id}: DMA mappings gone");
    }
    for id in 0..4 {
        m.dev_verify(id, buf, buf + M);
        m.dev_verify(id, buf + 3 * M, buf + len);
        assert_eq!(m.stats(id).gc_ranges, 2);
    }
}
