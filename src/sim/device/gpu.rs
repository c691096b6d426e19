//! [`SimGpu`]: a simulated device mirroring a simulated address space through an
//! [`Svm`](crate::Svm), whose accesses fault, bind and retry like a driver's fault handler.

use super::{DevPte, SimDevice, SimDevmem, SimPagemapArc, SimPlatform, SIM_P2P};
use crate::pagemap::{Pagemap, PeerId};
use crate::pages::Protocol;
use crate::platform::{OwnerId, PagemapId, PAGE_SHIFT, PAGE_SIZE};
use crate::sim::{lock, SimHost, SimMm, SimPagemapHooks};
use crate::{Access, Error, Result, Svm, SvmConfig, Window};
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

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
        // Meet the pagemaps of the devices already on the machine.
        for pm in mm.world().pagemaps() {
            // Refused only for a second pagemap with the same id: the first stays.
            let _ = svm.attach_pagemap(pm);
        }
        mm.world().register_gpu(&svm);
        Ok(SimGpu {
            svm,
            dev,
            mm: mm.clone(),
        })
    }

    /// A device `id` that joins the machine's owner registry
    /// ([`SimWorld::owners`](crate::sim::SimWorld::owners)): it shares an owner with the devices
    /// it has links to (see [`SimWorld::link`](crate::sim::SimWorld::link)). With
    /// `vram_pages > 0` it gets device memory and prefers it for faulting ranges.
    pub fn join(mm: &Arc<SimMm>, id: u32, vram_pages: u64) -> Result<SimGpu> {
        let mut cfg = SvmConfig::new(0, 1 << 47);
        cfg.prefer_devmem = vram_pages > 0;
        SimGpu::join_with(mm, id, vram_pages, cfg)
    }

    /// [`SimGpu::join`] with a configuration.
    pub fn join_with(mm: &Arc<SimMm>, id: u32, vram_pages: u64, cfg: SvmConfig) -> Result<SimGpu> {
        let gpu = SimGpu::new(mm, id, cfg)?;
        let world = mm.world();
        let svm_peer = PeerId(2 * u64::from(id) + 1);
        let pm_peer = PeerId(2 * u64::from(id));
        // The device's Svm and pagemap join as one unit so they always share an owner.
        let owner = if vram_pages > 0 {
            world.owners.join_all(&[svm_peer, pm_peer])?
        } else {
            world.owners.join(svm_peer)?
        };
        gpu.svm.set_owner(Some(owner));
        if vram_pages > 0 {
            gpu.add_devmem(vram_pages, owner.0)?;
        }
        Ok(gpu)
    }

    /// Tear the device down while others may still map its pages: move every page of its
    /// device memory back to system memory (which invalidates the peers' mappings), detach
    /// its pagemap everywhere, close its `Svm`, and leave the owner registry.
    pub fn teardown(&self) -> Result<()> {
        let world = self.mm.world().clone();
        if let Some(pm) = self.svm.pagemap() {
            let view = self.mm.view(usize::MAX);
            for _ in 0..8 {
                for a in pm.allocations()?.iter() {
                    let (s, e) = a.va();
                    crate::migrate::to_ram(&view, &pm, s, e)?;
                }
                if pm.live_allocations() == 0 {
                    break;
                }
            }
            if pm.live_allocations() != 0 {
                return Err(Error::Busy);
            }
            world.forget_pagemap(pm.id());
            // Taking the pagemap away cannot be refused.
            let _ = self.svm.set_pagemap(None);
        }
        self.svm.close();
        world.forget_gpu(&self.svm);
        let _ = world.owners.leave(PeerId(2 * u64::from(self.dev.id())));
        let _ = world.owners.leave(PeerId(2 * u64::from(self.dev.id()) + 1));
        Ok(())
    }

    /// A device `id` with `vram_pages` pages of device memory in a pagemap of owner `owner`
    /// (pagemap id = `id`), preferring device memory for faulting ranges.
    pub fn with_devmem(mm: &Arc<SimMm>, id: u32, vram_pages: u64, owner: u32) -> Result<SimGpu> {
        let mut cfg = SvmConfig::new(0, 1 << 47);
        cfg.prefer_devmem = true;
        let gpu = SimGpu::new(mm, id, cfg)?;
        gpu.add_devmem(vram_pages, owner)?;
        Ok(gpu)
    }

    /// Give the device `vram_pages` pages of device memory as pagemap `PagemapId(id)` of owner
    /// `owner`, registered with the machine so CPU faults on its pages come back to it.
    ///
    /// Errors: [`Error::NoMem`] if the pagemap cannot be allocated (nothing changed then).
    pub fn add_devmem(&self, vram_pages: u64, owner: u32) -> Result<SimPagemapArc> {
        let pm = Pagemap::new(
            PagemapId(self.dev.id()),
            OwnerId(owner),
            SimDevmem(self.dev.clone()),
        )?;
        self.dev.set_vram_pages(vram_pages);
        let world = self.mm.world();
        let hooks: Arc<dyn SimPagemapHooks> = Arc::new(pm.clone());
        world.register_pagemap(pm.id(), &hooks);
        world.add_pagemap(pm.clone());
        // Refused only if a peer's pagemap has this device's id, which the machine never
        // creates (pagemap ids are device ids), or without memory for the pagemap set.
        let _ = self.svm.set_pagemap(Some(pm.clone()));
        Ok(pm)
    }

    /// A device with the default configuration over the whole 47-bit user address space.
    pub fn with_defaults(mm: &Arc<SimMm>, id: u32) -> Result<SimGpu> {
        SimGpu::new(mm, id, SvmConfig::new(0, 1 << 47))
    }

    /// The driver's part of [`Svm::bind`]: write one device PTE per page of `entries` (laid
    /// out from `range.start()`), writable as the entry is and with the atomic-enable bit from
    /// [`Svm::device_atomics`]. Returns the bytes the entries cover.
    pub fn write_ptes(&self, range: &crate::Range<SimHost>, entries: &[crate::PageEntry]) -> u64 {
        let atomics = self.svm.device_atomics(range);
        let mut pt = lock(&self.dev.pt);
        let mut vpn = range.start() >> PAGE_SHIFT;
        let mut bytes = 0u64;
        for e in entries {
            for i in 0..e.npages() {
                pt.insert(
                    vpn + i,
                    DevPte {
                        addr: e.addr() + (i << PAGE_SHIFT),
                        proto: e.protocol(),
                        writable: e.writable(),
                        atomic: atomics.allows(*e),
                    },
                );
            }
            vpn += e.npages();
            bytes = bytes.saturating_add(e.size());
        }
        bytes
    }

    /// Fault `addr` in for `access` and bind the range in the device page tables.
    pub fn fault(&self, addr: u64, access: Access) -> Result<()> {
        self.svm
            .handle_fault_and_bind(addr, access, Window::ALL, |range, entries| {
                self.write_ptes(range, entries)
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
                    // Writes need a writable entry; atomics also need the atomic-enable bit.
                    let ok = match access {
                        Access::Read => true,
                        Access::Write => p.writable,
                        Access::Atomic => p.writable && p.atomic,
                    };
                    if ok && p.proto == Protocol::DEVICE_LOCAL {
                        let mut v = lock(&self.dev.vram);
                        let dpfn = p.addr >> PAGE_SHIFT;
                        let mut b = [0u8; 8];
                        if v.read(dpfn, off, &mut b).is_err() {
                            v.violations.push(std::format!(
                                "device access through free device frame {dpfn:#x} at {addr:#x}"
                            ));
                            return Err(Error::Fault);
                        }
                        let old = u64::from_le_bytes(b);
                        if let Some(new) = op(old) {
                            v.write(dpfn, off, &new.to_le_bytes())?;
                        }
                        return Ok(old);
                    }
                    if ok && p.proto == SIM_P2P {
                        let target = {
                            let io = lock(&self.dev.iommu);
                            io.lookup(p.addr)
                                .filter(|(_, m)| m.peer)
                                .map(|(b, m)| m.pfn + ((p.addr - b) >> PAGE_SHIFT))
                        };
                        let Some(dpfn) = target else {
                            lock(&self.dev.iommu).violations.push(std::format!(
                                "device access through dead peer mapping {:#x} at {addr:#x}",
                                p.addr
                            ));
                            return Err(Error::Fault);
                        };
                        let peer = self.dev.reach(dpfn)?;
                        let mut v = lock(&peer.vram);
                        let mut b = [0u8; 8];
                        v.read(dpfn, off, &mut b)?;
                        let old = u64::from_le_bytes(b);
                        if let Some(new) = op(old) {
                            v.write(dpfn, off, &new.to_le_bytes())?;
                        }
                        return Ok(old);
                    }
                    if ok {
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

    /// Check this device's invariants (see [`check_invariants`](crate::sim::check_invariants)).
    pub fn check(&self) -> core::result::Result<(), String> {
        crate::sim::check_invariants(&self.mm, &[self])
    }

    /// A short description of where each range lives.
    pub fn describe(&self) -> String {
        let mut rows: Vec<(u64, u64, u64, bool, String)> = Vec::new();
        self.svm.for_each_range(|(ns, _), r| {
            rows.push((
                ns,
                r.start(),
                r.end(),
                r.pages.lock().valid(),
                std::format!("{:?}", r.flags()),
            ));
        });
        let mut s = String::new();
        for (ns, start, end, valid, flags) in rows {
            // Where the pages are, from the CPU page table.
            let (mut ram, mut absent) = (0u64, 0u64);
            let mut dev: BTreeMap<u32, u64> = BTreeMap::new();
            for vpn in start >> PAGE_SHIFT..end >> PAGE_SHIFT {
                match self.mm.pte(vpn << PAGE_SHIFT) {
                    None => absent += 1,
                    Some(p) => match p.dev {
                        Some((pm, _)) => *dev.entry(pm.0).or_default() += 1,
                        None => ram += 1,
                    },
                }
            }
            let mut at = Vec::new();
            if ram > 0 {
                at.push(std::format!("RAM {ram}"));
            }
            for (d, n) in dev {
                at.push(std::format!("gpu{d} memory {n}"));
            }
            if absent > 0 {
                at.push(std::format!("absent {absent}"));
            }
            s.push_str(&std::format!(
                "  notifier {ns:#x} range [{start:#x}, {end:#x}) {:>5} KiB  pages: {:<28} bound: {:<5} {flags}\n",
                (end - start) / 1024,
                at.join(", "),
                if valid { "yes" } else { "no" },
            ));
        }
        if s.is_empty() {
            s = "  no ranges\n".to_string();
        }
        s
    }
}
