#![cfg(feature = "sim")]
use gpusvm::platform::VmaFlags;
use gpusvm::sim::{check_closed, SimGpu, SimMm, SimWorld};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);

#[test]
fn smoke_munmap_partial_and_close() {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
    let a = mm.mmap(4 << 20, RW, true).unwrap();
    for i in 0..64u64 {
        mm.write_u64(a + i * 65536, i).unwrap();
    }
    for i in 0..64u64 {
        assert_eq!(gpu.read_u64(a + i * 65536).unwrap(), i);
        gpu.check().unwrap();
    }
    let (_, ranges) = gpu.svm.counts();
    assert_eq!(ranges, 2, "{}", gpu.describe());
    mm.munmap(a + (1 << 20), 1 << 20).unwrap();
    gpu.check().unwrap();
    assert_eq!(gpu.svm.gc_pending(), 1);
    assert_eq!(gpu.read_u64(a).unwrap(), 0);
    gpu.check().unwrap();
    assert_eq!(gpu.svm.gc_pending(), 0);
    assert_eq!(gpu.read_u64(a + (1 << 20)), Err(gpusvm::Error::Fault));
    mm.write_u64(a + (3 << 20), 99).unwrap();
    assert_eq!(gpu.read_u64(a + (3 << 20)).unwrap(), 99);
    gpu.check().unwrap();
    println!("{}", gpu.describe());
    gpu.svm.close();
    check_closed(&gpu).unwrap();
}
