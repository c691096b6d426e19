//! A simulated device: an IOMMU that records every DMA mapping, device page tables that the
//! test reads and writes through, and the glue ([`SimGpu`]) that turns a device access to an
//! unmapped address into a call of the fault service.

use super::cpu::{SimMm, SimMmView};
use super::world::SimWorld;
use super::{lock, Rng};
use crate::error::{Error, Result};
use crate::fault::Access;
use crate::pages::Protocol;
use crate::platform::{DevicePageTable, DmaDirection, DmaMapper, Platform, PAGE_SHIFT, PAGE_SIZE};
use crate::svm::{Svm, SvmConfig, Window};
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

/// One live DMA mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapping {
    /// First frame.
    pub pfn: u64,
    /// Order.
    pub order: u8,
    /// Direction.
    pub dir: DmaDirection,
}

#[derive(Debug, Default)]
pub(crate) struct Iommu {
    pub(crate) maps: BTreeMap<u64, DmaMapping>,
    next_iova: u64,
    pub(crate) total_maps: u64,
    pub(crate) total_unmaps: u64,
    pub(crate) violations: Vec<String>,
}

impl Iommu {
    /// The mapping containing bus address `addr`: `(base, mapping)`.
    pub(crate) fn lookup(&self, addr: u64) -> Option<(u64, DmaMapping)> {
        self.maps
            .range(..=addr)
            .next_back()
            .filter(|(b, m)| addr < *b + (PAGE_SIZE << m.order))
            .map(|(b, m)| (*b, *m))
    }
}

/// A device page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevPte {
    /// Address the device uses (bus address for system pages).
    pub addr: u64,
    /// How the address is reached.
    pub proto: Protocol,
    /// Writable by the device.
    pub writable: bool,
}

#[derive(Debug, Default)]
struct DevInject {
    /// The `n`-th DMA map from now fails (1 = the next one); 0 = off.
    dma_fail_at: u64,
    dma_fail_ppm: u32,
    rng: Rng,
}

/// A simulated device (GPU): IOMMU and page tables.
#[derive(Debug)]
pub struct SimDevice {
    id: u32,
    world: Arc<SimWorld>,
    pub(crate) iommu: Mutex<Iommu>,
    pub(crate) pt: Mutex<BTreeMap<u64, DevPte>>,
    zaps: std::sync::atomic::AtomicU64,
    inject: Mutex<DevInject>,
}

impl SimDevice {
    /// A new device with id `id` on `world`.
    pub fn new(world: &Arc<SimWorld>, id: u32) -> Arc<SimDevice> {
        Arc::new(SimDevice {
            id,
            world: world.clone(),
            iommu: Mutex::new(Iommu {
                next_iova: 0x1_0000_0000,
                ..Iommu::default()
            }),
            pt: Mutex::new(BTreeMap::new()),
            zaps: std::sync::atomic::AtomicU64::new(0),
            inject: Mutex::new(DevInject::default()),
        })
    }

    /// The device id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Fail the `n`-th DMA map from now (1 = the next one) with `NoMem`; 0 turns it off.
    pub fn inject_dma_fail_at(&self, n: u64) {
        lock(&self.inject).dma_fail_at = n;
    }

    /// Fail DMA maps at random (seeded), `ppm` in a million.
    pub fn inject_dma_fail_rate(&self, ppm: u32, seed: u64) {
        let mut i = lock(&self.inject);
        i.dma_fail_ppm = ppm;
        i.rng = Rng::new(seed);
    }

    /// Live DMA mappings `(bus address, mapping)`.
    pub fn dma_mappings(&self) -> Vec<(u64, DmaMapping)> {
        lock(&self.iommu)
            .maps
            .iter()
            .map(|(a, m)| (*a, *m))
            .collect()
    }

    /// DMA maps and unmaps performed so far.
    pub fn dma_counts(&self) -> (u64, u64) {
        let i = lock(&self.iommu);
        (i.total_maps, i.total_unmaps)
    }

    /// Misuses of the IOMMU seen so far (unknown or mismatched unmaps, maps of dead frames).
    pub fn dma_violations(&self) -> Vec<String> {
        lock(&self.iommu).violations.clone()
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
    fn frame_of(&self, pte: &DevPte) -> Result<u64> {
        if pte.proto != Protocol::SYSTEM {
            return Err(Error::NotSupported);
        }
        let io = lock(&self.iommu);
        let (base, m) = io.lookup(pte.addr).ok_or(Error::Fault)?;
        Ok(m.pfn + ((pte.addr - base) >> PAGE_SHIFT))
    }
}

impl DmaMapper for SimDevice {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        {
            let mut i = lock(&self.inject);
            if i.dma_fail_at > 0 {
                i.dma_fail_at -= 1;
                if i.dma_fail_at == 0 {
                    return Err(Error::NoMem);
                }
            }
            let ppm = i.dma_fail_ppm;
            if ppm > 0 && i.rng.below(1_000_000) < u64::from(ppm) {
                return Err(Error::NoMem);
            }
        }
        let live = lock(&self.world.frames).all_live(pfn, order);
        let mut io = lock(&self.iommu);
        if !live {
            io.violations
                .push(std::format!("map of dead frame {pfn:#x} order {order}"));
            return Err(Error::Fault);
        }
        let size = PAGE_SIZE << order;
        let iova = io.next_iova.next_multiple_of(size);
        io.next_iova = iova + size;
        io.maps.insert(iova, DmaMapping { pfn, order, dir });
        io.total_maps += 1;
        Ok(iova)
    }

    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        let mut io = lock(&self.iommu);
        match io.maps.get(&addr).copied() {
            Some(m) if m.order == order && m.dir == dir => {
                io.maps.remove(&addr);
                io.total_unmaps += 1;
            }
            Some(m) => io.violations.push(std::format!(
                "unmap of {addr:#x} with order {order} {dir:?}, mapped as {} {:?}",
                m.order,
                m.dir
            )),
            None => io.violations.push(std::format!(
                "unmap of unknown or already unmapped {addr:#x}"
            )),
        }
    }
}

