//! Chunk selection tests, continued: notifier edges, neighbours, the threshold and overlap
//! callbacks, malformed lists, the top of the address space, and the exhaustive small-world
//! sweep.

use super::*;

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
