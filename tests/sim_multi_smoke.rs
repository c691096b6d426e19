#![cfg(feature = "sim")]
use gpusvm::platform::VmaFlags;
use gpusvm::sim::{check_invariants, SimGpu, SimMm, SimWorld};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);

#[test]
fn two_linked_devices_share_pages() {
    let world = SimWorld::new();
    world.link(0, 1);
    let mm = SimMm::new(&world);
    let a = SimGpu::join(&mm, 0, 4096).unwrap();
    let b = SimGpu::join(&mm, 1, 4096).unwrap();
    assert_eq!(a.svm.owner(), b.svm.owner());
    let buf = mm.mmap(2 << 20, RW, true).unwrap();
    mm.write_u64(buf, 5).unwrap();
    assert_eq!(a.read_u64(buf).unwrap(), 5);
    check_invariants(&mm, &[&a, &b]).unwrap();
    assert!(mm.pte(buf).unwrap().dev.is_some());
    // B reads A's memory peer-to-peer, without migrating.
    let before = b.svm.stats().migrations_to_devmem;
    assert_eq!(b.read_u64(buf).unwrap(), 5);
    check_invariants(&mm, &[&a, &b]).unwrap();
    assert_eq!(b.svm.stats().migrations_to_devmem, before);
    b.write_u64(buf + 8, 9).unwrap();
    assert_eq!(a.read_u64(buf + 8).unwrap(), 9);
    check_invariants(&mm, &[&a, &b]).unwrap();
    assert_eq!(mm.read_u64(buf + 8).unwrap(), 9);
    check_invariants(&mm, &[&a, &b]).unwrap();
    // Teardown of A while B maps its pages.
    assert_eq!(b.read_u64(buf).unwrap(), 5);
    assert_eq!(a.read_u64(buf).unwrap(), 5);
    check_invariants(&mm, &[&a, &b]).unwrap();
    a.teardown().unwrap();
    check_invariants(&mm, &[&b]).unwrap();
    assert_eq!(b.read_u64(buf).unwrap(), 5);
    check_invariants(&mm, &[&b]).unwrap();
}

#[test]
fn unlinked_devices_migrate_through_ram() {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let a = SimGpu::join(&mm, 0, 4096).unwrap();
    let b = SimGpu::join(&mm, 1, 4096).unwrap();
    assert_ne!(a.svm.owner(), b.svm.owner());
    let buf = mm.mmap(2 << 20, RW, true).unwrap();
    mm.write_u64(buf, 5).unwrap();
    assert_eq!(a.read_u64(buf).unwrap(), 5);
    a.write_u64(buf, 6).unwrap();
    check_invariants(&mm, &[&a, &b]).unwrap();
    assert_eq!(b.read_u64(buf).unwrap(), 6);
    check_invariants(&mm, &[&a, &b]).unwrap();
    let pte = mm.pte(buf).unwrap();
    println!("{pte:?}\n{:?}\n{:?}", a.svm.stats(), b.svm.stats());
    assert_eq!(a.read_u64(buf).unwrap(), 6);
    check_invariants(&mm, &[&a, &b]).unwrap();
}
