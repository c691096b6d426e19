//! [`FfiDma`]: a DMA mapper over the C functions of a [`gpusvm_dma_ops`] table.

use super::*;

/// A DMA mapper over C functions and their context.
#[derive(Debug, Clone, Copy)]
pub struct FfiDma {
    ctx: *mut c_void,
    ops: gpusvm_dma_ops,
}

impl FfiDma {
    pub(super) fn new(ctx: *mut c_void, ops: gpusvm_dma_ops) -> Option<FfiDma> {
        ops.map_page?;
        ops.unmap_page?;
        Some(FfiDma { ctx, ops })
    }
}

impl DmaMapper for FfiDma {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        let f = self.ops.map_page.ok_or(Error::NotSupported)?;
        let mut addr = 0u64;
        // SAFETY: the C function honours `map_page`; `addr` is a valid out-pointer.
        from_c(unsafe { f(self.ctx, pfn, order, dir_to_c(dir), &mut addr) })?;
        Ok(addr)
    }
    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        if let Some(f) = self.ops.unmap_page {
            // SAFETY: the C function honours `unmap_page`.
            unsafe { f(self.ctx, addr, order, dir_to_c(dir)) }
        }
    }
    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        let f = self.ops.map_peer.ok_or(Error::NotSupported)?;
        let mut addr = 0u64;
        // SAFETY: the C function honours `map_peer`; `addr` is a valid out-pointer.
        from_c(unsafe { f(self.ctx, resource, order, dir_to_c(dir), &mut addr) })?;
        Ok(addr)
    }
    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        if let Some(f) = self.ops.unmap_peer {
            // SAFETY: the C function honours `unmap_peer`.
            unsafe { f(self.ctx, addr, order, dir_to_c(dir)) }
        }
    }
}
