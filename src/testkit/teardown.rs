//! Scenario group `teardown`: `close` with live ranges (SPEC §1; DESIGN invariants 3, 5):
//! nothing mapped, no live DMA mapping, every later call that needs the instance fails with
//! `Closed`, the CPU carries on with its data.

use super::check::{at, mul, n, run, tag, Step, K64, M, M2, P, RW, T};
use super::{Backend, Report};
use crate::policy::{AttrUpdate, PreferredLoc, PrefetchLoc};
use crate::{Access, Error, PagesCtx, Result, Window};

/// Run the `teardown` group: each scenario against a fresh backend from `make`.
///
/// - `close_with_live_mappings`: three mappings with faulted ranges (in device memory where the
///   device has some) and one range waiting in the GC queue; `close` removes every range and
///   notifier, maps and DMA-maps nothing; every later call that needs the instance fails with
///   `Closed` and maps nothing; the CPU keeps its data and its invalidations no longer reach
///   the instance; `close` is idempotent; unmapping everything returns all device memory.
/// - `close_unused`: closing an instance that never faulted; later faults fail with `Closed`.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_teardown<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(
        &mut make,
        &mut r,
        "close_with_live_mappings",
        close_live::<B>,
    );
    run(&mut make, &mut r, "close_unused", close_unused::<B>);
    r
}

fn close_live<B: Backend>(t: &mut T<'_, B>) -> Step {
    let d = t.mmap(8 * M, RW)?;
    let h = t.mmap(4 * M, RW)?;
    let small = t.mmap(M2, RW)?;
    t.cpu_fill(d, at(d, 8 * M), K64, 0)?;
    for i in 0..4u64 {
        let x = at(at(d, mul(i, M2)), 8);
        t.dev_read_is("device read", 0, x, 0)?;
    }
    t.dev_write(0, at(h, 8), 1)?;
    t.dev_write(0, small, 2)?;
    // One range is unmapped and waits in the GC queue.
    let x3 = at(d, 3 * M2 + 8);
    let Some(r3) = t.svm(0).find(x3) else {
        return Err(t.fail("a range covers the faulted address", x3, 1, 0));
    };
    t.munmap(r3.start(), P)?;
    t.eq("one range queued", d, 1, n(t.svm(0).gc_pending()))?;
    let Some(kept) = t.svm(0).find(d) else {
        return Err(t.fail("a range covers the faulted address", d, 1, 0));
    };
    t.is("device mappings live", d, t.b.mapped_pages(0) > 0)?;
    if !t.has_devmem(0) {
        t.is("DMA mappings live", d, t.dma(0) > 0)?;
    }
    let created = t.svm(0).stats().ranges_created;
    t.is("ranges created", d, created > 0)?;

    t.svm(0).close();
    t.sane()?;
    t.is("closed", d, t.svm(0).is_closed())?;
    t.eq("GC queue drained", d, 0, n(t.svm(0).gc_pending()))?;
    t.eq("no range left", d, 0, n(t.svm(0).counts().1))?;
    t.eq("no notifier left", d, 0, n(t.svm(0).counts().0))?;
    t.is(
        "no range found",
        d,
        t.svm(0).find(d).is_none() && !kept.is_linked(),
    )?;
    t.eq(
        "every range removed",
        d,
        n(created),
        n(t.svm(0).stats().ranges_removed),
    )?;
    t.eq("nothing mapped after close", d, 0, t.b.mapped_pages(0))?;
    t.eq("no DMA mapping after close", d, 0, t.dma(0))?;

    // Every later call that needs the instance fails with Closed and maps nothing.
    let r = t.try_dev_read(0, at(d, 8))?;
    t.err("device read after close", d, r, Error::Closed)?;
    let r = t.try_dev_write(0, h, 3)?;
    t.err("device write after close", h, r, Error::Closed)?;
    let ctx = PagesCtx::default();
    let r = t.svm(0).find_or_insert(d, Window::ALL, &ctx).map(|_| ());
    t.err("find_or_insert after close", d, r, Error::Closed)?;
    let r = t.svm(0).get_pages(&kept, &ctx);
    t.err("get_pages after close", d, r, Error::Closed)?;
    let mut called = false;
    let r = t.svm(0).bind(&kept, |_, _| called = true);
    t.err("bind after close", d, r, Error::Closed)?;
    t.is("bind callback not called after close", d, !called)?;
    let r = t
        .svm(0)
        .handle_fault(h, Access::Atomic, Window::ALL)
        .map(|_| ());
    t.err("handle_fault after close", h, r, Error::Closed)?;
    let u = AttrUpdate {
        preferred: Some(PreferredLoc::System),
        ..AttrUpdate::default()
    };
    let r = t.svm(0).set_attrs(d, M2, &u);
    t.err("set_attrs after close", d, r, Error::Closed)?;
    let r = t.svm(0).prefetch(d, M2, PrefetchLoc::System);
    t.err("prefetch after close", d, r, Error::Closed)?;
    t.is(
        "pages not valid after close",
        d,
        !t.svm(0).pages_valid(&kept),
    )?;
    t.eq("gc_run after close", d, 0, n(t.svm(0).gc_run()))?;
    t.eq("nothing mapped", d, 0, t.b.mapped_pages(0))?;
    t.eq("no DMA mapping", d, 0, t.dma(0))?;

    // The CPU carries on; its invalidations no longer reach the closed instance.
    let inv = t.svm(0).stats().invalidations;
    t.cpu_write(at(d, 8), 9)?;
    t.munmap(d, M2)?;
    t.cpu_read_is("CPU data kept after close", at(d, M2), tag(at(d, M2), 0))?;
    t.cpu_read_is("CPU data kept after close", at(h, 8), 1)?;
    t.cpu_read_is("CPU data kept after close", small, 2)?;
    t.eq(
        "no invalidation reaches a closed instance",
        d,
        n(inv),
        n(t.svm(0).stats().invalidations),
    )?;
    // close is idempotent.
    t.svm(0).close();
    t.sane()?;
    t.is("still closed", d, t.svm(0).is_closed())?;
    t.eq("nothing mapped", d, 0, t.b.mapped_pages(0))?;
    // Unmapping the rest returns every device page.
    t.munmap(at(d, M2), 8 * M - M2)?;
    t.munmap(h, 4 * M)?;
    t.munmap(small, M2)?;
    if t.has_devmem(0) {
        t.eq(
            "device memory returned",
            d,
            0,
            t.b.device_pages_in_use(0).unwrap_or(0),
        )?;
    }
    t.eq("no DMA mapping at the end", d, 0, t.dma(0))?;
    Ok(())
}

fn close_unused<B: Backend>(t: &mut T<'_, B>) -> Step {
    t.svm(0).close();
    t.sane()?;
    t.is("closed", 0, t.svm(0).is_closed())?;
    t.eq("no range", 0, 0, n(t.svm(0).counts().1))?;
    let addr = t.svm(0).config().mm_start;
    t.fault_err(
        "device fault after close",
        0,
        addr,
        Access::Read,
        Error::Closed,
    )?;
    t.eq("nothing mapped", 0, 0, t.b.mapped_pages(0))?;
    t.svm(0).close();
    t.is("close is idempotent", 0, t.svm(0).is_closed())
}
