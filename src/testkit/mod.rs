//! The conformance kit (feature `testkit`): the crate's contract as scenario groups that any
//! backend can run — the simulator's tests run through it, and a driver author runs the same
//! scenarios against a real backend, one function call per group, even inside a kernel
//! self-test: the kit needs only `core` (no `alloc`, no `std`), never panics, and returns its
//! results as values ([`Report`], [`Failure`]).
//!
//! The backend implements [`Backend`]: its [`Svm`]s (one per device, all mirroring one CPU
//! address space), the CPU side of that address space (`mmap`, `munmap`, CPU reads and writes,
//! which must deliver invalidations and CPU faults on device pages the way the kernel's MMU
//! notifier and `migrate_to_ram` do), the device side (the driver's fault handler, device
//! reads and writes through the device page table only) and a small inspection facet: what the
//! device page table maps ([`MappedPage`]), how many DMA mappings are live, how many
//! device-memory pages are in use.
//!
//! Each group takes a factory, so that every scenario starts from a fresh backend:
//!
//! | group | what it checks |
//! | --- | --- |
//! | [`run_fault`] | first-touch faults, ranges inside their VMA, CPU/device coherence |
//! | [`run_invalidation`] | munmap of whole, partial and many ranges: nothing mapped, no DMA left, data kept |
//! | [`run_gc`] | unmapped ranges collected at the next fault or by `gc_run`; `remove` |
//! | [`run_migration`] | to device memory and back to RAM (CPU touch, `evict`), device memory returned |
//! | [`run_device_to_device`] | peer access between linked devices, migration through RAM between unlinked ones, device teardown |
//! | [`run_attributes`] | `set_attrs`, `prefetch`, preferred location, atomic policy |
//! | [`run_teardown`] | `close` with live ranges: nothing mapped, no live DMA, `Closed` afterwards, the CPU carries on |
//! | [`run_bad_input`] | typed errors and unchanged state for bad intervals, foreign ranges, faults without a VMA, writes to read-only VMAs, calls after close |
//! | [`run_all`] | all of the above |
//!
//! A scenario that needs a capability the backend lacks (an `mmap` returning
//! [`Error::NotSupported`], device memory, a second device, a peer link) is counted as skipped,
//! not failed. Every scenario checks, after each step, the data (CPU and device reads agree
//! with what was written), the device page table (mapped where expected, nothing mapped after
//! invalidation, munmap or close), the DMA mappings (none live after invalidation or close),
//! device memory (returned after migration back, munmap or device teardown), and the backend's
//! own invariants ([`Backend::self_check`]). The checks follow docs/SPEC.md and the invariants
//! of docs/DESIGN.md.
//!
//! ```
//! # #[cfg(feature = "sim")] {
//! use gpusvm::testkit::{run_all, sim::SimBackend};
//! let report = run_all(|| SimBackend::with_devmem(4096));
//! assert!(report.ok(), "{report}");
//! # }
//! ```

mod attributes;
mod bad_input;
mod check;
mod device_to_device;
mod fault;
mod gc;
mod invalidation;
mod migration;
mod report;
#[cfg(feature = "sim")]
pub mod sim;
mod teardown;

pub use attributes::run_attributes;
pub use bad_input::run_bad_input;
pub use device_to_device::run_device_to_device;
pub use fault::run_fault;
pub use gc::run_gc;
pub use invalidation::run_invalidation;
pub use migration::run_migration;
pub use report::{Failure, Report};
pub use teardown::run_teardown;

use crate::platform::{Platform, VmaFlags};
use crate::{Access, Error, Result, Svm};

/// How the device reaches the page behind one of its page-table entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// A system (RAM) page through a DMA mapping.
    System,
    /// A page of the device's own memory.
    Local,
    /// A page of a peer device's memory, over the interconnect.
    Peer,
}

/// What a device page table maps at one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MappedPage {
    /// How the page is reached.
    pub kind: PageKind,
    /// The address the device uses (bus address, device physical address or peer address).
    pub addr: u64,
    /// Whether the entry allows device writes.
    pub writable: bool,
}

/// The backend facet the kit drives: one or more devices mirroring one CPU address space.
///
/// Device numbers run from 0 to [`devices`](Backend::devices) − 1. All devices share one
/// platform type. An operation the backend cannot perform returns [`Error::NotSupported`]:
/// scenarios that need it are skipped.
pub trait Backend {
    /// The platform of the devices' [`Svm`]s.
    type P: Platform;

    /// Number of devices (1 or more). Device-to-device scenarios need 2.
    ///
    /// Context: process context.
    fn devices(&self) -> usize;

    /// The [`Svm`] of device `dev` (`dev < devices()`).
    ///
    /// Context: process context.
    fn svm(&self, dev: usize) -> &Svm<Self::P>;

