//! The machine the calls run on: the simulated CPU and devices with the harness's own objects
//! (range tree, owner registry, attribute store), how a call's specifications resolve to
//! arguments, the shared checks of a call's outcome, and the checks after every step and at
//! the end.

use super::{
    chunks_of, linked_peers, same_pagemap, typed, ConfigSpec, CtxSpec, FrameSpec, Id, NotifierSpec,
    Num, RArc, RangeRef, Setup, UpdateSpec, ARENA, ARENA_END, MAX_DEVMEM_RETRIES, MAX_KNOWN,
    MAX_RETRY_ATTEMPTS, SLOT, TOP47, TOP64, TOP64_END,
};
use crate::pagemap::{OwnerRegistry, PeerId};
use crate::pages::RetryPolicy;
use crate::platform::{NotifierId, OwnerId, PagemapId, VmaFlags, PAGE_SHIFT, PAGE_SIZE};
use crate::policy::{
    AtomicPolicy, AttrStore, AttrUpdate, Attrs, MigrationPolicy, PolicyConfig, PreferredLoc,
};
use crate::range::RangeTree;
use crate::sim::{check_closed, check_invariants, lock, SimGpu, SimHost, SimMm, SimWorld};
use crate::{Error, PagesCtx, Range, SvmConfig, Window};
use std::collections::BTreeSet;
use std::format;
use std::string::String;
use std::sync::Arc;
use std::vec::Vec;

/// The machine the ops run on.
pub(super) struct Harness {
    pub(super) world: Arc<SimWorld>,
    pub(super) mm: Arc<SimMm>,
    pub(super) gpus: Vec<SimGpu>,
    /// Whether each device was closed.
    pub(super) closed: Vec<bool>,
    /// Range objects seen (from the devices, `Range::new`, removals), oldest first.
    pub(super) known: Vec<RArc>,
    /// The harness's own range tree and its model (start, end, object).
    pub(super) tree: RangeTree<SimHost>,
    pub(super) tree_model: Vec<RArc>,
    /// The harness's owner registry and its members.
    pub(super) owners: OwnerRegistry<fn(PeerId, PeerId) -> bool>,
    pub(super) members: BTreeSet<u64>,
    /// The harness's attribute store.
    pub(super) attrs: AttrStore,
    /// Device ids handed to `SvmNew` devices.
    pub(super) next_id: u32,
}

impl Harness {
    pub(super) fn new(setup: &Setup) -> Result<Harness, String> {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let rw = VmaFlags::READ | VmaFlags::WRITE;
        let maps = [
            (0, SLOT, rw, false),
            (ARENA, SLOT, rw, true),
            (ARENA + SLOT, SLOT, rw, false),
            (ARENA + 2 * SLOT, SLOT, VmaFlags::READ, false),
            (TOP47, SLOT, rw, true),
            (TOP64, TOP64_END - TOP64, rw, false),
        ];
        for (addr, len, flags, huge) in maps {
            mm.mmap_fixed(addr, len, flags, huge)
                .map_err(|e| format!("setup mmap_fixed({addr:#x}, {len:#x}): {e:?}"))?;
        }
        let n = if setup.two_devices { 2 } else { 1 };
        if setup.link && n == 2 {
            world.link(0, 1);
        }
        let mut h = Harness {
            world,
            mm,
            gpus: Vec::new(),
            closed: Vec::new(),
            known: Vec::new(),
            tree: RangeTree::with_host(),
            tree_model: Vec::new(),
            // The default facet's spinning lock: its creation cannot fail.
            #[allow(clippy::expect_used)]
            owners: OwnerRegistry::new(linked_peers as fn(PeerId, PeerId) -> bool)
                .expect("SpinHost creates its locks infallibly"),
            members: BTreeSet::new(),
            attrs: AttrStore::new(),
            next_id: 8,
        };
        for (i, spec) in setup.devices.iter().take(n).enumerate() {
            let id = i as u32;
            let pages = match spec.vram % 4 {
                0 => 0,
                1 => 64,
                2 => 512,
                _ => 2048,
            };
            let default = || {
                let mut c = SvmConfig::new(0, 1 << 47);
                c.prefer_devmem = pages > 0;
                c
            };
            let cfg = match &spec.config {
                Some(c) => {
                    let cfg = h.config(c);
                    match cfg.validate() {
                        Ok(()) => cfg,
                        Err(e) => {
                            typed(e)?;
                            if e != Error::Invalid {
                                return Err(format!("validate: {e:?} for {cfg:?}"));
                            }
                            default()
                        }
                    }
                }
                None => default(),
            };
            let g = SimGpu::join_with(&h.mm, id, pages, cfg)
                .map_err(|e| format!("setup device {id}: {e:?}"))?;
            h.gpus.push(g);
            h.closed.push(false);
        }
        Ok(h)
    }

