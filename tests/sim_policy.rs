#![cfg(feature = "sim")]
//! The policy engine (SPEC §8, §9) on the simulator, modelled on the madvise tests of a public
//! driver test suite (Intel Xe `xe_exec_system_allocator` with `madvise` sections): preferred
//! location, migration policy, atomic access policy, prefetch, the size threshold, "migrate
//! once", and what an attribute change does to ranges already bound on the device.
//!
//! Every step runs the simulator's invariant checker over every device and compares every
//! value of a CPU data model (`address -> last value written`) with what memory holds, read
//! without changing any state (system pages through the CPU, device pages straight from the
//! device memory). Every device or CPU read is also checked against the model.
//!
//! The last test is table-driven: every bad input to `set_attrs`, `set_attrs_raw` and
//! `prefetch` returns its typed error and changes nothing.

use gpusvm::pages::Protocol;
use gpusvm::platform::{PagemapId, VmaFlags, PAGE_SIZE};
use gpusvm::policy::{
    AtomicPolicy, AttrUpdate, Attrs, DeviceAtomics, MigrationPolicy, PreferredLoc, PrefetchLoc,
    RawAttr,
};
use gpusvm::range::RangeFlags;
use gpusvm::sim::{check_invariants, SimGpu, SimMm, SimWorld};
use gpusvm::stats::StatsSnapshot;
use gpusvm::{Error, Result, SvmConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const P: u64 = PAGE_SIZE;
const K64: u64 = 64 << 10;
const M: u64 = 1 << 20;
const M2: u64 = 2 << 20;

/// One machine, one address space, some devices, a data model and a step counter.
struct Rig {
    world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    gpus: Vec<SimGpu>,
    /// 8-byte aligned address -> last value written by the CPU or a device.
    model: BTreeMap<u64, u64>,
    steps: usize,
}

impl Rig {
    fn new() -> Rig {
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
    fn add(&mut self, g: SimGpu) -> usize {
        self.gpus.push(g);
        self.check("add device");
        self.gpus.len() - 1
    }

    fn g(&self, i: usize) -> &SimGpu {
        &self.gpus[i]
    }

    fn describe(&self) -> String {
        self.gpus
            .iter()
            .map(|g| format!("dev {}:\n{}", g.dev.id(), g.describe()))
            .collect()
    }

    /// Invariants over every device, then the data model.
    fn check(&mut self, what: &str) {
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
    fn check_model(&self) -> std::result::Result<(), String> {
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

    fn expect(&self, addr: u64) -> u64 {
        self.model.get(&addr).copied().unwrap_or(0)
    }

    fn cpu_write(&mut self, addr: u64, v: u64) {
        self.mm.write_u64(addr, v).expect("cpu write");
        self.model.insert(addr, v);
        self.check("cpu write");
    }

    fn cpu_read(&mut self, addr: u64) -> u64 {
        let v = self.mm.read_u64(addr).expect("cpu read");
        assert_eq!(v, self.expect(addr), "CPU read at {addr:#x}");
        self.check("cpu read");
        v
    }

    fn dev_read(&mut self, g: usize, addr: u64) -> Result<u64> {
        let r = self.gpus[g].read_u64(addr);
        if let Ok(v) = r {
            assert_eq!(v, self.expect(addr), "device {g} read at {addr:#x}");
        }
        self.check("device read");
        r
    }

    fn dev_write(&mut self, g: usize, addr: u64, v: u64) -> Result<()> {
        let r = self.gpus[g].write_u64(addr, v);
        if r.is_ok() {
            self.model.insert(addr, v);
        }
        self.check("device write");
        r
    }

    fn dev_atomic(&mut self, g: usize, addr: u64, v: u64) -> Result<u64> {
        let r = self.gpus[g].atomic_add(addr, v);
        if let Ok(old) = r {
            assert_eq!(old, self.expect(addr), "device {g} atomic at {addr:#x}");
            self.model.insert(addr, old.wrapping_add(v));
        }
        self.check("device atomic");
        r
    }

    /// Any operation, followed by a check.
    fn step<R>(&mut self, what: &str, f: impl FnOnce(&mut Rig) -> R) -> R {
        let r = f(self);
        self.check(what);
        r
    }

    fn mmap(&mut self, len: u64) -> u64 {
        let a = self.mm.mmap(len, RW, false).expect("mmap");
        assert_eq!(a % M2, 0, "the simulator places mappings 2 MiB aligned");
        self.check("mmap");
        a
    }

    /// Write a distinct value into the first word of every page of `[start, start+len)`.
    fn fill(&mut self, start: u64, len: u64, tag: u64) {
        let mut a = start;
        while a < start + len {
            self.mm.write_u64(a, tag ^ a).expect("cpu write");
            self.model.insert(a, tag ^ a);
            a += P;
        }
        self.check("fill");
    }

    /// The pagemap holding the page of `addr` (`None`: system memory or absent).
    fn loc(&self, addr: u64) -> Option<PagemapId> {
        self.mm.pte(addr).and_then(|p| p.dev).map(|(pm, _)| pm)
    }

    /// Ranges of device `g`: `(start, end, flags)`.
    fn ranges(&self, g: usize) -> Vec<(u64, u64, RangeFlags)> {
        let mut v = Vec::new();
        self.gpus[g]
            .svm
            .for_each_range(|_, r| v.push((r.start(), r.end(), r.flags())));
        v
    }

    /// Device page-table entries of device `g` in `[start, end)`.
    fn dev_ptes(&self, g: usize, start: u64, end: u64) -> usize {
        self.gpus[g]
            .dev
            .ptes()
            .iter()
            .filter(|(vpn, _)| (start / P..end / P).contains(vpn))
            .count()
    }

    fn stats(&self, g: usize) -> StatsSnapshot {
        self.gpus[g].svm.stats()
    }

    /// Every range of device `g` has the same attributes on all of its pages.
    fn assert_ranges_uniform(&self, g: usize) {
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

fn pref(p: PreferredLoc) -> AttrUpdate {
    AttrUpdate {
        preferred: Some(p),
        ..AttrUpdate::default()
    }
}

fn atomic(a: AtomicPolicy) -> AttrUpdate {
    AttrUpdate {
        atomic: Some(a),
        ..AttrUpdate::default()
    }
}

fn migration(m: MigrationPolicy) -> AttrUpdate {
    AttrUpdate {
        migration: Some(m),
        ..AttrUpdate::default()
    }
}

/// A rig with one device that has `vram_pages` of device memory and prefers it.
fn one_device(vram_pages: u64) -> Rig {
    let mut r = Rig::new();
    let g = SimGpu::with_devmem(&r.mm, 0, vram_pages, 1).expect("device");
    r.add(g);
    r
}

/// A rig with one device that has device memory, configured with `cfg`.
fn one_device_with(vram_pages: u64, cfg: SvmConfig) -> Rig {
    let mut r = Rig::new();
    let g = SimGpu::new(&r.mm, 0, cfg).expect("device");
    g.add_devmem(vram_pages, 1).expect("device memory");
    r.add(g);
    r
}

/// Devices 0 and 1 linked (one owner), device 2 alone (its own owner); all with device
/// memory (pagemap id = device id).
fn three_devices() -> Rig {
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

// ---- preferred location ------------------------------------------------------------------

/// madvise(preferred = system), then device faults: the pages stay in RAM and nothing is
/// migrated, while an identical buffer without the attribute does migrate. Then a buffer
/// already in device memory is switched to system: the next device fault pulls it back.
#[test]
fn preferred_system_then_device_fault_stays_in_ram() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * M);
    let other = r.mmap(M2);
    r.fill(buf, 4 * M, 0x11);
    r.fill(other, M2, 0x22);
    r.g(0)
        .svm
        .set_attrs(buf, 4 * M, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs system");
    assert_eq!(r.g(0).svm.attrs_at(buf).preferred, PreferredLoc::System);
    assert_eq!(
        r.g(0).svm.attrs_at(buf + 4 * M - P).preferred,
        PreferredLoc::System
    );
    assert_eq!(r.g(0).svm.attrs_at(buf + 4 * M), Attrs::default());
    assert_eq!(r.stats(0).attr_changes, 1);

    for i in 0..16 {
        let a = buf + i * (4 * M / 16);
        r.dev_read(0, a).expect("device read");
        r.dev_write(0, a + 8, i).expect("device write");
        assert_eq!(r.loc(a), None, "{a:#x} stays in system memory");
    }
    let s = r.stats(0);
    assert_eq!(s.migrations_to_devmem, 0, "{s:?}");
    assert_eq!(s.bytes_to_devmem, 0);
    assert!(s.faults >= 2, "the device did fault: {s:?}");
    assert!(r.g(0).dev.vram_used().is_empty());

    // Control: without the attribute the same access migrates.
    r.dev_read(0, other).expect("device read");
    assert_eq!(r.loc(other), Some(PagemapId(0)));
    assert_eq!(r.stats(0).migrations_to_devmem, 1);

    // Switch the device-resident buffer to system: the next device fault pulls it back.
    r.g(0)
        .svm
        .set_attrs(other, M2, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs system on device-resident buffer");
    assert_eq!(
        r.dev_ptes(0, other, other + M2),
        0,
        "device mappings cleared"
    );
    r.dev_read(0, other + K64).expect("device read");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(other + i * K64), None, "pulled back to system memory");
    }
    assert_eq!(r.stats(0).migrations_to_devmem, 1, "no new migration");
    assert!(r.g(0).dev.vram_used().is_empty(), "device memory released");
    for i in 0..4 {
        r.cpu_read(other + i * 4 * K64);
    }
}

/// madvise(preferred = a peer's pagemap) over a fast link: device A's range goes into device
/// B's memory, data intact, and A accesses it peer-to-peer. A range already in A's memory moves
/// to B's device-to-device on the next fault.
#[test]
fn preferred_peer_pagemap_goes_over_the_link() {
    let mut r = three_devices();
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0x33);
    // The second half first lands in A's own memory.
    r.dev_read(0, buf + M2).expect("device read");
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));

    r.g(0)
        .svm
        .set_attrs(buf, 4 * M, &pref(PreferredLoc::Pagemap(PagemapId(1))))
        .expect("peer pagemap over a link");
    r.check("set_attrs peer");
    assert_eq!(
        r.g(0).svm.attrs_at(buf + M).preferred,
        PreferredLoc::Pagemap(PagemapId(1))
    );

    let before = r.stats(0);
    r.dev_read(0, buf).expect("device read");
    r.dev_write(0, buf + 8, 0xa).expect("device write");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(buf + i * K64), Some(PagemapId(1)), "in B's memory");
    }
    let s = r.stats(0);
    assert_eq!(
        s.migrations_to_devmem,
        before.migrations_to_devmem + 1,
        "{s:?}"
    );
    // A maps B's pages peer-to-peer, not as its own memory.
    let ptes = r.g(0).dev.ptes();
    let (_, pte) = ptes
        .iter()
        .find(|(vpn, _)| *vpn == buf / P)
        .expect("A mapped the page");
    assert_ne!(pte.proto, Protocol::DEVICE_LOCAL);
    assert_ne!(pte.proto, Protocol::SYSTEM);
    assert!(r.g(0).dev.dma_mappings().iter().any(|(_, m)| m.peer));

    // The half that was in A's memory moves device-to-device into B's.
    r.dev_read(0, buf + M2).expect("device read");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(buf + M2 + i * K64), Some(PagemapId(1)));
    }
    assert!(r.g(0).dev.vram_used().is_empty(), "A's memory released");

    // B sees A's write in its own memory without migrating; the CPU too.
    let b_before = r.stats(1).migrations_to_devmem;
    assert_eq!(r.dev_read(1, buf + 8).expect("B reads"), 0xa);
    assert_eq!(r.stats(1).migrations_to_devmem, b_before);
    r.dev_write(1, buf + 16, 0xb).expect("B writes");
    assert_eq!(r.dev_read(0, buf + 16).expect("A reads B's write"), 0xb);
    r.cpu_read(buf + 8);
    r.cpu_read(buf + M2 + 5 * P);
    assert_eq!(r.loc(buf), None, "the CPU pulled it back");
    // Device 2 (no link) is not involved at all.
    assert_eq!(r.stats(2).faults, 0);
}

