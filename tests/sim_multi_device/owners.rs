//! Devices and owners: two linked devices (one owner), two unlinked devices (two owners),
//! a third device joining and leaving.

use crate::machine::*;
use gpusvm::pagemap::PeerId;
use gpusvm::Error;

// ---- two devices, one owner ------------------------------------------------------------------

/// Two linked devices share an owner: the second maps the first's device memory peer-to-peer
/// (a `peer: true` DMA mapping) instead of migrating, and both read and write the same data.
#[test]
fn linked_devices_share_pages_without_migration() {
    let mut m = Machine::new(&[(0, 1)]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    assert_eq!(a.svm.owner(), b.svm.owner());
    assert_eq!(
        a.svm.pagemap().unwrap().owner(),
        b.svm.pagemap().unwrap().owner()
    );
    assert_eq!(m.world.owners.owners(), 1);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert_eq!(m.stats(0).migrations_to_devmem, 1);
    let (ca, cb) = (m.copies(0), m.copies(1));
    let vram_a = a.dev.vram_used();

    // B reads A's memory over the link: no migration anywhere, no copy.
    m.dev_read_all(1, buf, buf + M2);
    assert_eq!(m.stats(1).migrations_to_devmem, 0);
    assert_eq!(m.stats(1).migrations_to_ram, 0);
    assert_eq!(m.stats(0).migrations_to_devmem, 1);
    assert_eq!((m.copies(0), m.copies(1)), (ca, cb));
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert_eq!(a.dev.vram_used(), vram_a);
    assert!(b.dev.vram_used().is_empty());
    let peer = m.peer_maps(1);
    assert!(!peer.is_empty(), "B maps A's pages peer-to-peer");
    assert!(peer.iter().all(|p| dev_of(p.pfn) == 0));
    assert!(m.peer_maps(0).is_empty(), "A uses its own memory directly");
    assert!(
        b.dev
            .ptes()
            .iter()
            .all(|(_, p)| p.proto != gpusvm::pages::Protocol::DEVICE_LOCAL),
        "B's PTEs are peer PTEs"
    );

    // Writes from either side are seen by the other through the same frames.
    m.dev_write(1, buf + 8, 0xB1);
    assert_eq!(m.dev_read(0, buf + 8), 0xB1);
    m.dev_write(0, buf + 16, 0xA1);
    assert_eq!(m.dev_read(1, buf + 16), 0xA1);
    for i in 0..32u64 {
        let addr = buf + i * K64 + 24;
        m.dev_write(i as u32 % 2, addr, tag(addr, 7));
        m.dev_read((i as u32 + 1) % 2, addr);
    }
    assert_eq!(m.stats(0).migrations_to_devmem, 1);
    assert_eq!(m.stats(1).migrations_to_devmem, 0);
    assert_eq!((m.copies(0), m.copies(1)), (ca, cb));

    // The CPU pulls everything back; both devices then fault again and see the same data.
    m.cpu_read_all(buf, buf + M2);
    assert!(
        m.peer_maps(1).is_empty(),
        "the migration invalidated B's peer mappings"
    );
    m.dev_read_all(1, buf, buf + M2);
    m.dev_read_all(0, buf, buf + M2);
}

/// A linked device without device memory of its own still maps its owner's device pages
/// peer-to-peer (and never migrates).
#[test]
fn linked_device_without_memory_maps_peer_pages() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    m.join(1, 0);
    assert_eq!(m.g(0).svm.owner(), m.g(1).svm.owner());
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, K64, 1);
    m.dev_read(0, buf);
    m.dev_read_all(1, buf, buf + M2);
    assert!(!m.peer_maps(1).is_empty());
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    m.dev_write(1, buf + 8, 5);
    assert_eq!(m.dev_read(0, buf + 8), 5);
    assert_eq!(m.cpu_read(buf + 8), 5);
}

/// A peer-to-peer DMA mapping that fails (injected into B's `map_peer`) fails the fault with
/// `NoMem` and leaves no mapping behind; the pages stay in A's memory, and the next fault maps
/// them.
#[test]
fn peer_map_failure_undoes_the_collection() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    let b = m.join(1, 0);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, K64, 1);
    m.dev_read(0, buf);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    let (peer_before, dma_before) = (m.peer_maps(1).len(), b.dev.dma_mappings().len());
    // The range is one 2 MiB entry: one peer mapping, and it fails.
    b.dev.inject_dma_fail_at(1);
    assert_eq!(b.read_u64(buf), Err(Error::NoMem));
    assert_eq!(b.dev.pending_injections().0, 0, "the injection fired");
    assert_eq!(
        m.peer_maps(1).len(),
        peer_before,
        "no peer mapping left behind"
    );
    assert_eq!(b.dev.dma_mappings().len(), dma_before);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    m.check("after the failed peer map");
    m.dev_read_all(1, buf, buf + M2);
    assert!(!m.peer_maps(1).is_empty());
    m.check("after the retry");
}

// ---- two devices, two owners -----------------------------------------------------------------

