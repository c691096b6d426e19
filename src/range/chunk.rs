//! Chunk-size selection for a new range (SPEC §2), as a pure function.

use crate::error::{Error, Result};
use crate::platform::PAGE_SIZE;

/// Everything [`select_chunk`] needs to know about the fault, as half-open intervals.
#[derive(Debug, Clone, Copy)]
pub struct ChunkQuery<'a> {
    /// The faulting address.
    pub addr: u64,
    /// The VMA containing `addr`.
    pub vma: (u64, u64),
    /// The notifier interval containing `addr`.
    pub notifier: (u64, u64),
    /// The device-VA window the driver allows for this fault.
    pub window: (u64, u64),
    /// Candidate chunk sizes, largest first, each a power of two, the last one `PAGE_SIZE`.
    pub chunk_sizes: &'a [u64],
    /// Candidates larger than one page and at most this size must have all their CPU pages
    /// present.
    pub check_pages_threshold: u64,
}

fn contains(outer: (u64, u64), s: u64, e: u64) -> bool {
    outer.0 <= s && e <= outer.1
}

/// Check a chunk-size list: non-empty, strictly descending, every size a power of two of at
/// least `PAGE_SIZE`, the last one exactly `PAGE_SIZE` (SPEC §1).
///
/// Errors: [`Error::Invalid`] otherwise.
pub(crate) fn check_chunk_sizes(sizes: &[u64]) -> Result<()> {
    if sizes.last() != Some(&PAGE_SIZE) {
        return Err(Error::Invalid);
    }
    let mut prev: Option<u64> = None;
    for &s in sizes {
        if !s.is_power_of_two() || s < PAGE_SIZE || prev.is_some_and(|p| s >= p) {
            return Err(Error::Invalid);
        }
        prev = Some(s);
    }
    Ok(())
}

/// Choose the interval `[start, end)` of the range to create for a fault.
///
/// Tries each chunk size from largest to smallest; the candidate is the chunk-aligned block
/// containing `q.addr`; the first candidate that lies inside the VMA, the notifier and the window,
/// for which `overlaps(start, end)` is false, and — if it is larger than a page and not larger
/// than `check_pages_threshold` — for which `all_present(start, end)` is true, is chosen.
///
/// Errors, in this order of precedence: [`Error::Invalid`] if the chunk list is malformed (empty,
/// not strictly descending, a size that is not a power of two or is below `PAGE_SIZE`, or a last
/// size other than `PAGE_SIZE`) — the whole list is checked before any candidate is tried;
/// [`Error::Fault`] if `addr` is outside the VMA; [`Error::Invalid`] if `addr` is outside the
/// notifier or the window, or if no candidate fits. Candidates whose end would overflow `u64`
/// never fit. The callbacks are only consulted for candidates inside the VMA, the notifier and
/// the window (`all_present` only for ones that `overlaps` accepted).
///
/// Context: takes no lock and allocates nothing itself; sleeps, locks and allocates only as
/// the callbacks do (in [`Svm::find_or_insert`](crate::Svm::find_or_insert): the notifier lock
/// shared, and a page snapshot allocated with
/// [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep) with no lock held).
///
/// ```
/// use gpusvm::range::{select_chunk, ChunkQuery};
/// const M: u64 = 1 << 20;
/// let q = ChunkQuery {
///     addr: 5 * M + 4096,
///     vma: (4 * M, 7 * M),          // 3 MiB VMA
///     notifier: (0, 512 * M),
///     window: (0, u64::MAX),
///     chunk_sizes: &[2 * M, 64 * 1024, 4096],
///     check_pages_threshold: 64 * 1024,
/// };
/// // The 2 MiB block [4 MiB, 6 MiB) fits in the VMA.
/// assert_eq!(select_chunk(&q, |_, _| false, |_, _| true), Ok((4 * M, 6 * M)));
/// ```
pub fn select_chunk(
    q: &ChunkQuery<'_>,
    mut overlaps: impl FnMut(u64, u64) -> bool,
    mut all_present: impl FnMut(u64, u64) -> bool,
) -> Result<(u64, u64)> {
    check_chunk_sizes(q.chunk_sizes)?;
    if !(q.vma.0 <= q.addr && q.addr < q.vma.1) {
        return Err(Error::Fault);
    }
    if !(q.notifier.0 <= q.addr && q.addr < q.notifier.1) {
        return Err(Error::Invalid);
    }
    if !(q.window.0 <= q.addr && q.addr < q.window.1) {
        return Err(Error::Invalid);
    }
    for &size in q.chunk_sizes {
        let start = q.addr & !(size.wrapping_sub(1));
        let Some(end) = start.checked_add(size) else {
            continue;
        };
        if !contains(q.vma, start, end)
            || !contains(q.notifier, start, end)
            || !contains(q.window, start, end)
        {
            continue;
        }
        if overlaps(start, end) {
            continue;
        }
        if size > PAGE_SIZE && size <= q.check_pages_threshold && !all_present(start, end) {
            continue;
        }
        return Ok((start, end));
    }
    Err(Error::Invalid)
}

