//! Scenario group `gc`: ranges queued by an unmap are collected at the next fault or by
//! `gc_run` (SPEC §6), and `remove` drops a range with everything it maps.

use super::check::{at, mul, n, run, Step, K64, M, M2, RW, T};
use super::{Backend, Report};
use crate::{Access, Error, Result};

/// Run the `gc` group: each scenario against a fresh backend from `make`.
///
/// - `collected_at_next_fault`: a partial munmap queues the ranges it hits; the next device
///   fault collects them; the unmapped address faults; other addresses keep working.
/// - `gc_run_collects_everything`: after unmapping everything, `gc_run` returns the number of
///   queued ranges and leaves no range, notifier, device mapping or DMA mapping; a second run
///   finds nothing.
/// - `remove_a_range`: `remove` drops a faulted range with its mappings and notifier; removing
///   it again fails.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_gc<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(
        &mut make,
        &mut r,
        "collected_at_next_fault",
        at_next_fault::<B>,
    );
    run(
        &mut make,
        &mut r,
        "gc_run_collects_everything",
        gc_run_all::<B>,
    );
    run(&mut make, &mut r, "remove_a_range", remove::<B>);
    r
}

fn at_next_fault<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(4 * M, RW)?;
    for i in 0..64u64 {
        t.cpu_write(at(a, mul(i, K64)), i)?;
    }
    for i in 0..64u64 {
        t.dev_read_is(
            "device read of a CPU-written value",
            0,
            at(a, mul(i, K64)),
            i,
        )?;
    }
    let hit = t.ranges_in(0, at(a, M), at(a, M2));
    t.munmap(at(a, M), M)?;
    t.eq("ranges hit are queued", a, hit, n(t.svm(0).gc_pending()))?;
    t.unmapped(
        "nothing mapped in the unmapped interval",
        0,
        at(a, M),
        at(a, M2),
    )?;
    // Any fault runs the GC first.
    let r = t.b.device_fault(0, a, Access::Read);
    t.ok("device fault next to the hole", a, r)?;
    t.sane()?;
    t.eq("GC ran at the fault", a, 0, n(t.svm(0).gc_pending()))?;
    t.dev_read_is("device read next to the hole", 0, a, 0)?;
    let r = t.try_dev_read(0, at(a, M))?;
    t.err(
        "device read of the unmapped interval",
        at(a, M),
        r,
        Error::Fault,
    )?;
    t.cpu_write(at(a, 3 * M), 99)?;
    t.dev_read_is("device read of a later CPU write", 0, at(a, 3 * M), 99)
}

fn gc_run_all<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(2 * M2, RW)?;
    t.dev_write(0, a, 1)?;
    t.dev_write(0, at(a, M2), 2)?;
    let ranges = n(t.svm(0).counts().1);
    t.munmap(a, 2 * M2)?;
    t.eq("every range queued", a, ranges, n(t.svm(0).gc_pending()))?;
    t.unmapped("nothing mapped after munmap", 0, a, at(a, 2 * M2))?;
    let collected = t.svm(0).gc_run();
    t.sane()?;
    t.eq(
        "gc_run returns the ranges collected",
        a,
        ranges,
        n(collected),
    )?;
    t.eq("no range left", a, 0, n(t.svm(0).counts().1))?;
    t.eq("no notifier left", a, 0, n(t.svm(0).counts().0))?;
    t.eq("no device mapping left", a, 0, t.b.mapped_pages(0))?;
    t.eq("no DMA mapping left", a, 0, t.dma(0))?;
    if t.has_devmem(0) {
        t.eq(
            "device memory returned",
            a,
            0,
            t.b.device_pages_in_use(0).unwrap_or(0),
        )?;
    }
    let again = t.svm(0).gc_run();
    t.eq("a second gc_run finds nothing", a, 0, n(again))?;
    t.eq(
        "stats count the collected ranges",
        a,
        ranges,
        n(t.svm(0).stats().gc_ranges),
    )
}

fn remove<B: Backend>(t: &mut T<'_, B>) -> Step {
    let d = t.mmap(M2, RW)?;
    t.dev_read_is("device read of fresh memory", 0, d, 0)?;
    let Some(r) = t.svm(0).find(d) else {
        return Err(t.fail("a range covers the faulted address", d, 1, 0));
    };
    let res = t.svm(0).remove(&r);
    t.ok("remove", d, res)?;
    t.sane()?;
    t.eq("no range left", d, 0, n(t.svm(0).counts().1))?;
    t.eq("no notifier left", d, 0, n(t.svm(0).counts().0))?;
    t.unmapped("nothing mapped after remove", 0, r.start(), r.end())?;
    t.eq("no DMA mapping after remove", d, 0, t.dma(0))?;
    t.is("removed range unlinked", d, !r.is_linked())?;
    let again = t.svm(0).remove(&r);
    t.is("a removed range cannot be removed again", d, again.is_err())?;
    t.svm(0).close();
    t.sane()?;
    t.eq("nothing left after close", d, 0, n(t.svm(0).counts().1))?;
    // The data is still the CPU's.
    t.cpu_read_is("CPU read after remove and close", d, 0)
}
