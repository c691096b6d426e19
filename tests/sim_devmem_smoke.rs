//! Copy-engine batching on the simulator (its copy engine counts calls and commands). The
//! device-memory round trip that was here runs in the conformance kit
//! (`gpusvm::testkit::run_migration`, scenario `roundtrip`, in tests/testkit_sim.rs).
#![cfg(feature = "sim")]
use gpusvm::platform::VmaFlags;
use gpusvm::sim::{SimGpu, SimMm, SimWorld};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);

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
