//! Many devices on one simulated machine (issue 5; SPEC §3 peer pages, §6 owners and
//! interconnect, §7 device → device migration).
//!
//! Every scenario runs on [`Machine`]: one [`SimWorld`], one address space, any number of
//! [`SimGpu`]s that joined the machine's owner registry. After **every** step (each CPU or
//! device access, each migration call, each join and teardown) [`Machine::check`] runs
//! - the simulator's invariant checker over **all** live devices (ranges, device PTEs, DMA and
//!   P2P mappings reaching the frame the CPU maps, device-memory accounting per pagemap);
//! - a data model (`address -> last value written`, DESIGN invariant 4) compared, without
//!   changing any state, against the frame the CPU page table maps — system RAM or the device
//!   memory of the pagemap the CPU entry names;
//! - registry coherence: each device's `Svm` owner and pagemap owner are what
//!   [`SimWorld::owners`] says, and every device page the CPU maps carries its pagemap's owner;
//! - P2P hygiene: every peer DMA mapping of a live device points at the memory of another live
//!   device it has a link to, and the IOMMU counts agree with the live mappings;
//! - for torn-down devices: closed (no DMA mapping, no PTE, no range), no device memory in use,
//!   out of the registry, detached from every survivor, no CPU page left in their memory.
//!
//! Reads (CPU and device) are also compared with the model at the moment they return.
#![cfg(feature = "sim")]

use gpusvm::migrate::{self, MigrateDetails, ToDevmemState};
use gpusvm::pagemap::PeerId;
use gpusvm::platform::{OwnerId, PagemapId, VmaFlags, PAGE_SHIFT, PAGE_SIZE};
use gpusvm::sim::{check_closed, check_invariants, DmaMapping, SimGpu, SimMm, SimWorld};
use gpusvm::stats::StatsSnapshot;
use gpusvm::{Error, SvmConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const P: u64 = PAGE_SIZE;
const K64: u64 = 64 << 10;
const M2: u64 = 2 << 20;
/// Device memory of each device in these tests: 16 MiB.
const VRAM: u64 = 4096;

/// The device whose memory holds the simulated device frame `dpfn` (frames of device `id` are
/// `(id + 1) << 32 + n`).
fn dev_of(dpfn: u64) -> u32 {
    ((dpfn >> 32) - 1) as u32
}

/// A value that encodes where and when it was written.
fn tag(addr: u64, gen: u64) -> u64 {
    (gen << 48) ^ addr ^ 0x5A5A_0000_0000_0000
}

/// A device configuration like [`SimGpu::join`]'s.
fn cfg(vram: u64) -> SvmConfig {
    let mut c = SvmConfig::new(0, 1 << 47);
    c.prefer_devmem = vram > 0;
    c
}

/// One machine, one address space, many devices, a data model.
struct Machine {
    world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    gpus: BTreeMap<u32, SimGpu>,
    dead: BTreeMap<u32, SimGpu>,
    model: BTreeMap<u64, u64>,
    steps: usize,
}

impl Machine {
    fn new(links: &[(u32, u32)]) -> Machine {
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

    fn join(&mut self, id: u32, vram: u64) -> SimGpu {
        self.join_with(id, vram, cfg(vram))
    }

    fn join_with(&mut self, id: u32, vram: u64, cfg: SvmConfig) -> SimGpu {
        let g = SimGpu::join_with(&self.mm, id, vram, cfg).expect("join");
        self.gpus.insert(id, g.clone());
        self.check(&format!("join {id}"));
        g
    }

    fn g(&self, id: u32) -> &SimGpu {
        &self.gpus[&id]
    }

    fn teardown(&mut self, id: u32) {
        let g = self.gpus.remove(&id).expect("live device");
        g.teardown().expect("teardown");
        self.dead.insert(id, g);
        self.check(&format!("teardown {id}"));
    }

    fn live(&self) -> Vec<&SimGpu> {
        self.gpus.values().collect()
    }

    /// Which device's memory holds the page of `addr` (`None`: system RAM or absent).
    fn where_is(&self, addr: u64) -> Option<u32> {
        self.mm.pte(addr).and_then(|p| p.dev).map(|(pm, _)| pm.0)
    }

    /// Which devices' memories hold pages of `[start, end)`, page by page.
    fn placement(&self, start: u64, end: u64) -> Vec<Option<u32>> {
        (start..end)
            .step_by(P as usize)
            .map(|a| self.where_is(a))
            .collect()
    }

    /// The CPU page table as (page, frame, pagemap, writable, isolated): what a migration
    /// moves. The mapping order is left out: isolating an interval whose edge falls inside a
    /// 2 MiB block splits that block's mappings in the simulator (as a THP split does), and the
    /// split outlives a failed migration.
    fn frames(&self) -> Vec<(u64, u64, Option<PagemapId>, bool, bool)> {
        self.mm
            .ptes()
            .into_iter()
            .map(|(v, p)| (v, p.pfn, p.dev.map(|d| d.0), p.writable, p.migrating))
            .collect()
    }

    fn peer_maps(&self, id: u32) -> Vec<DmaMapping> {
        self.g(id)
            .dev
            .dma_mappings()
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.peer)
            .collect()
    }

    fn stats(&self, id: u32) -> StatsSnapshot {
        self.g(id).svm.stats()
    }

    fn copies(&self, id: u32) -> u64 {
        self.g(id).dev.copy_counts().0
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (id, g) in &self.gpus {
            s.push_str(&format!("device {id}:\n{}", g.describe()));
        }
        s
    }

    /// All checks; panics with the step number on the first violation.
    fn check(&mut self, what: &str) {
        self.steps += 1;
        if let Err(e) = self.check_all() {
            panic!("step {} ({what}): {e}\n{}", self.steps, self.describe());
        }
    }

    fn check_all(&self) -> Result<(), String> {
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
    fn check_model(&self) -> Result<(), String> {
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

    fn expect(&self, addr: u64) -> u64 {
        self.model.get(&addr).copied().unwrap_or(0)
    }

    fn cpu_write(&mut self, addr: u64, v: u64) {
        self.mm.write_u64(addr, v).expect("CPU write");
        self.model.insert(addr, v);
        self.check("CPU write");
    }

    fn cpu_read(&mut self, addr: u64) -> u64 {
        let v = self.mm.read_u64(addr).expect("CPU read");
        assert_eq!(v, self.expect(addr), "CPU read of {addr:#x}");
        self.check("CPU read");
        v
    }

    /// CPU-write a tag of generation `gen` every `stride` bytes of `[start, end)`.
    fn cpu_fill(&mut self, start: u64, end: u64, stride: u64, gen: u64) {
        for a in (start..end).step_by(stride as usize) {
            self.mm.write_u64(a, tag(a, gen)).expect("CPU write");
            self.model.insert(a, tag(a, gen));
        }
        self.check("CPU fill");
    }

    fn dev_read(&mut self, id: u32, addr: u64) -> u64 {
        let v = self.g(id).read_u64(addr).expect("device read");
        assert_eq!(v, self.expect(addr), "device {id} read of {addr:#x}");
        self.check(&format!("device {id} read"));
        v
    }

    fn dev_write(&mut self, id: u32, addr: u64, v: u64) {
        self.g(id).write_u64(addr, v).expect("device write");
        self.model.insert(addr, v);
        self.check(&format!("device {id} write"));
    }

    /// Device `id` reads every model address of `[start, end)`.
    fn dev_read_all(&mut self, id: u32, start: u64, end: u64) {
        let addrs: Vec<u64> = self.model.range(start..end).map(|(a, _)| *a).collect();
        for a in addrs {
            self.dev_read(id, a);
        }
    }

    /// The CPU reads every model address of `[start, end)`.
    fn cpu_read_all(&mut self, start: u64, end: u64) {
        let addrs: Vec<u64> = self.model.range(start..end).map(|(a, _)| *a).collect();
        for a in addrs {
            self.cpu_read(a);
        }
    }

    fn mmap(&mut self, len: u64) -> u64 {
        let a = self.mm.mmap(len, RW, false).expect("mmap");
        self.check("mmap");
        a
    }
}

// ---- two devices, one owner ------------------------------------------------------------------

/// Two linked devices share an owner: the second maps the first's device memory peer-to-peer
/// (a `peer: true` DMA mapping) instead of migrating, and both read and write the same data.
#[test]
fn linked_devices_share_pages_without_migration() {
    let mut m = Machine::new(&[(0, 1)]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    assert_eq!(a.svm.owner(), b.svm.owner());
    assert_eq!(
        a.svm.pagemap().unwrap().owner(),
        b.svm.pagemap().unwrap().owner()
    );
    assert_eq!(m.world.owners.owners(), 1);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert_eq!(m.stats(0).migrations_to_devmem, 1);
    let (ca, cb) = (m.copies(0), m.copies(1));
    let vram_a = a.dev.vram_used();

    // B reads A's memory over the link: no migration anywhere, no copy.
    m.dev_read_all(1, buf, buf + M2);
    assert_eq!(m.stats(1).migrations_to_devmem, 0);
    assert_eq!(m.stats(1).migrations_to_ram, 0);
    assert_eq!(m.stats(0).migrations_to_devmem, 1);
    assert_eq!((m.copies(0), m.copies(1)), (ca, cb));
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert_eq!(a.dev.vram_used(), vram_a);
    assert!(b.dev.vram_used().is_empty());
    let peer = m.peer_maps(1);
    assert!(!peer.is_empty(), "B maps A's pages peer-to-peer");
    assert!(peer.iter().all(|p| dev_of(p.pfn) == 0));
    assert!(m.peer_maps(0).is_empty(), "A uses its own memory directly");
    assert!(
        b.dev
            .ptes()
            .iter()
            .all(|(_, p)| p.proto != gpusvm::pages::Protocol::DEVICE_LOCAL),
        "B's PTEs are peer PTEs"
    );

    // Writes from either side are seen by the other through the same frames.
    m.dev_write(1, buf + 8, 0xB1);
    assert_eq!(m.dev_read(0, buf + 8), 0xB1);
    m.dev_write(0, buf + 16, 0xA1);
    assert_eq!(m.dev_read(1, buf + 16), 0xA1);
    for i in 0..32u64 {
        let addr = buf + i * K64 + 24;
        m.dev_write(i as u32 % 2, addr, tag(addr, 7));
        m.dev_read((i as u32 + 1) % 2, addr);
    }
    assert_eq!(m.stats(0).migrations_to_devmem, 1);
    assert_eq!(m.stats(1).migrations_to_devmem, 0);
    assert_eq!((m.copies(0), m.copies(1)), (ca, cb));

    // The CPU pulls everything back; both devices then fault again and see the same data.
    m.cpu_read_all(buf, buf + M2);
    assert!(
        m.peer_maps(1).is_empty(),
        "the migration invalidated B's peer mappings"
    );
    m.dev_read_all(1, buf, buf + M2);
    m.dev_read_all(0, buf, buf + M2);
}

/// A linked device without device memory of its own still maps its owner's device pages
/// peer-to-peer (and never migrates).
#[test]
fn linked_device_without_memory_maps_peer_pages() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    m.join(1, 0);
    assert_eq!(m.g(0).svm.owner(), m.g(1).svm.owner());
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, K64, 1);
    m.dev_read(0, buf);
    m.dev_read_all(1, buf, buf + M2);
    assert!(!m.peer_maps(1).is_empty());
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    m.dev_write(1, buf + 8, 5);
    assert_eq!(m.dev_read(0, buf + 8), 5);
    assert_eq!(m.cpu_read(buf + 8), 5);
}

/// A peer-to-peer DMA mapping that fails (injected into B's `map_peer`) fails the fault with
/// `NoMem` and leaves no mapping behind; the pages stay in A's memory, and the next fault maps
/// them.
#[test]
fn peer_map_failure_undoes_the_collection() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    let b = m.join(1, 0);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, K64, 1);
    m.dev_read(0, buf);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    let (peer_before, dma_before) = (m.peer_maps(1).len(), b.dev.dma_mappings().len());
    // The range is one 2 MiB entry: one peer mapping, and it fails.
    b.dev.inject_dma_fail_at(1);
    assert_eq!(b.read_u64(buf), Err(Error::NoMem));
    assert_eq!(b.dev.pending_injections().0, 0, "the injection fired");
    assert_eq!(
        m.peer_maps(1).len(),
        peer_before,
        "no peer mapping left behind"
    );
    assert_eq!(b.dev.dma_mappings().len(), dma_before);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    m.check("after the failed peer map");
    m.dev_read_all(1, buf, buf + M2);
    assert!(!m.peer_maps(1).is_empty());
    m.check("after the retry");
}

