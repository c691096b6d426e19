//! Collecting, binding and releasing pages: `Svm::get_pages`, `bind`, `unmap_pages`,
//! `free_pages`, `pages_valid`, and the whole life of a `Userptr`.

use super::machine::Harness;
use super::{typed, ApiOp, RArc, MAX_USERPTR_BYTES};
use crate::pages::RetryPolicy;
use crate::platform::{Platform, PAGE_SIZE};
use crate::{Error, Userptr};
use std::format;
use std::string::String;

impl Harness {
    /// The page calls: [`ApiOp::GetPages`], [`ApiOp::Bind`], [`ApiOp::UnmapPages`],
    /// [`ApiOp::FreePages`], [`ApiOp::PagesValid`] and [`ApiOp::Userptr`].
    #[allow(clippy::too_many_lines)]
    pub(super) fn step_pages(&mut self, op: &ApiOp) -> Result<(), String> {
        match op {
            ApiOp::Userptr {
                dev,
                start,
                end,
                ctx,
                attempts,
                inval,
            } => {
                let (s, e) = (start.value(self), end.value(self));
                let valid = s < e && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0;
                let u = match Userptr::new(s, e) {
                    Ok(u) if valid => u,
                    Err(Error::Invalid) if !valid => return Ok(()),
                    other => return Err(format!("Userptr::new({s:#x}, {e:#x}) = {other:?}")),
                };
                let g = self.gpu(*dev);
                let p = g.svm.platform();
                let dma = p.dma();
                if e - s <= MAX_USERPTR_BYTES {
                    let policy = RetryPolicy {
                        deadline_ns: 1_000_000_000,
                        max_attempts: u32::from(*attempts % 8),
                    };
                    let got = u.get_pages(p, &self.ctx(*ctx), &policy);
                    if let Err(err) = got {
                        typed(err)?;
                    }
                    if got.is_ok() != u.pages_valid() {
                        return Err(format!(
                            "userptr get_pages {got:?}, valid {}",
                            u.pages_valid()
                        ));
                    }
                }
                let covered = u.bind(|at, entries| {
                    (
                        at,
                        entries
                            .iter()
                            .map(|x| x.size())
                            .fold(0u64, u64::saturating_add),
                    )
                });
                match covered {
                    Ok((at, bytes)) if at == s && bytes == e - s => {}
                    Err(Error::Again) if !u.pages_valid() => {}
                    other => return Err(format!("userptr bind: {other:?}")),
                }
                if let Some((is, ie)) = inval {
                    let (is, ie) = (is.value(self), ie.value(self));
                    u.invalidate_begin(dma, is, ie);
                    if is < e && s < ie && u.pages_valid() {
                        return Err(format!(
                            "userptr valid inside invalidation [{is:#x},{ie:#x})"
                        ));
                    }
                    u.invalidate_end();
                }
                u.unmap_pages(dma);
                if u.pages_valid() {
                    return Err("userptr valid after unmap_pages".into());
                }
                u.free_pages(dma);
            }
            ApiOp::GetPages { dev, range, ctx } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let got = self.gpu(*dev).svm.get_pages(&r, &self.ctx(*ctx));
                self.expect_closed_if(*dev, "get_pages", &got)?;
                if got.is_ok() && !self.gpu(*dev).svm.pages_valid(&r) {
                    return Err(format!("get_pages({r:?}) Ok but pages not valid"));
                }
            }
            ApiOp::Bind { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let g = self.gpu(*dev);
                let got = g
                    .svm
                    .bind(&r, |range, entries| g.write_ptes(range, entries));
                self.expect_closed_if(*dev, "bind", &got)?;
                if let Ok(bytes) = got {
                    if bytes != r.size() {
                        return Err(format!("bind of {r:?}: entries cover {bytes:#x} bytes"));
                    }
                }
            }
            ApiOp::UnmapPages { dev, range } | ApiOp::FreePages { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                if self
                    .gpu(*dev)
                    .svm
                    .find(r.start())
                    .is_some_and(|f| RArc::ptr_eq(&f, &r))
                {
                    self.zap(*dev, r.start(), r.end());
                }
                let svm = &self.gpu(*dev).svm;
                let (call, got) = if matches!(op, ApiOp::FreePages { .. }) {
                    ("free_pages", svm.free_pages(&r))
                } else {
                    ("unmap_pages", svm.unmap_pages(&r))
                };
                self.expect_closed_if(*dev, call, &got)?;
                if got.is_ok() && self.gpu(*dev).svm.pages_valid(&r) {
                    return Err(format!("{r:?} valid after {call}"));
                }
            }
            ApiOp::PagesValid { dev, range } => {
                let Some(r) = self.range(*range)? else {
                    return Ok(());
                };
                let mine = self
                    .gpu(*dev)
                    .svm
                    .find(r.start())
                    .is_some_and(|f| RArc::ptr_eq(&f, &r));
                if self.gpu(*dev).svm.pages_valid(&r) && !mine {
                    return Err(format!("pages_valid of a foreign range {r:?}"));
                }
            }
            _ => return Err(format!("{op:?} is not a page call")),
        }
        Ok(())
    }
}
