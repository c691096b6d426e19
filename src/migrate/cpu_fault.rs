//! The CPU side of device memory: a CPU access to a device page brings its allocation's window
//! back to system memory (Linux `dev_pagemap_ops.migrate_to_ram`).
//!
//! This is the pagemap's entry point for the migration engine; it lives here, above
//! [`pagemap`](crate::pagemap), so that the pagemap layer does not depend on migration.

use super::MigrateReport;
use crate::error::{Error, Result};
use crate::pagemap::Pagemap;
use crate::platform::{AddressSpace, DeviceMemory};
use crate::sync::Ordering;
use crate::Host;

impl<M: DeviceMemory, L: Host> Pagemap<M, L> {
    /// The CPU faulted on the device page `dpfn` at `fault_addr` (Linux `migrate_to_ram`):
    /// migrate the faulting allocation's window, clamped to the VMA, back to system memory.
    ///
    /// Errors: [`Error::Again`] while the allocation's timeslice runs (retry later: the device
    /// gets to make progress first) or if pages could not be isolated; [`Error::Fault`] (no
    /// VMA); [`Error::NoMem`]; copy errors. On error nothing is lost.
    ///
    /// Context: may sleep (the platform's migration, allocation and copy calls); allocates
    /// the migration's arrays with [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep); takes the run index lock (spinning)
    /// briefly, never across a platform call.
    pub fn migrate_to_ram<A: AddressSpace>(
        &self,
        mm: &A,
        fault_addr: u64,
        dpfn: u64,
    ) -> Result<MigrateReport> {
        let vma = mm.find_vma(fault_addr).ok_or(Error::Fault)?;
        let page = fault_addr & !(crate::platform::PAGE_SIZE - 1);
        let (ws, we) = match self.alloc_of(dpfn) {
            Some(a) => {
                if self.mem.now_ns() < a.timeslice_end() {
                    return Err(Error::Again);
                }
                a.va()
            }
            None => (page, page.saturating_add(crate::platform::PAGE_SIZE)),
        };
        let start = ws.max(vma.start);
        let end = we.min(vma.end);
        if !(start <= page && page < end) {
            return Err(Error::Fault);
        }
        let report = super::to_ram(mm, self, start, end)?;
        if report.pages > 0 {
            self.cpu_migrations.fetch_add(1, Ordering::Relaxed);
            self.cpu_bytes.fetch_add(
                usize::try_from(report.bytes).unwrap_or(usize::MAX),
                Ordering::Relaxed,
            );
        }
        if report.busy > 0 && report.pages == 0 {
            return Err(Error::Again);
        }
        Ok(report)
    }
}
