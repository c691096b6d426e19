//! Bad input: every bad call to `set_attrs`, `set_attrs_raw` and `prefetch` returns its typed
//! error and changes nothing.

use crate::rig::*;
use gpusvm::platform::PagemapId;
use gpusvm::policy::{
    AtomicPolicy, AttrUpdate, Attrs, MigrationPolicy, PreferredLoc, PrefetchLoc, RawAttr,
};
use gpusvm::range::RangeFlags;
use gpusvm::stats::StatsSnapshot;
use gpusvm::{Error, Result};

// ---- bad input ---------------------------------------------------------------------------

/// Everything a bad call could change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    attrs: Vec<Attrs>,
    ranges: Vec<(u64, u64, RangeFlags)>,
    stats: StatsSnapshot,
    zaps: u64,
    ptes: usize,
    locs: Vec<Option<PagemapId>>,
}

fn snapshot(r: &Rig, probes: &[u64]) -> Snapshot {
    let g = r.g(0);
    Snapshot {
        attrs: probes.iter().map(|a| g.svm.attrs_at(*a)).collect(),
        ranges: r.ranges(0),
        stats: g.svm.stats(),
        zaps: g.dev.zap_count(),
        ptes: g.dev.ptes().len(),
        locs: probes.iter().map(|a| r.loc(*a)).collect(),
    }
}

