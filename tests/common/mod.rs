//! A small, deterministic mock platform for the integration tests.
//!
//! - [`MockMm`]: VMAs, present pages (each with a pfn; 2 MiB huge mappings reported with order
//!   9), collection that faults pages in, notifier registrations recorded as `(id, start, end)`.
//! - [`MockDma`]: an IOVA bump allocator that records every live mapping; an unmap must match a
//!   live mapping exactly (address, order, direction) or it is recorded as an error.
//! - [`MockPt`]: records every zap.
//! - [`MockPlatform`]: the three plus a settable clock (optionally advancing on every read).
//!
//! Every test ends with [`MockPlatform::assert_clean`]: no platform-contract violation
//! (double/unknown unmap, unknown unregister, ...) happened.
#![allow(dead_code)]

use gpusvm::platform::{
    AddressSpace, CollectRequest, CpuPage, DevicePageTable, DmaDirection, DmaMapper, NotifierId,
    Platform, Vma, VmaFlags, HUGE_ORDER, PAGE_SIZE,
};
// Device memory arrived with the pagemap work; this mock has none.
use gpusvm::platform::NoDeviceMemory;
use gpusvm::range::RangeFlags;
use gpusvm::stats::StatsSnapshot;
use gpusvm::{Error, Result, Svm, SvmConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const P: u64 = PAGE_SIZE;
pub const K64: u64 = 64 << 10;
pub const M: u64 = 1 << 20;
pub const M2: u64 = 2 << 20;
pub const G: u64 = 1 << 30;
pub const N512: u64 = 512 << 20;

/// One present CPU page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockPage {
    pub pfn: u64,
    pub order: u8,
    pub writable: bool,
}

#[derive(Debug, Default)]
pub struct MmState {
    pub vmas: Vec<Vma>,
    /// Present pages by page address.
    pub pages: BTreeMap<u64, MockPage>,
    /// Live notifier registrations: handle serial → (id, start, end).
    pub notifiers: BTreeMap<u64, (NotifierId, u64, u64)>,
    /// Every registration ever made, in order.
    pub registered_log: Vec<(NotifierId, u64, u64)>,
    /// Every unregistration, in order.
    pub unregistered_log: Vec<(NotifierId, u64, u64)>,
    next_serial: u64,
    next_pfn: u64,
    /// Collections that fault pages in / snapshots without faulting.
    pub fault_collects: usize,
    pub snapshot_collects: usize,
    /// Make the next registrations fail with this error.
    pub fail_register: Option<Error>,
    pub errors: Vec<String>,
}

/// The mock CPU address space.
#[derive(Debug, Default)]
pub struct MockMm {
    pub s: Mutex<MmState>,
}

/// The handle `register_notifier` returns.
#[derive(Debug)]
pub struct MockHandle(pub u64);

impl MockMm {
    pub fn state(&self) -> std::sync::MutexGuard<'_, MmState> {
        self.s.lock().unwrap()
    }

    /// Add a VMA `[start, end)`.
    pub fn add_vma(&self, start: u64, end: u64, writable: bool) {
        let mut flags = VmaFlags::READ;
        if writable {
            flags |= VmaFlags::WRITE;
        }
        self.state().vmas.push(Vma { start, end, flags });
    }

    /// Remove VMAs and pages overlapping `[start, end)` (VMAs are dropped whole: keep tests
    /// simple).
    pub fn remove_vma(&self, start: u64, end: u64) {
        let mut s = self.state();
        s.vmas.retain(|v| !(v.start < end && start < v.end));
        let gone: Vec<u64> = s.pages.range(start..end).map(|(&a, _)| a).collect();
        for a in gone {
            s.pages.remove(&a);
        }
    }

    fn fresh_pfns(s: &mut MmState, n: u64, align: u64) -> u64 {
        let base = s.next_pfn.div_ceil(align) * align;
        s.next_pfn = base + n;
        base
    }

    /// Make every page of `[start, end)` present as a 4 KiB page with a fresh pfn.
    pub fn populate(&self, start: u64, end: u64, writable: bool) {
        let mut s = self.state();
        let mut a = start;
        while a < end {
            let pfn = Self::fresh_pfns(&mut s, 1, 1);
            s.pages.insert(
                a,
                MockPage {
                    pfn,
                    order: 0,
                    writable,
                },
            );
            a += P;
        }
    }

    /// Make the 2 MiB block at `start` (2 MiB aligned) present as one huge mapping; returns the
    /// first pfn.
    pub fn populate_huge(&self, start: u64, writable: bool) -> u64 {
        assert_eq!(start % M2, 0);
        let mut s = self.state();
        let base = Self::fresh_pfns(&mut s, 512, 512);
        for i in 0..512 {
            s.pages.insert(
                start + i * P,
                MockPage {
                    pfn: base + i,
                    order: HUGE_ORDER,
                    writable,
                },
            );
        }
        base
    }

    /// Drop the page at `addr` (its mapping, not the VMA).
    pub fn zap_cpu_page(&self, addr: u64) {
        self.state().pages.remove(&(addr & !(P - 1)));
    }

    /// Live registrations as `(id, start, end)`, sorted.
    pub fn registered(&self) -> Vec<(NotifierId, u64, u64)> {
        let mut v: Vec<_> = self.state().notifiers.values().copied().collect();
        v.sort();
        v
    }
}