#[cfg(all(test, not(loom)))]
mod tests {
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

    #[test]
    fn notifier_edges() {
        run_table(&[
            Case {
                name: "notifier clipped at the start of the mirrored interval",
                addr: M + 5,
                notifier: (M, 512 * M),
                want: Ok((M, M + K64)),
                ..BASE
            },
            Case {
                name: "notifier clipped at the end of the mirrored interval",
                addr: 3 * M - 1,
                notifier: (0, 3 * M),
                want: Ok((3 * M - K64, 3 * M)),
                ..BASE
            },
            Case {
                name: "addr in the last 2M of the notifier",
                addr: 512 * M - 1,
                want: Ok((510 * M, 512 * M)),
                ..BASE
            },
            Case {
                name: "addr at the notifier end",
                addr: 512 * M,
                vma: (0, G),
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "addr in the next notifier",
                addr: 512 * M,
                vma: (0, G),
                notifier: (512 * M, G),
                want: Ok((512 * M, 514 * M)),
                ..BASE
            },
            Case {
                name: "addr before the notifier",
                addr: M - 1,
                notifier: (M, 512 * M),
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "VMA spanning two notifiers: chunk stays inside the notifier",
                addr: 512 * M - P,
                vma: (511 * M, 513 * M),
                want: Ok((512 * M - K64, 512 * M)),
                ..BASE
            },
            Case {
                name: "notifier smaller than 2M",
                addr: 0,
                notifier: (0, M),
                want: Ok((0, K64)),
                ..BASE
            },
            Case {
                name: "notifier clipped to a non-64K boundary",
                addr: M + P,
                notifier: (M + P, 512 * M),
                want: Ok((M + P, M + 2 * P)),
                ..BASE
            },
        ]);
    }

    #[test]
    fn neighbouring_ranges() {
        run_table(&[
            Case {
                name: "a range inside the 2M block: 64K chosen",
                addr: 5 * M,
                ranges: &[(4 * M + K64, 4 * M + 2 * K64)],
                want: Ok((5 * M, 5 * M + K64)),
                ..BASE
            },
            Case {
                name: "a range inside the 64K block: 4K chosen",
                addr: 5 * M,
                ranges: &[(5 * M + 2 * P, 5 * M + 3 * P)],
                want: Ok((5 * M, 5 * M + P)),
                ..BASE
            },
            Case {
                name: "adjacent ranges on both sides do not overlap",
                addr: 5 * M,
                ranges: &[(4 * M - P, 4 * M), (6 * M, 6 * M + P)],
                want: Ok((4 * M, 6 * M)),
                ..BASE
            },
            Case {
                name: "adjacent 64K ranges on both sides of a 64K block",
                addr: 4 * M + K64,
                ranges: &[(4 * M, 4 * M + K64), (4 * M + 2 * K64, 4 * M + 3 * K64)],
                want: Ok((4 * M + K64, 4 * M + 2 * K64)),
                ..BASE
            },
            Case {
                name: "a range overlapping the page of addr: nothing fits",
                addr: 5 * M,
                ranges: &[(5 * M - P, 5 * M + P)],
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "a range ending exactly at the 2M start",
                addr: 4 * M,
                ranges: &[(2 * M, 4 * M)],
                want: Ok((4 * M, 6 * M)),
                ..BASE
            },
            Case {
                name: "a range starting one page before the 2M end",
                addr: 4 * M,
                ranges: &[(6 * M - P, 6 * M)],
                want: Ok((4 * M, 4 * M + K64)),
                ..BASE
            },
        ]);
    }

