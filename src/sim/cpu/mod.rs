//! The simulated CPU address space: VMAs, a page table, interval notifiers, CPU accesses.
//!
//! One file per component: `notifiers.rs` (sinks, registration, invalidation delivery),
//! `vma.rs` (VMA changes and page-table queries), `access.rs` (the CPU fault path and accesses),
//! `address_space.rs` (collection and migration hooks, [`SimMmView`]).

use crate::platform::{AddressSpace, NotifierId, OwnerId, PagemapId, VmaFlags, PAGE_SIZE};
use crate::sim::world::SimWorld;
use crate::sim::Rng;
use crate::{Error, Event, Result};
use std::boxed::Box;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::vec::Vec;

mod access;
mod address_space;
mod notifiers;
mod vma;

pub use address_space::SimMmView;

/// Receives MMU-notifier callbacks (an [`Svm`](crate::Svm), or a driver's userptr wrapper).
pub trait InvalidationSink: Send + Sync {
    /// Before the CPU page tables of `[start, end)` change.
    fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event);
    /// After they changed.
    fn invalidate_end(&self, id: NotifierId, start: u64, end: u64);
}

impl<P: crate::platform::Platform> InvalidationSink for crate::Svm<P>
where
    P: Send + Sync,
    P::Mem: Send + Sync,
    <P::Mm as AddressSpace>::NotifierHandle: Send + Sync,
{
    fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event) {
        crate::Svm::invalidate_begin(self, id, start, end, event);
    }
    fn invalidate_end(&self, id: NotifierId, start: u64, end: u64) {
        crate::Svm::invalidate_end(self, id, start, end);
    }
}

/// A simulated VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimVma {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Access rights.
    pub flags: VmaFlags,
    /// Back faults with 2 MiB frames where the aligned block fits.
    pub huge: bool,
}

/// A CPU page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPte {
    /// Frame of this base page.
    pub pfn: u64,
    /// Order of the mapping it belongs to (0 or 9).
    pub order: u8,
    /// Writable by the CPU.
    pub writable: bool,
    /// Shared copy-on-write with another address space (writes copy first).
    pub cow: bool,
    /// A device-private page: `pfn` is then a device frame of this pagemap/owner.
    pub dev: Option<(PagemapId, OwnerId)>,
    /// Isolated for migration (a migration entry): not accessible until the migration ends.
    pub migrating: bool,
    /// A placeholder for an absent page being migrated (no frame behind it).
    pub placeholder: bool,
}

impl CpuPte {
    fn system(pfn: u64, order: u8, writable: bool) -> CpuPte {
        CpuPte {
            pfn,
            order,
            writable,
            cow: false,
            dev: None,
            migrating: false,
            placeholder: false,
        }
    }
}

/// Why a CPU-side access could not complete under the mmap lock.
enum Stop {
    /// A real error.
    Err(Error),
    /// The page lives in device memory: migrate it back first (outside the lock).
    Device(PagemapId, u64),
    /// The page is being migrated: wait.
    Migrating,
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Err(e)
    }
}

#[derive(Debug, Default)]
/// The page tables and VMAs of a [`SimMm`] (for the checker).
pub(crate) struct MmState {
    pub(crate) vmas: BTreeMap<u64, SimVma>,
    pub(crate) ptes: BTreeMap<u64, CpuPte>,
    next_mmap: u64,
}

impl MmState {
    fn vma(&self, addr: u64) -> Option<SimVma> {
        self.vmas
            .range(..=addr)
            .next_back()
            .map(|(_, v)| *v)
            .filter(|v| addr < v.end)
    }
}

struct Reg {
    handle: u64,
    sink: usize,
    id: NotifierId,
    start: u64,
    end: u64,
}

#[derive(Default)]
struct Regs {
    sinks: Vec<Option<Weak<dyn InvalidationSink>>>,
    list: Vec<Reg>,
    next_handle: u64,
}

type CollectHook = Box<dyn FnMut(&Arc<SimMm>) + Send>;

#[derive(Default)]
struct MmInject {
    /// The next `n` collections fail with `Again`.
    collect_again: u32,
    /// Collections fail with `Again` with this probability (per million).
    collect_again_ppm: u32,
    rng: Rng,
    /// Run after a collection released the mmap lock (used to race invalidations).
    hook: Option<CollectHook>,
}

/// A simulated CPU address space (Linux `mm_struct`).
///
/// Changes (`munmap`, `mprotect`, `madvise_dontneed`, copy-on-write breaks, `fork`) call every
/// overlapping registered notifier's `invalidate_begin` *before* they touch the page table and
/// `invalidate_end` after, exactly as a kernel does.
pub struct SimMm {
    world: Arc<SimWorld>,
    mmap_lock: Mutex<()>,
    pub(crate) st: Mutex<MmState>,
    regs: Mutex<Regs>,
    inject: Mutex<MmInject>,
}

impl core::fmt::Debug for SimMm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimMm").finish_non_exhaustive()
    }
}

fn check_span(addr: u64, len: u64) -> Result<u64> {
    if len == 0 || addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err(Error::Invalid);
    }
    addr.checked_add(len).ok_or(Error::Invalid)
}

impl SimMm {
    /// A new, empty address space on `world`.
    pub fn new(world: &Arc<SimWorld>) -> Arc<SimMm> {
        Arc::new(SimMm {
            world: world.clone(),
            mmap_lock: Mutex::new(()),
            st: Mutex::new(MmState {
                next_mmap: 0x1000_0000,
                ..MmState::default()
            }),
            regs: Mutex::new(Regs::default()),
            inject: Mutex::new(MmInject::default()),
        })
    }

    /// The machine.
    pub fn world(&self) -> &Arc<SimWorld> {
        &self.world
    }
}
