//! Property test of the range tree against a `BTreeMap` model, on the stable toolchain. The
//! harness drives two `RangeIndex`es in lockstep with the tree (each range's twin offered to
//! them, refusals predicted by their own model), so every case here checks the index too.
//!
//! Drives the same harness as the cargo-fuzz target `fuzz/fuzz_targets/range_tree.rs`
//! (`gpusvm::sim::harness::range_tree::run`) in three ways:
//! - random byte vectors decoded with `arbitrary` exactly as libFuzzer's `fuzz_target!` decodes
//!   them (so a fuzz crash file replays here: `GPUSVM_REPLAY=path cargo test --all-features
//!   --test prop_range_tree replay`);
//! - a direct proptest strategy of operations (which shrinks to a minimal failing sequence);
//! - the committed seed corpus `fuzz/corpus/range_tree/` and hand-written regression cases.
#![cfg(feature = "sim")]

use arbitrary::{Arbitrary, Unstructured};
use gpusvm::sim::harness::range_tree::{
    run, Addr, Page, RangeTreeOp, MAX_NPAGES, QUERY_PAGES, START_PAGES,
};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Decode bytes the way `libfuzzer_sys::fuzz_target!(|ops: Vec<RangeTreeOp>| ..)` does.
fn decode(bytes: &[u8]) -> Vec<RangeTreeOp> {
    Vec::<RangeTreeOp>::arbitrary_take_rest(Unstructured::new(bytes)).unwrap_or_default()
}

fn page() -> impl Strategy<Value = Page> {
    (any::<bool>(), 0..START_PAGES).prop_map(|(high, page)| Page { high, page })
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        1 => Just(Addr::Zero),
        1 => Just(Addr::Max),
        12 => (any::<bool>(), 0..QUERY_PAGES, prop_oneof![Just(0u16), Just(4095u16), 0u16..4096])
            .prop_map(|(high, page, offset)| Addr::At { high, page, offset }),
    ]
}

fn op() -> impl Strategy<Value = RangeTreeOp> {
    prop_oneof![
        8 => (page(), 0..=MAX_NPAGES).prop_map(|(at, npages)| RangeTreeOp::Insert { at, npages }),
        1 => (any::<u64>(), any::<u64>())
            .prop_map(|(start, end)| RangeTreeOp::InsertRaw { start, end }),
        1 => (0u64..0x60, 0u64..0x60).prop_map(|(s, e)| RangeTreeOp::InsertRaw {
            start: s << 11,
            end: e << 11,
        }),
        1 => any::<u8>().prop_map(|index| RangeTreeOp::InsertLinked { index }),
        2 => any::<u8>().prop_map(|index| RangeTreeOp::Reinsert { index }),
        4 => page().prop_map(|at| RangeTreeOp::Remove { at }),
        1 => (page(), 1..=MAX_NPAGES)
            .prop_map(|(at, npages)| RangeTreeOp::RemoveForeign { at, npages }),
        1 => any::<u8>().prop_map(|index| RangeTreeOp::RemoveStale { index }),
        4 => addr().prop_map(|addr| RangeTreeOp::Find { addr }),
        4 => (addr(), addr()).prop_map(|(start, end)| RangeTreeOp::Overlapping { start, end }),
        1 => Just(RangeTreeOp::PopFront),
        1 => Just(RangeTreeOp::Len),
    ]
}

/// Under Miri (which runs these tests for the tree's unsafe code) a few short cases, and no
/// failure-persistence file (Miri isolates the file system).
fn config() -> ProptestConfig {
    if cfg!(miri) {
        ProptestConfig {
            cases: 3,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    } else {
        ProptestConfig {
            cases: 512,
            ..ProptestConfig::default()
        }
    }
}

/// Longest byte input and op sequence (shorter under Miri).
const MAX_BYTES: usize = if cfg!(miri) { 384 } else { 4096 };
const MAX_OPS: usize = if cfg!(miri) { 40 } else { 300 };

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ops_from_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..MAX_BYTES)) {
        let ops = decode(&bytes);
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{e}\nops: {ops:?}");
        }
    }

    #[test]
    fn ops_from_strategy(ops in proptest::collection::vec(op(), 0..MAX_OPS)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{e}\nops: {ops:?}");
        }
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/range_tree")
}

