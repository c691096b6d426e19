//! Chunk selection, edge by edge (SPEC §2). Each table row is one situation; every result is
//! also checked against the rules themselves (`check_rules`) and, for `Ok`, for maximality:
//! no larger chunk size would have been acceptable.
use super::*;
use core::cell::RefCell;
use std::vec::Vec;

const P: u64 = PAGE_SIZE;
const K64: u64 = 64 << 10;
const M: u64 = 1 << 20;
const M2: u64 = 2 << 20;
const G: u64 = 1 << 30;
const TOP: u64 = u64::MAX - P + 1; // first byte of the last page of the address space
const DEFAULT: &[u64] = &[M2, K64, P];
const ALL: (u64, u64) = (0, u64::MAX);

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    addr: u64,
    vma: (u64, u64),
    notifier: (u64, u64),
    window: (u64, u64),
    chunks: &'static [u64],
    threshold: u64,
    /// Existing ranges.
    ranges: &'static [(u64, u64)],
    /// Page-aligned addresses of CPU pages that are not present.
    absent: &'static [u64],
    want: Result<(u64, u64)>,
}

const BASE: Case = Case {
    name: "",
    addr: 5 * M + 123,
    vma: (0, 512 * M),
    notifier: (0, 512 * M),
    window: ALL,
    chunks: DEFAULT,
    threshold: K64,
    ranges: &[],
    absent: &[],
    want: Err(Error::Invalid),
};

/// Calls made to the two callbacks.
#[derive(Debug, Default)]
struct Calls {
    overlaps: Vec<(u64, u64)>,
    present: Vec<(u64, u64)>,
}

fn run(c: &Case) -> (Result<(u64, u64)>, Calls) {
    let calls = RefCell::new(Calls::default());
    let q = ChunkQuery {
        addr: c.addr,
        vma: c.vma,
        notifier: c.notifier,
        window: c.window,
        chunk_sizes: c.chunks,
        check_pages_threshold: c.threshold,
    };
    let got = select_chunk(
        &q,
        |s, e| {
            calls.borrow_mut().overlaps.push((s, e));
            c.ranges.iter().any(|&(rs, re)| rs < e && s < re)
        },
        |s, e| {
            calls.borrow_mut().present.push((s, e));
            !c.absent.iter().any(|&a| s <= a && a < e)
        },
    );
    (got, calls.into_inner())
}

fn inside(outer: (u64, u64), s: u64, e: u64) -> bool {
    outer.0 <= s && e <= outer.1
}

/// Whether the candidate of `size` is acceptable per SPEC §2, computed independently (with
/// u128 arithmetic, so nothing can overflow).
fn acceptable(c: &Case, size: u64) -> Option<(u64, u64)> {
    let s = (u128::from(c.addr) / u128::from(size)) * u128::from(size);
    let e = s + u128::from(size);
    let (Ok(s), Ok(e)) = (u64::try_from(s), u64::try_from(e)) else {
        return None;
    };
    let ok = inside(c.vma, s, e)
        && inside(c.notifier, s, e)
        && inside(c.window, s, e)
        && !c.ranges.iter().any(|&(rs, re)| rs < e && s < re)
        && (size == P || size > c.threshold || !c.absent.iter().any(|&a| s <= a && a < e));
    ok.then_some((s, e))
}

/// The SPEC §2 answer for a well-formed chunk list.
fn oracle(c: &Case) -> Result<(u64, u64)> {
    let within = |iv: (u64, u64)| iv.0 <= c.addr && c.addr < iv.1;
    if !within(c.vma) {
        return Err(Error::Fault);
    }
    if !within(c.notifier) || !within(c.window) {
        return Err(Error::Invalid);
    }
    c.chunks
        .iter()
        .find_map(|&size| acceptable(c, size))
        .ok_or(Error::Invalid)
}

