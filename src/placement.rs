//! Placing ranges in device memory: the [`Svm`] entry points of the migration state machine
//! (migrate a range in, evict it, make room), and the fault service's placement step.

use crate::error::{Error, Result};
use crate::fault::Access;
use crate::migrate::{self, MigrateDetails, MigrateReport};
use crate::pagemap::Pagemap;
use crate::pages::PageFlags;
use crate::platform::{AddressSpace, CollectRequest, CpuPage, OwnerId, Platform};
use crate::range::{Range, RangeFlags};
use crate::stats::Stats;
use crate::svm::Svm;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// How many times an eviction retries pages that could not be isolated.
const EVICT_ATTEMPTS: u32 = 3;

impl<P: Platform> Svm<P> {
    /// Give this device its own device memory (or take it away with `None`). From then on the
    /// device's owner is the pagemap's owner.
    pub fn set_pagemap(&self, pagemap: Option<Arc<Pagemap<P::Mem>>>) {
        *self.pagemap.write() = pagemap;
    }

    /// This device's pagemap.
    pub fn pagemap(&self) -> Option<Arc<Pagemap<P::Mem>>> {
        self.pagemap.read().clone()
    }

    /// The owner used for page collection: the pagemap's owner, else `config.owner`.
    pub fn owner(&self) -> Option<OwnerId> {
        self.pagemap
            .read()
            .as_ref()
            .map(|p| p.owner())
            .or(self.config().owner)
    }

    /// Migrate `range` into this device's memory (SPEC §7). Succeeds without doing anything if
    /// it is already there. On success the range's page state is stale (the migration
    /// invalidated it): collect it again with [`get_pages`](Self::get_pages).
    ///
    /// Errors: [`Error::NotSupported`] (no pagemap); [`Error::Invalid`]/[`Error::Again`] (the
    /// range is not live here); and those of [`migrate::to_devmem`]. On error nothing is lost.
    pub fn migrate_to_devmem(
        &self,
        range: &Range,
        details: &MigrateDetails,
    ) -> Result<MigrateReport> {
        self.check_open()?;
        self.check_live(range)?;
        let pm = self.pagemap().ok_or(Error::NotSupported)?;
        let r = migrate::to_devmem(
            self.platform().mm(),
            &pm,
            range.start(),
            range.end(),
            details,
        );
        match r {
            Ok(rep) => {
                if !rep.already_there {
                    range.set_flags(RangeFlags::DEVMEM);
                    Stats::inc(&self.stats.migrations_to_devmem);
                    Stats::add(&self.stats.bytes_to_devmem, rep.bytes);
                    Stats::add(&self.stats.copy_runs, rep.copy_runs as u64);
                }
            }
            Err(_) => Stats::inc(&self.stats.migrate_failures),
        }
        r
    }

    /// Migrate every device page of this device's pagemap in `[start, end)` back to system
    /// memory, retrying pages that could not be isolated up to 3 times.
    pub(crate) fn evict_interval(&self, start: u64, end: u64) -> Result<MigrateReport> {
        let Some(pm) = self.pagemap() else {
            return Ok(MigrateReport::default());
        };
        let mut total = MigrateReport::default();
        for _ in 0..EVICT_ATTEMPTS {
            let rep = migrate::to_ram(self.platform().mm(), &pm, start, end)?;
            total.pages = total.pages.saturating_add(rep.pages);
            total.copy_runs = total.copy_runs.saturating_add(rep.copy_runs);
            total.bytes = total.bytes.saturating_add(rep.bytes);
            total.busy = rep.busy;
            if rep.pages > 0 {
                Stats::inc(&self.stats.migrations_to_ram);
                Stats::add(&self.stats.bytes_to_ram, rep.bytes);
                Stats::add(&self.stats.copy_runs, rep.copy_runs as u64);
            }
            if rep.busy == 0 {
                return Ok(total);
            }
        }
        Err(Error::Busy)
    }