impl AddressSpace for MockMm {
    type NotifierHandle = MockHandle;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        self.state().vmas.iter().copied().find(|v| v.contains(addr))
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        let mut s = self.state();
        if req.fault {
            s.fault_collects += 1;
        } else {
            s.snapshot_collects += 1;
        }
        if req.start >= req.end || req.start % P != 0 || req.end % P != 0 {
            s.errors.push(format!(
                "collect_pages bad interval {:#x}..{:#x}",
                req.start, req.end
            ));
            return Err(Error::Invalid);
        }
        if out.len() as u64 != (req.end - req.start) / P {
            s.errors
                .push(format!("collect_pages out.len {}", out.len()));
            return Err(Error::Invalid);
        }
        for (i, slot) in out.iter_mut().enumerate() {
            let a = req.start + i as u64 * P;
            let vma = s.vmas.iter().copied().find(|v| v.contains(a));
            let Some(vma) = vma else {
                if req.fault {
                    return Err(Error::Fault);
                }
                *slot = CpuPage::Absent;
                continue;
            };
            if req.fault && req.write && !vma.writable() {
                return Err(Error::Perm);
            }
            let page = match s.pages.get(&a).copied() {
                Some(p) if req.fault && req.write && !p.writable => {
                    // Break copy-on-write: a fresh writable page.
                    let pfn = Self::fresh_pfns(&mut s, 1, 1);
                    let p = MockPage {
                        pfn,
                        order: 0,
                        writable: true,
                    };
                    s.pages.insert(a, p);
                    Some(p)
                }
                Some(p) => Some(p),
                None if req.fault => {
                    let pfn = Self::fresh_pfns(&mut s, 1, 1);
                    let p = MockPage {
                        pfn,
                        order: 0,
                        writable: vma.writable(),
                    };
                    s.pages.insert(a, p);
                    Some(p)
                }
                None => None,
            };
            *slot = match page {
                Some(p) => CpuPage::System {
                    pfn: p.pfn,
                    order: p.order,
                    writable: p.writable,
                },
                None => CpuPage::Absent,
            };
        }
        Ok(())
    }

    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<MockHandle> {
        let mut s = self.state();
        if let Some(e) = s.fail_register {
            return Err(e);
        }
        if start >= end {
            s.errors
                .push(format!("register_notifier empty {start:#x}..{end:#x}"));
        }
        if s.notifiers.values().any(|&(_, a, b)| a < end && start < b) {
            s.errors
                .push(format!("register_notifier overlaps: {start:#x}..{end:#x}"));
        }
        let serial = s.next_serial;
        s.next_serial += 1;
        s.notifiers.insert(serial, (id, start, end));
        s.registered_log.push((id, start, end));
        Ok(MockHandle(serial))
    }

    fn unregister_notifier(&self, handle: MockHandle) {
        let mut s = self.state();
        match s.notifiers.remove(&handle.0) {
            Some(n) => s.unregistered_log.push(n),
            None => s
                .errors
                .push(format!("unknown notifier handle {}", handle.0)),
        }
    }
}

/// One live DMA mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMapping {
    pub pfn: u64,
    pub order: u8,
    pub dir: DmaDirection,
}

