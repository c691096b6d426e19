//! The device memory: [`VRAM_PAGES`](crate::phys::VRAM_PAGES) pages of static RAM, an
//! allocator over them, and a copy engine that moves pages between them and the system frame
//! pool (system memory is addressed by bus address through the [`IdentityDma`] mapper, device
//! memory by device physical address `dpfn << 12`).

use crate::dma::IdentityDma;
use crate::phys::{Phys, PhysError};
use alloc::rc::Rc;
use gpusvm::platform::{CopyError, CopyKind, CopyRun, DeviceMemory, PAGE_SHIFT};
use gpusvm::{Error, Result};

/// The device memory of the one device.
pub struct FwVram {
    phys: Rc<Phys>,
    dma: IdentityDma,
}

impl FwVram {
    /// Device memory over `phys`, whose copy engine maps system pages with `dma`.
    pub fn new(phys: Rc<Phys>, dma: IdentityDma) -> Self {
        FwVram { phys, dma }
    }

    /// Execute one copy run.
    fn run(&self, r: &CopyRun) -> core::result::Result<(), PhysError> {
        let src = r.src >> PAGE_SHIFT;
        let dst = r.dst >> PAGE_SHIFT;
        for k in 0..r.npages {
            let (s, d) = (src.wrapping_add(k), dst.wrapping_add(k));
            match r.kind {
                CopyKind::RamToDevice => self.phys.sys_to_vram(s, d)?,
                CopyKind::DeviceToRam => self.phys.vram_to_sys(s, d)?,
                CopyKind::ZeroDevice => self.phys.with_vram(d, |f| f.fill(0))?,
                // One device: there is no peer to copy from.
                CopyKind::DeviceToDevice => return Err(PhysError::BadFrame),
            }
        }
        Ok(())
    }
}

impl DeviceMemory for FwVram {
    type Dma = IdentityDma;

    fn dma(&self) -> &IdentityDma {
        &self.dma
    }

    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        match self.phys.alloc_vram(out) {
            Ok(()) => {
                Phys::bump(&self.phys.vram_allocs, 1);
                Ok(())
            }
            Err(PhysError::Full) => Err(Error::NoMem),
            Err(_) => Err(Error::Busy),
        }
    }

    // May be called from the CPU page-free path: no sleeping, no call into the crate.
    fn release(&self, dpfns: &[u64]) {
        let bad = self.phys.free_vram(dpfns);
        Phys::bump(&self.phys.vram_releases, 1);
        Phys::bump(&self.phys.vram_bad_releases, bad as u64);
    }

    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        for (completed, r) in runs.iter().enumerate() {
            if self.run(r).is_err() {
                return Err(CopyError {
                    completed,
                    error: Error::Fault,
                });
            }
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.phys.now_ns()
    }
}
