//! The simulated machine: system RAM frames with real contents and a deterministic clock.

use super::device::{SimDevice, SimPagemapArc, SimPlatform};
use super::lock;
use crate::error::{Error, Result};
use crate::pagemap::{Interconnect, OwnerRegistry, PeerId};
use crate::platform::{PagemapId, PAGE_SIZE};
use crate::Svm;
use std::boxed::Box;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::sync::{Arc, Mutex};
use std::vec;
use std::vec::Vec;

/// Base page size as a `usize`.
pub(crate) const PAGE: usize = PAGE_SIZE as usize;

/// One 4 KiB frame of system RAM.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    /// Contents; `None` reads as zeroes.
    pub(crate) data: Option<Box<[u8]>>,
    /// Number of CPU page-table entries (over all address spaces) that map it.
    pub(crate) refs: u32,
}

/// The system RAM of the simulated machine.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    pub(crate) map: HashMap<u64, Frame>,
    next_pfn: u64,
    /// Frames ever allocated / freed.
    pub(crate) allocated: u64,
    pub(crate) freed: u64,
    /// Capacity in frames (`None`: unlimited).
    pub(crate) limit: Option<usize>,
}

impl Frames {
    /// Allocate `2^order` naturally aligned, contiguous, zeroed frames; returns the first pfn.
    pub(crate) fn alloc(&mut self, order: u8) -> Result<u64> {
        let n = 1u64 << order;
        if let Some(limit) = self.limit {
            if self.map.len() + n as usize > limit {
                return Err(Error::NoMem);
            }
        }
        let base = self.next_pfn.max(1).next_multiple_of(n);
        self.next_pfn = base + n;
        for pfn in base..base + n {
            self.map.insert(pfn, Frame::default());
        }
        self.allocated += n;
        Ok(base)
    }

    /// Drop one CPU reference to `pfn`; frees the frame when none is left.
    pub(crate) fn put(&mut self, pfn: u64) {
        if let Some(f) = self.map.get_mut(&pfn) {
            f.refs = f.refs.saturating_sub(1);
            if f.refs == 0 {
                self.map.remove(&pfn);
                self.freed += 1;
            }
        }
    }

    /// Take one more CPU reference.
    pub(crate) fn get(&mut self, pfn: u64) {
        if let Some(f) = self.map.get_mut(&pfn) {
            f.refs += 1;
        }
    }

