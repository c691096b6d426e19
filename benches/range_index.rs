//! The flat range index ([`RangeIndex`]) against a `BTreeMap` holding the same ranges.
//!
//! Run with `cargo bench --bench range_index` (about a minute); the report at the end prints
//! each ratio with its target, from criterion's medians and from paired, interleaved
//! measurements (`RANGE_INDEX_SIZES=1000,1000000` limits the sizes).
//!
//! **Fixture** (N = 10^3, 10^4, 10^5, 10^6): N non-overlapping chunk-aligned ranges of mixed
//! sizes in ONE `RangeIndex` with 2 MiB slots spanning all of them, and in a
//! `BTreeMap<u64, (u64, *const Range)>` keyed by start (lookup: predecessor + end check). The
//! address space is tiled in 64 MiB tiles of 32 slots; each tile follows one of 8 random
//! patterns: 12 slots hold a 2 MiB range, 8 hold two 64 KiB ranges, 4 hold four 4 KiB ranges,
//! 8 are empty (44 ranges per tile: 27 % 2 MiB, 36 % 64 KiB, 36 % 4 KiB). Ranges are inserted
//! in a random order. Range `i` (in address order) and a free address near it are computed
//! from the patterns (a few hundred bytes, cached), so address generation reads no big table.
//!
//! **Rows** (group `range_index_<what>_<N>`, functions `index` and `btreemap`):
//! - `lookup_random`: splitmix64 in the loop picks a range uniformly; half the addresses fall
//!   in it, half on a free address of its tile (a gap in a slot with ranges, or an empty slot);
//! - `lookup_sequential`: stepping through the address space by 68 KiB;
//! - `overlap512` (N = 10^6): the ranges overlapping `[start of range i, end of range i + 511)`
//!   for a random `i`: exactly 512 ranges, each read (its pointer folded, as both structures
//!   hold it inline);
//! - `remove`, `insert` (N = 10^6): remove 256 random ranges, then insert them back; each part
//!   timed on its own (`RangeIndex::remove` by object + `insert`; `BTreeMap::remove` +
//!   `insert`).
//!
//! Heap bytes per range: measured with a counting global allocator while each structure is
//! built (allocator overhead not included), and `RangeIndex::heap_bytes`.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

#[path = "common/mod.rs"]
mod common;

use common::{fmt_ns, median_ns, paired, print_paired, Paired};
use criterion::{black_box, Criterion};
use gpusvm::heap::AllocCtx;
use gpusvm::range::{Range, RangeIndex};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A range reference on the default host.
type RangeArc = gpusvm::HostArc<gpusvm::DefaultHost, Range>;
type Map = BTreeMap<u64, (u64, *const Range)>;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const BASE: u64 = 1 << 40;
const SLOT: u64 = 2 * MIB;
/// Slots per tile, and the tile size.
const CELLS: usize = 32;
const TILE: u64 = CELLS as u64 * SLOT;
/// Ranges per tile.
const PER_TILE: usize = 44;
const PATTERNS: usize = 8;
/// Ranges an overlap query covers, and ranges removed and inserted back per timed batch.
const OVERLAP: usize = 512;
const BATCH: usize = 256;

// ---- A counting global allocator: live bytes per structure being built. ----

struct Counting;
/// What the allocations are charged to: 0 other, 1 the index, 2 the BTreeMap.
static TAG: AtomicUsize = AtomicUsize::new(0);
static LIVE: [AtomicIsize; 3] = [
    AtomicIsize::new(0),
    AtomicIsize::new(0),
    AtomicIsize::new(0),
];

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE[TAG.load(Ordering::Relaxed)].fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE[TAG.load(Ordering::Relaxed)].fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc(l)`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` charging its allocations to `tag`.
fn charged<R>(tag: usize, f: impl FnOnce() -> R) -> R {
    TAG.store(tag, Ordering::Relaxed);
    let r = f();
    TAG.store(0, Ordering::Relaxed);
    r
}

// ---- Random numbers. ----

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `[0, n)` (multiply-shift, no division).
#[inline(always)]
fn below(x: &mut u64, n: u64) -> u64 {
    ((u128::from(splitmix(x)) * u128::from(n)) >> 64) as u64
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = seed;
    for i in (1..n).rev() {
        v.swap(i, below(&mut x, i as u64 + 1) as usize);
    }
    v
}

// ---- The layout: tiles of 32 slots following one of 8 patterns. ----

/// One range of a pattern: offset in the tile, size, and a free address of the tile.
#[derive(Clone, Copy, Default)]
struct Slotted {
    off: u64,
    size: u64,
    miss: u64,
}