    #[test]
    fn overlap_callback_true_for_larger_candidates_only() {
        for (limit, want) in [
            (M2, (4 * M, 6 * M)),
            (K64, (5 * M, 5 * M + K64)),
            (P, (5 * M, 5 * M + P)),
        ] {
            let mut seen = Vec::new();
            let q = ChunkQuery {
                addr: 5 * M + 1,
                vma: (0, G),
                notifier: (0, G),
                window: ALL,
                chunk_sizes: DEFAULT,
                check_pages_threshold: K64,
            };
            let got = select_chunk(
                &q,
                |s, e| {
                    seen.push(e - s);
                    e - s > limit
                },
                |_, _| true,
            );
            assert_eq!(got, Ok(want), "limit {limit:#x}");
            let expect: Vec<u64> = DEFAULT.iter().copied().filter(|&z| z >= limit).collect();
            assert_eq!(seen, expect, "largest first, stop at the first fit");
        }
        // Overlapping every candidate: nothing fits.
        let q = ChunkQuery {
            addr: 5 * M,
            vma: (0, G),
            notifier: (0, G),
            window: ALL,
            chunk_sizes: DEFAULT,
            check_pages_threshold: K64,
        };
        assert_eq!(
            select_chunk(&q, |_, _| true, |_, _| true),
            Err(Error::Invalid)
        );
    }

    #[test]
    fn check_pages_threshold_rule() {
        const SMALL_VMA: (u64, u64) = (5 * M, 5 * M + 2 * K64);
        run_table(&[
            Case {
                name: "64K candidate with a missing page falls back to 4K",
                addr: 5 * M,
                vma: SMALL_VMA,
                absent: &[5 * M + K64 - P],
                want: Ok((5 * M, 5 * M + P)),
                ..BASE
            },
            Case {
                name: "64K candidate with its first page missing falls back to 4K (itself absent)",
                addr: 5 * M + P,
                vma: SMALL_VMA,
                absent: &[5 * M],
                want: Ok((5 * M + P, 5 * M + 2 * P)),
                ..BASE
            },
            Case {
                name: "64K candidate fully present is taken",
                addr: 5 * M,
                vma: SMALL_VMA,
                absent: &[5 * M + K64],
                want: Ok((5 * M, 5 * M + K64)),
                ..BASE
            },
            Case {
                name: "2M candidate above the threshold is not checked",
                addr: 5 * M,
                absent: &[4 * M, 5 * M, 6 * M - P],
                want: Ok((4 * M, 6 * M)),
                ..BASE
            },
            Case {
                name: "4K candidate is never checked (threshold huge)",
                addr: 5 * M,
                vma: SMALL_VMA,
                threshold: u64::MAX,
                absent: &[5 * M],
                want: Ok((5 * M, 5 * M + P)),
                ..BASE
            },
            Case {
                name: "threshold 2M: 2M candidate checked and refused, 64K checked and taken",
                addr: 5 * M,
                threshold: M2,
                absent: &[4 * M],
                want: Ok((5 * M, 5 * M + K64)),
                ..BASE
            },
            Case {
                name: "threshold 2M: everything missing around addr falls to 4K",
                addr: 5 * M,
                threshold: M2,
                absent: &[4 * M, 5 * M + P],
                want: Ok((5 * M, 5 * M + P)),
                ..BASE
            },
            Case {
                name: "threshold just below 64K: 64K not checked",
                addr: 5 * M,
                vma: SMALL_VMA,
                threshold: K64 - 1,
                absent: &[5 * M + P],
                want: Ok((5 * M, 5 * M + K64)),
                ..BASE
            },
            Case {
                name: "threshold 0: nothing checked",
                addr: 5 * M,
                vma: SMALL_VMA,
                threshold: 0,
                absent: &[5 * M + P],
                want: Ok((5 * M, 5 * M + K64)),
                ..BASE
            },
            Case {
                name: "threshold one page: nothing checked",
                addr: 5 * M,
                vma: SMALL_VMA,
                threshold: P,
                absent: &[5 * M + P],
                want: Ok((5 * M, 5 * M + K64)),
                ..BASE
            },
        ]);
    }

