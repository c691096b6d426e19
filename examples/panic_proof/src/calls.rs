//! The calls: every public entry point of the crate, with opaque inputs. Results are handed to
//! `black_box` and otherwise dropped: what a call returns does not matter here, only that no
//! panic is reachable from it.
#![allow(unused_must_use)]

use crate::platform::OpaqueDma;
use crate::platform::{OpaqueMem, OpaquePlatform, ProofAlloc, ProofHost};
use core::hint::black_box as b;
use gpusvm::heap::{AllocCtx, Arc, Pool, Vec};
use gpusvm::migrate::{self, MigrateDetails};
use gpusvm::pagemap::{DevmemAlloc, OwnerRegistry, Pagemap, PeerId};
use gpusvm::pages::{PageEntry, PageState, PagesCtx, Protocol, RetryPolicy, Userptr};
use gpusvm::platform::{DmaDirection, NotifierId, OwnerId, PagemapId, Platform};
use gpusvm::policy::{
    self, AttrStore, AttrUpdate, Attrs, DecisionInput, DeviceCaps, DeviceTarget, PolicyConfig,
    RangeHistory, RawAttr,
};
use gpusvm::range::{self, ChunkQuery, Range, RangeIndex, RangeTree, SeqCounter};
use gpusvm::sync::{class, Mutex, RwLock};
use gpusvm::{Access, Error, Event, Svm, SvmConfig, Window};

type Pm = Pagemap<OpaqueMem, ProofHost>;

/// Call everything.
pub fn all() {
    vocabulary();
    containers();
    locks();
    range_tree();
    range_index();
    policy_fns();
    owners();
    userptr();
    attrs();
    page_state();
    pool();
    svm();
}

fn vocabulary() {
    let e: Error = b(Error::Busy);
    use core::fmt::Write;
    let _ = write!(Sink, "{e} {e:?}");
    b(e.errno());
    b(e.name());
    b(Error::from_errno(b(-12)));
    if let Ok(p) = PageEntry::new(b(0x1000), b(3), b(DmaDirection::ToDevice), Protocol(b(1))) {
        b((
            p.addr(),
            p.order(),
            p.npages(),
            p.size(),
            p.dir(),
            p.writable(),
            p.protocol(),
        ));
    }
    b(Access::writes(b(Access::Atomic)));
    b(Window {
        start: b(0),
        end: b(1),
    }
    .contains(b(3)));
    let cfg = SvmConfig::new(b(0), b(1 << 47));
    b(cfg.mm_end());
    b(cfg.validate());
    b(cfg.with_chunk_sizes(&[b(2 << 20), b(64 << 10), b(4 << 10)]));
}

fn containers() {
    let c = b(AllocCtx::MaySleep);
    let mut v: Vec<u64, ProofAlloc> = Vec::new();
    b(v.push(b(1), c));
    b(v.reserve(b(9), c));
    b(v.push_within_capacity(b(2)));
    b(v.insert(b(1), b(3), c));
    b(v.insert_within_capacity(b(0), b(4)));
    b(v.extend_from_slice(&[b(5), b(6)], c));
    b(v.resize(b(12), b(7), c));
    gpusvm::heap::sort::sort_unstable(&mut v);
    gpusvm::heap::sort::sort_unstable_by_key(&mut v, |x| b(*x));
    v.retain(|x| b(*x) > 2);
    b(v.remove(b(1)));
    b(v.swap_remove(b(2)));
    v.remove_range(b(1), b(3));
    b(v.pop());
    b(v.try_clone(c));
    v.truncate(b(2));
    b(v.iter().sum::<u64>());
    for x in v {
        b(x);
    }
    if let Ok(a) = Arc::<u64, ProofAlloc>::try_new(b(5), c) {
        let mut a2 = a.clone();
        b(Arc::ptr_eq(&a, &a2));
        b(Arc::strong_count(&a));
        b(Arc::get_mut(&mut a2).map(|x| *x));
        let raw = Arc::into_raw(a2);
        // SAFETY: `raw` came from `into_raw` just above and is turned back once.
        drop(unsafe { Arc::<u64, ProofAlloc>::from_raw(raw) });
        b(*a);
    }
}