/// A pagemap of another owner (no fast link) is refused with `NoLink`, an unknown one with
/// `Invalid`; neither changes anything, and a fault afterwards still follows the old policy.
#[test]
fn preferred_foreign_or_unknown_pagemap_is_refused() {
    let mut r = three_devices();
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x44);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf, M2, &atomic(AtomicPolicy::Global))
        .expect("set_attrs");
    let before = (svm.stats(), svm.attrs_at(buf), r.ranges(0));
    assert_eq!(
        svm.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(2)))),
        Err(Error::NoLink)
    );
    assert_eq!(
        svm.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(77)))),
        Err(Error::Invalid)
    );
    assert_eq!(
        svm.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(2))),
        Err(Error::NoLink)
    );
    r.check("refused");
    assert_eq!((svm.stats(), svm.attrs_at(buf), r.ranges(0)), before);
    // The old policy (default placement) still applies.
    r.dev_read(0, buf).expect("device read");
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.stats(2).faults, 0);
    assert!(r.g(2).dev.vram_used().is_empty());
}

// ---- atomic access policy ----------------------------------------------------------------

/// An atomic fault that needs device memory on a device whose memory is too small for the
/// range: exactly `devmem_only_retries` retries, then `Fault`; nothing lost, nothing leaked.
/// A one-off allocation failure is absorbed by the retry budget.
#[test]
fn atomic_with_devmem_exhausted_retries_then_faults() {
    // 16 pages of device memory cannot hold a 2 MiB range.
    let mut r = one_device(16);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x55);
    let before = r.stats(0);
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Fault));
    let s = r.stats(0);
    assert_eq!(s.devmem_retries - before.devmem_retries, 3, "{s:?}");
    assert_eq!(s.faults_atomic - before.faults_atomic, 1);
    assert_eq!(s.migrations_to_devmem, 0);
    assert!(s.migrate_failures >= 4, "first try + 3 retries: {s:?}");
    assert_eq!(r.loc(buf), None);
    assert!(r.g(0).dev.vram_used().is_empty(), "nothing leaked");
    assert_eq!(
        r.dev_ptes(0, buf, buf + M2),
        0,
        "a failed fault maps nothing"
    );
    // Nothing lost: the CPU (and a plain device read, which may use system memory) still see
    // every value.
    for i in 0..8 {
        r.cpu_read(buf + i * K64);
    }
    r.dev_read(0, buf + P)
        .expect("a read does not need device memory");

    // The budget is configuration.
    let mut cfg = SvmConfig::new(0, 1 << 47);
    cfg.prefer_devmem = true;
    cfg.policy.devmem_only_retries = 1;
    let mut r = one_device_with(16, cfg);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x56);
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Fault));
    assert_eq!(r.stats(0).devmem_retries, 1);

    // One allocation failure: the first retry succeeds.
    let mut r = one_device(4096);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x57);
    r.g(0).dev.inject_alloc_fail_at(1);
    assert_eq!(r.dev_atomic(0, buf, 5), Ok(buf ^ 0x57));
    let s = r.stats(0);
    assert_eq!(s.devmem_retries, 1, "{s:?}");
    assert_eq!(s.migrate_failures, 1);
    assert_eq!(s.migrations_to_devmem, 1);
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.cpu_read(buf), (buf ^ 0x57) + 5);
}