    #[test]
    fn threshold_callbacks_exact() {
        // 64K candidate, missing page: `all_present` consulted once, for the 64K candidate only.
        let c = Case {
            addr: 5 * M,
            vma: (5 * M, 5 * M + 2 * K64),
            absent: &[5 * M + 3 * P],
            ..BASE
        };
        let (got, calls) = run(&c);
        assert_eq!(got, Ok((5 * M, 5 * M + P)));
        assert_eq!(calls.present, [(5 * M, 5 * M + K64)]);
        assert_eq!(calls.overlaps, [(5 * M, 5 * M + K64), (5 * M, 5 * M + P)]);
        // Overlapping candidates are not checked for presence.
        let c = Case {
            addr: 5 * M,
            vma: (5 * M, 5 * M + 2 * K64),
            ranges: &[(5 * M + P, 5 * M + 2 * P)],
            ..BASE
        };
        let (got, calls) = run(&c);
        assert_eq!(got, Ok((5 * M, 5 * M + P)));
        assert!(calls.present.is_empty());
        // 2M above the threshold in a big VMA: never consulted.
        let (got, calls) = run(&BASE);
        assert_eq!(got, Ok((4 * M, 6 * M)));
        assert!(calls.present.is_empty());
        assert_eq!(calls.overlaps, [(4 * M, 6 * M)]);
    }