struct Tiles {
    n: usize,
    pats: Vec<[Slotted; PER_TILE]>,
}

impl Tiles {
    fn new(n: usize) -> Self {
        let mut x = 0x01de_5eed;
        let pats = (0..PATTERNS).map(|_| pattern(&mut x)).collect();
        Tiles { n, pats }
    }

    /// Range `i` in address order: (start, size).
    #[inline(always)]
    fn range(&self, i: usize) -> (u64, u64) {
        let (t, j) = (i / PER_TILE, i % PER_TILE);
        let s = self.pats[t % PATTERNS][j];
        (BASE + t as u64 * TILE + s.off, s.size)
    }

    /// A free address of the tile of range `i`.
    #[inline(always)]
    fn miss(&self, i: usize) -> u64 {
        let (t, j) = (i / PER_TILE, i % PER_TILE);
        BASE + t as u64 * TILE + self.pats[t % PATTERNS][j].miss
    }

    fn span(&self) -> u64 {
        self.n.div_ceil(PER_TILE) as u64 * TILE
    }

    /// A lookup address: half in a random range, half on a free address.
    #[inline(always)]
    fn random_addr(&self, x: &mut u64) -> u64 {
        let i = below(x, self.n as u64) as usize;
        let r = splitmix(x);
        if r & 1 == 0 {
            let (s, size) = self.range(i);
            s + ((r >> 1) & (size - 1))
        } else {
            self.miss(i) + ((r >> 1) & (4 * KIB - 1))
        }
    }
}

/// A random tile pattern, sorted by offset.
fn pattern(x: &mut u64) -> [Slotted; PER_TILE] {
    let cells = shuffled(CELLS, splitmix(x));
    let mut v: Vec<Slotted> = Vec::new();
    // (slots, ranges per slot, size)
    let mut next = cells.into_iter();
    for (slots, per, size) in [(12, 1, SLOT), (8, 2, 64 * KIB), (4, 4, 4 * KIB)] {
        for c in next.by_ref().take(slots) {
            let base = c as u64 * SLOT;
            let picks = shuffled((SLOT / size) as usize, splitmix(x));
            for &p in picks.iter().take(per) {
                v.push(Slotted {
                    off: base + p as u64 * size,
                    size,
                    miss: 0,
                });
            }
        }
    }
    v.sort_by_key(|s| s.off);
    let taken = v.clone();
    for s in &mut v {
        // A free page of the tile.
        s.miss = loop {
            let a = below(x, TILE / (4 * KIB)) * 4 * KIB;
            if !taken.iter().any(|t| t.off <= a && a < t.off + t.size) {
                break a;
            }
        };
    }
    v.try_into()
        .unwrap_or_else(|_| panic!("pattern has {PER_TILE} ranges"))
}

// ---- The fixture. ----

struct Fixture {
    lay: Tiles,
    /// The ranges in address order.
    ranges: Vec<RangeArc>,
    ix: RangeIndex,
    map: Map,
    ix_bytes: isize,
    map_bytes: isize,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let lay = Tiles::new(n);
        let ranges: Vec<RangeArc> = (0..n)
            .map(|i| {
                let (s, size) = lay.range(i);
                Range::new(s, s + size).expect("range")
            })
            .collect();
        let (i0, m0) = (live(1), live(2));
        let mut ix = charged(1, || {
            RangeIndex::new(BASE, BASE + lay.span(), SLOT, AllocCtx::MaySleep).expect("index")
        });
        let mut map = Map::new();
        for i in shuffled(n, 0x5eed ^ n as u64) {
            let r = &ranges[i];
            charged(1, || ix.insert(r.clone(), AllocCtx::MaySleep)).expect("insert");
            charged(2, || map.insert(r.start(), (r.end(), RangeArc::as_ptr(r))));
        }
        assert_eq!((ix.len(), map.len()), (n, n));
        let (ix_bytes, map_bytes) = (live(1) - i0, live(2) - m0);
        Fixture {
            lay,
            ranges,
            ix,
            map,
            ix_bytes,
            map_bytes,
        }
    }

    /// Every lookup pattern answers the same in both structures; the random one hits about
    /// half the time; the overlap query covers 512 ranges.
    fn check(&self) {
        let mut x = 7;
        let mut hits = 0;
        let tries = 20_000;
        for k in 0..tries {
            let a = if k % 2 == 0 {
                self.lay.random_addr(&mut x)
            } else {
                BASE + below(&mut x, self.lay.span())
            };
            let got = index_find(&self.ix, a);
            assert_eq!(got, map_find(&self.map, a), "{a:#x}");
            hits += usize::from(k % 2 == 0 && got.is_some());
        }
        let rate = hits as f64 / (tries / 2) as f64;
        assert!((0.45..0.55).contains(&rate), "hit rate {rate}");
        if self.lay.n > OVERLAP {
            let (s, e) = self.query(&mut x);
            assert_eq!(index_overlap(&self.ix, s, e).1, OVERLAP);
            assert_eq!(map_overlap(&self.map, s, e).1, OVERLAP);
            assert_eq!(
                index_overlap(&self.ix, s, e).0,
                map_overlap(&self.map, s, e).0
            );
        }
    }

    /// An interval covering exactly `OVERLAP` ranges, from a random one.
    #[inline(always)]
    fn query(&self, x: &mut u64) -> (u64, u64) {
        let i = below(x, (self.lay.n - OVERLAP) as u64) as usize;
        let (s, _) = self.lay.range(i);
        let (ls, lsize) = self.lay.range(i + OVERLAP - 1);
        (s, ls + lsize)
    }
}