/// Without a link the devices are in different owners: B's fault on pages in A's memory evicts
/// them to RAM (A's copy engine) and migrates them into B (B's copy engine); no P2P mapping is
/// ever made; the data survives every trip.
#[test]
fn unlinked_devices_migrate_through_ram() {
    let mut m = Machine::new(&[]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    assert_ne!(a.svm.owner(), b.svm.owner());
    assert_eq!(m.world.owners.owners(), 2);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_write(0, buf + 8, 0xA);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));

    let (ca, cb) = (m.copies(0), m.copies(1));
    let sb = m.stats(1);
    assert_eq!(m.dev_read(1, buf + 8), 0xA);
    let sb2 = m.stats(1);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    assert!(a.dev.vram_used().is_empty(), "A's allocation was released");
    assert_eq!(a.svm.pagemap().unwrap().live_allocations(), 0);
    assert_eq!(sb2.evictions, sb.evictions + 1, "B evicted A's pages");
    assert_eq!(sb2.migrations_to_ram, sb.migrations_to_ram + 1);
    assert_eq!(sb2.migrations_to_devmem, sb.migrations_to_devmem + 1);
    assert_eq!(m.copies(0), ca + 1, "A's engine copied its pages to RAM");
    assert_eq!(m.copies(1), cb + 1, "B's engine copied them in");
    assert!(m.peer_maps(0).is_empty() && m.peer_maps(1).is_empty());
    m.dev_read_all(1, buf, buf + M2);

    // And back: ping-pong a few times, with writes on both sides.
    for round in 0..3u64 {
        m.dev_write(0, buf + 16, round);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
        assert_eq!(m.dev_read(1, buf + 16), round);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
        m.dev_write(1, buf + 24, round * 3);
    }
    assert!(m.peer_maps(0).is_empty() && m.peer_maps(1).is_empty());
    m.cpu_read_all(buf, buf + M2);
    m.dev_read_all(0, buf, buf + M2);
}

// ---- a third device joins and leaves ---------------------------------------------------------

/// A third device linked to both members adopts their owner and shares their pages P2P; when
/// it leaves, the owner lives on; when the last peer leaves, the owner dies and its id is
/// never handed out again.
#[test]
fn third_device_linked_to_both_joins_the_owner_and_leaves() {
    let mut m = Machine::new(&[(0, 1), (0, 2), (1, 2)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let o = m.g(0).svm.owner().unwrap();
    let c = m.join(2, VRAM);
    assert_eq!(c.svm.owner(), Some(o));
    assert_eq!(m.world.owners.owners(), 1);
    let mut members = m.world.owners.members(o).unwrap();
    members.sort();
    assert_eq!(&members[..], &(0..6).map(PeerId).collect::<Vec<_>>()[..]);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_read(1, buf);
    assert_eq!(m.where_is(buf), Some(1));
    m.dev_read_all(2, buf, buf + M2);
    m.dev_read_all(0, buf, buf + M2);
    assert!(m.peer_maps(2).iter().all(|p| dev_of(p.pfn) == 1));
    assert!(!m.peer_maps(2).is_empty() && !m.peer_maps(0).is_empty());
    assert_eq!(m.stats(2).migrations_to_devmem, 0);
    m.dev_write(2, buf + 8, 0xC);
    assert_eq!(m.dev_read(0, buf + 8), 0xC);

    m.teardown(2);
    assert_eq!(m.world.owners.owners(), 1);
    assert_eq!(m.world.owners.members(o).unwrap().len(), 4);
    m.dev_read_all(0, buf, buf + M2);
    m.teardown(1);
    assert!(m.placement(buf, buf + M2).iter().all(|d| d.is_none()));
    m.dev_read_all(0, buf, buf + M2);
    assert_eq!(m.where_is(buf), Some(0));
    m.teardown(0);
    assert_eq!(
        m.world.owners.owners(),
        0,
        "the owner died with its last peer"
    );
    assert!(m.world.owners.members(o).unwrap().is_empty());
    m.cpu_read_all(buf, buf + M2);

    // A newcomer gets a fresh owner id.
    let d = m.join(3, VRAM);
    assert_ne!(d.svm.owner(), Some(o));
    m.dev_read_all(3, buf, buf + M2);
    assert_eq!(m.where_is(buf), Some(3));
}

/// A third device linked to only one member of the owner does not qualify (the join rule needs
/// a link to *every* member): it gets a new owner, sees the others' pages only through RAM,
/// and its owner dies when it leaves.
#[test]
fn third_device_linked_to_one_gets_a_new_owner() {
    let mut m = Machine::new(&[(0, 1), (0, 2)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let o = m.g(0).svm.owner().unwrap();
    let c = m.join(2, VRAM);
    let oc = c.svm.owner().unwrap();
    assert_ne!(oc, o);
    assert_eq!(m.world.owners.owners(), 2);
    assert_eq!(c.svm.pagemap().unwrap().owner(), oc);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_read(0, buf);
    assert_eq!(m.where_is(buf), Some(0));
    // C is linked to A but not in A's owner: A's pages go through RAM into C.
    m.dev_read_all(2, buf, buf + M2);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(2)));
    assert!(m.peer_maps(2).is_empty());
    assert_eq!(m.stats(2).evictions, 1);
    // B faults on C's pages: foreign again, through RAM.
    m.dev_write(1, buf + 8, 0xB);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    assert!(m.peer_maps(1).is_empty());
    m.dev_read_all(2, buf, buf + M2);

    m.teardown(2);
    assert_eq!(m.world.owners.owners(), 1, "C's owner died with C");
    assert!(m.world.owners.members(oc).unwrap().is_empty());
    m.dev_read_all(1, buf, buf + M2);

    // A later device linked to both A and B joins their owner; one linked to nobody gets an id
    // no owner had before.
    m.world.link(1, 3);
    m.world.link(0, 3);
    let d = m.join(3, VRAM);
    assert_eq!(d.svm.owner(), Some(o));
    let e = m.join(4, VRAM);
    let oe = e.svm.owner().unwrap();
    assert!(oe != o && oe != oc);
    m.dev_read_all(3, buf, buf + M2);
    assert!(!m.peer_maps(3).is_empty());
}
