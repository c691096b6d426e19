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
