//! The platform: the facets bundled for [`Svm`], and the wiring of the address space's
//! invalidations into the `Svm` (the part of a driver's MMU-notifier callback).

use crate::devmem::FwVram;
use crate::devpt::DevPt;
use crate::dma::IdentityDma;
use crate::mm::{FwMm, InvalidationSink};
use crate::phys::Phys;
use alloc::rc::Rc;
use gpusvm::platform::{NotifierId, Platform};
use gpusvm::{Event, Svm};

gpusvm::pool_allocator!(
    /// The crate's memory: a 128 KiB pool of 64-byte blocks in static memory (the crate never
    /// uses the firmware's heap; the scenario's own bookkeeping does).
    pub FwPool, 2048
);

/// The host facet: the crate's spinning locks, memory from [`FwPool`].
pub type FwHost = gpusvm::sync::SpinHost<FwPool>;

/// The device memory's pagemap, on the firmware's host.
pub type FwPagemap = gpusvm::pagemap::Pagemap<FwVram, FwHost>;
/// A shared reference to [`FwPagemap`] (allocated from [`FwPool`]).
pub type FwPagemapRef = gpusvm::HostArc<FwHost, FwPagemap>;

/// Everything the crate needs from the one device mirroring the one address space.
pub struct FwPlatform {
    /// The CPU address space.
    pub mm: FwMm,
    /// The device's DMA mapper.
    pub dma: IdentityDma,
    /// The device page table.
    pub pt: DevPt,
    /// The physical memory (for the clock).
    pub phys: Rc<Phys>,
}

impl Platform for FwPlatform {
    type Mm = FwMm;
    type Dma = IdentityDma;
    type Pt = DevPt;
    type Mem = FwVram;
    type Host = FwHost;

    fn mm(&self) -> &FwMm {
        &self.mm
    }
    fn dma(&self) -> &IdentityDma {
        &self.dma
    }
    fn page_table(&self) -> &DevPt {
        &self.pt
    }
    fn now_ns(&self) -> u64 {
        self.phys.now_ns()
    }
}

/// The MMU-notifier callback: CPU page-table changes reach the `Svm`.
impl InvalidationSink for Svm<FwPlatform> {
    fn invalidate_begin(&self, id: NotifierId, start: u64, end: u64, event: Event) {
        Svm::invalidate_begin(self, id, start, end, event);
    }
    fn invalidate_end(&self, id: NotifierId, start: u64, end: u64) {
        Svm::invalidate_end(self, id, start, end);
    }
}
