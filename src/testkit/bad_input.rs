//! Scenario group `bad_input`: bad requests fail with a typed error and change nothing (SPEC
//! §2; DESIGN invariant 8). Most need no memory, so they run against a backend whose CPU side
//! is a stub.

use super::check::{at, code, n, run, Step, M2, P, RO, T};
use super::{Backend, Report};
use crate::policy::{AtomicPolicy, AttrUpdate, PrefetchLoc, RawAttr};
use crate::stats::StatsSnapshot;
use crate::{Access, Error, PagesCtx, Result, Window};

/// Run the `bad_input` group: each scenario against a fresh backend from `make`.
///
/// - `fault_outside_the_window` (no memory needed): faults at addresses outside the mirrored
///   interval fail with `Invalid` before anything is counted or created.
/// - `fault_without_vma` (no memory needed; uses a hole made by `mmap` + `munmap` when the
///   backend has an `mmap`): `Fault`, nothing created or mapped.
/// - `bad_intervals` (no memory needed): `set_attrs`, `set_attrs_raw` and `prefetch` refuse
///   empty, unaligned, overflowing and out-of-window intervals, empty updates and undecodable
///   raw attributes with `Invalid`; attributes and counters unchanged.
/// - `foreign_range` (no memory needed): a range that is not in the tree is refused by
///   `remove`, `get_pages`, `bind` (callback not called), `unmap_pages` and `free_pages`.
/// - `read_only_vma`: device writes and atomics to a read-only VMA fail with `Perm`; reads
///   work through read-only entries.
/// - `calls_after_close` (no memory needed): every call needing the instance returns `Closed`.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself
/// (`foreign_range` allocates one range through the platform's host allocator).
pub fn run_bad_input<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(
        &mut make,
        &mut r,
        "fault_outside_the_window",
        outside_window::<B>,
    );
    run(&mut make, &mut r, "fault_without_vma", without_vma::<B>);
    run(&mut make, &mut r, "bad_intervals", bad_intervals::<B>);
    run(&mut make, &mut r, "foreign_range", foreign_range::<B>);
    run(&mut make, &mut r, "read_only_vma", read_only::<B>);
    run(&mut make, &mut r, "calls_after_close", after_close::<B>);
    r
}

/// Check that nothing was created, counted as a change or mapped since `before`.
fn unchanged<B: Backend>(
    t: &T<'_, B>,
    check: &'static str,
    addr: u64,
    before: &StatsSnapshot,
) -> Step {
    let now = t.svm(0).stats();
    t.eq(check, addr, n(before.ranges_created), n(now.ranges_created))?;
    t.eq(check, addr, n(before.attr_changes), n(now.attr_changes))?;
    t.eq(
        check,
        addr,
        n(before.pages_committed),
        n(now.pages_committed),
    )?;
    t.eq(check, addr, 0, n(t.svm(0).counts().1))?;
    t.eq(check, addr, 0, t.b.mapped_pages(0))?;
    t.eq(check, addr, 0, t.dma(0))
}

fn outside_window<B: Backend>(t: &mut T<'_, B>) -> Step {
    let before = t.svm(0).stats();
    let (start, end) = (t.svm(0).config().mm_start, t.svm(0).config().mm_end());
    let mut bad = [end, at(end, P), u64::MAX, !(P - 1), 0];
    if start == 0 {
        bad[4] = end; // no address below the window
    } else if let Some(below) = start.checked_sub(P) {
        bad[4] = below;
    }
    for addr in bad {
        for access in [Access::Read, Access::Write, Access::Atomic] {
            t.fault_err(
                "fault outside the mirrored interval",
                0,
                addr,
                access,
                Error::Invalid,
            )?;
        }
    }
    t.eq(
        "nothing counted",
        0,
        n(before.faults),
        n(t.svm(0).stats().faults),
    )?;
    unchanged(
        t,
        "nothing changed by faults outside the window",
        0,
        &before,
    )
}

fn without_vma<B: Backend>(t: &mut T<'_, B>) -> Step {
    let addr = match t.b.mmap(M2, RO) {
        Ok(a) => {
            t.munmap(a, M2)?;
            a
        }
        Err(Error::NotSupported) => {
            // A page in the middle of the window: a stub address space has no VMA anywhere.
            let c = t.svm(0).config();
            at(
                c.mm_start,
                (c.mm_end().wrapping_sub(c.mm_start) / 2) & !(M2 - 1),
            )
        }
        Err(e) => return Err(t.failed_call("mmap", 0, e)),
    };
    t.sane()?;
    let before = t.svm(0).stats();
    t.fault_err(
        "read fault without a VMA",
        0,
        addr,
        Access::Read,
        Error::Fault,
    )?;
    t.fault_err(
        "write fault without a VMA",
        0,
        at(addr, P),
        Access::Write,
        Error::Fault,
    )?;
    t.is("nothing mapped", addr, t.pte(0, addr).is_none())?;
    unchanged(t, "nothing changed by faults without a VMA", addr, &before)
}