fn live(tag: usize) -> isize {
    LIVE[tag].load(Ordering::Relaxed)
}

#[inline(always)]
fn index_find(ix: &RangeIndex, a: u64) -> Option<*const Range> {
    ix.find(a).map(|r| r as *const Range)
}

#[inline(always)]
fn map_find(m: &Map, a: u64) -> Option<*const Range> {
    m.range(..=a)
        .next_back()
        .filter(|(_, (e, _))| a < *e)
        .map(|(_, (_, p))| *p)
}

/// (folded pointers, count) of the ranges overlapping `[s, e)`.
#[inline(always)]
fn index_overlap(ix: &RangeIndex, s: u64, e: u64) -> (usize, usize) {
    ix.overlapping(s, e).fold((0, 0), |(f, n), r| {
        (f ^ (r as *const Range as usize), n + 1)
    })
}

#[inline(always)]
fn map_overlap(m: &Map, s: u64, e: u64) -> (usize, usize) {
    let first = m.range(..=s).next_back().filter(|(_, (re, _))| *re > s);
    first
        .into_iter()
        .chain(m.range(s + 1..e))
        .fold((0, 0), |(f, n), (_, (_, p))| (f ^ (*p as usize), n + 1))
}

/// Address streams.
#[derive(Clone, Copy, PartialEq)]
enum Pat {
    Random,
    Sequential,
}

impl Pat {
    fn name(self) -> &'static str {
        match self {
            Pat::Random => "lookup_random",
            Pat::Sequential => "lookup_sequential",
        }
    }
}

struct Addrs<'a> {
    lay: &'a Tiles,
    pat: Pat,
    x: u64,
    cur: u64,
    span: u64,
}

impl<'a> Addrs<'a> {
    fn new(lay: &'a Tiles, pat: Pat) -> Self {
        Addrs {
            lay,
            pat,
            x: 42,
            cur: 0,
            span: lay.span(),
        }
    }
    #[inline(always)]
    fn next(&mut self) -> u64 {
        match self.pat {
            Pat::Random => self.lay.random_addr(&mut self.x),
            Pat::Sequential => {
                self.cur += 68 * KIB;
                if self.cur >= self.span {
                    self.cur = 0;
                }
                BASE + self.cur
            }
        }
    }
}

// ---- Remove and insert back. ----

/// Which part of a remove + insert-back batch is timed.
#[derive(Clone, Copy)]
enum Part {
    Remove,
    Insert,
}

/// Remove `BATCH` ranges (from `perm` at `*cur`) from the index, insert them back; ns per op
/// of `part`.
fn index_batch(fx: &mut Fixture, perm: &[usize], cur: &mut usize, part: Part) -> f64 {
    let picks: Vec<&RangeArc> = (0..BATCH)
        .map(|k| &fx.ranges[perm[(*cur + k) % perm.len()]])
        .collect();
    *cur = (*cur + BATCH) % perm.len();
    let mut out = Vec::with_capacity(BATCH);
    let t0 = Instant::now();
    for r in &picks {
        out.push(fx.ix.remove(black_box(r)).expect("remove"));
    }
    let t_remove = t0.elapsed();
    let t1 = Instant::now();
    for r in out.drain(..) {
        fx.ix.insert(r, AllocCtx::MaySleep).expect("insert");
    }
    let t_insert = t1.elapsed();
    per_batch(part, t_remove, t_insert)
}