    /// The configuration a spec names (retry budgets capped, see the module docs).
    pub(super) fn config(&self, c: &ConfigSpec) -> SvmConfig {
        let mut cfg = SvmConfig::new(c.mm_start.value(self), c.mm_range.value(self));
        cfg.notifier_size = c.notifier_size.value(self);
        cfg.chunk_sizes = heapless::Vec::new();
        for s in chunks_of(&c.chunks, self) {
            let _ = cfg.chunk_sizes.push(s);
        }
        cfg.check_pages_threshold = c.check_pages_threshold.value(self);
        cfg.retry = RetryPolicy {
            deadline_ns: c.deadline_ns.value(self),
            max_attempts: c.max_attempts % (MAX_RETRY_ATTEMPTS + 1),
        };
        cfg.owner = c.owner.map(|o| self.owner_id(o));
        cfg.prefer_devmem = c.prefer_devmem;
        cfg.atomic_timeslice_ns = c.atomic_timeslice_ns.value(self);
        cfg.source_peer_migrates = c.source_peer_migrates;
        cfg.can_migrate_same_pagemap = c.can_migrate_same_pagemap;
        cfg.policy = PolicyConfig {
            migrate_threshold: c.migrate_threshold.value(self),
            devmem_only_retries: c.devmem_only_retries % (MAX_DEVMEM_RETRIES + 1),
            atomics_on_sysmem: c.atomics_on_sysmem,
        };
        cfg
    }

    pub(super) fn dev(&self, d: u8) -> usize {
        usize::from(d) % self.gpus.len().max(1)
    }

    pub(super) fn gpu(&self, d: u8) -> &SimGpu {
        &self.gpus[self.dev(d)]
    }

    pub(super) fn owner_id(&self, id: Id) -> OwnerId {
        match id {
            Id::Device(d) => self
                .gpus
                .get(self.dev(d))
                .and_then(|g| g.svm.owner())
                .unwrap_or(OwnerId(u32::from(d))),
            Id::Raw(v) => OwnerId(v),
        }
    }

    pub(super) fn pagemap_id(&self, id: Id) -> PagemapId {
        match id {
            Id::Device(d) => PagemapId(self.dev(d) as u32),
            Id::Raw(v) => PagemapId(v),
        }
    }

    pub(super) fn ctx(&self, c: CtxSpec) -> PagesCtx {
        PagesCtx {
            read_only: c.read_only,
            devmem_only: c.devmem_only,
            allow_mixed: c.allow_mixed,
            owner: c.owner.map(|o| self.owner_id(o)),
        }
    }

    pub(super) fn window(&self, w: Option<(Num, Num)>) -> Window {
        match w {
            None => Window::ALL,
            Some((s, e)) => Window {
                start: s.value(self),
                end: e.value(self),
            },
        }
    }

    pub(super) fn known_range(&self, index: u8) -> Option<&RArc> {
        let n = self.known.len();
        if n == 0 {
            return None;
        }
        self.known.get(usize::from(index) % n)
    }