#[derive(Debug, Default)]
pub struct DmaState {
    /// Live mappings by bus address.
    pub live: BTreeMap<u64, DmaMapping>,
    next_iova: u64,
    pub maps: usize,
    pub unmaps: usize,
    /// Fail every `map_page` once this many maps succeeded (counting from when it was set).
    pub fail_after: Option<usize>,
    /// Return bus addresses with a low offset bit set (a broken platform).
    pub misaligned: bool,
    pub errors: Vec<String>,
}

/// The mock IOMMU.
#[derive(Debug, Default)]
pub struct MockDma {
    pub s: Mutex<DmaState>,
}

/// Bus addresses start here.
pub const IOVA_BASE: u64 = 1 << 40;

impl MockDma {
    pub fn state(&self) -> std::sync::MutexGuard<'_, DmaState> {
        self.s.lock().unwrap()
    }
    pub fn live(&self) -> BTreeMap<u64, DmaMapping> {
        self.state().live.clone()
    }
    pub fn live_count(&self) -> usize {
        self.state().live.len()
    }
}

impl DmaMapper for MockDma {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        let mut s = self.state();
        if let Some(n) = s.fail_after {
            if n == 0 {
                return Err(Error::NoMem);
            }
            s.fail_after = Some(n - 1);
        }
        let size = P << order;
        if pfn % (1 << order) != 0 {
            s.errors.push(format!(
                "map_page pfn {pfn:#x} not aligned to order {order}"
            ));
        }
        let iova = IOVA_BASE.max(s.next_iova).div_ceil(size) * size;
        s.next_iova = iova + size;
        s.maps += 1;
        let addr = if s.misaligned { iova | 0x10 } else { iova };
        s.live.insert(addr, DmaMapping { pfn, order, dir });
        Ok(addr)
    }

    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        let mut s = self.state();
        s.unmaps += 1;
        match s.live.get(&addr).copied() {
            Some(m) if m.order == order && m.dir == dir => {
                s.live.remove(&addr);
            }
            Some(m) => s.errors.push(format!(
                "unmap {addr:#x} order {order} {dir:?} does not match {m:?}"
            )),
            None => s.errors.push(format!(
                "unmap of unknown/already unmapped {addr:#x} order {order}"
            )),
        }
    }
}

/// The mock device page table.
#[derive(Debug, Default)]
pub struct MockPt {
    pub zaps: Mutex<Vec<(u64, u64)>>,
}

impl MockPt {
    pub fn zaps(&self) -> Vec<(u64, u64)> {
        self.zaps.lock().unwrap().clone()
    }
    /// Whether some zap covered all of `[start, end)`.
    pub fn zapped(&self, start: u64, end: u64) -> bool {
        self.zaps().iter().any(|&(s, e)| s <= start && end <= e)
    }
}

impl DevicePageTable for MockPt {
    fn zap(&self, start: u64, end: u64) {
        self.zaps.lock().unwrap().push((start, end));
    }
}

/// The mock platform.
#[derive(Debug, Default)]
pub struct MockPlatform {
    pub mm: MockMm,
    pub dma: MockDma,
    pub pt: MockPt,
    pub clock: AtomicU64,
    /// Added to the clock on every `now_ns` read.
    pub tick: AtomicU64,
}

impl MockPlatform {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_now(&self, ns: u64) {
        self.clock.store(ns, Ordering::SeqCst);
    }
    pub fn advance(&self, ns: u64) {
        self.clock.fetch_add(ns, Ordering::SeqCst);
    }
    pub fn set_tick(&self, ns: u64) {
        self.tick.store(ns, Ordering::SeqCst);
    }

    /// Panics if the crate violated a platform contract.
    pub fn assert_clean(&self) {
        let mm = self.mm.state();
        assert!(mm.errors.is_empty(), "mm errors: {:?}", mm.errors);
        drop(mm);
        let d = self.dma.state();
        assert!(d.errors.is_empty(), "dma errors: {:?}", d.errors);
    }
}

/// The mock platform's locks: the simulator's lock-order checker when it is built (the README's
/// `cargo test --all-features`), the default spin locks otherwise.
#[cfg(feature = "sim")]
pub type TestHost = gpusvm::sim::SimHost;
/// The mock platform's locks (see above).
#[cfg(not(feature = "sim"))]
pub type TestHost = gpusvm::DefaultHost;