fn locks() {
    let m: Result<Mutex<ProofHost, u64>, _> = Mutex::new(&class::GC_QUEUE, b(1));
    if let Ok(mut m) = m {
        *m.get_mut() += 1;
        *m.lock() += 1;
        b(m.try_lock().map(|g| *g));
    }
    let l: Result<RwLock<ProofHost, u64>, _> = RwLock::new(&class::NOTIFIER, b(1));
    if let Ok(mut l) = l {
        *l.get_mut() += 1;
        *l.write() += 1;
        b(*l.read());
        b(l.try_read().map(|g| *g));
        b(l.try_write().map(|g| *g));
    }
    let s = SeqCounter::new();
    s.begin();
    b(s.read_begin());
    b(s.in_progress());
    s.end();
    b(s.read_retry(b(0)));
    b(s.current());
}

fn range_tree() {
    let mut t: RangeTree<ProofHost> = RangeTree::with_host();
    for i in 0..4u64 {
        if let Ok(r) = Range::<ProofHost>::with_host(b(i << 21), b((i + 1) << 21)) {
            b((
                r.start(),
                r.end(),
                r.size(),
                r.npages(),
                r.contains(b(5)),
                r.overlaps(b(1), b(9)),
            ));
            b((r.is_linked(), r.flags(), r.placed_ns()));
            b(t.insert(r));
        }
    }
    b((t.len(), t.is_empty(), t.find(b(0x1000)).map(|r| r.start())));
    b(t.find_arc(b(0x1000)).map(|r| r.end()));
    b(t.last_overlapping(b(0), b(1 << 22)).map(|r| r.start()));
    b(t.any_overlap(b(0), b(1 << 22)));
    let o = t.overlapping(b(0), b(1 << 23));
    b(o.peek().map(|r| r.start()));
    b(o.peek_arc().map(|r| r.start()));
    b(o.count());
    b(t.iter().count());
    if let Some(r) = t.find_arc(b(0)) {
        b(t.remove(&r).map(|r| r.start()));
    }
    b(t.pop_front().map(|r| r.start()));
    let sizes = [b(2 << 20), b(64 << 10), b(4 << 10)];
    let q = ChunkQuery {
        addr: b(0x1234_5000),
        vma: (b(0), b(1 << 40)),
        notifier: (b(0), b(1 << 29)),
        window: (b(0), b(u64::MAX)),
        chunk_sizes: &sizes,
        check_pages_threshold: b(64 << 10),
    };
    b(range::select_chunk(
        &q,
        |s, e| b(s ^ e) & 1 == 0,
        |s, e| b(s ^ e) & 2 == 0,
    ));
}

fn range_index() {
    b(range::slot_size_for(b(512 << 20), b(2 << 20)));
    let Ok(mut t) = RangeIndex::<ProofHost>::new(b(0), b(1 << 30), b(2 << 20), AllocCtx::MaySleep)
    else {
        return;
    };
    for i in 0..4u64 {
        if let Ok(r) = Range::<ProofHost>::with_host(b(i << 12), b((i + 1) << 12)) {
            let mut spare = match t.spare_needed(b(i << 12)) {
                Some(n) => RangeIndex::<ProofHost>::alloc_spare(b(n), AllocCtx::MaySleep).ok(),
                None => None,
            };
            b(spare.as_ref().map(|s| (s.capacity(), s.is_empty())));
            b(t.insert_within_capacity(r, &mut spare));
        }
        if let Ok(r) = Range::<ProofHost>::with_host(b(i << 21), b((i + 1) << 21)) {
            b(t.insert(r, AllocCtx::MaySleep));
        }
    }
    b((
        t.len(),
        t.is_empty(),
        t.heap_bytes(),
        t.start(),
        t.end(),
        t.slot_size(),
    ));
    b(t.find(b(0x1000)).map(|r| r.start()));
    b(t.find_arc(b(0x1000)).map(|r| r.end()));
    b(t.last_overlapping(b(0), b(1 << 22)).map(|r| r.start()));
    b(t.any_overlap(b(0), b(1 << 22)));
    let o = t.overlapping(b(0), b(1 << 23));
    b(o.peek().map(|r| r.start()));
    b(o.peek_arc().map(|r| r.start()));
    b(o.count());
    b(t.iter().count());
    if let Some(r) = t.find_arc(b(0)) {
        b(t.remove(&r).map(|r| r.start()));
    }
    b(t.pop_front().map(|r| r.start()));
}