/// Every bad input to `set_attrs`, `set_attrs_raw` and `prefetch` returns its typed error and
/// changes nothing: attributes (probed at several addresses), ranges, stats, device mappings,
/// page locations.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut r = three_devices();
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0xee);
    let svm = r.g(0).svm.clone();
    // Some state to preserve: attributes in the middle, ranges bound (one in device memory).
    svm.set_attrs(buf + M2, M, &pref(PreferredLoc::System))
        .expect("set_attrs");
    svm.set_attrs(buf + M2 + K64, K64, &atomic(AtomicPolicy::Cpu))
        .expect("set_attrs");
    r.dev_read(0, buf).expect("device read");
    r.dev_read(0, buf + M2).expect("device read");
    r.check("setup");
    let probes = [
        0,
        buf,
        buf + M2 - P,
        buf + M2,
        buf + M2 + K64,
        buf + M2 + 2 * K64,
        buf + 3 * M,
        buf + 4 * M,
        (1 << 47) - P,
    ];

    let end = 1u64 << 47; // the mirrored interval is [0, 2^47)
    let top = !(P - 1); // the highest page
    let sys = pref(PreferredLoc::System);
    let raw = |kind: u32, value: u64| RawAttr {
        kind,
        value,
        reserved: 0,
    };
    type Call<'a> = Box<dyn Fn() -> Result<()> + 'a>;
    let s = &svm;
    let cases: Vec<(&str, Call, Error)> = vec![
        // set_attrs: the interval.
        (
            "misaligned start",
            Box::new(move || s.set_attrs(buf + 1, P, &sys)),
            Error::Invalid,
        ),
        (
            "misaligned start (8)",
            Box::new(move || s.set_attrs(buf + 8, M2, &sys)),
            Error::Invalid,
        ),
        (
            "misaligned len",
            Box::new(move || s.set_attrs(buf, P + 1, &sys)),
            Error::Invalid,
        ),
        (
            "misaligned len (half page)",
            Box::new(move || s.set_attrs(buf, P / 2, &sys)),
            Error::Invalid,
        ),
        (
            "zero len",
            Box::new(move || s.set_attrs(buf, 0, &sys)),
            Error::Invalid,
        ),
        (
            "zero len at 0",
            Box::new(move || s.set_attrs(0, 0, &sys)),
            Error::Invalid,
        ),
        (
            "overflowing start+len",
            Box::new(move || s.set_attrs(top, 2 * P, &sys)),
            Error::Invalid,
        ),
        (
            "overflowing len",
            Box::new(move || s.set_attrs(buf, top, &sys)),
            Error::Invalid,
        ),
        (
            "outside the interval",
            Box::new(move || s.set_attrs(end, P, &sys)),
            Error::Invalid,
        ),
        (
            "crossing the end",
            Box::new(move || s.set_attrs(end - P, 2 * P, &sys)),
            Error::Invalid,
        ),
        (
            "far outside",
            Box::new(move || s.set_attrs(top, P, &sys)),
            Error::Invalid,
        ),
        // set_attrs: the update.
        (
            "empty update",
            Box::new(move || s.set_attrs(buf, M2, &AttrUpdate::default())),
            Error::Invalid,
        ),
        (
            "unknown pagemap",
            Box::new(move || s.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(9))))),
            Error::Invalid,
        ),
        (
            "unknown pagemap u32::MAX",
            Box::new(move || {
                s.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(u32::MAX))))
            }),
            Error::Invalid,
        ),
        (
            "pagemap of another owner",
            Box::new(move || s.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(2))))),
            Error::NoLink,
        ),
        (
            "another owner, other fields too",
            Box::new(move || {
                s.set_attrs(
                    buf,
                    M2,
                    &AttrUpdate {
                        preferred: Some(PreferredLoc::Pagemap(PagemapId(2))),
                        migration: Some(MigrationPolicy::SystemPagesOnly),
                        atomic: Some(AtomicPolicy::Global),
                    },
                )
            }),
            Error::NoLink,
        ),
        (
            "bad interval wins over bad pagemap",
            Box::new(move || s.set_attrs(buf + 1, M2, &pref(PreferredLoc::Pagemap(PagemapId(2))))),
            Error::Invalid,
        ),
        // set_attrs_raw.
        (
            "raw: no entries",
            Box::new(move || s.set_attrs_raw(buf, M2, &[])),
            Error::Invalid,
        ),
        (
            "raw: unknown kind 3",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(3, 0)])),
            Error::Invalid,
        ),
        (
            "raw: unknown kind u32::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(u32::MAX, 0)])),
            Error::Invalid,
        ),
        (
            "raw: migration value 2",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(1, 2)])),
            Error::Invalid,
        ),
        (
            "raw: migration value u64::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(1, u64::MAX)])),
            Error::Invalid,
        ),
        (
            "raw: atomic value 4",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(2, 4)])),
            Error::Invalid,
        ),
        (
            "raw: atomic value u64::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(2, u64::MAX)])),
            Error::Invalid,
        ),
        (
            "raw: pagemap id too large",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 2 + (1u64 << 32))])),
            Error::Invalid,
        ),
        (
            "raw: preferred u64::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, u64::MAX)])),
            Error::Invalid,
        ),
        (
            "raw: unknown pagemap",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 2 + 9)])),
            Error::Invalid,
        ),
        (
            "raw: pagemap of another owner",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 2 + 2)])),
            Error::NoLink,
        ),
        (
            "raw: reserved bits",
            Box::new(move || {
                s.set_attrs_raw(
                    buf,
                    M2,
                    &[RawAttr {
                        kind: 0,
                        value: 1,
                        reserved: 1,
                    }],
                )
            }),
            Error::Invalid,
        ),
        (
            "raw: reserved high bit",
            Box::new(move || {
                s.set_attrs_raw(
                    buf,
                    M2,
                    &[RawAttr {
                        kind: 2,
                        value: 2,
                        reserved: 1 << 63,
                    }],
                )
            }),
            Error::Invalid,
        ),
        (
            "raw: good then bad",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 1), raw(2, 9)])),
            Error::Invalid,
        ),
        (
            "raw: bad then good",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(7, 0), raw(1, 1)])),
            Error::Invalid,
        ),
        (
            "raw: good, misaligned",
            Box::new(move || s.set_attrs_raw(buf + P / 2, M2, &[raw(0, 1)])),
            Error::Invalid,
        ),
        (
            "raw: good, zero len",
            Box::new(move || s.set_attrs_raw(buf, 0, &[raw(0, 1)])),
            Error::Invalid,
        ),
        (
            "raw: good, outside",
            Box::new(move || s.set_attrs_raw(end, M2, &[raw(0, 1)])),
            Error::Invalid,
        ),
        // prefetch.
        (
            "prefetch misaligned start",
            Box::new(move || s.prefetch(buf + 8, M2, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch misaligned len",
            Box::new(move || s.prefetch(buf, M2 - 8, PrefetchLoc::System)),
            Error::Invalid,
        ),
        (
            "prefetch zero len",
            Box::new(move || s.prefetch(buf, 0, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch overflowing",
            Box::new(move || s.prefetch(top, 2 * P, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch outside",
            Box::new(move || s.prefetch(end, P, PrefetchLoc::System)),
            Error::Invalid,
        ),
        (
            "prefetch crossing the end",
            Box::new(move || s.prefetch(end - P, 2 * P, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch unknown pagemap",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(9)))),
            Error::Invalid,
        ),
        (
            "prefetch pagemap of another owner",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(2)))),
            Error::NoLink,
        ),
        (
            "prefetch where nothing is mapped",
            Box::new(move || s.prefetch(buf + 8 * M, M2, PrefetchLoc::Device)),
            Error::Fault,
        ),
    ];
    for (what, call, want) in &cases {
        let before = snapshot(&r, &probes);
        assert_eq!(call(), Err(*want), "{what}");
        r.check(what);
        assert_eq!(snapshot(&r, &probes), before, "{what}: something changed");
    }

    // After close: Closed, nothing changes.
    svm.close();
    r.check("close");
    let closed: Vec<(&str, Call)> = vec![
        ("set_attrs", Box::new(move || s.set_attrs(buf, M2, &sys))),
        (
            "set_attrs_raw",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(2, 3)])),
        ),
        (
            "prefetch device",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Device)),
        ),
        (
            "prefetch system",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::System)),
        ),
        (
            "prefetch peer",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(1)))),
        ),
    ];
    for (what, call) in &closed {
        let before = snapshot(&r, &probes);
        assert_eq!(call(), Err(Error::Closed), "{what} after close");
        r.check(what);
        assert_eq!(
            snapshot(&r, &probes),
            before,
            "{what} after close: something changed"
        );
    }
}
