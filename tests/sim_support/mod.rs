//! Shared harness for the simulator scenario tests (`tests/sim_*.rs`).
//!
//! [`Sim`] wraps one simulated machine, one address space and one device. Every operation it
//! offers (CPU access, device access, munmap, mprotect, madvise, fork, or any closure passed to
//! [`Sim::step`]) is followed by [`Sim::check`], which runs the simulator's invariant checker
//! (docs/DESIGN.md invariants 1, 2, 3, 6) and compares what the CPU sees with a simple model of the
//! memory contents (`address -> last value written`, invariant 4 "data is never lost").
//!
//! The model check never changes the simulated state: a model address whose page is present is
//! read through the CPU (a read of a present page does not fault), an absent page must be
//! modelled as zero.
#![allow(dead_code)]

use gpusvm::platform::{DmaDirection, VmaFlags, PAGE_SIZE};
use gpusvm::sim::{check_invariants, DmaMapping, SimGpu, SimMm, SimWorld};
use gpusvm::stats::StatsSnapshot;
use gpusvm::{Access, PageEntry, Result, SvmConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
pub const RO: VmaFlags = VmaFlags::READ;
pub const P: u64 = PAGE_SIZE;
pub const K64: u64 = 64 << 10;
pub const M: u64 = 1 << 20;
pub const M2: u64 = 2 << 20;

/// One simulated machine + address space + device, with a data model and a step counter.
pub struct Sim {
    pub world: Arc<SimWorld>,
    pub mm: Arc<SimMm>,
    pub gpu: SimGpu,
    /// 8-byte aligned address -> last value written by the CPU or the device. Addresses not
    /// in the model read as zero.
    pub model: BTreeMap<u64, u64>,
    /// Steps checked so far.
    pub steps: usize,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    /// A machine with the default configuration (chunks 2M/64K/4K, threshold 64K).
    pub fn new() -> Sim {
        Sim::with_config(SvmConfig::new(0, 1 << 47))
    }

    /// A machine whose device uses `config`.
    pub fn with_config(config: SvmConfig) -> Sim {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::new(&mm, 0, config).expect("valid config");
        let mut s = Sim {
            world,
            mm,
            gpu,
            model: BTreeMap::new(),
            steps: 0,
        };
        s.check("setup");
        s
    }

    /// Run the invariant checker and the data model check; panics with the step and a
    /// description of the ranges on the first violation.
    pub fn check(&mut self, what: &str) {
        self.steps += 1;
        if let Err(e) = check_invariants(&self.mm, &[&self.gpu]) {
            panic!(
                "step {} ({what}): invariant violated: {e}\n{}",
                self.steps,
                self.gpu.describe()
            );
        }
        if let Err(e) = self.check_model() {
            panic!(
                "step {} ({what}): data model violated: {e}\n{}",
                self.steps,
                self.gpu.describe()
            );
        }
        let (maps, unmaps) = self.gpu.dev.dma_counts();
        let live = self.gpu.dev.dma_mappings().len() as u64;
        assert_eq!(
            maps - unmaps,
            live,
            "step {} ({what}): IOMMU counts disagree with live mappings",
            self.steps
        );
    }

    /// Invariant 4 against the model, without changing any state.
    pub fn check_model(&self) -> std::result::Result<(), String> {
        let vmas = self.mm.vmas();
        for (&addr, &v) in &self.model {
            let vma = vmas.iter().find(|x| x.start <= addr && addr < x.end);
            if vma.is_none() {
                return Err(format!("model address {addr:#x} has no VMA"));
            }
            match self.mm.pte(addr) {
                Some(_) => {
                    let got = self
                        .mm
                        .read_u64(addr)
                        .map_err(|e| format!("CPU read of {addr:#x}: {e:?}"))?;
                    if got != v {
                        return Err(format!(
                            "CPU reads {got:#x} at {addr:#x}, last written {v:#x}"
                        ));
                    }
                }
                None if v != 0 => {
                    return Err(format!(
                        "page of {addr:#x} is gone but {v:#x} was written there"
                    ))
                }
                None => {}
            }
        }
        Ok(())
    }

    /// What a read of `addr` must return.
    pub fn expect(&self, addr: u64) -> u64 {
        self.model.get(&addr).copied().unwrap_or(0)
    }

    fn forget(&mut self, start: u64, end: u64) {
        let keys: Vec<u64> = self.model.range(start..end).map(|(k, _)| *k).collect();
        for k in keys {
            self.model.remove(&k);
        }
    }

    /// Any operation, followed by a check. The closure may update the model.
    pub fn step<R>(&mut self, what: &str, f: impl FnOnce(&mut Sim) -> R) -> R {
        let r = f(self);
        self.check(what);
        r
    }

    // ---- CPU side -------------------------------------------------------------------------

    pub fn mmap(&mut self, len: u64, flags: VmaFlags, huge: bool) -> u64 {
        let a = self.mm.mmap(len, flags, huge).expect("mmap");
        self.check("mmap");
        a
    }

    pub fn mmap_fixed(&mut self, addr: u64, len: u64, flags: VmaFlags, huge: bool) -> u64 {
        let a = self
            .mm
            .mmap_fixed(addr, len, flags, huge)
            .expect("mmap_fixed");
        self.forget(addr, addr + len);
        self.check("mmap_fixed");
        a
    }

    pub fn munmap(&mut self, addr: u64, len: u64) {
        self.mm.munmap(addr, len).expect("munmap");
        self.forget(addr, addr + len);
        self.check("munmap");
    }

    pub fn mprotect(&mut self, addr: u64, len: u64, flags: VmaFlags) {
        self.mm.mprotect(addr, len, flags).expect("mprotect");
        self.check("mprotect");
    }

    pub fn dontneed(&mut self, addr: u64, len: u64) {
        self.mm
            .madvise_dontneed(addr, len)
            .expect("madvise_dontneed");
        self.forget(addr, addr + len);
        self.check("madvise_dontneed");
    }

    pub fn fork(&mut self) -> Arc<SimMm> {
        let child = self.mm.fork();
        self.check("fork");
        child
    }

    pub fn cpu_write(&mut self, addr: u64, v: u64) -> Result<()> {
        let r = self.mm.write_u64(addr, v);
        if r.is_ok() {
            self.model.insert(addr, v);
        }
        self.check("cpu write");
        r
    }

    pub fn cpu_read(&mut self, addr: u64) -> Result<u64> {
        let r = self.mm.read_u64(addr);
        if let Ok(v) = r {
            assert_eq!(
                v,
                self.expect(addr),
                "step {}: CPU read of {addr:#x}",
                self.steps
            );
        }
        self.check("cpu read");
        r
    }

    /// CPU-write `f(addr)` at every `stride` bytes of `[start, end)`.
    pub fn cpu_fill(&mut self, start: u64, end: u64, stride: u64, f: impl Fn(u64) -> u64) {
        let mut a = start;
        while a < end {
            self.mm.write_u64(a, f(a)).expect("cpu write");
            self.model.insert(a, f(a));
            a += stride;
        }
        self.check("cpu fill");
    }

    // ---- device side ----------------------------------------------------------------------

    pub fn dev_read(&mut self, addr: u64) -> Result<u64> {
        let r = self.gpu.read_u64(addr);
        if let Ok(v) = r {
            assert_eq!(
                v,
                self.expect(addr),
                "step {}: device read of {addr:#x}",
                self.steps
            );
        }
        self.check("device read");
        r
    }

    pub fn dev_write(&mut self, addr: u64, v: u64) -> Result<()> {
        let r = self.gpu.write_u64(addr, v);
        if r.is_ok() {
            self.model.insert(addr, v);
        }
        self.check("device write");
        r
    }

    pub fn dev_atomic_add(&mut self, addr: u64, v: u64) -> Result<u64> {
        let r = self.gpu.atomic_add(addr, v);
        if let Ok(old) = r {
            assert_eq!(
                old,
                self.expect(addr),
                "step {}: atomic old value",
                self.steps
            );
            self.model.insert(addr, old.wrapping_add(v));
        }
        self.check("device atomic");
        r
    }

    pub fn dev_fault(&mut self, addr: u64, access: Access) -> Result<()> {
        let r = self.gpu.fault(addr, access);
        self.check("device fault");
        r
    }

    // ---- observations ---------------------------------------------------------------------

    /// The ranges `[start, end)` in address order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        self.gpu
            .svm
            .for_each_range(|_, r| v.push((r.start(), r.end())));
        v
    }

    /// The range containing `addr`.
    pub fn range(&self, addr: u64) -> gpusvm::HostArc<gpusvm::sim::SimHost, gpusvm::sim::SimRange> {
        self.gpu
            .svm
            .find(addr)
            .unwrap_or_else(|| panic!("no range at {addr:#x}\n{}", self.gpu.describe()))
    }

    /// The committed page entries of the range containing `addr` (empty if not valid).
    pub fn entries(&self, addr: u64) -> Vec<PageEntry> {
        let r = self.range(addr);
        self.gpu.svm.bind(&r, |_, e| e.to_vec()).unwrap_or_default()
    }

    /// Live DMA mappings whose frames are mapped by the CPU inside `[start, end)`.
    pub fn dma_in(&self, start: u64, end: u64) -> Vec<DmaMapping> {
        let mut pfns = std::collections::BTreeSet::new();
        let mut a = start;
        while a < end {
            if let Some(p) = self.mm.pte(a) {
                pfns.insert(p.pfn);
            }
            a += P;
        }
        self.gpu
            .dev
            .dma_mappings()
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| pfns.contains(&m.pfn))
            .collect()
    }

    /// Live DMA mappings by order.
    pub fn dma_orders(&self) -> BTreeMap<u8, usize> {
        let mut m = BTreeMap::new();
        for (_, d) in self.gpu.dev.dma_mappings() {
            *m.entry(d.order).or_insert(0) += 1;
        }
        m
    }

    /// Number of live DMA mappings.
    pub fn dma_live(&self) -> usize {
        self.gpu.dev.dma_mappings().len()
    }

    /// Device PTEs (virtual page numbers) inside `[start, end)`.
    pub fn dev_ptes_in(&self, start: u64, end: u64) -> usize {
        self.gpu
            .dev
            .ptes()
            .iter()
            .filter(|(vpn, _)| {
                let a = vpn * P;
                start <= a && a < end
            })
            .count()
    }

    /// Whether the device PTE of `addr` exists and is writable.
    pub fn dev_pte(&self, addr: u64) -> Option<bool> {
        self.gpu
            .dev
            .ptes()
            .iter()
            .find(|(vpn, _)| *vpn == addr / P)
            .map(|(_, p)| p.writable)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.gpu.svm.stats()
    }

    /// All live DMA mappings have direction `dir`.
    pub fn all_dma_dir(&self, dir: DmaDirection) -> bool {
        self.gpu
            .dev
            .dma_mappings()
            .iter()
            .all(|(_, m)| m.dir == dir)
    }
}

/// A value that encodes where it was written (and a generation), for data-loss checks.
pub fn tag(addr: u64, gen: u64) -> u64 {
    (gen << 48) ^ addr ^ 0x5A5A_0000_0000_0000
}
