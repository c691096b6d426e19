//! The device page table: one entry per page of the address-space window, written by the
//! driver's bind step and cleared by `zap`; and the device's load/store path through it (what
//! the GPU's MMU does), which reports a device fault for a missing or read-only entry.

use crate::mm::{va_index, VA_PAGES};
use crate::phys::{read_at, write_at, Phys, PAGE};
use crate::platform::FwHost;
use alloc::rc::Rc;
use core::cell::{Cell, RefCell};
use gpusvm::pages::{PageEntry, Protocol};
use gpusvm::platform::{DevicePageTable, PAGE_SHIFT, PAGE_SIZE};
use gpusvm::Range;

/// Entry bit: valid.
const DEV_VALID: u64 = 1;
/// Entry bit: writable.
const DEV_WRITE: u64 = 2;
/// Entry bit: the address is in the device's own memory (else a bus address of system memory).
const DEV_LOCAL: u64 = 4;
/// The address bits of an entry.
const DEV_ADDR_MASK: u64 = !(PAGE_SIZE - 1);

/// Why a device access did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevFault {
    /// No valid entry: the device raises a page fault.
    NotMapped,
    /// A write through a read-only entry: the device raises a write fault.
    ReadOnly,
    /// The entry points nowhere (a bug), or the access crosses a page.
    Bad,
}

/// The device page table.
pub struct DevPt {
    phys: Rc<Phys>,
    ptes: RefCell<[u64; VA_PAGES]>,
    zaps: Cell<u64>,
    errors: Cell<u64>,
}

impl DevPt {
    /// An empty page table over `phys`.
    pub fn new(phys: Rc<Phys>) -> Self {
        DevPt {
            phys,
            ptes: RefCell::new([0; VA_PAGES]),
            zaps: Cell::new(0),
            errors: Cell::new(0),
        }
    }

    /// Number of zaps so far (each stands for a device TLB invalidation).
    pub fn zaps(&self) -> u64 {
        self.zaps.get()
    }

    /// Zaps or binds that found the table borrowed (a re-entrant call: a host bug).
    pub fn errors(&self) -> u64 {
        self.errors.get()
    }

    /// Number of valid entries.
    pub fn valid(&self) -> usize {
        self.ptes.try_borrow().map_or(usize::MAX, |p| {
            p.iter().filter(|&&e| e & DEV_VALID != 0).count()
        })
    }

    /// Number of valid entries in `[start, end)` that point into device memory.
    pub fn valid_local(&self, start: u64, end: u64) -> usize {
        let Ok(p) = self.ptes.try_borrow() else {
            return usize::MAX;
        };
        let mut n = 0usize;
        let mut va = start;
        while va < end {
            let e = va_index(va).and_then(|i| p.get(i)).copied().unwrap_or(0);
            if e & DEV_VALID != 0 && e & DEV_LOCAL != 0 {
                n += 1;
            }
            va = va.saturating_add(PAGE_SIZE);
        }
        n
    }

    /// The driver's bind step: write the entries of `range` from its page entries (runs under
    /// the crate's notifier lock: no allocation, no call into the crate). Returns the number of
    /// base pages mapped.
    pub fn write_ptes(&self, range: &Range<FwHost>, entries: &[PageEntry]) -> usize {
        let Ok(mut p) = self.ptes.try_borrow_mut() else {
            Phys::bump(&self.errors, 1);
            return 0;
        };
        let mut va = range.start();
        let mut mapped = 0usize;
        for e in entries {
            let mut bits = DEV_VALID;
            if e.writable() {
                bits |= DEV_WRITE;
            }
            if e.protocol() == Protocol::DEVICE_LOCAL {
                bits |= DEV_LOCAL;
            }
            for k in 0..e.npages() {
                let off = k.wrapping_mul(PAGE_SIZE);
                if let Some(slot) = va_index(va.wrapping_add(off)).and_then(|i| p.get_mut(i)) {
                    *slot = (e.addr().wrapping_add(off) & DEV_ADDR_MASK) | bits;
                    mapped += 1;
                }
            }
            va = va.wrapping_add(e.size());
        }
        mapped
    }

    /// The entry for `va` (0 if none).
    fn entry(&self, va: u64) -> u64 {
        self.ptes
            .try_borrow()
            .ok()
            .and_then(|p| va_index(va).and_then(|i| p.get(i)).copied())
            .unwrap_or(0)
    }

    /// Run `f` on the page the device reaches at `va` through its page table.
    fn access<R>(
        &self,
        va: u64,
        write: bool,
        f: impl FnOnce(&mut [u8; PAGE]) -> R,
    ) -> Result<R, DevFault> {
        let e = self.entry(va);
        if e & DEV_VALID == 0 {
            return Err(DevFault::NotMapped);
        }
        if write && e & DEV_WRITE == 0 {
            return Err(DevFault::ReadOnly);
        }
        let frame = (e & DEV_ADDR_MASK) >> PAGE_SHIFT;
        let r = if e & DEV_LOCAL != 0 {
            self.phys.with_vram(frame, f)
        } else {
            self.phys.with_sys(frame, f)
        };
        r.map_err(|_| DevFault::Bad)
    }

    /// A device store of `data` at `va` (within one page).
    pub fn store(&self, va: u64, data: &[u8]) -> Result<(), DevFault> {
        let off = (va % PAGE_SIZE) as usize;
        self.access(va, true, |f| write_at(f, off, data))?
            .map_err(|_| DevFault::Bad)
    }

    /// A device load into `buf` from `va` (within one page).
    pub fn load(&self, va: u64, buf: &mut [u8]) -> Result<(), DevFault> {
        let off = (va % PAGE_SIZE) as usize;
        self.access(va, false, |f| read_at(f, off, buf))?
            .map_err(|_| DevFault::Bad)
    }
}

impl DevicePageTable for DevPt {
    // Invalidation context: no allocation, no sleeping.
    fn zap(&self, start: u64, end: u64) {
        match self.ptes.try_borrow_mut() {
            Ok(mut p) => {
                for (i, e) in p.iter_mut().enumerate() {
                    let va = crate::mm::VA_BASE + (i as u64) * PAGE_SIZE;
                    if start <= va && va < end {
                        *e = 0;
                    }
                }
            }
            Err(_) => Phys::bump(&self.errors, 1),
        }
        Phys::bump(&self.zaps, 1);
    }
}