impl Platform for MockPlatform {
    type Mm = MockMm;
    type Dma = MockDma;
    type Pt = MockPt;
    type Mem = NoDeviceMemory;
    type Host = TestHost;
    fn mm(&self) -> &MockMm {
        &self.mm
    }
    fn dma(&self) -> &MockDma {
        &self.dma
    }
    fn page_table(&self) -> &MockPt {
        &self.pt
    }
    fn now_ns(&self) -> u64 {
        let t = self.tick.load(Ordering::SeqCst);
        self.clock.fetch_add(t, Ordering::SeqCst)
    }
}

pub type MockSvm = Svm<MockPlatform>;

/// An Svm over `[0, 4 GiB)` with the default configuration and a 1 GiB writable VMA at 0.
pub fn svm_default() -> MockSvm {
    let p = MockPlatform::new();
    p.mm.add_vma(0, G, true);
    Svm::new(p, SvmConfig::new(0, 4 * G)).unwrap()
}

/// An Svm over `[mm_start, mm_start + mm_range)` with the default configuration and no VMA.
pub fn svm_with(mm_start: u64, mm_range: u64) -> MockSvm {
    Svm::new(MockPlatform::new(), SvmConfig::new(mm_start, mm_range)).unwrap()
}

/// One range as seen by a snapshot: (notifier interval, start, end, flags, pages valid).
pub type RangeRow = ((u64, u64), u64, u64, RangeFlags, bool);

/// Everything observable about an Svm and its platform, for "nothing changed" checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub ranges: Vec<RangeRow>,
    pub counts: (usize, usize),
    pub registered: Vec<(NotifierId, u64, u64)>,
    pub live_dma: BTreeMap<u64, DmaMapping>,
    pub zaps: usize,
    pub gc_pending: usize,
    pub stats: StatsSnapshot,
    pub closed: bool,
}

pub fn snapshot(svm: &MockSvm) -> Snapshot {
    let mut ranges = Vec::new();
    svm.for_each_range(|n, r| ranges.push((n, r.start(), r.end(), r.flags(), false)));
    for r in &mut ranges {
        r.4 = svm.find(r.1).is_some_and(|x| svm.pages_valid(&x));
    }
    let p = svm.platform();
    Snapshot {
        ranges,
        counts: svm.counts(),
        registered: p.mm.registered(),
        live_dma: p.dma.live(),
        zaps: p.pt.zaps().len(),
        gc_pending: svm.gc_pending(),
        stats: svm.stats(),
        closed: svm.is_closed(),
    }
}

/// Describe how two snapshots differ (field by field, briefly); empty if equal.
pub fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut out = String::new();
    if a.ranges != b.ranges {
        out += &format!("ranges: {:x?} -> {:x?}\n", a.ranges, b.ranges);
    }
    if a.counts != b.counts {
        out += &format!("counts: {:?} -> {:?}\n", a.counts, b.counts);
    }
    if a.registered != b.registered {
        out += &format!("registered: {:x?} -> {:x?}\n", a.registered, b.registered);
    }
    if a.live_dma != b.live_dma {
        let gone: Vec<_> = a
            .live_dma
            .keys()
            .filter(|k| !b.live_dma.contains_key(k))
            .take(4)
            .collect();
        let new: Vec<_> = b
            .live_dma
            .keys()
            .filter(|k| !a.live_dma.contains_key(k))
            .take(4)
            .collect();
        out += &format!(
            "live_dma: {} -> {} mappings (gone e.g. {gone:x?}, new e.g. {new:x?})\n",
            a.live_dma.len(),
            b.live_dma.len()
        );
    }
    if a.zaps != b.zaps {
        out += &format!("zaps: {} -> {}\n", a.zaps, b.zaps);
    }
    if a.gc_pending != b.gc_pending {
        out += &format!("gc_pending: {} -> {}\n", a.gc_pending, b.gc_pending);
    }
    if a.stats != b.stats {
        out += &format!("stats: {:?}\n    -> {:?}\n", a.stats, b.stats);
    }
    if a.closed != b.closed {
        out += &format!("closed: {} -> {}\n", a.closed, b.closed);
    }
    out
}

/// Assert that nothing observable changed since `before`.
#[track_caller]
pub fn assert_unchanged(svm: &MockSvm, before: &Snapshot, what: &str) {
    let now = snapshot(svm);
    let d = diff(before, &now);
    assert!(d.is_empty(), "{what}: state changed:\n{d}");
}
