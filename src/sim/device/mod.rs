//! A simulated device: an IOMMU that records every DMA mapping, device page tables that the
//! test reads and writes through, and the glue ([`SimGpu`]) that turns a device access to an
//! unmapped address into a call of the fault service.
//!
//! One file per component: `dma.rs` (the IOMMU and DMA mapping), `vram.rs` (device memory and
//! the copy engine), `inject.rs` (fault injection), `gpu.rs` ([`SimGpu`], device accesses
//! through the fault service); the device and its page table are here.

use crate::pages::Protocol;
use crate::platform::{DevicePageTable, Platform, PAGE_SHIFT, PAGE_SIZE};
use crate::sim::{lock, SimMmView, SimWorld};
use crate::{Error, Result};
use inject::DevInject;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::vec::Vec;

mod dma;
mod gpu;
mod inject;
mod vram;

pub use dma::DmaMapping;
pub(crate) use dma::Iommu;
pub use gpu::SimGpu;
pub(crate) use vram::Vram;
pub use vram::{SimDevmem, SimPagemapArc, SIM_P2P, VRAM_POISON};

/// A device page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevPte {
    /// Address the device uses (bus address for system pages).
    pub addr: u64,
    /// How the address is reached.
    pub proto: Protocol,
    /// Writable by the device.
    pub writable: bool,
    /// Device atomics allowed (the atomic-enable bit, from
    /// [`Svm::device_atomics`](crate::Svm::device_atomics)); an atomic through an entry without
    /// it faults.
    pub atomic: bool,
}

/// A simulated device (GPU): IOMMU and page tables.
#[derive(Debug)]
pub struct SimDevice {
    id: u32,
    /// Weak: the world holds the machine's pagemaps, which hold their devices.
    world: Weak<SimWorld>,
    pub(crate) iommu: Mutex<Iommu>,
    pub(crate) pt: Mutex<BTreeMap<u64, DevPte>>,
    zaps: std::sync::atomic::AtomicU64,
    inject: Mutex<DevInject>,
    pub(crate) vram: Mutex<Vram>,
}

impl SimDevice {
    /// A new device with id `id` on `world`.
    pub fn new(world: &Arc<SimWorld>, id: u32) -> Arc<SimDevice> {
        let dev = Arc::new(SimDevice {
            id,
            world: Arc::downgrade(world),
            iommu: Mutex::new(Iommu {
                next_iova: 0x1_0000_0000,
                ..Iommu::default()
            }),
            pt: Mutex::new(BTreeMap::new()),
            zaps: std::sync::atomic::AtomicU64::new(0),
            inject: Mutex::new(DevInject::default()),
            vram: Mutex::new(Vram {
                base: (u64::from(id) + 1) << 32,
                ..Vram::default()
            }),
        });
        world.register_device(&dev);
        dev
    }

    /// The device id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The machine (alive while any address space or device user holds it).
    pub(super) fn world(&self) -> Result<Arc<SimWorld>> {
        self.world.upgrade().ok_or(Error::Closed)
    }

    /// The device page-table entries `(virtual page number, entry)`.
    pub fn ptes(&self) -> Vec<(u64, DevPte)> {
        lock(&self.pt).iter().map(|(v, p)| (*v, *p)).collect()
    }

    /// Number of zap calls.
    pub fn zap_count(&self) -> u64 {
        self.zaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Translate a device PTE to the system frame it reaches.
    pub(super) fn frame_of(&self, pte: &DevPte) -> Result<u64> {
        if pte.proto != Protocol::SYSTEM {
            return Err(Error::NotSupported);
        }
        self.bus_to_pfn(pte.addr)
    }
}

impl DevicePageTable for SimDevice {
    fn zap(&self, start: u64, end: u64) {
        self.zaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pt = lock(&self.pt);
        // Invalidation context: no allocation (the contract of `zap`; checked by
        // tests/no_alloc_invalidate.rs).
        let pages = start >> PAGE_SHIFT..end.div_ceil(PAGE_SIZE);
        while let Some(k) = pt.range(pages.clone()).next().map(|(k, _)| *k) {
            pt.remove(&k);
        }
    }
}

/// The [`Platform`] of one simulated device mirroring one simulated address space.
#[derive(Debug, Clone)]
pub struct SimPlatform {
    mm: SimMmView,
    dev: Arc<SimDevice>,
    world: Arc<SimWorld>,
}

impl Platform for SimPlatform {
    type Mm = SimMmView;
    type Dma = SimDevice;
    type Pt = SimDevice;
    type Mem = SimDevmem;
    type Host = super::SimHost;
    fn mm(&self) -> &SimMmView {
        &self.mm
    }
    fn dma(&self) -> &SimDevice {
        &self.dev
    }
    fn page_table(&self) -> &SimDevice {
        &self.dev
    }
    fn now_ns(&self) -> u64 {
        self.world.now_ns()
    }
}