    pub(crate) fn read(&self, pfn: u64, off: usize, buf: &mut [u8]) -> Result<()> {
        let f = self.map.get(&pfn).ok_or(Error::Fault)?;
        match &f.data {
            Some(d) => buf.copy_from_slice(d.get(off..off + buf.len()).ok_or(Error::Invalid)?),
            None => buf.fill(0),
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, pfn: u64, off: usize, buf: &[u8]) -> Result<()> {
        let f = self.map.get_mut(&pfn).ok_or(Error::Fault)?;
        let d = f
            .data
            .get_or_insert_with(|| vec![0u8; PAGE].into_boxed_slice());
        d.get_mut(off..off + buf.len())
            .ok_or(Error::Invalid)?
            .copy_from_slice(buf);
        Ok(())
    }

    /// Copy a whole frame's contents onto another.
    pub(crate) fn copy(&mut self, from: u64, to: u64) -> Result<()> {
        let data = self.map.get(&from).ok_or(Error::Fault)?.data.clone();
        self.map.get_mut(&to).ok_or(Error::Fault)?.data = data;
        Ok(())
    }

    /// Whether every frame of `[pfn, pfn + 2^order)` exists.
    pub(crate) fn all_live(&self, pfn: u64, order: u8) -> bool {
        (pfn..pfn + (1u64 << order)).all(|p| self.map.contains_key(&p))
    }
}

/// The device a simulated device frame belongs to (device frames are `(id + 1) << 32 + n`).
pub fn device_of_dpfn(dpfn: u64) -> u32 {
    ((dpfn >> 32).saturating_sub(1)) as u32
}

/// The interconnect predicate of [`SimWorld::owners`].
#[derive(Debug, Clone)]
pub struct LinkPredicate(Arc<Mutex<BTreeSet<(u32, u32)>>>);

impl LinkPredicate {
    /// Whether peers `a` and `b` (see [`SimWorld::owners`]) have a fast interconnect.
    pub fn linked(&self, a: PeerId, b: PeerId) -> bool {
        let (x, y) = ((a.0 / 2) as u32, (b.0 / 2) as u32);
        x == y || lock(&self.0).contains(&(x.min(y), x.max(y)))
    }
}

impl Interconnect for LinkPredicate {
    fn has_interconnect(&self, a: PeerId, b: PeerId) -> bool {
        self.linked(a, b)
    }
}

/// The CPU-side callbacks of a pagemap (Linux `dev_pagemap_ops`): what the CPU page-table
/// code calls when it frees a device-private page or faults on one.
pub trait SimPagemapHooks: Send + Sync + core::fmt::Debug {
    /// The device page `dpfn` is no longer mapped by the CPU.
    fn page_free(&self, dpfn: u64);
    /// The CPU faulted at `addr` on the device page `dpfn` of `mm`: bring it back to RAM.
    fn migrate_to_ram(&self, mm: &Arc<super::SimMm>, addr: u64, dpfn: u64) -> Result<()>;
}

/// The simulated machine: RAM and a clock. Address spaces ([`SimMm`](super::SimMm)) and
/// devices ([`SimDevice`](super::SimDevice)) hang off it.
#[derive(Debug)]
pub struct SimWorld {
    pub(crate) frames: Mutex<Frames>,
    /// Strong: a pagemap's CPU callbacks stay until the pagemap is forgotten (its devices hold
    /// the world only weakly, so this makes no cycle).
    hooks: Mutex<HashMap<PagemapId, Arc<dyn SimPagemapHooks>>>,
    devices: Mutex<HashMap<u32, Weak<SimDevice>>>,
    gpus: Mutex<Vec<Weak<Svm<SimPlatform>>>>,
    /// The machine's pagemaps, until forgotten ([`SimGpu::teardown`](super::SimGpu::teardown))
    /// or the machine goes.
    pagemaps: Mutex<Vec<SimPagemapArc>>,
    links: Arc<Mutex<BTreeSet<(u32, u32)>>>,
    /// The owner registry every simulated device joins (peers: `2*id` for a device's pagemap,
    /// `2*id+1` for its `Svm`; two peers have an interconnect if they are on the same device or
    /// on linked devices).
    pub owners: OwnerRegistry<LinkPredicate>,
    clock: AtomicU64,
    clock_step: AtomicU64,
}

impl SimWorld {
    /// A new machine with unlimited RAM and a clock that advances 1 µs per reading.
    // The registry is on the spinning default facet, whose lock creation cannot fail.
    #[allow(clippy::expect_used)]
    pub fn new() -> Arc<SimWorld> {
        let links: Arc<Mutex<BTreeSet<(u32, u32)>>> = Arc::default();
        Arc::new(SimWorld {
            frames: Mutex::new(Frames::default()),
            hooks: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            gpus: Mutex::new(Vec::new()),
            pagemaps: Mutex::new(Vec::new()),
            links: links.clone(),
            owners: OwnerRegistry::new(LinkPredicate(links))
                .expect("SpinHost creates its locks infallibly"),
            clock: AtomicU64::new(0),
            clock_step: AtomicU64::new(1_000),
        })
    }

    /// Connect devices `a` and `b` with a fast interconnect (symmetric).
    pub fn link(&self, a: u32, b: u32) {
        lock(&self.links).insert((a.min(b), a.max(b)));
    }

    /// Whether devices `a` and `b` share a fast interconnect (a device always reaches itself).
    pub fn has_link(&self, a: u32, b: u32) -> bool {
        a == b || lock(&self.links).contains(&(a.min(b), a.max(b)))
    }

