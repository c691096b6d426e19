//! The scenario: one fixed sequence of CPU and device accesses, faults, migrations,
//! invalidations, garbage collection and teardown, with the platform state checked after every
//! step, ending in a checksum of the address space as the CPU sees it.
//!
//! The window holds two VMAs: A, pages 0–31 (two 64 KiB ranges R0 = pages 0–15 and
//! R1 = 16–31), and B, pages 48–63 (R2). Device memory has 32 pages: room for two ranges.
//!
//! | step | what happens |
//! | ---: | --- |
//! | 1 | set-up; the CPU fills every page of A and B |
//! | 2 | device write fault in R0: the range is migrated to device memory (first touch) |
//! | 3 | device stores into R0 through the device page table |
//! | 4 | device read fault in R1: migrated; device memory is now full |
//! | 5 | device write fault in R2: no room, so the oldest range (R0) is evicted to make room |
//! | 6 | CPU load from R1: CPU fault on a device page, `Pagemap::migrate_to_ram` |
//! | 7 | `Svm::evict` of R2 |
//! | 8 | device fault in R0 again: back to device memory |
//! | 9 | munmap of 4 pages in the middle of R0: partial invalidation, `gc_run` |
//! | 10 | device faults after the munmap: a small range in system memory; R1 back to device memory |
//! | 11 | `close`: no device mapping, no DMA mapping, no notifier left |
//! | 12 | checksum of every page as the CPU sees it (device pages come back on the way) |
//! | 13 | address-space teardown: every frame and every device allocation released |

use crate::checksum::{fill_page, initial_word, stamp, Fnv1a};
use crate::mm::{VA_BASE, VA_END, VA_PAGES};
use crate::phys::{PAGE, SYS_FRAMES};
use crate::rig::Rig;
use core::fmt::{self, Write};
use gpusvm::platform::PAGE_SIZE;
use gpusvm::{Access, Error};

/// Address of window page `i`.
const fn page(i: u64) -> u64 {
    VA_BASE + i * PAGE_SIZE
}

/// VMA A: pages 0–31.
const A: (u64, u64) = (page(0), page(32));
/// VMA B: pages 48–63.
const B: (u64, u64) = (page(48), VA_END);
/// The 64 KiB ranges the faults create.
const R0: (u64, u64) = (page(0), page(16));
const R1: (u64, u64) = (page(16), page(32));
const R2: (u64, u64) = (page(48), page(64));
/// The pages munmapped in step 9.
const HOLE: (u64, u64) = (page(4), page(8));
/// Byte offset of the word device stores use in each page.
const STAMP_OFF: u64 = 64;
/// 16 pages in bytes.
const RANGE_BYTES: u64 = 16 * PAGE_SIZE;

/// A failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The step (1-based); also the firmware's failure code.
    pub step: u32,
    /// What was checked.
    pub what: &'static str,
    /// The crate's error, if a call failed.
    pub error: Option<Error>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} failed: {}", self.step, self.what)?;
        if let Some(e) = self.error {
            write!(f, " ({e:?})")?;
        }
        Ok(())
    }
}

/// Step bookkeeping and the log.
struct Steps<'a> {
    log: &'a mut dyn Write,
    step: u32,
}

impl Steps<'_> {
    fn begin(&mut self, step: u32, title: &str) {
        self.step = step;
        let _ = write!(self.log, "step {step:2}: {title} ... ");
    }
    fn done(&mut self, detail: fmt::Arguments<'_>) {
        let _ = writeln!(self.log, "ok ({detail})");
    }
    fn ensure(&self, cond: bool, what: &'static str) -> Result<(), Failure> {
        if cond {
            Ok(())
        } else {
            Err(Failure {
                step: self.step,
                what,
                error: None,
            })
        }
    }
    fn call<T>(&self, r: gpusvm::Result<T>, what: &'static str) -> Result<T, Failure> {
        r.map_err(|e| Failure {
            step: self.step,
            what,
            error: Some(e),
        })
    }
}

/// Whether every device store of generation `gen` in `[start, end)` reads back through the CPU.
fn cpu_sees_stamps(rig: &Rig, (start, end): (u64, u64), gen: u64) -> gpusvm::Result<bool> {
    let mut va = start;
    while va < end {
        if rig.cpu_load(va + STAMP_OFF)? != stamp(va, gen) {
            return Ok(false);
        }
        va += PAGE_SIZE;
    }
    Ok(true)
}

