//! Attribute changes over ranges already bound on the device, and ranges that stop at
//! attribute boundaries.

use crate::rig::*;
use gpusvm::platform::PagemapId;
use gpusvm::policy::{AtomicPolicy, PreferredLoc, PrefetchLoc};

// ---- attribute changes over bound ranges -------------------------------------------------

/// Attributes set over ranges bound on the device: a range straddling an edge of the interval
/// is evicted and removed, a range inside keeps its pages but loses its device mappings; the
/// refault follows the new policy. Setting the same attributes again clears nothing.
#[test]
fn set_attrs_over_bound_ranges() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0x99);
    r.dev_read(0, buf).expect("device read");
    r.dev_read(0, buf + M2).expect("device read");
    assert_eq!(r.ranges(0).len(), 2);
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));

    // Inside: [buf+2M, buf+4M) is exactly the second range.
    let s0 = r.stats(0);
    let zaps = r.g(0).dev.zap_count();
    r.g(0)
        .svm
        .set_attrs(buf + M2, M2, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs inside");
    assert_eq!(r.ranges(0).len(), 2, "the inner range is kept");
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)), "its pages stay");
    assert_eq!(
        r.dev_ptes(0, buf + M2, buf + 4 * M),
        0,
        "device mappings gone"
    );
    assert!(
        r.dev_ptes(0, buf, buf + M2) > 0,
        "the other range is still bound"
    );
    assert!(r.g(0).dev.zap_count() > zaps);
    // The next device access refaults, under the new policy (system: pulled back).
    r.dev_read(0, buf + M2 + P).expect("device read");
    let s1 = r.stats(0);
    assert_eq!(s1.faults, s0.faults + 1, "refault");
    assert_eq!(r.loc(buf + M2), None, "new policy: system memory");
    // The untouched range does not refault.
    r.dev_read(0, buf + P).expect("device read");
    assert_eq!(r.stats(0).faults, s1.faults);

    // The same attributes again: nothing is cleared.
    let zaps = r.g(0).dev.zap_count();
    let ptes = r.g(0).dev.ptes().len();
    r.g(0)
        .svm
        .set_attrs(buf + M2, M2, &pref(PreferredLoc::System))
        .expect("set_attrs again");
    r.check("set_attrs again");
    assert_eq!(r.g(0).dev.zap_count(), zaps, "no mapping cleared");
    assert_eq!(r.g(0).dev.ptes().len(), ptes);
    r.dev_read(0, buf + M2 + 2 * P).expect("device read");
    assert_eq!(r.stats(0).faults, s1.faults, "no refault");

    // Straddling: [buf+64K, buf+128K) lies inside the first range, which straddles its edges.
    let s2 = r.stats(0);
    r.g(0)
        .svm
        .set_attrs(buf + K64, K64, &pref(PreferredLoc::System))
        .expect("set_attrs straddling");
    r.check("set_attrs straddling");
    let ranges = r.ranges(0);
    assert_eq!(
        ranges.len(),
        1,
        "the straddling range is removed: {ranges:?}"
    );
    assert_eq!(ranges[0].0, buf + M2);
    assert_eq!(r.loc(buf), None, "evicted before removal");
    assert_eq!(r.stats(0).evictions, s2.evictions + 1);
    assert_eq!(r.dev_ptes(0, buf, buf + M2), 0);
    for i in 0..4 {
        r.cpu_read(buf + i * K64);
    }
    // Refaults: inside the system interval the pages stay in RAM, outside they migrate again.
    r.dev_read(0, buf + K64 + P).expect("device read");
    assert_eq!(r.loc(buf + K64), None);
    r.dev_read(0, buf + M).expect("device read");
    assert_eq!(r.loc(buf + M), Some(PagemapId(0)));
    r.assert_ranges_uniform(0);
    assert_eq!(
        r.loc(buf + K64),
        None,
        "the system interval stays in system memory"
    );
    r.dev_read(0, buf).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf + K64 + P), None);
}

/// Setting attributes over an interval that spans two ranges' edges removes both; a prefix
/// and suffix outside the interval refault fine.
#[test]
fn set_attrs_straddling_two_ranges() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0xaa);
    r.dev_write(0, buf, 1).expect("device write");
    r.dev_write(0, buf + M2, 2).expect("device write");
    let (n, ranges) = r.g(0).svm.counts();
    assert_eq!((n, ranges), (1, 2));
    r.g(0)
        .svm
        .set_attrs(buf + M, M2, &atomic(AtomicPolicy::Global))
        .expect("set_attrs");
    r.check("set_attrs straddling both");
    assert_eq!(r.g(0).svm.counts().1, 0, "both ranges removed");
    assert_eq!(r.loc(buf), None);
    assert_eq!(r.loc(buf + M2), None);
    assert_eq!(r.dev_read(0, buf), Ok(1));
    assert_eq!(r.dev_read(0, buf + M2), Ok(2));
    r.dev_atomic(0, buf + M + 8, 1)
        .expect("atomic under the new policy");
    assert_eq!(
        r.loc(buf + M),
        Some(PagemapId(0)),
        "global atomics: device memory"
    );
    r.assert_ranges_uniform(0);
}

/// New ranges never span an attribute boundary: a fault next to a small interval with other
/// attributes gets a range that stops at its edge, so each side is placed by its own policy
/// (the same holds for ranges a prefetch creates).
#[test]
fn new_ranges_stop_at_attribute_boundaries() {
    let mut r = one_device(4096);
    let buf = r.mmap(2 * M2);
    r.fill(buf, 2 * M2, 0xab);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf + K64, K64, &pref(PreferredLoc::System))
        .expect("set_attrs");
    svm.set_attrs(buf + M2 + M, K64, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs");
    // Default placement next to the system interval: migrates, but not the system interval.
    r.dev_read(0, buf).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.loc(buf + K64), None);
    r.dev_read(0, buf + K64).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(
        r.loc(buf + K64),
        None,
        "system interval stays in system memory"
    );
    r.dev_read(0, buf + M).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf + M), Some(PagemapId(0)));
    assert_eq!(r.loc(buf + K64 + P), None);
    // A prefetch across the second boundary.
    svm.prefetch(buf + M2, M2, PrefetchLoc::Device)
        .expect("prefetch");
    r.check("prefetch");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));
    for (s, e, _) in r.ranges(0) {
        let (lo, hi) = (buf + M2 + M, buf + M2 + M + K64);
        assert!(
            e <= lo || s >= hi || (lo <= s && e <= hi),
            "[{s:#x}, {e:#x}) straddles [{lo:#x}, {hi:#x})"
        );
    }
    for i in 0..8 {
        r.cpu_read(buf + i * (M / 2));
    }
}