    /// Evict `range` (SPEC §7 "Evict"): migrate every device page in it back to system memory.
    /// Used on partial unmap, mixed pages, memory pressure and before populate retries.
    ///
    /// Errors: [`Error::Busy`] if pages could still not be isolated after 3 attempts;
    /// [`Error::NoMem`]; copy errors. On error nothing is lost (pages not moved stay in device
    /// memory).
    pub fn evict(&self, range: &Range) -> Result<MigrateReport> {
        self.check_open()?;
        let rep = self.evict_interval(range.start(), range.end())?;
        range.clear_flags(RangeFlags::DEVMEM);
        if rep.pages > 0 {
            Stats::inc(&self.stats.evictions);
        }
        Ok(rep)
    }

    /// Make room in device memory by evicting one other range that holds device pages.
    /// Returns whether one was evicted.
    fn evict_one_other(&self, keep: &Range) -> bool {
        let mut victim: Option<Arc<Range>> = None;
        self.for_each_range(|_, r| {
            if victim.is_none() && !core::ptr::eq(r, keep) && r.flags().contains(RangeFlags::DEVMEM)
            {
                victim = self.find(r.start());
            }
        });
        match victim {
            Some(v) => self.evict(&v).is_ok_and(|rep| rep.pages > 0),
            None => false,
        }
    }

    /// Whether the fault service should try to move `range` into device memory.
    fn wants_devmem(&self, range: &Range) -> bool {
        if !self.config().prefer_devmem || self.pagemap.read().is_none() {
            return false;
        }
        !range.flags().contains(RangeFlags::MIGRATE_FAILED)
    }

    /// Whether every page of `range` already lives in `pm` (from the committed page state if
    /// it is valid, else from a snapshot of the CPU page tables, which faults nothing in and
    /// invalidates nothing).
    fn resident_in(&self, range: &Range, pm: &Pagemap<P::Mem>) -> bool {
        {
            let st = range.pages.lock();
            if st.valid() {
                return st.flags().contains(PageFlags::ALL_DEVMEM) && st.pagemap() == Some(pm.id());
            }
        }
        let n = usize::try_from(range.npages()).unwrap_or(usize::MAX);
        let mut pages: Vec<CpuPage> = Vec::new();
        if pages.try_reserve_exact(n).is_err() {
            return false;
        }
        pages.resize(n, CpuPage::Absent);
        let req = CollectRequest {
            start: range.start(),
            end: range.end(),
            fault: false,
            write: false,
            owner: Some(pm.owner()),
        };
        self.platform().mm().collect_pages(&req, &mut pages).is_ok()
            && pages
                .iter()
                .all(|p| matches!(p, CpuPage::Device { pagemap, .. } if *pagemap == pm.id()))
    }

    /// The placement step of the fault service: migrate into device memory if wanted. Failures
    /// fall back to system memory ("migrate once": the range is not tried again): `Busy` evicts
    /// the range and retries once; `NoMem` evicts another range and retries once.
    pub(crate) fn place(&self, range: &Range, access: Access) {
        if !self.wants_devmem(range) {
            return;
        }
        match self.pagemap() {
            Some(pm) if !self.resident_in(range, &pm) => {}
            _ => return,
        }
        let details = MigrateDetails {
            timeslice_ns: if access == Access::Atomic {
                self.config().atomic_timeslice_ns
            } else {
                0
            },
            ..MigrateDetails::default()
        };
        let first = self.migrate_to_devmem(range, &details);
        let retry = match first {
            Ok(_) => return,
            Err(Error::Busy) => self.evict(range).is_ok(),
            Err(Error::NoMem) => self.evict_one_other(range),
            Err(_) => false,
        };
        if retry && self.migrate_to_devmem(range, &details).is_ok() {
            return;
        }
        range.set_flags(RangeFlags::MIGRATE_FAILED);
    }
}