/// Device stores of generation `gen` into every page of `[start, end)`; returns the faults.
fn stamp_all(rig: &Rig, (start, end): (u64, u64), gen: u64) -> gpusvm::Result<u32> {
    let mut faults = 0u32;
    let mut va = start;
    while va < end {
        faults += rig.dev_store(va + STAMP_OFF, stamp(va, gen))?;
        va += PAGE_SIZE;
    }
    Ok(faults)
}

/// Run the scenario, logging each step to `log`; returns the checksum.
pub fn run(log: &mut dyn Write) -> Result<u64, Failure> {
    let mut s = Steps { log, step: 0 };

    s.begin(1, "set-up, CPU fills VMAs A and B");
    let rig = s.call(Rig::new(&[A, B]), "Rig::new")?;
    let mut buf = [0u8; PAGE];
    for (start, end) in [A, B] {
        let mut va = start;
        while va < end {
            fill_page(va, &mut buf);
            s.call(rig.mm().cpu_write(va, &buf), "cpu_write")?;
            va += PAGE_SIZE;
        }
    }
    s.ensure(rig.phys.sys_free() == SYS_FRAMES - 48, "48 frames in use")?;
    s.done(format_args!("{} pages written", 48));

    s.begin(2, "device write fault in R0 migrates it to device memory");
    let (r0, bound) = s.call(rig.device_fault(page(1), Access::Write), "fault R0")?;
    s.ensure((r0.start(), r0.end()) == R0, "R0 is one 64 KiB range")?;
    s.ensure(bound == 16, "16 pages bound")?;
    s.ensure(
        rig.mm().residency(R0.0, R0.1) == (16, 0),
        "R0 in device memory",
    )?;
    s.ensure(rig.pt().valid_local(R0.0, R0.1) == 16, "device PTEs local")?;
    s.ensure(rig.phys.vram_used() == 16, "16 device pages used")?;
    s.ensure(rig.phys.dma_live.get() == 0, "no DMA mapping left")?;
    s.ensure(rig.phys.sys_free() == SYS_FRAMES - 32, "sources freed")?;
    for k in [0u64, 7, 15] {
        let (v, f) = s.call(rig.dev_load(page(k) + 8 * 5), "device load")?;
        s.ensure(
            v == initial_word(page(k), 5) && f == 0,
            "device sees CPU data",
        )?;
    }
    s.done(format_args!(
        "range {:#x}..{:#x}, {} bytes copied",
        r0.start(),
        r0.end(),
        rig.svm.stats().bytes_to_devmem
    ));

    s.begin(3, "device stores into R0");
    let faults = s.call(stamp_all(&rig, R0, 1), "device stores")?;
    s.ensure(faults == 0, "no fault: R0 is bound writable")?;
    s.ensure(rig.svm.stats().faults == 1, "one fault so far")?;
    s.done(format_args!("16 stores"));

    s.begin(4, "device read fault in R1, device memory full");
    let (v, f) = s.call(rig.dev_load(page(18) + 8), "device load R1")?;
    s.ensure(
        v == initial_word(page(18), 1) && f == 1,
        "R1 data after one fault",
    )?;
    s.ensure(
        rig.mm().residency(R1.0, R1.1) == (16, 0),
        "R1 in device memory",
    )?;
    s.ensure(rig.phys.vram_used() == 32, "device memory full")?;
    s.done(format_args!("{} device pages used", rig.phys.vram_used()));

    s.begin(5, "device write fault in R2 evicts R0 to make room");
    let faults = s.call(stamp_all(&rig, R2, 2), "device stores R2")?;
    s.ensure(faults == 1, "one fault for R2")?;
    s.ensure(
        rig.mm().residency(R2.0, R2.1) == (16, 0),
        "R2 in device memory",
    )?;
    s.ensure(rig.mm().residency(R0.0, R0.1) == (0, 16), "R0 evicted")?;
    s.ensure(rig.mm().residency(R1.0, R1.1) == (16, 0), "R1 stays")?;
    s.ensure(rig.pt().valid_local(R0.0, R0.1) == 0, "R0 zapped")?;
    s.ensure(rig.svm.stats().evictions == 1, "one eviction")?;
    s.ensure(rig.phys.dma_live.get() == 0, "no DMA mapping left")?;
    let seen = s.call(cpu_sees_stamps(&rig, R0, 1), "cpu loads R0")?;
    s.ensure(seen, "device stores to R0 survived the eviction")?;
    s.done(format_args!("evictions {}", rig.svm.stats().evictions));

    s.begin(6, "CPU load from R1: CPU fault on a device page");
    let v = s.call(rig.cpu_load(page(19) + 16), "cpu load R1")?;
    s.ensure(v == initial_word(page(19), 2), "CPU sees R1 data")?;
    s.ensure(
        rig.mm().cpu_device_faults.get() == 1,
        "one CPU device fault",
    )?;
    s.ensure(
        rig.pm.cpu_fault_migrations().0 == 1,
        "pagemap migrated once",
    )?;
    s.ensure(
        rig.mm().residency(R1.0, R1.1) == (0, 16),
        "whole R1 back in RAM",
    )?;
    s.ensure(rig.pt().valid_local(R1.0, R1.1) == 0, "R1 zapped")?;
    s.ensure(rig.phys.vram_used() == 16, "R1's device pages released")?;
    s.done(format_args!(
        "{} bytes back",
        rig.pm.cpu_fault_migrations().1
    ));

    s.begin(7, "Svm::evict of R2");
    let r2 = s.call(rig.svm.find(R2.0).ok_or(Error::Invalid), "find R2")?;
    let rep = s.call(rig.svm.evict(&r2), "evict R2")?;
    s.ensure(rep.pages == 16, "16 pages evicted")?;
    s.ensure(rig.mm().residency(R2.0, R2.1) == (0, 16), "R2 in RAM")?;
    s.ensure(rig.phys.vram_used() == 0, "device memory empty")?;
    s.ensure(rig.pm.live_allocations() == 0, "no live allocation")?;
    let seen = s.call(cpu_sees_stamps(&rig, R2, 2), "cpu loads R2")?;
    s.ensure(seen, "device stores to R2 survived")?;
    s.done(format_args!(
        "{} pages, {} copy runs",
        rep.pages, rep.copy_runs
    ));
    drop(r2);

    s.begin(8, "device fault in R0 brings it back to device memory");
    let faults = s.call(stamp_all(&rig, R0, 3), "device stores R0")?;
    s.ensure(faults == 1, "one fault for R0")?;
    s.ensure(
        rig.mm().residency(R0.0, R0.1) == (16, 0),
        "R0 in device memory",
    )?;
    s.ensure(rig.phys.vram_used() == 16, "16 device pages used")?;
    s.done(format_args!(
        "migrations to device memory {}",
        rig.svm.stats().migrations_to_devmem
    ));

    s.begin(9, "munmap of pages 4-7 of R0, partial invalidation, gc_run");
    let frees = rig.mm().page_frees.get();
    s.call(rig.mm().munmap(HOLE.0, HOLE.1), "munmap")?;
    s.ensure(
        rig.mm().page_frees.get() == frees + 4,
        "4 device pages freed",
    )?;
    s.ensure(rig.svm.gc_pending() == 1, "R0 queued for the GC")?;
    s.ensure(rig.pm.live_allocations() == 1, "allocation still live")?;
    s.ensure(rig.pt().valid_local(R0.0, R0.1) == 0, "R0 zapped")?;
    let gc = rig.svm.gc_run();
    s.ensure(gc == 1, "GC removed one range")?;
    s.ensure(rig.svm.find(R0.0).is_none(), "R0 gone")?;
    s.ensure(rig.pm.live_allocations() == 0, "allocation released")?;
    s.ensure(rig.phys.vram_used() == 0, "device memory empty")?;
    s.ensure(
        rig.mm().residency(R0.0, R0.1) == (0, 12),
        "survivors in RAM",
    )?;
    s.ensure(rig.mm().vmas().len() == 3, "VMA A split")?;
    let seen = s.call(cpu_sees_stamps(&rig, (page(8), R0.1), 3), "cpu loads")?;
    s.ensure(seen, "surviving device stores kept")?;
    s.ensure(
        rig.cpu_load(page(5)) == Err(Error::Fault),
        "CPU load in the hole faults",
    )?;
    s.ensure(
        rig.device_fault(page(5), Access::Read).err() == Some(Error::Fault),
        "device fault in the hole fails",
    )?;
    s.done(format_args!("gc ranges {}", rig.svm.stats().gc_ranges));

    s.begin(10, "device faults after the munmap");
    let (v, f) = s.call(rig.dev_load(page(9) + STAMP_OFF), "device load page 9")?;
    s.ensure(v == stamp(page(9), 3) && f == 1, "page 9 after one fault")?;
    let r9 = s.call(rig.svm.find(page(9)).ok_or(Error::Invalid), "find page 9")?;
    s.ensure(
        r9.size() == PAGE_SIZE,
        "a 4 KiB range (64 KiB no longer fits)",
    )?;
    s.ensure(
        rig.phys.dma_live.get() == 1,
        "it is DMA-mapped system memory",
    )?;
    drop(r9);
    s.call(rig.dev_store(page(9) + 8, 0x5eed), "device store page 9")?;
    s.ensure(
        rig.cpu_load(page(9) + 8) == Ok(0x5eed),
        "CPU sees the store",
    )?;
    let faults = s.call(stamp_all(&rig, R1, 4), "device stores R1")?;
    s.ensure(faults == 1, "one fault for R1")?;
    s.ensure(
        rig.mm().residency(R1.0, R1.1) == (16, 0),
        "R1 in device memory",
    )?;
    s.done(format_args!(
        "{} DMA mappings live",
        rig.phys.dma_live.get()
    ));

    s.begin(11, "close");
    let stats = rig.svm.stats();
    rig.svm.close();
    s.ensure(rig.phys.dma_live.get() == 0, "every DMA mapping unmapped")?;
    s.ensure(rig.phys.dma_bad_unmaps.get() == 0, "no bad unmap")?;
    s.ensure(rig.pt().valid() == 0, "no device PTE left")?;
    s.ensure(rig.mm().notifiers() == 0, "every notifier unregistered")?;
    s.ensure(rig.svm.counts() == (0, 0), "no range left")?;
    s.ensure(
        rig.device_fault(page(20), Access::Read).err() == Some(Error::Closed),
        "faults refused after close",
    )?;
    s.done(format_args!(
        "faults {}, ranges {}/{}",
        stats.faults, stats.ranges_created, stats.ranges_removed
    ));

    s.begin(12, "checksum of the address space as the CPU sees it");
    let mut h = Fnv1a::new();
    for i in 0..VA_PAGES as u64 {
        let va = page(i);
        if rig.mm().vmas().iter().any(|v| v.contains(va)) {
            s.call(rig.mm().cpu_read_page(va, &mut buf), "cpu read page")?;
            h.u64(va);
            h.bytes(&buf);
        }
    }
    s.ensure(rig.mm().residency(VA_BASE, VA_END).0 == 0, "all in RAM")?;
    s.ensure(
        rig.pm.cpu_fault_migrations().0 == 2,
        "R1 came back on a CPU fault",
    )?;
    for v in [
        stats.faults,
        stats.ranges_created,
        stats.ranges_removed,
        stats.migrations_to_devmem,
        stats.migrations_to_ram,
        stats.evictions,
        stats.gc_ranges,
        stats.bytes_to_devmem,
        stats.bytes_to_ram,
        stats.copy_runs,
        stats.invalidations,
        rig.pm.cpu_fault_migrations().0,
        rig.pm.cpu_fault_migrations().1,
    ] {
        h.u64(v as u64);
    }
    h.u64(rig.phys.dma_total.get());
    h.u64(rig.phys.vram_allocs.get());
    let sum = h.finish();
    s.done(format_args!("{sum:#018x}"));

    s.begin(13, "address-space teardown releases everything");
    s.call(rig.mm().exit(), "exit")?;
    s.ensure(rig.pm.live_allocations() == 0, "no live allocation")?;
    s.ensure(rig.pm.stray_frees() == 0, "no stray page_free")?;
    s.ensure(rig.phys.vram_used() == 0, "device memory empty")?;
    s.ensure(
        rig.phys.vram_releases.get() == rig.phys.vram_allocs.get(),
        "every allocation released once",
    )?;
    s.ensure(rig.phys.vram_bad_releases.get() == 0, "no bad release")?;
    s.ensure(rig.phys.sys_free() == SYS_FRAMES, "every frame free")?;
    s.ensure(rig.mm().errors.get() == 0, "no address-space error")?;
    s.ensure(rig.pt().errors() == 0, "no device page-table error")?;
    s.ensure(rig.pt().zaps() > 0, "device TLB invalidations happened")?;
    s.ensure(
        stats.bytes_to_devmem as u64 >= 4 * RANGE_BYTES,
        "bytes moved",
    )?;
    s.done(format_args!(
        "{} allocations, {} DMA mappings",
        rig.phys.vram_allocs.get(),
        rig.phys.dma_total.get()
    ));
    Ok(sum)
}