impl DevicePageTable for SimDevice {
    fn zap(&self, start: u64, end: u64) {
        self.zaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pt = lock(&self.pt);
        let keys: Vec<u64> = pt
            .range(start >> PAGE_SHIFT..end.div_ceil(PAGE_SIZE))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
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

/// A simulated GPU: a [`SimDevice`] mirroring a [`SimMm`] through an [`Svm`]. Device accesses
/// that miss in the device page tables call the fault service and bind, like a driver's fault
/// handler.
#[derive(Debug, Clone)]
pub struct SimGpu {
    /// The mirroring instance.
    pub svm: Arc<Svm<SimPlatform>>,
    /// The device.
    pub dev: Arc<SimDevice>,
    /// The address space.
    pub mm: Arc<SimMm>,
}

/// How many times a device access retries its fault before giving up with `Busy`.
const ACCESS_RETRIES: u32 = 16;

impl SimGpu {
    /// A new device `id` mirroring `mm` with `config`. Errors: those of [`Svm::new`].
    pub fn new(mm: &Arc<SimMm>, id: u32, config: SvmConfig) -> Result<SimGpu> {
        let world = mm.world().clone();
        let dev = SimDevice::new(&world, id);
        let slot = mm.reserve_sink();
        let platform = SimPlatform {
            mm: mm.view(slot),
            dev: dev.clone(),
            world,
        };
        let svm = Arc::new(Svm::new(platform, config)?);
        let weak: std::sync::Weak<Svm<SimPlatform>> = Arc::downgrade(&svm);
        mm.set_sink(slot, weak);
        Ok(SimGpu {
            svm,
            dev,
            mm: mm.clone(),
        })
    }

    /// A device with the default configuration over the whole 47-bit user address space.
    pub fn with_defaults(mm: &Arc<SimMm>, id: u32) -> Result<SimGpu> {
        SimGpu::new(mm, id, SvmConfig::new(0, 1 << 47))
    }

    /// Fault `addr` in for `access` and bind the range in the device page tables.
    pub fn fault(&self, addr: u64, access: Access) -> Result<()> {
        let dev = &self.dev;
        self.svm
            .handle_fault_and_bind(addr, access, Window::ALL, |range, entries| {
                let mut pt = lock(&dev.pt);
                let mut vpn = range.start() >> PAGE_SHIFT;
                for e in entries {
                    for i in 0..e.npages() {
                        pt.insert(
                            vpn + i,
                            DevPte {
                                addr: e.addr() + (i << PAGE_SHIFT),
                                proto: e.protocol(),
                                writable: e.writable(),
                            },
                        );
                    }
                    vpn += e.npages();
                }
            })
            .map(|_| ())
    }

    /// A device access of 8 bytes at `addr` (8-byte aligned): `op` gets the current value and
    /// returns the new one (or `None` for a read).
    fn access(
        &self,
        addr: u64,
        access: Access,
        mut op: impl FnMut(u64) -> Option<u64>,
    ) -> Result<u64> {
        if addr % 8 != 0 {
            return Err(Error::Invalid);
        }
        let vpn = addr >> PAGE_SHIFT;
        let off = (addr % PAGE_SIZE) as usize;
        for _ in 0..ACCESS_RETRIES {
            {
                let pt = lock(&self.dev.pt);
                if let Some(p) = pt.get(&vpn).copied() {
                    if access == Access::Read || p.writable {
                        let pfn = match self.dev.frame_of(&p) {
                            Ok(pfn) => pfn,
                            Err(_) => {
                                lock(&self.dev.iommu).violations.push(std::format!(
                                    "device access through dead mapping {:#x} at {addr:#x}",
                                    p.addr
                                ));
                                return Err(Error::Fault);
                            }
                        };
                        let mut frames = lock(&self.mm.world().frames);
                        let mut b = [0u8; 8];
                        frames.read(pfn, off, &mut b)?;
                        let old = u64::from_le_bytes(b);
                        if let Some(new) = op(old) {
                            frames.write(pfn, off, &new.to_le_bytes())?;
                        }
                        return Ok(old);
                    }
                }
            }
            self.fault(addr, access)?;
        }
        Err(Error::Busy)
    }

    /// Device read of a `u64`.
    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        self.access(addr, Access::Read, |_| None)
    }

    /// Device write of a `u64`.
    pub fn write_u64(&self, addr: u64, v: u64) -> Result<()> {
        self.access(addr, Access::Write, |_| Some(v)).map(|_| ())
    }

    /// Device atomic add; returns the old value.
    pub fn atomic_add(&self, addr: u64, v: u64) -> Result<u64> {
        self.access(addr, Access::Atomic, |old| Some(old.wrapping_add(v)))
    }

    /// Check this device's invariants (see [`check_invariants`](super::check_invariants)).
    pub fn check(&self) -> core::result::Result<(), String> {
        super::check_invariants(&self.mm, &[self])
    }

    /// A short description of where each range lives.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        self.svm.for_each_range(|(ns, _), r| {
            s.push_str(&std::format!(
                "notifier {ns:#x}: range [{:#x}, {:#x}) {} KiB flags {:?} valid {}\n",
                r.start(),
                r.end(),
                r.size() / 1024,
                r.flags(),
                r.pages.lock().valid()
            ));
        });
        if s.is_empty() {
            s = "no ranges".to_string();
        }
        s
    }
}
