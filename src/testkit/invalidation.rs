//! Scenario group `invalidation`: munmap of whole, partial and many ranges (SPEC §5, DESIGN
//! invariant 2): nothing of the unmapped interval stays mapped or DMA-mapped, the ranges are
//! queued for the GC, the rest keeps working with its data.

use super::check::{at, mul, n, run, tag, Step, K64, M, M2, RW, T};
use super::{Backend, Report};
use crate::{Error, Result};

/// Run the `invalidation` group: each scenario against a fresh backend from `make`.
///
/// - `munmap_whole_range`: the first 2 MiB of a mapping with two faulted 2 MiB blocks is
///   unmapped: nothing mapped there, its ranges invalid and queued for the GC, the other block
///   still mapped and read without a fault; the next fault collects the queue; unmapping the
///   rest leaves no range, notifier, mapping or DMA mapping.
/// - `munmap_partial_range`: a 64 KiB hole punched into a faulted range: the whole range
///   loses its mappings, the next fault replaces it by ranges that avoid the hole, every
///   surviving value reaches the device intact, the hole faults.
/// - `munmap_many_ranges`: one munmap across many ranges while faults continue: exactly the
///   ranges hit are invalid and queued, others stay valid; survivors keep their data; ranges
///   unmapped one at a time are collected at the next fault.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_invalidation<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(&mut make, &mut r, "munmap_whole_range", munmap_whole::<B>);
    run(
        &mut make,
        &mut r,
        "munmap_partial_range",
        munmap_partial::<B>,
    );
    run(&mut make, &mut r, "munmap_many_ranges", munmap_many::<B>);
    r
}

fn munmap_whole<B: Backend>(t: &mut T<'_, B>) -> Step {
    let d = t.mmap(4 * M, RW)?;
    t.cpu_fill(d, at(d, 4 * M), K64, 0)?;
    t.dev_read_is("device read", 0, at(d, 8), 0)?;
    t.dev_read_is("device read", 0, at(d, M2 + 8), 0)?;
    let hit = t.ranges_in(0, d, at(d, M2));
    let Some(r0) = t.svm(0).find(d) else {
        return Err(t.fail("a range covers the faulted address", d, 1, 0));
    };
    let dma0 = t.dma(0);
    t.munmap(d, M2)?;
    t.is("unmapped range invalid", d, !t.svm(0).pages_valid(&r0))?;
    t.eq(
        "unmapped ranges queued for the GC",
        d,
        hit,
        n(t.svm(0).gc_pending()),
    )?;
    t.unmapped("nothing mapped in the unmapped interval", 0, d, at(d, M2))?;
    let other = t.mapped_in(0, at(d, M2), at(d, 2 * M2));
    t.is("the other block stays mapped", at(d, M2), other > 0)?;
    if !t.has_devmem(0) {
        let dma = t.dma(0);
        t.is(
            "DMA mappings of the interval gone",
            d,
            dma > 0 && dma < dma0,
        )?;
    }
    // The other range works without a fault (and so without running the GC).
    let faults = t.svm(0).stats().faults;
    let x = at(d, M2);
    t.dev_read_is("device read of the other block", 0, x, tag(x, 0))?;
    t.eq(
        "no fault in the other block",
        x,
        n(faults),
        n(t.svm(0).stats().faults),
    )?;
    t.eq("GC queue untouched", d, hit, n(t.svm(0).gc_pending()))?;
    // A fault runs the GC first; the address itself has no VMA any more.
    let r = t.try_dev_read(0, at(d, 8))?;
    t.err("device read of unmapped memory", d, r, Error::Fault)?;
    t.eq("GC ran at the fault", d, 0, n(t.svm(0).gc_pending()))?;
    t.is(
        "collected range removed",
        d,
        !r0.is_linked() && t.svm(0).find(d).is_none(),
    )?;
    let st = t.svm(0).stats();
    t.eq("GC counted the collected ranges", d, hit, n(st.gc_ranges))?;
    t.eq("removals counted", d, hit, n(st.ranges_removed))?;
    // Unmapping the rest removes the last ranges and their notifier.
    let rest = t.ranges_in(0, at(d, M2), at(d, 4 * M));
    t.munmap(at(d, M2), M2)?;
    let collected = t.svm(0).gc_run();
    t.sane()?;
    t.eq("gc_run collects the rest", d, rest, n(collected))?;
    let (notifiers, ranges) = t.svm(0).counts();
    t.eq("no range left", d, 0, n(ranges))?;
    t.eq("no notifier left", d, 0, n(notifiers))?;
    t.eq("no device mapping left", d, 0, t.b.mapped_pages(0))?;
    t.eq("no DMA mapping left", d, 0, t.dma(0))?;
    if t.has_devmem(0) {
        t.eq(
            "device memory returned",
            d,
            0,
            t.b.device_pages_in_use(0).unwrap_or(0),
        )?;
    }
    Ok(())
}

