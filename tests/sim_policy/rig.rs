//! The rig of the policy tests: one machine, one address space, some devices, a CPU data
//! model checked after every step, and the attribute and device set-ups the scenarios share.

use gpusvm::platform::{PagemapId, VmaFlags, PAGE_SIZE};
use gpusvm::policy::{AtomicPolicy, AttrUpdate, MigrationPolicy, PreferredLoc};
use gpusvm::range::RangeFlags;
use gpusvm::sim::{check_invariants, SimGpu, SimMm, SimWorld};
use gpusvm::stats::StatsSnapshot;
use gpusvm::{Result, SvmConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
pub(crate) const P: u64 = PAGE_SIZE;
pub(crate) const K64: u64 = 64 << 10;
pub(crate) const M: u64 = 1 << 20;
pub(crate) const M2: u64 = 2 << 20;

/// One machine, one address space, some devices, a data model and a step counter.
pub(crate) struct Rig {
    pub(crate) world: Arc<SimWorld>,
    pub(crate) mm: Arc<SimMm>,
    pub(crate) gpus: Vec<SimGpu>,
    /// 8-byte aligned address -> last value written by the CPU or a device.
    pub(crate) model: BTreeMap<u64, u64>,
    pub(crate) steps: usize,
}

impl Rig {
    pub(crate) fn new() -> Rig {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        Rig {
            world,
            mm,
            gpus: Vec::new(),
            model: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Add a device; returns its index in `gpus`.
    pub(crate) fn add(&mut self, g: SimGpu) -> usize {
        self.gpus.push(g);
        self.check("add device");
        self.gpus.len() - 1
    }

    pub(crate) fn g(&self, i: usize) -> &SimGpu {
        &self.gpus[i]
    }

    pub(crate) fn describe(&self) -> String {
        self.gpus
            .iter()
            .map(|g| format!("dev {}:\n{}", g.dev.id(), g.describe()))
            .collect()
    }

    /// Invariants over every device, then the data model.
    pub(crate) fn check(&mut self, what: &str) {
        self.steps += 1;
        let refs: Vec<&SimGpu> = self.gpus.iter().collect();
        if let Err(e) = check_invariants(&self.mm, &refs) {
            panic!(
                "step {} ({what}): invariant violated: {e}\n{}",
                self.steps,
                self.describe()
            );
        }
        for g in &self.gpus {
            let v = g.dev.vram_violations();
            assert!(
                v.is_empty(),
                "step {} ({what}): device memory misuse: {v:?}",
                self.steps
            );
        }
        if let Err(e) = self.check_model() {
            panic!(
                "step {} ({what}): data model violated: {e}\n{}",
                self.steps,
                self.describe()
            );
        }
    }

    /// Compare every model value with memory, changing nothing: a system page is read by the
    /// CPU (present: no fault), a device page straight from its device's memory.
    pub(crate) fn check_model(&self) -> std::result::Result<(), String> {
        for (&addr, &v) in &self.model {
            let got = match self.mm.pte(addr) {
                None => 0,
                Some(p) => match p.dev {
                    Some((pm, _)) => {
                        let dev = self
                            .world
                            .device(pm.0)
                            .ok_or_else(|| format!("device {} of {addr:#x} is gone", pm.0))?;
                        dev.vram_read_u64(p.pfn, (addr % P) as usize)
                            .map_err(|e| format!("device memory read at {addr:#x}: {e:?}"))?
                    }
                    None => self
                        .mm
                        .read_u64(addr)
                        .map_err(|e| format!("CPU read at {addr:#x}: {e:?}"))?,
                },
            };
            if got != v {
                return Err(format!("{addr:#x} holds {got:#x}, last written {v:#x}"));
            }
        }
        Ok(())
    }

    pub(crate) fn expect(&self, addr: u64) -> u64 {
        self.model.get(&addr).copied().unwrap_or(0)
    }

    pub(crate) fn cpu_write(&mut self, addr: u64, v: u64) {
        self.mm.write_u64(addr, v).expect("cpu write");
        self.model.insert(addr, v);
        self.check("cpu write");
    }

    pub(crate) fn cpu_read(&mut self, addr: u64) -> u64 {
        let v = self.mm.read_u64(addr).expect("cpu read");
        assert_eq!(v, self.expect(addr), "CPU read at {addr:#x}");
        self.check("cpu read");
        v
    }

    pub(crate) fn dev_read(&mut self, g: usize, addr: u64) -> Result<u64> {
        let r = self.gpus[g].read_u64(addr);
        if let Ok(v) = r {
            assert_eq!(v, self.expect(addr), "device {g} read at {addr:#x}");
        }
        self.check("device read");
        r
    }

    pub(crate) fn dev_write(&mut self, g: usize, addr: u64, v: u64) -> Result<()> {
        let r = self.gpus[g].write_u64(addr, v);
        if r.is_ok() {
            self.model.insert(addr, v);
        }
        self.check("device write");
        r
    }

    pub(crate) fn dev_atomic(&mut self, g: usize, addr: u64, v: u64) -> Result<u64> {
        let r = self.gpus[g].atomic_add(addr, v);
        if let Ok(old) = r {
            assert_eq!(old, self.expect(addr), "device {g} atomic at {addr:#x}");
            self.model.insert(addr, old.wrapping_add(v));
        }
        self.check("device atomic");
        r
    }

    /// Any operation, followed by a check.
    pub(crate) fn step<R>(&mut self, what: &str, f: impl FnOnce(&mut Rig) -> R) -> R {
        let r = f(self);
        self.check(what);
        r
    }

    pub(crate) fn mmap(&mut self, len: u64) -> u64 {
        let a = self.mm.mmap(len, RW, false).expect("mmap");
        assert_eq!(a % M2, 0, "the simulator places mappings 2 MiB aligned");
        self.check("mmap");
        a
    }

    /// Write a distinct value into the first word of every page of `[start, start+len)`.
    pub(crate) fn fill(&mut self, start: u64, len: u64, tag: u64) {
        let mut a = start;
        while a < start + len {
            self.mm.write_u64(a, tag ^ a).expect("cpu write");
            self.model.insert(a, tag ^ a);
            a += P;
        }
        self.check("fill");
    }

    /// The pagemap holding the page of `addr` (`None`: system memory or absent).
    pub(crate) fn loc(&self, addr: u64) -> Option<PagemapId> {
        self.mm.pte(addr).and_then(|p| p.dev).map(|(pm, _)| pm)
    }

    /// Ranges of device `g`: `(start, end, flags)`.
    pub(crate) fn ranges(&self, g: usize) -> Vec<(u64, u64, RangeFlags)> {
        let mut v = Vec::new();
        self.gpus[g]
            .svm
            .for_each_range(|_, r| v.push((r.start(), r.end(), r.flags())));
        v
    }

    /// Device page-table entries of device `g` in `[start, end)`.
    pub(crate) fn dev_ptes(&self, g: usize, start: u64, end: u64) -> usize {
        self.gpus[g]
            .dev
            .ptes()
            .iter()
            .filter(|(vpn, _)| (start / P..end / P).contains(vpn))
            .count()
    }

    pub(crate) fn stats(&self, g: usize) -> StatsSnapshot {
        self.gpus[g].svm.stats()
    }

    /// Every range of device `g` has the same attributes on all of its pages.
    pub(crate) fn assert_ranges_uniform(&self, g: usize) {
        let svm = &self.gpus[g].svm;
        for (s, e, _) in self.ranges(g) {
            let first = svm.attrs_at(s);
            let mut a = s;
            while a < e {
                assert_eq!(
                    svm.attrs_at(a),
                    first,
                    "range [{s:#x}, {e:#x}) spans different attributes (at {a:#x})"
                );
                a += P;
            }
        }
    }
}

pub(crate) fn pref(p: PreferredLoc) -> AttrUpdate {
    AttrUpdate {
        preferred: Some(p),
        ..AttrUpdate::default()
    }
}

pub(crate) fn atomic(a: AtomicPolicy) -> AttrUpdate {
    AttrUpdate {
        atomic: Some(a),
        ..AttrUpdate::default()
    }
}

pub(crate) fn migration(m: MigrationPolicy) -> AttrUpdate {
    AttrUpdate {
        migration: Some(m),
        ..AttrUpdate::default()
    }
}

/// A rig with one device that has `vram_pages` of device memory and prefers it.
pub(crate) fn one_device(vram_pages: u64) -> Rig {
    let mut r = Rig::new();
    let g = SimGpu::with_devmem(&r.mm, 0, vram_pages, 1).expect("device");
    r.add(g);
    r
}

/// A rig with one device that has device memory, configured with `cfg`.
pub(crate) fn one_device_with(vram_pages: u64, cfg: SvmConfig) -> Rig {
    let mut r = Rig::new();
    let g = SimGpu::new(&r.mm, 0, cfg).expect("device");
    g.add_devmem(vram_pages, 1).expect("device memory");
    r.add(g);
    r
}

/// Devices 0 and 1 linked (one owner), device 2 alone (its own owner); all with device
/// memory (pagemap id = device id).
pub(crate) fn three_devices() -> Rig {
    let mut r = Rig::new();
    r.world.link(0, 1);
    for id in 0..3 {
        let g = SimGpu::join(&r.mm, id, 4096).expect("device");
        r.add(g);
    }
    assert_eq!(r.g(0).svm.owner(), r.g(1).svm.owner());
    assert_ne!(r.g(0).svm.owner(), r.g(2).svm.owner());
    r
}
/// One device with 4096 pages of memory that does not prefer it (so pages stay in RAM unless
/// a policy needs device memory), optionally with atomics on system memory, and `len` bytes
/// mapped and filled with `tag`.
pub(crate) fn ram_first_rig(atomics_on_sysmem: bool, len: u64, tag: u64) -> (Rig, u64) {
    let mut cfg = SvmConfig::new(0, 1 << 47);
    cfg.prefer_devmem = false;
    cfg.policy.atomics_on_sysmem = atomics_on_sysmem;
    let mut r = one_device_with(4096, cfg);
    let buf = r.mmap(len);
    r.fill(buf, len, tag);
    (r, buf)
}