    #[test]
    fn malformed_chunk_lists_are_invalid() {
        const BAD: &[&[u64]] = &[
            &[],
            &[0],
            &[3 * P],
            &[M2, 96 << 10, P],
            &[M2, K64, 3 * P],
            &[2048],
            &[M2, K64, 2048],
            &[M2, K64, P, 2048],
            &[M2, K64, 1],
            &[P, K64, M2],
            &[K64, M2, P],
            &[K64, K64, P],
            &[M2, K64, P, P],
            &[M2, K64],
            &[2 * P],
            &[u64::MAX, P],
            &[1 << 63, 1 << 63, P],
        ];
        for &chunks in BAD {
            for addr in [5 * M, 0, 512 * M - 1] {
                // Malformed input wins over every other outcome, including "outside the VMA".
                for vma in [(0, 512 * M), (G, 2 * G)] {
                    let c = Case {
                        name: "malformed",
                        addr,
                        vma,
                        chunks,
                        want: Err(Error::Invalid),
                        ..BASE
                    };
                    let (got, calls) = run(&c);
                    assert_eq!(got, Err(Error::Invalid), "{chunks:?} at {addr:#x}");
                    assert!(calls.overlaps.is_empty() && calls.present.is_empty());
                }
            }
        }
        for good in [&[P][..], &[K64, P], &[M2, P], &[1 << 63, M2, K64, P]] {
            assert!(check_chunk_sizes(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn single_page_chunk_list() {
        run_table(&[Case {
            name: "only 4K chunks",
            chunks: &[P],
            want: Ok((5 * M, 5 * M + P)),
            ..BASE
        }]);
    }

    #[test]
    fn addr_outside_is_fault_or_invalid() {
        run_table(&[
            Case {
                name: "outside VMA and notifier: Fault wins",
                addr: G,
                want: Err(Error::Fault),
                ..BASE
            },
            Case {
                name: "outside VMA and window: Fault wins",
                addr: G,
                window: (0, M),
                want: Err(Error::Fault),
                ..BASE
            },
            Case {
                name: "inside VMA, outside notifier",
                addr: G,
                vma: (0, 2 * G),
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "inside VMA and notifier, outside window",
                addr: 5 * M,
                window: (6 * M, 8 * M),
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "empty notifier",
                addr: 5 * M,
                notifier: (5 * M, 5 * M),
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "u64::MAX is never inside a half-open interval",
                addr: u64::MAX,
                vma: ALL,
                notifier: ALL,
                want: Err(Error::Fault),
                ..BASE
            },
        ]);
    }

    #[test]
    fn overflow_at_the_top_of_the_address_space() {
        const TOP_VMA: (u64, u64) = (TOP - 2 * M2 + P, u64::MAX);
        const TOP_N: (u64, u64) = (0u64.wrapping_sub(512 * M), u64::MAX);
        run_table(&[
            Case {
                name: "last page: every candidate's end overflows",
                addr: u64::MAX - 1,
                vma: TOP_VMA,
                notifier: TOP_N,
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "first byte of the last page",
                addr: TOP,
                vma: TOP_VMA,
                notifier: TOP_N,
                want: Err(Error::Invalid),
                ..BASE
            },
            Case {
                name: "last 2M block ends at 2^64: falls to a 64K below the top",
                addr: TOP - M2 + P + 5,
                vma: TOP_VMA,
                notifier: TOP_N,
                want: Ok((TOP - M2 + P, TOP - M2 + P + K64)),
                ..BASE
            },
            Case {
                name: "64K just below the last 64K",
                addr: TOP - K64,
                vma: TOP_VMA,
                notifier: TOP_N,
                want: Ok((TOP - 2 * K64 + P, TOP - K64 + P)),
                ..BASE
            },
            Case {
                name: "page just below the last page",
                addr: TOP - 1,
                vma: (TOP - P, u64::MAX),
                notifier: TOP_N,
                want: Ok((TOP - P, TOP)),
                ..BASE
            },
            Case {
                name: "2M block ending one 2M below the top",
                addr: TOP - 2 * M2 + P,
                vma: (TOP - 2 * M2 + P, u64::MAX),
                notifier: TOP_N,
                want: Ok((TOP - 2 * M2 + P, TOP - M2 + P)),
                ..BASE
            },
        ]);
        // The huge candidate: [0, 2^63) fits; [2^63, 2^64) overflows and falls to 2M.
        run_table(&[
            Case {
                name: "2^63 chunk in the lower half",
                addr: 5 * M,
                vma: ALL,
                notifier: ALL,
                chunks: &[1 << 63, M2, K64, P],
                want: Ok((0, 1 << 63)),
                ..BASE
            },
            Case {
                name: "2^63 chunk in the upper half overflows",
                addr: (1 << 63) + 5,
                vma: ALL,
                notifier: ALL,
                chunks: &[1 << 63, M2, K64, P],
                want: Ok((1 << 63, (1 << 63) + M2)),
                ..BASE
            },
        ]);
    }

    /// A scaled-down world (chunk sizes 16, 4 and 1 pages over 64 pages) swept exhaustively
    /// over VMA, window and notifier edges, neighbours, missing pages, thresholds and addresses;
    /// every answer is checked against the oracle and the rules.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "pure arithmetic (no unsafe, no links): over a million cases take hours under Miri"
    )]
    fn exhaustive_sweep_small_world() {
        const CH: &[u64] = &[16 * P, 4 * P, P];
        const EDGES: [u64; 11] = [0, 1, 3, 4, 5, 15, 16, 17, 32, 47, 64];
        const RANGES: &[&[(u64, u64)]] = &[
            &[],
            &[(4 * P, 5 * P)],
            &[(15 * P, 16 * P), (32 * P, 36 * P)],
            &[(0, 3 * P), (17 * P, 18 * P)],
        ];
        const ABSENT: &[&[u64]] = &[&[], &[5 * P], &[16 * P, 33 * P], &[2 * P, 19 * P]];
        const WINDOWS: &[(u64, u64)] = &[ALL, (4 * P, 32 * P), (5 * P, 20 * P), (0, 17 * P)];
        const NOTIFIERS: &[(u64, u64)] = &[(0, 64 * P), (0, 32 * P), (P, 48 * P)];
        let mut n = 0u64;
        let mut oks = 0u64;
        for (i, &vs) in EDGES.iter().enumerate() {
            for &ve in EDGES.iter().skip(i + 1) {
                for &window in WINDOWS {
                    for &notifier in NOTIFIERS {
                        for &ranges in RANGES {
                            for &absent in ABSENT {
                                for threshold in [0, 4 * P, 16 * P] {
                                    for page in 0..65u64 {
                                        for off in [0, P - 1] {
                                            let c = Case {
                                                name: "sweep",
                                                addr: page * P + off,
                                                vma: (vs * P, ve * P),
                                                notifier,
                                                window,
                                                chunks: CH,
                                                threshold,
                                                ranges,
                                                absent,
                                                want: Ok((0, 0)),
                                            };
                                            let (got, calls) = run(&c);
                                            check_rules(&c, got, &calls);
                                            n += 1;
                                            oks += u64::from(got.is_ok());
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 1_000_000, "{n} cases");
        assert!(
            oks > n / 10,
            "the sweep must exercise successes too: {oks}/{n}"
        );
    }
}
