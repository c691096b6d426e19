//! Page state without a range tree: a `Userptr` over a mmap'd buffer, registered as its own
//! notifier sink with the simulated address space. A userptr checker runs after every step:
//! every live DMA mapping of the device belongs to exactly one entry of the (valid) userptr,
//! and every entry maps the frame the CPU maps at that address.
#![cfg(feature = "sim")]

use gpusvm::pages::{Protocol, RetryPolicy};
use gpusvm::platform::{DmaDirection, NotifierId, VmaFlags, HUGE_ORDER, PAGE_SIZE};
use gpusvm::sim::{InvalidationSink, SimDevice, SimGpu, SimMm, SimWorld};
use gpusvm::{Error, Event, PageEntry, PagesCtx, Userptr};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const P: u64 = PAGE_SIZE;
const K64: u64 = 64 << 10;

/// The driver's userptr object: forwards notifier callbacks, zaps nothing (it keeps no device
/// page table of its own), and logs the events.
struct UserptrSink {
    up: Userptr,
    dev: Arc<SimDevice>,
    log: Mutex<Vec<(u64, u64, Event)>>,
}

impl InvalidationSink for UserptrSink {
    fn invalidate_begin(&self, _id: NotifierId, start: u64, end: u64, event: Event) {
        self.log.lock().unwrap().push((start, end, event));
        self.up.invalidate_begin(&*self.dev, start, end);
    }
    fn invalidate_end(&self, _id: NotifierId, _start: u64, _end: u64) {
        self.up.invalidate_end();
    }
}

struct Fixture {
    mm: Arc<SimMm>,
    /// Provides the platform (address space + this device's IOMMU); its own Svm stays unused.
    gpu: SimGpu,
    sink: Arc<UserptrSink>,
    handle: u64,
    steps: usize,
}

impl Fixture {
    fn new(huge: bool, len: u64) -> (Fixture, u64) {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
        let buf = mm.mmap(len, RW, huge).unwrap();
        let sink = Arc::new(UserptrSink {
            up: Userptr::new(buf, buf + len).unwrap(),
            dev: gpu.dev.clone(),
            log: Mutex::new(Vec::new()),
        });
        let weak: Weak<dyn InvalidationSink> = Arc::downgrade(&(sink.clone() as Arc<_>));
        let slot = mm.add_sink(weak);
        let handle = mm.register(slot, NotifierId(buf), buf, buf + len).unwrap();
        let mut f = Fixture {
            mm,
            gpu,
            sink,
            handle,
            steps: 0,
        };
        f.check("setup");
        (f, buf)
    }

    fn up(&self) -> &Userptr {
        &self.sink.up
    }

    fn get_pages(&mut self, ctx: &PagesCtx) -> gpusvm::Result<()> {
        let r = self
            .up()
            .get_pages(self.gpu.svm.platform(), ctx, &RetryPolicy::default());
        self.check("get_pages");
        r
    }

    fn entries(&self) -> Vec<PageEntry> {
        self.up().bind(|_, e| e.to_vec()).unwrap_or_default()
    }

    /// The userptr invariants (the analogue of `check_invariants` for a userptr).
    fn check(&mut self, what: &str) {
        self.steps += 1;
        let step = self.steps;
        let dev = &self.gpu.dev;
        assert!(
            dev.dma_violations().is_empty(),
            "step {step} ({what}): {:?}",
            dev.dma_violations()
        );
        let maps: BTreeMap<u64, _> = dev.dma_mappings().into_iter().collect();
        let (m, u) = dev.dma_counts();
        assert_eq!(m - u, maps.len() as u64, "step {step} ({what})");
        let up = self.up();
        if !up.pages_valid() {
            assert!(
                maps.is_empty(),
                "step {step} ({what}): invalid userptr but {} live mappings",
                maps.len()
            );
            return;
        }
        let entries = self.entries();
        assert_eq!(entries.len(), maps.len(), "step {step} ({what})");
        let mut va = up.start();
        for e in &entries {
            assert_eq!(e.protocol(), Protocol::SYSTEM);
            let dm = maps
                .get(&e.addr())
                .unwrap_or_else(|| panic!("step {step} ({what}): {e:?} not mapped"));
            assert_eq!((dm.order, dm.dir), (e.order(), e.dir()));
            for i in 0..e.npages() {
                let cpu = self.mm.pte(va + i * P).unwrap_or_else(|| {
                    panic!("step {step} ({what}): {va:#x} not mapped by the CPU")
                });
                assert_eq!(
                    cpu.pfn,
                    dm.pfn + i,
                    "step {step} ({what}): stale frame at {:#x}",
                    va + i * P
                );
            }
            va += e.size();
        }
        assert_eq!(
            va,
            up.end(),
            "step {step} ({what}): entries do not cover the userptr"
        );
    }
}