/// All device memory taken by another range: the atomic fault evicts that range to make room
/// (no retry needed).
#[test]
fn atomic_with_devmem_full_evicts_another_range() {
    // Exactly one 2 MiB range fits.
    let mut r = one_device(512);
    let buf = r.mmap(2 * M2);
    r.fill(buf, 2 * M2, 0x58);
    r.dev_read(0, buf).expect("device read");
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.dev_atomic(0, buf + M2, 3), Ok((buf + M2) ^ 0x58));
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));
    assert_eq!(r.loc(buf), None, "the other range was evicted to make room");
    let s = r.stats(0);
    assert_eq!(s.evictions, 1, "{s:?}");
    assert_eq!(s.devmem_retries, 0);
    r.cpu_read(buf + P);
}

/// `AtomicPolicy::Cpu`: device atomics are refused with `Access`; reads and writes work.
#[test]
fn atomic_policy_cpu_refuses_device_atomics() {
    let mut r = one_device(4096);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0x66);
    r.g(0)
        .svm
        .set_attrs(buf, M2, &atomic(AtomicPolicy::Cpu))
        .expect("set_attrs");
    r.check("set_attrs cpu atomics");
    let before = r.stats(0);
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Access));
    let s = r.stats(0);
    assert_eq!(s.faults_atomic, before.faults_atomic + 1);
    assert_eq!(s.migrations_to_devmem, before.migrations_to_devmem);
    assert_eq!(r.dev_ptes(0, buf, buf + M2), 0, "nothing mapped");
    assert_eq!(r.loc(buf), None);
    assert_eq!(r.cpu_read(buf), buf ^ 0x66, "value untouched");
    // Plain accesses are not affected.
    r.dev_write(0, buf + 8, 9).expect("device write");
    assert_eq!(r.dev_read(0, buf + 8), Ok(9));
    // The CPU can still do its atomics (plain write here).
    r.cpu_write(buf + 16, 1);
}

/// One device with 4096 pages of memory that does not prefer it (so pages stay in RAM unless
/// a policy needs device memory), optionally with atomics on system memory, and `len` bytes
/// mapped and filled with `tag`.
fn ram_first_rig(atomics_on_sysmem: bool, len: u64, tag: u64) -> (Rig, u64) {
    let mut cfg = SvmConfig::new(0, 1 << 47);
    cfg.prefer_devmem = false;
    cfg.policy.atomics_on_sysmem = atomics_on_sysmem;
    let mut r = one_device_with(4096, cfg);
    let buf = r.mmap(len);
    r.fill(buf, len, tag);
    (r, buf)
}