    pub(super) fn remember(&mut self, r: &RArc) {
        if self.known.iter().any(|k| RArc::ptr_eq(k, r)) {
            return;
        }
        if self.known.len() >= MAX_KNOWN {
            self.known.remove(0);
        }
        self.known.push(r.clone());
    }

    /// The range a reference names; `None` if a fresh range object cannot be allocated (an
    /// injected allocation failure: the op is skipped).
    pub(super) fn range(&mut self, r: RangeRef) -> Result<Option<RArc>, String> {
        // A fresh range of the arena, or `None` without memory for it.
        let fallback = || match Range::with_host(ARENA, ARENA + PAGE_SIZE) {
            Ok(r) => Ok(Some(r)),
            Err(Error::NoMem) => Ok(None),
            Err(e) => Err(format!("Range::with_host(arena page) = {e:?}")),
        };
        let out = match r {
            RangeRef::Known(i) => match self.known_range(i) {
                Some(r) => Some(r.clone()),
                None => fallback()?,
            },
            RangeRef::Fresh { start, end } => {
                match Range::with_host(start.value(self), end.value(self)) {
                    Ok(r) => Some(r),
                    Err(Error::NoMem) => None,
                    Err(e) => {
                        typed(e)?;
                        fallback()?
                    }
                }
            }
            RangeRef::At { dev, addr } => {
                let a = addr.value(self);
                match self.gpu(dev).svm.find(a) {
                    Some(r) => Some(r),
                    None => match self.known_range(0) {
                        Some(r) => Some(r.clone()),
                        None => fallback()?,
                    },
                }
            }
        };
        if let Some(r) = &out {
            self.remember(r);
        }
        Ok(out)
    }

    pub(super) fn frame(&self, d: u8, f: FrameSpec) -> u64 {
        let base = (u64::from(self.dev(d) as u32) + 1) << 32;
        match f {
            FrameSpec::Alloc { index, page } => {
                let allocs = self
                    .gpu(d)
                    .svm
                    .pagemap()
                    .and_then(|pm| pm.allocations().ok())
                    .unwrap_or_default();
                if allocs.is_empty() {
                    return base;
                }
                let a = &allocs[usize::from(index) % allocs.len()];
                let frames = a.dpfns();
                if frames.is_empty() {
                    return base;
                }
                frames[usize::from(page) % frames.len()]
            }
            FrameSpec::Device(n) => base + u64::from(n),
            FrameSpec::Raw(n) => n.value(self),
        }
    }

    pub(super) fn notifier(&self, n: NotifierSpec) -> NotifierId {
        match n {
            NotifierSpec::Registered(i) => {
                let regs = self.mm.notifiers();
                if regs.is_empty() {
                    return NotifierId(0);
                }
                regs[usize::from(i) % regs.len()].1
            }
            NotifierSpec::Raw(v) => NotifierId(v.value(self)),
        }
    }

    pub(super) fn update(&self, u: UpdateSpec) -> AttrUpdate {
        AttrUpdate {
            preferred: u.preferred.map(|(k, id)| match k % 3 {
                0 => PreferredLoc::DeviceDefault,
                1 => PreferredLoc::System,
                _ => PreferredLoc::Pagemap(self.pagemap_id(id)),
            }),
            migration: u.migration.map(|s| {
                if s {
                    MigrationPolicy::SystemPagesOnly
                } else {
                    MigrationPolicy::AllPages
                }
            }),
            atomic: u.atomic.map(|a| match a % 4 {
                0 => AtomicPolicy::Undefined,
                1 => AtomicPolicy::Device,
                2 => AtomicPolicy::Global,
                _ => AtomicPolicy::Cpu,
            }),
        }
    }

    /// Arena pages `[page, page + npages)` clamped to the arena.
    pub(super) fn arena_span(page: u16, npages: u16) -> (u64, u64) {
        let pages = (ARENA_END - ARENA) / PAGE_SIZE;
        let first = u64::from(page) % pages;
        let n = u64::from(npages) % 512 + 1;
        let last = (first + n).min(pages);
        (ARENA + first * PAGE_SIZE, ARENA + last * PAGE_SIZE)
    }

