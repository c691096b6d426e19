//! The atomic access policy: device-memory exhaustion and retries, eviction, `Cpu`,
//! `Device` with atomics on system memory, atomics through an existing mapping.

use crate::rig::*;
use gpusvm::platform::PagemapId;
use gpusvm::policy::{AtomicPolicy, DeviceAtomics};
use gpusvm::{Error, SvmConfig};

// ---- atomic access policy ----------------------------------------------------------------

/// An atomic fault that needs device memory on a device whose memory is too small for the
/// range: exactly `devmem_only_retries` retries, then `Fault`; nothing lost, nothing leaked.
/// A one-off allocation failure is absorbed by the retry budget.
#[test]
fn atomic_with_devmem_exhausted_retries_then_faults() {
    // 16 pages of device memory cannot hold a 2 MiB range.
    let mut r = one_device(16);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x55);
    let before = r.stats(0);
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Fault));
    let s = r.stats(0);
    assert_eq!(s.devmem_retries - before.devmem_retries, 3, "{s:?}");
    assert_eq!(s.faults_atomic - before.faults_atomic, 1);
    assert_eq!(s.migrations_to_devmem, 0);
    assert!(s.migrate_failures >= 4, "first try + 3 retries: {s:?}");
    assert_eq!(r.loc(buf), None);
    assert!(r.g(0).dev.vram_used().is_empty(), "nothing leaked");
    assert_eq!(
        r.dev_ptes(0, buf, buf + M2),
        0,
        "a failed fault maps nothing"
    );
    // Nothing lost: the CPU (and a plain device read, which may use system memory) still see
    // every value.
    for i in 0..8 {
        r.cpu_read(buf + i * K64);
    }
    r.dev_read(0, buf + P)
        .expect("a read does not need device memory");

    // The budget is configuration.
    let mut cfg = SvmConfig::new(0, 1 << 47);
    cfg.prefer_devmem = true;
    cfg.policy.devmem_only_retries = 1;
    let mut r = one_device_with(16, cfg);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x56);
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Fault));
    assert_eq!(r.stats(0).devmem_retries, 1);

    // One allocation failure: the first retry succeeds.
    let mut r = one_device(4096);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x57);
    r.g(0).dev.inject_alloc_fail_at(1);
    assert_eq!(r.dev_atomic(0, buf, 5), Ok(buf ^ 0x57));
    let s = r.stats(0);
    assert_eq!(s.devmem_retries, 1, "{s:?}");
    assert_eq!(s.migrate_failures, 1);
    assert_eq!(s.migrations_to_devmem, 1);
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.cpu_read(buf), (buf ^ 0x57) + 5);
}

/// All device memory taken by another range: the atomic fault evicts that range to make room
/// (no retry needed).
#[test]
fn atomic_with_devmem_full_evicts_another_range() {
    // Exactly one 2 MiB range fits.
    let mut r = one_device(512);
    let buf = r.mmap(2 * M2);
    r.fill(buf, 2 * M2, 0x58);
    r.dev_read(0, buf).expect("device read");
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.dev_atomic(0, buf + M2, 3), Ok((buf + M2) ^ 0x58));
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));
    assert_eq!(r.loc(buf), None, "the other range was evicted to make room");
    let s = r.stats(0);
    assert_eq!(s.evictions, 1, "{s:?}");
    assert_eq!(s.devmem_retries, 0);
    r.cpu_read(buf + P);
}

/// `AtomicPolicy::Cpu`: device atomics are refused with `Access`; reads and writes work.
#[test]
fn atomic_policy_cpu_refuses_device_atomics() {
    let mut r = one_device(4096);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x66);
    r.g(0)
        .svm
        .set_attrs(buf, M2, &atomic(AtomicPolicy::Cpu))
        .expect("set_attrs");
    r.check("set_attrs cpu atomics");
    let before = r.stats(0);
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Access));
    let s = r.stats(0);
    assert_eq!(s.faults_atomic, before.faults_atomic + 1);
    assert_eq!(s.migrations_to_devmem, before.migrations_to_devmem);
    assert_eq!(r.dev_ptes(0, buf, buf + M2), 0, "nothing mapped");
    assert_eq!(r.loc(buf), None);
    assert_eq!(r.cpu_read(buf), buf ^ 0x66, "value untouched");
    // Plain accesses are not affected.
    r.dev_write(0, buf + 8, 9).expect("device write");
    assert_eq!(r.dev_read(0, buf + 8), Ok(9));
    // The CPU can still do its atomics (plain write here).
    r.cpu_write(buf + 16, 1);
}