// ---- two devices, two owners -----------------------------------------------------------------

/// Without a link the devices are in different owners: B's fault on pages in A's memory evicts
/// them to RAM (A's copy engine) and migrates them into B (B's copy engine); no P2P mapping is
/// ever made; the data survives every trip.
#[test]
fn unlinked_devices_migrate_through_ram() {
    let mut m = Machine::new(&[]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    assert_ne!(a.svm.owner(), b.svm.owner());
    assert_eq!(m.world.owners.owners(), 2);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_write(0, buf + 8, 0xA);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));

    let (ca, cb) = (m.copies(0), m.copies(1));
    let sb = m.stats(1);
    assert_eq!(m.dev_read(1, buf + 8), 0xA);
    let sb2 = m.stats(1);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    assert!(a.dev.vram_used().is_empty(), "A's allocation was released");
    assert_eq!(a.svm.pagemap().unwrap().live_allocations(), 0);
    assert_eq!(sb2.evictions, sb.evictions + 1, "B evicted A's pages");
    assert_eq!(sb2.migrations_to_ram, sb.migrations_to_ram + 1);
    assert_eq!(sb2.migrations_to_devmem, sb.migrations_to_devmem + 1);
    assert_eq!(m.copies(0), ca + 1, "A's engine copied its pages to RAM");
    assert_eq!(m.copies(1), cb + 1, "B's engine copied them in");
    assert!(m.peer_maps(0).is_empty() && m.peer_maps(1).is_empty());
    m.dev_read_all(1, buf, buf + M2);

    // And back: ping-pong a few times, with writes on both sides.
    for round in 0..3u64 {
        m.dev_write(0, buf + 16, round);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
        assert_eq!(m.dev_read(1, buf + 16), round);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
        m.dev_write(1, buf + 24, round * 3);
    }
    assert!(m.peer_maps(0).is_empty() && m.peer_maps(1).is_empty());
    m.cpu_read_all(buf, buf + M2);
    m.dev_read_all(0, buf, buf + M2);
}

// ---- a third device joins and leaves ---------------------------------------------------------