/// Properties every answer must have, whatever the table says.
fn check_rules(c: &Case, got: Result<(u64, u64)>, calls: &Calls) {
    let n = c.name;
    if let Ok((s, e)) = got {
        let size = e - s;
        assert!(
            c.chunks.contains(&size),
            "{n}: size {size:#x} not a chunk size"
        );
        assert_eq!(s % size, 0, "{n}: not chunk aligned");
        assert!(s <= c.addr && c.addr < e, "{n}: does not contain addr");
        assert!(inside(c.vma, s, e), "{n}: outside the VMA");
        assert!(inside(c.notifier, s, e), "{n}: outside the notifier");
        assert!(inside(c.window, s, e), "{n}: outside the window");
        assert!(
            !c.ranges.iter().any(|&(rs, re)| rs < e && s < re),
            "{n}: overlaps an existing range"
        );
        for &larger in c.chunks.iter().filter(|&&z| z > size) {
            assert_eq!(
                acceptable(c, larger),
                None,
                "{n}: larger chunk {larger:#x} was acceptable"
            );
        }
    }
    for &(s, e) in calls.overlaps.iter().chain(&calls.present) {
        assert!(
            inside(c.vma, s, e) && inside(c.notifier, s, e) && inside(c.window, s, e),
            "{n}: callback consulted for a candidate that does not fit: {s:#x}..{e:#x}"
        );
    }
    for &(s, e) in &calls.present {
        let size = e - s;
        assert!(size > P, "{n}: the page-size candidate was checked");
        assert!(
            size <= c.threshold,
            "{n}: candidate above threshold checked"
        );
        assert!(
            calls.overlaps.contains(&(s, e)),
            "{n}: checked before overlap"
        );
    }
    if check_chunk_sizes(c.chunks).is_ok() {
        assert_eq!(got, oracle(c), "{n}: differs from the SPEC oracle");
    } else {
        assert_eq!(got, Err(Error::Invalid), "{n}: malformed list accepted");
        assert!(calls.overlaps.is_empty() && calls.present.is_empty(), "{n}");
    }
}

fn run_table(cases: &[Case]) {
    for c in cases {
        let (got, calls) = run(c);
        assert_eq!(got, c.want, "case {:?}", c.name);
        check_rules(c, got, &calls);
    }
}

#[test]
fn doc_example_and_defaults() {
    run_table(&[
        Case {
            name: "2M block in a big VMA",
            want: Ok((4 * M, 6 * M)),
            ..BASE
        },
        Case {
            name: "address 0",
            addr: 0,
            want: Ok((0, M2)),
            ..BASE
        },
    ]);
}

#[test]
fn vma_edges() {
    run_table(&[
        Case {
            name: "first byte of VMA, VMA 2M aligned",
            addr: 4 * M,
            vma: (4 * M, 8 * M),
            want: Ok((4 * M, 6 * M)),
            ..BASE
        },
        Case {
            name: "last byte of VMA, VMA 2M aligned",
            addr: 8 * M - 1,
            vma: (4 * M, 8 * M),
            want: Ok((6 * M, 8 * M)),
            ..BASE
        },
        Case {
            name: "one byte before the VMA",
            addr: 4 * M - 1,
            vma: (4 * M, 8 * M),
            want: Err(Error::Fault),
            ..BASE
        },
        Case {
            name: "VMA end is exclusive",
            addr: 8 * M,
            vma: (4 * M, 8 * M),
            want: Err(Error::Fault),
            ..BASE
        },
        Case {
            name: "empty VMA",
            addr: 4 * M,
            vma: (4 * M, 4 * M),
            want: Err(Error::Fault),
            ..BASE
        },
        Case {
            name: "reversed VMA",
            addr: 5 * M,
            vma: (8 * M, 4 * M),
            want: Err(Error::Fault),
            ..BASE
        },
        Case {
            name: "first byte of VMA starting 64K into a 2M block",
            addr: 4 * M + K64,
            vma: (4 * M + K64, 8 * M),
            want: Ok((4 * M + K64, 4 * M + 2 * K64)),
            ..BASE
        },
        Case {
            name: "last byte of VMA ending one page short of 2M",
            addr: 6 * M - P - 1,
            vma: (4 * M, 6 * M - P),
            want: Ok((6 * M - 2 * P, 6 * M - P)),
            ..BASE
        },
        Case {
            name: "VMA smaller than 64K",
            addr: M + 2 * P + 7,
            vma: (M, M + 8 * P),
            want: Ok((M + 2 * P, M + 3 * P)),
            ..BASE
        },
        Case {
            name: "VMA of exactly one aligned 64K",
            addr: M + K64 - 1,
            vma: (M, M + K64),
            want: Ok((M, M + K64)),
            ..BASE
        },
        Case {
            name: "VMA of one page",
            addr: M,
            vma: (M, M + P),
            want: Ok((M, M + P)),
            ..BASE
        },
        Case {
            name: "VMA of one page at address 0",
            addr: P - 1,
            vma: (0, P),
            want: Ok((0, P)),
            ..BASE
        },
        Case {
            name: "64K VMA not 64K aligned",
            addr: M + P,
            vma: (M + P, M + P + K64),
            want: Ok((M + P, M + 2 * P)),
            ..BASE
        },
        Case {
            name: "VMA starting mid-2M: first block falls back to 64K",
            addr: 3 * M + 5,
            vma: (3 * M, 8 * M),
            want: Ok((3 * M, 3 * M + K64)),
            ..BASE
        },
        Case {
            name: "VMA starting mid-2M: next aligned block is 2M",
            addr: 5 * M,
            vma: (3 * M, 8 * M),
            want: Ok((4 * M, 6 * M)),
            ..BASE
        },
        Case {
            name: "VMA ending mid-2M",
            addr: 2 * M + 100 * 1024,
            vma: (0, 3 * M),
            want: Ok((2 * M + K64, 2 * M + 2 * K64)),
            ..BASE
        },
        Case {
            name: "VMA ending mid-64K: last partial 64K falls back to 4K",
            addr: 4 * M + 20 * 1024,
            vma: (0, 4 * M + 32 * 1024),
            want: Ok((4 * M + 20 * 1024, 4 * M + 24 * 1024)),
            ..BASE
        },
        Case {
            name: "VMA ending mid-64K: byte before the partial 64K still gets 2M",
            addr: 4 * M - 1,
            vma: (0, 4 * M + 32 * 1024),
            want: Ok((2 * M, 4 * M)),
            ..BASE
        },
        Case {
            name: "VMA not page aligned: page containing its first byte does not fit",
            addr: M + 1,
            vma: (M + 1, 2 * M),
            want: Err(Error::Invalid),
            ..BASE
        },
        Case {
            name: "VMA not page aligned: next page fits",
            addr: M + P,
            vma: (M + 1, 2 * M),
            want: Ok((M + P, M + 2 * P)),
            ..BASE
        },
    ]);
}