fn map_batch(fx: &mut Fixture, perm: &[usize], cur: &mut usize, part: Part) -> f64 {
    let picks: Vec<&RangeArc> = (0..BATCH)
        .map(|k| &fx.ranges[perm[(*cur + k) % perm.len()]])
        .collect();
    *cur = (*cur + BATCH) % perm.len();
    let mut out = Vec::with_capacity(BATCH);
    let t0 = Instant::now();
    for r in &picks {
        let s = black_box(r).start();
        out.push((s, fx.map.remove(&s).expect("remove")));
    }
    let t_remove = t0.elapsed();
    let t1 = Instant::now();
    for (s, v) in out.drain(..) {
        fx.map.insert(s, v);
    }
    let t_insert = t1.elapsed();
    per_batch(part, t_remove, t_insert)
}

fn per_batch(part: Part, remove: Duration, insert: Duration) -> f64 {
    let d = match part {
        Part::Remove => remove,
        Part::Insert => insert,
    };
    d.as_nanos() as f64 / BATCH as f64
}

// ---- The benchmarks. ----

fn sizes() -> Vec<usize> {
    match std::env::var("RANGE_INDEX_SIZES") {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1_000, 10_000, 100_000, 1_000_000],
    }
}

fn group_name(what: &str, n: usize) -> String {
    format!("range_index_{what}_{n}")
}

/// The paired results of the largest size (printed in the report).
struct Pairs(Vec<(String, Paired, Option<f64>)>);

fn bench(c: &mut Criterion, pairs: &mut Pairs, bytes: &mut Vec<(usize, f64, f64, f64)>) {
    for n in sizes() {
        let t0 = Instant::now();
        let mut fx = Fixture::new(n);
        fx.check();
        println!(
            "fixture n={n}: built and checked in {:.1} s; index {} slots of 2 MiB",
            t0.elapsed().as_secs_f64(),
            fx.lay.span() / SLOT
        );
        bytes.push((
            n,
            fx.ix_bytes as f64 / n as f64,
            fx.ix.heap_bytes() as f64 / n as f64,
            fx.map_bytes as f64 / n as f64,
        ));
        for pat in [Pat::Random, Pat::Sequential] {
            let mut g = c.benchmark_group(group_name(pat.name(), n));
            g.sample_size(30)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_millis(1500));
            let (ix, map, lay) = (&fx.ix, &fx.map, &fx.lay);
            g.bench_function("index", |b| {
                let mut a = Addrs::new(lay, pat);
                b.iter(|| index_find(ix, a.next()))
            });
            g.bench_function("btreemap", |b| {
                let mut a = Addrs::new(lay, pat);
                b.iter(|| map_find(map, a.next()))
            });
            g.finish();
            if n == 1_000_000 && !common::test_mode() {
                let mut ai = Addrs::new(lay, pat);
                let mut am = Addrs::new(lay, pat);
                let ops = 20_000;
                let p = paired(
                    60,
                    || {
                        common::per_op(ops, || {
                            black_box(index_find(ix, ai.next()));
                        })
                    },
                    || {
                        common::per_op(ops, || {
                            black_box(map_find(map, am.next()));
                        })
                    },
                );
                pairs.0.push((group_name(pat.name(), n), p, Some(0.3)));
            }
        }
        if n < 1_000_000 {
            continue;
        }
        // Overlap query covering 512 ranges.
        let mut g = c.benchmark_group(group_name("overlap512", n));
        g.sample_size(30)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_millis(1500));
        {
            let f = &fx;
            g.bench_function("index", |b| {
                let mut x = 1;
                b.iter(|| {
                    let (s, e) = f.query(&mut x);
                    index_overlap(&f.ix, s, e)
                })
            });
            g.bench_function("btreemap", |b| {
                let mut x = 1;
                b.iter(|| {
                    let (s, e) = f.query(&mut x);
                    map_overlap(&f.map, s, e)
                })
            });
        }
        g.finish();
        if !common::test_mode() {
            let (mut xi, mut xm) = (3, 3);
            let f = &fx;
            let p = paired(
                60,
                || {
                    common::per_op(50, || {
                        let (s, e) = f.query(&mut xi);
                        black_box(index_overlap(&f.ix, s, e));
                    })
                },
                || {
                    common::per_op(50, || {
                        let (s, e) = f.query(&mut xm);
                        black_box(map_overlap(&f.map, s, e));
                    })
                },
            );
            pairs.0.push((group_name("overlap512", n), p, Some(0.5)));
        }
        // Remove, then insert back.
        let perm = shuffled(n, 99);
        for part in [Part::Remove, Part::Insert] {
            let what = match part {
                Part::Remove => "remove",
                Part::Insert => "insert",
            };
            let mut g = c.benchmark_group(group_name(what, n));
            g.sample_size(30)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_millis(1500));
            let mut cur = 0;
            g.bench_function("index", |b| {
                b.iter_custom(|iters| {
                    let batches = iters.div_ceil(BATCH as u64);
                    let ns: f64 = (0..batches)
                        .map(|_| index_batch(&mut fx, &perm, &mut cur, part))
                        .sum();
                    Duration::from_nanos((ns * BATCH as f64) as u64)
                        .mul_f64(iters as f64 / (batches * BATCH as u64) as f64)
                })
            });
            let mut cur = 0;
            g.bench_function("btreemap", |b| {
                b.iter_custom(|iters| {
                    let batches = iters.div_ceil(BATCH as u64);
                    let ns: f64 = (0..batches)
                        .map(|_| map_batch(&mut fx, &perm, &mut cur, part))
                        .sum();
                    Duration::from_nanos((ns * BATCH as f64) as u64)
                        .mul_f64(iters as f64 / (batches * BATCH as u64) as f64)
                })
            });
            g.finish();
            if !common::test_mode() {
                let fx = std::cell::RefCell::new(&mut fx);
                let (mut ci, mut cm) = (0, 0);
                let p = paired(
                    200,
                    || index_batch(&mut fx.borrow_mut(), &perm, &mut ci, part),
                    || map_batch(&mut fx.borrow_mut(), &perm, &mut cm, part),
                );
                pairs.0.push((group_name(what, n), p, Some(1.0)));
            }
        }
        assert_eq!((fx.ix.len(), fx.map.len()), (n, n));
        fx.check();
    }
}

