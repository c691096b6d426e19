//! Teardown of a device while others use its pages (or it maps theirs), and owner ids never
//! reused across teardowns.

use crate::machine::*;
use gpusvm::platform::{OwnerId, PagemapId};

// ---- teardown ---------------------------------------------------------------------------------

/// A device goes away while two linked peers map its pages P2P: its pages move to RAM (which
/// invalidates the peers' mappings), its pagemap is detached everywhere, nothing dangles (the
/// harness checks after the step: no survivor holds a peer mapping of it, its memory is empty,
/// it is closed and out of the registry), and the survivors read the right data.
#[test]
fn teardown_while_peers_map_its_pages() {
    let mut m = Machine::new(&[(0, 1), (0, 2), (1, 2)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    m.join(2, 0);
    let buf = m.mmap(2 * M2);
    m.cpu_fill(buf, buf + 2 * M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_read(0, buf + M2);
    m.dev_write(1, buf + 8, 0xB);
    m.dev_write(2, buf + M2 + 8, 0xC);
    assert!(m.placement(buf, buf + 2 * M2).iter().all(|d| *d == Some(0)));
    assert!(m.peer_maps(1).iter().any(|p| dev_of(p.pfn) == 0));
    assert!(m.peer_maps(2).iter().any(|p| dev_of(p.pfn) == 0));
    let (_, unmaps1) = m.g(1).dev.dma_counts();

    m.teardown(0);
    assert!(m.placement(buf, buf + 2 * M2).iter().all(|d| d.is_none()));
    assert!(m.peer_maps(1).is_empty() && m.peer_maps(2).is_empty());
    assert!(
        m.g(1).dev.dma_counts().1 > unmaps1,
        "B's peer mappings were unmapped"
    );
    assert!(m.g(1).svm.pagemap_by_id(PagemapId(0)).is_none());

    m.dev_read_all(2, buf, buf + 2 * M2);
    m.dev_read_all(1, buf, buf + 2 * M2);
    assert!(m.placement(buf, buf + 2 * M2).iter().all(|d| *d == Some(1)));
    m.dev_read_all(2, buf, buf + 2 * M2);
    assert!(m.peer_maps(2).iter().all(|p| dev_of(p.pfn) == 1));
    m.cpu_read_all(buf, buf + 2 * M2);
}

/// The device that holds the P2P mappings goes away: the owner of the pages keeps them, with
/// their data, and can still be reached by the remaining peer.
#[test]
fn teardown_of_the_mapping_device() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_write(1, buf + 8, 0xB);
    assert!(!m.peer_maps(1).is_empty());
    let vram0 = m.g(0).dev.vram_used();
    m.teardown(1);
    assert_eq!(m.g(0).dev.vram_used(), vram0);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert_eq!(m.world.owners.owners(), 1);
    m.dev_read_all(0, buf, buf + M2);
    m.cpu_read_all(buf, buf + M2);
}

/// Teardown of a device whose pages no one else maps, with RAM pages and device pages of
/// another owner around: only its own memory is emptied.
#[test]
fn teardown_leaves_other_owners_alone() {
    let mut m = Machine::new(&[]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let a = m.mmap(M2);
    let b = m.mmap(M2);
    m.cpu_fill(a, a + M2, 8 * P, 1);
    m.cpu_fill(b, b + M2, 8 * P, 2);
    m.dev_read(0, a);
    m.dev_read(1, b);
    m.teardown(0);
    assert!(m.placement(a, a + M2).iter().all(|d| d.is_none()));
    assert!(m.placement(b, b + M2).iter().all(|d| *d == Some(1)));
    m.dev_read_all(1, a, a + M2);
    m.cpu_read_all(a, b + M2);
}

// ---- owner ids in the simulator --------------------------------------------------------------

/// Devices joining and leaving in turn never receive a dead owner's id, and the ids the
/// simulator gives to a device's `Svm` and its pagemap agree.
#[test]
fn owner_ids_are_never_reused_across_teardowns() {
    let mut m = Machine::new(&[]);
    let mut seen: Vec<OwnerId> = Vec::new();
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 16 * P, 1);
    for id in 0..6u32 {
        let g = m.join(id, VRAM);
        let o = g.svm.owner().unwrap();
        assert_eq!(g.svm.pagemap().unwrap().owner(), o);
        assert!(!seen.contains(&o), "owner {o:?} handed out twice");
        seen.push(o);
        m.dev_read_all(id, buf, buf + M2);
        assert_eq!(m.where_is(buf), Some(id));
        m.teardown(id);
        assert_eq!(m.world.owners.owners(), 0);
    }
    m.cpu_read_all(buf, buf + M2);
}