    /// Zap device `d`'s page table over `[start, end)` (what a driver does before unmapping
    /// pages it bound).
    pub(super) fn zap(&self, d: u8, start: u64, end: u64) {
        let mut pt = lock(&self.gpu(d).dev.pt);
        let (s, e) = (start >> PAGE_SHIFT, end >> PAGE_SHIFT);
        let keys: Vec<u64> = pt.range(s..e).map(|(k, _)| *k).collect();
        for k in keys {
            pt.remove(&k);
        }
    }

    /// Whether `r` (the very object) is a range of device `d`.
    pub(super) fn owns(&self, d: u8, r: &RArc) -> bool {
        self.gpu(d)
            .svm
            .find(r.start())
            .is_some_and(|f| RArc::ptr_eq(&f, r))
    }

    /// After a call that failed without memory: the range at `addr` is still `before` (the
    /// very object, or none): nothing was created or removed.
    pub(super) fn unchanged_at(
        &self,
        d: u8,
        addr: u64,
        before: Option<&RArc>,
        what: &str,
    ) -> Result<(), String> {
        let after = self.gpu(d).svm.find(addr);
        let same = match (before, after.as_ref()) {
            (Some(b), Some(a)) => RArc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Err(format!(
                "{what}({addr:#x}) = NoMem changed the range there: {before:?} -> {after:?}"
            ));
        }
        Ok(())
    }

    /// The attributes at the edges of `[start, start + len)` and around them, and the number
    /// of ranges (what an attribute update changes).
    pub(super) fn attrs_around(&self, d: u8, start: u64, len: u64) -> (Vec<Attrs>, (usize, usize)) {
        let svm = &self.gpu(d).svm;
        let end = start.wrapping_add(len);
        let points = [
            start.wrapping_sub(1),
            start,
            start.wrapping_add(len / 2),
            end.wrapping_sub(1),
            end,
        ];
        (
            points.iter().map(|&a| svm.attrs_at(a)).collect(),
            svm.counts(),
        )
    }

    /// After a call that needs an open instance: on a closed device it must say `Closed`.
    pub(super) fn expect_closed_if<T: core::fmt::Debug>(
        &self,
        d: u8,
        what: &str,
        got: &Result<T, Error>,
    ) -> Result<(), String> {
        if self.closed[self.dev(d)] && !matches!(got, Err(Error::Closed)) {
            return Err(format!("{what} on a closed device: {got:?}"));
        }
        if let Err(e) = got {
            typed(*e)?;
        }
        Ok(())
    }

    /// The invariants after every step.
    pub(super) fn check(&self) -> Result<(), String> {
        let gpus: Vec<&SimGpu> = self.gpus.iter().collect();
        check_invariants(&self.mm, &gpus)?;
        for g in &self.gpus {
            // `set_pagemap`: the local pagemap is also attached, under its id.
            if let Some(l) = g.svm.pagemap() {
                if !same_pagemap(&g.svm.pagemap_by_id(l.id()), &Some(l.clone())) {
                    return Err(format!(
                        "dev {}: the local pagemap {:?} is not the one attached under its id",
                        g.dev.id(),
                        l.id()
                    ));
                }
            }
        }
        for (g, &closed) in self.gpus.iter().zip(&self.closed) {
            if closed {
                check_closed(g).map_err(|e| format!("dev {} closed: {e}", g.dev.id()))?;
            }
        }
        Ok(())
    }

    /// Close everything and check that nothing is left behind.
    pub(super) fn finish(&mut self) -> Result<(), String> {
        for i in 0..self.gpus.len() {
            self.gpus[i].svm.close();
            self.closed[i] = true;
        }
        self.check()?;
        while self.tree.pop_front().is_some() {}
        Ok(())
    }
}
