#![cfg(feature = "sim")]
use gpusvm::platform::VmaFlags;
use gpusvm::sim::{check_closed, SimGpu, SimMm, SimWorld};
use gpusvm::Error;

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);

#[test]
fn devmem_roundtrip() {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_devmem(&mm, 0, 4096, 1).unwrap();
    let a = mm.mmap(4 << 20, RW, true).unwrap();
    for i in 0..64u64 {
        mm.write_u64(a + i * 65536, i + 1).unwrap();
    }
    // The device faults: ranges migrate into device memory.
    for i in 0..64u64 {
        assert_eq!(gpu.read_u64(a + i * 65536).unwrap(), i + 1);
        gpu.check().unwrap();
    }
    let s = gpu.svm.stats();
    assert_eq!(s.migrations_to_devmem, 2, "{s:?}\n{}", gpu.describe());
    assert!(mm.pte(a).unwrap().dev.is_some());
    // Untouched pages in the range were zero-filled.
    assert_eq!(gpu.read_u64(a + 8).unwrap(), 0);
    gpu.write_u64(a + 16, 0xdead).unwrap();
    gpu.check().unwrap();
    // The CPU reads: pages come back.
    assert_eq!(mm.read_u64(a + 16).unwrap(), 0xdead);
    assert_eq!(mm.read_u64(a + 65536).unwrap(), 2);
    assert!(mm.pte(a).unwrap().dev.is_none());
    gpu.check().unwrap();
    // Ping-pong.
    for round in 0..5u64 {
        gpu.write_u64(a + 24, round).unwrap();
        gpu.check().unwrap();
        assert_eq!(mm.read_u64(a + 24).unwrap(), round);
        mm.write_u64(a + 32, round * 7).unwrap();
        assert_eq!(gpu.read_u64(a + 32).unwrap(), round * 7);
        gpu.check().unwrap();
    }
    println!("{:?}\n{}", gpu.svm.stats(), gpu.describe());
    // Partial munmap of a device-resident range: GC evicts the rest.
    mm.munmap(a + (3 << 20), 1 << 20).unwrap();
    gpu.check().unwrap();
    assert_eq!(gpu.read_u64(a + (2 << 20)).unwrap(), 33);
    gpu.check().unwrap();
    assert_eq!(mm.read_u64(a + (2 << 20) + 65536).unwrap(), 34);
    mm.munmap(a, 4 << 20).unwrap();
    gpu.check().unwrap();
    // The whole mapping is gone: a device access there faults.
    assert_eq!(gpu.read_u64(a), Err(Error::Fault));
    gpu.check().unwrap();
    let pm = gpu.svm.pagemap().unwrap();
    assert_eq!(pm.live_allocations(), 0);
    assert!(gpu.dev.vram_used().is_empty());
    gpu.svm.close();
    check_closed(&gpu).unwrap();
}

/// One copy-engine command per contiguous run (what `benches/migrate.rs` asserts on its own
/// platform, here on the simulator, whose copy engine counts calls and commands). A run is a
/// stretch of pages of one kind (copy from RAM, or zero-fill for a page the CPU never touched)
/// whose source and destination addresses both advance one page at a time.
///
/// The CPU writes the present pages in descending address order, so no two neighbours get
/// ascending frames: every source page is its own DMA mapping (checked), and the simulated
/// IOMMU hands out consecutive bus addresses, so each present stretch is bus-contiguous. The
/// expected count to device memory then follows from page presence and the device frames the
/// pages landed in (read back from the CPU page table).
#[test]
fn one_copy_command_per_contiguous_run() {
    const PAGES: u64 = 512;
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_devmem(&mm, 0, 4096, 1).unwrap();
    let commands = |before: (u64, u64)| {
        let now = gpu.dev.copy_counts();
        (now.0 - before.0, now.1 - before.1)
    };
    // (pattern, which pages the CPU wrote, runs to device memory)
    type Written = fn(u64) -> bool;
    let patterns: [(&str, Written, u64); 5] = [
        ("every page", |_| true, 1),
        ("first half", |p| p < 256, 2),
        ("16 written, 16 not", |p| (p / 16) % 2 == 0, 32),
        ("every other page", |p| p % 2 == 0, 512),
        ("one page in 64", |p| p % 64 == 5, 17),
    ];
    for (name, present, want) in patterns {
        let a = mm.mmap(PAGES << 12, RW, false).unwrap();
        for p in (0..PAGES).rev().filter(|&p| present(p)) {
            mm.write_u64(a + (p << 12), p + 1).unwrap();
        }
        let (maps0, _) = gpu.dev.dma_counts();
        let c0 = gpu.dev.copy_counts();
        assert_eq!(
            gpu.read_u64(a + (5 << 12)).unwrap(),
            u64::from(present(5)) * 6
        );
        let to_devmem = commands(c0);
        let (maps1, _) = gpu.dev.dma_counts();
        let range = gpu.svm.find(a).unwrap();
        assert_eq!(range.size(), PAGES << 12, "{name}");
        let written = (0..PAGES).filter(|&p| present(p)).count() as u64;
        assert_eq!(
            maps1 - maps0,
            written,
            "{name}: one DMA mapping per source page"
        );
        // The model: a new run wherever the kind changes or the device frame does not follow.
        let frame = |p: u64| {
            let pte = mm.pte(a + (p << 12)).unwrap();
            assert!(pte.dev.is_some(), "{name}: page {p} in device memory");
            pte.pfn
        };
        let runs = 1
            + (1..PAGES)
                .filter(|&p| present(p) != present(p - 1) || frame(p) != frame(p - 1) + 1)
                .count() as u64;
        assert_eq!(runs, want, "{name}: the model");
        assert_eq!(
            to_devmem,
            (1, runs),
            "{name}: one copy call, one command per run"
        );
        // Back to RAM: every page is now in contiguous device memory and lands in contiguous
        // new frames, so the only break the IOMMU can put in the destination is one alignment
        // gap where its mappings grow from 4 KiB to 64 KiB: one call, one or two commands.
        let c1 = gpu.dev.copy_counts();
        gpu.svm.evict(&range).unwrap();
        let (calls, cmds) = commands(c1);
        let ram = |p: u64| mm.pte(a + (p << 12)).unwrap().pfn;
        assert!((1..PAGES).all(|p| ram(p) == ram(p - 1) + 1), "{name}");
        assert_eq!(calls, 1, "{name}");
        assert!(
            (1..=2).contains(&cmds),
            "{name}: {cmds} commands back to RAM"
        );
        println!(
            "{name}: to device memory {runs} runs, {} commands; back {cmds}",
            to_devmem.1
        );
        gpu.check().unwrap();
    }
    // A 2 MiB huge page: one DMA mapping, one command each way.
    let a = mm.mmap(PAGES << 12, RW, true).unwrap();
    mm.write_u64(a, 1).unwrap();
    let c0 = gpu.dev.copy_counts();
    assert_eq!(gpu.read_u64(a).unwrap(), 1);
    assert_eq!(commands(c0), (1, 1), "huge page to device memory");
    let range = gpu.svm.find(a).unwrap();
    let c1 = gpu.dev.copy_counts();
    gpu.svm.evict(&range).unwrap();
    assert_eq!(commands(c1), (1, 1), "huge page back to RAM");
    assert_eq!(mm.read_u64(a).unwrap(), 1);
    gpu.check().unwrap();
}