/// Every committed seed (and, when present, every crash libFuzzer left in
/// `fuzz/artifacts/range_tree/`) runs cleanly. `GPUSVM_REPLAY=<file>` replays one file.
#[test]
#[cfg_attr(
    miri,
    ignore = "reads the corpus from the file system, which Miri isolates"
)]
fn replay() {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("GPUSVM_REPLAY") {
        files.push(PathBuf::from(p));
    } else {
        let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/artifacts/range_tree");
        for dir in [corpus_dir(), artifacts] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                files.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
        assert!(
            files.len() >= 4,
            "seed corpus {} is missing",
            corpus_dir().display()
        );
    }
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let ops = decode(&bytes);
        if let Err(e) = run(&ops) {
            panic!("{}: {e}\nops: {ops:?}", f.display());
        }
    }
}

fn lo(page: u8) -> Page {
    Page { high: false, page }
}
fn hi(page: u8) -> Page {
    Page { high: true, page }
}
fn at(high: bool, page: u8, offset: u16) -> Addr {
    Addr::At { high, page, offset }
}
fn ins(at: Page, npages: u8) -> RangeTreeOp {
    RangeTreeOp::Insert { at, npages }
}
fn ov(start: Addr, end: Addr) -> RangeTreeOp {
    RangeTreeOp::Overlapping { start, end }
}
fn find(addr: Addr) -> RangeTreeOp {
    RangeTreeOp::Find { addr }
}

fn check(ops: &[RangeTreeOp]) {
    if let Err(e) = run(ops) {
        panic!("{e}");
    }
}

#[test]
fn adjacent_ranges_and_collisions() {
    check(&[
        ins(lo(1), 1),
        ins(lo(2), 1), // adjacent on the right: accepted
        ins(lo(0), 1), // adjacent on the left: accepted
        ins(lo(1), 1), // same bounds: refused
        ins(lo(0), 3), // covers all three: refused
        ins(lo(2), 4), // overlaps the last: refused
        ins(lo(3), 0), // empty: Range::new refuses
        find(at(false, 0, 4095)),
        find(at(false, 3, 0)),
        RangeTreeOp::Len,
        RangeTreeOp::PopFront,
        RangeTreeOp::PopFront,
        RangeTreeOp::PopFront,
        RangeTreeOp::PopFront,
        RangeTreeOp::Len,
    ]);
}

#[test]
fn overlapping_edges() {
    check(&[
        ins(lo(4), 4), // [4, 8)
        ins(lo(10), 2),
        ov(at(false, 8, 0), at(false, 10, 0)), // the gap between: nothing
        ov(at(false, 7, 4095), at(false, 10, 1)), // the last byte of one, first of the other
        ov(at(false, 5, 0), at(false, 5, 0)),  // empty
        ov(at(false, 9, 0), at(false, 5, 0)),  // reversed
        ov(Addr::Max, Addr::Zero),             // reversed, whole space
        ov(Addr::Zero, Addr::Max),             // everything
        ov(at(false, 0, 0), at(false, 4, 0)),  // ends exactly at a start
        ov(at(false, 8, 0), Addr::Max),        // starts exactly at an end
        find(at(false, 8, 0)),
        find(at(false, 7, 4095)),
        find(Addr::Zero),
        find(Addr::Max),
    ]);
}

#[test]
fn top_of_address_space() {
    check(&[
        ins(hi(63), 8), // ends at the last page-aligned address
        ins(hi(60), 3),
        ins(lo(0), 8),
        find(Addr::Max),
        find(at(true, 70, 4095)),
        find(at(true, 79, 4095)),
        ov(at(true, 62, 17), Addr::Max),
        ov(Addr::Max, Addr::Max),
        RangeTreeOp::InsertRaw {
            start: !0xfff,
            end: u64::MAX,
        },
        RangeTreeOp::InsertRaw {
            start: 0,
            end: !0xfff,
        },
    ]);
}

#[test]
fn remove_only_the_very_object() {
    check(&[
        ins(lo(3), 2),
        RangeTreeOp::RemoveForeign {
            at: lo(3),
            npages: 1,
        }, // same start, other object
        RangeTreeOp::RemoveForeign {
            at: lo(3),
            npages: 2,
        }, // same bounds, other object
        RangeTreeOp::Remove { at: lo(4) }, // no range starts there
        RangeTreeOp::InsertLinked { index: 0 },
        RangeTreeOp::Remove { at: lo(3) },
        RangeTreeOp::RemoveStale { index: 0 }, // already removed
        RangeTreeOp::Reinsert { index: 0 },    // unlinked again: can go back
        RangeTreeOp::Reinsert { index: 0 },    // now linked: refused
        RangeTreeOp::RemoveStale { index: 0 }, // linked again: removed normally
        ins(lo(2), 4),
        RangeTreeOp::Reinsert { index: 0 }, // overlaps: refused
        RangeTreeOp::PopFront,
        RangeTreeOp::Reinsert { index: 0 },
    ]);
}