/// `AtomicPolicy::Device` on a device that does atomics on system memory does not migrate;
/// `Global` and `Undefined` do, and without `atomics_on_sysmem` so does `Device`.
#[test]
fn atomic_policy_device_with_sysmem_atomics_stays_in_ram() {
    let (mut r, buf) = ram_first_rig(true, 3 * M2, 0x77);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf, M2, &atomic(AtomicPolicy::Device))
        .expect("set_attrs");
    svm.set_attrs(buf + M2, M2, &atomic(AtomicPolicy::Global))
        .expect("set_attrs");
    r.check("set_attrs atomics");
    assert_eq!(r.dev_atomic(0, buf, 1), Ok(buf ^ 0x77));
    assert_eq!(r.loc(buf), None, "device atomics on system memory");
    assert_eq!(r.stats(0).migrations_to_devmem, 0);
    assert_eq!(r.dev_atomic(0, buf + M2, 1), Ok((buf + M2) ^ 0x77));
    assert_eq!(
        r.loc(buf + M2),
        Some(PagemapId(0)),
        "global needs device memory"
    );
    assert_eq!(r.dev_atomic(0, buf + 2 * M2, 1), Ok((buf + 2 * M2) ^ 0x77));
    assert_eq!(
        r.loc(buf + 2 * M2),
        Some(PagemapId(0)),
        "undefined needs device memory"
    );
    assert_eq!(r.stats(0).migrations_to_devmem, 2);
    assert_eq!(r.stats(0).devmem_retries, 0);

    // Without atomics on system memory, `Device` needs device memory too.
    let (mut r, buf) = ram_first_rig(false, M2, 0x78);
    r.g(0)
        .svm
        .set_attrs(buf, M2, &atomic(AtomicPolicy::Device))
        .expect("set_attrs");
    assert_eq!(r.dev_atomic(0, buf, 1), Ok(buf ^ 0x78));
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
}

/// Regression (found by the `ops_from_bytes` proptest): a device atomic through a page the
/// device had already bound for a read used to complete without a fault, whatever the atomic
/// policy. The atomic-enable bit of a bound entry now comes from `Svm::device_atomics`, so the
/// atomic faults and the policy decides: `Cpu` refuses it (and changes nothing), `Global`
/// moves the page to device memory first, and `Device` with atomics on system memory lets it
/// complete in place.
#[test]
fn atomics_through_an_existing_mapping_follow_the_policy() {
    let (mut r, buf) = ram_first_rig(false, 2 * M2, 0x5a);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf, M2, &atomic(AtomicPolicy::Cpu))
        .expect("set_attrs");
    // Bound by a read, in system memory, writable.
    assert_eq!(r.dev_read(0, buf), Ok(buf ^ 0x5a));
    r.dev_write(0, buf + 8, 3)
        .expect("device write through the mapping");
    let faults = r.stats(0).faults_atomic;
    assert_eq!(r.dev_atomic(0, buf, 1), Err(Error::Access));
    assert_eq!(r.stats(0).faults_atomic, faults + 1, "the atomic faulted");
    assert_eq!(r.cpu_read(buf), buf ^ 0x5a, "value untouched");
    let range = svm.find(buf).expect("range");
    assert_eq!(svm.device_atomics(&range), DeviceAtomics::NONE);
    r.check("cpu policy");

    // Undefined (the default) on the second half: bound in RAM by a read, the atomic needs
    // device memory, so it migrates.
    assert_eq!(r.dev_read(0, buf + M2), Ok((buf + M2) ^ 0x5a));
    assert_eq!(r.loc(buf + M2), None);
    assert_eq!(r.dev_atomic(0, buf + M2, 1), Ok((buf + M2) ^ 0x5a));
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)), "moved for the atomic");
    let range = svm.find(buf + M2).expect("range");
    let rights = svm.device_atomics(&range);
    assert!(rights.device_memory && !rights.system_memory);
    r.check("undefined policy");

    // Device atomics on system memory: bound by a read, the atomic completes in place.
    let (mut r, buf) = ram_first_rig(true, M2, 0x5b);
    r.g(0)
        .svm
        .set_attrs(buf, M2, &atomic(AtomicPolicy::Device))
        .expect("set_attrs");
    assert_eq!(r.dev_read(0, buf), Ok(buf ^ 0x5b));
    let faults = r.stats(0).faults_atomic;
    assert_eq!(r.dev_atomic(0, buf, 1), Ok(buf ^ 0x5b));
    assert_eq!(
        r.stats(0).faults_atomic,
        faults,
        "no fault: the entry allows atomics"
    );
    assert_eq!(r.loc(buf), None);
    r.check("device policy, atomics on system memory");
}

// ---- migration policy --------------------------------------------------------------------

/// `SystemPagesOnly`: a range already holding (peer) device pages is left where it is, a
/// range of system pages migrates; with `AllPages` the peer pages move.
#[test]
fn migration_policy_system_pages_only() {
    let mut r = three_devices();
    let buf = r.mmap(3 * M2);
    r.fill(buf, 3 * M2, 0x88);
    let (peer_all, peer_sys, sys) = (buf, buf + M2, buf + 2 * M2);
    // B pulls the first two ranges into its memory.
    r.dev_read(1, peer_all).expect("B reads");
    r.dev_read(1, peer_sys).expect("B reads");
    assert_eq!(r.loc(peer_all), Some(PagemapId(1)));
    assert_eq!(r.loc(peer_sys), Some(PagemapId(1)));
    let svm = r.g(0).svm.clone();
    let here = pref(PreferredLoc::Pagemap(PagemapId(0)));
    svm.set_attrs(buf, 3 * M2, &here).expect("set_attrs");
    svm.set_attrs(
        peer_sys,
        2 * M2,
        &migration(MigrationPolicy::SystemPagesOnly),
    )
    .expect("set_attrs");
    r.check("set_attrs migration");
    assert_eq!(
        svm.attrs_at(sys),
        Attrs {
            preferred: PreferredLoc::Pagemap(PagemapId(0)),
            migration: MigrationPolicy::SystemPagesOnly,
            atomic: AtomicPolicy::Undefined,
        }
    );

    let m0 = r.stats(0).migrations_to_devmem;
    r.dev_read(0, peer_sys).expect("A reads");
    assert_eq!(r.loc(peer_sys), Some(PagemapId(1)), "device pages stay");
    assert_eq!(r.stats(0).migrations_to_devmem, m0, "not migrated");

    r.dev_read(0, sys).expect("A reads");
    assert_eq!(r.loc(sys), Some(PagemapId(0)), "system pages migrate");
    assert_eq!(r.stats(0).migrations_to_devmem, m0 + 1);

    r.dev_read(0, peer_all).expect("A reads");
    assert_eq!(
        r.loc(peer_all),
        Some(PagemapId(0)),
        "all pages: peer pages move"
    );
    assert_eq!(r.stats(0).migrations_to_devmem, m0 + 2);

    // Data intact everywhere.
    r.dev_write(0, peer_sys + 8, 1).expect("A writes P2P");
    assert_eq!(r.dev_read(1, peer_sys + 8), Ok(1));
    for i in 0..6 {
        r.cpu_read(buf + i * M);
    }
}