fn policy_fns() {
    let raw = RawAttr {
        kind: b(1),
        value: b(2),
        ..RawAttr::default()
    };
    let u = b(raw.decode());
    let cfg = PolicyConfig::default();
    let input = DecisionInput {
        range_size: b(2 << 20),
        access: b(Access::Read),
        attrs: b(Attrs::default()),
        caps: DeviceCaps {
            has_devmem: b(true),
            default_to_devmem: b(true),
        },
        history: RangeHistory {
            migrate_failed: b(false),
        },
    };
    b(policy::decide(&input, &cfg));
    let da = policy::device_atomics(b(policy::AtomicPolicy::Device), &cfg);
    b(da.allows_protocol(Protocol(b(2))));
    if let Ok(p) = PageEntry::new(b(0), b(0), DmaDirection::ToDevice, Protocol(b(0))) {
        b(da.allows(p));
    }
    if let Ok(u) = u {
        b((u.is_empty(), u.apply(b(Attrs::default()))));
    }
}

fn owners() {
    let reg: Result<OwnerRegistry<_, ProofHost>, _> =
        OwnerRegistry::with_host(|a: PeerId, c: PeerId| b(a.0 ^ c.0) & 1 == 0);
    let Ok(reg) = reg else {
        return;
    };
    b(reg.join(PeerId(b(1))));
    b(reg.join_all(&[PeerId(b(2)), PeerId(b(3))]));
    b(reg.owner_of(PeerId(b(2))));
    b(reg.members(OwnerId(b(1))));
    b(reg.owners());
    b(reg.leave(PeerId(b(3))));
}

fn userptr() {
    let p = OpaquePlatform::default();
    if let Ok(u) = Userptr::<ProofHost>::with_host(b(0x10_0000), b(0x20_0000)) {
        b((u.start(), u.end()));
        b(u.get_pages(&p, &b(PagesCtx::default()), &b(RetryPolicy::default())));
        b(u.pages_valid());
        b(u.bind(|a, e| b(a) ^ e.len() as u64));
        u.invalidate_begin(p.dma(), b(0), b(1 << 20));
        u.invalidate_end();
        b(u.invalidate_begin_nonblock(p.dma(), b(0), b(1 << 20)));
        u.invalidate_end();
        u.unmap_pages(p.dma());
        u.free_pages(p.dma());
    }
}

fn pagemap_and_migration(svm: &Svm<OpaquePlatform>, pm: &Arc<Pm, ProofAlloc>) {
    b((
        pm.id(),
        pm.owner(),
        pm.live_allocations(),
        pm.released_allocations(),
    ));
    b((pm.cpu_fault_migrations(), pm.stray_frees()));
    if let Some(a) = pm.alloc_of(b(3)) {
        dev_alloc(&a);
    }
    if let Ok(all) = pm.allocations() {
        for a in all.iter() {
            dev_alloc(a);
        }
    }
    pm.page_free(b(3));
    pm.pages_free(&[b(3), b(4), b(9)]);
    b(pm.migrate_to_ram(svm.platform().mm(), b(0x1000), b(3)));
    let d = MigrateDetails {
        timeslice_ns: b(0),
        can_migrate_same_pagemap: b(true),
        source_peer_migrates: b(false),
    };
    b(migrate::to_devmem(
        svm.platform().mm(),
        &**pm,
        b(0),
        b(2 << 20),
        &d,
    ));
    b(migrate::to_ram(
        svm.platform().mm(),
        &**pm,
        b(0),
        b(2 << 20),
    ));
    let peers = |id: PagemapId| if b(id.0) == 1 { Some(pm.clone()) } else { None };
    let mut seen = 0u32;
    let mut trace_d = |s: migrate::ToDevmemState| seen ^= b(s as u32);
    b(migrate::to_devmem_traced(
        svm.platform().mm(),
        &**pm,
        &peers,
        b(0),
        b(2 << 20),
        &d,
        Some(&mut trace_d),
    ));
    let mut trace_r = |s: migrate::ToRamState| seen ^= b(s as u32);
    b(migrate::to_ram_traced(
        svm.platform().mm(),
        &**pm,
        b(0),
        b(2 << 20),
        Some(&mut trace_r),
    ));
    b(seen);
}

fn attrs() {
    let mut st: AttrStore<ProofHost> = AttrStore::default();
    let u = AttrUpdate {
        preferred: b(Some(policy::PreferredLoc::System)),
        migration: b(None),
        atomic: b(Some(policy::AtomicPolicy::Global)),
    };
    b(st.would_change(b(0), b(1 << 21), &u));
    b(st.set(b(0), b(1 << 21), &u, b(AllocCtx::MaySleep)));
    b(st.set(
        b(4096),
        b(8192),
        &b(AttrUpdate::default()),
        b(AllocCtx::NoSleep),
    ));
    b((st.segments(), st.get(b(4096)), st.extent(b(4096))));
    b(st.iter().count());
    if let Ok(c) = st.try_clone(b(AllocCtx::MaySleep)) {
        b(c == st);
    }
    st.clear();
}