/// One ratio line in the house format.
fn verdict(x: f64, target: Option<f64>) -> String {
    match target {
        Some(t) if x <= t => format!("target <= {t}x: met"),
        Some(t) => format!("target <= {t}x: MISSED by {:.2}x", x / t),
        None => "informative".to_string(),
    }
}

fn report(pairs: &Pairs, bytes: &[(usize, f64, f64, f64)]) {
    println!("\n=== range_index: ratios of criterion medians measured in this run");
    for n in sizes() {
        let targets: &[(&str, Option<f64>)] = if n == 1_000_000 {
            &[
                ("lookup_random", Some(0.3)),
                ("lookup_sequential", Some(0.3)),
                ("overlap512", Some(0.5)),
                ("insert", Some(1.0)),
                ("remove", Some(1.0)),
            ]
        } else {
            &[("lookup_random", None), ("lookup_sequential", None)]
        };
        for &(what, target) in targets {
            let g = group_name(what, n);
            let (Some(a), Some(b)) = (median_ns(&g, "index"), median_ns(&g, "btreemap")) else {
                println!("  {g}: not run");
                continue;
            };
            println!(
                "  {g}: index ({}) / btreemap ({}) = {:.2}x  [{}]",
                fmt_ns(a),
                fmt_ns(b),
                a / b,
                verdict(a / b, target)
            );
        }
    }
    for what in ["lookup_random", "lookup_sequential"] {
        let (g6, g3) = (group_name(what, 1_000_000), group_name(what, 1_000));
        if let (Some(a), Some(b)) = (median_ns(&g6, "index"), median_ns(&g3, "index")) {
            println!(
                "  {what}: index at 10^6 ({}) / at 10^3 ({}) = {:.2}x  [{}]",
                fmt_ns(a),
                fmt_ns(b),
                a / b,
                verdict(a / b, Some(6.0))
            );
        }
        if let (Some(a), Some(b)) = (median_ns(&g6, "btreemap"), median_ns(&g3, "btreemap")) {
            println!(
                "  {what}: btreemap at 10^6 ({}) / at 10^3 ({}) = {:.2}x  [informative]",
                fmt_ns(a),
                fmt_ns(b),
                a / b
            );
        }
    }
    if !pairs.0.is_empty() {
        println!("\n=== range_index: paired, interleaved measurements at 10^6 (index / btreemap)");
        for (what, p, target) in &pairs.0 {
            print_paired(what, "index", "btreemap", p, *target);
        }
    }
    println!(
        "\n=== range_index: heap bytes per range (counting allocator, allocator overhead excluded)"
    );
    for &(n, ix, ix_cap, map) in bytes {
        println!(
            "  n={n}: index {ix:.1} B/range (heap_bytes {ix_cap:.1}), btreemap {map:.1} B/range, \
             index / btreemap = {:.2}x  [informative]",
            ix / map
        );
    }
}

fn main() {
    common::start();
    let mut c = Criterion::default().configure_from_args();
    let mut pairs = Pairs(Vec::new());
    let mut bytes = Vec::new();
    bench(&mut c, &mut pairs, &mut bytes);
    c.final_summary();
    report(&pairs, &bytes);
}
