//! An opaque platform: every value it hands to the crate passes through `black_box`, so the
//! optimiser cannot assume anything about page states, errors, addresses or counts — every
//! path of the crate that depends on the platform stays in the binary.

use core::hint::black_box;
use gpusvm::pages::Protocol;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyRun, CpuPage, DeviceMemory, DevicePageTable,
    DmaDirection, DmaMapper, MigrateDst, MigrateRequest, MigrateSrc, NotifierId, PageSink,
    Platform, Vma,
};
use gpusvm::sync::SpinHost;
use gpusvm::Result;

gpusvm::pool_allocator!(
    /// The only memory the crate gets: a 256 KiB static pool.
    pub ProofAlloc, 4096
);

/// The host: spinning locks, the static pool.
pub type ProofHost = SpinHost<ProofAlloc>;

/// An opaque value of type `T` built from `v`.
fn opaque<T>(v: T) -> T {
    black_box(v)
}

/// Fill `out` with opaque values.
fn fill<T: Copy>(out: &mut [T], v: T) {
    for o in out.iter_mut() {
        *o = opaque(v);
    }
}

/// The CPU address space.
#[derive(Debug, Default)]
pub struct OpaqueMm;

impl AddressSpace for OpaqueMm {
    type NotifierHandle = u64;
    fn find_vma(&self, addr: u64) -> Option<Vma> {
        opaque(Some(Vma {
            start: addr,
            end: addr,
            flags: gpusvm::platform::VmaFlags::all(),
        }))
    }
    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        fill(
            out,
            CpuPage::System {
                pfn: req.start,
                order: 0,
                writable: req.write,
            },
        );
        opaque(Ok(()))
    }
    fn collect_packed(&self, req: &CollectRequest, sink: &mut PageSink<'_>) -> Result<()> {
        // Opaque: the crate's fallback (collect_pages) and every report kind stay reachable.
        if opaque(req.start) & 1 == 0 {
            return opaque(Err(gpusvm::Error::NotSupported));
        }
        let pfns = [opaque(req.start), opaque(req.end)];
        sink.push_base_pages(&pfns, opaque(req.write));
        sink.push_system(opaque(req.start), opaque(9), opaque(true));
        sink.push_device(
            opaque(gpusvm::platform::PagemapId(1)),
            opaque(gpusvm::platform::OwnerId(1)),
            opaque(req.end),
            opaque(0),
        );
        sink.push_absent();
        while sink.remaining() > 0 && !sink.refused() {
            sink.push_system(opaque(sink.next_page()), opaque(0), opaque(true));
        }
        opaque(Ok(()))
    }
    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<u64> {
        opaque(Ok(id.0 ^ start ^ end))
    }
    fn unregister_notifier(&self, handle: u64) {
        black_box(handle);
    }
    fn migrate_isolate(&self, req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        fill(src, MigrateSrc::System { pfn: req.start });
        opaque(Ok(()))
    }
    fn migrate_finalize(&self, req: &MigrateRequest, src: &[MigrateSrc], dst: &[MigrateDst]) {
        black_box((req, src, dst));
    }
    fn alloc_system_pages(&self, out: &mut [u64]) -> Result<()> {
        fill(out, 7);
        opaque(Ok(()))
    }
    fn free_system_pages(&self, pfns: &[u64]) {
        black_box(pfns);
    }
}

/// DMA: opaque bus addresses and failures.
#[derive(Debug, Default)]
pub struct OpaqueDma;

impl DmaMapper for OpaqueDma {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        opaque(Ok(pfn ^ u64::from(order) ^ dir as u64))
    }
    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        black_box((addr, order, dir));
    }
    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        opaque(Ok(resource ^ u64::from(order) ^ dir as u64))
    }
    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        black_box((addr, order, dir));
    }
}

/// The device page table.
#[derive(Debug, Default)]
pub struct OpaquePt;

impl DevicePageTable for OpaquePt {
    fn zap(&self, start: u64, end: u64) {
        black_box((start, end));
    }
}

/// Device memory with a copy engine.
#[derive(Debug, Default)]
pub struct OpaqueMem {
    dma: OpaqueDma,
}

impl DeviceMemory for OpaqueMem {
    type Dma = OpaqueDma;
    fn dma(&self) -> &OpaqueDma {
        &self.dma
    }
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        fill(out, 3);
        opaque(Ok(()))
    }
    fn release(&self, dpfns: &[u64]) {
        black_box(dpfns);
    }
    fn copy(&self, runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        black_box(runs);
        opaque(Ok(()))
    }
    fn now_ns(&self) -> u64 {
        opaque(0)
    }
    fn device_map(&self, dpfn: u64, order: u8) -> Result<(u64, Protocol)> {
        opaque(Ok((dpfn ^ u64::from(order), Protocol(opaque(1)))))
    }
}

/// The platform.
#[derive(Debug, Default)]
pub struct OpaquePlatform {
    mm: OpaqueMm,
    dma: OpaqueDma,
    pt: OpaquePt,
}

impl Platform for OpaquePlatform {
    type Mm = OpaqueMm;
    type Dma = OpaqueDma;
    type Pt = OpaquePt;
    type Mem = OpaqueMem;
    type Host = ProofHost;
    fn mm(&self) -> &OpaqueMm {
        &self.mm
    }
    fn dma(&self) -> &OpaqueDma {
        &self.dma
    }
    fn page_table(&self) -> &OpaquePt {
        &self.pt
    }
    fn now_ns(&self) -> u64 {
        opaque(0)
    }
}
