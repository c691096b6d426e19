//! The simulator as a kit [`Backend`] (feature `sim`): one or two simulated devices mirroring
//! one simulated address space, with the simulator's invariant checker as
//! [`Backend::self_check`].

use super::{Backend, MappedPage, PageKind};
use crate::pages::Protocol;
use crate::platform::{VmaFlags, PAGE_SHIFT};
use crate::sim::{check_closed, check_invariants, SimGpu, SimMm, SimPlatform, SimWorld};
use crate::{Access, Error, Result, Svm, SvmConfig};
use std::eprintln;
use std::sync::Arc;
use std::vec::Vec;

/// A simulated machine for the kit: a [`SimMm`] mirrored by one or two [`SimGpu`]s.
#[derive(Debug)]
pub struct SimBackend {
    world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    /// The devices (never empty).
    gpus: Vec<SimGpu>,
    /// Devices torn down by [`Backend::remove_device`].
    removed: Vec<bool>,
    /// Whether the devices share an owner.
    linked: bool,
    /// Whether `mmap` backs its memory with huge pages.
    huge: bool,
}

impl SimBackend {
    fn build(
        world: Arc<SimWorld>,
        mm: Arc<SimMm>,
        gpus: Vec<SimGpu>,
        linked: bool,
    ) -> Result<Self> {
        if gpus.is_empty() {
            return Err(Error::Invalid);
        }
        let removed = std::vec![false; gpus.len()];
        Ok(SimBackend {
            world,
            mm,
            gpus,
            removed,
            linked,
            huge: false,
        })
    }

    /// One device without memory, with `config`.
    ///
    /// Context: process context (the simulator's host).
    pub fn with_config(config: SvmConfig) -> Result<Self> {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::new(&mm, 0, config)?;
        Self::build(world, mm, std::vec![gpu], false)
    }

    /// One device without memory, default configuration (everything in system memory).
    ///
    /// Context: process context (the simulator's host).
    pub fn ram_only() -> Result<Self> {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::with_defaults(&mm, 0)?;
        Self::build(world, mm, std::vec![gpu], false)
    }

    /// One device with `vram_pages` pages of device memory, preferred for faulting ranges.
    ///
    /// Context: process context (the simulator's host).
    pub fn with_devmem(vram_pages: u64) -> Result<Self> {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::with_devmem(&mm, 0, vram_pages, 1)?;
        Self::build(world, mm, std::vec![gpu], false)
    }

    /// Two devices with `vram_pages` pages of device memory each, linked (one owner: peer
    /// access) or not (two owners: pages move through system memory).
    ///
    /// Context: process context (the simulator's host).
    pub fn pair(vram_pages: u64, linked: bool) -> Result<Self> {
        let world = SimWorld::new();
        if linked {
            world.link(0, 1);
        }
        let mm = SimMm::new(&world);
        let a = SimGpu::join(&mm, 0, vram_pages)?;
        let b = SimGpu::join(&mm, 1, vram_pages)?;
        Self::build(world, mm, std::vec![a, b], linked)
    }

    /// Back the memory of later `mmap`s with huge (2 MiB) pages.
    ///
    /// Context: process context (the simulator's host).
    pub fn with_huge_pages(mut self) -> Self {
        self.huge = true;
        self
    }

    /// The simulated machine.
    ///
    /// Context: process context (the simulator's host).
    pub fn world(&self) -> &Arc<SimWorld> {
        &self.world
    }

    /// The simulated address space.
    ///
    /// Context: process context (the simulator's host).
    pub fn mm(&self) -> &Arc<SimMm> {
        &self.mm
    }

    /// Device `dev`.
    ///
    /// Context: process context (the simulator's host).
    #[allow(clippy::indexing_slicing)] // `gpus` is never empty (checked by `build`)
    pub fn gpu(&self, dev: usize) -> &SimGpu {
        match self.gpus.get(dev) {
            Some(g) => g,
            None => &self.gpus[0],
        }
    }

