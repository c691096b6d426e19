//! The assembled host: physical memory, the platform, the pagemap and the `Svm`, plus the
//! device's and the CPU's accesses as the scenario uses them.

use crate::devmem::FwVram;
use crate::devpt::{DevFault, DevPt};
use crate::dma::IdentityDma;
use crate::mm::{FwMm, InvalidationSink, OWNER, PAGEMAP};
use crate::phys::Phys;
use crate::platform::{FwHost, FwPagemap, FwPagemapRef, FwPlatform};
use alloc::rc::{Rc, Weak};
use gpusvm::range::RangeArc;
use gpusvm::{Access, Error, Result, Svm, SvmConfig, Window};

/// How many times a device access is replayed after its fault was serviced.
const REPLAYS: u32 = 3;

/// The firmware host, assembled.
pub struct Rig {
    /// The physical memory and shared counters.
    pub phys: Rc<Phys>,
    /// The device memory's pagemap.
    pub pm: FwPagemapRef,
    /// The `Svm` (in an `Rc` so that the address space can hold a weak reference to it).
    pub svm: Rc<Svm<FwPlatform>>,
}

impl Rig {
    /// Build everything over the static memory, with the VMAs `vmas` and faults placing
    /// ranges in device memory (`prefer_devmem`). Errors: [`Error::Busy`] if the static
    /// memory was taken already (a second run in one boot); [`Error::Invalid`] for bad VMAs.
    pub fn new(vmas: &[(u64, u64)]) -> Result<Rig> {
        let phys = Rc::new(Phys::take().ok_or(Error::Busy)?);
        let dma = IdentityDma::new(phys.clone());
        let pm = FwPagemap::new(PAGEMAP, OWNER, FwVram::new(phys.clone(), dma.clone()))?;
        let mm = FwMm::new(phys.clone(), vmas)?;
        mm.set_pagemap(pm.clone())?;
        let platform = FwPlatform {
            mm,
            dma,
            pt: DevPt::new(phys.clone()),
            phys: phys.clone(),
        };
        let mut config = SvmConfig::new(0, 1 << 47);
        config.prefer_devmem = true;
        let svm = Rc::new(Svm::new(platform, config)?);
        svm.set_pagemap(Some(pm.clone()))?;
        let sink: Weak<dyn InvalidationSink> = Rc::downgrade(&svm) as Weak<dyn InvalidationSink>;
        svm.platform().mm.set_sink(sink)?;
        Ok(Rig { phys, pm, svm })
    }

    /// The address space.
    pub fn mm(&self) -> &FwMm {
        &self.svm.platform().mm
    }

    /// The device page table.
    pub fn pt(&self) -> &DevPt {
        &self.svm.platform().pt
    }

    /// Service a device fault at `va` and bind the range into the device page table (what the
    /// driver's fault worker does). Returns the range and the number of pages bound.
    pub fn device_fault(&self, va: u64, access: Access) -> Result<(RangeArc<FwHost>, usize)> {
        let pt = self.pt();
        self.svm
            .handle_fault_and_bind(va, access, Window::ALL, |r, e| pt.write_ptes(r, e))
    }

    /// A device access that faults, gets serviced and is replayed, as on real hardware.
    /// `op` performs the access through the device page table. Returns how many faults it took.
    fn device_access(
        &self,
        va: u64,
        access: Access,
        mut op: impl FnMut(&DevPt) -> core::result::Result<(), DevFault>,
    ) -> Result<u32> {
        let mut faults = 0u32;
        loop {
            match op(self.pt()) {
                Ok(()) => return Ok(faults),
                Err(DevFault::NotMapped | DevFault::ReadOnly) if faults < REPLAYS => {
                    faults += 1;
                    self.device_fault(va, access)?;
                }
                Err(DevFault::NotMapped | DevFault::ReadOnly) => return Err(Error::Busy),
                Err(DevFault::Bad) => return Err(Error::Fault),
            }
        }
    }

    /// A device store of a little-endian `u64` at `va`. Returns how many faults it took.
    pub fn dev_store(&self, va: u64, v: u64) -> Result<u32> {
        let b = v.to_le_bytes();
        self.device_access(va, Access::Write, |pt| pt.store(va, &b))
    }

    /// A device load of a little-endian `u64` at `va`, and how many faults it took.
    pub fn dev_load(&self, va: u64) -> Result<(u64, u32)> {
        let mut b = [0u8; 8];
        let faults = self.device_access(va, Access::Read, |pt| pt.load(va, &mut b))?;
        Ok((u64::from_le_bytes(b), faults))
    }

    /// A CPU load of a little-endian `u64` at `va`.
    pub fn cpu_load(&self, va: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.mm().cpu_read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}
