//! The harness of the multi-device tests: [`Machine`] (one world, one address space, the
//! devices, a data model) and the checks it runs after every step.

use gpusvm::pagemap::PeerId;
use gpusvm::platform::{PagemapId, VmaFlags, PAGE_SHIFT, PAGE_SIZE};
use gpusvm::sim::{check_closed, check_invariants, DmaMapping, SimGpu, SimMm, SimWorld};
use gpusvm::stats::StatsSnapshot;
use gpusvm::SvmConfig;
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
pub(crate) const P: u64 = PAGE_SIZE;
pub(crate) const K64: u64 = 64 << 10;
pub(crate) const M2: u64 = 2 << 20;
/// Device memory of each device in these tests: 16 MiB.
pub(crate) const VRAM: u64 = 4096;

/// The device whose memory holds the simulated device frame `dpfn` (frames of device `id` are
/// `(id + 1) << 32 + n`).
pub(crate) fn dev_of(dpfn: u64) -> u32 {
    ((dpfn >> 32) - 1) as u32
}

/// A value that encodes where and when it was written.
pub(crate) fn tag(addr: u64, gen: u64) -> u64 {
    (gen << 48) ^ addr ^ 0x5A5A_0000_0000_0000
}

/// A device configuration like [`SimGpu::join`]'s.
pub(crate) fn cfg(vram: u64) -> SvmConfig {
    let mut c = SvmConfig::new(0, 1 << 47);
    c.prefer_devmem = vram > 0;
    c
}

/// One machine, one address space, many devices, a data model.
pub(crate) struct Machine {
    pub(crate) world: Arc<SimWorld>,
    pub(crate) mm: Arc<SimMm>,
    pub(crate) gpus: BTreeMap<u32, SimGpu>,
    pub(crate) dead: BTreeMap<u32, SimGpu>,
    pub(crate) model: BTreeMap<u64, u64>,
    pub(crate) steps: usize,
}

impl Machine {
    pub(crate) fn new(links: &[(u32, u32)]) -> Machine {
        let world = SimWorld::new();
        for &(a, b) in links {
            world.link(a, b);
        }
        let mm = SimMm::new(&world);
        let mut m = Machine {
            world,
            mm,
            gpus: BTreeMap::new(),
            dead: BTreeMap::new(),
            model: BTreeMap::new(),
            steps: 0,
        };
        m.check("setup");
        m
    }

    pub(crate) fn join(&mut self, id: u32, vram: u64) -> SimGpu {
        self.join_with(id, vram, cfg(vram))
    }

    pub(crate) fn join_with(&mut self, id: u32, vram: u64, cfg: SvmConfig) -> SimGpu {
        let g = SimGpu::join_with(&self.mm, id, vram, cfg).expect("join");
        self.gpus.insert(id, g.clone());
        self.check(&format!("join {id}"));
        g
    }

    pub(crate) fn g(&self, id: u32) -> &SimGpu {
        &self.gpus[&id]
    }

    pub(crate) fn teardown(&mut self, id: u32) {
        let g = self.gpus.remove(&id).expect("live device");
        g.teardown().expect("teardown");
        self.dead.insert(id, g);
        self.check(&format!("teardown {id}"));
    }

    pub(crate) fn live(&self) -> Vec<&SimGpu> {
        self.gpus.values().collect()
    }

    /// Which device's memory holds the page of `addr` (`None`: system RAM or absent).
    pub(crate) fn where_is(&self, addr: u64) -> Option<u32> {
        self.mm.pte(addr).and_then(|p| p.dev).map(|(pm, _)| pm.0)
    }

    /// Which devices' memories hold pages of `[start, end)`, page by page.
    pub(crate) fn placement(&self, start: u64, end: u64) -> Vec<Option<u32>> {
        (start..end)
            .step_by(P as usize)
            .map(|a| self.where_is(a))
            .collect()
    }

