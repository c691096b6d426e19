//! Preferred location: system memory, a peer's pagemap over a fast link, and pagemaps that
//! are refused.

use crate::rig::*;
use gpusvm::pages::Protocol;
use gpusvm::platform::PagemapId;
use gpusvm::policy::{AtomicPolicy, Attrs, PreferredLoc, PrefetchLoc};
use gpusvm::Error;

// ---- preferred location ------------------------------------------------------------------

/// madvise(preferred = system), then device faults: the pages stay in RAM and nothing is
/// migrated, while an identical buffer without the attribute does migrate. Then a buffer
/// already in device memory is switched to system: the next device fault pulls it back.
#[test]
fn preferred_system_then_device_fault_stays_in_ram() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * M);
    let other = r.mmap(M2);
    r.fill(buf, 4 * M, 0x11);
    r.fill(other, M2, 0x22);
    r.g(0)
        .svm
        .set_attrs(buf, 4 * M, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs system");
    assert_eq!(r.g(0).svm.attrs_at(buf).preferred, PreferredLoc::System);
    assert_eq!(
        r.g(0).svm.attrs_at(buf + 4 * M - P).preferred,
        PreferredLoc::System
    );
    assert_eq!(r.g(0).svm.attrs_at(buf + 4 * M), Attrs::default());
    assert_eq!(r.stats(0).attr_changes, 1);

    for i in 0..16 {
        let a = buf + i * (4 * M / 16);
        r.dev_read(0, a).expect("device read");
        r.dev_write(0, a + 8, i).expect("device write");
        assert_eq!(r.loc(a), None, "{a:#x} stays in system memory");
    }
    let s = r.stats(0);
    assert_eq!(s.migrations_to_devmem, 0, "{s:?}");
    assert_eq!(s.bytes_to_devmem, 0);
    assert!(s.faults >= 2, "the device did fault: {s:?}");
    assert!(r.g(0).dev.vram_used().is_empty());

    // Control: without the attribute the same access migrates.
    r.dev_read(0, other).expect("device read");
    assert_eq!(r.loc(other), Some(PagemapId(0)));
    assert_eq!(r.stats(0).migrations_to_devmem, 1);

    // Switch the device-resident buffer to system: the next device fault pulls it back.
    r.g(0)
        .svm
        .set_attrs(other, M2, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs system on device-resident buffer");
    assert_eq!(
        r.dev_ptes(0, other, other + M2),
        0,
        "device mappings cleared"
    );
    r.dev_read(0, other + K64).expect("device read");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(other + i * K64), None, "pulled back to system memory");
    }
    assert_eq!(r.stats(0).migrations_to_devmem, 1, "no new migration");
    assert!(r.g(0).dev.vram_used().is_empty(), "device memory released");
    for i in 0..4 {
        r.cpu_read(other + i * 4 * K64);
    }
}

/// madvise(preferred = a peer's pagemap) over a fast link: device A's range goes into device
/// B's memory, data intact, and A accesses it peer-to-peer. A range already in A's memory moves
/// to B's device-to-device on the next fault.
#[test]
fn preferred_peer_pagemap_goes_over_the_link() {
    let mut r = three_devices();
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0x33);
    // The second half first lands in A's own memory.
    r.dev_read(0, buf + M2).expect("device read");
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));

    r.g(0)
        .svm
        .set_attrs(buf, 4 * M, &pref(PreferredLoc::Pagemap(PagemapId(1))))
        .expect("peer pagemap over a link");
    r.check("set_attrs peer");
    assert_eq!(
        r.g(0).svm.attrs_at(buf + M).preferred,
        PreferredLoc::Pagemap(PagemapId(1))
    );

    let before = r.stats(0);
    r.dev_read(0, buf).expect("device read");
    r.dev_write(0, buf + 8, 0xa).expect("device write");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(buf + i * K64), Some(PagemapId(1)), "in B's memory");
    }
    let s = r.stats(0);
    assert_eq!(
        s.migrations_to_devmem,
        before.migrations_to_devmem + 1,
        "{s:?}"
    );
    // A maps B's pages peer-to-peer, not as its own memory.
    let ptes = r.g(0).dev.ptes();
    let (_, pte) = ptes
        .iter()
        .find(|(vpn, _)| *vpn == buf / P)
        .expect("A mapped the page");
    assert_ne!(pte.proto, Protocol::DEVICE_LOCAL);
    assert_ne!(pte.proto, Protocol::SYSTEM);
    assert!(r.g(0).dev.dma_mappings().iter().any(|(_, m)| m.peer));

    // The half that was in A's memory moves device-to-device into B's.
    r.dev_read(0, buf + M2).expect("device read");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(buf + M2 + i * K64), Some(PagemapId(1)));
    }
    assert!(r.g(0).dev.vram_used().is_empty(), "A's memory released");

    // B sees A's write in its own memory without migrating; the CPU too.
    let b_before = r.stats(1).migrations_to_devmem;
    assert_eq!(r.dev_read(1, buf + 8).expect("B reads"), 0xa);
    assert_eq!(r.stats(1).migrations_to_devmem, b_before);
    r.dev_write(1, buf + 16, 0xb).expect("B writes");
    assert_eq!(r.dev_read(0, buf + 16).expect("A reads B's write"), 0xb);
    r.cpu_read(buf + 8);
    r.cpu_read(buf + M2 + 5 * P);
    assert_eq!(r.loc(buf), None, "the CPU pulled it back");
    // Device 2 (no link) is not involved at all.
    assert_eq!(r.stats(2).faults, 0);
}

/// A pagemap of another owner (no fast link) is refused with `NoLink`, an unknown one with
/// `Invalid`; neither changes anything, and a fault afterwards still follows the old policy.
#[test]
fn preferred_foreign_or_unknown_pagemap_is_refused() {
    let mut r = three_devices();
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x44);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf, M2, &atomic(AtomicPolicy::Global))
        .expect("set_attrs");
    let before = (svm.stats(), svm.attrs_at(buf), r.ranges(0));
    assert_eq!(
        svm.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(2)))),
        Err(Error::NoLink)
    );
    assert_eq!(
        svm.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(77)))),
        Err(Error::Invalid)
    );
    assert_eq!(
        svm.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(2))),
        Err(Error::NoLink)
    );
    r.check("refused");
    assert_eq!((svm.stats(), svm.attrs_at(buf), r.ranges(0)), before);
    // The old policy (default placement) still applies.
    r.dev_read(0, buf).expect("device read");
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.stats(2).faults, 0);
    assert!(r.g(2).dev.vram_used().is_empty());
}
