//! A tiny platform for the loom models (`tests/loom_*.rs`), small enough for loom to explore.
//!
//! - [`LoomMm`]: one VMA of [`VMA_PAGES`] 4 KiB pages at [`BASE`] (the models' range is its
//!   first [`NPAGES`] pages, `[BASE, END)`; the rest can hold a bystander range that keeps the
//!   notifier alive); the frame number of each page is
//!   a **loom** atomic (accessed `Relaxed`), so the only thing ordering a collection against the
//!   thread that changes a frame is the crate's own protocol (sequence counter + notifier lock).
//! - [`LoomDma`]: `map_page` returns `pfn << 12` and records the mapping; `unmap_page` must hit a
//!   live mapping with the same address, order and direction, or a violation is recorded.
//! - [`LoomPt`]: records every zap.
//! - A clock that advances by one on every read.
//! - [`dev`] (`dev.rs`): the same platform **with device memory**, for the models of migration.
//!
//! The bookkeeping (mappings, zaps, registrations, the clock) is *ghost state*: it lives behind
//! `std` locks/atomics that loom does not see, with no loom operation inside a critical section.
//! That is deliberate: a loom-visible lock there would add happens-before edges between the
//! threads (every map/unmap would synchronise them) and could hide an ordering bug in the crate.
#![allow(dead_code)]

use gpusvm::platform::{
    AddressSpace, CollectRequest, CpuPage, DevicePageTable, DmaDirection, DmaMapper,
    NoDeviceMemory, NotifierId, Platform, Vma, VmaFlags, PAGE_SHIFT, PAGE_SIZE,
};
use gpusvm::{Error, PageEntry, Result, Svm, SvmConfig};
use loom::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex as Ghost;

/// Start of the only VMA (and of the only range).
pub const BASE: u64 = 0x10_0000;
/// Pages of the models' range `[BASE, END)`.
pub const NPAGES: usize = 2;
/// One past the models' range.
pub const END: u64 = BASE + NPAGES as u64 * PAGE_SIZE;
/// Pages in the VMA.
pub const VMA_PAGES: usize = 2 * NPAGES;
/// One past the VMA.
pub const VMA_END: u64 = BASE + VMA_PAGES as u64 * PAGE_SIZE;
/// The only notifier: `[0, NOTIFIER_SIZE)`.
pub const NOTIFIER_SIZE: u64 = 2 << 20;
/// Its id (its start).
pub const NID: NotifierId = NotifierId(0);
/// Initial frame of page `i` is `FRAME0 + i`.
pub const FRAME0: u64 = 0x100;

fn ghost<T>(m: &Ghost<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The CPU address space: one VMA, `NPAGES` present pages whose frames other threads change.
pub struct LoomMm {
    frames: Vec<AtomicU64>,
    /// Live registrations (handle serials), the last serial, and how many unregistrations
    /// happened.
    regs: Ghost<(Vec<u64>, u64, usize)>,
    /// Live registrations as `(id, start, end)`, for [`platform_invalidate`].
    ids: Ghost<Vec<(u64, NotifierId, u64, u64)>>,
    /// The platform's lock serialising notifier registration against a whole invalidation
    /// (like the simulator's mmap lock): a loom lock, as it is part of the protocol.
    reg_lock: loom::sync::Mutex<()>,
}

impl LoomMm {
    fn new() -> Self {
        LoomMm {
            frames: (0..VMA_PAGES as u64)
                .map(|i| AtomicU64::new(FRAME0 + i))
                .collect(),
            regs: Ghost::new((Vec::new(), 0, 0)),
            ids: Ghost::new(Vec::new()),
            reg_lock: loom::sync::Mutex::new(()),
        }
    }
    /// The CPU changes the mapping of page `i` (call between `invalidate_begin` and `_end`).
    pub fn set_frame(&self, i: usize, pfn: u64) {
        self.frames[i].store(pfn, Ordering::Relaxed);
    }
    /// The current frame of page `i`.
    pub fn frame(&self, i: usize) -> u64 {
        self.frames[i].load(Ordering::Relaxed)
    }
    /// (live registrations, unregistrations so far).
    pub fn registrations(&self) -> (usize, usize) {
        let g = ghost(&self.regs);
        (g.0.len(), g.2)
    }
}

impl AddressSpace for LoomMm {
    type NotifierHandle = u64;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        let v = Vma {
            start: BASE,
            end: VMA_END,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        };
        v.contains(addr).then_some(v)
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        assert_eq!(
            out.len() as u64,
            (req.end - req.start) / PAGE_SIZE,
            "collect_pages: out has the wrong length"
        );
        for (k, slot) in out.iter_mut().enumerate() {
            let a = req.start + k as u64 * PAGE_SIZE;
            if !(BASE..VMA_END).contains(&a) {
                if req.fault {
                    return Err(Error::Fault);
                }
                *slot = CpuPage::Absent;
                continue;
            }
            let i = ((a - BASE) / PAGE_SIZE) as usize;
            *slot = CpuPage::System {
                pfn: self.frame(i),
                order: 0,
                writable: true,
            };
        }
        Ok(())
    }

    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<u64> {
        let _r = self.reg_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut g = ghost(&self.regs);
        g.1 += 1;
        let h = g.1;
        g.0.push(h);
        ghost(&self.ids).push((h, id, start, end));
        Ok(h)
    }

    fn unregister_notifier(&self, handle: u64) {
        let _r = self.reg_lock.lock().unwrap_or_else(|e| e.into_inner());
        ghost(&self.ids).retain(|r| r.0 != handle);
        let mut g = ghost(&self.regs);
        let before = g.0.len();
        g.0.retain(|&h| h != handle);
        assert_eq!(
            g.0.len() + 1,
            before,
            "unregister of unknown handle {handle}"
        );
        g.2 += 1;
    }
}

