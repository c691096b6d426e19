//! [`FfiDevmem`]: the device memory of one pagemap over a [`gpusvm_devmem_ops`] table
//! (allocation, release, the copy engine and its DMA).

use super::*;

/// A pagemap's device memory over a [`gpusvm_devmem_ops`] table, checked.
#[derive(Debug)]
pub struct FfiDevmem {
    ctx: *mut c_void,
    alloc: unsafe extern "C" fn(*mut c_void, *mut u64, usize) -> c_int,
    release: unsafe extern "C" fn(*mut c_void, *const u64, usize),
    copy: unsafe extern "C" fn(*mut c_void, *const gpusvm_copy_run, usize, *mut usize) -> c_int,
    now_ns: unsafe extern "C" fn(*mut c_void) -> u64,
    device_map: Option<unsafe extern "C" fn(*mut c_void, u64, u8, *mut u64, *mut u8) -> c_int>,
    dma: FfiDma,
}

// SAFETY: the C contract of `gpusvm_devmem_ops`: callable from any thread with its `ctx`.
unsafe impl Send for FfiDevmem {}
// SAFETY: as above.
unsafe impl Sync for FfiDevmem {}

impl FfiDevmem {
    /// Check a C table: `None` if a required function is missing.
    pub(crate) fn new(o: &gpusvm_devmem_ops) -> Option<FfiDevmem> {
        Some(FfiDevmem {
            ctx: o.ctx,
            alloc: o.alloc?,
            release: o.release?,
            copy: o.copy?,
            now_ns: o.now_ns?,
            device_map: o.device_map,
            dma: FfiDma::new(o.ctx, o.dma)?,
        })
    }
}

fn run_to_c(r: &CopyRun) -> gpusvm_copy_run {
    gpusvm_copy_run {
        kind: match r.kind {
            CopyKind::RamToDevice => GPUSVM_COPY_RAM_TO_DEVICE,
            CopyKind::DeviceToRam => GPUSVM_COPY_DEVICE_TO_RAM,
            CopyKind::DeviceToDevice => GPUSVM_COPY_DEVICE_TO_DEVICE,
            CopyKind::ZeroDevice => GPUSVM_COPY_ZERO_DEVICE,
        },
        src: r.src,
        dst: r.dst,
        npages: r.npages,
    }
}

impl DeviceMemory for FfiDevmem {
    type Dma = FfiDma;
    fn dma(&self) -> &FfiDma {
        &self.dma
    }
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        // SAFETY: `out` is a valid buffer of `out.len()` frames for the C function to fill.
        from_c(unsafe { (self.alloc)(self.ctx, out.as_mut_ptr(), out.len()) })
    }
    fn release(&self, dpfns: &[u64]) {
        // SAFETY: `dpfns` is a valid buffer; the C function reads it.
        unsafe { (self.release)(self.ctx, dpfns.as_ptr(), dpfns.len()) }
    }
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        let fail = |error| CopyError {
            completed: 0,
            error,
        };
        let mut buf: Buf<gpusvm_copy_run> =
            HeapVec::with_capacity(runs.len(), AllocCtx::MaySleep).map_err(fail)?;
        for r in runs {
            buf.push_within_capacity(run_to_c(r))
                .map_err(|_| fail(Error::NoMem))?;
        }
        let mut completed = 0usize;
        // SAFETY: `buf` holds `runs.len()` entries the C function reads; `completed` is a valid
        // out-pointer.
        let rc = unsafe {
            (self.copy)(
                self.ctx,
                buf.as_slice().as_ptr(),
                runs.len(),
                &mut completed,
            )
        };
        from_c(rc).map_err(|error| CopyError {
            completed: completed.min(runs.len()),
            error,
        })
    }
    fn now_ns(&self) -> u64 {
        // SAFETY: the C function honours `now_ns`.
        unsafe { (self.now_ns)(self.ctx) }
    }
    fn device_map(&self, dpfn: u64, order: u8) -> Result<(u64, Protocol)> {
        let f = self.device_map.ok_or(Error::NotSupported)?;
        let (mut res, mut proto) = (0u64, 0u8);
        // SAFETY: the C function honours `device_map`; both are valid out-pointers.
        from_c(unsafe { f(self.ctx, dpfn, order, &mut res, &mut proto) })?;
        if proto <= Protocol::DEVICE_LOCAL.0 || proto > Protocol::MAX {
            return Err(Error::Invalid);
        }
        Ok((res, Protocol(proto)))
    }
}