    /// The CPU page table as (page, frame, pagemap, writable, isolated): what a migration
    /// moves. The mapping order is left out: isolating an interval whose edge falls inside a
    /// 2 MiB block splits that block's mappings in the simulator (as a THP split does), and the
    /// split outlives a failed migration.
    pub(crate) fn frames(&self) -> Vec<(u64, u64, Option<PagemapId>, bool, bool)> {
        self.mm
            .ptes()
            .into_iter()
            .map(|(v, p)| (v, p.pfn, p.dev.map(|d| d.0), p.writable, p.migrating))
            .collect()
    }

    pub(crate) fn peer_maps(&self, id: u32) -> Vec<DmaMapping> {
        self.g(id)
            .dev
            .dma_mappings()
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.peer)
            .collect()
    }

    pub(crate) fn stats(&self, id: u32) -> StatsSnapshot {
        self.g(id).svm.stats()
    }

    pub(crate) fn copies(&self, id: u32) -> u64 {
        self.g(id).dev.copy_counts().0
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = String::new();
        for (id, g) in &self.gpus {
            s.push_str(&format!("device {id}:\n{}", g.describe()));
        }
        s
    }

    /// All checks; panics with the step number on the first violation.
    pub(crate) fn check(&mut self, what: &str) {
        self.steps += 1;
        if let Err(e) = self.check_all() {
            panic!("step {} ({what}): {e}\n{}", self.steps, self.describe());
        }
    }

    pub(crate) fn check_all(&self) -> Result<(), String> {
        check_invariants(&self.mm, &self.live()).map_err(|e| format!("invariant: {e}"))?;
        let owners = &self.world.owners;
        for (&id, g) in &self.gpus {
            let (maps, unmaps) = g.dev.dma_counts();
            let live = g.dev.dma_mappings();
            if maps - unmaps != live.len() as u64 {
                return Err(format!("dev {id}: {maps} maps - {unmaps} unmaps != live"));
            }
            let svm_owner = owners.owner_of(PeerId(2 * u64::from(id) + 1));
            if svm_owner.is_none() || g.svm.owner() != svm_owner {
                return Err(format!(
                    "dev {id}: Svm owner {:?}, registry says {svm_owner:?}",
                    g.svm.owner()
                ));
            }
            if let Some(pm) = g.svm.pagemap() {
                let o = owners.owner_of(PeerId(2 * u64::from(id)));
                if o != Some(pm.owner()) {
                    return Err(format!(
                        "dev {id}: pagemap owner {:?}, registry says {o:?}",
                        pm.owner()
                    ));
                }
            }
            for (_, m) in live.iter().filter(|(_, m)| m.peer) {
                let peer = dev_of(m.pfn);
                if peer == id || !self.gpus.contains_key(&peer) {
                    return Err(format!(
                        "dev {id}: peer mapping of frame {:#x} of device {peer} (not a live peer)",
                        m.pfn
                    ));
                }
                if !self.world.has_link(id, peer) {
                    return Err(format!("dev {id}: peer mapping to unlinked device {peer}"));
                }
            }
        }
        for (vpn, p) in self.mm.ptes() {
            if p.migrating {
                return Err(format!("page {:#x} still isolated", vpn << PAGE_SHIFT));
            }
            if let Some((pm, owner)) = p.dev {
                let Some(g) = self.gpus.get(&pm.0) else {
                    return Err(format!(
                        "page {:#x} in memory of dead or unknown device {}",
                        vpn << PAGE_SHIFT,
                        pm.0
                    ));
                };
                let pmo = g.svm.pagemap().map(|p| p.owner());
                if pmo != Some(owner) || dev_of(p.pfn) != pm.0 {
                    return Err(format!(
                        "page {:#x}: CPU says pagemap {pm:?} owner {owner:?} frame {:#x}, \
                         pagemap owner is {pmo:?}",
                        vpn << PAGE_SHIFT,
                        p.pfn
                    ));
                }
            }
        }
        for (&id, g) in &self.dead {
            check_closed(g).map_err(|e| format!("dead dev {id}: {e}"))?;
            if !g.dev.vram_used().is_empty() {
                return Err(format!("dead dev {id}: device memory still in use"));
            }
            if let Some(v) = g.dev.vram_violations().first() {
                return Err(format!("dead dev {id}: {v}"));
            }
            for p in [2 * u64::from(id), 2 * u64::from(id) + 1] {
                if owners.owner_of(PeerId(p)).is_some() {
                    return Err(format!("dead dev {id}: peer {p} still in the registry"));
                }
            }
            for (&sid, s) in &self.gpus {
                if s.svm.pagemap_by_id(PagemapId(id)).is_some() {
                    return Err(format!("dev {sid} still has dead dev {id}'s pagemap"));
                }
            }
            if self
                .world
                .pagemaps()
                .iter()
                .any(|p| p.id() == PagemapId(id))
            {
                return Err(format!("machine still lists dead dev {id}'s pagemap"));
            }
        }
        self.check_model()
    }

    /// The model against what the CPU page table maps, without changing any state.
    pub(crate) fn check_model(&self) -> Result<(), String> {
        for (&addr, &v) in &self.model {
            let off = (addr % P) as usize;
            let got = match self.mm.pte(addr) {
                None => 0,
                Some(p) => match p.dev {
                    Some((pm, _)) => {
                        let dev = self
                            .world
                            .device(pm.0)
                            .ok_or_else(|| format!("device {} gone", pm.0))?;
                        dev.vram_read_u64(p.pfn, off)
                            .map_err(|e| format!("VRAM read at {addr:#x}: {e:?}"))?
                    }
                    // A present system page: the read does not fault or change anything.
                    None => self
                        .mm
                        .read_u64(addr)
                        .map_err(|e| format!("CPU read at {addr:#x}: {e:?}"))?,
                },
            };
            if got != v {
                return Err(format!(
                    "data model: {addr:#x} holds {got:#x}, last written {v:#x} (page in {:?})",
                    self.where_is(addr)
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn expect(&self, addr: u64) -> u64 {
        self.model.get(&addr).copied().unwrap_or(0)
    }

    pub(crate) fn cpu_write(&mut self, addr: u64, v: u64) {
        self.mm.write_u64(addr, v).expect("CPU write");
        self.model.insert(addr, v);
        self.check("CPU write");
    }

    pub(crate) fn cpu_read(&mut self, addr: u64) -> u64 {
        let v = self.mm.read_u64(addr).expect("CPU read");
        assert_eq!(v, self.expect(addr), "CPU read of {addr:#x}");
        self.check("CPU read");
        v
    }

    /// CPU-write a tag of generation `gen` every `stride` bytes of `[start, end)`.
    pub(crate) fn cpu_fill(&mut self, start: u64, end: u64, stride: u64, gen: u64) {
        for a in (start..end).step_by(stride as usize) {
            self.mm.write_u64(a, tag(a, gen)).expect("CPU write");
            self.model.insert(a, tag(a, gen));
        }
        self.check("CPU fill");
    }

    pub(crate) fn dev_read(&mut self, id: u32, addr: u64) -> u64 {
        let v = self.g(id).read_u64(addr).expect("device read");
        assert_eq!(v, self.expect(addr), "device {id} read of {addr:#x}");
        self.check(&format!("device {id} read"));
        v
    }

    pub(crate) fn dev_write(&mut self, id: u32, addr: u64, v: u64) {
        self.g(id).write_u64(addr, v).expect("device write");
        self.model.insert(addr, v);
        self.check(&format!("device {id} write"));
    }

    /// Device `id` reads every model address of `[start, end)`.
    pub(crate) fn dev_read_all(&mut self, id: u32, start: u64, end: u64) {
        let addrs: Vec<u64> = self.model.range(start..end).map(|(a, _)| *a).collect();
        for a in addrs {
            self.dev_read(id, a);
        }
    }

    /// The CPU reads every model address of `[start, end)`.
    pub(crate) fn cpu_read_all(&mut self, start: u64, end: u64) {
        let addrs: Vec<u64> = self.model.range(start..end).map(|(a, _)| *a).collect();
        for a in addrs {
            self.cpu_read(a);
        }
    }

    pub(crate) fn mmap(&mut self, len: u64) -> u64 {
        let a = self.mm.mmap(len, RW, false).expect("mmap");
        self.check("mmap");
        a
    }
}
