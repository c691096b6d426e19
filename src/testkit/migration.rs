//! Scenario group `migration`: ranges migrate into device memory at device faults and back to
//! system memory at CPU touches, evictions and unmaps (SPEC §4, §7; DESIGN invariants 4, 5).
//! Skipped for a device without memory or one that does not prefer it
//! ([`SvmConfig::prefer_devmem`](crate::SvmConfig::prefer_devmem)).

use super::check::{at, mul, n, run, Step, K64, M, M2, RW, T};
use super::{Backend, PageKind, Report};
use crate::{Error, Result};

/// Run the `migration` group: each scenario against a fresh backend from `make`.
///
/// - `roundtrip`: device faults migrate the ranges into device memory (mapped as local pages,
///   one migration per range, untouched pages zero-filled); device writes; CPU reads bring the
///   pages back with their data; ping-pong between CPU and device; a partial munmap of a
///   device-resident range keeps the rest's data; after unmapping everything no device page
///   and no allocation is left.
/// - `evict`: [`Svm::evict`](crate::Svm::evict) moves a device-resident range back to system
///   memory with its data and returns the device pages.
/// - `cpu_touch_returns_device_memory`: CPU reads of every page of device-resident ranges
///   return all device memory.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_migration<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(&mut make, &mut r, "roundtrip", roundtrip::<B>);
    run(&mut make, &mut r, "evict", evict::<B>);
    run(
        &mut make,
        &mut r,
        "cpu_touch_returns_device_memory",
        cpu_touch::<B>,
    );
    r
}

/// Skip unless device 0 has memory and prefers it.
fn need_devmem<B: Backend>(t: &T<'_, B>) -> Step {
    t.need(t.has_devmem(0) && t.svm(0).config().prefer_devmem)
}

fn in_use<B: Backend>(t: &T<'_, B>) -> u64 {
    t.b.device_pages_in_use(0).unwrap_or(0)
}

fn roundtrip<B: Backend>(t: &mut T<'_, B>) -> Step {
    need_devmem(t)?;
    let a = t.mmap(4 * M, RW)?;
    for i in 0..64u64 {
        t.cpu_write(at(a, mul(i, K64)), at(i, 1))?;
    }
    for i in 0..64u64 {
        let x = at(a, mul(i, K64));
        t.dev_read_is("device read of a CPU-written value", 0, x, at(i, 1))?;
        t.mapped_as("faulted page in device memory", 0, x, PageKind::Local)?;
    }
    let ranges = t.ranges_in(0, a, at(a, 4 * M));
    let st = t.svm(0).stats();
    t.eq(
        "one migration per range",
        a,
        ranges,
        n(st.migrations_to_devmem),
    )?;
    t.is("device pages in use", a, in_use(t) > 0)?;
    // Untouched words were zero-filled.
    t.dev_read_is("zero-filled word", 0, at(a, 8), 0)?;
    t.dev_write(0, at(a, 16), 0xdead)?;
    // The CPU reads: pages come back.
    t.cpu_read_is("CPU read of a device write", at(a, 16), 0xdead)?;
    t.cpu_read_is("CPU read of a migrated value", at(a, K64), 2)?;
    let k = t.kind(0, a);
    t.is(
        "a CPU-touched page is no longer device-local",
        a,
        k != Some(PageKind::Local),
    )?;
    // Ping-pong.
    for round in 0..5u64 {
        t.dev_write(0, at(a, 24), round)?;
        t.cpu_read_is("CPU read of a device write (ping-pong)", at(a, 24), round)?;
        t.cpu_write(at(a, 32), mul(round, 7))?;
        t.dev_read_is(
            "device read of a CPU write (ping-pong)",
            0,
            at(a, 32),
            mul(round, 7),
        )?;
    }
    // Partial munmap of a device-resident range: the rest keeps its data.
    t.dev_read_is("device read", 0, at(a, M2), 33)?;
    t.munmap(at(a, 3 * M), M)?;
    t.unmapped(
        "nothing mapped in the unmapped interval",
        0,
        at(a, 3 * M),
        at(a, 4 * M),
    )?;
    t.dev_read_is("device read after a partial munmap", 0, at(a, M2), 33)?;
    t.cpu_read_is("CPU read after a partial munmap", at(a, M2 + K64), 34)?;
    t.munmap(a, 4 * M)?;
    let r = t.try_dev_read(0, a)?;
    t.err("device read of unmapped memory", a, r, Error::Fault)?;
    t.eq("device memory returned", a, 0, in_use(t))?;
    if let Some(pm) = t.svm(0).pagemap() {
        t.eq("no live allocation", a, 0, n(pm.live_allocations()))?;
    }
    t.svm(0).close();
    t.sane()?;
    t.eq("nothing mapped after close", a, 0, t.b.mapped_pages(0))?;
    t.eq("no DMA mapping after close", a, 0, t.dma(0))
}

fn evict<B: Backend>(t: &mut T<'_, B>) -> Step {
    need_devmem(t)?;
    let a = t.mmap(M2, RW)?;
    t.cpu_write(a, 1)?;
    t.dev_read_is("device read", 0, a, 1)?;
    t.dev_write(0, at(a, K64), 2)?;
    t.mapped_as("faulted page in device memory", 0, a, PageKind::Local)?;
    let Some(r) = t.svm(0).find(a) else {
        return Err(t.fail("a range covers the faulted address", a, 1, 0));
    };
    let res = t.svm(0).evict(&r);
    t.ok("evict", a, res)?;
    t.sane()?;
    t.eq("device memory returned", a, 0, in_use(t))?;
    let k = t.kind(0, a);
    t.is(
        "evicted page not device-local",
        a,
        k != Some(PageKind::Local),
    )?;
    t.is(
        "eviction counted",
        a,
        t.svm(0).stats().migrations_to_ram > 0,
    )?;
    t.cpu_read_is("CPU read after evict", a, 1)?;
    t.cpu_read_is("CPU read after evict", at(a, K64), 2)?;
    t.dev_read_is("device read after evict", 0, at(a, K64), 2)
}

fn cpu_touch<B: Backend>(t: &mut T<'_, B>) -> Step {
    need_devmem(t)?;
    let a = t.mmap(2 * M2, RW)?;
    for i in 0..32u64 {
        t.dev_write(0, at(a, mul(i, 2 * K64)), i)?;
    }
    t.is("device pages in use", a, in_use(t) > 0)?;
    for i in 0..32u64 {
        t.cpu_read_is("CPU read of a device write", at(a, mul(i, 2 * K64)), i)?;
    }
    t.eq("device memory returned after CPU reads", a, 0, in_use(t))?;
    if let Some(pm) = t.svm(0).pagemap() {
        t.eq("no live allocation", a, 0, n(pm.live_allocations()))?;
    }
    Ok(())
}
