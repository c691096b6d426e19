//! Scenario group `attributes`: the policy interface (SPEC §8): `set_attrs` and what it does to
//! mapped ranges, `prefetch`, the preferred location, the atomic policy.

use super::check::{at, n, run, Step, K64, M2, RW, T};
use super::{Backend, PageKind, Report};
use crate::policy::{AtomicPolicy, AttrUpdate, PreferredLoc, PrefetchLoc};
use crate::{Access, Error, Result};

/// Run the `attributes` group: each scenario against a fresh backend from `make`.
///
/// - `set_attrs_refaults`: changing an attribute over a mapped range clears its device
///   mappings (the data stays and the next access refaults); `attrs_at` reports the new value;
///   setting the same value again changes nothing and keeps the mappings.
/// - `prefetch`: `prefetch` to system memory creates the ranges without a device fault; with
///   device memory, to the device moves the pages there (and back with `System`).
/// - `preferred_system` (device memory): with the preferred location `System` a faulting range
///   stays in system memory; preferring the device again migrates it at the next fault.
/// - `atomic_policy`: `Cpu` refuses device atomic faults with `Access`; with device memory,
///   `Device` serves them from device memory.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_attributes<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(
        &mut make,
        &mut r,
        "set_attrs_refaults",
        set_attrs_refaults::<B>,
    );
    run(&mut make, &mut r, "prefetch", prefetch::<B>);
    run(&mut make, &mut r, "preferred_system", preferred_system::<B>);
    run(&mut make, &mut r, "atomic_policy", atomic_policy::<B>);
    r
}

fn update(atomic: Option<AtomicPolicy>, preferred: Option<PreferredLoc>) -> AttrUpdate {
    AttrUpdate {
        atomic,
        preferred,
        ..AttrUpdate::default()
    }
}

fn set<B: Backend>(t: &mut T<'_, B>, a: u64, len: u64, u: &AttrUpdate) -> Step {
    let r = t.svm(0).set_attrs(a, len, u);
    t.ok("set_attrs", a, r)?;
    t.sane()
}

fn set_attrs_refaults<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(M2, RW)?;
    t.cpu_write(at(a, 8), 3)?;
    t.dev_read_is("device read", 0, at(a, 8), 3)?;
    let changes = t.svm(0).stats().attr_changes;
    let u = update(Some(AtomicPolicy::Cpu), None);
    set(t, a, M2, &u)?;
    t.is(
        "attrs_at reports the new value",
        a,
        t.svm(0).attrs_at(a).atomic == AtomicPolicy::Cpu,
    )?;
    t.eq(
        "the change is counted",
        a,
        n(changes).saturating_add(1),
        n(t.svm(0).stats().attr_changes),
    )?;
    t.unmapped("mappings cleared by the change", 0, a, at(a, M2))?;
    t.dev_read_is("device read after the change", 0, at(a, 8), 3)?;
    let mapped = t.mapped_in(0, a, at(a, M2));
    t.is("mapped again after the refault", a, mapped > 0)?;
    // The same value again: nothing changes.
    set(t, a, M2, &u)?;
    t.eq(
        "no change counted",
        a,
        n(changes).saturating_add(1),
        n(t.svm(0).stats().attr_changes),
    )?;
    t.eq("mappings kept", a, mapped, t.mapped_in(0, a, at(a, M2)))?;
    let outside = t.svm(0).attrs_at(at(a, M2)).atomic;
    t.is(
        "attributes outside the interval unchanged",
        a,
        outside == AtomicPolicy::Undefined,
    )?;
    t.dev_write(0, at(a, 16), 4)?;
    t.cpu_read_is("CPU read of a device write", at(a, 16), 4)
}

fn prefetch<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(M2, RW)?;
    t.cpu_write(a, 1)?;
    let faults = t.svm(0).stats().faults;
    let r = t.svm(0).prefetch(a, M2, PrefetchLoc::System);
    t.ok("prefetch to system memory", a, r)?;
    t.sane()?;
    t.is("prefetch created the range", a, t.svm(0).find(a).is_some())?;
    t.eq(
        "prefetch is not a fault",
        a,
        n(faults),
        n(t.svm(0).stats().faults),
    )?;
    t.is("prefetch counted", a, t.svm(0).stats().prefetches > 0)?;
    t.dev_read_is("device read after prefetch", 0, a, 1)?;
    if t.has_devmem(0) {
        let r = t.svm(0).prefetch(a, M2, PrefetchLoc::Device);
        t.ok("prefetch to device memory", a, r)?;
        t.sane()?;
        t.is(
            "pages in device memory",
            a,
            t.b.device_pages_in_use(0).unwrap_or(0) > 0,
        )?;
        t.dev_read_is("device read after prefetch", 0, a, 1)?;
        t.mapped_as("prefetched page is device-local", 0, a, PageKind::Local)?;
        let r = t.svm(0).prefetch(a, M2, PrefetchLoc::System);
        t.ok("prefetch back to system memory", a, r)?;
        t.sane()?;
        t.eq(
            "device memory returned",
            a,
            0,
            t.b.device_pages_in_use(0).unwrap_or(0),
        )?;
    }
    t.cpu_read_is("CPU read after prefetch", a, 1)
}

fn preferred_system<B: Backend>(t: &mut T<'_, B>) -> Step {
    t.need(t.has_devmem(0) && t.svm(0).config().prefer_devmem)?;
    let a = t.mmap(2 * M2, RW)?;
    set(t, a, M2, &update(None, Some(PreferredLoc::System)))?;
    t.is(
        "attrs_at reports System",
        a,
        t.svm(0).attrs_at(a).preferred == PreferredLoc::System,
    )?;
    t.cpu_write(a, 1)?;
    t.dev_read_is("device read", 0, a, 1)?;
    t.mapped_as("preferred System: a system page", 0, a, PageKind::System)?;
    t.eq(
        "no device memory used",
        a,
        0,
        t.b.device_pages_in_use(0).unwrap_or(0),
    )?;
    // The other half still prefers the device.
    t.dev_write(0, at(a, M2), 2)?;
    t.mapped_as("default: device memory", 0, at(a, M2), PageKind::Local)?;
    // Prefer the device again: the next fault migrates.
    set(t, a, M2, &update(None, Some(PreferredLoc::DeviceDefault)))?;
    t.dev_read_is("device read after the change", 0, a, 1)?;
    t.mapped_as("preferred Device: device memory", 0, a, PageKind::Local)?;
    t.cpu_read_is("CPU read", at(a, M2), 2)?;
    t.cpu_read_is("CPU read", a, 1)
}

fn atomic_policy<B: Backend>(t: &mut T<'_, B>) -> Step {
    let a = t.mmap(M2, RW)?;
    t.cpu_write(a, 1)?;
    set(t, a, M2, &update(Some(AtomicPolicy::Cpu), None))?;
    t.fault_err(
        "device atomic under the Cpu policy",
        0,
        a,
        Access::Atomic,
        Error::Access,
    )?;
    t.dev_read_is("device read under the Cpu policy", 0, a, 1)?;
    if t.has_devmem(0) {
        set(t, a, M2, &update(Some(AtomicPolicy::Device), None))?;
        let r = t.b.device_fault(0, at(a, K64), Access::Atomic);
        t.ok("device atomic fault under the Device policy", a, r)?;
        t.sane()?;
        t.mapped_as("atomics served from device memory", 0, a, PageKind::Local)?;
        t.dev_read_is("device read", 0, a, 1)?;
    }
    t.cpu_read_is("CPU read", a, 1)
}