// ---- attribute changes over bound ranges -------------------------------------------------

/// Attributes set over ranges bound on the device: a range straddling an edge of the interval
/// is evicted and removed, a range inside keeps its pages but loses its device mappings; the
/// refault follows the new policy. Setting the same attributes again clears nothing.
#[test]
fn set_attrs_over_bound_ranges() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0x99);
    r.dev_read(0, buf).expect("device read");
    r.dev_read(0, buf + M2).expect("device read");
    assert_eq!(r.ranges(0).len(), 2);
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));

    // Inside: [buf+2M, buf+4M) is exactly the second range.
    let s0 = r.stats(0);
    let zaps = r.g(0).dev.zap_count();
    r.g(0)
        .svm
        .set_attrs(buf + M2, M2, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs inside");
    assert_eq!(r.ranges(0).len(), 2, "the inner range is kept");
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)), "its pages stay");
    assert_eq!(
        r.dev_ptes(0, buf + M2, buf + 4 * M),
        0,
        "device mappings gone"
    );
    assert!(
        r.dev_ptes(0, buf, buf + M2) > 0,
        "the other range is still bound"
    );
    assert!(r.g(0).dev.zap_count() > zaps);
    // The next device access refaults, under the new policy (system: pulled back).
    r.dev_read(0, buf + M2 + P).expect("device read");
    let s1 = r.stats(0);
    assert_eq!(s1.faults, s0.faults + 1, "refault");
    assert_eq!(r.loc(buf + M2), None, "new policy: system memory");
    // The untouched range does not refault.
    r.dev_read(0, buf + P).expect("device read");
    assert_eq!(r.stats(0).faults, s1.faults);

    // The same attributes again: nothing is cleared.
    let zaps = r.g(0).dev.zap_count();
    let ptes = r.g(0).dev.ptes().len();
    r.g(0)
        .svm
        .set_attrs(buf + M2, M2, &pref(PreferredLoc::System))
        .expect("set_attrs again");
    r.check("set_attrs again");
    assert_eq!(r.g(0).dev.zap_count(), zaps, "no mapping cleared");
    assert_eq!(r.g(0).dev.ptes().len(), ptes);
    r.dev_read(0, buf + M2 + 2 * P).expect("device read");
    assert_eq!(r.stats(0).faults, s1.faults, "no refault");

    // Straddling: [buf+64K, buf+128K) lies inside the first range, which straddles its edges.
    let s2 = r.stats(0);
    r.g(0)
        .svm
        .set_attrs(buf + K64, K64, &pref(PreferredLoc::System))
        .expect("set_attrs straddling");
    r.check("set_attrs straddling");
    let ranges = r.ranges(0);
    assert_eq!(
        ranges.len(),
        1,
        "the straddling range is removed: {ranges:?}"
    );
    assert_eq!(ranges[0].0, buf + M2);
    assert_eq!(r.loc(buf), None, "evicted before removal");
    assert_eq!(r.stats(0).evictions, s2.evictions + 1);
    assert_eq!(r.dev_ptes(0, buf, buf + M2), 0);
    for i in 0..4 {
        r.cpu_read(buf + i * K64);
    }
    // Refaults: inside the system interval the pages stay in RAM, outside they migrate again.
    r.dev_read(0, buf + K64 + P).expect("device read");
    assert_eq!(r.loc(buf + K64), None);
    r.dev_read(0, buf + M).expect("device read");
    assert_eq!(r.loc(buf + M), Some(PagemapId(0)));
    r.assert_ranges_uniform(0);
    assert_eq!(
        r.loc(buf + K64),
        None,
        "the system interval stays in system memory"
    );
    r.dev_read(0, buf).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf + K64 + P), None);
}

/// Setting attributes over an interval that spans two ranges' edges removes both; a prefix
/// and suffix outside the interval refault fine.
#[test]
fn set_attrs_straddling_two_ranges() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0xaa);
    r.dev_write(0, buf, 1).expect("device write");
    r.dev_write(0, buf + M2, 2).expect("device write");
    let (n, ranges) = r.g(0).svm.counts();
    assert_eq!((n, ranges), (1, 2));
    r.g(0)
        .svm
        .set_attrs(buf + M, M2, &atomic(AtomicPolicy::Global))
        .expect("set_attrs");
    r.check("set_attrs straddling both");
    assert_eq!(r.g(0).svm.counts().1, 0, "both ranges removed");
    assert_eq!(r.loc(buf), None);
    assert_eq!(r.loc(buf + M2), None);
    assert_eq!(r.dev_read(0, buf), Ok(1));
    assert_eq!(r.dev_read(0, buf + M2), Ok(2));
    r.dev_atomic(0, buf + M + 8, 1)
        .expect("atomic under the new policy");
    assert_eq!(
        r.loc(buf + M),
        Some(PagemapId(0)),
        "global atomics: device memory"
    );
    r.assert_ranges_uniform(0);
}

