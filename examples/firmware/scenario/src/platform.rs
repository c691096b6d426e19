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
    type Host = gpusvm::DefaultHost;

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