#[test]
fn userptr_get_pages_bind_invalidate_free() {
    let len = 256 << 10;
    let (mut f, buf) = Fixture::new(false, len);
    for a in (buf..buf + len).step_by(P as usize) {
        f.mm.write_u64(a, a).unwrap();
    }
    f.check("cpu fill");
    assert!(!f.up().pages_valid());
    assert_eq!(f.up().bind(|_, _| ()), Err(Error::Again));

    f.get_pages(&PagesCtx::default()).unwrap();
    assert!(f.up().pages_valid());
    let e = f.entries();
    assert_eq!(e.len(), 64);
    assert!(e.iter().all(|e| e.dir() == DmaDirection::Bidirectional));
    assert_eq!(f.up().bind(|start, e| (start, e.len())), Ok((buf, 64)));
    // A still-valid state is reused: no new mapping.
    let counts = f.gpu.dev.dma_counts();
    f.get_pages(&PagesCtx::default()).unwrap();
    assert_eq!(f.gpu.dev.dma_counts(), counts);
    // CPU writes to present pages change no mapping.
    f.mm.write_u64(buf + 8, 1).unwrap();
    f.check("cpu write");
    assert!(f.up().pages_valid());

    // MADV_DONTNEED inside: the userptr is invalidated, its mappings go.
    f.mm.madvise_dontneed(buf + K64, K64).unwrap();
    f.check("madvise");
    assert!(!f.up().pages_valid());
    assert!(f.gpu.dev.dma_mappings().is_empty());
    assert_eq!(
        f.sink.log.lock().unwrap().last().copied(),
        Some((buf + K64, buf + 2 * K64, Event::Clear))
    );
    f.get_pages(&PagesCtx::default()).unwrap();
    assert_eq!(f.entries().len(), 64);
    assert_eq!(f.mm.read_u64(buf + K64), Ok(0));
    assert_eq!(f.mm.read_u64(buf + 2 * K64), Ok(buf + 2 * K64));

    // An invalidation outside the userptr does not touch it.
    let other = f.mm.mmap(K64, RW, false).unwrap();
    f.mm.write_u64(other, 1).unwrap();
    f.mm.munmap(other, K64).unwrap();
    f.check("unrelated munmap");
    assert!(f.up().pages_valid());

    // munmap of part of the buffer: invalidated; a new collection fails (no VMA there) and
    // leaves nothing mapped.
    f.mm.munmap(buf + 3 * K64, K64).unwrap();
    f.check("munmap");
    assert!(!f.up().pages_valid());
    assert_eq!(
        f.sink.log.lock().unwrap().last().copied(),
        Some((buf + 3 * K64, buf + 4 * K64, Event::Unmap))
    );
    assert_eq!(f.get_pages(&PagesCtx::default()), Err(Error::Fault));
    assert!(f.gpu.dev.dma_mappings().is_empty());

    // Map the hole again: the userptr works again; then free it.
    f.mm.mmap_fixed(buf + 3 * K64, K64, RW, false).unwrap();
    f.get_pages(&PagesCtx::default()).unwrap();
    assert!(f.up().pages_valid());
    f.up().unmap_pages(&*f.gpu.dev);
    f.check("unmap_pages");
    assert!(!f.up().pages_valid());
    f.up().unmap_pages(&*f.gpu.dev);
    f.check("unmap_pages again (idempotent)");
    f.get_pages(&PagesCtx::default()).unwrap();
    f.up().free_pages(&*f.gpu.dev);
    f.check("free_pages");
    assert!(f.gpu.dev.dma_mappings().is_empty());
    let (m, u) = f.gpu.dev.dma_counts();
    assert_eq!(m, u);
    f.mm.unregister(f.handle);
    assert!(f.mm.notifiers().is_empty());
    // Nothing arrives after unregistering.
    let n = f.sink.log.lock().unwrap().len();
    f.mm.munmap(buf, len).unwrap();
    assert_eq!(f.sink.log.lock().unwrap().len(), n);
}

