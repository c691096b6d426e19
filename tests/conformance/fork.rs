//! fork: copy-on-write in RAM and with device pages. The simulator's fork migrates device pages
//! back to RAM first (as Linux does for device-private pages it cannot share), then shares every
//! page copy-on-write and write-protects the parent with a `Protection` invalidation.

use crate::harness::*;
use gpusvm::policy::PrefetchLoc;
use gpusvm::range::RangeFlags;
use gpusvm::Error;

/// hmm-tests `anon_write_child`: after fork, a device mirroring the child writes the inherited
/// private memory. The child's pages are copied on write — the child CPU sees the device's
/// values, while the parent (CPU and its own device) keeps the old ones, on different frames.
#[test]
fn anon_write_child() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let buf = m.mmap(M);
    m.cpu_fill(buf, buf + M, P, 1);
    m.dev_write(0, buf + 8, 0xAA);
    assert_eq!(m.dev_pte(0, buf), Some(true));

    let child = m.fork(0);
    assert!(
        m.g(0).dev.ptes().iter().all(|(_, p)| !p.writable),
        "fork write-protected the parent's device mappings"
    );
    m.join_proc(child, 1, 0, cfg(0));
    m.dev_fill(1, buf, buf + M, P, 2);
    m.cpu_verify_in(child, buf, buf + M);
    m.cpu_verify_in(0, buf, buf + M);
    m.dev_verify(0, buf, buf + M);
    assert_eq!(m.dev_read(0, buf + 8), 0xAA);
    assert_eq!(m.cpu_read_in(child, buf + 8).unwrap(), 0xAA);
    for a in (buf..buf + M).step_by(P as usize) {
        assert_eq!(m.expect_in(child, a), tag(a, 2));
        assert_eq!(m.expect_in(0, a), tag(a, 1));
        let (pp, cp) = (
            m.procs[0].mm.pte(a).unwrap(),
            m.procs[child].mm.pte(a).unwrap(),
        );
        assert_ne!(pp.pfn, cp.pfn, "copied on write at {a:#x}");
    }
    assert_eq!(m.stats(1).faults_write, 16);
}

/// hmm-tests `hmm_cow_in_device` and xe_exec_system_allocator `fork`: memory in device memory
/// is inherited by a child; the parent then writes it and the device faults again. The fork
/// brings the pages back to RAM and frees the device memory; the parent's writes copy its pages;
/// its device maps them writable; the child keeps the old contents throughout.
#[test]
fn cow_in_device() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.dev_fill(0, buf, buf + M2, 8 * P, 1);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));

    let child = m.fork(0);
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert_eq!(m.live_allocs(0), 0);
    assert_eq!(m.vram_used(0), 0);
    assert!(m.procs[0].mm.pte(buf).unwrap().cow);

    m.cpu_fill(buf, buf + M2, 8 * P, 2);
    m.dev_verify(0, buf, buf + M2);
    assert_eq!(
        m.dev_pte(0, buf),
        Some(true),
        "writable again after the copy"
    );
    m.dev_write(0, buf + 16, 3);
    m.cpu_verify_in(child, buf, buf + M2);
    for a in (buf..buf + M2).step_by(64 * P as usize) {
        assert_eq!(m.cpu_read_in(child, a).unwrap(), tag(a, 1));
        assert_eq!(m.cpu_read(a), tag(a, 2));
    }
    // The parent's pages are private now: an explicit prefetch moves them to device memory.
    m.prefetch(0, buf, M2, PrefetchLoc::Device).unwrap();
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    m.dev_verify(0, buf, buf + M2);
    m.cpu_verify_in(child, buf, buf + M2);
}

/// hmm-tests `migrate_shared`: migrating pages shared with another process fails. Here the pages
/// are copy-on-write after fork and the VMA is read-only, so no fault breaks the sharing: the
/// device fault's migration is refused, the range is marked "migrate once" failed, and the
/// device maps the very frames the child shares, read-only; an explicit prefetch fails with
/// `Busy` and moves nothing.
#[test]
fn migrate_shared() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.mprotect(buf, M2, RO);
    let child = m.fork(0);
    let s0 = m.stats(0);

    m.dev_verify(0, buf, buf + M2);
    let s1 = m.stats(0);
    assert!(s1.migrate_failures > s0.migrate_failures);
    assert_eq!(s1.migrations_to_devmem, s0.migrations_to_devmem);
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert_eq!(m.dev_pte(0, buf), Some(false));
    let f = m.range_flags(0);
    assert!(f[0].2.contains(RangeFlags::MIGRATE_FAILED), "{f:?}");
    for a in (buf..buf + M2).step_by(16 * P as usize) {
        let (pp, cp) = (
            m.procs[0].mm.pte(a).unwrap(),
            m.procs[child].mm.pte(a).unwrap(),
        );
        assert_eq!(pp.pfn, cp.pfn, "still shared at {a:#x}");
    }
    assert_eq!(
        m.prefetch(0, buf, M2, PrefetchLoc::Device),
        Err(Error::Busy)
    );
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert_eq!(
        m.live_allocs(0),
        0,
        "the failed migration released its allocation"
    );
    m.cpu_verify_in(child, buf, buf + M2);
    m.cpu_verify(buf, buf + M2);

    // The child goes away: the write-protected pages are the parent's alone now, so the same
    // prefetch migrates them (Linux: a page mapped once migrates, whatever its PTE's write bit).
    m.munmap_in(child, buf, M2);
    assert!(m.procs[0].mm.pte(buf).unwrap().cow, "still write-protected");
    m.prefetch(0, buf, M2, PrefetchLoc::Device).unwrap();
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    m.dev_verify(0, buf, buf + M2);
    m.cpu_verify(buf, buf + M2);
}

/// xe_exec_system_allocator `process-*` (parent and child each drive their own GPU) on top of
/// hmm-tests `anon_write_child`: after fork, each process's device writes its own copy of the
/// inherited buffer; both copies end up in their own device's memory and neither process ever
/// sees the other's values.
#[test]
fn fork_two_processes_two_devices() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    let child = m.fork(0);
    m.join_proc(child, 1, 4096, cfg(4096));

    m.dev_fill(0, buf, buf + M2, 16 * P, 10);
    m.dev_fill(1, buf + 8, buf + M2, 16 * P, 20);
    for (id, proc) in [(0u32, 0usize), (1, child)] {
        m.prefetch(id, buf, M2, PrefetchLoc::Device).unwrap();
        assert!(
            (buf..buf + M2)
                .step_by(P as usize)
                .all(|a| m.loc_in(proc, a) == Loc::Dev(id)),
            "process {proc} in device {id}"
        );
    }
    m.dev_verify(0, buf, buf + M2);
    m.dev_verify(1, buf, buf + M2);
    assert_eq!(m.dev_read(0, buf + 8), 0, "parent: not the child's value");
    assert_eq!(
        m.dev_read(1, buf),
        tag(buf, 1),
        "child: not the parent's value"
    );
    m.cpu_verify_in(child, buf, buf + M2);
    m.cpu_verify(buf, buf + M2);
    // The child exits: its memory and device go; the parent is untouched.
    m.munmap_in(child, buf, M2);
    m.teardown(1);
    m.dev_verify(0, buf, buf + M2);
}
