//! The conformance harness: one simulated machine with any number of address spaces
//! ("processes", for fork) and devices, a data model per address space, and a checker that runs
//! after every step.
//!
//! [`Machine::check`] runs, after **every** step (each CPU or device access, each mmap, munmap,
//! mprotect, madvise, fork, migration, prefetch, attribute change, join, close or teardown):
//! - the simulator's invariant checker ([`check_invariants`], DESIGN invariants 1, 2, 3, 5, 6)
//!   over every address space and the devices mirroring it;
//! - DMA accounting: per device, maps − unmaps = live mappings; every peer mapping points at a
//!   linked, live device;
//! - device-memory accounting: per pagemap, allocations − releases = live allocations (each
//!   released exactly once), no stray page frees, no misuse of device memory;
//! - RAM accounting: the live system frames are exactly the frames some CPU page table maps
//!   (nothing leaked by a migration, an eviction, a failed call or a teardown);
//! - no CPU page is left isolated for migration at a quiescent point; every device page the CPU
//!   maps belongs to the pagemap of a live device and carries its owner;
//! - closed and torn-down devices hold nothing ([`check_closed`]; torn down: no device memory);
//! - the data model of every address space (DESIGN invariant 4), compared *without changing any
//!   state* with the frame each CPU page-table entry maps (RAM, or the device memory of the
//!   pagemap the entry names).
//!
//! Every CPU or device read through the harness is also compared with the model when it
//! returns.
#![allow(dead_code)]

use gpusvm::pagemap::PeerId;
use gpusvm::platform::{PagemapId, VmaFlags, PAGE_SHIFT, PAGE_SIZE};
use gpusvm::policy::{AtomicPolicy, AttrUpdate, MigrationPolicy, PreferredLoc, PrefetchLoc};
use gpusvm::range::RangeFlags;
use gpusvm::sim::{check_closed, check_invariants, DmaMapping, SimGpu, SimMm, SimWorld};
use gpusvm::stats::StatsSnapshot;
use gpusvm::{Result, SvmConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
pub const RO: VmaFlags = VmaFlags::READ;
pub const NONE: VmaFlags = VmaFlags::empty();
pub const P: u64 = PAGE_SIZE;
pub const K64: u64 = 64 << 10;
pub const M: u64 = 1 << 20;
pub const M2: u64 = 2 << 20;

/// A value that encodes where and in which generation it was written.
pub fn tag(addr: u64, gen: u64) -> u64 {
    (gen << 48) ^ addr ^ 0x5A5A_0000_0000_0000
}

/// The device whose memory holds the simulated device frame `dpfn`.
pub fn dev_of(dpfn: u64) -> u32 {
    ((dpfn >> 32) - 1) as u32
}

/// Where the page of an address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// Not present in the CPU page table.
    Absent,
    /// System RAM.
    Ram,
    /// Device memory of this device.
    Dev(u32),
}

/// One address space with its data model.
pub struct Proc {
    pub mm: Arc<SimMm>,
    /// 8-byte aligned address -> last value written by the CPU or a device.
    pub model: BTreeMap<u64, u64>,
}

/// One device of the machine.
pub struct Dev {
    pub gpu: SimGpu,
    /// The address space it mirrors (index into `Machine::procs`).
    pub proc: usize,
    /// Closed (`svm.close()`), but its memory may still hold pages.
    pub closed: bool,
}

/// One simulated machine.
pub struct Machine {
    pub world: Arc<SimWorld>,
    pub procs: Vec<Proc>,
    pub devs: BTreeMap<u32, Dev>,
    /// Torn-down devices.
    pub dead: BTreeMap<u32, SimGpu>,
    pub steps: usize,
}

/// A device configuration like [`SimGpu::join`]'s.
pub fn cfg(vram: u64) -> SvmConfig {
    let mut c = SvmConfig::new(0, 1 << 47);
    c.prefer_devmem = vram > 0;
    c
}

pub fn pref(p: PreferredLoc) -> AttrUpdate {
    AttrUpdate {
        preferred: Some(p),
        ..AttrUpdate::default()
    }
}

pub fn atomic(a: AtomicPolicy) -> AttrUpdate {
    AttrUpdate {
        atomic: Some(a),
        ..AttrUpdate::default()
    }
}