#[test]
fn window_edges() {
    run_table(&[
        Case {
            name: "window narrower than 2M",
            addr: 4 * M + 10,
            window: (4 * M, 4 * M + 100 * 1024),
            want: Ok((4 * M, 4 * M + K64)),
            ..BASE
        },
        Case {
            name: "window narrower than 64K",
            addr: 4 * M + P,
            window: (4 * M + P, 4 * M + 3 * P),
            want: Ok((4 * M + P, 4 * M + 2 * P)),
            ..BASE
        },
        Case {
            name: "window of one page",
            addr: 4 * M + P + 1,
            window: (4 * M + P, 4 * M + 2 * P),
            want: Ok((4 * M + P, 4 * M + 2 * P)),
            ..BASE
        },
        Case {
            name: "window narrower than a page",
            addr: 4 * M + 8,
            window: (4 * M, 4 * M + 16),
            want: Err(Error::Invalid),
            ..BASE
        },
        Case {
            name: "window ending exactly at the 2M chunk end",
            addr: 5 * M,
            window: (0, 6 * M),
            want: Ok((4 * M, 6 * M)),
            ..BASE
        },
        Case {
            name: "window ending one byte before the 2M chunk end",
            addr: 5 * M,
            window: (0, 6 * M - 1),
            want: Ok((5 * M, 5 * M + K64)),
            ..BASE
        },
        Case {
            name: "window starting exactly at the chunk start",
            addr: 4 * M,
            window: (4 * M, u64::MAX),
            want: Ok((4 * M, 6 * M)),
            ..BASE
        },
        Case {
            name: "window starting one page after the chunk start",
            addr: 4 * M + P,
            window: (4 * M + P, u64::MAX),
            want: Ok((4 * M + P, 4 * M + 2 * P)),
            ..BASE
        },
        Case {
            name: "empty window",
            addr: 5 * M,
            window: (5 * M, 5 * M),
            want: Err(Error::Invalid),
            ..BASE
        },
        Case {
            name: "reversed window",
            addr: 5 * M,
            window: (6 * M, 4 * M),
            want: Err(Error::Invalid),
            ..BASE
        },
        Case {
            name: "addr at window end",
            addr: 6 * M,
            window: (4 * M, 6 * M),
            want: Err(Error::Invalid),
            ..BASE
        },
        Case {
            name: "addr one byte before window start",
            addr: 4 * M - 1,
            window: (4 * M, 6 * M),
            want: Err(Error::Invalid),
            ..BASE
        },
    ]);
}

mod edges;
