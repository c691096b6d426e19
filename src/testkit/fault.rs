//! Scenario group `fault`: first-touch device faults (SPEC §3, §9), the ranges they create,
//! and CPU/device coherence.

use super::check::{at, mul, n, run, tag, Step, K64, M, M2, P, RW, T};
use super::{Backend, Report};
use crate::{Access, Error, Result};

/// Run the `fault` group: each scenario against a fresh backend from `make`.
///
/// - `first_touch`: the CPU writes every 64 KiB of a 4 MiB mapping; the device reads every
///   value back through faults, each faulted address is mapped, its range lies inside the VMA
///   with a configured chunk size; device writes reach the CPU; on a device without memory
///   every mapped page is DMA-mapped.
/// - `vma_edges`: a 3-page VMA (a 4-page one whose last page is unmapped): ranges stay inside
///   it; a fault just past its end fails with `Fault` and creates nothing.
/// - `no_refault_in_a_mapped_range`: the other pages of a mapped range are reached without
///   another fault.
/// - `coherence`: interleaved CPU and device writes are seen by the other side; on a device
///   without memory, without any further fault or invalidation.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_fault<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(&mut make, &mut r, "first_touch", first_touch::<B>);
    run(&mut make, &mut r, "vma_edges", vma_edges::<B>);
    run(
        &mut make,
        &mut r,
        "no_refault_in_a_mapped_range",
        no_refault::<B>,
    );
    run(&mut make, &mut r, "coherence", coherence::<B>);
    r
}

fn first_touch<B: Backend>(t: &mut T<'_, B>) -> Step {
    let len = 4 * M;
    let a = t.mmap(len, RW)?;
    for i in 0..64u64 {
        t.cpu_write(at(a, mul(i, K64)), at(i, 1))?;
    }
    for i in 0..64u64 {
        let x = at(a, mul(i, K64));
        t.dev_read_is("device read of a CPU-written value", 0, x, at(i, 1))?;
        t.is("faulted address mapped", x, t.pte(0, x).is_some())?;
        t.range_ok(0, x, a, at(a, len))?;
    }
    let (notifiers, ranges) = t.svm(0).counts();
    t.is(
        "ranges and a notifier exist",
        a,
        ranges > 0 && notifiers > 0,
    )?;
    let st = t.svm(0).stats();
    t.eq(
        "ranges created = ranges live",
        a,
        n(ranges),
        n(st.ranges_created),
    )?;
    t.is("faults counted", a, st.faults > 0 && st.faults_read > 0)?;
    if !t.has_devmem(0) {
        let mapped = t.b.mapped_pages(0);
        let dma = t.dma(0);
        t.is(
            "mapped system pages are DMA-mapped",
            a,
            dma > 0 && dma <= mapped,
        )?;
    }
    // A never-written word of a faulted page reads zero.
    t.dev_read_is("device read of an untouched word", 0, at(a, 8), 0)?;
    t.dev_write(0, at(a, 16), 0xdead)?;
    t.cpu_read_is("CPU read of a device write", at(a, 16), 0xdead)?;
    t.cpu_read_is("CPU read after device reads", at(a, K64), 2)
}

fn vma_edges<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(M2, RW)?;
    // Leave a 3-page VMA followed by a hole.
    t.munmap(at(a, 3 * P), M2 - 3 * P)?;
    t.dev_read_is("device read of fresh memory", 0, at(a, 8), 0)?;
    t.range_ok(0, a, a, at(a, 3 * P))?;
    t.dev_write(0, at(a, 2 * P + 16), 7)?;
    t.range_ok(0, at(a, 2 * P), a, at(a, 3 * P))?;
    t.cpu_read_is("CPU read of a device write", at(a, 2 * P + 16), 7)?;
    let before = t.svm(0).counts();
    let r = t.try_dev_read(0, at(a, 3 * P))?;
    t.err(
        "device read just past the VMA end",
        at(a, 3 * P),
        r,
        Error::Fault,
    )?;
    let after = t.svm(0).counts();
    t.eq(
        "no range created by a failed fault",
        a,
        n(before.1),
        n(after.1),
    )?;
    t.is(
        "past the end: nothing mapped",
        at(a, 3 * P),
        t.pte(0, at(a, 3 * P)).is_none(),
    )?;
    let st = t.svm(0).stats();
    t.is(
        "read and write faults counted",
        a,
        st.faults_read > 0 && st.faults_write > 0,
    )
}

fn no_refault<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(4 * M, RW)?;
    let x = at(a, M2 + 8);
    t.dev_read_is("device read of fresh memory", 0, x, 0)?;
    let Some(r) = t.svm(0).find(x) else {
        return Err(t.fail("a range covers the faulted address", x, 1, 0));
    };
    let (start, step) = (r.start(), (r.size() / 16).max(P));
    let faults = t.svm(0).stats().faults;
    for i in 0..16u64 {
        let y = at(start, mul(i, step));
        if r.contains(y) {
            t.dev_read_is("device read inside a mapped range", 0, y, 0)?;
        }
    }
    t.eq(
        "no fault inside a mapped range",
        x,
        n(faults),
        n(t.svm(0).stats().faults),
    )
}

fn coherence<B: Backend>(t: &mut T<'_, B>) -> Step {
    let d = t.mmap(4 * M, RW)?;
    t.cpu_fill(d, at(d, M2), K64, 0)?;
    t.dev_read_is("device read of a CPU-written value", 0, d, tag(d, 0))?;
    for i in 0..32u64 {
        let a = at(at(d, mul(i, K64)), mul(8, i));
        let want = if i == 0 { tag(d, 0) } else { 0 };
        t.dev_read_is("device read of a CPU-written page", 0, a, want)?;
    }
    let st0 = t.svm(0).stats();
    for i in 0..32u64 {
        let a = at(at(d, mul(i, K64)), mul(8, i));
        t.cpu_write(a, tag(a, 1))?;
        t.dev_read_is("device sees a CPU write", 0, a, tag(a, 1))?;
        t.dev_write(0, at(a, 8), tag(at(a, 8), 2))?;
        t.cpu_read_is("CPU sees a device write", at(a, 8), tag(at(a, 8), 2))?;
    }
    if !t.has_devmem(0) {
        // System memory is shared: the one mapping serves every access.
        let st = t.svm(0).stats();
        t.eq("no further fault", d, n(st0.faults), n(st.faults))?;
        t.eq(
            "no invalidation",
            d,
            n(st0.invalidations),
            n(st.invalidations),
        )?;
    }
    // A read fault on a page the device already maps changes nothing.
    let r = t.b.device_fault(0, d, Access::Read);
    t.ok("repeated read fault", d, r)?;
    t.dev_read_is("device read after a repeated fault", 0, d, tag(d, 1))
}