/// What a platform's MMU notifier does around a CPU page-table change of `[start, end)`:
/// with registration locked out for the whole change, call `invalidate_begin` on every
/// registered notifier overlapping the interval, make the change, call `invalidate_end` on
/// the same notifiers. This is the platform contract of `AddressSpace::register_notifier`
/// followed to the letter.
pub fn platform_invalidate(
    svm: &Svm<LoomPlatform>,
    start: u64,
    end: u64,
    event: gpusvm::Event,
    change: impl FnOnce(&LoomMm),
) {
    let mm = &svm.platform().mm;
    let _r = mm.reg_lock.lock().unwrap_or_else(|e| e.into_inner());
    let targets: Vec<NotifierId> = ghost(&mm.ids)
        .iter()
        .filter(|r| r.2 < end && start < r.3)
        .map(|r| r.1)
        .collect();
    for id in &targets {
        svm.invalidate_begin(*id, start, end, event);
    }
    change(mm);
    for id in &targets {
        svm.invalidate_end(*id, start, end);
    }
}

/// One DMA mapping ever made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRec {
    pub addr: u64,
    pub order: u8,
    pub dir: DmaDirection,
    pub unmapped: bool,
}

/// The IOMMU: `map_page(pfn)` returns `pfn << 12`; every mapping is recorded.
#[derive(Default)]
pub struct LoomDma {
    log: Ghost<(Vec<MapRec>, Vec<String>)>,
}

impl LoomDma {
    /// Every mapping ever made, in order.
    pub fn log(&self) -> Vec<MapRec> {
        ghost(&self.log).0.clone()
    }
    /// Live mappings, as sorted `(addr, order)`.
    pub fn live(&self) -> Vec<(u64, u8)> {
        let mut v: Vec<(u64, u8)> = ghost(&self.log)
            .0
            .iter()
            .filter(|m| !m.unmapped)
            .map(|m| (m.addr, m.order))
            .collect();
        v.sort_unstable();
        v
    }
    /// Unmaps that did not match a live mapping (double unmaps, wrong order/direction).
    pub fn violations(&self) -> Vec<String> {
        ghost(&self.log).1.clone()
    }
}

impl DmaMapper for LoomDma {
    fn map_page(&self, pfn: u64, order: u8, dir: DmaDirection) -> Result<u64> {
        let addr = pfn << PAGE_SHIFT;
        ghost(&self.log).0.push(MapRec {
            addr,
            order,
            dir,
            unmapped: false,
        });
        Ok(addr)
    }

    fn unmap_page(&self, addr: u64, order: u8, dir: DmaDirection) {
        let mut g = ghost(&self.log);
        // Several live mappings may share an address (the same frame mapped twice): any one of
        // them is the one being unmapped.
        match g
            .0
            .iter_mut()
            .find(|m| !m.unmapped && m.addr == addr && m.order == order && m.dir == dir)
        {
            Some(m) => m.unmapped = true,
            None => {
                let msg =
                    format!("unmap of a mapping that is not live: {addr:#x} order {order} {dir:?}");
                g.1.push(msg);
            }
        }
    }
}

/// The device page table: records zaps.
#[derive(Default)]
pub struct LoomPt {
    zaps: Ghost<Vec<(u64, u64)>>,
}

impl LoomPt {
    /// Every zap, in order.
    pub fn zaps(&self) -> Vec<(u64, u64)> {
        ghost(&self.zaps).clone()
    }
}

impl DevicePageTable for LoomPt {
    fn zap(&self, start: u64, end: u64) {
        ghost(&self.zaps).push((start, end));
    }
}

/// The platform.
pub struct LoomPlatform {
    pub mm: LoomMm,
    pub dma: LoomDma,
    pub pt: LoomPt,
    clock: std::sync::atomic::AtomicU64,
}

