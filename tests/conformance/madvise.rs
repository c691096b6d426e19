//! madvise-style attributes (SPEC §8): preferred location (system memory, a peer's memory),
//! atomic access policy, migration policy, and prefetch.

use crate::harness::*;
use gpusvm::platform::PagemapId;
use gpusvm::policy::{AtomicPolicy, MigrationPolicy, PreferredLoc, PrefetchLoc};
use gpusvm::Error;

/// xe_exec_system_allocator `madvise-preferred-loc-sram`: with the preferred location set to
/// system memory, a buffer the GPU already moved to device memory is pulled back on its next
/// fault and mapped from RAM; a fresh buffer under the attribute never migrates. Switching back
/// to the device default migrates it again.
#[test]
fn madvise_preferred_system() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    let fresh = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_write(0, buf + 8, 2);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    let s0 = m.stats(0);

    m.set_attrs(0, buf, M2, &pref(PreferredLoc::System))
        .unwrap();
    m.set_attrs(0, fresh, M2, &pref(PreferredLoc::System))
        .unwrap();
    assert_eq!(
        m.dev_ptes(0, buf, buf + M2),
        0,
        "mappings cleared: the attribute changed"
    );
    m.dev_verify(0, buf, buf + M2);
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert_eq!(m.live_allocs(0), 0);
    assert!(m.dma_live(0).iter().all(|d| !d.peer), "mapped from RAM");
    m.dev_fill(0, fresh, fresh + M2, 16 * P, 3);
    assert!(m.all_at(fresh, fresh + M2, Loc::Ram));
    let s1 = m.stats(0);
    assert_eq!(s1.migrations_to_devmem, s0.migrations_to_devmem);
    assert_eq!(s1.attr_changes, s0.attr_changes + 2);

    m.set_attrs(0, buf, M2, &pref(PreferredLoc::DeviceDefault))
        .unwrap();
    m.dev_read(0, buf + 8);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    assert_eq!(m.stats(0).migrations_to_devmem, s1.migrations_to_devmem + 1);
    m.cpu_verify(buf, buf + M2);
    m.cpu_verify(fresh, fresh + M2);
}

/// xe_exec_system_allocator `madvise-preferred-loc` naming another GPU's memory (multi-GPU):
/// device 0 prefers device 1's memory for a buffer. Its faults place the pages in device 1's
/// memory (they share an owner over a fast link) and map them peer-to-peer; device 1 then uses
/// them locally without migrating. A device without a link to device 1 is refused with
/// `NoLink`.
#[test]
fn madvise_preferred_peer() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, 4096);
    m.join(1, 4096);
    m.join(2, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    let pm1 = m.pagemap_id(1);
    assert_eq!(pm1, PagemapId(1));
    m.set_attrs(0, buf, M2, &pref(PreferredLoc::Pagemap(pm1)))
        .unwrap();
    m.dev_write(0, buf + 8, 5);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(1)));
    assert_eq!(m.vram_used(0), 0);
    assert_eq!(
        m.stats(0).migrations_to_devmem,
        1,
        "device 0 migrated into device 1"
    );
    assert!(!m.peer_maps(0).is_empty(), "device 0 maps peer-to-peer");
    m.dev_verify(0, buf, buf + M2);

    m.dev_verify(1, buf, buf + M2);
    assert_eq!(
        m.stats(1).migrations_to_devmem,
        0,
        "already in device 1's memory"
    );
    assert!(m.peer_maps(1).is_empty());

    assert_eq!(
        m.set_attrs(2, buf, M2, &pref(PreferredLoc::Pagemap(pm1))),
        Err(Error::NoLink)
    );
    assert_eq!(
        m.prefetch(2, buf, M2, PrefetchLoc::Pagemap(pm1)),
        Err(Error::NoLink)
    );
    assert!(
        m.all_at(buf, buf + M2, Loc::Dev(1)),
        "refusals moved nothing"
    );
    m.cpu_verify(buf, buf + M2);
}

