//! Device atomics (SPEC §7, §8): an atomic access needs the page in device memory (Linux gives
//! the device exclusive access; here the range migrates, with a minimum residency so the device
//! makes progress), and how that interacts with CPU accesses, mprotect and fork.

use crate::harness::*;
use gpusvm::Error;

/// hmm-tests `exclusive` and xe_exec_system_allocator `atomic`: the device and the CPU take
/// turns incrementing one counter. Each device atomic migrates the range into device memory;
/// a CPU access right after it waits out the atomic timeslice (it does not steal the page back
/// at once) and then migrates it back. No increment is lost.
#[test]
fn exclusive() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 32 * P, 1);
    let ctr = buf + K64 + 8;
    m.cpu_write(ctr, 0);
    for i in 0..6u64 {
        assert_eq!(m.dev_atomic(0, ctr, 1), 2 * i);
        assert_eq!(m.loc(ctr), Loc::Dev(0));
        let end = m.g(0).svm.pagemap().unwrap().allocations().unwrap()[0].timeslice_end();
        assert!(m.world.now_ns() < end, "inside the timeslice");
        let v = m.cpu_read(ctr);
        assert!(m.world.now_ns() >= end, "the CPU waited for the timeslice");
        assert_eq!(m.loc(ctr), Loc::Ram);
        m.cpu_write(ctr, v + 1);
    }
    assert_eq!(m.cpu_read(ctr), 12);
    let s = m.stats(0);
    assert_eq!(s.faults_atomic, 6);
    assert_eq!(s.migrations_to_devmem, 6);
    let pm = m.g(0).svm.pagemap().unwrap();
    assert_eq!(pm.cpu_fault_migrations().0, 6);
    m.cpu_verify(buf, buf + M2);
}

/// hmm-tests `exclusive_mprotect`: after the device gained atomic access, the memory is made
/// read-only. Device atomics are then refused with `Perm` and change nothing; the pages stay in
/// device memory (a protection change does not migrate) and the device still reads them through
/// a read-only mapping.
#[test]
fn exclusive_mprotect() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 16 * P, 1);
    m.dev_atomic(0, buf, 5);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    m.mprotect(buf, M2, RO);
    assert_eq!(m.try_dev_atomic(0, buf, 1), Err(Error::Perm));
    assert_eq!(m.try_dev_write(0, buf + 8, 1), Err(Error::Perm));
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    m.dev_verify(0, buf, buf + M2);
    assert_eq!(m.dev_pte(0, buf), Some(false));
    assert_eq!(m.dev_read(0, buf), tag(buf, 1) + 5);
    m.mprotect(buf, M2, RW);
    m.dev_atomic(0, buf, 5);
    m.cpu_verify(buf, buf + M2);
}

/// hmm-tests `exclusive_cow`: memory the device had atomic access to is inherited by a child,
/// then the parent's device does an atomic again. The fork brought the pages back to RAM and
/// shared them; the atomic breaks the sharing for the parent, moves its private copies into
/// device memory, and increments only the parent's counter.
#[test]
fn exclusive_cow() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 16 * P, 1);
    m.dev_atomic(0, buf, 1);
    let child = m.fork(0);
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert!(m.procs[0].mm.pte(buf).unwrap().cow);
    let s0 = m.stats(0);

    assert_eq!(m.dev_atomic(0, buf, 1), tag(buf, 1) + 1);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    assert!(m.stats(0).migrations_to_devmem > s0.migrations_to_devmem);
    assert_eq!(m.cpu_read_in(child, buf).unwrap(), tag(buf, 1) + 1);
    assert_eq!(m.cpu_read(buf), tag(buf, 1) + 2);
    m.cpu_verify_in(child, buf, buf + M2);
    m.cpu_verify(buf, buf + M2);
}

/// xe_exec_system_allocator `atomic` with device memory exhausted: an atomic that needs device
/// memory evicts another range to make room, and atomics on two ranges that cannot both fit
/// keep trading places without losing an increment.
#[test]
fn atomic_under_pressure() {
    let mut m = Machine::new(&[]);
    m.join(0, 16);
    let a = m.mmap(K64);
    let b = m.mmap(K64);
    m.cpu_fill(a, a + K64, P, 1);
    m.cpu_fill(b, b + K64, P, 2);
    for i in 0..4u64 {
        m.dev_atomic(0, a, 1);
        assert_eq!(m.loc(a), Loc::Dev(0));
        m.dev_atomic(0, b, 1);
        assert_eq!(m.loc(b), Loc::Dev(0));
        assert_eq!(m.loc(a), Loc::Ram, "round {i}: evicted to make room");
    }
    assert_eq!(m.vram_used(0), 16);
    assert_eq!(m.stats(0).evictions, 7);
    assert_eq!(m.cpu_read(a), tag(a, 1) + 4);
    assert_eq!(m.cpu_read(b), tag(b, 2) + 4);
}
