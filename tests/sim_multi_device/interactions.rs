//! More interactions between devices: mixed pagemaps, pressure eviction and munmap under peer
//! mappings, an unlinked device without memory, a late joiner.

use crate::machine::*;

// ---- more interactions ------------------------------------------------------------------------

/// A range whose pages sit in two different pagemaps of the owner (and RAM) is "mixed": a
/// device without memory faulting on it gets `NotSupported` from the collection, evicts the
/// range to RAM and collects again — transparently, with the data intact.
#[test]
fn mixed_pagemaps_are_evicted_then_collected() {
    let mut m = Machine::new(&[(0, 1), (0, 2), (1, 2)]);
    let small = cfg(VRAM).with_chunk_sizes(&[K64, P]).unwrap();
    m.join_with(1, VRAM, small.clone());
    m.join_with(2, VRAM, small);
    m.join(0, 0);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, P, 1);
    m.dev_read(1, buf);
    m.dev_read(2, buf + K64);
    let mut want: Vec<Option<u32>> = vec![None; 512];
    want[..16].fill(Some(1));
    want[16..32].fill(Some(2));
    assert_eq!(m.placement(buf, buf + M2), want);
    let s = m.stats(0);
    m.dev_read(0, buf + 2 * K64);
    assert_eq!(m.stats(0).evictions, s.evictions + 1);
    assert!(m.placement(buf, buf + M2).iter().all(|d| d.is_none()));
    assert!(m.peer_maps(0).is_empty());
    m.dev_read_all(0, buf, buf + M2);
    m.dev_read_all(1, buf, buf + M2);
    m.dev_read_all(2, buf, buf + M2);
}

/// Memory pressure: A's memory holds one 2 MiB range that B maps P2P; A's fault on another
/// range finds A full, evicts the first range (invalidating B's peer mappings of it) and takes
/// the second.
#[test]
fn pressure_eviction_invalidates_peer_mappings() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, 512);
    m.join(1, 0);
    let x = m.mmap(M2);
    let y = m.mmap(M2);
    m.cpu_fill(x, x + M2, 8 * P, 1);
    m.cpu_fill(y, y + M2, 8 * P, 2);
    m.dev_read(0, x);
    m.dev_read_all(1, x, x + M2);
    assert!(!m.peer_maps(1).is_empty());
    m.dev_read(0, y);
    assert!(m.placement(y, y + M2).iter().all(|d| *d == Some(0)));
    assert!(m.placement(x, x + M2).iter().all(|d| d.is_none()));
    assert!(
        m.peer_maps(1).is_empty(),
        "B's peer mappings of x went with the eviction"
    );
    m.dev_read_all(1, x, y + M2);
    assert!(m.peer_maps(1).iter().all(|p| dev_of(p.pfn) == 0));
    assert!(!m.peer_maps(1).is_empty());
    m.cpu_read_all(x, y + M2);
}

/// munmap (whole and partial) of pages in A's memory while B maps them P2P: both devices drop
/// their mappings, the allocation is released when its last page goes, the surviving part
/// stays readable.
#[test]
fn munmap_under_peer_mappings() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let buf = m.mmap(2 * M2);
    m.cpu_fill(buf, buf + 2 * M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_read(0, buf + M2);
    m.dev_read_all(1, buf, buf + 2 * M2);
    assert_eq!(m.g(0).svm.pagemap().unwrap().live_allocations(), 2);
    // Whole second block.
    m.mm.munmap(buf + M2, M2).unwrap();
    m.model.retain(|a, _| *a < buf + M2);
    m.check("munmap whole block");
    assert_eq!(m.g(0).svm.pagemap().unwrap().live_allocations(), 1);
    // Half of the first block.
    m.mm.munmap(buf + M2 / 2, M2 / 2).unwrap();
    m.model.retain(|a, _| *a < buf + M2 / 2);
    m.check("munmap half block");
    m.dev_read_all(1, buf, buf + M2 / 2);
    m.dev_read_all(0, buf, buf + M2 / 2);
    m.dev_write(1, buf + 8, 0x77);
    m.cpu_read_all(buf, buf + M2 / 2);
    m.teardown(0);
    m.teardown(1);
    assert_eq!(m.world.owners.owners(), 0);
}

/// A device without memory and without a link faults on pages in another owner's memory:
/// the collection brings them back to RAM (the platform migrates foreign device pages when
/// faulting them in) and maps them as system pages.
#[test]
fn unlinked_device_without_memory_reads_foreign_pages() {
    let mut m = Machine::new(&[]);
    m.join(0, VRAM);
    m.join(1, 0);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_write(0, buf + 8, 0xA);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    m.dev_read_all(1, buf, buf + M2);
    assert!(m.placement(buf, buf + M2).iter().all(|d| d.is_none()));
    assert!(m.peer_maps(1).is_empty());
    m.dev_write(1, buf + 16, 0xB);
    m.dev_read_all(0, buf, buf + M2);
    assert_eq!(m.where_is(buf), Some(0));
    m.dev_read_all(1, buf, buf + M2);
}

/// A device joining after its owner's pages are resident maps them P2P at once (it attaches
/// every pagemap of the machine when it joins).
#[test]
fn late_joiner_maps_resident_pages() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.join(1, VRAM);
    m.dev_read_all(1, buf, buf + M2);
    assert!(!m.peer_maps(1).is_empty());
    assert_eq!(m.stats(1).migrations_to_devmem, 0);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
}