pub fn migration(m: MigrationPolicy) -> AttrUpdate {
    AttrUpdate {
        migration: Some(m),
        ..AttrUpdate::default()
    }
}

impl Machine {
    /// A machine with one address space (process 0) and the given device links.
    pub fn new(links: &[(u32, u32)]) -> Machine {
        let world = SimWorld::new();
        for &(a, b) in links {
            world.link(a, b);
        }
        let mm = SimMm::new(&world);
        let mut m = Machine {
            world,
            procs: vec![Proc {
                mm,
                model: BTreeMap::new(),
            }],
            devs: BTreeMap::new(),
            dead: BTreeMap::new(),
            steps: 0,
        };
        m.check("setup");
        m
    }

    /// The address space of process 0.
    pub fn mm(&self) -> &Arc<SimMm> {
        &self.procs[0].mm
    }

    // ---- devices ----------------------------------------------------------------------------

    /// Device `id` joins process 0 with `vram` pages of device memory (0: none); it shares an
    /// owner with the devices it is linked to.
    pub fn join(&mut self, id: u32, vram: u64) -> SimGpu {
        self.join_proc(0, id, vram, cfg(vram))
    }

    /// [`Machine::join`] with a configuration.
    pub fn join_with(&mut self, id: u32, vram: u64, c: SvmConfig) -> SimGpu {
        self.join_proc(0, id, vram, c)
    }

    /// Device `id` joins process `proc`.
    pub fn join_proc(&mut self, proc: usize, id: u32, vram: u64, c: SvmConfig) -> SimGpu {
        let g = SimGpu::join_with(&self.procs[proc].mm, id, vram, c).expect("join");
        self.devs.insert(
            id,
            Dev {
                gpu: g.clone(),
                proc,
                closed: false,
            },
        );
        self.check(&format!("join {id}"));
        g
    }

    pub fn g(&self, id: u32) -> &SimGpu {
        &self.devs[&id].gpu
    }

    fn proc_of(&self, id: u32) -> usize {
        self.devs[&id].proc
    }

    /// Tear device `id` down (its memory is emptied to RAM first).
    pub fn teardown(&mut self, id: u32) {
        let d = self.devs.remove(&id).expect("live device");
        d.gpu.teardown().expect("teardown");
        self.dead.insert(id, d.gpu);
        self.check(&format!("teardown {id}"));
    }

    /// Close device `id`'s `Svm` (its memory may keep pages: they come back on CPU faults).
    pub fn close(&mut self, id: u32) {
        let d = self.devs.get_mut(&id).expect("live device");
        d.gpu.svm.close();
        d.closed = true;
        self.check(&format!("close {id}"));
    }

