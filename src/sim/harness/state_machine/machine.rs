//! The machine a run drives and its data model: construction from a [`Setup`], the checks
//! after every step, how a read or write is judged against the model, and the final teardown.

use super::{
    err, Op, Premap, Prot, Setup, Span, Summary, Timeslice, ARENA, ARENA_END, ATOMICS_ON_SYSMEM,
    MAX_DEVICES, SLOTS, SLOT_SIZE,
};
use crate::migrate::MigrateDetails;
use crate::platform::{VmaFlags, PAGE_SHIFT, PAGE_SIZE};
use crate::range::RangeFlags;
use crate::sim::{check_closed, check_invariants, SimGpu, SimMm, SimWorld};
use crate::{Error, SvmConfig};
use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::sync::Arc;
use std::vec::Vec;

pub(super) type Pending = Vec<(u64, u64, u64)>;

pub(super) struct Machine {
    pub(super) world: Arc<SimWorld>,
    pub(super) mm: Arc<SimMm>,
    pub(super) gpus: Vec<SimGpu>,
    pub(super) vram: Vec<u64>,
    pub(super) details: MigrateDetails,
    pub(super) child: Option<Arc<SimMm>>,
    /// Virtual page number → writable, for every mapped page of the arena.
    pub(super) mapped: BTreeMap<u64, bool>,
    /// Word address → value.
    pub(super) data: BTreeMap<u64, u64>,
    pub(super) step: usize,
    pub(super) sum: Summary,
    /// Some attribute was set (a preferred pagemap may lack room for an atomic's range).
    pub(super) attrs_touched: bool,
}