impl Platform for LoomPlatform {
    type Mm = LoomMm;
    type Dma = LoomDma;
    type Pt = LoomPt;
    type Mem = NoDeviceMemory;
    type Host = gpusvm::DefaultHost;
    fn mm(&self) -> &LoomMm {
        &self.mm
    }
    fn dma(&self) -> &LoomDma {
        &self.dma
    }
    fn page_table(&self) -> &LoomPt {
        &self.pt
    }
    fn now_ns(&self) -> u64 {
        self.clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A fresh `Svm` over a fresh platform, with the retry budget cut to `max_attempts` so that a
/// collection that keeps meeting an invalidation in progress gives up (`Busy`) instead of
/// spinning through an unbounded loom schedule.
pub fn new_svm(max_attempts: u32) -> Svm<LoomPlatform> {
    new_svm_sized(max_attempts, NOTIFIER_SIZE)
}

/// As [`new_svm`], with notifiers of one range each: 8 KiB notifiers, so the VMA's two 8 KiB
/// ranges `[BASE, END)` and `[END, VMA_END)` lie in two notifiers (ids `BASE` and `END`).
pub fn new_svm_two_notifiers(max_attempts: u32) -> Svm<LoomPlatform> {
    new_svm_sized(max_attempts, END - BASE)
}

fn new_svm_sized(max_attempts: u32, notifier_size: u64) -> Svm<LoomPlatform> {
    let mut cfg = SvmConfig::new(0, NOTIFIER_SIZE)
        .with_chunk_sizes(&[END - BASE, PAGE_SIZE])
        .unwrap_or_else(|e| panic!("chunk sizes: {e:?}"));
    cfg.notifier_size = notifier_size;
    // No presence snapshot when choosing the chunk (keeps range creation trivial).
    cfg.check_pages_threshold = 0;
    cfg.retry.max_attempts = max_attempts;
    let p = LoomPlatform {
        mm: LoomMm::new(),
        dma: LoomDma::default(),
        pt: LoomPt::default(),
        clock: std::sync::atomic::AtomicU64::new(0),
    };
    Svm::new(p, cfg).unwrap_or_else(|e| panic!("Svm::new: {e:?}"))
}

/// The committed entries of `range` as sorted `(addr, order)`, or `None` if its pages are not
/// valid (read through `bind`, i.e. under the notifier lock).
pub fn committed(svm: &Svm<LoomPlatform>, range: &gpusvm::Range) -> Option<Vec<(u64, u8)>> {
    svm.bind(range, |_, entries: &[PageEntry]| {
        let mut v: Vec<(u64, u8)> = entries.iter().map(|e| (e.addr(), e.order())).collect();
        v.sort_unstable();
        v
    })
    .ok()
}

/// Check, inside `bind` (so no invalidation can run meanwhile), that valid pages map exactly
/// the current frames. Returns whether the pages were valid.
pub fn assert_bound_pages_current(svm: &Svm<LoomPlatform>, range: &gpusvm::Range) -> bool {
    svm.bind(range, |r, entries: &[PageEntry]| {
        assert_eq!(entries.len(), NPAGES, "one 4 KiB entry per page");
        for (i, e) in entries.iter().enumerate() {
            let cur = svm.platform().mm.frame(i);
            assert_eq!(
                e.addr() >> PAGE_SHIFT,
                cur,
                "STALE COMMIT: page {i} of [{:#x},{:#x}) maps frame {:#x}, the CPU maps {cur:#x}",
                r.start(),
                r.end(),
                e.addr() >> PAGE_SHIFT
            );
        }
    })
    .is_ok()
}

/// Common end-of-model checks: no double unmap, and the live DMA mappings are exactly the
/// committed entries (none if the pages are not valid).
pub fn assert_dma_consistent(svm: &Svm<LoomPlatform>, range: &gpusvm::Range) {
    let dma = &svm.platform().dma;
    assert_eq!(
        dma.violations(),
        Vec::<String>::new(),
        "DMA unmap violations"
    );
    let live = dma.live();
    match committed(svm, range) {
        Some(c) => assert_eq!(
            live, c,
            "live DMA mappings differ from the committed entries"
        ),
        None => assert_eq!(
            live,
            vec![],
            "DMA mappings live although the pages are not valid"
        ),
    }
}

/// Which outcomes the executions of one model reached (ghost state shared by all executions),
/// so a model can prove it exercised the interleavings it is about and not just the easy ones.
#[derive(Clone, Default)]
pub struct Coverage(std::sync::Arc<Ghost<(std::collections::BTreeSet<&'static str>, usize)>>);

impl Coverage {
    /// Record that one execution reached `what`.
    pub fn hit(&self, what: &'static str) {
        ghost(&self.0).0.insert(what);
    }
    /// Count one finished execution.
    pub fn execution(&self) {
        ghost(&self.0).1 += 1;
    }
    /// Panic unless every outcome in `expected` was reached; returns the number of executions.
    pub fn expect(&self, expected: &[&'static str]) -> usize {
        let g = ghost(&self.0);
        for e in expected {
            assert!(
                g.0.contains(e),
                "no execution reached {e:?}; reached: {:?}",
                g.0
            );
        }
        g.1
    }
}

pub mod dev;