#[test]
fn userptr_read_only_and_huge_pages() {
    let (mut f, buf) = Fixture::new(true, 2 << 20);
    f.mm.write_u64(buf, 7).unwrap();
    let ro = PagesCtx {
        read_only: true,
        ..PagesCtx::default()
    };
    f.get_pages(&ro).unwrap();
    let e = f.entries();
    assert_eq!(e.len(), 1, "one entry for the 2 MiB huge page");
    assert_eq!(
        (e[0].order(), e[0].dir()),
        (HUGE_ORDER, DmaDirection::ToDevice)
    );
    assert!(!e[0].writable());
    // A writable collection is needed now: the read-only state does not satisfy it.
    f.get_pages(&PagesCtx::default()).unwrap();
    let e = f.entries();
    assert_eq!((e.len(), e[0].dir()), (1, DmaDirection::Bidirectional));
    // fork write-protects: invalidated; a read-only collection maps the shared frame, a
    // writable one breaks copy-on-write first and maps the private copy.
    let child = f.mm.fork();
    f.check("fork");
    assert!(!f.up().pages_valid());
    f.get_pages(&ro).unwrap();
    assert_eq!(f.entries()[0].order(), HUGE_ORDER);
    f.get_pages(&PagesCtx::default()).unwrap();
    assert!(f.mm.pte(buf).is_some_and(|p| p.writable && !p.cow));
    assert_ne!(f.mm.pte(buf).map(|p| p.pfn), child.pte(buf).map(|p| p.pfn));
    assert_eq!(f.entries().len(), 512, "copy-on-write split the huge page");
    assert_eq!(child.read_u64(buf), Ok(7));
    assert_eq!(f.mm.read_u64(buf), Ok(7));
}

#[test]
fn userptr_rejects_bad_bounds() {
    assert_eq!(Userptr::new(0x1000, 0x1000).err(), Some(Error::Invalid));
    assert_eq!(Userptr::new(0x1001, 0x3000).err(), Some(Error::Invalid));
    assert_eq!(Userptr::new(0x3000, 0x1000).err(), Some(Error::Invalid));
}

#[test]
fn userptr_collection_raced_by_an_invalidation_is_retried() {
    let (mut f, buf) = Fixture::new(false, 128 << 10);
    for a in (buf..buf + (128 << 10)).step_by(P as usize) {
        f.mm.write_u64(a, a).unwrap();
    }
    // During the first collection the CPU write-protects and re-enables the buffer (the
    // frames stay alive): the collection must be dropped and redone.
    let mut fired = false;
    f.mm.set_collect_hook(Some(Box::new(move |mm: &Arc<SimMm>| {
        if !fired {
            fired = true;
            mm.mprotect(buf, 128 << 10, VmaFlags::READ).unwrap();
            mm.mprotect(buf, 128 << 10, RW).unwrap();
        }
    })));
    let counts = f.gpu.dev.dma_counts();
    f.get_pages(&PagesCtx::default()).unwrap();
    // The raced collection was dropped before it was DMA-mapped (its sequence had moved when
    // the notifier lock was taken); only the second one was mapped.
    let (m, u) = f.gpu.dev.dma_counts();
    assert_eq!((m - counts.0, u - counts.1), (32, 0));
    assert_eq!(f.entries().len(), 32);
    assert_eq!(f.sink.log.lock().unwrap().len(), 2);
}