/// `AtomicPolicy::Device` on a device that does atomics on system memory does not migrate;
/// `Global` and `Undefined` do, and without `atomics_on_sysmem` so does `Device`.
#[test]
fn atomic_policy_device_with_sysmem_atomics_stays_in_ram() {
    let (mut r, buf) = ram_first_rig(true, 3 * M2, 0x77);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf, M2, &atomic(AtomicPolicy::Device))
        .expect("set_attrs");
    svm.set_attrs(buf + M2, M2, &atomic(AtomicPolicy::Global))
        .expect("set_attrs");
    r.check("set_attrs atomics");
    assert_eq!(r.dev_atomic(0, buf, 1), Ok(buf ^ 0x77));
    assert_eq!(r.loc(buf), None, "device atomics on system memory");
    assert_eq!(r.stats(0).migrations_to_devmem, 0);
    assert_eq!(r.dev_atomic(0, buf + M2, 1), Ok((buf + M2) ^ 0x77));
    assert_eq!(
        r.loc(buf + M2),
        Some(PagemapId(0)),
        "global needs device memory"
    );
    assert_eq!(r.dev_atomic(0, buf + 2 * M2, 1), Ok((buf + 2 * M2) ^ 0x77));
    assert_eq!(
        r.loc(buf + 2 * M2),
        Some(PagemapId(0)),
        "undefined needs device memory"
    );
    assert_eq!(r.stats(0).migrations_to_devmem, 2);
    assert_eq!(r.stats(0).devmem_retries, 0);

    // Without atomics on system memory, `Device` needs device memory too.
    let (mut r, buf) = ram_first_rig(false, M2, 0x78);
    r.g(0)
        .svm
        .set_attrs(buf, M2, &atomic(AtomicPolicy::Device))
        .expect("set_attrs");
    assert_eq!(r.dev_atomic(0, buf, 1), Ok(buf ^ 0x78));
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
}

/// Regression (found by the `ops_from_bytes` proptest): a device atomic through a page the
/// device had already bound for a read used to complete without a fault, whatever the atomic
/// policy. The atomic-enable bit of a bound entry now comes from `Svm::device_atomics`, so the
/// atomic faults and the policy decides: `Cpu` refuses it (and changes nothing), `Global`
/// moves the page to device memory first, and `Device` with atomics on system memory lets it
/// complete in place.
#[test]
fn atomics_through_an_existing_mapping_follow_the_policy() {
    let (mut r, buf) = ram_first_rig(false, 2 * M2, 0x5a);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf, M2, &atomic(AtomicPolicy::Cpu))
        .expect("set_attrs");
    // Bound by a read, in system memory, writable.
    assert_eq!(r.dev_read(0, buf), Ok(buf ^ 0x5a));
    r.dev_write(0, buf + 8, 3)
        .expect("device write through the mapping");
    let faults = r.stats(0).faults_atomic;
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Access));
    assert_eq!(r.stats(0).faults_atomic, faults + 1, "the atomic faulted");
    assert_eq!(r.cpu_read(buf), buf ^ 0x5a, "value untouched");
    let range = svm.find(buf).expect("range");
    assert_eq!(svm.device_atomics(&range), DeviceAtomics::NONE);
    r.check("cpu policy");

    // Undefined (the default) on the second half: bound in RAM by a read, the atomic needs
    // device memory, so it migrates.
    assert_eq!(r.dev_read(0, buf + M2), Ok((buf + M2) ^ 0x5a));
    assert_eq!(r.loc(buf + M2), None);
    assert_eq!(r.dev_atomic(0, buf + M2, 1), Ok((buf + M2) ^ 0x5a));
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)), "moved for the atomic");
    let range = svm.find(buf + M2).expect("range");
    let rights = svm.device_atomics(&range);
    assert!(rights.device_memory && !rights.system_memory);
    r.check("undefined policy");

    // Device atomics on system memory: bound by a read, the atomic completes in place.
    let (mut r, buf) = ram_first_rig(true, M2, 0x5b);
    r.g(0)
        .svm
        .set_attrs(buf, M2, &atomic(AtomicPolicy::Device))
        .expect("set_attrs");
    assert_eq!(r.dev_read(0, buf), Ok(buf ^ 0x5b));
    let faults = r.stats(0).faults_atomic;
    assert_eq!(r.dev_atomic(0, buf, 1), Ok(buf ^ 0x5b));
    assert_eq!(
        r.stats(0).faults_atomic,
        faults,
        "no fault: the entry allows atomics"
    );
    assert_eq!(r.loc(buf), None);
    r.check("device policy, atomics on system memory");
}