    /// Map `len` bytes (a multiple of 2 MiB in the kit's calls) of anonymous memory with
    /// `flags` in the CPU address space; returns the start. [`Error::NotSupported`] skips the
    /// scenarios that need memory.
    ///
    /// Context: process context; may sleep.
    fn mmap(&mut self, len: u64, flags: VmaFlags) -> Result<u64>;

    /// Unmap `[addr, addr+len)` from the CPU address space, delivering the invalidations to
    /// every device's [`Svm`] ([`Svm::invalidate_begin`] / [`Svm::invalidate_end`] with
    /// [`Event::Unmap`](crate::Event::Unmap)) as the kernel's MMU notifier does, and freeing
    /// device pages there ([`Pagemap::page_free`](crate::pagemap::Pagemap::page_free)).
    ///
    /// Context: process context; may sleep.
    fn munmap(&mut self, addr: u64, len: u64) -> Result<()>;

    /// A CPU read of the `u64` at `addr` (8-byte aligned). A read of a page in device memory
    /// migrates it back first
    /// ([`Pagemap::migrate_to_ram`](crate::pagemap::Pagemap::migrate_to_ram)), as the CPU
    /// fault handler of a device-private page does.
    ///
    /// Context: process context; may sleep.
    fn cpu_read(&mut self, addr: u64) -> Result<u64>;

    /// A CPU write of the `u64` at `addr` (8-byte aligned): as [`cpu_read`](Backend::cpu_read);
    /// [`Error::Perm`] for a read-only VMA.
    ///
    /// Context: process context; may sleep.
    fn cpu_write(&mut self, addr: u64, val: u64) -> Result<()>;

    /// The driver's device fault handler: [`Svm::handle_fault_and_bind`] for `access` at `addr`,
    /// writing device page-table entries from the page entries; returns its error.
    ///
    /// Context: process context; may sleep.
    fn device_fault(&mut self, dev: usize, addr: u64, access: Access) -> Result<()>;

    /// A device read of the `u64` at `addr` through the device page table only:
    /// [`Error::Fault`] if no entry maps it (the kit then calls
    /// [`device_fault`](Backend::device_fault) and retries).
    ///
    /// Context: process context.
    fn device_read(&mut self, dev: usize, addr: u64) -> Result<u64>;

    /// A device write through the device page table only: [`Error::Fault`] if no writable
    /// entry maps `addr`.
    ///
    /// Context: process context.
    fn device_write(&mut self, dev: usize, addr: u64, val: u64) -> Result<()>;

    /// Inspection: what device `dev`'s page table maps at `addr`.
    ///
    /// Context: process context.
    fn device_pte(&self, dev: usize, addr: u64) -> Option<MappedPage>;

    /// Inspection: how many base pages device `dev`'s page table maps in all.
    ///
    /// Context: process context.
    fn mapped_pages(&self, dev: usize) -> u64;

    /// Inspection: DMA mappings currently live for device `dev` (system pages and peer
    /// mappings).
    ///
    /// Context: process context.
    fn live_dma_mappings(&self, dev: usize) -> u64;

    /// Inspection: device-memory pages of device `dev` in use, `None` if it has no memory.
    ///
    /// Context: process context.
    fn device_pages_in_use(&self, dev: usize) -> Option<u64>;

    /// Whether the devices share one owner over an interconnect (peer access without
    /// migration). Default: no.
    ///
    /// Context: process context.
    fn peers_linked(&self) -> bool {
        false
    }

    /// Tear device `dev` down while others may map its memory: move its device pages back to
    /// RAM, detach its pagemap from every `Svm`, close its `Svm`. Default:
    /// [`Error::NotSupported`] (the scenario is skipped).
    ///
    /// Context: process context; may sleep.
    fn remove_device(&mut self, dev: usize) -> Result<()> {
        let _ = dev;
        Err(Error::NotSupported)
    }

    /// The backend's own invariant check, run after every step of every scenario (the
    /// simulator runs its invariant checker). Default: nothing to check.
    ///
    /// Context: process context.
    fn self_check(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Run every group against backends from `make` and add up the reports.
///
/// Context: process context; may sleep (as the backend's calls do). Allocates nothing itself.
pub fn run_all<B: Backend, F: FnMut() -> Result<B>>(mut make: F) -> Report {
    let mut r = Report::default();
    r.merge(&run_fault(&mut make));
    r.merge(&run_invalidation(&mut make));
    r.merge(&run_gc(&mut make));
    r.merge(&run_migration(&mut make));
    r.merge(&run_device_to_device(&mut make));
    r.merge(&run_attributes(&mut make));
    r.merge(&run_teardown(&mut make));
    r.merge(&run_bad_input(&mut make));
    r
}
