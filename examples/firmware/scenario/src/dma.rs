//! The DMA mapper: no IOMMU, the bus address of a system frame is its physical address
//! (`pfn << 12`). It counts live mappings so that the scenario can check that every mapping the
//! crate made is unmapped exactly once.

use crate::phys::Phys;
use alloc::rc::Rc;
use gpusvm::platform::{DmaDirection, DmaMapper, PAGE_SHIFT};
use gpusvm::{Error, Result};

/// The identity DMA mapper of the device (shared by the fault path and the copy engine).
#[derive(Clone)]
pub struct IdentityDma {
    phys: Rc<Phys>,
}

impl IdentityDma {
    /// A mapper over `phys`.
    pub fn new(phys: Rc<Phys>) -> Self {
        IdentityDma { phys }
    }
}

impl DmaMapper for IdentityDma {
    fn map_page(&self, pfn: u64, order: u8, _dir: DmaDirection) -> Result<u64> {
        // Every frame of the (naturally aligned) block must be a system frame of the pool.
        let last = pfn
            .checked_add((1u64 << order.min(63)).wrapping_sub(1))
            .ok_or(Error::Fault)?;
        if !self.phys.is_sys(pfn) || !self.phys.is_sys(last) {
            return Err(Error::Fault);
        }
        Phys::bump(&self.phys.dma_live, 1);
        Phys::bump(&self.phys.dma_total, 1);
        pfn.checked_shl(PAGE_SHIFT).ok_or(Error::Fault)
    }

    // Invalidation context: no allocation, no sleeping; only counters change.
    fn unmap_page(&self, addr: u64, _order: u8, _dir: DmaDirection) {
        if self.phys.is_sys(addr >> PAGE_SHIFT) && self.phys.dma_live.get() > 0 {
            Phys::drop_count(&self.phys.dma_live, 1);
        } else {
            Phys::bump(&self.phys.dma_bad_unmaps, 1);
        }
    }
}