/// xe_exec_system_allocator `madvise-atomic-cpu` / `-device` / `-global` (and the sysmem-atomics
/// devices): under `cpu` a device atomic is refused with `Access` (reads and writes still
/// work); under `device` and `global` a device atomic migrates the range to device memory; a
/// device that can do atomics on system memory performs `device` atomics in RAM, but without
/// device memory it cannot serve `global` ones (`Fault`).
#[test]
fn madvise_atomic() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let mut c = cfg(0);
    c.policy.atomics_on_sysmem = true;
    m.join_with(1, 0, c);
    let [cpu, dev, global] = [0; 3].map(|_| m.mmap(M2));
    for b in [cpu, dev, global] {
        m.cpu_fill(b, b + M2, 16 * P, 1);
    }
    m.set_attrs(0, cpu, M2, &atomic(AtomicPolicy::Cpu)).unwrap();
    m.set_attrs(0, dev, M2, &atomic(AtomicPolicy::Device))
        .unwrap();
    m.set_attrs(0, global, M2, &atomic(AtomicPolicy::Global))
        .unwrap();
    m.set_attrs(1, dev, M2, &atomic(AtomicPolicy::Device))
        .unwrap();
    m.set_attrs(1, global, M2, &atomic(AtomicPolicy::Global))
        .unwrap();

    assert_eq!(m.try_dev_atomic(0, cpu, 1), Err(Error::Access));
    assert_eq!(m.dev_read(0, cpu), tag(cpu, 1));
    m.dev_write(0, cpu + 8, 3);
    m.cpu_write(cpu, m.expect(cpu) + 1);

    m.dev_atomic(0, dev + 16 * P, 5);
    assert!(m.all_at(dev, dev + M2, Loc::Dev(0)));
    m.dev_atomic(0, global, 7);
    assert!(m.all_at(global, global + M2, Loc::Dev(0)));
    assert_eq!(m.stats(0).faults_atomic, 3);

    // Device 1 (no device memory, atomics on system memory).
    m.cpu_verify(dev, dev + M2);
    m.dev_atomic(1, dev + 16 * P, 5);
    assert!(
        m.all_at(dev, dev + M2, Loc::Ram),
        "device 1 did its atomic in RAM"
    );
    assert_eq!(m.try_dev_atomic(1, global + 16 * P, 1), Err(Error::Fault));
    assert_eq!(m.dev_read(0, dev + 16 * P), tag(dev + 16 * P, 1) + 10);
    m.cpu_verify(cpu, cpu + M2);
    m.cpu_verify(global, global + M2);
}

/// xe_exec_system_allocator `madvise-migrate-*` (migration policy "system pages only"): device 0
/// does not move pages out of another device's memory. A buffer in the (unlinked) device 1's
/// memory is brought back to RAM and mapped from there, while under the default policy the same
/// access migrates it into device 0; system pages still migrate under either policy.
#[test]
fn madvise_migration_policy() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    m.join(1, 4096);
    let [only, all, sys] = [0; 3].map(|_| m.mmap(M2));
    for b in [only, all, sys] {
        m.cpu_fill(b, b + M2, 16 * P, 1);
    }
    m.dev_write(1, only + 8, 2);
    m.dev_write(1, all + 8, 3);
    assert!(m.all_at(only, only + M2, Loc::Dev(1)));
    assert!(m.all_at(all, all + M2, Loc::Dev(1)));
    let pol = migration(MigrationPolicy::SystemPagesOnly);
    m.set_attrs(0, only, M2, &pol).unwrap();
    m.set_attrs(0, sys, M2, &pol).unwrap();
    let s0 = m.stats(0);

    m.dev_verify(0, only, only + M2);
    assert!(
        m.all_at(only, only + M2, Loc::Ram),
        "pulled back to RAM, not into device 0"
    );
    assert_eq!(m.stats(0).migrations_to_devmem, s0.migrations_to_devmem);
    assert_eq!(m.dev_ptes(0, only, only + M2), 512);

    m.dev_verify(0, all, all + M2);
    assert!(
        m.all_at(all, all + M2, Loc::Dev(0)),
        "default policy: migrated"
    );
    m.dev_verify(0, sys, sys + M2);
    assert!(
        m.all_at(sys, sys + M2, Loc::Dev(0)),
        "system pages migrate under both"
    );
    assert_eq!(m.stats(0).migrations_to_devmem, s0.migrations_to_devmem + 2);
    assert_eq!(m.live_allocs(1), 0);
    m.dev_verify(1, only, only + M2);
    m.cpu_verify(only, only + M2);
    m.cpu_verify(all, all + M2);
    m.cpu_verify(sys, sys + M2);
}

/// xe_exec_system_allocator `prefetch`: a prefetch moves a whole 8 MiB interval to device
/// memory before any GPU access; the accesses that follow only bind (no migration, no new page
/// collection); a prefetch to system memory moves it all back.
#[test]
fn madvise_prefetch() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let len = 4 * M2;
    let buf = m.mmap(len);
    m.cpu_fill(buf, buf + len, 16 * P, 1);
    m.prefetch(0, buf, len, PrefetchLoc::Device).unwrap();
    assert!(m.all_at(buf, buf + len, Loc::Dev(0)));
    let s0 = m.stats(0);
    assert_eq!(s0.migrations_to_devmem, 4);
    assert_eq!(s0.prefetches, 1);
    assert_eq!(s0.faults, 0);
    assert_eq!(m.dev_ptes(0, buf, buf + len), 0, "nothing bound yet");

    m.dev_verify(0, buf, buf + len);
    m.dev_fill(0, buf + 8, buf + len, 32 * P, 2);
    let s1 = m.stats(0);
    assert_eq!(s1.faults, 4, "one bind per range");
    assert_eq!(s1.migrations_to_devmem, s0.migrations_to_devmem);
    assert_eq!(
        s1.pages_committed, s0.pages_committed,
        "prefetched pages reused"
    );

    m.prefetch(0, buf, len, PrefetchLoc::System).unwrap();
    assert!(m.all_at(buf, buf + len, Loc::Ram));
    assert_eq!(m.live_allocs(0), 0);
    let s2 = m.stats(0);
    assert_eq!(s2.prefetches, 2);
    assert_eq!(s2.bytes_to_ram - s1.bytes_to_ram, len as usize);
    m.cpu_verify(buf, buf + len);
}
