//! Instances, ranges and faults: `Svm::new`, `find_or_insert`, `find`, `remove`, `handle_fault`
//! and device accesses of the simulated GPU.

use super::machine::Harness;
use super::{access_of, typed, ApiOp, RArc};
use crate::sim::{check_closed, check_invariants, SimAlloc, SimGpu};
use crate::{Access, Error, Window};
use std::format;
use std::string::String;
use std::vec::Vec;

impl Harness {
    /// The fault and range calls: [`ApiOp::SvmNew`], [`ApiOp::FindOrInsert`], [`ApiOp::Find`],
    /// [`ApiOp::Remove`], [`ApiOp::HandleFault`] and [`ApiOp::DevAccess`].
    #[allow(clippy::too_many_lines)]
    pub(super) fn step_faults(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::SvmNew { config, addr } => {
                let cfg = self.config(config);
                let valid = cfg.validate();
                if let Err(e) = valid {
                    typed(e)?;
                }
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(8);
                match SimGpu::new(&self.mm, id, cfg.clone()) {
                    Ok(g) => {
                        if valid.is_err() {
                            return Err(format!("Svm::new accepted {cfg:?} ({valid:?})"));
                        }
                        let a = addr.value(self);
                        let got = g.svm.handle_fault(a, Access::Read, Window::ALL);
                        match &got {
                            Ok(r) if !r.contains(a) => {
                                return Err(format!("handle_fault({a:#x}) = {r:?}"))
                            }
                            Ok(_) => {}
                            Err(e) => typed(*e)?,
                        }
                        let gpus: Vec<&SimGpu> =
                            self.gpus.iter().chain(core::iter::once(&g)).collect();
                        SimAlloc::paused(|| check_invariants(&self.mm, &gpus))
                            .map_err(|e| format!("with the new Svm: {e}"))?;
                        g.svm.close();
                        SimAlloc::paused(|| check_closed(&g))
                            .map_err(|e| format!("new Svm after close: {e}"))?;
                    }
                    Err(e) => {
                        typed(e)?;
                        // A valid configuration fails only without memory; an invalid one is
                        // refused before anything is allocated.
                        let expected = if valid.is_ok() {
                            Error::NoMem
                        } else {
                            Error::Invalid
                        };
                        if e != expected {
                            return Err(format!("Svm::new({cfg:?}) = {e:?} (validate {valid:?})"));
                        }
                    }
                }
            }
            ApiOp::FindOrInsert {
                dev,
                addr,
                window,
                ctx,
            } => {
                let a = addr.value(self);
                let w = self.window(*window);
                let before = self.gpu(*dev).svm.find(a);
                let got = self.gpu(*dev).svm.find_or_insert(a, w, &self.ctx(*ctx));
                self.expect_closed_if(*dev, "find_or_insert", &got)?;
                if got.as_ref().err() == Some(&Error::NoMem) {
                    self.unchanged_at(*dev, a, before.as_ref(), "find_or_insert")?;
                }
                if let Ok(r) = &got {
                    // The window bounds new ranges only: an existing range is returned as is.
                    let new = !before.is_some_and(|b| RArc::ptr_eq(&b, r));
                    if !r.contains(a) || (new && (r.start() < w.start || r.end() > w.end)) {
                        return Err(format!("find_or_insert({a:#x}, {w:?}) = {r:?}"));
                    }
                    self.remember(r);
                }
            }
            ApiOp::Find { dev, addr } => {
                let a = addr.value(self);
                if let Some(r) = self.gpu(*dev).svm.find(a) {
                    if !r.contains(a) {
                        return Err(format!("find({a:#x}) = {r:?}"));
                    }
                    self.remember(&r);
                }
            }
            ApiOp::Remove { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let got = self.gpu(*dev).svm.remove(&r);
                self.expect_closed_if(*dev, "remove", &got)?;
                if got.is_ok()
                    && self
                        .gpu(*dev)
                        .svm
                        .find(r.start())
                        .is_some_and(|f| RArc::ptr_eq(&f, &r))
                {
                    return Err(format!("removed {r:?} is still found"));
                }
            }
            ApiOp::HandleFault {
                dev,
                addr,
                access,
                window,
            } => {
                let a = addr.value(self);
                let w = self.window(*window);
                let before = self.gpu(*dev).svm.find(a);
                let got = self.gpu(*dev).svm.handle_fault(a, access_of(*access), w);
                self.expect_closed_if(*dev, "handle_fault", &got)?;
                if let Ok(r) = &got {
                    // The window bounds new ranges only: an existing range is returned as is.
                    let new = !before.is_some_and(|b| RArc::ptr_eq(&b, r));
                    if !r.contains(a) || (new && (r.start() < w.start || r.end() > w.end)) {
                        return Err(format!("handle_fault({a:#x}, {w:?}) = {r:?}"));
                    }
                    self.remember(r);
                }
            }
            ApiOp::DevAccess { dev, addr, access } => {
                let a = addr.value(self);
                let g = self.gpu(*dev);
                let got = match access_of(*access) {
                    Access::Read => g.read_u64(a),
                    Access::Write => g.write_u64(a, a).map(|()| 0),
                    Access::Atomic => g.atomic_add(a, 1),
                };
                if let Err(e) = got {
                    typed(e)?;
                }
            }
            _ => return Err(format!("{op:?} is not a fault call")),
        }
        Ok(())
    }
}