fn munmap_partial<B: Backend>(t: &mut T<'_, B>) -> Step {
    let d = t.mmap(4 * M, RW)?;
    t.cpu_fill(d, at(d, M2), 16 << 10, 0)?;
    t.dev_read_is("device read", 0, d, tag(d, 0))?;
    let Some(r) = t.svm(0).find(d) else {
        return Err(t.fail("a range covers the faulted address", d, 1, 0));
    };
    let (rs, re) = (r.start(), r.end());
    // Punch a 64 KiB hole into the range (its middle, or past it if it is small).
    let hole = if r.size() > 2 * K64 {
        at(rs, (r.size() / 2) & !(K64 - 1))
    } else {
        re
    };
    let inside = hole < re;
    t.munmap(hole, K64)?;
    if inside {
        t.is(
            "partly unmapped range invalid",
            rs,
            !t.svm(0).pages_valid(&r),
        )?;
        t.is(
            "partly unmapped range queued",
            rs,
            t.svm(0).gc_pending() >= 1,
        )?;
        t.unmapped("partly unmapped range: nothing mapped", 0, rs, re)?;
        if !t.has_devmem(0) {
            t.eq("partly unmapped range: no DMA mapping", rs, 0, t.dma(0))?;
        }
    }
    // The next fault (in the surviving part) removes the old range and creates a new one.
    t.dev_read_is("device read of a survivor", 0, at(d, 8), 0)?;
    t.eq("GC ran at the fault", d, 0, n(t.svm(0).gc_pending()))?;
    if inside {
        t.is("old range removed", rs, !r.is_linked())?;
    }
    let r2 = t.try_dev_read(0, at(hole, 8))?;
    t.err("device read in the hole", hole, r2, Error::Fault)?;
    t.dev_read_is("device read after the hole", 0, at(hole, K64 + 8), 0)?;
    t.range_ok(0, at(hole, K64), at(hole, K64), at(d, 4 * M))?;
    t.dev_read_is(
        "device read before the hole",
        0,
        at(hole, 0u64.wrapping_sub(8)),
        0,
    )?;
    t.range_ok(0, at(hole, 0u64.wrapping_sub(8)), d, hole)?;
    t.eq(
        "no range overlaps the hole",
        hole,
        0,
        t.ranges_in(0, hole, at(hole, K64)),
    )?;
    // Every value of the surviving part reaches the device intact.
    let mut x = d;
    while x < at(d, M2) {
        if x < hole || x >= at(hole, K64) {
            t.dev_read_is("surviving value on the device", 0, x, tag(x, 0))?;
        }
        x = at(x, 16 << 10);
    }
    t.eq(
        "no range overlaps the hole",
        hole,
        0,
        t.ranges_in(0, hole, at(hole, K64)),
    )
}

fn munmap_many<B: Backend>(t: &mut T<'_, B>) -> Step {
    let d = t.mmap(4 * M, RW)?;
    t.cpu_fill(d, at(d, 4 * M), 16 << 10, 0)?;
    for i in 0..64u64 {
        t.dev_read_is("device read", 0, at(at(d, mul(i, K64)), 8), 0)?;
    }
    let lo = at(d, 10 * K64 + (32 << 10));
    let hi = at(d, 40 * K64 + (16 << 10));
    let hit = t.ranges_in(0, lo, hi);
    t.munmap(lo, hi.wrapping_sub(lo))?;
    t.eq(
        "every range hit is queued",
        lo,
        hit,
        n(t.svm(0).gc_pending()),
    )?;
    for i in 0..64u64 {
        let x = at(d, mul(i, K64));
        let Some(r) = t.svm(0).find(x) else {
            return Err(t.fail("a range covers every faulted address", x, 1, 0));
        };
        let was_hit = r.start() < hi && lo < r.end();
        t.eq(
            "pages valid unless hit",
            x,
            u64::from(!was_hit),
            u64::from(t.svm(0).pages_valid(&r)),
        )?;
        if was_hit {
            t.unmapped("range hit: nothing mapped", 0, r.start(), r.end())?;
        }
    }
    // Faults continue: a fresh buffer faults in, and its fault runs the GC.
    let e = t.mmap(M2, RW)?;
    t.dev_write(0, e, 1)?;
    t.eq("GC ran at the fault", e, 0, n(t.svm(0).gc_pending()))?;
    t.eq("no range overlaps the hole", lo, 0, t.ranges_in(0, lo, hi))?;
    // Survivors refault with their data; the hole faults.
    let before = at(d, 10 * K64);
    t.dev_read_is("survivor before the hole", 0, before, tag(before, 0))?;
    t.dev_read_is("survivor after the hole", 0, hi, tag(hi, 0))?;
    let r = t.try_dev_read(0, at(hi, 0u64.wrapping_sub(8)))?;
    t.err("device read in the hole", hi, r, Error::Fault)?;
    // Unmap one 64 KiB block at a time while faulting around it.
    for k in 0..8u64 {
        let gone = at(d, mul(at(45, mul(2, k)), K64));
        let kept = at(gone, K64);
        let hit = t.ranges_in(0, gone, kept);
        t.munmap(gone, K64)?;
        t.eq(
            "ranges of the unmapped block queued",
            gone,
            hit,
            n(t.svm(0).gc_pending()),
        )?;
        t.unmapped("unmapped block: nothing mapped", 0, gone, kept)?;
        t.dev_read_is("neighbour keeps its data", 0, kept, tag(kept, 0))?;
        let r = t.try_dev_read(0, at(gone, 8))?;
        t.err("device read of the unmapped block", gone, r, Error::Fault)?;
        t.eq("GC ran at the fault", gone, 0, n(t.svm(0).gc_pending()))?;
        t.is(
            "no range in the unmapped block",
            gone,
            t.svm(0).find(gone).is_none(),
        )?;
    }
    // A fresh mapping gives fresh zeroes.
    let f = t.mmap(M2, RW)?;
    t.dev_read_is("fresh memory reads zero", 0, at(f, 8), 0)?;
    t.dev_write(0, f, 77)?;
    t.cpu_read_is("CPU read of a device write", f, 77)
}
