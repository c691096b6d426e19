//! Scenarios: first-touch faults, migrations (to device memory and back, device to device)
//! and prefetch, each with its k-th allocation failing.

use crate::fixture::*;
use crate::harness::*;
use gpusvm::policy::PrefetchLoc;
use gpusvm::Access;

// ---- first-touch faults ---------------------------------------------------------------------

/// A device without device memory faults a fresh 64 KiB range in: the range, its notifier, the
/// page arrays.
#[test]
fn first_touch_fault() {
    let r = run(&Scenario {
        name: "first-touch fault (system memory)",
        setup: || Fx::ram(K64),
        step: |fx| fx.fault(0, fx.buf + P, Access::Read),
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
    assert!(r.n > 0, "a first-touch fault allocates");
}

/// A device preferring its memory faults a fresh range in: created, migrated in, collected.
///
/// Absorbed: a failure inside the migration. The fault service places the range "best effort"
/// (SPEC §7 populate): a failed migration marks the range `MIGRATE_FAILED` and the fault
/// continues in system memory ("migrate once", so the retry leaves it there too).
#[test]
fn first_touch_fault_devmem() {
    run(&Scenario {
        name: "first-touch fault (device memory)",
        setup: || Fx::devmem(K64, true),
        step: |fx| fx.fault(0, fx.buf + P, Access::Write),
        atomic: false,
        absorbs: Some("a failed migration falls back to system memory"),
        placement_may_differ: Some("migrate once: a range whose migration failed stays in RAM"),
    });
}

// ---- migrations -----------------------------------------------------------------------------

/// `Svm::migrate_to_devmem` of a range in system memory (all-or-nothing).
#[test]
fn migrate_to_devmem() {
    run(&Scenario {
        name: "migrate to device memory",
        setup: || {
            let fx = Fx::devmem(K64, false);
            fx.fault_all(0);
            fx
        },
        step: migrate_buf_to_devmem,
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// `Svm::evict` of a range in device memory back to system memory.
///
/// Absorbed: [`SNAPSHOT_FALLBACK`].
#[test]
fn evict_to_ram() {
    run(&Scenario {
        name: "evict to system memory",
        setup: || {
            let fx = Fx::devmem(K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            let r = fx.range(0, fx.buf);
            let rep = fx.g(0).svm.evict(&r)?;
            Ok(format!("{rep:?}"))
        },
        atomic: true,
        absorbs: Some(SNAPSHOT_FALLBACK),
        placement_may_differ: None,
    });
}

/// A CPU read of a page in device memory: the pagemap's `migrate_to_ram` (the kernel's
/// `dev_pagemap_ops.migrate_to_ram`) brings the allocation back.
#[test]
fn cpu_fault_to_ram() {
    run(&Scenario {
        name: "CPU fault on a device page",
        setup: || {
            let fx = Fx::devmem(K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            let a = fx.buf + 3 * P;
            let v = fx.mm.read_u64(a)?;
            Ok(format!("{v:#x}"))
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// Device to device over a link: device 0 maps device 1's pages peer-to-peer, then
/// `migrate_to_devmem` moves them into its own memory (copied device to device).
#[test]
fn device_to_device() {
    run(&Scenario {
        name: "device to device (linked)",
        setup: || {
            let fx = Fx::two(K64, true);
            fx.fault_all(1);
            fx.fault_all(0);
            fx
        },
        step: migrate_buf_to_devmem,
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// Without a link: device 0 faults on pages in device 1's memory; the fault migrates them into
/// device 0's memory through system memory (device 1's engine evicts them, device 0's brings
/// them in). The devices check no pages before choosing a 64 KiB range
/// (`check_pages_threshold` 4 KiB): pages of another owner do not count as present, which
/// would make the range a single page.
///
/// Absorbed: as for the first-touch fault in device memory, a failed migration (either leg)
/// leaves the range where the data is (device 1's memory or system memory) and the fault is
/// served from system memory.
#[test]
fn device_to_device_through_ram() {
    run(&Scenario {
        name: "device to device (not linked, fault)",
        setup: || {
            let mut c = cfg(true);
            c.check_pages_threshold = P;
            let fx = Fx::two_with(K64, false, c);
            fx.fault_all(1);
            fx
        },
        step: |fx| fx.fault(0, fx.buf, Access::Read),
        atomic: false,
        absorbs: Some("a failed migration falls back to system memory"),
        placement_may_differ: Some("migrate once: a range whose migration failed stays in RAM"),
    });
}

// ---- prefetch -------------------------------------------------------------------------------

/// `Svm::prefetch` of 128 KiB (two ranges, created by the prefetch) into device memory.
///
/// Absorbed: (1) the residency check before migrating is a page snapshot; without memory for
/// it the range is migrated (the migration finds out itself what is already there); (2) the
/// populate rule (SPEC §7): a migration failing with `NoMem` evicts the other range holding
/// device memory (the first one) and is tried once more, which succeeds — the first range then
/// ends in system memory.
#[test]
fn prefetch_to_device() {
    run(&Scenario {
        name: "prefetch to device memory",
        setup: || Fx::devmem(2 * K64, false),
        step: |fx| {
            fx.g(0).svm.prefetch(fx.buf, fx.len, PrefetchLoc::Device)?;
            Ok(String::from("ok"))
        },
        atomic: false,
        absorbs: Some("populate: NoMem evicts another range in device memory and retries"),
        placement_may_differ: Some("the range evicted to make room stays in system memory"),
    });
}

/// `Svm::prefetch` of 128 KiB in device memory to system memory.
///
/// Absorbed: [`SNAPSHOT_FALLBACK`].
#[test]
fn prefetch_to_system() {
    run(&Scenario {
        name: "prefetch to system memory",
        setup: || {
            let fx = Fx::devmem(2 * K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            fx.g(0).svm.prefetch(fx.buf, fx.len, PrefetchLoc::System)?;
            Ok(String::from("ok"))
        },
        atomic: false,
        absorbs: Some(SNAPSHOT_FALLBACK),
        placement_may_differ: None,
    });
}
