//! Scenario group `device_to_device`: two devices mirroring one address space (SPEC §10):
//! linked devices share device pages over the interconnect without migrating, unlinked ones
//! move pages through system memory; a device torn down while a peer maps its memory leaves
//! the peer with the data.

use super::check::{at, run, Step, M2, RW, T};
use super::{Backend, PageKind, Report};
use crate::Result;

/// Run the `device_to_device` group: each scenario against a fresh backend from `make`.
///
/// - `peer_access` (2 linked devices with memory): the devices share an owner; device 1 reads
///   device 0's memory as a peer page without migrating; writes from either side are seen by
///   the other and by the CPU.
/// - `peer_teardown` (2 linked devices, [`Backend::remove_device`]): device 0 is torn down while
///   device 1 maps its pages: its memory is returned, it maps and DMA-maps nothing, device 1
///   still reads the data.
/// - `through_ram` (2 unlinked devices with memory): the devices have different owners; a page
///   in device 0's memory moves to device 1's through system memory (one eviction, one
///   migration each way) and back; device 0 no longer maps it meanwhile.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_device_to_device<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    run(&mut make, &mut r, "peer_access", peer_access::<B>);
    run(&mut make, &mut r, "peer_teardown", peer_teardown::<B>);
    run(&mut make, &mut r, "through_ram", through_ram::<B>);
    r
}

/// Skip unless there are two devices with memory, linked as `linked` says.
fn need_pair<B: Backend>(t: &T<'_, B>, linked: bool) -> Step {
    t.need(
        t.b.devices() >= 2
            && t.b.peers_linked() == linked
            && t.has_devmem(0)
            && t.has_devmem(1)
            && t.svm(0).config().prefer_devmem
            && t.svm(1).config().prefer_devmem,
    )
}

/// Both devices map the page at `buf` (device 0's memory, device 1 as a peer).
fn share<B: Backend>(t: &mut T<'_, B>) -> Step<u64> {
    let o0 = t.svm(0).owner();
    t.is(
        "linked devices share an owner",
        0,
        o0.is_some() && o0 == t.svm(1).owner(),
    )?;
    let buf = t.mmap(M2, RW)?;
    t.cpu_write(buf, 5)?;
    t.dev_read_is("device 0 read", 0, buf, 5)?;
    t.mapped_as("device 0 maps its own memory", 0, buf, PageKind::Local)?;
    // Device 1 reads device 0's memory peer-to-peer, without migrating.
    let before = t.svm(1).stats().migrations_to_devmem;
    t.dev_read_is("device 1 read of device 0's memory", 1, buf, 5)?;
    t.mapped_as("device 1 maps a peer page", 1, buf, PageKind::Peer)?;
    let after = t.svm(1).stats().migrations_to_devmem;
    t.eq(
        "no migration for a peer access",
        buf,
        before as u64,
        after as u64,
    )?;
    Ok(buf)
}

fn peer_access<B: Backend>(t: &mut T<'_, B>) -> Step {
    need_pair(t, true)?;
    let buf = share(t)?;
    t.dev_write(1, at(buf, 8), 9)?;
    t.dev_read_is("device 0 sees device 1's write", 0, at(buf, 8), 9)?;
    t.cpu_read_is("CPU sees device 1's write", at(buf, 8), 9)?;
    t.dev_read_is("device 1 read after the CPU touch", 1, buf, 5)?;
    t.dev_read_is("device 0 read after the CPU touch", 0, buf, 5)?;
    t.dev_write(0, at(buf, 16), 10)?;
    t.dev_read_is("device 1 sees device 0's write", 1, at(buf, 16), 10)
}

fn peer_teardown<B: Backend>(t: &mut T<'_, B>) -> Step {
    need_pair(t, true)?;
    let buf = share(t)?;
    t.dev_read_is("device 0 read", 0, buf, 5)?;
    match t.b.remove_device(0) {
        Err(crate::Error::NotSupported) => return Err(super::report::Stop::Skip),
        r => t.ok("remove_device", buf, r)?,
    }
    t.sane()?;
    t.eq("torn-down device maps nothing", buf, 0, t.b.mapped_pages(0))?;
    t.eq("torn-down device has no DMA mapping", buf, 0, t.dma(0))?;
    let used = t.b.device_pages_in_use(0).unwrap_or(0);
    t.eq("torn-down device's memory returned", buf, 0, used)?;
    t.dev_read_is("the peer still reads the data", 1, buf, 5)?;
    t.cpu_read_is("the CPU still reads the data", buf, 5)
}

fn through_ram<B: Backend>(t: &mut T<'_, B>) -> Step {
    need_pair(t, false)?;
    t.is(
        "unlinked devices have different owners",
        0,
        t.svm(0).owner() != t.svm(1).owner(),
    )?;
    let buf = t.mmap(M2, RW)?;
    t.cpu_write(buf, 5)?;
    t.dev_read_is("device 0 read", 0, buf, 5)?;
    t.mapped_as(
        "device 0 migrated the page into its memory",
        0,
        buf,
        PageKind::Local,
    )?;
    t.dev_write(0, buf, 6)?;
    let Some(r) = t.svm(0).find(buf) else {
        return Err(t.fail("a range covers the faulted address", buf, 1, 0));
    };
    let size = r.size();
    // Device 1's fault evicts device 0's range to RAM, then migrates it into its own memory.
    t.dev_read_is("device 1 read of device 0's write", 1, buf, 6)?;
    t.mapped_as(
        "device 1 migrated the page into its memory",
        1,
        buf,
        PageKind::Local,
    )?;
    t.is(
        "device 0 no longer maps the page",
        buf,
        t.pte(0, buf).is_none(),
    )?;
    let s1 = t.svm(1).stats();
    t.eq(
        "device 1: one migration to its memory",
        buf,
        1,
        s1.migrations_to_devmem as u64,
    )?;
    t.eq(
        "device 1: one migration to RAM",
        buf,
        1,
        s1.migrations_to_ram as u64,
    )?;
    t.eq("device 1: one eviction", buf, 1, s1.evictions as u64)?;
    t.eq("device 1: bytes to RAM", buf, size, s1.bytes_to_ram as u64)?;
    t.eq(
        "device 1: bytes to its memory",
        buf,
        size,
        s1.bytes_to_devmem as u64,
    )?;
    t.eq(
        "device 0's memory returned",
        buf,
        0,
        t.b.device_pages_in_use(0).unwrap_or(0),
    )?;
    // And back.
    t.dev_read_is("device 0 read back", 0, buf, 6)?;
    t.mapped_as("device 0 migrated the page back", 0, buf, PageKind::Local)?;
    t.eq(
        "device 0: two migrations",
        buf,
        2,
        t.svm(0).stats().migrations_to_devmem as u64,
    )?;
    t.eq(
        "device 1's memory returned",
        buf,
        0,
        t.b.device_pages_in_use(1).unwrap_or(0),
    )?;
    t.cpu_read_is("CPU read", buf, 6)?;
    t.is(
        "device 0: page no longer device-local",
        buf,
        t.kind(0, buf) != Some(PageKind::Local),
    )?;
    t.is(
        "device 1: page no longer device-local",
        buf,
        t.kind(1, buf) != Some(PageKind::Local),
    )
}