    // ---- checks -----------------------------------------------------------------------------

    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (id, d) in &self.devs {
            s.push_str(&format!(
                "device {id} (process {}):\n{}",
                d.proc,
                d.gpu.describe()
            ));
        }
        s
    }

    /// All checks; panics with the step number on the first violation.
    pub fn check(&mut self, what: &str) {
        self.steps += 1;
        if let Err(e) = self.check_all() {
            panic!("step {} ({what}): {e}\n{}", self.steps, self.describe());
        }
    }

    fn check_all(&self) -> std::result::Result<(), String> {
        for (i, p) in self.procs.iter().enumerate() {
            let gpus: Vec<&SimGpu> = self
                .devs
                .values()
                .filter(|d| d.proc == i)
                .map(|d| &d.gpu)
                .collect();
            check_invariants(&p.mm, &gpus).map_err(|e| format!("process {i}: invariant: {e}"))?;
        }
        for (&id, d) in &self.devs {
            let g = &d.gpu;
            let (maps, unmaps) = g.dev.dma_counts();
            let live = g.dev.dma_mappings();
            if maps - unmaps != live.len() as u64 {
                return Err(format!(
                    "dev {id}: {maps} maps - {unmaps} unmaps != {} live",
                    live.len()
                ));
            }
            for (_, m) in live.iter().filter(|(_, m)| m.peer) {
                let peer = dev_of(m.pfn);
                if peer == id || !self.devs.contains_key(&peer) || !self.world.has_link(id, peer) {
                    return Err(format!("dev {id}: bad peer mapping to device {peer}"));
                }
            }
            if let Some(v) = g.dev.vram_violations().first() {
                return Err(format!("dev {id}: device memory misuse: {v}"));
            }
            if let Some(pm) = g.svm.pagemap() {
                let (allocs, releases) = g.dev.vram_counts();
                if allocs - releases != pm.live_allocations() as u64 {
                    return Err(format!(
                        "dev {id}: {allocs} allocations - {releases} releases != {} live",
                        pm.live_allocations()
                    ));
                }
                if pm.released_allocations() as u64 > releases {
                    return Err(format!(
                        "dev {id}: pagemap released {}, device saw {releases}",
                        pm.released_allocations()
                    ));
                }
                if pm.stray_frees() != 0 {
                    return Err(format!("dev {id}: {} stray page frees", pm.stray_frees()));
                }
            }
            if d.closed {
                check_closed(g).map_err(|e| format!("closed dev {id}: {e}"))?;
            }
        }
        for (&id, g) in &self.dead {
            check_closed(g).map_err(|e| format!("dead dev {id}: {e}"))?;
            if !g.dev.vram_used().is_empty() {
                return Err(format!("dead dev {id}: device memory still in use"));
            }
            for p in [2 * u64::from(id), 2 * u64::from(id) + 1] {
                if self.world.owners.owner_of(PeerId(p)).is_some() {
                    return Err(format!("dead dev {id}: still in the owner registry"));
                }
            }
        }
        // CPU page tables: nothing isolated, device pages of live pagemaps, RAM accounting.
        let mut mapped: BTreeSet<u64> = BTreeSet::new();
        for (i, p) in self.procs.iter().enumerate() {
            for (vpn, pte) in p.mm.ptes() {
                let a = vpn << PAGE_SHIFT;
                if pte.migrating || pte.placeholder {
                    return Err(format!("process {i}: page {a:#x} left isolated"));
                }
                match pte.dev {
                    Some((pm, owner)) => {
                        let Some(d) = self.devs.get(&pm.0) else {
                            return Err(format!(
                                "process {i}: page {a:#x} in memory of dead device {}",
                                pm.0
                            ));
                        };
                        let pmo = d.gpu.svm.pagemap().map(|x| x.owner());
                        if pmo != Some(owner) || dev_of(pte.pfn) != pm.0 {
                            return Err(format!(
                                "process {i}: page {a:#x}: pagemap {pm:?} owner {owner:?}, \
                                 expected {pmo:?}"
                            ));
                        }
                    }
                    None => {
                        mapped.insert(pte.pfn);
                    }
                }
            }
        }
        let live: BTreeSet<u64> = self.world.live_pfns().into_iter().collect();
        if live != mapped {
            let leaked: Vec<_> = live.difference(&mapped).take(4).collect();
            let gone: Vec<_> = mapped.difference(&live).take(4).collect();
            return Err(format!(
                "RAM accounting: {} live frames, {} mapped; leaked {leaked:?}, missing {gone:?}",
                live.len(),
                mapped.len()
            ));
        }
        for i in 0..self.procs.len() {
            self.check_model(i)?;
        }
        Ok(())
    }

    /// The model of process `proc` against memory, without changing any state. Addresses in a
    /// VMA the CPU may not read (PROT_NONE) are skipped: the CPU cannot look at them.
    pub fn check_model(&self, proc: usize) -> std::result::Result<(), String> {
        let p = &self.procs[proc];
        let vmas = p.mm.vmas();
        for (&addr, &v) in &p.model {
            let Some(vma) = vmas.iter().find(|x| x.start <= addr && addr < x.end) else {
                return Err(format!(
                    "process {proc}: model address {addr:#x} has no VMA"
                ));
            };
            let got = match p.mm.pte(addr) {
                None => 0,
                Some(pte) => match pte.dev {
                    Some((pm, _)) => {
                        let dev = self
                            .world
                            .device(pm.0)
                            .ok_or_else(|| format!("device {} gone", pm.0))?;
                        dev.vram_read_u64(pte.pfn, (addr % P) as usize)
                            .map_err(|e| format!("device memory read at {addr:#x}: {e:?}"))?
                    }
                    None if !vma.flags.contains(VmaFlags::READ) => continue,
                    None => {
                        p.mm.read_u64(addr)
                            .map_err(|e| format!("CPU read at {addr:#x}: {e:?}"))?
                    }
                },
            };
            if got != v {
                return Err(format!(
                    "process {proc}: data model: {addr:#x} holds {got:#x}, last written {v:#x} \
                     (page in {:?})",
                    self.loc_in(proc, addr)
                ));
            }
        }
        Ok(())
    }

    /// Any operation, followed by a check.
    pub fn step<R>(&mut self, what: &str, f: impl FnOnce(&mut Machine) -> R) -> R {
        let r = f(self);
        self.check(what);
        r
    }

    // ---- CPU side ---------------------------------------------------------------------------

    pub fn expect_in(&self, proc: usize, addr: u64) -> u64 {
        self.procs[proc].model.get(&addr).copied().unwrap_or(0)
    }

    pub fn expect(&self, addr: u64) -> u64 {
        self.expect_in(0, addr)
    }

    fn forget(&mut self, proc: usize, start: u64, end: u64) {
        let m = &mut self.procs[proc].model;
        let keys: Vec<u64> = m.range(start..end).map(|(k, _)| *k).collect();
        for k in keys {
            m.remove(&k);
        }
    }

    pub fn mmap(&mut self, len: u64) -> u64 {
        self.mmap_in(0, len, RW, false)
    }

    pub fn mmap_huge(&mut self, len: u64) -> u64 {
        let a = self.mmap_in(0, len, RW, true);
        assert_eq!(a % M2, 0);
        a
    }

    pub fn mmap_in(&mut self, proc: usize, len: u64, flags: VmaFlags, huge: bool) -> u64 {
        let a = self.procs[proc].mm.mmap(len, flags, huge).expect("mmap");
        self.check("mmap");
        a
    }

    pub fn mmap_fixed(&mut self, addr: u64, len: u64, flags: VmaFlags) {
        self.procs[0]
            .mm
            .mmap_fixed(addr, len, flags, false)
            .expect("mmap_fixed");
        self.forget(0, addr, addr + len);
        self.check("mmap_fixed");
    }

    pub fn munmap(&mut self, addr: u64, len: u64) {
        self.munmap_in(0, addr, len);
    }

    pub fn munmap_in(&mut self, proc: usize, addr: u64, len: u64) {
        self.procs[proc].mm.munmap(addr, len).expect("munmap");
        self.forget(proc, addr, addr + len);
        self.check("munmap");
    }

    /// Many munmaps as one step (one check at the end).
    pub fn munmap_batch(&mut self, spans: &[(u64, u64)]) {
        for &(addr, len) in spans {
            self.procs[0].mm.munmap(addr, len).expect("munmap");
            self.forget(0, addr, addr + len);
        }
        self.check("munmap batch");
    }

    pub fn mprotect(&mut self, addr: u64, len: u64, flags: VmaFlags) {
        self.procs[0]
            .mm
            .mprotect(addr, len, flags)
            .expect("mprotect");
        self.check("mprotect");
    }

    pub fn dontneed(&mut self, addr: u64, len: u64) {
        self.procs[0]
            .mm
            .madvise_dontneed(addr, len)
            .expect("madvise_dontneed");
        self.forget(0, addr, addr + len);
        self.check("madvise_dontneed");
    }

    /// Fork process `proc`; returns the child's index. The child starts with the parent's data.
    pub fn fork(&mut self, proc: usize) -> usize {
        let child = self.procs[proc].mm.fork();
        let model = self.procs[proc].model.clone();
        self.procs.push(Proc { mm: child, model });
        self.check("fork");
        self.procs.len() - 1
    }

    pub fn cpu_write_in(&mut self, proc: usize, addr: u64, v: u64) -> Result<()> {
        let r = self.procs[proc].mm.write_u64(addr, v);
        if r.is_ok() {
            self.procs[proc].model.insert(addr, v);
        }
        self.check("CPU write");
        r
    }

    pub fn cpu_write(&mut self, addr: u64, v: u64) {
        self.cpu_write_in(0, addr, v).expect("CPU write");
    }

    pub fn cpu_read_in(&mut self, proc: usize, addr: u64) -> Result<u64> {
        let r = self.procs[proc].mm.read_u64(addr);
        if let Ok(v) = r {
            assert_eq!(
                v,
                self.expect_in(proc, addr),
                "step {}: process {proc} CPU read of {addr:#x}",
                self.steps
            );
        }
        self.check("CPU read");
        r
    }

    pub fn cpu_read(&mut self, addr: u64) -> u64 {
        self.cpu_read_in(0, addr).expect("CPU read")
    }

    /// CPU-write `tag(a, gen)` every `stride` bytes of `[start, end)` (one step).
    pub fn cpu_fill(&mut self, start: u64, end: u64, stride: u64, gen: u64) {
        self.cpu_fill_in(0, start, end, stride, gen);
    }

    pub fn cpu_fill_in(&mut self, proc: usize, start: u64, end: u64, stride: u64, gen: u64) {
        for a in (start..end).step_by(stride as usize) {
            self.procs[proc]
                .mm
                .write_u64(a, tag(a, gen))
                .expect("CPU write");
            self.procs[proc].model.insert(a, tag(a, gen));
        }
        self.check("CPU fill");
    }

    /// The CPU reads every model address of `[start, end)` (each read checked).
    pub fn cpu_verify(&mut self, start: u64, end: u64) {
        self.cpu_verify_in(0, start, end);
    }

    pub fn cpu_verify_in(&mut self, proc: usize, start: u64, end: u64) {
        let addrs: Vec<u64> = self.procs[proc]
            .model
            .range(start..end)
            .map(|(a, _)| *a)
            .collect();
        for a in addrs {
            let v = self.procs[proc].mm.read_u64(a).expect("CPU read");
            assert_eq!(
                v,
                self.expect_in(proc, a),
                "step {}: process {proc} CPU read of {a:#x}",
                self.steps
            );
        }
        self.check("CPU verify");
    }

    // ---- device side ------------------------------------------------------------------------

    pub fn try_dev_read(&mut self, id: u32, addr: u64) -> Result<u64> {
        let r = self.g(id).read_u64(addr);
        if let Ok(v) = r {
            let p = self.proc_of(id);
            assert_eq!(
                v,
                self.expect_in(p, addr),
                "step {}: device {id} read of {addr:#x}",
                self.steps
            );
        }
        self.check(&format!("device {id} read"));
        r
    }

    pub fn dev_read(&mut self, id: u32, addr: u64) -> u64 {
        self.try_dev_read(id, addr).expect("device read")
    }

    pub fn try_dev_write(&mut self, id: u32, addr: u64, v: u64) -> Result<()> {
        let r = self.g(id).write_u64(addr, v);
        if r.is_ok() {
            let p = self.proc_of(id);
            self.procs[p].model.insert(addr, v);
        }
        self.check(&format!("device {id} write"));
        r
    }

    pub fn dev_write(&mut self, id: u32, addr: u64, v: u64) {
        self.try_dev_write(id, addr, v).expect("device write");
    }

    pub fn try_dev_atomic(&mut self, id: u32, addr: u64, v: u64) -> Result<u64> {
        let r = self.g(id).atomic_add(addr, v);
        let p = self.proc_of(id);
        if let Ok(old) = r {
            assert_eq!(
                old,
                self.expect_in(p, addr),
                "step {}: device {id} atomic at {addr:#x}",
                self.steps
            );
            self.procs[p].model.insert(addr, old.wrapping_add(v));
        }
        self.check(&format!("device {id} atomic"));
        r
    }

    pub fn dev_atomic(&mut self, id: u32, addr: u64, v: u64) -> u64 {
        self.try_dev_atomic(id, addr, v).expect("device atomic")
    }

    /// Device `id` writes `tag(a, gen)` every `stride` bytes of `[start, end)` (one step).
    pub fn dev_fill(&mut self, id: u32, start: u64, end: u64, stride: u64, gen: u64) {
        let p = self.proc_of(id);
        for a in (start..end).step_by(stride as usize) {
            self.g(id).write_u64(a, tag(a, gen)).expect("device write");
            self.procs[p].model.insert(a, tag(a, gen));
        }
        self.check(&format!("device {id} fill"));
    }

    /// Device `id` reads every model address of `[start, end)` (each read checked).
    pub fn dev_verify(&mut self, id: u32, start: u64, end: u64) {
        let p = self.proc_of(id);
        let addrs: Vec<u64> = self.procs[p]
            .model
            .range(start..end)
            .map(|(a, _)| *a)
            .collect();
        for a in addrs {
            let v = self.g(id).read_u64(a).expect("device read");
            assert_eq!(
                v,
                self.expect_in(p, a),
                "step {}: device {id} read of {a:#x}",
                self.steps
            );
        }
        self.check(&format!("device {id} verify"));
    }

    /// Policy: `set_attrs` on device `id`.
    pub fn set_attrs(&mut self, id: u32, start: u64, len: u64, u: &AttrUpdate) -> Result<()> {
        let r = self.g(id).svm.set_attrs(start, len, u);
        self.check("set_attrs");
        r
    }

    /// Policy: `prefetch` on device `id`.
    pub fn prefetch(&mut self, id: u32, start: u64, len: u64, loc: PrefetchLoc) -> Result<()> {
        let r = self.g(id).svm.prefetch(start, len, loc);
        self.check("prefetch");
        r
    }

    // ---- observations -----------------------------------------------------------------------

    pub fn loc_in(&self, proc: usize, addr: u64) -> Loc {
        match self.procs[proc].mm.pte(addr) {
            None => Loc::Absent,
            Some(p) => match p.dev {
                None => Loc::Ram,
                Some((pm, _)) => Loc::Dev(pm.0),
            },
        }
    }

    pub fn loc(&self, addr: u64) -> Loc {
        self.loc_in(0, addr)
    }

    /// Whether every page of `[start, end)` of process 0 is at `at`.
    pub fn all_at(&self, start: u64, end: u64, at: Loc) -> bool {
        (start..end).step_by(P as usize).all(|a| self.loc(a) == at)
    }

    /// Pages of `[start, end)` of process 0 per location.
    pub fn census(&self, start: u64, end: u64) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for a in (start..end).step_by(P as usize) {
            *m.entry(format!("{:?}", self.loc(a))).or_insert(0) += 1;
        }
        m
    }

    /// Ranges of device `id`: `(start, end)`.
    pub fn ranges(&self, id: u32) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        self.g(id)
            .svm
            .for_each_range(|_, r| v.push((r.start(), r.end())));
        v
    }

    /// Ranges of device `id` with their flags.
    pub fn range_flags(&self, id: u32) -> Vec<(u64, u64, RangeFlags)> {
        let mut v = Vec::new();
        self.g(id)
            .svm
            .for_each_range(|_, r| v.push((r.start(), r.end(), r.flags())));
        v
    }

    /// Device PTEs of device `id` in `[start, end)`.
    pub fn dev_ptes(&self, id: u32, start: u64, end: u64) -> usize {
        self.g(id)
            .dev
            .ptes()
            .iter()
            .filter(|(vpn, _)| (start / P..end / P).contains(vpn))
            .count()
    }

    /// Whether device `id` maps the page of `addr`, and writable.
    pub fn dev_pte(&self, id: u32, addr: u64) -> Option<bool> {
        self.g(id)
            .dev
            .ptes()
            .iter()
            .find(|(vpn, _)| *vpn == addr / P)
            .map(|(_, p)| p.writable)
    }

    pub fn dma_live(&self, id: u32) -> Vec<DmaMapping> {
        self.g(id)
            .dev
            .dma_mappings()
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    }

    pub fn peer_maps(&self, id: u32) -> Vec<DmaMapping> {
        self.dma_live(id).into_iter().filter(|m| m.peer).collect()
    }

    pub fn stats(&self, id: u32) -> StatsSnapshot {
        self.g(id).svm.stats()
    }

    /// Device frames in use on device `id`.
    pub fn vram_used(&self, id: u32) -> usize {
        self.g(id).dev.vram_used().len()
    }

    /// Live device-memory allocations of device `id`.
    pub fn live_allocs(&self, id: u32) -> usize {
        self.g(id)
            .svm
            .pagemap()
            .map(|p| p.live_allocations())
            .unwrap_or(0)
    }

    pub fn pagemap_id(&self, id: u32) -> PagemapId {
        self.g(id).svm.pagemap().expect("pagemap").id()
    }
}