#[test]
fn raw_bounds_are_validated() {
    check(&[
        RangeTreeOp::InsertRaw { start: 0, end: 0 },
        RangeTreeOp::InsertRaw {
            start: 0x2000,
            end: 0x1000,
        },
        RangeTreeOp::InsertRaw {
            start: 0x1001,
            end: 0x3000,
        },
        RangeTreeOp::InsertRaw {
            start: 0x1000,
            end: 0x3001,
        },
        RangeTreeOp::InsertRaw {
            start: 0x1000,
            end: 0x3000,
        },
        RangeTreeOp::InsertRaw {
            start: 0,
            end: u64::MAX,
        },
    ]);
}

/// Many ranges, then lookups and overlap queries everywhere (a quarter of the pages under
/// Miri: the harness checks the whole tree after every step).
#[test]
fn dense_tree() {
    let (start_pages, query_pages) = if cfg!(miri) {
        (START_PAGES / 4, QUERY_PAGES / 4)
    } else {
        (START_PAGES, QUERY_PAGES)
    };
    let mut ops = Vec::new();
    for p in 0..start_pages {
        ops.push(ins(lo(p), 1 + p % 3));
        ops.push(ins(hi(p), 1));
    }
    for p in 0..query_pages {
        for high in [false, true] {
            ops.push(find(at(high, p, 7)));
            ops.push(ov(at(high, p, 0), at(high, p.saturating_add(5), 1)));
        }
    }
    for p in (0..start_pages).step_by(3) {
        ops.push(RangeTreeOp::Remove { at: lo(p) });
    }
    ops.push(ov(Addr::Zero, Addr::Max));
    check(&ops);
}

/// The highest page-aligned address, and page `p` (0..80) of the harness's high region.
const TOP: u64 = !0xfff;
fn high_page(p: u64) -> u64 {
    TOP - (79 - p) * 4096
}

/// The index side: ranges across a slot boundary (low index: slots of 8 pages over pages
/// 0..64; high index: slots of 4 pages over high pages 4..76), past either end of either index,
/// one slot's array growing through the spare protocol (inline, then 2, 4, 8), links refused
/// across tree and index, and removal back down to one range (kept inline).
#[test]
fn index_slots_ends_and_growth() {
    let raw = |start, end| RangeTreeOp::InsertRaw { start, end };
    let mut ops = vec![
        ins(lo(6), 4),  // pages 6..10 cross the slot boundary at 8: the index refuses
        ins(lo(8), 8),  // pages 8..16: exactly one slot
        ins(lo(60), 8), // pages 60..68 run past the low index
        ins(hi(0), 2),  // below the high index
        ins(hi(4), 4),  // its first slot
        ins(hi(60), 4), // pages 60..64: one slot of the high index
        ins(hi(64), 3), // pages 64..67 inside the next
        ins(hi(66), 4), // pages 66..70 overlap it (both refuse), and would cross 68
        raw(high_page(72), high_page(76)), // the last slot of the high index
        raw(high_page(76), TOP), // above it, up to the top
        raw(high_page(70), high_page(74)), // across the boundary at page 72
        raw(0, 64 * 4096), // the whole low index: across every slot
    ];
    // Slot 2 of the low index (pages 16..24) fills one page at a time.
    for p in [19, 16, 23, 17, 21, 18, 22, 20] {
        ops.push(ins(lo(p), 1));
    }
    ops.extend([
        find(at(false, 20, 5)),
        find(at(true, 75, 4095)),
        find(at(true, 76, 0)),
        find(Addr::Max),
        ov(at(false, 15, 0), at(false, 23, 1)),
        ov(at(true, 0, 0), Addr::Max),
        ov(Addr::Zero, Addr::Max),
        RangeTreeOp::InsertLinked { index: 0 },
        RangeTreeOp::InsertLinked { index: 5 },
        RangeTreeOp::InsertLinked { index: 200 },
    ]);
    // Back down to one range in slot 2 (it moves inline), then up again without a new array.
    for p in [16, 17, 18, 19, 20, 21, 22] {
        ops.push(RangeTreeOp::Remove { at: lo(p) });
    }
    ops.extend([
        find(at(false, 23, 0)),
        RangeTreeOp::Reinsert { index: 0 },
        RangeTreeOp::RemoveStale { index: 1 },
        RangeTreeOp::Reinsert { index: 1 },
        RangeTreeOp::RemoveForeign {
            at: lo(23),
            npages: 1,
        },
        RangeTreeOp::PopFront,
        RangeTreeOp::PopFront,
        ov(Addr::Zero, Addr::Max),
    ]);
    check(&ops);
}
