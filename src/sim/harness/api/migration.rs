//! Migration: `Svm::migrate_to_devmem`, `evict`, `place_in`, and the free functions of the
//! migration state machine (`migrate::to_ram`, `to_devmem`, `to_devmem_traced`) checked page by
//! page.

use super::machine::Harness;
use super::{typed, ApiOp, MAX_MIGRATE_BYTES};
use crate::migrate::{self, MigrateDetails, ToDevmemState, ToRamState};
use crate::platform::{PagemapId, PAGE_SHIFT, PAGE_SIZE};
use crate::policy::DeviceTarget;
use crate::sim::lock;
use crate::Error;
use std::format;
use std::string::String;
use std::vec::Vec;

/// Which free migration function [`ApiOp::MigrateDirect`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direct {
    ToRam,
    ToDevmem,
    Traced,
}

impl Harness {
    /// The migration calls: [`ApiOp::MigrateToDevmem`], [`ApiOp::Evict`], [`ApiOp::PlaceIn`] and
    /// [`ApiOp::MigrateDirect`].
    pub(super) fn step_migration(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::MigrateToDevmem {
                dev,
                range,
                timeslice_ns,
                same_pagemap,
                source_peer,
            } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let details = MigrateDetails {
                    timeslice_ns: timeslice_ns.value(self),
                    can_migrate_same_pagemap: *same_pagemap,
                    source_peer_migrates: *source_peer,
                };
                let before = self.cpu_pages(r.start(), r.end());
                let got = self.gpu(*dev).svm.migrate_to_devmem(&r, &details);
                if let Err(e) = got {
                    typed(e)?;
                }
                // All or nothing: without memory, no CPU page of the range moved.
                if got.as_ref().err() == Some(&Error::NoMem)
                    && self.cpu_pages(r.start(), r.end()) != before
                {
                    return Err(format!("migrate_to_devmem({r:?}) = NoMem moved pages"));
                }
            }
            ApiOp::Evict { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let mine = self.owns(*dev, &r);
                let got = self.gpu(*dev).svm.evict(&r);
                self.expect_closed_if(*dev, "evict", &got)?;
                if !mine && !self.closed[self.dev(*dev)] && got.is_ok() {
                    return Err(format!("evict of {r:?}, not in the instance: {got:?}"));
                }
            }
            ApiOp::PlaceIn {
                dev,
                range,
                target,
                timeslice_ns,
            } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let t = match target {
                    None => DeviceTarget::Local,
                    Some(id) => DeviceTarget::Pagemap(self.pagemap_id(*id)),
                };
                let got = self.gpu(*dev).svm.place_in(&r, t, timeslice_ns.value(self));
                if let Err(e) = got {
                    typed(e)?;
                }
            }
            ApiOp::MigrateDirect {
                dev,
                start,
                end,
                to_devmem,
                traced,
                timeslice_ns,
                same_pagemap,
                source_peer,
            } => {
                let details = MigrateDetails {
                    timeslice_ns: timeslice_ns.value(self),
                    can_migrate_same_pagemap: *same_pagemap,
                    source_peer_migrates: *source_peer,
                };
                let how = match (to_devmem, traced) {
                    (false, _) => Direct::ToRam,
                    (true, false) => Direct::ToDevmem,
                    (true, true) => Direct::Traced,
                };
                self.migrate_direct(*dev, start.value(self), end.value(self), how, &details)?;
            }
            _ => return Err(format!("{op:?} is not a migration call")),
        }
        Ok(())
    }

    /// The CPU pages of `[start, end)`: page number → (frame, device pagemap, isolated).
    fn cpu_pages(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<PagemapId>, bool)> {
        let st = lock(&self.mm.st);
        st.ptes
            .range(start >> PAGE_SHIFT..end >> PAGE_SHIFT)
            .map(|(vpn, p)| (*vpn, p.pfn, p.dev.map(|(pm, _)| pm), p.migrating))
            .collect()
    }

    /// [`ApiOp::MigrateDirect`]: `migrate::to_ram`/`to_devmem` on device `d`'s pagemap.
    ///
    /// - an empty or misaligned interval is `Invalid` (and nothing changes);
    /// - on any error, no CPU page of the interval changed (all-or-nothing; to RAM: pages that
    ///   moved are only reported on success);
    /// - `to_devmem` `Ok`: with `already_there`, nothing changed and every page was already in
    ///   the pagemap; else every page of the interval is now a device page of the pagemap and
    ///   `pages` counts them all;
    /// - `to_ram` `Ok`: `pages` of the pagemap's pages in the interval moved to system memory,
    ///   only the `busy` ones (at most) are left;
    /// - traced (`to_ram` always, `to_devmem` in the `Traced` variant): the states start with
    ///   `Isolate` and end with `Done`, `Install` is reached iff pages moved, and a failure after
    ///   isolation goes through `Restore`.
    fn migrate_direct(
        &self,
        d: u8,
        s: u64,
        e: u64,
        how: Direct,
        details: &MigrateDetails,
    ) -> Result<(), String> {
        let Some(pm) = self.gpu(d).svm.pagemap() else {
            return Ok(());
        };
        let valid = s < e && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0;
        if valid && e - s > MAX_MIGRATE_BYTES {
            return Ok(());
        }
        let before = if valid {
            self.cpu_pages(s, e)
        } else {
            Vec::new()
        };
        let view = self.mm.view(usize::MAX);
        let mut states: Vec<ToDevmemState> = Vec::new();
        let mut ram_states: Vec<ToRamState> = Vec::new();
        let got = match how {
            Direct::ToRam => {
                migrate::to_ram_traced(&view, &pm, s, e, Some(&mut |st| ram_states.push(st)))
            }
            Direct::ToDevmem => migrate::to_devmem(&view, &pm, s, e, details),
            Direct::Traced => {
                let svm = &self.gpu(d).svm;
                migrate::to_devmem_traced(
                    &view,
                    &pm,
                    &|id| svm.pagemap_by_id(id),
                    s,
                    e,
                    details,
                    Some(&mut |st| states.push(st)),
                )
            }
        };
        let what = format!("{how:?}({:?}, {s:#x}, {e:#x})", pm.id());
        if !valid {
            return match got {
                Err(Error::Invalid) if states.is_empty() && ram_states.is_empty() => Ok(()),
                other => Err(format!(
                    "{what}: {other:?} (states {states:?} {ram_states:?})"
                )),
            };
        }
        let after = self.cpu_pages(s, e);
        let npages = ((e - s) / PAGE_SIZE) as usize;
        let mine = |v: &[(u64, u64, Option<PagemapId>, bool)]| {
            v.iter().filter(|p| p.2 == Some(pm.id()) && !p.3).count()
        };
        match got {
            Err(err) => {
                typed(err)?;
                if after != before {
                    return Err(format!("{what} = {err:?} but CPU pages changed"));
                }
            }
            Ok(rep) if how == Direct::ToRam => {
                let (was, left) = (mine(&before), mine(&after));
                if left > rep.busy || rep.pages.saturating_add(left) != was {
                    return Err(format!(
                        "{what} = {rep:?}: {was} pages before, {left} after"
                    ));
                }
            }
            Ok(rep) if rep.already_there => {
                if after != before || mine(&before) != npages || rep.pages != 0 {
                    return Err(format!("{what} = {rep:?} but the pages were not all there"));
                }
            }
            Ok(rep) => {
                if mine(&after) != npages || after.len() != npages || rep.pages != npages {
                    return Err(format!(
                        "{what} = {rep:?}: {} of {npages} pages in the pagemap",
                        mine(&after)
                    ));
                }
            }
        }
        // Without memory before the state machine started (its arrays), nothing was traced.
        let untraced = got == Err(Error::NoMem) && states.is_empty() && ram_states.is_empty();
        if how == Direct::ToRam && !untraced {
            // Install iff pages moved; an error after a successful isolation restores. (An
            // isolation error goes straight to Done: nothing was isolated.)
            let moved = got.as_ref().is_ok_and(|r| r.pages > 0);
            let ok = ram_states.first() == Some(&ToRamState::Isolate)
                && ram_states.last() == Some(&ToRamState::Done)
                && ram_states.contains(&ToRamState::Install) == moved
                && (got.is_ok()
                    || ram_states.len() == 2
                    || ram_states.contains(&ToRamState::Restore));
            if !ok {
                return Err(format!("{what} = {got:?}: states {ram_states:?}"));
            }
        }
        if how == Direct::Traced && !untraced {
            let moved = got.as_ref().is_ok_and(|r| !r.already_there);
            let ok = states.first() == Some(&ToDevmemState::Isolate)
                && states.last() == Some(&ToDevmemState::Done)
                && states.contains(&ToDevmemState::Install) == moved
                && (moved || states.len() == 2 || states.contains(&ToDevmemState::Restore));
            if !ok {
                return Err(format!("{what} = {got:?}: states {states:?}"));
            }
        }
        Ok(())
    }
}
