//! Copy-engine traffic between two unlinked simulated devices. The contract of both cases
//! (peer access between linked devices, device teardown under a peer, migration through RAM
//! between unlinked ones) runs in the conformance kit (`gpusvm::testkit::run_device_to_device`,
//! in tests/testkit_sim.rs); this test adds what only the simulator can count: which copy engine
//! ran how many runs.
#![cfg(feature = "sim")]
use gpusvm::platform::VmaFlags;
use gpusvm::sim::{check_invariants, SimGpu, SimMm, SimWorld};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);

/// Two devices without a link have different owners, so neither can map or copy the other's
/// memory: a page moves from one device's memory to the other's through RAM — the owner's copy
/// engine copies it back to system memory, then the faulting device's engine copies it in.
#[test]
fn unlinked_devices_migrate_through_ram() {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let a = SimGpu::join(&mm, 0, 4096).unwrap();
    let b = SimGpu::join(&mm, 1, 4096).unwrap();
    assert_ne!(a.svm.owner(), b.svm.owner());
    let owner_of = |addr| mm.pte(addr).unwrap().dev.map(|(_, owner)| owner);
    let copy_runs = || (a.dev.copy_counts().1, b.dev.copy_counts().1);
    let buf = mm.mmap(2 << 20, RW, true).unwrap();
    mm.write_u64(buf, 5).unwrap();
    assert_eq!(owner_of(buf), None);
    // A's fault migrates the page from RAM into A's memory: one copy by A's engine.
    assert_eq!(a.read_u64(buf).unwrap(), 5);
    assert_eq!(owner_of(buf), a.svm.owner());
    assert_eq!(copy_runs(), (1, 0));
    a.write_u64(buf, 6).unwrap();
    check_invariants(&mm, &[&a, &b]).unwrap();
    // B's fault: A's engine copies the page back to RAM, B's engine copies it into B's memory
    // (one run each; no device-to-device copy).
    assert_eq!(b.read_u64(buf).unwrap(), 6);
    check_invariants(&mm, &[&a, &b]).unwrap();
    assert_eq!(owner_of(buf), b.svm.owner());
    assert_eq!(copy_runs(), (2, 1));
    let (sa, sb) = (a.svm.stats(), b.svm.stats());
    println!("{:?}\n{sa:?}\n{sb:?}", mm.pte(buf));
    assert_eq!(
        (sb.migrations_to_devmem, sb.migrations_to_ram, sb.evictions),
        (1, 1, 1),
        "B evicted A's range to RAM, then migrated it into its own memory: {sb:?}"
    );
    assert_eq!(sb.bytes_to_ram, 2 << 20, "{sb:?}");
    assert_eq!(sb.bytes_to_devmem, 2 << 20, "{sb:?}");
    // And back: B's engine copies to RAM, A's engine copies into A's memory.
    assert_eq!(a.read_u64(buf).unwrap(), 6);
    check_invariants(&mm, &[&a, &b]).unwrap();
    assert_eq!(owner_of(buf), a.svm.owner());
    assert_eq!(copy_runs(), (3, 2));
    assert_eq!(a.svm.stats().migrations_to_devmem, 2);
    assert_eq!(mm.read_u64(buf).unwrap(), 6);
    assert_eq!(owner_of(buf), None);
    check_invariants(&mm, &[&a, &b]).unwrap();
}