impl Machine {
    pub(super) fn new(setup: &Setup) -> Result<Machine, String> {
        let world = SimWorld::new();
        let n = 1 + usize::from(setup.devices) % MAX_DEVICES;
        if setup.linked && n >= 2 {
            world.link(0, 1);
        }
        const PAIRS: [(u32, u32); 6] = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];
        for (bit, (a, b)) in PAIRS.iter().enumerate() {
            if setup.links & (1 << bit) != 0 && (*b as usize) < n {
                world.link(*a, *b);
            }
        }
        let mm = SimMm::new(&world);
        let mut gpus = Vec::new();
        let mut vram = Vec::new();
        for (id, size) in setup.vram.iter().enumerate().take(n) {
            let pages = size.pages();
            let mut cfg = SvmConfig::new(0, 1 << 47);
            cfg.prefer_devmem = pages > 0;
            cfg.atomic_timeslice_ns = match setup.timeslice {
                Timeslice::Zero => 0,
                Timeslice::Short => 1_000_000,
                Timeslice::Default => 5_000_000,
            };
            cfg.can_migrate_same_pagemap = setup.can_migrate_same_pagemap;
            cfg.source_peer_migrates = setup.source_peer_migrates;
            cfg.policy.atomics_on_sysmem = setup.links & ATOMICS_ON_SYSMEM != 0;
            let g = SimGpu::join_with(&mm, id as u32, pages, cfg)
                .map_err(|e| format!("setup: device {id}: {e}"))?;
            gpus.push(g);
            vram.push(pages);
        }
        let mut m = Machine {
            world,
            mm,
            gpus,
            vram,
            details: MigrateDetails {
                timeslice_ns: 0,
                can_migrate_same_pagemap: setup.can_migrate_same_pagemap,
                source_peer_migrates: setup.source_peer_migrates,
            },
            child: None,
            mapped: BTreeMap::new(),
            data: BTreeMap::new(),
            step: 0,
            sum: Summary::default(),
            attrs_touched: false,
        };
        for (slot, p) in setup.premap.iter().enumerate() {
            let (prot, huge) = match p {
                Premap::None => continue,
                Premap::ReadWrite => (Prot::ReadWrite, false),
                Premap::Huge => (Prot::ReadWrite, true),
                Premap::ReadOnly => (Prot::ReadOnly, false),
            };
            m.apply(&Op::Mmap {
                span: Span::Slot { slot: slot as u8 },
                prot,
                huge,
            })?;
        }
        m.check()?;
        Ok(m)
    }

    pub(super) fn gpu(&self, dev: u8) -> &SimGpu {
        &self.gpus[usize::from(dev) % self.gpus.len()]
    }

    pub(super) fn prot(&self, addr: u64) -> Option<bool> {
        self.mapped.get(&(addr >> PAGE_SHIFT)).copied()
    }

    pub(super) fn expect(&self, addr: u64) -> u64 {
        self.data.get(&addr).copied().unwrap_or(0)
    }

    pub(super) fn value(&self, low: u16) -> u64 {
        ((self.step as u64 + 1) << 16) | u64::from(low)
    }

    pub(super) fn pending(&self) -> Pending {
        self.gpus
            .iter()
            .map(|g| g.dev.pending_injections())
            .collect()
    }

    /// How many armed injections fired since `before`.
    pub(super) fn fired(&self, before: &Pending) -> usize {
        let fired = |b: u64, a: u64| usize::from(b > 0 && a == 0);
        before
            .iter()
            .zip(self.pending())
            .map(|(b, a)| fired(b.0, a.0) + fired(b.1, a.1) + fired(b.2, a.2))
            .sum()
    }

    /// Whether the device's existing range at `addr` also covers read-only pages.
    pub(super) fn straddles_read_only(&self, g: &SimGpu, addr: u64) -> bool {
        match g.svm.find(addr) {
            Some(r) if !r.flags().contains(RangeFlags::UNMAPPED) => (r.start() >> PAGE_SHIFT
                ..r.end() >> PAGE_SHIFT)
                .any(|v| self.mapped.get(&v) == Some(&false)),
            _ => false,
        }
    }

    /// Whether a device atomic on `g` must get device memory.
    pub(super) fn atomic_must_succeed(&self, dev: u8, fired: usize) -> bool {
        let i = usize::from(dev) % self.gpus.len();
        fired == 0
            && !self.attrs_touched
            && self.child.is_none()
            && self.vram.get(i).copied().unwrap_or(0) >= u64::from(SLOTS) * SLOT_SIZE / PAGE_SIZE
    }

    pub(super) fn check(&self) -> Result<(), String> {
        let refs: Vec<&SimGpu> = self.gpus.iter().collect();
        check_invariants(&self.mm, &refs)?;
        for (vpn, p) in self.mm.ptes() {
            if p.migrating || p.placeholder {
                return err(format!(
                    "CPU PTE {:#x} left isolated: {p:?}",
                    vpn << PAGE_SHIFT
                ));
            }
        }
        for g in &self.gpus {
            if let Some(pm) = g.svm.pagemap() {
                let (allocs, releases) = g.dev.vram_counts();
                if allocs != releases + pm.live_allocations() as u64 {
                    return err(format!(
                        "dev {}: {allocs} allocations, {releases} released, {} live",
                        g.dev.id(),
                        pm.live_allocations()
                    ));
                }
                if pm.stray_frees() != 0 {
                    return err(format!(
                        "dev {}: {} stray page frees",
                        g.dev.id(),
                        pm.stray_frees()
                    ));
                }
            }
        }
        // The VMAs, as runs of pages with the same protection, against the model's pages.
        let mut model = self.mapped.iter();
        let mut count = 0usize;
        for v in self.mm.vmas() {
            let w = v.flags.contains(VmaFlags::WRITE);
            for vpn in v.start >> PAGE_SHIFT..v.end >> PAGE_SHIFT {
                count += 1;
                if model.next() != Some((&vpn, &w)) {
                    return err(format!(
                        "the VMAs differ from the model at {:#x}",
                        vpn << PAGE_SHIFT
                    ));
                }
            }
        }
        if count != self.mapped.len() {
            return err(String::from("the model maps pages no VMA covers"));
        }
        Ok(())
    }

    /// Judge a read: `Ok(v)` must match the model; errors as the model allows.
    pub(super) fn judge_read(
        &mut self,
        what: &str,
        addr: u64,
        got: Result<u64, Error>,
        fired: usize,
    ) -> Result<(), String> {
        let want = self.expect(addr);
        match (self.prot(addr), got) {
            (Some(_), Ok(v)) if v == want => Ok(()),
            (Some(_), Ok(v)) => err(format!(
                "{what} at {addr:#x} read {v:#x}, the model says {want:#x} (data lost)"
            )),
            (None, Err(Error::Fault)) => {
                self.sum.expected_errors += 1;
                Ok(())
            }
            (_, Err(_)) if fired > 0 => {
                self.sum.injected_errors += 1;
                Ok(())
            }
            (p, r) => err(format!(
                "{what} at {addr:#x} (mapped: {p:?}) returned {r:?}"
            )),
        }
    }

    /// Judge a write-like call: `Ok` iff writable; `Perm` on read-only, `Fault` on unmapped.
    /// Returns whether the write happened.
    pub(super) fn judge_write(
        &mut self,
        what: &str,
        addr: u64,
        got: Result<(), Error>,
        fired: usize,
        also_allowed: &[Error],
    ) -> Result<bool, String> {
        match (self.prot(addr), got) {
            (Some(true), Ok(())) => Ok(true),
            (Some(false), Err(Error::Perm)) | (None, Err(Error::Fault)) => {
                self.sum.expected_errors += 1;
                Ok(false)
            }
            (Some(true), Err(e)) if also_allowed.contains(&e) => {
                self.sum.expected_errors += 1;
                Ok(false)
            }
            (_, Err(_)) if fired > 0 => {
                self.sum.injected_errors += 1;
                Ok(false)
            }
            (p, r) => err(format!(
                "{what} at {addr:#x} (mapped: {p:?}) returned {r:?}"
            )),
        }
    }

    pub(super) fn cpu_read(&mut self, addr: u64) -> Result<(), String> {
        let before = self.pending();
        let got = self.mm.read_u64(addr);
        let fired = self.fired(&before);
        self.judge_read("CPU read", addr, got, fired)
    }

    /// The model after `[s, e)` lost its pages (`unmap`: and its VMAs).
    pub(super) fn forget(&mut self, s: u64, e: u64, unmap: bool) {
        self.data.retain(|a, _| !(s <= *a && *a < e));
        if unmap {
            let vpns: Vec<u64> = self
                .mapped
                .range(s >> PAGE_SHIFT..e >> PAGE_SHIFT)
                .map(|(v, _)| *v)
                .collect();
            for v in vpns {
                self.mapped.remove(&v);
            }
        }
    }

    /// Close every device, read everything back, unmap the arena, and check nothing is left.
    pub(super) fn finish(&mut self) -> Result<(), String> {
        for g in &self.gpus {
            g.dev.inject_copy_fail_at(0, 0);
            g.dev.inject_dma_fail_at(0);
            g.dev.inject_alloc_fail_at(0);
        }
        for g in &self.gpus {
            g.svm.close();
            check_closed(g).map_err(|e| format!("dev {} after close: {e}", g.dev.id()))?;
        }
        self.check()?;
        for (&a, &v) in &self.data {
            let got = self.mm.read_u64(a);
            if got != Ok(v) {
                return err(format!(
                    "after close: CPU read at {a:#x} returned {got:?}, the model says {v:#x}"
                ));
            }
        }
        self.check()?;
        if let Some(c) = self.child.take() {
            c.munmap(ARENA, ARENA_END - ARENA)
                .map_err(|e| format!("child munmap: {e:?}"))?;
        }
        self.mm
            .munmap(ARENA, ARENA_END - ARENA)
            .map_err(|e| format!("final munmap: {e:?}"))?;
        self.forget(ARENA, ARENA_END, true);
        self.check()?;
        for g in &self.gpus {
            let id = g.dev.id();
            if let Some(pm) = g.svm.pagemap() {
                if pm.live_allocations() != 0 {
                    return err(format!(
                        "dev {id}: {} allocations live after munmap",
                        pm.live_allocations()
                    ));
                }
            }
            if !g.dev.vram_used().is_empty() {
                return err(format!("dev {id}: device memory in use after munmap"));
            }
            let (allocs, releases) = g.dev.vram_counts();
            if allocs != releases {
                return err(format!(
                    "dev {id}: {allocs} allocations, {releases} released"
                ));
            }
            check_closed(g).map_err(|e| format!("dev {id} at the end: {e}"))?;
            let s = g.svm.stats();
            self.sum.migrations_to_devmem += s.migrations_to_devmem;
            self.sum.migrations_to_ram += s.migrations_to_ram;
            self.sum.evictions += s.evictions;
            self.sum.migrate_failures += s.migrate_failures;
            self.sum.gc_ranges += s.gc_ranges;
        }
        if self.world.live_frames() != 0 {
            return err(format!(
                "{} system frames left after everything was unmapped",
                self.world.live_frames()
            ));
        }
        Ok(())
    }
}