fn bad_intervals<B: Backend>(t: &mut T<'_, B>) -> Step {
    let before = t.svm(0).stats();
    let c = t.svm(0).config();
    let (start, end) = (c.mm_start, c.mm_end());
    let a = at(start, M2);
    let attrs0 = t.svm(0).attrs_at(a);
    let u = AttrUpdate {
        atomic: Some(AtomicPolicy::Device),
        ..AttrUpdate::default()
    };
    let bad: [(u64, u64); 7] = [
        (a, 0),                       // empty
        (at(a, 8), P),                // unaligned start
        (a, at(P, 8)),                // unaligned length
        (!(P - 1), 2 * P),            // overflows
        (end, P),                     // past the window
        (end.wrapping_sub(P), 2 * P), // straddles the window's end
        (start.wrapping_sub(P), P),   // below the window (or wraps)
    ];
    for (s, len) in bad {
        let r = t.svm(0).set_attrs(s, len, &u);
        t.err("set_attrs of a bad interval", s, r, Error::Invalid)?;
        let r = t.svm(0).prefetch(s, len, PrefetchLoc::System);
        t.err("prefetch of a bad interval", s, r, Error::Invalid)?;
        t.sane()?;
    }
    let r = t.svm(0).set_attrs(a, P, &AttrUpdate::default());
    t.err("set_attrs of an empty update", a, r, Error::Invalid)?;
    let raw_bad = [
        RawAttr {
            kind: 9,
            value: 0,
            reserved: 0,
        },
        RawAttr {
            kind: 0,
            value: 1,
            reserved: 4,
        },
        RawAttr {
            kind: 2,
            value: 99,
            reserved: 0,
        },
        RawAttr {
            kind: 0,
            value: 2 + 0xffff,
            reserved: 0,
        },
    ];
    for raw in raw_bad {
        let r = t.svm(0).set_attrs_raw(
            a,
            P,
            &[
                RawAttr {
                    kind: 2,
                    value: 1,
                    reserved: 0,
                },
                raw,
            ],
        );
        t.err("set_attrs_raw with a bad entry", a, r, Error::Invalid)?;
    }
    t.sane()?;
    t.is("attributes unchanged", a, t.svm(0).attrs_at(a) == attrs0)?;
    unchanged(t, "nothing changed by bad intervals", a, &before)
}

fn foreign_range<B: Backend>(t: &mut T<'_, B>) -> Step {
    let before = t.svm(0).stats();
    let a = at(t.svm(0).config().mm_start, M2);
    let r = crate::Range::<<B::P as crate::platform::Platform>::Host>::with_host(a, at(a, M2));
    let r = t.ok("Range::with_host", a, r)?;
    let res = t.svm(0).remove(&r);
    t.err("remove of a foreign range", a, res, Error::Invalid)?;
    let res = t.svm(0).get_pages(&r, &PagesCtx::default());
    t.err("get_pages of a foreign range", a, res, Error::Invalid)?;
    let mut called = false;
    let res = t.svm(0).bind(&r, |_, _| called = true);
    t.err("bind of a foreign range", a, res, Error::Invalid)?;
    t.is("bind callback not called", a, !called)?;
    let res = t.svm(0).unmap_pages(&r);
    t.err("unmap_pages of a foreign range", a, res, Error::Invalid)?;
    let res = t.svm(0).free_pages(&r);
    t.err("free_pages of a foreign range", a, res, Error::Invalid)?;
    t.is(
        "pages of a foreign range not valid",
        a,
        !t.svm(0).pages_valid(&r),
    )?;
    t.is("foreign range still unlinked", a, !r.is_linked())?;
    t.sane()?;
    unchanged(t, "nothing changed by a foreign range", a, &before)
}

fn read_only<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(M2, RO)?;
    t.dev_read_is("device read of a read-only VMA", 0, at(a, 8), 0)?;
    let writable = t.pte(0, a).map(|p| p.writable);
    t.eq("read-only entry", a, 0, u64::from(writable == Some(true)))?;
    t.fault_err(
        "write fault on a read-only VMA",
        0,
        a,
        Access::Write,
        Error::Perm,
    )?;
    t.fault_err(
        "atomic fault on a read-only VMA",
        0,
        a,
        Access::Atomic,
        Error::Perm,
    )?;
    let r = t.try_dev_write(0, at(a, 8), 3)?;
    t.err("device write to a read-only VMA", a, r, Error::Perm)?;
    let r = t.b.cpu_write(at(a, 8), 4);
    t.sane()?;
    t.err("CPU write to a read-only VMA", a, r, Error::Perm)?;
    t.dev_read_is("device read after refused writes", 0, at(a, 8), 0)?;
    t.cpu_read_is("CPU read after refused writes", at(a, 8), 0)?;
    let _ = code(Error::Perm);
    Ok(())
}

fn after_close<B: Backend>(t: &mut T<'_, B>) -> Step {
    t.svm(0).close();
    t.sane()?;
    let a = at(t.svm(0).config().mm_start, M2);
    for access in [Access::Read, Access::Write, Access::Atomic] {
        t.fault_err("device fault after close", 0, a, access, Error::Closed)?;
        let r = t.svm(0).handle_fault(a, access, Window::ALL).map(|_| ());
        t.err("handle_fault after close", a, r, Error::Closed)?;
    }
    let r = t
        .svm(0)
        .find_or_insert(a, Window::ALL, &PagesCtx::default())
        .map(|_| ());
    t.err("find_or_insert after close", a, r, Error::Closed)?;
    let u = AttrUpdate {
        atomic: Some(AtomicPolicy::Cpu),
        ..AttrUpdate::default()
    };
    let r = t.svm(0).set_attrs(a, P, &u);
    t.err("set_attrs after close", a, r, Error::Closed)?;
    let r = t.svm(0).set_attrs_raw(
        a,
        P,
        &[RawAttr {
            kind: 2,
            value: 1,
            reserved: 0,
        }],
    );
    t.err("set_attrs_raw after close", a, r, Error::Closed)?;
    let r = t.svm(0).prefetch(a, P, PrefetchLoc::System);
    t.err("prefetch after close", a, r, Error::Closed)?;
    t.eq("gc_run after close", a, 0, n(t.svm(0).gc_run()))?;
    t.eq("nothing mapped", a, 0, t.b.mapped_pages(0))?;
    t.eq("no DMA mapping", a, 0, t.dma(0))
}
