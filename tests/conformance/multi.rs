//! Several devices on one address space (SPEC §3 peer pages, §6 owners, §7 device → device):
//! linked devices share pages peer-to-peer, unlinked ones migrate through RAM, and devices can
//! be torn down while others keep using the memory.

use crate::harness::*;

/// xe_exec_system_allocator multi-GPU with a fast interconnect: three linked devices (two with
/// device memory, one without) use one buffer that the first moved into its memory. The others
/// read it, write it and do atomics on it in place over peer-to-peer mappings — no migration,
/// no copy anywhere — and the CPU's access later invalidates every peer mapping.
#[test]
fn multi_gpu_linked_shared() {
    let mut m = Machine::new(&[(0, 1), (0, 2), (1, 2)]);
    m.join(0, 4096);
    m.join(1, 4096);
    m.join(2, 0);
    assert_eq!(m.world.owners.owners(), 1);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_write(0, buf + 8, 1);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    let copies: Vec<u64> = (0..2).map(|i| m.g(i).dev.copy_counts().0).collect();

    for id in [1, 2] {
        m.dev_verify(id, buf, buf + M2);
        let ctr = buf + 64 * P * u64::from(id);
        m.dev_atomic(id, ctr, 10);
        m.dev_write(id, ctr + 8, u64::from(id));
        assert_eq!(
            m.stats(id).migrations_to_devmem,
            0,
            "device {id} did not migrate"
        );
        assert!(!m.peer_maps(id).is_empty(), "device {id} maps peer-to-peer");
        assert!(m.peer_maps(id).iter().all(|p| dev_of(p.pfn) == 0));
    }
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    let now: Vec<u64> = (0..2).map(|i| m.g(i).dev.copy_counts().0).collect();
    assert_eq!(now, copies, "no copy engine ran");
    assert_eq!(
        m.dev_read(0, buf + 64 * P * 2 + 8),
        2,
        "device 0 sees device 2's write"
    );

    m.cpu_verify(buf, buf + M2);
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    for id in [1, 2] {
        assert!(
            m.peer_maps(id).is_empty(),
            "device {id}'s peer mappings invalidated"
        );
    }
    m.dev_verify(2, buf, buf + M2);
}

/// xe_exec_system_allocator multi-GPU `atomic` without a fast interconnect (and hmm-tests
/// `exclusive` with two mirrors): two unlinked devices take turns incrementing one counter.
/// Every atomic needs the page in the atomic device's own memory, so the range moves from one
/// device's memory to the other's through RAM each time; no increment is lost.
#[test]
fn multi_gpu_unlinked_atomic_counter() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    m.join(1, 4096);
    assert_eq!(m.world.owners.owners(), 2);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 16 * P, 1);
    let ctr = buf + 8;
    for i in 0..8u32 {
        let id = i % 2;
        m.dev_atomic(id, ctr, 1);
        assert!(m.all_at(buf, buf + M2, Loc::Dev(id)), "turn {i}");
        assert_eq!(
            m.live_allocs(1 - id),
            0,
            "the other device's memory was emptied"
        );
        assert!(m.peer_maps(id).is_empty());
    }
    for id in 0..2 {
        let s = m.stats(id);
        assert_eq!(s.migrations_to_devmem, 4, "device {id}: {s:?}");
        assert_eq!(s.faults_atomic, 4);
    }
    assert_eq!(m.stats(0).evictions + m.stats(1).evictions, 7);
    assert_eq!(m.cpu_read(ctr), 8);
    m.cpu_verify(buf, buf + M2);
}

/// xe_exec_system_allocator multi-GPU with four devices in two interconnect groups ({0,1} and
/// {2,3}): each device writes its own region, then every device reads every region. A reader
/// linked to the region's holder maps it peer-to-peer; an unlinked reader takes it into its own
/// memory. An unmap while several devices map a region zaps all of them; tearing two devices
/// down empties their memory into RAM, and the survivors still see every value.
#[test]
fn multi_gpu_four_devices() {
    let mut m = Machine::new(&[(0, 1), (2, 3)]);
    for id in 0..4 {
        m.join(id, 4096);
    }
    assert_eq!(m.world.owners.owners(), 2);
    let regions: Vec<u64> = (0..4).map(|_| m.mmap(M2)).collect();
    for (i, &r) in regions.iter().enumerate() {
        m.cpu_fill(r, r + M2, 16 * P, 1);
        m.dev_fill(i as u32, r + 8, r + M2, 32 * P, 10 + i as u64);
        assert!(m.all_at(r, r + M2, Loc::Dev(i as u32)));
    }
    let group = |id: u32| id / 2;
    for reader in 0..4u32 {
        for (i, &r) in regions.iter().enumerate() {
            let holder = match m.loc(r) {
                Loc::Dev(h) => h,
                l => panic!("region {i} in {l:?}"),
            };
            m.dev_verify(reader, r, r + M2);
            let now = m.loc(r);
            if group(holder) == group(reader) {
                assert_eq!(now, Loc::Dev(holder), "linked: read in place");
            } else {
                assert_eq!(now, Loc::Dev(reader), "unlinked: taken into the reader");
            }
            assert!(m.all_at(r, r + M2, now));
        }
    }
    for id in 0..4 {
        for p in m.peer_maps(id) {
            assert_eq!(
                group(dev_of(p.pfn)),
                group(id),
                "peer mapping across groups"
            );
        }
    }

    // The group {2, 3} read last: device 2 took every region, device 3 maps them over the link.
    assert!(regions.iter().all(|&r| m.all_at(r, r + M2, Loc::Dev(2))));
    assert_eq!(m.live_allocs(2), 4);
    let r3 = regions[3];
    assert!(m.dev_ptes(2, r3, r3 + M2) > 0 && m.dev_ptes(3, r3, r3 + M2) > 0);
    assert!(!m.peer_maps(3).is_empty());
    m.munmap(r3, M2);
    for id in 0..4 {
        assert_eq!(m.dev_ptes(id, r3, r3 + M2), 0, "device {id} zapped");
    }
    assert_eq!(
        m.live_allocs(2),
        3,
        "the unmapped region's memory was freed"
    );

    m.teardown(1);
    m.teardown(2);
    assert!(
        regions[..3].iter().all(|&r| m.all_at(r, r + M2, Loc::Ram)),
        "device 2's memory was emptied into RAM"
    );
    assert_eq!(
        m.world.owners.owners(),
        2,
        "devices 0 and 3 keep their owners"
    );
    for id in [0, 3] {
        for &r in &regions[..3] {
            m.dev_verify(id, r, r + M2);
        }
    }
    m.cpu_verify(regions[0], regions[2] + M2);
}