    fn dev_pte(&self, dev: usize, addr: u64) -> Option<crate::sim::DevPte> {
        let vpn = addr >> PAGE_SHIFT;
        let ptes = self.gpu(dev).dev.ptes();
        let i = ptes.binary_search_by_key(&vpn, |(v, _)| *v).ok()?;
        ptes.get(i).map(|(_, p)| *p)
    }
}

impl Backend for SimBackend {
    type P = SimPlatform;

    fn devices(&self) -> usize {
        self.gpus.len()
    }
    fn svm(&self, dev: usize) -> &Svm<SimPlatform> {
        &self.gpu(dev).svm
    }
    fn mmap(&mut self, len: u64, flags: VmaFlags) -> Result<u64> {
        self.mm.mmap(len, flags, self.huge)
    }
    fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.mm.munmap(addr, len)
    }
    fn cpu_read(&mut self, addr: u64) -> Result<u64> {
        self.mm.read_u64(addr)
    }
    fn cpu_write(&mut self, addr: u64, val: u64) -> Result<()> {
        self.mm.write_u64(addr, val)
    }
    fn device_fault(&mut self, dev: usize, addr: u64, access: Access) -> Result<()> {
        self.gpu(dev).fault(addr, access)
    }
    fn device_read(&mut self, dev: usize, addr: u64) -> Result<u64> {
        // Through the page table only: the simulated device would fault on a miss itself.
        self.dev_pte(dev, addr).ok_or(Error::Fault)?;
        self.gpu(dev).read_u64(addr)
    }
    fn device_write(&mut self, dev: usize, addr: u64, val: u64) -> Result<()> {
        match self.dev_pte(dev, addr) {
            Some(p) if p.writable => self.gpu(dev).write_u64(addr, val),
            _ => Err(Error::Fault),
        }
    }
    fn device_pte(&self, dev: usize, addr: u64) -> Option<MappedPage> {
        self.dev_pte(dev, addr).map(|p| MappedPage {
            kind: match p.proto {
                Protocol::SYSTEM => PageKind::System,
                Protocol::DEVICE_LOCAL => PageKind::Local,
                _ => PageKind::Peer,
            },
            addr: p.addr,
            writable: p.writable,
        })
    }
    fn mapped_pages(&self, dev: usize) -> u64 {
        self.gpu(dev).dev.ptes().len() as u64
    }
    fn live_dma_mappings(&self, dev: usize) -> u64 {
        self.gpu(dev).dev.dma_mappings().len() as u64
    }
    fn device_pages_in_use(&self, dev: usize) -> Option<u64> {
        let g = self.gpu(dev);
        let has = g.svm.pagemap().is_some() || self.removed.get(dev) == Some(&true);
        has.then(|| g.dev.vram_used().len() as u64)
    }
    fn peers_linked(&self) -> bool {
        self.linked && self.gpus.len() > 1
    }
    fn remove_device(&mut self, dev: usize) -> Result<()> {
        let g = self.gpus.get(dev).ok_or(Error::Invalid)?;
        g.teardown()?;
        if let Some(r) = self.removed.get_mut(dev) {
            *r = true;
        }
        Ok(())
    }
    fn self_check(&mut self) -> Result<()> {
        let live: Vec<&SimGpu> = self
            .gpus
            .iter()
            .zip(&self.removed)
            .filter(|(_, r)| !**r)
            .map(|(g, _)| g)
            .collect();
        if let Err(e) = check_invariants(&self.mm, &live) {
            eprintln!("simulator invariant violated: {e}");
            return Err(Error::Invalid);
        }
        for g in &self.gpus {
            if g.svm.is_closed() {
                if let Err(e) = check_closed(g) {
                    eprintln!("simulator: closed device not clean: {e}");
                    return Err(Error::Invalid);
                }
            }
        }
        Ok(())
    }
}