/// New ranges never span an attribute boundary: a fault next to a small interval with other
/// attributes gets a range that stops at its edge, so each side is placed by its own policy
/// (the same holds for ranges a prefetch creates).
#[test]
fn new_ranges_stop_at_attribute_boundaries() {
    let mut r = one_device(4096);
    let buf = r.mmap(2 * M2);
    r.fill(buf, 2 * M2, 0xab);
    let svm = r.g(0).svm.clone();
    svm.set_attrs(buf + K64, K64, &pref(PreferredLoc::System))
        .expect("set_attrs");
    svm.set_attrs(buf + M2 + M, K64, &pref(PreferredLoc::System))
        .expect("set_attrs");
    r.check("set_attrs");
    // Default placement next to the system interval: migrates, but not the system interval.
    r.dev_read(0, buf).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf), Some(PagemapId(0)));
    assert_eq!(r.loc(buf + K64), None);
    r.dev_read(0, buf + K64).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(
        r.loc(buf + K64),
        None,
        "system interval stays in system memory"
    );
    r.dev_read(0, buf + M).expect("device read");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf + M), Some(PagemapId(0)));
    assert_eq!(r.loc(buf + K64 + P), None);
    // A prefetch across the second boundary.
    svm.prefetch(buf + M2, M2, PrefetchLoc::Device)
        .expect("prefetch");
    r.check("prefetch");
    r.assert_ranges_uniform(0);
    assert_eq!(r.loc(buf + M2), Some(PagemapId(0)));
    for (s, e, _) in r.ranges(0) {
        let (lo, hi) = (buf + M2 + M, buf + M2 + M + K64);
        assert!(
            e <= lo || s >= hi || (lo <= s && e <= hi),
            "[{s:#x}, {e:#x}) straddles [{lo:#x}, {hi:#x})"
        );
    }
    for i in 0..8 {
        r.cpu_read(buf + i * (M / 2));
    }
}

// ---- prefetch ----------------------------------------------------------------------------

/// Prefetch 8 MiB to the device: the following device faults only bind (no migration, at most
/// one fault per range); prefetch back to system memory brings every page back.
#[test]
fn prefetch_large_interval_then_faults_hit() {
    let mut r = one_device(4096);
    let len = 8 * M;
    let buf = r.mmap(len);
    r.fill(buf, len, 0xbb);
    r.g(0)
        .svm
        .prefetch(buf, len, PrefetchLoc::Device)
        .expect("prefetch");
    r.check("prefetch device");
    let s = r.stats(0);
    assert_eq!(s.prefetches, 1);
    assert_eq!(s.migrations_to_devmem, 4, "{s:?}");
    assert_eq!(s.bytes_to_devmem, len as usize);
    assert_eq!(s.faults, 0);
    let nranges = r.ranges(0).len();
    assert_eq!(nranges, 4);
    for i in 0..(len / K64) {
        assert_eq!(r.loc(buf + i * K64), Some(PagemapId(0)));
    }
    for i in 0..(len / K64) {
        r.dev_read(0, buf + i * K64).expect("device read");
    }
    let s2 = r.stats(0);
    assert_eq!(
        s2.migrations_to_devmem, s.migrations_to_devmem,
        "no migration"
    );
    assert!(s2.faults <= nranges, "at most one fault per range: {s2:?}");

    r.g(0)
        .svm
        .prefetch(buf, len, PrefetchLoc::System)
        .expect("prefetch");
    r.check("prefetch system");
    for i in 0..(len / K64) {
        assert_eq!(r.loc(buf + i * K64), None);
    }
    let s3 = r.stats(0);
    assert_eq!(s3.prefetches, 2);
    assert_eq!(s3.bytes_to_ram, len as usize, "{s3:?}");
    assert!(r.g(0).dev.vram_used().is_empty());
    for i in 0..8 {
        r.cpu_read(buf + i * M);
    }
}

/// A prefetch over memory re-mapped at the address of a range that was unmapped since the last
/// GC run (no fault ran it in between) removes that range first and migrates the new pages
/// (found by the crate-backed Linux module: hmm-tests `migrate_multiple` maps, migrates and
/// unmaps the same address ten times; the stale range made the prefetch fail with `Again`).
#[test]
fn prefetch_after_munmap_and_remap_at_the_same_address() {
    let mut r = one_device(4096);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0xc1);
    r.g(0)
        .svm
        .prefetch(buf, M2, PrefetchLoc::Device)
        .expect("prefetch");
    r.mm.munmap(buf, M2).expect("munmap");
    r.model.retain(|&a, _| a < buf || a >= buf + M2);
    let again = r.mm.mmap_fixed(buf, M2, RW, false).expect("mmap_fixed");
    assert_eq!(again, buf);
    r.fill(buf, M2, 0xc2);
    r.g(0)
        .svm
        .prefetch(buf, M2, PrefetchLoc::Device)
        .expect("prefetch after the re-map");
    r.check("prefetch after the re-map");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(buf + i * K64), Some(PagemapId(0)));
    }
}

/// Prefetch into a peer's pagemap over the link.
#[test]
fn prefetch_to_peer_pagemap() {
    let mut r = three_devices();
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0xbc);
    r.g(0)
        .svm
        .prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(1)))
        .expect("prefetch");
    r.check("prefetch peer");
    assert_eq!(r.loc(buf), Some(PagemapId(1)));
    let m = r.stats(0).migrations_to_devmem;
    r.dev_read(0, buf + P).expect("A reads P2P");
    r.dev_read(1, buf + 2 * P).expect("B reads locally");
    assert_eq!(r.stats(0).migrations_to_devmem, m);
    assert_eq!(r.stats(1).migrations_to_devmem, 0);
}

// ---- size threshold and "migrate once" ---------------------------------------------------

/// A 16 KiB allocation gets 4 KiB ranges, below the 64 KiB threshold: it stays in system
/// memory. An atomic (device memory required) ignores the threshold.
#[test]
fn small_allocation_below_threshold_stays_in_ram() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * P);
    r.fill(buf, 4 * P, 0xcc);
    for i in 0..4 {
        r.dev_read(0, buf + i * P).expect("device read");
        r.dev_write(0, buf + i * P + 8, i).expect("device write");
    }
    let ranges = r.ranges(0);
    assert_eq!(ranges.len(), 4, "{ranges:?}");
    assert!(ranges.iter().all(|(s, e, _)| e - s == P));
    for i in 0..4 {
        assert_eq!(r.loc(buf + i * P), None);
    }
    assert_eq!(r.stats(0).migrations_to_devmem, 0);
    // A 64 KiB allocation (at the threshold) migrates.
    let b64 = r.mmap(K64);
    r.fill(b64, K64, 0xcd);
    r.dev_read(0, b64).expect("device read");
    assert_eq!(r.loc(b64), Some(PagemapId(0)));
    assert_eq!(r.stats(0).migrations_to_devmem, 1);
    // An atomic on a small range needs device memory regardless of size.
    let small = r.mmap(P);
    r.fill(small, P, 0xce);
    r.dev_atomic(0, small, 1).expect("atomic");
    assert_eq!(r.loc(small), Some(PagemapId(0)));
}