/// A third device linked to both members adopts their owner and shares their pages P2P; when
/// it leaves, the owner lives on; when the last peer leaves, the owner dies and its id is
/// never handed out again.
#[test]
fn third_device_linked_to_both_joins_the_owner_and_leaves() {
    let mut m = Machine::new(&[(0, 1), (0, 2), (1, 2)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let o = m.g(0).svm.owner().unwrap();
    let c = m.join(2, VRAM);
    assert_eq!(c.svm.owner(), Some(o));
    assert_eq!(m.world.owners.owners(), 1);
    let mut members = m.world.owners.members(o).unwrap();
    members.sort();
    assert_eq!(&members[..], &(0..6).map(PeerId).collect::<Vec<_>>()[..]);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_read(1, buf);
    assert_eq!(m.where_is(buf), Some(1));
    m.dev_read_all(2, buf, buf + M2);
    m.dev_read_all(0, buf, buf + M2);
    assert!(m.peer_maps(2).iter().all(|p| dev_of(p.pfn) == 1));
    assert!(!m.peer_maps(2).is_empty() && !m.peer_maps(0).is_empty());
    assert_eq!(m.stats(2).migrations_to_devmem, 0);
    m.dev_write(2, buf + 8, 0xC);
    assert_eq!(m.dev_read(0, buf + 8), 0xC);

    m.teardown(2);
    assert_eq!(m.world.owners.owners(), 1);
    assert_eq!(m.world.owners.members(o).unwrap().len(), 4);
    m.dev_read_all(0, buf, buf + M2);
    m.teardown(1);
    assert!(m.placement(buf, buf + M2).iter().all(|d| d.is_none()));
    m.dev_read_all(0, buf, buf + M2);
    assert_eq!(m.where_is(buf), Some(0));
    m.teardown(0);
    assert_eq!(
        m.world.owners.owners(),
        0,
        "the owner died with its last peer"
    );
    assert!(m.world.owners.members(o).unwrap().is_empty());
    m.cpu_read_all(buf, buf + M2);

    // A newcomer gets a fresh owner id.
    let d = m.join(3, VRAM);
    assert_ne!(d.svm.owner(), Some(o));
    m.dev_read_all(3, buf, buf + M2);
    assert_eq!(m.where_is(buf), Some(3));
}

/// A third device linked to only one member of the owner does not qualify (the join rule needs
/// a link to *every* member): it gets a new owner, sees the others' pages only through RAM,
/// and its owner dies when it leaves.
#[test]
fn third_device_linked_to_one_gets_a_new_owner() {
    let mut m = Machine::new(&[(0, 1), (0, 2)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let o = m.g(0).svm.owner().unwrap();
    let c = m.join(2, VRAM);
    let oc = c.svm.owner().unwrap();
    assert_ne!(oc, o);
    assert_eq!(m.world.owners.owners(), 2);
    assert_eq!(c.svm.pagemap().unwrap().owner(), oc);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_read(0, buf);
    assert_eq!(m.where_is(buf), Some(0));
    // C is linked to A but not in A's owner: A's pages go through RAM into C.
    m.dev_read_all(2, buf, buf + M2);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(2)));
    assert!(m.peer_maps(2).is_empty());
    assert_eq!(m.stats(2).evictions, 1);
    // B faults on C's pages: foreign again, through RAM.
    m.dev_write(1, buf + 8, 0xB);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    assert!(m.peer_maps(1).is_empty());
    m.dev_read_all(2, buf, buf + M2);

    m.teardown(2);
    assert_eq!(m.world.owners.owners(), 1, "C's owner died with C");
    assert!(m.world.owners.members(oc).unwrap().is_empty());
    m.dev_read_all(1, buf, buf + M2);

    // A later device linked to both A and B joins their owner; one linked to nobody gets an id
    // no owner had before.
    m.world.link(1, 3);
    m.world.link(0, 3);
    let d = m.join(3, VRAM);
    assert_eq!(d.svm.owner(), Some(o));
    let e = m.join(4, VRAM);
    let oe = e.svm.owner().unwrap();
    assert!(oe != o && oe != oc);
    m.dev_read_all(3, buf, buf + M2);
    assert!(!m.peer_maps(3).is_empty());
}

// ---- device A faults on pages resident in B's memory ----------------------------------------

/// A (device 0) faults on pages that live entirely in B's memory (device 1), for one
/// combination of link and `source_peer_migrates`; then a migration to A is forced with
/// `Svm::migrate_to_devmem`.
///
/// - Linked (one owner): A's fault maps B's pages P2P, no copy; the forced migration copies
///   device → device over the link with B's engine if `source_peer_migrates`, else A's, and
///   leaves B's memory empty; B then maps A's pages P2P.
/// - Not linked: A's fault evicts B's pages (B's engine, to RAM) and migrates them in (A's
///   engine): `source_peer_migrates` plays no part; the forced migration of a range already in
///   A does nothing; a forced migration to B of pages in A is refused with `Busy` and moves
///   nothing.
fn fault_on_peer_resident(link: bool, spm: bool) {
    let links: &[(u32, u32)] = if link { &[(0, 1)] } else { &[] };
    let mut m = Machine::new(links);
    let mut ca = cfg(VRAM);
    ca.source_peer_migrates = spm;
    m.join_with(0, VRAM, ca.clone());
    let mut cb = cfg(VRAM);
    cb.source_peer_migrates = spm;
    m.join_with(1, VRAM, cb);
    assert_eq!(m.g(0).svm.owner() == m.g(1).svm.owner(), link);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_write(1, buf + 8, 0xB);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    let (c0, c1) = (m.copies(0), m.copies(1));
    let s0 = m.stats(0);

    m.dev_read_all(0, buf, buf + M2);
    let s0b = m.stats(0);
    if link {
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
        assert!(!m.peer_maps(0).is_empty());
        assert_eq!((m.copies(0), m.copies(1)), (c0, c1), "no copy at all");
        assert_eq!(s0b.migrations_to_devmem, s0.migrations_to_devmem);
        assert_eq!(s0b.migrate_failures, s0.migrate_failures);

        // Force A to take the pages: device → device over the link.
        let range = m.g(0).svm.find(buf).expect("A's range");
        let details = MigrateDetails {
            source_peer_migrates: spm,
            ..MigrateDetails::default()
        };
        let rep = m
            .g(0)
            .svm
            .migrate_to_devmem(&range, &details)
            .expect("migrate");
        m.check("forced device-to-device migration");
        assert_eq!(rep.pages, 512);
        assert!(!rep.already_there);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
        if spm {
            assert_eq!(
                (m.copies(0), m.copies(1)),
                (c0, c1 + 1),
                "B's engine copied"
            );
        } else {
            assert_eq!(
                (m.copies(0), m.copies(1)),
                (c0 + 1, c1),
                "A's engine copied"
            );
        }
        assert!(m.g(1).dev.vram_used().is_empty());
        assert_eq!(m.g(1).svm.pagemap().unwrap().live_allocations(), 0);
        assert_eq!(m.stats(0).migrations_to_devmem, s0.migrations_to_devmem + 1);
        assert!(
            m.peer_maps(0).is_empty(),
            "the migration invalidated A's peer mappings"
        );
        m.dev_read_all(0, buf, buf + M2);
        assert!(m.peer_maps(0).is_empty(), "A now uses its own memory");
        m.dev_read_all(1, buf, buf + M2);
        assert!(m.peer_maps(1).iter().all(|p| dev_of(p.pfn) == 0));
        assert!(!m.peer_maps(1).is_empty());
        assert_eq!(
            m.stats(1).migrations_to_devmem,
            1,
            "B did not take them back"
        );
    } else {
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
        assert!(m.peer_maps(0).is_empty() && m.peer_maps(1).is_empty());
        assert_eq!(
            s0b.migrate_failures,
            s0.migrate_failures + 1,
            "first try: Busy"
        );
        assert_eq!(s0b.evictions, s0.evictions + 1);
        assert_eq!(s0b.migrations_to_ram, s0.migrations_to_ram + 1);
        assert_eq!(s0b.migrations_to_devmem, s0.migrations_to_devmem + 1);
        assert_eq!(m.copies(1), c1 + 1, "B's engine copied its pages to RAM");
        assert_eq!(m.copies(0), c0 + 1, "A's engine copied them in");
        assert!(m.g(1).dev.vram_used().is_empty());

        // Forcing A again: already there.
        let range = m.g(0).svm.find(buf).expect("A's range");
        let details = MigrateDetails {
            source_peer_migrates: spm,
            ..MigrateDetails::default()
        };
        let rep = m
            .g(0)
            .svm
            .migrate_to_devmem(&range, &details)
            .expect("noop");
        m.check("forced migration of a resident range");
        assert!(rep.already_there);
        assert_eq!(rep.pages, 0);
        // Forcing B: A's pages are foreign to B → Busy, nothing moves.
        let rb = m.g(1).svm.find(buf).expect("B's range");
        let before = m.frames();
        let (c0, c1) = (m.copies(0), m.copies(1));
        assert_eq!(
            m.g(1).svm.migrate_to_devmem(&rb, &details),
            Err(Error::Busy)
        );
        m.check("forced migration blocked by a foreign owner");
        assert_eq!(m.frames(), before);
        assert_eq!((m.copies(0), m.copies(1)), (c0, c1));
        m.dev_read_all(1, buf, buf + M2);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    }
    m.cpu_read_all(buf, buf + M2);
}

#[test]
fn fault_on_peer_pages_linked_target_copies() {
    fault_on_peer_resident(true, false);
}

#[test]
fn fault_on_peer_pages_linked_source_copies() {
    fault_on_peer_resident(true, true);
}

#[test]
fn fault_on_peer_pages_unlinked_target_copies() {
    fault_on_peer_resident(false, false);
}

#[test]
fn fault_on_peer_pages_unlinked_source_copies() {
    fault_on_peer_resident(false, true);
}

/// The fault path itself migrates device → device: B (64 KiB chunks) holds the first 64 KiB
/// of a 2 MiB block; A (2 MiB chunks, `SvmConfig::source_peer_migrates = spm`) faults on the
/// block, whose range is then partly in B and partly in RAM, so A's placement migrates it all:
/// B's 16 pages over the link (by B's engine iff `spm`), the rest from RAM (A's engine).
/// Without a link the first attempt is `Busy`, the range is evicted and migrated from RAM.
fn fault_path_migrates_partly_peer_resident(link: bool, spm: bool) {
    let links: &[(u32, u32)] = if link { &[(0, 1)] } else { &[] };
    let mut m = Machine::new(links);
    let mut ca = cfg(VRAM);
    ca.source_peer_migrates = spm;
    m.join_with(0, VRAM, ca);
    let cb = cfg(VRAM).with_chunk_sizes(&[K64, P]).unwrap();
    m.join_with(1, VRAM, cb);

    let buf = m.mmap(M2);
    // Every page present, so that B's 64 KiB chunk qualifies (check_pages_threshold).
    m.cpu_fill(buf, buf + M2, P, 1);
    m.dev_write(1, buf + 8, 0xB);
    let want_b: Vec<Option<u32>> = (0..512).map(|i| (i < 16).then_some(1)).collect();
    assert_eq!(m.placement(buf, buf + M2), want_b);
    let (c0, c1) = (m.copies(0), m.copies(1));
    let s0 = m.stats(0);

    m.dev_read(0, buf + 8);
    let s0b = m.stats(0);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert!(m.g(1).dev.vram_used().is_empty());
    assert_eq!(s0b.migrations_to_devmem, s0.migrations_to_devmem + 1);
    if link {
        assert_eq!(s0b.migrate_failures, s0.migrate_failures);
        assert_eq!(s0b.evictions, s0.evictions);
        if spm {
            assert_eq!(
                m.copies(1),
                c1 + 1,
                "B's engine copied its pages over the link"
            );
            assert_eq!(m.copies(0), c0 + 1, "A's engine copied from RAM");
        } else {
            assert_eq!(m.copies(1), c1, "B's engine idle");
            assert_eq!(
                m.copies(0),
                c0 + 1,
                "A's engine copied everything in one batch"
            );
        }
    } else {
        assert_eq!(s0b.migrate_failures, s0.migrate_failures + 1);
        assert_eq!(s0b.evictions, s0.evictions + 1);
        assert_eq!(m.copies(1), c1 + 1, "B's engine evicted to RAM");
        assert_eq!(m.copies(0), c0 + 1);
    }
    m.dev_read_all(0, buf, buf + M2);
    m.dev_read_all(1, buf, buf + K64);
    assert_eq!(
        !m.peer_maps(1).is_empty(),
        link,
        "B maps A's pages P2P iff linked"
    );
    m.cpu_read_all(buf, buf + M2);
}

#[test]
fn fault_path_peer_migration_linked_target_copies() {
    fault_path_migrates_partly_peer_resident(true, false);
}

#[test]
fn fault_path_peer_migration_linked_source_copies() {
    fault_path_migrates_partly_peer_resident(true, true);
}

#[test]
fn fault_path_peer_migration_unlinked_target_copies() {
    fault_path_migrates_partly_peer_resident(false, false);
}

#[test]
fn fault_path_peer_migration_unlinked_source_copies() {
    fault_path_migrates_partly_peer_resident(false, true);
}

// ---- teardown ---------------------------------------------------------------------------------

/// A device goes away while two linked peers map its pages P2P: its pages move to RAM (which
/// invalidates the peers' mappings), its pagemap is detached everywhere, nothing dangles (the
/// harness checks after the step: no survivor holds a peer mapping of it, its memory is empty,
/// it is closed and out of the registry), and the survivors read the right data.
#[test]
fn teardown_while_peers_map_its_pages() {
    let mut m = Machine::new(&[(0, 1), (0, 2), (1, 2)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    m.join(2, 0);
    let buf = m.mmap(2 * M2);
    m.cpu_fill(buf, buf + 2 * M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_read(0, buf + M2);
    m.dev_write(1, buf + 8, 0xB);
    m.dev_write(2, buf + M2 + 8, 0xC);
    assert!(m.placement(buf, buf + 2 * M2).iter().all(|d| *d == Some(0)));
    assert!(m.peer_maps(1).iter().any(|p| dev_of(p.pfn) == 0));
    assert!(m.peer_maps(2).iter().any(|p| dev_of(p.pfn) == 0));
    let (_, unmaps1) = m.g(1).dev.dma_counts();

    m.teardown(0);
    assert!(m.placement(buf, buf + 2 * M2).iter().all(|d| d.is_none()));
    assert!(m.peer_maps(1).is_empty() && m.peer_maps(2).is_empty());
    assert!(
        m.g(1).dev.dma_counts().1 > unmaps1,
        "B's peer mappings were unmapped"
    );
    assert!(m.g(1).svm.pagemap_by_id(PagemapId(0)).is_none());

    m.dev_read_all(2, buf, buf + 2 * M2);
    m.dev_read_all(1, buf, buf + 2 * M2);
    assert!(m.placement(buf, buf + 2 * M2).iter().all(|d| *d == Some(1)));
    m.dev_read_all(2, buf, buf + 2 * M2);
    assert!(m.peer_maps(2).iter().all(|p| dev_of(p.pfn) == 1));
    m.cpu_read_all(buf, buf + 2 * M2);
}

/// The device that holds the P2P mappings goes away: the owner of the pages keeps them, with
/// their data, and can still be reached by the remaining peer.
#[test]
fn teardown_of_the_mapping_device() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_write(1, buf + 8, 0xB);
    assert!(!m.peer_maps(1).is_empty());
    let vram0 = m.g(0).dev.vram_used();
    m.teardown(1);
    assert_eq!(m.g(0).dev.vram_used(), vram0);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert_eq!(m.world.owners.owners(), 1);
    m.dev_read_all(0, buf, buf + M2);
    m.cpu_read_all(buf, buf + M2);
}

/// Teardown of a device whose pages no one else maps, with RAM pages and device pages of
/// another owner around: only its own memory is emptied.
#[test]
fn teardown_leaves_other_owners_alone() {
    let mut m = Machine::new(&[]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let a = m.mmap(M2);
    let b = m.mmap(M2);
    m.cpu_fill(a, a + M2, 8 * P, 1);
    m.cpu_fill(b, b + M2, 8 * P, 2);
    m.dev_read(0, a);
    m.dev_read(1, b);
    m.teardown(0);
    assert!(m.placement(a, a + M2).iter().all(|d| d.is_none()));
    assert!(m.placement(b, b + M2).iter().all(|d| *d == Some(1)));
    m.dev_read_all(1, a, a + M2);
    m.cpu_read_all(a, b + M2);
}

// ---- populate / migrate_to_devmem refusals ---------------------------------------------------

/// Populating B's memory with a range that holds pages of a foreign owner is refused with
/// `Busy` (SPEC §7 populate), whether the whole range or only part of it is foreign, through
/// `gpusvm::migrate::to_devmem`, `to_devmem_traced` with B's peers, and `Svm::migrate_to_devmem`.
/// Nothing moves: the CPU page table is unchanged, B allocated and copied nothing, and the
/// failed isolation went straight to restore.
#[test]
fn populate_busy_on_foreign_owner_pages() {
    let mut m = Machine::new(&[]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    // A takes the first 64 KiB only (A with 64 KiB chunks would be simpler; instead migrate
    // directly), the rest stays in RAM.
    let view = m.mm.view(usize::MAX);
    let pa = a.svm.pagemap().unwrap();
    let pb = b.svm.pagemap().unwrap();
    let d = MigrateDetails::default();
    migrate::to_devmem(&view, &pa, buf, buf + K64, &d).expect("A takes 64 KiB");
    m.check("A takes 64 KiB");
    assert_eq!(m.where_is(buf), Some(0));
    assert_eq!(m.where_is(buf + K64), None);

    let before = m.frames();
    let vb = b.dev.vram_counts();
    let cb = m.copies(1);
    let db = b.dev.dma_counts();
    let va = a.dev.vram_used();
    for (s, e) in [
        (buf, buf + K64),
        (buf, buf + M2),
        (buf + K64 - P, buf + K64 + P),
    ] {
        assert_eq!(
            migrate::to_devmem(&view, &pb, s, e, &d),
            Err(Error::Busy),
            "[{s:#x}, {e:#x})"
        );
        m.check("populate blocked");
        let mut states = Vec::new();
        let peers = |id: PagemapId| b.svm.pagemap_by_id(id);
        let r = migrate::to_devmem_traced(
            &view,
            &pb,
            &peers,
            s,
            e,
            &d,
            Some(&mut |st| states.push(st)),
        );
        assert_eq!(r, Err(Error::Busy));
        assert_eq!(
            states,
            [
                ToDevmemState::Isolate,
                ToDevmemState::Restore,
                ToDevmemState::Done
            ],
            "isolation refused: straight to restore"
        );
        m.check("populate blocked (traced, with peers)");
        assert_eq!(m.frames(), before, "nothing moved");
        assert_eq!(b.dev.vram_counts(), vb, "B allocated nothing");
        assert_eq!(m.copies(1), cb, "B copied nothing");
        assert_eq!(b.dev.dma_counts(), db, "B mapped nothing");
        assert_eq!(a.dev.vram_used(), va);
    }
    // Through the Svm: B's fault creates its range (evicting A's pages to RAM on the way);
    // put A's pages back and force B's range.
    m.dev_read(1, buf + K64);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    m.dev_read(0, buf);
    let rb = b.svm.find(buf).expect("B's range");
    let before = m.frames();
    let fails = m.stats(1).migrate_failures;
    assert_eq!(b.svm.migrate_to_devmem(&rb, &d), Err(Error::Busy));
    m.check("Svm::migrate_to_devmem blocked");
    assert_eq!(m.frames(), before);
    assert_eq!(m.stats(1).migrate_failures, fails + 1);
    m.dev_read_all(1, buf, buf + M2);
    m.cpu_read_all(buf, buf + M2);
}

/// `migrate::to_devmem` without a peer resolver cannot copy a peer's pages even in the same
/// owner (`Busy`, nothing moves); with the resolver it can.
#[test]
fn populate_needs_the_peer_resolver_for_same_owner_pages() {
    let mut m = Machine::new(&[(0, 1)]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    let view = m.mm.view(usize::MAX);
    let pb = b.svm.pagemap().unwrap();
    let d = MigrateDetails::default();
    let before = m.frames();
    assert_eq!(
        migrate::to_devmem(&view, &pb, buf, buf + M2, &d),
        Err(Error::Busy)
    );
    m.check("populate without peers");
    assert_eq!(m.frames(), before);
    let peers = |id: PagemapId| b.svm.pagemap_by_id(id);
    let c0 = m.copies(0);
    let c1 = m.copies(1);
    let rep = migrate::to_devmem_traced(&view, &pb, &peers, buf, buf + M2, &d, None).unwrap();
    m.check("populate with peers");
    assert_eq!(rep.pages, 512);
    assert_eq!((m.copies(0), m.copies(1)), (c0, c1 + 1));
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    assert!(a.dev.vram_used().is_empty());
    m.dev_read_all(0, buf, buf + M2);
    m.dev_read_all(1, buf, buf + M2);
}

// ---- can_migrate_same_pagemap ----------------------------------------------------------------

/// A range partly in the target pagemap: refused with `Busy` unless `can_migrate_same_pagemap`,
/// in which case the resident pages are migrated again (to new frames) along with the rest and
/// their old allocation is released. A range entirely in the target is left alone either way.
#[test]
fn can_migrate_same_pagemap_direct() {
    for flag in [false, true] {
        let mut m = Machine::new(&[]);
        let a = m.join(0, VRAM);
        let buf = m.mmap(M2);
        m.cpu_fill(buf, buf + M2, 4 * P, 1);
        let view = m.mm.view(usize::MAX);
        let pa = a.svm.pagemap().unwrap();
        let d = MigrateDetails {
            can_migrate_same_pagemap: flag,
            ..MigrateDetails::default()
        };
        migrate::to_devmem(&view, &pa, buf + K64, buf + 2 * K64, &d).unwrap();
        m.check("part in A");
        let old: Vec<u64> = (buf + K64..buf + 2 * K64)
            .step_by(P as usize)
            .map(|x| m.mm.pte(x).unwrap().pfn)
            .collect();
        // Entirely resident: nothing to do, whatever the flag.
        let c = m.copies(0);
        let rep = migrate::to_devmem(&view, &pa, buf + K64, buf + 2 * K64, &d).unwrap();
        m.check("already there");
        assert!(rep.already_there);
        assert_eq!(m.copies(0), c);

        let before = m.frames();
        let r = migrate::to_devmem(&view, &pa, buf, buf + M2, &d);
        m.check("partly resident");
        if flag {
            let rep = r.unwrap();
            assert_eq!(rep.pages, 512);
            assert!(m.placement(buf, buf + M2).iter().all(|x| *x == Some(0)));
            let new: Vec<u64> = (buf + K64..buf + 2 * K64)
                .step_by(P as usize)
                .map(|x| m.mm.pte(x).unwrap().pfn)
                .collect();
            assert!(new.iter().all(|f| !old.contains(f)), "moved to new frames");
            assert_eq!(pa.live_allocations(), 1, "the old allocation was released");
            assert_eq!(a.dev.vram_used().len(), 512);
        } else {
            assert_eq!(r, Err(Error::Busy));
            assert_eq!(m.frames(), before, "nothing moved");
            assert_eq!(pa.live_allocations(), 1);
            assert_eq!(a.dev.vram_used().len(), 16);
        }
        m.dev_read_all(0, buf, buf + M2);
        m.cpu_read_all(buf, buf + M2);
    }
}

/// The same through the fault path with `SvmConfig::can_migrate_same_pagemap`: A's 2 MiB range
/// is partly in A's own memory; on A's fault the placement either migrates it in one go (flag
/// on) or fails with `Busy`, evicts the range and migrates it from RAM (flag off).
#[test]
fn can_migrate_same_pagemap_fault_path() {
    for flag in [false, true] {
        let mut m = Machine::new(&[]);
        let mut c = cfg(VRAM);
        c.can_migrate_same_pagemap = flag;
        let a = m.join_with(0, VRAM, c);
        let buf = m.mmap(M2);
        m.cpu_fill(buf, buf + M2, 4 * P, 1);
        let view = m.mm.view(usize::MAX);
        let pa = a.svm.pagemap().unwrap();
        migrate::to_devmem(&view, &pa, buf, buf + K64, &MigrateDetails::default()).unwrap();
        m.check("part in A");
        let s = m.stats(0);
        m.dev_read(0, buf + K64);
        let s2 = m.stats(0);
        assert!(m.placement(buf, buf + M2).iter().all(|x| *x == Some(0)));
        assert_eq!(s2.migrations_to_devmem, s.migrations_to_devmem + 1);
        if flag {
            assert_eq!(s2.migrate_failures, s.migrate_failures);
            assert_eq!(s2.evictions, s.evictions);
        } else {
            assert_eq!(s2.migrate_failures, s.migrate_failures + 1);
            assert_eq!(s2.evictions, s.evictions + 1);
        }
        assert_eq!(pa.live_allocations(), 1);
        m.dev_read_all(0, buf, buf + M2);
        m.cpu_read_all(buf, buf + M2);
    }
}

// ---- owner ids in the simulator --------------------------------------------------------------

/// Devices joining and leaving in turn never receive a dead owner's id, and the ids the
/// simulator gives to a device's `Svm` and its pagemap agree.
#[test]
fn owner_ids_are_never_reused_across_teardowns() {
    let mut m = Machine::new(&[]);
    let mut seen: Vec<OwnerId> = Vec::new();
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 16 * P, 1);
    for id in 0..6u32 {
        let g = m.join(id, VRAM);
        let o = g.svm.owner().unwrap();
        assert_eq!(g.svm.pagemap().unwrap().owner(), o);
        assert!(!seen.contains(&o), "owner {o:?} handed out twice");
        seen.push(o);
        m.dev_read_all(id, buf, buf + M2);
        assert_eq!(m.where_is(buf), Some(id));
        m.teardown(id);
        assert_eq!(m.world.owners.owners(), 0);
    }
    m.cpu_read_all(buf, buf + M2);
}

// ---- more interactions ------------------------------------------------------------------------

/// A range whose pages sit in two different pagemaps of the owner (and RAM) is "mixed": a
/// device without memory faulting on it gets `NotSupported` from the collection, evicts the
/// range to RAM and collects again — transparently, with the data intact.
#[test]
fn mixed_pagemaps_are_evicted_then_collected() {
    let mut m = Machine::new(&[(0, 1), (0, 2), (1, 2)]);
    let small = cfg(VRAM).with_chunk_sizes(&[K64, P]).unwrap();
    m.join_with(1, VRAM, small.clone());
    m.join_with(2, VRAM, small);
    m.join(0, 0);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, P, 1);
    m.dev_read(1, buf);
    m.dev_read(2, buf + K64);
    let mut want: Vec<Option<u32>> = vec![None; 512];
    want[..16].fill(Some(1));
    want[16..32].fill(Some(2));
    assert_eq!(m.placement(buf, buf + M2), want);
    let s = m.stats(0);
    m.dev_read(0, buf + 2 * K64);
    assert_eq!(m.stats(0).evictions, s.evictions + 1);
    assert!(m.placement(buf, buf + M2).iter().all(|d| d.is_none()));
    assert!(m.peer_maps(0).is_empty());
    m.dev_read_all(0, buf, buf + M2);
    m.dev_read_all(1, buf, buf + M2);
    m.dev_read_all(2, buf, buf + M2);
}

/// Memory pressure: A's memory holds one 2 MiB range that B maps P2P; A's fault on another
/// range finds A full, evicts the first range (invalidating B's peer mappings of it) and takes
/// the second.
#[test]
fn pressure_eviction_invalidates_peer_mappings() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, 512);
    m.join(1, 0);
    let x = m.mmap(M2);
    let y = m.mmap(M2);
    m.cpu_fill(x, x + M2, 8 * P, 1);
    m.cpu_fill(y, y + M2, 8 * P, 2);
    m.dev_read(0, x);
    m.dev_read_all(1, x, x + M2);
    assert!(!m.peer_maps(1).is_empty());
    m.dev_read(0, y);
    assert!(m.placement(y, y + M2).iter().all(|d| *d == Some(0)));
    assert!(m.placement(x, x + M2).iter().all(|d| d.is_none()));
    assert!(
        m.peer_maps(1).is_empty(),
        "B's peer mappings of x went with the eviction"
    );
    m.dev_read_all(1, x, y + M2);
    assert!(m.peer_maps(1).iter().all(|p| dev_of(p.pfn) == 0));
    assert!(!m.peer_maps(1).is_empty());
    m.cpu_read_all(x, y + M2);
}

/// munmap (whole and partial) of pages in A's memory while B maps them P2P: both devices drop
/// their mappings, the allocation is released when its last page goes, the surviving part
/// stays readable.
#[test]
fn munmap_under_peer_mappings() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let buf = m.mmap(2 * M2);
    m.cpu_fill(buf, buf + 2 * M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.dev_read(0, buf + M2);
    m.dev_read_all(1, buf, buf + 2 * M2);
    assert_eq!(m.g(0).svm.pagemap().unwrap().live_allocations(), 2);
    // Whole second block.
    m.mm.munmap(buf + M2, M2).unwrap();
    m.model.retain(|a, _| *a < buf + M2);
    m.check("munmap whole block");
    assert_eq!(m.g(0).svm.pagemap().unwrap().live_allocations(), 1);
    // Half of the first block.
    m.mm.munmap(buf + M2 / 2, M2 / 2).unwrap();
    m.model.retain(|a, _| *a < buf + M2 / 2);
    m.check("munmap half block");
    m.dev_read_all(1, buf, buf + M2 / 2);
    m.dev_read_all(0, buf, buf + M2 / 2);
    m.dev_write(1, buf + 8, 0x77);
    m.cpu_read_all(buf, buf + M2 / 2);
    m.teardown(0);
    m.teardown(1);
    assert_eq!(m.world.owners.owners(), 0);
}

/// A device without memory and without a link faults on pages in another owner's memory:
/// the collection brings them back to RAM (the platform migrates foreign device pages when
/// faulting them in) and maps them as system pages.
#[test]
fn unlinked_device_without_memory_reads_foreign_pages() {
    let mut m = Machine::new(&[]);
    m.join(0, VRAM);
    m.join(1, 0);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_write(0, buf + 8, 0xA);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    m.dev_read_all(1, buf, buf + M2);
    assert!(m.placement(buf, buf + M2).iter().all(|d| d.is_none()));
    assert!(m.peer_maps(1).is_empty());
    m.dev_write(1, buf + 16, 0xB);
    m.dev_read_all(0, buf, buf + M2);
    assert_eq!(m.where_is(buf), Some(0));
    m.dev_read_all(1, buf, buf + M2);
}

/// A device joining after its owner's pages are resident maps them P2P at once (it attaches
/// every pagemap of the machine when it joins).
#[test]
fn late_joiner_maps_resident_pages() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    m.join(1, VRAM);
    m.dev_read_all(1, buf, buf + M2);
    assert!(!m.peer_maps(1).is_empty());
    assert_eq!(m.stats(1).migrations_to_devmem, 0);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
}

/// A seeded random walk over up to four devices with a random link topology: CPU and device
/// reads and writes, forced migrations, munmap/mmap, teardowns and re-joins, all checked after
/// every step (the harness). Device ids are reused after teardown (a fresh device with the old
/// id; its owner is always new).
#[test]
fn random_walk_four_devices() {
    use gpusvm::sim::Rng;
    for seed in 0..10u64 {
        let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5);
        let mut links = Vec::new();
        for a in 0..4u32 {
            for b in a + 1..4 {
                if rng.below(2) == 0 {
                    links.push((a, b));
                }
            }
        }
        let mut m = Machine::new(&links);
        let mut used_owners: Vec<OwnerId> = Vec::new();
        let join = |m: &mut Machine, rng: &mut Rng, id: u32, used: &mut Vec<OwnerId>| {
            let vram = [0, 512, VRAM][rng.below(3) as usize];
            let mut c = cfg(vram);
            c.source_peer_migrates = rng.below(2) == 0;
            c.can_migrate_same_pagemap = rng.below(2) == 0;
            if rng.below(3) == 0 {
                c = c.with_chunk_sizes(&[K64, P]).unwrap();
            }
            let g = m.join_with(id, vram, c);
            let o = g.svm.owner().unwrap();
            // Fresh owner unless it joined a live group.
            let live_before = m
                .gpus
                .iter()
                .filter(|(i, _)| **i != id)
                .any(|(_, h)| h.svm.owner() == Some(o));
            if !live_before {
                assert!(!used.contains(&o), "seed {seed}: dead owner {o:?} reused");
            }
            used.push(o);
        };
        for id in 0..4 {
            if rng.below(4) != 0 {
                join(&mut m, &mut rng, id, &mut used_owners);
            }
        }
        let mut bufs = vec![m.mmap(2 * M2), m.mmap(M2)];
        let mut gen = 1u64;
        let (mut max_peer, mut d2d) = (0usize, 0usize);
        let mut children = Vec::new();
        for _ in 0..300 {
            let b = bufs[rng.below(bufs.len() as u64) as usize];
            let len = if m
                .mm
                .vmas()
                .iter()
                .any(|v| v.start == b && v.end - v.start == 2 * M2)
            {
                2 * M2
            } else {
                M2
            };
            let addr = b + rng.below(len / 8) * 8;
            let live: Vec<u32> = m.gpus.keys().copied().collect();
            let pick = |rng: &mut Rng| live.get(rng.below(live.len() as u64) as usize).copied();
            gen += 1;
            match rng.below(40) {
                0..=7 => {
                    m.cpu_write(addr, tag(addr, gen));
                }
                8..=11 => {
                    m.cpu_read(addr);
                }
                12..=21 => {
                    if let Some(id) = pick(&mut rng) {
                        m.dev_read(id, addr);
                    }
                }
                22..=29 => {
                    if let Some(id) = pick(&mut rng) {
                        m.dev_write(id, addr, tag(addr, gen));
                    }
                }
                30..=32 => {
                    // Forced migration of the device's range into its memory.
                    if let Some(id) = pick(&mut rng) {
                        let g = m.g(id).clone();
                        if let (Some(r), Some(_)) = (g.svm.find(addr), g.svm.pagemap()) {
                            let (r_start, r_end) = (r.start(), r.end());
                            let d = MigrateDetails {
                                source_peer_migrates: rng.below(2) == 0,
                                can_migrate_same_pagemap: rng.below(2) == 0,
                                ..MigrateDetails::default()
                            };
                            let before = m.frames();
                            let r = g.svm.migrate_to_devmem(&r, &d);
                            m.check("forced migration");
                            match r {
                                Ok(rep) if rep.already_there => assert_eq!(m.frames(), before),
                                Ok(_) => {
                                    let from_peer = before.iter().filter(|f| {
                                        f.2.is_some_and(|p| p.0 != id)
                                            && (r_start..r_end).contains(&(f.0 << PAGE_SHIFT))
                                    });
                                    d2d += from_peer.count();
                                }
                                Err(Error::Busy) | Err(Error::NoMem) => {
                                    let keep: Vec<_> =
                                        before.iter().map(|f| (f.0, f.1, f.2)).collect();
                                    let now: Vec<_> =
                                        m.frames().iter().map(|f| (f.0, f.1, f.2)).collect();
                                    assert_eq!(now, keep, "seed {seed}: failed migration moved");
                                }
                                Err(e) => panic!("seed {seed}: forced migration: {e:?}"),
                            }
                        }
                    }
                }
                33 => {
                    // The dead device stays checked until a new one takes its id.
                    if let Some(id) = pick(&mut rng) {
                        m.teardown(id);
                    }
                }
                34..=35 => {
                    let free: Vec<u32> = (0..4).filter(|i| !m.gpus.contains_key(i)).collect();
                    if let Some(&id) = free.get(rng.below(free.len().max(1) as u64) as usize) {
                        m.dead.remove(&id);
                        join(&mut m, &mut rng, id, &mut used_owners);
                    }
                }
                36 => {
                    // Unmap a whole buffer and map a new one.
                    if bufs.len() > 1 {
                        let i = rng.below(bufs.len() as u64) as usize;
                        let b = bufs.remove(i);
                        let len =
                            m.mm.vmas()
                                .iter()
                                .find(|v| v.start == b)
                                .map(|v| v.end - v.start)
                                .unwrap();
                        m.mm.munmap(b, len).unwrap();
                        m.model.retain(|a, _| !(b..b + len).contains(a));
                        m.check("munmap");
                    }
                    bufs.push(m.mmap(M2));
                }
                37 => {
                    // fork: device pages come back to RAM, the rest becomes copy-on-write;
                    // keep the child for a while (its mappings pin the frames).
                    let child = m.mm.fork();
                    m.check("fork");
                    children.push(child);
                    if children.len() > 2 {
                        children.remove(0);
                    }
                }
                _ => {
                    // Let time pass (timeslices end).
                    m.world.advance(10_000_000);
                }
            }
            let peer: usize = m
                .gpus
                .values()
                .map(|g| g.dev.dma_mappings().iter().filter(|(_, d)| d.peer).count())
                .sum();
            max_peer = max_peer.max(peer);
        }
        eprintln!(
            "seed {seed}: links {links:?}, {} steps, {} live devices, {} owners, max {} peer \
             mappings, {d2d} pages forced device-to-device, {} joins, devmem pages now {}",
            m.steps,
            m.gpus.len(),
            m.world.owners.owners(),
            max_peer,
            used_owners.len(),
            m.mm.ptes().iter().filter(|(_, p)| p.dev.is_some()).count()
        );
        let all: Vec<u32> = m.gpus.keys().copied().collect();
        for id in all {
            m.teardown(id);
        }
        assert_eq!(m.world.owners.owners(), 0, "seed {seed}");
        for b in bufs {
            let end = b + M2;
            m.cpu_read_all(b, end);
        }
    }
}

/// What one thread of [`threaded_two_devices`] did: its writes `(address, value)`, accesses
/// done, accesses given up.
type ThreadLog = (Vec<(u64, u64)>, u64, u64);

/// Two devices and the CPU on three threads, hammering the same pages (each thread owns its
/// own 8-byte slots in every page, so each can check its own reads exactly): linked (P2P and
/// device → device) and unlinked (ping-pong through RAM). Between rounds, with all threads
/// joined, the full harness check runs with the model merged from the threads' writes.
fn threaded_two_devices(link: bool, seed: u64) {
    use gpusvm::sim::Rng;
    let links: &[(u32, u32)] = if link { &[(0, 1)] } else { &[] };
    let mut m = Machine::new(links);
    m.join(0, VRAM);
    m.join(1, VRAM);
    let buf = m.mmap(2 * M2);
    let (mut ok, mut failed) = (0u64, 0u64);
    for round in 0..4u64 {
        let (a, b, mm) = (m.g(0).clone(), m.g(1).clone(), m.mm.clone());
        let results: Vec<ThreadLog> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..3u64)
                .map(|who| {
                    let (a, b, mm) = (a.clone(), b.clone(), mm.clone());
                    sc.spawn(move || {
                        let mut rng = Rng::new(seed ^ (round << 8) ^ who);
                        let mut mine: BTreeMap<u64, u64> = BTreeMap::new();
                        let (mut ok, mut failed) = (0u64, 0u64);
                        for i in 0..150u64 {
                            let page = rng.below(2 * M2 / P);
                            let addr = buf + page * P + 8 * who;
                            let write = rng.below(2) == 0;
                            let v = tag(addr, (round << 16) | i | 1);
                            let r = match (who, write) {
                                (0, true) => a.write_u64(addr, v).map(|_| v),
                                (0, false) => a.read_u64(addr),
                                (1, true) => b.write_u64(addr, v).map(|_| v),
                                (1, false) => b.read_u64(addr),
                                (_, true) => mm.write_u64(addr, v).map(|_| v),
                                (_, false) => mm.read_u64(addr),
                            };
                            match r {
                                Ok(got) if write => {
                                    mine.insert(addr, got);
                                    ok += 1;
                                }
                                Ok(got) => {
                                    let want = mine.get(&addr).copied();
                                    if let Some(w) = want {
                                        assert_eq!(got, w, "thread {who} read at {addr:#x}");
                                    }
                                    ok += 1;
                                }
                                Err(Error::Busy | Error::Again) => failed += 1,
                                Err(e) => panic!("thread {who} at {addr:#x}: {e:?}"),
                            }
                        }
                        (mine.into_iter().collect(), ok, failed)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (writes, o, f) in results {
            m.model.extend(writes);
            ok += o;
            failed += f;
        }
        m.check(&format!("round {round}"));
        // A few checked reads by each device (every read runs the full harness check).
        let sample: Vec<u64> = m.model.keys().copied().step_by(97).collect();
        for a in sample {
            m.dev_read(0, a);
            m.dev_read(1, a);
        }
    }
    eprintln!("link {link}: {ok} accesses ok, {failed} gave up (Busy/Again)");
    assert!(ok > failed);
    m.teardown(0);
    m.teardown(1);
    m.cpu_read_all(buf, buf + 2 * M2);
}

#[test]
fn threaded_linked_devices() {
    for seed in 0..2 {
        threaded_two_devices(true, seed);
    }
}

#[test]
fn threaded_unlinked_devices() {
    for seed in 0..2 {
        threaded_two_devices(false, seed);
    }
}

/// Device → device migration is all-or-nothing under injected failures: a copy failing in the
/// engine that runs it (the source's with `source_peer_migrates`, else the target's), before
/// or after part of its runs, and a failing allocation in the target. Each time the pages stay
/// in B's memory with their data, A's memory is empty again, nothing leaks (harness check),
/// and the next attempt succeeds.
#[test]
fn device_to_device_failures_restore() {
    for spm in [false, true] {
        for case in 0..3 {
            let mut m = Machine::new(&[(0, 1)]);
            m.join(0, VRAM);
            m.join(1, VRAM);
            let buf = m.mmap(M2);
            m.cpu_fill(buf, buf + M2, 4 * P, 1);
            m.dev_write(1, buf + 8, 0xB);
            m.dev_read(0, buf);
            let ra = m.g(0).svm.find(buf).unwrap();
            let d = MigrateDetails {
                source_peer_migrates: spm,
                ..MigrateDetails::default()
            };
            let engine = if spm { 1 } else { 0 };
            match case {
                0 => m.g(engine).dev.inject_copy_fail_at(1, 0),
                1 => m.g(engine).dev.inject_copy_fail_at(1, 1),
                _ => m.g(0).dev.inject_alloc_fail_at(1),
            }
            let before = m.frames();
            let r = m.g(0).svm.migrate_to_devmem(&ra, &d);
            m.check("failed device-to-device migration");
            // The engine's copy error (`Fault`) or the allocator's `NoMem`, passed through.
            let want = if case == 2 {
                Error::NoMem
            } else {
                Error::Fault
            };
            assert_eq!(r, Err(want), "spm {spm} case {case}");
            let keep: Vec<_> = before.iter().map(|f| (f.0, f.1, f.2)).collect();
            let now: Vec<_> = m.frames().iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(now, keep, "spm {spm} case {case}: nothing moved");
            assert!(
                m.g(0).dev.vram_used().is_empty(),
                "A's frames were released"
            );
            m.dev_read_all(0, buf, buf + M2);
            m.dev_read_all(1, buf, buf + M2);
            let ra = m.g(0).svm.find(buf).unwrap();
            m.g(0)
                .svm
                .migrate_to_devmem(&ra, &d)
                .expect("second attempt");
            m.check("device-to-device migration");
            assert!(m.placement(buf, buf + M2).iter().all(|x| *x == Some(0)));
            m.dev_read_all(1, buf, buf + M2);
            m.cpu_read_all(buf, buf + M2);
        }
    }
}