    pub(crate) fn register_gpu(&self, svm: &Arc<Svm<SimPlatform>>) {
        lock(&self.gpus).push(Arc::downgrade(svm));
    }

    pub(crate) fn forget_gpu(&self, svm: &Arc<Svm<SimPlatform>>) {
        lock(&self.gpus).retain(|w| w.upgrade().is_some_and(|s| !Arc::ptr_eq(&s, svm)));
    }

    fn live_gpus(&self) -> Vec<Arc<Svm<SimPlatform>>> {
        lock(&self.gpus).iter().filter_map(Weak::upgrade).collect()
    }

    /// The pagemaps of the machine's devices.
    pub fn pagemaps(&self) -> Vec<SimPagemapArc> {
        lock(&self.pagemaps).clone()
    }

    /// A new device pagemap: every device's `Svm` attaches it.
    pub(crate) fn add_pagemap(&self, pm: SimPagemapArc) {
        lock(&self.pagemaps).push(pm.clone());
        for g in self.live_gpus() {
            // Refused only if another pagemap has its id there: that one stays.
            let _ = g.attach_pagemap(pm.clone());
        }
    }

    /// A pagemap goes away: every `Svm` detaches it; its CPU callbacks are removed.
    pub(crate) fn forget_pagemap(&self, id: PagemapId) {
        let gone: Vec<SimPagemapArc> = {
            let mut pms = lock(&self.pagemaps);
            let (gone, keep) = pms.drain(..).partition(|p| p.id() == id);
            *pms = keep;
            gone
        };
        drop(gone);
        for g in self.live_gpus() {
            let _ = g.detach_pagemap(id);
        }
        self.unregister_pagemap(id);
    }

    pub(crate) fn register_device(&self, dev: &Arc<SimDevice>) {
        lock(&self.devices).insert(dev.id(), Arc::downgrade(dev));
    }

    /// The device `id`, if alive.
    pub fn device(&self, id: u32) -> Option<Arc<SimDevice>> {
        lock(&self.devices).get(&id).and_then(Weak::upgrade)
    }

    /// Register the CPU-side callbacks of a pagemap (what Linux's `dev_pagemap_ops` are).
    pub fn register_pagemap(&self, id: PagemapId, hooks: &Arc<dyn SimPagemapHooks>) {
        lock(&self.hooks).insert(id, hooks.clone());
    }

    /// Remove a pagemap's callbacks.
    pub fn unregister_pagemap(&self, id: PagemapId) {
        let gone = lock(&self.hooks).remove(&id);
        drop(gone);
    }

    pub(crate) fn pagemap_hooks(&self, id: PagemapId) -> Option<Arc<dyn SimPagemapHooks>> {
        lock(&self.hooks).get(&id).cloned()
    }

    /// Read the clock (advances it by the step).
    pub fn now_ns(&self) -> u64 {
        self.clock
            .fetch_add(self.clock_step.load(Ordering::Relaxed), Ordering::Relaxed)
    }

    /// Move the clock forward.
    pub fn advance(&self, ns: u64) {
        self.clock.fetch_add(ns, Ordering::Relaxed);
    }

    /// Set how far the clock advances per reading (0 freezes it).
    pub fn set_clock_step(&self, ns: u64) {
        self.clock_step.store(ns, Ordering::Relaxed);
    }

    /// Limit system RAM to `frames` base frames (`None`: unlimited).
    pub fn set_ram_limit(&self, frames: Option<usize>) {
        lock(&self.frames).limit = frames;
    }

    /// Number of live system frames.
    pub fn live_frames(&self) -> usize {
        lock(&self.frames).map.len()
    }

    /// Frames of system RAM allocated and freed so far.
    pub fn frame_counts(&self) -> (u64, u64) {
        let f = lock(&self.frames);
        (f.allocated, f.freed)
    }

    /// The live pfns (sorted), for checks.
    pub fn live_pfns(&self) -> Vec<u64> {
        let mut v: Vec<u64> = lock(&self.frames).map.keys().copied().collect();
        v.sort_unstable();
        v
    }
}