/// Invalidate a range's device mappings without removing it (an mprotect round trip).
fn drop_mappings(r: &mut Rig, start: u64, len: u64) {
    r.step("mprotect ro", |r| {
        r.mm.mprotect(start, len, VmaFlags::READ).expect("mprotect")
    });
    r.step("mprotect rw", |r| {
        r.mm.mprotect(start, len, RW).expect("mprotect")
    });
}

/// "Migrate once": a range whose migration failed is not retried on its next fault, unless an
/// atomic demands device memory.
#[test]
fn migrate_once_unless_atomic_demands_devmem() {
    for inject in ["alloc", "copy"] {
        let mut r = one_device(4096);
        let buf = r.mmap(M2);
        r.fill(buf, M2, 0xdd);
        match inject {
            "alloc" => r.g(0).dev.inject_alloc_fail_at(1),
            _ => r.g(0).dev.inject_copy_fail_at(1, 1),
        }
        r.dev_read(0, buf).expect("falls back to system memory");
        let s = r.stats(0);
        assert_eq!(s.migrate_failures, 1, "{inject}: {s:?}");
        assert_eq!(r.loc(buf), None, "{inject}: fell back to system memory");
        assert_eq!(s.migrations_to_devmem, 0, "{inject}: {s:?}");
        let flags = r.ranges(0)[0].2;
        assert!(flags.contains(RangeFlags::MIGRATE_FAILED), "{flags:?}");
        assert!(
            r.g(0).dev.vram_used().is_empty(),
            "{inject}: nothing leaked"
        );
        r.cpu_read(buf + 3 * P);

        // The next fault does not try again.
        drop_mappings(&mut r, buf, M2);
        assert_eq!(r.dev_ptes(0, buf, buf + M2), 0);
        let f = r.stats(0).faults;
        r.dev_read(0, buf + P).expect("device read");
        let s = r.stats(0);
        assert_eq!(s.faults, f + 1, "refaulted");
        assert_eq!(s.migrate_failures, 1, "{inject}: not retried");
        assert_eq!(s.migrations_to_devmem, 0);
        assert_eq!(r.loc(buf), None);

        // An atomic demands device memory: it migrates despite the history.
        drop_mappings(&mut r, buf, M2);
        r.dev_atomic(0, buf + 16, 2).expect("atomic");
        let s = r.stats(0);
        assert_eq!(s.migrations_to_devmem, 1, "{inject}: {s:?}");
        assert_eq!(s.migrate_failures, 1);
        assert_eq!(r.loc(buf), Some(PagemapId(0)));
        r.cpu_read(buf + 16);
    }
}

// ---- bad input ---------------------------------------------------------------------------

/// Everything a bad call could change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    attrs: Vec<Attrs>,
    ranges: Vec<(u64, u64, RangeFlags)>,
    stats: StatsSnapshot,
    zaps: u64,
    ptes: usize,
    locs: Vec<Option<PagemapId>>,
}

fn snapshot(r: &Rig, probes: &[u64]) -> Snapshot {
    let g = r.g(0);
    Snapshot {
        attrs: probes.iter().map(|a| g.svm.attrs_at(*a)).collect(),
        ranges: r.ranges(0),
        stats: g.svm.stats(),
        zaps: g.dev.zap_count(),
        ptes: g.dev.ptes().len(),
        locs: probes.iter().map(|a| r.loc(*a)).collect(),
    }
}

