//! Pagemaps (SPEC §6): the device memory of one device or tile, its allocations, and the CPU
//! fault path out of it.
//!
//! ```text
//!  Pagemap (id, owner) ── DeviceMemory (platform: alloc / release / copy / DMA)
//!     └── run index: device frame → Arc<DevmemAlloc>  (one allocation per migrated range)
//!            page_free(dpfn) ──► DevmemAlloc::put_page ──► last page? ──► DeviceMemory::release
//! ```
//!
//! Locking: the run index has its own spin lock, never held across a call into the platform.
//! `page_free` may be called from the platform's page-table code with its locks held: it takes
//! only the run index lock and calls only [`DeviceMemory::release`].

mod devmem;
mod owner;

pub use devmem::{DevmemAlloc, DevmemRun, PutPage};
pub use owner::{Interconnect, OwnerRegistry, PeerId};

use crate::error::{Error, Result};
use crate::migrate::{self, MigrateReport};
use crate::platform::{AddressSpace, DeviceMemory, OwnerId, PagemapId};
use crate::sync::{class, AtomicUsize, Mutex, Ordering};
use crate::{DefaultHost, Host};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// The device memory of one device (or tile): allocations, their lifetime, and migration out
/// of it on CPU faults. Shared as `Arc<Pagemap<M>>`; the `Arc` count is the pagemap's refcount.
pub struct Pagemap<M: DeviceMemory, L: Host = DefaultHost> {
    id: PagemapId,
    owner: OwnerId,
    mem: M,
    /// First frame of every run of every live allocation → (run length, allocation).
    runs: Mutex<L, BTreeMap<u64, (u64, Arc<DevmemAlloc>)>>,
    live_allocs: AtomicUsize,
    released: AtomicUsize,
    stray_frees: AtomicUsize,
    cpu_migrations: AtomicUsize,
    cpu_bytes: AtomicUsize,
}

impl<M: DeviceMemory, L: Host> core::fmt::Debug for Pagemap<M, L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pagemap")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("live_allocs", &self.live_allocations())
            .finish_non_exhaustive()
    }
}

impl<M: DeviceMemory, L: Host> Pagemap<M, L> {
    /// A pagemap `id` of owner `owner` over the device memory `mem`.
    pub fn new(id: PagemapId, owner: OwnerId, mem: M) -> Arc<Self> {
        Arc::new(Pagemap {
            id,
            owner,
            mem,
            runs: Mutex::new(&class::PAGEMAP_RUNS, BTreeMap::new()),
            live_allocs: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            stray_frees: AtomicUsize::new(0),
            cpu_migrations: AtomicUsize::new(0),
            cpu_bytes: AtomicUsize::new(0),
        })
    }

    /// Its id.
    pub fn id(&self) -> PagemapId {
        self.id
    }
    /// Its owner.
    pub fn owner(&self) -> OwnerId {
        self.owner
    }
    /// The device memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }
    /// Number of live allocations.
    pub fn live_allocations(&self) -> usize {
        self.live_allocs.load(Ordering::Acquire)
    }
    /// Number of allocations released so far.
    pub fn released_allocations(&self) -> usize {
        self.released.load(Ordering::Acquire)
    }
    /// Migrations back to RAM caused by CPU faults, and the bytes they copied.
    pub fn cpu_fault_migrations(&self) -> (usize, usize) {
        (
            self.cpu_migrations.load(Ordering::Relaxed),
            self.cpu_bytes.load(Ordering::Relaxed),
        )
    }

    /// `page_free` calls for frames of no live allocation (a platform bug; ignored).
    pub fn stray_frees(&self) -> usize {
        self.stray_frees.load(Ordering::Acquire)
    }

    /// The allocation holding `dpfn`, if live.
    pub fn alloc_of(&self, dpfn: u64) -> Option<Arc<DevmemAlloc>> {
        let runs = self.runs.lock();
        let (start, (len, a)) = runs.range(..=dpfn).next_back()?;
        (dpfn.wrapping_sub(*start) < *len).then(|| a.clone())
    }

    /// Every live allocation (each once).
    pub fn allocations(&self) -> Vec<Arc<DevmemAlloc>> {
        let runs = self.runs.lock();
        let mut out: Vec<Arc<DevmemAlloc>> = Vec::new();
        for (_, a) in runs.values() {
            if !out.iter().any(|b| Arc::ptr_eq(a, b)) {
                out.push(a.clone());
            }
        }
        out
    }

    /// Track a new allocation (its pages are all live).
    pub(crate) fn track(&self, a: Arc<DevmemAlloc>) {
        let mut runs = self.runs.lock();
        for r in a.runs() {
            runs.insert(r.dpfn, (r.len, a.clone()));
        }
        self.live_allocs.fetch_add(1, Ordering::AcqRel);
    }

    /// The platform calls this when the device page `dpfn` is freed (its CPU mapping went away:
    /// migrated to another place, unmapped, or the process exited). When the last page of an
    /// allocation goes, the allocation is released with [`DeviceMemory::release`] — exactly
    /// once. A frame of no live allocation, or a page freed twice, is ignored (and counted in
    /// [`stray_frees`](Self::stray_frees)).
    pub fn page_free(&self, dpfn: u64) {
        let Some(a) = self.alloc_of(dpfn) else {
            self.stray_frees.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match a.put_page(dpfn) {
            PutPage::Last => {
                {
                    let mut runs = self.runs.lock();
                    for r in a.runs() {
                        runs.remove(&r.dpfn);
                    }
                }
                self.live_allocs.fetch_sub(1, Ordering::AcqRel);
                self.released.fetch_add(1, Ordering::AcqRel);
                self.mem.release(a.dpfns());
            }
            PutPage::Freed => {}
            PutPage::AlreadyFree | PutPage::NotMine => {
                self.stray_frees.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The CPU faulted on the device page `dpfn` at `fault_addr` (Linux `migrate_to_ram`):
    /// migrate the faulting allocation's window, clamped to the VMA, back to system memory.
    ///
    /// Errors: [`Error::Again`] while the allocation's timeslice runs (retry later: the device
    /// gets to make progress first) or if pages could not be isolated; [`Error::Fault`] (no
    /// VMA); [`Error::NoMem`]; copy errors. On error nothing is lost.
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
        let report = migrate::to_ram(mm, self, start, end)?;
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