fn page_state() {
    let mut ps: PageState<ProofHost> = PageState::new();
    b((
        ps.flags(),
        ps.valid(),
        ps.satisfies(&b(PagesCtx::default())),
    ));
    b((ps.entries().len(), ps.pagemap(), ps.capacity_entries()));
    ps.unmap(&OpaqueDma);
    ps.free(&OpaqueDma);
}

/// A sink for `Display`.
struct Sink;

impl core::fmt::Write for Sink {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        b(s.len());
        Ok(())
    }
}

fn pool() {
    let p: Pool<8> = Pool::new();
    if let Ok(l) = core::alloc::Layout::from_size_align(b(100), b(8)) {
        if let Some(x) = p.allocate(l) {
            b(p.used_blocks());
            // SAFETY: `x` came from this pool with `l` and is freed once.
            unsafe { p.deallocate(x, l) };
        }
    }
    b(p.blocks());
    gpusvm::sync::spin_hint();
}

fn dev_alloc(a: &DevmemAlloc<ProofHost>) {
    b((
        a.pagemap(),
        a.va(),
        a.dpfns().len(),
        a.runs().len(),
        a.live_pages(),
    ));
    a.set_timeslice_end(b(a.timeslice_end()));
    b((a.index_of(b(3)), a.contains(b(3)), a.page_live(b(3))));
    b(a.put_page(b(3)));
}

fn svm() {
    let Ok(svm) = Svm::new(OpaquePlatform::default(), SvmConfig::new(b(0), b(1 << 47))) else {
        return;
    };
    b((
        svm.config().mm_end(),
        svm.stats(),
        svm.is_closed(),
        svm.counts(),
    ));
    let Ok(pm) = Pm::new(PagemapId(b(1)), OwnerId(b(1)), OpaqueMem::default()) else {
        return;
    };
    b(svm.set_pagemap(Some(pm.clone())));
    b(svm.attach_pagemap(pm.clone()));
    b(svm.pagemap().map(|p| p.id()));
    b(svm.pagemap_by_id(PagemapId(b(1))).map(|p| p.id()));
    svm.set_owner(Some(OwnerId(b(1))));
    b(svm.owner());
    let addr = b(0x4000_0000);
    let w = b(Window::ALL);
    let ctx = b(PagesCtx::default());
    b(svm
        .handle_fault(addr, b(Access::Write), w)
        .map(|r| r.start()));
    b(svm
        .handle_fault_and_bind(addr, b(Access::Atomic), w, |r, e| {
            b(r.start()) ^ e.len() as u64
        })
        .map(|(r, x)| r.start() ^ x));
    if let Ok(r) = svm.find_or_insert(addr, w, &ctx) {
        b(svm.get_pages(&r, &ctx));
        b(svm.pages_valid(&r));
        b(svm.bind(&r, |r, e| b(r.start()) ^ e.len() as u64));
        b(svm.device_atomics(&r));
        let d = MigrateDetails::default();
        b(svm.migrate_to_devmem(&r, &d));
        b(svm.evict(&r));
        b(svm.place_in(&r, b(DeviceTarget::Local), b(0)));
        b(svm.unmap_pages(&r));
        b(svm.free_pages(&r));
        b(svm.remove(&r));
    }
    b(svm.find(addr).map(|r| r.start()));
    svm.for_each_range(|(s, e), r| {
        b((s, e, r.start()));
    });
    b(svm.attrs_at(addr));
    b(svm.set_attrs(addr, b(2 << 20), &b(AttrUpdate::default())));
    b(svm.set_attrs_raw(
        addr,
        b(2 << 20),
        &[RawAttr {
            kind: b(1),
            value: b(1),
            ..RawAttr::default()
        }],
    ));
    b(svm.prefetch(addr, b(2 << 20), b(policy::PrefetchLoc::Device)));
    pagemap_and_migration(&svm, &pm);
    let id = NotifierId(b(0));
    let ev = b(Event::Unmap);
    svm.invalidate_begin(id, addr, b(addr + (2 << 20)), ev);
    svm.invalidate_end(id, addr, b(addr + (2 << 20)));
    b(svm.invalidate_begin_nonblock(id, addr, b(addr + (2 << 20)), ev));
    svm.invalidate_end(id, addr, b(addr + (2 << 20)));
    b(svm.gc_pending());
    b(svm.gc_run());
    b(svm.detach_pagemap(PagemapId(b(1))).map(|p| p.id()));
    svm.close();
}