/// Every bad input to `set_attrs`, `set_attrs_raw` and `prefetch` returns its typed error and
/// changes nothing: attributes (probed at several addresses), ranges, stats, device mappings,
/// page locations.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut r = three_devices();
    let buf = r.mmap(4 * M);
    r.fill(buf, 4 * M, 0xee);
    let svm = r.g(0).svm.clone();
    // Some state to preserve: attributes in the middle, ranges bound (one in device memory).
    svm.set_attrs(buf + M2, M, &pref(PreferredLoc::System))
        .expect("set_attrs");
    svm.set_attrs(buf + M2 + K64, K64, &atomic(AtomicPolicy::Cpu))
        .expect("set_attrs");
    r.dev_read(0, buf).expect("device read");
    r.dev_read(0, buf + M2).expect("device read");
    r.check("setup");
    let probes = [
        0,
        buf,
        buf + M2 - P,
        buf + M2,
        buf + M2 + K64,
        buf + M2 + 2 * K64,
        buf + 3 * M,
        buf + 4 * M,
        (1 << 47) - P,
    ];

    let end = 1u64 << 47; // the mirrored interval is [0, 2^47)
    let top = !(P - 1); // the highest page
    let sys = pref(PreferredLoc::System);
    let raw = |kind: u32, value: u64| RawAttr {
        kind,
        value,
        reserved: 0,
    };
    type Call<'a> = Box<dyn Fn() -> Result<()> + 'a>;
    let s = &svm;
    let cases: Vec<(&str, Call, Error)> = vec![
        // set_attrs: the interval.
        (
            "misaligned start",
            Box::new(move || s.set_attrs(buf + 1, P, &sys)),
            Error::Invalid,
        ),
        (
            "misaligned start (8)",
            Box::new(move || s.set_attrs(buf + 8, M2, &sys)),
            Error::Invalid,
        ),
        (
            "misaligned len",
            Box::new(move || s.set_attrs(buf, P + 1, &sys)),
            Error::Invalid,
        ),
        (
            "misaligned len (half page)",
            Box::new(move || s.set_attrs(buf, P / 2, &sys)),
            Error::Invalid,
        ),
        (
            "zero len",
            Box::new(move || s.set_attrs(buf, 0, &sys)),
            Error::Invalid,
        ),
        (
            "zero len at 0",
            Box::new(move || s.set_attrs(0, 0, &sys)),
            Error::Invalid,
        ),
        (
            "overflowing start+len",
            Box::new(move || s.set_attrs(top, 2 * P, &sys)),
            Error::Invalid,
        ),
        (
            "overflowing len",
            Box::new(move || s.set_attrs(buf, top, &sys)),
            Error::Invalid,
        ),
        (
            "outside the interval",
            Box::new(move || s.set_attrs(end, P, &sys)),
            Error::Invalid,
        ),
        (
            "crossing the end",
            Box::new(move || s.set_attrs(end - P, 2 * P, &sys)),
            Error::Invalid,
        ),
        (
            "far outside",
            Box::new(move || s.set_attrs(top, P, &sys)),
            Error::Invalid,
        ),
        // set_attrs: the update.
        (
            "empty update",
            Box::new(move || s.set_attrs(buf, M2, &AttrUpdate::default())),
            Error::Invalid,
        ),
        (
            "unknown pagemap",
            Box::new(move || s.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(9))))),
            Error::Invalid,
        ),
        (
            "unknown pagemap u32::MAX",
            Box::new(move || {
                s.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(u32::MAX))))
            }),
            Error::Invalid,
        ),
        (
            "pagemap of another owner",
            Box::new(move || s.set_attrs(buf, M2, &pref(PreferredLoc::Pagemap(PagemapId(2))))),
            Error::NoLink,
        ),
        (
            "another owner, other fields too",
            Box::new(move || {
                s.set_attrs(
                    buf,
                    M2,
                    &AttrUpdate {
                        preferred: Some(PreferredLoc::Pagemap(PagemapId(2))),
                        migration: Some(MigrationPolicy::SystemPagesOnly),
                        atomic: Some(AtomicPolicy::Global),
                    },
                )
            }),
            Error::NoLink,
        ),
        (
            "bad interval wins over bad pagemap",
            Box::new(move || s.set_attrs(buf + 1, M2, &pref(PreferredLoc::Pagemap(PagemapId(2))))),
            Error::Invalid,
        ),
        // set_attrs_raw.
        (
            "raw: no entries",
            Box::new(move || s.set_attrs_raw(buf, M2, &[])),
            Error::Invalid,
        ),
        (
            "raw: unknown kind 3",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(3, 0)])),
            Error::Invalid,
        ),
        (
            "raw: unknown kind u32::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(u32::MAX, 0)])),
            Error::Invalid,
        ),
        (
            "raw: migration value 2",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(1, 2)])),
            Error::Invalid,
        ),
        (
            "raw: migration value u64::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(1, u64::MAX)])),
            Error::Invalid,
        ),
        (
            "raw: atomic value 4",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(2, 4)])),
            Error::Invalid,
        ),
        (
            "raw: atomic value u64::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(2, u64::MAX)])),
            Error::Invalid,
        ),
        (
            "raw: pagemap id too large",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 2 + (1u64 << 32))])),
            Error::Invalid,
        ),
        (
            "raw: preferred u64::MAX",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, u64::MAX)])),
            Error::Invalid,
        ),
        (
            "raw: unknown pagemap",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 2 + 9)])),
            Error::Invalid,
        ),
        (
            "raw: pagemap of another owner",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 2 + 2)])),
            Error::NoLink,
        ),
        (
            "raw: reserved bits",
            Box::new(move || {
                s.set_attrs_raw(
                    buf,
                    M2,
                    &[RawAttr {
                        kind: 0,
                        value: 1,
                        reserved: 1,
                    }],
                )
            }),
            Error::Invalid,
        ),
        (
            "raw: reserved high bit",
            Box::new(move || {
                s.set_attrs_raw(
                    buf,
                    M2,
                    &[RawAttr {
                        kind: 2,
                        value: 2,
                        reserved: 1 << 63,
                    }],
                )
            }),
            Error::Invalid,
        ),
        (
            "raw: good then bad",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(0, 1), raw(2, 9)])),
            Error::Invalid,
        ),
        (
            "raw: bad then good",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(7, 0), raw(1, 1)])),
            Error::Invalid,
        ),
        (
            "raw: good, misaligned",
            Box::new(move || s.set_attrs_raw(buf + P / 2, M2, &[raw(0, 1)])),
            Error::Invalid,
        ),
        (
            "raw: good, zero len",
            Box::new(move || s.set_attrs_raw(buf, 0, &[raw(0, 1)])),
            Error::Invalid,
        ),
        (
            "raw: good, outside",
            Box::new(move || s.set_attrs_raw(end, M2, &[raw(0, 1)])),
            Error::Invalid,
        ),
        // prefetch.
        (
            "prefetch misaligned start",
            Box::new(move || s.prefetch(buf + 8, M2, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch misaligned len",
            Box::new(move || s.prefetch(buf, M2 - 8, PrefetchLoc::System)),
            Error::Invalid,
        ),
        (
            "prefetch zero len",
            Box::new(move || s.prefetch(buf, 0, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch overflowing",
            Box::new(move || s.prefetch(top, 2 * P, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch outside",
            Box::new(move || s.prefetch(end, P, PrefetchLoc::System)),
            Error::Invalid,
        ),
        (
            "prefetch crossing the end",
            Box::new(move || s.prefetch(end - P, 2 * P, PrefetchLoc::Device)),
            Error::Invalid,
        ),
        (
            "prefetch unknown pagemap",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(9)))),
            Error::Invalid,
        ),
        (
            "prefetch pagemap of another owner",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(2)))),
            Error::NoLink,
        ),
        (
            "prefetch where nothing is mapped",
            Box::new(move || s.prefetch(buf + 8 * M, M2, PrefetchLoc::Device)),
            Error::Fault,
        ),
    ];
    for (what, call, want) in &cases {
        let before = snapshot(&r, &probes);
        assert_eq!(call(), Err(*want), "{what}");
        r.check(what);
        assert_eq!(snapshot(&r, &probes), before, "{what}: something changed");
    }

    // After close: Closed, nothing changes.
    svm.close();
    r.check("close");
    let closed: Vec<(&str, Call)> = vec![
        ("set_attrs", Box::new(move || s.set_attrs(buf, M2, &sys))),
        (
            "set_attrs_raw",
            Box::new(move || s.set_attrs_raw(buf, M2, &[raw(2, 3)])),
        ),
        (
            "prefetch device",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Device)),
        ),
        (
            "prefetch system",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::System)),
        ),
        (
            "prefetch peer",
            Box::new(move || s.prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(1)))),
        ),
    ];
    for (what, call) in &closed {
        let before = snapshot(&r, &probes);
        assert_eq!(call(), Err(Error::Closed), "{what} after close");
        r.check(what);
        assert_eq!(
            snapshot(&r, &probes),
            before,
            "{what} after close: something changed"
        );
    }
}
