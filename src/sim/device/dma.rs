//! DMA through the simulated IOMMU: every mapping is recorded ([`DmaMapping`]), misuses
//! (unknown or mismatched unmaps, maps of dead frames) are reported, and peer-to-peer maps
//! reach a linked device's memory.

use super::SimDevice;
use crate::platform::{DmaDirection, DmaMapper, PAGE_SHIFT, PAGE_SIZE};
use crate::sim::lock;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::string::String;
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
    /// A peer-to-peer mapping: `pfn` is then a device frame of a peer device.
    pub peer: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Iommu {
    pub(crate) maps: BTreeMap<u64, DmaMapping>,
    pub(super) next_iova: u64,
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

impl SimDevice {
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

    pub(super) fn bus_to_pfn(&self, bus: u64) -> Result<u64> {
        let io = lock(&self.iommu);
        let (base, m) = io.lookup(bus).ok_or(Error::Fault)?;
        Ok(m.pfn + ((bus - base) >> PAGE_SHIFT))
    }
}

impl DmaMapper for SimDevice {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        self.dma_injected()?;
        let live = lock(&self.world()?.frames).all_live(pfn, order);
        let mut io = lock(&self.iommu);
        if !live {
            io.violations
                .push(std::format!("map of dead frame {pfn:#x} order {order}"));
            return Err(Error::Fault);
        }
        let size = PAGE_SIZE << order;
        let iova = io.next_iova.next_multiple_of(size);
        io.next_iova = iova + size;
        io.maps.insert(
            iova,
            DmaMapping {
                pfn,
                order,
                dir,
                peer: false,
            },
        );
        io.total_maps += 1;
        Ok(iova)
    }

    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        self.unmap_any(addr, order, dir, false);
    }

    fn map_peer(&self, resource: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        self.dma_injected()?;
        let dpfn = resource >> PAGE_SHIFT;
        let owner_dev = crate::sim::world::device_of_dpfn(dpfn);
        if !self.world()?.has_link(self.id, owner_dev) || owner_dev == self.id {
            lock(&self.iommu).violations.push(std::format!(
                "peer map of device {owner_dev}'s frame {dpfn:#x} without a link"
            ));
            return Err(Error::NoLink);
        }
        let mut io = lock(&self.iommu);
        let size = PAGE_SIZE << order;
        let iova = io.next_iova.next_multiple_of(size);
        io.next_iova = iova + size;
        io.maps.insert(
            iova,
            DmaMapping {
                pfn: dpfn,
                order,
                dir,
                peer: true,
            },
        );
        io.total_maps += 1;
        Ok(iova)
    }

    fn unmap_peer(&self, addr: u64, order: u8, dir: DmaDirection) {
        self.unmap_any(addr, order, dir, true);
    }
}

impl SimDevice {
    pub(super) fn unmap_any(&self, addr: u64, order: u8, dir: DmaDirection, peer: bool) {
        let mut io = lock(&self.iommu);
        match io.maps.get(&addr).copied() {
            Some(m) if m.order == order && m.dir == dir && m.peer == peer => {
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
